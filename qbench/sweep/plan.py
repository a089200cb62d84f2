"""The ordered list of points a sweep measures.

Order matters for cost, not correctness: points that share a trained model sit together, so a
trained student or QAT model is built once and measured on every backend before the next.
"""

from __future__ import annotations

import dataclasses
import functools

from qbench.backends import REFERENCE, Backend
from qbench.distill import DistillMode
from qbench.quant.precision import Precision
from qbench.sweep.config import SweepConfig


@dataclasses.dataclass(frozen=True)
class Point:
    """One measured configuration. ``method`` is fp32, ptq or qat (teacher points: fp32)."""

    role: str  # "teacher" | "student"
    model: str
    method: str
    distill: DistillMode
    backend: Backend
    bits: Precision | None = None  # quantized points: the widths (None: fp32)
    seed: int | None = None  # an extra training seed of an fp32 student (None: the sweep's seed)
    lstm_graph: str | None = None  # LSTM students on exported runtimes: which ONNX lowering

    def __post_init__(self) -> None:
        object.__setattr__(self, "backend", Backend(self.backend))

    @property
    def precision(self) -> str:
        """``fp32`` or the widths' name (``w4a8``, ``mixed-...``)."""
        return "fp32" if self.bits is None else self.bits.name

    @property
    def weight_bits(self) -> int | None:
        return None if self.bits is None else self.bits.weight_bits

    @property
    def act_bits(self) -> int | None:
        return None if self.bits is None else self.bits.act_bits

    @property
    def id(self) -> str:
        name = self.model if self.bits is None else f"{self.model}_{self.precision}"
        seed = "" if self.seed is None else f"@seed{self.seed}"
        graph = "" if self.lstm_graph is None else f"+{self.lstm_graph}"
        return f"{self.role}:{name}/{self.method}/{self.distill.value}/{self.backend.value}{graph}{seed}"

    def fields(self) -> dict[str, object]:
        """The columns every record of this point carries, ok or failed."""
        return {
            "role": self.role, "model": self.model, "precision": self.precision, "method": self.method,
            "distill": self.distill.value, "backend": self.backend.value,
            "weight_bits": self.weight_bits, "act_bits": self.act_bits, "seed": self.seed,
            "lstm_graph": self.lstm_graph, **({"bits": str(self.bits)} if self.bits is not None and self.bits.mixed else {}),
        }


def lstm_graphs(caps: frozenset[str], backend: Backend) -> list[str | None]:
    """The ONNX lowerings of an LSTM student its backend measures side by side; else one graph."""
    from qbench.capabilities import LSTM_STUDENT

    return list(backend.spec.lstm_graphs) if LSTM_STUDENT in caps and backend.spec.lstm_graphs else [None]


def nominal_student(cfg: SweepConfig, model: str):
    """An untrained build of ``model`` at the data's shape with the sweep's options (10 classes: the
    count, unknown before user data is read, changes no layer name and no capability)."""
    import models

    options = {} if models.is_user_student(model) else cfg.model_options
    return models.build_student(model, n_mels=cfg.data.features.n_mels, n_frames=cfg.data.n_frames,
                                n_classes=10, **options)


def student_capabilities(cfg: SweepConfig, model: str) -> frozenset[str]:
    """What ``model`` can do (:mod:`qbench.capabilities`), from its :func:`nominal_student`."""
    return _capabilities(cfg, model)


@functools.lru_cache(maxsize=64)
def _capabilities(cfg: SweepConfig, model: str) -> frozenset[str]:
    from qbench.capabilities import capabilities

    try:
        net = nominal_student(cfg, model)
    except Exception:  # noqa: BLE001 - a model that cannot be built fails at its own points, with its reason
        return frozenset()
    return capabilities(net)


def quant_backends(cfg: SweepConfig, model: str) -> list[Backend]:
    """The sweep's backends that can run ``model`` (the engine only LSTM students, ...)."""
    caps = student_capabilities(cfg, model)
    return [b for b in cfg.backends if b.spec.supports(caps)]


def plan_points(cfg: SweepConfig) -> list[Point]:
    """Teacher first (when some student is distilled), then per student and distillation mode: the
    fp32 point (one per training seed), then (for the modes in ``qat_distill``) PTQ and QAT points,
    each QAT model on every backend."""
    points = [Point("teacher", cfg.teacher, "fp32", DistillMode.NONE, REFERENCE)] if cfg.needs_teacher else []
    for model in cfg.models:
        for mode in cfg.distill:
            points.append(Point("student", model, "fp32", mode, REFERENCE))
            points += [Point("student", model, "fp32", mode, REFERENCE, seed=s) for s in cfg.seeds]
            if mode not in cfg.qat_distill:
                continue
            # the float student on every runtime its quantized twins run on: their speed-up baseline
            points += [Point("student", model, "fp32", mode, b) for b in cfg.backends if b.spec.exported]
            for bits in cfg.precisions():
                if cfg.ptq:
                    points.append(Point("student", model, "ptq", mode, REFERENCE, bits))
                for backend in quant_backends(cfg, model):
                    points += [Point("student", model, "qat", mode, backend, bits, lstm_graph=g)
                               for g in lstm_graphs(student_capabilities(cfg, model), backend)]
    return points
