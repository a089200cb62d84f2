"""What runs in the Ray executor's tasks (:mod:`qbench.sweep.ray_executor` submits them).

A stage task trains one model into the shared cache and returns a :class:`StageOutcome`; a group
task measures the points of a :class:`qbench.sweep.ray_graph.Group` in one Pipeline and yields a
:class:`PointResult` per point as it finishes, its latency captured for the driver
(:mod:`qbench.sweep.deferred`); :func:`receive` is what the process writing the records does with
each (the Ray driver, and :mod:`qbench.sweep.parallel`'s). A stage that failed upstream fails the
points that need it with its reason, as :meth:`Pipeline.once` does in-process. Torch's threads are
set here, not left to the ``OMP_NUM_THREADS`` Ray sets to a task's CPUs, and recorded per record
(``provenance.compute``).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import socket
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qbench.errors import QbenchError
from qbench.files import is_environment_error, os_error_line
from qbench.records import LATENCY_PENDING, STATUS_OK
from qbench.sweep.config import SweepConfig
from qbench.sweep.deferred import Deferred, capture_latency, detach
from qbench.sweep.pipeline import Pipeline, StageFailed
from qbench.sweep.plan import Point
from qbench.sweep.ray_graph import Group, Stage
from qbench.sweep.run import measure_or_fail


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """What every task builds its Pipeline from."""

    cfg: SweepConfig
    cache_dir: str  # the driver's cache folder: on a cluster, a path every node shares
    thread_counts: tuple[int, ...]  # the driver's, ``0`` (all cores) resolved there, as in-process
    compute_threads: int | None = None  # scoring and conformance threads (None: the largest thread count)
    executor: str = "ray"  # named in each record's provenance.compute

    @classmethod
    def of(cls, pipe: Pipeline, **fields: Any) -> TaskSpec:
        """The spec of ``pipe``'s sweep: its config, its cache folder resolved, its thread counts."""
        return cls(pipe.cfg, str(Path(pipe.cache_dir).resolve()), tuple(pipe.thread_counts()), **fields)

    @property
    def scoring_threads(self) -> int:
        return self.compute_threads or max(self.thread_counts)


@dataclasses.dataclass(frozen=True)
class StageOutcome:
    """A stage task's result: its models are in the cache; ``error`` says why not."""

    stage: str
    error: str | None
    traceback: str | None
    stage_seconds: dict[str, float]


@dataclasses.dataclass(frozen=True)
class PointResult:
    """One point's record from a group task, its latency still to be timed (``deferred``)."""

    record: dict[str, Any]
    deferred: list[Deferred]
    log: list[tuple[int, str]]  # what the task logged for sweep.log (failures with their tracebacks)
    stage_seconds: dict[str, float]  # spent on this point's stages in the task


class TaskPipeline(Pipeline):
    """A task's Pipeline: the driver's thread counts, torch's threads set explicitly, no progress bars."""

    def __init__(self, spec: TaskSpec) -> None:
        from qbench.measure import set_torch_threads

        super().__init__(spec.cfg, cache_dir=Path(spec.cache_dir), progress=False)
        self._thread_counts = list(spec.thread_counts)
        self._compute_threads = spec.scoring_threads
        set_torch_threads(self.compute_threads())  # not Ray's OMP_NUM_THREADS; training sets its own

    def thread_counts(self) -> list[int]:
        return list(self._thread_counts)

    def compute_threads(self) -> int:
        return self._compute_threads


def compute_provenance(spec: TaskSpec) -> dict[str, Any]:
    """Where a record's figures were computed, and with which threads."""
    from qbench.provenance import machine_id

    cfg = spec.cfg
    return {"executor": spec.executor, "host": socket.gethostname(), "machine_id": machine_id(),
            "threads": {"teacher_training": cfg.teacher_train.threads, "student_training": cfg.student_train.threads,
                        "qat_training": cfg.qat_train.threads, "scoring_and_conformance": spec.scoring_threads,
                        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}}


def stage_task(spec: TaskSpec, stage: Stage, *upstream: StageOutcome) -> StageOutcome:
    """Train (or load) ``stage``'s model into the cache (Ray's workers, and :mod:`qbench.sweep.ahead`'s)."""
    name = stage.name(spec.cfg)
    failed = next((o for o in upstream if o.error is not None), None)
    if failed is not None:
        return StageOutcome(name, f"{failed.stage} failed: {failed.error}", None, {})
    pipe = TaskPipeline(spec)
    try:
        if stage.kind == "teacher":
            pipe.teacher()
        elif stage.kind == "qat":
            pipe.qat(stage.model, stage.distill, stage.bits)
        else:
            pipe.student(stage.model, stage.distill, stage.seed)
    except Exception as exc:  # a failed stage is data: every point that needs it is recorded failed with it
        if is_environment_error(exc):  # a full disk: the sweep stops, as in-process
            raise QbenchError(f"{name}: {os_error_line(exc)}") from None
        trace = None if isinstance(exc, QbenchError) else traceback.format_exc()  # a user error is its one line
        return StageOutcome(name, f"{type(exc).__name__}: {exc}", trace, dict(pipe.stage_seconds))
    return StageOutcome(name, None, None, dict(pipe.stage_seconds))


class _Lines(logging.Handler):
    """What a task logs, kept for the driver's sweep.log."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelno, record.getMessage()))

    def take(self) -> list[tuple[int, str]]:
        lines, self.lines = self.lines, []
        return lines


def group_task(spec: TaskSpec, group: Group, *upstream: StageOutcome) -> Iterator[PointResult]:
    """Measure ``group``'s points in one Pipeline, yielding each record as it finishes."""
    failed = next((o for o in upstream if o.error is not None), None)
    pipe = TaskPipeline(spec)
    lines = _Lines()
    log = logging.getLogger(f"qbench.sweep.ray.{os.getpid()}")
    log.handlers[:] = [lines]
    log.setLevel(logging.INFO)
    log.propagate = False
    compute = compute_provenance(spec)

    def stage_failed(point: Point) -> dict[str, Any]:
        raise StageFailed(f"{failed.stage} failed: {failed.error}")

    for point in group.points:
        before = dict(pipe.stage_seconds)
        with capture_latency(pipe) as calls:
            record = measure_or_fail(point, pipe.measure if failed is None else stage_failed, log)
        deferred = detach(record, calls) if record["status"] == STATUS_OK else []
        record["provenance"] = {"compute": compute}
        spent = {k: v - before.get(k, 0.0) for k, v in pipe.stage_seconds.items() if v != before.get(k, 0.0)}
        yield PointResult(record, deferred, lines.take(), spent)


def receive(pipe: Pipeline, point: Point, result: PointResult, log: logging.Logger, source: str,
            untimed: dict[str, tuple[Point, dict[str, Any], list[Deferred]]]) -> dict[str, Any]:
    """What the process that writes the records does with a group task's ``result`` for ``point``:
    the task's log lines into ``log`` (tagged ``source``), its stage times booked, and the record to
    write, marked latency-pending with what to time kept in ``untimed`` when it has any."""
    record = result.record
    for level, line in result.log:
        log.log(level, "%s [%s]", line, source)
    pipe.book(result.stage_seconds)
    if not result.deferred:
        return record
    record[LATENCY_PENDING] = True
    untimed[record["id"]] = (point, record, result.deferred)
    return copy.deepcopy(record)  # the kept one is completed later, after this one is written


def measure_group(spec: TaskSpec, group: Group, *upstream: StageOutcome) -> list[PointResult]:
    """:func:`group_task`'s results all at once (a local worker process's task, :mod:`qbench.sweep.parallel`)."""
    return list(group_task(spec, group, *upstream))
