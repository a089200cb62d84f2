"""``kill -9`` in the middle of a real sweep loses no finished point and corrupts no file; the resumed
sweep's error figures equal those of a sweep that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from qbench.cli import main
from qbench.errors import QbenchError
from qbench.files import folder_lock
from qbench.records import STATUS_OK, ResultsDocument
from qbench.sweep.config import SweepConfig
from qbench.sweep.plan import plan_points
from qbench.sweep.run import RESULTS_FILE, run_sweep

# Four points (fp32, PTQ, QAT on PyTorch and on the integer engine; no KD, so no teacher): the kill lands
# after the first is recorded and, with QAT's training still ahead, before the last.
ARGS = ["--quick", "--models", "lstm", "--backends", "torch,engine", "--bits", "4", "--distill", "none",
        "--scale-type", "po2", "--no-latency", "--threads", "1", "--no-progress"]
POLL_S = 0.02  # how often the killer looks at the results file
TIMEOUT_S = 300  # a sweep that has not recorded a point by then is broken, not slow


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Two tone classes in a labels.csv folder: no speech synthesis, so the sweep starts at once."""
    root = tmp_path_factory.mktemp("data")
    rows = ["file,labels,split"]
    rate = 16000
    for i in range(24):
        label, freq = (("low", 300.0), ("high", 2500.0))[i % 2]
        t = np.arange(int(rate * 0.5)) / rate
        sf.write(root / f"{i}.wav", 0.3 * np.sin(2 * np.pi * freq * (1 + 0.01 * i) * t), rate)
        rows.append(f"{i}.wav,{label},{('train', 'train', 'val', 'test')[(i // 2) % 4]}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def _command(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "qbench", "sweep", *ARGS, "--data", str(data), "--dataset-format", "csv",
            "--out", str(out)]


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "QBENCH_CACHE": str(cache)}


def _records(out: Path) -> list[dict]:
    """The records on disk, read as a second process would read them (a torn file fails here)."""
    path = out / RESULTS_FILE
    return ResultsDocument.load(path).records if path.exists() else []


def _kill_after_first_point(data: Path, out: Path, cache: Path) -> int:
    """Start the sweep, SIGKILL it once a point is recorded; the number of records it left."""
    proc = subprocess.Popen(_command(data, out), env=_env(cache), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not _records(out):
            assert proc.poll() is None, f"the sweep ended before recording a point: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "no point recorded"
            time.sleep(POLL_S)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return len(_records(out))


def _metrics(out: Path) -> dict[str, dict]:
    doc = json.loads((out / RESULTS_FILE).read_text())
    assert all(r["status"] == STATUS_OK for r in doc["records"]), [r["error"] for r in doc["records"]]
    return {r["id"]: r["metrics"] for r in doc["records"]}


def test_killed_sweep_resumes_to_the_figures_of_an_uninterrupted_one(data, tmp_path):
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    left = _kill_after_first_point(data, killed, tmp_path / "cache-killed")
    assert left >= 1
    first = _records(killed)

    done = subprocess.run(_command(data, killed), env=_env(tmp_path / "cache-killed"), capture_output=True,
                          text=True, timeout=TIMEOUT_S)  # the dead sweep's lock file does not block this
    assert done.returncode == 0, done.stderr
    resumed = _records(killed)
    assert resumed[:left] == first  # finished points were kept as they were, not measured again
    assert not list(killed.glob(".*.tmp")) and not (killed / ".lock").exists()

    # the reference: the same sweep, never interrupted, with a cache of its own (trained from scratch);
    # in this process, which saves starting a third one (training is bit-exact for a seed and threads)
    assert main(_command(data, whole)[3:] + ["--cache", str(tmp_path / "cache-whole")]) == 0
    assert _metrics(killed) == _metrics(whole)
    assert [r["id"] for r in resumed] == [r["id"] for r in _records(whole)]


# -- the same guarantees in-process, fast ---------------------------------------------------------------

SMALL = SweepConfig(models=("lstm",), bits=((4, 4),), backends=("torch",), distill=("none",),
                    qat_distill=("none",), threads=(1,))


def _fake(point) -> dict:
    return {"metrics": {"error": 0.25}}


def test_a_rerun_removes_temp_files_a_killed_writer_left(tmp_path):
    run_sweep(SMALL, _fake, out_dir=tmp_path, progress=False)
    torn = tmp_path / f".{RESULTS_FILE}.99999.deadbeef.tmp"
    torn.write_text('{"half": ')  # what atomic_write leaves when killed before its rename
    before = (tmp_path / RESULTS_FILE).read_text()
    run_sweep(SMALL, _fake, out_dir=tmp_path, progress=False)
    assert not torn.exists() and (tmp_path / RESULTS_FILE).read_text() == before


def test_fresh_is_refused_while_another_sweep_holds_the_folder(tmp_path):
    run_sweep(SMALL, _fake, out_dir=tmp_path, progress=False)
    with folder_lock(tmp_path), pytest.raises(QbenchError, match="in use by another qbench process"):
        run_sweep(SMALL, _fake, out_dir=tmp_path, progress=False, fresh=True)
    planned = len(plan_points(SMALL))
    assert len(ResultsDocument.load(tmp_path / RESULTS_FILE).records) == planned  # nothing was discarded
    calls = []
    run_sweep(SMALL, lambda p: calls.append(p.id) or _fake(p), out_dir=tmp_path, progress=False, fresh=True)
    assert len(calls) == planned and not (tmp_path / ".lock").exists()


def test_a_failing_shared_stage_leaves_no_folder(tmp_path):
    def prepare(todo):
        raise QbenchError("dataset folder /data is empty")

    with pytest.raises(QbenchError, match="is empty"):
        run_sweep(SMALL, _fake, out_dir=tmp_path / "out", progress=False, prepare=prepare)
    assert not (tmp_path / "out").exists()
