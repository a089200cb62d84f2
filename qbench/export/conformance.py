"""Conformance: does an exported artifact compute what the Brevitas model computes?

The tolerance is counted in **output steps**: one step is how much a logit moves when one
integer code of the last weight layer's input moves by one, ``s_in * max|W|`` (input scale
times the largest dequantized weight of that layer). A runtime that fuses Q/DQ into integer
kernels may round a value sitting on a .5 tie the other way, flipping one code by one; flips
reaching the head shift a logit by about a step each, and a few compound through depth.

A runner variant (an optimisation level, a precision) conforms when the bulk of its outputs
are within :data:`TOL_STEPS` (the 99th percentile of the error) and no output is further than
:data:`TOL_MAX_STEPS` (:data:`TOL_STEPS_RECURRENT` for recurrent students, on all but
:data:`RECURRENT_OUTLIER_CLIPS` of the clips). An error in scales,
zero points, clipping or layout moves most outputs by many steps. The artifact conforms when
any variant does; it is timed under the first (most optimised) variant that conforms, and the
variants that failed are reported. When a variant of an 8-bit feed-forward student fails,
:mod:`qbench.export.diagnose` checks why (the CPU's VNNI flags, a saturation probe on the same
runtime variant) and the result names the likely cause.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn

from qbench.capabilities import is_recurrent
from qbench.export.base import Artifact, conformance_variants, runner

TOL_STEPS = 2.0
"""99th percentile of |artifact - Brevitas| in steps: all but the rare compounded tie flips."""
TOL_MAX_STEPS = 8.0
"""Largest error allowed in a feed-forward student: OpenVINO's int8 pipeline (f32 hint) put a
trained 4-block DS-CNN's p99 at 1.4-1.8 steps with outliers up to 6.65 (top-1 agreement 99.6-100 %)."""
TOL_STEPS_RECURRENT = 16.0
"""Largest error allowed in a recurrent student, where a code flipped at a tie feeds back into
every later step. ORT ENABLE_EXTENDED/ALL moved a trained LSTM's logits by 30-51 steps (p99 6-14,
top-1 agreement 91 % at w4a4): that fails; BASIC and OpenVINO f32 are exact."""
RECURRENT_OUTLIER_CLIPS = 0.01
"""Fraction of clips a recurrent student may exceed :data:`TOL_STEPS_RECURRENT` on, when the bulk
(p99) is within bounds. A single float32 tie (a product summed in another order, an FMA) flips
one code, and a trained LSTM's recurrence can carry it into a large change of that one clip:
measured on a w8a8 keyword LSTM, OpenVINO f32 was 0.00 steps off Brevitas at p99 and 18.4 steps
on 1 clip of 256 (top-1 agreement 100 %), and the integer engine itself is 22 codes off Brevitas'
hidden state somewhere in 3,000 clips. A maximum over N clips grows with N under such chaos, so
it is not a property of the graph; a wrong graph moves most clips (the ENABLE_ALL fusion above:
p99 20 steps). The clips over the bound are counted in the record (``outlier_clips``)."""
FLOAT_REASSOCIATION_STEPS = 1e-3
"""Error of a runtime variant that computes the same float32 graph as Brevitas in another order
(OpenVINO f32, ONNX Runtime DISABLE_ALL on a fake-quantized LSTM): 0 on an AVX-512 Xeon, 1.7e-6 to
6.3e-5 steps on an AVX2 AMD EPYC; a code flipped at a tie would cost a whole step."""
FLOAT_FLOOR = 1e-5  # fp32 reassociation between runtimes, relative to the logit range


@dataclasses.dataclass(frozen=True)
class Conformance:
    """Result of comparing an artifact with its Brevitas model on the same inputs."""

    status: str  # "ok" (some variant conforms) | "failed"
    reason: str | None  # the variants that failed, and why (kept when another variant is ok)
    step: float  # one output step (see module docstring)
    tol_steps: float  # p99 bound
    tol_max_steps: float  # max bound
    max_steps: dict[str, float]  # per runner variant: max |diff| / step
    p99_steps: dict[str, float]  # per runner variant: 99th percentile of |diff| / step
    top1_agreement: dict[str, float]  # per runner variant: fraction of equal argmax
    best: str | None  # the most optimised conforming variant: the one to time
    best_options: dict[str, Any]  # its runner options
    n: int
    cause: str | None = None  # why variants failed, from qbench.export.diagnose (8-bit feed-forward students)
    outlier_clips: dict[str, int] = dataclasses.field(default_factory=dict)  # per variant: clips over the max bound

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["best_options"] = {k: getattr(v, "value", v) for k, v in self.best_options.items()}
        return out


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


def max_steps_bound(qmodel: nn.Module) -> float:
    """The largest-difference bound of ``qmodel``: wider for a recurrent model, whose one-step code
    differences are fed back (a capability, :func:`qbench.capabilities.is_recurrent`)."""
    return TOL_STEPS_RECURRENT if is_recurrent(qmodel) else TOL_MAX_STEPS


def check_conformance(
    artifact: Artifact, qmodel: nn.Module, x: Any, *, tol_steps: float | None = None,
    tol_max_steps: float | None = None, threads: int = 1,
) -> Conformance:
    """Run ``artifact`` on ``x`` ((N, T, F) frames or a ``Split``) under every conformance variant of its
    backend (most optimised first) and compare with ``qmodel``; see the module docstring.

    ``tol_steps`` defaults to :data:`TOL_STEPS`; ``tol_max_steps`` to :data:`TOL_MAX_STEPS`, or
    :data:`TOL_STEPS_RECURRENT` for a recurrent model (:func:`qbench.capabilities.is_recurrent`).
    """
    tol_steps = TOL_STEPS if tol_steps is None else tol_steps
    recurrent = is_recurrent(qmodel)
    tol_max_steps = max_steps_bound(qmodel) if tol_max_steps is None else tol_max_steps
    x = getattr(x, "x", x)  # a dataset Split: its (N, T, F) frames
    ref, step = reference_and_step(qmodel, x)
    step = max(step, FLOAT_FLOOR * float(np.abs(ref).max()))
    max_steps: dict[str, float] = {}
    p99: dict[str, float] = {}
    top1: dict[str, float] = {}
    outliers: dict[str, int] = {}
    failures: list[str] = []
    deviating: list[str] = []  # variants that ran and computed something else
    best: str | None = None
    variants = conformance_variants(artifact)
    for name, options in variants.items():
        try:
            out = runner(artifact, threads=threads, **options)(x)
        except Exception as exc:  # noqa: BLE001 - a runtime failure is a failed conformance, recorded
            failures.append(f"{name}: runtime error {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            continue
        if out.shape != ref.shape:
            failures.append(f"{name}: output shape {out.shape} != {ref.shape}")
            continue
        err = np.abs(out - ref) / step
        max_steps[name], p99[name] = float(err.max()), float(np.percentile(err, 99))
        top1[name] = float((out.argmax(1) == ref.argmax(1)).mean())
        over = int(np.sum(err.max(axis=1) > tol_max_steps))  # clips beyond the max bound
        outliers[name] = over
        allowed = int(RECURRENT_OUTLIER_CLIPS * len(err)) if recurrent else 0
        if p99[name] > tol_steps or over > allowed:
            failures.append(f"{name}: error p99 {p99[name]:.2f} / max {max_steps[name]:.2f} steps > "
                            f"{tol_steps:g} / {tol_max_steps:g} (step {step:.3g}, top-1 agreement {top1[name]:.3f})")
            deviating.append(name)
        elif best is None:
            best = name
    cause = None
    # diagnose a runtime's int8 kernels, not a wrong artifact. A fake-quant graph runs in float
    # until a runtime fuses it to int8, so when every variant of several fails (ONNX Runtime's
    # unfused DISABLE_ALL included) the graph itself is wrong, and a recurrent one spreads float
    # ties instead; the integer LSTM graph's MatMulInteger is an int8 kernel at every level.
    integer_graph = artifact is not None and artifact.lstm_graph == "integer_scan"
    fused_int8 = not recurrent and (best is not None or len(variants) == 1)
    if deviating and artifact is not None and (fused_int8 or integer_graph):
        cause = _cause(artifact, [variants[name] for name in deviating])
        if cause:
            failures.append(cause)
    return Conformance(
        status="ok" if best is not None else "failed", reason="; ".join(failures) or None, step=step,
        tol_steps=tol_steps, tol_max_steps=tol_max_steps, max_steps=max_steps, p99_steps=p99,
        top1_agreement=top1, outlier_clips=outliers, best=best, best_options=dict(variants[best]) if best else {}, n=int(x.shape[0]),
        cause=cause,
    )


def _cause(artifact: Artifact, failed_options: list[dict[str, Any]]) -> str | None:
    """The likely cause of the failed variants of an int8 artifact (the first the checks find)."""
    from qbench.export.diagnose import likely_cause

    for options in failed_options:
        cause = likely_cause(artifact.backend, options, act_bits=artifact.act_bits)
        if cause:
            return cause
    return None
