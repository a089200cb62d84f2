"""Latency deferred from the process that computes a point to the one that times it.

A worker (a Ray task, or a local measuring process: :mod:`qbench.sweep.parallel`) computes a point's
record with qbench's own point functions (:mod:`qbench.sweep.points`). Inside
:func:`capture_latency`, every latency measurement they ask for (:func:`qbench.sweep.points.latency`,
the one road to a timing) is recorded instead of run: its runner factory and thread counts, with a
placeholder where the figures go. :func:`detach` pickles the factories for the
driver and leaves ``{}`` (not measured yet) in the record; the driver times them one at a time
with the same function, the same inputs and explicit thread counts (:func:`time_deferred`).

What the factories hold ships as it is: artifacts (paths into the shared cache), fp32 PyTorch
models, the integer engine. A Brevitas model cannot be pickled (its quantizers are injector
classes made at run time); for the one point that times one, QAT in PyTorch, the driver loads
that QAT model from the cache instead (:func:`_cached_qat_factory`), recalibrating its PTQ start
as the in-process sweep builds it; it never trains.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import pickle
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from qbench.backends import REFERENCE
from qbench.errors import QbenchError
from qbench.files import is_environment_error, os_error_line
from qbench.records import LATENCY_PENDING, failed_record
from qbench.sweep.plan import Point

PLACEHOLDER = "__qbench_deferred_latency__"
"""Key of the stand-in dict a captured latency call returns; never stored."""


@dataclasses.dataclass(frozen=True)
class Deferred:
    """One latency measurement a point asked for, to be run on the driver."""

    path: tuple[str, ...]  # where its figures go in the record, e.g. ("latency",)
    factory: bytes | None  # the pickled runner factory (threads -> run); None when it cannot be pickled
    threads: tuple[int, ...] | None  # the thread counts it asked for (None: the sweep's)
    problem: str | None = None  # why ``factory`` is None


@contextlib.contextmanager
def capture_latency(pipe) -> Iterator[list[tuple[Callable, tuple[int, ...] | None]]]:
    """Within the block, :func:`qbench.sweep.points.latency` on ``pipe`` records ``(factory, threads)``
    and returns a placeholder instead of timing (through ``pipe.latency_sink``). For the process
    that computes points, not the driver."""
    calls: list[tuple[Callable, tuple[int, ...] | None]] = []

    def defer(factory, threads):
        calls.append((factory, None if threads is None else tuple(threads)))
        return {PLACEHOLDER: len(calls) - 1}

    saved, pipe.latency_sink = pipe.latency_sink, defer
    try:
        yield calls
    finally:
        pipe.latency_sink = saved


def detach(record: dict[str, Any], calls: list[tuple[Callable, tuple[int, ...] | None]]) -> list[Deferred]:
    """Replace each placeholder in ``record`` by ``{}`` and return what the driver must time."""
    import cloudpickle

    out = []
    for path, index in _placeholders(record):
        factory, threads = calls[index]
        try:
            blob, problem = cloudpickle.dumps(factory), None
        except Exception as exc:  # a Brevitas module: the driver loads it from the cache instead
            blob, problem = None, f"{type(exc).__name__}: {_first_line(exc)}"
        _set(record, path, {})
        out.append(Deferred(path, blob, threads, problem))
    if len(out) != len(calls):
        raise RuntimeError(f"{record['id']}: {len(calls)} latency measurements asked for, {len(out)} found in the record")
    return out


def time_deferred(pipe, point: Point, record: dict[str, Any], deferred: list[Deferred]) -> None:
    """Time ``deferred`` here, one after the other, and put the figures into ``record``."""
    from qbench.sweep import points

    for d in deferred:
        factory = pickle.loads(d.factory) if d.factory is not None else _cached_qat_factory(pipe, point, d.problem)
        _set(record, d.path, points.latency(pipe, factory, threads=d.threads))


def complete(pipe, point: Point, record: dict[str, Any], deferred: list[Deferred], log: logging.Logger,
             where: dict[str, Any]) -> dict[str, Any]:
    """``record`` (computed elsewhere, its latency pending) with its latency timed here and ``where``
    as ``provenance.latency``; or the point failed with the reason it could not be timed."""
    start = time.perf_counter()
    try:
        time_deferred(pipe, point, record, deferred)
    except Exception as exc:  # as in-process: a point whose timing fails is a failed point
        if is_environment_error(exc):
            raise QbenchError(f"{point.id}: {os_error_line(exc)}") from None
        log.error("failed %s (latency, timed here)\n%s", point.id, traceback.format_exc())
        failed = failed_record(point.id, point.fields(), f"{type(exc).__name__}: {exc}")
        failed.update(seconds=record["seconds"], provenance=record["provenance"])
        return failed
    record.pop(LATENCY_PENDING)
    record["seconds"] = round(record["seconds"] + time.perf_counter() - start, 3)
    record["provenance"]["latency"] = where
    return record


def _cached_qat_factory(pipe, point: Point, problem: str | None) -> Callable:
    """The runner factory of a QAT point in PyTorch, its Brevitas model loaded from the shared cache."""
    from qbench.measure import torch_runner

    if point.method != "qat" or point.backend != REFERENCE:
        raise QbenchError(f"{point.id}: its latency runner cannot be sent to the driver ({problem})")
    for path in (pipe.student_path(point.model, point.distill), pipe.qat_path(point.model, point.distill, point.bits)):
        if not path.exists():
            raise QbenchError(f"{point.id}: {path} is not in the cache this driver reads; with a Ray cluster the "
                              f"cache (--cache or QBENCH_CACHE) must be one path every node shares")
    qmodel, _ = pipe.qat(point.model, point.distill, point.bits)
    return lambda threads: torch_runner(qmodel, threads=threads)


def _placeholders(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], int]]:
    if isinstance(value, dict):
        if set(value) == {PLACEHOLDER}:
            yield path, value[PLACEHOLDER]
            return
        for key, item in value.items():
            yield from _placeholders(item, (*path, key))


def _set(record: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    target = record
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]
