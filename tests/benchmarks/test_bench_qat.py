"""QAT cost of the quantized LSTM: Brevitas' own forward against qbench's fast path, one thread.

The LSTM student's shape (batch 64, 75 steps, 40 log-mel inputs, hidden 64), default float scales
and w8a8 (the sweep's default) and power-of-two scales (the bit-exact regime, where the fast path
also hoists the input product). One QAT step is forward + backward + an Adam step; one inference
call is a ``no_grad`` forward in eval mode. Both paths are checked to give identical outputs before
anything is timed, and warm-up rounds are excluded. Each fast benchmark records
``speedup_vs_stock`` (stock median / fast median) in ``extra_info``; the stock benchmark of the
same parameters runs first in the same session (pytest runs parametrised tests in order).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from qbench.quant.config import QuantConfig
from qbench.quant.fast_lstm import why_not_fast
from qbench.quant.lstm import QbenchQuantLSTM, quant_lstm_from

THREADS = 1
BATCH, STEPS, FEATURES, HIDDEN = 64, 75, 40, 64
STATS_STEPS = 2
_medians: dict[tuple[str, str], float] = {}  # (kind, scales) -> stock median seconds


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(previous)


def _model(scales: str) -> tuple[QbenchQuantLSTM, torch.Tensor]:
    torch.manual_seed(0)
    q = quant_lstm_from(nn.LSTM(FEATURES, HIDDEN, batch_first=True), QuantConfig(scale_type=scales),
                        collect_stats_steps=STATS_STEPS)
    x = torch.rand(BATCH, STEPS, FEATURES, generator=torch.Generator().manual_seed(1)) * 2 - 1
    q.train()
    with torch.no_grad():
        for _ in range(STATS_STEPS + 1):  # past the statistics phase: scales are learned parameters
            q(x)
    return q, x


def _check_identical(q: QbenchQuantLSTM, x: torch.Tensor) -> None:
    with torch.no_grad():
        q.fast_path = True
        assert why_not_fast(q) is None
        fast = q(x)[0]
        q.fast_path = False
        np.testing.assert_array_equal(fast.numpy(), q(x)[0].numpy())


def _record(benchmark, kind: str, scales: str, path: str) -> None:
    median = benchmark.stats.stats.median
    extra = dict(kind=kind, path=path, scales=scales, threads=THREADS, batch=BATCH, steps=STEPS,
                 features=FEATURES, hidden=HIDDEN, ms=median * 1e3)
    if path == "stock":
        _medians[(kind, scales)] = median
    elif (kind, scales) in _medians:
        extra["speedup_vs_stock"] = _medians[(kind, scales)] / median
    benchmark.extra_info.update(extra)


@pytest.mark.parametrize("path", ["stock", "fast"])
@pytest.mark.parametrize("scales", ["float", "po2"])
def test_bench_qat_step(benchmark, scales: str, path: str) -> None:
    q, x = _model(scales)
    _check_identical(q, x)
    q.train()
    q.fast_path = path == "fast"
    opt = torch.optim.Adam(q.parameters(), lr=1e-4)

    def step() -> None:
        out, _ = q(x)
        opt.zero_grad()
        out.square().mean().backward()
        opt.step()

    rounds = 3 if path == "stock" else 10
    benchmark.pedantic(step, warmup_rounds=1, rounds=rounds, iterations=1)
    _record(benchmark, "qat_step", scales, path)


@pytest.mark.parametrize("path", ["stock", "fast"])
@pytest.mark.parametrize("scales", ["float", "po2"])
def test_bench_inference(benchmark, scales: str, path: str) -> None:
    q, x = _model(scales)
    _check_identical(q, x)
    q.eval()
    q.fast_path = path == "fast"

    def run() -> torch.Tensor:
        with torch.no_grad():
            return q(x)[0]

    rounds = 5 if path == "stock" else 20
    benchmark.pedantic(run, warmup_rounds=2, rounds=rounds, iterations=1)
    _record(benchmark, "inference", scales, path)
