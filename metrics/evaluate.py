"""``eartalk evaluate``: score generated video sets against a reference set.

Every requested metric runs on every generated set; a metric that cannot run (missing weights,
no reference, no audio, no face landmarker...) is reported as *skipped* with the reason rather
than dropped. With more than one generated set, Avg-R ranks the sets over the metrics that have
a value for all of them. The report (JSON) holds, per set and metric, ``value``, ``fidelity`` and
the protocol used.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from eartalk.core.commands import Command, print_json
from eartalk.core.errors import ConfigError, EartalkError, InputError
from eartalk.core.protocol import VIDEO_SUFFIXES
from eartalk.core.types import SAMPLES_PER_FRAME
from eartalk.metrics.base import MetricPlugin, MetricResult, Video, VideoSet
from eartalk.metrics.ranking import average_ranks

log = logging.getLogger(__name__)


def collect_videos(paths: Sequence[str | Path]) -> list[Path]:
    """Video files named by ``paths`` (files, or folders searched recursively), sorted per folder.

    Raises:
        InputError: a path does not exist, or a folder holds no video.
    """
    out: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
            if not found:
                raise InputError(f"folder {path} holds no video ({', '.join(sorted(VIDEO_SUFFIXES))})")
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise InputError(f"{path} does not exist (give video files or folders of videos)")
    return out


def _fit_audio(audio: torch.Tensor, num_frames: int) -> torch.Tensor:
    want = num_frames * SAMPLES_PER_FRAME
    if audio.shape[0] >= want:
        return audio[:want]
    return torch.cat([audio, torch.zeros(want - audio.shape[0])])


def load_set(name: str, paths: Sequence[str | Path], *, audio: str | Path | None = None,
             max_frames: int | None = None, landmarker: str | Path | None = None) -> VideoSet:
    """Decode the videos of one set at 25 fps (audio from their own tracks unless ``audio`` is given).

    Args:
        name: label in the report.
        paths: videos or folders of videos.
        audio: an audio file used for every video, or a folder of audio files matched by file stem.
        max_frames: read at most this many frames per video.
        landmarker: ``face_landmarker.task`` for metrics that need face tracks.
    """
    from eartalk.core.media.io import read_audio, read_video

    videos = []
    for file in collect_videos(paths):
        clip = read_video(file, fps=25, max_frames=max_frames)
        track = clip.audio
        if audio is not None:
            source = Path(audio)
            if source.is_dir():
                matches = [p for p in source.iterdir() if p.stem == file.stem]
                if not matches:
                    raise InputError(f"no audio file named {file.stem}.* in {source} for video {file}")
                source = matches[0]
            track = _fit_audio(read_audio(source), clip.num_frames)
        videos.append(Video(frames=clip.frames, audio=track, source=str(file)))
    return VideoSet(name=name, videos=videos, landmarker=landmarker)


def run_metric(metric: MetricPlugin, generated: VideoSet, reference: VideoSet | None) -> MetricResult:
    """Run one metric; anything that stops it becomes a skipped result with the reason."""
    if "reference" in metric.requires and reference is None:
        return metric.skipped("needs a reference set (--reference)")
    if "audio" in metric.requires and any(v.audio is None for v in generated):
        return metric.skipped("needs audio: a generated video has no audio track (pass --audio)")
    try:
        return metric.compute(generated, reference)
    except EartalkError as err:
        return metric.skipped(f"{type(err).__name__}: {err}")
    except (ValueError, RuntimeError) as err:
        log.debug("metric %s failed", metric.name, exc_info=True)
        return metric.skipped(f"could not be computed: {type(err).__name__}: {err}")


def evaluate(generated: Sequence[VideoSet], reference: VideoSet | None, metrics: Sequence[MetricPlugin],
             progress: Any = None) -> dict[str, Any]:
    """Run ``metrics`` on every generated set; returns the report dictionary.

    Args:
        generated: one or more generated sets.
        reference: ground-truth set, or None (metrics that need it are skipped).
        metrics: instantiated metric plugins.
        progress: optional ``(rich.progress.Progress, task_id)`` advanced once per (set, metric).
    """
    results: dict[str, dict[str, dict[str, Any]]] = {}
    directions: dict[str, bool] = {}
    for vset in generated:
        results[vset.name] = {}
        for metric in metrics:
            if progress is not None:
                progress[0].update(progress[1], description=f"{vset.name}: {metric.name}")
            result = run_metric(metric, vset, reference)
            results[vset.name][metric.name] = result.to_dict()
            directions[metric.name] = metric.higher_is_better
            if progress is not None:
                progress[0].advance(progress[1])
    report: dict[str, Any] = {
        "reference": None if reference is None else {"name": reference.name, "videos": [v.source for v in reference]},
        "generated": {s.name: [v.source for v in s] for s in generated},
        "metrics": [m.name for m in metrics],
        "results": results,
    }
    if len(generated) > 1:
        table = {name: {m: r.get("value") for m, r in rows.items()} for name, rows in results.items()}
        try:
            report["avg_rank"] = average_ranks(table, directions)
        except ValueError as err:
            report["avg_rank"] = {"skipped": str(err)}
    return report


def _parse_weights(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--weights takes KEY=PATH (e.g. syncnet=/models/syncnet_v2.model), got {item!r}")
        key, path = item.split("=", 1)
        out[key.strip()] = path.strip()
    return out


def build_metrics(names: Sequence[str] | None, weights: dict[str, str] | None = None,
                  sync_mode: str | None = None) -> list[MetricPlugin]:
    """Instantiate registered metric plugins by name (all of them when ``names`` is None).

    ``weights`` maps a weights key (``syncnet``, ``i3d``, ``inception``, ``deep3d``, ``deep3d_lm3d``,
    ``arcface``, ``lpips``) to a path, set on every metric that uses that key.
    """
    from eartalk.core.registry import get_registry

    registry = get_registry()
    names = list(names) if names else registry.names("metric")
    weights = dict(weights or {})
    metrics = []
    for name in names:
        cls = registry.metric(name)
        options = cls.Options()
        fields = {f.name for f in attrs.fields(type(options))}
        changes: dict[str, Any] = {}
        key = getattr(cls, "weights_key", "")
        if key and key in weights and "weights" in fields:
            changes["weights"] = weights[key]
        if "deep3d_lm3d" in weights and "template" in fields:
            changes["template"] = weights["deep3d_lm3d"]
        if sync_mode and "mode" in fields:
            changes["mode"] = sync_mode
        metrics.append(cls(attrs.evolve(options, **changes) if changes else options))
    return metrics


def _cell(row: dict[str, Any]) -> str:
    if row.get("skipped"):
        reason = row["skipped"]
        short = "missing weights" if reason.startswith("WeightsNotFoundError") else reason.split(". ")[0][:48]
        return f"[dim]skipped: {short}[/dim]"
    value = row["value"]
    text = "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"
    tag = {"reference": "", "unverified-weights": " [yellow](unverified)[/yellow]", "proxy": " [cyan](proxy)[/cyan]"}
    return text + tag.get(row["fidelity"], "")


def print_table(report: dict[str, Any]) -> None:
    """Print the report as a rich table (metrics by rows, generated sets by columns)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="eartalk evaluate")
    table.add_column("metric")
    sets = list(report["results"])
    for name in sets:
        table.add_column(name)
    for metric in report["metrics"]:
        arrow = "↑" if next(iter(report["results"].values()))[metric]["higher_is_better"] else "↓"
        table.add_row(f"{metric} {arrow}", *[_cell(report["results"][s][metric]) for s in sets])
    avg = report.get("avg_rank")
    if avg and "avg_rank" in avg:
        table.add_row("Avg-R ↓", *[f"{avg['avg_rank'][s]:.2f}" for s in sets])
    Console().print(table)


class EvaluateCommand(Command):
    """``eartalk evaluate --generated A B --reference GT --out report.json``."""

    name = "evaluate"
    help = "score generated videos (FID, FVD, Sync-C/D, E-FID, LMD, CSIM, PSNR/SSIM/LPIPS, proxies, control fidelity)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--generated", nargs="+", required=True, metavar="PATH",
                            help="generated sets: each PATH (a video or a folder of videos) is one set")
        parser.add_argument("--reference", nargs="+", metavar="PATH", help="ground-truth videos or folders (one set)")
        parser.add_argument("--metrics", help="comma-separated metric names (default: all installed)")
        parser.add_argument("--audio", help="audio file (or folder matched by stem) replacing the videos' own tracks")
        parser.add_argument("--out", required=True, help="report JSON path")
        parser.add_argument("--weights", nargs="*", default=[], metavar="KEY=PATH",
                            help="weight files by key: inception, i3d, syncnet, deep3d, deep3d_lm3d, arcface, lpips")
        parser.add_argument("--landmarker", help="face_landmarker.task (default: $EARTALK_FACE_LANDMARKER)")
        parser.add_argument("--sync-mode", choices=["face", "frame"], help="Sync-C/D crop mode (default: face)")
        parser.add_argument("--max-frames", type=int, help="read at most this many frames per video")
        parser.add_argument("--json", action="store_true", help="print the report JSON instead of a table")

    def run(self, args: argparse.Namespace) -> int:
        from rich.progress import Progress

        names = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
        metrics = build_metrics(names, _parse_weights(args.weights), args.sync_mode)
        labels = _unique_labels(args.generated)
        with Progress(transient=True) as bar:
            task = bar.add_task("reading videos", total=len(args.generated) + bool(args.reference)
                                + len(args.generated) * len(metrics))
            reference = None
            if args.reference:
                reference = load_set("reference", args.reference, max_frames=args.max_frames, landmarker=args.landmarker)
                bar.advance(task)
            generated = []
            for label, path in zip(labels, args.generated, strict=True):
                generated.append(load_set(label, [path], audio=args.audio, max_frames=args.max_frames,
                                          landmarker=args.landmarker))
                bar.advance(task)
            report = evaluate(generated, reference, metrics, progress=(bar, task))
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, default=str))
        if args.json:
            print_json(report)
        else:
            print_table(report)
            print(f"report written to {out}")
        return 0


def _unique_labels(paths: Sequence[str]) -> list[str]:
    labels = [Path(p).stem or str(p) for p in paths]
    return [label if labels.count(label) == 1 else f"{label}#{i}" for i, label in enumerate(labels)]
