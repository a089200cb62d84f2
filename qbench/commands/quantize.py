"""``qbench quantize``: the sweep's fp32 student, PTQ and QAT points in PyTorch, for the bit widths given.

Same options, defaults and cache keys as ``qbench sweep`` (see :mod:`qbench.commands.train`):
``qbench quantize --bits 4`` trains, calibrates and fine-tunes exactly the models of a sweep's
w4a4 points and prints their figures.
"""

from __future__ import annotations

import argparse

HELP = "train a student (optionally distilled), quantize it with PTQ and QAT, print error and packed size"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from qbench.commands import sweep
    from qbench.commands.train import NOT_TAKEN, add_model_alias

    g = p.add_argument_group("students and bit widths")
    sweep.add_model_arguments(g)
    add_model_alias(g)
    g.add_argument("--qat-distill", help="modes (from --distill) whose students get PTQ and QAT "
                   "(default: the distilled ones, e.g. kd)")
    sweep.add_quant_arguments(g)
    g.add_argument("--no-ptq", action="store_true", help="skip the post-training-quantization points")
    sweep.add_data_arguments(p)
    sweep.add_measurement_arguments(p.add_argument_group("measurement"))
    sweep.add_run_arguments(p.add_argument_group("run"))
    p.set_defaults(**{k: v for k, v in NOT_TAKEN.items() if k not in ("bits", "weight_bits", "act_bits", "mixed", "scale_type",
                                                                      "granularity", "qat_distill", "no_ptq")})


def run(args: argparse.Namespace) -> int:
    from qbench.commands.train import run_stage

    run_stage(args, "quantize")
    return 0
