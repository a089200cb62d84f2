"""Measuring side by side: the in-process sweep's points computed by worker processes, their latency
timed here afterwards (``qbench sweep --jobs N``, N >= 2; N defaults to the usable cores).

After the models are trained (:mod:`qbench.sweep.ahead`, whose idle workers already measured the
groups they could: those results are written first), what is left is scoring the test split,
exporting, checking conformance and timing. Only timing needs the machine to itself. So the points
are measured as the Ray executor measures them, on a local pool of ``jobs`` worker processes: each
worker runs the Ray executor's group task (:func:`qbench.sweep.ray_tasks.group_task`: the points
that share in-memory stages, in one Pipeline, on one thread each) with every latency measurement
captured instead of run (:mod:`qbench.sweep.deferred`). Each record is written as its group
finishes, marked latency-pending; once every worker is done, this process times each point's
latency, one measurement at a time with nothing else running, through the same function as
in-process, and writes the record again, complete.

Workers score and check conformance on one thread (``jobs`` of them share the cores); the scores
do not depend on the thread count, so the records are those of ``--jobs 1``, as tested. A stage
that failed in training fails its group's points with that reason; a worker that dies leaves the
points it had not returned to this process, which measures them one by one afterwards.
"""

from __future__ import annotations

import itertools
import logging
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from qbench.pool import worker_pool
from qbench.sweep.deferred import Deferred, complete
from qbench.sweep.pipeline import Pipeline
from qbench.sweep.plan import Point
from qbench.sweep.ray_graph import Group, task_graph
from qbench.sweep.ray_tasks import PointResult, StageOutcome, TaskSpec, measure_group, receive
from qbench.sweep.run import measure_or_fail

PrepareFn = Callable[[list[Point]], None]


class ParallelExecutor:
    """Computes the records of a sweep's points on ``jobs`` local processes and times them here
    (:class:`qbench.sweep.run.Executor`). With one job, a dataset held in memory (which workers cannot
    rebuild) or a single group of points, it measures in this process, point by point."""

    def __init__(self, pipeline: Pipeline, *, jobs: int, prepare: PrepareFn | None = None,
                 report: Callable[[str], None] | None = None) -> None:
        self.pipe, self.jobs, self._prepare = pipeline, jobs, prepare
        self.report = report or (lambda line: print(line, flush=True))
        self.measured: dict[str, Any] | None = None  # how the points were computed side by side, if they were

    def __enter__(self) -> ParallelExecutor:
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def describe(self) -> dict[str, Any] | None:
        """``provenance.executor``: the training ahead and the measuring side by side (None: neither ran)."""
        if self.pipe.ahead is None and self.measured is None:
            return None
        out: dict[str, Any] = {"kind": "local", "jobs": self.jobs}
        if self.pipe.ahead is not None:
            out.update(self.pipe.ahead)
        if self.measured is not None:
            out["measured"] = self.measured
        out["run_seconds_stages"] = "summed over the worker processes, which overlap"
        return out

    def prepare(self, todo: list[Point]) -> None:
        if self._prepare is not None:
            self._prepare(todo)

    def records(self, todo: list[Point], log: logging.Logger) -> Iterator[dict[str, Any]]:
        _, groups = task_graph(self.pipe.cfg, todo)
        early = {g.key: self.pipe.measured_ahead[g.key] for g in groups if g.key in self.pipe.measured_ahead
                 and [r.record["id"] for r in self.pipe.measured_ahead[g.key]] == [p.id for p in g.points]}
        later = [g for g in groups if g.key not in early]
        if not early and (self.jobs < 2 or self.pipe.holds_dataset or len(groups) < 2):
            for point in todo:
                yield measure_or_fail(point, self.pipe.measure, log)
            return
        start = time.perf_counter()
        pending: dict[str, tuple[Point, dict[str, Any], list[Deferred]]] = {}
        left: list[Point] = []  # points a dead worker did not return: measured here
        measured_ahead = ((g, early[g.key]) for g in groups if g.key in early)  # while models trained
        for group, results in itertools.chain(measured_ahead, self._run(later, left) if later else ()):
            for result in results:
                point = next(p for p in group.points if p.id == result.record["id"])
                yield receive(self.pipe, point, result, log, "worker", pending)
        self.pipe.measured_ahead = {}
        self.measured = {"groups": len(groups), "with_training": len(early), "points": len(todo) - len(left),
                         "wall_seconds": round(time.perf_counter() - start, 1)}
        where = {"host": socket.gethostname(), "thread_counts": self.pipe.thread_counts(),
                 "when": "after every worker finished, one measurement at a time"}
        for point in todo:
            if point.id in pending:
                yield complete(self.pipe, *pending.pop(point.id), log, where=where)
        for point in left:
            yield measure_or_fail(point, self.pipe.measure, log)

    def _run(self, groups: list[Group], left: list[Point]) -> Iterator[tuple[Group, list[PointResult]]]:
        """Each group's results as its worker returns them; a dead worker's unreturned points go to ``left``."""
        pipe = self.pipe
        spec = TaskSpec.of(pipe, compute_threads=1, executor="local")
        running: dict[Future, Group] = {}
        done, start = 0, time.perf_counter()
        groups = sorted(groups, key=lambda g: -len(g.points))  # the largest first: the last to finish is short
        with worker_pool(self.jobs) as pool:
            try:
                for group in groups:
                    running[pool.submit(measure_group, spec, group, *self._failed_upstream(group))] = group
                while running:
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in finished:
                        group = running.pop(future)
                        try:
                            results = future.result()
                        except BrokenProcessPool as exc:
                            self.report(f"measure: {group.name}: its worker died ({exc}); measured here instead")
                            left.extend(group.points)
                            continue
                        done += 1
                        self.report(f"measured {done}/{len(groups)}: {group.name} ({len(group.points)} points) at "
                                    f"{time.perf_counter() - start:.0f} s; latency is timed after the last")
                        yield group, results
            except BaseException:
                for future in running:
                    future.cancel()
                pool.shutdown(wait=False, cancel_futures=True)
                raise

    def _failed_upstream(self, group: Group) -> list[StageOutcome]:
        """The stages ``group`` needs that failed in training, as a group task takes them."""
        cfg = self.pipe.cfg
        failed = []
        for stage in group.needs:
            reason = self.pipe.failed_stage(stage.key(cfg))
            if reason is not None:
                failed.append(StageOutcome(stage.name(cfg), reason, None, {}))
        return failed
