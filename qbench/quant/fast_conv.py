"""Brevitas' quantized 2-D convolution run channels-last (NHWC) on CPU.

The fp32 students feed their convolutions a channels-last image (:func:`models.frontend.as_image`),
so oneDNN runs every convolution after it in NHWC: a DS-CNN training step about 1.5x faster on
one core than in NCHW, mostly in the strided stem's weight gradient and the depthwise and
pointwise backward passes. A Brevitas ``QuantConv2d`` loses that layout: its input quantizer and
its fake-quantized weight come out of elementwise ops in NCHW strides (a one-channel image, a
depthwise or a 1x1 kernel is both layouts, and only the strides tell PyTorch which to pick).
:class:`QbenchQuantConv2d` restrides the fake-quantized weight before the convolution, which is
enough for oneDNN to pick NHWC for that layer and, through its output, the next ones.

Brevitas computes the weight's values as before; only their layout, and with it the order in
which the convolution sums, differs (float32 rounding). Export never reaches here: Brevitas'
export handlers replace the layer's forward.
"""

from __future__ import annotations

import brevitas.nn as qnn
import torch

__all__ = ["QbenchQuantConv2d"]


class QbenchQuantConv2d(qnn.QuantConv2d):
    """``brevitas.nn.QuantConv2d`` (same quantizers and state dict) convolving in channels-last."""

    def inner_forward_impl(self, x, quant_weight, quant_bias):
        return super().inner_forward_impl(x, channels_last(quant_weight), quant_bias)


def channels_last(weight):
    """``weight`` (a Tensor or a Brevitas QuantTensor) with its 4-D values strided channels-last."""
    value = getattr(weight, "value", weight)
    if value.dim() != 4:
        return weight
    value = value.clone(memory_format=torch.channels_last)
    return weight.set(value=value) if hasattr(weight, "set") else value
