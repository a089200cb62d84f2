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
# The scale's gradient sums a product over the whole map; ATen's autograd and ours may add the same
# terms in another order (float32: a few ulps of the sum); every other value is compared exactly.
SCALE_GRAD_RTOL = 1e-5


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


def _assert_same_step(fast, stock) -> None:
    assert torch.equal(fast[0], stock[0])
    torch.testing.assert_close(fast[1], stock[1], rtol=0, atol=0)
    assert fast[2].keys() == stock[2].keys()
    scale_grads = 0
    for name, grad in fast[2].items():
        if "act_quant" in name:  # a ReLU's learned scale
            scale_grads += 1
            torch.testing.assert_close(grad, stock[2][name], rtol=SCALE_GRAD_RTOL, atol=0, msg=name)
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
    _assert_same_step(fast, _train_step(qmodel, x, fast=False))


def test_a_quantizer_collecting_statistics_collects_them_alike() -> None:
    torch.manual_seed(0)
    model = DSCNNStudent(n_mels=40, n_frames=64, n_classes=5, channels=16, blocks=2)
    fresh = quantize(model, QuantConfig(weight_bits=4, act_bits=4))  # no calibration: statistics in training
    ours, theirs = fresh, copy.deepcopy(fresh)
    for step in range(3):
        x = torch.randn(6, 64, 40) * (step + 1)
        _assert_same_step(_train_step(ours, x, fast=True), _train_step(theirs, x, fast=False))
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
