"""Brevitas quantizers from a QuantConfig, and the quantized LSTM built from an nn.LSTM."""

from __future__ import annotations

import pytest
import torch
from brevitas.core.function_wrapper import FloorSte, RoundSte, RoundToZeroSte
from brevitas.nn import QuantLinear, QuantLSTM, QuantReLU
from torch import nn

from qbench.quant.config import BIT_WIDTHS, QuantConfig
from qbench.quant.lstm import QbenchQuantLSTM, UnsupportedLSTM, quant_lstm_from
from qbench.quant.quantizers import act_quant, bias_quant, weight_quant



SQNR_FLOOR_8BIT_DB = 20.0
"""8-bit LSTM output vs fp32. Each 8-bit tensor alone is ~40 dB; the cell chains ~10
quantizers over 100 recurrent steps and the measured figure is 25-33 dB. A quantizer that
clips (e.g. an io scale far below the input range) falls to 5-15 dB, so 20 dB catches it."""


def _lstm(features: int = 12, hidden: int = 16, layers: int = 1, gain: float = 3.0) -> nn.LSTM:
    """An nn.LSTM whose default init is scaled by ``gain`` so that gates saturate as in trained models."""
    torch.manual_seed(0)
    lstm = nn.LSTM(features, hidden, num_layers=layers, batch_first=True)
    with torch.no_grad():
        for p in lstm.parameters():
            p.mul_(gain)
    return lstm


def _inputs(batch: int, steps: int, features: int) -> torch.Tensor:
    # inputs in the hidden state's range: Brevitas quantizes x_t and h_t with one shared quantizer
    return torch.rand(batch, steps, features, generator=torch.Generator().manual_seed(1)) - 0.5


def _calibrate(q: nn.Module, x: torch.Tensor, passes: int = 3) -> None:
    q.train()
    with torch.no_grad():
        for _ in range(passes):
            q(x)
    q.eval()


def _float_to_int(proxy: nn.Module) -> nn.Module:
    fused = getattr(proxy, "fused_activation_quant_proxy", None)
    tensor_quant = fused.tensor_quant if fused is not None else proxy.tensor_quant
    return tensor_quant.int_quant.float_to_int_impl


@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
@pytest.mark.parametrize("scale_type", ["float", "po2"])
def test_weight_quant_bits_range_and_scale(granularity: str, scale_type: str) -> None:
    qcfg = QuantConfig(weight_bits=3, granularity=granularity, scale_type=scale_type)
    layer = QuantLinear(8, 5, bias=False, weight_quant=weight_quant(qcfg))
    qw = layer.quant_weight()
    codes = qw.int()
    assert qw.bit_width.item() == 3 and qw.signed
    assert codes.min() >= -3 and codes.max() <= 3  # narrow range: -(2^2 - 1) .. 2^2 - 1
    assert qw.scale.numel() == (5 if granularity == "per_channel" else 1)
    log2 = torch.log2(qw.scale)
    assert torch.equal(log2, torch.round(log2)) == (scale_type == "po2")


@pytest.mark.parametrize("signed", [True, False])
def test_act_quant_sign_and_bits(signed: bool) -> None:
    qcfg = QuantConfig(act_bits=5)
    act = QuantReLU(act_quant=act_quant(qcfg, signed=signed, bits=6))
    assert act.act_quant.bit_width().item() == 6
    assert act.act_quant.is_signed == signed


@pytest.mark.parametrize(
    ("rounding", "impl"), [("round", RoundSte), ("floor", FloorSte), ("round_to_zero", RoundToZeroSte)]
)
def test_rounding_mode_reaches_weights_and_activations(rounding: str, impl: type) -> None:
    qcfg = QuantConfig(rounding=rounding)
    layer = QuantLinear(4, 3, bias=True, weight_quant=weight_quant(qcfg), bias_quant=bias_quant(qcfg),
                        input_quant=act_quant(qcfg, signed=True))
    assert isinstance(_float_to_int(layer.weight_quant), impl)
    assert isinstance(_float_to_int(layer.input_quant), impl)


def test_quant_lstm_copies_weights_and_keeps_nn_lstm_interface() -> None:
    lstm = _lstm(layers=2)
    q = quant_lstm_from(lstm, QuantConfig())
    assert isinstance(q, QuantLSTM) and isinstance(q, QbenchQuantLSTM)
    layer = q.layers[1][0]
    torch.testing.assert_close(layer.forget_gate_params.input_weight.weight, lstm.weight_ih_l1[16:32], rtol=0, atol=0)
    torch.testing.assert_close(layer.output_gate_params.hidden_weight.weight, lstm.weight_hh_l1[48:], rtol=0, atol=0)
    torch.testing.assert_close(layer.cell_gate_params.bias, (lstm.bias_ih_l1 + lstm.bias_hh_l1)[32:48], rtol=0, atol=0)
    x = _inputs(3, 7, 12)
    out, (h, c) = q(x)
    assert out.shape == (3, 7, 16) and h.shape == (2, 3, 16) and c.shape == (2, 3, 16)
    assert type(out) is torch.Tensor and type(h) is torch.Tensor
    q.eval()
    with torch.no_grad():
        whole, _ = q(x)
        first, state = q(x[:, :4])
        rest, _ = q(x[:, 4:], state)  # nn.LSTM's (h0, c0) tuple carries the state
    torch.testing.assert_close(torch.cat([first, rest], 1), whole, rtol=0, atol=0)


@pytest.mark.parametrize("bits", BIT_WIDTHS)
def test_qat_step_updates_weights(bits: int) -> None:
    lstm = _lstm()
    q = quant_lstm_from(lstm, QuantConfig(weight_bits=bits, act_bits=bits))
    head = nn.Linear(16, 3)
    opt = torch.optim.SGD([*q.parameters(), *head.parameters()], lr=0.1)
    x, y = _inputs(4, 10, 12), torch.tensor([0, 1, 2, 0])
    before = q.layers[0][0].input_gate_params.input_weight.weight.detach().clone()
    out, _ = q(x)
    loss = nn.functional.cross_entropy(head(out[:, -1]), y)
    loss.backward()
    grad = q.layers[0][0].input_gate_params.input_weight.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(q.layers[0][0].input_gate_params.input_weight.weight, before)


@pytest.mark.parametrize("scale_type", ["float", "po2"])
def test_8bit_output_close_to_fp32(scale_type: str) -> None:
    lstm = _lstm(features=12, hidden=32)
    q = quant_lstm_from(lstm, QuantConfig(weight_bits=8, act_bits=8, scale_type=scale_type), collect_stats_steps=50)
    x = _inputs(8, 100, 12)
    _calibrate(q, x, passes=2)
    with torch.no_grad():
        out, _ = q(x)
        ref, _ = lstm(x)
    sqnr_db = 10 * torch.log10(ref.pow(2).mean() / (out - ref).pow(2).mean()).item()
    assert sqnr_db >= SQNR_FLOOR_8BIT_DB


def _all_scales(q: QuantLSTM) -> dict[str, torch.Tensor]:
    layer = q.layers[0][0]
    scales = {name: proxy.scale() for name, proxy in layer.cell.named_children() if hasattr(proxy, "scale")}
    for gate in ("input", "forget", "cell", "output"):
        scales[f"{gate}.weight"] = getattr(layer, f"{gate}_gate_params").input_weight.quant_weight().scale
    return scales


@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
def test_po2_scales_are_powers_of_two(granularity: str) -> None:
    q = quant_lstm_from(_lstm(), QuantConfig(weight_bits=4, scale_type="po2", granularity=granularity),
                        collect_stats_steps=5)
    _calibrate(q, _inputs(4, 20, 12))
    scales = _all_scales(q)
    assert len(scales) == 15  # io, cell, 4 accumulators, 5 activations, 4 weights
    for name, scale in scales.items():
        log2 = torch.log2(scale.detach())
        assert torch.equal(log2, torch.round(log2)), name


def test_float_scales_are_not_all_powers_of_two() -> None:
    # the po2 test above could pass vacuously if scale_type were ignored
    q = quant_lstm_from(_lstm(), QuantConfig(scale_type="float"), collect_stats_steps=5)
    _calibrate(q, _inputs(4, 20, 12))
    log2 = torch.stack([torch.log2(s.detach()).reshape(-1)[0] for s in _all_scales(q).values()])
    assert not torch.equal(log2, torch.round(log2))


@pytest.mark.parametrize("options", [{"bidirectional": True}, {"proj_size": 4}, {"num_layers": 3}])
def test_unsupported_lstm_options_raise(options: dict) -> None:
    with pytest.raises(UnsupportedLSTM):
        quant_lstm_from(nn.LSTM(6, 8, batch_first=True, **options), QuantConfig())


def test_reloading_a_checkpoint_restores_its_forward_exactly() -> None:
    """Brevitas' load_state_dict replaces the quantizer proxies its lazily built fast cell holds;
    a model that has already run must compute the loaded checkpoint, not its last quantizers."""
    torch.manual_seed(0)
    q = quant_lstm_from(_lstm(), QuantConfig(weight_bits=4, act_bits=4))
    x = _inputs(4, 20, 12)
    opt = torch.optim.SGD(q.parameters(), lr=0.05)

    def step() -> None:
        q.train()
        opt.zero_grad()
        q(x)[0].pow(2).mean().backward()
        opt.step()

    for _ in range(3):
        step()
    q.eval()
    with torch.no_grad():
        checkpoint_out = q(x)[0]
    checkpoint = {k: v.clone() for k, v in q.state_dict().items()}
    for _ in range(3):
        step()  # the model moves on, as training does after its best epoch
    q.load_state_dict(checkpoint)
    q.eval()
    with torch.no_grad():
        assert torch.equal(q(x)[0], checkpoint_out)
