"""Packed size of a quantized student: the bytes a deployment stores, at the real bit-widths.

Packing rules (each is what an integer runtime or our ONNX/kernels export stores):

* **weight codes**: each quantized weight tensor is packed densely at its bit-width,
  ``ceil(n * bits / 8)`` bytes per tensor (no per-row padding);
* **weight scales**: fp32, 4 bytes each, one per tensor or one per output channel; a quantizer
  shared by several tensors (a QuantLSTM gate's W_ih and W_hh) stores its scales once;
* **zero points**: weights and activations are symmetric (zero point 0), so none are stored;
  a non-zero zero point would be counted at 1 byte per scale;
* **biases** of quantized layers: int32 codes (4 bytes each) when bias-quantized (scale =
  input x weight scale, nothing extra stored), else fp32 (also 4 bytes);
* **activation scales**: fp32, one per enabled per-tensor activation quantizer (a shared
  quantizer counted once), needed to requantize between layers;
* **anything else** (BatchNorm not folded, other float parameters and BN running stats): fp32.
"""

from __future__ import annotations

import dataclasses
import math

from torch import nn

FP32_BYTES = 4
INT32_BYTES = 4
ZERO_POINT_BYTES = 1


@dataclasses.dataclass(frozen=True)
class TensorSize:
    """One stored weight tensor: ``n`` codes at ``bits`` bits plus ``n_scales`` fp32 scales."""

    name: str
    n: int
    bits: int
    n_scales: int  # 0 when its scales are stored with another tensor sharing the quantizer

    @property
    def code_bytes(self) -> int:
        return math.ceil(self.n * self.bits / 8)


@dataclasses.dataclass(frozen=True)
class SizeReport:
    """Bytes of a packed quantized model, by kind, and its ratios to float references."""

    weight_bytes: int  # packed integer weight codes
    scale_bytes: int  # fp32 weight scales and activation scales
    zero_point_bytes: int
    bias_bytes: int
    float_bytes: int  # parameters and buffers kept float (unfolded BN, others)
    fp32_bytes: int  # the fp32 reference the ratio is taken to (the float student)
    tensors: tuple[TensorSize, ...] = ()
    n_act_quantizers: int = 0

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.scale_bytes + self.zero_point_bytes + self.bias_bytes + self.float_bytes

    @property
    def ratio_to_fp32(self) -> float:
        """Packed size / fp32 student size (0.125 is the ideal at 4 bits)."""
        return self.total_bytes / self.fp32_bytes

    def ratio_to(self, reference_bytes: int) -> float:
        """Packed size / another model's size, e.g. ``fp32_size(teacher)``."""
        return self.total_bytes / reference_bytes

    def to_dict(self) -> dict[str, float | int]:
        return {
            "total_bytes": self.total_bytes, "weight_bytes": self.weight_bytes, "scale_bytes": self.scale_bytes,
            "zero_point_bytes": self.zero_point_bytes, "bias_bytes": self.bias_bytes,
            "float_bytes": self.float_bytes, "fp32_bytes": self.fp32_bytes, "ratio_to_fp32": self.ratio_to_fp32,
            "n_act_quantizers": self.n_act_quantizers,
        }


def fp32_size(model: nn.Module) -> int:
    """Bytes of a float model stored as fp32: every parameter and BN running statistic."""
    n = sum(p.numel() for p in model.parameters())
    n += sum(b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var")))
    return n * FP32_BYTES


def _enabled(proxy: object) -> bool:
    return proxy is not None and bool(getattr(proxy, "is_quant_enabled", False))


def _weight_tensors(qmodel: nn.Module) -> tuple[list[TensorSize], set[int], int]:
    """Quantized weights: their sizes, the ids of their parameters, and zero-point bytes."""
    tensors: list[TensorSize] = []
    seen_params: set[int] = set()
    seen_proxies: set[int] = set()
    zp_bytes = 0
    for name, m in qmodel.named_modules(remove_duplicate=False):
        proxy = getattr(m, "weight_quant", None)
        weight = getattr(m, "weight", None)
        if not isinstance(weight, nn.Parameter) or not _enabled(proxy) or id(weight) in seen_params:
            continue
        qt = proxy(weight)
        first = id(proxy) not in seen_proxies
        seen_proxies.add(id(proxy))
        n_scales = int(qt.scale.numel()) if first else 0
        if first and bool((qt.zero_point != 0).any()):
            zp_bytes += n_scales * ZERO_POINT_BYTES
        tensors.append(TensorSize(f"{name}.weight", weight.numel(), int(qt.bit_width.item()), n_scales))
        seen_params.add(id(weight))
    return tensors, seen_params, zp_bytes


def _act_quantizers(qmodel: nn.Module) -> int:
    from brevitas.proxy.runtime_quant import ActQuantProxyFromInjectorBase

    return sum(
        1 for m in qmodel.modules()  # modules() yields a shared quantizer once
        if isinstance(m, ActQuantProxyFromInjectorBase) and _enabled(m) and m.fused_activation_quant_proxy is not None
    )


def packed_size(qmodel: nn.Module, *, fp32_reference: nn.Module | None = None) -> SizeReport:
    """Packed bytes of a Brevitas model (see the module docstring for the rules).

    ``fp32_reference`` is the float student the ratio is taken to; by default the quantized
    model's own weights at 32 bits (which, with BN folded, leaves BN parameters out).
    """
    tensors, weight_ids, zp_bytes = _weight_tensors(qmodel)
    bias_bytes, bias_n, bias_ids = 0, 0, set()
    for m in qmodel.modules():
        bias = getattr(m, "bias", None)
        if isinstance(bias, nn.Parameter) and hasattr(m, "bias_quant") and id(bias) not in bias_ids:
            bias_ids.add(id(bias))
            bias_n += bias.numel()
            bias_bytes += bias.numel() * (INT32_BYTES if _enabled(getattr(m, "bias_quant", None)) else FP32_BYTES)
    n_act = _act_quantizers(qmodel)
    float_n = sum(
        p.numel() for name, p in qmodel.named_parameters()
        if id(p) not in weight_ids | bias_ids and "_quant." not in name  # quantizer scales counted above
    )
    float_n += sum(b.numel() for name, b in qmodel.named_buffers() if name.endswith(("running_mean", "running_var")))
    quantized_n = sum(t.n for t in tensors) + bias_n
    return SizeReport(
        weight_bytes=sum(t.code_bytes for t in tensors),
        scale_bytes=FP32_BYTES * (sum(t.n_scales for t in tensors) + n_act),
        zero_point_bytes=zp_bytes,
        bias_bytes=bias_bytes,
        float_bytes=FP32_BYTES * float_n,
        fp32_bytes=fp32_size(fp32_reference) if fp32_reference is not None else FP32_BYTES * (quantized_n + float_n),
        tensors=tuple(tensors),
        n_act_quantizers=n_act,
    )
