"""Export of a quantized LSTM student (built from the extracted integer model) to both runtimes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from qbench.errors import QbenchError
from qbench.backends import exported
from qbench.export import Backend, check_conformance, export, runner
from qbench.export.conformance import FLOAT_REASSOCIATION_STEPS, TOL_STEPS, TOL_STEPS_RECURRENT
from qbench.quant import QuantConfig
from qbench.quant.quantize import calibrate, quantize

import models

BACKENDS = [pytest.param(b, id=b.value) for b in exported()]  # conftest marks and skips per backend
CASES = [(8, 8, "last"), (4, 8, "mean"), (2, 4, "last")]  # (weight bits, act bits, pooling)


@pytest.fixture(scope="module")
def students() -> dict[tuple[int, int, str], tuple[torch.nn.Module, np.ndarray]]:
    torch.manual_seed(0)
    x = torch.randn(16, 48, 20)
    out = {}
    for wb, ab, pooling in CASES:
        m = models.build_student("lstm", n_mels=20, n_frames=48, n_classes=5, hidden=16, pooling=pooling)
        m.train()
        m(x)  # non-trivial BN statistics
        q = quantize(m.eval(), QuantConfig(weight_bits=wb, act_bits=ab))
        calibrate(q, x, batches=2, batch_size=8)
        out[(wb, ab, pooling)] = (q, x.numpy())
    return out


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"w{c[0]}a{c[1]}-{c[2]}")
@pytest.mark.parametrize("backend", BACKENDS)
def test_lstm_export_conforms(backend: Backend, case, students, tmp_path: Path) -> None:
    q, x = students[case]
    artifact = export(q, backend, out_dir=tmp_path, example=x[:2])
    assert artifact.weight_bits == case[0]
    result = check_conformance(artifact, q, x)
    assert result.ok, result.reason  # the best variant conforms; the failing ones are in the reason
    assert result.tol_steps == TOL_STEPS and result.tol_max_steps == TOL_STEPS_RECURRENT
    for name in result.max_steps:
        if name != result.best and result.max_steps[name] > result.tol_max_steps:
            assert name in result.reason
    # OpenVINO f32 and ORT without graph optimisations compute Brevitas' float graph: no code flips,
    # only float32 reassociation (bit-exact on an AVX-512 Xeon, up to 6.3e-5 steps on AVX2 AMD)
    exact = "openvino_f32" if backend == Backend("openvino") else "ort_disable_all"
    assert result.max_steps[exact] <= FLOAT_REASSOCIATION_STEPS
    assert runner(artifact, threads=1)(x[:3]).shape == (3, 5)


@pytest.mark.requires_onnxruntime
def test_lstm_two_bit_refuses_int2_on_ort(students, tmp_path: Path) -> None:
    # ORT 1.31 loads INT2 weights but its ENABLE_ALL graph computes different logits: the probe refuses it
    q, x = students[(2, 4, "last")]
    artifact = export(q, Backend("onnxruntime"), out_dir=tmp_path, example=x[:2])
    if artifact.weight_container != "int2":
        assert any(n.startswith("int2 weights refused") for n in artifact.notes)


def test_crnn_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    m = models.build_student("crnn", n_mels=20, n_frames=48, n_classes=5)
    q = quantize(m.eval(), QuantConfig())
    with pytest.raises(QbenchError, match="LSTMStudent"):
        export(q, Backend("onnxruntime"), out_dir=tmp_path, example=np.zeros((2, 48, 20), np.float32))
