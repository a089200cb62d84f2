"""quantize(): the module-swapping walker, BN folding, PTQ calibration, and QAT at every bit width."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import models

from qbench.errors import QbenchError
from qbench.quant import QuantConfig
from qbench.quant.config import BIT_WIDTHS
from qbench.quant.quantize import calibrate, fold_batchnorm, quantize

# 8-bit weights and activations give ~6 dB per bit per quantizer (~48 dB); four requantizations
# in a row (input, conv, relu, head input) cost up to ~6 dB each at worst, so 30 dB is a floor
# a correct 8-bit twin clears by a margin and a scale or rounding bug does not.
SQNR_FLOOR_8BIT_DB = 30.0
FOLD_ATOL = 1e-5  # BN folding is exact up to fp32 reassociation of (w * k) x vs k (w x)


class TinyCNN(nn.Module):
    """(B, T, F) -> (B, C), built from the blocks the students use."""

    def __init__(self, n_classes: int = 5) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        )
        self.head = nn.Linear(8, n_classes)

    def temporal_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.unsqueeze(1)).mean(3).transpose(1, 2)  # (B, T', C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.temporal_features(x).mean(1))


class TinyLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(12, 8, batch_first=True)
        self.head = nn.Linear(8, 5)

    def temporal_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.lstm(x)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.temporal_features(x)[:, -1])


def _trained_bn_cnn(seed: int = 0) -> tuple[TinyCNN, torch.Tensor]:
    torch.manual_seed(seed)
    model, x = TinyCNN(), torch.randn(32, 16, 12)
    model.train()
    for _ in range(3):  # give BN non-trivial running statistics
        model(x)
    return model.eval(), x


def sqnr_db(ref: torch.Tensor, test: torch.Tensor) -> float:
    return float(10 * torch.log10((ref ** 2).mean() / ((ref - test) ** 2).mean()))


def test_keeps_class_and_custom_methods() -> None:
    model, x = _trained_bn_cnn()
    q = quantize(model, QuantConfig(weight_bits=4, act_bits=4))
    assert type(q) is TinyCNN
    assert q.temporal_features(x).shape == model.temporal_features(x).shape
    assert isinstance(q.temporal_features(x), torch.Tensor)
    assert type(model.body[0]) is nn.Conv2d, "the float model must be left untouched"


def test_swaps_and_quantizes_inputs_where_needed() -> None:
    import brevitas.nn as qnn

    q = quantize(_trained_bn_cnn()[0], QuantConfig())
    assert isinstance(q.body[0], qnn.QuantConv2d) and isinstance(q.head, qnn.QuantLinear)
    assert isinstance(q.body[2], qnn.QuantReLU) and isinstance(q.body[1], nn.Identity)  # BN folded
    assert q.body[0].input_quant.is_quant_enabled, "first layer must see quantized input"
    assert q.head.input_quant.is_quant_enabled, "head input comes from a float mean: quantize it"
    assert not q.body[4].input_quant.is_quant_enabled, "conv after ReLU+pool takes the ReLU's QuantTensor"
    assert q.body[2].return_quant_tensor and not q.body[6].return_quant_tensor


def test_batchnorm_folding_is_exact() -> None:
    model, x = _trained_bn_cnn()
    import copy

    folded = copy.deepcopy(model)
    assert fold_batchnorm(folded) == 2
    torch.testing.assert_close(folded(x), model(x), atol=FOLD_ATOL, rtol=0)


def test_8bit_close_to_fp32() -> None:
    model, x = _trained_bn_cnn()
    q = quantize(model, QuantConfig(weight_bits=8, act_bits=8))
    calibrate(q, x, batches=4, batch_size=8)
    with torch.no_grad():
        assert sqnr_db(model(x), q(x)) >= SQNR_FLOOR_8BIT_DB


def test_ptq_calibration_changes_scales() -> None:
    model, x = _trained_bn_cnn()
    q = quantize(model, QuantConfig(weight_bits=4, act_bits=4))
    q.eval()
    before = q.body[0].input_quant.scale().item()
    calibrate(q, 10.0 * x, batches=2, batch_size=16)
    after = q.body[0].input_quant.scale().item()
    assert after != pytest.approx(before, rel=0.1)
    q2 = quantize(model, QuantConfig(weight_bits=4, act_bits=4))
    calibrate(q2, x, batches=2, batch_size=16)
    assert after > 5 * q2.body[0].input_quant.scale().item(), "10x larger inputs need a ~10x larger scale"


def test_calibrate_rejects_empty_data() -> None:
    q = quantize(_trained_bn_cnn()[0], QuantConfig())
    with pytest.raises(QbenchError, match="empty"):
        calibrate(q, [], batches=2)


@pytest.mark.parametrize("bits", BIT_WIDTHS)
def test_qat_step_updates_weights(bits: int) -> None:
    model, x = _trained_bn_cnn(seed=bits)
    q = quantize(model, QuantConfig(weight_bits=bits, act_bits=bits))
    calibrate(q, x, batches=1, batch_size=32)
    q.train()
    opt = torch.optim.SGD(q.parameters(), lr=0.1)
    y = torch.arange(32) % 5
    weights = {n: m.weight.detach().clone() for n, m in q.named_modules() if hasattr(m, "weight_quant")}
    loss = nn.functional.cross_entropy(q(x), y)
    assert torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    opt.step()
    for name, m in q.named_modules():
        if name in weights:
            assert not torch.equal(m.weight, weights[name]), f"{name} did not move at {bits} bits"


def test_lstm_student_quantizes_and_trains() -> None:
    torch.manual_seed(0)
    model, x = TinyLSTM(), torch.randn(4, 10, 12)
    q = quantize(model, QuantConfig(weight_bits=4, act_bits=8))
    assert type(q.lstm).__name__ == "QbenchQuantLSTM"
    calibrate(q, x, batches=1)
    q.train()
    loss = q(x).square().mean()
    loss.backward()
    assert q.head.weight.grad is not None and q.head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("layer", [nn.GELU(), nn.GRU(4, 4), nn.LayerNorm(4)])
def test_unsupported_layer_raises_naming_it(layer: nn.Module) -> None:
    model = nn.Sequential(nn.Linear(4, 4), layer)
    with pytest.raises(QbenchError, match=type(layer).__name__):
        quantize(model, QuantConfig())


def test_module_with_own_parameters_raises() -> None:
    class WithToken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.token = nn.Parameter(torch.zeros(4))
            self.fc = nn.Linear(4, 2)

    with pytest.raises(QbenchError, match="WithToken"):
        quantize(WithToken(), QuantConfig())


def test_lstm_state_dict_round_trips_after_eval_forward() -> None:
    # the training loop keeps the best state_dict and loads it back after validation forwards
    torch.manual_seed(0)
    model, x = TinyLSTM(), torch.randn(4, 10, 12)
    q = quantize(model, QuantConfig(weight_bits=4, act_bits=8))
    q.train()
    q(x)
    state = {k: v.clone() for k, v in q.state_dict().items()}
    q.eval()
    expected = q(x)
    q.load_state_dict(state)  # strict: raises on missing keys
    torch.testing.assert_close(q(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["lstm", "dscnn", "crnn"])
def test_every_registered_student_has_a_training_quantized_twin(name: str) -> None:
    import models

    assert name in models.list_students()
    torch.manual_seed(0)
    student = models.build_student(name, n_mels=40, n_frames=64, n_classes=5)
    x, y = torch.randn(8, 64, 40), torch.randint(0, 5, (8,))
    student.train()
    student(x)  # BatchNorm statistics, so folding has something to fold
    q = quantize(student.eval(), QuantConfig(weight_bits=4, act_bits=8))
    calibrate(q, x.numpy(), batches=1, batch_size=8)
    assert q(x).shape == (8, 5) and q.temporal_features(x).shape[0] == 8
    before = {k: v.clone() for k, v in q.state_dict().items() if k.endswith("weight")}
    q.train()
    opt = torch.optim.SGD(q.parameters(), lr=0.1)
    torch.nn.functional.cross_entropy(q(x), y).backward()
    opt.step()
    assert any(not torch.equal(before[k], v) for k, v in q.state_dict().items() if k in before)


def test_quantized_convolutions_run_channels_last_computing_what_brevitas_computes() -> None:
    """``QbenchQuantConv2d`` restrides Brevitas' fake-quantized weight: the output is NHWC and equal to
    stock ``QuantConv2d``'s up to float32 summation order, in inference and in training (outputs and
    gradients), and its state dict is Brevitas'."""
    import brevitas.nn as qnn

    from qbench.quant.fast_conv import QbenchQuantConv2d

    model = models.build_student("dscnn", n_mels=40, n_frames=101, n_classes=5)
    q = quantize(model, QuantConfig(weight_bits=4, act_bits=4))
    x = torch.randn(16, 101, 40)
    calibrate(q, x, batches=2, batch_size=8)
    convs = [m for m in q.modules() if isinstance(m, qnn.QuantConv2d)]
    assert convs and all(type(m) is QbenchQuantConv2d for m in convs)
    stock = copy.deepcopy(q)
    for m in stock.modules():
        if type(m) is QbenchQuantConv2d:
            m.__class__ = qnn.QuantConv2d
    assert stock.state_dict().keys() == q.state_dict().keys()
    q.eval(), stock.eval()
    with torch.no_grad():
        fmap = q.body(torch.randn(2, 101, 40).unsqueeze(1))  # NCHW strides in: the weight decides
        assert getattr(fmap, "value", fmap).is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(q(x), stock(x), atol=1e-4, rtol=1e-4)
    q.train(), stock.train()
    torch.manual_seed(0)
    out = q(x)
    out.square().sum().backward()
    torch.manual_seed(0)
    ref = stock(x)
    ref.square().sum().backward()
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    grads = {n: p.grad for n, p in q.named_parameters() if p.grad is not None}
    for name, p in stock.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[name], p.grad, atol=1e-3, rtol=1e-3, msg=name)
