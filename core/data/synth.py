"""Procedural talking heads with exact ground truth for every control.

``eartalk synth`` writes clips of a cartoon face that speaks synthetic, speech-like audio. Every
control the model can take is known exactly because the renderer is driven by it:

* **identity**: skin tone, face shape, hair colour and volume, eye spacing and size, iris, lip and
  brow colours, nose length, background colours, voice pitch (:class:`Identity`);
* **mouth**: opening and width follow the vowels of the synthesised audio (open vowels open the
  mouth, rounded vowels narrow it); silence means a closed mouth;
* **head pose**: yaw, pitch, roll rotate 3D feature points on a sphere before projection,
  translation moves and scales the head (columns of the ``head_pose`` plugin);
* **blink**: per-eye closure timeline; **gaze**: iris offsets per eye;
* **emotion**: one of the 8 MEAD emotions with intensity 1-3 moves brows, eye opening and mouth
  corners, per clip or per segment.

Conventions follow the built-in plugins (docs/data.md): yaw positive turns the face to image right,
pitch positive looks up, roll positive tilts clockwise in the image; ``left`` is the subject's
left eye (image right); gaze x positive is image right, y positive is up.

The renderer is vectorised over frames: every part is an anti-aliased ellipse (coverage from an
approximate signed distance), composited in painter's order, so 10 s at 128x128 takes about
1-3 s on one CPU core.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from eartalk.core.types import AUDIO_SAMPLE_RATE, VIDEO_FPS

#: MEAD emotions, in the order of the ``emotion`` plugin's index column.
EMOTIONS = ("angry", "contempt", "disgusted", "fear", "happy", "neutral", "sad", "surprised")

#: Vowels: formants F1-F3 (Hz), mouth opening and width in [0, 1] (textbook averages of adult speech).
VOWELS: dict[str, tuple[float, float, float, float, float]] = {
    "a": (800.0, 1200.0, 2500.0, 1.00, 0.60),
    "e": (500.0, 1900.0, 2550.0, 0.55, 0.75),
    "i": (300.0, 2300.0, 3000.0, 0.25, 0.95),
    "o": (500.0, 900.0, 2400.0, 0.70, 0.30),
    "u": (320.0, 800.0, 2300.0, 0.35, 0.10),
}
#: Mouth width at rest (no speech): the ``mouth`` width column in silence.
REST_WIDTH = 0.5

# Per emotion at full strength: brow raise, inner-brow raise, left corner lift, right corner lift,
# eye opening change, cheek blush. Positive = up / wider. "left" = subject's left (image right).
_EMOTION_TABLE = np.array(
    [
        # raise inner  c_left c_right  eye   blush
        [-0.6, -1.0, -0.35, -0.35, 0.10, 0.0],  # angry
        [0.0, 0.0, 0.70, -0.10, -0.15, 0.0],  # contempt (one-sided smirk)
        [-0.4, -0.6, -0.60, -0.60, -0.35, 0.0],  # disgusted
        [0.8, 0.9, -0.30, -0.30, 0.45, 0.0],  # fear
        [0.15, 0.0, 1.00, 1.00, -0.25, 1.0],  # happy
        [0.0, 0.0, 0.00, 0.00, 0.00, 0.0],  # neutral
        [0.0, 1.0, -0.85, -0.85, -0.20, 0.0],  # sad
        [1.0, 0.3, 0.00, 0.00, 0.55, 0.0],  # surprised
    ],
    dtype=np.float32,
)

#: Names of the 2D keypoints stored in the ``keypoints`` extra array (image coordinates in [0, 1]).
KEYPOINTS = ("head", "left_eye", "right_eye", "nose", "mouth", "mouth_left", "mouth_right")

_SKIN = np.array(
    [[0.98, 0.87, 0.78], [0.93, 0.76, 0.64], [0.84, 0.64, 0.50], [0.70, 0.50, 0.36], [0.52, 0.36, 0.25], [0.36, 0.24, 0.17]],
    dtype=np.float32,
)
_HAIR = np.array(
    [[0.08, 0.06, 0.05], [0.30, 0.19, 0.10], [0.85, 0.70, 0.40], [0.62, 0.25, 0.10], [0.70, 0.70, 0.70], [0.20, 0.12, 0.08]],
    dtype=np.float32,
)
_IRIS = np.array([[0.35, 0.20, 0.10], [0.25, 0.45, 0.75], [0.30, 0.55, 0.30], [0.50, 0.40, 0.20], [0.12, 0.08, 0.06]], dtype=np.float32)

#: Colour of the inside of an open mouth and of the teeth (fixed, so tests can count these pixels).
MOUTH_INNER = (0.42, 0.05, 0.09)
TEETH = (0.96, 0.96, 0.93)
SCLERA = (0.97, 0.97, 0.97)

HEAD_RADIUS_CM = 9.0  # canonical head radius; head_pose translations are in cm like MediaPipe's
_FOCAL = 1.14  # focal length in units of the image side: a head at tz=-30 cm spans ~60% of the frame
_DEFAULT_TZ = -30.0  # about what MediaPipe reports for a face filling a crop


@attrs.define
class Identity:
    """Appearance and voice of one synthetic person (all colours RGB in [0, 1])."""

    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    hair_volume: float  # 0 = close crop, 1 = big hair
    hairline: float  # head-radius units above the eyes where hair starts
    face_width: float  # head ellipse half-width, head-radius units
    face_height: float
    eye_spacing: float  # half distance between the eyes, head-radius units
    eye_size: float
    iris: tuple[float, float, float]
    lips: tuple[float, float, float]
    brows: tuple[float, float, float]
    brow_thickness: float
    nose_length: float
    background: tuple[float, float, float]
    background_bottom: tuple[float, float, float]
    clothes: tuple[float, float, float]
    f0: float  # voice pitch, Hz
    syllable_rate: float  # syllables per second

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Identity:
        """A random identity."""

        def jitter(colour: np.ndarray, amount: float) -> tuple[float, float, float]:
            return tuple(float(c) for c in np.clip(colour + rng.normal(0, amount, 3), 0, 1))

        skin = _SKIN[rng.integers(len(_SKIN))]
        hair = _HAIR[rng.integers(len(_HAIR))]
        background = rng.uniform(0.1, 0.9, 3).astype(np.float32)
        return cls(
            skin=jitter(skin, 0.03),
            hair=jitter(hair, 0.03),
            hair_volume=float(rng.uniform(0.0, 1.0)),
            hairline=float(rng.uniform(0.45, 0.65)),
            face_width=float(rng.uniform(0.78, 0.92)),
            face_height=float(rng.uniform(1.0, 1.15)),
            eye_spacing=float(rng.uniform(0.30, 0.40)),
            eye_size=float(rng.uniform(0.85, 1.15)),
            iris=jitter(_IRIS[rng.integers(len(_IRIS))], 0.03),
            lips=jitter(np.clip(skin * np.array([0.85, 0.55, 0.55]) + [0.12, 0.0, 0.02], 0, 1), 0.03),
            brows=jitter(hair * 0.8, 0.02),
            brow_thickness=float(rng.uniform(0.8, 1.4)),
            nose_length=float(rng.uniform(0.8, 1.2)),
            background=jitter(background, 0.0),
            background_bottom=jitter(background * rng.uniform(0.6, 1.0), 0.02),
            clothes=jitter(rng.uniform(0.05, 0.8, 3), 0.0),
            f0=float(rng.uniform(95.0, 230.0)),
            syllable_rate=float(rng.uniform(3.5, 5.0)),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (stored in the clip metadata under ``identity``)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in attrs.asdict(self).items()}


@attrs.define
class Controls:
    """Per-frame ground truth that drives the renderer (numpy float32, T frames).

    Attributes:
        head_pose: ``(T, 6)`` yaw, pitch, roll (degrees), tx, ty, tz (cm; tz negative, in front
            of the camera as in MediaPipe's transformation matrix; ty positive = up).
        blink: ``(T, 2)`` closure of the subject's left and right eye in [0, 1].
        gaze: ``(T, 4)`` left_x, left_y, right_x, right_y in [-1, 1] (x: image right, y: up).
        mouth: ``(T, 2)`` opening and width in [0, 1].
        emotion: ``(T, 2)`` MEAD emotion index and intensity (1-3).
    """

    head_pose: np.ndarray
    blink: np.ndarray
    gaze: np.ndarray
    mouth: np.ndarray
    emotion: np.ndarray

    @property
    def num_frames(self) -> int:
        return int(self.head_pose.shape[0])

    @classmethod
    def neutral(cls, num_frames: int) -> Controls:
        """Frontal head, open eyes looking ahead, closed mouth, neutral emotion (intensity 1)."""
        pose = np.zeros((num_frames, 6), np.float32)
        pose[:, 5] = _DEFAULT_TZ
        mouth = np.zeros((num_frames, 2), np.float32)
        mouth[:, 1] = REST_WIDTH
        emotion = np.zeros((num_frames, 2), np.float32)
        emotion[:, 0] = EMOTIONS.index("neutral")
        emotion[:, 1] = 1
        return cls(pose, np.zeros((num_frames, 2), np.float32), np.zeros((num_frames, 4), np.float32), mouth, emotion)


@attrs.define
class SynthClip:
    """One synthetic clip: frames, audio and its ground truth.

    Attributes:
        frames: ``(T, 3, R, R)`` uint8 RGB.
        audio: ``(T * 640,)`` float32 at 16 kHz.
        controls: the ground truth that drove the renderer.
        voice_activity: ``(T, 1)`` 1 in speech, 0 in pauses.
        keypoints: ``(T, K, 2)`` projected keypoints (:data:`KEYPOINTS`), x and y in [0, 1].
        metadata: identity, emotion labels, seed, syllable timeline.
    """

    frames: torch.Tensor
    audio: torch.Tensor
    controls: Controls
    voice_activity: np.ndarray
    keypoints: np.ndarray
    metadata: dict[str, Any]

    def signals(self) -> dict[str, np.ndarray]:
        """Ground-truth signals under the built-in plugins' names and column conventions."""
        return {
            "head_pose": self.controls.head_pose,
            "blink": self.controls.blink,
            "gaze": self.controls.gaze,
            "emotion": self.controls.emotion,
            "voice_activity": self.voice_activity,
        }


SIGNAL_COLUMNS = {
    "head_pose": ["yaw", "pitch", "roll", "tx", "ty", "tz"],
    "blink": ["left", "right"],
    "gaze": ["left_x", "left_y", "right_x", "right_y"],
    "emotion": ["emotion", "intensity"],
    "voice_activity": ["speaking"],
}
EXTRA_COLUMNS = {"mouth": ["opening", "width"], "keypoints": list(KEYPOINTS)}


# ---------------------------------------------------------------------------------------------
# Speech-like audio
# ---------------------------------------------------------------------------------------------
def _raised_cosine_envelope(n: int, attack: int, release: int) -> np.ndarray:
    env = np.ones(n, np.float32)
    attack, release = min(attack, n // 2), min(release, n // 2)
    if attack > 0:
        env[:attack] = 0.5 - 0.5 * np.cos(np.linspace(0, math.pi, attack, dtype=np.float32))
    if release > 0:
        env[n - release :] = 0.5 + 0.5 * np.cos(np.linspace(0, math.pi, release, dtype=np.float32))
    return env


def synthesize_speech(
    num_frames: int, identity: Identity, rng: np.random.Generator, sample_rate: int = AUDIO_SAMPLE_RATE
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Speech-like audio: phrases of formant-synthesised syllables separated by pauses.

    A glottal pulse train (F0 contour with declination and vibrato-like drift) is synthesised
    additively, harmonic by harmonic, with amplitudes shaped by the current vowel's three
    formant resonances; half of the syllables start with a short fricative noise burst.

    Args:
        num_frames: clip length in video frames (audio has ``num_frames * 640`` samples).
        identity: gives the voice pitch and speaking rate.
        rng: random generator.
        sample_rate: audio rate (16 kHz).

    Returns:
        ``audio (S,)`` float32, ``mouth (T, 2)`` opening/width, ``voice_activity (T, 1)`` and the
        syllable list (``start``/``stop`` in seconds, ``vowel``).
    """
    hop = sample_rate // VIDEO_FPS
    total = num_frames * hop
    seconds = total / sample_rate
    # Timeline: lead-in silence, then phrases (1-3 s of syllables) separated by pauses.
    syllables: list[dict[str, Any]] = []
    phrases: list[tuple[float, float]] = []
    t = float(rng.uniform(0.15, 0.5))
    while t < seconds - 0.25:
        phrase_end = min(t + float(rng.uniform(1.0, 3.0)), seconds - 0.1)
        start = t
        while t < phrase_end - 0.1:
            dur = float(rng.uniform(0.6, 1.4)) / identity.syllable_rate
            stop = min(t + dur, phrase_end)
            syllables.append({"start": round(t, 4), "stop": round(stop, 4), "vowel": str(rng.choice(list(VOWELS))),
                              "stress": round(float(rng.uniform(0.6, 1.0)), 3), "onset": bool(rng.random() < 0.5)})
            t = stop + float(rng.uniform(0.015, 0.05))  # brief closure between syllables
        phrases.append((start, min(t, seconds)))
        t += float(rng.uniform(0.35, 0.9))  # pause

    env = np.zeros(total, np.float32)  # vowel envelope (shape 0..1, no stress): drives the mouth
    amp = np.zeros(total, np.float32)  # loudness envelope of the voiced source
    formants = np.zeros((3, total), np.float32)
    opening = np.zeros(total, np.float32)
    width = np.full(total, REST_WIDTH, np.float32)
    noise = np.zeros(total, np.float32)
    last = VOWELS["e"]
    for syl in syllables:
        a, b = int(syl["start"] * sample_rate), min(int(syl["stop"] * sample_rate), total)
        if b - a < 8:
            continue
        f1, f2, f3, open_, wide = VOWELS[syl["vowel"]]
        shape = _raised_cosine_envelope(b - a, int(0.03 * sample_rate), int(0.05 * sample_rate))
        env[a:b] = shape
        amp[a:b] = shape * syl["stress"]
        formants[:, a:b] = np.array([[f1], [f2], [f3]], np.float32)
        opening[a:b] = shape * open_
        width[a:b] = REST_WIDTH + (wide - REST_WIDTH) * shape
        last = VOWELS[syl["vowel"]]
        if syl["onset"]:  # fricative burst at the onset (mouth nearly closed while it sounds)
            n = min(int(rng.uniform(0.03, 0.06) * sample_rate), b - a)
            burst = rng.standard_normal(n).astype(np.float32)
            burst = np.diff(burst, prepend=0.0).astype(np.float32) * 0.08  # high-passed hiss
            noise[a : a + n] += burst * _raised_cosine_envelope(n, n // 3, n // 3)
    # Formants glide between syllables (coarticulation): fill gaps with the last value, smooth 20 ms.
    for k in range(3):
        row = formants[k]
        filled = np.where(row > 0, row, np.nan)
        idx = np.where(~np.isnan(filled), np.arange(total), 0)
        np.maximum.accumulate(idx, out=idx)
        row = filled[idx]
        row[np.isnan(row)] = last[k]
        kernel = np.ones(int(0.02 * sample_rate), np.float32)
        kernel /= kernel.sum()
        formants[k] = np.convolve(row, kernel, mode="same")

    # F0: declination over each phrase plus slow drift and jitter.
    time = np.arange(total, dtype=np.float32) / sample_rate
    f0 = identity.f0 * (1.0 + 0.06 * np.sin(2 * math.pi * 0.7 * time + rng.uniform(0, 6.28)))
    for start, stop in phrases:
        a, b = int(start * sample_rate), min(int(stop * sample_rate), total)
        f0[a:b] *= np.linspace(1.1, 0.9, b - a, dtype=np.float32)
    phase = 2 * math.pi * np.cumsum(f0) / sample_rate  # (S,)
    voiced = np.zeros(total, np.float32)
    bandwidths = np.array([90.0, 110.0, 170.0], np.float32)[:, None]
    gains = np.array([1.0, 0.6, 0.3], np.float32)[:, None]
    active = amp > 0
    ph, fr, f0a = phase[active], formants[:, active], f0[active]
    out = np.zeros(ph.shape[0], np.float32)
    max_harmonic = int(5000 / identity.f0 / 0.9)
    for k in range(1, max_harmonic + 1):
        freq = k * f0a
        resonance = (gains / (1.0 + ((freq - fr) / bandwidths) ** 2)).sum(axis=0)
        tilt = 1.0 / (1.0 + freq / 1500.0)
        out += (resonance * tilt * (freq < sample_rate / 2 - 500)) * np.sin(k * ph)
    voiced[active] = out
    peak = np.abs(voiced).max() if active.any() else 1.0
    audio = 0.6 * voiced / max(peak, 1e-6) * amp + noise
    audio += rng.standard_normal(total).astype(np.float32) * 1e-4  # recording noise floor
    audio = np.clip(audio, -1.0, 1.0).astype(np.float32)

    # Per-frame ground truth: the mouth at the frame's centre sample; speech where a phrase runs.
    centres = np.arange(num_frames) * hop + hop // 2
    mouth = np.stack([opening[centres], width[centres]], axis=1).astype(np.float32)
    speaking = np.zeros(total, bool)
    for start, stop in phrases:
        speaking[int(start * sample_rate) : int(stop * sample_rate)] = True
    vad = speaking.reshape(num_frames, hop).mean(axis=1, keepdims=True) >= 0.5
    return audio, mouth, vad.astype(np.float32), syllables


# ---------------------------------------------------------------------------------------------
# Control timelines
# ---------------------------------------------------------------------------------------------
#: Slowest head-rotation component (Hz); ``motion_hz``, the fastest, must exceed it.
MIN_MOTION_HZ = 0.05


def _smooth_motion(num_frames: int, rng: np.random.Generator, amplitude: float, max_hz: float = 0.4) -> np.ndarray:
    """Sum of three random low-frequency sinusoids, scaled to peak ``amplitude``."""
    t = np.arange(num_frames, dtype=np.float32) / VIDEO_FPS
    out = np.zeros(num_frames, np.float32)
    for _ in range(3):
        out += np.sin(2 * math.pi * rng.uniform(MIN_MOTION_HZ, max_hz) * t + rng.uniform(0, 2 * math.pi)) * rng.uniform(0.3, 1.0)
    return (out / 2.0 * amplitude).astype(np.float32)


def _blinks(num_frames: int, rng: np.random.Generator) -> np.ndarray:
    """Per-eye closure (T, 2): blinks every ~1-5 s (fast close, slower open), one in ten a wink."""
    profile = np.array([0.35, 0.8, 1.0, 0.9, 0.6, 0.3, 0.1], np.float32)
    closure = np.zeros((num_frames, 2), np.float32)
    t = int(rng.uniform(0.3, 2.0) * VIDEO_FPS)
    while t < num_frames:
        n = min(len(profile), num_frames - t)
        eyes = [0, 1] if rng.random() > 0.1 else [int(rng.integers(2))]
        closure[t : t + n, eyes] = profile[:n, None]
        t += len(profile) + int(rng.uniform(1.0, 4.5) * VIDEO_FPS)
    return closure


def _gaze(num_frames: int, rng: np.random.Generator) -> np.ndarray:
    """Fixations of 0.5-2 s joined by 2-frame saccades; both eyes look the same way."""
    gaze = np.zeros((num_frames, 2), np.float32)
    t, current = 0, np.zeros(2, np.float32)
    while t < num_frames:
        target = np.zeros(2, np.float32) if rng.random() < 0.4 else rng.uniform(-0.7, 0.7, 2).astype(np.float32)
        for k, w in enumerate((0.5, 1.0)):
            if t + k < num_frames:
                gaze[t + k] = current + (target - current) * w
        dur = int(rng.uniform(0.5, 2.0) * VIDEO_FPS)
        gaze[t + 2 : t + dur] = target
        current, t = target, t + dur
    return np.concatenate([gaze, gaze], axis=1)  # left_x, left_y, right_x, right_y


def _emotions(num_frames: int, rng: np.random.Generator, segments: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """(T, 2) emotion index + intensity, constant per segment."""
    bounds = np.linspace(0, num_frames, segments + 1).round().astype(int)
    out = np.zeros((num_frames, 2), np.float32)
    parts = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        index, intensity = int(rng.integers(len(EMOTIONS))), int(rng.integers(1, 4))
        out[a:b] = (index, intensity)
        parts.append({"start": int(a), "stop": int(b), "emotion": EMOTIONS[index], "intensity": intensity})
    return out, parts


def sample_controls(
    num_frames: int, rng: np.random.Generator, mouth: np.ndarray, emotion_segments: int = 1, motion_hz: float = 0.4
) -> tuple[Controls, list[dict[str, Any]]]:
    """Random, natural-looking control timelines around a given mouth track.

    ``motion_hz`` is the highest frequency of the head rotations (0.4 Hz: a calm speaker; training
    clips of 1-2 s need faster motion to cover the poses a long stream visits).
    """
    pose = np.stack(
        [
            _smooth_motion(num_frames, rng, 22.0, motion_hz),  # yaw
            _smooth_motion(num_frames, rng, 12.0, motion_hz),  # pitch
            _smooth_motion(num_frames, rng, 8.0, motion_hz),  # roll
            _smooth_motion(num_frames, rng, 1.2, 0.2),  # tx
            _smooth_motion(num_frames, rng, 0.8, 0.2),  # ty
            _DEFAULT_TZ + _smooth_motion(num_frames, rng, 2.0, 0.2),  # tz
        ],
        axis=1,
    )
    emotion, parts = _emotions(num_frames, rng, max(1, emotion_segments))
    return Controls(pose, _blinks(num_frames, rng), _gaze(num_frames, rng), mouth, emotion), parts


# ---------------------------------------------------------------------------------------------
# Renderer
# ---------------------------------------------------------------------------------------------
def _rotation(yaw: torch.Tensor, pitch: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """(T, 3, 3) rotations in image-aligned axes (x right, y down, z toward the camera).

    Yaw turns +z toward +x (the face turns to image right), pitch turns +z toward -y (looks up),
    roll turns +x toward +y (clockwise in the image). ``R = R_yaw @ R_pitch @ R_roll``: the same
    composition the ``head_pose`` plugin decomposes MediaPipe's matrices with, so re-extracted
    angles match the commanded ones also when several are non-zero.
    """
    y, p, r = (torch.deg2rad(a) for a in (yaw, pitch, roll))
    one, zero = torch.ones_like(y), torch.zeros_like(y)
    ry = torch.stack([torch.cos(y), zero, torch.sin(y), zero, one, zero, -torch.sin(y), zero, torch.cos(y)], -1)
    rp = torch.stack([one, zero, zero, zero, torch.cos(p), -torch.sin(p), zero, torch.sin(p), torch.cos(p)], -1)
    rr = torch.stack([torch.cos(r), -torch.sin(r), zero, torch.sin(r), torch.cos(r), zero, zero, zero, one], -1)
    shape = (-1, 3, 3)
    return ry.reshape(shape) @ rp.reshape(shape) @ rr.reshape(shape)


def _coverage(
    X: torch.Tensor, Y: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, ax: torch.Tensor, ay: torch.Tensor,
    angle: torch.Tensor, warp: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Anti-aliased coverage (T, H, W) in [0, 1] of rotated ellipses, all in pixels.

    ``(cx, cy, ax, ay, angle)`` are ``(T,)``; ``angle`` in radians, clockwise in the image.
    ``warp(u)`` shifts the ellipse's local v coordinate (curved mouths). Coverage is
    ``clamp(0.5 - d)`` of a first-order signed distance ``d = (q - 1) / |grad q|``.
    """
    c, s = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    dx, dy = X - cx[:, None, None], Y - cy[:, None, None]  # (T, H, W)
    u = dx * c + dy * s
    v = -dx * s + dy * c
    if warp is not None:
        v = v + warp(u)
    # Sub-pixel axes: draw a half-pixel ellipse and fade it by the missing area, so that a
    # zero-height ellipse (a closed mouth's inside) covers nothing.
    fade = ((ax / 0.5).clamp(0, 1) * (ay / 0.5).clamp(0, 1))[:, None, None]
    ax = ax.clamp_min(0.5)[:, None, None]
    ay = ay.clamp_min(0.5)[:, None, None]
    q = torch.sqrt((u / ax) ** 2 + (v / ay) ** 2) + 1e-6
    grad = torch.sqrt((u / ax**2) ** 2 + (v / ay**2) ** 2) / q + 1e-6
    return (0.5 - (q - 1.0) / grad).clamp(0.0, 1.0) * fade


def _paint(image: torch.Tensor, alpha: torch.Tensor, colour: Any) -> None:
    """In place: ``image (T, 3, H, W) <- mix(image, colour, alpha (T, H, W))``."""
    col = torch.as_tensor(colour, dtype=image.dtype)
    col = col.reshape(-1, 3, 1, 1) if col.dim() == 2 else col.reshape(1, 3, 1, 1)
    image.add_(alpha[:, None] * (col - image))


def _emotion_params(emotion: np.ndarray) -> np.ndarray:
    """(T, 6) renderer parameters from (T, 2) emotion index + intensity (strength 0.4/0.7/1.0)."""
    index = np.clip(np.nan_to_num(emotion[:, 0], nan=5).round().astype(int), 0, len(EMOTIONS) - 1)
    strength = 0.1 + 0.3 * np.clip(np.nan_to_num(emotion[:, 1], nan=1.0), 1, 3)
    return _EMOTION_TABLE[index] * strength[:, None].astype(np.float32)


def render_frames(
    identity: Identity, controls: Controls, resolution: int, chunk: int = 32, threads: int | None = 1
) -> tuple[torch.Tensor, np.ndarray]:
    """Render the talking head for every frame of ``controls``.

    Args:
        identity: appearance.
        controls: per-frame ground truth (see :class:`Controls`).
        resolution: output side R in pixels.
        chunk: frames rendered at once (bounds memory to ~``chunk * R * R * 40`` bytes; small
            chunks stay in cache).
        threads: torch intra-op threads while rendering (restored after). The element-wise
            operations are small, so one thread is fastest and immune to busy machines; render
            several clips in parallel processes instead. None keeps torch's setting.

    Returns:
        ``frames (T, 3, R, R)`` uint8 and ``keypoints (T, K, 2)`` (:data:`KEYPOINTS`, in [0, 1]).
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        frames, points = [], []
        for a in range(0, controls.num_frames, chunk):
            b = min(a + chunk, controls.num_frames)
            part = Controls(*(np.asarray(getattr(controls, f.name)[a:b], np.float32) for f in attrs.fields(Controls)))
            f, p = _render_chunk(identity, part, resolution)
            frames.append(f)
            points.append(p)
    finally:
        torch.set_num_threads(previous)
    return torch.cat(frames), np.concatenate(points)


def _render_chunk(identity: Identity, controls: Controls, resolution: int) -> tuple[torch.Tensor, np.ndarray]:
    R = resolution
    T = controls.num_frames

    def tt(array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array, np.float32))

    pose = tt(controls.head_pose)  # (T, 6)
    blink = tt(controls.blink).clamp(0, 1)  # (T, 2)
    gaze = tt(controls.gaze).clamp(-1, 1)  # (T, 4)
    mouth = tt(controls.mouth).clamp(0, 1)  # (T, 2)
    emo = tt(_emotion_params(controls.emotion))  # (T, 6)
    raise_, inner, c_left, c_right, eye_open, blush = emo.unbind(-1)

    rot = _rotation(pose[:, 0], pose[:, 1], pose[:, 2])  # (T, 3, 3)
    tz = pose[:, 5].clamp(max=-5.0)
    scale = _FOCAL * R * HEAD_RADIUS_CM / (-tz)  # pixels per head radius, (T,)
    px_per_cm = _FOCAL * R / (-tz)
    centre_x = R / 2 + pose[:, 3] * px_per_cm
    centre_y = R * 0.5 - pose[:, 4] * px_per_cm  # ty positive = up
    roll = torch.deg2rad(pose[:, 2])

    def project(point: tuple[float, float, float] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image x, y (pixels) and camera-facing z of a canonical point (head-radius units)."""
        p = torch.as_tensor(point, dtype=torch.float32)
        p = p.expand(T, 3) if p.dim() == 1 else p
        q = torch.einsum("tij,tj->ti", rot, p)  # (T, 3)
        return centre_x + scale * q[:, 0], centre_y + scale * q[:, 1], q[:, 2]

    def on_sphere(x: float, y: float, depth: float = 1.0) -> tuple[float, float, float]:
        return (x, y, depth * math.sqrt(max(1.0 - x * x - y * y, 0.05)))

    def foreshorten(point: tuple[float, float, float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Horizontal and vertical squash (T,) of a surface feature, and its visibility (T, 1, 1)."""
        n = torch.as_tensor(point, dtype=torch.float32)
        n = n / n.norm()
        m = torch.einsum("tij,j->ti", rot, n)
        sx = torch.sqrt((1 - m[:, 0] ** 2).clamp_min(0.04) / max(1 - float(n[0]) ** 2, 0.04))
        sy = torch.sqrt((1 - m[:, 1] ** 2).clamp_min(0.04) / max(1 - float(n[1]) ** 2, 0.04))
        visible = (m[:, 2] * 6).clamp(0, 1)[:, None, None]  # (T, 1, 1), multiplies coverages
        return sx.clamp(0.2, 1.3), sy.clamp(0.2, 1.3), visible

    coords = (torch.arange(R, dtype=torch.float32) + 0.5)
    Y, X = coords[None, :, None], coords[None, None, :]  # (1, R, 1), (1, 1, R)
    image = torch.empty(T, 3, R, R)
    top, bottom = torch.tensor(identity.background), torch.tensor(identity.background_bottom)
    ramp = torch.linspace(0, 1, R)[None, :, None]  # (1, R, 1)
    image[:] = (top[:, None, None] * (1 - ramp) + bottom[:, None, None] * ramp)[None]
    upright = torch.zeros(T)  # angle of parts that do not roll with the head
    skin = torch.tensor(identity.skin)
    shade = skin * 0.82
    fw, fh = identity.face_width, identity.face_height

    # Neck and shoulders (move with translation only).
    _paint(image, _coverage(X, Y, centre_x, centre_y + scale * 1.25, scale * 0.42, scale * 0.6, upright), shade)
    _paint(image, _coverage(X, Y, centre_x, centre_y + scale * 2.35, scale * 1.6, scale * 0.8, upright), identity.clothes)
    # Hair behind the head (a point behind the head centre: moves opposite to the face under yaw).
    hx, hy, _ = project((0.0, -0.15 - 0.1 * identity.hair_volume, -0.35))
    hair_r = scale * (1.02 + 0.25 * identity.hair_volume)
    _paint(image, _coverage(X, Y, hx, hy, hair_r * fw * 1.05, hair_r * (fh + 0.1 * identity.hair_volume), roll), identity.hair)
    # Ears.
    for side in (-1.0, 1.0):
        ex, ey, _ = project((side * fw * 0.98, 0.02, 0.0))
        _paint(image, _coverage(X, Y, ex, ey, scale * 0.14, scale * 0.22, roll), shade)
    # Head.
    head_x, head_y, _ = project((0.0, 0.05, 0.0))
    # Hair covers the head above a hairline that follows pitch and roll.
    head = _coverage(X, Y, head_x, head_y, scale * fw, scale * fh, roll)
    lx, ly, _ = project(on_sphere(0.0, -identity.hairline))
    c, s = torch.cos(roll)[:, None, None], torch.sin(roll)[:, None, None]
    along = -(X - lx[:, None, None]) * s + (Y - ly[:, None, None]) * c  # head-local "down" distance
    hair_part = (0.5 - along).clamp(0, 1)[:, None]  # (T, 1, H, W)
    hair_col = torch.tensor(identity.hair)[None, :, None, None]
    colour = skin[None, :, None, None] + hair_part * (hair_col - skin[None, :, None, None])  # (T, 3, H, W)
    image.add_(head[:, None] * (colour - image))

    # Cheek blush (happy).
    for side in (-1.0, 1.0):
        point = on_sphere(side * 0.5, 0.22)
        bx, by, _ = project(point)
        sx, sy, vis = foreshorten(point)
        _paint(image, _coverage(X, Y, bx, by, scale * 0.16 * sx, scale * 0.09 * sy, roll) * vis * blush[:, None, None] * 0.35, (0.9, 0.35, 0.35))

    # Eyes: index 0 = subject's left (image right, +x), 1 = subject's right.
    eye_points = []
    for i, side in enumerate((1.0, -1.0)):
        point = on_sphere(side * identity.eye_spacing, -0.12)
        ex, ey, _ = project(point)
        sx, sy, vis = foreshorten(point)
        eye_points.append((ex, ey))
        half_w = scale * 0.17 * identity.eye_size * sx
        half_h = scale * 0.1 * identity.eye_size * sy * (1 + 0.5 * eye_open) * (1 - blink[:, i])
        sclera = _coverage(X, Y, ex, ey, half_w, half_h, roll) * vis
        _paint(image, sclera, SCLERA)
        # Iris: offset by gaze (x right, y up) in eye-local axes, clipped to the visible sclera.
        gx, gy = gaze[:, 2 * i] * 0.55 * half_w, -gaze[:, 2 * i + 1] * 0.6 * scale * 0.1 * identity.eye_size * sy
        ix = ex + gx * torch.cos(roll) - gy * torch.sin(roll)
        iy = ey + gx * torch.sin(roll) + gy * torch.cos(roll)
        iris_r = scale * 0.07 * identity.eye_size
        _paint(image, _coverage(X, Y, ix, iy, iris_r * sx, iris_r, roll) * sclera, identity.iris)
        _paint(image, _coverage(X, Y, ix, iy, iris_r * 0.45 * sx, iris_r * 0.45, roll) * sclera, (0.03, 0.03, 0.03))
        # Upper lid line, stronger as the eye closes.
        lid = _coverage(X, Y, ex, ey - half_h, half_w * 1.05, (scale * 0.012 + 0.5), roll) * vis
        _paint(image, lid, (0.15, 0.1, 0.08))
        # Eyebrow: raised by `raise`, inner end up by `inner` (inner end faces the nose).
        bpoint = on_sphere(side * identity.eye_spacing, -0.3)
        bx, by, _ = project(bpoint)
        bsx, bsy, bvis = foreshorten(bpoint)
        by = by - scale * 0.08 * raise_
        tilt = roll + side * 0.35 * inner
        brow = _coverage(X, Y, bx, by, scale * 0.19 * bsx, scale * 0.035 * identity.brow_thickness * bsy, tilt) * bvis
        _paint(image, brow, identity.brows)

    # Nose: shading and nostrils.
    npoint = on_sphere(0.0, 0.12 * identity.nose_length, 1.12)
    nx, ny, _ = project(npoint)
    nsx, nsy, nvis = foreshorten(npoint)
    _paint(image, _coverage(X, Y, nx, ny, scale * 0.07 * nsx, scale * 0.13 * identity.nose_length * nsy, roll) * nvis * 0.6, shade)
    for side in (-1.0, 1.0):
        sp = on_sphere(side * 0.05, 0.2 * identity.nose_length, 1.1)
        sx_, sy_, _ = project(sp)
        _paint(image, _coverage(X, Y, sx_, sy_, scale * 0.028 * nsx, scale * 0.018 * nsy, roll) * nvis, skin * 0.45)

    # Mouth: lips, dark inside and upper teeth; opening/width from speech, corners from emotion.
    mpoint = on_sphere(0.0, 0.5)
    mx, my, _ = project(mpoint)
    msx, msy, mvis = foreshorten(mpoint)
    opening, wide = mouth[:, 0], mouth[:, 1]
    half_w = scale * 0.2 * (0.75 + 0.5 * wide) * msx  # (T,)
    inner_h = scale * 0.2 * opening * msy
    lip_h = scale * 0.045 * msy + inner_h
    lift_l, lift_r = (c_left * scale * 0.14)[:, None, None], (c_right * scale * 0.14)[:, None, None]
    hw = half_w[:, None, None]

    def corners(u: torch.Tensor) -> torch.Tensor:
        lift = torch.where(u > 0, lift_l, lift_r)  # u > 0 is image right = subject's left
        return lift * (u / hw).clamp(-1.2, 1.2) ** 2

    lips = _coverage(X, Y, mx, my, half_w, lip_h, roll, corners) * mvis
    _paint(image, lips, identity.lips)
    inside = _coverage(X, Y, mx, my, half_w * 0.86, inner_h, roll, corners) * mvis
    _paint(image, inside, MOUTH_INNER)
    teeth = _coverage(X, Y, mx, my - inner_h * 0.75, half_w * 0.6, inner_h * 0.3, roll, corners) * inside
    _paint(image, teeth, TEETH)

    frames = (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    # Keypoints (pixels -> [0, 1]).
    c, s = torch.cos(roll), torch.sin(roll)
    corner_l = (mx + half_w * c, my + half_w * s)
    corner_r = (mx - half_w * c, my - half_w * s)
    pts = [(head_x, head_y), eye_points[0], eye_points[1], (nx, ny), (mx, my), corner_l, corner_r]
    keypoints = torch.stack([torch.stack(p, -1) for p in pts], 1) / R  # (T, K, 2)
    return frames, keypoints.numpy().astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Clips and datasets
# ---------------------------------------------------------------------------------------------
def _clip_seed(seed: int, index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"eartalk-synth:{seed}:{index}".encode()).digest()[:8], "little")


def synthesize_clip(seed: int, seconds: float = 4.0, resolution: int = 128, emotion_segments: int = 1,
                    motion_hz: float = 0.4) -> SynthClip:
    """One random synthetic clip with its ground truth.

    Args:
        seed: fully determines the clip (with ``motion_hz``: the identity and voice do not depend on it).
        seconds: length (rounded to whole frames at 25 fps).
        resolution: frame side R.
        emotion_segments: number of equal segments with their own emotion (1 = per clip).
        motion_hz: highest frequency of the head rotations.
    """
    rng = np.random.default_rng(seed)
    num_frames = max(1, round(seconds * VIDEO_FPS))
    identity = Identity.sample(rng)
    audio, mouth, vad, syllables = synthesize_speech(num_frames, identity, rng)
    controls, parts = sample_controls(num_frames, rng, mouth, emotion_segments, motion_hz)
    frames, keypoints = render_frames(identity, controls, resolution)
    main = max(parts, key=lambda p: p["stop"] - p["start"])
    metadata = {
        "synthetic": True,
        "seed": int(seed),
        "identity": identity.to_dict(),
        "emotion": main["emotion"],
        "intensity": main["intensity"],
        "emotion_segments": parts,
        "syllables": syllables,
    }
    return SynthClip(frames, torch.from_numpy(audio), controls, vad, keypoints, metadata)


def synthesize_dataset(
    out: str | Path,
    clips: int = 8,
    seconds: float = 4.0,
    resolution: int = 128,
    seed: int = 0,
    *,
    emotion_segments: int = 1,
    motion_hz: float = 0.4,
    progress: bool = False,
) -> Path:
    """Write ``clips`` synthetic clips to a dataset at ``out`` (the format ``prepare`` writes).

    Clip ids are ``synth-<seed>-<index>``; clips already in the dataset are kept (resumable), so
    calling this again with more clips only adds the missing ones.

    Args:
        out: dataset directory (created).
        clips: number of clips.
        seconds: length of each clip.
        resolution: frame side R.
        seed: base seed; clip ``i`` uses a seed derived from ``(seed, i)``.
        emotion_segments: emotions per clip (1 = one emotion for the whole clip).
        motion_hz: highest frequency of the head rotations (Hz).
        progress: show a rich progress bar.

    Returns:
        The dataset directory.
    """
    from eartalk.core.data.dataset import DatasetWriter

    root = Path(out)
    progress_bar = None
    if progress:
        from rich.progress import Progress

        progress_bar = Progress(transient=False)
        progress_bar.start()
        task = progress_bar.add_task("synthesising clips", total=clips)
    try:
        with DatasetWriter(root, resolution) as writer:
            for i in range(clips):
                clip_id = f"synth-{seed}-{i:05d}"
                if not writer.has(clip_id):
                    clip = synthesize_clip(_clip_seed(seed, i), seconds, resolution, emotion_segments, motion_hz)
                    writer.add(
                        clip_id,
                        clip.frames,
                        clip.audio,
                        face=None,
                        metadata=clip.metadata,
                        signals=clip.signals(),
                        source=f"synth:seed={seed}:clip={i}",
                        columns=SIGNAL_COLUMNS,
                        extras={"mouth": clip.controls.mouth, "keypoints": clip.keypoints},
                    )
                if progress_bar is not None:
                    progress_bar.advance(task)
    finally:
        if progress_bar is not None:
            progress_bar.stop()
    return root


__all__ = [
    "EMOTIONS",
    "KEYPOINTS",
    "SIGNAL_COLUMNS",
    "VOWELS",
    "Controls",
    "Identity",
    "SynthClip",
    "render_frames",
    "sample_controls",
    "synthesize_clip",
    "synthesize_dataset",
    "synthesize_speech",
]
