"""``eartalk own-face``: train on the first 75 % of one real video, generate the rest, measure lip-sync.

This is the "fine-tune on my own face" use on a real person: one talking-face video (a few
seconds is enough to try), nothing else.

1. ``eartalk prepare`` cuts the video into clips of ``chunk_seconds`` (MediaPipe face crops at the
   preset's resolution, 16 kHz audio, the stack's signals).
2. The first ``train_fraction`` of the clips (in time) are the training set: the frame VAE and the
   model (stack ``audio`` + ``voice_activity`` by default) train on them only.
3. The remaining clips, joined, are the test: the model streams them from **the video's first
   frame** (the portrait) and **their audio**, nothing else.
4. Lip-sync proxy: MediaPipe's mouth opening (inner-lip gap over the eye distance) read on every
   generated frame, correlated with the same reading on the true frames (``mouth_corr``), against
   the same model driven by the test audio shuffled in blocks (``mouth_corr_shuffled``) and the
   portrait repeated (``mouth_corr_static``: 0 by construction, a constant reading). Also L1 and
   PSNR against the true frames, and the VAE alone on them (its floor).

The figures are a proxy on one person's held-out seconds, not a benchmark: the test part is a
couple of seconds, so a correlation carries a wide interval (``report.json`` gives the frame
count). ``report.json``, ``report.md`` and ``mouth.png`` go into ``--out``; the real media stay
where they are (derived crops live in ``--out``, which is not part of the repository).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from eartalk.core.commands import Command
from eartalk.core.errors import ConfigError, InputError
from eartalk.core.types import to_uint8

OWN_FACE_CONDITIONS = ("audio", "voice_activity")
SHUFFLE_BLOCK = 10  # frames per block of the shuffled-audio baseline (0.4 s)
SHUFFLE_SEEDS = 3


@attrs.frozen
class OwnFaceConfig:
    """Sizes of the own-face run.

    Attributes:
        video: the talking-face video.
        out: output folder (prepared clips, runs, report).
        preset: model preset (its resolution is the crop size).
        chunk_seconds: length of each prepared clip; the split is made on whole clips.
        train_fraction: share of the clips (the first ones in time) used for training.
        conditions: the model's condition stack (every test stream gets only the audio-derived ones).
        vae_steps: VAE training steps (unused with ``vae_checkpoint``).
        steps: model training steps.
        init_from: a trained model to fine-tune on the person instead of training from scratch (its
            condition stack replaces ``conditions``; needs ``vae_checkpoint``, the VAE it was trained
            with, which then stays as it is).
        vae_checkpoint: use this frame VAE instead of training one on the person.
        finetune_base: with ``init_from``: ``lower_lr``, ``train`` or ``freeze`` (the train recipe's
            ``finetune.base``).
        guidance: classifier-free guidance scale of the generated streams (None: the checkpoint's own).
        landmarker: ``face_landmarker.task`` (default ``$EARTALK_FACE_LANDMARKER``).
        seed: seed of everything.
        threads: torch threads (None: torch's default).
        progress: rich progress bars.
    """

    video: str
    out: str = "runs/own_face"
    preset: str = "tiny"
    chunk_seconds: float = 1.0
    train_fraction: float = 0.75
    conditions: tuple[str, ...] = attrs.field(default=OWN_FACE_CONDITIONS, converter=tuple)
    vae_steps: int = 1500
    steps: int = 3000
    init_from: str | None = None
    vae_checkpoint: str | None = None
    finetune_base: str = "train"
    guidance: float | None = None
    landmarker: str | None = None
    seed: int = 0
    threads: int | None = None
    progress: bool = True

    def __attrs_post_init__(self) -> None:
        if not 0.0 < self.train_fraction < 1.0:
            raise ConfigError(f"own-face: train_fraction must be in (0, 1), got {self.train_fraction}")
        if self.chunk_seconds < 0.5:
            raise ConfigError(f"own-face: chunk_seconds must be >= 0.5, got {self.chunk_seconds}")
        if self.vae_steps < 1 or self.steps < 1:
            raise ConfigError(f"own-face: vae_steps and steps must be >= 1, got {self.vae_steps} and {self.steps}")
        if self.init_from and not self.vae_checkpoint:
            raise ConfigError("own-face: init_from needs vae_checkpoint (the VAE the model was trained with)")
        for name in ("init_from", "vae_checkpoint"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise InputError(f"own-face: {name} {path} does not exist; pass a checkpoint file")
        if "audio" not in self.conditions:
            raise ConfigError(f"own-face: the stack must contain 'audio' (lip-sync is what is measured), got {self.conditions}")


def quick_config(video: str, out: str | Path, **overrides: Any) -> OwnFaceConfig:
    """Reduced sizes for tests (a couple of minutes on 2 cores; learns little)."""
    base: dict[str, Any] = dict(video=video, out=str(out), vae_steps=150, steps=200)
    base.update(overrides)
    return OwnFaceConfig(**base)


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def require_video(path: str) -> Path:
    """``path`` as a Path; InputError naming it when it is not a file."""
    video = Path(path)
    if not video.is_file():
        raise InputError(f"own-face: video {video} not found; pass a talking-face video file (e.g. an .mp4 with speech)")
    return video


def prepare_video(cfg: OwnFaceConfig, video: Path, resolution: int) -> Path:
    """``eartalk prepare`` of ``video`` (checked by :func:`require_video`) into ``out/prepared`` (resumed when there)."""
    from eartalk.core.data.prepare import prepare_dataset

    root = Path(cfg.out) / "prepared"
    report = prepare_dataset([video], root, resolution=resolution, conditions=list(cfg.conditions),
                             landmarker=cfg.landmarker, chunk_seconds=cfg.chunk_seconds,
                             min_seconds=min(1.0, cfg.chunk_seconds), progress=cfg.progress)
    if report.exit_code != 0:
        reasons = "; ".join(f"{s['source']}: {s['reason']}" for s in report.skipped) or "no clip written"
        raise InputError(f"own-face: could not prepare {video} ({reasons})")
    return root


def split_clips(root: Path, train_fraction: float) -> tuple[list[Any], list[Any]]:
    """The prepared clips in time order, split into (train, test) readers on whole clips."""
    from eartalk.core.data.dataset import load_clips

    _, readers = load_clips(root)
    readers = sorted(readers, key=lambda r: float(r.entry.get("metadata", {}).get("start_seconds", 0.0)))
    if len(readers) < 2:
        raise InputError(f"own-face: {root} holds {len(readers)} clip(s); the video must be at least two clips long "
                         "(lower --chunk-seconds or use a longer video)")
    n_train = min(len(readers) - 1, max(1, round(len(readers) * train_fraction)))
    return readers[:n_train], readers[n_train:]


def subset_dataset(src: Path, dst: Path, readers: list[Any]) -> Path:
    """A dataset at ``dst`` holding only ``readers``' clips of ``src`` (files copied; rewritten when it exists)."""
    from eartalk.core.data.dataset import clip_dir

    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for name in ("dataset.json", "prepare.json"):
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    lines = []
    for reader in readers:
        target = clip_dir(dst, reader.entry)
        shutil.copytree(reader.dir, target)
        lines.append(json.dumps(reader.entry))
    (dst / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return dst


def join_test(root: Path, readers: list[Any], stack: Any) -> dict[str, Any]:
    """The test clips joined in time: frames ``(T, 3, R, R)`` in [-1, 1] and the stack's signals ``{name: (T, D)}``."""
    from eartalk.core.data.dataset import TalkingHeadDataset

    items = [TalkingHeadDataset(root, clip_frames=r.num_frames, stack=stack, clip_ids=[r.id])[0] for r in readers]
    return {"frames": torch.cat([it["frames"] for it in items]),
            "signals": {n: torch.cat([it["signals"][n] for it in items]) for n in items[0]["signals"]}}


# ---------------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------------
def mouth_opening(frames: torch.Tensor, analyzer: Any) -> np.ndarray:
    """MediaPipe mouth opening per frame of uint8 ``(T, 3, R, R)``: inner-lip gap / eye distance (NaN: no face)."""
    from eartalk.metrics.proxies import lip_opening

    return lip_opening(analyzer.track(frames))


def generate(model: Any, portrait: torch.Tensor, signals: dict[str, torch.Tensor], frames: int,
             progress: bool) -> torch.Tensor:
    """Stream ``frames`` frames from ``portrait`` with only the audio-derived ``signals``; uint8 ``(T, 3, R, R)``."""
    from eartalk.recipes.study import AUDIO_CONDITIONS, stream_batch

    audio_only = {n: s for n, s in signals.items() if n in AUDIO_CONDITIONS}
    video, _ = stream_batch(model, portrait[None], [audio_only], frames, "own face", progress)
    return video[0]


def measure_own_face(model: Any, portrait: torch.Tensor, test: dict[str, Any], analyzer: Any,
                     progress: bool = True, seed: int = 0) -> dict[str, Any]:
    """Generate the test part (its audio, shuffled audio) and read the mouth on everything."""
    from eartalk.metrics.probe import pearson
    from eartalk.recipes.study import block_permutation, per_frame_l1_psnr, vae_floor

    truth = to_uint8(test["frames"])  # (T, 3, R, R)
    frames = truth.shape[0]
    true_open = mouth_opening(truth, analyzer)
    start = time.perf_counter()
    video = generate(model, portrait, test["signals"], frames, progress)
    seconds = time.perf_counter() - start
    gen_open = mouth_opening(video, analyzer)
    shuffled_open = []
    for k in range(SHUFFLE_SEEDS):
        order = torch.from_numpy(block_permutation(frames, SHUFFLE_BLOCK, seed + k))
        shuffled = {n: s[order] for n, s in test["signals"].items()}
        shuffled_open.append(mouth_opening(generate(model, portrait, shuffled, frames, progress), analyzer))
    shuffled_corr = [pearson(o, true_open) for o in shuffled_open]
    static_open = mouth_opening(to_uint8(portrait)[None].expand(frames, -1, -1, -1).contiguous(), analyzer)
    l1, psnr = per_frame_l1_psnr(video, truth)
    floor = vae_floor(model, [{"frames": test["frames"]}], frames)
    return {
        "mouth_corr": pearson(gen_open, true_open),
        "mouth_corr_shuffled": float(np.mean(shuffled_corr)),
        "mouth_corr_shuffled_per_seed": [float(c) for c in shuffled_corr],
        "mouth_corr_static": pearson(static_open, true_open),
        "mouth_amplitude_ratio": float(np.nanstd(gen_open) / max(np.nanstd(true_open), 1e-9)),
        "face_found_generated": float(np.isfinite(gen_open).mean()),
        "l1_mean": float(l1.mean()), "psnr_mean_db": float(psnr.mean()), **floor,
        "test_frames": int(frames), "fps": float(frames / seconds),
        "curves": {"true": [round(float(v), 4) for v in true_open], "generated": [round(float(v), 4) for v in gen_open],
                   "shuffled": [round(float(v), 4) for v in shuffled_open[0]]},
        "_video": video,
    }


def _plot(out: Path, res: dict[str, Any], truth: torch.Tensor) -> Path | None:
    """``mouth.png``: the mouth-opening curves and a strip of true / generated frames."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    video = res["_video"]
    picks = np.linspace(0, video.shape[0] - 1, 6).astype(int)
    fig = plt.figure(figsize=(9, 4.6))
    ax = fig.add_subplot(2, 1, 1)
    ax.plot(res["curves"]["true"], "k", label="truth")
    ax.plot(res["curves"]["generated"], label=f"generated (r={res['mouth_corr']:.2f})")
    ax.plot(res["curves"]["shuffled"], alpha=0.6, label="shuffled audio")
    ax.set_xlabel("test frame")
    ax.set_ylabel("mouth opening")
    ax.legend(fontsize=7)
    strip = torch.cat([torch.cat([truth[i], video[i]], 1) for i in picks], 2)  # (3, 2R, 6R)
    ax2 = fig.add_subplot(2, 1, 2)
    ax2.imshow(strip.permute(1, 2, 0).numpy())
    ax2.set_axis_off()
    ax2.set_title("top: truth, bottom: generated", fontsize=8)
    fig.tight_layout()
    path = out / "mouth.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_markdown(path: Path, report: dict[str, Any]) -> Path:
    r = report
    lines = [
        "# eartalk own-face report",
        "",
        f"Video: `{r['video']}`. Trained on its first {r['train_frames']} frames ({r['train_clips']} clips), "
        f"generated the last {r['test_frames']} frames from the first frame and their audio. "
        "Mouth opening read by MediaPipe on the frames (a proxy).",
        "",
        "| figure | value |",
        "|---|---|",
        f"| mouth-opening correlation with the truth | {r['mouth_corr']:.3f} |",
        f"| shuffled audio (mean of {SHUFFLE_SEEDS}) | {r['mouth_corr_shuffled']:.3f} |",
        f"| static portrait | {r['mouth_corr_static']:.3f} |",
        f"| generated / true opening std | {r['mouth_amplitude_ratio']:.2f} |",
        f"| L1 / PSNR against the truth | {r['l1_mean']:.3f} / {r['psnr_mean_db']:.1f} dB |",
        f"| VAE alone (L1 / PSNR) | {r['vae_l1']:.3f} / {r['vae_psnr_db']:.1f} dB |",
        f"| training minutes (VAE + model) | {r['train_minutes']:.1f} |",
        f"| generation fps (one stream) | {r['fps']:.1f} |",
        "",
        f"{r['test_frames']} test frames: a correlation of r on n frames has a 95 % interval of roughly "
        f"r +/- {1.96 / math.sqrt(max(r['test_frames'] - 3, 1)):.2f}.",
        "",
    ]
    path.write_text("\n".join(lines))
    return path


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------
def run_own_face(cfg: OwnFaceConfig) -> dict[str, Any]:
    """Prepare, split, train, generate and measure; writes and returns ``report.json``'s content."""
    from eartalk.core.engine.presets import PRESETS
    from eartalk.core.media.face import FaceAnalyzer
    from eartalk.recipes.study import json_safe, train_model, train_vae, with_guidance
    from eartalk.recipes.train import load_trained

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.preset not in PRESETS:
        raise ConfigError(f"own-face: unknown preset {cfg.preset!r}; choose one of {sorted(PRESETS)}")
    video = require_video(cfg.video)
    analyzer = FaceAnalyzer(cfg.landmarker)  # fails early, naming the .task file, when MediaPipe has no model
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    resolution = PRESETS[cfg.preset].resolution

    specs: tuple[Any, ...] = cfg.conditions
    if cfg.init_from:  # the checkpoint's stack, options included (a plugin with other options would not load)
        from eartalk.core.engine.checkpoint import read_info

        specs = tuple(dict(spec) for spec in read_info(Path(cfg.init_from), expect="model").conditions)
        cfg = attrs.evolve(cfg, conditions=tuple(spec["name"] for spec in specs))
    prepared = prepare_video(cfg, video, resolution)
    train_readers, test_readers = split_clips(prepared, cfg.train_fraction)
    train = subset_dataset(prepared, out / "train", train_readers)

    start = time.perf_counter()
    vae = Path(cfg.vae_checkpoint) if cfg.vae_checkpoint else train_vae(
        train, out / "vae", cfg.preset, cfg.vae_steps, cfg.seed, cfg.progress, val_fraction=0.0)
    vae_minutes = (time.perf_counter() - start) / 60
    start = time.perf_counter()
    finetune = {"init_from": cfg.init_from, "finetune": {"base": cfg.finetune_base}} if cfg.init_from else {}
    checkpoint = train_model(train, out / "model", cfg.preset, vae, cfg.steps, cfg.seed, cfg.progress,
                             conditions=specs, val_fraction=0.0, extra=finetune)
    model_minutes = (time.perf_counter() - start) / 60

    model = with_guidance(load_trained(checkpoint).eval(), cfg.guidance)
    portrait = torch.from_numpy(np.array(train_readers[0].frames[0])).float() / 127.5 - 1.0  # (3, R, R)
    test = join_test(prepared, test_readers, model.stack)
    with torch.no_grad():
        res = measure_own_face(model, portrait, test, analyzer, cfg.progress, cfg.seed)
    truth = to_uint8(test["frames"])
    plot = _plot(out, res, truth)
    res.pop("_video")
    report = {
        "video": str(cfg.video),
        "fidelity": "proxy (MediaPipe mouth opening on 64 px frames, one person's held-out seconds)",
        **res,
        "sampling": attrs.asdict(model.arch.sampling),
        "train_clips": len(train_readers), "test_clips": len(test_readers),
        "train_frames": int(sum(r.num_frames for r in train_readers)),
        "train_minutes": vae_minutes + model_minutes, "vae_minutes": vae_minutes, "model_minutes": model_minutes,
        "budget": {k: v for k, v in attrs.asdict(cfg).items() if k not in ("out", "progress", "video")},
        "checkpoints": {"vae": str(vae), "model": str(checkpoint)},
        "files": {"report_json": str(out / "report.json"), "report_md": str(out / "report.md"),
                  "mouth_png": str(plot) if plot else None},
    }
    report = json_safe(report)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    write_markdown(out / "report.md", report)
    return report


class OwnFaceCommand(Command):
    name = "own-face"
    help = "train on the first 75% of one real video, generate the rest from its audio, measure lip-sync"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        d = OwnFaceConfig(video="")
        parser.add_argument("video", help="a talking-face video with speech")
        parser.add_argument("--out", default=d.out, help="output folder (report.md, report.json, mouth.png, runs)")
        parser.add_argument("--quick", action="store_true", help="tiny budgets (a smoke test; learns little)")
        parser.add_argument("--preset", default=d.preset, choices=["tiny", "small"])
        parser.add_argument("--train-fraction", type=float, default=d.train_fraction,
                            help="share of the video (first part) to train on")
        parser.add_argument("--chunk-seconds", type=float, default=d.chunk_seconds, help="clip length of the split")
        parser.add_argument("--conditions", default=",".join(d.conditions), help="comma-separated condition stack")
        parser.add_argument("--vae-steps", type=int, help=f"VAE training steps (default {d.vae_steps})")
        parser.add_argument("--steps", type=int, help=f"model training steps (default {d.steps})")
        parser.add_argument("--init-from", help="fine-tune this trained model on the person (needs --vae-checkpoint)")
        parser.add_argument("--vae-checkpoint", help="use this frame VAE (the one --init-from was trained with)")
        parser.add_argument("--finetune-base", default=d.finetune_base, choices=["train", "lower_lr", "freeze"],
                            help="with --init-from: how the loaded weights train")
        parser.add_argument("--cfg", type=float, dest="guidance", help="guidance scale of the generated streams "
                            "(default: the checkpoint's own)")
        parser.add_argument("--landmarker", help="face_landmarker.task (default $EARTALK_FACE_LANDMARKER)")
        parser.add_argument("--threads", type=int, help="torch threads")
        parser.add_argument("--seed", type=int, default=d.seed)
        parser.add_argument("--json", action="store_true", help="print the headline figures as JSON")

    def run(self, args: argparse.Namespace) -> int:
        fields: dict[str, Any] = {
            "preset": args.preset, "train_fraction": args.train_fraction, "chunk_seconds": args.chunk_seconds,
            "conditions": tuple(c.strip() for c in args.conditions.split(",") if c.strip()),
            "landmarker": args.landmarker, "threads": args.threads, "seed": args.seed, "init_from": args.init_from,
            "vae_checkpoint": args.vae_checkpoint, "finetune_base": args.finetune_base, "guidance": args.guidance}
        for key in ("vae_steps", "steps"):
            if getattr(args, key) is not None:
                fields[key] = getattr(args, key)
        cfg = quick_config(args.video, args.out, **fields) if args.quick else OwnFaceConfig(
            video=args.video, out=args.out, **fields)
        report = run_own_face(cfg)
        keys = ("mouth_corr", "mouth_corr_shuffled", "mouth_corr_static", "psnr_mean_db", "vae_psnr_db", "train_minutes")
        if args.json:
            print(json.dumps({k: report[k] for k in keys}, indent=2))
        else:
            for key in keys:
                print(f"{key}: {report[key]:.3f}")
            print(f"report: {report['files']['report_md']}")
        return 0


__all__ = ["OwnFaceCommand", "OwnFaceConfig", "measure_own_face", "run_own_face", "split_clips"]
