"""Pieces shared by the Lightning recipes: optimiser schedule, trainer, resume, loss plot."""

from __future__ import annotations

import csv
import logging
import math
import warnings
from pathlib import Path
from typing import Any

import torch

from eartalk.core.errors import EartalkError, InputError
from eartalk.recipes.config import OptimConfig, TrainerConfig

log = logging.getLogger(__name__)


def make_optimizer(params: Any, optim: OptimConfig, max_steps: int) -> dict[str, Any]:
    """AdamW with linear warm-up and cosine decay to ``min_lr_ratio * lr`` (Lightning's dict form)."""
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise EartalkError("nothing to train: every parameter is frozen (check `freeze` in the config)")
    opt = torch.optim.AdamW(trainable, lr=optim.lr, betas=(optim.beta1, optim.beta2), weight_decay=optim.weight_decay)

    def factor(step: int) -> float:
        if step < optim.warmup_steps:
            return (step + 1) / max(1, optim.warmup_steps)
        progress = min(1.0, (step - optim.warmup_steps) / max(1, max_steps - optim.warmup_steps))
        return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def check_finite(loss: torch.Tensor, step: int, out_dir: str | Path) -> None:
    """Stop with a clear error (checkpoints already written stay) when the loss is NaN or inf."""
    if not torch.isfinite(loss).all():
        raise EartalkError(
            f"training loss became {loss.item()} at step {step}. Checkpoints written so far are kept in "
            f"{Path(out_dir) / 'checkpoints'}; lower optim.lr, raise optim.warmup_steps or use "
            "trainer.precision=32-true, then resume (resume=true picks up last.ckpt)."
        )


def read_checkpoint(path: str | Path, what: str, hint: str) -> dict[str, Any]:
    """Load a checkpoint file on the CPU, with errors naming ``what`` and how to get one."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what}: {path} does not exist; {hint}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise InputError(f"{what}: cannot read {path} ({type(err).__name__}: {err}); {hint}") from None
    if not isinstance(ckpt, dict):
        raise InputError(f"{what}: {path} is not a checkpoint; {hint}")
    return ckpt


def quiet_lightning() -> None:
    """Hide Lightning's INFO banner lines (seed, GPU/TPU, tips) and its LeafSpec deprecation warning unless eartalk logs at DEBUG (-v)."""
    if not log.isEnabledFor(logging.DEBUG):
        for name in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)
        # Lightning's pytree helper trips torch's LeafSpec deprecation on every fit: not ours to fix.
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")


def build_trainer(trainer_cfg: TrainerConfig, out_dir: str | Path, monitor: str = "val/loss") -> Any:
    """A ``lightning.Trainer`` writing checkpoints (``last.ckpt`` for resuming) and CSV logs under ``out_dir``."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    quiet_lightning()
    out = Path(out_dir)
    checkpoint = ModelCheckpoint(
        dirpath=out / "checkpoints",
        filename="step{step:06d}",
        auto_insert_metric_name=False,
        save_last=True,
        every_n_train_steps=trainer_cfg.checkpoint_every_n_steps,
        save_top_k=-1 if trainer_cfg.max_steps <= 10 * trainer_cfg.checkpoint_every_n_steps else 3,
        monitor=None,
    )
    from eartalk.recipes.strategy import extra_callbacks, trainer_kwargs

    return L.Trainer(
        default_root_dir=str(out),
        max_steps=trainer_cfg.max_steps,
        accelerator=trainer_cfg.accelerator,
        **trainer_kwargs(trainer_cfg),  # strategy, devices, num_nodes (recipes/strategy.py)
        precision=trainer_cfg.precision,
        gradient_clip_val=trainer_cfg.gradient_clip_val,
        accumulate_grad_batches=trainer_cfg.accumulate_grad_batches,
        log_every_n_steps=trainer_cfg.log_every_n_steps,
        val_check_interval=trainer_cfg.val_every_n_steps,
        check_val_every_n_epoch=None,
        callbacks=[checkpoint, *extra_callbacks(trainer_cfg)],
        logger=CSVLogger(str(out), name="logs", version=""),
        enable_progress_bar=trainer_cfg.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


def resume_path(out_dir: str | Path, resume: bool) -> str | None:
    """``last.ckpt`` of a previous run in ``out_dir`` when resuming, else None."""
    last = Path(out_dir) / "checkpoints" / "last.ckpt"
    if resume and last.is_file():
        log.info("resuming from %s", last)
        return str(last)
    return None


def read_metrics(out_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Logged metrics of a run: name -> [(step, value), ...] from the CSV logger."""
    path = Path(out_dir) / "logs" / "metrics.csv"
    series: dict[str, list[tuple[int, float]]] = {}
    if not path.is_file():
        return series
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            step = int(float(row.get("step") or 0))
            for key, value in row.items():
                if key in ("step", "epoch") or value in (None, ""):
                    continue
                series.setdefault(key, []).append((step, float(value)))
    return series


def plot_losses(out_dir: str | Path, name: str = "loss.png") -> Path | None:
    """Plot every logged ``*loss*`` curve of a run to ``out_dir/name``; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {k: v for k, v in read_metrics(out_dir).items() if "loss" in k}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, points in sorted(series.items()):
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, label=key, marker="." if len(points) < 30 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(out_dir) / name
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def fit(config: Any, make_module: Any, stack_of: Any, final_name: str) -> Path:
    """Run a recipe: seed, save the resolved config, fit (resuming from ``last.ckpt`` if asked),
    save the final state as ``checkpoints/<final_name>`` and plot the losses.

    Args:
        config: a recipe config with ``seed``, ``out_dir``, ``data``, ``trainer`` and ``resume``.
        make_module: builds the LightningModule (called after seeding).
        stack_of: module -> condition stack the DataModule computes missing signals with (or None).
        final_name: file name of the final checkpoint.
    """
    import lightning as L

    from eartalk.core.config import save_resolved
    from eartalk.core.data.dataset import TalkingHeadDataModule
    from eartalk.recipes.strategy import add_rank_seed

    quiet_lightning()
    L.seed_everything(config.seed, workers=True)
    out = Path(config.out_dir)
    save_resolved(config, out)
    module = make_module()
    data = TalkingHeadDataModule(
        config.data.root,
        clip_frames=config.data.clip_frames,
        batch_size=config.data.batch_size,
        stack=stack_of(module),
        val_fraction=config.data.val_fraction,
        num_workers=config.data.num_workers,
        seed=config.seed,
    )
    trainer = build_trainer(config.trainer, out)
    add_rank_seed(trainer, config.seed)  # per-rank random streams (recipes/strategy.py)
    trainer.fit(module, datamodule=data, ckpt_path=resume_path(out, config.resume))
    # The final state is always saved (periodic saves need not land on the last step, and the
    # VAE fits its latent statistics after the last step).
    final = out / "checkpoints" / final_name
    trainer.save_checkpoint(final)
    plot_losses(out)
    return final


try:
    import lightning as L
except ImportError:  # pragma: no cover - Lightning is a hard dependency
    L = None  # type: ignore[assignment]

if L is not None:

    class RecipeModule(L.LightningModule):
        """A LightningModule whose subclasses only say how to compute their loss terms.

        ``losses(batch)`` returns ``{"loss": ..., <other terms>}``; training logs every term as
        ``train/<name>`` (stopping with a clear error on NaN), validation as ``val/<name>``, and
        the optimiser follows ``cfg.optim`` over ``cfg.trainer.max_steps``.
        """

        cfg: Any

        def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
            raise NotImplementedError

        def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
            losses = self.losses(batch)
            check_finite(losses["loss"], self.global_step, self.cfg.out_dir)
            self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, prog_bar=True, batch_size=batch["frames"].shape[0])
            return losses["loss"]

        def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
            losses = self.losses(batch)
            self.log_dict({f"val/{k}": v for k, v in losses.items()}, prog_bar=True, batch_size=batch["frames"].shape[0])

        def configure_optimizers(self) -> dict[str, Any]:
            return make_optimizer(self.parameters(), self.cfg.optim, self.cfg.trainer.max_steps)
