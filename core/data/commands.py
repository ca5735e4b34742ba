"""Data subcommands: ``eartalk prepare`` (real videos -> dataset) and ``eartalk synth`` (synthetic dataset)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eartalk.core.commands import Command, print_json
from eartalk.core.hookspecs import hookimpl


class PrepareCommand(Command):
    """``eartalk prepare VIDEOS... --out DIR``: face crops, audio and condition signals of videos.

    Exit code: 0 when the dataset holds at least one clip of the given inputs (prepared now or by
    an earlier run), 1 when every input was skipped; 2 for a usage error (no landmarker model,
    unknown condition name).
    """

    name = "prepare"
    help = "build a training dataset from talking-face videos (face crops, audio, condition signals)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("videos", nargs="+", help="video files or folders of videos")
        parser.add_argument("--out", required=True, type=Path, help="dataset directory (resumed if it exists)")
        parser.add_argument("--resolution", type=int, default=128, help="side of the square face crops (default 128)")
        parser.add_argument(
            "--conditions", default=None,
            help="comma-separated condition plugins whose signals are stored (default: all installed)",
        )
        parser.add_argument("--landmarker", type=Path, default=None,
                            help="face_landmarker.task (default: $EARTALK_FACE_LANDMARKER)")
        parser.add_argument("--chunk-seconds", type=float, default=10.0,
                            help="longest clip; longer videos are split into several clips (default 10)")
        parser.add_argument("--max-seconds", type=float, default=None, help="use only the first S seconds of each video")
        parser.add_argument("--min-seconds", type=float, default=1.0,
                            help="drop a final chunk shorter than this (default 1)")
        parser.add_argument("--clips-per-shard", type=int, default=256, help="clips per shard folder (default 256)")
        parser.add_argument("--shard", default=None, metavar="I/N",
                            help="prepare only inputs I, I+N, I+2N... (job arrays; join with `eartalk merge`)")
        parser.add_argument("--json", action="store_true", help="print the report as JSON")

    def run(self, args: argparse.Namespace) -> int:
        from eartalk.core.data.prepare import parse_shard, prepare_dataset

        conditions = None
        if args.conditions is not None:
            conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
        report = prepare_dataset(
            args.videos,
            args.out,
            resolution=args.resolution,
            conditions=conditions,
            landmarker=args.landmarker,
            chunk_seconds=args.chunk_seconds,
            max_seconds=args.max_seconds,
            min_seconds=args.min_seconds,
            clips_per_shard=args.clips_per_shard,
            progress=not args.json,
            shard=None if args.shard is None else parse_shard(args.shard),
        )
        if args.json:
            print_json({**report.to_dict(), "exit_code": report.exit_code})
            return report.exit_code
        from rich.console import Console
        from rich.table import Table

        console = Console()
        if report.skipped:
            table = Table(title=f"skipped ({len(report.skipped)}; also in {args.out / 'skipped.jsonl'})")
            table.add_column("source", overflow="fold")
            table.add_column("reason", overflow="fold")
            for row in report.skipped:
                table.add_row(row["source"], row["reason"])
            console.print(table)
        console.print(
            f"{args.out}: {len(report.prepared)} clip(s) prepared, {len(report.existing)} already there, "
            f"{len(report.skipped)} skipped"
        )
        if report.exit_code:
            print("eartalk: error: no clip could be prepared from the given videos (see the table above)", file=sys.stderr)
        return report.exit_code


class SynthCommand(Command):
    """``eartalk synth --out DIR``: procedural talking heads with exact ground-truth controls."""

    name = "synth"
    help = "write a synthetic talking-head dataset with exact ground truth (tests, demo, control fidelity)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--out", required=True, type=Path, help="dataset directory (clips already there are kept)")
        parser.add_argument("--clips", type=int, default=16, help="number of clips (default 16)")
        parser.add_argument("--seconds", type=float, default=4.0, help="length of each clip (default 4)")
        parser.add_argument("--resolution", type=int, default=128, help="frame side (default 128)")
        parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        parser.add_argument("--emotion-segments", type=int, default=1,
                            help="emotions per clip, in equal segments (default 1: one per clip)")
        parser.add_argument("--motion-hz", type=float, default=0.4,
                            help="highest frequency of the head rotations in Hz (default 0.4: a calm speaker)")
        parser.add_argument("--json", action="store_true", help="print a JSON summary")

    def run(self, args: argparse.Namespace) -> int:
        from eartalk.core.data.dataset import read_manifest
        from eartalk.core.data.synth import MIN_MOTION_HZ, synthesize_dataset
        from eartalk.core.errors import InputError

        if args.clips < 1 or args.seconds <= 0 or args.resolution < 16 or args.emotion_segments < 1 or not args.motion_hz > MIN_MOTION_HZ:
            raise InputError("synth needs --clips >= 1, --seconds > 0, --resolution >= 16, --emotion-segments >= 1 "
                             f"and --motion-hz > {MIN_MOTION_HZ}")
        root = synthesize_dataset(args.out, args.clips, args.seconds, args.resolution, args.seed,
                                  emotion_segments=args.emotion_segments, motion_hz=args.motion_hz, progress=not args.json)
        clips = len(read_manifest(root))
        if args.json:
            print_json({"dataset": str(root), "clips": clips})
        else:
            print(f"{root}: {clips} synthetic clip(s) at {args.resolution}x{args.resolution}")
        return 0


class MergeCommand(Command):
    """``eartalk merge SHARDS... --out DIR``: join the datasets of ``prepare --shard I/N`` jobs into one."""

    name = "merge"
    help = "merge shard datasets (from `eartalk prepare --shard I/N`) into one dataset"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("shards", nargs="+", type=Path, help="shard dataset folders")
        parser.add_argument("--out", required=True, type=Path, help="new dataset folder (must not exist or be empty)")
        parser.add_argument("--json", action="store_true", help="print a JSON summary")

    def run(self, args: argparse.Namespace) -> int:
        from eartalk.core.data.prepare import merge_datasets

        result = merge_datasets(args.shards, args.out)
        if args.json:
            print_json(result)
        else:
            print(f"{result['dataset']}: {result['clips']} clip(s) from {len(result['shards'])} shard(s)")
        return 0


@hookimpl
def register_commands() -> list[type[Command]]:
    return [PrepareCommand, SynthCommand, MergeCommand]
