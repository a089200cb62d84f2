"""The integer LSTM layer: the plain NumPy reference first, then the Numba kernel.

One time step, per batch row, in the order and rounding of Brevitas' ``_QuantLSTMCell``:

1. ``acc[r] = bias[r] + sum_k W[r, k] * z[k]`` with ``z = concat(x_t, h_{t-1})`` io codes.
   int32 suffices: ``|acc| <= K * 2**(wb-1) * 2**(ab-1) + |bias|``; at K = 64 + 256, 8-bit
   weights and inputs that is 320 * 127 * 128 = 5.2e6, far below 2**31, and
   :func:`layer_arrays` refuses a layer whose bound passes 2**31. The NumPy reference
   accumulates in int64 (no wraparound: an overflow would show as a mismatch). In the Numba
   kernel Numba widens each int16 x int16 product to an int64 scalar; the code truncates
   product and sum back to int32 explicitly, which is what lets LLVM use 32-bit SIMD lanes
   (``vpmaddwd``) and is lossless under that bound.
2. ``gate[r] = clamp(rq(acc[r], io*w[r]/gate_acc))``: ``rq`` rounds half to even.
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
from qbench.errors import QbenchError

__all__ = ["AccumulatorOverflow", "LayerArrays", "is_po2", "layer_arrays", "lstm_layer_numba", "lstm_layer_ref"]

INT32_MAX = 2**31 - 1
K_PAD_MULTIPLE = 64  # LLVM's vectorised dot loop eats 64 int16 a trip (4 x ymm); no scalar tail


class AccumulatorOverflow(QbenchError):
    """A layer whose worst-case gate accumulator does not fit the kernel's int32 lanes."""


class LayerArrays(NamedTuple):
    """A layer flattened into the arrays the kernels take (built once at load)."""

    weight: np.ndarray  # (4H, K_pad) int16 codes, K = F + H zero-padded to K_PAD_MULTIPLE
    bias: np.ndarray  # (4H,) int64 codes
    gate_mult: np.ndarray  # (4H,) int64 requant multiplier acc -> gate code
    gate_shift: np.ndarray  # (4H,) int64
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


def _padded(weight: np.ndarray) -> np.ndarray:
    """(R, K) codes -> (R, K_pad) int16, zero columns appended (they add nothing to a dot)."""
    rows, k = weight.shape
    out = np.zeros((rows, -(-k // K_PAD_MULTIPLE) * K_PAD_MULTIPLE), dtype=np.int16)
    out[:, :k] = weight
    return out


def is_po2(*specs: QuantSpec) -> bool:
    """Whether every scale of ``specs`` is a power of two."""
    return all(np.all(np.frexp(s.scale.astype(np.float64))[0] == 0.5) for s in specs)


def layer_arrays(layer: IntLSTMLayer, io: QuantSpec, cell: QuantSpec, *, float32_cell: bool | None = None) -> LayerArrays:
    """Requantization multipliers and clamps of ``layer`` for the kernels.

    ``float32_cell`` (default: on unless every scale of the cell update is a power of two)
    computes the three element-wise products ``f*c``, ``i*g``, ``o*tanh(c)`` and the sum
    ``f*c + i*g`` from dequantized float32 values, rounding each IEEE float32 operation
    exactly as Brevitas' forward does. With power-of-two scales both ways are exact and
    identical; with float scales the fixed-point way differs from Brevitas wherever float32
    rounding moves a 16-bit cell value across a .5 tie (a 16-bit code near 2**14 has a
    float32 ulp of ~0.002 codes). On an 8-bit 64->128 test model free-running agreement with
    Brevitas rose from 98.6 % to 99.7 % with this mode.
    """
    _check_accumulator(layer, io)
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
        weight=_padded(layer.weight),
        bias=layer.bias.astype(np.int64),
        gate_mult=gate_mult,
        gate_shift=gate_shift,
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
    w = a.weight[:, : x.shape[2] + hidden].astype(np.int64)  # drop the zero padding
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
def _rq(x, mult, shift):
    """round_half_even(x * mult / 2**shift), int64 scalars, shift >= 1, without branches."""
    y = x * mult
    return (y + ((np.int64(1) << (shift - 1)) - 1) + ((y >> shift) & 1)) >> shift


@numba.njit(cache=True, fastmath=False, inline="always")
def _clamp(x, lo, hi):
    return lo if x < lo else (hi if x > hi else x)


@numba.njit(cache=True, fastmath=False, inline="always")
def _mul_f32(a_code, a_scale, b_code, b_scale):
    """float32 product of two dequantized codes, rounded like torch's float32 ops."""
    return np.float32(np.float32(a_code) * a_scale) * np.float32(np.float32(b_code) * b_scale)


@numba.njit(cache=True, fastmath=False, inline="always")
def _quant_f32(v, scale, lo, hi):
    q = np.int64(np.rint(np.float32(v / scale)))
    return lo if q < lo else (hi if q > hi else q)


@numba.njit(cache=True, fastmath=False, inline="always")
def _gate_codes(weight, z, bias, gate_mult, gate_shift, g_lo, g_hi, gate):
    """gate[b, r] = row r's gate code minus g_lo for every batch row b.

    Rows outside, batch inside: one weight row (<= 1 KB) serves the whole batch from L1.
    """
    for r in range(weight.shape[0]):
        for b in range(z.shape[0]):
            acc = np.int32(0)
            for k in range(z.shape[1]):
                # the int32 truncations keep the SIMD lanes 32-bit (LLVM emits vpmaddwd);
                # layer_arrays' bound check guarantees that nothing is truncated
                acc = np.int32(acc + np.int32(weight[r, k] * z[b, k]))
            g = _rq(np.int64(acc) + bias[r], gate_mult[r], gate_shift[r])
            gate[b, r] = _clamp(g, g_lo, g_hi) - g_lo


@numba.njit(cache=True, fastmath=False, inline="always")
def _cell_fixed_nb(gate, gate_luts, tanh_lut, params, h, c, b, act):
    """Cell and hidden update of batch row b with fixed-point requantization (exact for po2).

    Lookups and arithmetic sit in separate loops so that LLVM vectorises the arithmetic;
    ``act`` is (5, H) int64 scratch.
    """
    hidden = h.shape[1]
    c_lo, c_hi, io_lo, io_hi = params[2], params[3], params[4], params[5]
    for j in range(hidden):
        for k in range(4):
            act[k, j] = gate_luts[k, gate[b, k * hidden + j]]
    for j in range(hidden):
        fc = _clamp(_rq(act[1, j] * c[b, j], params[6], params[7]), c_lo, c_hi)
        ic = _clamp(_rq(act[0, j] * act[2, j], params[8], params[9]), c_lo, c_hi)
        c_new = _clamp(fc + ic, c_lo, c_hi)
        c[b, j] = c_new
        act[4, j] = c_new - c_lo
    for j in range(hidden):
        act[4, j] = tanh_lut[act[4, j]]
    for j in range(hidden):
        h[b, j] = _clamp(_rq(act[3, j] * act[4, j], params[10], params[11]), io_lo, io_hi)


@numba.njit(cache=True, fastmath=False, inline="always")
def _cell_float32_nb(gate, gate_luts, tanh_lut, params, fscales, h, c, b):
    """Cell and hidden update of batch row b in Brevitas' float32 operations (float scales)."""
    hidden = h.shape[1]
    c_lo, c_hi, io_lo, io_hi = params[2], params[3], params[4], params[5]
    s_c = fscales[5]
    for j in range(hidden):
        i_ = gate_luts[0, gate[b, j]]
        f_ = gate_luts[1, gate[b, hidden + j]]
        g_ = gate_luts[2, gate[b, 2 * hidden + j]]
        o_ = gate_luts[3, gate[b, 3 * hidden + j]]
        fc = _quant_f32(_mul_f32(f_, fscales[1], c[b, j], s_c), s_c, c_lo, c_hi)
        ic = _quant_f32(_mul_f32(i_, fscales[0], g_, fscales[2]), s_c, c_lo, c_hi)
        c_new = _quant_f32(np.float32(np.float32(fc) * s_c) + np.float32(np.float32(ic) * s_c), s_c, c_lo, c_hi)
        c[b, j] = c_new
        h[b, j] = _quant_f32(_mul_f32(o_, fscales[3], tanh_lut[c_new - c_lo], fscales[4]), fscales[6], io_lo, io_hi)


@numba.njit(cache=True, fastmath=False)
def lstm_layer_numba(weight, bias, gate_mult, gate_shift, gate_luts, tanh_lut, params, fscales, x, h, c):
    """Same contract as :func:`lstm_layer_ref`; ``x`` (B, T, F) int16, ``h``/``c`` (B, H) int64."""
    batch, steps, n_in = x.shape
    rows, k_total = weight.shape
    hidden = rows // 4
    float32_cell = params[12] != 0
    out = np.empty((batch, steps, hidden), dtype=np.int64)
    z = np.zeros((batch, k_total), dtype=np.int16)  # [x_t, h_{t-1}, zero padding] io codes per row
    gate = np.empty((batch, rows), dtype=np.int32)
    act = np.empty((5, hidden), dtype=np.int64)  # activation codes i, f, g, o and tanh(c) of one row
    for t in range(steps):
        for b in range(batch):
            for k in range(n_in):
                z[b, k] = x[b, t, k]
            for k in range(hidden):
                z[b, n_in + k] = h[b, k]
        _gate_codes(weight, z, bias, gate_mult, gate_shift, params[0], params[1], gate)
        for b in range(batch):
            if float32_cell:
                _cell_float32_nb(gate, gate_luts, tanh_lut, params, fscales, h, c, b)
            else:
                _cell_fixed_nb(gate, gate_luts, tanh_lut, params, h, c, b, act)
            for j in range(hidden):
                out[b, t, j] = h[b, j]
    return out
