"""CLI subcommands of the engine: ``eartalk model info`` and ``eartalk bench stream``.

Both build the condition stack from the registry by plugin name (default: the built-in stack's
conditions that are installed, see :func:`eartalk.core.engine.bench.default_conditions`).
"""

from __future__ import annotations

import argparse
from typing import Any

from eartalk.core.commands import Command, print_json
from eartalk.core.hookspecs import hookimpl


def _names(text: str | None) -> list[str] | None:
    if not text:
        return None
    return [n.strip() for n in text.split(",") if n.strip()]


def _arch_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["window=12", "sampling.cfg=3"]`` -> ``{"window": 12, "sampling": {"cfg": 3}}`` (YAML values;
    dots nest: ``sampling.cfg_separate.head_pose=2``)."""
    import yaml

    from eartalk.core.errors import ConfigError

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--arch {item!r}: expected KEY=VALUE, e.g. --arch window=12")
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--arch {item!r}: {part!r} was given a value and cannot also have fields")
        node[leaf] = yaml.safe_load(text)
    return out


def _add_common(parser: argparse.ArgumentParser) -> None:
    from eartalk.core.engine.presets import PRESETS

    parser.add_argument("--preset", default="small", choices=sorted(PRESETS), help="model preset (default: small)")
    parser.add_argument(
        "--conditions",
        help="comma-separated condition plugins (default: the built-in stack's installed conditions)",
    )
    parser.add_argument(
        "--arch",
        action="append",
        metavar="KEY=VALUE",
        help="override a ModelArch field (repeatable), e.g. --arch window=12 --arch sampling.cfg=3",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")


class ModelCommand(Command):
    name = "model"
    help = "model sizes: parameters per component, tokens, slots, window, FLOPs per frame"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        info = sub.add_parser("info", help="parameter counts (meta device) and FLOPs per generated frame")
        _add_common(info)

    def run(self, args: argparse.Namespace) -> int:
        from eartalk.core.engine.bench import model_info

        info = model_info(args.preset, _names(args.conditions), **_arch_overrides(args.arch))
        if args.json:
            print_json(info)
            return 0
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"eartalk model {info['preset']}")
        table.add_column("item")
        table.add_column("value", justify="right")
        for part, count in info["params"].items():
            table.add_row(f"params {part}", f"{count:,}")
        table.add_row("params backbone + decoder", f"{info['params_backbone_decoder']:,}")
        table.add_row("params total", f"{info['params_total']:,}")
        table.add_row("conditions", ", ".join(info["conditions"]))
        for key in ("resolution", "tokens_per_frame", "token_dim", "slots", "block_tokens", "window", "period"):
            table.add_row(key.replace("_", " "), str(info[key]))
        s = info["sampling"]
        separate = "".join(f" {n}:{v:g}" for n, v in s["cfg_separate"].items())
        table.add_row("sampling", f"K={s['steps']} D={s['denoise_steps']} cfg={s['cfg']}{separate} T={s['temperature']}")
        table.add_row("GFLOPs per frame", f"{info['flops_per_frame'] / 1e9:,.2f}")
        for part, flops in info["flops_per_frame_parts"].items():
            table.add_row(f"  {part}", f"{flops / 1e9:,.2f}")
        Console().print(table)
        return 0


class BenchCommand(Command):
    name = "bench"
    help = "benchmarks: streaming latency, memory, kv-cache speed-up, efficiency"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        stream = sub.add_parser("stream", help="stream frames with untrained weights and time them")
        _add_common(stream)
        stream.add_argument("--frames", type=int, default=64, help="frames to stream (default 64)")
        stream.add_argument("--warmup", type=int, default=2, help="frames left out of the statistics (default 2)")
        stream.add_argument("--nocache-frames", type=int, default=4, help="frames timed without kv-cache (default 4)")
        stream.add_argument("--device", default="auto", help="torch device (default: cuda when available, else cpu)")
        stream.add_argument("--precision", default="32-true", help="32-true, bf16-mixed or bf16-true (default 32-true)")
        stream.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
        stream.add_argument("--steps", type=int, help="K, MAR steps (default: the preset's)")
        stream.add_argument("--denoise-steps", type=int, help="D, diffusion steps (default: the preset's)")
        stream.add_argument("--cfg", type=float, help="guidance scale (default: the preset's)")
        stream.add_argument("--seed", type=int, default=0)
        train = sub.add_parser("train", help="training-step time: dense vs block-sparse attention, with/without latents")
        _add_common(train)
        train.set_defaults(preset="base")
        train.add_argument("--frames", type=int, default=33, help="frames per clip T (default 33, the base config's)")
        train.add_argument("--batch", type=int, default=1, help="clips per step (default 1)")
        train.add_argument("--scale", type=int, default=8, help="divide widths and depths by this (default 8; 1 on a GPU)")
        train.add_argument("--reps", type=int, default=2, help="timed steps per variant (default 2)")
        train.add_argument("--device", default="auto", help="torch device (default: cuda when available, else cpu)")
        train.add_argument("--precision", default="32-true", help="32-true, bf16-mixed or bf16-true (default 32-true)")
        train.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
        # Other commands may add a benchmark here (e.g. `bench serve`): a registered command with a
        # `bench_action` name, `bench_help`, and `add_bench_arguments(parser)` / `run_bench(args)`.
        from eartalk.core.registry import get_registry

        self.extensions = {}
        for info in get_registry().infos("command"):
            action = getattr(info.cls, "bench_action", None)
            if action and action != "stream" and action not in self.extensions:
                extension = info.cls()
                extension.add_bench_arguments(sub.add_parser(action, help=getattr(info.cls, "bench_help", "")))
                self.extensions[action] = extension

    def run(self, args: argparse.Namespace) -> int:
        import torch

        from eartalk.core.engine.bench import bench_stream

        if args.action in getattr(self, "extensions", {}):
            return int(self.extensions[args.action].run_bench(args) or 0)
        if args.threads:
            torch.set_num_threads(args.threads)
        from eartalk.core.engine.devices import check_precision, resolve_device

        args.device = resolve_device(args.device)
        check_precision(args.precision)
        if args.action == "train":
            return _bench_train(args)
        kwargs = _arch_overrides(args.arch)
        sampling: dict[str, Any] = kwargs.pop("sampling", {})
        for key, value in (("steps", args.steps), ("denoise_steps", args.denoise_steps), ("cfg", args.cfg)):
            if value is not None:
                sampling[key] = value
        if sampling:
            kwargs["sampling"] = sampling
        common = dict(
            preset=args.preset,
            frames=args.frames,
            warmup=args.warmup,
            conditions=_names(args.conditions),
            device=args.device,
            nocache_frames=args.nocache_frames,
            seed=args.seed,
            precision=args.precision,
            **kwargs,
        )
        return _report_bench(bench_stream, common, args.json, "streaming")


def _bench_train(args: argparse.Namespace) -> int:
    """``eartalk bench train``: see :mod:`eartalk.core.engine.bench_train`."""
    from eartalk.core.engine.bench_train import bench_train

    common = dict(preset=args.preset, frames=args.frames, batch=args.batch, scale=args.scale, reps=args.reps,
                  device=args.device, precision=args.precision, conditions=_names(args.conditions),
                  **_arch_overrides(args.arch))
    return _report_bench(bench_train, common, args.json, "training steps")


def _report_bench(bench: Any, kwargs: dict[str, Any], as_json: bool, label: str) -> int:
    """Run a benchmark: JSON on stdout with ``--json``, else a rich progress bar and one line per figure."""
    if as_json:
        print_json(bench(**kwargs))
        return 0
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()) as bar:
        task = bar.add_task(label, total=None)
        result = bench(progress=lambda done, total: bar.update(task, completed=done, total=total), **kwargs)
    console = Console()
    for key, value in result.items():
        console.print(f"[bold]{key}[/bold]: {value}")
    return 0


@hookimpl
def register_commands() -> list[type[Command]]:
    return [ModelCommand, BenchCommand]
