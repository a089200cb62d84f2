"""The integer LSTM layer flattened into the arrays the Numba kernel takes (:mod:`kernels.lstm`),
built once at load: weight blocks, requantization multipliers and bounds, activation tables, and
the per-layer choice of the exact arithmetic each stage runs in (float32, float64 or int64 lanes).
:mod:`kernels.lstm` describes the step these arrays serve."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from kernels.fixedpoint import requant_params
from kernels.model import IntLSTMLayer, QuantSpec
from kernels.simd import QUAD_OFFSET, aligned, block_weights, block_weights_u8, compiled_u8_product
from qbench.errors import QbenchError

__all__ = ["AccumulatorOverflow", "LayerArrays", "PARAM_NAMES", "is_po2", "layer_arrays"]

INT32_MAX = 2**31 - 1


class AccumulatorOverflow(QbenchError):
    """A layer whose worst-case gate accumulator does not fit the kernel's int32 lanes."""


class LayerArrays(NamedTuple):
    """A layer flattened into the arrays the kernels take (built once at load)."""

    weight: np.ndarray  # (4H, K) int8 codes, K = F + H (the NumPy reference reads these)
    blocks: np.ndarray  # W[:, F:] (recurrent) in kernels.simd's blocked layout: pairs, or quads for gate_dot_u8
    input_blocks: np.ndarray  # W[:, :F] (input) in the same layout
    bias: np.ndarray  # (4H,) int32 codes
    kernel_bias: np.ndarray  # (4H,) int32: bias, minus QUAD_OFFSET * row sums of W with quad blocks
    gate_mult: np.ndarray  # (4H,) int32 requant multiplier acc -> gate code
    gate_shift: np.ndarray  # (4H,) int32
    gate_real: np.ndarray  # (4H,) float64: gate_mult * 2**-gate_shift, exactly
    gate_bounds: np.ndarray  # (2, 4H) int32: acc range outside which the gate code saturates (see _gate_bounds)
    gate_luts: np.ndarray  # (4, n_gate_codes) int32: gate code - gate_min -> activation code
    tanh_lut: np.ndarray  # (n_cell_codes,) int32: cell code - cell_min -> tanh code
    params: np.ndarray  # (15,) int64: see PARAM_NAMES
    fscales: np.ndarray  # (7,) float32: s_i, s_f, s_g, s_o, s_tanh_c, s_cell, s_io (float32 mode)


PARAM_NAMES = ("gate_min", "gate_max", "cell_min", "cell_max", "io_min", "io_max",
               "fc_mult", "fc_shift", "ic_mult", "ic_shift", "h_mult", "h_shift", "float32_cell", "gate_float_bits",
               "cell_float_bits")

FLOAT64_EXACT = 2**53  # integers below this (and their products by powers of two) are exact in float64
FLOAT32_EXACT = 2**24  # ... in float32


def _f64(spec: QuantSpec) -> np.ndarray:
    return spec.scale.astype(np.float64)


def _check_accumulator(layer: IntLSTMLayer, io: QuantSpec) -> None:
    """Refuse a layer whose |bias| + sum_k |w| * max|z| could leave int32 (the kernel would wrap)."""
    z_max = max(abs(io.qmin), abs(io.qmax))
    bound = np.abs(layer.weight.astype(np.int64)).sum(axis=1) * z_max + np.abs(layer.bias.astype(np.int64))
    if bound.max() > INT32_MAX:
        raise AccumulatorOverflow(f"gate accumulator bound {bound.max()} exceeds int32; weights or biases too wide")


def _int32(values: np.ndarray, what: str) -> np.ndarray:
    if values.min() < -INT32_MAX - 1 or values.max() > INT32_MAX:
        raise AccumulatorOverflow(f"{what} do not fit int32 (range {values.min()} .. {values.max()})")
    return values.astype(np.int32)


def is_po2(*specs: QuantSpec) -> bool:
    """Whether every scale of ``specs`` is a power of two."""
    return all(np.all(np.frexp(s.scale.astype(np.float64))[0] == 0.5) for s in specs)


def _u8_inputs(layer: IntLSTMLayer, io: QuantSpec) -> bool:
    """Whether the kernel can feed ``io`` codes + 128 as uint8 to :func:`kernels.simd.gate_dot_u8`:
    signed codes of at most 8 bits, VNNI compiled in, and ``sum_k |W[r, k]| * 255`` (the largest
    partial sum of an unsigned product) plus the offset-folded bias inside int32."""
    if not (compiled_u8_product() and io.signed and io.qmin >= -QUAD_OFFSET and io.qmax < QUAD_OFFSET):
        return False
    w = layer.weight.astype(np.int64)
    folded = layer.bias.astype(np.int64) - QUAD_OFFSET * w.sum(axis=1)
    return int(np.abs(w).sum(axis=1).max()) * 255 <= INT32_MAX and int(np.abs(folded).max()) <= INT32_MAX


def _gate_bounds(mult: np.ndarray, shift: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, int]:
    """(2, R) int32 accumulator bounds per row, and the narrowest float the gate requantization
    is exact in: 32, 64, or 0 (the kernel takes the int64 way).

    ``code(a) = clamp(round_half_even(a * mult / 2**shift), lo, hi)`` is monotone in ``a`` and
    saturates at ``lo`` for ``a <= floor((lo - 1) 2**shift / mult)`` and at ``hi`` for
    ``a >= ceil((hi + 1) 2**shift / mult)``, so clamping ``a`` to those bounds first changes no
    code. Within them, ``a * mult`` is an integer; below 2**24 (float32; power-of-two scales,
    ``mult`` = 1, with small shifts) or 2**53 (float64), ``float(a) * (mult * 2**-shift)`` is
    exact and ``np.rint`` rounds it half to even exactly as the integer shift does.
    """
    bounds = np.empty((2, mult.size), dtype=np.int64)
    largest = 0
    for r, (m, s) in enumerate(zip(mult.tolist(), shift.tolist())):
        a_lo = max(((lo - 1) << s) // m, -INT32_MAX - 1)  # Python ints: exact at any shift
        a_hi = min(-((-(hi + 1) << s) // m), INT32_MAX)
        bounds[:, r] = a_lo, a_hi
        largest = max(largest, max(abs(a_lo), abs(a_hi)) * m)
    bits = 32 if largest < FLOAT32_EXACT else (64 if largest < FLOAT64_EXACT else 0)
    return bounds.astype(np.int32), bits


def _cell_float_bits(layer: IntLSTMLayer, cell: QuantSpec, products) -> int:
    """The narrowest float the fixed-point cell update runs in exactly (:func:`kernels.lstm._rq_real`): 32 or
    64, or 0 for int64. Exact means, for each requantized product ``a * b`` (``f * c``,
    ``i * g``, ``o * tanh(c)``), that the largest ``|a| * |b| * mult`` stays below 2**24
    (float32) or 2**53 (float64), with a shift of at most 62, so ``a * b * (mult * 2**-shift)``
    is exact and ``np.rint`` rounds it half to even exactly as the integer shift does. Power-of-
    two scales (``mult`` = 1) with 8-bit gates and a 16-bit cell take float32: 2**7 * 2**15."""
    def top(spec: QuantSpec) -> int:
        return max(abs(spec.qmin), abs(spec.qmax))

    i, f, g, o = (top(q) for q in layer.gate_act_quant)
    sizes = (f * top(cell), i * g, o * top(layer.hidden_tanh_quant))
    for bits, limit in ((32, FLOAT32_EXACT), (64, FLOAT64_EXACT)):
        if all(size * int(m) < limit and 0 <= int(sh) <= 62 for size, (m, sh) in zip(sizes, products)):
            return bits
    return 0


def layer_arrays(layer: IntLSTMLayer, io: QuantSpec, cell: QuantSpec, *, float32_cell: bool | None = None,
                 u8_inputs: bool | None = None) -> LayerArrays:
    """Requantization multipliers and clamps of ``layer`` for the kernels.

    ``float32_cell`` (default: on unless every scale of the cell update is a power of two)
    computes the three element-wise products ``f*c``, ``i*g``, ``o*tanh(c)`` and the sum
    ``f*c + i*g`` from dequantized float32 values, rounding each IEEE float32 operation
    exactly as Brevitas' forward does. With power-of-two scales both ways are exact and
    identical; with float scales the fixed-point way differs from Brevitas wherever float32
    rounding moves a 16-bit cell value across a .5 tie (a 16-bit code near 2**14 has a
    float32 ulp of ~0.002 codes). On an 8-bit 64->128 test model free-running agreement with
    Brevitas rose from 98.6 % to 99.7 % with this mode.

    ``u8_inputs`` (default: whenever :func:`_u8_inputs` allows) lays the weights out for
    :func:`kernels.simd.gate_dot_u8` (VNNI ``vpdpbusd``, twice the multiply-accumulates per
    instruction); the codes are the same either way.
    """
    _check_accumulator(layer, io)
    if u8_inputs is None:
        u8_inputs = _u8_inputs(layer, io)
    kernel_bias = layer.bias.astype(np.int64)
    if u8_inputs:
        kernel_bias = kernel_bias - QUAD_OFFSET * layer.weight.astype(np.int64).sum(axis=1)
    cell_specs = (*layer.gate_act_quant, layer.hidden_tanh_quant, cell, io)
    if float32_cell is None:
        float32_cell = not is_po2(*cell_specs)
    h = layer.hidden_size
    acc_scale = np.concatenate([np.broadcast_to(_f64(q), (h,)) for q in layer.gate_acc_quant])
    gate_mult, gate_shift = requant_params(_f64(io) * layer.weight_scale_rows() / acc_scale)
    s_i, s_f, s_g, s_o = (_f64(q) for q in layer.gate_act_quant)
    fc = requant_params(s_f)  # (f * s_f) * (c * s_c) / s_c
    ic = requant_params(s_i * s_g / _f64(cell))
    hq = requant_params(s_o * _f64(layer.hidden_tanh_quant) / _f64(io))
    acc = layer.gate_acc_quant[0]
    gate_mult = _int32(gate_mult, "gate requantization multipliers (a scale ratio above 2**30?)")
    gate_bounds, gate_float_bits = _gate_bounds(gate_mult, gate_shift, acc.qmin, acc.qmax)
    params = [acc.qmin, acc.qmax, cell.qmin, cell.qmax, io.qmin, io.qmax, *fc, *ic, *hq, float32_cell, gate_float_bits,
              _cell_float_bits(layer, cell, (fc, ic, hq))]
    # pair blocks are widened to int16 once here: the product then loads them straight into
    # pmaddwd instead of sign-extending every load (AVX2: one shuffle-port uop per 16 weights)
    def block(w: np.ndarray) -> np.ndarray:  # on a cache line: see kernels.simd.aligned
        return aligned(block_weights_u8(w) if u8_inputs else block_weights(w).astype(np.int16))

    f = layer.input_size
    return LayerArrays(
        weight=np.ascontiguousarray(layer.weight, dtype=np.int8),
        blocks=block(layer.weight[:, f:]),
        input_blocks=block(layer.weight[:, :f]),
        bias=layer.bias.astype(np.int32),  # |bias| is within the accumulator bound checked above
        kernel_bias=_int32(kernel_bias, "offset-folded biases"),
        gate_mult=gate_mult,
        gate_shift=gate_shift.astype(np.int32),
        gate_real=np.ldexp(gate_mult.astype(np.float64), -gate_shift.astype(np.int64)),
        gate_bounds=gate_bounds,
        gate_luts=layer.gate_luts.astype(np.int32),
        tanh_lut=layer.cell_tanh_lut.astype(np.int32),
        params=np.array([int(p) for p in params], dtype=np.int64),
        fscales=np.array([np.float32(s.scale) for s in cell_specs], dtype=np.float32),
    )
