"""Uncertainty of the figures a sweep compares: 95 % intervals for an error and for a paired change.

* One error rate over ``n`` clips (single-label): the Wilson score interval.
* One multi-label error (1 - mAP): a percentile bootstrap over clips.
* A median of timings (or of paired time ratios): order statistics, distribution-free.
* The change of error between two models scored on the *same* clips (a model against its
  quantized twin, KD against no KD): a paired percentile bootstrap over clips, so clips both
  models get right or wrong add no noise. A change whose interval contains 0 is reported as
  no difference.

Bootstraps are seeded (``BOOTSTRAP_SEED``): the same scores give the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

Z95 = 1.959963984540054  # two-sided 95 % normal quantile
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20190915
Interval = tuple[float, float]


def wilson_interval(errors: int, n: int, *, z: float = Z95) -> Interval:
    """95 % Wilson score interval of a proportion ``errors / n``; (nan, nan) for ``n == 0``."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = errors / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def median_interval(n: int, *, level: float = 0.95) -> tuple[int, int]:
    """0-based ranks ``(lo, hi)`` of a sorted sample of ``n`` whose values bracket the median
    with probability >= ``level`` for any continuous distribution: the sample's ``j``-th and
    ``(n + 1 - j)``-th smallest, for the largest ``j`` with ``P(j <= B <= n - j) >= level``,
    ``B ~ Binomial(n, 1/2)``. Needs ``n >= 6`` at 95 %; below that the whole range, (0, n - 1)."""
    if n < 1:
        raise ValueError("median_interval: empty sample")
    mass = [math.comb(n, k) / 2**n for k in range(n + 1)]
    best = 1
    for j in range(1, n // 2 + 1):
        if sum(mass[j:n - j + 1]) >= level:
            best = j
    return best - 1, n - best


def median_with_interval(values: np.ndarray) -> tuple[float, Interval]:
    """The median of ``values`` and its distribution-free 95 % interval (:func:`median_interval`)."""
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    lo, hi = median_interval(ordered.size)
    return float(np.median(ordered)), (float(ordered[lo]), float(ordered[hi]))


def resample_indices(n: int, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """(resamples, n) clip indices drawn with replacement, the same for the same ``n`` and seed."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _percentiles(values: np.ndarray) -> Interval:
    values = values[np.isfinite(values)]
    if not len(values):
        return (float("nan"), float("nan"))
    lo, hi = np.percentile(values, [2.5, 97.5])
    return (float(lo), float(hi))


def paired_delta_interval(wrong_a: np.ndarray, wrong_b: np.ndarray, *, resamples: int = BOOTSTRAP_RESAMPLES,
                          seed: int = BOOTSTRAP_SEED) -> Interval:
    """95 % paired bootstrap interval of ``error(b) - error(a)``; inputs (N,) bools, True = wrong."""
    diff = np.asarray(wrong_b, dtype=np.int64) - np.asarray(wrong_a, dtype=np.int64)  # -1, 0, +1 per clip
    if diff.size == 0:
        return (float("nan"), float("nan"))
    idx = resample_indices(len(diff), resamples=resamples, seed=seed)
    return _percentiles(diff[idx].mean(axis=1))


def bootstrap_interval(metric: Callable[[np.ndarray], float], n: int, *, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED) -> Interval:
    """95 % percentile bootstrap of ``metric(indices)`` over ``n`` clips (any metric, e.g. 1 - mAP)."""
    if n <= 0:
        return (float("nan"), float("nan"))
    idx = resample_indices(n, resamples=resamples, seed=seed)
    return _percentiles(np.array([metric(row) for row in idx], dtype=np.float64))


def excludes_zero(interval: Interval) -> bool:
    """True when the interval of a change lies wholly on one side of 0 (a difference, not noise)."""
    lo, hi = interval
    return bool(np.isfinite(lo) and np.isfinite(hi) and (lo > 0 or hi < 0))


def mean_and_spread(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation, min and max of a figure over seeds."""
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if not len(arr):
        return {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
            "min": float(arr.min()), "max": float(arr.max()), "n": int(len(arr))}


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (cost, error) points no other beats on both (lower is better), cheapest first."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], float("inf")
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front
