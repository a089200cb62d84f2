"""``qbench train``: the sweep's fp32 students (optionally distilled), measured as a sweep measures them.

``train``, ``quantize`` and ``export`` share the sweep's options (:mod:`qbench.commands.sweep`),
parse into the same :class:`~qbench.sweep.SweepConfig` and measure a slice of its plan through
the same :class:`~qbench.sweep.pipeline.Pipeline` (:mod:`qbench.api`): a command's figures and
cached models are those of the matching sweep points.
"""

from __future__ import annotations

import argparse

HELP = "train the fp32 students (optionally distilled from a cached teacher) and print their metrics"

# Sweep options a stage command does not take, at the values that make them inert.
NOT_TAKEN = dict(bits=None, weight_bits=None, act_bits=None, mixed=None, scale_type=None, granularity=None, qat_distill=None,
                 backends=None, no_ptq=False, no_quant=False, seeds=None)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from qbench.commands import sweep

    g = p.add_argument_group("students")
    sweep.add_model_arguments(g)
    add_model_alias(g)
    sweep.add_data_arguments(p)
    m = p.add_argument_group("measurement")
    sweep.add_measurement_arguments(m)
    m.add_argument("--seeds", help="training seeds, e.g. 0,1,2 (one student each)")
    sweep.add_run_arguments(p.add_argument_group("run"))
    p.set_defaults(**{**NOT_TAKEN, "seeds": None, "no_quant": True})


def add_model_alias(g) -> None:
    g.add_argument("--model", dest="models", help="alias of --models")


def stage_pipeline(args: argparse.Namespace, *, show: bool = True, stage: str | None = None):
    """(SweepConfig, Pipeline) of the options, with the shared stages built (data, checked students,
    teacher): what every stage command starts from."""
    from qbench.api import prepare, stage_points
    from qbench.commands.sweep import resolve_jobs, show_data
    from qbench.data.config import default_cache_dir
    from qbench.files import writable_dir
    from qbench.sweep.options import config_from_args, validate_names
    from qbench.sweep.pipeline import Pipeline

    cfg = config_from_args(args)
    validate_names(cfg)
    cache_dir = writable_dir(args.cache or default_cache_dir(), what="cache folder")
    pipe = Pipeline(cfg, cache_dir=cache_dir, progress=not args.no_progress)
    prepare(pipe, show=show_data if show else None, todo=stage_points(cfg, stage) if stage else (),
            jobs=resolve_jobs(args))
    return cfg, pipe


def run_stage(args: argparse.Namespace, stage: str) -> list[dict]:
    """Measure a stage's points (any failure raises: one line, exit 2) and print their table."""
    from qbench.api import measure_points, stage_points, summary_table

    cfg, pipe = stage_pipeline(args, stage=stage)
    records = measure_points(pipe, stage_points(cfg, stage), strict=True)
    print(summary_table(records))
    return records


def run(args: argparse.Namespace) -> int:
    records = run_stage(args, "train")
    for r in records:
        t = r.get("train", {})
        where = f"from {t['checkpoint']}" if "checkpoint" in t else f"best epoch {t.get('best_epoch')} of {t.get('epochs')}"
        print(f"{r['model']}/{r['distill']}: {where}; error train {t['train_split']['error']:.3f}, "
              f"val {t['val']['error']:.3f}, test {t['test']['error']:.3f}")
    return 0
