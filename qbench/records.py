"""Results documents: one versioned JSON file per sweep, rewritten atomically per point.

Layout of a document (``RESULTS_SCHEMA_VERSION``)::

    {"schema_version": 1, "kind": "qbench-results",
     "provenance": {machine, machine_id, versions, git, utc},   # of the latest run that wrote
     "config": {...SweepConfig...},
     "records": [{"id": ..., "status": "ok" | "failed", "error": null | "reason", ...}, ...]}

Conventions (asv's): a figure that is ``None`` (JSON null) failed to be measured; ``NaN``
means it was not measured for that point (e.g. latency of a failed artifact is null, file
size of the PyTorch backend is NaN). Each record carries its own ``provenance`` too, since a
resumed sweep may span two runs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from qbench.errors import QbenchError
from qbench.files import atomic_write

RESULTS_SCHEMA_VERSION = 1
DOCUMENT_KIND = "qbench-results"
STATUS_OK = "ok"
STATUS_FAILED = "failed"
LATENCY_PENDING = "latency_pending"
"""Set (true) on a record whose figures are in but whose latency is still to be timed (``--executor ray``
times it after the tasks finish); such a point is not finished, and a resumed sweep measures it again."""


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` so readers see the old file or the new one, never half of one."""
    atomic_write(path, lambda f: f.write(text.encode()))


def _jsonable(value: Any) -> Any:
    """NaN/inf survive as JSON's non-standard NaN (Python's json reads them back)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    return value


class ResultsDocument:
    """The records of one sweep, stored at ``path``; ``add`` persists at once."""

    def __init__(self, path: Path, *, config: dict[str, Any], provenance: dict[str, Any]):
        self.path = Path(path)
        self.config = config
        self.provenance = provenance
        self.records: list[dict[str, Any]] = []

    @classmethod
    def load(cls, path: Path) -> "ResultsDocument":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise QbenchError(f"no results file at {path}") from None
        except (OSError, ValueError) as exc:  # ValueError: bad JSON, or bytes that are not UTF-8
            raise QbenchError(f"cannot read results file {path}: {_one_line(exc)}") from None
        if not isinstance(data, dict) or data.get("kind") != DOCUMENT_KIND:
            raise QbenchError(f"{path} is not a qbench results file")
        if data.get("schema_version") != RESULTS_SCHEMA_VERSION:
            raise QbenchError(
                f"{path} has results schema {data.get('schema_version')}, this qbench reads {RESULTS_SCHEMA_VERSION}"
            )
        problem = document_problem(data)
        if problem:
            raise QbenchError(f"{path} is a damaged qbench results file: {problem}")
        doc = cls(path, config=data["config"], provenance=data["provenance"])
        doc.records = list(data["records"])
        return doc

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": RESULTS_SCHEMA_VERSION,
            "kind": DOCUMENT_KIND,
            "provenance": self.provenance,
            "config": self.config,
            "records": self.records,
        }

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(_jsonable(self.to_dict()), indent=1, allow_nan=True) + "\n")

    def get(self, record_id: str) -> dict[str, Any] | None:
        return next((r for r in self.records if r["id"] == record_id), None)

    def add(self, record: dict[str, Any]) -> None:
        """Insert or replace the record with this id, then persist the document."""
        self.records = [r for r in self.records if r["id"] != record["id"]]
        self.records.append(record)
        self.save()

    def finished_ids(self, *, include_failed: bool = True) -> set[str]:
        keep = {STATUS_OK, STATUS_FAILED} if include_failed else {STATUS_OK}
        return {r["id"] for r in self.records if r.get("status") in keep and not r.get(LATENCY_PENDING)}


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


# The fields tables and plots read; a document without them was edited by hand or by something else.
REQUIRED_MACHINE = ("arch", "cpu_model", "usable_cores")


def document_problem(data: dict[str, Any]) -> str | None:
    """What is missing or of the wrong type in a results document's structure, or None."""
    for key, kind in (("config", dict), ("provenance", dict), ("records", list)):
        if not isinstance(data.get(key), kind):
            return f"{key!r} is missing or not a JSON {'object' if kind is dict else 'array'}"
    prov = data["provenance"]
    for key, kind in (("machine_id", str), ("machine", dict), ("versions", dict), ("git", dict), ("utc", str)):
        if not isinstance(prov.get(key), kind):
            return f"provenance.{key} is missing or of the wrong type"
    missing = [k for k in REQUIRED_MACHINE if k not in prov["machine"]]
    if missing:
        return f"provenance.machine lacks {', '.join(missing)}"
    if "commit" not in prov["git"]:
        return "provenance.git lacks commit"
    for i, record in enumerate(data["records"]):
        if not isinstance(record, dict) or not isinstance(record.get("id"), str):
            return f"record {i} is not an object with an 'id'"
        if record.get("status") not in (STATUS_OK, STATUS_FAILED):
            return f"record {record['id']!r} has status {record.get('status')!r} (expected ok or failed)"
        if not isinstance(record.get("model"), str):
            return f"record {record['id']!r} names no model"
    return None


def failed_record(record_id: str, fields: dict[str, Any], reason: str) -> dict[str, Any]:
    """A point that could not be measured: kept, with why, never dropped."""
    return {"id": record_id, **fields, "status": STATUS_FAILED, "error": reason}


def is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted columns, for CSV and DataFrames (``latency.b1_t1.median_ms``)."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, list):
            out[name] = json.dumps(value)
        else:
            out[name] = value
    return out


def records_frame(records: Iterable[dict[str, Any]]):
    """A pandas DataFrame with one row per record and dotted columns."""
    import pandas as pd

    return pd.DataFrame([flatten(r) for r in records])
