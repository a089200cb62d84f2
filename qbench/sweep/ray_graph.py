"""The Ray executor's task graph: which task trains what, and which points each task measures.

Two kinds of task (:mod:`qbench.sweep.ray_executor` runs them):

* a **stage** task trains one model into the cache: the teacher, or one fp32 student per
  (model, distillation mode, seed). Every point that needs a student depends on its one stage
  task, so no two tasks train the same student, and a distilled student waits for the teacher
  while an undistilled one trains beside it.
* a **group** task measures the points that share in-memory stages, in plan order, in one
  Pipeline: the teacher point; the fp32 points of one student (PyTorch and each exported
  runtime); the PTQ and QAT points of one (student, bit pair), which also calibrate PTQ and train
  QAT once for all of that QAT model's backends.
"""

from __future__ import annotations

import dataclasses

from qbench.distill import DistillMode
from qbench.quant.precision import Precision
from qbench.sweep.config import SweepConfig
from qbench.sweep.plan import Point


@dataclasses.dataclass(frozen=True)
class Stage:
    """A model a stage task trains (or loads from the cache): the teacher, one fp32 student, or (trained
    ahead in-process, :mod:`qbench.sweep.ahead`) one QAT model."""

    kind: str  # "teacher" | "student" | "qat"
    model: str | None = None
    distill: DistillMode | None = None
    seed: int | None = None  # a student's training seed (None: the sweep's own)
    bits: Precision | None = None  # a QAT model's widths

    @property
    def needs_teacher(self) -> bool:
        return self.kind != "teacher" and self.distill is not DistillMode.NONE

    def key(self, cfg: SweepConfig) -> tuple:
        """The stage's :meth:`Pipeline.once` key in a sweep of ``cfg`` (``("student", "lstm", "kd", 0)``)."""
        if self.kind == "teacher":
            return ("teacher",)
        if self.kind == "qat":
            return ("qat", self.model, self.distill.value, str(self.bits))
        return ("student", self.model, self.distill.value, cfg.seed if self.seed is None else self.seed)

    def name(self, cfg: SweepConfig) -> str:
        """As :meth:`Pipeline.once` names the stage in a ``StageFailed`` reason (``student/lstm/kd/0``)."""
        return "/".join(map(str, self.key(cfg)))


TEACHER = Stage("teacher")


@dataclasses.dataclass(frozen=True)
class Group:
    """Points one task measures, in plan order, after the stages it ``needs``."""

    key: tuple
    points: tuple[Point, ...]
    needs: tuple[Stage, ...]

    @property
    def name(self) -> str:
        """``quant/lstm/kd/w4a4``, ``fp32/dscnn/none``, ``teacher``."""
        return "/".join(str(k) for k in self.key if k is not None)


def group_key(point: Point) -> tuple:
    """The group a point is measured in (see the module docstring)."""
    if point.role == "teacher":
        return ("teacher",)
    if point.method == "fp32":
        return ("fp32", point.model, point.distill.value, point.seed)
    return ("quant", point.model, point.distill.value, str(point.bits))


def _needs(cfg: SweepConfig, point: Point) -> tuple[Stage, ...]:
    """The trained models ``point``'s group loads: its student (and the teacher that distilled it); a
    distilled fp32 point compares with the undistilled student of its seed."""
    if point.role == "teacher":
        return (TEACHER,)
    seed = point.seed if point.method == "fp32" and point.seed != cfg.seed else None  # one key per student
    student = Stage("student", point.model, point.distill, seed)
    needs = [TEACHER, student] if student.needs_teacher else [student]
    if point.method == "fp32" and point.distill is not DistillMode.NONE and DistillMode.NONE in cfg.distill:
        needs.append(Stage("student", point.model, DistillMode.NONE, seed))
    return tuple(needs)


def task_graph(cfg: SweepConfig, todo: list[Point]) -> tuple[list[Stage], list[Group]]:
    """The stage tasks (teacher first, each stage once) and group tasks that measure ``todo``."""
    points: dict[tuple, list[Point]] = {}
    needs: dict[tuple, tuple[Stage, ...]] = {}
    for point in todo:
        key = group_key(point)
        points.setdefault(key, []).append(point)
        needs.setdefault(key, _needs(cfg, point))
    groups = [Group(key, tuple(pts), needs[key]) for key, pts in points.items()]
    needed = [s for g in groups for s in g.needs]
    stages = list(dict.fromkeys([TEACHER, *needed] if TEACHER in needed else needed))
    return stages, groups
