"""A condition stack: an ordered list of condition plugins producing each frame's FCIC slots.

Slots are concatenated in config order (``K = sum(k_i)``), and each plugin's slots get a learned
type embedding. For training, :meth:`ConditionStack.drop` sets plugins to absent for whole clips
and for random spans of frames, so that any control may be missing, start or stop at any frame
at inference time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import torch
from torch import nn

from eartalk.core.config import structure
from eartalk.core.errors import ConfigError, EartalkError
from eartalk.core.protocol import ConditionPlugin
from eartalk.core.types import Sample


@attrs.frozen
class DropoutSpec:
    """Training-time dropout of one control to its null token.

    Attributes:
        clip: probability that the control is absent for a whole clip.
        span: probability that, in a clip where it is present, one random span is absent.
        span_min: shortest dropped span in frames.
        span_max: longest dropped span in frames.
    """

    clip: float = 0.1
    span: float = 0.1
    span_min: int = 2
    span_max: int = 12

    def __attrs_post_init__(self) -> None:
        if not (0.0 <= self.clip <= 1.0 and 0.0 <= self.span <= 1.0):
            raise ValueError(f"dropout probabilities must be in [0, 1], got clip={self.clip}, span={self.span}")
        if not 1 <= self.span_min <= self.span_max:
            raise ValueError(f"need 1 <= span_min <= span_max, got {self.span_min}, {self.span_max}")


@attrs.frozen
class ConditionSpec:
    """One entry of a config's ``conditions:`` list."""

    name: str
    options: dict[str, Any] = attrs.field(factory=dict)
    dropout: DropoutSpec = DropoutSpec()


@attrs.frozen
class SlotSpan:
    """Where a plugin's slots sit in a frame block: ``[offset, offset + slots)``."""

    name: str
    offset: int
    slots: int
    type_id: int


def build_plugins(specs: Sequence[ConditionSpec], d_model: int, source: str = "<config>", registry: Any = None) -> list[ConditionPlugin]:
    """Instantiate the plugins named by ``specs``; plugin options are structured strictly."""
    if registry is None:
        from eartalk.core.registry import get_registry

        registry = get_registry()
    plugins = []
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        if spec.name in seen:
            raise ConfigError(f"{source}: condition {spec.name!r} appears twice in conditions")
        seen.add(spec.name)
        try:
            cls = registry.condition(spec.name)
        except KeyError as err:
            raise ConfigError(f"{source}: conditions.{i}.name: {err}") from None
        options = structure(spec.options, cls.Options, source=f"{source} (conditions.{i}.options of {spec.name!r})")
        plugins.append(cls(d_model=d_model, options=options))
    return plugins


def validate_specs(specs: Sequence[ConditionSpec], source: str, registry: Any = None) -> None:
    """Check names and options of ``specs`` without building modules' weights twice."""
    build_plugins(specs, d_model=8, source=source, registry=registry)


class ConditionStack(nn.Module):
    """Plugins in config order, producing ``(B, T, K, d_model)`` FCIC tokens per frame.

    Args:
        plugins: condition plugins, all with the same ``d_model``.
        dropout: one :class:`DropoutSpec` per plugin (default: ``DropoutSpec()`` each).
    """

    def __init__(self, plugins: Sequence[ConditionPlugin], dropout: Sequence[DropoutSpec] | None = None) -> None:
        super().__init__()
        if not plugins:
            raise ValueError("a condition stack needs at least one condition plugin")
        dims = {p.d_model for p in plugins}
        if len(dims) != 1:
            raise ValueError(f"all condition plugins need the same d_model, got {sorted(dims)}")
        names = [p.name for p in plugins]
        if len(set(names)) != len(names):
            raise ValueError(f"condition names must be unique in a stack, got {names}")
        self.d_model = dims.pop()
        self.plugins = nn.ModuleDict({p.name: p for p in plugins})
        self.dropout = list(dropout) if dropout is not None else [DropoutSpec() for _ in plugins]
        if len(self.dropout) != len(plugins):
            raise ValueError("need one DropoutSpec per plugin")
        layout, offset = [], 0
        for type_id, p in enumerate(plugins):
            layout.append(SlotSpan(p.name, offset, p.slots, type_id))
            offset += p.slots
        self.layout: list[SlotSpan] = layout
        self.num_slots = offset
        # Per-plugin type embedding, added to every slot of that plugin.
        self.type_embedding = nn.Parameter(torch.randn(len(plugins), self.d_model) * 0.02)  # (P, D)

    @classmethod
    def from_specs(cls, specs: Sequence[ConditionSpec], d_model: int, source: str = "<config>", registry: Any = None) -> ConditionStack:
        """Build a stack from config entries (plugin names are looked up in the registry)."""
        plugins = build_plugins(specs, d_model, source=source, registry=registry)
        return cls(plugins, [s.dropout for s in specs])

    @property
    def names(self) -> list[str]:
        return [span.name for span in self.layout]

    def plugin(self, name: str) -> ConditionPlugin:
        if name not in self.plugins:
            raise EartalkError(f"condition {name!r} is not in this stack; stack: {self.names}")
        return self.plugins[name]

    def slot_type_ids(self) -> torch.Tensor:
        """``(K,)`` plugin index of every slot."""
        return torch.cat([torch.full((s.slots,), s.type_id) for s in self.layout])

    def forward(
        self,
        signals: Mapping[str, torch.Tensor],
        present: Mapping[str, torch.Tensor] | None = None,
        *,
        batch: int | None = None,
        frames: int | None = None,
    ) -> torch.Tensor:
        """FCIC tokens of every frame.

        Args:
            signals: plugin name -> ``(B, T, signal_dim)``. A missing name is absent (null) on all frames.
            present: plugin name -> ``(B, T)`` bool; missing names default to "finite rows".
            batch, frames: sizes to use when ``signals`` is empty (the all-null stack).

        Returns:
            ``(B, T, K, d_model)`` tokens, slots in layout order.
        """
        unknown = set(signals) - set(self.plugins)
        if unknown:
            raise EartalkError(f"signals for conditions not in this stack: {sorted(unknown)}; stack: {self.names}")
        present = present or {}
        if signals:
            first = next(iter(signals.values()))
            batch, frames = int(first.shape[0]), int(first.shape[1])
        if batch is None or frames is None:
            raise ValueError("give signals, or batch and frames for the all-null stack")
        parts = []
        for span in self.layout:
            plugin = self.plugins[span.name]
            if span.name in signals:
                tokens = plugin(signals[span.name], present.get(span.name))  # (B, T, k, D)
            else:
                tokens = plugin.null_token.expand(batch, frames, -1, -1)
            parts.append(tokens + self.type_embedding[span.type_id])
        return torch.cat(parts, dim=2)  # (B, T, K, D)

    def null_tokens(self, batch: int, frames: int) -> torch.Tensor:
        """The all-null stack ``(B, T, K, D)`` (the unconditional branch of CFG)."""
        return self(signals={}, batch=batch, frames=frames)

    def drop(
        self,
        present: Mapping[str, torch.Tensor],
        generator: torch.Generator | None = None,
        null_prob: float = 0.0,
        keep_prob: float = 0.0,
        keep: Sequence[str] = (),
    ) -> dict[str, torch.Tensor]:
        """Training dropout: return new presence masks with whole clips and random spans absent.

        First a joint dropout per clip, so that the branches classifier-free guidance runs at
        inference are trained: with probability ``null_prob`` every plugin is absent (the all-null
        stack), with probability ``keep_prob`` only the plugins named in ``keep`` stay (e.g. the
        audio-only stack of ``cfg_keep=("audio",)``). Then each plugin's own :class:`DropoutSpec`
        (whole clips, one random span).

        Args:
            present: plugin name -> ``(B, T)`` bool.
            generator: random generator (default: torch's global one).
            null_prob: probability of the all-null stack per clip.
            keep_prob: probability of the ``keep``-only stack per clip.
            keep: names kept by the ``keep_prob`` branch (names not in the stack are ignored).
        """
        if not (0.0 <= null_prob and 0.0 <= keep_prob and null_prob + keep_prob <= 1.0):
            raise ValueError(f"need 0 <= null_prob, keep_prob and null_prob + keep_prob <= 1, got {null_prob}, {keep_prob}")
        joint_null = joint_keep = None
        if present:
            batch = int(next(iter(present.values())).shape[0])
            u = torch.rand(batch, generator=generator)  # (B,) one draw per clip decides its joint branch
            joint_null = u < null_prob
            joint_keep = (u >= null_prob) & (u < null_prob + keep_prob)
        out = {}
        for span, spec in zip(self.layout, self.dropout, strict=True):
            if span.name not in present:
                continue
            mask = present[span.name].clone().bool()  # (B, T)
            batch, frames = mask.shape
            mask[joint_null if span.name in keep else joint_null | joint_keep] = False
            clip = torch.rand(batch, generator=generator) < spec.clip
            mask[clip] = False
            spans = torch.rand(batch, generator=generator) < spec.span
            for b in torch.nonzero(spans & ~clip).flatten().tolist():
                hi = min(spec.span_max, frames)
                lo = min(spec.span_min, hi)
                length = int(torch.randint(lo, hi + 1, (1,), generator=generator))
                start = int(torch.randint(0, frames - length + 1, (1,), generator=generator))
                mask[b, start : start + length] = False
            out[span.name] = mask
        return out

    def extract(self, sample: Sample) -> dict[str, torch.Tensor]:
        """Each plugin's signal ``(T, signal_dim)`` for a training sample (NaN rows = absent)."""
        return {name: plugin.extract(sample) for name, plugin in self.plugins.items()}
