"""Latency harness: one measurement function for every backend.

A *runner* is a callable ``run(x) -> logits`` taking ``(B, T, F)`` float32 log-mel frames.
:func:`measure_latency` times it after warm-up at a fixed, recorded thread count and returns
a distribution (median, quartiles) in milliseconds. The runner factories below build runners
for PyTorch fp32 and Brevitas fake-quant models; ONNX Runtime and OpenVINO runners come from
:func:`qbench.export.runner`, which pins their own thread pools.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from qbench.errors import ConfigError

Run = Callable[[np.ndarray], Any]
Clock = Callable[[], float]  # seconds, monotonic

DEFAULT_WARMUP = 5
DEFAULT_REPEATS = 30
DEFAULT_MIN_TIME = 0.2  # seconds of timed runs at least, so a fast model is not judged on 30 samples
DEFAULT_MAX_TIME = 2.0  # seconds of timed runs at most once MIN_SAMPLES are in: a slow runner (Brevitas'
# step-by-step QuantLSTM, 0.2 s a call) is not run 30 times
WARMUP_MAX_TIME = 1.0  # warm-up stops after this many seconds (one call at least): a JIT or a cache
# is warm after its first calls, and a slow runner's later warm-up calls only cost time
MIN_SAMPLES = 5  # never fewer timed calls than this: a median and quartiles need a few


@dataclasses.dataclass(frozen=True)
class LatencyStats:
    """Per-call latency distribution in milliseconds, after warm-up."""

    median_ms: float
    p25_ms: float
    p75_ms: float
    mean_ms: float
    min_ms: float
    n: int  # timed calls (warm-up excluded)
    threads: int
    batch: int

    @property
    def iqr_ms(self) -> float:
        return self.p75_ms - self.p25_ms

    def to_dict(self) -> dict[str, float | int]:
        out: dict[str, float | int] = dataclasses.asdict(self)
        out["iqr_ms"] = self.iqr_ms
        return out

    @classmethod
    def from_samples(cls, samples_ms: np.ndarray | list[float], *, threads: int, batch: int) -> LatencyStats:
        """Summarise per-call times in milliseconds (linear-interpolated quartiles)."""
        s = np.asarray(samples_ms, dtype=np.float64)
        if s.size == 0:
            raise ValueError("no latency samples")
        p25, med, p75 = np.percentile(s, [25, 50, 75])
        return cls(
            median_ms=float(med), p25_ms=float(p25), p75_ms=float(p75), mean_ms=float(s.mean()),
            min_ms=float(s.min()), n=int(s.size), threads=threads, batch=batch,
        )


def measure_latency(
    run: Run,
    x: np.ndarray,
    *,
    threads: int,
    warmup: int = DEFAULT_WARMUP,
    repeats: int = DEFAULT_REPEATS,
    min_time: float = DEFAULT_MIN_TIME,
    max_time: float | None = DEFAULT_MAX_TIME,
    max_repeats: int = 10_000,
    clock: Clock = time.perf_counter,
) -> LatencyStats:
    """Time ``run(x)`` per call: ``warmup`` untimed calls (fewer once :data:`WARMUP_MAX_TIME` is
    spent, one at least), then at least ``repeats`` timed calls
    and at least ``min_time`` seconds of them (capped at ``max_repeats``, and at ``max_time``
    seconds once :data:`MIN_SAMPLES` calls are timed; ``n`` in the result says how many were).

    ``x`` is the ``(B, T, F)`` input; ``threads`` must be the count the runner was built with
    (it is recorded, not set, here: each runtime pins its own pool when the runner is made).
    """
    if threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    if warmup < 0 or repeats < 1 or min_time < 0:
        raise ConfigError(f"need warmup >= 0, repeats >= 1, min_time >= 0; got {warmup}, {repeats}, {min_time}")
    warm_start = clock()
    for i in range(warmup):
        if i and clock() - warm_start >= WARMUP_MAX_TIME:
            break
        run(x)
    samples: list[float] = []
    spent = 0.0

    def enough() -> bool:
        if len(samples) >= max_repeats:
            return True
        if max_time is not None and spent >= max_time and len(samples) >= MIN_SAMPLES:
            return True
        return len(samples) >= repeats and spent >= min_time

    while not enough():
        t0 = clock()
        run(x)
        dt = clock() - t0
        samples.append(dt * 1e3)
        spent += dt
    return LatencyStats.from_samples(samples, threads=threads, batch=int(x.shape[0]))


def set_torch_threads(threads: int) -> None:
    """Pin PyTorch's intra-op pool (and Numba's, when present, for the integer engine)."""
    import torch

    torch.set_num_threads(threads)
    try:
        import numba
    except ImportError:
        return
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


def torch_runner(model: Any, *, threads: int) -> Run:
    """Runner for a PyTorch model (fp32 student or Brevitas fake-quant twin) in eval mode."""
    import torch

    set_torch_threads(threads)
    model.eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return _as_numpy(out)

    return run


def _as_numpy(out: Any) -> np.ndarray:
    value = getattr(out, "value", out)  # Brevitas QuantTensor -> its dequantized tensor
    return value.detach().cpu().numpy()
