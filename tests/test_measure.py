"""Latency statistics math, with a fake clock and a fake run function: no wall-time asserts."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from qbench.errors import ConfigError
from qbench.measure import (
    LOAD_NOISY_FRACTION, MIN_SAMPLES, NOISY_IQR_RATIO, NOISY_ROUND_SPREAD, ROUNDS, LatencyStats, Load, LoadMeter,
    measure_interleaved, measure_latency, noise_reason, torch_runner,
)

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


# -- rounds, interleaving and noise ---------------------------------------------------------------------

QUIET = Load(loadavg_1m=0.0, other_busy_cores=0.0, usable_cores=4, window_s=1.0)


class FixedMeter:
    """A load meter that reports a chosen load."""

    def __init__(self, load: Load) -> None:
        self.load = load

    def __call__(self) -> FixedMeter:
        return self

    def stop(self) -> Load:
        return self.load


def test_calls_are_taken_in_rounds_with_their_medians() -> None:
    # 30 calls of 1 ms, then 2 ms from the 19th on: rounds of 6 calls show the step as their medians do
    clock = FakeClock([0.001] * 18 + [0.002] * 12)
    s = measure_latency(clock.run, np.zeros((1, 2, 2), np.float32), threads=1, warmup=0, repeats=30, min_time=0.0,
                        clock=clock, load_meter=FixedMeter(QUIET))
    assert (s.n, s.rounds) == (30, ROUNDS)
    assert s.round_medians_ms == pytest.approx((1.0, 1.0, 1.0, 2.0, 2.0), abs=1e-6)
    assert s.min_round_median_ms == pytest.approx(1.0, abs=1e-6)
    assert s.noisy and "round medians differ by 100%" in s.noisy_reason


def test_variants_are_interleaved_round_by_round() -> None:
    order: list[str] = []
    clock = FakeClock([0.001] * 1000)

    def variant(name: str):
        def run(x: np.ndarray) -> None:
            order.append(name)
            clock.run(x)
        return run

    x = np.zeros((1, 2, 2), np.float32)
    stats = measure_interleaved({"b1": (variant("a"), x, 1), "b8": (variant("b"), np.zeros((8, 2, 2), np.float32), 1)},
                                warmup=0, repeats=10, min_time=0.0, clock=clock, load_meter=FixedMeter(QUIET))
    assert order == (["a"] * 2 + ["b"] * 2) * ROUNDS  # each round: its share of a's calls, then of b's
    assert stats["b1"].n == stats["b8"].n == 10 and stats["b8"].batch == 8
    assert not stats["b1"].noisy and stats["b1"].load == QUIET


@pytest.mark.parametrize("median, iqr, rounds, load, threads, expect", [
    (1.0, 0.1, (1.0, 1.05), QUIET, 1, None),
    (1.0, 0.5, (1.0, 1.05), QUIET, 1, "IQR is 50% of the median"),
    (1.0, 0.1, (1.0, 1.5), QUIET, 1, "round medians differ by 50%"),
    # 4 cores, runner on 1: others may keep min(0.5 x 4, 3 + 0.5) = 2 cores busy
    (1.0, 0.1, (1.0,), Load(0.0, 2.5, 4, 1.0), 1, "other processes kept 2.50 cores busy (limit 2.00)"),
    (1.0, 0.1, (1.0,), Load(0.0, 1.5, 4, 1.0), 1, None),
    # runner on all 4 cores: only 0.5 of a core of others' work is tolerated
    (1.0, 0.1, (1.0,), Load(0.0, 0.8, 4, 1.0), 4, "(limit 0.50)"),
    # no /proc/stat figure: the load average, less the runner's own threads, stands in
    (1.0, 0.1, (1.0,), Load(3.5, None, 4, 1.0), 1, "load average 3.50"),
    (1.0, 0.1, (1.0,), Load(2.5, None, 4, 1.0), 1, None),
])
def test_noise_reasons_name_the_threshold(median, iqr, rounds, load, threads, expect) -> None:
    reason = noise_reason(median, iqr, rounds, load, threads)
    assert (reason is None) if expect is None else (expect in reason)


def test_thresholds_are_what_the_reasons_say() -> None:
    assert noise_reason(1.0, NOISY_IQR_RATIO * 1.01, (), None, 1) is not None
    assert noise_reason(1.0, NOISY_IQR_RATIO * 0.99, (), None, 1) is None
    assert noise_reason(1.0, 0.0, (1.0, 1.0 + NOISY_ROUND_SPREAD * 1.01), None, 1) is not None
    assert Load(0.0, 0.0, 8, 1.0).busy_limit(1) == LOAD_NOISY_FRACTION * 8


def test_to_dict_keeps_the_old_keys_and_adds_the_new() -> None:
    s = LatencyStats.from_samples([1.0, 2.0, 3.0, 4.0], threads=1, batch=1, rounds=[0, 0, 1, 1], load=QUIET)
    d = s.to_dict()
    old = {"median_ms", "p25_ms", "p75_ms", "mean_ms", "min_ms", "n", "threads", "batch", "iqr_ms"}
    assert old <= set(d)
    assert d["round_medians_ms"] == [1.5, 3.5] and d["min_round_median_ms"] == 1.5 and d["rounds"] == 2
    assert d["load"] == {"loadavg_1m": 0.0, "other_busy_cores": 0.0, "usable_cores": 4, "window_s": 1.0}
    assert d["noisy"] is True and "IQR" in d["noisy_reason"]  # IQR 1.5 of a median of 2.5
    import json

    assert json.loads(json.dumps(d)) == d  # stored in records as is


def test_load_meter_reads_this_machine() -> None:
    meter = LoadMeter()
    deadline = time.monotonic() + 0.1
    while time.monotonic() < deadline:  # keep this process busy: its own time is not counted as others'
        pass
    load = meter.stop()
    assert load.usable_cores >= 1 and load.window_s >= 0.1
    if load.other_busy_cores is not None:  # Linux: /proc/stat
        assert 0.0 <= load.other_busy_cores <= load.usable_cores


BURN = "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end:\n    pass\n"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat is Linux's")
def test_a_run_counts_its_ended_children_as_its_own_work() -> None:
    """A sweep's worker processes are its work, not the machine's other load: a child that burns
    0.6 CPU-seconds shows in the plain meter's other processes and not in the children meter's."""
    import subprocess

    plain, children = LoadMeter(), LoadMeter(children=True)
    subprocess.run([sys.executable, "-c", BURN], check=True)  # waited for: its time is in RUSAGE_CHILDREN
    with_child, without = plain.stop(), children.stop()
    child_cores = 0.6 / with_child.window_s
    assert with_child.other_busy_cores - without.other_busy_cores == pytest.approx(child_cores, rel=0.5)


def test_report_marks_noisy_latency_in_table_and_plot(tmp_path) -> None:
    from qbench.provenance import provenance
    from qbench.records import ResultsDocument
    from qbench.report import NOISY_MARK, deployment_table, render

    def record(rid: str, noisy: bool) -> dict:
        lat = LatencyStats.from_samples([1.0, 1.0, 1.0, 9.0 if noisy else 1.0], threads=1, batch=1).to_dict()
        return {"id": rid, "status": "ok", "role": "student", "model": "lstm", "precision": "w4a4", "weight_bits": 4,
                "method": "qat", "distill": "kd", "backend": "onnxruntime", "metrics": {"error": 0.1},
                "latency": {"b1_t1": lat}}

    records = [record("clean", False), record("noisy", True)]
    assert [r["latency"]["b1_t1"]["noisy"] for r in records] == [False, True]
    rows = deployment_table(records).splitlines()[2:]
    marked = [[c.strip() for c in row.split("|") if c.strip().endswith(NOISY_MARK)] for row in rows]
    assert marked == [[], ["1 ± 2" + NOISY_MARK]]  # the noisy b1_t1 cell, and nothing else
    doc = ResultsDocument(tmp_path / "sweep.json", config={}, provenance=provenance())
    doc.records = records
    assert all(p.stat().st_size > 0 for p in render(doc))  # the plot draws noisy points dashed
