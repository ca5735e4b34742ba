"""Base class of metric plugins."""

from __future__ import annotations

from typing import ClassVar

import attrs

from eartalk.core.protocol import NoOptions


class MetricPlugin:
    """A metric registered through ``register_metrics``.

    Subclasses wrap a torchmetrics ``Metric`` (see :mod:`eartalk.metrics`) and declare:

    Attributes:
        name: unique name used by ``eartalk evaluate --metrics``.
        fidelity: ``"reference"`` (paper-comparable with verified weights), ``"proxy"`` (an
            eartalk measurement, never reported under a paper metric's name).
        higher_is_better: direction, used by Avg-R ranking.
        Options: attrs class of the metric's options (weights path, mode...).
    """

    kind: ClassVar[str] = "metric"
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    fidelity: ClassVar[str] = "reference"
    higher_is_better: ClassVar[bool] = False
    Options: ClassVar[type] = NoOptions
    required_methods: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: object | None = None) -> None:
        self.options = options if options is not None else self.Options()
        assert attrs.has(type(self.options))
