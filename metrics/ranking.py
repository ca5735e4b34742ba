"""Avg-R: the mean over metrics of each method's rank (direction-aware, ties averaged)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.stats import rankdata


def average_ranks(
    table: Mapping[str, Mapping[str, float | None]], higher_is_better: Mapping[str, bool]
) -> dict[str, object]:
    """Rank methods on every metric that all of them have, then average the ranks.

    Args:
        table: ``{method: {metric: value}}``; None/NaN values exclude that metric.
        higher_is_better: direction of every metric.

    Returns:
        ``{"avg_rank": {method: float}, "ranks": {metric: {method: rank}}, "methods": [...],
        "metrics": [...]}``; rank 1 is best.
    """
    methods = list(table)
    if not methods:
        raise ValueError("Avg-R needs at least one method")
    metrics = [
        m for m in higher_is_better
        if all(table[x].get(m) is not None and np.isfinite(float(table[x][m])) for x in methods)  # type: ignore[arg-type]
    ]
    if not metrics:
        raise ValueError("Avg-R: no metric has a value for every method")
    ranks: dict[str, dict[str, float]] = {}
    for metric in metrics:
        values = np.array([float(table[x][metric]) for x in methods])  # type: ignore[arg-type]
        score = -values if higher_is_better[metric] else values
        ranks[metric] = dict(zip(methods, rankdata(score, method="average").tolist(), strict=True))
    avg = {x: float(np.mean([ranks[m][x] for m in metrics])) for x in methods}
    return {"avg_rank": avg, "ranks": ranks, "methods": methods, "metrics": metrics}
