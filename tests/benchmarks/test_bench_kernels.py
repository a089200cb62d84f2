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
import time

import numba
import numpy as np
import pytest
import torch

from kernels.engine import IntLSTMEngine, KernelBackend
from kernels.simd import compiled_isa
from qbench.stats import median_with_interval
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
    engine, x = _engine(features, hidden, batch, scales)
    benchmark.pedantic(engine.run, args=(x,), warmup_rounds=3, rounds=30 if batch == 1 else 10, iterations=1)
    product = "vpdpbusd u8" if engine._layers[0].blocks.shape[3] == 4 else f"{compiled_isa()} int16 pairs"
    _record(benchmark, features, hidden, batch, "numba int", scales=scales, isa=compiled_isa(), product=product)


def _engine(features: int, hidden: int, batch: int, scales: str) -> tuple[IntLSTMEngine, np.ndarray]:
    """The kernel on a random 8-bit layer (LSTM only, as torch), checked against NumPy before it is timed."""
    model = dataclasses.replace(_model(features, hidden, wbits=WEIGHT_BITS, po2=scales == "po2"), head=None)
    x = np.random.default_rng(0).integers(-128, 128, size=(batch, STEPS, features)).astype(np.int16)
    engine = IntLSTMEngine(model)
    reference = IntLSTMEngine(model, backend=KernelBackend.NUMPY).run(x[:, :20])
    np.testing.assert_array_equal(engine.run(x[:, :20]).hidden, reference.hidden)
    return engine, x


def _torch_lstm(features: int, hidden: int, batch: int):
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(features, hidden, batch_first=True).eval()
    x = torch.randn(batch, STEPS, features)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return lstm(x)[0]

    return run, x


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize(("features", "hidden"), SIZES)
def test_bench_torch_fp32_lstm(benchmark, features: int, hidden: int, batch: int) -> None:
    run, x = _torch_lstm(features, hidden, batch)
    benchmark.pedantic(run, args=(x,), warmup_rounds=3, rounds=30 if batch == 1 else 10, iterations=1)
    _record(benchmark, features, hidden, batch, "torch fp32")


PAIRED_ROUNDS = 40


@pytest.mark.parametrize("scales", ["po2", "float"])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize(("features", "hidden"), SIZES)
def test_bench_kernel_against_torch_paired(benchmark, features: int, hidden: int, batch: int, scales: str) -> None:
    """PyTorch and the kernel called alternately, one call each per round: the ratio of each
    round's two times, whose median is recorded with a 95 % interval (order statistics). On a
    shared virtual machine whose speed drifts by tens of percent between minutes, the separate
    benchmarks above can catch the two in different phases; a round's pair shares its phase."""
    engine, x = _engine(features, hidden, batch, scales)
    torch_run, xt = _torch_lstm(features, hidden, batch)
    pairs: list[tuple[float, float]] = []

    def one_round() -> None:
        t0 = time.perf_counter()
        torch_run(xt)
        t1 = time.perf_counter()
        engine.run(x)
        pairs.append((t1 - t0, time.perf_counter() - t1))

    benchmark.pedantic(one_round, warmup_rounds=3, rounds=PAIRED_ROUNDS, iterations=1)
    times = np.array(pairs[3:])  # the warm-up rounds are appended too
    ratio, interval = median_with_interval(times[:, 0] / times[:, 1])
    benchmark.extra_info.update(
        impl="paired", scales=scales, isa=compiled_isa(), batch=batch, steps=STEPS, features=features, hidden=hidden,
        rounds=len(times), torch_ms=float(np.median(times[:, 0]) * 1e3),
        kernel_ms=float(np.median(times[:, 1]) * 1e3), torch_over_kernel=ratio,
        torch_over_kernel_ci95=list(interval), loadavg=list(os.getloadavg()),
    )
