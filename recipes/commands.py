"""Recipe-driven CLI commands: ``train``, ``generate`` and ``demo``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from eartalk.core.commands import Command, load_recipe_config
from eartalk.core.errors import ConfigError


class TrainCommand(Command):
    name = "train"
    help = "run a training recipe from a YAML config (train, vae, ...) with key=value overrides"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("config", help="recipe YAML (see recipes/configs/; `eartalk plugins --kind recipe` lists recipes)")
        parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. trainer.max_steps=50")
        parser.add_argument(
            "--dry-run", action="store_true",
            help="build data module, model and Trainer as the run would, then run one optimiser step (configs that fit "
            "this machine; synthetic data if data.root is absent) or report parameters, strategy and estimated memory "
            "per device (larger ones); trains nothing, writes nothing under out_dir",
        )
        parser.add_argument("--estimate-only", action="store_true", help="with --dry-run: never run the step")
        parser.add_argument("--json", action="store_true", help="with --dry-run: print the report as one JSON object")

    def run(self, args: argparse.Namespace) -> int:
        recipe_cls, config = load_recipe_config(args.config, args.overrides)
        if args.dry_run:
            from eartalk.recipes.dryrun import dry_run, format_report

            report = dry_run(recipe_cls, config, estimate_only=args.estimate_only)
            print(json.dumps(report, default=str) if args.json else format_report(report))
            return 0
        if args.json or args.estimate_only:
            raise ConfigError("--json and --estimate-only go with --dry-run")
        result = recipe_cls().run(config, args.overrides)
        print(f"{recipe_cls.name}: done -> {result}")
        return 0


class GenerateCommand(Command):
    name = "generate"
    help = "generate a talking-head mp4 from a portrait, speech and optional frame-wise controls"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from eartalk.core.engine.presets import SamplingConfig

        defaults = SamplingConfig()
        parser.add_argument("--checkpoint", required=True, help="a `train` recipe checkpoint (.ckpt)")
        parser.add_argument("--portrait", required=True, help="image with one face (the identity)")
        parser.add_argument("--audio", help="speech (wav, mp3, m4a, or a video's audio track)")
        parser.add_argument("--out", required=True, help="output .mp4")
        parser.add_argument("--frames", type=int, help="number of frames (default: the audio's length)")
        parser.add_argument(
            "--control", action="append", default=[], metavar="NAME=VALUE[@START:STOP]",
            help="a control on a frame range; repeat it for several controls or ranges, e.g. --control "
                 "emotion=sad:3@25:100 --control head_pose=pose.csv --control blink=off@0:50 (controls are "
                 "listed below)",
        )
        parser.add_argument("--steps", type=int,
                            help=f"MAR unmasking steps K per frame (default: the checkpoint's; {defaults.steps} unless "
                                 "its preset says otherwise)")
        parser.add_argument("--denoise", type=int,
                            help=f"diffusion steps D per token (default: the checkpoint's; {defaults.denoise_steps})")
        parser.add_argument("--cfg", type=float,
                            help=f"classifier-free guidance scale, 1 = none (default: the checkpoint's; {defaults.cfg})")
        parser.add_argument("--cfg-separate", action="append", default=[], metavar="NAME=SCALE",
                            help="guide control NAME with a scale of its own (repeatable; sampling.cfg_separate): "
                                 "e.g. --cfg-separate brightness=2 follows a fine-tuned control gently while the "
                                 "others keep --cfg (default: the checkpoint's)")
        parser.add_argument("--temperature", type=float,
                            help=f"sampling temperature (default: the checkpoint's; {defaults.temperature})")
        parser.add_argument("--seed", type=int, default=0, help="sampling seed")
        parser.add_argument("--landmarker", help="MediaPipe face_landmarker.task (default: $EARTALK_FACE_LANDMARKER)")
        parser.add_argument(
            "--past-end", action="append", default=[], metavar="NAME=POLICY",
            help="what a control's per-frame values (file, driving video) do when shorter than the video: "
            "absent (default), hold the last value, or loop; repeatable, e.g. --past-end head_pose=hold",
        )
        parser.add_argument("--device", default="auto", help="torch device (default: cuda when available, else cpu)")
        parser.add_argument("--precision", default="32-true", choices=("32-true", "bf16-mixed", "bf16-true"),
                            help="weights/compute precision (default 32-true)")
        # The controls' help is built from the installed plugins only when --help is shown.
        format_help = parser.format_help

        def with_controls() -> str:
            from eartalk.core.commands import conditions_epilog

            parser.epilog = conditions_epilog()
            return format_help()

        parser.format_help = with_controls  # type: ignore[method-assign]

    def run(self, args: argparse.Namespace) -> int:
        from eartalk.recipes.generate import generate_video

        sampling = {"seed": args.seed}
        for key, value in (("steps", args.steps), ("denoise_steps", args.denoise), ("cfg", args.cfg), ("temperature", args.temperature)):
            if value is not None:
                sampling[key] = value
        if args.cfg_separate:
            sampling["cfg_separate"] = parse_scales(args.cfg_separate)
        from eartalk.recipes.generate import parse_past_end

        path = generate_video(args.checkpoint, args.portrait, args.audio, args.out, args.control, args.frames, sampling,
                              args.landmarker, past_end=parse_past_end(args.past_end), device=args.device,
                              precision=args.precision)
        print(f"wrote {path}")
        return 0


def parse_scales(pairs: list[str]) -> dict[str, float]:
    """``["brightness=2"]`` -> ``{"brightness": 2.0}`` (``--cfg-separate``)."""
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip()
        try:
            scale = float(value)
        except ValueError:
            scale = None
        if not (sep and name) or scale is None:
            raise ConfigError(f"--cfg-separate {pair!r}: expected NAME=SCALE, e.g. --cfg-separate brightness=2")
        out[name] = scale
    return out


class DemoCommand(Command):
    name = "demo"
    help = "end-to-end CPU demo: synthesise data, train the VAE and the model, generate a controlled video"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--out", default="runs/demo", help="output folder")
        parser.add_argument("--preset", default="tiny", choices=["tiny", "small"], help="model size")
        import inspect

        from eartalk.recipes.demo import run_demo

        d = {k: p.default for k, p in inspect.signature(run_demo).parameters.items()}  # one set of defaults
        parser.add_argument("--clips", type=int, default=d["clips"], help="synthetic training clips (identities)")
        parser.add_argument("--seconds", type=float, default=d["seconds"], help="seconds per clip")
        parser.add_argument("--vae-steps", type=int, default=d["vae_steps"], help="VAE training steps")
        parser.add_argument("--vae-focus", type=float, default=d["vae_focus"],
                            help="VAE reconstruction weight around the eyes and mouth (default 0 = plain L1; docs/training.md, Focus)")
        parser.add_argument("--steps", type=int, default=d["steps"], help="training steps of the AR model")
        parser.add_argument("--ema-decay", type=float, default=d["ema_decay"],
                            help="EMA of the model weights while training, sampled with; 0 = off")
        parser.add_argument("--frames", type=int, default=d["frames"], help="frames to generate (25 per second)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--probe", help="synthetic probe file (trained and saved there when missing; default OUT/probe.pt)")
        parser.add_argument("--json", action="store_true", help="print the summary as JSON")

    def run(self, args: argparse.Namespace) -> int:
        from eartalk.recipes.demo import run_demo

        summary = run_demo(
            Path(args.out), preset=args.preset, clips=args.clips, seconds=args.seconds,
            vae_steps=args.vae_steps, vae_focus=args.vae_focus, ema_decay=args.ema_decay, steps=args.steps, frames=args.frames, seed=args.seed, probe=args.probe,
        )
        if args.json:
            print(json.dumps(summary, indent=2, default=str))
        else:
            for key, value in summary.items():
                print(f"{key}: {value}")
        return 0


COMMANDS = [TrainCommand, GenerateCommand, DemoCommand]
