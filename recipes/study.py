"""``eartalk study``: does the model keep the identity, follow the audio and obey the controls?

The study trains (or takes checkpoints of) the frame VAE, the main model and its SFA ablations on
synthetic talking heads, streams held-out identities for a long clip and writes ``report.md``,
``report.json`` and plots into ``--out``. Every figure is measured on **held-out synthetic
identities** driven by held-out synthetic speech; control figures come from the synthetic probe
(:mod:`eartalk.metrics.probe`) and are labelled ``fidelity: proxy``.

For every model, one batched streaming session per held-out identity set runs four streams per
identity (all from the identity's first frame, the portrait):

* ``drive``: its own speech and its own ground-truth controls (head pose, blink, gaze, emotion);
* ``nocontrol``: its own speech only (every other control absent: the no-control baseline);
* ``shuffled``: its own controls, with the audio-derived conditions (audio features, voice
  activity) permuted in blocks of one second (the shuffled-audio baseline);
* ``sweep``: its own controls but the head yaw commanded along a +/-25 deg triangle wave (pitch
  and roll 0).

Measured (report keys in brackets; ``ablations.<name>`` holds the same keys per ablation):

a. drift: per-frame L1 (pixels in [0, 1]) and PSNR against the rendered truth of ``drive``;
   [``drift_l1_late_over_early``] = mean L1 over the last 100 frames / frames 1-100 (a tenth of
   the clip each when it is shorter than 1,000 frames), [``psnr_late_db``] over the last ones;
b. control fidelity (probe): [``yaw_mae_deg``] commanded vs read yaw of ``sweep``, against
   ``nocontrol`` read against the same sweep; [``blink_f1``], [``gaze_error``],
   [``emotion_accuracy``] of ``drive`` against the truth, each with its ``*_nocontrol`` baseline;
c. lip-sync: [``mouth_corr``] Pearson correlation of the probe's mouth opening of ``drive`` with the
   true opening, against [``mouth_corr_shuffled``] (``shuffled``) and [``mouth_corr_static``] (the
   portrait repeated); [``mouth_closed_in_pauses``]: share of pause frames (voice activity 0, true
   mouth closed) where the generated mouth reads closed (opening < 0.15);
d. cost: [``train_minutes``] (VAE + model on this machine), [``fps``] of one stream;
e. one-step control response (main model, :func:`teacher_forced_response`): every frame made from
   the *true* previous frame (teacher forcing, the training's context) with one control changed:
   [``yaw_gain_tf``] read yaw change per commanded degree (1 = obeyed), [``closure_tf_closed``]
   against [``closure_tf_open``], [``emotion_tf_switched``] (a switched emotion read back) against
   [``emotion_tf_true``]. It tells a model that cannot render a control from a rollout that loses it.

``--quick`` runs the whole pipeline at small sizes in about 7 minutes (`pytest -m heavy`); it also measures an
untrained model (random backbone and decoder, same VAE) under ``untrained``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from eartalk.core.commands import Command
from eartalk.core.errors import ConfigError, InputError, did_you_mean
from eartalk.core.types import VIDEO_FPS, to_uint8

STUDY_CONDITIONS = ("audio", "voice_activity", "head_pose", "blink", "gaze", "emotion")
AUDIO_CONDITIONS = ("audio", "voice_activity")
#: Ablation name -> ``model.arch`` overrides (H1's SFA switches in ModelArch).
ABLATIONS: dict[str, dict[str, Any]] = {
    "sink": {},
    "no_sink": {"sink_attention": False},
    "no_adaln_identity": {"adaln_identity": False},
}
REPORT_KEYS = ("drift_l1_late_over_early", "psnr_late_db", "yaw_mae_deg", "blink_f1", "emotion_accuracy", "mouth_corr",
               "mouth_corr_shuffled", "mouth_corr_static", "train_minutes", "fps")
STREAMS = ("drive", "nocontrol", "shuffled", "sweep")
SWEEP_DEG = 25.0
SWEEP_PERIOD = 100  # frames of one -25 -> +25 -> -25 cycle
CLOSED_OPENING = 0.15
TF_YAW_OFFSET = 20.0  # degrees commanded off the truth's yaw by the one-step response
TF_VARIANTS = ("truth", "yaw_minus", "yaw_plus", "eyes_closed", "eyes_open", "emotion_switched")


@attrs.frozen
class StudyConfig:
    """What the study trains and measures.

    Attributes:
        out: output folder (data/, vae/, model/, ablation_<name>/, report.*, plots).
        preset: model size (64 px ``tiny`` for the issue's targets).
        clips, seconds: synthetic training clips (identities) and their length.
        emotion_segments: emotions per training clip (> 1: the reference frame often shows another
            emotion than the training window, so the emotion control must be read, not copied).
        motion_hz: highest frequency of the training clips' head rotations (the held-out clips keep
            the calm 0.4 Hz); faster motion puts more pose change between reference and window.
        vae_steps: VAE training steps.
        vae_focus: the VAE's reconstruction weight around the eyes and mouth (the ``vae`` recipe's
            ``focus.weight``; 0 = the plain L1).
        focus: the model's diffusion-loss weight around the eyes and mouth (the ``train``
            recipe's ``focus.weight``, main model and ablations alike; 0 = off).
        arch: ``model.arch`` overrides of the preset for the main model and every ablation
            (each ablation adds its own switch); none by default (the wider head and the context
            skip were measured and did not change a target's side: docs/study.md, "Why the
            controls are not learnt").
        steps: main model training steps (4,500 since 2026-12-04, in batches of 16: VAE +
            model 41.2 min on the slower of the two 2-core machines measured, where 6,000 took
            55.5 and on the faster 38.1; docs/study.md. 4,000 before 2026-12-03).
        ablation_steps: training steps of every ablation variant (the same for all; equal to
            ``steps`` reuses the main model as the ``sink`` variant).
        ablations: variants to train and measure (keys of :data:`ABLATIONS`).
        batch_size: training clips per batch (16 since 2026-12-03: 4x the clips of the 4 before,
            the best pose, eye and lip-sync figures measured; docs/study.md).
        ema_decay: decay of an exponential moving average of the model weights (the ``train``
            recipe's ``trainer.ema_decay``, main model and ablations; 0 = off; 0.999 since
            2026-12-03: +0.5 dB PSNR late against the same 4,000-step checkpoint's raw weights, no
            change at 6,000 steps; free, so on). Checkpoints with
            an average are measured with it unless ``use_ema`` is False.
        use_ema: measure the average's weights of checkpoints that have one (``--raw-weights``:
            the raw weights of the same checkpoints, for a paired comparison).
        heldout: held-out identities streamed.
        eval_frames: frames streamed per identity (2,000 = 80 s).
        untrained: also measure a model with untrained backbone and decoder.
        vae_checkpoint, checkpoint: use these instead of training (the main model).
        ablation_checkpoints: ``name -> checkpoint`` used instead of training that variant.
        probe: probe file (trained and saved there when missing).
        probe_identities, probe_epochs: probe training size when it is trained here (None:
            ``eartalk probe``'s own, :class:`~eartalk.metrics.probe.ProbeTraining`, about 2.5 min
            on one thread; the 120 x 6 used before read emotion at 0.24 and blink at F1 0.73 on
            held-out truth frames, too weak to score those controls).
        guidance: classifier-free guidance scale the streams are sampled with (``--cfg``; None:
            each checkpoint's own default, ``arch.sampling.cfg``).
        cfg_separate: controls guided with a scale of their own (``--cfg-separate NAME=SCALE``,
            ``sampling.cfg_separate``; each costs one more backbone pass per frame; empty: each
            checkpoint's own).
        temperature: the diffusion sampler's noise scale (``--temperature``; None: each
            checkpoint's own, 1).
        threads: torch intra-op threads.
        seed: seed of data, training and sampling.
        progress: progress bars.
    """

    out: str = "runs/study"
    preset: str = "tiny"
    clips: int = 200
    seconds: float = 1.0
    emotion_segments: int = 2
    motion_hz: float = 1.5
    vae_steps: int = 1500
    vae_focus: float = 10.0
    focus: float = 0.0
    arch: dict[str, Any] = attrs.field(factory=dict)
    steps: int = 4500
    ablation_steps: int = 600
    ablations: tuple[str, ...] = ("sink", "no_sink", "no_adaln_identity")
    batch_size: int = 16
    ema_decay: float = 0.999
    use_ema: bool = True
    heldout: int = 1
    eval_frames: int = 2000
    untrained: bool = True
    vae_checkpoint: str | None = None
    checkpoint: str | None = None
    ablation_checkpoints: dict[str, str] = attrs.field(factory=dict)
    probe: str | None = None
    probe_identities: int | None = None
    probe_epochs: int | None = None
    guidance: float | None = None
    cfg_separate: dict[str, float] = attrs.field(factory=dict)
    temperature: float | None = None
    threads: int = 2
    seed: int = 0
    progress: bool = True

    def __attrs_post_init__(self) -> None:
        unknown = sorted(set(self.ablations) - set(ABLATIONS))
        if unknown:
            raise ConfigError(f"study: unknown ablation(s) {unknown}; choose from {', '.join(ABLATIONS)}")
        unknown = sorted(set(self.ablation_checkpoints) - set(ABLATIONS))
        if unknown:
            raise ConfigError(f"study: --ablation-checkpoint names unknown ablation(s) {unknown}; choose from {', '.join(ABLATIONS)}")
        if self.eval_frames < 20:
            raise ConfigError(f"study: eval_frames must be >= 20, got {self.eval_frames}")
        if min(self.clips, self.heldout, self.vae_steps, self.steps, self.ablation_steps, self.threads, self.emotion_segments) < 1:
            raise ConfigError("study: clips, heldout, vae_steps, steps, ablation_steps, threads and emotion_segments must be >= 1")
        if not (self.vae_focus >= 0 and self.focus >= 0):  # also NaN
            raise ConfigError(f"study: --vae-focus and --focus must be >= 0 (0 = off), got {self.vae_focus} and {self.focus}")
        from eartalk.recipes.ema import check_ema_decay

        check_ema_decay(self.ema_decay, "study: --ema-decay")
        if self.guidance is not None and not self.guidance >= 0:
            raise ConfigError(f"study: --cfg must be >= 0, got {self.guidance}")
        if self.temperature is not None and not self.temperature >= 0:
            raise ConfigError(f"study: --temperature must be >= 0, got {self.temperature}")
        bad = {k: v for k, v in self.cfg_separate.items() if not v >= 0}
        if bad:
            raise ConfigError(f"study: --cfg-separate scales must be >= 0, got {bad}")
        unknown = sorted(set(self.cfg_separate) - set(STUDY_CONDITIONS))
        if unknown and not self.checkpoint:  # a given checkpoint's own stack is checked when it is loaded
            raise ConfigError(f"study: --cfg-separate names {unknown}, not controls of the study's stack"
                              f"{did_you_mean(unknown[0], STUDY_CONDITIONS)}; choose from {', '.join(STUDY_CONDITIONS)}")
        from eartalk.core.data.synth import MIN_MOTION_HZ

        if not self.motion_hz > MIN_MOTION_HZ:
            raise ConfigError(f"study: motion_hz must be > {MIN_MOTION_HZ} (the slowest head motion component), got {self.motion_hz}")
        for what, path in (("--vae-checkpoint", self.vae_checkpoint), ("--checkpoint", self.checkpoint),
                           *((f"--ablation-checkpoint {k}", v) for k, v in self.ablation_checkpoints.items())):
            if path and not Path(path).is_file():
                raise InputError(f"study: {what} {path} does not exist")
        from eartalk.recipes.config import ModelConfig, arch_from

        arch_from(ModelConfig(preset=self.preset, arch=self.arch), "study (--arch)")  # the train recipe's checks
        if self.checkpoint and not self.vae_checkpoint:
            raise ConfigError("study: --checkpoint needs --vae-checkpoint too (the VAE its model was trained with)")


def probe_sizes(identities: int | None, epochs: int | None) -> dict[str, int]:
    """The given probe training sizes as :class:`~eartalk.metrics.probe.ProbeTraining` fields
    (None: that field's default)."""
    return {k: v for k, v in (("identities", identities), ("epochs", epochs)) if v is not None}


def quick_config(out: str | Path, **overrides: Any) -> StudyConfig:
    """The ``--quick`` sizes: about 7 minutes on 2 cores (1,500 model steps: the fewest at which the
    mouth follows the audio; at 150 steps nothing is learnt yet and the model is the portrait)."""
    base = dict(out=str(out), clips=48, seconds=1.0, vae_steps=300, steps=1500, ablation_steps=150, heldout=2,
                eval_frames=60, probe_identities=32, probe_epochs=3, batch_size=4, ema_decay=0.0)
    base.update(overrides)
    return StudyConfig(**base)


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
def trainer_section(steps: int, progress: bool, ema_decay: float = 0.0) -> dict[str, Any]:
    every = max(1, steps // 2)
    return {"max_steps": steps, "val_every_n_steps": every, "checkpoint_every_n_steps": every,
            "log_every_n_steps": max(1, min(10, steps // 20)), "progress_bar": progress, "ema_decay": ema_decay}


def train_vae(data: Path, out: Path, preset: str, steps: int, seed: int, progress: bool,
              val_fraction: float = 0.1, focus: float = 0.0) -> Path:
    """Train the frame VAE with the ``vae`` recipe (the demo's settings); returns its checkpoint.
    ``focus``: the recipe's ``focus.weight`` (eyes and mouth weighted up; synthetic data only)."""
    from eartalk.core.config import structure
    from eartalk.recipes.vae import VAEConfig, VAERecipe

    cfg = structure({"seed": seed, "out_dir": str(out), "model": {"preset": preset},
                     "data": {"root": str(data), "clip_frames": 2, "batch_size": 8, "val_fraction": val_fraction},
                     "optim": {"lr": 2e-3, "weight_decay": 0.0, "warmup_steps": 50},
                     "trainer": trainer_section(steps, progress), "focus": {"weight": float(focus)}}, VAEConfig)
    VAERecipe.validate(cfg, "VAE (--vae-focus)")
    return VAERecipe().run(cfg)


def focus_section(weight: float) -> dict[str, Any]:
    """The ``focus`` part of a train config (empty when off)."""
    return {"focus": {"weight": float(weight)}} if weight > 0 else {}


def train_model(data: Path, out: Path, preset: str, vae: Path, steps: int, seed: int, progress: bool,
                arch: dict[str, Any] | None = None, batch_size: int = 4, latents: bool = True,
                conditions: Sequence[str | Mapping[str, Any]] = STUDY_CONDITIONS, val_fraction: float = 0.1,
                extra: dict[str, Any] | None = None, ema_decay: float = 0.0) -> Path:
    """Train the AR model with the ``train`` recipe and a condition stack (the study's); returns its checkpoint.

    With ``latents`` the dataset is pre-encoded once with the frozen VAE (``eartalk encode``; kept
    for later runs with the same VAE) and training reads the latents: on 2 CPU cores the VAE
    encoder is about half of a teacher-forced tiny step. ``extra`` adds top-level fields of the
    train config (e.g. ``init_from`` and ``finetune``). ``conditions``: plugin names or whole specs
    (``{"name", "options", ...}``, e.g. a checkpoint's ``read_info(...).conditions``).
    """
    from eartalk.core.config import structure
    from eartalk.core.engine.presets import PRESETS
    from eartalk.recipes.encode import encode_dataset
    from eartalk.recipes.train import TrainConfig, TrainRecipe

    window = PRESETS[preset].window
    cfg = structure({**(extra or {}), "seed": seed, "out_dir": str(out),
                     "model": {"preset": preset, "vae_checkpoint": str(vae), "arch": dict(arch or {})},
                     "conditions": [dict(c) if isinstance(c, Mapping) else {"name": c} for c in conditions],
                     "data": {"root": str(data), "clip_frames": max(10, window + 4), "batch_size": batch_size,
                              "val_fraction": val_fraction, "latents": latents},
                     "optim": {"lr": 2e-3, "warmup_steps": 30},
                     "trainer": trainer_section(steps, progress, ema_decay)}, TrainConfig)
    if latents:
        encode_dataset(cfg, progress=progress)
    return TrainRecipe().run(cfg)


# ---------------------------------------------------------------------------------------------
# held-out clips and streaming
# ---------------------------------------------------------------------------------------------
def with_guidance(model: Any, scale: float | None, separate: dict[str, float] | None = None,
                  temperature: float | None = None) -> Any:
    """``model`` whose sessions sample with guidance ``scale`` (None: unchanged), the controls
    of ``separate`` with scales of their own (empty: unchanged) and the diffusion noise scaled by
    ``temperature`` (None: unchanged) by default."""
    if temperature is not None:
        model.set_sampling(temperature=float(temperature))
    if separate:  # names outside the model's stack are refused when its first session opens
        model.set_sampling(cfg_separate={**model.arch.sampling.cfg_separate, **separate})
    return model if scale is None else model.set_sampling(cfg=float(scale))


def load_heldout(root: Path, stack: Any, frames: int) -> list[dict[str, Any]]:
    """Every clip of a held-out dataset as one item of ``frames`` frames (signals from ``stack``, true mouth)."""
    from eartalk.core.data.dataset import TalkingHeadDataset

    dataset = TalkingHeadDataset(root, clip_frames=frames, stack=stack, extras=("mouth",))
    return [dataset[i] for i in range(len(dataset))]


def block_permutation(frames: int, block: int, seed: int) -> np.ndarray:
    """Frame order that shuffles whole blocks of ``block`` frames (no block stays in place when possible)."""
    blocks = [np.arange(a, min(a + block, frames)) for a in range(0, frames, block)]
    rng = np.random.default_rng(seed)
    order = np.arange(len(blocks))
    if len(blocks) > 1:
        order = np.roll(rng.permutation(len(blocks)), 1) if len(blocks) > 2 else order[::-1]
        while len(blocks) > 2 and (order == np.arange(len(blocks))).any():
            order = rng.permutation(len(blocks))
    return np.concatenate([blocks[i] for i in order])[:frames]


def yaw_sweep(frames: int, degrees: float = SWEEP_DEG, period: int = SWEEP_PERIOD) -> np.ndarray:
    """Triangle wave ``(T,)`` from -degrees to +degrees and back every ``period`` frames."""
    phase = (np.arange(frames) % period) / period
    return (degrees * (4 * np.abs(phase - 0.5) - 1) * -1).astype(np.float32)


def stream_signals(item: dict[str, Any], stream: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Per-frame signals ``{name: (T, D)}`` of one study stream (NaN rows = absent)."""
    signals = {n: s.clone() for n, s in item["signals"].items()}
    t = item["frames"].shape[0]
    if stream == "nocontrol":
        for name in signals:
            if name not in AUDIO_CONDITIONS:
                signals[name] = torch.full_like(signals[name], float("nan"))
    elif stream == "shuffled":
        order = torch.from_numpy(block_permutation(t, VIDEO_FPS, seed))
        for name in AUDIO_CONDITIONS:
            if name in signals:
                signals[name] = signals[name][order]
    elif stream == "sweep":
        if "head_pose" in signals:
            pose = signals["head_pose"]
            pose[:, 0] = torch.from_numpy(yaw_sweep(t))
            pose[:, 1:3] = 0.0
    elif stream != "drive":
        raise ValueError(f"unknown stream {stream!r}")
    return signals


def stream_batch(model: Any, references: torch.Tensor, signals: list[dict[str, torch.Tensor]], frames: int,
                 label: str = "streaming", progress: bool = True,
                 context: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """Stream ``B`` clips at once through one session; returns uint8 ``(B, T, 3, R, R)`` and seconds.

    ``context``: ``(B, T, N, c)`` latent tokens; frame f >= 1 is then made from ``context[:, f - 1]``
    instead of the generated frame f - 1 (teacher forcing through the session, ``set_context``).
    """
    from rich.progress import Progress

    names = model.stack.names
    stacked = {n: torch.stack([s[n] for s in signals], 1) for n in names if all(n in s for s in signals)}  # (T, B, D)
    session = model.session(references)
    out = []
    start = time.perf_counter()
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"{label} ({references.shape[0]} streams)", total=frames)
        for f in range(frames):
            if context is not None and f:
                session.set_context(tokens=context[:, f - 1])
            step = session.step({n: s[f] for n, s in stacked.items()})
            out.append(to_uint8(step.pixels))  # (B, 3, R, R)
            bar.advance(task)
    return torch.stack(out, 1), time.perf_counter() - start


def single_stream_fps(model: Any, item: dict[str, Any], frames: int = 50) -> float:
    """Frames per second of one stream (the drive stream of ``item``) on this machine."""
    signals = stream_signals(item, "drive")
    frames = min(frames, item["frames"].shape[0])
    _, seconds = stream_batch(model, item["frames"][:1], [signals], frames, progress=False)
    return frames / seconds


# ---------------------------------------------------------------------------------------------
# measures
# ---------------------------------------------------------------------------------------------
def per_frame_l1_psnr(video: torch.Tensor, truth: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame L1 (pixels in [0, 1]) and PSNR (dB) of uint8 ``(T, 3, R, R)`` clips."""
    diff = (video.float() - truth.float()) / 255.0
    l1 = diff.abs().flatten(1).mean(1).numpy()
    mse = diff.square().flatten(1).mean(1).clamp_min(1e-10).numpy()
    return l1, 10 * np.log10(1.0 / mse)


def windows(frames: int) -> tuple[slice, slice]:
    """Early (frames 1-100) and late (last 100) windows, a tenth of the clip each below 1,000 frames."""
    n = max(2, min(100, frames // 10))
    return slice(1, 1 + n), slice(frames - n, frames)


def closed_in_pauses(read_mouth: np.ndarray, vad: np.ndarray, true_opening: np.ndarray) -> float:
    """Share of pause frames (voice activity 0 and a closed true mouth) where the read mouth is closed."""
    pause = (vad < 0.5) & (true_opening <= 0.01)
    if not pause.any():
        return math.nan
    return float((read_mouth[pause] < CLOSED_OPENING).mean())


def truth_controls(item: dict[str, Any], frames: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A held-out item's signals ``{name: (T, D)}`` over ``frames`` and the truth the probe's
    readings are scored against (:func:`~eartalk.metrics.probe.reading_errors`: blink, gaze,
    emotion index, true mouth opening)."""
    sig = {n: s[:frames].numpy() for n, s in item["signals"].items()}
    truth = {"blink": sig["blink"], "gaze": sig["gaze"], "emotion": sig["emotion"][:, 0],
             "mouth": item["extras"]["mouth"][:frames, 0].numpy()}
    return sig, truth


def drive_yaw_error(read: dict[str, np.ndarray], sig: dict[str, np.ndarray]) -> float:
    """Mean absolute error (degrees) of the probe-read yaw against the truth's own yaw."""
    return float(np.abs(read["head_pose"][:, 0] - sig["head_pose"][:, 0]).mean())


def measure(model: Any, items: list[dict[str, Any]], probe: Any, frames: int, label: str, seed: int = 0,
            progress: bool = True) -> dict[str, Any]:
    """Stream every held-out item in the four study streams and compute the study's figures."""
    from eartalk.metrics.probe import pearson, reading_errors

    refs, signals = [], []
    for k, item in enumerate(items):
        for stream in STREAMS:
            refs.append(item["frames"][0])
            signals.append({n: s[:frames] for n, s in stream_signals(item, stream, seed + k).items()})
    video, seconds = stream_batch(model, torch.stack(refs), signals, frames, label, progress)
    video = video.view(len(items), len(STREAMS), *video.shape[1:])  # (I, S, T, 3, R, R)
    early, late = windows(frames)
    l1s, psnrs, static_psnrs, rows = [], [], [], []
    sweep = yaw_sweep(frames)
    for k, item in enumerate(items):
        truth = to_uint8(item["frames"][:frames])
        l1, psnr = per_frame_l1_psnr(video[k, 0], truth)
        l1s.append(l1)
        psnrs.append(psnr)
        static_psnrs.append(per_frame_l1_psnr(truth[:1].expand(frames, -1, -1, -1), truth)[1])
        reads = {s: probe.read(video[k, i]) for i, s in enumerate(STREAMS)}
        sig, truth_read = truth_controls(item, frames)
        true_mouth = truth_read["mouth"]
        drive = reading_errors(reads["drive"], truth_read)
        nocontrol = reading_errors(reads["nocontrol"], truth_read)
        static = probe.read(truth[:1].expand(frames, -1, -1, -1))
        rows.append({
            "yaw_mae_deg": float(np.abs(reads["sweep"]["head_pose"][:, 0] - sweep).mean()),
            "yaw_mae_deg_nocontrol": float(np.abs(reads["nocontrol"]["head_pose"][:, 0] - sweep).mean()),
            "yaw_mae_deg_drive": drive_yaw_error(reads["drive"], sig),
            "blink_f1": drive["blink_f1"], "blink_f1_nocontrol": nocontrol["blink_f1"],
            "gaze_error": drive["gaze_error"], "gaze_error_nocontrol": nocontrol["gaze_error"],
            "emotion_accuracy": drive["emotion_accuracy"], "emotion_accuracy_nocontrol": nocontrol["emotion_accuracy"],
            "mouth_corr": drive["mouth_corr"],
            "mouth_corr_shuffled": pearson(reads["shuffled"]["mouth"], true_mouth),
            "mouth_corr_static": pearson(static["mouth"], true_mouth),
            "mouth_closed_in_pauses": closed_in_pauses(reads["drive"]["mouth"], sig["voice_activity"][:, 0], true_mouth),
        })
    l1 = np.mean(l1s, 0)
    psnr = np.mean(psnrs, 0)
    result: dict[str, Any] = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}
    result.update(
        drift_l1_late_over_early=float(l1[late].mean() / max(l1[early].mean(), 1e-9)),
        l1_early=float(l1[early].mean()), l1_late=float(l1[late].mean()), l1_mean=float(l1.mean()),
        psnr_early_db=float(psnr[early].mean()), psnr_late_db=float(psnr[late].mean()),
        psnr_late_db_static=float(np.mean(static_psnrs, 0)[late].mean()),
        windows={"early": [early.start, early.stop], "late": [late.start, late.stop]},
        eval_frames=frames, identities=len(items), streams_per_identity=len(STREAMS),
        batched_frames_per_s=float(video.shape[0] * video.shape[1] * frames / seconds),
        curves={"l1": [round(float(v), 5) for v in l1], "psnr_db": [round(float(v), 3) for v in psnr]},
    )
    result["_video"] = video  # dropped before writing JSON
    return result


def tf_signals(signals: dict[str, torch.Tensor], variant: str) -> dict[str, torch.Tensor]:
    """The truth's signals ``{name: (T, D)}`` with one control changed (:data:`TF_VARIANTS`)."""
    out = {n: s.clone() for n, s in signals.items()}
    if variant in ("yaw_minus", "yaw_plus"):
        out["head_pose"][:, 0] += TF_YAW_OFFSET if variant == "yaw_plus" else -TF_YAW_OFFSET
    elif variant in ("eyes_closed", "eyes_open"):
        out["blink"][:] = 1.0 if variant == "eyes_closed" else 0.0
    elif variant == "emotion_switched":
        out["emotion"][:, 0] = (out["emotion"][:, 0] + 4) % 8  # another of the 8 classes
        out["emotion"][:, 1] = 3.0  # at full intensity
    elif variant != "truth":
        raise ValueError(f"unknown variant {variant!r}")
    return out


def teacher_forced_response(model: Any, items: list[dict[str, Any]], probe: Any, frames: int = 60,
                            progress: bool = True) -> dict[str, float]:
    """One-step control response: every frame made from the *true* previous frame (teacher
    forcing, the context of training, through the session's own sampling and guidance) with one
    control changed against the truth's, read by the probe.

    Returns ``yaw_gain_tf`` (read yaw of +20 deg minus -20 deg, per commanded degree: 1 = obeyed,
    0 = ignored), ``closure_tf_closed`` / ``closure_tf_open`` (probe eye closure with the eyes
    commanded closed / open), ``emotion_tf_switched`` (probe accuracy of a commanded emotion other
    than the truth's, at full intensity) and ``emotion_tf_true`` (of the truth's own).
    """
    frames = min(frames, *(item["frames"].shape[0] for item in items))
    refs, signals, context = [], [], []
    with torch.no_grad():
        for item in items:
            clip = item["frames"][:frames]
            tokens = model.encode_tokens(clip[None].to(next(model.parameters())))[0]  # (T, N, c), as the training encodes
            base = {n: s[:frames] for n, s in item["signals"].items()}
            for variant in TF_VARIANTS:
                refs.append(clip[0])
                signals.append(tf_signals(base, variant))
                context.append(tokens)
    video, _ = stream_batch(model, torch.stack(refs), signals, frames, "one-step response", progress,
                            context=torch.stack(context))
    video = video.view(len(items), len(TF_VARIANTS), *video.shape[1:])
    rows = []
    for k in range(len(items)):
        read = {v: probe.read(video[k, i]) for i, v in enumerate(TF_VARIANTS)}
        commanded = {v: signals[k * len(TF_VARIANTS) + i]["emotion"][:, 0].numpy().astype(int) for i, v in enumerate(TF_VARIANTS)}
        rows.append({
            "yaw_gain_tf": float((read["yaw_plus"]["head_pose"][:, 0] - read["yaw_minus"]["head_pose"][:, 0]).mean()
                                 / (2 * TF_YAW_OFFSET)),
            "closure_tf_closed": float(read["eyes_closed"]["blink"].mean()),
            "closure_tf_open": float(read["eyes_open"]["blink"].mean()),
            "emotion_tf_switched": float((read["emotion_switched"]["emotion"] == commanded["emotion_switched"]).mean()),
            "emotion_tf_true": float((read["truth"]["emotion"] == commanded["truth"]).mean()),
        })
    return {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}


def vae_floor(model: Any, items: list[dict[str, Any]], frames: int, probe: Any = None) -> dict[str, float]:
    """L1 and PSNR of the VAE alone (encode + decode the truth): the floor of generation.

    With a ``probe``, also what it reads from those reconstructions (``vae_*``) and from the true
    frames (``truth_*``): blink F1, gaze error, emotion accuracy, mouth correlation and yaw error
    against the truth's own controls, the ceiling each control figure can reach through this VAE.
    """
    from eartalk.metrics.probe import reading_errors

    l1s, psnrs, reads = [], [], {"vae": [], "truth": []}
    with torch.no_grad():
        for item in items:
            clip = item["frames"][:frames]
            recon = torch.cat([model.vae.decode(model.vae.encode(clip[a : a + 100][None]))[0] for a in range(0, frames, 100)])
            l1, psnr = per_frame_l1_psnr(to_uint8(recon), to_uint8(clip))
            l1s.append(l1.mean())
            psnrs.append(psnr.mean())
            if probe is None:
                continue
            sig, truth = truth_controls(item, frames)
            for name, video in (("vae", recon), ("truth", clip)):
                read = probe.read(to_uint8(video))
                reads[name].append({**reading_errors(read, truth), "yaw_mae_deg_drive": drive_yaw_error(read, sig)})
    out = {"vae_l1": float(np.mean(l1s)), "vae_psnr_db": float(np.mean(psnrs))}
    for name, rows in reads.items():
        for key in (rows[0] if rows else ()):
            out[f"{name}_{key}"] = float(np.nanmean([r[key] for r in rows]))
    return out


def untrained_model(checkpoint: Path) -> Any:
    """The model of ``checkpoint`` with fresh backbone, decoder and condition plugins (its trained VAE kept)."""
    from eartalk.core.engine.checkpoint import condition_specs, read_info
    from eartalk.core.engine.model import build_model
    from eartalk.recipes.train import load_trained

    trained = load_trained(checkpoint)
    torch.manual_seed(12345)
    fresh = build_model(trained.arch, condition_specs(read_info(checkpoint, expect="model")))
    fresh.vae.load_state_dict(trained.vae.state_dict())
    return fresh.eval()


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def _plots(out: Path, results: dict[str, dict[str, Any]], main: dict[str, Any], items: list[dict[str, Any]],
           probe: Any, floor: dict[str, float]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, res in results.items():
        axes[0].plot(res["curves"]["l1"], label=name, lw=1)
        axes[1].plot(res["curves"]["psnr_db"], label=name, lw=1)
    axes[0].axhline(floor["vae_l1"], color="k", ls=":", label="VAE alone")
    axes[1].axhline(floor["vae_psnr_db"], color="k", ls=":", label="VAE alone")
    axes[0].set_ylabel("L1 vs truth (pixels in [0, 1])")
    axes[1].set_ylabel("PSNR vs truth (dB)")
    for ax in axes:
        ax.set_xlabel("frame")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("drift on held-out identities (mean over identities)")
    fig.tight_layout()
    fig.savefig(out / "drift.png", dpi=100)
    plt.close(fig)
    paths.append(str(out / "drift.png"))

    video = main["_video"]  # (I, S, T, 3, R, R)
    frames = video.shape[2]
    sweep_read = probe.read(video[0, STREAMS.index("sweep")])["head_pose"][:, 0]
    none_read = probe.read(video[0, STREAMS.index("nocontrol")])["head_pose"][:, 0]
    drive_mouth = probe.read(video[0, 0])["mouth"]
    shuffled_mouth = probe.read(video[0, STREAMS.index("shuffled")])["mouth"]
    true_mouth = items[0]["extras"]["mouth"][:frames, 0].numpy()
    n = min(frames, 300)
    fig, axes = plt.subplots(2, 1, figsize=(10, 6))
    axes[0].plot(yaw_sweep(frames)[:n], "k", label="commanded yaw")
    axes[0].plot(sweep_read[:n], label="read (yaw commanded)")
    axes[0].plot(none_read[:n], label="read (no control)", alpha=0.7)
    axes[0].set_ylabel("yaw (deg, probe)")
    axes[1].plot(true_mouth[:n], "k", label="true opening")
    axes[1].plot(drive_mouth[:n], label="generated (own audio)")
    axes[1].plot(shuffled_mouth[:n], label="generated (shuffled audio)", alpha=0.7)
    axes[1].set_ylabel("mouth opening (probe)")
    for ax in axes:
        ax.set_xlabel("frame")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "controls.png", dpi=100)
    plt.close(fig)
    paths.append(str(out / "controls.png"))

    from eartalk.recipes.demo import contact_sheet

    truth = to_uint8(items[0]["frames"][:frames])
    contact_sheet([truth, video[0, 0], video[0, STREAMS.index("sweep")]], out / "frames.png", columns=10)
    paths.append(str(out / "frames.png"))
    return paths


def _steps(value: Any) -> str:
    return f"{value} steps" if isinstance(value, int) else "given as a checkpoint (steps not counted here)"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3f}"
    return str(value)


TARGETS = {"drift_l1_late_over_early": ("<=", 1.25), "psnr_late_db": (">=", 22.0), "yaw_mae_deg": ("<=", 4.0),
           "blink_f1": (">=", 0.8), "emotion_accuracy": (">=", 0.7), "mouth_corr": (">=", 0.7),
           "mouth_corr_shuffled": ("<=", 0.2), "train_minutes": ("<=", 45.0)}


#: The baseline each control figure is read against (report.md's baseline column).
BASELINES = {"yaw_mae_deg": "yaw_mae_deg_nocontrol", "blink_f1": "blink_f1_nocontrol",
             "emotion_accuracy": "emotion_accuracy_nocontrol", "mouth_corr": "mouth_corr_shuffled",
             "psnr_late_db": "psnr_late_db_static"}


def vae_ceiling_lines(report: dict[str, Any]) -> list[str]:
    """Markdown table of the probe figures on true frames and on their VAE reconstructions (:func:`vae_floor`)."""
    ceiling = [k for k in ("blink_f1", "emotion_accuracy", "mouth_corr", "gaze_error", "yaw_mae_deg_drive")
               if f"vae_{k}" in report]
    if not ceiling:
        return []
    lines = ["What the probe reads from the true frames and from their VAE reconstructions (against the "
             "truth's own controls): the most a generated figure can reach through this VAE.", "",
             "| figure | true frames | VAE reconstructions |", "|---|---|---|"]
    return [*lines, *(f"| {k} | {_fmt(report.get(f'truth_{k}'))} | {_fmt(report[f'vae_{k}'])} |" for k in ceiling), ""]


def steps_within_budget(budget: dict[str, Any]) -> int | None:
    """Main-model steps that would have kept VAE + model inside the training-minutes target at the
    pace of this run; None when the run kept inside it or did not train both here."""
    limit = TARGETS["train_minutes"][1]
    vae, model, steps = budget.get("vae_minutes"), budget.get("model_minutes"), budget.get("steps")
    if not (isinstance(steps, int) and vae and model) or vae + model <= limit:
        return None
    fits = max(1, int(steps * max(0.0, limit - vae) / model))
    return fits // 100 * 100 if fits >= 100 else fits  # whole hundreds where that means anything


def write_markdown(path: Path, report: dict[str, Any]) -> Path:
    """``report.md``: budget, headline table against the issue's targets, ablations, probe accuracy."""
    lines = ["# eartalk study", "", f"Generated {report['finished']} on this machine ({report['threads']} threads).", ""]
    if report.get("sampling"):
        s = report["sampling"]
        own = ", ".join(f"{k} {v:g}" for k, v in (s.get("cfg_separate") or {}).items())
        lines += [f"Sampling: guidance (cfg) {s['cfg']}{f' (own scales: {own})' if own else ''}, "
                  f"MAR steps {s['steps']}, diffusion steps {s['denoise_steps']}, temperature {s.get('temperature', 1.0):g}.", ""]
    b = report["budget"]
    lines += ["## Training budget", "",
              f"- data: {b['clips']} synthetic training identities x {b['seconds']} s at {b['resolution']} px "
              f"({b.get('emotion_segments', 1)} emotion segment(s) per clip, head motion up to {b.get('motion_hz', 0.4)} Hz)",
              f"- VAE: {_steps(b['vae_steps'])}; main model: {_steps(b['steps'])}; every ablation variant: {b['ablation_steps']} steps "
              f"(batches of {b.get('batch_size', 4)} clips)",
              f"- weight average (EMA) decay: {b.get('ema_decay', 0) or 'off'}; measured weights: {b.get('weights', 'ema')}",
              f"- loss weight around the eyes and mouth (focus): VAE {b.get('vae_focus', 0)}, model {b.get('focus', 0)}",
              f"- model arch overrides of the {b['preset']} preset: {b.get('arch', {}) or 'none'}",
              f"- training minutes: VAE {b['vae_minutes']:.1f}, main model {b['model_minutes']:.1f}, "
              f"ablations {b['ablation_minutes']:.1f} (total {b['total_minutes']:.1f})",
              f"- evaluation: {report['identities']} held-out identities x {report['eval_frames']} frames "
              f"({report['eval_frames'] / VIDEO_FPS:.0f} s), held-out speech", "",
              "## Headline (main model; control figures from the synthetic probe, fidelity: proxy)", "",
              "| measure | value | baseline | target | met |", "|---|---|---|---|---|"]
    for key in (*REPORT_KEYS, "gaze_error", "mouth_closed_in_pauses", "l1_early", "l1_late"):
        value = report.get(key)
        base = report.get(BASELINES.get(key, ""), "")
        op, target = TARGETS.get(key, ("", None))
        met = ""
        if key == "train_minutes" and "checkpoint" in (b.get("vae_steps"), b.get("steps")):
            met = "not all trained here"  # the VAE or the model came from a checkpoint: its minutes are not in it
        elif target is not None and isinstance(value, float) and not math.isnan(value):
            met = "yes" if (value <= target if op == "<=" else value >= target) else "no"
        lines.append(f"| {key} | {_fmt(value)} | {_fmt(base) if base != '' else ''} | {f'{op} {target}' if target else ''} | {met} |")
    lines += ["", f"VAE alone on the same clips: L1 {report['vae_l1']:.3f}, PSNR {report['vae_psnr_db']:.2f} dB.", ""]
    fits = steps_within_budget(b)
    if fits is not None:
        lines += [f"VAE + model took {report['train_minutes']:.1f} min, over the {TARGETS['train_minutes'][1]:g}-minute "
                  f"budget on this machine: at this run's pace `--steps {fits}` would fit.", ""]
    if "yaw_gain_tf" in report:
        lines += ["One-step control response (every frame made from the true previous frame, one control "
                  "changed; 1 / closed 1, open 0 / the probe's accuracy = obeyed): "
                  f"yaw gain {_fmt(report['yaw_gain_tf'])} deg per commanded deg; eye closure "
                  f"{_fmt(report['closure_tf_closed'])} commanded closed vs {_fmt(report['closure_tf_open'])} open; "
                  f"a switched emotion read {_fmt(report['emotion_tf_switched'])} (the truth's own "
                  f"{_fmt(report['emotion_tf_true'])}).", ""]
    lines += vae_ceiling_lines(report)
    if report.get("ablations"):
        cols = ("drift_l1_late_over_early", "l1_early", "l1_late", "psnr_late_db", "yaw_mae_deg", "blink_f1",
                "emotion_accuracy", "mouth_corr", "mouth_corr_shuffled", "train_minutes")
        lines += ["## SFA ablations (same budget for every variant)", "", "| variant | " + " | ".join(cols) + " |",
                  "|---" * (len(cols) + 1) + "|"]
        for name, res in report["ablations"].items():
            lines.append(f"| {name} | " + " | ".join(_fmt(res.get(c)) for c in cols) + " |")
        lines.append("")
    if report.get("untrained"):
        u = report["untrained"]
        lines += ["## Untrained model (same VAE, random backbone and decoder)", "",
                  f"L1 early {u['l1_early']:.3f} (trained {report['l1_early']:.3f}), PSNR late {u['psnr_late_db']:.2f} dB, "
                  f"mouth_corr {u['mouth_corr']:.3f}.", ""]
    p = report["probe"].get("heldout_accuracy", {})
    lines += ["## Synthetic probe (proxy) on held-out truth frames", "",
              ", ".join(f"{k} {_fmt(v)}" for k, v in p.items() if not isinstance(v, dict)), ""]
    for k, v in p.items():
        if isinstance(v, dict):
            lines += [f"- {k}: " + ", ".join(f"{kk} {_fmt(vv)}" for kk, vv in v.items()), ""]
    lines += ["## Files", ""]
    lines += [f"- {k}: {v}" for k, v in report["files"].items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _clean(res: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in res.items() if not k.startswith("_")}


def json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------
# the study
# ---------------------------------------------------------------------------------------------
def run_study(cfg: StudyConfig) -> dict[str, Any]:
    """Train (or load) everything, measure, and write ``report.json``, ``report.md`` and plots into ``cfg.out``."""
    from eartalk.core.data.synth import synthesize_dataset
    from eartalk.core.engine.presets import PRESETS
    from eartalk.metrics.probe import ProbeTraining, get_or_train_probe
    from eartalk.recipes.train import load_trained

    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    resolution = PRESETS[cfg.preset].resolution
    start_all = time.perf_counter()

    probe_path = Path(cfg.probe) if cfg.probe else out / "probe.pt"
    probe, probe_info = get_or_train_probe(
        probe_path, ProbeTraining(**probe_sizes(cfg.probe_identities, cfg.probe_epochs), seed=cfg.seed + 17),
        heldout=4, progress=cfg.progress)

    data = synthesize_dataset(out / "data", clips=cfg.clips, seconds=cfg.seconds, resolution=resolution, seed=cfg.seed,
                              emotion_segments=cfg.emotion_segments, motion_hz=cfg.motion_hz, progress=cfg.progress)
    heldout_root = synthesize_dataset(out / "heldout", clips=cfg.heldout, seconds=cfg.eval_frames / VIDEO_FPS,
                                      resolution=resolution, seed=cfg.seed + 1000,
                                      emotion_segments=max(2, cfg.eval_frames // 250), progress=cfg.progress)

    minutes: dict[str, float] = {}
    if cfg.vae_checkpoint:
        vae = Path(cfg.vae_checkpoint)
        minutes["vae"] = 0.0
    else:
        t0 = time.perf_counter()
        vae = train_vae(data, out / "vae", cfg.preset, cfg.vae_steps, cfg.seed, cfg.progress, focus=cfg.vae_focus)
        minutes["vae"] = (time.perf_counter() - t0) / 60
    if cfg.checkpoint:
        main_ckpt = Path(cfg.checkpoint)
        minutes["model"] = 0.0
    else:
        t0 = time.perf_counter()
        main_ckpt = train_model(data, out / "model", cfg.preset, vae, cfg.steps, cfg.seed, cfg.progress, batch_size=cfg.batch_size,
                                arch=cfg.arch, extra=focus_section(cfg.focus), ema_decay=cfg.ema_decay)
        minutes["model"] = (time.perf_counter() - t0) / 60
    checkpoints = {"vae": str(vae), "model": str(main_ckpt)}
    ablation_ckpts: dict[str, tuple[Path, float]] = {}
    for name in cfg.ablations:
        if name in cfg.ablation_checkpoints:
            ablation_ckpts[name] = (Path(cfg.ablation_checkpoints[name]), 0.0)
        elif name == "sink" and cfg.ablation_steps == cfg.steps:
            ablation_ckpts[name] = (main_ckpt, minutes["model"])
        else:
            t0 = time.perf_counter()
            path = train_model(data, out / f"ablation_{name}", cfg.preset, vae, cfg.ablation_steps, cfg.seed,
                               cfg.progress, arch={**cfg.arch, **ABLATIONS[name]}, batch_size=cfg.batch_size,
                               extra=focus_section(cfg.focus), ema_decay=cfg.ema_decay)
            ablation_ckpts[name] = (path, (time.perf_counter() - t0) / 60)
        checkpoints[f"ablation_{name}"] = str(ablation_ckpts[name][0])
    minutes["ablations"] = sum(m for p, m in ablation_ckpts.values() if p != main_ckpt)

    model = with_guidance(load_trained(main_ckpt, use_ema=cfg.use_ema), cfg.guidance, cfg.cfg_separate, cfg.temperature)
    items = load_heldout(heldout_root, model.stack, cfg.eval_frames)
    frames = cfg.eval_frames
    main = measure(model, items, probe, frames, "main model", cfg.seed, cfg.progress)
    main["fps"] = single_stream_fps(model, items[0])
    main["train_minutes"] = minutes["vae"] + minutes["model"]
    main.update(teacher_forced_response(model, items, probe, progress=cfg.progress))
    floor = vae_floor(model, items, frames, probe)
    curves = {"main": main}
    ablations = {}
    for name, (path, mins) in ablation_ckpts.items():
        if path == main_ckpt:
            res = dict(main)
        else:
            variant = with_guidance(load_trained(path, use_ema=cfg.use_ema), cfg.guidance, cfg.cfg_separate, cfg.temperature)
            res = measure(variant, items, probe, frames, f"ablation {name}", cfg.seed, cfg.progress)
            res["fps"] = single_stream_fps(variant, items[0])
            curves[name] = res
        res["train_minutes"] = minutes["vae"] + mins
        ablations[name] = res
    untrained = None
    if cfg.untrained:
        plain = with_guidance(untrained_model(main_ckpt), cfg.guidance, cfg.cfg_separate, cfg.temperature)
        untrained = measure(plain, items, probe, frames, "untrained model", cfg.seed, cfg.progress)
        curves["untrained"] = untrained
    files = {"report_json": str(out / "report.json"), "report_md": str(out / "report.md")}
    for i, path in enumerate(_plots(out, curves, main, items, probe, floor)):
        files[f"plot_{i}"] = path
    for run in ("vae", "model", *(f"ablation_{n}" for n in ablation_ckpts)):
        if (out / run / "loss.png").is_file():
            files[f"loss_{run}"] = str(out / run / "loss.png")

    report: dict[str, Any] = {
        **{k: v for k, v in _clean(main).items() if k != "curves"},
        **floor,
        "fidelity": "proxy (synthetic probe on synthetic faces; not a paper metric)",
        "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "threads": cfg.threads,
        "sampling": attrs.asdict(model.arch.sampling),
        "budget": {"clips": cfg.clips, "seconds": cfg.seconds, "resolution": resolution, "preset": cfg.preset,
                   "emotion_segments": cfg.emotion_segments, "motion_hz": cfg.motion_hz,
                   "vae_steps": cfg.vae_steps if not cfg.vae_checkpoint else "checkpoint",
                   "steps": cfg.steps if not cfg.checkpoint else "checkpoint", "ablation_steps": cfg.ablation_steps,
                   "batch_size": cfg.batch_size, "ema_decay": cfg.ema_decay, "weights": "ema where a checkpoint has one" if cfg.use_ema else "raw",
                   "vae_focus": cfg.vae_focus if not cfg.vae_checkpoint else "checkpoint",
                   "focus": cfg.focus, "arch": dict(cfg.arch) if not cfg.checkpoint else "checkpoint",
                   "vae_minutes": minutes["vae"], "model_minutes": minutes["model"],
                   "ablation_minutes": minutes["ablations"],
                   "total_minutes": minutes["vae"] + minutes["model"] + minutes["ablations"]},
        "ablations": {n: {k: v for k, v in _clean(r).items() if k != "curves"} for n, r in ablations.items()},
        "untrained": {k: v for k, v in _clean(untrained).items() if k != "curves"} if untrained else None,
        "curves": {n: r["curves"] for n, r in curves.items()},
        "probe": {"path": str(probe_path), **probe_info},
        "checkpoints": checkpoints,
        "files": files,
        "config": attrs.asdict(cfg),
        "study_minutes": (time.perf_counter() - start_all) / 60,
    }
    write_markdown(out / "report.md", report)
    report = json_safe(report)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    return report


# ---------------------------------------------------------------------------------------------
# command
# ---------------------------------------------------------------------------------------------
def _parse_pairs(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise InputError(f"--ablation-checkpoint {item!r}: expected NAME=PATH, e.g. no_sink=runs/x/last.ckpt")
        out[name] = path
    return out


class StudyCommand(Command):
    name = "study"
    help = "train and measure: drift over long clips, control fidelity (synthetic probe), lip-sync, cost, SFA ablations"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        d = StudyConfig()
        parser.add_argument("--out", default=d.out, help="output folder (report.md, report.json, plots, runs)")
        parser.add_argument("--quick", action="store_true", help="small sizes and short clips: about 7 minutes on 2 cores")
        parser.add_argument("--preset", default=d.preset, choices=["tiny", "small"])
        parser.add_argument("--clips", type=int, help=f"synthetic training identities (default {d.clips})")
        parser.add_argument("--seconds", type=float, help=f"seconds per training clip (default {d.seconds})")
        parser.add_argument("--emotion-segments", type=int, help=f"emotions per training clip (default {d.emotion_segments})")
        parser.add_argument("--motion-hz", type=float,
                            help=f"highest head-rotation frequency of the training clips, Hz (default {d.motion_hz})")
        parser.add_argument("--vae-steps", type=int, help=f"VAE training steps (default {d.vae_steps})")
        parser.add_argument("--vae-focus", type=float,
                            help=f"VAE reconstruction weight around the eyes and mouth, 0 = off (default {d.vae_focus:g})")
        parser.add_argument("--focus", type=float,
                            help=f"model diffusion-loss weight around the eyes and mouth, 0 = off (default {d.focus:g})")
        parser.add_argument("--arch", action="append", default=[], metavar="KEY=VALUE",
                            help="model.arch override of the main model and the ablations, e.g. head_width=256 "
                                 "(repeatable; default: the preset as it is)")
        parser.add_argument("--steps", type=int, help=f"main model training steps (default {d.steps})")
        parser.add_argument("--batch-size", type=int,
                            help=f"training clips per batch of the main model and the ablations (default {d.batch_size})")
        parser.add_argument("--ema-decay", type=float,
                            help=f"EMA of the model weights while training, 0 = off (default {d.ema_decay:g})")
        parser.add_argument("--raw-weights", action="store_true",
                            help="measure the raw weights of checkpoints that carry an EMA (default: the EMA's)")
        parser.add_argument("--ablation-steps", type=int, help=f"steps of every ablation variant (default {d.ablation_steps})")
        parser.add_argument("--ablations", help=f"comma-separated variants (default {','.join(d.ablations)}; '' for none)")
        parser.add_argument("--heldout", type=int, help=f"held-out identities (default {d.heldout})")
        parser.add_argument("--eval-frames", type=int, help=f"frames streamed per identity (default {d.eval_frames})")
        parser.add_argument("--no-untrained", action="store_true", help="skip the untrained-model measurement")
        parser.add_argument("--vae-checkpoint", help="use this VAE instead of training one")
        parser.add_argument("--checkpoint", help="use this main model (needs --vae-checkpoint)")
        parser.add_argument("--ablation-checkpoint", action="append", default=[], metavar="NAME=PATH",
                            help="use this checkpoint for an ablation variant")
        parser.add_argument("--probe", help="synthetic probe file (trained and saved there when missing; default OUT/probe.pt)")
        parser.add_argument("--cfg", type=float, dest="guidance",
                            help="guidance scale of the measured streams (default: each checkpoint's own)")
        parser.add_argument("--cfg-separate", action="append", default=[], metavar="NAME=SCALE",
                            help="guide control NAME with a scale of its own (repeatable; sampling.cfg_separate), "
                                 "e.g. --cfg-separate blink=6")
        parser.add_argument("--temperature", type=float,
                            help="noise scale of the diffusion sampler in the measured streams (default: each checkpoint's own)")
        parser.add_argument("--threads", type=int, default=d.threads, help="torch threads")
        parser.add_argument("--seed", type=int, default=d.seed)
        parser.add_argument("--json", action="store_true", help="print the headline figures as JSON")

    def run(self, args: argparse.Namespace) -> int:
        fields = {"preset": args.preset, "threads": args.threads, "seed": args.seed, "vae_checkpoint": args.vae_checkpoint,
                  "checkpoint": args.checkpoint, "ablation_checkpoints": _parse_pairs(args.ablation_checkpoint),
                  "probe": args.probe, "untrained": not args.no_untrained, "use_ema": not args.raw_weights}
        if args.cfg_separate:
            from eartalk.recipes.commands import parse_scales

            fields["cfg_separate"] = parse_scales(args.cfg_separate)
        for key in ("clips", "seconds", "emotion_segments", "motion_hz", "vae_steps", "vae_focus", "focus", "steps",
                    "batch_size", "ema_decay", "ablation_steps", "heldout", "eval_frames", "guidance", "temperature"):
            if getattr(args, key) is not None:
                fields[key] = getattr(args, key)
        if args.arch:
            from eartalk.core.config import apply_overrides
            from eartalk.core.engine.presets import ModelArch

            fields["arch"] = apply_overrides({}, args.arch, ModelArch)  # KEY=VALUE, YAML values, typos named
        if args.ablations is not None:
            fields["ablations"] = tuple(a.strip() for a in args.ablations.split(",") if a.strip())
        cfg = quick_config(args.out, **fields) if args.quick else StudyConfig(out=args.out, **fields)
        report = run_study(cfg)
        headline = {k: report.get(k) for k in REPORT_KEYS}
        if args.json:
            print(json.dumps(headline, indent=2))
        else:
            for key, value in headline.items():
                print(f"{key}: {_fmt(value) if value is not None else 'n/a'}")
            print(f"report: {report['files']['report_md']}  (json: {report['files']['report_json']})")
        return 0


__all__ = ["ABLATIONS", "REPORT_KEYS", "StudyCommand", "StudyConfig", "measure", "quick_config", "run_study"]
