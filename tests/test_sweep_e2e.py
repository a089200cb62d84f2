"""The real sweep, end to end on a tiny run: every stage and backend, then a resumed rerun."""

import json

import pytest

from qbench.cli import main
from qbench.records import STATUS_OK
from qbench.report import PLOT_LATENCY, PLOT_SIZE
from qbench.sweep.run import RESULTS_FILE


@pytest.fixture(scope="module")
def quick_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    cache = tmp_path_factory.mktemp("cache")
    argv = ["sweep", "--quick", "--models", "lstm,dscnn", "--bits", "4", "--distill", "none",
            "--scale-type", "po2", "--threads", "1", "--out", str(out), "--cache", str(cache), "--no-progress"]
    assert main(argv) == 0
    return out, argv


def test_every_point_of_a_quick_sweep_succeeds(quick_sweep):
    out, _ = quick_sweep
    doc = json.loads((out / RESULTS_FILE).read_text())
    by_id = {r["id"]: r for r in doc["records"]}
    failed = {i: r["error"] for i, r in by_id.items() if r["status"] != STATUS_OK}
    assert not failed
    backends = {r["backend"] for r in doc["records"] if r["model"] == "lstm" and r["method"] == "qat"}
    assert backends == {"torch", "engine", "onnxruntime", "openvino"}
    assert "engine" not in {r["backend"] for r in doc["records"] if r["model"] == "dscnn"}


def test_quick_sweep_figures_are_consistent(quick_sweep):
    out, _ = quick_sweep
    records = json.loads((out / RESULTS_FILE).read_text())["records"]
    engine = next(r for r in records if r["backend"] == "engine")
    # power-of-two scales: the integer engine reproduces Brevitas code for code
    assert engine["agreement"]["hidden_code_agreement"] == 1.0
    assert engine["agreement"]["logit_max_abs_diff"] == 0.0
    for r in records:
        if r["method"] == "qat":
            assert 0 < r["packed_bytes"] < 0.2 * r["size"]["fp32_bytes"]  # 4-bit weights: about 1/8
        if r["backend"] in ("onnxruntime", "openvino"):
            assert r["conformance"]["status"] == "ok" and r["file_bytes"] > 0
            assert r["latency"]["b1_t1"]["median_ms"] > 0
        if r["backend"] == "openvino" and r["runtime_precision"]["latency_default_precision"] != "f32":
            assert r["latency_default_precision"]["b1_t1"]["n"] >= 5  # bf16 (or f16) by default: timed too
        elif r["backend"] == "openvino":
            assert "latency_default_precision" not in r  # the default is the f32 figure: not timed twice
        if r["backend"] in ("onnxruntime", "openvino") and r["model"] == "lstm" and r["method"] == "qat":
            assert r["agreement"]["engine"]["top1"] >= 0.9  # po2: engine and runtimes compute the same codes


def test_the_run_records_where_its_time_went(quick_sweep):
    out, _ = quick_sweep
    run = json.loads((out / RESULTS_FILE).read_text())["provenance"]["run_seconds"]
    stages = run["stages"]
    # every stage this grid has (no teacher: nothing is distilled), each booked once
    assert set(stages) == {"data", "students", "ptq", "qat", "export", "conformance", "scoring", "latency"}
    assert all(seconds > 0 for seconds in stages.values())
    assert sum(stages.values()) <= run["wall"] + 0.5  # one process (the suite's QBENCH_JOBS=1): no overlap
    assert "s wall; by stage: " in (out / "results.md").read_text()
    load = run["load"]  # what else ran: the sweep's own worker processes are not counted
    assert load["usable_cores"] >= 1 and load["window_s"] == pytest.approx(run["wall"], abs=2.0)
    assert load["other_busy_cores"] is None or load["other_busy_cores"] >= 0


def test_report_files_exist_and_rerun_resumes_without_work(quick_sweep, monkeypatch):
    out, argv = quick_sweep
    for name in ("results.md", "results.csv", PLOT_SIZE, PLOT_LATENCY):
        assert (out / name).stat().st_size > 0
    import qbench.sweep.pipeline as pipeline

    def no_stage(*args, **kwargs):
        raise AssertionError("a finished point was measured again")

    monkeypatch.setattr(pipeline.Pipeline, "dataset", no_stage)
    before = (out / RESULTS_FILE).read_text()
    assert main(argv) == 0
    after = json.loads((out / RESULTS_FILE).read_text())
    assert [r["id"] for r in after["records"]] == [r["id"] for r in json.loads(before)["records"]]


def test_every_scored_record_carries_its_intervals_and_lstm_clipping(quick_sweep):
    """Issue 11: n and ci95 on every error, a paired interval on every change, the io clipping of LSTM points."""
    out, _ = quick_sweep
    records = json.loads((out / RESULTS_FILE).read_text())["records"]
    for r in records:
        m = r["metrics"]
        assert m["n"] > 0 and m["ci95"][0] <= m["error"] <= m["ci95"][1], r["id"]
        if r["method"] != "fp32":
            lo, hi = r["delta_ci95"]
            assert lo <= r["delta_error_vs_fp32"] <= hi, r["id"]
        if r["model"] == "lstm" and r["backend"] == "torch" and r["method"] != "fp32":
            clip = r["input_range"]
            assert clip["input_scale"] > 0 and 0 <= clip["clipped_input"] <= 1 and 0 <= clip["clipped_hidden"] <= 1
        if r["role"] == "student" and r["method"] == "fp32" and r["backend"] == "torch":
            assert 0 <= r["train"]["train_split"]["error"] <= 1  # did it learn: train error beside test error
    table = (out / "results.md").read_text()
    assert "[95 % CI]" in table and "paired 95 % CI" in table


def test_a_quick_sweep_without_latency_succeeds(tmp_path):
    """Without latency the first LSTM forwards of a process run under torch.inference_mode
    (scoring), the export's after them under no_grad: the fast QuantLSTM's kept buffers must serve
    both (12 of 42 points of the ARM job's quick sweep failed on this before it was fixed)."""
    argv = ["sweep", "--quick", "--models", "lstm", "--bits", "4", "--distill", "none", "--threads", "1",
            "--backends", "torch,onnxruntime", "--no-latency", "--out", str(tmp_path / "out"),
            "--cache", str(tmp_path / "cache"), "--no-progress"]
    assert main(argv) == 0
    doc = json.loads((tmp_path / "out" / RESULTS_FILE).read_text())
    assert {r["status"] for r in doc["records"]} == {STATUS_OK}
    assert {r["backend"] for r in doc["records"] if r["method"] == "qat"} == {"torch", "onnxruntime"}
