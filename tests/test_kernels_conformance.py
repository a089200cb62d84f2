"""The integer engine against the Brevitas QuantLSTM it was extracted from.

With power-of-two scales every value of Brevitas' fake-quantized float32 forward is exactly
representable, so the engine must reproduce its codes and logits bit for bit (atol=0).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from brevitas.nn import QuantLinear, QuantLSTM
from torch import nn

from kernels import IntLSTMEngine, UnsupportedQuantizer, agreement, brevitas_codes, extract_lstm, step_agreement
from kernels.conformance import class_agreement
from qbench.quant.config import BIT_WIDTHS, QuantConfig
from qbench.quant.lstm import clipped_fraction, fit_input_scale, quant_lstm_from
from qbench.quant.quantizers import act_quant, bias_quant, weight_quant

STEPS = 100  # frames per test sequence
CALIBRATION_STEPS = 50  # frames per calibration sequence
STATS_STEPS = 50  # quantizer calls of runtime statistics before scales become learned parameters

FLOAT_SCALE_MIN_STEP_AGREEMENT = 0.9999
"""Float scales, each step started from Brevitas' own state. Brevitas sums W x in float32
(BLAS order), the engine exactly in int32 (and repeats Brevitas' element-wise float32
operations exactly). A gate whose exact value lies within ~2 float32 ulps of a .5 tie (seen:
-86.50000176 exact, -86.5 in float32) rounds the other way: measured 0-2 codes in 1e5
at 2-8 bits (64->128, 16 random sequences)."""

FLOAT_SCALE_MIN_AGREEMENT = 0.9
"""Float scales, free running. The recurrence carries each flipped code (above) into the
following steps, and these saturating random LSTMs are chaotic enough that one early flip
can move a whole sequence by a code or two: measured 91.1 % (6-bit, 3 sequences) to 100 %,
and 97.3-100 % at 2-8 bits on 16 sequences. Brevitas reproduces itself no more tightly: its
batch-16 and batch-1 runs of the same 16 sequences share 95.6 % (6-bit) to 100 % of hidden
codes, as its GEMM rounds differently per batch size. A 1 % error in one scale gives ~50 %
here (and ~78 % per step), so the floor still catches it; the per-step floor above is the
sharp test."""


def _calibrated(features: int, hidden: int, qcfg: QuantConfig, *, layers: int = 1, classes: int = 10,
                seed: int = 0, input_range: float = 0.5,
                fit_input: bool = False) -> tuple[QuantLSTM, QuantLinear, np.ndarray]:
    """A QuantLSTM + QuantLinear head calibrated in train mode on random data, then put in eval mode."""
    torch.manual_seed(seed)
    lstm = nn.LSTM(features, hidden, num_layers=layers, batch_first=True)
    with torch.no_grad():
        for p in lstm.parameters():
            p.mul_(3.0)  # saturating gates, as in trained LSTMs, instead of the near-linear default init
    q = quant_lstm_from(lstm, qcfg, collect_stats_steps=STATS_STEPS)
    head = QuantLinear(hidden, classes, bias=True, weight_quant=weight_quant(qcfg), bias_quant=bias_quant(qcfg),
                       input_quant=act_quant(qcfg, signed=True, collect_stats_steps=2))
    rng = np.random.default_rng(seed)
    calibration = torch.from_numpy(rng.uniform(-input_range, input_range,
                                               size=(4, CALIBRATION_STEPS, features)).astype(np.float32))
    if fit_input:
        fit_input_scale(q, calibration)
    with torch.no_grad():
        for _ in range(2):  # past STATS_STEPS: the scales are learned parameters now
            head(q(calibration)[0][:, -1])
    q.eval(), head.eval()
    return q, head, rng.uniform(-input_range, input_range, size=(3, STEPS, features)).astype(np.float32)


WIDE_INPUT = 8.0  # normalised log-mel reaches +-3 to +-11 (issue 11); the hidden state stays in +-1
MAX_CLIPPED_AFTER_FIT = 0.05
"""The fit maps the 99.9th percentile of |x| to 1.0; the io range is the hidden state's, which a
po2 scale can leave one step short of 1.0 (4 bits: 0.875 + half a step), and these uniform test
inputs put 6 % of their mass there (measured 3.0 % at 4 bits). Unfitted, the same data clips
over 20 %. Trained keyword LSTMs have peaked inputs: see the clipped fractions in the sweep records."""


def _input_clipping(q: QuantLSTM, x: np.ndarray) -> float:
    io = extract_lstm(q).io_quant
    scaled = torch.as_tensor(x) / q.input_scale
    return clipped_fraction(scaled, float(io.scale), io.bit_width, signed=io.signed, narrow=io.narrow_range)


def test_shared_io_quantizer_clips_wide_inputs_without_the_fit() -> None:
    """The failure the input scale exists for: the shared io range settles on the hidden state's."""
    q, _, x = _calibrated(40, 64, QuantConfig(weight_bits=8, scale_type="po2"), input_range=WIDE_INPUT)
    assert _input_clipping(q, x) > 0.2


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_fitted_input_scale_stops_clipping_and_stays_bit_exact(bits: int) -> None:
    q, head, x = _calibrated(40, 64, QuantConfig(weight_bits=bits, act_bits=bits, scale_type="po2"),
                             input_range=WIDE_INPUT, fit_input=True, seed=bits)
    assert float(q.input_scale) > 1.0
    if bits >= 4:  # at 2 bits (codes -2..1) the range is set by rounding, not by outliers
        assert _input_clipping(q, x) <= MAX_CLIPPED_AFTER_FIT
    model = extract_lstm(q, head)
    assert model.input_scale == float(q.input_scale)
    ref_hidden, ref_logits = brevitas_codes(model, q, x, head)
    out = IntLSTMEngine(model).run(model.quantize_input(x))
    np.testing.assert_array_equal(out.hidden, ref_hidden)
    np.testing.assert_array_equal(out.logits, ref_logits)


def test_input_scale_fit_keeps_the_float_function() -> None:
    """(x / k) (k W_ih) == x W_ih: every gate's input product is unchanged; a refit replaces k."""
    torch.manual_seed(0)
    lstm = nn.LSTM(12, 16, batch_first=True)
    x = torch.randn(2, 9, 12) * 6
    q = quant_lstm_from(lstm, QuantConfig(weight_bits=8))
    cell = q.layers[0][0]
    weights = [getattr(cell, f"{g}_gate_params").input_weight.weight for g in ("input", "forget", "cell", "output")]
    before = [x @ w.detach().clone().T for w in weights]
    k1 = fit_input_scale(q, x)
    k2 = fit_input_scale(q, x * 2)  # a refit replaces the factor, it does not compound it
    assert k1 > 1.0 and k2 == pytest.approx(2 * k1, rel=1e-3) and float(q.input_scale) == pytest.approx(k2)
    for w, ref in zip(weights, before):
        torch.testing.assert_close((x / q.input_scale) @ w.detach().T, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
@pytest.mark.parametrize(("features", "hidden"), [(40, 64), (64, 128)])
def test_po2_engine_is_bit_exact(features: int, hidden: int, bits: int) -> None:
    q, head, x = _calibrated(features, hidden, QuantConfig(weight_bits=bits, scale_type="po2"), seed=bits)
    model = extract_lstm(q, head)
    ref_hidden, ref_logits = brevitas_codes(model, q, x, head)
    out = IntLSTMEngine(model).run(model.quantize_input(x))
    np.testing.assert_array_equal(out.hidden, ref_hidden)
    np.testing.assert_array_equal(out.logits, ref_logits)
    assert len(np.unique(out.hidden)) > 16  # not a degenerate all-saturated or all-zero run


def test_po2_step_agreement_is_exact_on_two_layers() -> None:
    q, _, x = _calibrated(16, 24, QuantConfig(weight_bits=3, scale_type="po2"), layers=2)
    assert step_agreement(extract_lstm(q), q, x) == 1.0


def test_po2_two_layers_per_channel_is_bit_exact() -> None:
    qcfg = QuantConfig(weight_bits=4, act_bits=6, scale_type="po2", granularity="per_channel")
    q, head, x = _calibrated(24, 32, qcfg, layers=2)
    model = extract_lstm(q, head)
    assert len(model.layers) == 2 and model.layers[0].weight_quant[0].scale.shape == (32,)
    ref_hidden, ref_logits = brevitas_codes(model, q, x, head)
    out = IntLSTMEngine(model).run(model.quantize_input(x))
    np.testing.assert_array_equal(out.hidden, ref_hidden)
    np.testing.assert_array_equal(out.logits, ref_logits)


def test_po2_mean_pooling_logits_are_bit_exact() -> None:
    q, head, x = _calibrated(40, 64, QuantConfig(weight_bits=6, scale_type="po2"))
    model = extract_lstm(q, head, pooling="mean")
    _, ref_logits = brevitas_codes(model, q, x, head)
    np.testing.assert_array_equal(IntLSTMEngine(model).run(model.quantize_input(x)).logits, ref_logits)


def test_po2_streaming_matches_brevitas_whole_sequence() -> None:
    q, head, x = _calibrated(40, 64, QuantConfig(weight_bits=4, scale_type="po2"))
    model = extract_lstm(q, head)
    ref_hidden, ref_logits = brevitas_codes(model, q, x, head)
    stream, codes = IntLSTMEngine(model).stream(batch=x.shape[0]), model.quantize_input(x)
    parts = [stream.push(codes[:, t:t + 7]) for t in range(0, STEPS, 7)]
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), ref_hidden)
    np.testing.assert_array_equal(stream.logits(), ref_logits)


@pytest.mark.parametrize("bits", BIT_WIDTHS)
def test_float_scales_agree(bits: int) -> None:
    q, head, x = _calibrated(64, 128, QuantConfig(weight_bits=bits, scale_type="float"), seed=bits)
    result = agreement(extract_lstm(q, head), q, x, head=head)
    assert result["step_code_agreement"] >= FLOAT_SCALE_MIN_STEP_AGREEMENT
    assert result["hidden_code_agreement"] >= FLOAT_SCALE_MIN_AGREEMENT
    assert result["class_agreement"] == 1.0


def test_class_agreement_counts_exact_integer_ties_separately() -> None:
    engine = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0], [3.0, 0.0, 0.0], [0.5, 0.5, 0.5]], np.float32)
    ref = np.array([[0.9, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 3.0, 0.0], [0.0, 0.0, 0.5]], np.float32)
    result = class_agreement(engine, ref)
    assert result["class_agreement"] == 0.25  # only clip 1 has the same argmax
    assert result["class_ties"] == 2.0  # clips 0 and 3 tie exactly in the engine
    assert result["class_agreement_up_to_ties"] == 0.75  # clip 2 is a real disagreement


@pytest.mark.parametrize("rounding", ["floor", "round_to_zero"])
def test_unsupported_rounding_is_refused(rounding: str) -> None:
    q = quant_lstm_from(nn.LSTM(4, 8, batch_first=True), QuantConfig(rounding=rounding))
    with pytest.raises(UnsupportedQuantizer, match="rounding"):
        extract_lstm(q)


@pytest.mark.filterwarnings("ignore:Keyword arguments are being passed")
def test_disabled_quantizer_and_bidirectional_are_refused() -> None:
    with pytest.raises(UnsupportedQuantizer, match="disabled"):
        extract_lstm(QuantLSTM(4, 8, batch_first=True, cell_state_quant=None, cat_output_cell_states=False))
    with pytest.raises(UnsupportedQuantizer, match="bidirectional"):
        extract_lstm(QuantLSTM(4, 8, batch_first=True, bidirectional=True))


def test_head_without_input_quant_is_refused() -> None:
    q = quant_lstm_from(nn.LSTM(4, 8, batch_first=True), QuantConfig())
    with pytest.raises(UnsupportedQuantizer, match="input quantizer"):
        extract_lstm(q, QuantLinear(8, 3, bias=False, weight_quant=weight_quant(QuantConfig())))
