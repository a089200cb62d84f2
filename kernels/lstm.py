"""The integer LSTM layer: its arrays and the Numba kernel (the plain NumPy reference that
defines it is :mod:`kernels.lstm_ref`).

One time step, per batch row, in the order and rounding of Brevitas' ``_QuantLSTMCell``:

1. ``acc[r] = bias[r] + sum_k W[r, k] * z[k]`` with ``z = concat(x_t, h_{t-1})`` io codes.
   int32 suffices: ``|acc| <= K * 2**(wb-1) * 2**(ab-1) + |bias|``; at K = 64 + 256, 8-bit
   weights and inputs that is 320 * 127 * 128 = 5.2e6, far below 2**31, and
   :func:`kernels.lstm_arrays.layer_arrays` refuses a layer whose bound passes 2**31. The NumPy
   reference accumulates in int64 (no wraparound: an overflow would show as a mismatch). The Numba
   kernel computes the dot products with :func:`kernels.simd.gate_dot` (explicit SIMD, int32
   lanes), lossless under that bound, or, for signed io codes of at most 8 bits on AVX-512
   VNNI, with :func:`kernels.simd.gate_dot_u8` on ``z + 128`` as uint8 (``vpdpbusd``), the
   offset's ``128 * sum_k W[r, k]`` folded into the bias (:attr:`LayerArrays.kernel_bias`).
   The Numba kernel computes ``W[:, :F] x_t`` for a chunk of steps ahead (one product over
   steps x B rows) and adds ``W[:, F:] h_{t-1}`` per step: int32 sums are exact in any order.
2. ``gate[r] = clamp(rq(acc[r], io*w[r]/gate_acc))``: ``rq`` rounds half to even; its
   multiplier fits int32 (:mod:`kernels.fixedpoint`), so ``acc * mult`` is one 32 x 32 -> 64
   bit product per lane. The Numba kernel computes it in float32 or float64 where that is
   exact (:func:`kernels.lstm_arrays._gate_bounds`: the accumulator clamped to where the code
   saturates, times the multiplier, stays an integer below 2**24 or 2**53; power-of-two scales
   reach float32), else in int64.
3. ``i, f, o = sigmoid_lut[gate]``, ``g = tanh_lut[gate]`` (the model's own quantizers).
4. ``fc = clamp_c(rq(f*c, s_f))``; ``ic = clamp_c(rq(i*g, s_i*s_g/s_c))``;
   ``c = clamp_c(fc + ic)``; ``h = clamp_io(rq(o * tanh_lut_c[c], s_o*s_t/s_io))``
   (with float scales, step 4 repeats Brevitas' float32 operations instead: see
   :func:`kernels.lstm_arrays.layer_arrays`). The Numba kernel computes each ``rq`` of step 4
   in float32 or float64 lanes where that is exact (:func:`kernels.lstm_arrays._cell_float_bits`),
   else in int64.

Bit-exactness with power-of-two scales also needs Brevitas' own float32 arithmetic to be
exact: its gate sums are integers times ``s_io * s_w`` and stay exact while below 2**24
units (5.2e6 above), and ``f*c`` with 8-bit ``f`` and 16-bit ``c`` is below 255 * 32768 < 2**24.
Every ``clamp`` saturates at the quantizer's integer range, as Brevitas' clamp does.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import overload

from kernels.lstm_arrays import AccumulatorOverflow, LayerArrays, PARAM_NAMES, is_po2, layer_arrays
from kernels.simd import QUAD_OFFSET, gate_dot, gate_dot_add, gate_dot_u8, gate_dot_u8_add

__all__ = ["AccumulatorOverflow", "LayerArrays", "PARAM_NAMES", "is_po2", "kernel_args", "layer_arrays",
           "lstm_layer_numba", "run_layer_numba"]  # the layer's arrays are built in kernels.lstm_arrays

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
    flo, fhi = np.float32(lo), np.float32(hi)  # compared as float32: an int64 bound would widen q to float64
    return np.int32(flo if q < flo else (fhi if q > fhi else q))


def _as(x, like):
    """``x`` converted to the float type of ``like`` (compiled only)."""


@overload(_as, inline="always")
def _as_overload(x, like):
    if like == types.float32:
        return lambda x, like: np.float32(x)
    return lambda x, like: np.float64(x)


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
def _gate_indices_real(acc, bias, gate_real, gate_bounds, gate_off, g_lo, g_hi, idx):
    """:func:`_gate_indices` in the float type of ``gate_real`` (float32 or float64), exact
    when :func:`kernels.lstm_arrays._gate_bounds` says so: the accumulator clamped to the row's
    saturation bounds, times the row's real multiplier (an exact product), rounded half to even
    by ``np.rint``.
    Float lanes need no 64-bit integer multiplies, shifts or compares (AVX2 has no 64-bit
    arithmetic shift or min/max); float32 has twice float64's lanes."""
    lo, hi = np.int32(g_lo), np.int32(g_hi)
    for b in range(idx.shape[0]):
        for r in range(idx.shape[1]):
            a = _clamp(np.int32(acc[b, r] + bias[r]), gate_bounds[0, r], gate_bounds[1, r])
            v = np.int32(np.rint(_as(a, gate_real[r]) * gate_real[r]))
            idx[b, r] = _clamp(v, lo, hi) + gate_off[r]


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
def _real(mult, shift):
    """mult * 2**-shift as a float64, exactly (an int32 multiplier, 0 <= shift <= 62)."""
    return np.float64(mult) / np.float64(np.int64(1) << np.int64(shift))


@numba.njit(cache=True, fastmath=False, inline="always")
def _rq_real(a, b, real, lo, hi):
    """``_clamp(_rq(a * b, mult, shift), lo, hi)`` for int32 codes ``a``, ``b`` in the float type
    of ``real`` (= :func:`_real` (mult, shift)), ``lo`` and ``hi``: exact where
    :func:`kernels.lstm_arrays._cell_float_bits` says so. Each code is converted on its own
    (AVX2 converts int32 lanes, not int64 ones) and clamped as a float before the conversion
    back (a float past int32 has no defined conversion), as :func:`_quant_f32`."""
    q = np.rint(_as(a, real) * _as(b, real) * real)
    return np.int32(lo if q < lo else (hi if q > hi else q))


@numba.njit(cache=True, fastmath=False, inline="always")
def _cell_fixed_real_nb(act, params, c, tc_idx, one):
    """:func:`_cell_fixed_nb` in exact float lanes of ``one``'s type (float32: twice the lanes of
    float64; AVX2 has no 64-bit multiply or arithmetic shift for the int64 way)."""
    hidden = c.shape[1]
    c_lo, c_hi = _as(params[2], one), _as(params[3], one)
    fc_real, ic_real = _as(_real(params[6], params[7]), one), _as(_real(params[8], params[9]), one)
    lo, hi = np.int32(params[2]), np.int32(params[3])
    for b in range(c.shape[0]):
        for j in range(hidden):
            fc = _rq_real(act[b, hidden + j], c[b, j], fc_real, c_lo, c_hi)
            ic = _rq_real(act[b, j], act[b, 2 * hidden + j], ic_real, c_lo, c_hi)
            c_new = _clamp(fc + ic, lo, hi)
            c[b, j] = c_new
            tc_idx[b, j] = c_new - lo


@numba.njit(cache=True, fastmath=False, inline="always")
def _hidden_fixed_real_nb(act, tanh_c, params, h, one):
    """:func:`_hidden_fixed_nb` in exact float lanes of ``one``'s type."""
    hidden = h.shape[1]
    io_lo, io_hi = _as(params[4], one), _as(params[5], one)
    h_real = _as(_real(params[10], params[11]), one)
    for b in range(h.shape[0]):
        for j in range(hidden):
            h[b, j] = _rq_real(act[b, 3 * hidden + j], tanh_c[b, j], h_real, io_lo, io_hi)


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


def _gate_product(blocks, z, zu, acc, add):
    """``acc (+)= W z``: :func:`kernels.simd.gate_dot_u8` on ``zu`` for quad blocks, else
    :func:`kernels.simd.gate_dot` on ``z`` (``add``: the adding variants). The compiled
    version decides by the blocks' dtype where it can: int16 blocks are always pairs."""
    if blocks.shape[3] == 4:
        (gate_dot_u8_add if add else gate_dot_u8)(blocks, zu, acc)
    else:
        (gate_dot_add if add else gate_dot)(blocks, z, acc)


@overload(_gate_product, inline="always")
def _gate_product_overload(blocks, z, zu, acc, add):
    if not isinstance(add, types.BooleanLiteral):
        return None
    pairs = gate_dot_add if add.literal_value else gate_dot
    quads = gate_dot_u8_add if add.literal_value else gate_dot_u8
    if blocks.dtype == types.int16:  # widened pair blocks: the u8 product does not type for them
        def impl(blocks, z, zu, acc, add):
            pairs(blocks, z, acc)
    else:
        def impl(blocks, z, zu, acc, add):
            if blocks.shape[3] == 4:
                quads(blocks, zu, acc)
            else:
                pairs(blocks, z, acc)
    return impl


CHUNK_ELEMENTS = 1 << 16
"""int32 gate sums of the input projection computed ahead per chunk of steps (256 KiB: they
stay in L2 until their step comes): ``max(1, CHUNK_ELEMENTS // (B * 4H))`` steps a chunk."""


@numba.njit(cache=True, fastmath=False, inline="always")
def _input_codes(x, t0, n, xz, xu):
    """Rows (t, b) of ``xz`` (int16 codes) or ``xu`` (uint8 codes + QUAD_OFFSET, if it has
    columns) get x[b, t0 + t] for t < n; the columns past F stay zero."""
    batch, _, n_in = x.shape
    zero = np.int32(QUAD_OFFSET)
    for t in range(n):
        for b in range(batch):
            if xu.shape[1] > 0:
                for k in range(n_in):
                    xu[t * batch + b, k] = np.uint8(x[b, t0 + t, k] + zero)
            else:
                for k in range(n_in):
                    xz[t * batch + b, k] = x[b, t0 + t, k]


@numba.njit(cache=True, fastmath=False, inline="always")
def _emit_hidden(h32, t, out, hz, hu):
    """out[:, t] = h (unless t < 0); ``hz`` / ``hu`` (the codes the next step's product reads) = h, or h + 128."""
    zero = np.int32(QUAD_OFFSET)
    for b in range(h32.shape[0]):
        if t >= 0:
            for j in range(h32.shape[1]):
                out[b, t, j] = np.int16(h32[b, j])
        if hu.shape[1] > 0:
            for j in range(h32.shape[1]):
                hu[b, j] = np.uint8(h32[b, j] + zero)
        else:
            for j in range(h32.shape[1]):
                hz[b, j] = np.int16(h32[b, j])


@numba.njit(cache=True, fastmath=False)
def lstm_layer_numba(input_blocks, blocks, bias, gate_mult, gate_shift, gate_real, gate_bounds, gate_luts, tanh_lut,
                     params, fscales, x, h, c):
    """Same contract as :func:`lstm_layer_ref` (codes returned as int16); ``input_blocks`` and
    ``blocks`` are :attr:`LayerArrays.input_blocks` and :attr:`LayerArrays.blocks`, ``x``
    (B, T, F) int16, ``h``/``c`` (B, H) int64.

    The input projection ``W[:, :F] x_t`` does not depend on the recurrence: it runs ahead for
    a chunk of steps as one product over (steps x B) rows, into the int32 sums the recurrent
    product ``W[:, F:] h_{t-1}`` then adds to (:func:`kernels.simd.gate_dot_add`; int32 sums are
    exact in any order under the accumulator bound). After each step's product every stage runs
    over the whole batch as (B, 4H) or (B, H) int32 arrays, one stage per loop (requantization,
    gate lookups, cell update, tanh lookup, hidden requantization), so LLVM vectorises the
    arithmetic over B x H; state is carried in int32 (cell codes are at most 16 bits).
    """
    batch, steps, _ = x.shape
    hidden = h.shape[1]
    rows = 4 * hidden
    float32_cell = params[12] != 0
    gate_float_bits = params[13]
    gate_real32 = gate_real.astype(np.float32)  # exact when gate_float_bits is 32
    cell_float_bits = params[14]
    n_codes = gate_luts.shape[1]
    lut = np.ascontiguousarray(gate_luts).reshape(4 * n_codes)
    gate_off = np.empty(rows, dtype=np.int32)  # -gate_min + the table of the row's gate
    for r in range(rows):
        gate_off[r] = np.int32((r // hidden) * n_codes - params[0])
    out = np.empty((batch, steps, hidden), dtype=np.int16)
    u8 = blocks.shape[3] == 4  # quad blocks: gate_dot_u8 on codes + QUAD_OFFSET
    x_cols = input_blocks.shape[1] * input_blocks.shape[3]
    h_cols = blocks.shape[1] * blocks.shape[3]
    rows_pad = blocks.shape[0] * blocks.shape[2]  # rows padded to whole blocks
    chunk = max(1, min(steps, CHUNK_ELEMENTS // (batch * rows_pad)))
    # inputs of a chunk, rows (t, b), and h_{t-1}: int16 codes (pair blocks) or uint8 codes + 128 (quad blocks)
    xz = np.zeros((chunk * batch, 0 if u8 else x_cols), dtype=np.int16)
    xu = np.zeros((chunk * batch, x_cols if u8 else 0), dtype=np.uint8)
    hz = np.zeros((batch, 0 if u8 else h_cols), dtype=np.int16)
    hu = np.zeros((batch, h_cols if u8 else 0), dtype=np.uint8)
    acc = np.empty((chunk, batch, rows_pad), dtype=np.int32)  # gate sums of the chunk's steps
    acc_rows = acc.reshape(chunk * batch, rows_pad)
    idx = np.empty((batch, rows), dtype=np.int32)  # gate table indices
    act = np.empty((batch, rows), dtype=np.int32)  # activation codes i, f, g, o
    c32 = np.empty((batch, hidden), dtype=np.int32)
    h32 = np.empty((batch, hidden), dtype=np.int32)
    tc = np.empty((batch, hidden), dtype=np.int32)  # tanh(c) table indices, then codes
    for b in range(batch):
        for j in range(hidden):
            c32[b, j] = c[b, j]
            h32[b, j] = h[b, j]
    _emit_hidden(h32, -1, out, hz, hu)
    for t0 in range(0, steps, chunk):
        n = min(chunk, steps - t0)  # a short last chunk leaves stale rows: computed, never read
        _input_codes(x, t0, n, xz, xu)
        _gate_product(input_blocks, xz, xu, acc_rows, False)
        for s in range(n):
            acc_s = acc[s]
            _gate_product(blocks, hz, hu, acc_s, True)
            if gate_float_bits == 32:
                _gate_indices_real(acc_s, bias, gate_real32, gate_bounds, gate_off, params[0], params[1], idx)
            elif gate_float_bits == 64:
                _gate_indices_real(acc_s, bias, gate_real, gate_bounds, gate_off, params[0], params[1], idx)
            else:
                _gate_indices(acc_s, bias, gate_mult, gate_shift, gate_off, params[0], params[1], idx)
            _lookup(lut, idx, act)
            if float32_cell:
                _cell_float32_nb(act, params, fscales, c32, tc)
                _lookup(tanh_lut, tc, tc)
                _hidden_float32_nb(act, tc, params, fscales, h32)
            elif cell_float_bits == 32:
                _cell_fixed_real_nb(act, params, c32, tc, np.float32(1))
                _lookup(tanh_lut, tc, tc)
                _hidden_fixed_real_nb(act, tc, params, h32, np.float32(1))
            elif cell_float_bits == 64:
                _cell_fixed_real_nb(act, params, c32, tc, np.float64(1))
                _lookup(tanh_lut, tc, tc)
                _hidden_fixed_real_nb(act, tc, params, h32, np.float64(1))
            else:
                _cell_fixed_nb(act, params, c32, tc)
                _lookup(tanh_lut, tc, tc)
                _hidden_fixed_nb(act, tc, params, h32)
            _emit_hidden(h32, t0 + s, out, hz, hu)
    for b in range(batch):
        for j in range(hidden):
            c[b, j] = c32[b, j]
            h[b, j] = h32[b, j]
    return out


def kernel_args(a: LayerArrays) -> tuple[np.ndarray, ...]:
    """The leading arguments of :func:`lstm_layer_numba` (all but ``x, h, c``)."""
    return (a.input_blocks, a.blocks, a.kernel_bias, a.gate_mult, a.gate_shift, a.gate_real, a.gate_bounds,
            a.gate_luts, a.tanh_lut, a.params, a.fscales)


def run_layer_numba(a: LayerArrays, x: np.ndarray, h: np.ndarray, c: np.ndarray) -> np.ndarray:
    """:func:`lstm_layer_numba` on the arrays of :func:`layer_arrays`: (B, T, F) int16 codes -> (B, T, H) int16."""
    return lstm_layer_numba(*kernel_args(a), x, h, c)
