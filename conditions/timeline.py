"""Control timelines: per-frame values of every control, editable at any frame.

A :class:`ControlTimeline` answers "what is each control at frame t?" for a streaming session.
Edits are kept in order; a later edit wins over an earlier one on the frames it covers. An edit
is a constant or a per-frame array starting at a frame, optionally ending at a frame, or a clear
(the control is absent there, i.e. its null token).

**Cost.** Each control keeps a *paint map*: sorted, disjoint frame segments, each naming the edit
that wins there (a new edit paints over the segments it covers, trimming or removing them). So
``at(t)`` never looks at the history of edits: it checks the segment it used last (streaming asks
for ``t``, ``t + 1``, ...), its neighbour, or bisects, and its cost does not grow with the number
of edits ever made (:attr:`ControlTimeline.ops` counts the segment look-ups, for the tests).
:meth:`ControlTimeline.forget_before` drops the segments a live session has played, so memory
stays bounded too.

**Per-frame values shorter than their range** (a 5 s driving video for 8 s of speech, a pose file
of 100 rows for 200 frames). Past the last row an edit follows its ``past_end`` policy:

* ``"absent"`` (the default): the edit ends with its rows; what was set before shows again, or
  the control is absent (null token) where nothing was;
* ``"hold"``: the last row is held until the edit's ``stop`` (or forever);
* ``"loop"``: the rows repeat from the first one.

The policy is chosen per edit (``set(..., past_end="hold")``) or per control for every later
edit (``ControlTimeline(stack, past_end={"head_pose": "loop"})``, or :attr:`ControlTimeline.past_end`).
The first time a frame past the end of an edit's rows is asked for, one warning is logged
(logger ``eartalk.conditions.timeline``) naming the control, its length and the policy applied.
"""

from __future__ import annotations

import bisect
import heapq
import logging
import math
from collections.abc import Mapping
from typing import Any

import attrs
import torch

from eartalk.conditions.stack import ConditionStack
from eartalk.core.errors import InputError

log = logging.getLogger(__name__)

#: What a per-frame edit does past its last row (see the module docstring).
PAST_END_POLICIES = ("absent", "hold", "loop")
DEFAULT_PAST_END = "absent"


def check_past_end(policy: str, what: str = "past_end") -> str:
    """Return ``policy`` if it is one of :data:`PAST_END_POLICIES`, else raise :class:`InputError`."""
    if policy not in PAST_END_POLICIES:
        raise InputError(f"{what}: unknown policy {policy!r}; use one of {', '.join(PAST_END_POLICIES)}")
    return policy


@attrs.frozen
class Edit:
    """One edit of one control.

    Attributes:
        name: the control.
        start: first frame.
        stop: end frame, exclusive (None = open-ended).
        values: ``(D,)`` constant, ``(L, D)`` per frame from ``start``, or None = absent.
        past_end: policy past the last of ``L`` per-frame rows (``"absent"``, ``"hold"``, ``"loop"``).
    """

    name: str
    start: int
    stop: int | None  # exclusive; None = open-ended
    values: torch.Tensor | None  # (D,) constant, (L, D) per-frame from `start`, or None = absent
    past_end: str = DEFAULT_PAST_END

    @property
    def length(self) -> int | None:
        """Rows of a per-frame edit (None for constants and clears)."""
        return None if self.values is None or self.values.dim() == 1 else int(self.values.shape[0])

    @property
    def end(self) -> float:
        """First frame this edit no longer covers (``inf`` when open-ended)."""
        end = math.inf if self.stop is None else self.stop
        if self.length is not None and self.past_end == "absent":
            end = min(end, self.start + self.length)
        return end

    def covers(self, t: int) -> bool:
        return self.start <= t < self.end

    def row(self, t: int, dim: int) -> torch.Tensor:
        if self.values is None:
            return torch.full((dim,), float("nan"))
        if self.values.dim() == 1:
            return self.values
        i, length = t - self.start, self.values.shape[0]
        if i >= length:
            i = length - 1 if self.past_end == "hold" else i % length
        return self.values[i]


class _PaintMap:
    """Disjoint segments ``[start, end)`` of one control, sorted, each with its winning edit."""

    __slots__ = ("starts", "ends", "edits", "cursor")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[float] = []
        self.edits: list[Edit] = []
        self.cursor = 0  # segment of the last look-up

    def paint(self, edit: Edit) -> None:
        """Let ``edit`` win on ``[edit.start, edit.end)``: trim or remove what it covers."""
        s, e = edit.start, edit.end
        if e <= s:
            return
        starts, ends, edits = self.starts, self.ends, self.edits
        i = bisect.bisect_right(starts, s) - 1  # last segment starting at or before s
        new_s, new_e, new_x = [], [], []
        if i >= 0 and ends[i] > s:  # a segment straddles s: keep its left part
            new_s.append(starts[i])
            new_e.append(s)
            new_x.append(edits[i])
            first = i
        else:
            first = i + 1
        new_s.append(s)
        new_e.append(e)
        new_x.append(edit)
        last = bisect.bisect_left(starts, e, lo=max(first, 0))  # segments [first, last) start before e
        if last > first and ends[last - 1] > e:  # the last one sticks out past e: keep its right part
            new_s.append(e)
            new_e.append(ends[last - 1])
            new_x.append(edits[last - 1])
        starts[first:last] = new_s
        ends[first:last] = new_e
        edits[first:last] = new_x
        self.cursor = first

    def find(self, t: int, counter: list[int]) -> Edit | None:
        """The edit winning at frame ``t`` (None: no edit covers it). ``counter[0]`` counts look-ups."""
        starts, ends = self.starts, self.ends
        n = len(starts)
        if not n:
            return None
        counter[0] += 1
        if t < starts[0] or t >= ends[n - 1]:
            return None  # before the first or after the last segment
        c = self.cursor
        for j in (c, c + 1):  # streaming: the same segment as last time, or the next one
            counter[0] += 1
            if j < n and starts[j] <= t < ends[j]:
                self.cursor = j
                return self.edits[j]
            if j < n and t < starts[j] and (j == 0 or t >= ends[j - 1]):
                return None  # in a gap just before segment j
        counter[0] += max(1, n.bit_length())  # a bisection
        j = bisect.bisect_right(starts, t) - 1
        if j >= 0 and t < ends[j]:
            self.cursor = j
            return self.edits[j]
        return None

    def forget_before(self, t: int) -> None:
        """Drop segments that end at or before frame ``t``."""
        k = 0
        while k < len(self.ends) and self.ends[k] <= t:
            k += 1
        if k:
            del self.starts[:k], self.ends[:k], self.edits[:k]
            self.cursor = max(0, self.cursor - k)

    def __len__(self) -> int:
        return len(self.starts)


class ControlTimeline:
    """Frame-indexed control values for a stack, changed by :meth:`set` and :meth:`clear`.

    Args:
        stack: the condition stack whose controls this timeline holds.
        past_end: per-control default policy past the end of per-frame values
            (:data:`PAST_END_POLICIES`; controls left out use ``"absent"``).

    Attributes:
        edits: every edit, in order (kept for inspection; look-ups never scan it). Dropped by
            :meth:`forget_before` together with the segments it frees.
        past_end: the per-control default policies (editable).
        ops: segment look-ups done by :meth:`at` so far (its cost, independent of the edit count).
    """

    def __init__(self, stack: ConditionStack, past_end: Mapping[str, str] | None = None) -> None:
        self.stack = stack
        self.edits: list[Edit] = []
        self.past_end: dict[str, str] = {}
        for name, policy in (past_end or {}).items():
            self.set_past_end(name, policy)
        self.ops = 0
        self._maps: dict[str, _PaintMap] = {name: _PaintMap() for name in stack.plugins}
        self._ends: list[tuple[int, int, Edit]] = []  # heap: (frame past the last row, order, edit)
        self._count = 0

    def set_past_end(self, name: str, policy: str) -> None:
        """Policy past the end of per-frame values for later edits of control ``name``."""
        self.stack.plugin(name)
        self.past_end[name] = check_past_end(policy, f"past_end of control {name!r}")

    def set(self, name: str, value: Any, start: int = 0, stop: int | None = None, past_end: str | None = None) -> None:
        """Set control ``name`` from frame ``start`` (to ``stop``, exclusive, or on).

        ``value`` is anything :meth:`ConditionPlugin.values` accepts: a constant, a per-frame
        array, a label, a mapping, or a file. Per-frame values run from ``start`` for their own
        length and then follow ``past_end`` (default: the control's policy, else ``"absent"``)
        until ``stop``; constants hold until ``stop``.
        """
        values = self.stack.plugin(name).values(value)  # (D,) constant or (L, D) per frame
        policy = check_past_end(past_end, f"past_end of control {name!r}") if past_end is not None \
            else self.past_end.get(name, DEFAULT_PAST_END)
        if values.dim() == 2 and values.shape[0] == 0:
            raise InputError(f"control {name!r}: the per-frame value has no rows")
        self._add(Edit(name, int(start), stop, values, policy))

    def clear(self, name: str, start: int = 0, stop: int | None = None) -> None:
        """Make control ``name`` absent (null token) from ``start`` to ``stop``."""
        self.stack.plugin(name)
        self._add(Edit(name, int(start), stop, None))

    def _add(self, edit: Edit) -> None:
        if edit.stop is not None and edit.stop <= edit.start:
            raise InputError(f"control {edit.name!r}: empty frame range {edit.start}:{edit.stop}")
        self.edits.append(edit)
        self._maps[edit.name].paint(edit)
        if edit.length is not None and (edit.stop is None or edit.stop > edit.start + edit.length):
            self._count += 1
            heapq.heappush(self._ends, (edit.start + edit.length, self._count, edit))

    def _warn_past_end(self, t: int) -> None:
        while self._ends and self._ends[0][0] <= t:
            end, _, edit = heapq.heappop(self._ends)
            if edit.stop is not None and t >= edit.stop:
                continue
            probe = end - 1 if edit.past_end == "absent" else end
            if self._maps[edit.name].find(probe, [0]) is not edit:
                continue  # painted over before its rows ran out
            what = {
                "absent": "it ends there: earlier settings (or the null token) apply from then on",
                "hold": "its last row is held",
                "loop": "its rows repeat from the first",
            }[edit.past_end]
            until = "" if edit.stop is None else f" until frame {edit.stop}"
            log.warning(
                "control %r: per-frame values from frame %d have %d rows, fewer than the frames asked for "
                "(frame %d and later); past_end=%r: %s%s. Choose past_end 'hold', 'loop' or 'absent' per control.",
                edit.name, edit.start, edit.length, end, edit.past_end, what, until,
            )

    def at(self, t: int) -> dict[str, torch.Tensor]:
        """Signals of frame ``t``: name -> ``(signal_dim,)``; NaN = absent."""
        if self._ends:
            self._warn_past_end(t)
        counter = [0]
        out = {}
        for name, plugin in self.stack.plugins.items():
            edit = self._maps[name].find(t, counter)
            out[name] = torch.full((plugin.signal_dim,), float("nan")) if edit is None else edit.row(t, plugin.signal_dim)
        self.ops += counter[0]
        return out

    def span(self, start: int, stop: int) -> dict[str, torch.Tensor]:
        """Signals of frames ``[start, stop)``: name -> ``(1, T, signal_dim)``."""
        rows = [self.at(t) for t in range(start, stop)]
        return {name: torch.stack([r[name] for r in rows])[None] for name in self.stack.plugins}

    def forget_before(self, t: int) -> None:
        """Forget what covers only frames before ``t`` (a live session never asks for them again)."""
        for paint in self._maps.values():
            paint.forget_before(t)
        alive = {id(e) for paint in self._maps.values() for e in paint.edits}
        self.edits = [e for e in self.edits if id(e) in alive]

    def segments(self, name: str) -> int:
        """Segments held for control ``name`` (bounded after :meth:`forget_before`)."""
        return len(self._maps[name])
