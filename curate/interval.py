"""The one confidence interval: the mean of a few runs (seeds) with its 95% Student t interval."""
from __future__ import annotations

import statistics


def t_interval(values: list[float]) -> tuple[float, float | None]:
    """Mean and the half-width of its 95% t-interval (None with fewer than two values)."""
    from scipy import stats

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return mean, float(half)
