"""`qbench quantize` and `qbench export` end to end on a quick synthetic dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

from qbench.cli import main

pytestmark = pytest.mark.slow


def test_quantize_command_prints_ptq_and_qat(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("QBENCH_CACHE", str(tmp_path / "cache"))
    code = main(["quantize", "--model", "dscnn", "--weight-bits", "4", "--distill", "none", "--quick", "--no-progress",
                 "--no-latency", "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0
    assert "dscnn w4a8 ptq/none/torch" in out and "dscnn w4a8 qat/none/torch" in out and "dscnn fp32/none/torch" in out


def test_quantize_command_rejects_bad_bits(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("QBENCH_CACHE", str(tmp_path / "cache"))
    assert main(["quantize", "--bits", "9", "--quick", "--no-progress"]) == 2
    assert "--bits: 9 bits is not supported" in capsys.readouterr().err


@pytest.mark.requires_onnxruntime
def test_export_command_reports_conformance_and_latency(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("QBENCH_CACHE", str(tmp_path / "cache"))
    code = main(["export", "--model", "dscnn", "--bits", "4", "--distill", "none", "--quick", "--no-progress",
                 "--backends", "onnxruntime", "--out", str(tmp_path / "art"), "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0
    assert "dscnn w4a4 qat/none/onnxruntime" in out and "ok (" in out  # ok (the conforming variant timed)
    assert list((tmp_path / "art").rglob("*.onnx"))
