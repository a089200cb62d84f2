"""The fast quantized-LSTM forward/backward (qbench.quant.fast_lstm) against Brevitas' own forward.

Outputs, states and hidden codes must be identical (atol=0) with both scale types: the fast path
repeats Brevitas' float32 operations in Brevitas' order (see the module docstring). Gradients
are summed in another order, so they agree within a float tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from brevitas.nn import QuantLinear
from torch import nn

from kernels import IntLSTMEngine, brevitas_codes, extract_lstm
from qbench.quant.config import QuantConfig
from qbench.quant.fast_lstm import why_not_fast
from qbench.quant.lstm import QbenchQuantLSTM, fit_input_scale, quant_lstm_from
from qbench.quant.quantizers import act_quant, bias_quant, weight_quant

BITS = [2, 3, 4, 6, 8]  # the sweep's grid, thinned to keep the stock Brevitas runs short
FEATURES, HIDDEN, BATCH, STEPS = 12, 24, 3, 12  # H = 24: gate blocks with a non-vector tail
STATS_STEPS = 2

WEIGHT_GRAD_RTOL = 1e-4
"""Weights, biases: max |fast - stock| over the tensor, relative to its max |stock|. Both sum the
same products over steps and batch in a different order (hoisted products, one backward GEMM for
all steps): float32 reassociation, measured <= 1e-5."""

SCALE_GRAD_RTOL = 5e-3
"""Learned scales: a scale's gradient sums ``grad * (code - x / s)`` over every quantized element
of every step, terms of both signs that cancel to ~1e-3 of their magnitude; Brevitas sums the two
halves separately (product and division backward) and the fast path sums their difference, so
reassociation error is amplified: measured <= 8.3e-4 (8-bit float scales). A wrong
straight-through rule (no clamp mask, a missing half) is off by 10-100 %."""


def _model(qcfg: QuantConfig, *, layers: int = 1, seed: int = 0) -> QbenchQuantLSTM:
    """A quantized LSTM past its statistics phase (scales are learned parameters), in train mode."""
    torch.manual_seed(seed)
    lstm = nn.LSTM(FEATURES, HIDDEN, num_layers=layers, batch_first=True)
    with torch.no_grad():
        for p in lstm.parameters():
            p.mul_(3.0)  # saturating gates, as in trained LSTMs
    q = quant_lstm_from(lstm, qcfg, collect_stats_steps=STATS_STEPS)
    q.train()
    with torch.no_grad():
        for _ in range(STATS_STEPS + 1):
            q(_inputs(seed + 100))
    return q


def _inputs(seed: int, batch: int = BATCH) -> torch.Tensor:
    return torch.rand(batch, STEPS, FEATURES, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _state(layers: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(layers, BATCH, HIDDEN, generator=g) - 0.5, torch.rand(layers, BATCH, HIDDEN, generator=g) - 0.5


def _run(q: QbenchQuantLSTM, x: torch.Tensor, hx, *, fast: bool, grads: bool):
    """(output, h_n, c_n) and, with ``grads``, every parameter's gradient of a loss on all three."""
    q.fast_path = fast
    assert (why_not_fast(q) is None) == fast
    q.zero_grad()
    with torch.set_grad_enabled(grads):
        out, (h, c) = q(x, hx)
        assert q.fast_path_declined == (None if fast else "fast_path is off")  # the fast path ran, or did not
        if grads:
            (out.square().sum() + (h * torch.arange(HIDDEN)).sum() + c.square().sum()).backward()
    q.fast_path = True
    found = {n: p.grad.clone() for n, p in q.named_parameters() if p.grad is not None} if grads else {}
    return (out.detach(), h.detach(), c.detach()), found


def _assert_same_forward(stock, fast, q: QbenchQuantLSTM, *, min_codes: int = 2) -> None:
    for a, b in zip(stock, fast):
        np.testing.assert_array_equal(b.numpy(), a.numpy())
    io_scale = q.layers[0][0].io_quant.scale().detach()
    codes = torch.round(stock[0] / io_scale)
    np.testing.assert_array_equal(torch.round(fast[0] / io_scale).numpy(), codes.numpy())
    assert len(torch.unique(codes)) >= min_codes  # not a degenerate all-saturated or all-zero run


def _assert_close_grads(stock: dict, fast: dict) -> None:
    """Each gradient within its tolerance of its own size; a scale's gradient that cancels to ~0
    (seen: 1e-8 where others are 1e-3) within the tolerance of the model's largest scale gradient."""
    assert stock.keys() == fast.keys()
    largest_scale_grad = max(float(g.abs().max()) for n, g in stock.items() if "scaling_impl.value" in n)
    for name, ref in stock.items():
        size = float(ref.abs().max())
        if "scaling_impl.value" in name:  # a learned activation scale
            rtol, size = SCALE_GRAD_RTOL, max(size, largest_scale_grad)
        else:
            rtol = WEIGHT_GRAD_RTOL
        err = float((fast[name] - ref).abs().max())
        assert err <= rtol * size + 1e-12, f"{name}: {err} vs max {float(ref.abs().max())}"


def _assert_fast_is_stock(q: QbenchQuantLSTM, x: torch.Tensor, hx=None, *, min_codes: int = 2) -> None:
    """A training forward and backward through both paths: the same outputs and codes, close gradients."""
    stock, stock_grads = _run(q, x, hx, fast=False, grads=True)
    fast, fast_grads = _run(q, x, hx, fast=True, grads=True)
    _assert_same_forward(stock, fast, q, min_codes=min_codes)
    _assert_close_grads(stock_grads, fast_grads)


@pytest.mark.parametrize(("layers", "with_state"), [(1, False), (2, True)])  # every path, half the stock runs
@pytest.mark.parametrize("scale_type", ["po2", "float"])
@pytest.mark.parametrize("bits", BITS)
def test_fast_path_is_stock_brevitas(bits: int, scale_type: str, layers: int, with_state: bool) -> None:
    q = _model(QuantConfig(weight_bits=bits, act_bits=bits, scale_type=scale_type), layers=layers, seed=bits)
    x, hx = _inputs(bits), _state(layers, bits) if with_state else None
    min_codes = 2 if bits >= 6 else 1  # below 6-bit activations some of these random LSTMs output all zeros
    _assert_fast_is_stock(q, x, hx, min_codes=min_codes)
    q.eval()
    _assert_same_forward(_run(q, x, hx, fast=False, grads=False)[0], _run(q, x, hx, fast=True, grads=False)[0], q,
                         min_codes=min_codes)


def _qat(q: QbenchQuantLSTM, steps: int = 6, head: nn.Module | None = None) -> None:
    """A few QAT steps through the fast path, large enough to move weights and learned scales."""
    params = list(q.parameters()) + (list(head.parameters()) if head is not None else [])
    opt = torch.optim.Adam(params, lr=1e-2)
    target = torch.randn(8, HIDDEN, generator=torch.Generator().manual_seed(7))
    q.train()
    for i in range(steps):
        assert why_not_fast(q) is None
        out, _ = q(_inputs(200 + i, batch=8))
        loss = (out[:, -1] - target).square().mean() if head is None else head(out[:, -1]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("scale_type", ["po2", "float"])
def test_fast_qat_trained_model_is_stock_brevitas(scale_type: str) -> None:
    q = _model(QuantConfig(weight_bits=4, act_bits=6, scale_type=scale_type, granularity="per_channel"), layers=2)
    before = q.layers[0][0].cell.output_quant.fused_activation_quant_proxy.tensor_quant.scaling_impl.value.clone()
    _qat(q)
    assert not torch.equal(before, q.layers[0][0].cell.output_quant.fused_activation_quant_proxy
                           .tensor_quant.scaling_impl.value)  # the learned scales moved
    x = _inputs(300)
    _assert_fast_is_stock(q, x)


def test_statistics_phase_runs_stock_brevitas() -> None:
    """While a quantizer collects runtime statistics, its calls set its scale: Brevitas' path runs."""
    torch.manual_seed(0)
    q = quant_lstm_from(nn.LSTM(FEATURES, HIDDEN, batch_first=True), QuantConfig(), collect_stats_steps=50)
    q.train()
    assert why_not_fast(q) == "an activation quantizer is collecting statistics"
    q.eval()
    assert why_not_fast(q) is None  # eval reads the running statistics without changing them


def test_hooks_on_quantizers_run_stock_brevitas() -> None:
    """Observers of Brevitas' per-step quantizer calls (kernels.conformance) see those calls."""
    q = _model(QuantConfig(scale_type="po2"))
    proxy = q.layers[0][0].io_quant.fused_activation_quant_proxy
    calls = []
    handle = proxy.register_forward_hook(lambda *_: calls.append(1))
    assert why_not_fast(q) is not None
    q(_inputs(1))
    handle.remove()
    assert len(calls) == STEPS + 1  # the input, then h_t of every step
    assert why_not_fast(q) is None


@pytest.mark.parametrize("scale_type", ["po2", "float"])
def test_loaded_state_dict_runs_the_loaded_quantizers(scale_type: str) -> None:
    qcfg = QuantConfig(weight_bits=3, scale_type=scale_type)
    trained = _model(qcfg, layers=2)
    _qat(trained)
    fresh = _model(qcfg, layers=2, seed=5)
    fresh.load_state_dict(trained.state_dict())
    assert all(direction._fast_cell is None for layer in fresh.layers for direction in layer)
    x = _inputs(400)
    trained.eval(), fresh.eval()
    expected = _run(trained, x, None, fast=False, grads=False)[0]
    _assert_same_forward(expected, _run(fresh, x, None, fast=True, grads=False)[0], fresh)
    _assert_same_forward(expected, _run(fresh, x, None, fast=False, grads=False)[0], fresh)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_integer_engine_is_bit_exact_after_fast_qat(bits: int) -> None:
    qcfg = QuantConfig(weight_bits=bits, scale_type="po2")  # 8-bit activations, as tests/test_kernels_conformance
    q = _model(qcfg, seed=bits)
    head = QuantLinear(HIDDEN, 5, bias=True, weight_quant=weight_quant(qcfg), bias_quant=bias_quant(qcfg),
                       input_quant=act_quant(qcfg, signed=True, collect_stats_steps=1))
    with torch.no_grad():
        fit_input_scale(q, _inputs(500))
        head(q(_inputs(501))[0][:, -1])
    _qat(q, head=head)
    q.eval(), head.eval()
    x = _inputs(502).numpy()
    model = extract_lstm(q, head)
    ref_hidden, ref_logits = brevitas_codes(model, q, x, head)  # the fast path: q has no hooks
    out = IntLSTMEngine(model).run(model.quantize_input(x))
    np.testing.assert_array_equal(out.hidden, ref_hidden)
    np.testing.assert_array_equal(out.logits, ref_logits)
    q.fast_path = False
    np.testing.assert_array_equal(brevitas_codes(model, q, x, head)[0], ref_hidden)


def test_power_of_two_scales_make_every_product_exact() -> None:
    """Exact sums allow any GEMM arrangement; float scales take the one BLAS rounds as Brevitas'."""
    from qbench.quant.fast_lstm import _layer

    for scale_type, exact in (("po2", True), ("float", False)):
        q = _model(QuantConfig(scale_type=scale_type))
        cell = q.layers[0][0]
        with torch.no_grad():
            assert _layer(cell, cell.maybe_quantize_input(_inputs(0))).exact is exact


@pytest.mark.parametrize("arrangement", [(False, False), (True, False), (False, True)])
def test_every_gemm_arrangement_is_stock_brevitas(arrangement, monkeypatch) -> None:
    """Whichever arrangement the BLAS check picks on a CPU, the forward is Brevitas'."""
    from qbench.quant import fast_lstm

    monkeypatch.setattr(fast_lstm, "_blas_arrangement", lambda *shape: arrangement)
    q = _model(QuantConfig(weight_bits=6, scale_type="float"), layers=2, seed=4)
    x = _inputs(4)
    _assert_fast_is_stock(q, x)


def test_blas_arrangement_is_checked_once_per_shape() -> None:
    from qbench.quant import fast_lstm

    found = fast_lstm._blas_arrangement(5, 7, 12, 24)
    assert all(isinstance(v, bool) for v in found)
    assert fast_lstm._ARRANGEMENTS[(5, 7, 12, 24, torch.get_num_threads())] == found


@pytest.mark.parametrize("rounding", ["floor", "round_to_zero"])
def test_other_rounding_modes_are_stock_brevitas(rounding: str) -> None:
    q = _model(QuantConfig(weight_bits=4, act_bits=6, rounding=rounding), layers=2, seed=11)
    x = _inputs(11)
    _assert_fast_is_stock(q, x)


def test_inference_reuses_quantized_weights_until_a_parameter_changes() -> None:
    """Eval mode without autograd keeps each layer's quantized weights and tables; an in-place
    update (an optimizer step) or a load changes a parameter's version and they are rebuilt."""
    from qbench.quant import fast_lstm

    q = _model(QuantConfig(weight_bits=4, scale_type="float"), layers=2)
    q.eval()
    x = _inputs(21)
    first = _run(q, x, None, fast=True, grads=False)[0]
    assert q in fast_lstm._PLANS
    plans = fast_lstm._PLANS[q][1]
    assert _run(q, x, None, fast=True, grads=False)[0][0].equal(first[0]) and fast_lstm._PLANS[q][1] is plans
    with torch.no_grad():
        q.layers[1][0].forget_gate_params.input_weight.weight.mul_(-1.5)  # what an optimizer step does
    changed = _run(q, x, None, fast=True, grads=False)[0]
    assert fast_lstm._PLANS[q][1] is not plans
    assert not changed[0].equal(first[0])
    _assert_same_forward(_run(q, x, None, fast=False, grads=False)[0], changed, q)
    other = _model(QuantConfig(weight_bits=4, scale_type="float"), layers=2, seed=3)
    q.load_state_dict(other.state_dict())
    other.eval()
    expected = _run(other, x, None, fast=False, grads=False)[0]
    _assert_same_forward(expected, _run(q, x, None, fast=True, grads=False)[0], q)
    kept = fast_lstm._PLANS[q]
    q.train()
    with torch.no_grad():
        q(x)
    assert fast_lstm._PLANS[q] is kept  # a training forward neither uses nor replaces them


def test_an_activation_code_that_depends_on_the_aten_path_runs_stock_brevitas(monkeypatch) -> None:
    from qbench.quant import fast_tables

    q = _model(QuantConfig(scale_type="float"))
    x = _inputs(31)
    expected = _run(q, x, None, fast=False, grads=False)[0]
    monkeypatch.setattr(fast_tables, "_table", lambda *args: None)
    q.fast_path = True
    with torch.no_grad():
        out, (h, c) = q(x)
    assert "vector or scalar path" in q.fast_path_declined
    _assert_same_forward(expected, (out, h, c), q)


def test_table_declines_an_input_whose_code_depends_on_the_aten_path() -> None:
    """Where ATen's vector and scalar sigmoid differ in the last ulp, a scale that puts the scalar
    value exactly on a rounding tie gives the two paths different codes: no table."""
    from qbench.quant.fast_tables import _table

    inputs = torch.linspace(-8, 8, 1 << 16)
    padded = torch.zeros(2 * len(inputs))
    padded[::2] = inputs
    vector, scalar = torch.sigmoid(inputs), torch.sigmoid(padded[::2])
    differ = torch.nonzero(vector != scalar).flatten()
    if len(differ) == 0:
        pytest.skip("ATen's vector and scalar sigmoid agree on every input on this CPU: no ambiguous code exists")
    i = int(differ[0])
    lo, hi = np.array([0.0], np.float32), np.array([255.0], np.float32)
    tie = np.array([2 * min(float(vector[i]), float(scalar[i]))], np.float32)  # the smaller / s = 0.5: rounds to 0
    assert _table(torch.sigmoid, inputs[i:i + 1], 0, tie, lo, hi, "round") is None  # the larger rounds to 1
    step = np.array([4 * min(float(vector[i]), float(scalar[i]))], np.float32)  # 0.25 and just above: both 0
    np.testing.assert_array_equal(_table(torch.sigmoid, inputs[i:i + 1], 0, step, lo, hi, "round"), vector[i:i + 1])


def test_float64_input_runs_stock_brevitas() -> None:
    q = _model(QuantConfig()).double()
    with torch.no_grad():
        q(_inputs(41).double())
    assert "float64" in q.fast_path_declined


def _cell_problem(seed: int, batch: int = 3, hidden: int = 24, steps: int = 4):
    """Random operands of one layer's cell kernels, codes within their tables."""
    from qbench.quant.fast_cell import QUANTIZERS, SAVED

    rng = np.random.default_rng(seed)
    f32 = np.float32
    scale = rng.uniform(0.005, 0.05, QUANTIZERS).astype(f32)
    scale[8] = 1 / 4096  # the cell state: 16 bits
    lo = np.array([-128] * 4 + [0, 0, -128, 0] + [-32768, -128, -128], f32)
    hi = np.array([127] * 4 + [255, 255, 127, 255] + [32767, 127, 127], f32)
    mode = np.zeros(QUANTIZERS, np.int64)
    codes = np.arange(-128, 128, dtype=f32)
    act_pre = np.stack([np.tanh(codes * scale[k]) if k == 2 else 1 / (1 + np.exp(-codes * scale[k]))
                        for k in range(4)]).astype(f32)
    tanh_pre = np.tanh(np.arange(-32768, 32768, dtype=f32) * scale[8]).astype(f32)
    xw = rng.normal(0, 1, (steps, batch, 4 * hidden)).astype(f32)
    hu = rng.normal(0, 1, (4 * batch, hidden)).astype(f32)
    bias = rng.normal(0, 0.1, (4, hidden)).astype(f32)
    state = (rng.uniform(-1, 1, (batch, hidden)).astype(f32), rng.uniform(-1, 1, (batch, hidden)).astype(f32))
    saved = np.zeros((steps, SAVED, batch, hidden), f32)
    return dict(xw=xw, hu=hu, bias=bias, state=state, scale=scale, lo=lo, hi=hi, mode=mode, act_pre=act_pre,
                tanh_pre=tanh_pre, saved=saved, steps=steps, batch=batch, hidden=hidden)


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_cell_kernels_match_their_python(mode: int) -> None:
    """The compiled kernels against their own ``.py_func`` (Numba's test pattern): the forward
    bit for bit (float32 operations), the backward within float reassociation."""
    from qbench.quant.fast_cell import cell_backward, cell_forward

    runs = []
    for fn_forward, fn_backward in ((cell_forward, cell_backward), (cell_forward.py_func, cell_backward.py_func)):
        c = _cell_problem(mode)
        c["mode"][:] = mode
        b, hd, steps = c["batch"], c["hidden"], c["steps"]
        h, cs = (a.copy() for a in c["state"])
        out = np.zeros((b, steps, hd), np.float32)
        scratch = (np.empty((4, b, hd), np.float32), np.empty((b, hd), np.int32), np.empty((4, hd), np.float32))
        for t in range(steps):
            fn_forward(t, t, c["xw"], c["hu"], True, c["bias"], h, cs, out, c["scale"], c["lo"], c["hi"], c["mode"],
                       c["act_pre"], -128, c["tanh_pre"], -32768, *scratch, c["saved"])
        dh, dc = np.ones((b, hd), np.float32), np.zeros((b, hd), np.float32)
        d_gates, terms = np.zeros((b, steps, 4 * hd), np.float32), np.zeros(11, np.float32)
        grad_out = np.random.default_rng(9).normal(0, 1, out.shape).astype(np.float32)
        for t in reversed(range(steps)):
            fn_backward(t, grad_out, dh, dc, d_gates, terms, c["scale"], c["lo"], c["hi"], c["mode"], c["saved"],
                        np.empty((5, hd), np.float32))
        runs.append((out, h, cs, c["saved"], d_gates, dc, terms))
    compiled, python = runs
    for a, b_ in zip(compiled[:4], python[:4]):
        np.testing.assert_array_equal(a, b_)
    assert len(np.unique(compiled[0])) > 3  # the problem exercises the quantizers
    for a, b_ in zip(compiled[4:], python[4:]):
        np.testing.assert_allclose(a, b_, rtol=1e-4, atol=1e-5 * float(np.abs(b_).max()))


def test_inference_mode_then_no_grad_share_the_kept_state() -> None:
    """Scoring runs under ``torch.inference_mode``, export and conformance under ``no_grad`` in the
    same process (a Ray worker does both): buffers and quantized weights kept by the one must not
    be inference tensors the other cannot write or save."""
    q = _model(QuantConfig(weight_bits=4, scale_type="float"), layers=2)
    q.eval()
    x = _inputs(51, batch=BATCH + 4)  # a shape no earlier forward of this process allocated for
    with torch.inference_mode():
        first = q(x)
    with torch.no_grad():
        second = q(x)
    expected = _run(q, x, None, fast=False, grads=False)[0]
    for got in (first, second):
        _assert_same_forward(expected, (got[0], *got[1]), q)
    q.train()  # and a training forward after both
    out, _ = q(x)
    out.sum().backward()
