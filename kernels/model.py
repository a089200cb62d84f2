"""The integer LSTM model: codes, scales and bit widths read out of a Brevitas QuantLSTM.

This is the single description that the Numba kernel (:mod:`kernels.lstm`) and the ONNX
LSTM exporter build from. Every real value of the Brevitas model is ``(code - zero_point) *
scale`` with ``zero_point == 0`` (:func:`kernels.extract.extract_lstm` refuses anything else).

Gate order everywhere is nn.LSTM's: input ``i``, forget ``f``, cell ``g``, output ``o``.
"""

from __future__ import annotations

import dataclasses
import numpy as np

from kernels.pack import code_range, packed_nbytes

__all__ = ["GATES", "IntLSTMLayer", "IntLSTMModel", "IntLinear", "QuantSpec"]

GATES = ("i", "f", "g", "o")
SCALE_NBYTES = 4  # scales are stored as float32
BIAS_NBYTES = 4  # biases are int32 codes


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """One uniform quantizer: ``value = (code - zero_point) * scale``."""

    scale: np.ndarray  # float32, () per tensor or (C,) per output channel
    bit_width: int
    signed: bool
    narrow_range: bool
    zero_point: int = 0

    @property
    def qmin(self) -> int:
        return code_range(self.bit_width, signed=self.signed, narrow=self.narrow_range)[0]

    @property
    def qmax(self) -> int:
        return code_range(self.bit_width, signed=self.signed, narrow=self.narrow_range)[1]

    @property
    def n_codes(self) -> int:
        return self.qmax - self.qmin + 1


@dataclasses.dataclass(frozen=True)
class IntLSTMLayer:
    """One unidirectional LSTM layer in integers (F inputs, H hidden units).

    The gate pre-activation of row ``r`` (gate ``r // H``) is the int32 accumulator
    ``bias[r] + weight[r] . concat(x_codes, h_codes)``, at scale ``io.scale * weight_scale(r)``.
    """

    input_size: int  # F
    hidden_size: int  # H
    weight: np.ndarray  # (4H, F + H) int8 codes, columns [W_ih | W_hh]
    weight_quant: tuple[QuantSpec, ...]  # per gate; scale () or (H,)
    bias: np.ndarray  # (4H,) int32 codes at scale io.scale * weight scale
    gate_acc_quant: tuple[QuantSpec, ...]  # per gate: the pre-activation quantizer
    gate_act_quant: tuple[QuantSpec, ...]  # per gate: sigmoid (i, f, o) / tanh (g) output quantizer
    hidden_tanh_quant: QuantSpec  # tanh(c_t) output quantizer
    gate_luts: np.ndarray  # (4, n_gate_codes) int32: [gate, acc_code - qmin] -> activation code
    cell_tanh_lut: np.ndarray  # (n_cell_codes,) int32: [c_code - cell.qmin] -> tanh code

    def weight_scale_rows(self) -> np.ndarray:
        """(4H,) float64 weight scale of every accumulator row."""
        h = self.hidden_size
        return np.concatenate([np.broadcast_to(q.scale.astype(np.float64), (h,)) for q in self.weight_quant])


@dataclasses.dataclass(frozen=True)
class IntLinear:
    """A quantized linear classifier head: ``logits = (W q(x) + b) * s_in * s_w`` (float)."""

    weight: np.ndarray  # (C, D) int8 codes
    weight_quant: QuantSpec  # scale () or (C,)
    bias: np.ndarray | None  # (C,) int32 codes at scale input.scale * weight scale
    input_quant: QuantSpec  # requantizes the LSTM's last hidden state


@dataclasses.dataclass(frozen=True)
class IntLSTMModel:
    """A stack of integer LSTM layers sharing one io and one cell-state quantizer, plus a head."""

    io_quant: QuantSpec  # x_t of layer 0 and h_t of every layer (Brevitas shares it)
    cell_quant: QuantSpec  # f*c, i*g and c_t of every layer (shared too)
    layers: tuple[IntLSTMLayer, ...]
    head: IntLinear | None = None  # applied to the pooled top-layer hidden states
    pooling: str = "last"  # what the head sees: "last" hidden state or "mean" over time
    input_scale: float = 1.0  # float32 divisor of the features before the io quantizer (fitted range)

    @property
    def input_size(self) -> int:
        return self.layers[0].input_size

    @property
    def hidden_size(self) -> int:
        return self.layers[-1].hidden_size

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        """(B, T, F) float features -> (B, T, F) int16 io codes, rounded as Brevitas does.

        The features are divided by ``input_scale`` first, in float32, as the quantized LSTM
        divides its input before its io quantizer.
        """
        q = self.io_quant
        x = np.asarray(x, dtype=np.float32) / np.float32(self.input_scale)
        codes = np.round(x / np.float32(q.scale))
        return np.clip(codes, q.qmin, q.qmax).astype(np.int16)

    def size_breakdown(self) -> dict[str, int]:
        """Bytes of the stored model: packed weights, int32 biases, float32 scales."""
        weights = sum(packed_nbytes(l.weight.size, l.weight_quant[0].bit_width) for l in self.layers)
        biases = sum(l.bias.size for l in self.layers) * BIAS_NBYTES
        specs = [self.io_quant, self.cell_quant]
        for l in self.layers:
            specs += [*l.weight_quant, *l.gate_acc_quant, *l.gate_act_quant, l.hidden_tanh_quant]
        if self.head is not None:
            weights += packed_nbytes(self.head.weight.size, self.head.weight_quant.bit_width)
            biases += 0 if self.head.bias is None else self.head.bias.size * BIAS_NBYTES
            specs += [self.head.weight_quant, self.head.input_quant]
        scales = sum(s.scale.size for s in specs) * SCALE_NBYTES
        return {"weights": weights, "biases": biases, "scales": scales}

    @property
    def packed_nbytes(self) -> int:
        """What size tables count: packed weights + int32 biases + float32 scales (LUTs are derived)."""
        return sum(self.size_breakdown().values())
