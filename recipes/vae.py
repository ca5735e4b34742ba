"""``vae`` recipe: train the causal 3D frame VAE (reconstruction + KL) and fit its latent statistics.

Every checkpoint it writes (periodic ``stepN.ckpt``, ``last.ckpt`` and the final ``vae.ckpt``)
carries latent statistics fitted on that checkpoint's weights, so an interrupted run's files are
usable as they are. ``vae.ckpt`` is what ``model.vae_checkpoint`` of the ``train`` recipe points at.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import torch

from eartalk.core.config import structure, unstructure
from eartalk.core.data.dataset import mix_seed
from eartalk.core.engine.checkpoint import make_record
from eartalk.core.engine.vae import FrameVAE
from eartalk.recipes.base import Recipe
from eartalk.recipes.common import RecipeModule, fit
from eartalk.recipes.config import (
    DataConfig,
    FocusConfig,
    ModelConfig,
    OptimConfig,
    TrainerConfig,
    arch_from,
    validate_common,
)

try:
    import lightning as L
except ImportError:  # pragma: no cover
    L = None  # type: ignore[assignment]


@attrs.frozen
class VAEConfig:
    """Config of the ``vae`` recipe (see :class:`eartalk.recipes.train.TrainConfig` for the shared parts).

    Attributes:
        out_dir, seed, model, data, optim, trainer, resume: as in the ``train`` recipe.
        stats_batches: batches of training windows the latent mean/std are fitted on at every save.
        focus: reconstruction weighted up around the eyes and mouth (:class:`FocusConfig`; off by default).
    """

    out_dir: str = "runs/vae"
    seed: int = 0
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig(lr=1e-3, weight_decay=0.0, warmup_steps=20)
    trainer: TrainerConfig = TrainerConfig()
    stats_batches: int = 8
    resume: bool = True
    focus: FocusConfig = FocusConfig()


def load_vae_weights(vae: torch.nn.Module, path: str | Path) -> None:
    """Load a ``vae`` recipe checkpoint (weights and latent statistics) into ``vae``."""
    from eartalk.core.engine.checkpoint import load_vae_weights as load

    load(vae, path)


if L is not None:

    class FrameVAEModule(RecipeModule):
        """Lightning wrapper of :class:`~eartalk.core.engine.vae.FrameVAE` training."""

        def __init__(self, config: dict[str, Any]) -> None:
            super().__init__()
            self.save_hyperparameters({"config": config})
            self.cfg = structure(config, VAEConfig)
            self.vae = FrameVAE.from_arch(arch_from(self.cfg.model))

        def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
            return self.vae.loss(batch["frames"], self.cfg.focus.pixel_weights(batch))

        def fit_stats(self) -> None:
            """Fit the latent mean/std on ``stats_batches`` fixed training windows (deterministic:
            the same windows at every save, drawn without touching the training RNG or loader)."""
            data = self.trainer.datamodule
            data.setup("fit")
            dataset, batch = data.train_set, data.batch_size
            count = min(len(dataset), self.cfg.stats_batches * batch)
            items = [dataset[(i % len(dataset), mix_seed(self.cfg.seed, 2, i))] for i in range(count)]
            clips = (torch.stack([it["frames"] for it in items[i : i + batch]]).to(self.device) for i in range(0, count, batch))
            was_training = self.vae.training
            self.vae.eval()
            with torch.no_grad():
                self.vae.fit_latent_stats(clips)
            self.vae.train(was_training)

        def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            # Every checkpoint (periodic, last, final) carries statistics fitted on its own weights.
            self.fit_stats()
            for name in ("latent_mean", "latent_std"):
                checkpoint["state_dict"][f"vae.{name}"] = getattr(self.vae, name).detach().clone()
            super().on_save_checkpoint(checkpoint)

        def checkpoint_record(self) -> dict[str, Any]:
            return make_record("vae", arch_from(self.cfg.model), self.vae)


class VAERecipe(Recipe):
    name = "vae"
    description = "train the causal 3D frame VAE and fit its latent normalisation"
    Config = VAEConfig

    @classmethod
    def validate(cls, config: VAEConfig, source: str) -> None:
        validate_common(config, source)
        config.focus.validate(source)

    def run(self, config: VAEConfig, overrides: list[str] | None = None) -> Path:
        return fit(config, lambda: FrameVAEModule(unstructure(config)), lambda m: None, "vae.ckpt", extras=config.focus.extras)
