"""The integer classifier head: the plain NumPy reference first, then the Numba kernel.

``logits[b, c] = (bias[c] + sum_d W[c, d] * q[b, d]) * s_in * s_w[c]`` where ``q`` are the
head's input codes, requantized from the LSTM's features (the last hidden codes, or their
sum over time for mean pooling) as Brevitas' input quantizer does (round half to even,
saturating). The accumulator is int64 in both variants:
``D * 2**7 * 2**7 + |bias|`` is far below 2**31 at any size here, and the int64 keeps even a
pathological int32 bias from wrapping. Logits leave as float32, as Brevitas' are.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from kernels.fixedpoint import div_round_half_even, requant_params
from kernels.model import IntLinear

__all__ = ["HeadArrays", "head_arrays", "linear_numba", "linear_ref"]


class HeadArrays(NamedTuple):
    """The head flattened for the kernels."""

    weight: np.ndarray  # (C, D) int16 codes
    bias: np.ndarray  # (C,) int64 codes (zeros without a bias)
    out_scale: np.ndarray  # (C,) float64: s_in * s_w[c], exact for power-of-two scales
    params: np.ndarray  # (5,) int64: in_mult, in_shift, in_min, in_max, in_div (feature -> input code)


def head_arrays(head: IntLinear, io_scale: float, steps: int = 1) -> HeadArrays:
    """The head fed with features worth ``io_scale / steps`` a unit: the last hidden codes
    (``steps == 1``) or their int64 sum over ``steps`` steps (mean pooling). The division by
    ``steps`` is an exact integer division, so a .5 tie of the mean stays a tie."""
    n_out = head.weight.shape[0]
    in_scale = head.input_quant.scale.astype(np.float64)
    mult, shift = requant_params(np.float64(io_scale) / in_scale)
    bias = np.zeros(n_out, np.int64) if head.bias is None else head.bias.astype(np.int64)
    return HeadArrays(
        weight=np.ascontiguousarray(head.weight, dtype=np.int16),
        bias=bias,
        out_scale=np.broadcast_to(in_scale * head.weight_quant.scale.astype(np.float64), (n_out,)).copy(),
        params=np.array([mult, shift, head.input_quant.qmin, head.input_quant.qmax, steps], dtype=np.int64),
    )


def linear_ref(a: HeadArrays, h: np.ndarray) -> np.ndarray:
    """(B, D) io codes -> (B, C) float32 logits."""
    mult, shift, lo, hi, div = a.params.tolist()
    q = np.clip(div_round_half_even(h.astype(np.int64) * mult, div << shift), lo, hi)
    acc = q @ a.weight.astype(np.int64).T + a.bias
    return (acc * a.out_scale).astype(np.float32)


@numba.njit(cache=True, fastmath=False)
def linear_numba(weight, bias, out_scale, params, h):
    """Same contract as :func:`linear_ref`."""
    batch, depth = h.shape
    n_out = weight.shape[0]
    mult, shift, lo, hi = params[0], params[1], params[2], params[3]
    den = params[4] << shift
    q = np.empty(depth, dtype=np.int64)
    out = np.empty((batch, n_out), dtype=np.float32)
    for b in range(batch):
        for d in range(depth):
            y = np.int64(h[b, d]) * mult
            v = y // den  # floor, then round half to even
            twice_rem = 2 * (y - v * den)
            if twice_rem > den or (twice_rem == den and (v & 1) == 1):
                v += 1
            q[d] = lo if v < lo else (hi if v > hi else v)
        for c in range(n_out):
            acc = bias[c]
            for d in range(depth):
                acc += weight[c, d] * q[d]
            out[b, c] = np.float32(acc * out_scale[c])
    return out
