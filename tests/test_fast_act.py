"""qbench.quant.fast_act against Brevitas' own QuantReLU forward: identical values, or Brevitas' forward with a reason."""

from __future__ import annotations

import brevitas.nn as qnn
import pytest
import torch
from brevitas.quant_tensor import IntQuantTensor

from models.students import DSCNNStudent
from qbench.quant.config import QuantConfig
from qbench.quant.fast_act import QbenchQuantReLU
from qbench.quant.quantize import calibrate, quantize

BIT_WIDTHS = (2, 3, 4, 8)


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


def test_brevitas_forward_runs_where_the_fast_one_would_differ() -> None:
    qmodel = _dscnn(4, "float")
    relu = _relus(qmodel)[0]
    x = torch.randn(3, 64, 40)
    qmodel(x)  # autograd on
    assert relu.fast_path_declined == "training or autograd on"
    with torch.no_grad():
        qmodel(x)
        assert relu.fast_path_declined is None
        relu(torch.rand(2, 16, 8, 4, dtype=torch.float64))
        assert relu.fast_path_declined == "input is not a float32 Tensor"
        handle = relu.act_quant.register_forward_hook(lambda *args: None)
        qmodel(x)
        assert relu.fast_path_declined == "hooks on ActQuantProxyFromInjector"
        handle.remove()
        qmodel.train()
        qmodel(x)
        assert relu.fast_path_declined == "training or autograd on"


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
