"""ControlTimeline: the paint map gives the same values as "the last edit covering t wins", at a
look-up cost that does not grow with the edits ever made; per-frame values shorter than their
range follow their past_end policy and warn once."""

from __future__ import annotations

import logging
import math
import random

import pytest
import torch

from eartalk.conditions import ControlTimeline
from eartalk.conditions.timeline import Edit
from eartalk.core.errors import InputError


def reference_at(edits: list[Edit], t: int, dims: dict[str, int]) -> dict[str, torch.Tensor]:
    """The definition: scan every edit, later ones win on the frames they cover."""
    out = {}
    for name, dim in dims.items():
        row = torch.full((dim,), float("nan"))
        for edit in edits:
            if edit.name != name or t < edit.start:
                continue
            if edit.stop is not None and t >= edit.stop:
                continue
            if edit.length is not None and edit.past_end == "absent" and t >= edit.start + edit.length:
                continue
            row = edit.row(t, dim)
        out[name] = row
    return out


def dims_of(stack) -> dict[str, int]:
    return {name: p.signal_dim for name, p in stack.plugins.items()}


def random_edit(timeline: ControlTimeline, rng: random.Random, horizon: int, start: int | None = None) -> None:
    name = rng.choice(list(timeline.stack.plugins))
    dim = timeline.stack.plugins[name].signal_dim
    start = rng.randrange(horizon) if start is None else start
    stop = None if rng.random() < 0.4 else start + rng.randrange(1, 12)
    kind = rng.random()
    if kind < 0.2:
        timeline.clear(name, start, stop)
    elif kind < 0.6:
        timeline.set(name, [rng.uniform(-1, 1) for _ in range(dim)], start, stop)
    else:
        rows = torch.randn(rng.randrange(1, 8), dim)
        timeline.set(name, rows, start, stop, past_end=rng.choice(["absent", "hold", "loop"]))


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], t: int) -> None:
    for name in want:
        torch.testing.assert_close(got[name], want[name], equal_nan=True, msg=f"{name} at frame {t}")


@pytest.mark.parametrize("seed", range(6))
def test_paint_map_matches_the_definition(toy_stack, seed, caplog) -> None:
    rng = random.Random(seed)
    timeline = ControlTimeline(toy_stack)
    for _ in range(60):
        random_edit(timeline, rng, 40)
    dims = dims_of(toy_stack)
    frames = list(range(60)) + [rng.randrange(60) for _ in range(60)]  # streaming order, then random
    for t in frames:
        assert_same(timeline.at(t), reference_at(timeline.edits, t, dims), t)


def test_edits_between_frames_of_a_stream_match_the_definition(toy_stack) -> None:
    """A live session: edits land at the next frame while frames are being asked for in order."""
    rng = random.Random(7)
    timeline = ControlTimeline(toy_stack)
    dims = dims_of(toy_stack)
    for t in range(300):
        while rng.random() < 0.3:
            random_edit(timeline, rng, 1, start=t)  # lands at the next frame, as set_control does
        assert_same(timeline.at(t), reference_at(timeline.edits, t, dims), t)


def ops_per_frame(toy_stack, edits: int, frames: int = 50) -> list[int]:
    """Look-ups per at() while streaming, after ``edits`` slider moves (one per frame before)."""
    timeline = ControlTimeline(toy_stack)
    for t in range(edits):
        timeline.set("toy", [t, 0.0, 0.0], start=t)  # open-ended constant from frame t (a slider move)
        timeline.set("toy_audio", torch.randn(1, 4), start=t, stop=t + 1)
        timeline.at(t)
    costs = []
    for t in range(edits, edits + frames):
        timeline.set("toy", [t, 1.0, 1.0], start=t)
        before = timeline.ops
        row = timeline.at(t)
        costs.append(timeline.ops - before)
        assert row["toy"][0] == t
    return costs


def test_at_cost_does_not_grow_with_the_edits_made(toy_stack) -> None:
    few, many = ops_per_frame(toy_stack, 10), ops_per_frame(toy_stack, 4000)
    assert max(many) == max(few), f"look-ups per frame: {max(few)} after 10 edits, {max(many)} after 4000"
    assert max(many) <= 3 * len(toy_stack.plugins)


def test_sequential_frames_over_many_bounded_edits_cost_a_constant(toy_stack) -> None:
    timeline = ControlTimeline(toy_stack)
    for k in range(2000):  # a long scripted timeline: 2000 bounded edits, 3 frames each
        timeline.set("toy", [k, 0, 0], start=3 * k, stop=3 * k + 3)
    costs = []
    for t in range(6000):
        before = timeline.ops
        assert timeline.at(t)["toy"][0] == t // 3
        costs.append(timeline.ops - before)
    assert max(costs[100:]) <= 3 * len(toy_stack.plugins), max(costs)


def test_forget_before_bounds_memory(toy_stack) -> None:
    timeline = ControlTimeline(toy_stack)
    for t in range(1000):
        timeline.set("toy", [t, 0, 0], start=t, stop=t + 5)
        timeline.at(t)
        timeline.forget_before(t)
    assert timeline.segments("toy") <= 6 and len(timeline.edits) <= 6
    assert timeline.at(999)["toy"][0] == 999


def test_past_end_policies(toy_stack) -> None:
    rows = torch.arange(9.0).reshape(3, 3)  # 3 rows for the 3-wide toy control
    timeline = ControlTimeline(toy_stack)
    timeline.set("toy", [-1.0, -1.0, -1.0])
    timeline.set("toy", rows, start=2)  # default: absent -> the earlier constant shows again
    toy = timeline.span(0, 8)["toy"][0]
    assert toy[5:].tolist() == [[-1.0] * 3] * 3 and toy[2:5].tolist() == rows.tolist()

    held = ControlTimeline(toy_stack)
    held.set("toy", rows, start=2, stop=7, past_end="hold")
    toy = held.span(0, 9)["toy"][0]
    assert toy[5:7].tolist() == [rows[2].tolist()] * 2 and toy[7:].isnan().all() and toy[:2].isnan().all()

    looped = ControlTimeline(toy_stack, past_end={"toy": "loop"})
    looped.set("toy", rows, start=1)
    toy = looped.span(0, 9)["toy"][0]
    assert toy[1:9].tolist() == [rows[i % 3].tolist() for i in range(8)]


def test_past_end_warns_once_naming_the_control(toy_stack, caplog) -> None:
    timeline = ControlTimeline(toy_stack, past_end={"toy": "hold"})
    timeline.set("toy", torch.ones(4, 3), start=0)
    timeline.set("toy_audio", torch.ones(20, 4), start=0, stop=10)  # long enough: no warning
    with caplog.at_level(logging.WARNING, logger="eartalk.conditions.timeline"):
        for t in range(12):
            timeline.at(t)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings
    assert "'toy'" in warnings[0] and "4 rows" in warnings[0] and "'hold'" in warnings[0]


def test_no_warning_when_the_rows_cover_the_range_or_were_painted_over(toy_stack, caplog) -> None:
    timeline = ControlTimeline(toy_stack)
    timeline.set("toy", torch.ones(4, 3), start=0, stop=4)
    timeline.set("toy_audio", torch.ones(3, 4), start=0)
    timeline.set("toy_audio", [0.0] * 4, start=1)  # replaces the short rows before they run out
    with caplog.at_level(logging.WARNING, logger="eartalk.conditions.timeline"):
        timeline.span(0, 10)
    assert caplog.records == []


def test_bad_policy_and_empty_range_are_input_errors(toy_stack) -> None:
    timeline = ControlTimeline(toy_stack)
    with pytest.raises(InputError, match="unknown policy 'repeat'.*absent, hold, loop"):
        timeline.set("toy", torch.ones(2, 3), past_end="repeat")
    with pytest.raises(InputError, match="unknown policy"):
        ControlTimeline(toy_stack, past_end={"toy": "forever"})
    with pytest.raises(InputError, match="empty frame range 5:5"):
        timeline.set("toy", [0, 0, 0], start=5, stop=5)
    assert math.isnan(timeline.at(0)["toy"][0])


def test_generate_applies_the_past_end_policy_per_control(toy_stack, tmp_path, caplog) -> None:
    """`eartalk generate --past-end NAME=loop`: a 3-row file over 8 frames loops (and says so once);
    parse errors name the argument."""
    import numpy as np

    from eartalk.recipes.generate import ControlEdit, parse_past_end, run_session

    assert parse_past_end(["head_pose=hold", " blink = loop "]) == {"head_pose": "hold", "blink": "loop"}
    with pytest.raises(InputError, match="expected NAME=POLICY"):
        parse_past_end(["head_pose"])
    with pytest.raises(InputError, match="unknown policy 'forever'"):
        parse_past_end(["head_pose=forever"])

    stack = toy_stack

    class Session:  # what run_session drives: the real timeline, a step that records the controls
        def __init__(self) -> None:
            self.timeline, self.index, self.rows = ControlTimeline(stack), 0, []

        def set_control(self, name, value, start=None, stop=None):
            self.timeline.set(name, value, self.index if start is None else start, stop)

        def step(self):
            self.rows.append(self.timeline.at(self.index)["toy"])
            self.index += 1
            return type("Out", (), {"pixels": torch.zeros(1, 3, 8, 8)})()

    session = Session()
    model = type("Model", (), {"stack": stack, "session": lambda self, reference, **kw: session})()
    np.save(tmp_path / "pose.npy", np.arange(9, dtype=np.float32).reshape(3, 3))
    with caplog.at_level(logging.WARNING, logger="eartalk.conditions.timeline"):
        run_session(model, torch.zeros(3, 8, 8), 8, [ControlEdit("toy", str(tmp_path / "pose.npy"))],
                    progress=False, past_end={"toy": "loop"})
    assert [int(row[0]) for row in session.rows] == [0, 3, 6, 0, 3, 6, 0, 3], "the 3 rows loop"
    assert [r.getMessage().count("past_end='loop'") for r in caplog.records] == [1]
