"""Kill-safe training runs: atomic checkpoints, exact resume, logs that survive a restart.

A run killed at any moment (SIGKILL included) and rerun with the same command continues exactly
where its newest complete checkpoint left it, and trains the same steps on the same batches with
the same random draws as a run that was never interrupted:

* **Checkpoint files** are written to a hidden temporary file beside the target, flushed, then
  renamed over it (:class:`AtomicCheckpointIO`), so a file named ``*.ckpt`` is always complete.
  ``last.ckpt`` is a hard link to the newest step checkpoint, replaced atomically after it
  (:class:`StepCheckpoint`); a kill between the two leaves ``last.ckpt`` one save behind, which
  the rerun repairs before it starts. No ``-v1`` copies are made (a step's file is replaced), and
  temporary files of a killed run are removed by the next one.
* **Resume** picks the complete checkpoint with the highest ``global_step`` (:func:`newest_checkpoint`).
* **Data order**: training batches come from a :class:`~eartalk.core.data.dataset.ResumableLoader`,
  whose position (epoch, items taken) Lightning stores in every checkpoint and restores before the
  first batch, and whose items carry their own seeds (see ``ResumableSampler``).
* **Random draws** (condition dropout, MAR masks, diffusion timesteps and noise, context noise):
  before every training batch the RNGs of torch (CPU and CUDA), numpy and Python are seeded from
  ``(seed, global_step, micro-batch, rank)`` (:class:`StepSeed`), so the draws of step ``s`` depend
  on the checkpointed step counter only, not on how the process got there.
* **Logs**: :class:`RunCSVLogger` appends to ``logs/metrics.csv`` and flushes every row; on resume
  it keeps the rows before the checkpoint's step and drops the later ones (they are trained again).
"""

from __future__ import annotations

import csv
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eartalk.core.data.dataset import mix_seed
from eartalk.core.engine.checkpoint import atomic_save

log = logging.getLogger(__name__)

try:  # Lightning is a hard dependency; the guard keeps the module importable for docs tools.
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import Logger
    from lightning.pytorch.plugins.io import TorchCheckpointIO
except ImportError:  # pragma: no cover
    L = None  # type: ignore[assignment]


def link_atomically(src: str | Path, dst: str | Path) -> None:
    """Make ``dst`` the same file as ``src`` (hard link, or a copy where links are impossible), atomically."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def clean_temporary(ckpt_dir: str | Path) -> list[Path]:
    """Remove temporary files a killed run left in ``ckpt_dir``; returns them."""
    removed = []
    for path in Path(ckpt_dir).glob(".*.tmp"):
        path.unlink(missing_ok=True)
        removed.append(path)
    if removed:
        log.info("removed %d temporary file(s) of an interrupted save in %s", len(removed), ckpt_dir)
    return removed


def checkpoint_step(path: str | Path) -> int | None:
    """``global_step`` of a checkpoint file (memory-mapped read), None when unreadable."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        return int(ckpt["global_step"])
    except Exception:  # noqa: BLE001 - an unreadable file is skipped, with a warning
        log.warning("ignoring unreadable checkpoint %s", path)
        return None


def newest_checkpoint(ckpt_dir: str | Path) -> tuple[Path, int] | None:
    """The complete checkpoint with the highest global step in ``ckpt_dir`` (``last.ckpt`` wins ties)."""
    found = []
    for path in Path(ckpt_dir).glob("*.ckpt"):
        step = checkpoint_step(path)
        if step is not None:
            found.append((step, path.name == "last.ckpt", path))
    if not found:
        return None
    step, _, path = max(found, key=lambda item: (item[0], item[1], item[2].name))
    return path, step


def prepare_resume(out_dir: str | Path, resume: bool) -> tuple[Path, int] | None:
    """Clean up after a killed run and choose where to resume (``(checkpoint, step)`` or None).

    ``last.ckpt`` is re-pointed at the newest complete checkpoint when a kill left it behind.
    """
    ckpt_dir = Path(out_dir) / "checkpoints"
    if not ckpt_dir.is_dir():
        return None
    clean_temporary(ckpt_dir)
    if not resume:
        return None
    newest = newest_checkpoint(ckpt_dir)
    if newest is None:
        return None
    path, step = newest
    last = ckpt_dir / "last.ckpt"
    if path != last:
        log.info("last.ckpt was behind %s (step %d): re-linked", path.name, step)
        link_atomically(path, last)
    log.info("resuming from %s (step %d)", path, step)
    return path, step


def pending_log_row(path: str | Path) -> dict[str, Any] | None:
    """The metrics row a checkpoint carries for its own step (logged after the save, so a kill
    right after the save would lose it)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True).get("eartalk_log_row")
    except Exception:  # noqa: BLE001
        return None


def seed_all(seed: int) -> None:
    """Seed torch (all devices), numpy and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class _CSVRows:
    """``logs/metrics.csv`` kept on disk row by row (the header grows as new metric names appear)."""

    def __init__(self, path: Path, keep_before: int | None) -> None:
        self.path = path
        self.keys: list[str] = []
        self.rows: list[dict[str, Any]] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file():
            with path.open(newline="") as handle:
                old = list(csv.DictReader(handle))
            if keep_before is None:
                # A fresh run in a folder with logs: keep them beside, never delete them.
                n = 1
                while (path.parent / f"metrics.previous-{n}.csv").exists():
                    n += 1
                os.replace(path, path.parent / f"metrics.previous-{n}.csv")
                log.info("earlier logs kept as %s", path.parent / f"metrics.previous-{n}.csv")
            else:
                self.rows = [r for r in old if r.get("step") not in (None, "") and int(float(r["step"])) < keep_before]
                for row in self.rows:
                    self.keys.extend(k for k in row if k not in self.keys)
                self._rewrite()

    def _rewrite(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=sorted(self.keys))
            writer.writeheader()
            writer.writerows(self.rows)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)

    def has(self, step: int, key: str) -> bool:
        return any(r.get("step") not in (None, "") and int(float(r["step"])) == step and r.get(key) not in (None, "") for r in self.rows)

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if set(row) - set(self.keys) or not self.path.is_file():
            self.keys.extend(k for k in row if k not in self.keys)
            self._rewrite()
            return
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=sorted(self.keys)).writerow(row)
            handle.flush()


if L is not None:

    class AtomicCheckpointIO(TorchCheckpointIO):
        """Lightning's torch checkpoint IO, writing through a temporary file and an atomic rename."""

        def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
            atomic_save(checkpoint, path)

    class StepCheckpoint(ModelCheckpoint):
        """``step{N:06d}.ckpt`` every ``every_n_train_steps`` and ``last.ckpt`` as an atomic hard link to it.

        Args:
            dirpath: checkpoint folder.
            every_n_train_steps: save period.
            keep: how many step checkpoints to keep (the newest; -1 = all).
        """

        def __init__(self, dirpath: str | Path, every_n_train_steps: int, keep: int = -1) -> None:
            super().__init__(
                dirpath=dirpath,
                filename="step{step:06d}",
                auto_insert_metric_name=False,
                save_last="link",
                every_n_train_steps=every_n_train_steps,
                save_top_k=keep,
                # "keep the newest k" is top-k on the step counter (Lightning needs a monitor for k > 1)
                monitor="step" if keep > 0 else None,
                mode="max",
                enable_version_counter=False,
            )

        @staticmethod
        def _link_checkpoint(trainer: Any, filepath: str, linkpath: str) -> None:
            if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
                link_atomically(filepath, linkpath)
            trainer.strategy.barrier()

    class StepSeed(L.Callback):
        """Seed every RNG before each training (and validation) batch from the step counter.

        Args:
            seed: the run's seed.
            accumulate: ``accumulate_grad_batches`` (micro-batches per optimiser step).
        """

        def __init__(self, seed: int, accumulate: int = 1) -> None:
            self.seed, self.accumulate = int(seed), max(1, int(accumulate))

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            seed_all(mix_seed(self.seed, 0, trainer.global_step, batch_idx % self.accumulate, trainer.global_rank))

        def on_validation_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
            seed_all(mix_seed(self.seed, 1, trainer.global_step, batch_idx, trainer.global_rank))

    class RunCSVLogger(Logger):
        """CSV metrics in ``<out_dir>/logs/metrics.csv`` that survive restarts.

        Args:
            out_dir: the run folder.
            resume_step: the global step of the checkpoint being resumed (rows from it on are
                dropped, they are trained again), or None for a fresh run (an earlier
                ``metrics.csv`` is kept as ``metrics.previous-N.csv``).
        """

        def __init__(self, out_dir: str | Path, resume_step: int | None = None) -> None:
            super().__init__()
            self._dir = Path(out_dir) / "logs"
            self._rows = _CSVRows(self._dir / "metrics.csv", resume_step)

        @property
        def name(self) -> str:
            return "logs"

        @property
        def version(self) -> str:
            return ""

        @property
        def root_dir(self) -> str:
            return str(self._dir.parent)

        @property
        def log_dir(self) -> str:
            return str(self._dir)

        @property
        def save_dir(self) -> str:
            return str(self._dir.parent)

        def restore_row(self, row: dict[str, Any] | None) -> None:
            """Put back the resumed checkpoint's own row if the kill came before it was written."""
            if row and not any(self._rows.has(int(row["step"]), k) for k in row if k.startswith("train/")):
                self._rows.add(dict(row))

        def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
            """Not stored here: the run folder's ``config.resolved.yaml`` holds the config."""

        def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
            from lightning.pytorch.utilities import rank_zero_only

            if getattr(rank_zero_only, 'rank', 0) != 0:
                return
            row: dict[str, Any] = {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in metrics.items()}
            row["step"] = int(step) if step is not None else len(self._rows.rows)
            self._rows.add(row)
