"""``qbench quantize``: train a student, quantize it (PTQ, then QAT) and print error and packed size."""

from __future__ import annotations

import argparse

HELP = "train a student (optionally distilled), quantize it with PTQ and QAT, print error and packed size"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from qbench.commands import train as train_cmd

    train_cmd.add_arguments(p)  # the same student, data and distillation options as `qbench train`
    p.add_argument("--bits", type=int, default=4, help="weight bits, 2-8 (default 4)")
    p.add_argument("--act-bits", type=int, default=8, help="activation bits, 2-8 or 16 (default 8)")
    p.add_argument("--granularity", default="per_tensor", choices=("per_tensor", "per_channel"),
                   help="weight scales per tensor or per output channel (default per_tensor)")
    p.add_argument("--scale", default="float", choices=("float", "po2"), help="scale type (default float)")
    p.add_argument("--calib-batches", type=int, default=16, help="PTQ calibration batches (default 16)")
    p.add_argument("--qat-epochs", type=int, help="QAT fine-tuning epochs (default: half the student's, at least 1)")
    p.add_argument("--qat-lr-scale", type=float, default=0.1, help="QAT learning rate / student's (default 0.1)")


def quant_config(args: argparse.Namespace):
    """The QuantConfig the arguments describe (validated: bad bits raise ConfigError)."""
    from qbench.quant import QuantConfig

    return QuantConfig(weight_bits=args.bits, act_bits=args.act_bits, granularity=args.granularity,
                       scale_type=args.scale)


def _row(name: str, size_bytes: int, ratio: float, val: dict, test: dict) -> str:
    return f"{name:<28}{size_bytes / 1024:>11.2f}{ratio:>9.3f}{val['error']:>10.4f}{test['error']:>10.4f}"


def run(args: argparse.Namespace) -> int:
    import time

    from qbench.commands.train import prepare
    from qbench.quant.quantize import calibrate, quantize
    from qbench.quant.size import fp32_size, packed_size
    from qbench.train import evaluate_model, train

    qcfg = quant_config(args)
    dataset, student, teacher, (_, _, student_cfg, distill) = prepare(args)
    progress = not args.no_progress
    fp32 = train(student, dataset, config=student_cfg, teacher=teacher, distill=distill, progress=progress).model
    ml = dataset.multilabel
    ref_bytes = fp32_size(fp32)
    print(f"{'model':<28}{'size KiB':>11}{'/ fp32':>9}{'val err':>10}{'test err':>10}")
    print(_row(f"{args.model} fp32", ref_bytes, 1.0, *(evaluate_model(fp32, s, multilabel=ml)
                                                        for s in (dataset.val, dataset.test))))

    start = time.perf_counter()
    qmodel = quantize(fp32, qcfg)
    calibrate(qmodel, dataset, batches=args.calib_batches, batch_size=student_cfg.batch_size)
    size = packed_size(qmodel, fp32_reference=fp32)
    name = qcfg.name(args.model)
    print(_row(f"{name} PTQ", size.total_bytes, size.ratio_to_fp32,
               *(evaluate_model(qmodel, s, multilabel=ml) for s in (dataset.val, dataset.test))))
    qat_cfg = student_cfg.replace(epochs=args.qat_epochs or max(1, student_cfg.epochs // 2),
                                  lr=student_cfg.lr * args.qat_lr_scale)
    result = train(qmodel, dataset, config=qat_cfg, teacher=teacher, distill=distill, progress=progress)
    size = packed_size(result.model, fp32_reference=fp32)
    print(_row(f"{name} QAT", size.total_bytes, size.ratio_to_fp32, result.best_val, result.test))
    if teacher is not None:
        print(f"packed {name} / fp32 teacher {args.teacher}: {size.ratio_to(fp32_size(teacher)):.4f}")
    print(f"quantize + calibrate + QAT: {time.perf_counter() - start:.1f} s; packed bytes {size.to_dict()}")
    return 0
