"""Training ahead: the in-process sweep's models trained into the cache by worker processes, several
at once, before its points are measured (``qbench sweep --jobs N``; N defaults to the usable cores).

Training is the sweep's cost, and it trains on one thread per model (``TrainConfig.threads``), so
one model at a time leaves the other cores idle. Here each model is one task on a pool of ``jobs``
worker processes: the teacher, each fp32 student and each QAT model, started as soon as the models
it needs are in the cache (an undistilled student trains beside the teacher, a distilled one after
it, a QAT model after its student). A worker runs the Ray executor's stage task
(:func:`qbench.sweep.ray_tasks.stage_task`), which trains exactly as this process would (same seeds,
same thread count), so the records are those of ``--jobs 1``. The points are then measured,
finding every model in the cache: side by side on the same number of workers
(:mod:`qbench.sweep.parallel`), their latency timed here afterwards with nothing beside it.

With ``measure`` (the sweep command), a worker that no model can use yet measures a group of
points whose models are all trained (:func:`qbench.sweep.ray_tasks.measure_group`, as
:mod:`qbench.sweep.parallel` runs it), largest groups first: while the teacher trains, the
undistilled students' points; while the last QAT models train, the others'. The results wait in
``pipe.measured_ahead`` for the measuring executor, which writes them and times their latency with
the rest. A model that can start always goes before a group, but a group already running holds its
worker until it finishes.

A stage that fails is recorded for the points that need it, with its reason (as
:meth:`Pipeline.once` does); a worker that dies leaves its stage to this process, which trains it
when a point first needs it.

Before that, on a cold sweep, the teacher's own dataset (a bigger draw of the generator) is built
first on all the jobs, and the teacher starts training while this process builds the sweep's
(:func:`teacher_first`): the teacher is the cold sweep's critical path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool

from qbench.pool import stop_pool, worker_pool
from qbench.sweep.pipeline import Pipeline
from qbench.sweep.plan import Point
from qbench.sweep.ray_graph import TEACHER, Group, Stage, task_graph
from qbench.sweep.ray_tasks import PointResult, StageOutcome, TaskSpec, measure_group, stage_task


@contextlib.contextmanager
def teacher_first(pipe: Pipeline, *, jobs: int, report: Callable[[str], None] | None = None
                  ) -> Iterator[dict[Stage, tuple[Future, float]]]:
    """On a cold sweep with ``jobs`` > 1 whose teacher learns from its own dataset: build that dataset
    first, on ``jobs`` processes, then train the teacher in a worker while the block runs (the sweep's
    dataset is built beside it on the other jobs, then training ahead counts it as one of its ``jobs``).
    Yields the stages started ({TEACHER: (its future, its start)}), or {} when this does not apply.
    The data's seconds, here and in the workers, are booked to the data stage; if the block raises,
    the teacher's worker is stopped. The teacher is the cold sweep's critical path: its data had
    waited for the sweep's, and it for both."""
    cfg = pipe.cfg
    from qbench.data import build_dataset
    from qbench.data.dataset import cache_path

    # Neither dataset cached means no teacher trained on them either (unless the cache was pruned by
    # hand; the teacher's path cannot be known before the sweep's dataset is).
    if jobs < 2 or pipe.holds_dataset or not cfg.needs_teacher or cfg.teacher_data == cfg.data \
            or not cfg.data.kind.synthetic \
            or any(cache_path(c, pipe.cache_dir).exists() for c in (cfg.data, cfg.teacher_data)):
        yield {}
        return
    report = report or (lambda line: print(line, flush=True))
    report("data: the teacher's dataset first; the sweep's builds while the teacher trains")
    pool = worker_pool(1)
    try:
        pool.submit(_warm_up)  # the teacher's worker imports while the data builds
        with pipe.timed("data"):
            built = build_dataset(cfg.teacher_data, cache_dir=pipe.cache_dir, progress=pipe.progress, jobs=jobs)
        pipe.book({"data": built.worker_seconds})
        del built  # the worker loads it from the cache; this process never needs it
        started = {TEACHER: (pool.submit(stage_task, TaskSpec.of(pipe), TEACHER), time.perf_counter())}
        report(f"ahead: {TEACHER.name(cfg)} started")
        yield started
    except BaseException:
        stop_pool(pool)
        raise
    pool.shutdown()


def _warm_up() -> None:
    """In the teacher's worker: import what training needs (torch, the models)."""
    for module in ("models", "qbench.teacher_cache"):
        importlib.import_module(module)


def ahead_stages(pipe: Pipeline, todo: list[Point]) -> list[Stage]:
    """The models ``todo`` needs trained, teacher first: the Ray graph's stages, then one QAT stage per
    (student, widths), in plan order."""
    stages, _ = task_graph(pipe.cfg, todo)
    qat = dict.fromkeys(Stage("qat", p.model, p.distill, bits=p.bits) for p in todo if p.method == "qat")
    return stages + list(qat)


def needs(stage: Stage) -> list[Stage]:
    """The stages whose models ``stage`` trains from."""
    upstream = [TEACHER] if stage.needs_teacher else []
    if stage.kind == "qat":
        upstream.append(Stage("student", stage.model, stage.distill))
    return upstream


def group_needs(group: Group) -> list[Stage]:
    """The stages whose models ``group``'s points load: its :attr:`Group.needs` and, for PTQ and QAT
    points, the QAT stage, which also calibrates the PTQ model."""
    qat = [Stage("qat", p.model, p.distill, bits=p.bits) for p in group.points[:1] if group.key[0] == "quant"]
    return [*group.needs, *qat]


def train_ahead(pipe: Pipeline, todo: list[Point], *, jobs: int, measure: bool = False,
                report: Callable[[str], None] | None = None,
                started: dict[Stage, tuple[Future, float]] | None = None) -> dict[str, float] | None:
    """Train what ``todo`` needs and the cache lacks on ``jobs`` processes; failed stages are memoised
    in ``pipe`` with their reasons. ``measure``: idle workers measure the groups of ``todo`` whose
    models are trained, into ``pipe.measured_ahead`` (see the module doc). ``started``: stages already
    training elsewhere (:func:`teacher_first`), each one of the ``jobs`` until it ends. Returns
    ``{"jobs", "stages", "wall_seconds", "groups_measured"}``, or None when there is nothing to run side
    by side (one job, fewer than two models to train, or a dataset held in memory, which worker
    processes cannot rebuild)."""
    started = started or {}
    if jobs < 2 or pipe.holds_dataset:
        return None
    stages = [s for s in ahead_stages(pipe, todo) if s in started or not _cached(pipe, s)]
    stages += [s for s in started if s not in stages]
    if len(stages) < 2 and not started:
        return None
    report = report or (lambda line: print(line, flush=True))
    start = time.perf_counter()
    spec = TaskSpec.of(pipe)
    groups = sorted(task_graph(pipe.cfg, todo)[1], key=lambda g: -len(g.points)) if measure else []
    outcomes, measured = _run(spec, stages, jobs, report, groups, started)
    for stage, outcome in outcomes.items():
        pipe.book(outcome.stage_seconds)  # summed over workers, which overlap
        if outcome.error is not None:
            pipe.fail_stage(stage.key(pipe.cfg), outcome.error)
    pipe.measured_ahead = measured
    return {"jobs": jobs, "stages": len(stages), "wall_seconds": round(time.perf_counter() - start, 1),
            "groups_measured": len(measured)}


def _cached(pipe: Pipeline, stage: Stage) -> bool:
    """Whether ``stage``'s model is in the cache already (a rerun, or a --fresh re-measure)."""
    if stage.kind == "teacher":
        return pipe.teacher_file().exists()
    if stage.kind == "qat":
        return pipe.qat_path(stage.model, stage.distill, stage.bits).exists()
    return pipe.student_path(stage.model, stage.distill, stage.seed).exists()


def _run(spec: TaskSpec, stages: list[Stage], jobs: int, report: Callable[[str], None], groups: list[Group],
         started: dict[Stage, tuple[Future, float]]
         ) -> tuple[dict[Stage, StageOutcome], dict[tuple, list[PointResult]]]:
    """Each stage's outcome, and the results of the ``groups`` measured in between; a stage whose
    worker died has none (this process trains it later), nor a group left unmeasured."""
    pending, waiting, done, measured = [s for s in stages if s not in started], list(groups), {}, {}
    running: dict[Future, tuple[Stage | Group, float]] = {f: (s, began) for s, (f, began) in started.items()}
    total = len(stages)
    measure_spec = dataclasses.replace(spec, compute_threads=1, executor="local")  # as qbench.sweep.parallel's

    def trained(needed: list[Stage]) -> bool:
        return all(s in done and done[s].error is None for s in needed if s in stages)

    with worker_pool(jobs) as pool:
        try:
            while True:
                for stage in list(pending):
                    if len(running) >= jobs:
                        break
                    upstream = [s for s in needs(stage) if s in stages]
                    if any(s not in done for s in upstream):
                        continue  # waits for a model still training (or lost with its worker: see below)
                    pending.remove(stage)
                    running[pool.submit(stage_task, spec, stage, *(done[s] for s in upstream))] = \
                        (stage, time.perf_counter())
                    report(f"ahead: {stage.name(spec.cfg)} started")  # a teacher trains for minutes
                for group in list(waiting):
                    if len(running) >= jobs:
                        break
                    if trained(group_needs(group)):  # a failed model's group is left to the measuring executor
                        waiting.remove(group)
                        running[pool.submit(measure_group, measure_spec, group)] = (group, time.perf_counter())
                if not running:  # done, or what is left waits on a stage whose worker died
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    task, began = running.pop(future)
                    name = task.name if isinstance(task, Group) else task.name(spec.cfg)
                    try:
                        result = future.result()
                    except BrokenProcessPool as exc:
                        report(f"ahead: {name}: its worker died ({exc}); this process "
                               f"{'measures' if isinstance(task, Group) else 'trains'} it when needed")
                        return done, measured
                    if isinstance(task, Group):
                        measured[task.key] = result
                        report(f"ahead: measured {name} ({len(task.points)} points) in "
                               f"{time.perf_counter() - began:.0f} s; latency is timed after the last")
                        continue
                    done[task] = outcome = result
                    if outcome.traceback:  # not a user error: where it broke, as in-process
                        print(outcome.traceback, file=sys.stderr, end="")
                    state = f"trained in {time.perf_counter() - began:.0f} s" if outcome.error is None else \
                        f"failed: {outcome.error}"
                    report(f"ahead {len(done)}/{total}: {name} {state}")
        except BaseException:
            for future in running:
                future.cancel()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return done, measured
