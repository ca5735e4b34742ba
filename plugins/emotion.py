"""``emotion``: one of MEAD's 8 emotions with an intensity 1-3, per frame.

Columns ``emotion, intensity``: the emotion index in MEAD order (:data:`EMOTIONS`) and the intensity
level 1..3. The tokenizer is an embedding table of the 24 (emotion, intensity) pairs.

Where the label comes from:

* training: ``sample.metadata["emotion"]`` (a name, an alias such as ``"sadness"``, or an index)
  and ``sample.metadata["intensity"]`` (1..3, default option ``default_intensity``); else MEAD's file
  naming in ``sample.metadata["source"]`` (``.../<emotion>/level_<n>/...``, e.g.
  ``M003/front/happy/level_2/001.mp4``). Otherwise the clip has no label: every row is absent (NaN).
* inference: ``values("happy")``, ``values("sad:3")``, ``values({"emotion": "sad", "intensity": 3})``,
  per-frame lists in a mapping or a file, or a driving MEAD clip (its path is parsed the same way).

MEAD's neutral clips exist only at level 1, so ``neutral`` is always intensity 1.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from eartalk.core.errors import InputError
from eartalk.core.protocol import Column, ConditionPlugin, choice, option
from eartalk.core.types import Sample
from eartalk.plugins.base import positive

EMOTIONS = ("angry", "contempt", "disgusted", "fear", "happy", "neutral", "sad", "surprised")
LEVELS = (1, 2, 3)
ALIASES = {
    "anger": "angry", "mad": "angry", "disgust": "disgusted", "fearful": "fear", "afraid": "fear",
    "scared": "fear", "happiness": "happy", "joy": "happy", "calm": "neutral", "sadness": "sad",
    "surprise": "surprised", "contemptuous": "contempt",
}
_MEAD_PATH = re.compile(r"(?:^|[/\\])(" + "|".join(EMOTIONS) + r")[/\\]level_([123])(?:[/\\]|$)", re.IGNORECASE)


def emotion_index(value: Any) -> int:
    """Index in :data:`EMOTIONS` of a name, alias or index.

    Raises:
        InputError: unknown emotion.
    """
    if isinstance(value, str):
        key = value.strip().lower()
        key = ALIASES.get(key, key)
        if key in EMOTIONS:
            return EMOTIONS.index(key)
        if key.isdigit():
            value = int(key)
        else:
            raise InputError(f"unknown emotion {value!r}; use one of {', '.join(EMOTIONS)}")
    index = int(value)
    if not 0 <= index < len(EMOTIONS) or index != float(value):
        raise InputError(f"emotion index {value!r} out of range; use 0..{len(EMOTIONS) - 1} ({', '.join(EMOTIONS)})")
    return index


def parse_mead_path(path: str | Path) -> tuple[int, int] | None:
    """``(emotion index, intensity)`` from MEAD's naming (``.../<emotion>/level_<n>/...``), or None."""
    match = _MEAD_PATH.search(str(path))
    if match is None:
        return None
    return EMOTIONS.index(match.group(1).lower()), int(match.group(2))


@attrs.frozen
class EmotionOptions:
    """Options of ``emotion``.

    Attributes:
        slots: FCIC slots per frame.
        default_intensity: intensity used when a label gives only the emotion (1..3).
    """

    slots: int = attrs.field(default=1, validator=positive)
    default_intensity: int = option(2, validator=choice(*LEVELS),
                                    help="intensity used when a label gives only the emotion")


class Emotion(ConditionPlugin):
    """MEAD emotion category and intensity, from dataset labels or a user value."""

    name = "emotion"
    description = "one of MEAD's 8 emotions with intensity 1-3"
    Options = EmotionOptions
    requires = frozenset({"metadata"})
    column_docs = (
        Column("emotion", "index", (0, 7), "MEAD order: " + ", ".join(f"{i} {e}" for i, e in enumerate(EMOTIONS))),
        Column("intensity", "level", (1, 3), "1 weak .. 3 strong (neutral is always 1)"),
    )
    labels = {e: f"{e} at default_intensity" for e in EMOTIONS}
    value_examples = {"emotion=sad:3": "an emotion with its intensity (also 'sad 3')",
                      "emotion='{\"emotion\": \"sad\", \"intensity\": 3}'": "a mapping; either may be a per-frame list",
                      "emotion=M003/front/happy/level_2/001.mp4": "a MEAD-style clip path (only the path is read)"}

    def __init__(self, d_model: int, options: EmotionOptions | None = None) -> None:
        options = options or EmotionOptions()
        super().__init__(d_model, options, slots=options.slots, signal_dim=2)
        self.columns = ["emotion", "intensity"]
        self.table = nn.Embedding(len(EMOTIONS) * len(LEVELS), options.slots * d_model)
        nn.init.normal_(self.table.weight, std=0.02)

    # -- labels -------------------------------------------------------------------------------
    def _intensity(self, emotion: int, intensity: Any) -> int:
        if EMOTIONS[emotion] == "neutral":
            return 1
        if intensity is None:
            return self.options.default_intensity
        level = int(intensity)
        if level not in LEVELS or level != float(intensity):
            raise InputError(f"emotion intensity must be 1, 2 or 3, got {intensity!r}")
        return level

    def label(self, emotion: Any, intensity: Any = None) -> torch.Tensor:
        """One row ``(2,)`` for an emotion (name or index) and an optional intensity."""
        index = emotion_index(emotion)
        return torch.tensor([float(index), float(self._intensity(index, intensity))])

    def extract(self, sample: Sample) -> torch.Tensor:
        meta = sample.metadata or {}
        row = None
        if meta.get("emotion") is not None:
            row = self.label(meta["emotion"], meta.get("intensity"))
        elif meta.get("source"):
            parsed = parse_mead_path(meta["source"])
            if parsed is not None:
                row = self.label(*parsed)
        if row is None:
            return torch.full((sample.num_frames, 2), float("nan"))
        return row.expand(sample.num_frames, -1).clone()

    def encode(self, signal: torch.Tensor) -> torch.Tensor:
        batch, frames, _ = signal.shape  # (B, T, 2)
        emotion = signal[..., 0].round().long().clamp(0, len(EMOTIONS) - 1)
        level = signal[..., 1].round().long().clamp(1, len(LEVELS))
        tokens = self.table(emotion * len(LEVELS) + level - 1)  # (B, T, slots * D)
        return tokens.reshape(batch, frames, self.slots, self.d_model)

    # -- inference values -----------------------------------------------------------------------
    def parse_label(self, label: str) -> torch.Tensor:
        """``"happy"``, ``"happy:3"`` / ``"happy 3"``, or a MEAD-style path."""
        parsed = parse_mead_path(label)
        if parsed is not None:
            return self.label(*parsed)
        parts = re.split(r"[:\s,/]+", label.strip())
        if len(parts) == 2:
            return self.label(parts[0], parts[1])
        return self.label(label)

    def parse_mapping(self, mapping: Mapping[str, Any]) -> torch.Tensor:
        """``{"emotion": "sad", "intensity": 3}``; either may be a per-frame list."""
        unknown = set(mapping) - {"emotion", "intensity"}
        if unknown:
            raise InputError(f"condition 'emotion': unknown value keys {sorted(unknown)}; known: emotion, intensity")
        if "emotion" not in mapping:
            raise InputError("condition 'emotion': a mapping needs an 'emotion' key (and optionally 'intensity')")
        emotion, intensity = mapping["emotion"], mapping.get("intensity")

        def as_list(value: Any) -> list | None:
            if isinstance(value, Sequence) and not isinstance(value, str):
                return list(value)
            if isinstance(value, torch.Tensor) and value.dim() == 1:
                return value.tolist()
            return None

        emotions, levels = as_list(emotion), as_list(intensity)
        if emotions is None and levels is None:
            return self.label(emotion, intensity)
        length = len(emotions if emotions is not None else levels)
        emotions = emotions if emotions is not None else [emotion] * length
        levels = levels if levels is not None else [intensity] * length
        if len(levels) != len(emotions):
            raise InputError(f"condition 'emotion': {len(emotions)} emotions but {len(levels)} intensities")
        rows = []
        for e, level in zip(emotions, levels, strict=True):
            missing = e is None or (isinstance(e, float) and e != e)
            rows.append(torch.full((2,), float("nan")) if missing else
                        self.label(e, None if level is None or level != level else level))
        return torch.stack(rows)

    def from_video(self, path: Path, num_frames: int | None) -> torch.Tensor:
        """A driving clip's label from its MEAD-style path (the pixels are not read): one row."""
        parsed = parse_mead_path(path)
        if parsed is None:
            raise InputError(f"condition 'emotion': cannot tell the emotion of {path}; only MEAD-style paths "
                             "(.../<emotion>/level_<n>/...) carry one. Give a label such as 'happy' instead")
        return self.label(*parsed)
