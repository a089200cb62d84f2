"""The batch paths of the LSTM kernel against the NumPy reference: the input projection run
ahead per chunk of steps (the adding gate products), widened int16 pair blocks, and the
float32/float64 gate and cell requantization, over random shapes, batch 1 and > 1, po2 and float
scales, 2-8 bits."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from kernels.fixedpoint import requant_params
from kernels.lstm import CHUNK_ELEMENTS, _gate_indices, _gate_indices_real, kernel_args, lstm_layer_numba
from kernels.lstm_arrays import PARAM_NAMES, _cell_float_bits, _gate_bounds, layer_arrays
from kernels.lstm_ref import lstm_layer_ref
from kernels.model import IntLSTMModel
from kernels.simd import (ROWS_PER_BLOCK, block_weights, block_weights_u8, gate_dot_add, gate_dot_u8_add,
                          unblock_weights)
from test_kernels_lstm import _layer, _scale, _spec  # tests/ is on sys.path (it holds conftest.py)

BIT_WIDTHS = range(2, 9)
# (F, H, batch, steps): odd sizes, batch 1 and > 1, and enough steps x batch for several chunks
SHAPES = [(3, 5, 1, 9), (7, 4, 3, 17), (40, 64, 1, 30), (13, 16, 33, 70), (64, 32, 6, 25)]


def _model(f: int, h: int, *, io_bits: int, wbits: int, po2: bool, seed: int) -> IntLSTMModel:
    rng = np.random.default_rng(seed)
    io, cell = _spec(io_bits, True, _scale(rng, po2)), _spec(16, True, _scale(rng, po2) / 256)
    return IntLSTMModel(io_quant=io, cell_quant=cell, layers=(_layer(rng, f, h, wbits, po2, io, cell),), head=None)


def _run_both(arrays, x: np.ndarray, hidden: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    batch = x.shape[0]
    h0 = rng.integers(-3, 4, (batch, hidden)).astype(np.int64)  # a carried state, not only zeros
    c0 = rng.integers(-500, 500, (batch, hidden)).astype(np.int64)
    h_ref, c_ref, h_nb, c_nb = h0.copy(), c0.copy(), h0.copy(), c0.copy()
    ref = lstm_layer_ref(arrays, x, h_ref, c_ref)
    out = lstm_layer_numba(*kernel_args(arrays), x, h_nb, c_nb)
    np.testing.assert_array_equal(out, ref)  # integer codes: bit-exact
    np.testing.assert_array_equal(h_nb, h_ref)
    np.testing.assert_array_equal(c_nb, c_ref)


@pytest.mark.parametrize("po2", [True, False])
@pytest.mark.parametrize("bits", BIT_WIDTHS)
def test_kernel_matches_reference_across_bits_and_shapes(bits: int, po2: bool) -> None:
    for i, (f, h, batch, steps) in enumerate(SHAPES):
        model = _model(f, h, io_bits=bits, wbits=bits, po2=po2, seed=10 * bits + i)
        io = model.io_quant
        x = np.random.default_rng(i).integers(io.qmin, io.qmax + 1, (batch, steps, f)).astype(np.int16)
        for u8 in (True, False):  # quad blocks (u8 product) and widened int16 pair blocks
            arrays = layer_arrays(model.layers[0], io, model.cell_quant, u8_inputs=u8)
            _run_both(arrays, x, h, seed=i)


def test_weight_blocks_start_on_a_cache_line() -> None:
    model = _model(13, 16, io_bits=8, wbits=8, po2=False, seed=1)
    for u8 in (True, False):
        arrays = layer_arrays(model.layers[0], model.io_quant, model.cell_quant, u8_inputs=u8)
        weight = model.layers[0].weight
        for blocks, part in ((arrays.blocks, weight[:, 13:]), (arrays.input_blocks, weight[:, :13])):
            assert blocks.ctypes.data % 64 == 0 and blocks.flags.c_contiguous
            np.testing.assert_array_equal(blocks, (block_weights_u8 if u8 else block_weights)(part))


def test_shapes_cover_several_chunks_and_a_short_last_one() -> None:
    f, h, batch, steps = SHAPES[3]
    rows_pad = -(-4 * h // ROWS_PER_BLOCK) * ROWS_PER_BLOCK
    chunk = CHUNK_ELEMENTS // (batch * rows_pad)
    assert 1 < chunk < steps and steps % chunk


@pytest.mark.parametrize("u8", [True, False])
def test_kernel_matches_its_py_func(u8: bool) -> None:
    model = _model(5, 6, io_bits=8, wbits=8, po2=False, seed=3)
    arrays = layer_arrays(model.layers[0], model.io_quant, model.cell_quant, u8_inputs=u8)
    x = np.random.default_rng(4).integers(-128, 128, (3, 7, 5)).astype(np.int16)
    states = [(np.zeros((3, 6), np.int64), np.zeros((3, 6), np.int64)) for _ in range(2)]
    compiled = lstm_layer_numba(*kernel_args(arrays), x, *states[0])
    interpreted = lstm_layer_numba.py_func(*kernel_args(arrays), x, *states[1])
    np.testing.assert_array_equal(compiled, interpreted)
    np.testing.assert_array_equal(states[0][1], states[1][1])


def _with(arrays, **params):
    """``arrays`` with some of its kernel parameters replaced (by PARAM_NAMES)."""
    values = arrays.params.copy()
    for name, value in params.items():
        values[PARAM_NAMES.index(name)] = value
    return arrays._replace(params=values)


def test_int64_gate_path_when_float64_is_not_exact() -> None:
    # a tiny gate multiplier (huge shift) puts the saturation bounds times mult past 2**53
    model = _model(6, 8, io_bits=8, wbits=8, po2=False, seed=5)
    arrays = layer_arrays(model.layers[0], model.io_quant, model.cell_quant)
    assert arrays.params[PARAM_NAMES.index("gate_float_bits")] == 64  # float scales: 30-bit multipliers
    mult = np.full(4, 2**30, np.int64)
    bounds, bits = _gate_bounds(mult, np.full(4, 60, np.int64), -128, 127)
    assert bits == 0 and bounds.dtype == np.int32
    x = np.random.default_rng(6).integers(-128, 128, (4, 12, 6)).astype(np.int16)
    _run_both(_with(arrays, gate_float_bits=0), x, 8, seed=6)  # the int64 way on the same layer: same codes


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_po2_layers_take_float32_and_every_wider_way_agrees(bits: int) -> None:
    # power-of-two scales: multipliers are 1, so gates and cell run in float32 lanes; forcing
    # float64 or int64 instead must give the same codes (each checked against the reference)
    model = _model(24, 16, io_bits=bits, wbits=bits, po2=True, seed=20)  # gate shifts <= 15: float32 gates
    arrays = layer_arrays(model.layers[0], model.io_quant, model.cell_quant)
    assert arrays.params[PARAM_NAMES.index("float32_cell")] == 0  # the fixed-point cell update
    assert arrays.params[PARAM_NAMES.index("gate_float_bits")] == 32
    assert arrays.params[PARAM_NAMES.index("cell_float_bits")] == 32
    io = model.io_quant
    x = np.random.default_rng(bits).integers(io.qmin, io.qmax + 1, (5, 40, 24)).astype(np.int16)
    for gate_bits in (32, 64, 0):
        for cell_bits in (32, 64, 0):
            _run_both(_with(arrays, gate_float_bits=gate_bits, cell_float_bits=cell_bits), x, 16, seed=bits)


def test_cell_float_bits_follow_the_product_bounds() -> None:
    model = _model(6, 8, io_bits=8, wbits=8, po2=True, seed=7)
    layer, cell = model.layers[0], model.cell_quant
    # (mult, shift) of f*c, i*g, o*tanh(c); f is an unsigned 8-bit code, c a 16-bit one: |f * c| <= 255 * 2**15 < 2**23
    po2 = ((1, 10), (1, 12), (1, 9))
    assert _cell_float_bits(layer, cell, po2) == 32
    assert _cell_float_bits(layer, cell, ((3, 10), *po2[1:])) == 64  # 255 * 2**15 * 3 passes 2**24
    assert _cell_float_bits(layer, cell, ((2**29 + 1, 40), *po2[1:])) == 64  # ... * (2**29 + 1) < 2**53
    assert _cell_float_bits(layer, cell, ((2**31 - 1, 40), *po2[1:])) == 0  # ... * (2**31 - 1) passes 2**53
    wide = _spec(24, True, 2.0**-20)  # a 24-bit cell: 255 * 2**23 passes 2**24
    assert _cell_float_bits(layer, wide, po2) == 64
    assert _cell_float_bits(layer, cell, ((1, 63), *po2[1:])) == 0  # 1 << 63 is not an int64


def test_float_scales_in_the_fixed_point_cell_take_float64() -> None:
    # float scales with the fixed-point cell forced: 30-bit multipliers, float64 lanes, and the
    # int64 way on the same layer gives the same codes
    model = _model(10, 12, io_bits=8, wbits=6, po2=False, seed=8)
    arrays = layer_arrays(model.layers[0], model.io_quant, model.cell_quant, float32_cell=False)
    assert arrays.params[PARAM_NAMES.index("cell_float_bits")] == 64
    x = np.random.default_rng(9).integers(-128, 128, (3, 30, 10)).astype(np.int16)
    _run_both(arrays, x, 12, seed=9)
    _run_both(_with(arrays, cell_float_bits=0), x, 12, seed=9)


@numba.njit(cache=True)
def _both_gate_ways(acc, bias, mult, shift, real, bounds, off, lo, hi, idx64, idx_float):
    _gate_indices(acc, bias, mult, shift, off, lo, hi, idx64)
    _gate_indices_real(acc, bias, real, bounds, off, lo, hi, idx_float)


def _gate_case(rng: np.random.Generator, real: np.ndarray, bits: int):
    """Accumulators near codes, on .5 ties and at the saturation bounds, for multipliers ``real``."""
    rows = real.size
    mult, shift = requant_params(real)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    bounds, float_bits = _gate_bounds(mult, shift, lo, hi)
    bias = rng.integers(-2**20, 2**20, rows).astype(np.int32)
    acc = rng.integers(-2**30, 2**30, (5, rows)).astype(np.int32)
    near = ((np.arange(rows) % 7 - 3) << shift) // mult  # near codes -3..3
    ties = ((2 * (np.arange(rows) % 9) - 9) << (shift - 1)) // mult  # on the .5 ties (exactly, with po2)
    edges = (bounds[0], bounds[1] + rng.integers(-2, 3, rows))  # the saturation bounds
    for i, a in enumerate((near, ties, *edges)):
        acc[1 + i] = np.clip(a.astype(np.int64) - bias, -2**30, 2**30)  # acc + bias stays int32
    off = rng.integers(0, 1000, rows).astype(np.int32)
    args = (acc, bias, mult.astype(np.int32), shift.astype(np.int32))
    return args, np.ldexp(mult.astype(np.float64), -shift), (bounds, off, lo, hi), float_bits


def _assert_gate_ways_agree(args, real: np.ndarray, rest) -> None:
    for run in (_both_gate_ways, _both_gate_ways.py_func):
        idx64, idx_float = np.zeros((2, *args[0].shape), np.int32)
        run(*args, real, *rest, idx64, idx_float)
        np.testing.assert_array_equal(idx_float, idx64)


@pytest.mark.parametrize("po2", [True, False])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_float64_gate_requantization_equals_int64(bits: int, po2: bool) -> None:
    rng = np.random.default_rng(bits)
    real = _scale(rng, po2, size=300) * np.exp2(rng.integers(-6, 4, size=300))  # 2**-15 .. 2**2
    args, real64, rest, float_bits = _gate_case(rng, real, bits)
    assert float_bits in (32, 64)
    _assert_gate_ways_agree(args, real64, rest)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_float32_gate_requantization_equals_int64(bits: int) -> None:
    rng = np.random.default_rng(10 + bits)
    real = np.exp2(rng.integers(-14, 3, size=300).astype(np.float64))  # power-of-two multipliers, shifts <= 15
    args, real64, rest, float_bits = _gate_case(rng, real, bits)
    assert float_bits == 32
    real32 = real64.astype(np.float32)
    assert np.array_equal(real32.astype(np.float64), real64)
    _assert_gate_ways_agree(args, real32, rest)


def test_adding_gate_products_match_int64() -> None:
    compiled_pairs = numba.njit(lambda blocks, z, acc: gate_dot_add(blocks, z, acc))
    compiled_quads = numba.njit(lambda blocks, zu, acc: gate_dot_u8_add(blocks, zu, acc))
    rng = np.random.default_rng(0)
    for rows, k, batch in [(4, 3, 1), (20, 7, 5), (256, 104, 4), (512, 130, 9)]:
        w = rng.integers(-128, 128, (rows, k)).astype(np.int8)
        start = rng.integers(-2**20, 2**20, (batch, -(-rows // ROWS_PER_BLOCK) * ROWS_PER_BLOCK)).astype(np.int32)
        pairs = block_weights(w)
        z = np.zeros((batch, 2 * pairs.shape[1]), np.int16)
        z[:, :k] = rng.integers(-2**15, 2**15, (batch, k))
        expected = start[:, :rows] + z[:, :k].astype(np.int64) @ w.T.astype(np.int64)
        for blocks in (pairs, pairs.astype(np.int16)):  # int8 and widened int16 pair blocks
            np.testing.assert_array_equal(unblock_weights(blocks)[:rows, :k], w)
            for run in (compiled_pairs, gate_dot_add):
                acc = start.copy()
                run(blocks, z, acc)
                np.testing.assert_array_equal(acc[:, :rows], expected)
                np.testing.assert_array_equal(acc[:, rows:], start[:, rows:])  # padding rows add zero
        quads = block_weights_u8(w)
        zu = np.zeros((batch, 4 * quads.shape[1]), np.uint8)
        zu[:, :k] = rng.integers(0, 256, (batch, k))
        expected = start[:, :rows] + zu[:, :k].astype(np.int64) @ w.T.astype(np.int64)
        for run in (compiled_quads, gate_dot_u8_add):
            acc = start.copy()
            run(quads, zu, acc)
            np.testing.assert_array_equal(acc[:, :rows], expected)
            np.testing.assert_array_equal(acc[:, rows:], start[:, rows:])
