"""Bit packing of weight codes: bit-exact round trips and the byte counts size tables use."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kernels.pack import code_range, pack_codes, packed_nbytes, unpack_codes
from qbench.quant.config import BIT_WIDTHS


def _codes(bits: int, shape: tuple[int, ...], *, signed: bool, seed: int = 0) -> np.ndarray:
    lo, hi = code_range(bits, signed=signed)
    codes = np.random.default_rng(seed).integers(lo, hi + 1, size=shape)
    ends = np.array([lo, hi])
    codes.reshape(-1)[:2] = ends[: min(2, codes.size)]  # both ends of the range, always
    return codes


@pytest.mark.parametrize("bits", BIT_WIDTHS)
@pytest.mark.parametrize("shape", [(1,), (7,), (5, 13), (512, 192)])
def test_signed_round_trip_is_bit_exact(bits: int, shape: tuple[int, ...]) -> None:
    codes = _codes(bits, shape, signed=True)
    packed = pack_codes(codes, bits)
    assert packed.dtype == np.uint8 and packed.size == math.ceil(codes.size * bits / 8)
    back = unpack_codes(packed, bits, shape)
    assert back.dtype == np.int8
    np.testing.assert_array_equal(back, codes)


@pytest.mark.parametrize("bits", BIT_WIDTHS)
def test_unsigned_round_trip_is_bit_exact(bits: int) -> None:
    codes = _codes(bits, (3, 11), signed=False)
    back = unpack_codes(pack_codes(codes, bits, signed=False), bits, (3, 11), signed=False)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, codes)


def test_layout_is_little_endian_bit_stream() -> None:
    # 4-bit: low nibble first; 2-bit: four codes a byte, first code in the lowest bits
    np.testing.assert_array_equal(pack_codes(np.array([1, -1]), 4), [0xF1])
    np.testing.assert_array_equal(pack_codes(np.array([1, -1, 0, -2]), 2), [0b10_00_11_01])
    # 3-bit codes straddle bytes: 0b111 | 0b001 << 3 | 0b010 << 6 -> 0b10_001_111, then the last bit
    np.testing.assert_array_equal(pack_codes(np.array([-1, 1, 2]), 3), [0b10001111, 0b0])


@pytest.mark.parametrize("bits", BIT_WIDTHS)
def test_packed_nbytes_matches_stream(bits: int) -> None:
    for count in (1, 3, 8, 1000):
        assert packed_nbytes(count, bits) == pack_codes(np.zeros(count, np.int64), bits).size


def test_out_of_range_codes_and_bad_streams_raise() -> None:
    with pytest.raises(ValueError, match="range"):
        pack_codes(np.array([8]), 4)
    with pytest.raises(ValueError, match="bytes"):
        unpack_codes(np.zeros(3, np.uint8), 4, (7,))
