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
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, ClassVar

import attrs
import numpy as np
import torch

from eartalk.core.protocol import ConditionPlugin
from eartalk.core.types import Sample

D_MODEL = 16


class ConditionPluginConformance:
    """Mixin of protocol tests for one condition plugin class.

    Attributes:
        plugin_class: the plugin class under test.
        options: options instance to build it with (None: defaults).
        registered: also assert that the installed registry maps ``name`` to ``plugin_class``.
        atol: tolerance of numeric comparisons.
    """

    plugin_class: ClassVar[type[ConditionPlugin]]
    options: ClassVar[Any] = None
    registered: ClassVar[bool] = False
    atol: ClassVar[float] = 1e-5

    # -- to provide ------------------------------------------------------------------------
    def make_sample(self) -> Sample:
        """A small training sample this plugin can extract a signal from (at least 4 frames)."""
        raise NotImplementedError("subclasses of ConditionPluginConformance implement make_sample()")

    # -- helpers -----------------------------------------------------------------------------
    def make_plugin(self) -> ConditionPlugin:
        torch.manual_seed(0)
        plugin = self.plugin_class(d_model=D_MODEL, options=self.options)
        plugin.eval()
        return plugin

    def _signal(self, plugin: ConditionPlugin) -> tuple[Sample, torch.Tensor]:
        sample = self.make_sample()
        signal = plugin.extract(sample)
        return sample, signal

    def _random_signal(self, plugin: ConditionPlugin, frames: int, batch: int = 2) -> torch.Tensor:
        _, signal = self._signal(plugin)
        base = torch.nan_to_num(signal[:1], nan=0.0)  # (1, D): a realistic row
        gen = torch.Generator().manual_seed(1)
        noise = torch.randn(batch, frames, plugin.signal_dim, generator=gen) * 0.1
        return base[None].expand(batch, frames, -1) + noise  # (B, T, D)

    # -- the checks ----------------------------------------------------------------------------
    def test_declares_protocol(self) -> None:
        cls = self.plugin_class
        assert isinstance(cls.name, str) and cls.name.replace("-", "_").isidentifier(), "name must be an identifier"
        assert attrs.has(cls.Options), "Options must be an attrs class"
        cls.Options()  # defaults must construct
        assert cls.extract is not ConditionPlugin.extract, "extract() is not implemented"
        assert cls.encode is not ConditionPlugin.encode, "encode() is not implemented"
        plugin = self.make_plugin()
        assert plugin.slots >= 1 and plugin.signal_dim >= 1
        assert tuple(plugin.null_token.shape) == (plugin.slots, D_MODEL)
        assert len(plugin.columns) == plugin.signal_dim, "one column name per signal dimension"
        assert plugin.lookahead_frames >= 0

    def test_registered_under_its_name(self) -> None:
        if not self.registered:
            return
        from eartalk.core.registry import build_registry

        assert build_registry().condition(self.plugin_class.name) is self.plugin_class

    def test_extract_gives_one_row_per_frame(self) -> None:
        plugin = self.make_plugin()
        sample, signal = self._signal(plugin)
        assert signal.dtype == torch.float32
        assert tuple(signal.shape) == (sample.num_frames, plugin.signal_dim)
        assert not torch.isinf(signal).any(), "use NaN rows for absent frames, never inf"

    def test_encode_shape_and_frame_locality(self) -> None:
        plugin = self.make_plugin()
        signal = self._random_signal(plugin, frames=5)
        tokens = plugin(signal)
        assert tuple(tokens.shape) == (2, 5, plugin.slots, D_MODEL)
        changed = signal.clone()
        changed[:, 3] += 0.5
        tokens2 = plugin(changed)
        # Tokens of frame t depend on row t only (streaming needs no future rows).
        torch.testing.assert_close(tokens2[:, :3], tokens[:, :3], atol=self.atol, rtol=0)
        torch.testing.assert_close(tokens2[:, 4:], tokens[:, 4:], atol=self.atol, rtol=0)

    def test_absent_frames_are_the_null_token(self) -> None:
        plugin = self.make_plugin()
        signal = self._random_signal(plugin, frames=6)
        present = torch.ones(2, 6, dtype=torch.bool)
        present[:, 2:4] = False
        tokens = plugin(signal, present)
        null = plugin.null_token.detach()
        torch.testing.assert_close(tokens[:, 2:4], null.expand(2, 2, -1, -1), atol=0, rtol=0)
        nan_signal = signal.clone()
        nan_signal[:, 5] = float("nan")
        tokens_nan = plugin(nan_signal)
        torch.testing.assert_close(tokens_nan[:, 5], null.expand(2, -1, -1), atol=0, rtol=0)
        assert torch.isfinite(tokens_nan).all()
        other = signal.clone()
        other[:, 2:4] += 3.0  # values under an absent mask are ignored
        torch.testing.assert_close(plugin(other, present), tokens, atol=self.atol, rtol=0)

    def test_gradients_reach_tokenizer_and_null_token(self) -> None:
        plugin = self.make_plugin()
        plugin.train()
        signal = self._random_signal(plugin, frames=4)
        present = torch.tensor([[True, False, True, True]] * 2)
        plugin(signal, present).square().sum().backward()
        assert plugin.null_token.grad is not None and plugin.null_token.grad.abs().sum() > 0
        trainable = [p for n, p in plugin.named_parameters() if n != "null_token" and p.requires_grad]
        assert trainable, "the tokenizer must have trainable parameters"
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)

    def test_state_dict_round_trip(self) -> None:
        plugin = self.make_plugin()
        buffer = io.BytesIO()
        torch.save(plugin.state_dict(), buffer)
        torch.manual_seed(123)
        fresh = self.plugin_class(d_model=D_MODEL, options=self.options).eval()
        buffer.seek(0)
        fresh.load_state_dict(torch.load(buffer, weights_only=True))
        signal = self._random_signal(plugin, frames=3)
        torch.testing.assert_close(fresh(signal), plugin(signal), atol=self.atol, rtol=0)

    def test_inference_values(self, tmp_path: Path) -> None:
        plugin = self.make_plugin()
        _, signal = self._signal(plugin)
        frames = signal.shape[0]
        assert plugin.values(None, frames).isnan().all(), "None means absent on every frame"
        row = torch.nan_to_num(signal[0])
        constant = plugin.values(row.tolist(), frames)
        torch.testing.assert_close(constant, row.expand(frames, -1))
        per_frame = torch.nan_to_num(signal)
        np.save(tmp_path / "values.npy", per_frame.numpy())
        torch.testing.assert_close(plugin.values(tmp_path / "values.npy", frames), per_frame)
        (tmp_path / "values.json").write_text(json.dumps(per_frame.tolist()))
        torch.testing.assert_close(plugin.values(str(tmp_path / "values.json"), frames), per_frame)
        header = ",".join(plugin.columns)
        body = "\n".join(",".join(f"{v:.8g}" for v in r) for r in per_frame.tolist())
        (tmp_path / "values.csv").write_text(header + "\n" + body + "\n")
        torch.testing.assert_close(plugin.values(tmp_path / "values.csv", frames), per_frame, atol=1e-5, rtol=1e-5)
        longer = plugin.values(per_frame[:2], frames + 3)
        assert longer[2:].isnan().all(), "frames past the end of given values are absent"
        torch.testing.assert_close(plugin.values(tmp_path / "values.npy"), per_frame, msg="natural length: every row")
        torch.testing.assert_close(plugin.values(row.tolist()), row, msg="natural length: a constant is one row")

    def test_in_a_stack_and_timeline(self) -> None:
        from eartalk.conditions import ConditionStack, ControlTimeline
        from eartalk.conditions.testing import ToyAudio, ToyCondition

        plugin = self.make_plugin()
        companion = ToyCondition(D_MODEL) if plugin.name != ToyCondition.name else ToyAudio(D_MODEL)
        stack = ConditionStack([companion, plugin]).eval()
        span = stack.layout[1]
        assert (span.offset, span.slots) == (companion.slots, plugin.slots)
        _, signal = self._signal(plugin)
        row = torch.nan_to_num(signal[0])
        timeline = ControlTimeline(stack)
        timeline.set(plugin.name, row.tolist(), start=2)
        values = timeline.span(0, 4)
        tokens = stack(values)  # (1, 4, K, D)
        null = plugin.null_token.detach() + stack.type_embedding[1].detach()
        torch.testing.assert_close(tokens[0, :2, span.offset :], null.expand(2, -1, -1))
        assert not torch.allclose(tokens[0, 2, span.offset :], null)


def check_condition_plugin(plugin_class: type[ConditionPlugin], make_sample: Any, options: Any = None, tmp_dir: str | Path | None = None) -> None:
    """Run every conformance check on ``plugin_class`` outside pytest; raises AssertionError."""
    import tempfile

    kit = type("Kit", (ConditionPluginConformance,), {"plugin_class": plugin_class, "options": options,
                                                       "make_sample": lambda self: make_sample()})()
    with tempfile.TemporaryDirectory() as tmp:
        for name in dir(kit):
            if name.startswith("test_"):
                method = getattr(kit, name)
                if "tmp_path" in method.__code__.co_varnames[: method.__code__.co_argcount]:
                    method(Path(tmp_dir or tmp))
                else:
                    method()
