"""Pieces shared by the Lightning recipes: optimiser (decay groups, schedule), trainer, resume, loss plot."""

from __future__ import annotations

import csv
import logging
import math
import warnings
from pathlib import Path
from typing import Any

import torch

from eartalk.core.errors import EartalkError
from eartalk.recipes.config import OptimConfig, TrainerConfig

log = logging.getLogger(__name__)


LOG_ROW_KEY = "eartalk_log_row"  # the metrics row of the step a checkpoint was saved at
DECAYED_MODULES = (torch.nn.Linear, torch.nn.modules.conv._ConvNd)


def decay_groups(module: torch.nn.Module) -> tuple[list[str], list[str]]:
    """Names of the trainable parameters that get weight decay, and of those that do not.

    Only the weight matrices and kernels of linear and convolution layers are decayed. Biases,
    norm scales, embeddings (``nn.Embedding``, position/role/type embeddings) and learned tokens
    (null tokens, the MAR mask token) are not: decay would pull them towards zero, which for a
    token or an embedding is a meaning, not a regularisation.
    """
    decay, no_decay = [], []
    for module_name, sub in module.named_modules():
        for leaf, param in sub.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            name = f"{module_name}.{leaf}" if module_name else leaf
            (decay if isinstance(sub, DECAYED_MODULES) and leaf == "weight" else no_decay).append(name)
    return decay, no_decay


def make_optimizer(
    module: torch.nn.Module, optim: OptimConfig, max_steps: int, lr_scale: Any = None
) -> dict[str, Any]:
    """AdamW with linear warm-up and cosine decay to ``min_lr_ratio * lr`` (Lightning's dict form).

    Args:
        module: the LightningModule (its trainable parameters are optimised).
        optim: learning rate, betas, weight decay (applied as :func:`decay_groups` says) and schedule.
        max_steps: length of the schedule.
        lr_scale: parameter name -> factor on the learning rate (fine-tuning: old parts slower).
    """
    decay, no_decay = decay_groups(module)
    if not decay and not no_decay:
        raise EartalkError("nothing to train: every parameter is frozen (check `freeze` in the config)")
    params = dict(module.named_parameters())
    scale_of = lr_scale or (lambda name: 1.0)
    groups: dict[tuple[bool, float], list[torch.nn.Parameter]] = {}
    for names, decayed in ((decay, True), (no_decay, False)):
        for name in names:
            groups.setdefault((decayed, float(scale_of(name))), []).append(params[name])
    param_groups = [
        {"params": ps, "weight_decay": optim.weight_decay if decayed else 0.0, "lr": optim.lr * scale}
        for (decayed, scale), ps in sorted(groups.items(), key=lambda item: (not item[0][0], -item[0][1]))
    ]
    opt = torch.optim.AdamW(param_groups, lr=optim.lr, betas=(optim.beta1, optim.beta2), weight_decay=optim.weight_decay)

    def factor(step: int) -> float:
        if step < optim.warmup_steps:
            return (step + 1) / max(1, optim.warmup_steps)
        progress = min(1.0, (step - optim.warmup_steps) / max(1, max_steps - optim.warmup_steps))
        return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def preflight_conditions(specs: Any, source: str = "conditions") -> None:
    """Build a condition stack and run each plugin once on one second of silence, before any training.

    Building a plugin imports its dependencies (torchaudio, pyannote.audio, ...) and running its
    ``extract`` exercises them, so a broken install fails here, in seconds, with the plugin named,
    instead of minutes into a run. Plugins that need a face track are built but not run.

    Raises:
        ConfigError: a plugin cannot be built or run on this install.
    """
    from eartalk.conditions.stack import ConditionStack
    from eartalk.core.errors import ConfigError
    from eartalk.core.types import SAMPLES_PER_FRAME, Sample

    specs = list(specs)
    try:
        stack = ConditionStack.from_specs(specs, 8, source=source)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - an import or build failure of a plugin dependency
        raise ConfigError(f"{source}: a condition plugin cannot be built on this install ({type(err).__name__}: {err}); "
                          "reinstall as the README says (pip install -e \".[dev]\" -c constraints.txt)") from err
    sample = Sample(frames=None, audio=torch.zeros(25 * SAMPLES_PER_FRAME), metadata={}, num_frames=25)
    for name in stack.names:
        plugin = stack.plugin(name)
        if "face" in plugin.requires or "frames" in plugin.requires:
            continue
        try:
            with torch.no_grad():
                plugin.extract(sample)
        except Exception as err:  # noqa: BLE001
            raise ConfigError(f"{source}: condition {name!r} cannot run on this install ({type(err).__name__}: {err}); "
                              "reinstall as the README says (pip install -e \".[dev]\" -c constraints.txt)") from err


def check_finite(loss: torch.Tensor, step: int, out_dir: str | Path) -> None:
    """Stop with a clear error (checkpoints already written stay) when the loss is NaN or inf."""
    if not torch.isfinite(loss).all():
        raise EartalkError(
            f"training loss became {loss.item()} at step {step}. Checkpoints written so far are kept in "
            f"{Path(out_dir) / 'checkpoints'}; lower optim.lr, raise optim.warmup_steps or use "
            "trainer.precision=32-true, then resume (resume=true picks up last.ckpt)."
        )


def quiet_lightning() -> None:
    """Hide Lightning's INFO banner lines (seed, GPU/TPU, tips) and its LeafSpec deprecation warning unless eartalk logs at DEBUG (-v)."""
    if not log.isEnabledFor(logging.DEBUG):
        for name in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)
        # Lightning's pytree helper trips torch's LeafSpec deprecation on every fit: not ours to fix.
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")


def keep_checkpoints(trainer_cfg: TrainerConfig) -> int:
    """How many step checkpoints a run keeps: all of a short run, the newest 3 of a long one."""
    return -1 if trainer_cfg.max_steps <= 10 * trainer_cfg.checkpoint_every_n_steps else 3


def step_progress_bar() -> Any:
    """Lightning's rich bar, labelled by steps: runs are bounded by ``max_steps``, so the stock label
    ("Epoch 3/-2", from ``max_epochs=-1``) is wrong; this one reads "Epoch 3 (step budget 900)"."""
    from lightning.pytorch.callbacks import RichProgressBar

    class StepProgressBar(RichProgressBar):
        def _get_train_description(self, current_epoch: int) -> str:
            max_epochs = self.trainer.max_epochs
            if max_epochs is not None and max_epochs > 0:
                return f"Epoch {current_epoch}/{max_epochs - 1}"
            return f"Epoch {current_epoch} (step budget {self.trainer.max_steps})"

    return StepProgressBar()


def build_trainer(
    trainer_cfg: TrainerConfig, out_dir: str | Path, monitor: str = "val/loss", seed: int = 0, resume_step: int | None = None
) -> Any:
    """A ``lightning.Trainer`` writing checkpoints (``last.ckpt`` for resuming) and CSV logs under ``out_dir``.

    Checkpoints are atomic and a killed run resumes exactly (see :mod:`eartalk.recipes.resume`).

    Args:
        trainer_cfg: the config's ``trainer`` section.
        out_dir: the run folder.
        monitor: unused (step checkpoints are kept by recency); kept for callers.
        seed: the run's seed (per-step random streams).
        resume_step: global step of the checkpoint the run resumes from (its logs are kept up to it).
    """
    import lightning as L

    from eartalk.recipes.resume import AtomicCheckpointIO, RunCSVLogger, StepCheckpoint, StepSeed

    quiet_lightning()
    out = Path(out_dir)
    checkpoint = StepCheckpoint(out / "checkpoints", trainer_cfg.checkpoint_every_n_steps, keep_checkpoints(trainer_cfg))
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
        callbacks=[
            checkpoint,
            StepSeed(seed, trainer_cfg.accumulate_grad_batches),
            *extra_callbacks(trainer_cfg),
            *([step_progress_bar()] if trainer_cfg.progress_bar else []),
        ],
        logger=RunCSVLogger(out, resume_step),
        plugins=[AtomicCheckpointIO()],
        # The training loader shards itself over ranks and keeps its position (ResumableSampler).
        use_distributed_sampler=False,
        enable_progress_bar=trainer_cfg.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


def resume_path(out_dir: str | Path, resume: bool) -> str | None:
    """The newest complete checkpoint of a previous run in ``out_dir`` when resuming, else None."""
    from eartalk.recipes.resume import prepare_resume

    found = prepare_resume(out_dir, resume)
    return str(found[0]) if found else None


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


def make_datamodule(config: Any, stack: Any, root: str | Path | None = None, extras: tuple[str, ...] = ()) -> Any:
    """The training DataModule of a recipe config (resumable training loader)."""
    from eartalk.core.data.dataset import TalkingHeadDataModule
    from eartalk.recipes.encode import latents_key

    return TalkingHeadDataModule(
        root if root is not None else config.data.root,
        clip_frames=config.data.clip_frames,
        batch_size=config.data.batch_size,
        stack=stack,
        val_fraction=config.data.val_fraction,
        num_workers=config.data.num_workers,
        seed=config.seed,
        resumable=True,
        latents=latents_key(config),  # pre-encoded VAE latents (recipes/encode.py)
        extras=extras,
    )


def fit(config: Any, make_module: Any, stack_of: Any, final_name: str, on_start: Any = None,
        extras: tuple[str, ...] = ()) -> Path:
    """Run a recipe: seed, save the resolved config, fit (resuming from the newest complete
    checkpoint if asked), save the final state as ``checkpoints/<final_name>`` and plot the losses.

    Args:
        config: a recipe config with ``seed``, ``out_dir``, ``data``, ``trainer`` and ``resume``.
        make_module: builds the LightningModule (called after seeding).
        stack_of: module -> condition stack the DataModule computes missing signals with (or None).
        final_name: file name of the final checkpoint.
        on_start: optional ``f(module, datamodule)`` called once both exist, before training.
        extras: stored extra arrays the batches carry (``batch["extras"]``).
    """
    import lightning as L

    from eartalk.core.config import save_resolved
    from eartalk.recipes.resume import prepare_resume
    from eartalk.recipes.strategy import add_rank_seed

    quiet_lightning()
    L.seed_everything(config.seed, workers=True, verbose=False)
    out = Path(config.out_dir)
    found = prepare_resume(out, config.resume)
    save_resolved(config, out)
    module = make_module()
    data = make_datamodule(config, stack_of(module), extras=extras)
    if data.stack is not None:  # loud absence: per-condition presence on training frames (presence.json)
        from eartalk.conditions.presence import check_presence

        check_presence(data, out)
    if on_start is not None:
        on_start(module, data)
    trainer = build_trainer(config.trainer, out, seed=config.seed, resume_step=found[1] if found else None)
    if found:
        from eartalk.recipes.resume import RunCSVLogger, pending_log_row

        if isinstance(trainer.logger, RunCSVLogger):
            trainer.logger.restore_row(pending_log_row(found[0]))
    add_rank_seed(trainer, config.seed)  # per-rank random streams (recipes/strategy.py)
    trainer.fit(module, datamodule=data, ckpt_path=str(found[0]) if found else None)
    # The final state is always saved (periodic saves need not land on the last step).
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
            logged = {f"train/{k}": v.detach() for k, v in losses.items()}
            self.log_dict(logged, prog_bar=True, batch_size=batch["frames"].shape[0])
            # This step's log row is written after its checkpoint is: the checkpoint carries it too.
            self._pending_row = {"epoch": self.current_epoch, **{k: float(v) for k, v in logged.items()}}
            return losses["loss"]

        def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
            losses = self.losses(batch)
            self.log_dict({f"val/{k}": v for k, v in losses.items()}, prog_bar=True, batch_size=batch["frames"].shape[0])

        def lr_scale(self, name: str) -> float:
            """Factor on the learning rate of parameter ``name`` (1; fine-tuning overrides it)."""
            return 1.0

        def checkpoint_record(self) -> dict[str, Any]:
            """The ``eartalk`` record stored in every checkpoint (kind, arch, stack, latent stats)."""
            raise NotImplementedError

        def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            checkpoint["eartalk"] = self.checkpoint_record()
            row = getattr(self, "_pending_row", None)
            trainer = self._trainer
            if row is not None and trainer is not None and trainer.training and trainer._logger_connector.should_update_logs:
                checkpoint[LOG_ROW_KEY] = {**row, "step": trainer.fit_loop.epoch_loop._batches_that_stepped}

        def configure_optimizers(self) -> dict[str, Any]:
            return make_optimizer(self, self.cfg.optim, self.cfg.trainer.max_steps, self.lr_scale)
