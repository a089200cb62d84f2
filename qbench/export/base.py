"""Artifacts, and export/run through the backend registry (:mod:`qbench.backends`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from qbench.backends import Backend
from qbench.errors import QbenchError

Run = Callable[[np.ndarray], np.ndarray]  # (B, T, F) float32 -> (B, C) float32 logits


class FloatPrecision(str, Enum):
    """The floating-point precision a runtime computes non-integer parts in."""

    F32 = "f32"
    """fp32 everywhere (OpenVINO ``INFERENCE_PRECISION_HINT=f32``); used for every error figure."""
    DEFAULT = "default"
    """The runtime's own choice (OpenVINO CPU: bf16 where the CPU has it); latency only."""


class LSTMGraph(str, Enum):
    """How an LSTM student is lowered to ONNX (other students have one graph and ignore it)."""

    FAKEQUANT_UNROLLED = "fakequant_unrolled"
    """Brevitas' float32 graph: float MatMul on dequantized weights, fake-quantized activations, T unrolled."""
    INTEGER_SCAN = "integer_scan"
    """The integer engine's arithmetic: MatMulInteger, requantization, table Gathers, one Scan over time."""


@dataclasses.dataclass(frozen=True)
class Artifact:
    """An exported model on disk and how it is to be run."""

    backend: Backend
    path: Path  # the file the runtime loads (ONNX for ORT, IR .xml for OpenVINO)
    files: tuple[Path, ...]  # every file that ships (IR .xml + .bin; the ONNX)
    size_bytes: int  # on disk, summed over ``files``
    precision: FloatPrecision
    weight_container: str  # int8 (QCDQ + Clip), int4, int2, or per tensor int4+int8, ... (onnx_cnn.container_summary)
    weight_bits: int  # the widest weight width (a mixed precision has several)
    act_bits: int  # the widest activation width
    notes: tuple[str, ...] = ()
    lstm_graph: str | None = None  # LSTMGraph value of an LSTM student's artifact, None for other students

    def __post_init__(self) -> None:
        object.__setattr__(self, "backend", Backend(self.backend))

    def with_precision(self, precision: FloatPrecision) -> Artifact:
        return dataclasses.replace(self, precision=FloatPrecision(precision))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(backend=str(self.backend), precision=self.precision.value, path=str(self.path),
                   files=[str(f) for f in self.files], notes=list(self.notes))
        return out


def export(qmodel: nn.Module, backend: Backend | str, *, out_dir: Path, example: np.ndarray,
           name: str = "model", lstm_graph: LSTMGraph | str = LSTMGraph.FAKEQUANT_UNROLLED) -> Artifact:
    """Export a quantized student to ``backend`` under ``out_dir``; ``example`` is (B, T, F);
    ``lstm_graph`` picks an LSTM student's lowering."""
    spec = Backend(backend).spec
    if not spec.exported:
        raise QbenchError(f"{spec.name} runs in-process: it has no artifact to export")
    return spec.exporter(qmodel, out_dir=Path(out_dir), example=example, name=name, lstm_graph=LSTMGraph(lstm_graph))


def runner(artifact: Artifact, *, threads: int, **options: Any) -> Run:
    """A callable ``run(x (B, T, F)) -> logits (B, C)`` over ``artifact`` on ``threads`` threads."""
    if threads < 1:
        raise QbenchError(f"threads must be >= 1, got {threads}")
    return artifact.backend.spec.runner(artifact, threads=threads, **options)


def conformance_variants(artifact: Artifact) -> dict[str, dict[str, Any]]:
    """Named runner option sets a conformance check must pass under."""
    return artifact.backend.spec.variants(artifact)


def files_size(files: tuple[Path, ...]) -> int:
    return sum(Path(f).stat().st_size for f in files)
