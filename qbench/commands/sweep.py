"""``qbench sweep``: the whole road for a grid of models, bit widths, distillation and backends."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

HELP = "train, distill, quantize, export and measure students over a grid of bit widths"

DATA_FORMATS = ("esc50", "fsd50k", "speechcommands", "csv")
SYNTHETIC = ("keywords", "events")


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("grid")
    g.add_argument("--models", help="students, comma-separated (default: lstm,dscnn)")
    g.add_argument("--teacher", help="teacher: transformer (default) or resnet")
    g.add_argument("--distill", help="distillation modes, comma-separated: none,kd,tkd,kd+tkd (default: none,kd)")
    g.add_argument("--qat-distill", help="modes (from --distill) whose students get PTQ and QAT "
                   "(default: the distilled ones, e.g. kd)")
    g.add_argument("--kd-temperature", type=float, help="softmax temperature of output KD (default 4)")
    g.add_argument("--kd-alpha", type=float, help="weight of the soft-target loss against the labels (default 0.5)")
    g.add_argument("--tkd-lambda", type=float, help="weight of the temporal attention KL (default 1)")
    g.add_argument("--bits", help="bit widths for weights and activations together, e.g. 2,4,8 (w2a2, w4a4, w8a8)")
    g.add_argument("--weight-bits", help="weight bit widths; crossed with --act-bits (default 8)")
    g.add_argument("--act-bits", help="activation bit widths; crossed with --weight-bits (default 8)")
    g.add_argument("--scale-type", choices=("float", "po2"), help="quantizer scales: float (default) or power-of-two")
    g.add_argument("--granularity", choices=("per_tensor", "per_channel"), help="weight scales (default per_tensor)")
    g.add_argument("--backends", help="comma-separated: torch,engine,onnxruntime,openvino (default: all)")
    g.add_argument("--no-quant", action="store_true", help="fp32 students only (a distillation comparison)")
    g.add_argument("--no-ptq", action="store_true", help="skip the post-training-quantization baseline points")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", choices=SYNTHETIC, help="built-in generated data (default: keywords)")
    d.add_argument("--data", type=Path, help="a dataset folder you bring (needs --dataset-format)")
    d.add_argument("--dataset-format", choices=DATA_FORMATS, help="layout of --data")
    d.add_argument("--seconds", type=float, help="clip length in seconds (default 3)")
    d.add_argument("--clips-per-class", type=int, help="size of generated data (default 250)")
    m = p.add_argument_group("measurement")
    m.add_argument("--threads", help="thread counts to time, comma-separated; 0 = all cores (default: 1,0)")
    m.add_argument("--batch", type=int, help="the larger batch size timed beside batch 1 (default 32)")
    m.add_argument("--no-latency", action="store_true", help="measure error and size only (latency NaN)")
    m.add_argument("--seed", type=int, help="seed for data, initial weights and batch order (default 0)")
    r = p.add_argument_group("run")
    r.add_argument("--quick", action="store_true", help="a tiny smoke run: little data, one short epoch each")
    r.add_argument("--out", type=Path, help="results folder (default: results/<machine>/<sweep name>)")
    r.add_argument("--cache", type=Path, help="cache for features and trained models (default: $QBENCH_CACHE or ~/.cache/qbench)")
    r.add_argument("--fresh", action="store_true", help="discard results already in --out instead of resuming")
    r.add_argument("--retry-failed", action="store_true", help="rerun points recorded as failed")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from qbench.report import render
    from qbench.sweep.config import SweepConfig
    from qbench.sweep.options import config_from_args, validate_names
    from qbench.sweep.pipeline import Pipeline
    from qbench.sweep.run import RESULTS_FILE, default_out_dir, run_sweep

    cfg: SweepConfig = config_from_args(args)
    validate_names(cfg)
    out_dir = args.out or default_out_dir(cfg)
    if args.fresh and (out_dir / RESULTS_FILE).exists():
        shutil.rmtree(out_dir)
    _check_writable(out_dir)
    start = time.perf_counter()
    pipeline = Pipeline(cfg, cache_dir=args.cache, progress=not args.no_progress)
    doc = run_sweep(cfg, pipeline.measure, out_dir=out_dir, progress=not args.no_progress,
                    retry_failed=args.retry_failed)
    written = render(doc)
    failed = [r for r in doc.records if r["status"] != "ok"]
    print(f"{len(doc.records)} points ({len(failed)} failed) in {time.perf_counter() - start:.0f} s -> {out_dir}")
    for path in written:
        print(f"  {path}")
    for r in failed:
        print(f"  failed {r['id']}: {r['error']}", file=sys.stderr)
    return 0


def _check_writable(out_dir: Path) -> None:
    from qbench.errors import QbenchError

    probe = out_dir
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise QbenchError(f"cannot write results under {out_dir}: {probe} is not a writable folder")
