"""``audio``: speech features of a window of frames around each video frame.

Row ``t`` of the signal packs the audio of frames ``[t - context, t + lookahead]`` so that the
tokenizer is frame-local; ``lookahead`` (default 2 frames = 80 ms) is the streaming latency.
Frames before the start or past the end of the audio are silence.

Backends (option ``backend``):

* ``"logmel"`` (default, no weights): a log-mel spectrogram (25 ms Hann window, 10 ms hop,
  ``n_mels`` bands) with 4 mel frames per video frame. The 4 windows of frame ``t`` end at
  samples ``640 t + 160 k`` (``k = 1..4``), so they never read audio past frame ``t``: a row
  needs exactly ``lookahead`` frames of future audio. Row width ``(context + 1 + lookahead) * 4 * n_mels``;
  the tokenizer is LayerNorm + MLP.
* ``"pyannote"``: the raw waveform window (``(context + 1 + lookahead) * 640`` samples) is the row,
  and the encoder runs in :meth:`AudioCondition.encode`: pyannote.audio's SincNet block
  (learnable sinc band-pass filters + convolutions, trained with the model) followed by an MLP.
  With option ``checkpoint`` the SincNet weights start from a local pyannote.audio model checkpoint
  (any model with a ``sincnet`` block, e.g. PyanNet segmentation models); otherwise from scratch.

:class:`AudioStream` turns a live feed (microphone chunks of any size) into the same rows as
:meth:`AudioCondition.extract` computes offline.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import attrs
import torch
from torch import nn

from eartalk.core.errors import ConfigError
from eartalk.core.protocol import Column, ConditionPlugin
from eartalk.core.types import AUDIO_SAMPLE_RATE, SAMPLES_PER_FRAME, Sample
from eartalk.plugins.base import FrameMLP, load_pyannote_model, non_negative, positive

BACKENDS = ("logmel", "pyannote")
HOP = 160  # 10 ms at 16 kHz
WIN = 400  # 25 ms at 16 kHz
MELS_PER_FRAME = SAMPLES_PER_FRAME // HOP  # 4
LEFT_CONTEXT = WIN - HOP  # samples before a frame that its first mel window reads
LOG_FLOOR = 1e-5  # mel power floor before the log (silence maps to log(1e-5))


def _backend(instance: Any, attribute: attrs.Attribute, value: str) -> None:
    if value not in BACKENDS:
        raise ConfigError(f"audio option 'backend' must be one of {BACKENDS}, got {value!r}")


@attrs.frozen
class AudioOptions:
    """Options of ``audio``.

    Attributes:
        backend: ``"logmel"`` (log-mel features, no weights) or ``"pyannote"`` (trainable SincNet
            encoder on the raw waveform).
        n_mels: mel bands of the log-mel backend.
        context: past frames in each row's window.
        lookahead: future frames in each row's window (the streaming latency, 40 ms per frame).
        checkpoint: local pyannote.audio model checkpoint to initialise SincNet from (pyannote
            backend only; None: train SincNet from scratch).
        sincnet_stride: stride of SincNet's first convolution when trained from scratch (a
            checkpoint brings its own).
        slots: FCIC slots per frame.
        hidden: hidden width of the tokenizer MLP.
    """

    backend: str = attrs.field(default="logmel", validator=_backend)
    n_mels: int = attrs.field(default=80, validator=positive)
    context: int = attrs.field(default=4, validator=non_negative)
    lookahead: int = attrs.field(default=2, validator=non_negative)
    checkpoint: str | None = None
    sincnet_stride: int = attrs.field(default=10, validator=positive)
    slots: int = attrs.field(default=2, validator=positive)
    hidden: int = attrs.field(default=256, validator=positive)

    def __attrs_post_init__(self) -> None:
        if self.checkpoint is not None and self.backend != "pyannote":
            raise ConfigError("audio option 'checkpoint' is only used by backend 'pyannote'; "
                              "set backend: pyannote or remove checkpoint")

    @property
    def window(self) -> int:
        """Frames per row."""
        return self.context + 1 + self.lookahead


class LogMel:
    """Causal per-frame log-mel blocks: ``(T, 4 * n_mels)`` from audio with 240 samples of left context.

    Not an ``nn.Module`` on purpose: it has no trainable state and stays out of checkpoints.
    """

    def __init__(self, n_mels: int) -> None:
        import torchaudio

        self.n_mels = n_mels
        self.transform = torchaudio.transforms.MelSpectrogram(
            sample_rate=AUDIO_SAMPLE_RATE, n_fft=WIN, win_length=WIN, hop_length=HOP, n_mels=n_mels,
            center=False, power=2.0,
        )

    def blocks(self, padded: torch.Tensor) -> torch.Tensor:
        """``padded``: ``LEFT_CONTEXT + 640 * n`` samples -> ``(n, 4 * n_mels)`` log-mel blocks."""
        frames = (padded.shape[0] - LEFT_CONTEXT) // SAMPLES_PER_FRAME
        if frames <= 0:
            return torch.zeros(0, MELS_PER_FRAME * self.n_mels)
        mel = self.transform(padded[: LEFT_CONTEXT + frames * SAMPLES_PER_FRAME].float())  # (n_mels, 4n)
        logmel = mel.clamp(min=LOG_FLOOR).log()
        return logmel.T.reshape(frames, MELS_PER_FRAME * self.n_mels)  # (n, 4 * n_mels): 4 mel frames per row

    def silence(self) -> torch.Tensor:
        """The block of a silent frame."""
        return torch.full((MELS_PER_FRAME * self.n_mels,), float(torch.log(torch.tensor(LOG_FLOOR))))


def window_rows(blocks: torch.Tensor, context: int, lookahead: int, pad: torch.Tensor) -> torch.Tensor:
    """Pack ``(T, B)`` per-frame blocks into ``(T, (context + 1 + lookahead) * B)`` rows (pad outside)."""
    frames = blocks.shape[0]
    padded = torch.cat([pad.expand(context, -1), blocks, pad.expand(lookahead, -1)])  # (T + W - 1, B)
    window = context + 1 + lookahead
    rows = padded.unfold(0, window, 1)  # (T, B, W)
    return rows.transpose(1, 2).reshape(frames, window * blocks.shape[1])


class AudioCondition(ConditionPlugin):
    """Audio features of a window around each frame (log-mel, or a trainable SincNet encoder)."""

    name = "audio"
    description = "speech audio window around each frame (log-mel or pyannote SincNet)"
    Options = AudioOptions
    requires = frozenset({"audio"})
    column_docs = (Column("*", "", None, "logmel: f{frame offset}_m{mel frame}_b{band}, natural-log mel power "
                                        "(floor log 1e-5); pyannote: f{offset}_s{sample}, waveform in [-1, 1]"),)

    def __init__(self, d_model: int, options: AudioOptions | None = None) -> None:
        options = options or AudioOptions()
        window = options.window
        if options.backend == "logmel":
            block = MELS_PER_FRAME * options.n_mels
            super().__init__(d_model, options, slots=options.slots, signal_dim=window * block)
            self.columns = [f"f{k - options.context:+d}_m{m}_b{b}" for k in range(window)
                            for m in range(MELS_PER_FRAME) for b in range(options.n_mels)]
            self._logmel = LogMel(options.n_mels)
            self.tokenizer = FrameMLP(self.signal_dim, options.slots, d_model, options.hidden, layer_norm=True)
            self.sincnet = None
        else:
            super().__init__(d_model, options, slots=options.slots, signal_dim=window * SAMPLES_PER_FRAME)
            self.columns = [f"f{k - options.context:+d}_s{s}" for k in range(window) for s in range(SAMPLES_PER_FRAME)]
            self._logmel = None
            self.sincnet = self._build_sincnet(options)
            with torch.no_grad():
                features = self.sincnet(torch.zeros(1, 1, self.signal_dim)).numel()  # 60 channels x frames
            self.tokenizer = FrameMLP(features, options.slots, d_model, options.hidden, layer_norm=True)
        self.lookahead_frames = options.lookahead

    @staticmethod
    def _build_sincnet(options: AudioOptions) -> nn.Module:
        if options.checkpoint is not None:
            model = load_pyannote_model(options.checkpoint, "audio option 'checkpoint'")
            sincnet = getattr(model, "sincnet", None)
            if not isinstance(sincnet, nn.Module):
                raise ConfigError(f"audio option 'checkpoint': {options.checkpoint} holds a "
                                  f"{type(model).__name__} without a SincNet block; use a PyanNet-style model")
            return sincnet
        from pyannote.audio.models.blocks.sincnet import SincNet

        return SincNet(sample_rate=AUDIO_SAMPLE_RATE, stride=options.sincnet_stride)

    # -- per-frame blocks (shared by extract and AudioStream) ----------------------------------------
    def pad_block(self) -> torch.Tensor:
        """The block of a silent frame (used outside the audio)."""
        if self._logmel is not None:
            return self._logmel.silence()
        return torch.zeros(SAMPLES_PER_FRAME)

    def frame_blocks(self, audio: torch.Tensor, left: torch.Tensor | None = None) -> torch.Tensor:
        """Blocks of whole frames of ``audio`` (``640 * n`` samples) -> ``(n, block)``.

        Args:
            audio: ``(640 * n,)`` samples.
            left: the ``LEFT_CONTEXT`` samples before ``audio`` (zeros at the start of a clip).
        """
        frames = audio.shape[0] // SAMPLES_PER_FRAME
        audio = audio[: frames * SAMPLES_PER_FRAME].float()
        if self._logmel is None:
            return audio.reshape(frames, SAMPLES_PER_FRAME)
        left = torch.zeros(LEFT_CONTEXT) if left is None else left.float()
        return self._logmel.blocks(torch.cat([left, audio]))

    def extract(self, sample: Sample) -> torch.Tensor:
        """Rows ``(T, signal_dim)``, exactly one per video frame (NaN rows when the sample has no audio)."""
        frames = sample.num_frames
        if sample.audio is None:
            return torch.full((frames, self.signal_dim), float("nan"))
        audio = sample.audio.reshape(-1).float()
        want = frames * SAMPLES_PER_FRAME
        audio = audio[:want] if audio.shape[0] >= want else torch.cat([audio, audio.new_zeros(want - audio.shape[0])])
        blocks = self.frame_blocks(audio)  # (T, block)
        return window_rows(blocks, self.options.context, self.options.lookahead, self.pad_block())

    def encode(self, signal: torch.Tensor) -> torch.Tensor:
        if self.sincnet is None:
            return self.tokenizer(signal)  # (B, T, W*4*n_mels) -> (B, T, slots, D)
        batch, frames, width = signal.shape  # (B, T, W*640)
        features = self.sincnet(signal.reshape(batch * frames, 1, width))  # (B*T, 60, F)
        return self.tokenizer(features.reshape(batch, frames, -1))

    def stream(self) -> AudioStream:
        """A live-audio helper producing this plugin's rows (see :class:`AudioStream`)."""
        return AudioStream(self)


class AudioStream:
    """Rows of :class:`AudioCondition` from live audio, chunk by chunk.

    ``push`` accepts 16 kHz mono samples in chunks of any size and returns the rows that became
    ready: row ``t`` is ready once the audio of frame ``t + lookahead`` has arrived, so the feed
    runs ``lookahead`` frames behind the microphone. ``flush`` ends the stream (the future is
    silence) and returns the remaining rows. Pushing the whole of a clip's audio then flushing gives
    the same rows as ``plugin.extract``. Memory stays constant: only the last
    ``context + 1 + lookahead`` blocks are kept.

    Example::

        stream = AudioStream(plugin)
        for chunk in microphone:          # e.g. 10 ms chunks
            for row in stream.push(chunk):
                session.step({"audio": row[None, None]})
    """

    def __init__(self, plugin: AudioCondition) -> None:
        self.plugin = plugin
        self.context = plugin.options.context
        self.lookahead = plugin.options.lookahead
        self._pending = torch.zeros(0)
        self._left = torch.zeros(LEFT_CONTEXT)
        self._blocks: deque[torch.Tensor] = deque(maxlen=self.context + 1 + self.lookahead)
        self._pad = plugin.pad_block()
        self.blocks_done = 0  # frames of audio received and turned into blocks
        self.rows_done = 0  # rows returned so far

    @property
    def latency_frames(self) -> int:
        """Frames between receiving a frame's audio and its row (the lookahead)."""
        return self.lookahead

    def push(self, samples: torch.Tensor | Any) -> list[torch.Tensor]:
        """Add samples; return the rows ``(signal_dim,)`` that became ready, in frame order."""
        chunk = torch.as_tensor(samples, dtype=torch.float32).reshape(-1)
        self._pending = torch.cat([self._pending, chunk])
        whole = (self._pending.shape[0] // SAMPLES_PER_FRAME) * SAMPLES_PER_FRAME
        if whole:
            audio, self._pending = self._pending[:whole], self._pending[whole:]
            blocks = self.plugin.frame_blocks(audio, self._left)
            self._left = torch.cat([self._left, audio])[-LEFT_CONTEXT:]
            return self._add(blocks, final=False)
        return []

    def flush(self) -> list[torch.Tensor]:
        """End of stream: pad a partial last frame with silence, return every remaining row."""
        rows: list[torch.Tensor] = []
        if self._pending.numel():
            rows += self.push(torch.zeros(SAMPLES_PER_FRAME - self._pending.shape[0]))
        return rows + self._add(torch.zeros(0, self._pad.shape[0]), final=True)

    def _add(self, blocks: torch.Tensor, final: bool) -> list[torch.Tensor]:
        rows = []
        for block in blocks:
            self._blocks.append(block)
            self.blocks_done += 1
            if self.blocks_done - 1 - self.lookahead >= 0:
                rows.append(self._row(self.blocks_done - 1 - self.lookahead))
        if final:
            while self.rows_done < self.blocks_done:
                rows.append(self._row(self.rows_done))
        return rows

    def _row(self, t: int) -> torch.Tensor:
        first_kept = self.blocks_done - len(self._blocks)
        parts = []
        for j in range(t - self.context, t + self.lookahead + 1):
            inside = 0 <= j < self.blocks_done and j >= first_kept
            parts.append(self._blocks[j - first_kept] if inside else self._pad)
        self.rows_done = t + 1
        return torch.cat(parts)
