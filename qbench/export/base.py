"""Backends, artifacts and the exporter/runner registries."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from qbench.errors import QbenchError

Run = Callable[[np.ndarray], np.ndarray]  # (B, T, F) float32 -> (B, C) float32 logits


class Backend(str, Enum):
    """A runtime a quantized student is exported to."""

    ORT = "onnxruntime"
    """ONNX Runtime, CPU execution provider, running the QCDQ ONNX graph."""
    OPENVINO = "openvino"
    """OpenVINO CPU plugin, running IR converted from the QCDQ ONNX graph."""


class Precision(str, Enum):
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
    precision: Precision
    weight_container: str  # int8 (QCDQ + Clip), int4, int2
    weight_bits: int
    act_bits: int
    notes: tuple[str, ...] = ()
    lstm_graph: str | None = None  # LSTMGraph value of an LSTM student's artifact, None for other students

    def with_precision(self, precision: Precision) -> Artifact:
        return dataclasses.replace(self, precision=Precision(precision))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(backend=self.backend.value, precision=self.precision.value, path=str(self.path),
                   files=[str(f) for f in self.files], notes=list(self.notes))
        return out


Exporter = Callable[..., Artifact]
RunnerFactory = Callable[..., Run]

_EXPORTERS: dict[Backend, Exporter] = {}
_RUNNERS: dict[Backend, RunnerFactory] = {}
_VARIANTS: dict[Backend, Callable[[Artifact], dict[str, dict[str, Any]]]] = {}


def register_exporter(backend: Backend) -> Callable[[Exporter], Exporter]:
    """Register ``exporter(qmodel, *, out_dir, example, name, lstm_graph) -> Artifact`` for ``backend``."""

    def deco(fn: Exporter) -> Exporter:
        _EXPORTERS[backend] = fn
        return fn

    return deco


def register_runner(backend: Backend, *, conformance_variants: Callable[[Artifact], dict[str, dict[str, Any]]]):
    """Register ``factory(artifact, *, threads, **options) -> run`` and the option sets
    (e.g. graph optimisation on/off) that conformance checks each of."""

    def deco(fn: RunnerFactory) -> RunnerFactory:
        _RUNNERS[backend] = fn
        _VARIANTS[backend] = conformance_variants
        return fn

    return deco


def _load_backends() -> None:
    # runtime modules are imported here, so `import qbench.export` stays light
    from qbench.export import openvino, ort  # noqa: F401


def export(qmodel: nn.Module, backend: Backend | str, *, out_dir: Path, example: np.ndarray,
           name: str = "model", lstm_graph: LSTMGraph | str = LSTMGraph.FAKEQUANT_UNROLLED) -> Artifact:
    """Export a quantized student to ``backend`` under ``out_dir``; ``example`` is (B, T, F);
    ``lstm_graph`` picks an LSTM student's lowering."""
    _load_backends()
    backend = Backend(backend)
    return _EXPORTERS[backend](qmodel, out_dir=Path(out_dir), example=example, name=name,
                               lstm_graph=LSTMGraph(lstm_graph))


def runner(artifact: Artifact, *, threads: int, **options: Any) -> Run:
    """A callable ``run(x (B, T, F)) -> logits (B, C)`` over ``artifact`` on ``threads`` threads."""
    _load_backends()
    if threads < 1:
        raise QbenchError(f"threads must be >= 1, got {threads}")
    return _RUNNERS[artifact.backend](artifact, threads=threads, **options)


def conformance_variants(artifact: Artifact) -> dict[str, dict[str, Any]]:
    """Named runner option sets a conformance check must pass under."""
    _load_backends()
    return _VARIANTS[artifact.backend](artifact)


def files_size(files: tuple[Path, ...]) -> int:
    return sum(Path(f).stat().st_size for f in files)
