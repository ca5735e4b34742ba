"""``voice_activity``: is the subject speaking at each frame (column ``speaking`` in [0, 1]).

It tells speaking from listening, so a model can keep a closed, calm mouth in silence. Which
detector runs:

* option ``checkpoint`` set: a pyannote.audio segmentation model loaded from that local checkpoint
  (e.g. ``pytorch_model.bin`` of a PyanNet segmentation model). The audio is cut into chunks of the
  model's training duration; ``speaking`` is the model's speech probability averaged over each
  video frame (multi-label models: the largest speaker/speech score; powerset models: one minus the
  probability of the "nobody speaks" class).
* otherwise (default): an energy detector with hysteresis. A frame's level is the RMS of its 640
  samples in dBFS. Speech starts when the level rises above ``on_db`` (and ``margin_db`` above the
  clip's noise floor, its 10th-percentile level) and stops once it falls below ``off_db`` for more
  than ``hangover`` frames. The output is 0 or 1.

Digital silence (or no audio track) gives 0 on every frame with either detector's energy gate:
frames quieter than ``silence_db`` are always 0.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import attrs
import numpy as np
import torch

from eartalk.core.errors import ConfigError, InputError
from eartalk.core.protocol import Column, ConditionPlugin
from eartalk.core.types import AUDIO_SAMPLE_RATE, SAMPLES_PER_FRAME, Sample
from eartalk.plugins.base import FrameMLP, load_pyannote_model, non_negative, positive

LABELS = {"speaking": 1.0, "talking": 1.0, "silent": 0.0, "listening": 0.0, "idle": 0.0}


@attrs.frozen
class VoiceActivityOptions:
    """Options of ``voice_activity``.

    Attributes:
        checkpoint: local pyannote.audio segmentation model checkpoint; None uses the energy detector.
        on_db: energy detector: level (dBFS) above which speech starts.
        off_db: energy detector: level (dBFS) below which speech may stop (hysteresis, < ``on_db``).
        margin_db: energy detector: speech must also be this far above the clip's noise floor.
        hangover: energy detector: frames speech is held after the level drops (bridges short pauses).
        silence_db: frames quieter than this are never speech (both detectors).
        slots: FCIC slots per frame.
        hidden: hidden width of the tokenizer MLP.
    """

    checkpoint: str | None = None
    on_db: float = -40.0
    off_db: float = -50.0
    margin_db: float = 10.0
    hangover: int = attrs.field(default=4, validator=non_negative)
    silence_db: float = -70.0
    slots: int = attrs.field(default=1, validator=positive)
    hidden: int = attrs.field(default=32, validator=positive)

    def __attrs_post_init__(self) -> None:
        if self.off_db > self.on_db:
            raise ConfigError(f"voice_activity: off_db ({self.off_db}) must not exceed on_db ({self.on_db})")


def frame_levels(audio: torch.Tensor, num_frames: int) -> np.ndarray:
    """``(T,)`` RMS level of each frame's 640 samples in dBFS (missing samples count as silence)."""
    want = num_frames * SAMPLES_PER_FRAME
    wave = audio.reshape(-1).double()[:want]
    if wave.shape[0] < want:
        wave = torch.cat([wave, wave.new_zeros(want - wave.shape[0])])
    rms = wave.reshape(num_frames, SAMPLES_PER_FRAME).pow(2).mean(dim=1).sqrt()
    return (20 * torch.log10(rms + 1e-10)).numpy()


class _Hysteresis:
    """The energy detector's state machine, one frame level (dBFS) at a time."""

    def __init__(self, options: VoiceActivityOptions) -> None:
        self.options, self.speaking, self.quiet_run = options, False, 0

    def step(self, level: float, floor: float) -> float:
        o = self.options
        on = max(o.on_db, floor + o.margin_db)
        off = min(max(o.off_db, floor + o.margin_db / 2), on)
        if level <= o.silence_db:
            self.speaking, self.quiet_run = False, 0
        elif not self.speaking and level >= on:
            self.speaking, self.quiet_run = True, 0
        elif self.speaking and level < off:
            self.quiet_run += 1
            if self.quiet_run > o.hangover:
                self.speaking, self.quiet_run = False, 0
        elif self.speaking:
            self.quiet_run = 0
        return float(self.speaking)


def energy_vad(levels: np.ndarray, options: VoiceActivityOptions) -> np.ndarray:
    """Hysteresis detector on frame levels (dBFS): ``(T,)`` of 0/1 (noise floor: the clip's 10th percentile)."""
    if levels.size == 0:
        return np.zeros(0, np.float32)
    floor = float(np.percentile(levels, 10))
    detector = _Hysteresis(options)
    return np.array([detector.step(float(level), floor) for level in levels], np.float32)


class VoiceActivityStream:
    """The energy detector frame by frame, for live audio (the server's microphone and listening mode).

    The noise floor is the 10th percentile of the last ``history`` frame levels (the offline
    detector uses the whole clip's), so a stream decides each frame from its past alone; during
    the first ``warmup`` frames there is no floor yet and the fixed ``on_db`` / ``off_db`` decide.

    Example::

        vad = plugin.live_detector()
        speaking = vad.push(samples_of_one_frame)  # 0.0 or 1.0
    """

    def __init__(self, options: VoiceActivityOptions, history: int = 250, warmup: int = 25) -> None:
        self.detector = _Hysteresis(options)
        self.levels: deque[float] = deque(maxlen=max(1, int(history)))
        self.warmup = int(warmup)

    def push(self, samples: np.ndarray | torch.Tensor) -> float:
        """``speaking`` (0 or 1) of one frame from its samples (16 kHz mono; 640 of them at 25 fps)."""
        wave = torch.as_tensor(np.asarray(samples, dtype=np.float64)).reshape(-1)
        level = float(frame_levels(wave, 1)[0]) if wave.numel() else -200.0
        self.levels.append(level)
        known = len(self.levels) >= min(self.warmup, self.levels.maxlen)
        floor = float(np.percentile(np.fromiter(self.levels, float), 10)) if known else -math.inf
        return self.detector.step(level, floor)


class VoiceActivity(ConditionPlugin):
    """Speaking (1) or not (0) per frame, from a pyannote segmentation model or an energy detector."""

    name = "voice_activity"
    description = "speaking or not per frame (pyannote segmentation checkpoint, else energy)"
    Options = VoiceActivityOptions
    requires = frozenset({"audio"})
    column_docs = (Column("speaking", "", (0, 1), "1 speaking, 0 silent or listening"),)
    labels = {"speaking": "1 (also: talking)", "silent": "0 (also: listening, idle)"}

    def __init__(self, d_model: int, options: VoiceActivityOptions | None = None) -> None:
        options = options or VoiceActivityOptions()
        super().__init__(d_model, options, slots=options.slots, signal_dim=1)
        self.columns = ["speaking"]
        self.tokenizer = FrameMLP(1, options.slots, d_model, options.hidden, offset=(0.5,), scale=(2.0,))
        # The segmentation model is a frozen signal extractor, not part of this plugin's weights:
        # it is kept out of the module tree (no parameters, no state_dict entries).
        model: Any = None
        if options.checkpoint is not None:
            model = load_pyannote_model(options.checkpoint, "voice_activity option 'checkpoint'").eval()
        object.__setattr__(self, "_segmentation", model)

    @property
    def detector(self) -> str:
        """``"pyannote"`` or ``"energy"``: which detector :meth:`extract` uses."""
        return "pyannote" if self._segmentation is not None else "energy"

    def extract(self, sample: Sample) -> torch.Tensor:
        frames = sample.num_frames
        if sample.audio is None:
            return torch.full((frames, 1), float("nan"))
        levels = frame_levels(sample.audio, frames)
        if self._segmentation is None:
            speaking = energy_vad(levels, self.options)
        else:
            speaking = self._pyannote_speech(sample.audio, frames)
        speaking = np.where(levels <= self.options.silence_db, 0.0, speaking)
        return torch.from_numpy(speaking.astype(np.float32))[:, None]

    def _pyannote_speech(self, audio: torch.Tensor, frames: int) -> np.ndarray:
        """Speech probability per video frame from the segmentation model."""
        model = self._segmentation
        specs = model.specifications
        specs = specs[0] if isinstance(specs, tuple) else specs
        chunk = int(round(float(specs.duration) * AUDIO_SAMPLE_RATE))
        want = frames * SAMPLES_PER_FRAME
        wave = audio.reshape(-1).float()[:want]
        total = max(want, 1)
        chunks = -(-total // chunk)
        padded = torch.zeros(chunks * chunk)
        padded[: wave.shape[0]] = wave
        with torch.inference_mode():
            out = model(padded.reshape(chunks, 1, chunk))  # (chunks, F, classes)
        if getattr(specs, "powerset", False):
            speech = 1.0 - out.exp()[..., 0]  # log-probabilities; class 0 = nobody speaks
        else:
            speech = out.max(dim=-1).values  # sigmoid scores per speaker / class
        per_chunk = speech.shape[1]
        scores = speech.reshape(-1).double().numpy()  # (chunks * F,)
        centers = (np.arange(scores.shape[0]) + 0.5) * (chunk / per_chunk)  # sample index of each model frame
        frame_centers = (np.arange(frames) + 0.5) * SAMPLES_PER_FRAME
        return np.clip(np.interp(frame_centers, centers, scores), 0.0, 1.0)

    def live_detector(self, history: int = 250) -> VoiceActivityStream:
        """A frame-by-frame energy detector for live audio (the pyannote model, if set, is not used:
        it needs whole chunks of several seconds)."""
        return VoiceActivityStream(self.options, history)

    def encode(self, signal: torch.Tensor) -> torch.Tensor:
        return self.tokenizer(signal)  # (B, T, 1) -> (B, T, slots, D)

    def parse_label(self, label: str) -> torch.Tensor:
        """``"speaking"`` (1) or ``"silent"`` / ``"listening"`` / ``"idle"`` (0)."""
        key = label.strip().lower()
        if key not in LABELS:
            raise InputError(f"condition 'voice_activity': unknown label {label!r}; use one of {sorted(LABELS)}, "
                             "a number in [0, 1], a file, or an audio file")
        return torch.tensor([LABELS[key]])
