"""``qbench export``: the sweep's QAT points on every backend: artifacts, conformance, error, latency.

Same options, defaults and cache keys as ``qbench sweep`` (see :mod:`qbench.commands.train`).
The Brevitas model (backend ``torch``) is always measured first: it is the reference every
artifact is checked against, and a model qbench cannot quantize stops here with one line (exit 2).
An artifact that fails (export refused, conformance failed) is a row with its reason, and the
command exits 1, as a sweep with failed points does.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

HELP = "export quantized students to the integer engine, ONNX Runtime and OpenVINO; print conformance and latency"

EXIT_FAILED_POINTS = 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    from qbench.commands import sweep
    from qbench.commands.train import NOT_TAKEN, add_model_alias

    g = p.add_argument_group("students, bit widths and backends")
    sweep.add_model_arguments(g)
    add_model_alias(g)
    g.add_argument("--qat-distill", help="modes (from --distill) whose students get PTQ and QAT "
                   "(default: the distilled ones, e.g. kd)")
    sweep.add_quant_arguments(g)
    g.add_argument("--backends", help="comma-separated: engine,onnxruntime,openvino (default: all; torch, the "
                   "reference, is always measured)")
    sweep.add_data_arguments(p)
    sweep.add_measurement_arguments(p.add_argument_group("measurement"))
    r = p.add_argument_group("run")
    sweep.add_run_arguments(r)
    r.add_argument("--out", type=Path, help="also copy the artifacts here, one folder per model and backend "
                   "(they are written to the cache)")
    p.set_defaults(**{k: v for k, v in NOT_TAKEN.items() if k not in ("bits", "weight_bits", "act_bits", "mixed", "scale_type",
                                                                      "granularity", "qat_distill", "backends")})


def run(args: argparse.Namespace) -> int:
    from qbench.api import measure_points, stage_points, summary_table
    from qbench.commands.train import stage_pipeline
    from qbench.backends import REFERENCE

    if args.backends is not None and REFERENCE not in [b.strip() for b in args.backends.split(",")]:
        args.backends = f"{REFERENCE},{args.backends}"
    cfg, pipe = stage_pipeline(args, stage="export")
    points = stage_points(cfg, "export")
    reference = [p for p in points if p.backend == REFERENCE]
    by_id = {r["id"]: r for r in measure_points(pipe, reference, strict=True)}
    by_id.update({r["id"]: r for r in measure_points(pipe, [p for p in points if p not in reference])})
    records = [by_id[p.id] for p in points]
    print(summary_table(records))
    for r in records:
        for note in (r.get("artifact") or {}).get("notes", []):
            print(f"  {r['model']} {r['precision']} {r['backend']}: {note}")
    if args.out is not None:
        _copy_artifacts(pipe, points, args.out)
    failed = [r for r in records if r["status"] != "ok"]
    if failed:
        print(f"qbench export: {len(failed)} of {len(records)} points failed", file=sys.stderr)
        return EXIT_FAILED_POINTS
    return 0


def _copy_artifacts(pipe, points, out: Path) -> None:
    """``<out>/<model>_w<W>a<A>/<backend>/``: the artifacts of each exported QAT model."""
    import models
    from qbench.export.openvino import CACHE_DIR

    for p in points:
        src = pipe.artifact_dir(p.model, p.distill, p.bits) / p.backend.value
        if src.is_dir():
            dst = out / f"{models.file_name(p.model)}_{p.precision}" / p.backend.value
            shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns(CACHE_DIR))  # this machine's
    print(f"artifacts copied to {out}")
