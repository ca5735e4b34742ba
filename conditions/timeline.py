"""Control timelines: per-frame values of every control, editable at any frame.

A :class:`ControlTimeline` answers "what is each control at frame t?" for a streaming session.
Edits are kept in order; a later edit wins over an earlier one on the frames it covers. An edit
is a constant or a per-frame array starting at a frame, optionally ending at a frame, or a clear
(the control is absent there, i.e. its null token).
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from eartalk.conditions.stack import ConditionStack


@attrs.frozen
class Edit:
    name: str
    start: int
    stop: int | None  # exclusive; None = open-ended
    values: torch.Tensor | None  # (D,) constant, (L, D) per-frame from `start`, or None = absent

    def covers(self, t: int) -> bool:
        if t < self.start or (self.stop is not None and t >= self.stop):
            return False
        return not (self.values is not None and self.values.dim() == 2 and t - self.start >= self.values.shape[0])

    def row(self, t: int, dim: int) -> torch.Tensor:
        if self.values is None:
            return torch.full((dim,), float("nan"))
        return self.values if self.values.dim() == 1 else self.values[t - self.start]


class ControlTimeline:
    """Frame-indexed control values for a stack, changed by :meth:`set` and :meth:`clear`."""

    def __init__(self, stack: ConditionStack) -> None:
        self.stack = stack
        self.edits: list[Edit] = []

    def set(self, name: str, value: Any, start: int = 0, stop: int | None = None) -> None:
        """Set control ``name`` from frame ``start`` (to ``stop``, exclusive, or on).

        ``value`` is anything :meth:`ConditionPlugin.values` accepts: a constant, a per-frame
        array, a label, a mapping, or a file. Per-frame values run from ``start`` for their own
        length (or until ``stop``); constants hold until ``stop``.
        """
        values = self.stack.plugin(name).values(value)  # (D,) constant or (L, D) per frame
        self.edits.append(Edit(name, int(start), stop, values))

    def clear(self, name: str, start: int = 0, stop: int | None = None) -> None:
        """Make control ``name`` absent (null token) from ``start`` to ``stop``."""
        self.stack.plugin(name)
        self.edits.append(Edit(name, int(start), stop, None))

    def at(self, t: int) -> dict[str, torch.Tensor]:
        """Signals of frame ``t``: name -> ``(signal_dim,)``; NaN = absent."""
        out = {}
        for name, plugin in self.stack.plugins.items():
            row = torch.full((plugin.signal_dim,), float("nan"))
            for edit in self.edits:  # later edits override earlier ones
                if edit.name == name and edit.covers(t):
                    row = edit.row(t, plugin.signal_dim)
            out[name] = row
        return out

    def span(self, start: int, stop: int) -> dict[str, torch.Tensor]:
        """Signals of frames ``[start, stop)``: name -> ``(1, T, signal_dim)``."""
        rows = [self.at(t) for t in range(start, stop)]
        return {name: torch.stack([r[name] for r in rows])[None] for name in self.stack.plugins}
