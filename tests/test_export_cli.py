"""`qbench quantize` and `qbench export` end to end on a quick synthetic dataset."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from qbench.cli import main

pytestmark = pytest.mark.slow


def test_quantize_command_prints_ptq_and_qat(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("QBENCH_CACHE", str(tmp_path / "cache"))
    code = main(["quantize", "--model", "dscnn", "--bits", "4", "--quick", "--no-progress", "--qat-epochs", "1",
                 "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0
    assert "dscnn_w4a8 PTQ" in out and "dscnn_w4a8 QAT" in out and "dscnn fp32" in out


def test_quantize_command_rejects_bad_bits(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("QBENCH_CACHE", str(tmp_path / "cache"))
    assert main(["quantize", "--bits", "9", "--quick", "--no-progress"]) == 2
    assert "weight_bits" in capsys.readouterr().err


@pytest.mark.requires_onnxruntime
def test_export_command_reports_conformance_and_latency(tmp_path: Path, capsys, monkeypatch) -> None:
    if importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnxruntime is not installed")
    monkeypatch.setenv("QBENCH_CACHE", str(tmp_path / "cache"))
    code = main(["export", "--model", "dscnn", "--bits", "4", "--quick", "--no-progress", "--skip-qat",
                 "--backends", "onnxruntime", "--out", str(tmp_path / "art"), "--threads", "1", "--repeats", "3",
                 "--conformance-clips", "8"])
    out = capsys.readouterr().out
    assert code == 0
    assert "onnxruntime (f32)" in out and "ok " in out
    assert list((tmp_path / "art").rglob("*.onnx"))
