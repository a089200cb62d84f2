"""Batch-1 latency of the two ONNX lowerings of an LSTM student on both runtimes (``pytest --benchmark-only``).

``fakequant_unrolled`` (float MatMul, fake-quantized activations, T unrolled) against
``integer_scan`` (MatMulInteger, requantization, table Gathers, one Scan), one thread, 8-bit
weights and activations, a 1.5 s clip (150 frames of 40 mel bins, 75 LSTM steps after frame
pooling, 64 hidden units), the integer engine alongside. Every artifact passes conformance
before it is timed and warm-up rounds are excluded. ``extra_info`` carries the file size,
the conforming variant timed, and ``os.getloadavg()`` (the machine is shared).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from qbench.backends import exported
from qbench.export import Backend, check_conformance, export, runner
from qbench.export.base import LSTMGraph

THREADS = 1
FRAMES, MELS, CLASSES = 150, 40, 12
BITS = 8


@pytest.fixture(scope="module")
def student():
    import models
    from qbench.quant import QuantConfig
    from qbench.quant.quantize import calibrate, quantize

    torch.manual_seed(0)
    x = torch.randn(32, FRAMES, MELS)
    m = models.build_student("lstm", n_mels=MELS, n_frames=FRAMES, n_classes=CLASSES)
    m.train()
    m(x)  # non-trivial BatchNorm statistics
    q = quantize(m.eval(), QuantConfig(weight_bits=BITS, act_bits=BITS))
    calibrate(q, x, batches=2, batch_size=16)
    return q.eval(), x.numpy()


def _record(benchmark, **extra) -> None:
    benchmark.extra_info.update(**extra, threads=THREADS, batch=1, frames=FRAMES, bits=BITS,
                                loadavg=list(os.getloadavg()))


@pytest.mark.parametrize("graph", list(LSTMGraph), ids=lambda g: g.value)
@pytest.mark.parametrize("backend", [pytest.param(b, id=b.value) for b in exported()])
def test_bench_lstm_graph(benchmark, backend: Backend, graph: LSTMGraph, student, tmp_path: Path) -> None:
    q, x = student
    artifact = export(q, backend, out_dir=tmp_path, example=x[:1], lstm_graph=graph)
    conf = check_conformance(artifact, q, x)
    assert conf.ok, conf.reason  # correct before timed
    run = runner(artifact, threads=THREADS, **conf.best_options)
    benchmark.pedantic(run, args=(x[:1],), warmup_rounds=5, rounds=50, iterations=1)
    _record(benchmark, backend=backend.value, lstm_graph=graph.value, variant=conf.best, file_bytes=artifact.size_bytes)


def test_bench_lstm_engine(benchmark, student) -> None:
    from qbench.engine import engine_runner

    q, x = student
    run = engine_runner(q, threads=THREADS)
    run(x[:1])  # compile (or load Numba's cache) before timing
    benchmark.pedantic(run, args=(x[:1],), warmup_rounds=5, rounds=50, iterations=1)
    _record(benchmark, backend="engine")
