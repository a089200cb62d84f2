"""``qbench sweep``: the whole road for a grid of models, bit widths, distillation and backends."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

HELP = "train, distill, quantize, export and measure students over a grid of bit widths"

DATA_FORMATS = ("esc50", "fsd50k", "speechcommands", "csv")
SYNTHETIC = ("keywords", "events")
EXIT_OK = 0
EXIT_FAILED_POINTS = 1  # the sweep finished, some points failed (recorded with their reasons)
SHOWN_FAILURES = 5  # failed points whose reasons are printed; the rest are in the records


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("grid")
    add_model_arguments(g)
    g.add_argument("--qat-distill", help="modes (from --distill) whose students get PTQ and QAT "
                   "(default: the distilled ones, e.g. kd)")
    add_quant_arguments(g)
    g.add_argument("--backends", help="comma-separated: torch,engine,onnxruntime,openvino (default: all)")
    g.add_argument("--no-quant", action="store_true", help="fp32 students only (a distillation comparison)")
    g.add_argument("--no-ptq", action="store_true", help="skip the post-training-quantization baseline points")
    add_data_arguments(p)
    m = p.add_argument_group("measurement")
    add_measurement_arguments(m)
    m.add_argument("--seeds", help="training seeds of the fp32 students, e.g. 0,1,2 (mean and spread reported; "
                   "PTQ/QAT start from the first)")
    r = p.add_argument_group("run")
    add_run_arguments(r)
    r.add_argument("--out", type=Path, help="results folder (default: results/<machine>/<sweep name>)")
    r.add_argument("--fresh", action="store_true", help="discard results already in --out instead of resuming")
    r.add_argument("--retry-failed", action="store_true", help="rerun points recorded as failed")
    r.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="where points are computed: in this process (default) or as Ray tasks (pip install -e "
                        "'.[ray]'); records and latency stay in this process either way")
    r.add_argument("--ray-address", help="the Ray cluster of --executor ray, e.g. auto or HOST:6379 (default: start "
                   "a local one on this machine); every node must see --cache at the same path")


# The option groups below are shared with `train`, `quantize` and `export`: one name, one meaning.

def add_model_arguments(g) -> None:
    """Students, teacher, distillation and training budget."""
    g.add_argument("--models", help="students, comma-separated: registry names (lstm, dscnn, crnn) or a model you "
                   "bring as file.py:factory (default: lstm,dscnn)")
    g.add_argument("--checkpoint", type=Path, help="a state dict the one student in --models starts from instead "
                   "of training")
    g.add_argument("--teacher", help="teacher: transformer (default) or resnet")
    g.add_argument("--distill", help="distillation modes, comma-separated: none,kd,tkd,kd+tkd (default: none,tkd)")
    g.add_argument("--kd-temperature", type=float, help="softmax temperature of output KD (default 4)")
    g.add_argument("--kd-alpha", type=float, help="weight of the soft-target loss against the labels (default 0.5)")
    g.add_argument("--tkd-lambda", type=float, help="weight of the temporal attention KL (default 1)")
    g.add_argument("--epochs", type=int, help="fp32 student epochs (default 15; lstm 60)")
    g.add_argument("--teacher-epochs", type=int, help="teacher epochs (default 20)")
    g.add_argument("--augment", help="students trained with SpecAugment masking (2 time spans of up to 10 frames, "
                   "2 mel spans of up to 4 bands a clip), comma-separated, or 'none' (default: dscnn)")
    g.add_argument("--clip-norm", choices=("clip", "causal", "none"),
                   help="per-clip level normalisation of every model: clip mean (default), causal running mean "
                        "(streaming), or none")


def add_quant_arguments(g) -> None:
    """Bit widths and quantizer options."""
    g.add_argument("--bits", help="bit widths for weights and activations together, e.g. 2,4,8 (w2a2, w4a4, w8a8)")
    g.add_argument("--weight-bits", help="weight bit widths; crossed with --act-bits (default 8)")
    g.add_argument("--act-bits", help="activation bit widths; crossed with --weight-bits (default 8)")
    g.add_argument("--mixed", action="append", metavar="PRECISION",
                   help="a per-layer precision measured besides the uniform widths, e.g. 'w8a8:fc=w4,body.0=w6a8' "
                        "(default widths, then layer=widths by module name or pattern; repeatable)")
    g.add_argument("--scale-type", choices=("float", "po2"), help="quantizer scales: float (default) or power-of-two")
    g.add_argument("--granularity", choices=("per_tensor", "per_channel"), help="weight scales (default per_tensor)")


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group("data")
    d.add_argument("--dataset", choices=SYNTHETIC, help="built-in generated data (default: keywords)")
    d.add_argument("--data", type=Path, help="a dataset folder you bring (needs --dataset-format)")
    d.add_argument("--dataset-format", choices=DATA_FORMATS, help="layout of --data")
    d.add_argument("--seconds", type=float, help="clip length in seconds (default 3)")
    d.add_argument("--clips-per-class", type=int, help="size of generated data (default 250)")
    d.add_argument("--test-clips", type=int, help="clips in the generated test split (default 3000)")
    d.add_argument("--snr", help="generated data's foreground-to-background range: hard (0-20 dB, default), "
                   "clean (10-30 dB) or LOW,HIGH")


def add_measurement_arguments(m) -> None:
    m.add_argument("--threads", help="thread counts to time, comma-separated; 0 = all cores (default: 1,0)")
    m.add_argument("--batch", type=int, help="the larger batch size timed beside batch 1 (default 32)")
    m.add_argument("--no-latency", action="store_true", help="measure error and size only (latency NaN)")
    m.add_argument("--seed", type=int, help="seed for data, initial weights and batch order (default 0)")


def add_run_arguments(r) -> None:
    r.add_argument("--quick", action="store_true", help="a tiny smoke run: little data, one short epoch each")
    r.add_argument("--cache", type=Path, help="cache for features and trained models (default: $QBENCH_CACHE or ~/.cache/qbench)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--jobs", type=int, help="worker processes, one thread each: they train the models, then "
                   "score, export and check the points side by side; latency is timed here afterwards, one "
                   "measurement at a time (default: $QBENCH_JOBS, else the usable cores; 1: everything in this process)")


def run(args: argparse.Namespace) -> int:
    """Exit code: 0 every point ok, 1 some points failed; bad input raises QbenchError (the CLI's 2)."""
    from qbench.data.config import default_cache_dir
    from qbench.files import writable_dir
    from qbench.measure import LoadMeter
    from qbench.report import render
    from qbench.sweep.config import SweepConfig
    from qbench.sweep.options import config_from_args, validate_names
    from qbench.sweep.parallel import ParallelExecutor
    from qbench.sweep.pipeline import Pipeline
    from qbench.sweep.run import default_out_dir, run_sweep

    cfg: SweepConfig = config_from_args(args)
    validate_names(cfg)
    make_executor = _executor(args)
    out_dir = args.out or default_out_dir(cfg)
    cache_dir = writable_dir(args.cache or default_cache_dir(), what="cache folder")
    start = time.perf_counter()
    load = LoadMeter(children=True) if make_executor is None else None  # Ray's workers are not our children
    pipeline = Pipeline(cfg, cache_dir=cache_dir, progress=not args.no_progress)
    jobs = resolve_jobs(args)
    prepare = _shared_stages(pipeline, jobs=jobs, measure=make_executor is None)
    executor = make_executor(pipeline) if make_executor is not None else ParallelExecutor(pipeline, jobs=jobs,
                                                                                         prepare=prepare)
    with executor:
        doc = run_sweep(cfg, pipeline.measure, out_dir=out_dir, progress=not args.no_progress,
                        retry_failed=args.retry_failed, fresh=args.fresh, prepare=prepare, executor=executor)
        if (how := executor.describe()) is not None:
            doc.provenance["executor"] = how  # saved with the stage times, which it qualifies
    _record_stage_times(doc, pipeline, time.perf_counter() - start, load.stop() if load is not None else None)
    written = render(doc)
    failed = [r for r in doc.records if r["status"] != "ok"]
    print(f"{len(doc.records)} points ({len(failed)} failed) in {time.perf_counter() - start:.0f} s -> {out_dir}")
    for path in written:
        print(f"  {path}")
    if not failed:
        return EXIT_OK
    print(f"qbench sweep: {len(failed)} of {len(doc.records)} points failed (reasons in {doc.path}):", file=sys.stderr)
    for r in failed[:SHOWN_FAILURES]:
        print(f"  {r['id']}: {_first_line(r['error'])}", file=sys.stderr)
    if len(failed) > SHOWN_FAILURES:
        print(f"  ... and {len(failed) - SHOWN_FAILURES} more", file=sys.stderr)
    return EXIT_FAILED_POINTS


def _executor(args):
    """``--executor``: None (points computed in this process) or how to make the Ray executor for a
    pipeline; checked before any work, so a bad combination or a missing Ray is one line."""
    import functools

    from qbench.errors import ConfigError

    if args.executor != "ray":
        if args.ray_address is not None:
            raise ConfigError("--ray-address names the cluster of --executor ray: add --executor ray")
        return None
    from qbench.sweep.ray_executor import RayExecutor, require_ray

    require_ray()
    return functools.partial(RayExecutor, address=args.ray_address, show=show_data)


def _record_stage_times(doc, pipeline, wall_seconds: float, load=None) -> None:
    """Store and print where this run's time went (only when it measured something), and ``load``
    (:class:`qbench.measure.Load`): what other processes did on the machine meanwhile."""
    stages = {k: round(v, 1) for k, v in sorted(pipeline.stage_seconds.items(), key=lambda kv: -kv[1])}
    if not stages:
        return
    doc.provenance["run_seconds"] = {"wall": round(wall_seconds, 1), "stages": stages}
    busy = ""
    if load is not None:
        doc.provenance["run_seconds"]["load"] = dataclasses.asdict(load)
        if load.other_busy_cores is not None:
            busy = f"; other processes kept {load.other_busy_cores:.2f} of {load.usable_cores} cores busy"
    doc.save()
    print("time by stage: " + ", ".join(f"{k} {v:.0f} s" for k, v in stages.items())
          + f" (wall {wall_seconds:.0f} s{busy})")


def _first_line(reason: str | None) -> str:
    lines = str(reason or "").splitlines()
    return lines[0] + (" [...]" if len(lines) > 1 else "") if lines else ""


def _shared_stages(pipeline, *, jobs: int, measure: bool):
    """``prepare`` for run_sweep: the dataset and (for a distilled grid) the teacher, which every
    point needs, so when either cannot be built the sweep stops with that one reason instead of
    recording every point as failed with it; and every model the points need, ``jobs`` at a time
    (``measure``: idle workers measure points meanwhile, for :class:`ParallelExecutor`)."""
    from qbench.api import prepare as prepare_stages

    def prepare(todo) -> None:
        prepare_stages(pipeline, show=show_data, todo=todo, jobs=jobs, measure=measure)

    return prepare


JOBS_ENV = "QBENCH_JOBS"  # the default of --jobs, as QBENCH_CACHE is of --cache


def resolve_jobs(args: argparse.Namespace) -> int:
    """``--jobs``: checked; default ``$QBENCH_JOBS``, else the usable cores; 1 under ``--executor ray``
    (its tasks run side by side)."""
    import os

    from qbench.errors import ConfigError
    from qbench.provenance import machine_info

    jobs, given = args.jobs, "--jobs"
    if jobs is None and os.environ.get(JOBS_ENV, "").strip():
        given = f"${JOBS_ENV}"
        try:
            jobs = int(os.environ[JOBS_ENV])
        except ValueError:
            raise ConfigError(f"{given} must be a whole number, got {os.environ[JOBS_ENV]!r}") from None
    if jobs is not None and not 1 <= jobs <= 1024:
        raise ConfigError(f"{given} must be between 1 and 1024, got {jobs}")
    if getattr(args, "executor", "local") == "ray":
        if args.jobs is not None:
            raise ConfigError("--jobs is for the in-process executor; Ray runs as many tasks as its cluster has CPUs")
        return 1
    return jobs if jobs is not None else machine_info()["usable_cores"]


def show_data(dataset) -> None:
    print(f"data: {_data_line(dataset.summary())}", flush=True)


def _data_line(summary: dict) -> str:
    counts = summary["counts"]
    line = (f"{len(summary['classes'])} classes, clips train {counts['train']} / val {counts['val']} / "
            f"test {counts['test']}, {summary['skipped']} skipped")
    if summary["skipped"]:
        first = summary["skipped_clips"][0]
        line += f" (first {first['path']}: {first['reason']})"
    return line
