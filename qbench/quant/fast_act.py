"""Brevitas' quantized ReLU in a few fused passes, computing what Brevitas computes.

Brevitas 0.13's ``QuantReLU`` applies ``nn.ReLU``, then ``RescalingIntQuant``: ``x / scale``,
``+ zero_point``, round, clamp (``tensor_clamp``: two comparisons and two ``torch.where``), then
``- zero_point`` and ``* scale``, each a pass over the activation map that allocates a new tensor
(and a few more for the zero point and bounds), and as many autograd nodes. In a CNN student those
passes, not the convolutions, were three quarters of an inference call (profiled: a w4a4 DS-CNN,
64 clips, one thread, 284 ms, of which 47 ms in convolutions).

* **Inference** (autograd off): ``div``, ``round_``, ``clamp_`` and ``mul_`` in place: the same
  float32 operations on the same operands, so the same values (the zero point is zero: adding and
  subtracting it changes at most the sign of a zero). ReLU folds into the clamp when the lower
  code bound is not negative (a negative input rounds to at most 0 and is clamped to the bound,
  as ReLU's 0 is).
* **Training** (autograd on): the same forward as one autograd function (:class:`_ReLUQuant`)
  whose backward is Brevitas' graph formula for formula: the straight-through round, the clamp's
  mask, ReLU's mask, and the scale's gradient through both the product and the division, in the
  operand order of ATen's ``MulBackward`` and ``DivBackward``.

In training both directions run compiled (:func:`_forward_kernel`, :func:`_backward_kernel`:
Numba, one pass over the map each way, one thread) where the scale is one number and the map is
dense; elsewhere, and always in inference (the in-place passes timed no slower than the kernel,
and they use ATen's threads), the same formulas run as ATen operations. The kernels repeat ATen's
float32 operations one element at a time (``fastmath`` off: no reciprocal for a division, no fused
multiply-add, so the same values) and read the input map instead of saved intermediates (the codes
are recomputed: a division and a rounding cost less than storing and reading three maps). The
scale's gradient sums the same float32 terms as autograd, in float64 and another order: it differs
from Brevitas' float32 sums by their own rounding error (``tests/test_fast_act.py`` bounds it by
the terms' magnitudes). While a quantizer still collects statistics its scale depends on the input,
and that difference would reach the input's gradient, so those steps (the first of a QAT from an
uncalibrated model; the sweep's QAT starts from calibrated scales) run the ATen formulas.
Profiled before the kernels, a w4a4 DS-CNN QAT step of 64 clips spent 40 % of its time in the
quantized ReLUs' backward and 16 % in their forward; with them the step took 235-362 ms against
418-701 ms, old and new alternating in separate processes on one thread.

The scale, bit width and zero point are read from the same Brevitas modules with the same calls
(so a quantizer still collecting statistics collects them, and the scale keeps its autograd graph
to the learned parameter), and the output is packed by Brevitas' own methods (a ``QuantTensor``
when ``return_quant_tensor``). Anything else (export, a disabled quantizer, hooks, cached
inference activations, another rounding, clamp or zero point, non-float32 input) runs Brevitas'
forward; :attr:`QbenchQuantReLU.fast_path_declined` says why.
"""

from __future__ import annotations

import brevitas.nn as qnn
import numba
import numpy as np
import torch
from brevitas.core.scaling import ParameterFromRuntimeStatsScaling
from torch import Tensor, nn

from qbench.quant.fast_cell import ROUNDING_MODES, clamp_code, round_code
from qbench.quant.fast_survey import ROUNDING, walk, why_not_act

__all__ = ["QbenchQuantReLU", "why_not_fast_act"]


def why_not_fast_act(layer: qnn.QuantReLU, x: object) -> str | None:
    """Why :meth:`QbenchQuantReLU.forward` would run Brevitas' forward on ``x`` now, or None."""
    if not getattr(layer, "fast_path", True):
        return "fast_path is off"
    if type(x) is not Tensor or x.dtype != torch.float32:
        return "input is not a float32 Tensor"
    if layer.export_mode or layer.input_quant.is_quant_enabled:
        return "export mode or an input quantizer"
    proxy = layer.act_quant
    if proxy.cache_inference_quant_act:
        return "caching inference activations"
    reason = why_not_act(proxy, nn.ReLU)
    if reason is not None:
        return reason
    for module in walk(layer):
        if module._forward_hooks or module._forward_pre_hooks:
            return f"hooks on {type(module).__name__}"
    return None


def _ignores_input(scaling: nn.Module) -> bool:
    """Whether ``scaling`` returns its learned or buffered scale without reading its input: a
    ``ParameterFromRuntimeStatsScaling`` except while it collects statistics in training."""
    return isinstance(scaling, ParameterFromRuntimeStatsScaling) and not (
        scaling.training and scaling.counter < scaling.collect_stats_steps)


def _divided(x: Tensor, scale: Tensor, lo: float) -> Tensor:
    """``relu(x) / scale`` as a new tensor; ReLU folds into the clamp when ``lo >= 0`` (a negative
    input then rounds to at most 0 and is clamped to ``lo``, as ReLU's 0 is)."""
    return torch.div(torch.relu(x) if lo < 0 else x, scale)


def _forward_aten(x: Tensor, scale: Tensor, lo: float, hi: float, rounding: str) -> Tensor:
    """``clamp(round(relu(x) / scale), lo, hi) * scale`` as ATen operations, in place after the division."""
    y = _divided(x, scale, lo)
    getattr(y, rounding + "_")()
    return y.clamp_(lo, hi).mul_(scale)


# The kernels: ``x``, ``grad`` and the outputs are the maps' storage in memory order (1-D float32),
# ``s``, ``lo``, ``hi`` float32, ``mode`` a ROUNDING_MODES value, ``relu`` whether ReLU runs
# before the division (``lo < 0``). Every element is a select, so LLVM vectorises the loops.

@numba.njit(cache=True, fastmath=False, error_model="numpy", nogil=True)
def _forward_kernel(x, s, lo, hi, mode, relu, out):
    """``out = clamp(round(relu(x) / s), lo, hi) * s``, element by element as ATen computes it."""
    zero = np.float32(0.0)
    for i in range(x.size):
        v = max(x[i], zero) if relu else x[i]
        out[i] = np.float32(clamp_code(np.float32(v / s), lo, hi, mode) * s)


CHUNK = 4096
"""Elements per backward chunk: the chunk's two scale-gradient terms are kept (32 KiB) and summed."""


@numba.njit(cache=True, fastmath={"reassoc"}, error_model="numpy", nogil=True)
def _sum64(terms, n):
    """Sum of the float32 ``terms[:n]`` in float64 (reassociated: in any order, as a sum may be)."""
    total = 0.0
    for i in range(n):
        total += np.float64(terms[i])
    return total


@numba.njit(cache=True, fastmath=False, error_model="numpy", nogil=True)
def _backward_kernel(x, grad, s, lo, hi, mode, relu, dx, terms):
    """Writes the input gradient to ``dx``; returns the scale's two terms summed (see :class:`_ReLUQuant`).

    Per element, in ATen's float32 operations: ``t = relu(x) / s``, ``r = round(t)``, ``inside =
    x > 0 and r <= hi`` (and ``r >= lo`` when ``lo > 0``), ``g_t = grad * s`` inside else 0,
    ``dx = g_t / s``; the scale's terms ``grad * clamp(r)`` (MulBackward's) and ``-g_t * (t / s)``
    (DivBackward's) go to ``terms`` (2, CHUNK) and are summed per chunk in float64.
    """
    zero = np.float32(0.0)
    n = x.size
    by_product = by_division = 0.0
    for start in range(0, n, CHUNK):
        stop = min(start + CHUNK, n)
        for i in range(start, stop):
            xi = x[i]
            t = np.float32((max(xi, zero) if relu else xi) / s)
            r = round_code(t, mode)
            inside = xi > zero and r <= hi and (lo <= zero or r >= lo)
            g = grad[i]
            g_t = np.float32(g * s) if inside else zero
            dx[i] = np.float32(g_t / s)
            terms[0, i - start] = np.float32(g * min(max(r, lo), hi))
            terms[1, i - start] = np.float32(-g_t * np.float32(t / s))
        by_product += _sum64(terms[0], stop - start)
        by_division += _sum64(terms[1], stop - start)
    return by_product + by_division


def _storage(t: Tensor) -> np.ndarray | None:
    """A dense tensor's elements as a 1-D float32 array in memory order (a view), or None when the
    tensor has gaps or overlaps (then the ATen formulas run)."""
    order = sorted(range(t.dim()), key=t.stride, reverse=True)
    flat = t.detach().permute(order)
    return flat.view(-1).numpy() if flat.is_contiguous() else None


def _compiled(x: Tensor, scale: Tensor, rounding: str) -> bool:
    """Whether the kernels serve this call: one scale, a dense float32 map on the CPU."""
    return scale.numel() == 1 and x.device.type == "cpu" and rounding in ROUNDING_MODES and \
        _storage(x) is not None


def _kernel_args(scale: Tensor, lo: float, hi: float, rounding: str) -> tuple:
    return (np.float32(scale.detach().reshape(())), np.float32(lo), np.float32(hi), ROUNDING_MODES[rounding],
            lo < 0)


def _forward_fused(x: Tensor, scale: Tensor, lo: float, hi: float, rounding: str) -> Tensor:
    """:func:`_forward_aten`'s values in one compiled pass (the caller checked :func:`_compiled`)."""
    out = torch.empty_like(x)  # dense input: the same strides
    _forward_kernel(_storage(x), *_kernel_args(scale, lo, hi, rounding), _storage(out))
    return out


class _ReLUQuant(torch.autograd.Function):
    """``clamp(round(relu(x) / scale), lo, hi) * scale`` with Brevitas' gradients (see the module doc).

    The input's gradient is Brevitas' exactly: ``where(inside, grad * scale, 0) / scale``, ``inside``
    where ReLU and the clamp pass it (``x > 0`` and the rounded code within ``[lo, hi]``). The scale's
    is the same two terms as ATen's ``MulBackward`` (``grad * codes``) and ``DivBackward``
    (``-grad_t * ((relu(x) / scale) / scale)``), each summed over the map; the order of the sums
    may differ from autograd's. Compiled (:func:`_backward_kernel`), only the input is saved; the
    ATen way saves ``t = relu(x) / scale``, the codes and the mask."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, lo: float, hi: float, rounding: str, compile_backward: bool) -> Tensor:
        ctx.bounds = (lo, hi, rounding)
        if compile_backward and _compiled(x, scale, rounding):
            ctx.save_for_backward(scale, x)
            return _forward_fused(x, scale, lo, hi, rounding)
        t = _divided(x, scale, lo)
        codes = getattr(t, rounding)()
        inside = (x > 0) & (codes <= hi)  # ReLU's mask, then the clamp's (x > 0: codes >= 0)
        if lo > 0:
            inside &= codes >= lo
        codes.clamp_(lo, hi)
        ctx.save_for_backward(scale, t, codes, inside)
        return codes * scale

    @staticmethod
    def backward(ctx, grad: Tensor):
        lo, hi, rounding = ctx.bounds
        if len(ctx.saved_tensors) == 2:
            scale, x = ctx.saved_tensors
            if grad.stride() != x.stride():
                grad = torch.empty_like(x).copy_(grad)  # the input's memory order, element for element
            dx = torch.empty_like(x)
            terms = np.empty((2, CHUNK), dtype=np.float32)
            dscale = _backward_kernel(_storage(x), _storage(grad), *_kernel_args(scale, lo, hi, rounding),
                                      _storage(dx), terms)
            return dx, torch.full_like(scale, dscale), None, None, None, None
        scale, t, codes, inside = ctx.saved_tensors
        grad_t = torch.where(inside, grad * scale, 0.0)  # MulBackward (self), the clamp's where, ReLU's
        through_product = (grad * codes).sum_to_size(scale.shape)  # MulBackward, other
        through_division = (-grad_t * (t / scale)).sum_to_size(scale.shape)  # DivBackward, other
        return grad_t / scale, through_product + through_division, None, None, None, None


class QbenchQuantReLU(qnn.QuantReLU):
    """``brevitas.nn.QuantReLU`` running :mod:`qbench.quant.fast_act` (same state dict)."""

    fast_path = True
    """Run the fused passes when they reproduce Brevitas' forward; False forces Brevitas'."""

    fast_path_declined: str | None = None
    """Why the last forward ran Brevitas' own forward (None: it did not)."""

    def forward(self, input):  # noqa: A002 (Brevitas' parameter name)
        reason = why_not_fast_act(self, input)
        self.fast_path_declined = reason
        if reason is not None:
            return super().forward(input)
        proxy = self.act_quant
        tq = proxy.fused_activation_quant_proxy.tensor_quant
        bit_width = tq.msb_clamp_bit_width_impl()
        # Brevitas' scaling sees the activation's output: ReLU'd here only where it reads it (statistics)
        fixed_scale = _ignores_input(tq.scaling_impl)
        stats_input = input if fixed_scale else torch.relu(input)
        scale = tq.scaling_impl(stats_input, tq.int_scaling_impl(bit_width))
        zero_point = tq.zero_point_impl(input, scale, bit_width)
        iq = tq.int_quant
        lo, hi = float(iq.min_int(bit_width)), float(iq.max_int(bit_width))  # integers: exact; ATen's scalar clamp
        rounding = ROUNDING[type(iq.float_to_int_impl)]
        if torch.is_grad_enabled() and (input.requires_grad or scale.requires_grad):
            y = _ReLUQuant.apply(input, scale, lo, hi, rounding, fixed_scale)
        else:  # in place: as fast as the kernel here, and ATen's threads serve a multi-threaded call
            y = _forward_aten(input, scale, lo, hi, rounding)
        out = y if proxy.skip_create_quant_tensor else proxy.create_quant_tensor((y, scale, zero_point, bit_width),
                                                                                 x=input)
        return self.pack_output(out)
