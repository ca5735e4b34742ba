"""Synthetic probe: a small CNN that reads the renderer's controls back from one frame.

The procedural renderer of ``eartalk synth`` (:mod:`eartalk.core.data.synth`) draws every frame
from exact ground truth, so a network trained on its renders can tell, from a single frame, what
head pose, eye closure, gaze, mouth opening and emotion a frame shows. eartalk uses it to measure
**control fidelity on synthetic data**: command a control, generate, read the control back with
the probe, compare. Results are labelled ``fidelity: proxy`` (a model made here, for synthetic
faces only; it says nothing about real faces and is never reported under a paper metric's name).

What it reads (heads of :class:`SyntheticProbe`):

=========== ======================================= ==================================
output      meaning                                 training target
=========== ======================================= ==================================
head_pose   yaw, pitch, roll in degrees             regression (scaled by 25/15/10 deg)
blink       closure of the subject's left/right eye logistic, closure in [0, 1]
gaze        left_x, left_y, right_x, right_y        regression in [-1, 1]
mouth       opening in [0, 1]                       regression
emotion     one of the 8 MEAD emotions              8-way softmax
=========== ======================================= ==================================

Training (:func:`train_probe`) renders frames of *training identities* (identity seeds drawn from
``seed``) with controls drawn independently per frame, uniformly over the ranges the synthetic
timelines use (yaw +/-32 deg, closed eyes on a third of the frames, ...), so every value is seen
often. Frames are blurred and noised at random so that the probe also reads the softer frames a
VAE decodes. Held-out accuracy (:func:`evaluate_probe`) is measured on natural synthetic clips
(the timelines of ``eartalk synth``) of identities the probe never saw.

Network: a stride-2 stem to 32 px, then one 3x3 conv per stage at 32, 16 and 8 px (batch norm,
SiLU), the 8x8 maps flattened into one hidden layer (positions matter: emotion moves brows and
mouth corners by one to three pixels at 64 px). Default training (:class:`ProbeTraining`): 320
identities x 25 frames (8,000 frames), 14 epochs, batch 32, one-cycle AdamW to 3e-3.

Measured at the defaults (201 s of training with one thread on a 2-core machine while another
training ran on the other core), on held-out natural clips of unseen identities:

========================= ===================== ===================== ==========
figure                    4 clips (400 frames)  16 clips (1600 fr.)   chance
========================= ===================== ===================== ==========
yaw MAE (pitch, roll)     2.20 (2.31, 1.43) deg 2.17 (1.86, 1.26) deg 8.6 / 7.5
blink F1 (closure > 0.5)  0.99                  0.97                  0.10
gaze error                0.22                  0.31
mouth correlation         0.98                  0.97                  0
emotion accuracy          0.69                  0.70                  0.125
  by intensity 1 / 2 / 3  0.31 / 0.75 / 0.94    0.63 / 0.74 / 0.70
========================= ===================== ===================== ==========

Those figures are for 9 epochs. At the default 14 epochs (320 s on one thread, the other core
busy), on 8 held-out clips (800 frames): yaw MAE 2.23 deg (pitch 2.12, roll 1.37), blink F1 0.94,
gaze error 0.27, mouth correlation 0.97, emotion accuracy 0.84 (by intensity 0.66 / 0.84 / 0.97).
4 clips hold only 8 emotion segments, so their emotion figures move by 1/8 with one
segment.

Weights are made here and saved to a local file (``eartalk probe --out PATH``, about 4 minutes
of one CPU core at the defaults); metrics find them through the usual resolver (explicit ``weights`` option,
``$EARTALK_PROBE_WEIGHTS``, ``$EARTALK_WEIGHTS_DIR/eartalk_synth_probe.pt``, torch hub cache).
Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any, ClassVar

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from eartalk.core.commands import Command
from eartalk.core.errors import InputError, WeightsNotFoundError
from eartalk.metrics.base import MetricPlugin, MetricResult, VideoSet
from eartalk.metrics.control import binary_f1
from eartalk.metrics.weights import PROXY, WeightsSpec, file_sha256, resolve_weights

PROBE_FORMAT = "eartalk-synth-probe/2"
PROBE_RESOLUTION = 64
#: Degrees that map to 1.0 in the pose head's output (yaw, pitch, roll).
POSE_SCALE = (25.0, 15.0, 10.0)
NUM_EMOTIONS = 8

PROBE_WEIGHTS = WeightsSpec(
    "synth_probe",
    "eartalk_synth_probe.pt",
    "EARTALK_PROBE_WEIGHTS",
    "eartalk itself: trained locally on the synthetic renderer by `eartalk probe --out PATH` (eartalk.metrics.probe)",
    "made locally from eartalk's procedural renderer (Apache-2.0); no third-party weights",
    note="train one with `eartalk probe --out eartalk_synth_probe.pt` (about 4 minutes of one CPU core)",
)


# ---------------------------------------------------------------------------------------------
# network
# ---------------------------------------------------------------------------------------------
class SyntheticProbe(nn.Module):
    """Conv blocks from 64 px down to 8x8 feature maps, one hidden layer and one linear layer per output.

    The stem halves 64 px to 32; each of the 32, 16 and 8 px stages has one more 3x3 conv, and
    the 8x8 maps are flattened (not pooled), so the hidden layer still knows where each feature
    lies: emotions move brows and mouth corners by one to three pixels at 64 px.

    Args:
        width: channels at 32 px (doubled at 16 px and again at 8 px).
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.width = int(width)
        w = self.width

        def block(a: int, b: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(a, b, 3, stride=stride, padding=1), nn.BatchNorm2d(b), nn.SiLU()]

        self.features = nn.Sequential(
            *block(3, w, 2), *block(w, w, 1),  # 32 px
            *block(w, 2 * w, 2), *block(2 * w, 2 * w, 1),  # 16 px
            *block(2 * w, 4 * w, 2), *block(4 * w, 4 * w, 1),  # 8 px
        )  # (B, 4w, 8, 8) from 64 px
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * 64, 128), nn.SiLU())
        self.pose = nn.Linear(128, 3)
        self.blink = nn.Linear(128, 2)
        self.gaze = nn.Linear(128, 4)
        self.mouth = nn.Linear(128, 1)
        self.emotion = nn.Linear(128, NUM_EMOTIONS)
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)
        for head in (self.pose, self.blink, self.gaze, self.mouth, self.emotion):
            nn.init.normal_(head.weight, std=0.01)

    def forward(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw head outputs of ``(B, 3, 64, 64)`` frames in [-1, 1]."""
        h = self.hidden(self.features(frames))  # (B, 128)
        return {"pose": self.pose(h), "blink": self.blink(h), "gaze": self.gaze(h), "mouth": self.mouth(h),
                "emotion": self.emotion(h)}

    @torch.no_grad()
    def read(self, frames: torch.Tensor, batch: int = 256) -> dict[str, np.ndarray]:
        """Read the controls of every frame.

        Args:
            frames: ``(T, 3, H, W)`` uint8 RGB (or float in [-1, 1]); resized to 64 px.
            batch: frames per forward pass.

        Returns:
            ``head_pose (T, 3)`` degrees, ``blink (T, 2)`` closure, ``gaze (T, 4)``, ``mouth (T,)``
            opening, ``emotion (T,)`` index, ``emotion_probs (T, 8)``.
        """
        if frames.dim() != 4 or frames.shape[1] != 3:
            raise InputError(f"probe: frames must be (T, 3, H, W) RGB, got {tuple(frames.shape)}")
        was_training = self.training
        self.eval()
        parts: dict[str, list[np.ndarray]] = {}
        scale = torch.tensor(POSE_SCALE)
        for a in range(0, frames.shape[0], batch):
            x = prepare_frames(frames[a : a + batch])
            out = self(x)
            got = {
                "head_pose": (out["pose"] * scale).numpy(),
                "blink": torch.sigmoid(out["blink"]).numpy(),
                "gaze": out["gaze"].numpy(),
                "mouth": out["mouth"][:, 0].numpy(),
                "emotion_probs": torch.softmax(out["emotion"], -1).numpy(),
            }
            for key, value in got.items():
                parts.setdefault(key, []).append(value)
        self.train(was_training)
        result = {k: np.concatenate(v) for k, v in parts.items()}
        result["emotion"] = result["emotion_probs"].argmax(-1)
        return result


def prepare_frames(frames: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` uint8 or [-1, 1] float -> float32 ``(B, 3, 64, 64)`` in [-1, 1]."""
    x = frames.float() / 127.5 - 1.0 if frames.dtype == torch.uint8 else frames.float()
    if x.shape[-1] != PROBE_RESOLUTION or x.shape[-2] != PROBE_RESOLUTION:
        x = F.interpolate(x, size=(PROBE_RESOLUTION, PROBE_RESOLUTION), mode="bilinear", antialias=True, align_corners=False)
    return x


# ---------------------------------------------------------------------------------------------
# training data
# ---------------------------------------------------------------------------------------------
def random_controls(num_frames: int, rng: np.random.Generator) -> Any:
    """Controls drawn independently per frame over the synthetic timelines' ranges (probe training)."""
    from eartalk.core.data.synth import REST_WIDTH, Controls

    pose = np.zeros((num_frames, 6), np.float32)
    pose[:, 0] = rng.uniform(-32, 32, num_frames)
    pose[:, 1] = rng.uniform(-16, 16, num_frames)
    pose[:, 2] = rng.uniform(-12, 12, num_frames)
    pose[:, 3] = rng.normal(0, 0.8, num_frames)
    pose[:, 4] = rng.normal(0, 0.5, num_frames)
    pose[:, 5] = -30 + rng.normal(0, 1.5, num_frames)
    closure = rng.uniform(0, 1, (num_frames, 2))
    both = rng.random(num_frames) < 0.25  # blinks close both eyes together
    closure[both, 1] = closure[both, 0]
    open_eye = rng.random((num_frames, 2)) < 0.6
    open_eye[both, 1] = open_eye[both, 0]
    blink = np.where(open_eye, 0.0, closure).astype(np.float32)
    gaze = rng.uniform(-0.8, 0.8, (num_frames, 2)) * (rng.random((num_frames, 1)) > 0.3)
    gaze = np.concatenate([gaze, gaze], 1).astype(np.float32)
    mouth = np.zeros((num_frames, 2), np.float32)
    mouth[:, 0] = rng.uniform(0, 1, num_frames) * (rng.random(num_frames) > 0.3)
    mouth[:, 1] = np.clip(REST_WIDTH + rng.uniform(-0.4, 0.45, num_frames) * (mouth[:, 0] > 0), 0, 1)
    emotion = np.stack([rng.integers(0, NUM_EMOTIONS, num_frames), rng.integers(1, 4, num_frames)], 1).astype(np.float32)
    return Controls(pose, blink, gaze, mouth, emotion)


def render_training_frames(identities: int, frames_per_identity: int, seed: int = 0,
                           progress: Any = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Frames ``(N, 3, 64, 64)`` uint8 of ``identities`` random identities and their targets."""
    from eartalk.core.data.synth import Identity, render_frames

    rng = np.random.default_rng([seed, 7321])
    frames, targets = [], {k: [] for k in ("head_pose", "blink", "gaze", "mouth", "emotion")}
    for _ in range(identities):
        identity = Identity.sample(rng)
        controls = random_controls(frames_per_identity, rng)
        rendered, _ = render_frames(identity, controls, PROBE_RESOLUTION)
        frames.append(rendered)
        targets["head_pose"].append(controls.head_pose[:, :3])
        targets["blink"].append(controls.blink)
        targets["gaze"].append(controls.gaze)
        targets["mouth"].append(controls.mouth[:, 0])
        targets["emotion"].append(controls.emotion[:, 0])
        if progress is not None:
            progress()
    return torch.cat(frames), {k: torch.from_numpy(np.concatenate(v)) for k, v in targets.items()}


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random blur (down-up sampling) on half the batch, small noise and brightness jitter."""
    b = x.shape[0]
    blur = torch.rand(b, generator=generator) < 0.5
    if blur.any():
        soft = F.interpolate(F.avg_pool2d(x[blur], 2), scale_factor=2, mode="bilinear", align_corners=False)
        x = x.clone()
        x[blur] = soft
    x = x + torch.randn(x.shape, generator=generator) * 0.03
    x = x * (1 + 0.1 * (torch.rand(b, 1, 1, 1, generator=generator) - 0.5))
    return x


def probe_loss(out: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Loss terms of one batch (pose in scaled units, blink BCE, gaze/mouth MSE, emotion CE).

    Pose, blink and emotion weigh more (x4, x3, x2) than their raw terms: they are the figures
    with the tightest targets, and emotion cues are the finest details the probe learns.
    """
    pose = F.mse_loss(out["pose"], target["head_pose"] / torch.tensor(POSE_SCALE)) * 4
    blink = F.binary_cross_entropy_with_logits(out["blink"], target["blink"]) * 3
    gaze = F.mse_loss(out["gaze"], target["gaze"]) * 4
    mouth = F.mse_loss(out["mouth"][:, 0], target["mouth"]) * 4
    emotion = F.cross_entropy(out["emotion"], target["emotion"].long()) * 2
    terms = {"pose": pose, "blink": blink, "gaze": gaze, "mouth": mouth, "emotion": emotion}
    terms["loss"] = sum(terms.values())  # type: ignore[assignment]
    return terms


@attrs.frozen
class ProbeTraining:
    """How :func:`train_probe` trains.

    Attributes:
        identities: training identities rendered (many identities with few frames each
            generalise better to unseen identities than few with many).
        frames_per_identity: frames per identity (controls drawn independently per frame).
        epochs: passes over the rendered frames.
        batch_size: frames per step.
        lr: peak AdamW learning rate of a one-cycle schedule (20% warm-up, cosine decay).
        width: channels of the first conv block.
        seed: identity and initialisation seed (held-out identities use other seeds).
    """

    identities: int = 320
    frames_per_identity: int = 25
    epochs: int = 14
    batch_size: int = 32
    lr: float = 3e-3
    width: int = 16
    seed: int = 0

    def __attrs_post_init__(self) -> None:
        if min(self.identities, self.frames_per_identity, self.epochs, self.batch_size, self.width) < 1:
            raise InputError(f"probe training: identities, frames_per_identity, epochs, batch_size and width must be >= 1, got {self}")


def train_probe(training: ProbeTraining = ProbeTraining(), progress: bool = True) -> tuple[SyntheticProbe, dict[str, Any]]:
    """Render training frames and fit a :class:`SyntheticProbe`.

    Returns:
        The probe (eval mode) and a log: ``loss_first``/``loss_last`` (mean of the first and last
        10% of steps), ``frames``, ``steps``, ``seconds``.
    """
    from rich.progress import Progress

    start = time.perf_counter()
    torch.manual_seed(training.seed)
    generator = torch.Generator().manual_seed(training.seed)
    with Progress(disable=not progress, transient=False) as bar:
        task = bar.add_task("probe: rendering training frames", total=training.identities)
        frames, targets = render_training_frames(training.identities, training.frames_per_identity, training.seed,
                                                 progress=lambda: bar.advance(task))
        n = frames.shape[0]
        steps_per_epoch = math.ceil(n / training.batch_size)
        total = steps_per_epoch * training.epochs
        probe = SyntheticProbe(training.width)
        opt = torch.optim.AdamW(probe.parameters(), lr=training.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=training.lr, total_steps=total, pct_start=0.2)
        losses: list[float] = []
        task = bar.add_task("probe: training", total=total)
        probe.train()
        for _ in range(training.epochs):
            order = torch.randperm(n, generator=generator)
            for a in range(0, n, training.batch_size):
                idx = order[a : a + training.batch_size]
                x = _augment(prepare_frames(frames[idx]), generator)
                terms = probe_loss(probe(x), {k: v[idx] for k, v in targets.items()})
                opt.zero_grad(set_to_none=True)
                terms["loss"].backward()
                opt.step()
                sched.step()
                losses.append(float(terms["loss"].detach()))
                bar.update(task, advance=1, description=f"probe: training (loss {losses[-1]:.3f})")
    probe.eval()
    k = max(1, len(losses) // 10)
    log = {"loss_first": float(np.mean(losses[:k])), "loss_last": float(np.mean(losses[-k:])), "frames": int(n),
           "steps": len(losses), "seconds": round(time.perf_counter() - start, 1), "training": attrs.asdict(training)}
    return probe, log


# ---------------------------------------------------------------------------------------------
# accuracy
# ---------------------------------------------------------------------------------------------
def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two 1-D series (0.0 when either is constant, to float32 rounding)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    # float32 readings of identical frames differ by rounding (batched convolutions): constant, not noise
    if a.size < 2 or a.std() < 1e-6 * max(1.0, np.abs(a).max()) or b.std() < 1e-6 * max(1.0, np.abs(b).max()):
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def reading_errors(read: dict[str, np.ndarray], truth: dict[str, np.ndarray]) -> dict[str, float]:
    """Error of a probe reading against ground truth (any subset of the keys of :meth:`SyntheticProbe.read`).

    ``truth`` holds ``head_pose (T, >=3)`` degrees, ``blink (T, 2)``, ``gaze (T, 4)``, ``mouth (T,)``
    or ``(T, >=1)`` opening and ``emotion (T,)`` or ``(T, >=1)`` index. Returns ``yaw_mae_deg``,
    ``pitch_mae_deg``, ``roll_mae_deg``, ``blink_f1`` (closure > 0.5, both eyes), ``gaze_error``
    (mean Euclidean error per eye), ``mouth_corr`` (Pearson) and ``emotion_accuracy`` for the
    keys present in both.
    """
    out: dict[str, float] = {}
    if "head_pose" in truth:
        err = np.abs(read["head_pose"][:, :3] - np.asarray(truth["head_pose"])[:, :3]).mean(0)
        out.update(yaw_mae_deg=float(err[0]), pitch_mae_deg=float(err[1]), roll_mae_deg=float(err[2]))
    if "blink" in truth:
        got = torch.from_numpy(np.asarray(read["blink"]) > 0.5)
        want = torch.from_numpy(np.asarray(truth["blink"]) > 0.5)
        out["blink_f1"] = binary_f1(got, want)
    if "gaze" in truth:
        g, t = np.asarray(read["gaze"]), np.asarray(truth["gaze"])
        out["gaze_error"] = float(np.concatenate([np.linalg.norm(g[:, 0:2] - t[:, 0:2], axis=1),
                                                  np.linalg.norm(g[:, 2:4] - t[:, 2:4], axis=1)]).mean())
    if "mouth" in truth:
        m = np.asarray(truth["mouth"])
        out["mouth_corr"] = pearson(read["mouth"], m[:, 0] if m.ndim == 2 else m)
    if "emotion" in truth:
        e = np.asarray(truth["emotion"])
        e = e[:, 0] if e.ndim == 2 else e
        out["emotion_accuracy"] = float((np.asarray(read["emotion"]) == np.round(e)).mean())
    return out


def heldout_clips(count: int, seconds: float, seed: int = 90_000) -> list[Any]:
    """Natural synthetic clips (``eartalk synth`` timelines, 2 emotions each) at 64 px of unseen identities."""
    from eartalk.core.data.synth import synthesize_clip

    return [synthesize_clip(seed + i, seconds, PROBE_RESOLUTION, emotion_segments=2) for i in range(count)]


def truth_of(clip: Any) -> dict[str, np.ndarray]:
    """Ground truth of a :class:`~eartalk.core.data.synth.SynthClip` in the form :func:`reading_errors` takes."""
    c = clip.controls
    return {"head_pose": c.head_pose, "blink": c.blink, "gaze": c.gaze, "mouth": c.mouth[:, 0], "emotion": c.emotion[:, 0]}


def evaluate_probe(probe: SyntheticProbe, clips: list[Any]) -> dict[str, Any]:
    """The probe's accuracy on held-out truth frames, with the chance level of each figure.

    Chance: pose MAE of always answering the truth's mean, blink F1 of a reader that calls every
    frame closed, emotion accuracy 1/8, mouth correlation 0.

    Emotion is also reported per intensity (``emotion_accuracy_by_intensity``, keys ``"1"``-``"3"``,
    with ``emotion_frames_by_intensity``): intensity 1 moves brows and mouth corners by about a
    pixel at 64 px. ``emotion_segments`` counts the (emotion, intensity) segments of the clips: a
    clip of :func:`heldout_clips` has 2, so emotion figures of a few clips rest on few segments.
    """
    reads = [probe.read(c.frames) for c in clips]
    truths = [truth_of(c) for c in clips]
    joined_read = {k: np.concatenate([r[k] for r in reads]) for k in reads[0]}
    joined_truth = {k: np.concatenate([t[k] for t in truths]) for k in truths[0]}
    out: dict[str, Any] = reading_errors(joined_read, joined_truth)
    intensity = np.concatenate([np.round(c.controls.emotion[:, 1]) for c in clips]).astype(int)
    right = joined_read["emotion"] == np.round(joined_truth["emotion"])
    out["emotion_accuracy_by_intensity"] = {str(i): round(float(right[intensity == i].mean()), 4)
                                            for i in (1, 2, 3) if (intensity == i).any()}
    out["emotion_frames_by_intensity"] = {str(i): int((intensity == i).sum()) for i in (1, 2, 3) if (intensity == i).any()}
    out["emotion_segments"] = int(sum(1 + np.count_nonzero(np.any(np.diff(c.controls.emotion, axis=0) != 0, axis=1))
                                      for c in clips))
    pose = joined_truth["head_pose"][:, :3]
    closed = torch.from_numpy(joined_truth["blink"] > 0.5)
    out.update(
        chance_yaw_mae_deg=float(np.abs(pose[:, 0] - pose[:, 0].mean()).mean()),
        chance_blink_f1=binary_f1(torch.ones_like(closed), closed),
        chance_emotion_accuracy=1.0 / NUM_EMOTIONS,
        frames=int(pose.shape[0]),
        identities=len(clips),
    )
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------
def save_probe(probe: SyntheticProbe, path: str | Path, info: dict[str, Any] | None = None) -> Path:
    """Write the probe (weights, width, and ``info`` such as its held-out accuracy) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": PROBE_FORMAT, "width": probe.width, "state_dict": probe.state_dict(), "info": info or {}}, path)
    return path


def load_probe(path: str | Path | None = None) -> tuple[SyntheticProbe, dict[str, Any], Path]:
    """Load a probe written by :func:`save_probe`, found by the weights resolver.

    Returns:
        The probe (eval mode), its stored ``info`` and the file it came from.

    Raises:
        WeightsNotFoundError: no probe file (the message says how to train one).
        InputError: the file is not a probe.
    """
    file = resolve_weights(PROBE_WEIGHTS, path)
    hint = "train one with `eartalk probe --out PATH`"
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise InputError(f"probe weights {file}: cannot read ({type(err).__name__}: {err}); {hint}") from None
    found = data.get("format") if isinstance(data, dict) else None
    if isinstance(found, str) and found.startswith("eartalk-synth-probe/") and found != PROBE_FORMAT:
        raise InputError(f"probe weights {file}: an older probe layout ({found}; this eartalk reads {PROBE_FORMAT}); "
                         "retrain it with `eartalk probe --out PATH`")
    if found != PROBE_FORMAT:
        raise InputError(f"probe weights {file}: not an eartalk synthetic probe ({PROBE_FORMAT}); {hint}")
    probe = SyntheticProbe(int(data["width"]))
    probe.load_state_dict(data["state_dict"])
    return probe.eval(), dict(data.get("info", {})), file


def get_or_train_probe(path: str | Path, training: ProbeTraining = ProbeTraining(), heldout: int = 8,
                       progress: bool = True) -> tuple[SyntheticProbe, dict[str, Any]]:
    """Load the probe at ``path``, or train one, measure it on ``heldout`` unseen identities and save it there."""
    path = Path(path)
    if path.is_file():
        probe, info, _ = load_probe(path)
        return probe, info
    probe, log = train_probe(training, progress=progress)
    info = {"training": log, "heldout_accuracy": evaluate_probe(probe, heldout_clips(heldout, 4.0))}
    save_probe(probe, path, info)
    return probe, info


# ---------------------------------------------------------------------------------------------
# metric plugins
# ---------------------------------------------------------------------------------------------
@attrs.frozen
class ProbeOptions:
    """Options of the probe metrics.

    Attributes:
        weights: probe file (else ``$EARTALK_PROBE_WEIGHTS``, ``$EARTALK_WEIGHTS_DIR``, torch hub cache).
    """

    weights: str | None = None


class _ProbeMetric(MetricPlugin):
    """Control fidelity on synthetic data: the probe's reading of each generated video against
    its reading of the paired reference video (the rendered truth that drove it)."""

    fidelity = PROXY
    requires = frozenset({"reference", "paired"})
    weights_key: ClassVar[str] = "synth_probe"
    Options = ProbeOptions
    key: ClassVar[str] = ""
    truth_key: ClassVar[str] = ""

    def compute(self, generated: VideoSet, reference: VideoSet | None = None) -> MetricResult:
        from eartalk.metrics.plugins import paired

        assert reference is not None
        try:
            probe, info, file = load_probe(self.options.weights)
        except WeightsNotFoundError as err:
            return self.skipped(str(err))
        values = []
        for fake, real in paired(generated, reference):
            n = min(fake.num_frames, real.num_frames)
            truth = probe.read(real.frames[:n])
            got = probe.read(fake.frames[:n])
            if self.truth_key == "emotion":
                truth = {"emotion": truth["emotion"]}
            values.append(reading_errors(got, {self.truth_key: truth[self.truth_key]})[self.key])
        accuracy = info.get("heldout_accuracy", {})
        return self.result(float(np.mean(values)), protocol=generated.protocol(
            extractor="eartalk synthetic probe (synthetic faces only)", resolution_read=PROBE_RESOLUTION,
            commanded="probe reading of the paired reference video", weights=file.name, weights_sha256=file_sha256(file),
            probe_heldout_accuracy=accuracy), per_video=values)


class ProbeHeadPose(_ProbeMetric):
    """Yaw MAE in degrees read by the synthetic probe (pitch/roll in the per-axis numbers of ``evaluate_probe``)."""

    name = "probe_yaw"
    description = "synthetic probe (proxy): yaw MAE in degrees, generated vs reference"
    key, truth_key = "yaw_mae_deg", "head_pose"


class ProbeBlink(_ProbeMetric):
    """Blink F1 (closure > 0.5, both eyes) read by the synthetic probe."""

    name = "probe_blink"
    description = "synthetic probe (proxy): blink F1, generated vs reference"
    higher_is_better = True
    key, truth_key = "blink_f1", "blink"


class ProbeGaze(_ProbeMetric):
    """Gaze error (mean Euclidean error per eye, [-1, 1] units) read by the synthetic probe."""

    name = "probe_gaze"
    description = "synthetic probe (proxy): gaze error, generated vs reference"
    key, truth_key = "gaze_error", "gaze"


class ProbeEmotion(_ProbeMetric):
    """Emotion agreement (8 classes) read by the synthetic probe."""

    name = "probe_emotion"
    description = "synthetic probe (proxy): emotion accuracy (8 classes), generated vs reference"
    higher_is_better = True
    key, truth_key = "emotion_accuracy", "emotion"


class ProbeMouth(_ProbeMetric):
    """Correlation of the mouth opening read by the synthetic probe."""

    name = "probe_mouth"
    description = "synthetic probe (proxy): mouth-opening correlation, generated vs reference"
    higher_is_better = True
    key, truth_key = "mouth_corr", "mouth"


PROBE_METRICS: tuple[type[MetricPlugin], ...] = (ProbeHeadPose, ProbeBlink, ProbeGaze, ProbeEmotion, ProbeMouth)


# ---------------------------------------------------------------------------------------------
# command
# ---------------------------------------------------------------------------------------------
class ProbeCommand(Command):
    name = "probe"
    help = "train the synthetic control probe (a proxy metric model for synthetic faces) and report its held-out accuracy"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--out", required=True, help="where to save the probe (.pt); an existing file is only measured")
        d = ProbeTraining()  # slotted attrs class: defaults live on an instance, not on the class
        parser.add_argument("--identities", type=int, default=d.identities, help="training identities")
        parser.add_argument("--frames", type=int, default=d.frames_per_identity, help="frames per identity")
        parser.add_argument("--epochs", type=int, default=d.epochs, help="passes over the frames")
        parser.add_argument("--heldout", type=int, default=8, help="held-out identities to measure on")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--json", action="store_true", help="print the report as JSON")

    def run(self, args: argparse.Namespace) -> int:
        from eartalk.core.commands import print_json

        training = ProbeTraining(identities=args.identities, frames_per_identity=args.frames, epochs=args.epochs, seed=args.seed)
        probe, info = get_or_train_probe(args.out, training, args.heldout)
        if Path(args.out).is_file() and "heldout_accuracy" not in info:
            info["heldout_accuracy"] = evaluate_probe(probe, heldout_clips(args.heldout, 4.0))
        if args.json:
            print_json({"path": str(args.out), **info})
        else:
            print(f"probe: {args.out}")
            for key, value in info.get("heldout_accuracy", {}).items():
                print(f"  {key}: {value}")
        return 0


__all__ = [
    "PROBE_METRICS",
    "PROBE_WEIGHTS",
    "ProbeCommand",
    "ProbeTraining",
    "SyntheticProbe",
    "evaluate_probe",
    "get_or_train_probe",
    "heldout_clips",
    "load_probe",
    "reading_errors",
    "save_probe",
    "train_probe",
]
