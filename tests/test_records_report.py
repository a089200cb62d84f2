"""Results documents persist atomically and reports render from stored records alone."""

import json
import math

import pytest

from qbench.cli import main
from qbench.provenance import machine_id, provenance
from qbench.records import STATUS_FAILED, STATUS_OK, ResultsDocument, failed_record, flatten
from qbench.report import PLOT_LATENCY, PLOT_SIZE, latency_keys, render, render_markdown, summary_table


def _record(rid, *, model="lstm", bits=4, backend="torch", error=0.1, status=STATUS_OK, machine=None):
    rec = {
        "id": rid, "status": status, "model": model, "role": "student", "precision": f"w{bits}a8",
        "weight_bits": bits, "act_bits": 8, "method": "qat", "distill": "kd", "backend": backend,
        "params": 1000, "packed_bytes": 1000 * bits / 8, "file_bytes": float("nan"),
        "pct_fp32": bits / 32 * 100, "pct_teacher": 1.0, "metrics": {"error": error},
        "delta_error_vs_fp32": 0.01, "agreement": {"top1": 1.0},
        "latency": {"b1_t1": {"median_ms": 0.5, "iqr_ms": 0.01}, "b32_t2": {"median_ms": 3.0, "iqr_ms": 0.1}},
    }
    if machine:
        rec["provenance"] = {"machine_id": machine}
    return rec


@pytest.fixture
def doc(tmp_path):
    d = ResultsDocument(tmp_path / "sweep.json", config={"kind": "SweepConfig"}, provenance=provenance())
    for bits in (2, 4, 8):
        d.add(_record(f"lstm_w{bits}a8/qat/kd/torch", bits=bits, error=0.3 / bits))
    d.add(failed_record("lstm_w2a8/qat/kd/onnxruntime", {"model": "lstm", "backend": "onnxruntime",
                                                           "precision": "w2a8", "method": "qat"}, "export refused"))
    return d


def test_document_round_trips_with_nan_and_failed_points(doc):
    loaded = ResultsDocument.load(doc.path)
    assert [r["id"] for r in loaded.records] == [r["id"] for r in doc.records]
    assert math.isnan(loaded.get("lstm_w4a8/qat/kd/torch")["file_bytes"])
    failed = loaded.get("lstm_w2a8/qat/kd/onnxruntime")
    assert failed["status"] == STATUS_FAILED and failed["error"] == "export refused"
    assert loaded.finished_ids(include_failed=False) == {r["id"] for r in doc.records if r["status"] == STATUS_OK}


def test_add_replaces_a_record_with_the_same_id_and_leaves_no_temp_files(doc):
    doc.add(_record("lstm_w4a8/qat/kd/torch", error=0.5))
    loaded = ResultsDocument.load(doc.path)
    assert len([r for r in loaded.records if r["id"] == "lstm_w4a8/qat/kd/torch"]) == 1
    assert loaded.get("lstm_w4a8/qat/kd/torch")["metrics"]["error"] == 0.5
    assert [p.name for p in doc.path.parent.iterdir()] == ["sweep.json"]


def test_render_writes_table_csv_and_plots(doc, tmp_path):
    written = render(doc, tmp_path / "out")
    names = {p.name for p in written}
    assert {PLOT_SIZE, PLOT_LATENCY, "results.md", "results.csv"} <= names
    for p in written:
        assert p.stat().st_size > 0
    table = (tmp_path / "out" / "results.md").read_text()
    assert "w2a8" in table and "failed: export refused" in table
    assert machine_id() in table
    assert (tmp_path / "out" / PLOT_SIZE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tables_refuse_to_mix_machines(doc):
    doc.add(_record("a", machine="x86_64-one-2c"))
    doc.add(_record("b", machine="aarch64-two-4c"))
    with pytest.raises(Exception, match="mixes records from machines"):
        render_markdown(doc)


def test_latency_keys_sort_by_batch_then_threads():
    recs = [{"latency": {"b32_t2": {}, "b1_t2": {}, "b1_t1": {}, "b32_t1": {}}}]
    assert latency_keys(recs) == ["b1_t1", "b1_t2", "b32_t1", "b32_t2"]


def test_flatten_dots_nested_fields():
    flat = flatten({"a": {"b": {"c": 1}}, "d": [1, 2]})
    assert flat == {"a.b.c": 1, "d": "[1, 2]"}


def test_report_command_rerenders_from_stored_records(doc, tmp_path, capsys):
    assert main(["report", str(doc.path.parent)]) == 0
    assert (doc.path.parent / "results.md").exists()
    assert "results.md" in capsys.readouterr().out


def test_report_command_on_missing_or_foreign_file_is_one_line_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no results file" in err
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    assert main(["report", str(tmp_path / "other.json")]) == 2
    assert "not a qbench results file" in capsys.readouterr().err


def test_summary_pivots_error_by_method_and_distillation():
    recs = [
        {**_record("a", bits=4, error=0.30), "method": "qat", "distill": "kd"},
        {**_record("b", bits=4, error=0.40), "method": "qat", "distill": "none"},
        {**_record("c", bits=4, error=0.50), "method": "ptq", "distill": "kd"},
        {**_record("d", bits=4, error=0.0, status="failed"), "method": "qat", "distill": "tkd"},
        {**_record("e", bits=4, backend="onnxruntime", error=0.9), "method": "qat", "distill": "kd"},
    ]
    header, _, row = summary_table(recs).splitlines()
    assert header.split(" | ")[2:6] == ["ptq kd error %", "qat none error %", "qat kd error %", "qat tkd error %"]
    assert row.split(" | ")[2:6] == ["50.0", "40.0", "30.0", "failed"]  # the onnxruntime record is not PyTorch


def test_a_multilabel_task_names_its_error_one_minus_map_with_map_and_eer_beside() -> None:
    from qbench.report import accuracy_table

    rec = {**_record("a", bits=4, error=0.25), "method": "qat", "distill": "kd"}
    events = {**rec, "metrics": {**rec["metrics"], "map": 0.75, "eer": 0.125}}
    header, _, row = accuracy_table([events]).splitlines()
    cells = dict(zip(header.strip("| ").split(" | "), row.strip("| ").split(" | ")))
    assert cells["mAP %"] == "75.0" and cells["EER %"] == "12.5" and cells["test 1 − mAP % [95 % CI]"].startswith("25.0")
    assert "qat kd 1 − mAP %" in summary_table([events]).splitlines()[0]
    plain = accuracy_table([rec]).splitlines()[0]
    assert "test error % [95 % CI]" in plain and "mAP" not in plain


def test_top1_cell_names_exact_ties_of_the_engine() -> None:
    from qbench.report import _top1

    assert _top1({"top1": 0.99}) == "99.00"
    engine = {"top1": 298 / 300, "class_ties": 2.0, "class_agreement_up_to_ties": 1.0}
    assert _top1(engine) == "99.33 (100.00 counting 2 exact ties)"
    assert _top1({"top1": 1.0, "class_ties": 0.0, "class_agreement_up_to_ties": 1.0}) == "100.00"


def test_git_dirty_ignores_the_output_folder(tmp_path) -> None:
    import subprocess

    from qbench.provenance import git_commit

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sweep.json").write_text("{}")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    assert git_commit(tmp_path)["dirty"] is False
    (tmp_path / "out" / "sweep.json").unlink()  # what --fresh does before the run asks
    assert git_commit(tmp_path)["dirty"] is True
    assert git_commit(tmp_path, ignore=tmp_path / "out")["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path, ignore=tmp_path / "out")["dirty"] is True
