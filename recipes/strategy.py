"""Distributed training through Lightning's own strategies (DDP, FSDP), per-rank seeds, activation checkpointing.

``trainer.strategy`` picks the strategy:

* ``auto`` / ``ddp`` / ``ddp_spawn`` / ...: handed to Lightning as the string it is (DDP replicates
  the model and all-reduces gradients; data is sharded by Lightning's distributed sampler);
* ``fsdp``: Lightning's :class:`~lightning.pytorch.strategies.FSDPStrategy` with one wrap unit per
  transformer block (backbone blocks, MAR decoder blocks and diffusion-head residual blocks), the frozen frame VAE kept out of the
  sharded units (FSDP ``ignored_modules``: every rank holds it whole, it has no gradients), and
  ``trainer.activation_checkpointing`` applied to the same blocks by Lightning.

Activation checkpointing for the other strategies (single device, DDP) uses torch's own
``apply_activation_checkpointing`` on the same block classes, before Lightning wraps the model
(:class:`ActivationCheckpointing`).

Per-rank random streams: the model is built with the same seed on every rank (identical initial
weights), then :class:`RankSeed` reseeds every rank with ``seed + global_rank`` once the ranks are
known, so masks, mask ratios, diffusion timesteps and noise, context noise and condition dropout
differ between ranks.
"""

from __future__ import annotations

import logging
from typing import Any

from eartalk.core.errors import ConfigError

log = logging.getLogger(__name__)

try:  # Lightning is a hard dependency; the guard keeps the module importable for docs tools.
    import lightning as L
    from lightning.pytorch.strategies import FSDPStrategy
except ImportError:  # pragma: no cover
    L = None  # type: ignore[assignment]
    FSDPStrategy = object  # type: ignore[assignment,misc]


def block_classes() -> set[type]:
    """FSDP wrap units and activation-checkpointing units: backbone blocks, MAR decoder blocks, diffusion-head blocks."""
    from eartalk.core.engine.backbone import BackboneBlock
    from eartalk.core.engine.mar import DecoderBlock, ResBlockMLP

    return {BackboneBlock, DecoderBlock, ResBlockMLP}


def parse_devices(devices: Any) -> Any:
    """``trainer.devices`` as Lightning takes it: an int, a list of indices, ``"auto"`` or ``"-1"``.

    A string of digits (``"2"``) or of comma-separated indices (``"0,1"``) is accepted too (the
    form SLURM scripts and shells pass).
    """
    if isinstance(devices, bool):
        raise ConfigError(f"trainer.devices: expected a count, a list of device indices or 'auto', got {devices!r}")
    if isinstance(devices, int) or isinstance(devices, list):
        return devices
    text = str(devices).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    return text


class EartalkFSDPStrategy(FSDPStrategy):  # type: ignore[misc,valid-type]
    """Lightning's FSDP strategy that also keeps the frozen frame VAE out of the sharded units.

    ``ignored_modules`` needs the module instances, which only exist once the LightningModule is
    built; this adds them just before Lightning wraps the model and changes nothing else.
    """

    def _setup_model(self, model: Any) -> Any:
        from eartalk.core.engine.vae import FrameVAE

        ignored = [m for m in model.modules() if isinstance(m, FrameVAE)]
        if ignored:
            self.kwargs["ignored_modules"] = ignored
        return super()._setup_model(model)


def build_strategy(trainer_cfg: Any) -> Any:
    """The ``strategy`` argument of ``lightning.Trainer`` for a :class:`TrainerConfig`."""
    name = str(trainer_cfg.strategy)
    if name == "fsdp":
        blocks = block_classes()
        return EartalkFSDPStrategy(
            auto_wrap_policy=blocks,
            activation_checkpointing_policy=blocks if trainer_cfg.activation_checkpointing else None,
            sharding_strategy=getattr(trainer_cfg, "fsdp_sharding", "FULL_SHARD"),
            state_dict_type="full",
        )
    if name.startswith("fsdp"):
        raise ConfigError(
            f"trainer.strategy: {name!r} is not supported; use 'fsdp' (one unit per transformer block, "
            "trainer.activation_checkpointing=true to recompute activations) or 'ddp'"
        )
    return name


if L is not None:

    class RankSeed(L.Callback):
        """Reseed each rank with ``seed + global_rank`` once the ranks are known (``setup``).

        ``setup`` runs before a checkpoint is restored, so a resume that restores RNG state still wins.
        """

        def __init__(self, seed: int) -> None:
            self.seed = int(seed)

        def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
            if stage == "fit":
                rank_seed(self.seed, trainer.global_rank)

    class ActivationCheckpointing(L.Callback):
        """Recompute each transformer block's activations in the backward pass (strategies other than FSDP).

        Applied in ``setup``, before Lightning wraps the model for DDP; FSDP does it itself.
        """

        def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
            if stage != "fit" or isinstance(trainer.strategy, FSDPStrategy):
                return
            apply_checkpointing(pl_module)


    class SparseAttention(L.Callback):
        """Switch every backbone of the module to the exact block-sparse training attention (``trainer.attention``)."""

        def __init__(self, mode: str) -> None:
            self.mode = mode

        def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
            set_attention(pl_module, self.mode)


def set_attention(module: Any, mode: str) -> int:
    """Set ``attention`` (``"dense"`` or ``"sparse"``) on every backbone inside ``module``; returns how many."""
    from eartalk.core.engine.backbone import Backbone

    if mode not in ("dense", "sparse"):
        raise ConfigError(f"trainer.attention must be 'dense' or 'sparse', got {mode!r}")
    count = 0
    for m in module.modules():
        if isinstance(m, Backbone):
            m.attention = mode
            count += 1
    return count


def rank_seed(seed: int, rank: int) -> int:
    """Seed torch, numpy and Python with ``seed + rank`` (returns the seed used)."""
    import lightning as L

    value = int(seed) + int(rank)
    L.seed_everything(value, workers=True, verbose=False)
    log.debug("rank %d seeded with %d", rank, value)
    return value


def apply_checkpointing(module: Any) -> int:
    """Wrap every transformer block of ``module`` for activation checkpointing; returns how many."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointWrapper,
        apply_activation_checkpointing,
    )

    if any(isinstance(m, CheckpointWrapper) for m in module.modules()):
        return 0
    classes = tuple(block_classes())
    count = sum(isinstance(m, classes) for m in module.modules())
    apply_activation_checkpointing(module, check_fn=lambda m: isinstance(m, classes))
    return count


def extra_callbacks(trainer_cfg: Any) -> list[Any]:
    """Callbacks the trainer config asks for: activation checkpointing (non-FSDP), sparse attention and EMA."""
    callbacks: list[Any] = []
    if getattr(trainer_cfg, "activation_checkpointing", False) and str(trainer_cfg.strategy) != "fsdp":
        callbacks.append(ActivationCheckpointing())
    attention = str(getattr(trainer_cfg, "attention", "dense"))
    if attention not in ("dense", "sparse"):
        raise ConfigError(f"trainer.attention must be 'dense' or 'sparse', got {attention!r}")
    if attention == "sparse":
        callbacks.append(SparseAttention(attention))
    decay = float(getattr(trainer_cfg, "ema_decay", 0.0) or 0.0)
    if decay > 0:
        from eartalk.recipes.ema import EMA

        callbacks.append(EMA(decay))
    return callbacks


def trainer_kwargs(trainer_cfg: Any) -> dict[str, Any]:
    """``strategy``, ``devices`` and ``num_nodes`` of ``lightning.Trainer`` for a trainer config."""
    nodes = int(getattr(trainer_cfg, "num_nodes", 1))
    if nodes < 1:
        raise ConfigError(f"trainer.num_nodes must be >= 1, got {nodes}")
    return {"strategy": build_strategy(trainer_cfg), "devices": parse_devices(trainer_cfg.devices), "num_nodes": nodes}


def add_rank_seed(trainer: Any, seed: int) -> None:
    """Give ``trainer`` per-rank random streams (``seed + global_rank``); call after building it."""
    if not any(isinstance(cb, RankSeed) for cb in trainer.callbacks):
        trainer.callbacks.append(RankSeed(seed))
