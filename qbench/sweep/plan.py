"""The ordered list of points a sweep measures.

Order matters for cost, not correctness: points that share a trained model sit together, so a
trained student or QAT model is built once and measured on every backend before the next.
"""

from __future__ import annotations

import dataclasses

from qbench.distill import DistillMode
from qbench.sweep.config import SweepBackend, SweepConfig

# Students the integer engine can run: it implements the quantized LSTM recurrence.
ENGINE_MODELS = frozenset({"lstm"})
# Runtimes that also get the fp32 student, exported as float ONNX (qbench.export.fp32).
FP32_EXPORT_BACKENDS = frozenset({SweepBackend.ONNXRUNTIME, SweepBackend.OPENVINO})


@dataclasses.dataclass(frozen=True)
class Point:
    """One measured configuration. ``method`` is fp32, ptq or qat (teacher points: fp32)."""

    role: str  # "teacher" | "student"
    model: str
    method: str
    distill: DistillMode
    backend: SweepBackend
    weight_bits: int | None = None
    act_bits: int | None = None
    seed: int | None = None  # an extra training seed of an fp32 student (None: the sweep's seed)
    lstm_graph: str | None = None  # LSTM students on exported runtimes: which ONNX lowering

    @property
    def precision(self) -> str:
        return "fp32" if self.weight_bits is None else f"w{self.weight_bits}a{self.act_bits}"

    @property
    def id(self) -> str:
        name = self.model if self.weight_bits is None else f"{self.model}_{self.precision}"
        seed = "" if self.seed is None else f"@seed{self.seed}"
        graph = "" if self.lstm_graph is None else f"+{self.lstm_graph}"
        return f"{self.role}:{name}/{self.method}/{self.distill.value}/{self.backend.value}{graph}{seed}"

    def fields(self) -> dict[str, object]:
        """The columns every record of this point carries, ok or failed."""
        return {
            "role": self.role, "model": self.model, "precision": self.precision, "method": self.method,
            "distill": self.distill.value, "backend": self.backend.value,
            "weight_bits": self.weight_bits, "act_bits": self.act_bits, "seed": self.seed,
            "lstm_graph": self.lstm_graph,
        }


def lstm_graphs(model: str, backend: SweepBackend) -> list[str | None]:
    """Both ONNX lowerings of an LSTM student on an exported runtime (timed side by side); else one."""
    from qbench.export.base import LSTMGraph

    if model in ENGINE_MODELS and backend in FP32_EXPORT_BACKENDS:
        return [g.value for g in (LSTMGraph.INTEGER_SCAN, LSTMGraph.FAKEQUANT_UNROLLED)]
    return [None]


def quant_backends(cfg: SweepConfig, model: str) -> list[SweepBackend]:
    return [b for b in cfg.backends if b is not SweepBackend.ENGINE or model in ENGINE_MODELS]


def plan_points(cfg: SweepConfig) -> list[Point]:
    """Teacher first, then per student and distillation mode: the fp32 point (one per training
    seed), then (for the modes in ``qat_distill``) PTQ and QAT points, each QAT model on every backend."""
    points = [Point("teacher", cfg.teacher, "fp32", DistillMode.NONE, SweepBackend.TORCH)]
    for model in cfg.models:
        for mode in cfg.distill:
            points.append(Point("student", model, "fp32", mode, SweepBackend.TORCH))
            points += [Point("student", model, "fp32", mode, SweepBackend.TORCH, seed=s) for s in cfg.seeds]
            if mode not in cfg.qat_distill:
                continue
            # the float student on every runtime its quantized twins run on: their speed-up baseline
            points += [Point("student", model, "fp32", mode, b) for b in cfg.backends if b in FP32_EXPORT_BACKENDS]
            for w, a in cfg.bits:
                if cfg.ptq:
                    points.append(Point("student", model, "ptq", mode, SweepBackend.TORCH, w, a))
                for backend in quant_backends(cfg, model):
                    points += [Point("student", model, "qat", mode, backend, w, a, lstm_graph=g)
                               for g in lstm_graphs(model, backend)]
    return points
