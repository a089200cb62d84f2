"""Task metrics: accuracy and macro-F1 (single-label), AP, mAP and EER (multi-label).

Pure NumPy so the integer engine and the exported runtimes are scored by the same code as
PyTorch. Definitions follow scikit-learn's (the tests check agreement): average precision is
the step-wise sum ``sum_n (R_n - R_{n-1}) P_n`` over distinct score thresholds, and the equal
error rate is where the false-positive rate meets the false-negative rate on the ROC curve,
linearly interpolated between the two ROC points that bracket it.
"""

from __future__ import annotations

import numpy as np

from qbench.stats import bootstrap_interval, paired_delta_interval, wilson_interval

MULTILABEL_RESAMPLES = 500  # each resample recomputes every class's AP: 2000 would cost seconds per record


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of exact matches. ``y_true``, ``y_pred``: (N,) class indices."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        return float("nan")
    return float(np.mean(y_true == y_pred))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes present in ``y_true`` or ``y_pred``."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    f1s = []
    for c in np.union1d(y_true, y_pred):
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)) if f1s else float("nan")


def _ranked(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative true and false positives at each distinct threshold, highest score first."""
    order = np.argsort(-scores, kind="mergesort")
    scores, y_true = scores[order], y_true[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tps = np.cumsum(y_true)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    return tps.astype(np.float64), fps.astype(np.float64)


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """AP of one class. ``y_true``: (N,) 0/1; ``scores``: (N,) higher means more likely.

    NaN when the class has no positive example (AP is undefined there).
    """
    y_true = np.asarray(y_true).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = y_true.sum()
    if n_pos == 0:
        return float("nan")
    tps, fps = _ranked(y_true, scores)
    precision = tps / (tps + fps)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def average_precision_per_class(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(C,) AP per class from (N, C) multi-hot targets and (N, C) scores."""
    return np.array([average_precision(y_true[:, c], scores[:, c]) for c in range(y_true.shape[1])])


def mean_average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Macro mAP over the classes that have at least one positive example."""
    ap = average_precision_per_class(y_true, scores)
    return float(np.nanmean(ap)) if np.any(~np.isnan(ap)) else float("nan")


def equal_error_rate(y_true: np.ndarray, scores: np.ndarray) -> float:
    """EER of one class: where FPR equals FNR on the ROC curve. NaN without both classes."""
    y_true = np.asarray(y_true).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = y_true.sum(), (~y_true).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    tps, fps = _ranked(y_true, scores)
    fpr = np.r_[0.0, fps / n_neg]
    fnr = 1.0 - np.r_[0.0, tps / n_pos]
    # fnr - fpr falls from 1 to -1 along the curve; the EER sits where it crosses zero.
    diff = fnr - fpr
    i = int(np.flatnonzero(diff <= 0)[0])
    if diff[i] == 0 or i == 0:
        return float(fpr[i])
    t = diff[i - 1] / (diff[i - 1] - diff[i])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def eer_per_class(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(C,) EER per class from (N, C) multi-hot targets and (N, C) scores."""
    return np.array([equal_error_rate(y_true[:, c], scores[:, c]) for c in range(y_true.shape[1])])


def mean_eer(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Mean EER over the classes where it is defined."""
    eer = eer_per_class(y_true, scores)
    return float(np.nanmean(eer)) if np.any(~np.isnan(eer)) else float("nan")


def evaluate(y_true: np.ndarray, scores: np.ndarray, *, multilabel: bool) -> dict[str, float]:
    """The task's metrics, with a headline ``error`` (lower is better).

    Single-label: ``y_true`` (N,) indices, ``scores`` (N, C) logits or probabilities;
    ``error = 1 - accuracy``. Multi-label: ``y_true`` (N, C) multi-hot, ``scores`` (N, C);
    ``error = 1 - mAP``.

    Every result also carries ``n`` (clips scored) and ``ci95``, the 95 % interval of ``error``
    (:mod:`qbench.stats`: Wilson for single-label, a clip bootstrap for multi-label).
    """
    scores = np.asarray(scores)
    n = int(len(scores))
    if multilabel:
        m_ap = mean_average_precision(y_true, scores)
        ci = bootstrap_interval(lambda idx: 1.0 - mean_average_precision(y_true[idx], scores[idx]), n,
                                resamples=MULTILABEL_RESAMPLES)
        return {"error": 1.0 - m_ap, "map": m_ap, "eer": mean_eer(y_true, scores), "n": n, "ci95": list(ci)}
    pred = scores.argmax(axis=1)
    acc = accuracy(y_true, pred)
    wrong = int(np.sum(pred != np.asarray(y_true)))
    return {"error": 1.0 - acc, "accuracy": acc, "macro_f1": macro_f1(y_true, pred), "n": n,
            "ci95": list(wilson_interval(wrong, n))}


def error_change_interval(y_true: np.ndarray, reference: np.ndarray, scores: np.ndarray, *,
                          multilabel: bool) -> list[float]:
    """95 % paired interval of ``error(scores) - error(reference)``, both (N, C) on the same clips."""
    reference, scores = np.asarray(reference), np.asarray(scores)
    if multilabel:
        def change(idx: np.ndarray) -> float:
            return mean_average_precision(y_true[idx], reference[idx]) - mean_average_precision(y_true[idx], scores[idx])
        return list(bootstrap_interval(change, len(scores), resamples=MULTILABEL_RESAMPLES))
    y = np.asarray(y_true)
    return list(paired_delta_interval(reference.argmax(1) != y, scores.argmax(1) != y))
