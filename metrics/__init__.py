"""Built-in metrics, registered through the same hooks as third-party plugins.

Metric plugins (:mod:`eartalk.metrics.plugins`) wrap torchmetrics ``Metric`` subclasses and
functional twins (:mod:`~eartalk.metrics.frechet`, :mod:`~eartalk.metrics.syncnet`,
:mod:`~eartalk.metrics.efid`, ...). The ``evaluate`` command lives in :mod:`eartalk.metrics.evaluate`.
"""

from __future__ import annotations

from eartalk.core.hookspecs import hookimpl


@hookimpl
def register_metrics() -> list[type]:
    from eartalk.metrics.plugins import BUILTIN_METRICS
    from eartalk.metrics.probe import PROBE_METRICS

    return [*BUILTIN_METRICS, *PROBE_METRICS]


@hookimpl
def register_commands() -> list[type]:
    from eartalk.metrics.evaluate import EvaluateCommand
    from eartalk.metrics.probe import ProbeCommand

    return [EvaluateCommand, ProbeCommand]
