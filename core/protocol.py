"""The condition-token protocol: how a control signal becomes FCIC tokens.

Frame Condition In-Context (FCIC) puts every control signal inside each frame's block of the
backbone's sequence. A :class:`ConditionPlugin` owns one signal:

1. ``extract(sample)`` turns a training :class:`~eartalk.core.types.Sample` into a per-frame
   signal ``(T, signal_dim)``. Rows that are NaN mean "absent at this frame".
2. ``encode(signal)`` is the trainable tokenizer: ``(B, T, signal_dim) -> (B, T, slots, d_model)``.
   It must be frame-local: tokens of frame ``t`` depend only on ``signal[:, t]`` (context such as
   audio lookahead is packed into the row by ``extract``), so streaming needs no future rows.
3. ``forward(signal, present)`` replaces absent frames by the learned ``null_token``, so a
   control can be missing, start or stop at any frame.
4. ``values(value, num_frames)`` turns an inference-time value (array, file, constant, label,
   mapping, driving video) into a signal, the same shape ``extract`` gives.

A plugin declares ``name`` (unique, used in configs), an attrs ``Options`` class (its config,
structured strictly from YAML) and sets ``slots``/``signal_dim`` from its options.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import attrs
import numpy as np
import torch
from torch import nn

from eartalk.core.errors import InputError
from eartalk.core.types import Sample

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v"})
AUDIO_SUFFIXES = frozenset({".wav", ".mp3", ".m4a", ".flac", ".ogg", ".aac", ".opus"})
ARRAY_SUFFIXES = frozenset({".npy", ".csv", ".json"})


@attrs.frozen
class NoOptions:
    """Options of a plugin that has none."""


class ConditionPlugin(nn.Module):
    """Base class of every condition plugin (built-in or third-party).

    Subclasses set the class attributes and call ``super().__init__`` with their slot count and
    signal width, then build their trainable tokenizer::

        class Brightness(ConditionPlugin):
            name = "brightness"
            Options = BrightnessOptions  # attrs.frozen class

            def __init__(self, d_model, options=None):
                options = options or self.Options()
                super().__init__(d_model, options, slots=1, signal_dim=1)
                self.proj = nn.Linear(1, d_model)

            def extract(self, sample):
                return sample.frames.float().mean(dim=(1, 2, 3))[:, None] / 255

            def encode(self, signal):  # (B, T, 1) -> (B, T, 1, d_model)
                return self.proj(signal)[:, :, None]

    Attributes:
        name: unique plugin name used by configs and the CLI.
        Options: attrs class holding this plugin's configuration.
        requires: sample fields ``extract`` reads (``"frames"``, ``"audio"``, ``"face"``, ``"metadata"``).
        columns: optional names of the ``signal_dim`` columns (CSV headers, JSON keys).
        lookahead_frames: future frames of input the signal of frame ``t`` needs (streaming latency).
    """

    kind: ClassVar[str] = "condition"
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    requires: ClassVar[frozenset[str]] = frozenset()
    required_methods: ClassVar[tuple[str, ...]] = ("extract", "encode")

    def __init__(self, d_model: int, options: Any = None, *, slots: int, signal_dim: int) -> None:
        super().__init__()
        if slots < 1 or signal_dim < 1:
            raise ValueError(f"{type(self).__name__}: slots and signal_dim must be >= 1")
        self.d_model = int(d_model)
        self.options = options if options is not None else self.Options()
        self.slots = int(slots)
        self.signal_dim = int(signal_dim)
        self.lookahead_frames = 0
        self.columns: list[str] = [f"{self.name}_{i}" for i in range(self.signal_dim)]
        # Learned null embedding: what the backbone sees when this control is absent.
        self.null_token = nn.Parameter(torch.randn(self.slots, self.d_model) * 0.02)  # (slots, D)

    # -- the three operations every plugin implements --------------------------------------
    def extract(self, sample: Sample) -> torch.Tensor:
        """Per-frame signal ``(T, signal_dim)`` float32 from a training sample; NaN rows = absent."""
        raise NotImplementedError

    def encode(self, signal: torch.Tensor) -> torch.Tensor:
        """Frame-local tokenizer ``(B, T, signal_dim) -> (B, T, slots, d_model)``."""
        raise NotImplementedError

    def forward(self, signal: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens with the null token at absent frames.

        Args:
            signal: ``(B, T, signal_dim)``; NaN rows count as absent.
            present: ``(B, T)`` bool, or None for "present wherever the row is finite".

        Returns:
            ``(B, T, slots, d_model)``.
        """
        if signal.dim() != 3 or signal.shape[-1] != self.signal_dim:
            raise ValueError(
                f"condition {self.name!r}: expected a signal of shape (B, T, {self.signal_dim}), "
                f"got {tuple(signal.shape)}"
            )
        finite = torch.isfinite(signal).all(dim=-1)  # (B, T)
        present = finite if present is None else (present.bool() & finite)
        clean = torch.where(present[..., None], signal, torch.zeros_like(signal))
        tokens = self.encode(clean.to(self.null_token.dtype))  # (B, T, slots, D)
        null = self.null_token.to(tokens.dtype).expand_as(tokens)
        return torch.where(present[..., None, None], tokens, null)

    # -- inference-time values ----------------------------------------------------------------
    def values(self, value: Any, num_frames: int | None = None) -> torch.Tensor:
        """Turn a user value into a signal ``(num_frames, signal_dim)`` (NaN rows = absent).

        Accepted values: None (absent everywhere); a number, list or 1-D array (constant over
        frames); a ``(T, signal_dim)`` array or tensor (shorter ones are absent past their end);
        a mapping (see :meth:`parse_mapping`); a label string (see :meth:`parse_label`); a path to
        ``.npy``/``.csv``/``.json`` values, to a driving video, or to an audio file.

        With ``num_frames=None`` the value keeps its natural length: a constant comes back as one
        row ``(signal_dim,)``, per-frame values (arrays, files, videos, audio) as ``(L, signal_dim)``.
        """
        if value is None:
            shape = (self.signal_dim,) if num_frames is None else (num_frames, self.signal_dim)
            return torch.full(shape, float("nan"))
        if isinstance(value, (str, Path)):
            text = str(value)
            path = Path(text).expanduser()
            suffix = path.suffix.lower()
            if suffix in ARRAY_SUFFIXES | VIDEO_SUFFIXES | AUDIO_SUFFIXES:
                if not path.is_file():
                    raise InputError(f"condition {self.name!r}: value file {path} does not exist")
                if suffix in VIDEO_SUFFIXES:
                    return self._fit(self.from_video(path, num_frames), num_frames, str(path))
                if suffix in AUDIO_SUFFIXES:
                    return self._fit(self.from_audio(path, num_frames), num_frames, str(path))
                return self._fit(self._load_array_file(path), num_frames, str(path))
            return self._fit(self.parse_label(text), num_frames, repr(text))
        if isinstance(value, Mapping):
            return self._fit(self.parse_mapping(value), num_frames, "mapping")
        array = torch.as_tensor(np.asarray(value, dtype=np.float32))
        return self._fit(array, num_frames, "array")

    def parse_label(self, label: str) -> torch.Tensor:
        """A text value (e.g. ``"happy"``). Plugins with named values override this."""
        raise InputError(
            f"condition {self.name!r} does not take text values (got {label!r}); give a number, "
            "an array, or a path to a .npy/.csv/.json file"
        )

    def parse_mapping(self, mapping: Mapping[str, Any]) -> torch.Tensor:
        """A mapping of column name to value (constant) or list (per frame)."""
        unknown = set(mapping) - set(self.columns)
        if unknown:
            raise InputError(
                f"condition {self.name!r}: unknown value keys {sorted(unknown)}; known: {self.columns}"
            )
        lengths = {len(v) for v in mapping.values() if isinstance(v, Sequence) and not isinstance(v, str)}
        length = max(lengths) if lengths else None
        rows = 1 if length is None else length
        out = torch.full((rows, self.signal_dim), float("nan"))
        for i, col in enumerate(self.columns):
            if col in mapping:
                out[:, i] = torch.as_tensor(mapping[col], dtype=torch.float32)
        return out if length is not None else out[0]

    def from_video(self, path: Path, num_frames: int | None) -> torch.Tensor:
        """Signal re-extracted from a driving video (face pipeline + :meth:`extract`); a constant
        ``(signal_dim,)`` row is also accepted. ``num_frames=None``: the whole video."""
        from eartalk.core.media.io import load_sample  # local: media pulls in PyAV and MediaPipe

        sample = load_sample(path, need_face="face" in self.requires, num_frames=num_frames)
        return self.extract(sample)

    def from_audio(self, path: Path, num_frames: int | None) -> torch.Tensor:
        """Signal from an audio file (only audio-driven plugins accept this); None: its whole length."""
        if "audio" not in self.requires:
            raise InputError(f"condition {self.name!r} cannot take its values from audio file {path}")
        from eartalk.core.media.io import read_audio

        audio = read_audio(path)
        return self.extract(Sample(audio=audio, num_frames=num_frames))

    # -- helpers --------------------------------------------------------------------------------
    def _load_array_file(self, path: Path) -> torch.Tensor:
        suffix = path.suffix.lower()
        try:
            if suffix == ".npy":
                return torch.as_tensor(np.load(path, allow_pickle=False), dtype=torch.float32)
            if suffix == ".json":
                data = json.loads(path.read_text())
                if isinstance(data, Mapping):
                    return self.parse_mapping(data)
                return torch.as_tensor(np.asarray(data, dtype=np.float32))
            with path.open(newline="") as handle:
                rows = list(csv.reader(handle))
        except (OSError, ValueError) as err:
            raise InputError(f"condition {self.name!r}: cannot read values from {path}: {err}") from err
        if not rows:
            raise InputError(f"condition {self.name!r}: {path} is empty")
        header = rows[0]
        if all(cell.strip() in self.columns for cell in header):
            body = rows[1:]
            columns = {name.strip(): [float(r[i]) if r[i].strip() else float("nan") for r in body]
                       for i, name in enumerate(header)}
            return self.parse_mapping(columns)
        try:
            return torch.tensor([[float(c) if c.strip() else float("nan") for c in r] for r in rows])
        except ValueError as err:
            raise InputError(
                f"condition {self.name!r}: {path} has a non-numeric cell ({err}); use a header row "
                f"naming columns from {self.columns} or numbers only"
            ) from err

    def _fit(self, array: torch.Tensor, num_frames: int | None, what: str) -> torch.Tensor:
        """Broadcast a constant or trim/pad a per-frame array to ``(num_frames, signal_dim)``
        (``num_frames=None``: checked, but kept at its natural length)."""
        array = array.to(torch.float32)
        if array.dim() == 0:
            array = array.reshape(1)
        if array.dim() == 1:
            if array.shape[0] != self.signal_dim:
                raise InputError(
                    f"condition {self.name!r}: a constant needs {self.signal_dim} values "
                    f"({', '.join(self.columns)}), got {array.shape[0]} from {what}"
                )
            return array.clone() if num_frames is None else array.expand(num_frames, -1).clone()
        if array.dim() != 2 or array.shape[1] != self.signal_dim:
            raise InputError(
                f"condition {self.name!r}: per-frame values must have shape (T, {self.signal_dim}), "
                f"got {tuple(array.shape)} from {what}"
            )
        if num_frames is None:
            return array
        out = torch.full((num_frames, self.signal_dim), float("nan"))
        n = min(num_frames, array.shape[0])
        out[:n] = array[:n]
        return out

    def extra_repr(self) -> str:
        return f"name={self.name!r}, slots={self.slots}, signal_dim={self.signal_dim}"
