"""Pre-encoded VAE latents stored beside a dataset, keyed to the VAE checkpoint's hash.

The frozen frame VAE costs about a third of a training step at 256 px. ``eartalk encode CONFIG``
runs it once over a dataset and writes, for every clip::

    latents/<vae hash>/info.json          the VAE checkpoint's path and hash, latent shape, clip count
    latents/<vae hash>/<clip id>.clip.npy (T, C, h, w) float32: the clip encoded as one causal stream
    latents/<vae hash>/<clip id>.frame.npy (T, C, h, w) float32: every frame encoded alone (references)

Training with ``data.latents: true`` then reads these instead of running the VAE. The folder name
is the SHA-256 of the VAE checkpoint file, so another (or a retrained) VAE never reads a stale cache:
its hash names another folder, and a missing or incomplete folder is an error telling to run
``eartalk encode``. A clip's arrays are written to a temporary name and renamed, so an interrupted
encode leaves no half-written clip (the next run redoes it).

Note: a training window reads its latents sliced from the whole clip's causal encoding (the frames
before the window are the VAE's temporal context), while encoding on the fly starts the window cold;
the two differ by the VAE's look-back at the window's first ``vae_temporal_kernel - 1`` frames.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from eartalk.core.errors import InputError

FOLDER = "latents"


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_dir(root: str | Path, vae_hash: str) -> Path:
    """``root/latents/<first 16 hex digits of the hash>``."""
    return Path(root) / FOLDER / vae_hash[:16]


class LatentWriter:
    """Write pre-encoded latents of a dataset for one VAE checkpoint."""

    def __init__(self, root: str | Path, vae_path: str | Path, vae_hash: str | None = None) -> None:
        self.vae_hash = vae_hash or file_hash(vae_path)
        self.dir = cache_dir(root, self.vae_hash)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.vae_path = str(vae_path)

    def has(self, clip_id: str) -> bool:
        return (self.dir / f"{clip_id}.clip.npy").is_file() and (self.dir / f"{clip_id}.frame.npy").is_file()

    def add(self, clip_id: str, clip: np.ndarray, frames: np.ndarray) -> None:
        """Store ``clip`` (T, C, h, w) (causal stream) and ``frames`` (T, C, h, w) (each frame alone)."""
        if clip.shape != frames.shape or clip.ndim != 4:
            raise ValueError(f"clip {clip_id}: latents must be two (T, C, h, w) arrays, got {clip.shape} and {frames.shape}")
        for kind, array in (("frame", frames), ("clip", clip)):  # clip last: its presence marks the clip done
            final = self.dir / f"{clip_id}.{kind}.npy"
            tmp = self.dir / f".{clip_id}.{kind}.{os.getpid()}.tmp.npy"  # per process: two encoders may race
            np.save(tmp, np.ascontiguousarray(array, dtype=np.float32))
            os.replace(tmp, final)

    def finish(self, clips: int, shape: tuple[int, ...]) -> Path:
        info = {"vae_checkpoint": self.vae_path, "vae_sha256": self.vae_hash, "clips": clips, "latent_shape": list(shape)}
        path = self.dir / "info.json"
        tmp = self.dir / f".info.{os.getpid()}.tmp.json"
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp, path)
        return path


class LatentStore:
    """Read pre-encoded latents of a dataset (memory-mapped).

    Args:
        root: dataset folder.
        vae_hash: SHA-256 of the VAE checkpoint the model uses.
        clip_ids: clips that must be present.

    Raises:
        InputError: the cache for this VAE is missing or lacks some of ``clip_ids``.
    """

    def __init__(self, root: str | Path, vae_hash: str, clip_ids: Iterable[str]) -> None:
        self.dir = cache_dir(root, vae_hash)
        info = self.dir / "info.json"
        if not info.is_file():
            others = sorted(p.name for p in (Path(root) / FOLDER).glob("*") if p.is_dir())
            stale = f" (caches for other VAE checkpoints exist: {', '.join(others)})" if others else ""
            raise InputError(
                f"data.latents: {root} has no latents for this VAE checkpoint (sha256 {vae_hash[:16]}...){stale}; "
                "run `eartalk encode CONFIG` with the training config first, or set data.latents=false"
            )
        stored = json.loads(info.read_text())
        if stored.get("vae_sha256") != vae_hash:
            raise InputError(f"data.latents: {self.dir} belongs to another VAE checkpoint; rerun `eartalk encode CONFIG`")
        missing = [c for c in clip_ids if not (self.dir / f"{c}.clip.npy").is_file()]
        if missing:
            raise InputError(
                f"data.latents: {len(missing)} clip(s) of {root} have no latents (e.g. {missing[0]}); "
                "the dataset grew since `eartalk encode` ran: run it again"
            )
        self._cache: dict[tuple[str, str], Any] = {}

    def _load(self, clip_id: str, kind: str) -> np.ndarray:
        key = (clip_id, kind)
        if key not in self._cache:
            self._cache[key] = np.load(self.dir / f"{clip_id}.{kind}.npy", mmap_mode="r")
        return self._cache[key]

    def clip(self, clip_id: str) -> np.ndarray:
        """``(T, C, h, w)``: the clip encoded as one causal stream."""
        return self._load(clip_id, "clip")

    def frames(self, clip_id: str) -> np.ndarray:
        """``(T, C, h, w)``: each frame encoded alone (reference frames)."""
        return self._load(clip_id, "frame")

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers re-open the memory maps
        return {**self.__dict__, "_cache": {}}


__all__ = ["LatentStore", "LatentWriter", "cache_dir", "file_hash"]
