"""Run a sweep point by point: resume, record failures, persist after every point.

What every point depends on (the dataset, the teacher) is built by ``prepare`` before the results
file exists: when it cannot be built the sweep stops with one line and leaves no folder of failed
points. After that, a point that raises is recorded ``status: failed`` with
``"<Type>: <message>"`` (the whole message) and the sweep goes on; its traceback goes to
``sweep.log`` beside the results. A full disk or a read-only place stops the sweep with one line
naming the path. Records are written atomically as each point finishes, so a killed sweep loses at
most the point it was on and leaves no half-written file, and a rerun with the same arguments
(same config key, same folder) skips every finished point. The folder is locked while a sweep
writes it: a second sweep into it is refused.
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from qbench.errors import QbenchError
from qbench.files import environment_errors, folder_lock, is_environment_error, os_error_line, remove_stale_temps
from qbench.provenance import machine_id, provenance
from qbench.records import LATENCY_PENDING, STATUS_OK, ResultsDocument, failed_record
from qbench.report import CSV_NAME, PLOT_LATENCY, PLOT_SIZE, TABLE_NAME
from qbench.sweep.config import SweepConfig
from qbench.sweep.plan import Point, plan_points

RESULTS_FILE = "sweep.json"
LOG_FILE = "sweep.log"

MeasureFn = Callable[[Point], dict[str, Any]]
PrepareFn = Callable[[list[Point]], None]  # builds the stages every point needs; raises to stop the sweep
# What a sweep writes into its folder, and all that --fresh removes (the lock stays: it is held).
SWEEP_FILES = (RESULTS_FILE, LOG_FILE, TABLE_NAME, CSV_NAME, PLOT_SIZE, PLOT_LATENCY)


def sweep_name(cfg: SweepConfig) -> str:
    """``default`` for the default grid, else ``sweep-<config key>``: same arguments, same folder."""
    return "default" if cfg == SweepConfig() else f"sweep-{cfg.key(8)}"


def default_out_dir(cfg: SweepConfig, root: Path = Path("results")) -> Path:
    """``results/<machine id>/<sweep name>``: one folder per machine, never mixed."""
    return root / machine_id() / sweep_name(cfg)


def open_document(path: Path, cfg: SweepConfig, prov: dict[str, Any]) -> ResultsDocument:
    """The existing results at ``path`` if they belong to this config and machine, else a new document.

    An existing document keeps its provenance until this run adds a record to it.
    """
    if not path.exists():
        return ResultsDocument(path, config=cfg.to_dict(), provenance=prov)
    doc = ResultsDocument.load(path)
    if SweepConfig.from_dict(doc.config).key() != cfg.key():
        raise QbenchError(f"{path} holds results of a different sweep config; choose another --out or pass --fresh")
    if doc.provenance.get("machine_id") != prov["machine_id"]:
        raise QbenchError(f"{path} was measured on {doc.provenance.get('machine_id')}, this is "
                          f"{prov['machine_id']}; results of two machines are never mixed: choose another --out")
    return doc


class _QuietFileHandler(logging.FileHandler):
    """A log that cannot be written (full disk) is not worth a traceback: the records are the truth,
    and a failing records write stops the sweep with one line."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        pass


@contextlib.contextmanager
def _logger(out_dir: Path) -> Iterator[logging.Logger]:
    """``sweep.log`` in ``out_dir`` for one run (its handler closed after, so --fresh can delete it)."""
    log = logging.getLogger(f"qbench.sweep.{out_dir.resolve()}")
    handler = _QuietFileHandler(out_dir / LOG_FILE)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield log
    finally:
        log.removeHandler(handler)
        handler.close()


def measure_or_fail(point: Point, measure: MeasureFn, log: logging.Logger) -> dict[str, Any]:
    """The point's record: measured, or failed with the reason (never dropped)."""
    start = time.perf_counter()
    try:
        figures = measure(point)
        record = {"id": point.id, **point.fields(), "status": STATUS_OK, "error": None, **figures}
        log.info("ok %s", point.id)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # a failed point is data: recorded with its reason, the sweep goes on
        log.error("failed %s\n%s", point.id, traceback.format_exc())
        if is_environment_error(exc):  # a full disk fails every later point too: stop here
            raise QbenchError(f"{point.id}: {os_error_line(exc)}") from None
        reason = f"{type(exc).__name__}: {exc}"  # the whole message: tables abbreviate, records never do
        record = failed_record(point.id, point.fields(), reason)
    record["seconds"] = round(time.perf_counter() - start, 3)
    return record


class Executor(Protocol):
    """How the records of a sweep's points are computed (the driver writes them, in :func:`run_sweep`)."""

    def prepare(self, todo: list[Point]) -> None:
        """Build what every point needs, before the results file exists; raise to stop the sweep."""

    def records(self, todo: list[Point], log: logging.Logger) -> Iterator[dict[str, Any]]:
        """One record per point of ``todo``, each as it finishes, in any order. A record marked
        ``LATENCY_PENDING`` is yielded again, complete, later."""


class LocalExecutor:
    """In this process, point by point in plan order (``--executor local``, the default)."""

    def __init__(self, measure: MeasureFn, prepare: PrepareFn | None = None) -> None:
        self._measure, self._prepare = measure, prepare

    def prepare(self, todo: list[Point]) -> None:
        if self._prepare is not None:
            self._prepare(todo)

    def records(self, todo: list[Point], log: logging.Logger) -> Iterator[dict[str, Any]]:
        for point in todo:
            yield measure_or_fail(point, self._measure, log)


def run_sweep(cfg: SweepConfig, measure: MeasureFn, *, out_dir: Path, progress: bool = True,
              retry_failed: bool = False, fresh: bool = False, prepare: PrepareFn | None = None,
              executor: Executor | None = None) -> ResultsDocument:
    """Measure every planned point not already finished in ``out_dir``; return the document.

    ``prepare(todo)`` is called before the results file is first written, only when points are
    left to measure; whatever it raises ends the run, and a folder this call created is removed
    again. ``fresh`` discards earlier results in ``out_dir`` first. Raises :class:`QbenchError` when
    another process is writing ``out_dir``, when the results belong to another config or machine,
    and when a write hits a full disk or a read-only place (finished records are kept).
    ``executor`` computes the records instead of ``measure`` and ``prepare`` in this process
    (:class:`LocalExecutor`); the records are written here either way.
    """
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    executor = executor or LocalExecutor(measure, prepare)
    with folder_lock(out_dir, what="results folder", hint="wait for it or choose another --out"):
        try:
            return _run_locked(cfg, executor, out_dir=out_dir, progress=progress, retry_failed=retry_failed,
                               fresh=fresh)
        except BaseException:
            if created and not (out_dir / RESULTS_FILE).exists():
                _discard(out_dir)
            raise


def _discard(out_dir: Path) -> None:
    """Remove a folder this run created and never wrote results into (the lock is still held)."""
    for p in out_dir.iterdir():
        if p.is_file():
            p.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        out_dir.rmdir()


def _run_locked(cfg: SweepConfig, executor: Executor, *, out_dir: Path, progress: bool, retry_failed: bool,
                fresh: bool) -> ResultsDocument:
    from tqdm import tqdm

    with environment_errors(f"cannot clean up {out_dir}"):
        if fresh:
            for name in SWEEP_FILES:
                (out_dir / name).unlink(missing_ok=True)
        remove_stale_temps(out_dir)  # left by a killed run; ours is the only writer now
    prov = provenance(ignore=out_dir)
    doc = open_document(out_dir / RESULTS_FILE, cfg, prov)
    points = plan_points(cfg)
    done = doc.finished_ids(include_failed=not retry_failed)
    todo = [p for p in points if p.id not in done]
    if todo:
        with environment_errors("cannot build the dataset and teacher"):
            executor.prepare(todo)
    with environment_errors("cannot write the results"), _logger(out_dir) as log:
        if not doc.path.exists():
            doc.save()
        record_prov = {"machine_id": prov["machine_id"], "git": prov["git"], "utc": prov["utc"]}
        with tqdm(total=len(points), initial=len(points) - len(todo), disable=not progress, unit="point",
                  dynamic_ncols=True) as bar:
            for record in executor.records(todo, log):
                record["provenance"] = {**record_prov, **record.get("provenance", {})}
                doc.provenance = prov  # the document names the latest run that wrote to it
                doc.add(record)
                if not record.get(LATENCY_PENDING):
                    bar.set_description(record["id"])
                    bar.update()
        _plan_order(doc, points)
    return doc


def _plan_order(doc: ResultsDocument, points: list[Point]) -> None:
    """Records in plan order (an executor may finish them in any), so tables list rows alike."""
    index = {p.id: i for i, p in enumerate(points)}
    ordered = sorted(doc.records, key=lambda r: index.get(r["id"], len(index)))
    if ordered != doc.records:
        doc.records = ordered
        doc.save()
