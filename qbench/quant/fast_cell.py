"""The quantized LSTM cell's element-wise arithmetic, compiled: one Numba call per time step.

:mod:`qbench.quant.fast_lstm` runs the gate products in PyTorch (BLAS rounds them; the cell must
see Brevitas' sums) and everything after them here, in the float32 operations Brevitas performs,
one element at a time: the bias add, every fake quantization (``y = x / s``, round, clamp,
``code * s``), the cell's products and sum. Division, rounding, clamping, products and sums are
correctly rounded, so the same operations on the same float32 operands give the same values as
ATen's (``fastmath`` is off: no reassociation, no reciprocal for a division, no fused
multiply-add).

sigmoid and tanh are not computed here: they are not correctly rounded, and ATen's vector and
scalar paths differ in the last ulp. Their inputs are fake-quantized codes (a gate accumulator
of at most 16 bits, the cell state of at most 16 bits), so ``fast_lstm`` evaluates each with
ATen over every code once per forward and passes tables of the activation indexed by code; the
kernels quantize the looked-up value as Brevitas quantizes ATen's.

Quantizers are numbered in the arrays ``scale``, ``lo``, ``hi`` (float32 code bounds) and
``mode`` (0 round half to even, 1 floor, 2 truncate):

====  ==========================================
0-3   the four gate accumulators (i, f, g, o)
4-7   the four gate activations (sigmoid, sigmoid, tanh, sigmoid)
8     the cell state (f*c, i*g and c_t)
9     tanh of the cell state
10    the hidden state (the layer's output)
====  ==========================================

The reference is Brevitas itself: ``tests/test_fast_lstm.py`` holds these kernels, through
``fast_lstm``, to stock ``QuantLSTM`` outputs bit for bit and to its gradients within float
tolerance.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["ACC", "ACT", "CELL", "IO", "QUANTIZERS", "ROUNDING_MODES", "SAVED", "TANH", "cell_backward", "cell_forward",
           "clamp_code", "round_code"]

ACC, ACT, CELL, TANH, IO = 0, 4, 8, 9, 10  # first index of each quantizer group
QUANTIZERS = 11
PRE, Y_ACC, Y_FC, Y_IG, Y_C, Y_IO, C_PREV = 0, 5, 9, 10, 11, 12, 13
SAVED = 14
"""Channels of ``saved`` (steps, SAVED, B, H), what the backward reads of each step: the four gates'
activations before quantization and tanh(c_t) (PRE + 0..4), and ``x / s`` before rounding of the
accumulators (Y_ACC + 0..3), f*c, i*g, c_t and h_t; and c_{t-1}. The quantized activations and
their ``y`` are recomputed from PRE exactly as the forward computed them."""
ROUNDING_MODES = {"round": 0, "floor": 1, "trunc": 2}


# Each loop below runs over a row of H contiguous elements with no branch that depends on the
# element (rounding mode and quantizer bounds are loop-invariant; clamps and masks are selects), so
# LLVM vectorises it: table lookups become gathers.

@numba.njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def round_code(y, mode):
    """Brevitas' rounding: half to even (torch.round), floor or truncation, as selects (exact below 2^24)."""
    r = np.rint(y)
    floor = r - np.float32(1.0) if r > y else r
    ceil = r + np.float32(1.0) if r < y else r
    return r if mode == 0 else (floor if mode == 1 or (mode == 2 and y >= 0) else ceil)


@numba.njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def clamp_code(y, lo, hi, mode):
    """clamp(round(y), lo, hi) in float32."""
    r = round_code(y, mode)
    return min(max(r, lo), hi)


@numba.njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def _fq_grad(grad, y, lo, hi, mode):
    """Brevitas' straight-through gradient of ``clamp(round(y)) * s`` at ``y = x / s``.

    Returns ``(d_x, d_s share)``: ``grad`` and ``grad * (code - y)`` where the rounded code is
    inside the range, ``0`` and ``grad * code`` where it was clamped (round STE, clamp mask, and
    the scale's gradient through both the division and the product).
    """
    r = round_code(y, mode)
    code = min(max(r, lo), hi)
    inside = code == r
    return (grad if inside else np.float32(0.0)), grad * (code - y if inside else code)


@numba.njit(cache=True, fastmath=False, error_model="numpy")
def cell_forward(t, ts, xw, hu, hu_gate_major, bias, h, c, out, scale, lo, hi, mode,
                 act_pre, act_lo, tanh_pre, tanh_lo, act, code, rows, saved):
    """Step ``t`` of one layer, in place: ``h``, ``c`` (B, H) become step t's states, ``out[:, t] = h``.

    ``xw`` (T, B, 4H): the input products ``W_k x_t``; ``hu``: the recurrent products ``U_k h``,
    (4B, H) when ``hu_gate_major`` else (B, 4H); ``bias`` (4, H). The gate accumulator is
    ``(W x + U h) + b``, Brevitas' order. ``act_pre[k, code - act_lo]`` and
    ``tanh_pre[code - tanh_lo]`` are the activations of each code, quantized here. ``act``
    (4, B, H), ``code`` (B, H) and ``rows`` (4, H) are scratch. The backward's operands of step
    ``t`` go to ``saved[ts]`` (``ts = t`` keeps every step's; 0 reuses one slot), see ``SAVED``.
    """
    batch, hidden = h.shape
    for k in range(4):
        s, q_lo, q_hi, q_mode = scale[ACC + k], lo[ACC + k], hi[ACC + k], mode[ACC + k]
        s_a, a_lo, a_hi, a_mode = scale[ACT + k], lo[ACT + k], hi[ACT + k], mode[ACT + k]
        for b in range(batch):
            row = k * batch + b if hu_gate_major else b
            col = 0 if hu_gate_major else k * hidden
            for j in range(hidden):  # vectorised
                a = np.float32(np.float32(xw[t, b, k * hidden + j] + hu[row, col + j]) + bias[k, j])
                y = np.float32(a / s)
                code[b, j] = np.int32(clamp_code(y, q_lo, q_hi, q_mode)) - act_lo
                saved[ts, Y_ACC + k, b, j] = y
            for j in range(hidden):  # gathers (LLVM declines to vectorise them)
                saved[ts, PRE + k, b, j] = act_pre[k, code[b, j]]
            for j in range(hidden):  # vectorised
                act[k, b, j] = np.float32(clamp_code(np.float32(saved[ts, PRE + k, b, j] / s_a), a_lo, a_hi, a_mode) * s_a)
    s_cell, c_lo, c_hi, c_mode = scale[CELL], lo[CELL], hi[CELL], mode[CELL]
    s_th, t_lo, t_hi, t_mode = scale[TANH], lo[TANH], hi[TANH], mode[TANH]
    s_io, h_lo, h_hi, h_mode = scale[IO], lo[IO], hi[IO], mode[IO]
    for b in range(batch):
        for j in range(hidden):  # vectorised: loads from two arrays, stores to one
            y_fc = np.float32(np.float32(act[1, b, j] * c[b, j]) / s_cell)
            fc = np.float32(clamp_code(y_fc, c_lo, c_hi, c_mode) * s_cell)
            y_ig = np.float32(np.float32(act[0, b, j] * act[2, b, j]) / s_cell)
            ig = np.float32(clamp_code(y_ig, c_lo, c_hi, c_mode) * s_cell)
            y_c = np.float32(np.float32(fc + ig) / s_cell)
            rows[0, j] = y_fc
            rows[1, j] = y_ig
            rows[2, j] = y_c
            rows[3, j] = clamp_code(y_c, c_lo, c_hi, c_mode)
        for i in range(3):
            for j in range(hidden):
                saved[ts, Y_FC + i, b, j] = rows[i, j]
        for j in range(hidden):
            saved[ts, C_PREV, b, j] = c[b, j]
        for j in range(hidden):
            c[b, j] = np.float32(rows[3, j] * s_cell)
        for j in range(hidden):
            code[b, j] = np.int32(rows[3, j]) - tanh_lo
        for j in range(hidden):  # gathers
            saved[ts, PRE + 4, b, j] = tanh_pre[code[b, j]]
        for j in range(hidden):  # vectorised
            th = np.float32(clamp_code(np.float32(saved[ts, PRE + 4, b, j] / s_th), t_lo, t_hi, t_mode) * s_th)
            y_h = np.float32(np.float32(act[3, b, j] * th) / s_io)
            rows[0, j] = y_h
            rows[1, j] = np.float32(clamp_code(y_h, h_lo, h_hi, h_mode) * s_io)
        for j in range(hidden):
            saved[ts, Y_IO, b, j] = rows[0, j]
        for j in range(hidden):
            h[b, j] = rows[1, j]
        for j in range(hidden):
            out[b, t, j] = rows[1, j]


@numba.njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def _value(pre, s, lo, hi, mode):
    """The fake-quantized activation of ``pre`` and its ``y = pre / s``, as the forward made them."""
    y = np.float32(pre / s)
    return np.float32(clamp_code(y, lo, hi, mode) * s), y


@numba.njit(cache=True, fastmath={"reassoc", "contract"}, error_model="numpy")
def cell_backward(t, grad_out, dh, dc, d_gates, terms, scale, lo, hi, mode, saved, rout):
    """The straight-through backward of step ``t``, in place (gradients: float tolerance, so
    their sums may be reassociated; every mask is recomputed from the forward's exact ``y``).

    ``dh`` (B, H): the gradient reaching ``h_t`` from step t+1 (``grad_out[:, t]`` is added
    here); ``dc`` (B, H): the gradient reaching ``c_t``, replaced by the one reaching
    ``c_{t-1}``. Writes the accumulators' gradients to ``d_gates[:, t]`` (B, 4H), gate-major rows
    as ``W_hh`` stacks them (the caller forms ``dh = d_gates[:, t] @ W_hh``), and adds each
    quantizer's scale-gradient share to ``terms`` (one per quantizer). ``rout`` (5, H) is scratch.
    """
    batch, hidden = dh.shape
    one = np.float32(1.0)
    zero = np.float32(0.0)
    s_th, lo_th, hi_th, m_th = scale[TANH], lo[TANH], hi[TANH], mode[TANH]
    lo_io, hi_io, m_io = lo[IO], hi[IO], mode[IO]
    lo_c, hi_c, m_c = lo[CELL], hi[CELL], mode[CELL]
    s_i, lo_i, hi_i, m_i = scale[ACT], lo[ACT], hi[ACT], mode[ACT]
    s_f, lo_f, hi_f, m_f = scale[ACT + 1], lo[ACT + 1], hi[ACT + 1], mode[ACT + 1]
    s_g, lo_g, hi_g, m_g = scale[ACT + 2], lo[ACT + 2], hi[ACT + 2], mode[ACT + 2]
    s_o, lo_o, hi_o, m_o = scale[ACT + 3], lo[ACT + 3], hi[ACT + 3], mode[ACT + 3]
    for b in range(batch):
        sum_io = sum_th = sum_c = zero
        for j in range(hidden):  # vectorised: h_t, tanh(c_t) and c_t back to the gates' activations
            d, share = _fq_grad(dh[b, j] + grad_out[b, t, j], saved[t, Y_IO, b, j], lo_io, hi_io, m_io)
            sum_io += share
            pre_th = saved[t, PRE + 4, b, j]
            th, y_th = _value(pre_th, s_th, lo_th, hi_th, m_th)
            o = _value(saved[t, PRE + 3, b, j], s_o, lo_o, hi_o, m_o)[0]
            rout[3, j] = d * th  # d(o)
            d, share = _fq_grad(d * o, y_th, lo_th, hi_th, m_th)
            sum_th += share
            d, share = _fq_grad(dc[b, j] + d * (one - pre_th * pre_th), saved[t, Y_C, b, j], lo_c, hi_c, m_c)
            sum_c += share
            d_ig, share = _fq_grad(d, saved[t, Y_IG, b, j], lo_c, hi_c, m_c)
            sum_c += share
            d_fc, share = _fq_grad(d, saved[t, Y_FC, b, j], lo_c, hi_c, m_c)
            sum_c += share
            i = _value(saved[t, PRE, b, j], s_i, lo_i, hi_i, m_i)[0]
            f = _value(saved[t, PRE + 1, b, j], s_f, lo_f, hi_f, m_f)[0]
            g = _value(saved[t, PRE + 2, b, j], s_g, lo_g, hi_g, m_g)[0]
            rout[4, j] = d_fc * f  # the gradient reaching c_{t-1}
            rout[0, j] = d_ig * g  # d(i) = d(i*g) * g
            rout[1, j] = d_fc * saved[t, C_PREV, b, j]  # d(f) = d(f*c) * c_{t-1}
            rout[2, j] = d_ig * i  # d(g) = d(i*g) * i
        terms[IO] += sum_io
        terms[TANH] += sum_th
        terms[CELL] += sum_c
        for k in range(4):  # each gate: activation quantizer -> activation slope -> accumulator quantizer
            s_a, lo_a, hi_a, m_a = scale[ACT + k], lo[ACT + k], hi[ACT + k], mode[ACT + k]
            lo_q, hi_q, m_q = lo[ACC + k], hi[ACC + k], mode[ACC + k]
            tanh_gate = k == 2
            sum_act = sum_acc = zero
            for j in range(hidden):  # vectorised
                pre = saved[t, PRE + k, b, j]
                d, share = _fq_grad(rout[k, j], np.float32(pre / s_a), lo_a, hi_a, m_a)
                sum_act += share
                slope = one - pre * pre if tanh_gate else pre * (one - pre)
                d, share = _fq_grad(d * slope, saved[t, Y_ACC + k, b, j], lo_q, hi_q, m_q)
                sum_acc += share
                d_gates[b, t, k * hidden + j] = d
            terms[ACT + k] += sum_act
            terms[ACC + k] += sum_acc
        for j in range(hidden):
            dc[b, j] = rout[4, j]
