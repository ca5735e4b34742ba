"""Pieces shared by the built-in condition plugins.

* :class:`FrameMLP`: the small frame-local tokenizer most plugins use
  (``(B, T, signal_dim) -> (B, T, slots, d_model)``, the same weights on every frame).
* :class:`FacePlugin`: base of the plugins whose signal comes from MediaPipe's FaceLandmarker
  (head pose, blink, gaze, expression). It reads ``sample.face``, or runs the face pipeline on
  ``sample.frames`` when the track is missing, marks frames without a face absent (NaN rows) and
  fills columns a user leaves out of a mapping with the plugin's neutral values.
* :func:`load_pyannote_model`: load a local pyannote.audio checkpoint without touching the network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from eartalk.core.errors import ConfigError, WeightsNotFoundError
from eartalk.core.protocol import ConditionPlugin, in_range
from eartalk.core.types import FaceTrack, Sample

#: attrs validator: an integer option must be >= 1 (renders as "an integer >= 1" in help).
positive = in_range(1, integer=True)
#: attrs validator: an integer option must be >= 0.
non_negative = in_range(0, integer=True)


class FrameMLP(nn.Module):
    """Frame-local tokenizer: an MLP applied to each frame's signal row independently.

    Args:
        in_dim: signal width.
        slots: FCIC slots produced per frame.
        d_model: token width.
        hidden: hidden layer width.
        layer_norm: normalise each input row first (for wide, unscaled rows such as log-mels).
        scale: per-column input scale (``(in_dim,)``), applied as ``(x - offset) * scale``.
        offset: per-column input offset.
    """

    def __init__(self, in_dim: int, slots: int, d_model: int, hidden: int = 128, *, layer_norm: bool = False,
                 scale: Sequence[float] | None = None, offset: Sequence[float] | None = None) -> None:
        super().__init__()
        self.slots, self.d_model = int(slots), int(d_model)
        self.norm = nn.LayerNorm(in_dim) if layer_norm else nn.Identity()
        self.register_buffer("scale", torch.ones(in_dim) if scale is None else torch.tensor(scale, dtype=torch.float32),
                             persistent=False)
        self.register_buffer("offset", torch.zeros(in_dim) if offset is None else torch.tensor(offset, dtype=torch.float32),
                             persistent=False)
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, slots * d_model))

    def forward(self, signal: torch.Tensor) -> torch.Tensor:
        batch, frames, _ = signal.shape  # (B, T, in_dim)
        x = self.norm((signal - self.offset) * self.scale)
        return self.net(x).reshape(batch, frames, self.slots, self.d_model)  # (B, T, slots, D)


@attrs.frozen
class FaceOptions:
    """Options every face plugin has.

    Attributes:
        slots: FCIC slots per frame.
        hidden: hidden width of the tokenizer MLP.
        landmarker: ``face_landmarker.task`` used when a sample has frames but no face track
            (default: ``$EARTALK_FACE_LANDMARKER``).
    """

    slots: int = attrs.field(default=1, validator=positive)
    hidden: int = attrs.field(default=128, validator=positive)
    landmarker: str | None = None


class FacePlugin(ConditionPlugin):
    """A condition read from the MediaPipe face track (subclasses implement :meth:`from_track`).

    Subclasses set ``columns`` and may set ``neutral`` (the value of each column for a neutral,
    frontal, open-eyed face), ``input_scale``/``input_offset`` (tokenizer input normalisation).
    """

    requires = frozenset({"face"})
    neutral: tuple[float, ...] = ()

    def __init__(self, d_model: int, options: Any, *, columns: Sequence[str],
                 input_scale: Sequence[float] | None = None, input_offset: Sequence[float] | None = None) -> None:
        super().__init__(d_model, options, slots=options.slots, signal_dim=len(columns))
        self.columns = list(columns)
        self.tokenizer = FrameMLP(len(columns), options.slots, d_model, options.hidden,
                                  scale=input_scale, offset=input_offset)

    def from_track(self, track: FaceTrack) -> torch.Tensor:
        """The signal ``(T, signal_dim)`` of every frame of a face track (rows of absent faces ignored)."""
        raise NotImplementedError

    def extract(self, sample: Sample) -> torch.Tensor:
        """Signal from ``sample.face`` (computed from ``sample.frames`` when missing; NaN where no face)."""
        from eartalk.core.media.face import ensure_face

        track = ensure_face(sample, self.options.landmarker)
        out = torch.full((sample.num_frames, self.signal_dim), float("nan"))
        if track is None:
            return out
        signal = self.from_track(track).to(torch.float32)  # (T', D)
        signal[~track.present] = float("nan")
        count = min(sample.num_frames, signal.shape[0])
        out[:count] = signal[:count]
        return out

    def encode(self, signal: torch.Tensor) -> torch.Tensor:
        return self.tokenizer(signal)  # (B, T, D_sig) -> (B, T, slots, D)

    def parse_mapping(self, mapping: Mapping[str, Any]) -> torch.Tensor:
        """Column name -> value or per-frame list; columns left out take their neutral value."""
        out = super().parse_mapping(mapping)
        if self.neutral:
            for i, col in enumerate(self.columns):
                if col not in mapping:
                    out[..., i] = self.neutral[i]
        return out


def blendshape_columns(track: FaceTrack, names: Sequence[str]) -> torch.Tensor:
    """``(T, len(names))`` blendshape scores picked by name."""
    from eartalk.core.media.face import BLENDSHAPE_NAMES

    available = list(track.blendshape_names) or list(BLENDSHAPE_NAMES)
    index = [available.index(n) for n in names]
    return track.blendshapes[:, index]


def load_pyannote_model(path: str | Path, what: str) -> Any:
    """Load a local pyannote.audio model checkpoint (``.ckpt``/``pytorch_model.bin`` or its folder).

    The checkpoint's own class (e.g. ``PyanNet``) is rebuilt from its hyper-parameters. Nothing is
    downloaded, and pyannote's usage telemetry is not triggered (``Model.from_pretrained`` is not
    used).

    Raises:
        WeightsNotFoundError: the path does not exist.
        ConfigError: the file is not a pyannote.audio checkpoint.
    """
    import importlib

    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "pytorch_model.bin"
    if not path.is_file():
        raise WeightsNotFoundError(
            f"{what}: pyannote checkpoint {path} does not exist; give the path of a local pyannote.audio "
            "model checkpoint (e.g. the pytorch_model.bin of a segmentation model)"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        arch = checkpoint["pyannote.audio"]["architecture"]
        cls = getattr(importlib.import_module(arch["module"]), arch["class"])
    except Exception as err:  # noqa: BLE001 - any failure means "not a pyannote checkpoint"
        raise ConfigError(f"{what}: {path} is not a pyannote.audio model checkpoint ({type(err).__name__}: {err})") from None
    return cls.load_from_checkpoint(path, map_location="cpu", strict=False, weights_only=False)
