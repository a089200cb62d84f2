"""The conformance policy's recurrent outlier allowance, on synthetic runtime outputs."""

from __future__ import annotations

import numpy as np
from torch import nn

import qbench.export.conformance as conformance
from qbench.export.conformance import RECURRENT_OUTLIER_CLIPS, TOL_STEPS_RECURRENT, check_conformance
from qbench.quant.config import QuantConfig
from qbench.quant.lstm import quant_lstm_from

CLIPS, CLASSES = 200, 5


def _check(monkeypatch, recurrent: bool, bad_clips: int, shift_steps: float):
    ref = np.random.default_rng(0).normal(size=(CLIPS, CLASSES)).astype(np.float32)
    out = ref.copy()
    out[:bad_clips, 0] += shift_steps  # step is 1.0 below
    monkeypatch.setattr(conformance, "reference_and_step", lambda qmodel, x: (ref, 1.0))
    monkeypatch.setattr(conformance, "conformance_variants", lambda art: {"only": {}})
    monkeypatch.setattr(conformance, "runner", lambda art, threads, **o: (lambda x: out))
    model = nn.Sequential(quant_lstm_from(nn.LSTM(4, 8, batch_first=True), QuantConfig())) if recurrent else nn.Linear(2, 2)
    return check_conformance(None, model, np.zeros((CLIPS, 3, 4), np.float32))


def test_a_recurrent_student_may_exceed_the_max_on_a_few_clips(monkeypatch) -> None:
    few = int(RECURRENT_OUTLIER_CLIPS * CLIPS)
    conf = _check(monkeypatch, True, few, 2 * TOL_STEPS_RECURRENT)
    assert conf.ok and conf.outlier_clips["only"] == few
    assert not _check(monkeypatch, True, few + 1, 2 * TOL_STEPS_RECURRENT).ok


def test_a_feed_forward_student_gets_no_outliers(monkeypatch) -> None:
    conf = _check(monkeypatch, False, 1, 20.0)
    assert not conf.ok and "max 20.00" in conf.reason


def test_a_wrong_graph_still_fails_on_the_bulk(monkeypatch) -> None:
    conf = _check(monkeypatch, True, CLIPS // 2, 5.0)  # half the clips 5 steps off: p99 over bound
    assert not conf.ok
