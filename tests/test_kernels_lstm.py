"""The Numba kernels against the plain NumPy reference (and their own .py_func), no Brevitas."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np
import pytest

from kernels.engine import IntLSTMEngine, KernelBackend
from kernels.fixedpoint import div_round_half_even, requant_params, rshift_round_half_even
from kernels.linear import head_arrays, linear_numba, linear_ref
from kernels.lstm import AccumulatorOverflow, kernel_args, layer_arrays, lstm_layer_numba, run_layer_numba
from kernels.lstm_ref import lstm_layer_ref
from kernels.model import IntLinear, IntLSTMLayer, IntLSTMModel, QuantSpec
from kernels.pack import code_range
from kernels.storage import load_model, save_model

MULT_REL_ERROR = 2.0**-30  # a 30-bit multiplier mantissa (>= 2**29) rounds to within 2**-30 relative


def _spec(bits: int, signed: bool, scale: float | np.ndarray, narrow: bool = False) -> QuantSpec:
    return QuantSpec(scale=np.asarray(scale, dtype=np.float32), bit_width=bits, signed=signed, narrow_range=narrow)


def _scale(rng: np.random.Generator, po2: bool, size: int | None = None) -> np.ndarray:
    exponent = rng.integers(-9, -3, size=size)
    return np.exp2(exponent) if po2 else np.exp2(exponent) * rng.uniform(1.0, 2.0, size=size)


def _layer(rng: np.random.Generator, f: int, h: int, wbits: int, po2: bool, io: QuantSpec, cell: QuantSpec) -> IntLSTMLayer:
    """A random layer with valid codes and arbitrary (not sigmoid-shaped) lookup tables."""
    acc = tuple(_spec(8, True, _scale(rng, po2) * 64) for _ in range(4))
    act = tuple(_spec(8, g == "g", _scale(rng, po2)) for g in "ifgo")
    hidden_tanh = _spec(8, True, _scale(rng, po2))
    wq = tuple(_spec(wbits, True, _scale(rng, po2, size=h), narrow=True) for _ in range(4))
    lo, hi = code_range(wbits, signed=True, narrow=True)
    luts = np.stack([rng.integers(a.qmin, a.qmax + 1, size=256) for a in act]).astype(np.int32)
    return IntLSTMLayer(
        input_size=f, hidden_size=h,
        weight=rng.integers(lo, hi + 1, size=(4 * h, f + h)).astype(np.int8),
        weight_quant=wq, bias=rng.integers(-3000, 3000, size=4 * h).astype(np.int32),
        gate_acc_quant=acc, gate_act_quant=act, hidden_tanh_quant=hidden_tanh, gate_luts=luts,
        cell_tanh_lut=rng.integers(-128, 128, size=cell.n_codes).astype(np.int32),
    )


def _model(f: int, h: int, *, layers: int = 1, wbits: int = 4, po2: bool = True, seed: int = 0,
           classes: int = 5) -> IntLSTMModel:
    rng = np.random.default_rng(seed)
    io, cell = _spec(8, True, _scale(rng, po2)), _spec(16, True, _scale(rng, po2) / 256)
    stack = tuple(_layer(rng, f if i == 0 else h, h, wbits, po2, io, cell) for i in range(layers))
    head = IntLinear(weight=rng.integers(-7, 8, size=(classes, h)).astype(np.int8),
                     weight_quant=_spec(4, True, _scale(rng, po2, size=classes), narrow=True),
                     bias=rng.integers(-500, 500, size=classes).astype(np.int32),
                     input_quant=_spec(8, True, _scale(rng, po2)))
    return IntLSTMModel(io_quant=io, cell_quant=cell, layers=stack, head=head)


def _x(model: IntLSTMModel, batch: int, steps: int, seed: int = 1) -> np.ndarray:
    io = model.io_quant
    return np.random.default_rng(seed).integers(io.qmin, io.qmax + 1, (batch, steps, model.input_size)).astype(np.int16)


def test_round_half_even_shift_matches_np_round() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(-2**40, 2**40, size=20000)
    shift = rng.integers(1, 24, size=x.size)
    x[:4], shift[:4] = (5, 7, -5, -7), (1, 1, 1, 1)  # exact ties 2.5, 3.5, -2.5, -3.5
    expected = np.round(x / np.exp2(shift)).astype(np.int64)  # float64 is exact below 2**53
    np.testing.assert_array_equal(rshift_round_half_even(x, shift), expected)


def test_div_round_half_even_matches_fractions() -> None:
    rng = np.random.default_rng(0)
    num, den = rng.integers(-10**9, 10**9, size=5000), rng.integers(1, 300, size=5000)
    num[:3], den[:3] = (250, 350, -250), (100, 100, 100)  # exact ties 2.5, 3.5, -2.5
    expected = [round(Fraction(int(n), int(d))) for n, d in zip(num, den)]  # Python rounds half to even
    np.testing.assert_array_equal(div_round_half_even(num, den), expected)


def test_requant_params_exact_for_powers_of_two_and_close_otherwise() -> None:
    po2 = np.exp2(np.arange(-20, 6, dtype=np.float64))
    mult, shift = requant_params(po2)
    assert np.all(shift >= 1)
    np.testing.assert_array_equal(mult / np.exp2(shift), po2)
    real = np.random.default_rng(0).uniform(1e-6, 10.0, size=1000)
    mult, shift = requant_params(real)
    assert np.all(shift >= 1) and np.all(mult <= 2**30)
    np.testing.assert_allclose(mult / np.exp2(shift), real, rtol=MULT_REL_ERROR, atol=0)


@pytest.mark.parametrize("po2", [True, False])
@pytest.mark.parametrize(("f", "h", "batch"), [(5, 4, 1), (40, 64, 3), (64, 128, 2)])
def test_numba_layer_matches_numpy_reference(f: int, h: int, batch: int, po2: bool) -> None:
    model = _model(f, h, po2=po2)
    arrays = layer_arrays(model.layers[0], model.io_quant, model.cell_quant)
    x = _x(model, batch, 30)
    h_ref, c_ref = np.zeros((batch, h), np.int64), np.zeros((batch, h), np.int64)
    h_nb, c_nb = h_ref.copy(), c_ref.copy()
    ref = lstm_layer_ref(arrays, x, h_ref, c_ref)
    out = run_layer_numba(arrays, x, h_nb, c_nb)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(c_nb, c_ref)
    cell = model.cell_quant
    assert c_ref.min() >= cell.qmin and c_ref.max() <= cell.qmax


def test_numba_layer_matches_its_py_func() -> None:
    model = _model(3, 4, po2=False)
    arrays = layer_arrays(model.layers[0], model.io_quant, model.cell_quant)
    x = _x(model, 2, 5)
    states = [(np.zeros((2, 4), np.int64), np.zeros((2, 4), np.int64)) for _ in range(2)]
    compiled = lstm_layer_numba(*kernel_args(arrays), x, *states[0])
    interpreted = lstm_layer_numba.py_func(*kernel_args(arrays), x, *states[1])
    np.testing.assert_array_equal(compiled, interpreted)


@pytest.mark.parametrize("po2", [True, False])
def test_head_numba_matches_reference_and_py_func(po2: bool) -> None:
    model = _model(4, 16, po2=po2)
    arrays = head_arrays(model.head, float(model.io_quant.scale), steps=7)
    h = np.random.default_rng(2).integers(-128 * 7, 128 * 7, size=(6, 16))  # sums over 7 steps
    ref = linear_ref(arrays, h)
    np.testing.assert_array_equal(linear_numba(*arrays, h), ref)
    np.testing.assert_array_equal(linear_numba.py_func(*arrays, h), ref)


@pytest.mark.parametrize("pooling", ["last", "mean"])
@pytest.mark.parametrize("backend", list(KernelBackend))
@pytest.mark.parametrize("chunks", [[1] * 12, [5, 7], [3, 1, 8]])
def test_streaming_equals_whole_sequence(chunks: list[int], backend: KernelBackend, pooling: str) -> None:
    model = dataclasses.replace(_model(6, 8, layers=2, po2=False), pooling=pooling)
    engine = IntLSTMEngine(model, backend=backend)
    x = _x(model, 2, sum(chunks))
    whole = engine.run(x)
    stream, start, parts = engine.stream(batch=2), 0, []
    for n in chunks:
        parts.append(stream.push(x[:, start:start + n]))
        start += n
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole.hidden)
    np.testing.assert_array_equal(stream.logits(), whole.logits)


def test_backends_agree_on_two_layers_with_head() -> None:
    model = _model(10, 12, layers=2, po2=True)
    x = _x(model, 3, 25)
    fast, ref = (IntLSTMEngine(model, backend=b).run(x) for b in (KernelBackend.NUMBA, KernelBackend.NUMPY))
    np.testing.assert_array_equal(fast.hidden, ref.hidden)
    np.testing.assert_array_equal(fast.logits, ref.logits)


def test_accumulator_bound_is_checked() -> None:
    model = _model(5, 4)
    layer = model.layers[0]
    huge = layer.bias.copy()
    huge[0] = 2**31 - 10  # fits int32, but bias + dot product could pass 2**31
    bad = IntLSTMLayer(**{**layer.__dict__, "bias": huge})
    with pytest.raises(AccumulatorOverflow):
        layer_arrays(bad, model.io_quant, model.cell_quant)


def test_gate_multiplier_beyond_int32_is_refused() -> None:
    model = _model(5, 4)
    layer = model.layers[0]
    tiny = tuple(dataclasses.replace(q, scale=(q.scale / np.float32(2.0**40)).astype(np.float32))
                 for q in layer.gate_acc_quant)  # acc -> gate code multiplier of ~2**40
    with pytest.raises(AccumulatorOverflow, match="multipliers"):
        layer_arrays(dataclasses.replace(layer, gate_acc_quant=tiny), model.io_quant, model.cell_quant)


def test_save_load_round_trip_unpacks_weights(tmp_path) -> None:
    model = _model(7, 6, layers=2, wbits=3)
    save_model(model, tmp_path / "m.npz")
    back = load_model(tmp_path / "m.npz")
    for a, b in zip(model.layers, back.layers):
        np.testing.assert_array_equal(a.weight, b.weight)
        np.testing.assert_array_equal(a.gate_luts, b.gate_luts)
        assert b.gate_luts.dtype == a.gate_luts.dtype and b.bias.dtype == a.bias.dtype
        assert a.weight_quant[0].bit_width == b.weight_quant[0].bit_width
    np.testing.assert_array_equal(model.head.weight, back.head.weight)
    assert back.packed_nbytes == model.packed_nbytes
    x = _x(model, 1, 9)
    np.testing.assert_array_equal(IntLSTMEngine(back).run(x).logits, IntLSTMEngine(model).run(x).logits)
    with np.load(tmp_path / "m.npz") as stored:  # LUTs stored narrowed, not as int32
        for key in ("layers.0.gate_luts", "layers.0.cell_tanh_lut"):
            lut = stored[key]
            narrowest = np.result_type(np.min_scalar_type(int(lut.min())), np.min_scalar_type(int(lut.max())))
            assert lut.dtype == narrowest and lut.itemsize < 4


def test_packed_nbytes_counts_weights_at_their_width() -> None:
    model = _model(40, 64, wbits=3, classes=10)
    sizes = model.size_breakdown()
    assert sizes["weights"] == (256 * 104 * 3 + 7) // 8 + (10 * 64 * 4 + 7) // 8
    assert sizes["biases"] == 4 * (256 + 10)
    assert model.packed_nbytes == sum(sizes.values())


def test_float32_cell_mode_equals_fixed_point_for_po2_scales() -> None:
    # with power-of-two scales both ways are exact, so they must agree code for code
    model = _model(8, 16, po2=True)
    x = _x(model, 3, 40)
    runs = []
    for float32_cell in (False, True):
        arrays = layer_arrays(model.layers[0], model.io_quant, model.cell_quant, float32_cell=float32_cell)
        runs.append(run_layer_numba(arrays, x, np.zeros((3, 16), np.int64), np.zeros((3, 16), np.int64)))
    np.testing.assert_array_equal(runs[0], runs[1])


def test_u8_and_int16_products_give_the_same_codes() -> None:
    # quad blocks (gate_dot_u8 on codes + 128, offset folded into the bias) and pair blocks (gate_dot)
    for po2 in (True, False):
        model = _model(40, 64, wbits=8, po2=po2)
        x = _x(model, 5, 20)
        runs = []
        for u8 in (True, False):
            arrays = layer_arrays(model.layers[0], model.io_quant, model.cell_quant, u8_inputs=u8)
            assert arrays.blocks.shape[3] == (4 if u8 else 2)
            runs.append(run_layer_numba(arrays, x, np.zeros((5, 64), np.int64), np.zeros((5, 64), np.int64)))
        np.testing.assert_array_equal(runs[0], runs[1])


def _check_gate_dot_u8() -> None:
    import numba

    from kernels.simd import block_weights_u8, gate_dot_u8

    compiled = numba.njit(lambda blocks, zu, acc: gate_dot_u8(blocks, zu, acc))
    rng = np.random.default_rng(0)
    for rows, k, batch in [(4, 3, 1), (20, 7, 5), (256, 104, 4), (512, 192, 6), (1024, 320, 9)]:
        w = rng.integers(-128, 128, (rows, k)).astype(np.int8)
        w[0] = -128  # with zu = 255: the extreme products
        blocks = block_weights_u8(w)
        zu = np.zeros((batch, 4 * blocks.shape[1]), np.uint8)
        zu[:, :k] = rng.integers(0, 256, (batch, k))
        zu[0, :k] = 255
        expected = zu[:, :k].astype(np.int64) @ w.T.astype(np.int64)
        for run in (compiled, gate_dot_u8):  # the SIMD intrinsic and the NumPy fallback (.py_func)
            acc = np.full((batch, blocks.shape[0] * 64), 7, np.int32)
            run(blocks, zu, acc)
            np.testing.assert_array_equal(acc[:, :rows], expected)
            assert not acc[:, rows:].any()


def test_gate_dot_u8_matches_int64() -> None:
    _check_gate_dot_u8()


@pytest.mark.slow  # a fresh Numba compile in a subprocess: minutes under emulation
def test_gate_dot_u8_portable_path_matches_int64(tmp_path) -> None:
    # forced below AVX-512 the intrinsic emits portable vector IR instead of vpdpbusd (fresh Numba cache)
    import os
    import subprocess
    import sys
    from pathlib import Path

    from kernels.simd import ISA_ENV

    env = {**os.environ, ISA_ENV: "avx2", "NUMBA_CACHE_DIR": str(tmp_path)}
    code = "import sys; sys.path[:0] = ['tests', '.']; import test_kernels_lstm as t; t._check_gate_dot_u8()"
    run = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
