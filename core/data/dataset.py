"""The eartalk dataset format: writer, reader and Lightning DataModule.

A dataset is a directory::

    dataset.json          format name, version, fps, sample rate, resolution
    manifest.jsonl        one JSON object per finished clip (the commit record)
    skipped.jsonl         inputs the latest run skipped, with the reason
    sources.jsonl         (prepare only) input files fully processed, for resuming
    shards/00000/<id>/    one clip: frames.npy (T, 3, R, R) uint8, audio.npy (T * 640,) float32,
                          signal.<name>.npy (T, D) float32 per stored condition signal,
                          extra.<name>.npy (extra ground truth, e.g. synth's mouth),
                          face.*.npy (MediaPipe face track, when extracted)

Writes are crash-safe: a clip's arrays go to a hidden ``.partial-<id>`` folder that is renamed into
place when complete, and only then is its manifest line appended (one ``write`` + ``fsync``). A
clip without a manifest line does not exist for readers and is redone by the next run; a torn last
manifest line is ignored by readers and cut off by the next writer.

Arrays are plain ``.npy`` files read with memory mapping, so a training window of T frames reads
only those frames from disk.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from eartalk.core.errors import ConfigError, EartalkError, InputError, WeightsNotFoundError
from eartalk.core.types import AUDIO_SAMPLE_RATE, SAMPLES_PER_FRAME, VIDEO_FPS, FaceTrack, Sample, to_model_range

log = logging.getLogger(__name__)

FORMAT_NAME = "eartalk-dataset"
FORMAT_VERSION = 1
MANIFEST = "manifest.jsonl"
SKIPPED = "skipped.jsonl"
INFO = "dataset.json"
_FACE_FIELDS = ("landmarks", "blendshapes", "matrices", "present")


def _jsonable(value: Any) -> Any:
    """Metadata to plain JSON types (numpy scalars/arrays, tensors, paths, tuples)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def options_key(options: Any) -> Any:
    """JSON form of a plugin's attrs options (stored with prepared signals, compared on read)."""
    if options is None:
        return None
    data = attrs.asdict(options) if attrs.has(type(options)) else options
    return json.loads(json.dumps(_jsonable(data), sort_keys=True, default=str))


def read_manifest(root: str | Path) -> list[dict[str, Any]]:
    """Entries of ``root/manifest.jsonl``; a torn or corrupt line is skipped with a warning."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return []
    entries = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.endswith(b"\n"):
                log.warning("%s: ignoring unfinished last line %d (interrupted write)", path, number)
                break
            try:
                entry = json.loads(raw)
            except json.JSONDecodeError:
                log.warning("%s: ignoring corrupt line %d", path, number)
                continue
            if isinstance(entry, dict) and "id" in entry:
                entries.append(entry)
    return entries


def clip_dir(root: str | Path, entry: Mapping[str, Any]) -> Path:
    """Folder holding the arrays of a manifest entry."""
    return Path(root) / "shards" / str(entry["shard"]) / str(entry["id"])


class DatasetWriter:
    """Append clips to a dataset directory (created if needed); resumable and crash-safe.

    Args:
        root: dataset directory.
        resolution: frame side R every clip must have; an existing dataset must match.
        clips_per_shard: clips per ``shards/NNNNN`` folder.
        fps: video frame rate (25).
        sample_rate: audio rate (16000).

    Raises:
        ConfigError: ``root`` holds a dataset of another resolution or format.
    """

    def __init__(
        self,
        root: str | Path,
        resolution: int,
        clips_per_shard: int = 256,
        fps: int = VIDEO_FPS,
        sample_rate: int = AUDIO_SAMPLE_RATE,
    ) -> None:
        if fps != VIDEO_FPS or sample_rate != AUDIO_SAMPLE_RATE:
            raise ConfigError(f"datasets are {VIDEO_FPS} fps / {AUDIO_SAMPLE_RATE} Hz, got {fps} fps / {sample_rate} Hz")
        self.root = Path(root)
        self.resolution = int(resolution)
        self.clips_per_shard = max(1, int(clips_per_shard))
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "shards").mkdir(exist_ok=True)
        info_path = self.root / INFO
        info = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "fps": fps, "sample_rate": sample_rate,
                "resolution": self.resolution}
        if info_path.is_file():
            old = json.loads(info_path.read_text())
            if old.get("format") != FORMAT_NAME or old.get("resolution") != self.resolution:
                raise ConfigError(
                    f"{self.root} already holds a {old.get('format')} dataset at resolution {old.get('resolution')}; "
                    f"cannot add clips at resolution {self.resolution}. Use another output folder."
                )
        else:
            tmp = info_path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(info, indent=2) + "\n")
            os.replace(tmp, info_path)
        self._repair_manifest()
        self._entries = {e["id"]: e for e in read_manifest(self.root)}
        self._count = len(self._entries)
        (self.root / SKIPPED).write_text("")  # skipped.jsonl describes the latest run
        self._manifest = (self.root / MANIFEST).open("ab")

    def _repair_manifest(self) -> None:
        """Cut a torn last line (left by a crash mid-write) so that appends start on a new line."""
        path = self.root / MANIFEST
        if not path.is_file():
            return
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            log.warning("%s: dropping an unfinished last line left by an interrupted run", path)
            with path.open("r+b") as handle:
                handle.truncate(keep)

    # -- queries ----------------------------------------------------------------------------
    def has(self, clip_id: str) -> bool:
        """True when clip ``clip_id`` is fully written (present in the manifest)."""
        return clip_id in self._entries

    @property
    def entries(self) -> list[dict[str, Any]]:
        """Manifest entries written so far (this run and earlier ones)."""
        return list(self._entries.values())

    # -- writing ------------------------------------------------------------------------------
    def add(
        self,
        clip_id: str,
        frames: torch.Tensor | np.ndarray,
        audio: torch.Tensor | np.ndarray | None,
        face: FaceTrack | None = None,
        metadata: Mapping[str, Any] | None = None,
        signals: Mapping[str, torch.Tensor | np.ndarray] | None = None,
        source: str = "",
        *,
        columns: Mapping[str, Sequence[str]] | None = None,
        signal_options: Mapping[str, Any] | None = None,
        extras: Mapping[str, torch.Tensor | np.ndarray] | None = None,
    ) -> dict[str, Any]:
        """Write one clip and commit it to the manifest.

        Args:
            clip_id: unique id (a file-name-safe string).
            frames: ``(T, 3, R, R)`` uint8 RGB at 25 fps.
            audio: ``(T * 640,)`` float32 16 kHz mono (padded with zeros or cut to that length);
                None stores silence.
            face: MediaPipe face track of the frames (landmarks in crop coordinates), or None.
            metadata: JSON-able labels (emotion, intensity, identity...).
            signals: plugin name -> ``(T, D)`` float32 signal (NaN rows = absent).
            source: where the clip came from (input path, generator).
            columns: plugin name -> column names of the stored signal.
            signal_options: plugin name -> the plugin's options used to extract it (a reader
                recomputes a signal whose plugin options differ).
            extras: other per-frame ground truth, name -> array with T rows.

        Returns:
            The manifest entry.
        """
        if not clip_id or any(c in clip_id for c in "/\\") or clip_id.startswith("."):
            raise ValueError(f"clip id {clip_id!r} must be a non-empty file name without slashes")
        frames_np = (frames.numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames))
        if frames_np.dtype != np.uint8 or frames_np.ndim != 4 or frames_np.shape[1:] != (3, self.resolution, self.resolution):
            raise ValueError(
                f"clip {clip_id}: frames must be uint8 (T, 3, {self.resolution}, {self.resolution}), "
                f"got {frames_np.dtype} {tuple(frames_np.shape)}"
            )
        num_frames = int(frames_np.shape[0])
        length = num_frames * SAMPLES_PER_FRAME
        audio_np = np.zeros(length, np.float32)
        if audio is not None:
            a = (audio.numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)).astype(np.float32).reshape(-1)
            audio_np[: min(length, a.shape[0])] = a[:length]
        shard = f"{self._count // self.clips_per_shard:05d}"
        final = self.root / "shards" / shard / clip_id
        partial = final.parent / f".partial-{clip_id}"
        for stale in (partial, final):  # left by an interrupted run: the clip is redone
            if stale.exists():
                shutil.rmtree(stale)
        partial.mkdir(parents=True)
        np.save(partial / "frames.npy", np.ascontiguousarray(frames_np))
        np.save(partial / "audio.npy", audio_np)
        stored: list[str] = []
        for name, value in (signals or {}).items():
            array = np.asarray(value.numpy() if isinstance(value, torch.Tensor) else value, np.float32)
            if array.ndim != 2 or array.shape[0] != num_frames:
                raise ValueError(f"clip {clip_id}: signal {name!r} must be (T={num_frames}, D), got {array.shape}")
            np.save(partial / f"signal.{name}.npy", array)
            stored.append(name)
        extra_names: list[str] = []
        for name, value in (extras or {}).items():
            array = np.asarray(value.numpy() if isinstance(value, torch.Tensor) else value)
            if array.shape[:1] != (num_frames,):
                raise ValueError(f"clip {clip_id}: extra {name!r} must have T={num_frames} rows, got {array.shape}")
            np.save(partial / f"extra.{name}.npy", array)
            extra_names.append(name)
        if face is not None:
            for field in _FACE_FIELDS:
                np.save(partial / f"face.{field}.npy", getattr(face, field).numpy())
            np.save(partial / "face.blendshape_names.npy", np.asarray(face.blendshape_names, dtype=str))
        os.replace(partial, final)
        entry = {
            "id": clip_id,
            "shard": shard,
            "num_frames": num_frames,
            "fps": VIDEO_FPS,
            "resolution": self.resolution,
            "sample_rate": AUDIO_SAMPLE_RATE,
            "source": str(source),
            "metadata": _jsonable(dict(metadata or {})),
            "signals": stored,
            "columns": {k: list(v) for k, v in (columns or {}).items() if k in stored},
            "signal_options": {k: options_key(v) for k, v in (signal_options or {}).items() if k in stored},
            "extras": extra_names,
            "face": face is not None,
        }
        line = (json.dumps(entry, separators=(",", ":")) + "\n").encode()
        self._manifest.write(line)
        self._manifest.flush()
        os.fsync(self._manifest.fileno())
        self._entries[clip_id] = entry
        self._count += 1
        return entry

    def skip(self, source: str, reason: str, **fields: Any) -> None:
        """Record an input that this run skipped (``skipped.jsonl``)."""
        with (self.root / SKIPPED).open("a") as handle:
            handle.write(json.dumps({"source": str(source), "reason": reason, **_jsonable(fields)}) + "\n")

    def close(self) -> None:
        if not self._manifest.closed:
            self._manifest.close()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_skipped(root: str | Path) -> list[dict[str, Any]]:
    """Entries of ``skipped.jsonl`` (inputs skipped by the latest run)."""
    path = Path(root) / SKIPPED
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
class ClipReader:
    """Memory-mapped access to one clip's arrays."""

    def __init__(self, root: str | Path, entry: Mapping[str, Any]) -> None:
        self.entry = dict(entry)
        self.dir = clip_dir(root, entry)
        self.id = str(entry["id"])
        self.num_frames = int(entry["num_frames"])
        self._frames: np.ndarray | None = None
        self._audio: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers re-open the memory maps instead of receiving copies of the arrays.
        return {**self.__dict__, "_frames": None, "_audio": None}

    def _load(self, name: str) -> np.ndarray:
        return np.load(self.dir / name, mmap_mode="r", allow_pickle=False)

    @property
    def frames(self) -> np.ndarray:
        """``(T, 3, R, R)`` uint8, memory-mapped."""
        if self._frames is None:
            self._frames = self._load("frames.npy")
        return self._frames

    @property
    def audio(self) -> np.ndarray:
        """``(T * 640,)`` float32, memory-mapped."""
        if self._audio is None:
            self._audio = self._load("audio.npy")
        return self._audio

    def signal(self, name: str) -> np.ndarray:
        """Stored signal ``(T, D)`` of plugin ``name``."""
        return self._load(f"signal.{name}.npy")

    def extra(self, name: str) -> np.ndarray:
        """Stored extra ground truth ``name`` (T rows)."""
        return self._load(f"extra.{name}.npy")

    def face(self) -> FaceTrack | None:
        """The stored MediaPipe face track, or None."""
        if not self.entry.get("face"):
            return None
        parts = {f: torch.from_numpy(np.load(self.dir / f"face.{f}.npy")) for f in _FACE_FIELDS}
        names = [str(n) for n in np.load(self.dir / "face.blendshape_names.npy")]
        return FaceTrack(parts["landmarks"], parts["blendshapes"], parts["matrices"], parts["present"].bool(), names)

    def sample(self) -> Sample:
        """The whole clip as a :class:`Sample` (frames stay memory-mapped until read)."""
        with warnings.catch_warnings():  # read-only memmaps: plugins must not write into samples
            warnings.simplefilter("ignore", UserWarning)
            frames = torch.from_numpy(self.frames)
            audio = torch.from_numpy(self.audio)
        metadata = dict(self.entry.get("metadata", {}))
        metadata.setdefault("source", self.entry.get("source", ""))
        return Sample(frames=frames, audio=audio, face=self.face(), metadata=metadata, num_frames=self.num_frames)

    def is_complete(self, resolution: int | None = None) -> bool:
        """Arrays exist and have the manifest's length (guards against a damaged folder)."""
        try:
            frames = self.frames
            audio = self.audio
        except (OSError, ValueError):
            return False
        ok = frames.ndim == 4 and frames.shape[0] == self.num_frames and audio.shape[0] == self.num_frames * SAMPLES_PER_FRAME
        if resolution is not None:
            ok = ok and frames.shape[2:] == (resolution, resolution)
        return bool(ok)


def load_clips(root: str | Path) -> tuple[dict[str, Any], list[ClipReader]]:
    """Dataset info and readers of the complete clips of ``root``.

    Raises:
        InputError: ``root`` is not an eartalk dataset.
    """
    root = Path(root)
    info_path = root / INFO
    if not info_path.is_file():
        raise InputError(
            f"{root} is not an eartalk dataset (no {INFO}); create one with `eartalk prepare VIDEOS --out {root}` "
            f"or `eartalk synth --out {root}`"
        )
    info = json.loads(info_path.read_text())
    if info.get("format") != FORMAT_NAME or int(info.get("version", 0)) > FORMAT_VERSION:
        raise InputError(f"{root}: unsupported dataset format {info.get('format')} v{info.get('version')}")
    readers = []
    seen: set[str] = set()
    for entry in read_manifest(root):
        if entry["id"] in seen:
            continue
        reader = ClipReader(root, entry)
        if not reader.is_complete(info.get("resolution")):
            log.warning("%s: clip %s is listed but its arrays are missing or damaged; skipping it", root, entry["id"])
            continue
        seen.add(entry["id"])
        readers.append(reader)
    return info, readers


def _to_unit(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``(..., 3, R, R)`` -> float32 in [-1, 1]."""
    return to_model_range(torch.from_numpy(np.array(frames, dtype=np.float32)))


class TalkingHeadDataset(Dataset):
    """Fixed-length training clips of ``clip_frames`` frames plus a reference frame.

    Every clip of at least ``clip_frames`` frames gives ``num_frames // clip_frames`` items
    (non-overlapping windows; with ``random_windows`` each item draws a fresh random window from
    its clip instead). The reference frame comes from the same clip, at least ``reference_gap``
    frames away from the window when the clip is long enough, else just outside the window, else
    (a clip exactly one window long) from inside it; ``meta["reference_in_window"]`` says which.

    Signals: for every plugin of ``stack`` the stored signal is used when its width, columns and
    the plugin options it was extracted with match the plugin; otherwise the plugin's ``extract``
    runs on the whole clip (result cached per clip) and the window is cut from it. A plugin that
    needs the face track or audio of a clip that has none gets an absent (NaN) signal. Without a
    stack, all stored signals are returned.

    Args:
        root: dataset directory.
        clip_frames: T, frames per item.
        stack: condition stack (or None: stored signals only).
        clip_ids: restrict to these clip ids (a train/val split).
        reference_gap: minimum distance in frames between the reference and the window.
        random_windows: draw random windows and references (training) instead of fixed ones.
        seed: seed of the fixed choices (reference frames when ``random_windows`` is False).
        extras: names of stored extra arrays to return under ``extras`` (e.g. ``("mouth",)``).
        cache_clips: how many clips' computed signals to keep in memory.

    Items are dicts: ``frames`` (T, 3, R, R) float32 in [-1, 1], ``reference`` (3, R, R),
    ``audio`` (T * 640,), ``signals`` {name: (T, D)}, ``present`` {name: (T,) bool}, ``meta``
    (clip id, source, start, reference index, metadata) and, if asked, ``extras`` {name: (T, ...)}.
    """

    def __init__(
        self,
        root: str | Path,
        clip_frames: int,
        stack: Any = None,
        *,
        clip_ids: Iterable[str] | None = None,
        reference_gap: int = 8,
        random_windows: bool = False,
        seed: int = 0,
        extras: Sequence[str] = (),
        cache_clips: int = 64,
        latents: Any = None,
    ) -> None:
        if clip_frames < 1:
            raise ValueError(f"clip_frames must be >= 1, got {clip_frames}")
        self.root = Path(root)
        self.clip_frames = int(clip_frames)
        self.stack = stack
        self.reference_gap = max(0, int(reference_gap))
        self.random_windows = bool(random_windows)
        self.seed = int(seed)
        self.extras = tuple(extras)
        self.info, readers = load_clips(self.root)
        if clip_ids is not None:
            wanted = set(clip_ids)
            readers = [r for r in readers if r.id in wanted]
        short = [r.id for r in readers if r.num_frames < self.clip_frames]
        if short:
            log.info("%s: %d clip(s) shorter than %d frames are not used", self.root, len(short), self.clip_frames)
        self.clips = [r for r in readers if r.num_frames >= self.clip_frames]
        for name in self.extras:
            lacking = [r.id for r in self.clips if name not in r.entry.get("extras", ())]
            if lacking:
                raise InputError(
                    f"dataset {self.root}: clip {lacking[0]!r} (and {len(lacking) - 1} more) has no stored "
                    f"extra {name!r}; synthetic datasets (`eartalk synth`) store 'mouth' and 'keypoints', "
                    f"datasets from `eartalk prepare` store none; turn off what asks for it"
                )
        self.items: list[tuple[int, int]] = [
            (c, k * self.clip_frames)
            for c, reader in enumerate(self.clips)
            for k in range(reader.num_frames // self.clip_frames)
        ]
        self._cache: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        #: plugin name -> why its signal is absent on every clip (a required input that cannot be had)
        self.absent_reasons: dict[str, str] = {}
        self._cache_size = max(1, int(cache_clips))
        self.latents = None  # a core.data.latents.LatentStore: items also carry pre-encoded latents
        if latents is not None:
            from eartalk.core.data.latents import LatentStore

            self.latents = latents if isinstance(latents, LatentStore) else LatentStore(self.root, str(latents),
                                                                                      [c.id for c in self.clips])

    @property
    def resolution(self) -> int:
        return int(self.info["resolution"])

    def __len__(self) -> int:
        return len(self.items)

    # -- selection ----------------------------------------------------------------------------
    def _rng(self, index: int) -> np.random.Generator:
        if self.random_windows:
            return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
        return np.random.default_rng([self.seed, index])

    def _reference_index(self, num_frames: int, start: int, stop: int, rng: np.random.Generator) -> tuple[int, bool]:
        frames = np.arange(num_frames)
        for gap in (self.reference_gap, 0):
            candidates = frames[(frames < start - gap) | (frames >= stop + gap)]
            if candidates.size:
                return int(rng.choice(candidates)), False
        return int(rng.integers(start, stop)), True

    # -- signals ------------------------------------------------------------------------------
    def _stored_matches(self, reader: ClipReader, name: str, plugin: Any) -> bool:
        entry = reader.entry
        if name not in entry.get("signals", []):
            return False
        if plugin is None:
            return True
        shape = reader.signal(name).shape
        if shape[1] != plugin.signal_dim:
            return False
        columns = entry.get("columns", {}).get(name)
        if columns is not None and list(columns) != list(plugin.columns):
            return False
        stored_options = entry.get("signal_options", {}).get(name)
        return stored_options is None or stored_options == options_key(plugin.options)

    def _computed(self, reader: ClipReader, names: list[str]) -> dict[str, torch.Tensor]:
        """Signals of ``names`` extracted by the stack's plugins on the whole clip (cached)."""
        cached = self._cache.get(reader.id, {})
        missing = [n for n in names if n not in cached]
        if missing:
            sample = reader.sample()
            for name in missing:
                plugin = self.stack.plugin(name)
                if "face" in plugin.requires and sample.face is None:
                    self._compute_face(reader, sample, name, plugin)
                available = {"frames": True, "audio": True, "face": sample.face is not None, "metadata": True}
                if not all(available.get(field, True) for field in plugin.requires):
                    cached[name] = torch.full((reader.num_frames, plugin.signal_dim), float("nan"))
                    continue
                try:
                    with torch.no_grad():
                        signal = plugin.extract(sample)
                except EartalkError as err:
                    raise EartalkError(f"dataset {self.root}, clip {reader.id}: condition {name!r} failed: {err}") from err
                signal = torch.as_tensor(signal, dtype=torch.float32)
                if signal.shape != (reader.num_frames, plugin.signal_dim):
                    raise EartalkError(
                        f"dataset {self.root}, clip {reader.id}: condition {name!r} returned shape {tuple(signal.shape)}, "
                        f"expected ({reader.num_frames}, {plugin.signal_dim})"
                    )
                cached[name] = signal
        self._cache[reader.id] = cached
        self._cache.move_to_end(reader.id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return cached

    def _compute_face(self, reader: ClipReader, sample: Sample, name: str, plugin: Any) -> None:
        """Run the face pipeline on a clip without a stored face track, for a plugin that requires
        one (as docs/plugins.md promises); when it cannot run, record why in :attr:`absent_reasons`.
        The track is kept in ``sample.face``, so the clip's other face plugins reuse it."""
        from eartalk.core.media.face import ensure_face  # local: MediaPipe loads only when needed

        if sample.frames is None:
            self.absent_reasons.setdefault(name, "requires face, and these clips have neither a face track nor frames")
            return
        try:
            ensure_face(sample, getattr(plugin.options, "landmarker", None))
        except WeightsNotFoundError as err:
            reason = (f"requires face, and these clips have no face track ({self.root} was made without one, e.g. by "
                      f"`eartalk synth`); the dataset cannot compute it: {err}")
            if name not in self.absent_reasons:
                log.warning("condition %r: %s", name, reason)
            self.absent_reasons[name] = reason

    def _signals(self, reader: ClipReader, start: int, stop: int) -> dict[str, torch.Tensor]:
        if self.stack is None:
            return {n: torch.from_numpy(np.array(reader.signal(n)[start:stop], np.float32)) for n in reader.entry.get("signals", [])}
        out: dict[str, torch.Tensor] = {}
        to_compute = []
        for name in self.stack.names:
            plugin = self.stack.plugin(name)
            if self._stored_matches(reader, name, plugin):
                out[name] = torch.from_numpy(np.array(reader.signal(name)[start:stop], np.float32))
            else:
                to_compute.append(name)
        if to_compute:
            computed = self._computed(reader, to_compute)
            for name in to_compute:
                out[name] = computed[name][start:stop].clone()
        return {name: out[name] for name in self.stack.names}

    # -- items --------------------------------------------------------------------------------
    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        # (index, item_seed) from a ResumableSampler: the random window and reference come from
        # item_seed, so an item is the same whichever process, worker or resumed run draws it.
        item_seed = None
        if isinstance(index, tuple):
            index, item_seed = index
        clip_index, start = self.items[index]
        reader = self.clips[clip_index]
        rng = np.random.default_rng(item_seed) if item_seed is not None and self.random_windows else self._rng(index)
        if self.random_windows:
            start = int(rng.integers(0, reader.num_frames - self.clip_frames + 1))
        stop = start + self.clip_frames
        ref, in_window = self._reference_index(reader.num_frames, start, stop, rng)
        frames = _to_unit(reader.frames[start:stop])  # (T, 3, R, R)
        reference = _to_unit(reader.frames[ref])  # (3, R, R)
        audio = torch.from_numpy(np.array(reader.audio[start * SAMPLES_PER_FRAME : stop * SAMPLES_PER_FRAME], np.float32))
        signals = self._signals(reader, start, stop)
        present = {name: torch.isfinite(s).all(dim=-1) for name, s in signals.items()}  # (T,)
        item: dict[str, Any] = {
            "frames": frames,
            "reference": reference,
            "audio": audio,
            "signals": signals,
            "present": present,
            "meta": {
                "id": reader.id,
                "source": reader.entry.get("source", ""),
                "start": start,
                "reference_index": ref,
                "reference_in_window": in_window,
                "num_frames": reader.num_frames,
                "metadata": reader.entry.get("metadata", {}),
            },
        }
        if self.extras:
            item["extras"] = {n: torch.from_numpy(np.array(reader.extra(n)[start:stop])) for n in self.extras}
        if self.latents is not None:  # (T, C, h, w) and (C, h, w): the model skips the VAE
            item["latents"] = torch.from_numpy(np.array(self.latents.clip(reader.id)[start:stop]))
            item["reference_latents"] = torch.from_numpy(np.array(self.latents.frames(reader.id)[ref]))
        return item


def collate_clips(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Batch dataset items: tensors stacked on a new first axis, ``meta`` kept as a list."""
    batch: dict[str, Any] = {
        "frames": torch.stack([i["frames"] for i in items]),  # (B, T, 3, R, R)
        "reference": torch.stack([i["reference"] for i in items]),  # (B, 3, R, R)
        "audio": torch.stack([i["audio"] for i in items]),  # (B, T * 640)
        "signals": {n: torch.stack([i["signals"][n] for i in items]) for n in items[0]["signals"]},  # (B, T, D)
        "present": {n: torch.stack([i["present"][n] for i in items]) for n in items[0]["present"]},  # (B, T)
        "meta": [i["meta"] for i in items],
    }
    if "extras" in items[0]:
        batch["extras"] = {n: torch.stack([i["extras"][n] for i in items]) for n in items[0]["extras"]}
    if "latents" in items[0]:
        batch["latents"] = torch.stack([i["latents"] for i in items])  # (B, T, C, h, w)
        batch["reference_latents"] = torch.stack([i["reference_latents"] for i in items])  # (B, C, h, w)
    return batch


def split_clip_ids(ids: Sequence[str], val_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split clip ids into train and validation sets (whole clips, never windows of one clip).

    With two or more clips and ``val_fraction > 0`` at least one clip goes to validation and at
    least one stays for training.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ids = sorted(ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = 0
    if val_fraction > 0 and len(ids) >= 2:
        n_val = min(len(ids) - 1, max(1, round(len(ids) * val_fraction)))
    val = sorted(ids[i] for i in order[:n_val])
    train = sorted(ids[i] for i in order[n_val:])
    return train, val


def mix_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (``numpy.random.SeedSequence``): same parts, same seed."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ResumableSampler(torch.utils.data.Sampler):
    """Epoch-seeded shuffling that can start mid-epoch; yields ``(index, item_seed)`` pairs.

    Epoch ``e`` visits ``randperm(size, seed=mix(seed, e))`` (sharded ``[rank::world]`` under
    ``torch.distributed``, padded so every rank gets the same count), and each item carries a seed
    ``mix(seed, e, position)`` for its random choices. Both depend only on (seed, epoch, position),
    never on what ran before, so skipping the first ``skip`` items of an epoch reproduces the rest
    of it exactly. :class:`ResumableLoader` keeps the position and hands it to Lightning.

    Args:
        size: dataset length.
        seed: base seed.
        shuffle: permute (training) or keep the order.
    """

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True) -> None:
        self.size, self.seed, self.shuffle = int(size), int(seed), bool(shuffle)
        self.epoch = 0
        self.skip = 0  # items of ``epoch`` already consumed (the next iteration starts after them)

    def __len__(self) -> int:
        _, world = _rank_world()
        return -(-self.size // world)

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at each epoch start; a new epoch starts from its first item."""
        if int(epoch) != self.epoch:
            self.epoch, self.skip = int(epoch), 0

    def order(self, epoch: int) -> list[int]:
        """This rank's dataset indices for ``epoch``."""
        rank, world = _rank_world()
        if self.shuffle:
            perm = torch.randperm(self.size, generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch))).tolist()
        else:
            perm = list(range(self.size))
        per_rank = -(-self.size // world)
        perm = (perm * (1 + (per_rank * world) // max(1, self.size)))[: per_rank * world]
        return perm[rank::world]

    def __iter__(self):
        epoch, skip = self.epoch, self.skip
        self.skip = 0
        rank, world = _rank_world()
        for pos, index in enumerate(self.order(epoch)):
            if pos >= skip:
                yield index, mix_seed(self.seed, epoch, pos * world + rank)


class ResumableLoader(DataLoader):
    """A DataLoader over a :class:`ResumableSampler` with Lightning's ``state_dict`` interface.

    Lightning stores ``state_dict()`` in every checkpoint (``loops.fit_loop.state_dict.combined_loader``)
    and calls ``load_state_dict`` on resume before it draws the first batch, so a resumed run
    continues the interrupted epoch at the next unseen item instead of replaying its start. The
    state counts batches the training loop has taken (Lightning does not prefetch from a loader of
    known length; worker prefetching happens behind this count).
    """

    def __init__(self, dataset: Dataset, sampler: ResumableSampler, batch_size: int, **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
        self._epoch, self._taken = sampler.epoch, sampler.skip

    def __iter__(self):
        return self._tracked()

    def _tracked(self):
        sampler: ResumableSampler = self.sampler  # type: ignore[assignment]
        self._epoch, self._taken = sampler.epoch, sampler.skip  # read at the first fetch, after set_epoch
        for batch in DataLoader.__iter__(self):
            self._taken = min(len(sampler), self._taken + int(self.batch_size))
            yield batch

    def state_dict(self) -> dict[str, Any]:
        sampler: ResumableSampler = self.sampler  # type: ignore[assignment]
        return {"epoch": self._epoch, "items": self._taken, "seed": sampler.seed, "size": sampler.size}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        sampler: ResumableSampler = self.sampler  # type: ignore[assignment]
        if state.get("seed") != sampler.seed or state.get("size") != sampler.size:
            warnings.warn(
                f"resuming with another dataset or seed (checkpoint: {state.get('size')} items, seed {state.get('seed')}; "
                f"now: {sampler.size} items, seed {sampler.seed}): the data order restarts, so the run is not an exact continuation",
                stacklevel=2,
            )
            return
        epoch, items = int(state["epoch"]), int(state["items"])
        if items >= len(sampler):
            epoch, items = epoch + 1, 0
        sampler.epoch, sampler.skip = epoch, items
        self._epoch, self._taken = epoch, items


try:  # Lightning is a dependency; the import is guarded only to keep this module importable alone
    import lightning as L

    _DataModuleBase = L.LightningDataModule
except ImportError:  # pragma: no cover
    _DataModuleBase = object


class TalkingHeadDataModule(_DataModuleBase):
    """Lightning DataModule over an eartalk dataset (see :class:`TalkingHeadDataset`).

    Clips (not windows) are split into train and validation sets. Training items use random
    windows and reference frames; validation items are fixed.

    Args:
        root: dataset directory.
        clip_frames: T, frames per training clip.
        batch_size: clips per batch.
        stack: condition stack whose signals the batches carry (None: stored signals only).
        val_fraction: share of clips held out for validation.
        num_workers: DataLoader worker processes.
        seed: split and fixed-choice seed.
        reference_gap: minimum distance between the reference frame and the window.
        extras: stored extra arrays to return (e.g. ``("mouth",)`` for synthetic data).
        resumable: training batches from a :class:`ResumableLoader` (exact resume mid-epoch; the
            training recipes use it).

    Batches: ``frames`` (B, T, 3, R, R), ``reference`` (B, 3, R, R), ``audio`` (B, T * 640),
    ``signals`` {name: (B, T, D)}, ``present`` {name: (B, T)}, ``meta`` list of dicts.
    """

    def __init__(
        self,
        root: str | Path,
        clip_frames: int,
        batch_size: int,
        stack: Any = None,
        val_fraction: float = 0.1,
        num_workers: int = 0,
        seed: int = 0,
        *,
        reference_gap: int = 8,
        extras: Sequence[str] = (),
        resumable: bool = False,
        latents: str | None = None,
    ) -> None:
        super().__init__()
        self.latents = latents  # SHA-256 of the VAE checkpoint whose pre-encoded latents to read (core/data/latents.py)
        self.resumable = bool(resumable)
        self.root = Path(root)
        self.clip_frames = int(clip_frames)
        self.batch_size = int(batch_size)
        self.stack = stack
        self.val_fraction = float(val_fraction)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.reference_gap = int(reference_gap)
        self.extras = tuple(extras)
        self.train_set: TalkingHeadDataset | None = None
        self.val_set: TalkingHeadDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        _, readers = load_clips(self.root)
        usable = [r.id for r in readers if r.num_frames >= self.clip_frames]
        if not usable:
            raise InputError(
                f"dataset {self.root} has no clip of at least {self.clip_frames} frames "
                f"({len(readers)} clip(s) in total); use a smaller clip length or add data"
            )
        train_ids, val_ids = split_clip_ids(usable, self.val_fraction, self.seed)
        common = dict(stack=self.stack, reference_gap=self.reference_gap, seed=self.seed, extras=self.extras,
                      latents=self.latents)
        self.train_set = TalkingHeadDataset(self.root, self.clip_frames, clip_ids=train_ids, random_windows=True, **common)
        self.val_set = TalkingHeadDataset(self.root, self.clip_frames, clip_ids=val_ids, random_windows=False, **common)

    def _loader(self, dataset: TalkingHeadDataset, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        if shuffle and self.resumable:
            return ResumableLoader(
                dataset,
                ResumableSampler(len(dataset), seed=self.seed, shuffle=True),
                batch_size=self.batch_size,
                num_workers=self.num_workers,
                collate_fn=collate_clips,
                generator=generator,
                persistent_workers=self.num_workers > 0,
            )
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate_clips,
            generator=generator if shuffle else None,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        self.setup("validate")
        if self.val_set is None or len(self.val_set) == 0:
            return []
        return self._loader(self.val_set, shuffle=False)


__all__ = [
    "ClipReader",
    "DatasetWriter",
    "ResumableLoader",
    "ResumableSampler",
    "TalkingHeadDataModule",
    "TalkingHeadDataset",
    "collate_clips",
    "load_clips",
    "read_manifest",
    "read_skipped",
    "split_clip_ids",
]
