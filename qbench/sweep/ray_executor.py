"""``qbench sweep --executor ray``: the sweep's stages and points as Ray tasks; records and latency on the driver.

What runs where:

* the driver (the ``qbench sweep`` process) builds the dataset and checks the students before the
  results file exists, as in-process; submits the task graph (:mod:`qbench.sweep.ray_graph`);
  writes every record into ``sweep.json`` as it arrives; and, once the last task has finished,
  times every point's latency itself, one measurement at a time (:mod:`qbench.sweep.deferred`).
* stage tasks train the teacher and each fp32 student; group tasks run PTQ, QAT, export,
  conformance and scoring, and stream one record per point as it finishes (Ray generators;
  :mod:`qbench.sweep.ray_tasks`).

Tasks share the driver's cache folder (one path every node sees) and its cache keys, so each
stage is computed once, and a task is idempotent: its only side effects are cache entries and
artifacts written atomically under those keys. A task whose worker dies is run again by Ray
(:data:`RETRIES`), loading what its first attempt saved; a killed driver loses only the points
it had not written, and the rerun resumes (a record whose latency was still pending is measured
again). Threads are set explicitly in tasks (Ray sets ``OMP_NUM_THREADS`` to a task's CPUs):
training from the sweep's TrainConfigs, scoring and conformance at the driver's thread counts,
recorded per record under ``provenance.compute``.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Iterator
from typing import Any

from qbench.errors import QbenchError
from qbench.records import failed_record
from qbench.sweep.deferred import Deferred, complete
from qbench.sweep.pipeline import Pipeline
from qbench.sweep.plan import Point
from qbench.sweep.ray_graph import TEACHER, Group, Stage, task_graph
from qbench.sweep.ray_tasks import PointResult, StageOutcome, TaskSpec, group_task, receive, stage_task

INSTALL = 'pip install -e ".[ray]"'
RETRIES = 3  # Ray runs a task again after its worker or node died (max_retries); tasks are idempotent
# qbench's process settings, to every task
PASSED_ENV = ("OMP_WAIT_POLICY", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "QBENCH_KERNEL_ISA",
              "QBENCH_EMULATOR")


def require_ray():
    """The ``ray`` module, or the one-line error that says how to install it."""
    try:
        import ray
    except ImportError:
        raise QbenchError(f"--executor ray needs Ray, which is not installed: {INSTALL}") from None
    return ray


class RayExecutor:
    """Computes the records of a sweep's points as Ray tasks (:class:`qbench.sweep.run.Executor`).

    A context manager: entering starts a local Ray cluster (``address=None``: on this machine, one
    CPU per usable core) or connects to ``address``; leaving cancels what is still running and
    disconnects (a local cluster ends with it). ``pipeline`` is the driver's: its dataset gives the
    latency inputs, its stage times collect the tasks'.
    """

    def __init__(self, pipeline: Pipeline, *, address: str | None = None, show=None) -> None:
        self.ray = require_ray()
        self.pipe, self.address, self.show = pipeline, address, show
        self._stages: dict[Stage, Any] = {}  # -> ObjectRef of its StageOutcome
        self._groups: dict[Any, list[Point]] = {}  # ObjectRefGenerator -> its points not yet received
        self._untimed: dict[str, tuple[Point, dict[str, Any], list[Deferred]]] = {}
        self._started = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc_info) -> None:
        if not self._started:
            return
        for ref in [*self._groups, *self._stages.values()]:
            try:
                self.ray.cancel(ref)
            except Exception:  # noqa: BLE001 - finished already, or its worker is gone: nothing to stop
                pass
        self.ray.shutdown()

    def describe(self) -> dict[str, Any] | None:
        """The cluster as the results document records it (None when this run started none)."""
        if not self._started:
            return None
        ray = self.ray
        return {"kind": "ray", "ray": ray.__version__, "address": self.address or "local",
                "nodes": sum(1 for n in ray.nodes() if n.get("Alive")), "cpus": ray.cluster_resources().get("CPU"),
                "run_seconds_stages": "summed over tasks, which overlap"}

    def _start(self) -> None:
        """Start a local cluster or connect to ``address``: only when there is work, so a finished sweep
        resumes at once."""
        ray = self.ray
        common = {"log_to_driver": False, "logging_level": logging.WARNING}
        try:
            if self.address is None:  # its workers inherit this process's environment
                from qbench.provenance import machine_info

                ray.init(address="local", num_cpus=machine_info()["usable_cores"], include_dashboard=False, **common)
            else:
                env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
                ray.init(address=self.address, runtime_env={"env_vars": env} if env else None, **common)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise QbenchError(f"--ray-address {self.address}: cannot connect: {_first_line(exc)}") from None
        self._started = True
        self._stage_fn = ray.remote(stage_task)
        self._group_fn = ray.remote(group_task)

    # -- the Executor protocol --

    def prepare(self, todo: list[Point]) -> None:
        """The dataset and student checks here, the graph submitted, and the teacher waited for:
        what every point needs, before the results file exists (``QbenchError`` if it cannot be built)."""
        dataset = self.pipe.dataset()
        if self.show is not None:
            self.show(dataset)
        for model in self.pipe.cfg.models:
            self.pipe.check_student(model)
        self._start()
        self._submit(*task_graph(self.pipe.cfg, todo))
        teacher = self._outcome(self._stages[TEACHER])
        if teacher.error is not None:
            if teacher.traceback:
                print(teacher.traceback, file=sys.stderr, end="")
            raise QbenchError(f"teacher {self.pipe.cfg.teacher}: {teacher.error}")

    def records(self, todo: list[Point], log: logging.Logger) -> Iterator[dict[str, Any]]:
        """Each point's record as its task yields it (latency pending), then, once every task has
        finished, each again with its latency timed here."""
        while self._groups:
            ready, _ = self.ray.wait(list(self._groups), num_returns=1)
            yield from self._receive(ready[0], log)
        for outcome in self._stage_outcomes():
            self.pipe.book(outcome.stage_seconds)
        for point, record, deferred in list(self._untimed.values()):
            yield self._timed(point, record, deferred, log)

    # -- internals --

    def _submit(self, stages: list[Stage], groups: list[Group]) -> None:
        """Every task of the graph, each reserving one CPU per training thread it runs."""
        cfg = self.pipe.cfg
        largest = max((n["Resources"].get("CPU", 0) for n in self.ray.nodes() if n.get("Alive")), default=0)

        def fits(cpus: int) -> int:  # a task that fits no node would wait for ever
            if cpus > largest:
                raise QbenchError(f"a task trains on {cpus} threads (TrainConfig.threads) and reserves as many "
                                  f"CPUs, but the largest Ray node has {largest:g}")
            return cpus

        spec = self.ray.put(TaskSpec.of(self.pipe))
        for stage in stages:
            threads = cfg.teacher_train.threads if stage.kind == "teacher" else cfg.student_train_for(stage.model).threads
            deps = [self._stages[TEACHER]] if stage.needs_teacher else []
            self._stages[stage] = self._stage_fn.options(
                num_cpus=fits(threads), max_retries=RETRIES, name=f"qbench {stage.name(cfg)}",
            ).remote(spec, stage, *deps)
        for group in groups:
            threads = cfg.qat_train.threads if group.key[0] == "quant" else 1
            gen = self._group_fn.options(
                num_cpus=fits(threads), max_retries=RETRIES, name=f"qbench {group.name}",
            ).remote(spec, group, *(self._stages[s] for s in group.needs))
            self._groups[gen] = list(group.points)

    def _receive(self, gen, log: logging.Logger) -> Iterator[dict[str, Any]]:
        """The next record of a group task; the rest of its points failed if the task died for good."""
        waiting = self._groups[gen]
        try:
            result: PointResult = self.ray.get(next(gen))
        except StopIteration:
            result = None
            reason = "RuntimeError: the Ray task ended without measuring this point"
        except self.ray.exceptions.RayTaskError as exc:  # raised outside a point's measurement
            cause = getattr(exc, "cause", None)
            if isinstance(cause, QbenchError):  # a full disk or a read-only place: stop, as in-process
                raise QbenchError(str(cause)) from None
            raise
        except self.ray.exceptions.RayError as exc:  # its worker or node died and the retries ran out
            result, reason = None, f"{type(exc).__name__}: {_first_line(exc)}"
        if result is None:
            del self._groups[gen]
            for point in waiting:
                log.error("failed %s\n%s", point.id, reason)
                yield failed_record(point.id, point.fields(), reason)
            return
        record = result.record
        point = next((p for p in waiting if p.id == record["id"]), None)
        if point is None:  # already received (a retried task's replay): written once
            return
        waiting.remove(point)
        if not waiting:
            del self._groups[gen]
        yield receive(self.pipe, point, result, log, f"task on {record['provenance']['compute']['host']}",
                      self._untimed)

    def _timed(self, point: Point, record: dict[str, Any], deferred: list[Deferred],
               log: logging.Logger) -> dict[str, Any]:
        """``record`` with its latency measured here, or failed with the reason it could not be."""
        del self._untimed[point.id]
        return complete(self.pipe, point, record, deferred, log, where={
            "host": socket.gethostname(), "thread_counts": self.pipe.thread_counts(),
            "when": "after every task finished, one measurement at a time"})

    def _outcome(self, ref) -> StageOutcome:
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, QbenchError):
                raise QbenchError(str(cause)) from None
            raise
        except self.ray.exceptions.RayError as exc:
            return StageOutcome("?", f"{type(exc).__name__}: {_first_line(exc)}", None, {})

    def _stage_outcomes(self) -> Iterator[StageOutcome]:
        for ref in self._stages.values():
            yield self._outcome(ref)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
