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

    return list(BUILTIN_METRICS)


@hookimpl
def register_commands() -> list[type]:
    from eartalk.metrics.evaluate import EvaluateCommand

    return [EvaluateCommand]
