"""PyTorch: the fp32 student, or the Brevitas fake-quantized model every other backend is checked against.

Registered as ``torch``, the reference backend (:data:`qbench.backends.REFERENCE`).
"""

from __future__ import annotations

from typing import Any

from qbench.backends import REFERENCE, BackendSpec, register


def measure_qat(pipe, point) -> dict[str, Any]:
    """Error, size and latency of the Brevitas QAT model, and its LSTM input clipping."""
    from qbench.sweep.points import input_range, quant_torch_figures

    qmodel, meta = pipe.qat(point.model, point.distill, point.bits)
    # The Brevitas model is the reference other backends agree with: no agreement of its own.
    return {**quant_torch_figures(pipe, point, qmodel, with_latency=True), "train": meta,
            **input_range(pipe, point, qmodel)}


register(BackendSpec(
    name=REFERENCE, label="PyTorch", tag="pt", library="torch", order=0,
    description="PyTorch: the fp32 model or the Brevitas fake-quantized model (the reference)",
    measure=measure_qat,
))
