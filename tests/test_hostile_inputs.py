"""Hostile input: every bad option, file or folder ends in one line on stderr and its exit code.

Exit codes (README "Exit codes"): 0 every point ok, 1 a finished sweep with failed points,
2 bad input (one line, no traceback, no folder of failed points), 130 interrupted. Most cases call
``qbench.cli.main`` in-process; a few run ``python -m qbench`` where the process's own exit code and
the absence of a traceback are what is tested.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from qbench.cli import main
from qbench.files import folder_lock
from qbench.records import STATUS_OK, ResultsDocument
from qbench.sweep.config import SweepConfig
from qbench.sweep.run import RESULTS_FILE, run_sweep

EXIT_OK, EXIT_FAILED_POINTS, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
# The smallest sweep that still trains, quantizes and evaluates: 4 points, no timing.
QUICK = ["--quick", "--models", "lstm", "--backends", "torch", "--bits", "4", "--distill", "none",
         "--no-latency", "--threads", "1", "--no-progress"]
SPLITS = ("train", "train", "val", "test")  # two clips a class in train, one in val and test per four
FAKE_CONFIG = SweepConfig(models=("lstm",), bits=((4, 4),), backends=("torch",), distill=("none",),
                          qat_distill=("none",), threads=(1,))


# -- helpers -----------------------------------------------------------------------------------------


def write_tone(path: Path, freq: float = 440.0, *, rate: int = 16000, seconds: float = 0.3, channels: int = 1,
               subtype: str | None = None, value: float | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(rate * seconds)) / rate
    audio = 0.3 * np.sin(2 * np.pi * freq * t)
    if value is not None:
        audio[:] = value
    sf.write(path, np.repeat(audio[:, None], channels, axis=1) if channels > 1 else audio, rate, subtype=subtype)


def csv_folder(root: Path, n: int = 8, *, header: str = "file,labels,split", write=write_tone) -> Path:
    """``n`` clips of two classes (``write(path, freq)`` makes each) and their labels.csv."""
    root.mkdir(parents=True, exist_ok=True)
    rows = [header]
    for i in range(n):
        label = ("dog", "bird")[i % 2]
        write(root / f"{i}.wav", (300.0, 2000.0)[i % 2])
        rows.append(f"{i}.wav,{label},{SPLITS[(i // 2) % 4]}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``qbench ARGV`` run in this process."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors exit from inside main
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(err: str, message: str) -> None:
    assert "Traceback" not in err, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert message in err, err


def sweep(capsys, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    return cli(["sweep", *QUICK, "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"), *args],
               capsys)


def python_m(*argv: str, env_cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "QBENCH_CACHE": str(env_cache)}
    return subprocess.run([sys.executable, "-m", "qbench", *argv], capture_output=True, text=True, env=env,
                          timeout=300)


# -- bad options: exit 2 before any work -----------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--bits", "1"], "1 bits is not supported"),
    (["--models", "lstm,gpt5"], "unknown student(s) gpt5"),
    (["--teacher", "oracle"], "unknown teacher 'oracle'"),
    (["--backends", "torch,tensorrt"], "got 'tensorrt'"),
    (["--threads", "-1"], "SweepConfig.threads must be in"),
    (["--batch", "0"], "SweepConfig.batch must be in"),
    (["--seconds", "nan"], "DataConfig.clip_seconds must be in"),
    (["--clips-per-class", "0"], "DataConfig.clips_per_class must be in"),
    (["--seed", "-5"], "DataConfig.seed must be in"),
    (["--scale-type", "log"], "invalid choice: 'log'"),
    (["--kd-temperature", "warm"], "invalid float value: 'warm'"),
    (["--no-quant", "--qat-distill", "kd"], "drop --qat-distill"),
    (["--dataset-format", "csv"], "--dataset-format describes --data, which is missing"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
])
def test_bad_option_is_one_line_and_exit_2(args, message, tmp_path, capsys):
    code, _, err = sweep(capsys, tmp_path, *args)
    assert code == EXIT_BAD_INPUT
    assert_one_line(err, message)
    assert not (tmp_path / "out").exists()


# -- bad data: exit 2, and no folder of failed points ------------------------------------------------


def _empty_folder(root: Path) -> None:
    root.mkdir()


def _csv_missing_audio(root: Path) -> None:
    csv_folder(root)
    (root / "3.wav").unlink()


def _csv_binary(root: Path) -> None:
    csv_folder(root)
    (root / "labels.csv").write_bytes(bytes(range(256)) * 4)


def _csv_header_only(root: Path) -> None:
    csv_folder(root, n=0)


def _csv_no_label_column(root: Path) -> None:
    csv_folder(root, header="file,tags,split")


def _csv_bad_split(root: Path) -> None:
    csv_folder(root)
    (root / "labels.csv").write_text((root / "labels.csv").read_text().replace(",val", ",holdout", 1))


def _all_zero_length(root: Path) -> None:
    csv_folder(root, write=lambda path, freq: path.write_bytes(b""))


def _all_corrupt(root: Path) -> None:
    csv_folder(root, write=lambda path, freq: path.write_bytes(b"RIFF$\x00\x00\x00WAVEfmt garbage, not audio"))


def _all_nan(root: Path) -> None:
    csv_folder(root, write=lambda path, freq: write_tone(path, subtype="FLOAT", value=float("nan")))


def _esc50_without_columns(root: Path) -> None:
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "esc50.csv").write_text("a,b\n1,2\n")
    write_tone(root / "audio" / "1-x.wav")


def _speechcommands_one_clip(root: Path) -> None:
    write_tone(root / "yes" / "spk0_nohash_0.wav")


@pytest.mark.parametrize("make, data_format, message", [
    (_empty_folder, "csv", "is empty"),
    (_csv_missing_audio, "csv", "names 1 missing audio file(s)"),
    (_csv_binary, "csv", "is not a readable UTF-8 CSV file"),
    (_csv_header_only, "csv", "lists no clips"),
    (_csv_no_label_column, "csv", "no 'labels' column"),
    (_csv_bad_split, "csv", "split must be train, val or test, got 'holdout'"),
    (_all_zero_length, "csv", "split has no clips"),
    (_all_corrupt, "csv", "split has no clips"),
    (_all_nan, "csv", "split has no clips"),
    (_esc50_without_columns, "esc50", "no 'filename' column"),
    (_speechcommands_one_clip, "speechcommands", "split has no clips"),
], ids=lambda v: getattr(v, "__name__", v).lstrip("_") if callable(v) else None)
def test_unusable_data_fails_fast_with_no_results(make, data_format, message, tmp_path, capsys):
    make(tmp_path / "data")
    code, _, err = sweep(capsys, tmp_path, "--data", str(tmp_path / "data"), "--dataset-format", data_format)
    assert code == EXIT_BAD_INPUT
    assert_one_line(err, message)
    assert not (tmp_path / "out").exists()  # no folder of 'data failed' points


@pytest.mark.parametrize("what", ["missing", "a file"])
def test_data_path_that_is_not_a_folder(what, tmp_path, capsys):
    path = tmp_path / "data"
    if what == "a file":
        path.write_text("x")
    code, _, err = sweep(capsys, tmp_path, "--data", str(path), "--dataset-format", "csv")
    assert code == EXIT_BAD_INPUT
    assert_one_line(err, "does not exist" if what == "missing" else "is not a folder")


def _odd_clip(path: Path, freq: float) -> None:
    write_tone(path, freq, rate=44100, seconds=0.4, channels=2, subtype="PCM_U8")  # stereo, 8-bit, 44.1 kHz


def test_odd_but_valid_audio_succeeds_and_counts_the_bad_clip(tmp_path, capsys):
    root = csv_folder(tmp_path / "data", n=12, write=_odd_clip)
    write_tone(root / "odd_rate.wav", 300.0, rate=7350)  # an unusual sample rate, resampled
    (root / "empty.wav").write_bytes(b"")
    with (root / "labels.csv").open("a") as f:
        f.write("odd_rate.wav,dog,train\nempty.wav,bird,train\n")
    code, out, err = sweep(capsys, tmp_path, "--data", str(root), "--dataset-format", "csv")
    assert code == EXIT_OK, err
    assert "1 skipped (first " in out and "empty.wav: zero-length file" in out
    assert "Traceback" not in err
    records = ResultsDocument.load(tmp_path / "out" / RESULTS_FILE).records
    assert records and all(r["status"] == STATUS_OK for r in records)


# -- outputs: unwritable, locked, foreign ------------------------------------------------------------


def test_out_is_an_existing_file(tmp_path, capsys):
    (tmp_path / "out").write_text("not a folder")
    code, _, err = sweep(capsys, tmp_path)
    assert code == EXIT_BAD_INPUT
    assert_one_line(err, "cannot write the results folder")


def test_cache_in_an_unwritable_place(tmp_path, capsys):
    code, _, err = cli(["sweep", *QUICK, "--out", str(tmp_path / "out"), "--cache", "/proc/qbench-cache"], capsys)
    assert code == EXIT_BAD_INPUT
    assert_one_line(err, "cannot write the cache folder /proc/qbench-cache")
    assert not (tmp_path / "out").exists()


def test_a_second_sweep_into_a_locked_folder_is_refused(tmp_path, capsys):
    with folder_lock(tmp_path / "out"):  # as a running sweep holds it
        code, _, err = sweep(capsys, tmp_path)
    assert code == EXIT_BAD_INPUT
    assert_one_line(err, f"is in use by another qbench process (pid {os.getpid()})")


def test_out_holding_another_sweep_or_a_corrupt_file(tmp_path, capsys):
    run_sweep(FAKE_CONFIG, lambda p: {"metrics": {"error": 0.1}}, out_dir=tmp_path / "out", progress=False)
    code, _, err = sweep(capsys, tmp_path, "--seed", "7")
    assert code == EXIT_BAD_INPUT
    assert_one_line(err, "holds results of a different sweep config")
    (tmp_path / "out" / RESULTS_FILE).write_text('{"kind": "qbench-results", "schema_vers')
    code, _, err = sweep(capsys, tmp_path)
    assert code == EXIT_BAD_INPUT
    assert_one_line(err, "cannot read results file")


# -- exit codes of a sweep that runs, with its stages faked ------------------------------------------


@pytest.fixture
def fake_stages(monkeypatch):
    """Points measured by ``fake_stages.measure`` and no dataset or teacher to build."""
    import qbench.commands.sweep as sweep_command
    from qbench.sweep.pipeline import Pipeline

    class Fake:
        def measure(self, point):
            return {"metrics": {"error": 0.1}}

    fake = Fake()
    monkeypatch.setattr(sweep_command, "_shared_stages", lambda pipeline, **_: lambda todo: None)
    monkeypatch.setattr(Pipeline, "measure", lambda self, point: fake.measure(point))
    return fake


def test_failed_points_exit_1_with_count_and_reasons(tmp_path, capsys, fake_stages):
    long_reason = "conformance failed: error p99 9.24 / max 31.0 steps " + "detail " * 40

    def measure(point):
        if point.method == "qat":
            raise RuntimeError(long_reason)
        return {"metrics": {"error": 0.1}}

    fake_stages.measure = measure
    code, out, err = sweep(capsys, tmp_path)
    assert code == EXIT_FAILED_POINTS
    assert "1 of 3 points failed" in err and "student:lstm_w4a4/qat/none/torch: RuntimeError" in err
    assert "Traceback" not in err
    failed = ResultsDocument.load(tmp_path / "out" / RESULTS_FILE).get("student:lstm_w4a4/qat/none/torch")
    assert failed["error"] == f"RuntimeError: {long_reason}"  # the record keeps every word
    table = (tmp_path / "out" / "results.md").read_text()
    assert "whole reason in record `student:lstm_w4a4/qat/none/torch`" in table


def test_interrupt_exits_130_and_keeps_finished_points(tmp_path, capsys, fake_stages):
    def measure(point):
        if point.method == "ptq":
            raise KeyboardInterrupt
        return {"metrics": {"error": 0.1}}

    fake_stages.measure = measure
    code, _, err = sweep(capsys, tmp_path)
    assert code == EXIT_INTERRUPTED
    assert_one_line(err, "qbench sweep: interrupted")
    assert len(ResultsDocument.load(tmp_path / "out" / RESULTS_FILE).records) == 1  # the fp32 point (no KD: no teacher)


@pytest.mark.parametrize("errno_, text", [(errno.ENOSPC, "No space left on device"),
                                          (errno.EROFS, "Read-only file system")])
def test_full_disk_or_read_only_cache_is_one_line_and_corrupts_nothing(errno_, text, tmp_path, capsys,
                                                                       fake_stages):
    def measure(point):
        if point.method == "ptq":  # e.g. the model cache cannot be written
            raise OSError(errno_, text, str(tmp_path / "cache" / "models" / "x.pt"))
        return {"metrics": {"error": 0.1}}

    fake_stages.measure = measure
    code, _, err = sweep(capsys, tmp_path)
    assert code == EXIT_BAD_INPUT
    assert_one_line(err, f"cache/models/x.pt: {text}")
    doc = ResultsDocument.load(tmp_path / "out" / RESULTS_FILE)
    assert [r["status"] for r in doc.records] == [STATUS_OK]  # the finished point kept, nothing failed


def test_full_disk_while_writing_the_results_keeps_the_old_file(tmp_path, capsys, fake_stages, monkeypatch):
    import qbench.files

    real_fsync, calls = os.fsync, []

    def fsync(fd):
        if stat.S_ISREG(os.fstat(fd).st_mode):  # a file's data, not a folder's entry
            calls.append(fd)
            if len(calls) > 2:  # the empty document and the first record are written, then the disk is full
                raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(qbench.files.os, "fsync", fsync)
    code, _, err = sweep(capsys, tmp_path)
    assert code == EXIT_BAD_INPUT
    assert_one_line(err, "No space left on device")
    doc = ResultsDocument.load(tmp_path / "out" / RESULTS_FILE)  # still whole
    assert [r["id"] for r in doc.records] == ["student:lstm/fp32/none/torch"]
    assert not list((tmp_path / "out").glob(".*.tmp"))


# -- report: corrupt or foreign results ------------------------------------------------------------


@pytest.fixture
def results(tmp_path) -> Path:
    """A genuine results file of a (faked) sweep."""
    run_sweep(FAKE_CONFIG, lambda p: {"metrics": {"error": 0.1}}, out_dir=tmp_path / "res", progress=False)
    return tmp_path / "res" / RESULTS_FILE


def _edit(path: Path, change) -> Path:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.unlink(), "no results file at"),
    (lambda p: p.write_bytes(b""), "cannot read results file"),
    (lambda p: p.write_bytes(bytes(range(256))), "cannot read results file"),
    (lambda p: p.write_text('{"records": ['), "cannot read results file"),
    (lambda p: p.write_text("[1, 2, 3]"), "is not a qbench results file"),
    (lambda p: p.write_text('{"name": "some other tool", "benchmarks": []}'), "is not a qbench results file"),
    (lambda p: _edit(p, lambda d: d.update(schema_version=99)), "has results schema 99"),
    (lambda p: _edit(p, lambda d: d.pop("provenance")), "'provenance' is missing"),
    (lambda p: _edit(p, lambda d: d["records"][0].pop("status")), "has status None"),
    (lambda p: _edit(p, lambda d: d["records"].append("oops")), "is not an object with an 'id'"),
    (lambda p: _edit(p, lambda d: d["records"][1].pop("model")), "names no model"),
    (lambda p: _edit(p, lambda d: d["provenance"]["machine"].pop("arch")), "provenance.machine lacks arch"),
    (lambda p: _edit(p, lambda d: d["records"][0].update(provenance={"machine_id": "arm-x-8c"})), "mixes records"),
])
def test_report_on_a_damaged_or_foreign_file(damage, message, results, capsys):
    damage(results)
    code, _, err = cli(["report", str(results.parent)], capsys)
    assert code == EXIT_BAD_INPUT
    assert_one_line(err, message)


def test_report_into_an_unwritable_place(results, capsys):
    code, _, err = cli(["report", str(results), "--out", "/proc/qbench-report"], capsys)
    assert code == EXIT_BAD_INPUT
    assert_one_line(err, "cannot write the report folder /proc/qbench-report")


def test_report_of_a_genuine_file_succeeds(results, capsys):
    code, out, _ = cli(["report", str(results)], capsys)
    assert code == EXIT_OK and "results.md" in out


# -- the real process: exit code and no traceback -----------------------------------------------------


@pytest.mark.parametrize("case", ["out in /proc", "empty data folder", "binary results file"])
def test_python_dash_m_exits_2_without_a_traceback(case, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "garbage.json").write_bytes(bytes(range(256)))
    argv, message = {
        "out in /proc": (["sweep", *QUICK, "--out", "/proc/qbench-out"], "cannot write the results folder"),
        "empty data folder": (["sweep", *QUICK, "--data", str(tmp_path / "empty"), "--dataset-format", "csv",
                               "--out", str(tmp_path / "out")], "is empty"),
        "binary results file": (["report", str(tmp_path / "garbage.json")], "cannot read results file"),
    }[case]
    done = python_m(*argv, env_cache=tmp_path / "cache")
    assert done.returncode == EXIT_BAD_INPUT, done.stderr
    assert_one_line(done.stderr, message)
    assert not (tmp_path / "out").exists()
