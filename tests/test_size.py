"""packed_size(): bytes at real bit-widths, checked against sizes computed by hand."""

from __future__ import annotations

import math

import pytest
from torch import nn

from qbench.quant import Granularity, QuantConfig
from qbench.quant.quantize import quantize
from qbench.quant.size import fp32_size, packed_size

# A 4-bit model is 1/8 of fp32 plus per-tensor overheads (scales, int32 biases); for a
# 256x256 MLP that overhead is ~0.5% of the fp32 size, so the ratio sits in [0.125, 0.135].
RATIO_4BIT_RANGE = (0.125, 0.135)


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(10, 6), nn.ReLU(), nn.Linear(6, 3))


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_packed_size_matches_hand_count(bits: int) -> None:
    report = packed_size(quantize(mlp(), QuantConfig(weight_bits=bits)))
    codes = math.ceil(60 * bits / 8) + math.ceil(18 * bits / 8)  # W1 10x6, W2 6x3, packed per tensor
    scales = 4 * (1 + 1)  # one fp32 scale per weight tensor (per-tensor)
    act_scales = 4 * 2  # input_quant of layer 1, QuantReLU (layer 2 takes the ReLU's QuantTensor)
    biases = 4 * (6 + 3)  # int32 codes
    assert report.weight_bytes == codes
    assert report.scale_bytes == scales + act_scales
    assert report.bias_bytes == biases
    assert report.zero_point_bytes == 0 and report.float_bytes == 0
    assert report.total_bytes == codes + scales + act_scales + biases
    assert report.fp32_bytes == 4 * (60 + 18 + 9) == fp32_size(mlp())


def test_per_channel_scales_counted_per_output_channel() -> None:
    qcfg = QuantConfig(weight_bits=4, granularity=Granularity.PER_CHANNEL)
    report = packed_size(quantize(mlp(), qcfg))
    assert report.scale_bytes == 4 * (6 + 3) + 4 * 2


def test_unfolded_batchnorm_counted_as_float() -> None:
    # BN after a ReLU has no conv right before it: it is kept float with its 4 vectors
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.BatchNorm1d(4))
    report = packed_size(quantize(model, QuantConfig(weight_bits=8)))
    assert report.float_bytes == 4 * 4 * 4  # weight, bias, running mean, running var
    assert report.weight_bytes == 2 * 4 * 3


def test_four_bit_is_near_one_eighth() -> None:
    big = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256))
    report = packed_size(quantize(big, QuantConfig(weight_bits=4)), fp32_reference=big)
    lo, hi = RATIO_4BIT_RANGE
    assert lo <= report.ratio_to_fp32 <= hi
    assert report.ratio_to(2 * fp32_size(big)) == pytest.approx(report.ratio_to_fp32 / 2)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_quant_lstm_weights_and_biases(bits: int) -> None:
    model = nn.Sequential(nn.LSTM(6, 5, batch_first=True))
    report = packed_size(quantize(model, QuantConfig(weight_bits=bits)))
    # per gate: W_ih 5x6 and W_hh 5x5 packed separately, one shared scale per gate
    assert report.weight_bytes == 4 * (math.ceil(30 * bits / 8) + math.ceil(25 * bits / 8))
    assert len(report.tensors) == 8 and sum(t.n_scales for t in report.tensors) == 4
    assert report.bias_bytes == 4 * 20  # b_ih + b_hh summed per gate, int32
    assert report.scale_bytes == 4 * (4 + report.n_act_quantizers)
    assert report.n_act_quantizers >= 7  # io, 4 gate accumulators, sigmoid, tanh, cell at least


def test_quant_lstm_agrees_with_integer_model_size() -> None:
    # packed_size (from the Brevitas modules) and kernels' IntLSTMModel (from the extracted codes)
    # count the same bytes; weights may differ by the per-tensor ceil (<= 1 byte a tensor)
    models = pytest.importorskip("models")
    kernels = pytest.importorskip("kernels")
    import torch

    student = models.build_student("lstm", n_mels=12, n_frames=16, n_classes=4, hidden=8, input_norm=False)
    for bits in (2, 3, 4, 8):
        q = quantize(student.eval(), QuantConfig(weight_bits=bits))
        q(torch.zeros(2, 16, 12))
        report = packed_size(q)
        ints = kernels.extract_lstm(q.lstm, q.fc).size_breakdown()
        assert report.bias_bytes == ints["biases"]
        assert report.scale_bytes == ints["scales"]
        assert abs(report.weight_bytes - ints["weights"]) <= len(report.tensors)
