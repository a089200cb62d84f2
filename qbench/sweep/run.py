"""Run a sweep point by point: resume, record failures, persist after every point.

A point that raises is recorded ``status: failed`` with ``"<Type>: <message>"`` and the sweep
goes on; its traceback goes to ``sweep.log`` beside the results. Records are written atomically
as each point finishes, so an interrupted sweep loses at most the point it was on, and a rerun
with the same arguments (same config key, same folder) skips every finished point.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qbench.errors import QbenchError
from qbench.provenance import machine_id, provenance
from qbench.records import STATUS_OK, ResultsDocument, failed_record
from qbench.sweep.config import SweepConfig
from qbench.sweep.plan import Point, plan_points

RESULTS_FILE = "sweep.json"
LOG_FILE = "sweep.log"

MeasureFn = Callable[[Point], dict[str, Any]]


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


def _logger(out_dir: Path) -> logging.Logger:
    log = logging.getLogger(f"qbench.sweep.{out_dir}")
    if not log.handlers:
        out_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(out_dir / LOG_FILE)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    return log


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
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        log.error("failed %s\n%s", point.id, traceback.format_exc())
        record = failed_record(point.id, point.fields(), reason)
    record["seconds"] = round(time.perf_counter() - start, 3)
    return record


def run_sweep(cfg: SweepConfig, measure: MeasureFn, *, out_dir: Path, progress: bool = True,
              retry_failed: bool = False) -> ResultsDocument:
    """Measure every planned point not already finished in ``out_dir``; return the document."""
    from tqdm import tqdm

    prov = provenance(ignore=Path(out_dir))
    doc = open_document(Path(out_dir) / RESULTS_FILE, cfg, prov)
    if not doc.path.exists():
        doc.save()
    log = _logger(Path(out_dir))
    points = plan_points(cfg)
    done = doc.finished_ids(include_failed=not retry_failed)
    todo = [p for p in points if p.id not in done]
    record_prov = {"machine_id": prov["machine_id"], "git": prov["git"], "utc": prov["utc"]}
    with tqdm(total=len(points), initial=len(points) - len(todo), disable=not progress, unit="point",
              dynamic_ncols=True) as bar:
        for point in todo:
            bar.set_description(point.id)
            record = measure_or_fail(point, measure, log)
            record["provenance"] = record_prov
            doc.provenance = prov  # the document names the latest run that wrote to it
            doc.add(record)
            bar.update()
    return doc
