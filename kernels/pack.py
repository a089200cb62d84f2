"""Bit packing of integer weight codes at their real bit width.

Layout: a dense little-endian bit stream. Code ``i`` of the flattened array occupies bits
``[i*b, (i+1)*b)`` of the stream (bit ``j`` of the stream is bit ``j % 8`` of byte ``j // 8``)
as a ``b``-bit two's-complement field. So 8-bit codes are one per byte, 4-bit two per byte
(low nibble first), 2-bit four per byte, and 3, 5, 6, 7-bit codes straddle byte boundaries
with no padding except at the very end: ``n`` codes take exactly ``ceil(n * b / 8)`` bytes.
Unsigned codes (``signed=False``) are stored as plain ``b``-bit fields.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MAX_PACK_BITS", "code_range", "pack_codes", "packed_nbytes", "unpack_codes"]

MAX_PACK_BITS = 8  # codes live in int8/uint8 containers once unpacked


def code_range(bits: int, *, signed: bool, narrow: bool = False) -> tuple[int, int]:
    """Smallest and largest integer code of a ``bits``-bit quantizer."""
    if signed:
        return -(1 << (bits - 1)) + int(narrow), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1 - int(narrow)


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes that ``count`` codes of ``bits`` bits occupy once packed."""
    return (count * bits + 7) // 8


def _check(bits: int) -> None:
    if not 1 <= bits <= MAX_PACK_BITS:
        raise ValueError(f"pack: bits must be in 1..{MAX_PACK_BITS}, got {bits}")


def pack_codes(codes: np.ndarray, bits: int, *, signed: bool = True) -> np.ndarray:
    """Pack integer ``codes`` (any shape) into a ``(packed_nbytes(codes.size, bits),)`` uint8 stream."""
    _check(bits)
    flat = np.asarray(codes).reshape(-1).astype(np.int64)
    lo, hi = code_range(bits, signed=signed)
    if flat.size and (flat.min() < lo or flat.max() > hi):
        raise ValueError(f"pack: codes outside the {bits}-bit range [{lo}, {hi}]")
    fields = (flat & ((1 << bits) - 1)).astype(np.uint8)  # two's complement b-bit field
    bit_matrix = (fields[:, None] >> np.arange(bits, dtype=np.uint8)) & 1  # (n, bits), LSB first
    return np.packbits(bit_matrix.reshape(-1), bitorder="little")


def unpack_codes(
    packed: np.ndarray, bits: int, shape: tuple[int, ...], *, signed: bool = True
) -> np.ndarray:
    """Inverse of :func:`pack_codes`: an ``int8`` (signed) or ``uint8`` array of ``shape``."""
    _check(bits)
    count = int(np.prod(shape, dtype=np.int64))
    if packed.size != packed_nbytes(count, bits):
        raise ValueError(f"unpack: {packed.size} bytes cannot hold {count} codes of {bits} bits")
    stream = np.unpackbits(np.asarray(packed, dtype=np.uint8), count=count * bits, bitorder="little")
    weights = (1 << np.arange(bits, dtype=np.int64))
    fields = stream.reshape(count, bits).astype(np.int64) @ weights  # (count,) unsigned fields
    if signed:
        fields = np.where(fields >= (1 << (bits - 1)), fields - (1 << bits), fields)
        return fields.astype(np.int8).reshape(shape)
    return fields.astype(np.uint8).reshape(shape)
