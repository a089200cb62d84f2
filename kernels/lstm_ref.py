"""The plain NumPy reference of the integer LSTM layer (:mod:`kernels.lstm` describes the step):
int64 arithmetic throughout, so an overflow shows as a mismatch, never a wraparound. The Numba
kernel (:func:`kernels.lstm.lstm_layer_numba`) is tested against it."""

from __future__ import annotations

import numpy as np

from kernels.fixedpoint import rshift_round_half_even
from kernels.lstm_arrays import PARAM_NAMES, LayerArrays

__all__ = ["lstm_layer_ref"]


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
    p = dict(zip(PARAM_NAMES, a.params.tolist()))
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
