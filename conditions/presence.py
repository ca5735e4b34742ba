"""Loud absence: how often each condition's signal is present in the training data.

A plugin whose signal is absent on every training frame trains nothing but its null token, and
nothing else would say so (a plugin that requires the face track, on clips without one, is the
usual case). :func:`check_presence` measures, on a sample of training items, the fraction of
frames where each condition of the stack is present, logs the table, warns loudly (naming the
plugin and the likely cause) for conditions below a threshold, and writes ``presence.json`` into
the run folder. The ``train`` recipe calls it before fitting.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

log = logging.getLogger(__name__)

#: Conditions present on fewer training frames than this get a warning.
DEFAULT_THRESHOLD = 0.05


@attrs.frozen
class Presence:
    """One condition's presence on the measured training frames.

    Attributes:
        name: the plugin name.
        fraction: present frames / measured frames, in [0, 1].
        frames: measured frames.
        requires: the plugin's ``requires``.
        cause: the likely reason when the fraction is below the threshold (else empty).
    """

    name: str
    fraction: float
    frames: int
    requires: tuple[str, ...]
    cause: str = ""


@attrs.frozen
class PresenceReport:
    """Presence of every condition of a stack, measured on a sample of training items."""

    conditions: tuple[Presence, ...]
    items: int
    threshold: float

    @property
    def low(self) -> list[Presence]:
        """Conditions below the threshold."""
        return [c for c in self.conditions if c.fraction < self.threshold]

    def fraction(self, name: str) -> float:
        return next(c.fraction for c in self.conditions if c.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {"items": self.items, "threshold": self.threshold,
                "conditions": {c.name: {"present": c.fraction, "frames": c.frames, "requires": list(c.requires),
                                        **({"cause": c.cause} if c.cause else {})} for c in self.conditions}}

    def table(self) -> str:
        """Plain-text table: condition, present %, requires, cause."""
        width = max([len(c.name) for c in self.conditions] + [9])
        lines = [f"{'condition':<{width}}  present  requires"]
        for c in self.conditions:
            flag = "  <-- " + c.cause if c.cause else ""
            lines.append(f"{c.name:<{width}}  {100 * c.fraction:6.1f}%  {','.join(c.requires) or '-'}{flag}")
        return "\n".join(lines)


def likely_cause(plugin: Any, fraction: float, dataset: Any = None, metadata_keys: Sequence[str] = ()) -> str:
    """Why a condition's signal is (nearly) never present: the dataset's own reason when it could
    not compute an input, else a guess from what the plugin ``requires``."""
    name = plugin.name
    reasons = getattr(dataset, "absent_reasons", {}) or {}
    if name in reasons:
        return reasons[name]
    requires = set(plugin.requires)
    share = "on no frame" if fraction == 0 else f"on only {100 * fraction:.1f}% of frames"
    if "face" in requires:
        return (f"requires face; the face track has a face {share} (MediaPipe found no face in the crops: "
                "check the clips, or prepare them again with `eartalk prepare`)")
    if "metadata" in requires:
        keys = ", ".join(sorted(metadata_keys)) or "none"
        return f"requires metadata; the clips carry no label it reads (metadata keys found: {keys})"
    if "audio" in requires:
        return "requires audio; the clips have no or silent audio"
    return f"extract() returned NaN rows {share}; check what it reads from the sample"


def measure_presence(dataset: Any, stack: Any, *, items: int = 32, seed: int = 0,
                     threshold: float = DEFAULT_THRESHOLD) -> PresenceReport:
    """Presence fraction of every condition of ``stack`` on up to ``items`` dataset items.

    Args:
        dataset: a :class:`~eartalk.core.data.dataset.TalkingHeadDataset` (items with ``present``).
        stack: the condition stack being trained.
        items: how many items to read (drawn without replacement).
        seed: which items.
        threshold: fraction under which a condition gets a cause.
    """
    count = min(int(items), len(dataset))
    order = np.random.default_rng(seed).permutation(len(dataset))[:count]
    present = {name: 0 for name in stack.names}
    frames = 0
    metadata_keys: set[str] = set()
    for index in order.tolist():
        item = dataset[int(index)]
        frames += int(item["frames"].shape[0])
        metadata_keys |= set((item.get("meta") or {}).get("metadata") or {})
        for name in stack.names:
            mask = item["present"].get(name)
            present[name] += int(torch.as_tensor(mask).sum()) if mask is not None else 0
    rows = []
    for name in stack.names:
        plugin = stack.plugin(name)
        fraction = present[name] / frames if frames else 0.0
        cause = likely_cause(plugin, fraction, dataset, sorted(metadata_keys)) if fraction < threshold else ""
        rows.append(Presence(name, fraction, frames, tuple(sorted(plugin.requires)), cause))
    return PresenceReport(tuple(rows), count, float(threshold))


def check_presence(data: Any, out_dir: str | Path | None = None, *, items: int | None = None,
                   threshold: float = DEFAULT_THRESHOLD, seed: int = 0) -> PresenceReport | None:
    """Measure presence on the training set, log it, warn loudly, and write ``presence.json``.

    Args:
        data: a :class:`~eartalk.core.data.dataset.TalkingHeadDataModule` (or a dataset with a
            ``stack``).
        out_dir: run folder for ``presence.json`` (None: not written).
        items: items to read (default: 4 batches).
        threshold: warn for conditions present on fewer frames than this fraction.
        seed: which items.

    Returns:
        The report, or None when there is no stack or no training item.
    """
    dataset = data
    if hasattr(data, "setup") and hasattr(data, "train_set"):
        data.setup("fit")
        dataset = data.train_set
        items = items if items is not None else 4 * int(getattr(data, "batch_size", 8))
    stack = getattr(dataset, "stack", None)
    if stack is None or dataset is None or len(dataset) == 0:
        return None
    report = measure_presence(dataset, stack, items=items or 32, seed=seed, threshold=threshold)
    log.info("condition presence on %d training items:\n%s", report.items, report.table())
    for row in report.low:
        log.warning(
            "\n%s\nCONDITION %r IS PRESENT ON %.1f%% OF TRAINING FRAMES: it will learn nothing but its null token.\n"
            "Likely cause: %s\n%s", "!" * 78, row.name, 100 * row.fraction, row.cause, "!" * 78,
        )
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "presence.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report
