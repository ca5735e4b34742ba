"""``vae`` recipe: train the causal 3D frame VAE (reconstruction + KL), then fit latent statistics.

Its checkpoint is what ``model.vae_checkpoint`` of the ``train`` recipe points at.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import torch

from eartalk.core.config import structure, unstructure
from eartalk.core.engine.vae import FrameVAE
from eartalk.core.errors import InputError
from eartalk.recipes.base import Recipe
from eartalk.recipes.common import RecipeModule, fit, read_checkpoint
from eartalk.recipes.config import DataConfig, ModelConfig, OptimConfig, TrainerConfig, arch_from, validate_common

try:
    import lightning as L
except ImportError:  # pragma: no cover
    L = None  # type: ignore[assignment]


@attrs.frozen
class VAEConfig:
    """Config of the ``vae`` recipe (see :class:`eartalk.recipes.train.TrainConfig` for the shared parts).

    Attributes:
        stats_batches: batches used to fit the latent mean/std after training.
    """

    out_dir: str = "runs/vae"
    seed: int = 0
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig(lr=1e-3, weight_decay=0.0, warmup_steps=20)
    trainer: TrainerConfig = TrainerConfig()
    stats_batches: int = 8
    resume: bool = True


def load_vae_weights(vae: torch.nn.Module, path: str | Path) -> None:
    """Load a ``vae`` recipe checkpoint (Lightning ``state_dict`` with ``vae.`` prefix) into ``vae``."""
    ckpt = read_checkpoint(path, "model.vae_checkpoint", "train one with `eartalk train vae_*.yaml`")
    state = ckpt.get("state_dict", ckpt)
    state = {k.removeprefix("vae."): v for k, v in state.items() if k.startswith("vae.") or "state_dict" not in ckpt}
    try:
        vae.load_state_dict(state)
    except RuntimeError as err:
        raise InputError(f"model.vae_checkpoint: {path} does not match this model's VAE (other preset?): {err}") from None


if L is not None:

    class FrameVAEModule(RecipeModule):
        """Lightning wrapper of :class:`~eartalk.core.engine.vae.FrameVAE` training."""

        def __init__(self, config: dict[str, Any]) -> None:
            super().__init__()
            self.save_hyperparameters({"config": config})
            self.cfg = structure(config, VAEConfig)
            self.vae = FrameVAE.from_arch(arch_from(self.cfg.model))

        def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
            return self.vae.loss(batch["frames"])

        def on_train_end(self) -> None:
            loader = self.trainer.datamodule.train_dataloader()
            clips = (b["frames"].to(self.device) for i, b in zip(range(self.cfg.stats_batches), loader, strict=False))
            self.vae.eval()
            self.vae.fit_latent_stats(clips)



class VAERecipe(Recipe):
    name = "vae"
    description = "train the causal 3D frame VAE and fit its latent normalisation"
    Config = VAEConfig

    @classmethod
    def validate(cls, config: VAEConfig, source: str) -> None:
        validate_common(config, source)

    def run(self, config: VAEConfig, overrides: list[str] | None = None) -> Path:
        return fit(config, lambda: FrameVAEModule(unstructure(config)), lambda m: None, "vae.ckpt")
