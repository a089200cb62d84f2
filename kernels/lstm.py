"""The integer LSTM layer: the plain NumPy reference first, then the Numba kernel.

One time step, per batch row, in the order and rounding of Brevitas' ``_QuantLSTMCell``:

1. ``acc[r] = bias[r] + sum_k W[r, k] * z[k]`` with ``z = concat(x_t, h_{t-1})`` io codes.
   int32 suffices: ``|acc| <= K * 2**(wb-1) * 2**(ab-1) + |bias|``; at K = 64 + 256, 8-bit
   weights and inputs that is 320 * 127 * 128 = 5.2e6, far below 2**31, and
   :func:`layer_arrays` refuses a layer whose bound passes 2**31. The NumPy reference
   accumulates in int64 (no wraparound: an overflow would show as a mismatch). The Numba
   kernel computes the dot products with :func:`kernels.simd.gate_dot` (explicit SIMD, int32
   lanes), lossless under that bound, or, for signed io codes of at most 8 bits on AVX-512
   VNNI, with :func:`kernels.simd.gate_dot_u8` on ``z + 128`` as uint8 (``vpdpbusd``), the
   offset's ``128 * sum_k W[r, k]`` folded into the bias (:attr:`LayerArrays.kernel_bias`).
2. ``gate[r] = clamp(rq(acc[r], io*w[r]/gate_acc))``: ``rq`` rounds half to even; its
   multiplier fits int32 (:mod:`kernels.fixedpoint`), so ``acc * mult`` is one 32 x 32 -> 64
   bit product per lane.
3. ``i, f, o = sigmoid_lut[gate]``, ``g = tanh_lut[gate]`` (the model's own quantizers).
4. ``fc = clamp_c(rq(f*c, s_f))``; ``ic = clamp_c(rq(i*g, s_i*s_g/s_c))``;
   ``c = clamp_c(fc + ic)``; ``h = clamp_io(rq(o * tanh_lut_c[c], s_o*s_t/s_io))``
   (with float scales, step 4 repeats Brevitas' float32 operations instead: see
   :func:`layer_arrays`).

Bit-exactness with power-of-two scales also needs Brevitas' own float32 arithmetic to be
exact: its gate sums are integers times ``s_io * s_w`` and stay exact while below 2**24
units (5.2e6 above), and ``f*c`` with 8-bit ``f`` and 16-bit ``c`` is below 255 * 32768 < 2**24.
Every ``clamp`` saturates at the quantizer's integer range, as Brevitas' clamp does.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from kernels.fixedpoint import requant_params, rshift_round_half_even
from kernels.model import IntLSTMLayer, QuantSpec
from kernels.simd import QUAD_OFFSET, block_weights, block_weights_u8, compiled_u8_product, gate_dot, gate_dot_u8
from qbench.errors import QbenchError

__all__ = ["AccumulatorOverflow", "LayerArrays", "is_po2", "kernel_args", "layer_arrays", "lstm_layer_numba",
           "lstm_layer_ref", "run_layer_numba"]

INT32_MAX = 2**31 - 1


class AccumulatorOverflow(QbenchError):
    """A layer whose worst-case gate accumulator does not fit the kernel's int32 lanes."""


class LayerArrays(NamedTuple):
    """A layer flattened into the arrays the kernels take (built once at load)."""

    weight: np.ndarray  # (4H, K) int8 codes, K = F + H (the NumPy reference reads these)
    blocks: np.ndarray  # the same codes in kernels.simd's blocked layout: pairs, or quads for gate_dot_u8
    bias: np.ndarray  # (4H,) int32 codes
    kernel_bias: np.ndarray  # (4H,) int32: bias, minus QUAD_OFFSET * row sums of W with quad blocks
    gate_mult: np.ndarray  # (4H,) int32 requant multiplier acc -> gate code
    gate_shift: np.ndarray  # (4H,) int32
    gate_luts: np.ndarray  # (4, n_gate_codes) int32: gate code - gate_min -> activation code
    tanh_lut: np.ndarray  # (n_cell_codes,) int32: cell code - cell_min -> tanh code
    params: np.ndarray  # (13,) int64: see _PARAM_NAMES
    fscales: np.ndarray  # (7,) float32: s_i, s_f, s_g, s_o, s_tanh_c, s_cell, s_io (float32 mode)


_PARAM_NAMES = ("gate_min", "gate_max", "cell_min", "cell_max", "io_min", "io_max",
                "fc_mult", "fc_shift", "ic_mult", "ic_shift", "h_mult", "h_shift", "float32_cell")


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
    params = [acc.qmin, acc.qmax, cell.qmin, cell.qmax, io.qmin, io.qmax, *fc, *ic, *hq, float32_cell]
    return LayerArrays(
        weight=np.ascontiguousarray(layer.weight, dtype=np.int8),
        blocks=block_weights_u8(layer.weight) if u8_inputs else block_weights(layer.weight),
        bias=layer.bias.astype(np.int32),  # |bias| is within the accumulator bound checked above
        kernel_bias=_int32(kernel_bias, "offset-folded biases"),
        gate_mult=_int32(gate_mult, "gate requantization multipliers (a scale ratio above 2**30?)"),
        gate_shift=gate_shift.astype(np.int32),
        gate_luts=layer.gate_luts.astype(np.int32),
        tanh_lut=layer.cell_tanh_lut.astype(np.int32),
        params=np.array([int(p) for p in params], dtype=np.int64),
        fscales=np.array([np.float32(s.scale) for s in cell_specs], dtype=np.float32),
    )


# ---------------------------------------------------------------- plain NumPy reference

def _rq_clamp(x: np.ndarray, mult, shift, lo: int, hi: int) -> np.ndarray:
    return np.clip(rshift_round_half_even(x * mult, shift), lo, hi)


def _quant_f32_ref(v: np.ndarray, scale: np.float32, lo: int, hi: int) -> np.ndarray:
    """Brevitas' IntQuant on float32 ``v``: clamp(round_half_even(v / scale)) as int64 codes."""
    return np.clip(np.rint(v / scale), lo, hi).astype(np.int64)


def _deq(code: np.ndarray, scale: np.float32) -> np.ndarray:
    """Codes -> float32 values, as Brevitas dequantizes (codes below 2**24 convert exactly)."""
    return code.astype(np.float32) * scale


def _cell_float32(s: np.ndarray, tanh_lut: np.ndarray, p: dict, i, f, g, o, c, h) -> None:
    """Step 4 in Brevitas' float32 operations, updating ``c``, ``h`` (B, H) in place."""
    s_i, s_f, s_g, s_o, s_t, s_c, s_io = s
    deq = _deq
    fc = _quant_f32_ref(deq(f, s_f) * deq(c, s_c), s_c, p["cell_min"], p["cell_max"])
    ic = _quant_f32_ref(deq(i, s_i) * deq(g, s_g), s_c, p["cell_min"], p["cell_max"])
    c[:] = _quant_f32_ref(deq(fc, s_c) + deq(ic, s_c), s_c, p["cell_min"], p["cell_max"])
    tanh_c = tanh_lut[c - p["cell_min"]]
    h[:] = _quant_f32_ref(deq(o, s_o) * deq(tanh_c, s_t), s_io, p["io_min"], p["io_max"])


def lstm_layer_ref(a: LayerArrays, x: np.ndarray, h: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(B, T, F) io codes -> (B, T, H) hidden codes; ``h``, ``c`` (B, H) int64 updated in place."""
    p = dict(zip(_PARAM_NAMES, a.params.tolist()))
    batch, steps, _ = x.shape
    hidden = h.shape[1]
    out = np.empty((batch, steps, hidden), dtype=np.int64)
    w = a.weight.astype(np.int64)
    for t in range(steps):
        z = np.concatenate([x[:, t].astype(np.int64), h], axis=1)  # (B, K)
        acc = z @ w.T + a.bias  # (B, 4H) int64, exact
        gate = _rq_clamp(acc, a.gate_mult, a.gate_shift, p["gate_min"], p["gate_max"]) - p["gate_min"]
        i, f, g, o = (a.gate_luts[k][gate[:, k * hidden:(k + 1) * hidden]].astype(np.int64) for k in range(4))
        if p["float32_cell"]:
            _cell_float32(a.fscales, a.tanh_lut, p, i, f, g, o, c, h)
        else:
            fc = _rq_clamp(f * c, p["fc_mult"], p["fc_shift"], p["cell_min"], p["cell_max"])
            ic = _rq_clamp(i * g, p["ic_mult"], p["ic_shift"], p["cell_min"], p["cell_max"])
            c[:] = np.clip(fc + ic, p["cell_min"], p["cell_max"])
            tanh_c = a.tanh_lut[c - p["cell_min"]]
            h[:] = _rq_clamp(o * tanh_c, p["h_mult"], p["h_shift"], p["io_min"], p["io_max"])
        out[:, t] = h
    return out


# ---------------------------------------------------------------- Numba kernel

@numba.njit(cache=True, fastmath=False, inline="always")
def _round_shift(y, shift):
    """round_half_even(y / 2**shift), int64 ``y``, shift >= 1, without branches."""
    shift = np.int64(shift)
    return (y + ((np.int64(1) << (shift - 1)) - 1) + ((y >> shift) & 1)) >> shift


@numba.njit(cache=True, fastmath=False, inline="always")
def _rq(x, mult, shift):
    """round_half_even(x * mult / 2**shift), int64 scalars, shift >= 1."""
    return _round_shift(x * mult, shift)


@numba.njit(cache=True, fastmath=False, inline="always")
def _clamp(x, lo, hi):
    return lo if x < lo else (hi if x > hi else x)


@numba.njit(cache=True, fastmath=False, inline="always")
def _mul_f32(a_code, a_scale, b_code, b_scale):
    """float32 product of two dequantized codes, rounded like torch's float32 ops."""
    return np.float32(np.float32(a_code) * a_scale) * np.float32(np.float32(b_code) * b_scale)


@numba.njit(cache=True, fastmath=False, inline="always")
def _quant_f32(v, scale, lo, hi):
    """Brevitas' IntQuant of float32 ``v``: clamp(round_half_even(v / scale)) as an int32 code.

    Clamping the rounded float before converting is the same as clamping the integer
    (``lo``, ``hi`` are exact in float32) and keeps the loop in 32-bit SIMD lanes."""
    q = np.rint(np.float32(v / scale))
    return np.int32(np.float32(lo) if q < lo else (np.float32(hi) if q > hi else q))


@numba.njit(cache=True, fastmath=False, inline="always")
def _gate_indices(acc, bias, gate_mult, gate_shift, gate_off, g_lo, g_hi, idx):
    """idx[b, r] = the lookup-table index of gate row r of batch row b: its requantized and
    clamped gate code, offset into the flattened (4 x n_codes) gate tables.

    One loop over (B, 4H): ``acc + bias`` is int32 by the accumulator bound and ``mult`` is
    int32, so each product is one 32 x 32 -> 64-bit multiply per lane (``vpmuldq``).
    """
    for b in range(idx.shape[0]):
        for r in range(idx.shape[1]):
            y = np.int64(np.int32(acc[b, r] + bias[r])) * np.int64(gate_mult[r])
            idx[b, r] = np.int32(_clamp(_round_shift(y, gate_shift[r]), g_lo, g_hi) + gate_off[r])


@numba.njit(cache=True, fastmath=False, inline="always")
def _lookup(lut, idx, out):
    """out[b, j] = lut[idx[b, j]] over a whole (B, n) array (a gather; unsigned: no wraparound check)."""
    for b in range(idx.shape[0]):
        for j in range(idx.shape[1]):
            out[b, j] = lut[np.uint32(idx[b, j])]


@numba.njit(cache=True, fastmath=False, inline="always")
def _cell_fixed_nb(act, params, c, tc_idx):
    """Cell update of every batch row with fixed-point requantization (exact for po2).

    ``act`` (B, 4H) gate activations i, f, g, o; ``c`` (B, H) int32 cell codes, updated;
    ``tc_idx`` (B, H) gets the tanh(c) table index ``c - c_min``.
    """
    hidden = c.shape[1]
    c_lo, c_hi = params[2], params[3]
    for b in range(c.shape[0]):
        for j in range(hidden):
            fc = _clamp(_rq(np.int64(act[b, hidden + j] * c[b, j]), params[6], params[7]), c_lo, c_hi)
            ic = _clamp(_rq(np.int64(act[b, j] * act[b, 2 * hidden + j]), params[8], params[9]), c_lo, c_hi)
            c_new = np.int32(_clamp(fc + ic, c_lo, c_hi))
            c[b, j] = c_new
            tc_idx[b, j] = c_new - np.int32(c_lo)


@numba.njit(cache=True, fastmath=False, inline="always")
def _hidden_fixed_nb(act, tanh_c, params, h):
    """h[b, j] = clamp_io(rq(o * tanh(c))) for every batch row, as int32 codes."""
    hidden = h.shape[1]
    io_lo, io_hi = params[4], params[5]
    for b in range(h.shape[0]):
        for j in range(hidden):
            h[b, j] = np.int32(_clamp(_rq(np.int64(act[b, 3 * hidden + j] * tanh_c[b, j]), params[10], params[11]),
                                      io_lo, io_hi))


@numba.njit(cache=True, fastmath=False, inline="always")
def _cell_float32_nb(act, params, fscales, c, tc_idx):
    """:func:`_cell_fixed_nb` in Brevitas' float32 operations (float scales)."""
    hidden = c.shape[1]
    c_lo, c_hi = params[2], params[3]
    s_i, s_f, s_g, s_c = fscales[0], fscales[1], fscales[2], fscales[5]
    for b in range(c.shape[0]):
        for j in range(hidden):
            fc = _quant_f32(_mul_f32(act[b, hidden + j], s_f, c[b, j], s_c), s_c, c_lo, c_hi)
            ic = _quant_f32(_mul_f32(act[b, j], s_i, act[b, 2 * hidden + j], s_g), s_c, c_lo, c_hi)
            c_new = _quant_f32(np.float32(np.float32(fc) * s_c) + np.float32(np.float32(ic) * s_c), s_c, c_lo, c_hi)
            c[b, j] = c_new
            tc_idx[b, j] = c_new - np.int32(c_lo)


@numba.njit(cache=True, fastmath=False, inline="always")
def _hidden_float32_nb(act, tanh_c, params, fscales, h):
    """:func:`_hidden_fixed_nb` in Brevitas' float32 operations."""
    hidden = h.shape[1]
    io_lo, io_hi = params[4], params[5]
    s_o, s_t, s_io = fscales[3], fscales[4], fscales[6]
    for b in range(h.shape[0]):
        for j in range(hidden):
            h[b, j] = _quant_f32(_mul_f32(act[b, 3 * hidden + j], s_o, tanh_c[b, j], s_t), s_io, io_lo, io_hi)


@numba.njit(cache=True, fastmath=False)
def lstm_layer_numba(blocks, bias, gate_mult, gate_shift, gate_luts, tanh_lut, params, fscales, x, h, c):
    """Same contract as :func:`lstm_layer_ref` (codes returned as int16); ``blocks`` is
    :attr:`LayerArrays.blocks`, ``x`` (B, T, F) int16, ``h``/``c`` (B, H) int64.

    After each step's gate product every stage runs over the whole batch as (B, 4H) or (B, H)
    int32 arrays, one stage per loop (requantization, gate lookups, cell update, tanh lookup,
    hidden requantization), so LLVM vectorises the arithmetic over B x H and the lookups
    become gathers; state is carried in int32 (cell codes are at most 16 bits).
    """
    batch, steps, n_in = x.shape
    hidden = h.shape[1]
    rows = 4 * hidden
    float32_cell = params[12] != 0
    n_codes = gate_luts.shape[1]
    lut = np.ascontiguousarray(gate_luts).reshape(4 * n_codes)
    gate_off = np.empty(rows, dtype=np.int32)  # -gate_min + the table of the row's gate
    for r in range(rows):
        gate_off[r] = np.int32((r // hidden) * n_codes - params[0])
    out = np.empty((batch, steps, hidden), dtype=np.int16)
    u8 = blocks.shape[3] == 4  # quad blocks: gate_dot_u8 on codes + QUAD_OFFSET
    # [x_t, h_{t-1}, zero padding] per row, as int16 codes (pair blocks) or uint8 codes + 128 (quad blocks)
    z = np.zeros((batch, 0 if u8 else blocks.shape[1] * blocks.shape[3]), dtype=np.int16)
    zu = np.zeros((batch, blocks.shape[1] * blocks.shape[3] if u8 else 0), dtype=np.uint8)
    zero = np.int32(QUAD_OFFSET)
    acc = np.empty((batch, blocks.shape[0] * blocks.shape[2]), dtype=np.int32)  # rows padded to whole blocks
    idx = np.empty((batch, rows), dtype=np.int32)  # gate table indices
    act = np.empty((batch, rows), dtype=np.int32)  # activation codes i, f, g, o
    c32 = np.empty((batch, hidden), dtype=np.int32)
    h32 = np.empty((batch, hidden), dtype=np.int32)
    tc = np.empty((batch, hidden), dtype=np.int32)  # tanh(c) table indices, then codes
    for b in range(batch):
        for j in range(hidden):
            c32[b, j] = c[b, j]
            h32[b, j] = h[b, j]
    for t in range(steps):
        if u8:
            for b in range(batch):
                for k in range(n_in):
                    zu[b, k] = np.uint8(x[b, t, k] + zero)
                for j in range(hidden):
                    zu[b, n_in + j] = np.uint8(h32[b, j] + zero)
            gate_dot_u8(blocks, zu, acc)
        else:
            for b in range(batch):
                for k in range(n_in):
                    z[b, k] = x[b, t, k]
                for j in range(hidden):
                    z[b, n_in + j] = np.int16(h32[b, j])
            gate_dot(blocks, z, acc)
        _gate_indices(acc, bias, gate_mult, gate_shift, gate_off, params[0], params[1], idx)
        _lookup(lut, idx, act)
        if float32_cell:
            _cell_float32_nb(act, params, fscales, c32, tc)
            _lookup(tanh_lut, tc, tc)
            _hidden_float32_nb(act, tc, params, fscales, h32)
        else:
            _cell_fixed_nb(act, params, c32, tc)
            _lookup(tanh_lut, tc, tc)
            _hidden_fixed_nb(act, tc, params, h32)
        for b in range(batch):
            for j in range(hidden):
                out[b, t, j] = np.int16(h32[b, j])
    for b in range(batch):
        for j in range(hidden):
            c[b, j] = c32[b, j]
            h[b, j] = h32[b, j]
    return out


def kernel_args(a: LayerArrays) -> tuple[np.ndarray, ...]:
    """The leading arguments of :func:`lstm_layer_numba` (all but ``x, h, c``)."""
    return a.blocks, a.kernel_bias, a.gate_mult, a.gate_shift, a.gate_luts, a.tanh_lut, a.params, a.fscales


def run_layer_numba(a: LayerArrays, x: np.ndarray, h: np.ndarray, c: np.ndarray) -> np.ndarray:
    """:func:`lstm_layer_numba` on the arrays of :func:`layer_arrays`: (B, T, F) int16 codes -> (B, T, H) int16."""
    return lstm_layer_numba(*kernel_args(a), x, h, c)
