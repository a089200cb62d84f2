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


def test_a_deviating_integer_lstm_graph_is_diagnosed_and_a_fake_quant_one_is_not(monkeypatch) -> None:
    """Seen under an emulated AVX2-only CPU: ONNX Runtime's MatMulInteger saturates u8 x s8 pairs at
    every optimisation level, so every variant of the integer LSTM graph fails. That is the
    runtime's int8 kernel, and the record says so; a fake-quant graph failing everywhere is not."""
    from types import SimpleNamespace

    import qbench.export.diagnose as diagnose

    ref = np.random.default_rng(0).normal(size=(CLIPS, CLASSES)).astype(np.float32)
    out = ref + 20.0  # every clip far off, in every variant
    monkeypatch.setattr(conformance, "reference_and_step", lambda qmodel, x: (ref, 1.0))
    monkeypatch.setattr(conformance, "conformance_variants", lambda art: {"ort_enable_all": {}, "ort_disable_all": {}})
    monkeypatch.setattr(conformance, "runner", lambda art, threads, **o: (lambda x: out))
    monkeypatch.setattr(diagnose, "saturation_probe", lambda backend, options: 32768.0)
    monkeypatch.setattr(diagnose, "has_vnni", lambda: False)
    model = nn.Sequential(quant_lstm_from(nn.LSTM(4, 8, batch_first=True), QuantConfig()))
    x = np.zeros((CLIPS, 3, 4), np.float32)

    def artifact(graph: str, act_bits: int = 8):
        return SimpleNamespace(backend="onnxruntime", lstm_graph=graph, act_bits=act_bits)

    conf = check_conformance(artifact("integer_scan"), model, x)
    assert not conf.ok and conf.cause and "lacks VNNI" in conf.cause and "saturate" in conf.cause
    assert conf.cause in conf.reason
    assert check_conformance(artifact("integer_scan", act_bits=4), model, x).cause is None  # 4-bit codes cannot saturate
    assert check_conformance(artifact("fakequant_unrolled"), model, x).cause is None  # float graph: wrong, not the ISA
