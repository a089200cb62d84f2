"""``qbench search``: per-layer sensitivity and a mixed-precision search under a cost budget (:mod:`qbench.search`).

Takes the sweep's student, data and run options (same meanings, same cache: the students, PTQ
and QAT models of a search are the sweep's), plus what the search explores and how it decides.
Writes ``search.json`` (versioned, with provenance), ``pareto.csv``, ``search.md``, a frontier
plot and a sensitivity heat map per student into ``--out``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HELP = "per-layer sensitivity, mixed-precision search and the cheapest configuration within an error budget"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from qbench.commands import sweep
    from qbench.commands.train import NOT_TAKEN, add_model_alias

    g = p.add_argument_group("students")
    sweep.add_model_arguments(g)
    add_model_alias(g)
    s = p.add_argument_group("search")
    s.add_argument("--widths", help="candidate weight widths of every layer (default 2,3,4,6,8)")
    s.add_argument("--act-bits", type=int, help="the activations' one width (default 8)")
    s.add_argument("--cost", choices=("bytes", "bitops", "latency"), default="bytes",
                   help="what the answer minimises: packed bytes (default), BitOps (MACs x weight bits x act "
                        "bits) or latency measured on this machine (--latency-backend)")
    s.add_argument("--max-error-increase", type=float, default=1.0,
                   help="points of test error above the fp32 student allowed, at 95 %% confidence (default 1.0)")
    s.add_argument("--confirm", type=int, help="mixed candidates confirmed by QAT per student (default 4)")
    s.add_argument("--latency-backend", help="where --cost latency is measured (default: engine for LSTM "
                   "students, else onnxruntime)")
    s.add_argument("--backends", help="where the answer is measured at the end, comma-separated (default: all)")
    sweep.add_data_arguments(p)
    sweep.add_measurement_arguments(p.add_argument_group("measurement"))
    r = p.add_argument_group("run")
    sweep.add_run_arguments(r)
    r.add_argument("--out", type=Path, help="output folder (default: results/<machine>/search-<key>)")
    p.set_defaults(**{k: v for k, v in NOT_TAKEN.items() if k not in ("act_bits", "backends")})


def search_config(args: argparse.Namespace):
    from qbench.search import SearchConfig
    from qbench.sweep.config import parse_bits

    fields = {"cost": args.cost, "max_error_increase": args.max_error_increase}
    if args.widths is not None:
        fields["widths"] = parse_bits("--widths", args.widths)
    if args.act_bits is not None:
        fields["act_bits"] = args.act_bits
    if args.confirm is not None:
        fields["confirm"] = args.confirm
    if args.latency_backend is not None:
        from qbench.backends import get

        fields["latency_backend"] = get(args.latency_backend, owner="--latency-backend").name
    if args.quick:
        fields.setdefault("widths", (4, 8))
        fields.setdefault("confirm", 1)
        fields["fisher_batches"] = 2
    return SearchConfig(**fields)


def run(args: argparse.Namespace) -> int:
    from qbench.api import prepare
    from qbench.commands.sweep import show_data
    from qbench.data.config import default_cache_dir
    from qbench.files import folder_lock, writable_dir
    from qbench.provenance import machine_id
    from qbench.search_report import write_outputs
    from qbench.sweep.options import config_from_args, validate_names
    from qbench.sweep.pipeline import Pipeline

    scfg = search_config(args)
    args.act_bits = None  # the sweep's --act-bits is not this command's: activations are scfg.act_bits
    backends, args.backends = args.backends, None  # the search itself runs in PyTorch (and the latency backend)
    cfg = config_from_args(args)
    args.backends = backends
    cfg = cfg.replace(latency=scfg.cost == "latency", bits=((scfg.widths[-1], scfg.act_bits),))
    validate_names(cfg)
    cache_dir = writable_dir(args.cache or default_cache_dir(), what="cache folder")
    out = args.out or Path("results") / machine_id() / f"search-{scfg.cost}-{cfg.key(6)}{scfg.key(4)}"
    start = time.perf_counter()
    with folder_lock(writable_dir(out, what="output folder")):
        pipe = Pipeline(cfg, cache_dir=cache_dir, progress=not args.no_progress)
        prepare(pipe, show=show_data)
        from qbench.quant.precision import Precision
        from qbench.search import answer, deployment, search_student

        students = {model: search_student(pipe, scfg, model) for model in cfg.models}
        answers = answer(students, scfg)
        # the answer on every backend, timed: a pipeline over the same caches with latency on
        timed = Pipeline(cfg.replace(latency=True, backends=_deploy_backends(args)), cache_dir=cache_dir,
                         progress=not args.no_progress)
        for model, a in answers.items():
            if a["best"]:
                print(f"{model}: the answer on every backend")
                a["deployment"] = deployment(timed, model, Precision.parse(a["best"]))
        written = write_outputs(out, cfg, scfg, students, answers, time.perf_counter() - start)
    for path in written:
        print(f"  {path}")
    failed = sum(c["qat"]["status"] != "ok" for s in students.values() for c in s["confirmed"])
    failed += sum(row["status"] != "ok" for a in answers.values() for row in a.get("deployment", []))
    return 1 if failed else 0


def _deploy_backends(args: argparse.Namespace) -> tuple[str, ...]:
    """``--backends`` (the reference always among them), else every registered backend."""
    from qbench.backends import REFERENCE, names

    if args.backends is None:
        return names()
    chosen = [b.strip() for b in args.backends.split(",") if b.strip()]
    return tuple(dict.fromkeys([REFERENCE, *chosen]))
