"""``eartalk prepare``: turn talking-face videos into a training dataset.

For every input video: decode and resample to 25 fps, in chunks of at most ``chunk_seconds`` so
memory stays bounded on long videos; track the face with MediaPipe; crop a smoothed square around
it at the dataset resolution; cut the 16 kHz audio to the chunk; extract every configured condition
plugin's signal; write the chunk as one clip (:mod:`eartalk.core.data.dataset`).

Resuming: a clip id is derived from the source path, the resolution and the chunking options, so
running the same command again skips clips already in the manifest; inputs completed by an
earlier run (listed in ``sources.jsonl``) are not even decoded. One bad input never stops the
others: its error goes to the summary table and ``skipped.jsonl``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from eartalk.core.data.dataset import DatasetWriter, options_key
from eartalk.core.errors import EartalkError, InputError
from eartalk.core.protocol import VIDEO_SUFFIXES
from eartalk.core.types import AUDIO_SAMPLE_RATE, SAMPLES_PER_FRAME, VIDEO_FPS, Sample

log = logging.getLogger(__name__)

SOURCES = "sources.jsonl"
OPTIONS = "prepare.json"


@attrs.define
class PrepareReport:
    """What a ``prepare`` run did.

    Attributes:
        prepared: ids of clips written by this run.
        existing: ids of clips of these inputs already in the dataset (from earlier runs).
        skipped: ``{"source", "reason"}`` for every input or chunk not written by this run.
        dataset: the dataset directory.
    """

    prepared: list[str] = attrs.field(factory=list)
    existing: list[str] = attrs.field(factory=list)
    skipped: list[dict[str, Any]] = attrs.field(factory=list)
    dataset: str = ""

    @property
    def exit_code(self) -> int:
        """0 when the dataset holds at least one clip of the inputs, else 1."""
        return 0 if (self.prepared or self.existing) else 1

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "prepared": self.prepared, "existing": self.existing, "skipped": self.skipped}


def expand_inputs(paths: Sequence[str | Path]) -> list[Path]:
    """Input paths with folders replaced by the video files under them (sorted)."""
    out: list[Path] = []
    for item in paths:
        path = Path(item).expanduser()
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES))
        else:
            out.append(path)
    return out


def clip_base_id(path: Path, resolution: int, chunk_frames: int, max_frames: int | None) -> str:
    """Stable id prefix of the clips cut from ``path`` with these options."""
    key = f"{path.resolve()}|{resolution}|{chunk_frames}|{max_frames}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem)[:40].strip("._") or "clip"
    return f"{stem}-{digest}"


# ---------------------------------------------------------------------------------------------
# Streaming decode
# ---------------------------------------------------------------------------------------------
class VideoChunks:
    """Decode a video at a constant frame rate, chunk by chunk (bounded memory).

    Frame ``k`` shows the source frame on screen at time ``k / fps`` (the last one whose timestamp
    is at or before it), time 0 being the earliest start of the video and audio streams; the same
    rule as :func:`eartalk.core.media.io.read_video`, which decodes a whole file at once.

    Args:
        path: video file.
        chunk_frames: frames per chunk (the last chunk may be shorter).
        max_frames: stop after this many output frames.
        fps: output frame rate.
    """

    def __init__(self, path: Path, chunk_frames: int, max_frames: int | None = None, fps: float = VIDEO_FPS) -> None:
        self.path = path
        self.chunk_frames = int(chunk_frames)
        self.max_frames = max_frames
        self.fps = float(fps)
        self.origin: float | None = None  # seconds: stream time of output frame 0
        self.audio_start: float | None = None
        self.size: tuple[int, int] | None = None  # source (H, W)
        self.expected_frames: int | None = None  # output frames the container's header promises
        self.frames_out = 0  # output frames yielded
        self.truncated: str | None = None  # why decoding stopped before the promised end (None: it did not)

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(first frame index, frames (n, 3, H, W) uint8)``."""
        import av

        path = self.path
        if not path.is_file():
            raise InputError(f"video file {path} does not exist")
        if path.stat().st_size == 0:
            raise InputError(f"video file {path} is empty (0 bytes)")
        try:
            container = av.open(str(path))
        except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as err:
            raise InputError(f"cannot read video file {path}: not a media file FFmpeg can decode ({err})") from None
        buffer: list[np.ndarray] = []
        emitted = 0

        def flush(final: bool = False) -> Iterator[tuple[int, torch.Tensor]]:
            nonlocal buffer, emitted
            while len(buffer) >= self.chunk_frames or (final and buffer):
                part, buffer = buffer[: self.chunk_frames], buffer[self.chunk_frames :]
                frames = torch.from_numpy(np.stack(part)).permute(0, 3, 1, 2).contiguous()  # (n, 3, H, W)
                yield emitted, frames
                emitted += len(part)

        try:
            if not container.streams.video:
                raise InputError(f"{path} has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if container.streams.audio and container.streams.audio[0].start_time is not None:
                a = container.streams.audio[0]
                self.audio_start = float(a.start_time * a.time_base)
            nominal = float(stream.average_rate) if stream.average_rate else self.fps
            if stream.duration is not None and stream.time_base is not None:
                promised = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                promised = container.duration / 1e6
            else:
                promised = None
            if promised is not None:
                self.expected_frames = max(1, int(math.floor(promised * self.fps + 1e-6)))
            limit = math.inf if self.max_frames is None else self.max_frames
            previous: np.ndarray | None = None
            last_time: float | None = None
            intervals: list[float] = []
            k = 0  # next output frame
            decoded = 0
            try:
                for frame in container.decode(stream):
                    t = frame.time
                    if t is None:
                        t = (last_time + 1.0 / nominal) if last_time is not None else 0.0
                    if self.origin is None:
                        self.origin = t if self.audio_start is None else min(t, self.audio_start)
                    if last_time is not None:
                        if t <= last_time:  # out-of-order or duplicate timestamp: keep order
                            t = last_time + 1e-6
                        intervals.append(t - last_time)
                    rel = t - self.origin
                    image = frame.to_ndarray(format="rgb24")  # (H, W, 3)
                    self.size = (int(image.shape[0]), int(image.shape[1]))
                    decoded += 1
                    # Output frames before this frame's time show the previous frame (or this
                    # first one when the video starts after time 0).
                    while k < limit and k / self.fps + 1e-6 < rel:
                        buffer.append(previous if previous is not None else image)
                        k += 1
                    yield from flush()
                    if k >= limit:
                        break
                    previous, last_time = image, t
            except av.error.FFmpegError as err:
                if not decoded:
                    raise InputError(f"cannot decode video file {path}: {err}") from None
                self.truncated = f"decoding failed after {decoded} source frame(s): {err}"
            if previous is None and not buffer and k == 0:
                raise InputError(f"video file {path} has no frames")
            if k < limit and previous is not None and last_time is not None and self.origin is not None:
                step = float(np.median(intervals)) if intervals else 1.0 / nominal
                end = last_time - self.origin + step
                count = min(limit, max(1, int(math.floor(end * self.fps + 1e-6))))
                while k < count:
                    buffer.append(previous)
                    k += 1
            yield from flush(final=True)
            self.frames_out = emitted
            if self.expected_frames is not None and self.max_frames is not None:
                self.expected_frames = min(self.expected_frames, self.max_frames)
            if self.max_frames is not None and emitted >= self.max_frames:
                self.truncated = None  # any failure lies past what was asked for
            elif self.truncated is None and self.expected_frames is not None and emitted + 2 < self.expected_frames:
                # The stream ended early without an error (a cut file): its header promised more.
                self.truncated = f"the stream ends at {emitted / self.fps:.2f} s, its header says {self.expected_frames / self.fps:.2f} s"
        finally:
            container.close()


def _audio_track(path: Path, origin: float, audio_start: float | None) -> torch.Tensor | None:
    """The file's audio (16 kHz mono) aligned so that sample 0 is at ``origin``; None if no track."""
    from eartalk.core.media.io import read_audio

    try:
        audio = read_audio(path, allow_silent=True)
    except InputError as err:
        if "no audio track" in str(err) or "no samples" in str(err):
            return None
        raise
    offset = int(round(((audio_start if audio_start is not None else origin) - origin) * AUDIO_SAMPLE_RATE))
    if offset > 0:
        audio = torch.cat([torch.zeros(offset), audio])
    elif offset < 0:
        audio = audio[-offset:]
    return audio


def _fit(audio: torch.Tensor, start: int, length: int) -> torch.Tensor:
    piece = audio[start : start + length]
    if piece.shape[0] < length:
        piece = torch.cat([piece, piece.new_zeros(length - piece.shape[0])])
    return piece.contiguous()


# ---------------------------------------------------------------------------------------------
# The prepare run
# ---------------------------------------------------------------------------------------------
def build_condition_plugins(names: Sequence[str] | None) -> list[Any]:
    """Condition plugins by name (``d_model=8``, default options); None means every registered one.

    Raises:
        UnknownPluginError: a name no installed plugin provides.
    """
    from eartalk.core.registry import get_registry

    registry = get_registry()
    names = list(registry.names("condition")) if names is None else list(names)
    return [registry.condition(name)(d_model=8) for name in names]


def _read_sources(root: Path) -> dict[str, dict[str, Any]]:
    path = root / SOURCES
    done: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # torn last line of an interrupted run
            done[record["base"]] = record
    return done


def _mark_source_done(root: Path, record: dict[str, Any]) -> None:
    path = root / SOURCES
    data = path.read_bytes() if path.is_file() else b""
    prefix = b"" if not data or data.endswith(b"\n") else b"\n"
    with path.open("ab") as handle:
        handle.write(prefix + (json.dumps(record) + "\n").encode())
        handle.flush()
        os.fsync(handle.fileno())


def prepare_dataset(
    videos: Sequence[str | Path],
    out: str | Path,
    *,
    resolution: int = 128,
    conditions: Sequence[str] | None = None,
    landmarker: str | Path | None = None,
    chunk_seconds: float = 10.0,
    max_seconds: float | None = None,
    min_seconds: float = 1.0,
    clips_per_shard: int = 256,
    progress: bool = True,
    shard: tuple[int, int] | None = None,
) -> PrepareReport:
    """Prepare a dataset from videos (see the module docstring).

    Args:
        videos: video files or folders (searched recursively for video files).
        out: dataset directory (created; an existing dataset is resumed).
        resolution: side R of the square face crops.
        conditions: condition plugin names whose signals are stored (None: all registered).
        landmarker: ``face_landmarker.task`` (default ``$EARTALK_FACE_LANDMARKER``).
        chunk_seconds: longest clip; longer videos are cut into several clips.
        max_seconds: use only the first ``max_seconds`` of each video.
        min_seconds: a final chunk shorter than this is dropped (reported in ``skipped``).
        clips_per_shard: clips per shard folder.
        progress: show a rich progress bar.
        shard: ``(I, N)``: prepare only inputs ``I, I + N, I + 2N, ...`` of the expanded input list
            (a job array: each job writes its own ``out``; :func:`merge_datasets` joins them).

    Returns:
        A :class:`PrepareReport`; ``exit_code`` is 1 when no clip of the inputs is in the dataset.

    Raises:
        WeightsNotFoundError: no face landmarker model.
        UnknownPluginError: an unknown condition name.
    """
    from eartalk.core.media.face import FaceAnalyzer, resolve_landmarker

    if resolution < 16:
        raise InputError(f"--resolution must be at least 16 pixels, got {resolution}")
    if chunk_seconds <= 0:
        raise InputError(f"--chunk-seconds must be positive, got {chunk_seconds}")
    model_path = resolve_landmarker(landmarker)
    plugins = build_condition_plugins(conditions)
    root = Path(out)
    chunk_frames = max(1, int(round(chunk_seconds * VIDEO_FPS)))
    max_frames = None if max_seconds is None else max(1, int(round(max_seconds * VIDEO_FPS)))
    min_frames = max(1, int(round(min_seconds * VIDEO_FPS)))
    inputs = expand_inputs(videos)
    if shard is not None:
        inputs = shard_inputs(inputs, *shard)
    report = PrepareReport(dataset=str(root))
    options = {
        "resolution": int(resolution),
        "chunk_seconds": float(chunk_seconds),
        "max_seconds": None if max_seconds is None else float(max_seconds),
        "min_seconds": float(min_seconds),
        "conditions": sorted(p.name for p in plugins),
    }
    check_options(root, options)

    bar = None
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(TextColumn("[bold]prepare[/]"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.description}"), TimeElapsedColumn())
        bar.start()
        task = bar.add_task("", total=len(inputs))
    try:
        with DatasetWriter(root, resolution, clips_per_shard=clips_per_shard) as writer, FaceAnalyzer(model_path) as analyzer:
            write_options(root, options)
            done = _read_sources(root)
            reasons: list[str] = []  # what was dropped from the current input (kept in sources.jsonl)

            def skip(source: str, reason: str, **fields: Any) -> None:
                writer.skip(source, reason, **fields)
                report.skipped.append({"source": source, "reason": reason, **fields})
                reasons.append(f"{source}: {reason}")
                log.info("skipped %s: %s", source, reason)

            for path in inputs:
                source = str(path)
                base = clip_base_id(path, resolution, chunk_frames, max_frames)
                if bar is not None:
                    bar.update(task, description=path.name)
                reasons.clear()
                if base in done:
                    ids = [i for i in done[base].get("clips", []) if writer.has(i)]
                    report.existing.extend(ids)
                    earlier = done[base].get("dropped", [])
                    note = f"; dropped then: {' | '.join(earlier)}" if earlier else ""
                    skip(source, f"already prepared ({len(ids)} clip(s), ids {base}-*){note}")
                else:
                    try:
                        def on_chunk(start: int, name: str = path.name) -> None:
                            if bar is not None:
                                bar.update(task, description=f"{name} [{start / VIDEO_FPS:.0f} s]")

                        clips = _prepare_one(path, base, writer, analyzer, plugins, resolution, chunk_frames,
                                             max_frames, min_frames, report, skip, on_chunk)
                        done[base] = {"source": source, "base": base, "clips": clips, "dropped": list(reasons)}
                        _mark_source_done(root, done[base])
                    except KeyboardInterrupt:
                        raise
                    except EartalkError as err:
                        skip(source, str(err))
                    except Exception as err:  # noqa: BLE001 - one bad file must not stop the run
                        log.debug("preparing %s failed", source, exc_info=True)
                        skip(source, f"{type(err).__name__}: {err}")
                if bar is not None:
                    bar.advance(task)
    finally:
        if bar is not None:
            bar.stop()
    return report


def _prepare_one(
    path: Path, base: str, writer: DatasetWriter, analyzer: Any, plugins: list[Any], resolution: int,
    chunk_frames: int, max_frames: int | None, min_frames: int, report: PrepareReport, skip: Any,
    on_chunk: Any = None,
) -> list[str]:
    """Write the clips of one video; returns the ids of its clips now in the dataset."""
    from eartalk.core.media.face import crop_frames, face_boxes, track_in_crop

    source = str(path)
    chunks = VideoChunks(path, chunk_frames, max_frames)
    audio: torch.Tensor | None = None
    clips: list[str] = []
    for start, frames in chunks:
        index = start // chunk_frames
        if on_chunk is not None:
            on_chunk(start)
        clip_id = f"{base}-{index:04d}"
        where = f"{source} [{start / VIDEO_FPS:.1f}-{(start + frames.shape[0]) / VIDEO_FPS:.1f} s]"
        if writer.has(clip_id):  # written by an interrupted earlier run
            report.existing.append(clip_id)
            clips.append(clip_id)
            continue
        if frames.shape[0] < min(min_frames, chunk_frames):
            what = "the video" if start == 0 else "its last chunk"
            skip(where, f"{what} is shorter than --min-seconds ({frames.shape[0]} < {min_frames} frames); dropped")
            continue
        if audio is None:
            assert chunks.origin is not None
            audio = _audio_track(path, chunks.origin, chunks.audio_start)
            if audio is None:
                raise InputError(f"{source} has no audio track; talking-head training needs speech")
        num = int(frames.shape[0])
        clip_audio = _fit(audio, start * SAMPLES_PER_FRAME, num * SAMPLES_PER_FRAME)  # (T * 640,)
        track = analyzer.track(frames, fps=float(VIDEO_FPS))
        present = track.present.bool()
        if not bool(present.any()):
            skip(where, "no face found in any frame of this chunk")
            continue
        height, width = int(frames.shape[2]), int(frames.shape[3])
        boxes = face_boxes(track, height, width)  # (T, 4)
        crops = crop_frames(frames, boxes, resolution)  # (T, 3, R, R)
        face = track_in_crop(track, boxes, height, width)
        del frames
        metadata = {
            "source": source,
            "chunk": index,
            "start_seconds": start / VIDEO_FPS,
            "source_size": list(chunks.size or (height, width)),
            "face_fraction": round(float(present.float().mean()), 4),
        }
        sample = Sample(frames=crops, audio=clip_audio, face=face, metadata=dict(metadata), num_frames=num)
        signals, columns, options = {}, {}, {}
        for plugin in plugins:
            try:
                with torch.no_grad():
                    signal = torch.as_tensor(plugin.extract(sample), dtype=torch.float32)
            except EartalkError as err:
                raise InputError(f"condition {plugin.name!r} could not extract its signal from {where}: {err}") from err
            if signal.shape != (num, plugin.signal_dim):
                raise EartalkError(
                    f"condition {plugin.name!r} returned shape {tuple(signal.shape)} for {where}, "
                    f"expected ({num}, {plugin.signal_dim})"
                )
            signals[plugin.name] = signal
            columns[plugin.name] = list(plugin.columns)
            options[plugin.name] = options_key(plugin.options)
        writer.add(clip_id, crops, clip_audio, face=face, metadata=sample.metadata, signals=signals, source=source,
                   columns=columns, signal_options=options)
        report.prepared.append(clip_id)
        clips.append(clip_id)
    if chunks.truncated is not None:
        total = chunks.expected_frames or chunks.frames_out
        message = (f"damaged video: {chunks.truncated}; kept {chunks.frames_out} of {total} frames "
                   "(up to the last good frame)")
        log.warning("%s: %s", source, message)
        skip(source, message, frames_kept=chunks.frames_out, frames_total=total)
    return clips


def shard_inputs(inputs: Sequence[Path], index: int, count: int) -> list[Path]:
    """Inputs ``index, index + count, ...`` of ``inputs`` (``--shard I/N``; every input lands in exactly one shard).

    Raises:
        InputError: not ``0 <= I < N``.
    """
    if count < 1 or not 0 <= index < count:
        raise InputError(f"--shard {index}/{count}: need 0 <= I < N (e.g. --shard 0/4 ... --shard 3/4)")
    return list(inputs)[index::count]


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with a clear error otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match:
        raise InputError(f"--shard {text!r}: expected I/N, e.g. --shard 0/4 (I from 0 to N - 1)")
    index, count = int(match[1]), int(match[2])
    shard_inputs([], index, count)
    return index, count


def read_options(root: str | Path) -> dict[str, Any] | None:
    """The prepare options a dataset was made with (``prepare.json``), or None."""
    path = Path(root) / OPTIONS
    return json.loads(path.read_text()) if path.is_file() else None


def check_options(root: Path, options: dict[str, Any]) -> None:
    """Refuse to add to a dataset made with other prepare options (its clips would not be comparable).

    Raises:
        InputError: naming every option that differs and what to do.
    """
    old = read_options(root)
    if old is None:
        return
    diff = [f"{k}: dataset {old.get(k)!r}, now {v!r}" for k, v in options.items() if old.get(k) != v]
    if diff:
        raise InputError(
            f"{root} was prepared with other options ({'; '.join(diff)}). Rerun with the dataset's options "
            f"(see {root / OPTIONS}) to resume it, or give a new --out folder to prepare with these ones."
        )


def write_options(root: Path, options: dict[str, Any]) -> None:
    path = root / OPTIONS
    if not path.is_file():
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(options, indent=2) + "\n")
        os.replace(tmp, path)


def merge_datasets(shards: Sequence[str | Path], out: str | Path, clips_per_shard: int = 256) -> dict[str, Any]:
    """Join datasets written by ``prepare --shard I/N`` (or any datasets of one format) into ``out``.

    Clip folders are hard-linked (copied across file systems) into ``out/shards``; the manifest,
    ``sources.jsonl`` and ``skipped.jsonl`` are concatenated; a clip id present in several shards is
    taken once. All shards must have the same resolution and prepare options.

    Returns:
        ``{"dataset", "clips", "shards"}``.

    Raises:
        InputError: a shard is not a dataset, or the shards disagree on resolution or options.
    """
    import shutil

    from eartalk.core.data.dataset import INFO, MANIFEST, SKIPPED, clip_dir, read_manifest

    roots = [Path(s) for s in shards]
    if not roots:
        raise InputError("merge: give the shard datasets to merge")
    infos, options = [], []
    for root in roots:
        if not (root / INFO).is_file():
            raise InputError(f"merge: {root} is not an eartalk dataset (no {INFO}); run `eartalk prepare --shard I/N` first")
        infos.append(json.loads((root / INFO).read_text()))
        options.append(read_options(root))
    if len({json.dumps(i, sort_keys=True) for i in infos}) > 1:
        raise InputError(f"merge: the shards differ in format or resolution: {[i.get('resolution') for i in infos]}")
    if len({json.dumps(o, sort_keys=True) for o in options}) > 1:
        raise InputError("merge: the shards were prepared with different options; prepare them with one command line")
    dest = Path(out)
    if dest.exists() and any(dest.iterdir()):
        raise InputError(f"merge: {dest} is not empty; give a new folder")
    (dest / "shards").mkdir(parents=True)
    lines, count, seen = [], 0, set()
    for root in roots:
        for entry in read_manifest(root):
            if entry["id"] in seen:
                continue
            seen.add(entry["id"])
            new = dict(entry, shard=f"{count // max(1, clips_per_shard):05d}")
            target = clip_dir(dest, new)
            target.mkdir(parents=True)
            for item in clip_dir(root, entry).iterdir():
                try:
                    os.link(item, target / item.name)
                except OSError:
                    shutil.copy2(item, target / item.name)
            lines.append(json.dumps(new, separators=(",", ":")))
            count += 1
    (dest / INFO).write_text(json.dumps(infos[0], indent=2) + "\n")
    if options[0] is not None:
        (dest / OPTIONS).write_text(json.dumps(options[0], indent=2) + "\n")
    for name in (SOURCES, SKIPPED):
        parts = [(r / name).read_text() for r in roots if (r / name).is_file()]
        (dest / name).write_text("".join(p if p.endswith("\n") or not p else p + "\n" for p in parts))
    (dest / MANIFEST).write_text("".join(line + "\n" for line in lines))
    return {"dataset": str(dest), "clips": count, "shards": [str(r) for r in roots]}


__all__ = ["PrepareReport", "VideoChunks", "build_condition_plugins", "clip_base_id", "expand_inputs", "merge_datasets",
           "parse_shard", "prepare_dataset", "shard_inputs"]
