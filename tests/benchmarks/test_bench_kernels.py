"""The integer LSTM kernel against torch fp32 nn.LSTM, one thread (``pytest --benchmark-only``).

Both sides run T = 100 frames per sequence at batch 1 and 32 for three sizes. The kernel runs
with power-of-two scales (fixed-point cell update, the bit-exact regime) and with float scales
(the cell update in float32, as trained models have). It is checked against the NumPy reference
before it is timed, and warm-up rounds (which include Numba's compilation, or loading it from
cache) are excluded. ``extra_info`` carries the
multiply-accumulates per call, the achieved GMAC/s (from the median time, and from the fastest
round), the gate product the kernel ran (``vpdpbusd u8`` on AVX-512 VNNI with 8-bit codes) and
``os.getloadavg()`` after the rounds: the machine is shared, and a loaded run is slower.
"""

from __future__ import annotations

import dataclasses
import os

import numba
import numpy as np
import pytest
import torch

from kernels.engine import IntLSTMEngine, KernelBackend
from kernels.simd import compiled_isa
from test_kernels_lstm import _model  # tests/ is on sys.path (it holds conftest.py)

THREADS = 1
STEPS = 100
SIZES = [(40, 64), (64, 128), (64, 256)]
BATCHES = [1, 32]
WEIGHT_BITS = 8  # timing does not depend on the width: codes are unpacked to int8 blocks at load


def _macs(features: int, hidden: int, batch: int) -> int:
    """Multiply-accumulates of one call: T steps x 4H gate rows x (F + H) inputs x batch."""
    return STEPS * 4 * hidden * (features + hidden) * batch


def _record(benchmark, features: int, hidden: int, batch: int, impl: str, **extra) -> None:
    macs = _macs(features, hidden, batch)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(
        impl=impl, **extra, threads=THREADS, batch=batch, steps=STEPS, features=features, hidden=hidden,
        macs=macs, gmac_per_s=macs / median / 1e9, ms_per_sequence=median * 1e3 / batch,
        gmac_per_s_best=macs / benchmark.stats.stats.min / 1e9,
        loadavg=list(os.getloadavg()),  # the machine is shared: how busy it was when this ran
    )


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    numba.set_num_threads(THREADS)  # the kernel has no parallel loops; this pins Numba's pool anyway
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("scales", ["po2", "float"])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize(("features", "hidden"), SIZES)
def test_bench_int_lstm_kernel(benchmark, features: int, hidden: int, batch: int, scales: str) -> None:
    model = dataclasses.replace(_model(features, hidden, wbits=WEIGHT_BITS, po2=scales == "po2"), head=None)  # LSTM only, as torch
    x = np.random.default_rng(0).integers(-128, 128, size=(batch, STEPS, features)).astype(np.int16)
    engine = IntLSTMEngine(model)
    reference = IntLSTMEngine(model, backend=KernelBackend.NUMPY).run(x[:, :20])
    np.testing.assert_array_equal(engine.run(x[:, :20]).hidden, reference.hidden)  # correct before timed
    benchmark.pedantic(engine.run, args=(x,), warmup_rounds=3, rounds=30 if batch == 1 else 10, iterations=1)
    product = "vpdpbusd u8" if engine._layers[0].blocks.shape[3] == 4 else f"{compiled_isa()} int16 pairs"
    _record(benchmark, features, hidden, batch, "numba int", scales=scales, isa=compiled_isa(), product=product)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize(("features", "hidden"), SIZES)
def test_bench_torch_fp32_lstm(benchmark, features: int, hidden: int, batch: int) -> None:
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(features, hidden, batch_first=True).eval()
    x = torch.randn(batch, STEPS, features)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return lstm(x)[0]

    benchmark.pedantic(run, args=(x,), warmup_rounds=3, rounds=30 if batch == 1 else 10, iterations=1)
    _record(benchmark, features, hidden, batch, "torch fp32")
