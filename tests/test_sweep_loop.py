"""The sweep loop: bad arguments stop before work, failures are recorded, interruptions resume."""

import json

import pytest

from qbench.cli import main
from qbench.records import STATUS_FAILED, STATUS_OK, ResultsDocument
from qbench.sweep.config import SweepConfig
from qbench.sweep.plan import plan_points
from qbench.sweep.run import RESULTS_FILE, run_sweep

SMALL = SweepConfig(models=("lstm",), bits=((2, 8), (4, 8)), backends=("torch", "engine"), threads=(1,))


@pytest.mark.parametrize("argv, message", [
    (["--bits", "1"], "1 bits is not supported"),
    (["--bits", "9"], "9 bits is not supported"),
    (["--bits", "4,x"], "'x' is not an integer"),
    (["--weight-bits", "4", "--bits", "4"], "use it alone"),
    (["--models", "lstm,transformerxl"], "unknown student(s) transformerxl"),
    (["--backends", "torch,tensorrt"], "must be one of torch, engine, onnxruntime, openvino, got 'tensorrt'"),
    (["--distill", "kd,magic"], "must be one of none, kd, tkd, kd+tkd, got 'magic'"),
    (["--data", "/no/such/folder", "--dataset-format", "esc50"], "does not exist"),
    (["--data", "."], "needs --dataset-format"),
    (["--threads", "1,two"], "'two' is not an integer"),
    (["--kd-temperature", "0"], "DistillConfig.temperature must be in"),
    (["--kd-alpha", "1.5"], "DistillConfig.alpha must be in"),
])
def test_bad_arguments_exit_2_with_one_line_before_any_work(argv, message, tmp_path, capsys, monkeypatch):
    import qbench.sweep.pipeline as pipeline

    def no_work(*args, **kwargs):
        raise AssertionError("work started despite a bad argument")

    monkeypatch.setattr(pipeline.Pipeline, "__init__", no_work)
    assert main(["sweep", *argv, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_qat_follows_the_distilled_modes_unless_told(monkeypatch):
    import argparse

    from qbench.commands import sweep as sweep_command
    from qbench.sweep.options import config_from_args

    parser = argparse.ArgumentParser()
    sweep_command.add_arguments(parser)
    assert config_from_args(parser.parse_args([])).qat_distill == ("tkd",)
    assert config_from_args(parser.parse_args(["--distill", "none,tkd"])).qat_distill == ("tkd",)
    assert config_from_args(parser.parse_args(["--distill", "none"])).qat_distill == ("none",)
    cfg = config_from_args(parser.parse_args(["--distill", "none,kd", "--qat-distill", "none,kd"]))
    qat = {p.distill.value for p in plan_points(cfg) if p.method == "qat"}
    assert qat == {"none", "kd"}
    fp32_only = config_from_args(parser.parse_args(["--distill", "none,kd,tkd,kd+tkd", "--no-quant"]))
    assert {p.method for p in plan_points(fp32_only)} == {"fp32"}
    assert len(plan_points(fp32_only)) == 1 + 4 * len(fp32_only.models)


def test_unreadable_data_path_is_one_line(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert main(["sweep", "--data", str(f), "--dataset-format", "csv", "--out", str(tmp_path / "o")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def _fake_measure(fail_ids=(), interrupt_at=None, calls=None):
    def measure(point):
        if calls is not None:
            calls.append(point.id)
        if point.id == interrupt_at:
            raise KeyboardInterrupt
        if point.id in fail_ids:
            raise RuntimeError("export refused\nsecond line of detail")
        return {"metrics": {"error": 0.1}}
    return measure


def test_a_failed_point_is_recorded_and_the_rest_go_on(tmp_path):
    ids = [p.id for p in plan_points(SMALL)]
    bad = ids[3]
    doc = run_sweep(SMALL, _fake_measure(fail_ids={bad}), out_dir=tmp_path, progress=False)
    assert len(doc.records) == len(ids)
    failed = doc.get(bad)
    assert failed["status"] == STATUS_FAILED
    assert failed["error"] == "RuntimeError: export refused\nsecond line of detail"  # never truncated
    assert failed["model"] == "lstm" and failed["backend"]
    assert all(r["status"] == STATUS_OK for r in doc.records if r["id"] != bad)
    assert "second line of detail" in (tmp_path / "sweep.log").read_text()  # the traceback is kept


def test_interrupted_sweep_resumes_where_it_stopped(tmp_path):
    ids = [p.id for p in plan_points(SMALL)]
    stop = ids[4]
    with pytest.raises(KeyboardInterrupt):
        run_sweep(SMALL, _fake_measure(interrupt_at=stop), out_dir=tmp_path, progress=False)
    saved = ResultsDocument.load(tmp_path / RESULTS_FILE)
    assert [r["id"] for r in saved.records] == ids[:4]  # finished points survived the interruption

    calls = []
    doc = run_sweep(SMALL, _fake_measure(calls=calls), out_dir=tmp_path, progress=False)
    assert calls == ids[4:]  # nothing finished was redone
    assert [r["id"] for r in doc.records] == ids


def test_failed_points_are_kept_on_resume_unless_retried(tmp_path):
    ids = [p.id for p in plan_points(SMALL)]
    run_sweep(SMALL, _fake_measure(fail_ids={ids[2]}), out_dir=tmp_path, progress=False)
    calls = []
    run_sweep(SMALL, _fake_measure(calls=calls), out_dir=tmp_path, progress=False)
    assert calls == []
    doc = run_sweep(SMALL, _fake_measure(calls=calls), out_dir=tmp_path, progress=False, retry_failed=True)
    assert calls == [ids[2]] and doc.get(ids[2])["status"] == STATUS_OK


def test_results_of_another_config_or_machine_are_not_mixed(tmp_path):
    run_sweep(SMALL, _fake_measure(), out_dir=tmp_path, progress=False)
    with pytest.raises(Exception, match="different sweep config"):
        run_sweep(SMALL.replace(seed=1), _fake_measure(), out_dir=tmp_path, progress=False)
    data = json.loads((tmp_path / RESULTS_FILE).read_text())
    data["provenance"]["machine_id"] = "aarch64-other-8c"
    (tmp_path / RESULTS_FILE).write_text(json.dumps(data))
    with pytest.raises(Exception, match="never mixed"):
        run_sweep(SMALL, _fake_measure(), out_dir=tmp_path, progress=False)


def test_every_record_carries_provenance_and_config(tmp_path):
    doc = run_sweep(SMALL, _fake_measure(), out_dir=tmp_path, progress=False)
    stored = json.loads((tmp_path / RESULTS_FILE).read_text())
    assert SweepConfig.from_dict(stored["config"]) == SMALL
    assert {"machine", "versions", "git", "utc", "machine_id"} <= set(stored["provenance"])
    for r in doc.records:
        assert r["provenance"]["machine_id"] == stored["provenance"]["machine_id"]
        assert r["seconds"] >= 0


def test_a_rerun_that_measures_nothing_leaves_the_document_as_it_was(tmp_path):
    run_sweep(SMALL, _fake_measure(), out_dir=tmp_path, progress=False)
    before = (tmp_path / RESULTS_FILE).read_text()
    run_sweep(SMALL, _fake_measure(), out_dir=tmp_path, progress=False)
    assert (tmp_path / RESULTS_FILE).read_text() == before


def test_distillation_options_reach_the_config():
    import argparse

    from qbench.commands import sweep as sweep_command
    from qbench.sweep.options import config_from_args

    parser = argparse.ArgumentParser()
    sweep_command.add_arguments(parser)
    cfg = config_from_args(parser.parse_args(["--kd-temperature", "2", "--kd-alpha", "0.9", "--tkd-lambda", "3"]))
    assert (cfg.distill_params.temperature, cfg.distill_params.alpha, cfg.distill_params.lambda_) == (2.0, 0.9, 3.0)
    assert cfg.distill_config(cfg.distill[1]).temperature == 2.0
