"""``qbench export``: export one quantized student to runtimes; print sizes, conformance, latency."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "export one quantized student to ONNX Runtime / OpenVINO; print artifact sizes, conformance and latency"

BACKEND_NAMES = ("onnxruntime", "openvino")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from qbench.commands import quantize as quantize_cmd

    quantize_cmd.add_arguments(p)
    p.add_argument("--backends", nargs="+", default=list(BACKEND_NAMES), choices=BACKEND_NAMES,
                   help="runtimes to export to (default: all)")
    p.add_argument("--out", type=Path, default=Path("artifacts"), help="folder for the artifacts (default ./artifacts)")
    p.add_argument("--batch", type=int, default=1, help="batch size for latency (default 1)")
    p.add_argument("--conformance-clips", type=int, default=64, help="test clips compared with Brevitas (default 64)")
    p.add_argument("--repeats", type=int, default=30, help="timed runs per latency figure (default 30)")
    p.add_argument("--skip-qat", action="store_true", help="export the PTQ model (no QAT fine-tuning)")


def _quantized_student(args: argparse.Namespace):
    """(qmodel, dataset): the student trained as `qbench quantize` does, PTQ-calibrated, optionally QAT-tuned."""
    from qbench.commands.quantize import quant_config
    from qbench.commands.train import prepare
    from qbench.quant.quantize import calibrate, quantize
    from qbench.train import train

    qcfg = quant_config(args)
    dataset, student, teacher, (_, _, student_cfg, distill) = prepare(args)
    progress = not args.no_progress
    fp32 = train(student, dataset, config=student_cfg, teacher=teacher, distill=distill, progress=progress).model
    qmodel = quantize(fp32, qcfg)
    calibrate(qmodel, dataset, batches=args.calib_batches, batch_size=student_cfg.batch_size)
    if not args.skip_qat:
        qat = student_cfg.replace(epochs=args.qat_epochs or max(1, student_cfg.epochs // 2),
                                  lr=student_cfg.lr * args.qat_lr_scale)
        qmodel = train(qmodel, dataset, config=qat, teacher=teacher, distill=distill, progress=progress).model
    return qmodel.eval(), fp32.eval(), dataset, qcfg.name(args.model)


def run(args: argparse.Namespace) -> int:
    from qbench.errors import QbenchError
    from qbench.export import Backend, Precision, check_conformance, export, runner
    from qbench.measure import measure_latency, torch_runner
    from qbench.quant.size import packed_size

    if args.batch < 1 or args.conformance_clips < 1:
        raise QbenchError("--batch and --conformance-clips must be >= 1")
    qmodel, fp32, dataset, name = _quantized_student(args)
    x_conf = dataset.test.x[: args.conformance_clips]
    x_lat = dataset.test.x[: args.batch]
    if len(x_lat) < args.batch:
        raise QbenchError(f"--batch {args.batch} is larger than the test split ({len(dataset.test.x)} clips)")
    size = packed_size(qmodel, fp32_reference=fp32)
    print(f"{name}: packed {size.total_bytes} B ({size.ratio_to_fp32:.3f} of fp32); threads {args.threads}, batch {args.batch}")
    print(f"{'runner':<34}{'file KiB':>10}{'weights':>9}{'conformance':>13}{'median ms':>11}{'IQR ms':>9}")
    timing = dict(threads=args.threads, repeats=args.repeats)
    for label, model in (("torch fp32", fp32), ("brevitas fake-quant", qmodel)):
        stats = measure_latency(torch_runner(model, threads=args.threads), x_lat, **timing)
        print(f"{label:<34}{'':>10}{'':>9}{'':>13}{stats.median_ms:>11.3f}{stats.iqr_ms:>9.3f}")
    for backend in map(Backend, args.backends):
        artifact = export(qmodel, backend, out_dir=args.out / name / backend.value, example=x_conf[:2], name=name)
        conf = check_conformance(artifact, qmodel, x_conf, threads=args.threads)
        status = f"ok {conf.max_steps[conf.best]:.2f}st" if conf.ok else "FAILED"
        precisions = (Precision.F32, Precision.DEFAULT) if backend == Backend.OPENVINO else (Precision.F32,)
        for precision in precisions:
            label = f"{backend.value} ({precision.value})"
            if not conf.ok:  # a failed artifact is never timed
                print(f"{label:<34}{artifact.size_bytes / 1024:>10.1f}{artifact.weight_container:>9}{status:>13}")
                continue
            options = {**conf.best_options, "precision": precision} if backend == Backend.OPENVINO else conf.best_options
            run_fn = runner(artifact, threads=args.threads, **options)
            stats = measure_latency(run_fn, x_lat, **timing)
            print(f"{label:<34}{artifact.size_bytes / 1024:>10.1f}{artifact.weight_container:>9}{status:>13}"
                  f"{stats.median_ms:>11.3f}{stats.iqr_ms:>9.3f}")
        for note in artifact.notes:
            print(f"  {backend.value}: {note}")
        if conf.ok:
            print(f"  {backend.value}: timed as {conf.best}")
        if conf.reason:
            print(f"  {backend.value}: {'conformance failed' if not conf.ok else 'non-conforming variants'}: {conf.reason}")
    return 0
