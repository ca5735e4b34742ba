"""Conformance kit for condition plugins.

A third-party package checks its plugin against the protocol by subclassing the mixin in its own
tests (pytest collects the inherited ``test_*`` methods)::

    from eartalk.conditions.conformance import ConditionPluginConformance
    from eartalk.core.types import Sample

    class TestBrightness(ConditionPluginConformance):
        plugin_class = Brightness
        registered = True          # also check it is installed under its name

        def make_sample(self):
            return Sample(frames=torch.randint(0, 255, (6, 3, 32, 32), dtype=torch.uint8))

The same checks are available as one call, :func:`check_condition_plugin`, for use outside pytest.
Every failure is a :class:`KitFailure` naming the check, what was expected and what came instead.
Besides the protocol (shapes, dtypes, frame locality, null tokens, values, state dict), the kit
checks that gradients are finite for every input (absent rows included) and that the plugin
fine-tunes: a short training run must move its tokenizer and make its tokens tell rows apart.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, ClassVar

import attrs
import numpy as np
import torch

from eartalk.core.errors import PluginError
from eartalk.core.protocol import ConditionPlugin
from eartalk.core.types import Sample

D_MODEL = 16


class KitFailure(AssertionError):
    """A conformance check failed; the message says which check, what was expected and what came."""


def _fail(plugin_class: type, check: str, message: str) -> KitFailure:
    return KitFailure(f"conformance of {plugin_class.__module__}.{plugin_class.__qualname__} "
                      f"(name {getattr(plugin_class, 'name', '?')!r}), check {check!r}: {message}")


class ConditionPluginConformance:
    """Mixin of protocol tests for one condition plugin class.

    Attributes:
        plugin_class: the plugin class under test.
        options: options instance to build it with (None: defaults). Subclass the test class with
            other ``options`` to check other option sets.
        registered: also assert that the installed registry maps ``name`` to ``plugin_class``.
        atol: tolerance of numeric comparisons.
        finetune_steps: optimiser steps of the fine-tune check.
    """

    plugin_class: ClassVar[type[ConditionPlugin]]
    options: ClassVar[Any] = None
    registered: ClassVar[bool] = False
    atol: ClassVar[float] = 1e-5
    finetune_steps: ClassVar[int] = 60

    # -- to provide ------------------------------------------------------------------------
    def make_sample(self) -> Sample:
        """A small training sample this plugin can extract a signal from (at least 4 frames)."""
        raise NotImplementedError("subclasses of ConditionPluginConformance implement make_sample()")

    def distinct_rows(self) -> torch.Tensor | None:
        """``(N, signal_dim)`` rows that should give different tokens, for the fine-tune check.

        Default (None): the distinct present rows of :meth:`make_sample`'s signal, plus small
        perturbations of them. Override it for plugins whose values are discrete (labels) or
        constant over a clip.
        """
        return None

    # -- helpers -----------------------------------------------------------------------------
    def fail(self, check: str, message: str) -> KitFailure:
        return _fail(self.plugin_class, check, message)

    def make_plugin(self) -> ConditionPlugin:
        torch.manual_seed(0)
        try:
            plugin = self.plugin_class(d_model=D_MODEL, options=self.options)
        except Exception as err:
            raise self.fail("construct", f"{self.plugin_class.__qualname__}(d_model={D_MODEL}, options={self.options!r}) "
                                         f"raised {type(err).__name__}: {err}") from err
        plugin.eval()
        return plugin

    def _signal(self, plugin: ConditionPlugin) -> tuple[Sample, torch.Tensor]:
        sample = self.make_sample()
        signal = plugin.extract(sample)
        if not isinstance(signal, torch.Tensor):
            raise self.fail("extract", f"extract() must return a torch.Tensor (T, {plugin.signal_dim}) float32, "
                                       f"got {type(signal).__name__}")
        return sample, signal

    def _random_signal(self, plugin: ConditionPlugin, frames: int, batch: int = 2) -> torch.Tensor:
        _, signal = self._signal(plugin)
        finite = signal[torch.isfinite(signal).all(dim=-1)]
        base = finite[:1] if finite.shape[0] else torch.zeros(1, plugin.signal_dim)  # (1, D): a realistic row
        gen = torch.Generator().manual_seed(1)
        noise = torch.randn(batch, frames, plugin.signal_dim, generator=gen) * 0.1
        return base.float()[None].expand(batch, frames, -1) + noise  # (B, T, D)

    def _tokens(self, plugin: ConditionPlugin, check: str, signal: torch.Tensor,
                present: torch.Tensor | None = None) -> torch.Tensor:
        try:
            return plugin(signal, present)
        except PluginError as err:
            raise self.fail(check, str(err)) from err

    def _tokenizer_params(self, plugin: ConditionPlugin) -> list[tuple[str, torch.nn.Parameter]]:
        params = [(n, p) for n, p in plugin.named_parameters() if n != "null_token" and p.requires_grad]
        if not params:
            raise self.fail("gradients", "expected trainable tokenizer parameters besides null_token, got none "
                                         "(build the tokenizer as nn.Module attributes in __init__)")
        return params

    def _default_rows(self, plugin: ConditionPlugin) -> torch.Tensor:
        """Four rows spread over the columns' declared ranges (``column_docs``), else the sample's
        first present row moved by multiples of each column's spread."""
        docs = {c.name: c for c in type(plugin).column_docs}
        ranges = [docs.get(c, docs.get("*")) for c in plugin.columns]
        if all(r is not None and r.range is not None and None not in r.range for r in ranges):
            low = torch.tensor([float(r.range[0]) for r in ranges])
            high = torch.tensor([float(r.range[1]) for r in ranges])
            return torch.stack([low + f * (high - low) for f in (0.0, 1 / 3, 2 / 3, 1.0)])
        _, signal = self._signal(plugin)
        finite = signal[torch.isfinite(signal).all(dim=-1)].float()
        base = finite[0] if finite.shape[0] else torch.zeros(plugin.signal_dim)
        spread = finite.std(dim=0) if finite.shape[0] > 1 else torch.zeros(plugin.signal_dim)
        step = torch.maximum(torch.nan_to_num(spread), 0.25 * (base.abs() + 0.2))
        return torch.stack([base + k * step for k in (0.0, 1.0, -1.0, 2.0)])

    # -- the checks ----------------------------------------------------------------------------
    def test_declares_protocol(self) -> None:
        cls = self.plugin_class
        if not (isinstance(cls.name, str) and cls.name.replace("-", "_").isidentifier()):
            raise self.fail("declares_protocol", f"expected `name` to be an identifier, got {cls.name!r}")
        if not attrs.has(cls.Options):
            raise self.fail("declares_protocol", f"expected `Options` to be an attrs class, got {cls.Options!r}")
        try:
            cls.Options()
        except Exception as err:
            raise self.fail("declares_protocol", f"expected Options() to build with defaults, got "
                                                 f"{type(err).__name__}: {err}") from err
        for method in ("extract", "encode"):
            if getattr(cls, method) is getattr(ConditionPlugin, method):
                raise self.fail("declares_protocol", f"expected {method}() to be implemented, got the base class's")
        plugin = self.make_plugin()
        if plugin.slots < 1 or plugin.signal_dim < 1:
            raise self.fail("declares_protocol", f"expected slots >= 1 and signal_dim >= 1, got {plugin.slots}, "
                                                 f"{plugin.signal_dim}")
        if tuple(plugin.null_token.shape) != (plugin.slots, D_MODEL):
            raise self.fail("declares_protocol", f"expected null_token of shape {(plugin.slots, D_MODEL)}, "
                                                 f"got {tuple(plugin.null_token.shape)}")
        if len(plugin.columns) != plugin.signal_dim:
            raise self.fail("declares_protocol", f"expected one column name per signal dimension "
                                                 f"({plugin.signal_dim}), got {len(plugin.columns)}: {plugin.columns}")
        if plugin.lookahead_frames < 0:
            raise self.fail("declares_protocol", f"expected lookahead_frames >= 0, got {plugin.lookahead_frames}")
        # The encode output is checked by the protocol (check_tokens) the first time it runs.
        self._tokens(plugin, "declares_protocol", self._random_signal(plugin, frames=2))

    def test_registered_under_its_name(self) -> None:
        if not self.registered:
            return
        from eartalk.core.registry import build_registry

        found = build_registry().condition(self.plugin_class.name)
        if found is not self.plugin_class:
            raise self.fail("registered", f"expected the registry to map {self.plugin_class.name!r} to "
                                          f"{self.plugin_class.__qualname__}, got {found!r}")

    def test_extract_gives_one_row_per_frame(self) -> None:
        plugin = self.make_plugin()
        sample, signal = self._signal(plugin)
        if signal.dtype != torch.float32:
            raise self.fail("extract", f"expected extract() to return dtype torch.float32, got {signal.dtype} "
                                       "(use .float() or torch.float32 tensors)")
        if tuple(signal.shape) != (sample.num_frames, plugin.signal_dim):
            raise self.fail("extract", f"expected shape (T, signal_dim) = {(sample.num_frames, plugin.signal_dim)}, "
                                       f"got {tuple(signal.shape)}")
        if torch.isinf(signal).any():
            raise self.fail("extract", f"expected NaN rows for absent frames, got inf at "
                                       f"{torch.isinf(signal).nonzero()[:3].tolist()}")

    def test_encode_shape_and_frame_locality(self) -> None:
        plugin = self.make_plugin()
        signal = self._random_signal(plugin, frames=5)
        tokens = self._tokens(plugin, "encode", signal)
        changed = signal.clone()
        changed[:, 3] += 0.5
        tokens2 = self._tokens(plugin, "encode", changed)
        # Tokens of frame t depend on row t only (streaming needs no future rows).
        for frames in (slice(0, 3), slice(4, 5)):
            diff = float((tokens2[:, frames] - tokens[:, frames]).detach().abs().max())
            if diff > self.atol:
                raise self.fail("frame_locality", f"changing row 3 changed the tokens of frames "
                                                  f"{list(range(5))[frames]} by up to {diff:.3g}: expected encode() to "
                                                  "be frame-local (row t alone makes frame t's tokens)")

    def test_absent_frames_are_the_null_token(self) -> None:
        plugin = self.make_plugin()
        signal = self._random_signal(plugin, frames=6)
        present = torch.ones(2, 6, dtype=torch.bool)
        present[:, 2:4] = False
        tokens = self._tokens(plugin, "absent", signal, present)
        null = plugin.null_token.detach()
        if not torch.equal(tokens[:, 2:4], null.expand(2, 2, -1, -1)):
            raise self.fail("absent", "expected the null token on frames with present=False, got other tokens "
                                      "(do not override forward(), or keep its torch.where on `present`)")
        nan_signal = signal.clone()
        nan_signal[:, 5] = float("nan")
        tokens_nan = self._tokens(plugin, "absent", nan_signal)
        if not torch.equal(tokens_nan[:, 5], null.expand(2, -1, -1)):
            raise self.fail("absent", "expected the null token on NaN rows, got other tokens")
        if not torch.isfinite(tokens_nan).all():
            raise self.fail("absent", "expected finite tokens when some rows are NaN, got non-finite values")
        other = signal.clone()
        other[:, 2:4] += 3.0  # values under an absent mask are ignored
        diff = float((self._tokens(plugin, "absent", other, present) - tokens).detach().abs().max())
        if diff > self.atol:
            raise self.fail("absent", f"expected values under an absent mask to be ignored, tokens changed by {diff:.3g}")

    def test_gradients_reach_tokenizer_and_null_token(self) -> None:
        plugin = self.make_plugin()
        plugin.train()
        signal = self._random_signal(plugin, frames=4)
        present = torch.tensor([[True, False, True, True]] * 2)
        self._tokens(plugin, "gradients", signal, present).square().sum().backward()
        if plugin.null_token.grad is None or plugin.null_token.grad.abs().sum() == 0:
            raise self.fail("gradients", "expected a non-zero gradient on null_token from an absent frame, got none")
        trainable = self._tokenizer_params(plugin)
        if not any(p.grad is not None and p.grad.abs().sum() > 0 for _, p in trainable):
            raise self.fail("gradients", "expected a non-zero gradient on the tokenizer's parameters "
                                         f"({', '.join(n for n, _ in trainable)}), got none: is encode() detached "
                                         "(torch.no_grad, .detach(), numpy)?")

    def test_gradients_are_finite_for_all_inputs(self) -> None:
        """Every gradient is finite, with absent rows (NaN or masked) in the batch and with a batch
        where nothing is present: ``encode`` sees a present row (or ``absent_fill``) there."""
        plugin = self.make_plugin()
        plugin.train()
        signal = self._random_signal(plugin, frames=4)
        nan_rows = signal.clone()
        nan_rows[:, 1] = float("nan")
        cases = {
            "all rows present": (signal, None),
            "NaN rows": (nan_rows, None),
            "masked rows": (signal, torch.tensor([[True, False, False, True]] * 2)),
            "nothing present": (torch.full_like(signal, float("nan")), None),
        }
        for case, (values, present) in cases.items():
            plugin.zero_grad(set_to_none=True)
            self._tokens(plugin, "finite_gradients", values, present).square().sum().backward()
            bad = [n for n, p in plugin.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
            if bad:
                raise self.fail("finite_gradients", f"expected finite gradients with {case}, got non-finite gradients "
                                                    f"on {bad}. encode() sees a present row of the batch on absent "
                                                    "frames, or `absent_fill` (default zeros) when none is present: "
                                                    "keep encode finite there (clamp before log/sqrt/division) or "
                                                    "set absent_fill to a valid row")

    def test_fine_tunes(self) -> None:
        """A short training run: the tokenizer learns to tell rows apart from its tokens alone, so a
        detached encode (no gradient) or a constant one (no signal in the tokens) fails."""
        plugin = self.make_plugin()
        rows = self.distinct_rows()
        if rows is None:
            rows = self._default_rows(plugin)
        rows = torch.as_tensor(rows, dtype=torch.float32)
        n = rows.shape[0]
        if n < 2:
            raise self.fail("fine_tunes", f"expected at least 2 distinct rows to train on, got {n}; override "
                                          "distinct_rows()")
        torch.manual_seed(0)
        plugin.train()
        readout = torch.nn.Linear(plugin.slots * D_MODEL, n)
        optim = torch.optim.Adam([*plugin.parameters(), *readout.parameters()], lr=1e-2)
        trainable = self._tokenizer_params(plugin)
        before = {name: p.detach().clone() for name, p in trainable}
        labels = torch.arange(n).repeat(4)  # (4N,)
        signal = rows[labels][None]  # (1, 4N, D): one frame per row
        losses = []
        for step in range(self.finetune_steps):
            optim.zero_grad()
            tokens = self._tokens(plugin, "fine_tunes", signal)  # (1, 4N, slots, D)
            loss = torch.nn.functional.cross_entropy(readout(tokens.reshape(labels.shape[0], -1)), labels)
            loss.backward()
            grads = [p.grad for _, p in trainable if p.grad is not None]
            if not grads or all(float(g.abs().sum()) == 0 for g in grads):
                raise self.fail("fine_tunes", f"expected the tokenizer to receive gradient in a training step, got "
                                              f"none at step {step}: encode() is detached from its parameters")
            if any(not torch.isfinite(g).all() for g in grads):
                raise self.fail("fine_tunes", f"expected finite tokenizer gradients, got non-finite ones at step {step}")
            optim.step()
            losses.append(float(loss.detach()))
        moved = max(float((p.detach() - before[name]).abs().max()) for name, p in trainable)
        if moved == 0:
            raise self.fail("fine_tunes", "expected the tokenizer's weights to change in training, got no change")
        chance = math.log(n)
        final = sum(losses[-5:]) / 5
        if final > 0.75 * chance:
            raise self.fail("fine_tunes", f"expected the loss of telling {n} distinct rows apart from their tokens to "
                                          f"fall below {0.75 * chance:.3f} (0.75 log {n}, chance), got {final:.3f} "
                                          f"after {self.finetune_steps} steps (from {losses[0]:.3f}): the tokens do not "
                                          "depend on the signal (a constant encode?)")

    def test_state_dict_round_trip(self) -> None:
        plugin = self.make_plugin()
        buffer = io.BytesIO()
        torch.save(plugin.state_dict(), buffer)
        torch.manual_seed(123)
        fresh = self.plugin_class(d_model=D_MODEL, options=self.options).eval()
        buffer.seek(0)
        try:
            fresh.load_state_dict(torch.load(buffer, weights_only=True))
        except Exception as err:
            raise self.fail("state_dict", f"expected a fresh instance to load the state dict, got "
                                          f"{type(err).__name__}: {err}") from err
        signal = self._random_signal(plugin, frames=3)
        diff = float((fresh(signal) - plugin(signal)).detach().abs().max())
        if diff > self.atol:
            raise self.fail("state_dict", f"expected identical tokens after a state-dict round trip, got a "
                                          f"difference of {diff:.3g} (state kept outside parameters and buffers?)")

    def test_inference_values(self, tmp_path: Path) -> None:
        plugin = self.make_plugin()
        _, signal = self._signal(plugin)
        frames = signal.shape[0]

        def same(got: torch.Tensor, want: torch.Tensor, what: str, tol: float = 1e-6) -> None:
            if tuple(got.shape) != tuple(want.shape):
                raise self.fail("values", f"{what}: expected shape {tuple(want.shape)}, got {tuple(got.shape)}")
            if not torch.allclose(got, want, atol=tol, rtol=tol, equal_nan=True):
                raise self.fail("values", f"{what}: expected {want.flatten()[:6].tolist()}..., "
                                          f"got {got.flatten()[:6].tolist()}...")

        if not plugin.values(None, frames).isnan().all():
            raise self.fail("values", "expected values(None) to be absent (NaN) on every frame")
        row = torch.nan_to_num(signal[0])
        same(plugin.values(row.tolist(), frames), row.expand(frames, -1), "a constant list")
        per_frame = torch.nan_to_num(signal)
        np.save(tmp_path / "values.npy", per_frame.numpy())
        same(plugin.values(tmp_path / "values.npy", frames), per_frame, "a .npy file")
        (tmp_path / "values.json").write_text(json.dumps(per_frame.tolist()))
        same(plugin.values(str(tmp_path / "values.json"), frames), per_frame, "a .json file")
        header = ",".join(plugin.columns)
        body = "\n".join(",".join(f"{v:.8g}" for v in r) for r in per_frame.tolist())
        (tmp_path / "values.csv").write_text(header + "\n" + body + "\n")
        same(plugin.values(tmp_path / "values.csv", frames), per_frame, "a .csv file with a header", tol=1e-5)
        longer = plugin.values(per_frame[:2], frames + 3)
        if not longer[2:].isnan().all():
            raise self.fail("values", "expected frames past the end of given values to be absent (NaN)")
        same(plugin.values(tmp_path / "values.npy"), per_frame, "natural length: every row")
        same(plugin.values(row.tolist()), row, "natural length: a constant is one row")

    def test_in_a_stack_and_timeline(self) -> None:
        from eartalk.conditions import ConditionStack, ControlTimeline
        from eartalk.conditions.testing import ToyAudio, ToyCondition

        plugin = self.make_plugin()
        companion = ToyCondition(D_MODEL) if plugin.name != ToyCondition.name else ToyAudio(D_MODEL)
        stack = ConditionStack([companion, plugin]).eval()
        span = stack.layout[1]
        if (span.offset, span.slots) != (companion.slots, plugin.slots):
            raise self.fail("stack", f"expected slots at offset {companion.slots} x {plugin.slots}, "
                                     f"got {span.offset} x {span.slots}")
        _, signal = self._signal(plugin)
        row = torch.nan_to_num(signal[0])
        timeline = ControlTimeline(stack)
        timeline.set(plugin.name, row.tolist(), start=2)
        values = timeline.span(0, 4)
        tokens = stack(values)  # (1, 4, K, D)
        null = plugin.null_token.detach() + stack.type_embedding[1].detach()
        if not torch.allclose(tokens[0, :2, span.offset:], null.expand(2, -1, -1)):
            raise self.fail("stack", "expected the null token before the control starts (frames 0-1)")
        if torch.allclose(tokens[0, 2, span.offset:], null):
            raise self.fail("stack", "expected the control's tokens from frame 2 on, got the null token")


#: The order :func:`check_condition_plugin` runs the checks in (the basic ones first).
CHECK_ORDER = [
    "test_declares_protocol", "test_registered_under_its_name", "test_extract_gives_one_row_per_frame",
    "test_encode_shape_and_frame_locality", "test_absent_frames_are_the_null_token",
    "test_gradients_reach_tokenizer_and_null_token", "test_gradients_are_finite_for_all_inputs", "test_fine_tunes",
    "test_state_dict_round_trip", "test_inference_values", "test_in_a_stack_and_timeline",
]


def check_condition_plugin(plugin_class: type[ConditionPlugin], make_sample: Any, options: Any = None,
                           tmp_dir: str | Path | None = None, distinct_rows: Any = None) -> None:
    """Run every conformance check on ``plugin_class`` outside pytest.

    Raises:
        KitFailure: (an AssertionError) naming the check, what was expected and what came instead.
    """
    import tempfile

    attrs_ = {"plugin_class": plugin_class, "options": options, "make_sample": lambda self: make_sample()}
    if distinct_rows is not None:
        attrs_["distinct_rows"] = lambda self: distinct_rows()
    kit = type("Kit", (ConditionPluginConformance,), attrs_)()
    with tempfile.TemporaryDirectory() as tmp:
        for name in CHECK_ORDER + sorted(n for n in dir(kit) if n.startswith("test_") and n not in CHECK_ORDER):
            if name.startswith("test_"):
                method = getattr(kit, name)
                if "tmp_path" in method.__code__.co_varnames[: method.__code__.co_argcount]:
                    method(Path(tmp_dir or tmp))
                else:
                    method()
