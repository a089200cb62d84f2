"""Conformance: does an exported artifact compute what the Brevitas model computes?

The tolerance is counted in **output steps**: one step is how much a logit moves when one
integer code of the last weight layer's input moves by one, ``s_in * max|W|`` (input scale
times the largest dequantized weight of that layer). A runtime that fuses Q/DQ into integer
kernels may round a value sitting on a .5 tie the other way, flipping one code by one; a few
such flips reaching the head shift a logit by a step each. :data:`TOL_STEPS` allows two; an
error in scales, zero points, clipping or layout moves logits by many steps.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn

from qbench.export.base import Artifact, conformance_variants, runner

TOL_STEPS = 2.0
TOL_STEPS_RECURRENT = 16.0
"""In a recurrent student a code flipped at a tie feeds back into every later step: ORT's
MatMulNBits kernel (ENABLE_EXTENDED and up) moved LSTM logits by up to 7 steps over 75 steps
(OpenVINO f32 and ORT DISABLE_ALL are bit-exact); a real defect measured >= 28 steps."""
FLOAT_FLOOR = 1e-5  # fp32 reassociation between runtimes, relative to the logit range


@dataclasses.dataclass(frozen=True)
class Conformance:
    """Result of comparing an artifact with its Brevitas model on the same inputs."""

    status: str  # "ok" | "failed"
    reason: str | None
    step: float  # one output step (see module docstring)
    tol_steps: float
    max_steps: dict[str, float]  # per runner variant: max |diff| / step
    top1_agreement: dict[str, float]  # per runner variant: fraction of equal argmax
    n: int

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _head(qmodel: nn.Module) -> nn.Module:
    heads = [m for m in qmodel.modules() if hasattr(m, "weight_quant") and hasattr(m, "input_quant")]
    if not heads:
        raise ValueError("model has no Brevitas weight layer")
    return heads[-1]  # registration order: the classifier head is the last weight layer


def reference_and_step(qmodel: nn.Module, x: np.ndarray) -> tuple[np.ndarray, float]:
    """The Brevitas model's logits on ``x`` and one output step ``s_in * max|W|`` of its head."""
    head, scales = _head(qmodel), []

    def hook(module: nn.Module, inputs: tuple) -> None:
        inp = inputs[0]
        if module.input_quant.is_quant_enabled:
            scales.append(float(module.input_quant.scale().max()))
        elif hasattr(inp, "scale") and inp.scale is not None:  # QuantTensor from a QuantReLU
            scales.append(float(inp.scale.max()))

    handle = head.register_forward_pre_hook(hook)
    qmodel.eval()
    try:
        with torch.no_grad():
            out = qmodel(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
            w = float(head.quant_weight().value.abs().max())
    finally:
        handle.remove()
    ref = getattr(out, "value", out).numpy()
    return ref, (max(scales) if scales else 0.0) * w


def check_conformance(
    artifact: Artifact, qmodel: nn.Module, x: Any, *, tol_steps: float | None = None, threads: int = 1
) -> Conformance:
    """Run ``artifact`` on ``x`` ((N, T, F) frames or a ``Split``) under every conformance variant of its backend and
    compare with ``qmodel``. A failed check (or a runtime error) gives ``status="failed"``.

    ``tol_steps`` defaults to :data:`TOL_STEPS`, or :data:`TOL_STEPS_RECURRENT` for a model with a QuantLSTM.
    """
    from brevitas.nn import QuantLSTM

    if tol_steps is None:
        recurrent = any(isinstance(m, QuantLSTM) for m in qmodel.modules())
        tol_steps = TOL_STEPS_RECURRENT if recurrent else TOL_STEPS
    x = getattr(x, "x", x)  # a dataset Split: its (N, T, F) frames
    ref, step = reference_and_step(qmodel, x)
    step = max(step, FLOAT_FLOOR * float(np.abs(ref).max()))
    max_steps: dict[str, float] = {}
    top1: dict[str, float] = {}
    failures: list[str] = []
    for name, options in conformance_variants(artifact).items():
        try:
            out = runner(artifact, threads=threads, **options)(x)
        except Exception as exc:  # noqa: BLE001 - a runtime failure is a failed conformance, recorded
            failures.append(f"{name}: runtime error {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            continue
        if out.shape != ref.shape:
            failures.append(f"{name}: output shape {out.shape} != {ref.shape}")
            continue
        max_steps[name] = float(np.abs(out - ref).max() / step)
        top1[name] = float((out.argmax(1) == ref.argmax(1)).mean())
        if max_steps[name] > tol_steps:
            failures.append(f"{name}: max error {max_steps[name]:.2f} steps > {tol_steps} (step {step:.3g})")
    return Conformance(
        status="failed" if failures else "ok", reason="; ".join(failures) or None, step=step,
        tol_steps=tol_steps, max_steps=max_steps, top1_agreement=top1, n=int(x.shape[0]),
    )
