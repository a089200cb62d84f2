"""A single-stage command reproduces the matching sweep point: same config, cache keys and figures (issue 14, item 1)."""

from __future__ import annotations

import json

from qbench.cli import build_parser, main
from qbench.distill import DistillMode
from qbench.quant.precision import Precision
from qbench.sweep.options import config_from_args
from qbench.sweep.pipeline import Pipeline
from qbench.sweep.run import RESULTS_FILE

OPTIONS = ["--quick", "--models", "dscnn", "--bits", "4", "--distill", "none", "--threads", "1", "--no-latency",
           "--no-progress"]
FIGURES = ("metrics", "delta_error_vs_fp32", "delta_ci95", "packed_bytes", "params")


def test_quantize_reproduces_the_sweep_point(tmp_path) -> None:
    from qbench.commands.train import run_stage

    cache = tmp_path / "cache"
    argv = [*OPTIONS, "--cache", str(cache)]
    assert main(["sweep", *argv, "--backends", "torch", "--out", str(tmp_path / "sweep")]) == 0
    swept = {r["id"]: r for r in json.loads((tmp_path / "sweep" / RESULTS_FILE).read_text())["records"]}

    sweep_cfg = config_from_args(build_parser().parse_args(["sweep", *argv]))
    quantize_args = build_parser().parse_args(["quantize", *argv])
    quantize_cfg = config_from_args(quantize_args)
    qat_file = Pipeline(sweep_cfg, cache_dir=cache).qat_path("dscnn", DistillMode.NONE, Precision.uniform(4, 4))
    assert qat_file == Pipeline(quantize_cfg, cache_dir=cache).qat_path("dscnn", DistillMode.NONE, Precision.uniform(4, 4))
    before = qat_file.stat().st_mtime_ns

    records = run_stage(quantize_args, "quantize")
    assert [r["id"] for r in records] == ["student:dscnn/fp32/none/torch", "student:dscnn_w4a4/ptq/none/torch",
                                          "student:dscnn_w4a4/qat/none/torch"]
    for r in records:
        assert {k: r.get(k) for k in FIGURES} == {k: swept[r["id"]].get(k) for k in FIGURES}, r["id"]
    assert qat_file.stat().st_mtime_ns == before  # loaded from the sweep's cache entry, not trained again

    train_records = run_stage(build_parser().parse_args(["train", *[a for a in argv if a not in ("--bits", "4")]]),
                              "train")
    fp32 = swept["student:dscnn/fp32/none/torch"]
    assert [r["metrics"] for r in train_records] == [fp32["metrics"]]


def test_stage_commands_share_the_sweeps_option_names() -> None:
    parser = build_parser()
    for command in ("train", "quantize", "export"):
        args = parser.parse_args([command, "--model", "lstm", "--kd-temperature", "2", "--kd-alpha", "0.3",
                                  "--data", "/nowhere", "--dataset-format", "csv", "--seed", "3"])
        assert args.models == "lstm" and args.kd_temperature == 2.0 and args.dataset_format == "csv"
    assert parser.parse_args(["quantize", "--bits", "4"]).bits == "4"  # w4a4, as in sweep
