"""Read a trained Brevitas QuantLSTM (and an optional QuantLinear head) into an IntLSTMModel.

Extraction runs the Brevitas quantizers themselves in eval mode, so the codes and scales are
the ones the fake-quantized forward uses (stats-based activation scales are frozen in eval
mode). The sigmoid/tanh lookup tables are built by feeding every dequantized code of the
input quantizer through the model's own fused activation+quantizer proxy, which makes them
exact by construction. Anything the integer engine would compute differently is refused
with :class:`UnsupportedQuantizer` instead of being approximated.
"""

from __future__ import annotations

import numpy as np
import torch
from brevitas.core.function_wrapper import RoundSte
from brevitas.core.quant import PrescaledRestrictIntQuant, RescalingIntQuant
from brevitas.nn import QuantLinear, QuantLSTM
from torch import nn

from kernels.model import GATES, IntLinear, IntLSTMLayer, IntLSTMModel, QuantSpec
from qbench.errors import QbenchError

__all__ = ["UnsupportedQuantizer", "extract_lstm"]

_GATE_PARAMS = {"i": "input_gate_params", "f": "forget_gate_params", "g": "cell_gate_params", "o": "output_gate_params"}
_ACC_QUANT = {"i": "input_acc_quant", "f": "forget_acc_quant", "g": "cell_acc_quant", "o": "output_acc_quant"}
_ACT_QUANT = {"i": "input_sigmoid_quant", "f": "forget_sigmoid_quant", "g": "cell_tanh_quant", "o": "output_sigmoid_quant"}
MAX_WEIGHT_BITS = 8  # weight codes live in int8 containers
MAX_LUT_BITS = 16  # a LUT over 16-bit codes has 65536 entries
POOLINGS = ("last", "mean")


class UnsupportedQuantizer(QbenchError):
    """The model uses a quantizer (or layer option) the integer engine does not reproduce."""


def _tensor_quant(proxy: nn.Module, name: str) -> nn.Module:
    fused = getattr(proxy, "fused_activation_quant_proxy", None)
    tq = fused.tensor_quant if fused is not None else getattr(proxy, "tensor_quant", None)
    if not getattr(proxy, "is_quant_enabled", False) or tq is None:
        raise UnsupportedQuantizer(f"{name}: quantization is disabled; the integer engine needs every tensor quantized")
    if not isinstance(tq, (RescalingIntQuant, PrescaledRestrictIntQuant)):
        raise UnsupportedQuantizer(f"{name}: {type(tq).__name__} is not a scaled-integer quantizer")
    if not isinstance(tq.int_quant.float_to_int_impl, RoundSte):
        impl = type(tq.int_quant.float_to_int_impl).__name__
        raise UnsupportedQuantizer(f"{name}: rounding {impl} is not supported (only round-half-even, RoundSte)")
    return tq


def _spec(proxy: nn.Module, name: str, scale: torch.Tensor, zero_point: torch.Tensor, bit_width: torch.Tensor) -> QuantSpec:
    tq = _tensor_quant(proxy, name)
    if torch.any(zero_point != 0):
        raise UnsupportedQuantizer(f"{name}: zero points other than 0 are not supported")
    bits = int(bit_width.item())
    if bits != bit_width.item():
        raise UnsupportedQuantizer(f"{name}: non-integer bit width {bit_width.item()}")
    scale_np = scale.detach().to(torch.float32).reshape(-1).numpy().copy()
    return QuantSpec(
        scale=scale_np.reshape(()) if scale_np.size == 1 else scale_np,
        bit_width=bits,
        signed=bool(tq.int_quant.signed),
        narrow_range=bool(tq.int_quant.narrow_range),
    )


def _act_spec(proxy: nn.Module, name: str) -> QuantSpec:
    return _spec(proxy, name, proxy.scale(), proxy.zero_point(), proxy.bit_width())


def _lut(proxy: nn.Module, name: str, domain: QuantSpec) -> tuple[QuantSpec, np.ndarray]:
    """The activation quantizer ``proxy`` tabulated over every code of ``domain``."""
    if domain.bit_width > MAX_LUT_BITS:
        raise UnsupportedQuantizer(f"{name}: input codes of {domain.bit_width} bits exceed the {MAX_LUT_BITS}-bit LUT limit")
    codes = torch.arange(domain.qmin, domain.qmax + 1, dtype=torch.float32)
    values = codes * torch.from_numpy(np.asarray(domain.scale, dtype=np.float32))  # as Brevitas dequantizes
    out = proxy(values)
    spec = _spec(proxy, name, out.scale, out.zero_point, out.bit_width)
    return spec, out.int().to(torch.int32).numpy().copy()


def _layer(layer: nn.Module, name: str, io_proxy: nn.Module, cell: QuantSpec) -> IntLSTMLayer:
    if layer.reverse_input:
        raise UnsupportedQuantizer(f"{name}: reversed (bidirectional) layers are not supported")
    if getattr(layer, "cifg", False):
        raise UnsupportedQuantizer(f"{name}: coupled input-forget gates are not supported")
    dummy = io_proxy(torch.zeros(1, layer.input_size))  # a QuantTensor at the io scale, for the bias
    weights, weight_specs, biases, acc_specs, act_specs, luts = [], [], [], [], [], []
    for g in GATES:
        params = getattr(layer, _GATE_PARAMS[g])
        w_ih, w_hh = params.input_weight(), params.hidden_weight()
        wq = params.input_weight.weight_quant
        spec = _spec(wq, f"{name}.{g}.weight", w_ih.scale, w_ih.zero_point, w_ih.bit_width)
        if spec.bit_width > MAX_WEIGHT_BITS:
            raise UnsupportedQuantizer(f"{name}.{g}.weight: {spec.bit_width}-bit weights exceed {MAX_WEIGHT_BITS} bits")
        if not torch.equal(w_ih.scale, w_hh.scale):
            raise UnsupportedQuantizer(f"{name}.{g}: input and hidden weights have different scales")
        weights.append(torch.cat([w_ih.int(), w_hh.int()], dim=1))
        weight_specs.append(spec)
        biases.append(_bias_codes(params, dummy, w_ih, f"{name}.{g}.bias", layer.hidden_size))
        acc = _act_spec(getattr(layer.cell, _ACC_QUANT[g]), f"{name}.{g}.gate_acc")
        act, lut = _lut(getattr(layer.cell, _ACT_QUANT[g]), f"{name}.{g}.activation", acc)
        acc_specs.append(acc), act_specs.append(act), luts.append(lut)
    if len({(a.bit_width, a.signed, a.narrow_range) for a in acc_specs}) != 1:
        raise UnsupportedQuantizer(f"{name}: gate accumulator quantizers of different widths are not supported")
    hidden_tanh, cell_lut = _lut(layer.cell.hidden_state_tanh_quant, f"{name}.hidden_tanh", cell)
    return IntLSTMLayer(
        input_size=layer.input_size,
        hidden_size=layer.hidden_size,
        weight=torch.cat(weights, dim=0).to(torch.int8).numpy().copy(),
        weight_quant=tuple(weight_specs),
        bias=np.concatenate(biases),
        gate_acc_quant=tuple(acc_specs),
        gate_act_quant=tuple(act_specs),
        hidden_tanh_quant=hidden_tanh,
        gate_luts=np.stack(luts),
        cell_tanh_lut=cell_lut,
    )


def _bias_codes(params: nn.Module, quant_input, quant_weight, name: str, hidden: int) -> np.ndarray:
    if params.bias is None:
        return np.zeros(hidden, dtype=np.int32)
    _tensor_quant(params.bias_quant, name)
    qb = params.bias_quant(params.bias, quant_input, quant_weight)
    expected = (quant_input.scale * quant_weight.scale).reshape(-1)
    if torch.any(qb.zero_point != 0) or not torch.equal(qb.scale.reshape(-1), expected.expand_as(qb.scale.reshape(-1))):
        raise UnsupportedQuantizer(f"{name}: only int32 biases at scale input x weight (Int32Bias) are supported")
    return np.broadcast_to(qb.int().to(torch.int64).numpy(), (hidden,)).astype(np.int32)


def _head(head: QuantLinear) -> IntLinear:
    if head.input_quant is None or not head.input_quant.is_quant_enabled:
        raise UnsupportedQuantizer("head: the QuantLinear head needs an input quantizer (input_quant=...)")
    if head.output_quant.is_quant_enabled:
        raise UnsupportedQuantizer("head: output quantization of the logits is not supported")
    inp = _act_spec(head.input_quant, "head.input")
    quant_input = head.input_quant(torch.zeros(1, head.in_features))
    qw = head.quant_weight()
    spec = _spec(head.weight_quant, "head.weight", qw.scale, qw.zero_point, qw.bit_width)
    if spec.bit_width > MAX_WEIGHT_BITS:
        raise UnsupportedQuantizer(f"head.weight: {spec.bit_width}-bit weights exceed {MAX_WEIGHT_BITS} bits")
    bias = None if head.bias is None else _bias_codes(head, quant_input, qw, "head.bias", head.out_features)
    return IntLinear(weight=qw.int().to(torch.int8).numpy().copy(), weight_quant=spec, bias=bias, input_quant=inp)


@torch.no_grad()
def extract_lstm(quant_lstm: QuantLSTM, head: QuantLinear | None = None, *, pooling: str = "last") -> IntLSTMModel:
    """The integer model of a trained ``quant_lstm`` (+ ``head`` on its pooled hidden states).

    ``pooling`` says what the head sees: the ``"last"`` step's hidden state or the
    ``"mean"`` over time (a float mean requantized by the head's input quantizer).
    Puts both modules in eval mode (freezing stats-based scales) and leaves them there.
    Raises :class:`UnsupportedQuantizer` for rounding other than half-to-even, non-zero zero
    points, disabled quantizers, reversed layers or CIFG.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"extract_lstm: pooling must be one of {POOLINGS}, got {pooling!r}")
    quant_lstm.eval()
    if head is not None:
        head.eval()
    first = quant_lstm.layers[0][0]
    io = _act_spec(first.io_quant, "io")
    cell = _act_spec(first.cell.cell_state_quant, "cell_state")
    layers = []
    for index, directions in enumerate(quant_lstm.layers):
        if len(directions) != 1:
            raise UnsupportedQuantizer(f"layer {index}: bidirectional layers are not supported")
        layer = directions[0]
        if layer.io_quant is not first.io_quant or layer.cell.cell_state_quant is not first.cell.cell_state_quant:
            raise UnsupportedQuantizer(f"layer {index}: io and cell-state quantizers must be shared by all layers")
        layers.append(_layer(layer, f"layer{index}", first.io_quant, cell))
    input_scale = float(getattr(quant_lstm, "input_scale", torch.ones(())))  # QbenchQuantLSTM's fitted range
    return IntLSTMModel(
        io_quant=io, cell_quant=cell, layers=tuple(layers), head=None if head is None else _head(head), pooling=pooling,
        input_scale=input_scale,
    )
