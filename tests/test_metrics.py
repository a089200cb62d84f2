"""Metrics agree with scikit-learn's reference implementations on random inputs."""

import numpy as np
import pytest
from sklearn import metrics as skm

from qbench import metrics

# float64 sums in a different order: agreement to rounding error, not bit-exact.
SUM_ORDER_ATOL = 1e-12


def _eer_reference(y, s):
    """EER from scikit-learn's ROC curve, interpolated where FNR - FPR crosses zero."""
    fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    fnr = 1 - tpr
    diff = fnr - fpr
    i = np.flatnonzero(diff <= 0)[0]
    if diff[i] == 0 or i == 0:
        return fpr[i]
    t = diff[i - 1] / (diff[i - 1] - diff[i])
    return fpr[i - 1] + t * (fpr[i] - fpr[i - 1])


@pytest.mark.parametrize("seed", range(5))
def test_accuracy_and_macro_f1_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 6, 200)
    p = np.where(rng.random(200) < 0.6, y, rng.integers(0, 6, 200))
    assert metrics.accuracy(y, p) == pytest.approx(skm.accuracy_score(y, p), abs=SUM_ORDER_ATOL)
    assert metrics.macro_f1(y, p) == pytest.approx(skm.f1_score(y, p, average="macro"), abs=SUM_ORDER_ATOL)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [False, True])
def test_average_precision_matches_sklearn(seed, ties):
    rng = np.random.default_rng(seed)
    y = (rng.random((300, 5)) < 0.2).astype(np.float32)
    s = y * rng.random((300, 5)) + rng.random((300, 5))
    if ties:  # quantized scores: many equal thresholds, as from an integer engine
        s = np.round(s * 4) / 4
    for c in range(5):
        expected = skm.average_precision_score(y[:, c], s[:, c])
        assert metrics.average_precision(y[:, c], s[:, c]) == pytest.approx(expected, abs=SUM_ORDER_ATOL)
    expected_map = skm.average_precision_score(y, s, average="macro")
    assert metrics.mean_average_precision(y, s) == pytest.approx(expected_map, abs=SUM_ORDER_ATOL)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [False, True])
def test_eer_matches_sklearn_roc(seed, ties):
    rng = np.random.default_rng(seed)
    y = (rng.random(400) < 0.3).astype(int)
    s = y * 0.5 + rng.random(400)
    if ties:
        s = np.round(s * 3) / 3
    assert metrics.equal_error_rate(y, s) == pytest.approx(_eer_reference(y, s), abs=SUM_ORDER_ATOL)


def test_eer_of_perfect_and_inverted_scores():
    y = np.array([0, 0, 1, 1])
    assert metrics.equal_error_rate(y, np.array([0.1, 0.2, 0.8, 0.9])) == 0.0
    assert metrics.equal_error_rate(y, np.array([0.9, 0.8, 0.2, 0.1])) == 1.0


def test_undefined_classes_are_nan_and_left_out_of_the_mean():
    y = np.array([[1, 0], [0, 0], [1, 0]], dtype=float)
    s = np.array([[0.9, 0.1], [0.2, 0.5], [0.8, 0.3]])
    ap = metrics.average_precision_per_class(y, s)
    assert ap[0] == 1.0 and np.isnan(ap[1])
    assert metrics.mean_average_precision(y, s) == 1.0
    assert np.isnan(metrics.eer_per_class(y, s)[1])


def test_evaluate_headline_error():
    y = np.array([0, 1, 2, 1])
    logits = np.eye(3)[[0, 1, 1, 1]]
    out = metrics.evaluate(y, logits, multilabel=False)
    assert out["error"] == pytest.approx(0.25) and out["accuracy"] == pytest.approx(0.75)
    ym = np.array([[1, 0], [0, 1]], dtype=float)
    out = metrics.evaluate(ym, np.array([[0.9, 0.1], [0.2, 0.7]]), multilabel=True)
    assert out["error"] == 0.0 and out["eer"] == 0.0
