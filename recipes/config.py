"""Config schemas shared by the recipes (frozen attrs, structured strictly from YAML)."""

from __future__ import annotations

from typing import Any

import attrs

from eartalk.conditions.stack import ConditionSpec, validate_specs
from eartalk.core.config import structure
from eartalk.core.errors import ConfigError


@attrs.frozen
class DataConfig:
    """Where training clips come from (a dataset written by ``eartalk prepare`` or ``eartalk synth``).

    Attributes:
        root: dataset folder.
        clip_frames: frames per training clip (T > window + 1).
        batch_size: clips per batch (per device).
        val_fraction: share of clips held out for validation.
        num_workers: DataLoader worker processes.
        latents: read VAE latents pre-encoded by ``eartalk encode CONFIG`` instead of running the
            frozen VAE every step (the cache is keyed to the VAE checkpoint's hash).
    """

    root: str = "data/synth"
    clip_frames: int = 12
    batch_size: int = 4
    val_fraction: float = 0.1
    num_workers: int = 0
    latents: bool = False


@attrs.frozen
class FocusConfig:
    """Reconstruction / diffusion loss weighted up around points of the face (``vae`` and ``train`` recipes).

    The eyes are about 3 px tall at 64 px and the emotions move brows and mouth corners by about
    a pixel, so a loss averaged over the whole frame can blur them away at little cost. With
    ``weight > 0`` every pixel's weight is ``1 + weight * max_k exp(-d_k^2 / 2 sigma^2)`` around the
    points (:func:`eartalk.core.engine.vae.focus_weights`); the ``train`` recipe averages it over
    each latent pixel's footprint and weights that pixel's elements of the diffusion loss. Needs
    datasets that store the ``keypoints`` extra (``eartalk synth`` does; ``eartalk prepare`` does not).

    Attributes:
        weight: extra weight at a point (0 = off: the plain loss).
        sigma: Gaussian width as a fraction of the frame side.
        points: names of the synthetic renderer's keypoints (``eartalk.core.data.synth.KEYPOINTS``).
    """

    weight: float = 0.0
    sigma: float = 0.05
    points: tuple[str, ...] = ("left_eye", "right_eye", "mouth_left", "mouth_right", "mouth")

    @property
    def extras(self) -> tuple[str, ...]:
        """Stored extras the batches must carry."""
        return ("keypoints",) if self.weight > 0 else ()

    def validate(self, source: str) -> None:
        from eartalk.core.data.synth import KEYPOINTS
        from eartalk.core.errors import did_you_mean

        if not self.weight >= 0:  # also NaN
            raise ConfigError(f"{source}: focus.weight must be >= 0 (0 = plain loss), got {self.weight}")
        if self.weight == 0:
            return
        if not self.sigma > 0:
            raise ConfigError(f"{source}: focus.sigma must be > 0 (a fraction of the frame side), got {self.sigma}")
        if not self.points:
            raise ConfigError(f"{source}: focus.points is empty; name some of {', '.join(KEYPOINTS)} or set focus.weight: 0")
        for name in self.points:
            if name not in KEYPOINTS:
                raise ConfigError(f"{source}: focus.points: unknown keypoint {name!r}{did_you_mean(name, KEYPOINTS)}; "
                                  f"known: {', '.join(KEYPOINTS)}")

    def pixel_weights(self, batch: dict[str, Any]) -> Any:
        """``(B, T, 1, R, R)`` loss weights of a batch's frames (None when off)."""
        if self.weight <= 0:
            return None
        from eartalk.core.data.synth import KEYPOINTS
        from eartalk.core.engine.vae import focus_weights

        frames = batch["frames"]
        index = [KEYPOINTS.index(n) for n in self.points]
        points = batch["extras"]["keypoints"][:, :, index].to(frames.device, frames.dtype)  # (B, T, K, 2)
        return focus_weights(points, frames.shape[-1], self.sigma, self.weight)


@attrs.frozen
class ModelConfig:
    """Model size and weights.

    Attributes:
        preset: ``tiny``, ``small`` or ``base`` (see ``eartalk model info``).
        arch: overrides of preset fields (e.g. ``{window: 6}``), checked against ``ModelArch``.
        vae_checkpoint: the frame VAE (``checkpoints/vae.ckpt`` of a ``vae`` recipe run); the
            ``train`` recipe refuses to start without one. ``random``: an untrained VAE (tests only).
            The ``vae`` recipe ignores it.
    """

    preset: str = "tiny"
    arch: dict[str, Any] = attrs.field(factory=dict)
    vae_checkpoint: str | None = None


@attrs.frozen
class OptimConfig:
    """AdamW with linear warm-up then cosine decay.

    Attributes:
        lr: peak learning rate.
        weight_decay: decoupled weight decay of linear/convolution weight matrices only (never of
            biases, norms, embeddings or learned tokens).
        beta1, beta2: AdamW moments.
        warmup_steps: linear warm-up from ``lr / warmup_steps`` to ``lr``.
        min_lr_ratio: the cosine decays to ``min_lr_ratio * lr`` at ``trainer.max_steps``.
    """

    lr: float = 3e-4
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.95
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1


@attrs.frozen
class TrainerConfig:
    """Arguments handed to ``lightning.Trainer`` (distribution is Lightning's job).

    Attributes:
        max_steps: optimiser steps of the run (also the length of the learning-rate schedule).
        accelerator: ``auto``, ``cpu``, ``gpu``...
        strategy: ``auto``, ``ddp``, ``fsdp``...; precision: ``32-true``, ``bf16-mixed``...
        gradient_clip_val: gradient-norm clipping (0 = off).
        accumulate_grad_batches: batches per optimiser step.
        log_every_n_steps: a ``logs/metrics.csv`` row every N steps.
        val_every_n_steps: validation every N steps.
        checkpoint_every_n_steps: a ``stepN.ckpt`` (and ``last.ckpt``) every N steps; a run longer
            than 10 periods keeps the newest 3.
        progress_bar: Lightning's progress bar.
        devices: devices per node: a count (``2``), a list of indices (``[0, 1]``) or ``"auto"``.
        num_nodes: machines (multi-node: see docs/training.md, torchrun and SLURM).
        activation_checkpointing: recompute each transformer block's activations in the backward
            pass (less memory, about a third more compute).
        ema_decay: decay of an exponential moving average of the trainable weights (0 = off);
            stored in the checkpoint under ``ema_state_dict`` and used for sampling by default.
        attention: ``"dense"`` (one masked SDPA call) or ``"sparse"`` (skips the masked-out
            blocks of the SFA mask, exact) in the training forward.
    """

    max_steps: int = 200
    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    strategy: str = "auto"
    precision: str = "32-true"
    gradient_clip_val: float = 1.0
    accumulate_grad_batches: int = 1
    log_every_n_steps: int = 10
    val_every_n_steps: int = 100
    checkpoint_every_n_steps: int = 100
    progress_bar: bool = True
    num_nodes: int = 1
    activation_checkpointing: bool = False
    ema_decay: float = 0.0
    attention: str = "dense"


def arch_from(model: ModelConfig, source: str = "<config>") -> Any:
    """The ``ModelArch`` of a model config (preset + strictly checked overrides)."""
    from eartalk.core.config import unstructure
    from eartalk.core.engine.presets import PRESETS, ModelArch
    from eartalk.core.errors import did_you_mean

    if model.preset not in PRESETS:
        raise ConfigError(
            f"{source}: model.preset: unknown preset {model.preset!r}{did_you_mean(model.preset, PRESETS)}; "
            f"choose from {', '.join(PRESETS)}"
        )
    data = unstructure(PRESETS[model.preset])
    for key, value in model.arch.items():
        if key == "sampling" and isinstance(value, dict):
            data["sampling"] = {**data["sampling"], **value}
        else:
            data[key] = value
    return structure(data, ModelArch, source=f"{source} (model.arch)")


def validate_common(config: Any, source: str) -> None:
    """Checks shared by the recipes: model preset/arch overrides, condition plugins, the EMA decay."""
    from eartalk.recipes.ema import check_ema_decay

    check_ema_decay(getattr(getattr(config, "trainer", None), "ema_decay", 0.0), f"{source}: trainer.ema_decay")
    arch = arch_from(config.model, source)
    if getattr(config, "conditions", None) is not None:
        if not config.conditions:
            raise ConfigError(f"{source}: conditions: list at least one condition plugin (e.g. audio)")
        validate_specs(config.conditions, source)
        window = getattr(arch, "window", 0)
        if config.data.clip_frames <= window + 1:
            raise ConfigError(
                f"{source}: data.clip_frames={config.data.clip_frames} must exceed model window + 1 = {window + 1} "
                "so training clips exercise the sliding window"
            )


def default_conditions() -> list[ConditionSpec]:
    return [ConditionSpec(name) for name in ("audio", "voice_activity", "head_pose", "blink", "gaze", "emotion")]
