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
        if r["backend"] == "openvino":
            assert r["latency_default_precision"]["b1_t1"]["n"] >= 5
        if r["backend"] in ("onnxruntime", "openvino") and r["model"] == "lstm":
            assert r["agreement"]["engine"]["top1"] >= 0.9  # po2: engine and runtimes compute the same codes


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
