"""Fixed-point requantization: ``round_half_even(x * real)`` with integers only.

A real multiplier ``M > 0`` becomes ``(mult, shift)`` with ``M ~= mult / 2**shift``:

* ``M`` a power of two (every scale is, with power-of-two quantizers): ``mult = 1`` and
  ``shift = -log2(M)`` (or ``mult = 2 * M``, ``shift = 1`` when ``M >= 1``), so
  requantization is an exact shift and matches Brevitas bit for bit.
* otherwise ``mult = round(M * 2**shift)`` in ``[2**29, 2**30]``: 30 significant bits,
  far finer than the float32 arithmetic of Brevitas' fake-quantized forward, and an int32
  (the LSTM kernel multiplies in 32-bit lanes widened to 64: x86's ``vpmuldq``).

``shift >= 1`` always, so the kernels can round without a branch. ``x * mult`` is formed
in int64; callers bound ``x``: int32 accumulators (``|x| < 2**31``) times ``mult <= 2**30``
stays below ``2**61``. The right shift rounds half to even, like ``torch.round`` /
``np.round`` on the float value ``x * M``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MULT_BITS", "div_round_half_even", "requant_params", "rshift_round_half_even"]

MULT_BITS = 30  # significant bits of a non-power-of-two multiplier


def requant_params(real: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """``(mult, shift)`` int64 arrays (shape of ``real``) with ``real ~= mult / 2**shift``."""
    real = np.asarray(real, dtype=np.float64)
    if np.any(~np.isfinite(real)) or np.any(real <= 0):
        raise ValueError("requant_params: multipliers must be positive and finite")
    mantissa, exponent = np.frexp(real)  # real = mantissa * 2**exponent, mantissa in [0.5, 1)
    po2 = mantissa == 0.5
    shift = np.where(po2, 1 - exponent, MULT_BITS - exponent).astype(np.int64)
    mult = np.where(po2, 1, np.round(mantissa * 2.0**MULT_BITS)).astype(np.int64)
    left = po2 & (shift < 1)  # M = 2**k, k >= 0: fold the left shift into mult, keep shift = 1
    mult = np.where(left, np.left_shift(np.int64(1), np.where(left, 1 - shift, 0)), mult)
    shift = np.where(left, 1, shift)
    return mult, shift


def rshift_round_half_even(x: np.ndarray, shift: np.ndarray | int) -> np.ndarray:
    """``round_half_even(x / 2**shift)`` for int64 ``x`` and ``shift >= 0`` (broadcasting)."""
    x = np.asarray(x, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    if np.any(shift < 0):
        raise ValueError("rshift_round_half_even: shift must be >= 0")
    q = x >> shift  # floor division by 2**shift (arithmetic shift)
    rem = x - (q << shift)  # in [0, 2**shift)
    half = np.where(shift > 0, np.left_shift(np.int64(1), np.maximum(shift - 1, 0)), 1)
    round_up = (rem > half) | ((rem == half) & ((q & 1) == 1) & (shift > 0))
    return q + round_up.astype(np.int64)


def div_round_half_even(num: np.ndarray, den: np.ndarray | int) -> np.ndarray:
    """``round_half_even(num / den)`` for int64 ``num`` and positive int64 ``den``, exactly."""
    num = np.asarray(num, dtype=np.int64)
    den = np.asarray(den, dtype=np.int64)
    if np.any(den <= 0):
        raise ValueError("div_round_half_even: den must be positive")
    q = num // den  # floor
    twice_rem = 2 * (num - q * den)  # in [0, 2 den)
    return q + ((twice_rem > den) | ((twice_rem == den) & ((q & 1) == 1))).astype(np.int64)
