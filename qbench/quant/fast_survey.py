"""What qbench's fused quantizer paths (:mod:`qbench.quant.fast_lstm`, :mod:`qbench.quant.fast_act`)
check before they stand in for Brevitas: the quantizer configurations they reproduce, and a cheap
walk over a module's submodules for hooks and statistics."""

from __future__ import annotations

from brevitas.core.function_wrapper import FloorSte, RoundSte, RoundToZeroSte
from brevitas.core.function_wrapper.clamp import TensorClamp
from brevitas.core.quant import RescalingIntQuant
from brevitas.core.quant.delay import _NoDelay
from brevitas.core.zero_point import ZeroZeroPoint
from torch import nn

__all__ = ["ROUNDING", "walk", "why_not_act"]

ROUNDING = {RoundSte: "round", FloorSte: "floor", RoundToZeroSte: "trunc"}  # Brevitas STE -> Tensor method


def walk(module: nn.Module):
    """``module`` and every submodule (a shared one once per parent): ``Module.modules()`` without
    its de-duplication, a third of its cost on the every-forward path."""
    stack = [module]
    while stack:
        module = stack.pop()
        yield module
        stack.extend(m for m in module._modules.values() if m is not None)


def why_not_act(proxy: nn.Module, activation: type[nn.Module]) -> str | None:
    """Why the fused passes would not reproduce ``proxy`` (a Brevitas activation-quant proxy applying
    ``activation``), or None: Brevitas' default integer quantizer, rounding, clamp, no delay, zero
    zero point."""
    fused = proxy.fused_activation_quant_proxy
    if fused is None or not proxy.is_quant_enabled or proxy.export_mode:
        return "disabled or exporting"
    impl = fused.activation_impl
    if not isinstance(impl, activation) or type(impl).forward is not activation.forward:
        return f"activation {type(impl).__name__}, expected {activation.__name__}"
    tq = fused.tensor_quant
    if type(tq) is not RescalingIntQuant or tq.observer_only:
        return f"tensor quantizer {type(tq).__name__}"
    iq = tq.int_quant
    if type(iq.float_to_int_impl) not in ROUNDING or type(iq.tensor_clamp_impl) is not TensorClamp \
            or not isinstance(iq.delay_wrapper.delay_impl, _NoDelay):
        return "rounding, clamp or delay other than Brevitas' defaults"
    if type(tq.zero_point_impl) is not ZeroZeroPoint:
        return "non-zero zero point"
    return None
