"""Confidence intervals against references: scipy's Wilson interval, a brute-force bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from qbench.metrics import error_change_interval, evaluate
from qbench.stats import (bootstrap_interval, excludes_zero, mean_and_spread, median_interval, median_with_interval,
                          paired_delta_interval, resample_indices, wilson_interval)

WILSON_ATOL = 1e-12  # the same closed form evaluated twice: float64 rounding only


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (150, 300), (1200, 3000), (3000, 3000)])
def test_wilson_matches_scipy(k: int, n: int) -> None:
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(ref.low, abs=WILSON_ATOL) and hi == pytest.approx(ref.high, abs=WILSON_ATOL)


def test_wilson_of_nothing_is_undefined() -> None:
    assert all(np.isnan(wilson_interval(0, 0)))


def _brute_force_paired(wrong_a: np.ndarray, wrong_b: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    n, deltas = len(wrong_a), []
    draws = rng.integers(0, n, size=(resamples, n))
    for row in draws:  # one resample at a time, the textbook way
        deltas.append(np.mean(wrong_b[row]) - np.mean(wrong_a[row]))
    return tuple(np.percentile(deltas, [2.5, 97.5]))


def test_paired_interval_equals_a_brute_force_bootstrap() -> None:
    rng = np.random.default_rng(1)
    wrong_a = rng.random(500) < 0.3
    wrong_b = wrong_a.copy()
    flip = rng.random(500) < 0.08
    wrong_b[flip] = ~wrong_b[flip]
    got = paired_delta_interval(wrong_a, wrong_b, resamples=300, seed=7)
    ref = _brute_force_paired(wrong_a, wrong_b, 300, 7)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)


def test_paired_interval_width_follows_the_discordant_clips() -> None:
    """Half-width ~ 1.96 sqrt(d / n) for d discordant clips in n (the issue's rule of thumb)."""
    n, d = 3000, 0.1
    wrong_a = np.zeros(n, bool)
    wrong_b = np.zeros(n, bool)
    wrong_b[: int(n * d / 2)] = True  # half the discordant clips each way: no net change
    wrong_a[int(n * d / 2): int(n * d)] = True
    lo, hi = paired_delta_interval(wrong_a, wrong_b)
    expected = 1.96 * np.sqrt(d / n)
    assert (hi - lo) / 2 == pytest.approx(expected, rel=0.1)
    assert not excludes_zero((lo, hi))


def test_identical_models_have_a_zero_width_change() -> None:
    wrong = np.random.default_rng(0).random(100) < 0.4
    assert paired_delta_interval(wrong, wrong) == (0.0, 0.0)


def test_bootstrap_interval_is_seeded_and_brackets_the_estimate() -> None:
    values = np.random.default_rng(3).normal(size=400)
    first = bootstrap_interval(lambda idx: float(values[idx].mean()), len(values))
    assert first == bootstrap_interval(lambda idx: float(values[idx].mean()), len(values))
    assert first[0] < values.mean() < first[1]
    assert resample_indices(5, resamples=3).shape == (3, 5)


def test_evaluate_carries_n_and_interval_for_both_tasks() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    scores = rng.normal(size=(200, 4))
    single = evaluate(y, scores, multilabel=False)
    assert single["n"] == 200 and single["ci95"][0] <= single["error"] <= single["ci95"][1]
    multi_y = (rng.random((120, 3)) < 0.3).astype(np.float32)
    multi = evaluate(multi_y, multi_y + rng.normal(scale=0.8, size=(120, 3)), multilabel=True)
    assert multi["n"] == 120 and multi["ci95"][0] <= multi["error"] <= multi["ci95"][1]


def test_change_interval_sees_a_real_difference() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 1000)
    good = np.eye(3)[y] + rng.normal(scale=0.3, size=(1000, 3))
    bad = np.eye(3)[y] + rng.normal(scale=1.5, size=(1000, 3))
    ci = error_change_interval(y, good, bad, multilabel=False)
    assert ci[0] > 0 and excludes_zero(tuple(ci))


def test_mean_and_spread_over_seeds() -> None:
    out = mean_and_spread([0.2, 0.3, float("nan"), 0.25])
    assert out["n"] == 3 and out["mean"] == pytest.approx(0.25) and out["std"] == pytest.approx(0.05)


@pytest.mark.parametrize(("n", "ranks"), [(6, (1, 6)), (10, (2, 9)), (20, (6, 15)), (40, (14, 27)), (100, (40, 61))])
def test_median_interval_matches_the_order_statistic_tables(n: int, ranks: tuple[int, int]) -> None:
    # 1-based ranks of the distribution-free 95 % interval of a median (Conover, Table A3)
    assert median_interval(n) == (ranks[0] - 1, ranks[1] - 1)


def test_median_interval_covers_the_median_at_its_level() -> None:
    rng = np.random.default_rng(0)
    lo, hi = median_interval(25)
    samples = np.sort(rng.lognormal(size=(20000, 25)), axis=1)  # skewed: the median is 1
    covered = (samples[:, lo] <= 1.0) & (samples[:, hi] >= 1.0)
    assert 0.95 <= covered.mean() < 0.99
    assert median_interval(3) == (0, 2)  # too few for 95 %: the whole range


def test_median_with_interval_reads_the_order_statistics_of_an_unsorted_sample() -> None:
    values = np.array([7.0, 1.0, 9.0, 3.0, 5.0, 2.0, 8.0, 4.0, 6.0, 10.0])  # 1..10, shuffled
    median, (lo, hi) = median_with_interval(values)
    assert median == 5.5 and (lo, hi) == (2.0, 9.0)  # 1-based ranks 2 and 9 of n = 10 (Conover)
