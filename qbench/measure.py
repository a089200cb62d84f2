"""Latency harness: one measurement function for every backend.

A *runner* is a callable ``run(x) -> logits`` taking ``(B, T, F)`` float32 log-mel frames.
:func:`measure_latency` times it after warm-up at a fixed, recorded thread count and returns
a distribution (median, quartiles) in milliseconds. The runner factories below build runners
for PyTorch fp32 and Brevitas fake-quant models; ONNX Runtime and OpenVINO runners come from
:func:`qbench.export.runner`, which pins their own thread pools.

A figure says how far to trust it. Timed calls run in rounds (:data:`ROUNDS`);
:func:`measure_interleaved` takes its round-robin over several variants (e.g. batch sizes of one
runner), as asv and pytest-benchmark do, so a burst of load hits all of them rather than one. The
stats keep each round's median (their minimum is the least disturbed estimate), the machine load
over the measurement (:class:`Load`), and ``noisy`` with the reason when the load or the spread
passes the thresholds below.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Hashable, Mapping
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
ROUNDS = 5  # timed calls are taken in this many rounds (each a share of repeats and min_time)

# When a figure is marked noisy (its reasons name the threshold that was passed):
NOISY_IQR_RATIO = 0.25  # IQR / median above this: calls vary too much for one median to stand for them
NOISY_ROUND_SPREAD = 0.30  # (max - min) / min of the round medians above this: the speed drifted
LOAD_NOISY_FRACTION = 0.5  # other processes kept more than this share of the usable cores busy ...
LOAD_SLACK_CORES = 0.5  # ... or more than this many cores beyond those the runner left idle
MIN_LOAD_WINDOW_S = 0.05  # a shorter measurement is below /proc/stat's 10 ms tick resolution


@dataclasses.dataclass(frozen=True)
class Load:
    """What else the machine did while a figure was measured."""

    loadavg_1m: float | None  # os.getloadavg()[0] at the start: a lagging view, this process included
    other_busy_cores: float | None  # CPU-seconds per second spent by other processes (and hypervisor
    # steal) on the cores this process may use, over the measurement, from /proc/stat; None off Linux
    # or for a measurement shorter than MIN_LOAD_WINDOW_S
    usable_cores: int
    window_s: float  # wall time the load was sampled over

    def busy_limit(self, threads: int) -> float:
        """Other processes' busy cores above which a runner on ``threads`` cores is disturbed."""
        idle = max(self.usable_cores - threads, 0)
        return min(LOAD_NOISY_FRACTION * self.usable_cores, idle + LOAD_SLACK_CORES)

    def reason(self, threads: int) -> str | None:
        """Why this load disturbs a runner on ``threads`` cores, or None."""
        limit = self.busy_limit(threads)
        if self.other_busy_cores is not None:
            if self.other_busy_cores > limit:
                return f"other processes kept {self.other_busy_cores:.2f} cores busy (limit {limit:.2f})"
            return None
        if self.loadavg_1m is not None and self.loadavg_1m - threads > limit:  # fallback: lagging, coarse
            return f"load average {self.loadavg_1m:.2f} with {threads} thread(s) of ours (limit {limit:.2f})"
        return None


def _usable_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def _busy_seconds(cpus: list[int]) -> float | None:
    """Busy CPU-seconds so far on ``cpus`` (user, nice, system, irq, softirq, steal), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    wanted = {f"cpu{c}" for c in cpus}
    ticks = 0
    for line in lines:
        fields = line.split()
        if fields and fields[0] in wanted:
            values = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
            ticks += sum(values) - values[3] - values[4]
    return ticks / os.sysconf("SC_CLK_TCK")


def _own_seconds(children: bool) -> float:
    """CPU-seconds of this process (every thread, runtime pools included) and, with ``children``,
    of its child processes that have ended and been waited for (a sweep's worker pools)."""
    seconds = time.process_time()
    if children:
        try:
            import resource
        except ImportError:  # not Unix: children count as other processes
            return seconds
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        seconds += usage.ru_utime + usage.ru_stime
    return seconds


class LoadMeter:
    """Made at the start of a measurement; :meth:`stop` at its end gives the :class:`Load`.
    ``children``: this process's ended child processes are its own work, not other processes' (a
    whole sweep, whose worker pools have shut down by its end)."""

    def __init__(self, *, children: bool = False) -> None:
        self.cpus = _usable_cpus()
        self.children = children
        try:
            self.loadavg: float | None = os.getloadavg()[0]
        except OSError:
            self.loadavg = None
        self.t0, self.own0, self.busy0 = time.monotonic(), _own_seconds(children), _busy_seconds(self.cpus)

    def stop(self) -> Load:
        window = time.monotonic() - self.t0
        own = _own_seconds(self.children) - self.own0
        busy = _busy_seconds(self.cpus)
        other = None
        if busy is not None and self.busy0 is not None and window >= MIN_LOAD_WINDOW_S:
            other = round(max(busy - self.busy0 - own, 0.0) / window, 3)
        return Load(loadavg_1m=self.loadavg, other_busy_cores=other, usable_cores=len(self.cpus),
                    window_s=round(window, 3))


def noise_reason(median_ms: float, iqr_ms: float, round_medians_ms: tuple[float, ...],
                 load: Load | None, threads: int) -> str | None:
    """Why a latency figure should not be taken at face value (thresholds above), or None."""
    reasons = []
    if median_ms > 0 and iqr_ms / median_ms > NOISY_IQR_RATIO:
        reasons.append(f"IQR is {iqr_ms / median_ms:.0%} of the median (limit {NOISY_IQR_RATIO:.0%})")
    if len(round_medians_ms) > 1 and min(round_medians_ms) > 0:
        drift = (max(round_medians_ms) - min(round_medians_ms)) / min(round_medians_ms)
        if drift > NOISY_ROUND_SPREAD:
            reasons.append(f"round medians differ by {drift:.0%} (limit {NOISY_ROUND_SPREAD:.0%})")
    if load is not None and (why := load.reason(threads)):
        reasons.append(why)
    return "; ".join(reasons) or None


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
    rounds: int = 1  # rounds the timed calls were taken in
    round_medians_ms: tuple[float, ...] = ()  # median of each round, in time order
    min_round_median_ms: float = math.nan  # the least disturbed round: a floor for the true figure
    load: Load | None = None  # the machine's load over the measurement
    noisy: bool = False  # measured under load, or with a spread above the NOISY_* thresholds
    noisy_reason: str | None = None

    @property
    def iqr_ms(self) -> float:
        return self.p75_ms - self.p25_ms

    def to_dict(self) -> dict[str, Any]:
        """The fields, ``iqr_ms`` and the load as a nested dict (older records lack the keys after ``batch``)."""
        out: dict[str, Any] = dataclasses.asdict(self)
        out["round_medians_ms"] = list(self.round_medians_ms)
        out["iqr_ms"] = self.iqr_ms
        return out

    @classmethod
    def from_samples(cls, samples_ms: np.ndarray | list[float], *, threads: int, batch: int,
                     rounds: np.ndarray | list[int] | None = None, load: Load | None = None) -> LatencyStats:
        """Summarise per-call times in milliseconds (linear-interpolated quartiles); ``rounds`` gives
        each sample's round (default: one round), ``load`` what the machine did meanwhile."""
        s = np.asarray(samples_ms, dtype=np.float64)
        if s.size == 0:
            raise ValueError("no latency samples")
        r = np.zeros(s.size, dtype=np.int64) if rounds is None else np.asarray(rounds)
        if r.shape != s.shape:
            raise ValueError(f"{s.size} samples but {r.size} round labels")
        medians = tuple(float(np.median(s[r == k])) for k in dict.fromkeys(r.tolist()))
        p25, med, p75 = np.percentile(s, [25, 50, 75])
        reason = noise_reason(float(med), float(p75 - p25), medians, load, threads)
        return cls(
            median_ms=float(med), p25_ms=float(p25), p75_ms=float(p75), mean_ms=float(s.mean()),
            min_ms=float(s.min()), n=int(s.size), threads=threads, batch=batch, rounds=len(medians),
            round_medians_ms=medians, min_round_median_ms=min(medians), load=load,
            noisy=reason is not None, noisy_reason=reason,
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
    load_meter: Callable[[], LoadMeter] = LoadMeter,
) -> LatencyStats:
    """Time ``run(x)`` per call: ``warmup`` untimed calls (fewer once :data:`WARMUP_MAX_TIME` is
    spent, one at least), then at least ``repeats`` timed calls
    and at least ``min_time`` seconds of them (capped at ``max_repeats``, and at ``max_time``
    seconds once :data:`MIN_SAMPLES` calls are timed; ``n`` in the result says how many were),
    taken in up to :data:`ROUNDS` rounds.

    ``x`` is the ``(B, T, F)`` input; ``threads`` must be the count the runner was built with
    (it is recorded, not set, here: each runtime pins its own pool when the runner is made).
    """
    return measure_interleaved({0: (run, x, threads)}, warmup=warmup, repeats=repeats, min_time=min_time,
                               max_time=max_time, max_repeats=max_repeats, clock=clock, load_meter=load_meter)[0]


Variant = tuple[Run, np.ndarray, int]  # run, its (B, T, F) input, the threads it was built with


class _Timing:
    """The timed calls of one variant and the stopping rule of :func:`measure_latency`."""

    def __init__(self, repeats: int, min_time: float, max_time: float | None, max_repeats: int) -> None:
        self.repeats, self.min_time, self.max_time, self.max_repeats = repeats, min_time, max_time, max_repeats
        self.samples: list[float] = []
        self.rounds: list[int] = []
        self.spent = 0.0

    def enough(self) -> bool:
        n = len(self.samples)
        if n >= self.max_repeats:
            return True
        if self.max_time is not None and self.spent >= self.max_time and n >= MIN_SAMPLES:
            return True
        return n >= self.repeats and self.spent >= self.min_time

    def round(self, run: Run, x: np.ndarray, index: int, clock: Clock) -> None:
        """One round: its share of the calls and of the time (less once the variant has enough)."""
        calls = math.ceil(self.repeats / ROUNDS)
        share = self.min_time / ROUNDS
        cap = self.max_time / ROUNDS if self.max_time is not None else math.inf  # slow runners: 1 call a round
        n0, t0 = len(self.samples), self.spent
        while not self.enough():
            done, used = len(self.samples) - n0, self.spent - t0
            if done and (used >= cap or (done >= calls and used >= share)):
                break
            start = clock()
            run(x)
            dt = clock() - start
            self.samples.append(dt * 1e3)
            self.rounds.append(index)
            self.spent += dt


def measure_interleaved(
    variants: Mapping[Hashable, Variant],
    *,
    warmup: int = DEFAULT_WARMUP,
    repeats: int = DEFAULT_REPEATS,
    min_time: float = DEFAULT_MIN_TIME,
    max_time: float | None = DEFAULT_MAX_TIME,
    max_repeats: int = 10_000,
    clock: Clock = time.perf_counter,
    load_meter: Callable[[], LoadMeter] = LoadMeter,
) -> dict[Hashable, LatencyStats]:
    """:func:`measure_latency` of several variants at once, their rounds taken in turn (variant A's
    round 1, B's round 1, A's round 2, ...), so load that comes and goes disturbs them alike.

    Each variant gets the stopping rule and options of :func:`measure_latency` on its own; the load
    is sampled over the whole measurement.
    """
    for _, _, threads in variants.values():
        if threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
    if warmup < 0 or repeats < 1 or min_time < 0:
        raise ConfigError(f"need warmup >= 0, repeats >= 1, min_time >= 0; got {warmup}, {repeats}, {min_time}")
    for run, x, _ in variants.values():
        warm_start = clock()
        for i in range(warmup):
            if i and clock() - warm_start >= WARMUP_MAX_TIME:
                break
            run(x)
    timings = {key: _Timing(repeats, min_time, max_time, max_repeats) for key in variants}
    meter = load_meter()
    index = 0
    while not all(t.enough() for t in timings.values()):
        for key, (run, x, _) in variants.items():
            timings[key].round(run, x, index, clock)
        index += 1
    load = meter.stop()
    return {key: LatencyStats.from_samples(t.samples, threads=variants[key][2], batch=int(variants[key][1].shape[0]),
                                           rounds=t.rounds, load=load)
            for key, t in timings.items()}


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
