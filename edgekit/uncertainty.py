"""95% intervals for accuracy figures measured on a finite set of images.

* A proportion (top-1, top-5, agreement): the Wilson score interval.
* A paired difference of two proportions on the same images (top-1 drop): Tango's score
  interval (Tango 1998, Statistics in Medicine 17:891), which stays sensible when no pair
  disagrees (a plain Wald or Newcombe interval collapses to zero width there).
* Several views (crops, flips) of one photo are not independent observations. Each
  interval therefore uses an effective sample size: the number of views divided by the
  design effect of clustering views by photo (the ratio of the cluster-robust variance to
  the binomial one, between 1 and views-per-photo). With one view per photo it is the
  plain interval. When no view differs from another (all right, or no pair disagreeing),
  there is no spread to estimate clustering from and views count as independent: this
  keeps the interval continuous with the one a single differing view gives.

Only the standard library and numpy; nothing here imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

Z95 = 1.959963984540054
METHOD = (
    "95% intervals: Wilson score (top-1, top-5, agreement), Tango score for the paired top-1 drop; "
    "several views of one photo count as correlated (effective sample size via the design effect)"
)


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def as_percent(self) -> tuple[float, float]:
        return (100.0 * self.low, 100.0 * self.high)


def wilson(successes: float, n: float, z: float = Z95) -> Interval:
    """Wilson score interval for a proportion; ``successes`` and ``n`` may be fractional
    (an effective sample size)."""
    if n <= 0:
        return Interval(0.0, 1.0)
    p = min(max(successes / n, 0.0), 1.0)
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    low = 0.0 if p == 0.0 else max(0.0, centre - half)  # exact at the bounds, not 1 - 1e-16
    high = 1.0 if p == 1.0 else min(1.0, centre + half)
    return Interval(min(low, p), max(high, p))


def _tango_z(delta: float, b: float, c: float, n: float) -> float:
    """Tango's score statistic for H0: (b - c) / n = delta, with the restricted MLE of the
    probability of a (no, yes) pair."""
    B = -b - c + (2 * n - b + c) * delta
    C = -c * delta * (1 - delta)
    q = (math.sqrt(max(B * B - 8 * n * C, 0.0)) - B) / (4 * n)
    variance = n * (2 * q + delta - delta * delta)
    numerator = b - c - n * delta
    if variance <= 1e-15:
        return 0.0 if abs(numerator) < 1e-12 else math.copysign(math.inf, numerator)
    return numerator / math.sqrt(variance)


def tango(b: float, c: float, n: float, z: float = Z95) -> Interval:
    """Interval for (b - c) / n, the difference of two paired proportions, where ``b``
    pairs are (yes, no) and ``c`` are (no, yes) among ``n``."""
    if n <= 0:
        return Interval(-1.0, 1.0)
    estimate = (b - c) / n

    def solve(target: float, lo: float, hi: float) -> float:
        # _tango_z decreases in delta: find where it crosses target
        for _ in range(100):
            mid = (lo + hi) / 2
            if _tango_z(mid, b, c, n) > target:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    eps = 1e-12
    low = solve(z, -1.0 + eps, estimate) if _tango_z(-1.0 + eps, b, c, n) > z else -1.0
    high = solve(-z, estimate, 1.0 - eps) if _tango_z(1.0 - eps, b, c, n) < -z else 1.0
    return Interval(low, high)


@dataclass(frozen=True)
class _Clustered:
    """A per-view quantity summed per photo: its mean and cluster-robust variance."""

    views: float
    mean: float
    variance_of_mean: float  # cluster-robust (between-photo) variance of the mean
    max_design_effect: float  # views per photo: every photo counting once


def _clustered(per_file_sum: np.ndarray, per_file_count: np.ndarray) -> Optional[_Clustered]:
    """None when there is nothing to correct: one view per photo, or no views at all."""
    used = per_file_count > 0
    counts = per_file_count[used].astype(np.float64)
    sums = per_file_sum[used].astype(np.float64)
    files, views = len(counts), float(counts.sum())
    if files == 0 or views == files:
        return None
    mean = float(sums.sum()) / views
    if files < 2:
        return _Clustered(views, mean, math.inf, views)
    variance = files / (files - 1) * float(((sums - mean * counts) ** 2).sum()) / views**2
    return _Clustered(views, mean, variance, views / files)


def _design_effect(clustered: Optional[_Clustered], per_view_variance: float) -> float:
    """Clustered over independent variance, kept between 1 and views per photo (1 where
    there is no spread to measure it from)."""
    if clustered is None:
        return 1.0
    independent = per_view_variance / clustered.views
    if independent <= 0:
        return 1.0
    if not math.isfinite(clustered.variance_of_mean):  # a single photo: all its views move together
        return clustered.max_design_effect
    return float(min(max(clustered.variance_of_mean / independent, 1.0), clustered.max_design_effect))


def proportion_interval(per_file_hits: np.ndarray, per_file_count: np.ndarray) -> Interval:
    """Wilson interval of hits / views with the effective sample size of clustered views."""
    views = float(per_file_count.sum())
    hits = float(per_file_hits.sum())
    p = hits / views if views else 0.0
    deff = _design_effect(_clustered(per_file_hits, per_file_count), p * (1 - p))
    return wilson(hits / deff, views / deff)


def paired_difference_interval(per_file_b: np.ndarray, per_file_c: np.ndarray, per_file_count: np.ndarray) -> Interval:
    """Tango interval of (b - c) / views, where per photo ``b`` views were right before and
    wrong after and ``c`` the reverse."""
    views = float(per_file_count.sum())
    b, c = float(per_file_b.sum()), float(per_file_c.sum())
    mean = (b - c) / views if views else 0.0
    per_view_variance = (b + c) / views - mean * mean if views else 0.0  # d is -1, 0 or 1: E[d^2] = (b + c) / n
    deff = _design_effect(_clustered(per_file_b.astype(np.float64) - per_file_c, per_file_count), per_view_variance)
    return tango(b / deff, c / deff, views / deff)


def percent(interval: Optional[Interval]) -> Optional[tuple[float, float]]:
    return None if interval is None else interval.as_percent()
