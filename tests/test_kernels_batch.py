"""The batch paths of the LSTM kernel against the NumPy reference: the input projection run
ahead per chunk of steps (the adding gate products), widened int16 pair blocks, and the
float64 gate requantization, over random shapes, batch 1 and > 1, po2 and float scales, 2-8 bits."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from kernels.fixedpoint import requant_params
from kernels.lstm import (CHUNK_ELEMENTS, _gate_bounds, _gate_indices, _gate_indices_f64, kernel_args, layer_arrays,
                          lstm_layer_numba)
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


def test_int64_gate_path_when_float64_is_not_exact() -> None:
    # a tiny gate multiplier (huge shift) puts the saturation bounds times mult past 2**53
    model = _model(6, 8, io_bits=8, wbits=8, po2=False, seed=5)
    arrays = layer_arrays(model.layers[0], model.io_quant, model.cell_quant)
    assert arrays.params[13] == 1  # the test models take the float64 way
    mult = np.full(4, 2**30, np.int64)
    bounds, exact = _gate_bounds(mult, np.full(4, 60, np.int64), -128, 127)
    assert not exact and bounds.dtype == np.int32
    params = arrays.params.copy()
    params[13] = 0  # the int64 way on the same layer gives the same codes
    x = np.random.default_rng(6).integers(-128, 128, (4, 12, 6)).astype(np.int16)
    _run_both(arrays._replace(params=params), x, 8, seed=6)


@numba.njit(cache=True)
def _both_gate_ways(acc, bias, mult, shift, real, bounds, off, lo, hi, idx64, idx_f64):
    _gate_indices(acc, bias, mult, shift, off, lo, hi, idx64)
    _gate_indices_f64(acc, bias, real, bounds, off, lo, hi, idx_f64)


@pytest.mark.parametrize("po2", [True, False])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_float64_gate_requantization_equals_int64(bits: int, po2: bool) -> None:
    rng = np.random.default_rng(bits)
    rows = 300
    real = _scale(rng, po2, size=rows) * np.exp2(rng.integers(-6, 4, size=rows))  # 2**-15 .. 2**2
    mult, shift = requant_params(real)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    bounds, exact = _gate_bounds(mult, shift, lo, hi)
    assert exact
    bias = rng.integers(-2**20, 2**20, rows).astype(np.int32)
    acc = rng.integers(-2**30, 2**30, (5, rows)).astype(np.int32)
    near = ((np.arange(rows) % 7 - 3) << shift) // mult  # near codes -3..3
    ties = ((2 * (np.arange(rows) % 9) - 9) << (shift - 1)) // mult  # on the .5 ties (exactly, with po2)
    edges = (bounds[0], bounds[1] + rng.integers(-2, 3, rows))  # the saturation bounds
    for i, a in enumerate((near, ties, *edges)):
        acc[1 + i] = np.clip(a.astype(np.int64) - bias, -2**30, 2**30)  # acc + bias stays int32
    off = rng.integers(0, 1000, rows).astype(np.int32)
    args = (acc, bias, mult.astype(np.int32), shift.astype(np.int32), np.ldexp(mult.astype(np.float64), -shift),
            bounds, off, lo, hi)
    for run in (_both_gate_ways, _both_gate_ways.py_func):
        idx64, idx_f64 = np.zeros((2, 5, rows), np.int32)
        run(*args, idx64, idx_f64)
        np.testing.assert_array_equal(idx_f64, idx64)


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
