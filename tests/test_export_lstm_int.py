"""The integer LSTM graph (``integer_scan``) against the integer engine and Brevitas, on both runtimes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import models
from qbench.engine import StudentEngine
from qbench.backends import exported
from qbench.export import Backend, check_conformance, conformance_variants, export, runner
from qbench.export.base import LSTMGraph
from qbench.export.conformance import TOL_STEPS, TOL_STEPS_RECURRENT, reference_and_step
from qbench.export.onnx_lstm_int import export_lstm_int_onnx
from qbench.quant import QuantConfig
from qbench.quant.quantize import calibrate, quantize

BACKENDS = [pytest.param(b, id=b.value) for b in exported()]  # conftest marks and skips per backend
CASES = [(2, 2, "po2", "last"), (4, 4, "float", "mean"), (8, 8, "po2", "mean"), (8, 8, "float", "last")]
FRAMES, MELS, CLASSES = 48, 20, 5

ENGINE_FLOAT_STEPS = 1e-3
"""Logits of the graph against the engine with float scales: the graph requantizes each gate with
a float32 multiplier where the engine has a 30-bit one (a code moves only within 2**-24 of a .5
tie), and scales the logits by float32(s_in) * float32(s_w) where the engine takes the float64
product; measured up to 5e-5 steps. With power-of-two scales both are exact: 0."""
SIZE_SLACK_BYTES = 16  # protobuf varints of the frame count: one file for any T


@pytest.fixture(scope="module")
def students() -> dict[tuple, tuple[torch.nn.Module, np.ndarray]]:
    """Small LSTM students, QAT-trained for a few steps on random data, per (bits, scales, pooling)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, FRAMES, MELS)).astype(np.float32)
    y = rng.integers(0, CLASSES, size=64)
    out = {}
    for wb, ab, scales, pooling in CASES:
        torch.manual_seed(0)
        m = models.build_student("lstm", n_mels=MELS, n_frames=FRAMES, n_classes=CLASSES, hidden=16, pooling=pooling)
        q = quantize(m.eval(), QuantConfig(weight_bits=wb, act_bits=ab, scale_type=scales))
        calibrate(q, x, batches=2, batch_size=16)
        _train_a_few_steps(q, x, y)
        out[(wb, ab, scales, pooling)] = (q.eval(), x[:24])
    return out


def _train_a_few_steps(q: torch.nn.Module, x: np.ndarray, y: np.ndarray, steps: int = 4) -> None:
    opt = torch.optim.Adam(q.parameters(), lr=1e-2)
    q.train()
    for s in range(steps):
        batch = slice(16 * s % len(x), 16 * s % len(x) + 16)
        loss = torch.nn.functional.cross_entropy(q(torch.from_numpy(x[batch])), torch.from_numpy(y[batch]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    q.eval()


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"w{c[0]}a{c[1]}-{c[2]}-{c[3]}")
@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_graph_computes_the_engine(backend: Backend, case, students, tmp_path: Path) -> None:
    q, x = students[case]
    artifact = export(q, backend, out_dir=tmp_path, example=x[:2], lstm_graph=LSTMGraph.INTEGER_SCAN)
    assert artifact.lstm_graph == "integer_scan" and artifact.weight_container == "int8"
    conf = check_conformance(artifact, q, x)
    assert conf.tol_steps == TOL_STEPS and conf.tol_max_steps == TOL_STEPS_RECURRENT
    if not conf.ok:  # the policy on a CPU whose int8 kernels saturate (pre-VNNI x86): named, not hidden
        assert case[1] == 8 and conf.cause and conf.cause in conf.reason, f"unexplained failure: {conf.reason}"
        assert "saturate" in conf.cause or "lacks VNNI" in conf.cause
        return
    _, step = reference_and_step(q, x)
    engine = StudentEngine(q)(x)
    tol = 0.0 if case[2] == "po2" else ENGINE_FLOAT_STEPS
    for name, options in conformance_variants(artifact).items():  # integer kernels: no level may deviate
        out = runner(artifact, threads=1, **options)(x)
        assert np.abs(out - engine).max() / step <= tol, name


@pytest.mark.requires_onnxruntime
def test_integer_graph_file_serves_any_length(students, tmp_path: Path) -> None:
    q, x = students[(4, 4, "float", "mean")]
    rng = np.random.default_rng(1)
    sizes = {}
    for frames in (50, 100):
        example = rng.normal(size=(2, frames, MELS)).astype(np.float32)
        sizes[frames] = export_lstm_int_onnx(q, tmp_path / f"t{frames}.onnx", example).stat().st_size
    assert abs(sizes[50] - sizes[100]) <= SIZE_SLACK_BYTES
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "t50.onnx"), providers=["CPUExecutionProvider"])
    long = rng.normal(size=(3, 100, MELS)).astype(np.float32)  # the T=50 file on T=100 clips
    np.testing.assert_array_equal(session.run(None, {"x": long})[0], StudentEngine(q)(long))


def test_fakequant_stays_the_default_lowering(students, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    q, x = students[(8, 8, "po2", "mean")]
    artifact = export(q, Backend("onnxruntime"), out_dir=tmp_path, example=x[:2])
    assert artifact.lstm_graph == "fakequant_unrolled"
    assert artifact.path.name.endswith(".qcdq.onnx") or "int" in artifact.weight_container
