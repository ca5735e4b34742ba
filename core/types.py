"""Plain data carried between the media pipeline, condition plugins and the engine."""

from __future__ import annotations

from typing import Any

import attrs
import torch

VIDEO_FPS = 25
AUDIO_SAMPLE_RATE = 16_000
SAMPLES_PER_FRAME = AUDIO_SAMPLE_RATE // VIDEO_FPS  # 640


def to_model_range(frames: torch.Tensor) -> torch.Tensor:
    """Pixels (uint8 or float 0-255) -> float32 in [-1, 1], the range the model works in."""
    return frames.float() / 127.5 - 1.0


def to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """Frames in [-1, 1] -> uint8 pixels (clamped, rounded)."""
    return ((frames.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


@attrs.define
class FaceTrack:
    """Per-frame output of MediaPipe's FaceLandmarker for one face.

    Attributes:
        landmarks: ``(T, 478, 3)`` normalised image coordinates (x, y in [0, 1], z relative depth).
        blendshapes: ``(T, 52)`` blendshape scores in [0, 1], ordered as ``blendshape_names``.
        matrices: ``(T, 4, 4)`` facial transformation matrices (canonical face -> camera).
        present: ``(T,)`` bool, False where no face was detected (other rows are then NaN).
        blendshape_names: MediaPipe's category names, e.g. ``"eyeBlinkLeft"``.
    """

    landmarks: torch.Tensor
    blendshapes: torch.Tensor
    matrices: torch.Tensor
    present: torch.Tensor
    blendshape_names: list[str] = attrs.field(factory=list)

    @property
    def num_frames(self) -> int:
        return int(self.present.shape[0])

    def slice(self, start: int, stop: int) -> FaceTrack:
        """Frames ``[start, stop)`` of the track."""
        return FaceTrack(
            self.landmarks[start:stop],
            self.blendshapes[start:stop],
            self.matrices[start:stop],
            self.present[start:stop],
            list(self.blendshape_names),
        )


@attrs.define
class Sample:
    """One talking-face clip as condition plugins see it.

    Attributes:
        frames: ``(T, 3, R, R)`` uint8 RGB frames at 25 fps, or None when only audio is known.
        audio: ``(S,)`` float32 mono audio at 16 kHz; frame ``t`` covers samples
            ``[t * 640, (t + 1) * 640)``. None when the clip has no audio.
        face: MediaPipe face track, or None when not extracted.
        metadata: free-form labels (``emotion``, ``intensity``, ``speaker``, ``source``...).
        num_frames: clip length in frames; inferred from frames, face or audio when None.
    """

    frames: torch.Tensor | None = None
    audio: torch.Tensor | None = None
    face: FaceTrack | None = None
    metadata: dict[str, Any] = attrs.field(factory=dict)
    num_frames: int | None = None

    def __attrs_post_init__(self) -> None:
        if self.num_frames is None:
            if self.frames is not None:
                self.num_frames = int(self.frames.shape[0])
            elif self.face is not None:
                self.num_frames = self.face.num_frames
            elif self.audio is not None:
                self.num_frames = int(self.audio.shape[-1]) // SAMPLES_PER_FRAME
            else:
                raise ValueError("Sample needs frames, face, audio or num_frames to know its length")
