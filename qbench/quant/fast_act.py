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

The scale, bit width and zero point are read from the same Brevitas modules with the same calls
(so a quantizer still collecting statistics collects them, and the scale keeps its autograd graph
to the learned parameter), and the output is packed by Brevitas' own methods (a ``QuantTensor``
when ``return_quant_tensor``). Anything else (export, a disabled quantizer, hooks, cached
inference activations, another rounding, clamp or zero point, non-float32 input) runs Brevitas'
forward; :attr:`QbenchQuantReLU.fast_path_declined` says why.
"""

from __future__ import annotations

import brevitas.nn as qnn
import torch
from brevitas.core.scaling import ParameterFromRuntimeStatsScaling
from torch import Tensor, nn

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


class _ReLUQuant(torch.autograd.Function):
    """``clamp(round(relu(x) / scale), lo, hi) * scale`` with Brevitas' gradients (see the module doc).

    The input's gradient is Brevitas' exactly: ``where(inside, grad * scale, 0) / scale``, ``inside``
    where ReLU and the clamp pass it (``x > 0`` and the rounded code within ``[lo, hi]``). The scale's
    is the same two terms as ATen's ``MulBackward`` (``grad * codes``) and ``DivBackward``
    (``-grad_t * ((relu(x) / scale) / scale)``), each summed over the map as ATen sums it; the
    order the two are added in may differ from autograd's. Saved: ``t = relu(x) / scale``, the
    codes and the mask (the codes are computed anyway; recomputing them would cost two passes)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, lo: float, hi: float, rounding: str) -> Tensor:
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
        scale, t, codes, inside = ctx.saved_tensors
        grad_t = torch.where(inside, grad * scale, 0.0)  # MulBackward (self), the clamp's where, ReLU's
        through_product = (grad * codes).sum_to_size(scale.shape)  # MulBackward, other
        through_division = (-grad_t * (t / scale)).sum_to_size(scale.shape)  # DivBackward, other
        return grad_t / scale, through_product + through_division, None, None, None


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
        stats_input = input if _ignores_input(tq.scaling_impl) else torch.relu(input)
        scale = tq.scaling_impl(stats_input, tq.int_scaling_impl(bit_width))
        zero_point = tq.zero_point_impl(input, scale, bit_width)
        iq = tq.int_quant
        lo, hi = float(iq.min_int(bit_width)), float(iq.max_int(bit_width))  # integers: exact; ATen's scalar clamp
        rounding = ROUNDING[type(iq.float_to_int_impl)]
        if torch.is_grad_enabled() and (input.requires_grad or scale.requires_grad):
            y = _ReLUQuant.apply(input, scale, lo, hi, rounding)
        else:
            y = _divided(input, scale, lo)
            getattr(y, rounding + "_")()
            y.clamp_(lo, hi).mul_(scale)
        out = y if proxy.skip_create_quant_tensor else proxy.create_quant_tensor((y, scale, zero_point, bit_width),
                                                                                 x=input)
        return self.pack_output(out)
