"""Training ahead and measuring side by side (``qbench sweep --jobs N``): every model trained once, in
worker processes, after what it learns from; the points computed by workers and timed here; the same
records as one job; a stage that fails in a worker fails its points with
its reason and the rest of the grid goes on; a rerun with everything cached starts no worker."""

from __future__ import annotations

import argparse
import logging
import re
import sys

import numpy as np
import pytest

from qbench.cli import main
from qbench.distill import DistillMode
from qbench.records import STATUS_OK, ResultsDocument
from qbench.data import build_dataset
from qbench.data.dataset import cache_path
from qbench.sweep.ahead import ahead_stages, needs, teacher_first
from qbench.sweep.config import SweepConfig
from qbench.sweep.options import quick_preset
from qbench.sweep.pipeline import Pipeline
from qbench.sweep.plan import plan_points
from qbench.sweep.ray_graph import TEACHER, Stage
from qbench.sweep.run import RESULTS_FILE
from test_ray_executor import _figures  # what a point measured, less its run's time and provenance

# Both students, distilled and not, so distilled ones and their QAT wait on the teacher; no latency
# (timed in this process either way) to keep it short.
QUICK = ["--quick", "--models", "lstm,dscnn", "--bits", "4", "--distill", "none,tkd", "--scale-type", "po2",
         "--threads", "1", "--no-latency", "--no-progress"]

FAILS_IN_TRAINING = '''
from torch import nn


class Brittle(nn.Module):
    """Runs in eval mode (the student check); raises once trained."""

    def __init__(self, n_classes):
        super().__init__()
        self.fc = nn.Linear(1, n_classes)

    def forward(self, x):
        if self.training:
            raise ValueError("brittle: no training")
        return self.fc(x.mean(dim=(1, 2))[:, None])


def build(*, n_mels, n_frames, n_classes):
    return Brittle(n_classes)
'''


def test_each_model_is_trained_once_after_what_it_learns_from(tmp_path):
    cfg = SweepConfig(seeds=(1,))
    pipe = Pipeline(cfg, cache_dir=tmp_path, progress=False)
    stages = ahead_stages(pipe, plan_points(cfg))
    assert stages[0] == TEACHER and len(stages) == len(set(stages))
    qat = {(s.model, s.distill, s.bits) for s in stages if s.kind == "qat"}
    assert qat == {(m, d, b) for m in cfg.models for d in cfg.qat_distill for b in cfg.precisions()}
    for stage in stages:
        upstream = needs(stage)
        assert all(stages.index(s) < stages.index(stage) for s in upstream)  # listed before what needs it
        assert (TEACHER in upstream) == (stage.kind != "teacher" and stage.distill is not DistillMode.NONE)
        if stage.kind == "qat":
            assert Stage("student", stage.model, stage.distill) in upstream
    assert Stage("qat", "lstm", DistillMode.TKD, bits=cfg.precisions()[0]).name(cfg) == \
        f"qat/lstm/tkd/{cfg.precisions()[0]}"  # as Pipeline.once names it in a StageFailed reason


def test_jobs_default_to_qbench_jobs_else_the_usable_cores(monkeypatch):
    from qbench.commands.sweep import resolve_jobs
    from qbench.provenance import machine_info

    args = argparse.Namespace(jobs=None, executor="local")
    monkeypatch.setenv("QBENCH_JOBS", "3")
    assert resolve_jobs(args) == 3
    monkeypatch.delenv("QBENCH_JOBS")
    assert resolve_jobs(args) == machine_info()["usable_cores"]
    assert resolve_jobs(argparse.Namespace(jobs=2, executor="local")) == 2


@pytest.mark.parametrize("argv, env, message", [
    (["--jobs", "0"], None, "--jobs must be between 1 and 1024, got 0"),
    ([], "many", "$QBENCH_JOBS must be a whole number, got 'many'"),
    (["--jobs", "2", "--executor", "ray"], None, "--jobs is for the in-process executor"),
])
def test_bad_jobs_fail_in_one_line_before_any_work(argv, env, message, tmp_path, capsys, monkeypatch):
    import sys

    if env is not None:
        monkeypatch.setenv("QBENCH_JOBS", env)
    monkeypatch.setitem(sys.modules, "ray", object())  # as if Ray were installed: --jobs is what is wrong
    assert main(["sweep", *QUICK, *argv, "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_a_grid_trained_ahead_records_what_one_job_records(tmp_path, capsys):
    def sweep(name: str, *extra: str) -> ResultsDocument:
        assert main(["sweep", *QUICK, "--out", str(tmp_path / name), "--cache", str(tmp_path / f"cache-{name}"),
                     *extra]) == 0
        return ResultsDocument.load(tmp_path / name / RESULTS_FILE)

    one = sweep("one", "--jobs", "1")
    ahead = sweep("ahead", "--jobs", "2")
    out = capsys.readouterr().out
    assert out.count(" trained in ") == 7 and "/7: teacher trained in " in out  # teacher, 4 students, 2 QAT (tkd)
    assert out.count(" started\n") == 7 and out.index("ahead: teacher started") < out.index("/7: teacher trained")
    assert [r["id"] for r in ahead.records] == [r["id"] for r in one.records]
    for ours, theirs in zip(ahead.records, one.records):
        assert ours["status"] == STATUS_OK, ours["error"]
        assert _figures(ours) == _figures(theirs), ours["id"]  # trained alike: same errors, sizes, conformance
    assert ahead.provenance["executor"]["kind"] == "local" and ahead.provenance["executor"]["jobs"] == 2
    assert "executor" not in one.provenance
    # the QAT workers calibrated the PTQ models and cached them; this process loaded them (same figures)
    assert len(list((tmp_path / "cache-ahead" / "models").glob("ptq-*.pt"))) == 2
    measured = ahead.provenance["executor"]["measured"]
    assert measured["points"] == len(one.records)  # computed side by side too
    # by the training workers, each group as soon as its models were trained and a worker was free
    assert measured["with_training"] == measured["groups"] == ahead.provenance["executor"]["groups_measured"]
    assert out.count("latency is timed after the last") == measured["groups"]
    # everything cached: a re-measure trains nothing, and measures side by side again
    again = sweep("ahead", "--jobs", "2", "--fresh")
    assert not re.search(r"^ahead[ :]", capsys.readouterr().out, re.M) and "stages" not in again.provenance["executor"]
    assert [_figures(r) for r in again.records] == [_figures(r) for r in ahead.records]


def test_a_stage_that_fails_in_a_worker_fails_its_points_with_its_reason(tmp_path, capsys):
    (tmp_path / "brittle.py").write_text(FAILS_IN_TRAINING)
    argv = ["sweep", *QUICK, "--models", f"lstm,{tmp_path / 'brittle.py'}:build", "--distill", "none",
            "--backends", "torch", "--jobs", "2", "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache")]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "brittle.py:build/none/0 failed: ValueError: brittle: no training" in captured.out  # as it happened
    assert "Traceback" in captured.err  # not a user error: where it broke
    records = ResultsDocument.load(tmp_path / "out" / RESULTS_FILE).records
    brittle = [r for r in records if r["model"] != "lstm"]
    assert brittle and all(r["status"] != STATUS_OK and "brittle: no training" in r["error"] for r in brittle)
    assert all(r["status"] == STATUS_OK for r in records if r["model"] == "lstm")  # the rest of the grid went on


def test_points_computed_by_workers_are_timed_here_afterwards(tmp_path, capsys):
    """With latency on, the workers' records come back latency-pending and this process times them
    after the last worker: every timed figure is there, and the records say where and when."""
    argv = ["sweep", "--quick", "--models", "lstm", "--bits", "4", "--distill", "none", "--scale-type", "po2",
            "--backends", "torch,engine", "--threads", "1", "--no-progress", "--jobs", "2",
            "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("latency is timed after the last") == 2  # the training workers measured both groups
    doc = ResultsDocument.load(tmp_path / "out" / RESULTS_FILE)
    assert doc.provenance["executor"]["measured"] == {**doc.provenance["executor"]["measured"], "groups": 2,
                                                      "points": len(doc.records)}
    for r in doc.records:
        assert r["status"] == STATUS_OK, r["error"]
        assert "latency_pending" not in r
        assert r["provenance"]["compute"]["executor"] == "local"
        assert r["provenance"]["compute"]["threads"]["scoring_and_conformance"] == 1
        if r["method"] == "ptq":
            continue  # not timed: its QAT twin is
        assert r["latency"]["b1_t1"]["n"] >= 5, r["id"]  # the Brevitas QAT model too: loaded here from the cache
        assert r["provenance"]["latency"]["when"].startswith("after every worker finished")


KILLED_PARENT = """
import os, sys, time
from qbench.pool import worker_pool
pool = worker_pool(1)
pid = pool.submit(os.getpid).result()
pool.submit(time.sleep, 120)
print(pid, flush=True)
os.kill(os.getpid(), 9)  # as kill -9 or the OOM killer: no shutdown runs
"""


@pytest.mark.skipif(sys.platform != "linux", reason="the kernel's parent-death signal is Linux's")
def test_workers_die_with_a_sweep_killed_outright(tmp_path):
    import subprocess
    import time

    done = subprocess.run([sys.executable, "-c", KILLED_PARENT], capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr[-2000:]
    worker = int(done.stdout.split()[0])

    def alive() -> bool:  # a zombie waiting for its new parent to reap it is dead
        try:
            with open(f"/proc/{worker}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and alive():
        time.sleep(0.2)
    assert not alive(), "the worker outlived the sweep's process"


def _two_datasets(tmp_path, **changes) -> Pipeline:
    """A distilled grid whose teacher learns from its own, bigger draw of 1 s clips."""
    cfg = quick_preset(SweepConfig()).replace(teacher_clips_per_class=16, **changes)
    assert cfg.teacher_data != cfg.data
    return Pipeline(cfg, cache_dir=tmp_path / "cache", progress=False)


def test_the_teacher_trains_on_its_own_data_while_the_sweeps_builds(tmp_path):
    pipe = _two_datasets(tmp_path)
    lines = []
    with teacher_first(pipe, jobs=2, report=lines.append) as started:
        assert lines[-1] == "ahead: teacher started" and list(started) == [TEACHER]
        assert cache_path(pipe.cfg.teacher_data, pipe.cache_dir).exists()  # built before the teacher started
        built_here = pipe.stage_seconds["data"]
        student = pipe.dataset()
        outcome = started[TEACHER][0].result()
    assert lines[0] == "data: the teacher's dataset first; the sweep's builds while the teacher trains"
    assert outcome.error is None and pipe.teacher_file().exists()  # trained into the cache by the worker
    assert pipe.stage_seconds["data"] > built_here  # the sweep's data booked after the teacher's
    teacher = pipe.teacher_dataset()  # loaded from the cache
    assert teacher.from_cache and not student.from_cache and len(teacher.train.x) > len(student.train.x)
    fresh = build_dataset(pipe.cfg.teacher_data, cache_dir=tmp_path / "other", progress=False)
    for ours, theirs in zip(teacher.splits().values(), fresh.splits().values()):
        assert np.array_equal(ours.x, theirs.x) and np.array_equal(ours.y, theirs.y)
    # with the datasets cached (or one job, or no teacher to train) nothing starts
    with teacher_first(pipe, jobs=2, report=pytest.fail) as started:
        assert started == {}


def test_one_job_starts_nothing_first(tmp_path):
    pipe = _two_datasets(tmp_path)
    with teacher_first(pipe, jobs=1, report=pytest.fail) as started:
        assert started == {}
    assert not cache_path(pipe.cfg.teacher_data, pipe.cache_dir).exists()


def test_a_failing_sweep_dataset_stops_the_teacher(tmp_path):
    pipe = _two_datasets(tmp_path)
    with pytest.raises(RuntimeError, match="bad data"):
        with teacher_first(pipe, jobs=2, report=lambda line: None) as started:
            future = started[TEACHER][0]
            raise RuntimeError("bad data")
    assert future.done() and not pipe.teacher_file().exists()  # stopped, not left to train for minutes


def test_a_cold_grid_with_the_teachers_own_data_records_what_one_job_records(tmp_path, capsys):
    """The teacher trains first, counted as one of the jobs, and the grid's records are one job's."""
    from qbench.api import prepare
    from qbench.sweep.run import measure_or_fail

    def records(jobs: int) -> list[dict]:
        pipe = _two_datasets(tmp_path / f"jobs{jobs}", models=("lstm",), bits=((4, 4),), distill=(DistillMode.TKD,),
                             backends=("torch",), latency=False)
        todo = plan_points(pipe.cfg)
        prepare(pipe, todo=todo, jobs=jobs)
        assert pipe.stage_seconds["teacher"] > 0
        return [measure_or_fail(p, pipe.measure, logging.getLogger("test")) for p in todo]

    ahead = records(2)
    out = capsys.readouterr().out
    assert "data: the teacher's dataset first" in out and out.count("ahead: teacher started") == 1
    assert out.index("ahead: teacher started") < out.index("ahead 1/3: teacher trained in ")
    one = records(1)
    assert [r["id"] for r in ahead] == [r["id"] for r in one]
    for ours, theirs in zip(ahead, one):
        assert ours["status"] == STATUS_OK, ours["error"]
        assert _figures(ours) == _figures(theirs), ours["id"]
