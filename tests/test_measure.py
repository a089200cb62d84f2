"""Latency statistics math, with a fake clock and a fake run function: no wall-time asserts."""

from __future__ import annotations

import numpy as np
import pytest

from qbench.errors import ConfigError
from qbench.measure import MIN_SAMPLES, LatencyStats, measure_latency, torch_runner

EXACT = 1e-9  # stats of exact binary fractions are exact up to float rounding


class FakeClock:
    """A clock the fake run advances by a scripted duration per call."""

    def __init__(self, durations_s: list[float]) -> None:
        self.now = 0.0
        self.durations = list(durations_s)
        self.calls = 0

    def __call__(self) -> float:
        return self.now

    def run(self, x: np.ndarray) -> None:
        self.now += self.durations[self.calls]
        self.calls += 1


def test_stats_from_known_samples() -> None:
    s = LatencyStats.from_samples([1.0, 2.0, 3.0, 4.0, 5.0], threads=2, batch=8)
    assert s.median_ms == pytest.approx(3.0, abs=EXACT)
    assert s.p25_ms == pytest.approx(2.0, abs=EXACT)
    assert s.p75_ms == pytest.approx(4.0, abs=EXACT)
    assert s.iqr_ms == pytest.approx(2.0, abs=EXACT)
    assert s.mean_ms == pytest.approx(3.0, abs=EXACT)
    assert (s.n, s.threads, s.batch, s.min_ms) == (5, 2, 8, 1.0)
    assert s.to_dict()["iqr_ms"] == pytest.approx(2.0, abs=EXACT)


def test_warmup_excluded_and_ms_units() -> None:
    # two slow warm-up calls (0.4 s each, under WARMUP_MAX_TIME) must not appear; timed calls are 1, 2, 3 ms
    clock = FakeClock([0.4, 0.4, 0.001, 0.002, 0.003])
    x = np.zeros((4, 10, 8), np.float32)
    s = measure_latency(clock.run, x, threads=1, warmup=2, repeats=3, min_time=0.0, clock=clock)
    assert clock.calls == 5
    assert s.n == 3
    assert s.median_ms == pytest.approx(2.0, abs=1e-6)
    assert s.min_ms == pytest.approx(1.0, abs=1e-6)
    assert s.batch == 4


def test_min_time_extends_repeats() -> None:
    # each call takes 1/64 s (exact in binary); 3 repeats fall short of min_time 1/8 s, which needs 8
    clock = FakeClock([1 / 64] * 100)
    s = measure_latency(clock.run, np.zeros((1, 2, 2), np.float32), threads=1, warmup=0, repeats=3,
                        min_time=1 / 8, clock=clock)
    assert s.n == 8


def test_max_repeats_caps_the_loop() -> None:
    clock = FakeClock([0.0] * 100)  # a zero-duration run never reaches min_time
    s = measure_latency(clock.run, np.zeros((1, 2, 2), np.float32), threads=1, warmup=0, repeats=1,
                        min_time=1.0, max_repeats=7, clock=clock)
    assert s.n == 7


@pytest.mark.parametrize("kwargs", [{"threads": 0}, {"threads": 1, "repeats": 0}, {"threads": 1, "warmup": -1}])
def test_bad_options_raise(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        measure_latency(lambda x: None, np.zeros((1, 1, 1), np.float32), **kwargs)


def test_torch_runner_returns_logits() -> None:
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 3))
    out = torch_runner(model, threads=1)(np.ones((2, 3, 2), np.float32))
    assert out.shape == (2, 3)


def test_max_time_caps_a_slow_runner_but_keeps_min_samples() -> None:
    # a 1 s call: 30 repeats would take 30 s; the cap stops after MIN_SAMPLES once 5 s are spent
    clock = FakeClock([1.0] * 100)
    s = measure_latency(clock.run, np.zeros((1, 2, 2), np.float32), threads=1, warmup=0, repeats=30,
                        min_time=0.0, max_time=2.5, clock=clock)
    assert s.n == MIN_SAMPLES and s.median_ms == pytest.approx(1000.0)
    fast = FakeClock([0.001] * 100)
    s = measure_latency(fast.run, np.zeros((1, 2, 2), np.float32), threads=1, warmup=0, repeats=30,
                        min_time=0.0, max_time=2.5, clock=fast)
    assert s.n == 30  # a fast runner is not cut short


def test_warmup_is_capped_in_time_but_runs_once_at_least() -> None:
    slow = FakeClock([0.6] * 20)  # 0.6 s a call: the second warm-up call crosses WARMUP_MAX_TIME
    measure_latency(slow.run, np.zeros((1, 2, 2), np.float32), threads=1, warmup=5, repeats=1, min_time=0.0,
                    clock=slow)
    assert slow.calls == 2 + 1  # two warm-up calls, one timed
    very_slow = FakeClock([5.0] * 20)
    measure_latency(very_slow.run, np.zeros((1, 2, 2), np.float32), threads=1, warmup=5, repeats=1, min_time=0.0,
                    clock=very_slow)
    assert very_slow.calls == 1 + 1
