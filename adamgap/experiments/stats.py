"""Statistics over seeds: the mean, the sample standard deviation and the 95% t-interval that
every table of the suite prints (``mean ± half-width``)."""

from __future__ import annotations

import math

from scipy.stats import t


def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean, sample std (n - 1) and the half-width of the ``level`` t-interval of the mean;
    std and half-width are NaN for fewer than two values."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan, math.nan
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, std, float(t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)


def fmt(mean: float, ci: float, digits: int = 3) -> str:
    """``mean ± ci`` (just the mean when the interval is undefined)."""
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" if math.isnan(ci) else f"{mean:.{digits}f} ± {ci:.{digits}f}"
