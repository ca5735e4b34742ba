"""The new-control walk-through (docs/tutorial-new-control.md), end to end and measured.

``python -m eartalk.recipes.tutorial_new_control --out runs/tutorial_brightness`` with the example
package ``docs/examples/eartalk-brightness`` installed:

1. synthesise plain talking-head clips and train the frame VAE and the tiny model on them with the
   study's condition stack (no brightness control): *the trained model* (reused when its
   checkpoint is already in ``out``);
2. synthesise fine-tuning clips whose brightness jumps **within** each clip (exposure levels
   applied to the rendered frames; the reference frame comes from the same clip, so the model can
   only follow the change through the control), and fine-tune the trained model with the
   ``brightness`` plugin added (``init_from``; the new plugin's tokenizer, null token and type
   embedding start fresh; ``finetune.base`` ``lower_lr`` by default; the keep loss
   ``finetune.keep`` holds the base's behaviour on the plain clips, which carry no brightness);
3. stream held-out identities through ``model.session(portrait)`` with ``session.set_control(
   "brightness", value)`` swept over its range, and measure the achieved mean luma of the generated
   frames against the commanded one (Pearson per identity, pooled, MAE), for the model before and
   after the fine-tune;
4. measure the old controls before and after on plain held-out clips in the study's streams,
   brightness not set (L1 against the truth, the drift ratio and, with a probe, the study's
   control figures from :mod:`eartalk.metrics.probe`), and again with the truth's brightness given;
5. write ``report.json`` and ``sweep.png`` (per identity: commanded and achieved luma per frame).

The achieved value is read straight from pixels (the plugin's own ``extract``: mean luma), so no
learned probe is involved in the new control's figure.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from eartalk.core.errors import ConfigError
from eartalk.core.types import VIDEO_FPS, to_uint8

CONTROL = "brightness"
EXPOSURE_RANGE = 0.45  # |exposure| of the sweep; the fine-tuning curves stay within 0.6


@attrs.frozen
class TutorialConfig:
    """Sizes of the walk-through.

    Attributes:
        out: output folder (data, runs, report.json).
        preset: model preset.
        clips: plain clips the base model trains on.
        seconds: length of each training clip.
        motion_hz: highest head-rotation frequency of the synthetic clips (base and fine-tune data
            alike: a fine-tune on calmer heads than the base saw unlearns its head-pose control).
        emotion_segments: emotions per synthetic clip (base and fine-tune data alike).
        vae_steps: VAE training steps.
        steps: base model training steps.
        finetune_clips: brightness-varied clips for the fine-tune.
        finetune_steps: fine-tuning steps.
        finetune_hold: shortest and longest run of frames at one brightness level in the
            fine-tuning clips (:func:`exposure_curve`).
        finetune_walk: per-frame step std of the random-walk segments of the fine-tuning clips
            (0: levels only; :func:`exposure_curve`).
        finetune_plain: share of the fine-tuning clips left at exposure 0 throughout (the old
            behaviour keeps being trained on the frames it was trained on).
        finetune_replay: what the plain clips store as brightness: ``absent`` (NaN rows: the
            model's null brightness learns "as the clip's own" on them, and the keep loss holds
            that null branch to the base) or ``given`` (their own luma, computed from the frames
            like the other clips', and flagged ``replay: true``: the keep loss then holds the
            commanded branch to the base as well; the null brightness learns from condition
            dropout only). Measured (docs/tutorial-new-control.md, run pg): ``given`` learns the
            control far less (Pearson 0.43) and drifts where brightness is not set (+59 %).
        guide_new_control: True (default): the guidance's null branch drops the new control too
            (the base's all-null branch), so classifier-free guidance amplifies it like the old
            conditions; False: it stays in the null branch (``sampling.cfg_keep``, trained by the
            ``drop_keep`` joint dropout), so guidance amplifies only the old conditions. Measured
            (docs/tutorial-new-control.md): False follows the sweep less (0.67 against 0.91).
        new_control_cfg: a guidance scale of the new control's own (``sampling.cfg_separate``:
            the old controls keep the preset's scale, the new one is added at this scale); None:
            one scale for all. Stored in the fine-tuned checkpoint's sampling defaults and used
            when measuring it (also with ``reuse_finetune``). Measured
            (docs/tutorial-new-control.md): 2.5 follows the sweep at Pearson 0.91 with slope 1.1
            where one scale of 8 overshoots (slope 1.7), and while brightness is commanded the
            lip-sync falls 9 % instead of 42 %.
        finetune_base: ``lower_lr``, ``freeze`` or ``train`` (the recipe's ``finetune.base``).
        base_lr_scale: learning-rate factor of the loaded weights with ``lower_lr``.
        finetune_keep: weight of the keep loss (the recipe's ``finetune.keep``: on the plain clips,
            which carry no brightness, the model's output is pulled toward the base's; 0: off).
            Measured (docs/tutorial-new-control.md): 4 keeps every old figure within 10 % on the
            study's streams; 0 loses the plain frames' luma (L1 +68 %) and the yaw response.
        lr: learning rate of the fine-tune (new parts).
        identities: held-out identities.
        frames: frames streamed per held-out identity.
        probe: probe checkpoint for the old controls' figures (trained into ``out`` when
            ``probe_identities`` > 0 and the file is missing); None: L1 and drift only.
        probe_identities: identities the probe trains on (0: no probe).
        seed: seed of everything.
        progress: rich progress bars.
        reuse_finetune: measure the fine-tuned checkpoint already in ``out`` instead of fine-tuning again.
    """

    out: str
    preset: str = "tiny"
    clips: int = 64
    seconds: float = 1.0
    motion_hz: float = 1.5
    emotion_segments: int = 2
    vae_steps: int = 600
    steps: int = 600
    finetune_clips: int = 200
    finetune_steps: int = 1500
    finetune_hold: tuple[int, int] = attrs.field(default=(1, 6), converter=lambda v: tuple(int(x) for x in v))
    finetune_walk: float = 0.0
    finetune_plain: float = 0.25
    finetune_replay: str = "absent"
    guide_new_control: bool = True
    new_control_cfg: float | None = attrs.field(default=2.5, converter=attrs.converters.optional(float))
    finetune_base: str = "lower_lr"
    base_lr_scale: float = 0.1
    finetune_keep: float = 4.0
    lr: float = 2e-3
    identities: int = 4
    frames: int = 60
    probe: str | None = None
    probe_identities: int = 32
    seed: int = 0
    progress: bool = True
    reuse_finetune: bool = False

    def __attrs_post_init__(self) -> None:
        for name in ("clips", "vae_steps", "steps", "finetune_clips", "finetune_steps", "identities"):
            if getattr(self, name) < 1:
                raise ConfigError(f"tutorial: {name} must be >= 1, got {getattr(self, name)}")
        from eartalk.core.data.synth import MIN_MOTION_HZ

        if not self.motion_hz > MIN_MOTION_HZ:
            raise ConfigError(f"tutorial: motion_hz must be > {MIN_MOTION_HZ} (the slowest head motion component), "
                              f"got {self.motion_hz}")
        if self.new_control_cfg is not None and not (self.guide_new_control and self.new_control_cfg >= 0.0):
            raise ConfigError(f"tutorial: new_control_cfg must be >= 0 and needs guide_new_control=true (the control "
                              f"is then guided on its own), got {self.new_control_cfg} with "
                              f"guide_new_control={self.guide_new_control}")
        if not self.finetune_keep >= 0.0:
            raise ConfigError(f"tutorial: finetune_keep must be >= 0 (0: off), got {self.finetune_keep}")
        if self.finetune_replay not in REPLAY_MODES:
            raise ConfigError(f"tutorial: finetune_replay must be one of {REPLAY_MODES}, got {self.finetune_replay!r}")
        if not 0.0 <= self.finetune_plain < 1.0:
            raise ConfigError(f"tutorial: finetune_plain must be in [0, 1), got {self.finetune_plain}")
        if len(self.finetune_hold) != 2 or not 1 <= self.finetune_hold[0] <= self.finetune_hold[1]:
            raise ConfigError(f"tutorial: finetune_hold must be (shortest, longest) with 1 <= shortest <= longest, "
                              f"got {self.finetune_hold}")
        if self.frames < 2 * VIDEO_FPS // 5:
            raise ConfigError(f"tutorial: frames must be >= {2 * VIDEO_FPS // 5} (a sweep needs frames), got {self.frames}")


OPTIONAL = ("new_control_cfg", "probe")  # fields `--set KEY=none` may clear
REPLAY_MODES = ("absent", "given")  # what the plain fine-tuning clips store as the new control


def quick_config(out: str | Path, **overrides: Any) -> TutorialConfig:
    """Reduced sizes for tests and a busy machine (a few minutes on 2 cores).

    Without the keep loss: at these sizes (16 fine-tuning clips, 4 of them replay clips, 800 steps)
    it leaves the new control no room (measured with keep 4: Pearson 0.79 against 0.51 for a flat
    command, the achieved luma nearly flat; without it 0.74 against 0.02).
    """
    base: dict[str, Any] = dict(out=str(out), clips=24, vae_steps=150, steps=400, finetune_clips=16,
                                finetune_steps=800, identities=2, frames=40, probe_identities=0, finetune_keep=0.0)
    base.update(overrides)
    return TutorialConfig(**base)


# ---------------------------------------------------------------------------------------------
# the control in pixels
# ---------------------------------------------------------------------------------------------
def apply_exposure(frames: torch.Tensor, exposure: torch.Tensor) -> torch.Tensor:
    """Darken (``exposure < 0``) or brighten (``> 0``) uint8 frames ``(T, 3, R, R)`` by a per-frame ``(T,)`` amount.

    ``e < 0`` scales towards black (``x (1 + e)``), ``e > 0`` blends towards white (``x + e (1 - x)``):
    monotone in ``e``, no clipping. Returns uint8 ``(T, 3, R, R)``.
    """
    x = frames.float() / 255.0
    e = exposure.float().clamp(-1, 1)[:, None, None, None]  # (T, 1, 1, 1)
    y = torch.where(e < 0, x * (1 + e), x + e * (1 - x))
    return (y * 255).round().clamp(0, 255).to(torch.uint8)


def mean_luma(frames: torch.Tensor) -> np.ndarray:
    """Mean luma in [0, 1] of uint8 frames ``(T, 3, R, R)``: ``(T,)`` (what the plugin extracts)."""
    rgb = frames.float() / 255.0
    return (0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]).mean(dim=(1, 2)).numpy()


def exposure_curve(frames: int, rng: np.random.Generator, hold: tuple[int, int] = (1, 6), walk: float = 0.0) -> np.ndarray:
    """A fine-tuning clip's exposure ``(T,)`` in [-0.6, 0.6]: segments of ``hold`` frames.

    Each segment starts with a jump to a new level (0, the plain rendering, for a third of them) and
    then holds it, or, with ``walk > 0`` and for half of the segments, wanders from it by a random
    walk whose per-frame steps have std ``walk``.

    Jumps and wandering, not a smooth curve: a smooth curve is predictable from the previous frames,
    so the model would learn to continue it and ignore the control. At a jump only the control says
    the new level; in a random walk only the control says where each step goes, so the model must
    also follow small changes (a slow sweep is all small changes).
    """
    out = np.zeros(frames, np.float32)
    f = 0
    while f < frames:
        length = min(int(rng.integers(hold[0], hold[1] + 1)), frames - f)
        level = 0.0 if rng.random() < 1 / 3 else rng.uniform(-0.6, 0.6)
        segment = np.full(length, level)
        if walk > 0 and rng.random() < 0.5:
            segment = level + np.concatenate([[0.0], np.cumsum(rng.normal(0.0, walk, length - 1))])
        out[f : f + length] = np.clip(segment, -0.6, 0.6)
        f += length
    return out


def sweep_exposure(frames: int) -> np.ndarray:
    """The held-out sweep ``(T,)``: a triangle wave from -EXPOSURE_RANGE to +EXPOSURE_RANGE and back."""
    phase = np.arange(frames) / max(1, frames - 1)
    return (EXPOSURE_RANGE * (1 - 4 * np.abs(phase - 0.5))).astype(np.float32)


def synthesize_varied(out: Path, clips: int, seconds: float, resolution: int, seed: int, progress: bool,
                      hold: tuple[int, int] = (1, 6), walk: float = 0.0, plain: float = 0.0,
                      motion_hz: float = 0.4, emotion_segments: int = 1, replay_mode: str = "absent") -> Path:
    """Synthetic clips whose brightness follows :func:`exposure_curve` within each clip (the format ``prepare`` writes).

    The first ``round(plain * clips)`` clips keep exposure 0 throughout and are the replay clips of
    the keep loss (``finetune.keep``; flagged ``replay: true`` in their metadata). With
    ``replay_mode="absent"`` they store no brightness signal (NaN rows), so they train the null
    brightness to mean "as the clip's own"; with ``"given"`` they store none, like the other
    clips, whose brightness the plugin computes from their frames.
    """
    from rich.progress import Progress

    from eartalk.core.data.dataset import DatasetWriter
    from eartalk.core.data.synth import SIGNAL_COLUMNS, synthesize_clip

    rng = np.random.default_rng(seed)
    with DatasetWriter(out, resolution) as writer, Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("synthesising brightness-varied clips", total=clips)
        for i in range(clips):
            curve = exposure_curve(int(round(seconds * VIDEO_FPS)), rng, hold, walk)
            replay = i < round(plain * clips)
            clip_id = f"bright-{seed}-{i:05d}" + ("-given" if replay and replay_mode == "given" else "")
            if replay:
                curve = np.zeros_like(curve)
            if not writer.has(clip_id):
                clip = synthesize_clip(seed * 100_003 + i, seconds, resolution, emotion_segments=emotion_segments,
                                       motion_hz=motion_hz)
                curve = np.resize(curve, clip.frames.shape[0])
                signals, columns = clip.signals(), dict(SIGNAL_COLUMNS)
                if replay and replay_mode == "absent":
                    signals[CONTROL] = np.full((clip.frames.shape[0], 1), np.nan, np.float32)
                    columns[CONTROL] = [CONTROL]
                writer.add(clip_id, apply_exposure(clip.frames, torch.from_numpy(curve)), clip.audio, face=None,
                           metadata={**clip.metadata, "exposure": curve.tolist(), "replay": replay}, signals=signals,
                           source=f"synth:seed={seed}:clip={i}:exposure", columns=columns,
                           extras={"mouth": clip.controls.mouth, "keypoints": clip.keypoints})
            bar.advance(task)
    return out


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
def finetune_arch(cfg: TutorialConfig) -> dict[str, Any]:
    """``model.arch`` overrides of the fine-tune: with ``guide_new_control`` off, the new control
    joins the guidance's null branch (``sampling.cfg_keep``) and the joint dropout that trains it."""
    from eartalk.core.engine.presets import PRESETS

    if cfg.guide_new_control:
        return {"sampling": new_control_sampling(cfg)} if cfg.new_control_cfg is not None else {}  # none: the preset's
    preset = PRESETS[cfg.preset]
    keep = [*preset.sampling.cfg_keep, CONTROL]
    return {"sampling": {"cfg_keep": keep}, "drop_keep": keep, "drop_null_prob": 0.0,
            "drop_keep_prob": preset.drop_null_prob + preset.drop_keep_prob}


def new_control_sampling(cfg: TutorialConfig) -> dict[str, Any]:
    """Sampling overrides of the fine-tuned model: the new control's own guidance scale, or none
    (one scale for all, whatever the checkpoint stored)."""
    return {"cfg_separate": {} if cfg.new_control_cfg is None else {CONTROL: cfg.new_control_cfg}}


def finetune(cfg: TutorialConfig, base: Path, vae: Path, data: Path, out: Path) -> Path:
    """Fine-tune ``base`` with the ``train`` recipe, the study's stack plus ``brightness`` (``init_from``)."""
    from eartalk.core.config import structure
    from eartalk.core.engine.checkpoint import read_info
    from eartalk.core.engine.presets import PRESETS
    from eartalk.recipes.study import trainer_section
    from eartalk.recipes.train import TrainConfig, TrainRecipe

    info = read_info(base, expect="model")
    window = PRESETS[cfg.preset].window
    conditions = [dict(spec) for spec in info.conditions] + [{"name": CONTROL}]
    arch = finetune_arch(cfg)
    train = structure({"seed": cfg.seed + 3, "out_dir": str(out), "init_from": str(base),
                       "finetune": {"base": cfg.finetune_base, "base_lr_scale": cfg.base_lr_scale,
                                    "keep": cfg.finetune_keep},
                       "model": {"preset": cfg.preset, "vae_checkpoint": str(vae), "arch": arch},
                       "conditions": conditions,
                       "data": {"root": str(data), "clip_frames": max(10, window + 4), "batch_size": 4,
                                "val_fraction": 0.1},
                       "optim": {"lr": cfg.lr, "warmup_steps": 20},
                       "trainer": trainer_section(cfg.finetune_steps, cfg.progress)}, TrainConfig)
    return TrainRecipe().run(train)


def checkpoint_of(run: Path, name: str = "last.ckpt") -> Path | None:
    """The finished run's checkpoint (``checkpoints/<name>``) or None."""
    path = run / "checkpoints" / name
    return path if path.is_file() else None


# ---------------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------------
def stream_sweep(model: Any, item: dict[str, Any], commanded: np.ndarray | None, frames: int) -> torch.Tensor:
    """Stream one held-out identity from its portrait with its own controls, ``brightness`` set per frame.

    Args:
        model: the model (its stack may lack ``brightness``: then ``commanded`` must be None).
        item: a held-out item (``frames``, ``signals``).
        commanded: mean luma ``(T,)`` to command, or None.
        frames: T.

    Returns:
        uint8 ``(T, 3, R, R)``.
    """
    names = [n for n in model.stack.names if n != CONTROL and n in item["signals"]]
    session = model.session(item["frames"][0])
    out = []
    with torch.no_grad():
        for f in range(frames):
            if commanded is not None:
                session.set_control(CONTROL, [float(commanded[f])])
            out.append(to_uint8(session.step({n: item["signals"][n][f] for n in names}).pixels)[0])
    return torch.stack(out)  # (T, 3, R, R)


def sweep_figures(model: Any, items: list[dict[str, Any]], frames: int, use_control: bool, flat: bool = False) -> dict[str, Any]:
    """Commanded vs achieved mean luma over the sweep for every held-out identity.

    With ``flat`` the model is commanded the portrait's own luma on every frame instead (the
    figures still compare with the sweep): how much of a correlation the stream's own drift gives.
    """
    from eartalk.metrics.probe import pearson

    exposure = sweep_exposure(frames)
    rows, curves, sweep_l1 = [], [], []
    for item in items:
        truth = apply_exposure(to_uint8(item["frames"][:frames]), torch.from_numpy(exposure))  # the swept truth
        commanded = mean_luma(truth)
        command = np.full_like(commanded, mean_luma(to_uint8(item["frames"][:1]))[0]) if flat else commanded
        video = stream_sweep(model, item, command if use_control else None, frames)
        achieved = mean_luma(video)
        rows.append({"pearson": pearson(commanded, achieved), "mae": float(np.abs(commanded - achieved).mean()),
                     "slope": float(np.polyfit(commanded, achieved, 1)[0])})
        sweep_l1.append(float((video.float() - truth.float()).abs().mean() / 255.0))
        curves.append({"commanded": [round(float(v), 4) for v in commanded],
                       "achieved": [round(float(v), 4) for v in achieved]})
    all_c = np.concatenate([c["commanded"] for c in curves])
    all_a = np.concatenate([c["achieved"] for c in curves])
    return {
        "pearson_per_identity_mean": float(np.mean([r["pearson"] for r in rows])),
        "pearson_per_identity_min": float(np.min([r["pearson"] for r in rows])),
        "pearson_pooled": pearson(all_c, all_a),
        "mae": float(np.mean([r["mae"] for r in rows])),
        "slope_mean": float(np.mean([r["slope"] for r in rows])),
        "l1_vs_swept_truth": float(np.mean(sweep_l1)),
        "commanded_range": [float(all_c.min()), float(all_c.max())],
        "per_identity": rows,
        "curves": curves,
    }


def old_control_figures(model: Any, items: list[dict[str, Any]], frames: int, probe: Any, progress: bool,
                        set_new: bool = True) -> dict[str, Any]:
    """The old controls on plain held-out clips: L1 vs truth and drift (and the study's probe figures with a probe).

    ``set_new``: a model with the new control is given the truth's own brightness on every frame;
    False: the new control stays unset (null), as in the study's streams, which know nothing of it.
    """
    from eartalk.recipes.study import measure, per_frame_l1_psnr, windows

    given = set_new and CONTROL in model.stack.names
    if not given:
        items = [{**item, "signals": {n: s for n, s in item["signals"].items() if n != CONTROL}} for item in items]
    if probe is not None:
        res = measure(model, items, probe, frames, "old controls", progress=progress)
        res.pop("_video", None)
        res.pop("curves", None)
        return res
    early, late = windows(frames)
    l1s = []
    for item in items:
        truth = to_uint8(item["frames"][:frames])
        video = stream_sweep(model, item, mean_luma(truth) if given else None, frames)
        l1s.append(per_frame_l1_psnr(video, truth)[0])
    l1 = np.mean(l1s, 0)
    return {"l1_mean": float(l1.mean()), "l1_early": float(l1[early].mean()), "l1_late": float(l1[late].mean()),
            "drift_l1_late_over_early": float(l1[late].mean() / max(l1[early].mean(), 1e-9))}


def forgetting(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Relative change ``after / before - 1`` of every shared numeric figure (lower-is-better or not)."""
    out = {}
    for key, b in before.items():
        a = after.get(key)
        if isinstance(b, float) and isinstance(a, float) and math.isfinite(a) and math.isfinite(b) and abs(b) > 1e-9:
            out[key] = {"before": round(b, 4), "after": round(a, 4), "relative_change": round(a / b - 1, 4)}
    return out


# headline figures of the old controls and whether higher is better (the 10 % rule applies to these)
HEADLINE = {"l1_mean": False, "drift_l1_late_over_early": False, "blink_f1": True, "gaze_error": False,
            "emotion_accuracy": True, "mouth_corr": True, "yaw_mae_deg": False}


def not_learnt(before: dict[str, Any]) -> list[str]:
    """Control figures on which the base model is no better than its own baseline (no control, or
    shuffled audio): a control it does not obey, which the fine-tune cannot forget."""
    from eartalk.recipes.study import BASELINES

    out = []
    for key, base in {**BASELINES, "gaze_error": "gaze_error_nocontrol"}.items():
        value, ref = before.get(key), before.get(base)
        if isinstance(value, float) and isinstance(ref, float):
            if (value <= ref) if HEADLINE[key] else (value >= ref):
                out.append(key)
    return out


def within_ten_percent(change: dict[str, dict[str, float]], skip: list[str] | tuple[str, ...] = ()) -> dict[str, bool]:
    """Per headline figure (those in ``skip`` left out): the fine-tuned model is no more than 10 % worse than before."""
    verdict = {}
    for key, higher in HEADLINE.items():
        if key in change and key not in skip:
            rel = change[key]["relative_change"]
            verdict[key] = bool(rel >= -0.10) if higher else bool(rel <= 0.10)
    return verdict


def sweep_plot(path: Path, before: dict[str, Any], after: dict[str, Any]) -> Path | None:
    """``sweep.png``: per identity, commanded luma and the achieved luma before and after the fine-tune."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    n = len(after["curves"])
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 2.6), squeeze=False)
    for k, ax in enumerate(axes[0]):
        ax.plot(after["curves"][k]["commanded"], "k--", label="commanded")
        ax.plot(before["curves"][k]["achieved"], label="before fine-tune")
        ax.plot(after["curves"][k]["achieved"], label="after fine-tune")
        ax.set_xlabel("frame")
        ax.set_title(f"identity {k}")
    axes[0][0].set_ylabel("mean luma")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# the walk-through
# ---------------------------------------------------------------------------------------------
def require_plugin() -> None:
    """Raise a ConfigError when the ``brightness`` plugin is not installed."""
    from eartalk.core.errors import UnknownPluginError
    from eartalk.core.registry import get_registry

    try:
        get_registry().condition(CONTROL)
    except UnknownPluginError as err:  # the registry's own message names what is installed
        raise ConfigError(
            f"the walk-through needs the condition plugin {CONTROL!r} ({err}); install the example package: "
            "pip install ./docs/examples/eartalk-brightness") from err


def run_tutorial(cfg: TutorialConfig) -> dict[str, Any]:
    """Run the walk-through into ``cfg.out``; writes and returns ``report.json``'s content."""
    from eartalk.core.data.synth import synthesize_dataset
    from eartalk.core.engine.presets import PRESETS
    from eartalk.recipes.study import json_safe, load_heldout, train_model, train_vae
    from eartalk.recipes.train import load_trained

    require_plugin()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    resolution = PRESETS[cfg.preset].resolution
    timings: dict[str, float] = {}

    start = time.perf_counter()
    plain = synthesize_dataset(out / "data", clips=cfg.clips, seconds=cfg.seconds, resolution=resolution,
                               seed=cfg.seed, emotion_segments=cfg.emotion_segments, motion_hz=cfg.motion_hz,
                               progress=cfg.progress)
    varied = synthesize_varied(out / "data_brightness", cfg.finetune_clips, max(cfg.seconds, 2.0), resolution,
                               cfg.seed + 500, cfg.progress, cfg.finetune_hold, cfg.finetune_walk, cfg.finetune_plain,
                               cfg.motion_hz, cfg.emotion_segments, cfg.finetune_replay)
    holdout = synthesize_dataset(out / "holdout", clips=cfg.identities, seconds=cfg.frames / VIDEO_FPS,
                                 resolution=resolution, seed=cfg.seed + 1000, progress=cfg.progress)
    timings["synth_s"] = time.perf_counter() - start

    start = time.perf_counter()
    vae, base = checkpoint_of(out / "vae", "vae.ckpt"), checkpoint_of(out / "model")
    reused = base is not None and vae is not None
    if vae is None:
        vae = train_vae(plain, out / "vae", cfg.preset, cfg.vae_steps, cfg.seed, cfg.progress)
    if base is None:
        base = train_model(plain, out / "model", cfg.preset, vae, cfg.steps, cfg.seed, cfg.progress)
    timings["base_train_s"] = time.perf_counter() - start

    start = time.perf_counter()
    tuned = checkpoint_of(out / "finetune") if cfg.reuse_finetune else None
    tuned = tuned or finetune(cfg, base, vae, varied, out / "finetune")
    timings["finetune_s"] = time.perf_counter() - start

    probe = None
    if cfg.probe or cfg.probe_identities > 0:
        from eartalk.metrics.probe import ProbeTraining, get_or_train_probe

        start = time.perf_counter()
        probe, _ = get_or_train_probe(Path(cfg.probe) if cfg.probe else out / "probe.pt",
                                      ProbeTraining(identities=max(cfg.probe_identities, 1), epochs=3, seed=cfg.seed + 17),
                                      heldout=2, progress=cfg.progress)
        timings["probe_s"] = time.perf_counter() - start

    start = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    for label, path in (("before", base), ("after", tuned)):
        model = load_trained(path).eval()
        if label == "after":
            model.set_sampling(**new_control_sampling(cfg))
        items = load_heldout(holdout, model.stack, cfg.frames)
        if label == "after":
            results["after_flat"] = {"sweep": sweep_figures(model, items, cfg.frames, True, flat=True)}
        results[label] = {"sweep": sweep_figures(model, items, cfg.frames, CONTROL in model.stack.names),
                          "old_controls": old_control_figures(model, items, cfg.frames, probe, cfg.progress, False)}
        if label == "after":
            results[label]["old_controls_new_given"] = old_control_figures(model, items, cfg.frames, probe, cfg.progress)
    timings["measure_s"] = time.perf_counter() - start

    skip = not_learnt(results["before"]["old_controls"])
    change = forgetting(results["before"]["old_controls"], results["after"]["old_controls"])
    verdict = within_ten_percent(change, skip)
    change_given = forgetting(results["before"]["old_controls"], results["after"]["old_controls_new_given"])
    verdict_given = within_ten_percent(change_given, skip)
    after, before = results["after"]["sweep"], results["before"]["sweep"]
    report = {
        "control": CONTROL,
        "achieved_is": "mean luma of the generated frames (pixels; no learned probe)",
        "pearson_after": after["pearson_per_identity_mean"],
        "pearson_before": before["pearson_per_identity_mean"],
        "pearson_flat_command": results["after_flat"]["sweep"]["pearson_per_identity_mean"],
        "slope_flat_command": results["after_flat"]["sweep"]["slope_mean"],
        "pearson_pooled_after": after["pearson_pooled"],
        "pearson_pooled_before": before["pearson_pooled"],
        "mae_after": after["mae"], "mae_before": before["mae"],
        "slope_after": after["slope_mean"], "slope_before": before["slope_mean"],
        "target_pearson": 0.9,
        "meets_pearson_target": bool(after["pearson_per_identity_mean"] >= 0.9),
        "old_controls_change": change,
        "old_controls_within_10_percent": verdict,
        "old_controls_not_learnt_by_base": skip,
        "no_forgetting": bool(verdict and all(verdict.values())),
        "old_controls_compared": "the study's streams (the new control unset) before vs after; the same with the "
                                 "truth's own brightness given to the fine-tuned model: *_new_control_given",
        "old_controls_change_new_control_given": change_given,
        "old_controls_within_10_percent_new_control_given": verdict_given,
        "no_forgetting_new_control_given": bool(verdict_given and all(verdict_given.values())),
        "old_controls_measured_with": "probe (eartalk.metrics.probe) + L1/drift" if probe is not None else "L1/drift vs truth",
        "sweep": results,
        "budget": {k: v for k, v in attrs.asdict(cfg).items() if k not in ("out", "progress")},
        "base_model_reused": reused,
        "checkpoints": {"base": str(base), "finetuned": str(tuned)},
        **{k: round(v, 1) for k, v in timings.items()},
    }
    plot = sweep_plot(out / "sweep.png", before, after)
    report["sweep_png"] = str(plot) if plot else None
    report = json_safe(report)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eartalk.recipes.tutorial_new_control",
                                     description="Add the brightness control to a trained model and measure it.")
    parser.add_argument("--out", required=True, help="output folder (report.json, runs, data)")
    parser.add_argument("--quick", action="store_true", help="reduced sizes (tests, a busy machine)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override a TutorialConfig field, e.g. finetune_steps=200 finetune_base=freeze finetune_hold=1,6")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    fields = {f.name: f for f in attrs.fields(TutorialConfig)}
    overrides: dict[str, Any] = {"progress": not args.no_progress}
    for pair in args.set:
        key, sep, value = pair.partition("=")
        if not sep or key not in fields or key == "out":
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE with KEY one of {sorted(set(fields) - {'out'})}")
        default = fields[key].default
        if key in OPTIONAL and value.lower() in ("none", "null", ""):
            overrides[key] = None
        elif isinstance(default, bool):
            overrides[key] = value.lower() in ("1", "true", "yes")
        elif isinstance(default, tuple):
            overrides[key] = tuple(value.split(","))
        else:
            try:
                overrides[key] = value if isinstance(default, str) or default is None else type(default)(value)
            except ValueError as err:
                raise ConfigError(f"--set {pair!r}: {key} takes a {type(default).__name__}"
                                  f"{' or none' if key in OPTIONAL else ''}, e.g. {key}={default}") from err
    cfg = quick_config(args.out, **overrides) if args.quick else TutorialConfig(out=args.out, **overrides)
    report = run_tutorial(cfg)
    keys = ("pearson_before", "pearson_after", "mae_before", "mae_after", "no_forgetting", "finetune_s")
    print(json.dumps({k: report[k] for k in keys}, indent=2))
    print(f"report: {Path(cfg.out) / 'report.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
