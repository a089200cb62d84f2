"""``qbench sweep --executor ray``: the same records as in-process, latency timed on the driver, and a
killed worker or driver loses no finished point.

The tests that start local Ray clusters (2 CPUs) take about two minutes on a 2-core machine: they
carry the ``ray`` marker and are skipped unless it is selected (``python -m pytest -m ray``; CI runs
that after the default suite). The others run in the default suite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from qbench.cli import main
from qbench.distill import DistillMode
from qbench.errors import QbenchError
from qbench.records import LATENCY_PENDING, STATUS_OK, ResultsDocument
from qbench.sweep.config import SweepConfig
from qbench.sweep.plan import Point, plan_points
from qbench.sweep.ray_graph import TEACHER, Stage, task_graph
from qbench.sweep.run import RESULTS_FILE, run_sweep

# The e2e quick grid with output KD besides none, so distilled students wait for the teacher.
QUICK = ["--quick", "--models", "lstm,dscnn", "--bits", "4", "--distill", "none,kd", "--scale-type", "po2",
         "--threads", "1", "--no-progress"]
VOLATILE = {"seconds", "provenance", "latency", "latency_default_precision"}  # the run's, not the point's
TIMEOUT_S = 600  # a Ray sweep of the quick grid that has not finished by then is broken, not slow
POLL_S = 0.05


# -- without a cluster ------------------------------------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    from qbench.commands import sweep as sweep_command

    parser = argparse.ArgumentParser()
    sweep_command.add_arguments(parser)
    return parser.parse_args(argv)


def test_the_executor_is_not_part_of_the_sweep_config():
    """A grid run with Ray resumes a local run's folder and vice versa: same config, same key."""
    from qbench.sweep.options import config_from_args
    from qbench.sweep.run import sweep_name

    local = config_from_args(_parse(QUICK))
    on_ray = config_from_args(_parse([*QUICK, "--executor", "ray", "--ray-address", "auto"]))
    assert on_ray == local and sweep_name(on_ray) == sweep_name(local)


@pytest.mark.parametrize("argv, message", [
    (["--ray-address", "auto"], "--ray-address names the cluster of --executor ray"),
    (["--executor", "ray"], 'needs Ray, which is not installed: pip install -e ".[ray]"'),
])
def test_executor_options_fail_in_one_line_before_any_work(argv, message, tmp_path, capsys, monkeypatch):
    import qbench.sweep.pipeline as pipeline

    def no_work(*args, **kwargs):
        raise AssertionError("work started despite a bad argument")

    monkeypatch.setattr(pipeline.Pipeline, "__init__", no_work)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert main(["sweep", *argv, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_each_student_trains_in_one_task_after_what_it_learns_from():
    cfg = SweepConfig(seeds=(1,))
    todo = plan_points(cfg)
    stages, groups = task_graph(cfg, todo)
    assert stages[0] == TEACHER and len(stages) == len(set(stages))
    students = {(s.model, s.distill, s.seed) for s in stages if s.kind == "student"}
    assert students == {(m, d, s) for m in cfg.models for d in cfg.distill for s in (None, 1)}
    assert all(s.needs_teacher == (s.kind == "student" and s.distill is not DistillMode.NONE) for s in stages)
    assert sorted(p.id for g in groups for p in g.points) == sorted(p.id for p in todo)  # each point once
    for g in groups:
        assert (TEACHER in g.needs) == (g.key == ("teacher",) or g.key[2] != "none")  # only what it learnt from
        assert len({(p.model, p.distill, p.bits) for p in g.points}) == 1  # one trained model per group
        if g.key[0] == "quant":  # PTQ and QAT of one student, on every backend, in one task
            assert {p.method for p in g.points} == {"ptq", "qat"}
            assert Stage("student", g.points[0].model, g.points[0].distill) in g.needs
    tkd = next(g for g in groups if g.key == ("fp32", "lstm", "tkd", 1))
    assert Stage("student", "lstm", DistillMode.NONE, 1) in tkd.needs  # its change against no KD, same seed
    # a resumed sweep submits only what is left
    left = [p for p in todo if p.method == "qat" and p.model == "dscnn"]
    stages, groups = task_graph(cfg, left)
    assert {s.name(cfg) for s in stages} == {"teacher", "student/dscnn/tkd/0"}
    assert all(g.key[0] == "quant" for g in groups)
    # an undistilled grid has no teacher stage at all
    plain = SweepConfig(distill=("none",), qat_distill=("none",))
    stages, groups = task_graph(plain, plan_points(plain))
    assert TEACHER not in stages and all(TEACHER not in g.needs for g in groups)


def _run(x: np.ndarray) -> np.ndarray:
    return x.sum(axis=(1, 2))[:, None]


def _runner_factory(threads: int):
    return _run


class _Pipe:
    """What qbench.sweep.points.latency needs of a Pipeline."""

    cfg = SweepConfig(threads=(1,), latency_repeats=3)
    stage_seconds: dict = {}
    latency_sink = None

    def latency_inputs(self):
        return {1: np.ones((1, 3, 2), np.float32), 4: np.ones((4, 3, 2), np.float32)}

    def thread_counts(self):
        return [1]

    @contextlib.contextmanager
    def timed(self, stage):
        yield


def test_latency_asked_for_in_a_task_is_timed_by_the_driver():
    from qbench.sweep import points
    from qbench.sweep.deferred import capture_latency, detach, time_deferred

    pytest.importorskip("ray")  # the factories travel as Ray pickles them
    pipe = _Pipe()
    with capture_latency(pipe) as calls:
        record = {"id": "p", "status": STATUS_OK, "latency": points.latency(pipe, _runner_factory),
                  "more": {"at_one_thread": points.latency(pipe, _runner_factory, threads=(1,))}}
    assert pipe.latency_sink is None  # the driver's pipeline times again
    deferred = detach(record, calls)
    assert record["latency"] == {} and record["more"]["at_one_thread"] == {}  # stored: not measured yet
    assert [d.path for d in deferred] == [("latency",), ("more", "at_one_thread")]
    point = Point("student", "lstm", "fp32", DistillMode.NONE, "torch")
    time_deferred(pipe, point, record, deferred)
    assert set(record["latency"]) == {"b1_t1", "b4_t1"} and record["latency"]["b4_t1"]["batch"] == 4
    assert record["more"]["at_one_thread"]["b1_t1"]["threads"] == 1


def test_a_runner_that_cannot_travel_fails_its_point_on_the_driver():
    from qbench.sweep import points
    from qbench.sweep.deferred import capture_latency, detach, time_deferred

    pytest.importorskip("ray")
    pipe, lock = _Pipe(), __import__("threading").Lock()
    with capture_latency(pipe) as calls:
        record = {"id": "p", "latency": points.latency(pipe, lambda threads, _lock=lock: _run)}
    deferred = detach(record, calls)
    assert deferred[0].factory is None and "lock" in deferred[0].problem
    point = Point("student", "lstm", "fp32", DistillMode.NONE, "onnxruntime")
    with pytest.raises(QbenchError, match="cannot be sent to the driver"):
        time_deferred(pipe, point, record, deferred)


SMALL = SweepConfig(models=("lstm",), bits=((4, 4),), backends=("torch",), distill=("none",),
                    qat_distill=("none",), threads=(1,))


class _Backwards:
    """An executor that finishes points last first, each with its latency pending, then times them."""

    def prepare(self, todo):
        pass

    def records(self, todo, log):
        for point in reversed(todo):
            yield {"id": point.id, **point.fields(), "status": STATUS_OK, "error": None, "metrics": {"error": 0.5},
                   "latency": {}, LATENCY_PENDING: True, "seconds": 0.0}
        for point in todo:
            yield {"id": point.id, **point.fields(), "status": STATUS_OK, "error": None, "metrics": {"error": 0.5},
                   "latency": {"b1_t1": {"median_ms": 1.0}}, "seconds": 0.0}


def test_records_of_any_executor_are_stored_in_plan_order_and_pending_ones_resume(tmp_path):
    doc = run_sweep(SMALL, None, out_dir=tmp_path, progress=False, executor=_Backwards())
    assert [r["id"] for r in doc.records] == [p.id for p in plan_points(SMALL)]
    assert not any(LATENCY_PENDING in r for r in doc.records)
    doc.records[0][LATENCY_PENDING] = True  # as a driver killed before timing it leaves it
    assert doc.records[0]["id"] not in doc.finished_ids()  # measured again on resume


# -- on a local Ray cluster -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_selected(request):
    if "ray" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("starts local Ray clusters (about 2 min): run with -m ray")
    pytest.importorskip("ray", reason='Ray is not installed: pip install -e ".[ray]"')


@pytest.fixture(scope="module")
def in_process(ray_selected, tmp_path_factory):
    """The quick grid measured in-process: the reference every Ray run must reproduce."""
    out = tmp_path_factory.mktemp("in-process")
    assert main(["sweep", *QUICK, "--out", str(out / "out"), "--cache", str(out / "cache")]) == 0
    return ResultsDocument.load(out / "out" / RESULTS_FILE)


def _figures(record: dict) -> dict:
    """What a point measured, less what depends on the run: its time, provenance and latency, the
    training's wall time, and OpenVINO's file size (OpenVINO names IR nodes from a per-process
    counter, so an .xml's length depends on what the process converted before)."""
    out = {k: v for k, v in record.items() if k not in VOLATILE}
    if isinstance(out.get("train"), dict):
        out["train"] = {k: v for k, v in out["train"].items() if k != "train_seconds"}
    if record.get("backend") == "openvino":
        out.pop("file_bytes", None)
    return json.loads(json.dumps(out, allow_nan=True), parse_constant=lambda c: "NaN")  # NaN == NaN


def _latency_keys(record: dict) -> dict:
    return {k: sorted(record.get(k) or {}) for k in ("latency", "latency_default_precision")}


@pytest.mark.ray
def test_a_grid_on_ray_records_what_the_grid_in_process_records(in_process, tmp_path):
    from qbench.report import accuracy_table, summary_table

    assert main(["sweep", *QUICK, "--executor", "ray", "--out", str(tmp_path / "out"),
                 "--cache", str(tmp_path / "cache")]) == 0
    on_ray = ResultsDocument.load(tmp_path / "out" / RESULTS_FILE)
    assert [r["id"] for r in on_ray.records] == [r["id"] for r in in_process.records]
    for ours, theirs in zip(on_ray.records, in_process.records):
        assert ours["status"] == STATUS_OK, ours["error"]
        assert _figures(ours) == _figures(theirs), ours["id"]  # errors, sizes, agreement, conformance
        assert _latency_keys(ours) == _latency_keys(theirs), ours["id"]  # timed for the same batches and threads
        assert LATENCY_PENDING not in ours
        compute, timed = ours["provenance"]["compute"], ours["provenance"].get("latency")
        assert compute["executor"] == "ray" and compute["threads"]["scoring_and_conformance"] == 1
        assert compute["threads"]["student_training"] == 1
        assert (timed is not None) == bool(ours["latency"])  # timed on the driver, said so
    assert summary_table(on_ray.records) == summary_table(in_process.records)
    assert accuracy_table(on_ray.records) == accuracy_table(in_process.records)
    assert on_ray.provenance["executor"]["kind"] == "ray" and on_ray.provenance["executor"]["cpus"] == 2


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" ", 1)
        except OSError:
            continue
        ppid = int(rest.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(pid))
    return tree


def _descendants(pid: int) -> list[int]:
    tree, out, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _records(out: Path) -> list[dict]:
    path = out / RESULTS_FILE
    return ResultsDocument.load(path).records if path.exists() else []


def _wait(proc: subprocess.Popen, what: str, done) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not done():
        assert proc.poll() is None, f"the sweep ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(POLL_S)


@pytest.mark.ray
def test_a_killed_worker_and_a_killed_driver_lose_no_point(in_process, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    command = [sys.executable, "-m", "qbench", "sweep", *QUICK, "--no-latency", "--executor", "ray",
               "--out", str(out), "--cache", str(cache)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    started: set[int] = set()
    try:
        _wait(proc, "a point was recorded", lambda: _records(out))
        busy: list[int] = []

        def a_task_runs() -> bool:
            started.update(_descendants(proc.pid))
            busy[:] = [p for p in _descendants(proc.pid) if _title(p).startswith("ray::qbench ")]
            return bool(busy)

        _wait(proc, "a task ran", a_task_runs)
        os.kill(busy[0], signal.SIGKILL)  # Ray runs its task again; the sweep goes on
        at_kill = len(_records(out))
        _wait(proc, "a point was recorded after the worker died", lambda: len(_records(out)) > at_kill)
        started.update(_descendants(proc.pid))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in started:  # Ray's agents outlive a killed driver: end the processes this test started
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    kept = _records(out)
    assert 0 < len(kept) < len(in_process.records)

    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)  # resumes
    assert done.returncode == 0, done.stderr
    resumed = _records(out)
    by_id = {r["id"]: r for r in resumed}
    assert all(by_id[k["id"]] == k for k in kept)  # finished points were kept as they were, not redone
    assert [r["id"] for r in resumed] == [r["id"] for r in in_process.records]
    for ours, theirs in zip(resumed, in_process.records):
        assert ours["status"] == STATUS_OK, ours["error"]  # the killed worker's points were retried, not failed
        assert _figures(ours) == _figures(theirs), ours["id"]
    assert all(math.isfinite(r["seconds"]) for r in resumed)
