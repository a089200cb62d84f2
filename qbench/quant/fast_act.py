"""Inference of Brevitas' quantized ReLU in four in-place passes, computing what Brevitas computes.

Brevitas 0.13's ``QuantReLU`` applies ``nn.ReLU``, then ``RescalingIntQuant``: ``x / scale``,
``+ zero_point``, round, clamp (``tensor_clamp``: two comparisons and two ``torch.where``), then
``- zero_point`` and ``* scale``, each a pass over the activation map that allocates a new tensor
(and a few more for the zero point and bounds). In a CNN student those passes, not the
convolutions, were three quarters of an inference call (profiled: a w4a4 DS-CNN, 64 clips, one
thread, 284 ms, of which 47 ms in convolutions). Here, in inference (eval mode, autograd off),
the same arithmetic runs as ``div``, ``round_``, ``clamp_`` and ``mul_``: the same float32
operations on the same operands, so the same values (the zero point is zero: adding and
subtracting it changes at most the sign of a zero). ReLU folds into the clamp when the lower
code bound is not negative (a negative input rounds to at most 0 and is clamped to the bound, as
ReLU's 0 is). The scale, bit width and zero point are read from the same Brevitas modules, and
the output is packed by Brevitas' own methods (a ``QuantTensor`` when ``return_quant_tensor``).

Anything else (training, autograd on, export, a disabled quantizer, hooks, cached inference
activations, another rounding, clamp or zero point, non-float32 input) runs Brevitas' forward;
:attr:`QbenchQuantReLU.fast_path_declined` says why.
"""

from __future__ import annotations

import brevitas.nn as qnn
import torch
from torch import Tensor, nn

from qbench.quant.fast_lstm import _ROUNDING, _walk, _why_not_act

__all__ = ["QbenchQuantReLU", "why_not_fast_act"]


def why_not_fast_act(layer: qnn.QuantReLU, x: object) -> str | None:
    """Why :meth:`QbenchQuantReLU.forward` would run Brevitas' forward on ``x`` now, or None."""
    if not getattr(layer, "fast_path", True):
        return "fast_path is off"
    if layer.training or torch.is_grad_enabled():
        return "training or autograd on"
    if type(x) is not Tensor or x.dtype != torch.float32:
        return "input is not a float32 Tensor"
    if layer.export_mode or layer.input_quant.is_quant_enabled:
        return "export mode or an input quantizer"
    proxy = layer.act_quant
    if proxy.cache_inference_quant_act:
        return "caching inference activations"
    reason = _why_not_act(proxy, nn.ReLU)
    if reason is not None:
        return reason
    for module in _walk(layer):
        if module._forward_hooks or module._forward_pre_hooks:
            return f"hooks on {type(module).__name__}"
    return None


class QbenchQuantReLU(qnn.QuantReLU):
    """``brevitas.nn.QuantReLU`` whose inference runs :mod:`qbench.quant.fast_act` (same state dict)."""

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
        scale = tq.scaling_impl(input, tq.int_scaling_impl(bit_width))
        zero_point = tq.zero_point_impl(input, scale, bit_width)
        iq = tq.int_quant
        lo, hi = float(iq.min_int(bit_width)), float(iq.max_int(bit_width))  # integers: exact; ATen's scalar clamp
        y = torch.relu(input) if lo < 0 else input
        y = torch.div(y, scale)
        getattr(y, _ROUNDING[type(iq.float_to_int_impl)] + "_")()
        y.clamp_(lo, hi).mul_(scale)
        out = y if proxy.skip_create_quant_tensor else proxy.create_quant_tensor((y, scale, zero_point, bit_width),
                                                                                 x=input)
        return self.pack_output(out)
