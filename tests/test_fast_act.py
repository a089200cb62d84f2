"""qbench.quant.fast_act against Brevitas' own QuantReLU: identical values and gradients within float
tolerance, or Brevitas' forward with a reason."""

from __future__ import annotations

import copy

import brevitas.nn as qnn
import pytest
import torch
from brevitas.quant_tensor import IntQuantTensor

from models.students import DSCNNStudent
from qbench.quant.config import QuantConfig
from qbench.quant.fast_act import QbenchQuantReLU, why_not_fast_act
from qbench.quant.quantize import calibrate, quantize

BIT_WIDTHS = (2, 3, 4, 8)
# The scale's gradient sums two float32 terms per element of the map (``grad * code`` and
# ``-grad_t * t / scale``). ATen adds them in float32 cascades, qbench's kernel in float64 chunks:
# the same terms, another order and precision. Inside the clamp the two terms nearly cancel
# (``grad * (code - t)``), so a float32 sum's error is best measured against the sum of the terms'
# magnitudes, not the gradient: on these maps ATen's sums differed from the float64 ones by at most
# 0.01 ulps of those magnitudes (2-8 bits, both scale kinds); the tolerance leaves 10x. It stays
# below the gradients compared (checked per step). Every other value is exact.
SCALE_GRAD_ULPS = 0.1
FLOAT32_EPS = float(torch.finfo(torch.float32).eps)
# While a quantizer collects statistics the ATen formulas run: the same float32 sums as autograd's,
# perhaps in another order (a few ulps of the sum).
ATEN_ORDER_RTOL = 1e-5


def _dscnn(bits: int, scale_type: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = DSCNNStudent(n_mels=40, n_frames=64, n_classes=5, channels=16, blocks=2).eval()
    qmodel = quantize(model, QuantConfig(weight_bits=bits, act_bits=bits, scale_type=scale_type))
    calibrate(qmodel, torch.randn(48, 64, 40) * 2, batches=3, batch_size=16)
    return qmodel.eval()


def _relus(qmodel: torch.nn.Module) -> list[QbenchQuantReLU]:
    relus = [m for m in qmodel.modules() if isinstance(m, QbenchQuantReLU)]
    assert relus
    return relus


def _forward(qmodel: torch.nn.Module, x: torch.Tensor, *, fast: bool) -> torch.Tensor:
    for relu in _relus(qmodel):
        relu.fast_path = fast
    with torch.no_grad():
        return qmodel(x)


@pytest.mark.parametrize("scale_type", ["float", "po2"])
@pytest.mark.parametrize("bits", BIT_WIDTHS)
def test_fast_relus_compute_what_brevitas_computes(bits: int, scale_type: str) -> None:
    qmodel = _dscnn(bits, scale_type, seed=bits)
    x = torch.randn(7, 64, 40) * 3  # past the calibrated range too: codes saturate at both ends
    fast = _forward(qmodel, x, fast=True)
    assert [relu.fast_path_declined for relu in _relus(qmodel)] == [None] * len(_relus(qmodel))
    stock = _forward(qmodel, x, fast=False)
    assert {relu.fast_path_declined for relu in _relus(qmodel)} == {"fast_path is off"}
    assert torch.equal(fast, stock)


def test_a_quant_tensor_output_carries_brevitas_scale_and_codes() -> None:
    relu = QbenchQuantReLU(return_quant_tensor=True).eval()
    x = torch.linspace(-4, 9, 1000).reshape(10, 100)
    with torch.no_grad():
        relu(x)  # statistics in eval mode: the default quantizer's scale is set on this call
        fast = relu(x)
        relu.fast_path = False
        stock = relu(x)
    assert isinstance(fast, IntQuantTensor) and isinstance(stock, IntQuantTensor)
    for name in ("value", "scale", "zero_point", "bit_width"):
        assert torch.equal(getattr(fast, name), getattr(stock, name)), name
    assert fast.signed == stock.signed and torch.equal(fast.int(), stock.int())


def _train_step(qmodel: torch.nn.Module, x: torch.Tensor, *, fast: bool) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Output, input gradient and parameter gradients of one cross-entropy step in train mode."""
    for relu in _relus(qmodel):
        relu.fast_path = fast
    qmodel.train()
    qmodel.zero_grad()
    x = x.clone().requires_grad_(True)
    torch.manual_seed(1)  # the same dropout mask both ways
    out = qmodel(x)
    torch.nn.functional.cross_entropy(out, torch.arange(len(x)) % out.shape[1]).backward()
    grads = {name: p.grad.clone() for name, p in qmodel.named_parameters() if p.grad is not None}
    return out.detach(), x.grad, grads


def _scale_term_magnitudes(qmodel: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Per ReLU scale parameter: the sum over its map of |grad * code| + |grad_t * t / scale|, from
    a stock training step whose ReLUs' inputs and output gradients are caught by hooks."""
    seen: dict[str, list[torch.Tensor]] = {}
    handles = []
    for name, module in qmodel.named_modules():
        if isinstance(module, QbenchQuantReLU):
            def catch(module, inputs, out, name=name):
                out = getattr(out, "value", out)
                seen[name] = [inputs[0].detach(), module.act_quant.scale().detach()]
                out.register_hook(lambda grad: seen[name].append(grad))
            handles.append(module.register_forward_hook(catch))
    _train_step(qmodel, x, fast=False)
    for handle in handles:
        handle.remove()
    sums = {}
    for name, (inp, scale, grad) in seen.items():
        t = torch.relu(inp) / scale
        codes = t.round()  # unclamped and grad_t unmasked by the clamp: larger magnitudes, a looser bound
        grad_t = torch.where(inp > 0, grad * scale, 0.0)
        sums[f"{name}.act_quant.fused_activation_quant_proxy.tensor_quant.scaling_impl.value"] = float(
            (grad.double() * codes.double()).abs().sum() + (grad_t.double() * (t / scale).double()).abs().sum())
    return sums


def _assert_same_step(fast, stock, magnitudes: dict[str, float] | None) -> None:
    """Same output, input and weight gradients; each ReLU scale's gradient within its tolerance
    (``magnitudes``: the compiled kernel's, else the ATen formulas')."""
    assert torch.equal(fast[0], stock[0])
    torch.testing.assert_close(fast[1], stock[1], rtol=0, atol=0)
    assert fast[2].keys() == stock[2].keys()
    scale_grads = 0
    for name, grad in fast[2].items():
        if "act_quant" in name:  # a ReLU's learned scale
            scale_grads += 1
            if magnitudes is None:
                torch.testing.assert_close(grad, stock[2][name], rtol=ATEN_ORDER_RTOL, atol=0, msg=name)
            else:
                atol = SCALE_GRAD_ULPS * FLOAT32_EPS * magnitudes[name]
                torch.testing.assert_close(grad, stock[2][name], rtol=0, atol=atol, msg=name)
                assert atol < abs(float(stock[2][name])), f"{name}: the tolerance exceeds the gradient"
        else:
            torch.testing.assert_close(grad, stock[2][name], rtol=0, atol=0, msg=name)
    assert scale_grads > 0


@pytest.mark.parametrize("scale_type", ["float", "po2"])
@pytest.mark.parametrize("bits", (2, 4, 8))
def test_training_steps_match_brevitas(bits: int, scale_type: str) -> None:
    qmodel = _dscnn(bits, scale_type, seed=10 + bits)  # calibrated: learned scales, as QAT starts
    x = torch.randn(6, 64, 40) * 3
    fast = _train_step(qmodel, x, fast=True)
    assert {relu.fast_path_declined for relu in _relus(qmodel)} == {None}
    _assert_same_step(fast, _train_step(qmodel, x, fast=False), _scale_term_magnitudes(qmodel, x))


def test_a_quantizer_collecting_statistics_collects_them_alike() -> None:
    torch.manual_seed(0)
    model = DSCNNStudent(n_mels=40, n_frames=64, n_classes=5, channels=16, blocks=2)
    fresh = quantize(model, QuantConfig(weight_bits=4, act_bits=4))  # no calibration: statistics in training
    ours, theirs = fresh, copy.deepcopy(fresh)
    for step in range(3):
        x = torch.randn(6, 64, 40) * (step + 1)
        _assert_same_step(_train_step(ours, x, fast=True), _train_step(theirs, x, fast=False), None)
    with torch.no_grad():
        x = torch.randn(4, 64, 40)
        assert torch.equal(ours.eval()(x), theirs.eval()(x))  # the same statistics were kept


def test_brevitas_forward_runs_where_the_fast_one_would_differ() -> None:
    qmodel = _dscnn(4, "float")
    relu = _relus(qmodel)[0]
    x = torch.randn(3, 64, 40)
    with torch.no_grad():
        qmodel(x)
        assert relu.fast_path_declined is None
        relu(torch.rand(2, 16, 8, 4, dtype=torch.float64))
        assert relu.fast_path_declined == "input is not a float32 Tensor"
        handle = relu.act_quant.register_forward_hook(lambda *args: None)
        qmodel(x)
        assert relu.fast_path_declined == "hooks on ActQuantProxyFromInjector"
        handle.remove()
        relu.act_quant.export_mode = True  # (Brevitas' forward would then need an export handler)
        assert why_not_fast_act(relu, torch.rand(2, 16, 8, 4)) == "disabled or exporting"


def test_the_state_dict_is_brevitas_own() -> None:
    stock, ours = qnn.QuantReLU(), QbenchQuantReLU()
    x = torch.rand(4, 50) * 6
    for relu in (stock, ours):
        relu.train()
        relu(x)  # a statistics step: the learned scale appears in the state dict
    assert list(stock.state_dict()) == list(ours.state_dict())
    ours.load_state_dict(stock.state_dict())
    with torch.no_grad():
        assert torch.equal(ours.eval()(x), stock.eval()(x))


def _aten_step(x: torch.Tensor, scale: torch.Tensor, lo: float, hi: float, rounding: str, grad: torch.Tensor):
    """Brevitas' formulas as ATen operations (the module's fallback): output, input and scale gradients."""
    from qbench.quant.fast_act import _ReLUQuant

    x, scale = x.clone().requires_grad_(True), scale.clone().requires_grad_(True)
    out = _ReLUQuant.apply(x, scale, lo, hi, rounding, False)  # False: the ATen formulas
    out.backward(grad)
    return out.detach(), x.grad, scale.grad


@pytest.mark.parametrize("rounding", ["round", "floor", "trunc"])
@pytest.mark.parametrize(("lo", "hi"), [(0.0, 3.0), (0.0, 255.0), (-8.0, 7.0), (2.0, 15.0)])
def test_compiled_kernels_match_the_aten_formulas(rounding: str, lo: float, hi: float) -> None:
    """The Numba kernels against the ATen formulas on a channels-last map (what the convolutions
    emit), and on a map with gaps (which must take the ATen way): every value exact, the scale's
    gradient within its tolerance."""
    from qbench.quant.fast_act import _ReLUQuant, _compiled

    torch.manual_seed(int(hi) + len(rounding))
    scale = torch.tensor(0.37)
    x = (torch.randn(3, 5, 7, 9) * 4).contiguous(memory_format=torch.channels_last)
    x[0, 0, 0, :3] = torch.tensor([0.0, -0.0, 2.5 * 0.37])  # zeros and a tie
    grad = torch.randn(3, 5, 7, 9)  # NCHW: the backward reorders it to the input's layout
    for inp in (x, torch.randn(3, 5, 7, 18)[..., ::2]):
        assert _compiled(inp, scale, rounding) is (inp is x)
        ref = _aten_step(inp, scale, lo, hi, rounding, grad)
        xs, ss = inp.clone().requires_grad_(True), scale.clone().requires_grad_(True)
        out = _ReLUQuant.apply(xs, ss, lo, hi, rounding, True)
        out.backward(grad)
        assert torch.equal(out, ref[0]) and out.stride() == inp.contiguous(
            memory_format=torch.channels_last if inp is x else torch.contiguous_format).stride()
        assert torch.equal(xs.grad, ref[1])
        t = (torch.relu(inp) if lo < 0 else inp) / scale
        magnitude = float((grad * t.round()).abs().sum() + (grad * scale * t / scale).abs().sum())
        torch.testing.assert_close(ss.grad, ref[2], rtol=0, atol=SCALE_GRAD_ULPS * FLOAT32_EPS * magnitude)


def test_the_kernels_compute_what_their_python_does() -> None:
    """Numba's compiled kernels against their own Python (``py_func``) on a small map."""
    import numpy as np

    from qbench.quant.fast_act import CHUNK, _backward_kernel, _forward_kernel

    rng = np.random.default_rng(0)
    x = (rng.standard_normal(300) * 3).astype(np.float32)
    grad = rng.standard_normal(300).astype(np.float32)
    args = (np.float32(0.25), np.float32(-8.0), np.float32(7.0), 0, True)
    outs = [np.empty_like(x) for _ in range(2)]
    _forward_kernel(x, *args, outs[0])
    _forward_kernel.py_func(x, *args, outs[1])
    assert np.array_equal(outs[0], outs[1])
    dxs = [np.empty_like(x) for _ in range(2)]
    sums = [kernel(x, grad, *args, dx, np.empty((2, CHUNK), np.float32))
            for kernel, dx in ((_backward_kernel, dxs[0]), (_backward_kernel.py_func, dxs[1]))]
    assert np.array_equal(dxs[0], dxs[1])
    assert sums[0] == pytest.approx(sums[1], rel=1e-12, abs=1e-12)
