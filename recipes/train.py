"""``train`` recipe: the autoregressive model (backbone + MAR decoder + condition stack).

The frame VAE is frozen (load one trained by the ``vae`` recipe with ``model.vae_checkpoint``).
Fine-tuning is the same recipe with ``init_from`` (and optionally ``freeze``), e.g. on one person.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import attrs
import torch

from eartalk.conditions.stack import ConditionSpec
from eartalk.core.config import structure, unstructure
from eartalk.core.errors import ConfigError, InputError
from eartalk.recipes.base import Recipe
from eartalk.recipes.common import RecipeModule, fit, read_checkpoint
from eartalk.recipes.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    TrainerConfig,
    arch_from,
    default_conditions,
    validate_common,
)

log = logging.getLogger(__name__)

try:  # Lightning is a hard dependency; the guard keeps `eartalk plugins` usable if it is broken.
    import lightning as L
except ImportError:  # pragma: no cover
    L = None  # type: ignore[assignment]


@attrs.frozen
class TrainConfig:
    """Config of the ``train`` recipe.

    Attributes:
        out_dir: run folder (checkpoints/, logs/, config.resolved.yaml, loss.png).
        seed: global seed.
        model: preset, arch overrides and the frozen VAE checkpoint.
        conditions: the condition stack, in slot order.
        data: training clips.
        optim: optimiser.
        trainer: Lightning trainer arguments.
        init_from: checkpoint to start from (fine-tuning); new condition plugins start fresh.
        freeze: parameter-name prefixes to keep fixed (e.g. ``model.backbone.blocks.0``).
        resume: continue from ``out_dir/checkpoints/last.ckpt`` when it exists.
        exposure_noise: std of noise added to context latents (exposure-bias mitigation), None = preset.
    """

    out_dir: str = "runs/train"
    seed: int = 0
    model: ModelConfig = ModelConfig()
    conditions: list[ConditionSpec] = attrs.field(factory=default_conditions)
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    trainer: TrainerConfig = TrainerConfig()
    init_from: str | None = None
    freeze: list[str] = attrs.field(factory=list)
    resume: bool = True


def build_model(arch: Any, specs: list[ConditionSpec], vae_checkpoint: str | None = None) -> Any:
    """An :class:`EarTalkModel` for ``arch`` and condition ``specs`` (VAE weights from a checkpoint)."""
    from eartalk.core.engine import model as engine

    model = engine.build_model(arch, specs)
    if vae_checkpoint:
        from eartalk.recipes.vae import load_vae_weights

        load_vae_weights(model.vae, vae_checkpoint)
    return model


if L is not None:

    class EarTalkModule(RecipeModule):
        """Lightning wrapper: teacher-forced training of the AR model with the frozen VAE
        (the model keeps its VAE frozen and in eval mode itself)."""

        def __init__(self, config: dict[str, Any]) -> None:
            super().__init__()
            self.save_hyperparameters({"config": config})
            self.cfg = structure(config, TrainConfig)
            self.arch = arch_from(self.cfg.model)
            self.model = build_model(self.arch, self.cfg.conditions, self.cfg.model.vae_checkpoint)
            if self.cfg.init_from:
                load_weights(self.model, self.cfg.init_from)
            for name, param in self.named_parameters():
                if any(name.startswith(prefix) for prefix in self.cfg.freeze):
                    param.requires_grad_(False)

        def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
            return self.model.loss(batch)


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load model weights from a Lightning or eartalk checkpoint; new/removed parts are reported."""
    ckpt = read_checkpoint(path, "init_from", "give a checkpoint written by `eartalk train`")
    state = ckpt.get("state_dict", ckpt.get("model", ckpt))
    state = {k.removeprefix("model."): v for k, v in state.items()}
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(state) - set(usable))
    missing = sorted(set(own) - set(usable))
    model.load_state_dict(usable, strict=False)
    log.info("loaded %d tensors from %s (%d new in this model, %d not used)", len(usable), path, len(missing), len(skipped))
    if not usable:
        raise InputError(f"init_from: {path} shares no weights with this model (different preset?)")


def load_trained(path: str | Path, map_location: str = "cpu") -> Any:
    """The :class:`EarTalkModel` saved in a ``train`` recipe checkpoint (eval mode)."""
    ckpt = read_checkpoint(path, "checkpoint", "train one with `eartalk train CONFIG`")
    config = ckpt.get("hyper_parameters", {}).get("config")
    if config is None:
        raise InputError(f"{path} is not an eartalk `train` checkpoint (no config in its hyper-parameters)")
    cfg = structure(config, TrainConfig)
    model = build_model(arch_from(cfg.model), cfg.conditions)
    model.load_state_dict({k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()})
    return model.to(map_location).eval()


class TrainRecipe(Recipe):
    name = "train"
    description = "train the autoregressive model (backbone + MAR decoder + conditions) with Lightning"
    Config = TrainConfig

    @classmethod
    def validate(cls, config: TrainConfig, source: str) -> None:
        # Checkpoint files are checked when the run starts: a config may name one a previous
        # step of the pipeline has not written yet.
        validate_common(config, source)

    def run(self, config: TrainConfig, overrides: list[str] | None = None) -> Path:
        for key, value in (("model.vae_checkpoint", config.model.vae_checkpoint), ("init_from", config.init_from)):
            if value and not Path(value).is_file():
                raise ConfigError(f"{key}: {value} does not exist")
        return fit(config, lambda: EarTalkModule(unstructure(config)), lambda m: m.model.stack, "last.ckpt")
