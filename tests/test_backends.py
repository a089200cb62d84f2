"""One backend registry (issue 14, item 4): what is registered, that a new backend needs no edit
elsewhere, and recurrent behaviour as a capability rather than an ``isinstance``."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import torch
from torch import nn

import models
from qbench import backends
from qbench.backends import REFERENCE, BackendSpec
from qbench.capabilities import LSTM_STUDENT, RECURRENT, capabilities, is_recurrent, register_recurrent
from qbench.errors import ConfigError
from qbench.export.conformance import TOL_MAX_STEPS, TOL_STEPS_RECURRENT, max_steps_bound
from qbench.sweep.config import SweepConfig
from qbench.sweep.plan import plan_points

ROOT = Path(__file__).resolve().parent.parent


def test_registry_matches_the_entry_points_and_is_complete(pytestconfig) -> None:
    with (ROOT / "pyproject.toml").open("rb") as f:
        declared = tomllib.load(f)["project"]["entry-points"][backends.ENTRY_POINT_GROUP]
    assert set(backends.names()) == set(declared)
    assert backends.names()[0] == REFERENCE
    markers = " ".join(pytestconfig.getini("markers"))
    for spec in backends.specs():
        assert f"{spec.marker}:" in markers  # conftest registers every backend's marker
        assert spec.label and spec.tag and spec.description
        if spec.exported:
            assert None not in (spec.exporter, spec.runner, spec.variants, spec.files_from_onnx)
        else:
            assert spec.measure is not None


def test_unknown_backend_is_one_line() -> None:
    with pytest.raises(ConfigError, match="must be one of torch, engine, onnxruntime, openvino, got 'tpu'"):
        SweepConfig(backends=("torch", "tpu"))
    with pytest.raises(ConfigError, match="must include torch"):
        SweepConfig(backends=("engine",))


def test_a_spec_is_in_process_or_exported() -> None:
    with pytest.raises(ValueError, match="either measure"):
        BackendSpec(name="x", label="X", tag="x", description="", library=None, order=9)
    with pytest.raises(ValueError, match="needs a runner"):
        BackendSpec(name="x", label="X", tag="x", description="", library=None, order=9, exporter=lambda *a: None)


def test_a_new_backend_is_one_registration(monkeypatch) -> None:
    """Registered at run time, with no edit anywhere else: the config accepts it, the plan measures
    QAT points on it for the students its capabilities allow, the report names and tags it."""
    from qbench.report import _label, _tag

    spec = BackendSpec(name="lstm_npu", label="An LSTM NPU", tag="npu", description="test double",
                       library=None, order=5, requires=frozenset({LSTM_STUDENT}), measure=lambda pipe, point: {})
    monkeypatch.setitem(backends._SPECS, spec.name, spec)
    cfg = SweepConfig(models=("lstm", "dscnn"), backends=("torch", "lstm_npu"), bits=((8, 8),))
    on_it = [p for p in plan_points(cfg) if p.backend == "lstm_npu"]
    assert [p.model for p in on_it] == ["lstm"]  # the DS-CNN lacks the capability it requires
    assert on_it[0].method == "qat" and on_it[0].backend.spec is spec
    assert _label("lstm_npu") == "An LSTM NPU" and _tag("lstm_npu") == "npu"


def test_engine_and_lstm_lowerings_follow_capabilities() -> None:
    cfg = SweepConfig(models=("lstm", "dscnn", "crnn"), bits=((8, 8),))
    points = plan_points(cfg)
    assert {p.model for p in points if p.backend == "engine"} == {"lstm"}
    graphs = {(p.model, p.lstm_graph) for p in points if p.method == "qat" and p.backend == "onnxruntime"}
    assert graphs == {("lstm", "integer_scan"), ("lstm", "fakequant_unrolled"), ("dscnn", None), ("crnn", None)}


def _build(name: str) -> nn.Module:
    return models.build_student(name, n_mels=20, n_frames=48, n_classes=4)


class _GruKws(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(20, 8, batch_first=True)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.gru(x)[0][:, -1])


def test_capabilities_of_students() -> None:
    assert capabilities(_build("lstm")) == {RECURRENT, LSTM_STUDENT}
    assert capabilities(_build("crnn")) == {RECURRENT}  # recurrent, but not the engine's shape
    assert capabilities(_build("dscnn")) == frozenset()
    assert capabilities(_GruKws()) == {RECURRENT}


def test_recurrent_tolerance_is_a_capability() -> None:
    """A GRU student gets the recurrent bound (it was the feed-forward one when an isinstance of
    QuantLSTM decided); a layer type registered as recurrent gets it too."""
    from qbench.quant import QuantConfig
    from qbench.quant.quantize import quantize

    assert max_steps_bound(_GruKws()) == TOL_STEPS_RECURRENT
    assert max_steps_bound(_build("dscnn")) == TOL_MAX_STEPS
    assert max_steps_bound(quantize(_build("lstm").eval(), QuantConfig())) == TOL_STEPS_RECURRENT

    class MyCell(nn.Module):
        def forward(self, x):
            return x

    holder = nn.Sequential(MyCell())
    assert not is_recurrent(holder)
    register_recurrent(MyCell)
    assert is_recurrent(holder)
