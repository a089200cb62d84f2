"""Brevitas quantizers chosen from a :class:`~qbench.quant.QuantConfig`.

Every quantizer here is a stock Brevitas injector re-bound with ``.let(...)`` so that
exported graphs and the integer engine see well-known, documented quantizers. Weights use
the narrow-range signed family (``Int8WeightPerTensorFloat`` / ``Int8WeightPerChannelFloat``,
or their power-of-two twins ``Int8WeightPerTensorFixedPoint`` /
``Int8WeightPerChannelFixedPoint``): the scale is the max-abs statistic of the weight
(recomputed every forward, so QAT moves it with the weights), and narrow range keeps the code
set symmetric (-(2^(b-1)-1) .. 2^(b-1)-1), so a sign flip never overflows. Activations use
``Int8ActPerTensorFloat`` (signed: inputs, gate accumulators, tanh outputs, cell state) or
``Uint8ActPerTensorFloat`` (unsigned: ReLU and sigmoid outputs), or their ``FixedPoint``
twins: the scale is collected from runtime percentile statistics for the first
``collect_stats_steps`` training forwards and then becomes a learned parameter; in eval mode
it is frozen. The ``FixedPoint`` family restricts every scale to a power of two (rounding the
log2 up), which makes requantization a shift and lets integer arithmetic reproduce the
fake-quantized forward exactly. Biases use ``Int32Bias``: 32-bit codes whose scale is
input scale x weight scale, so a bias adds straight into an int32 accumulator.
"""

from __future__ import annotations

from brevitas.inject import ExtendedInjector
from brevitas.inject.enum import FloatToIntImplType
from brevitas.quant import (
    Int8ActPerTensorFixedPoint,
    Int8ActPerTensorFloat,
    Int8WeightPerChannelFloat,
    Int8WeightPerTensorFixedPoint,
    Int8WeightPerTensorFloat,
    Int32Bias,
    Uint8ActPerTensorFixedPoint,
    Uint8ActPerTensorFloat,
)
from brevitas.quant.fixed_point import Int8WeightPerChannelFixedPoint

from qbench.quant.config import Granularity, QuantConfig, Rounding, ScaleType, check_bits

__all__ = ["FLOAT_TO_INT", "act_quant", "bias_quant", "weight_quant"]

FLOAT_TO_INT: dict[Rounding, FloatToIntImplType] = {
    Rounding.ROUND: FloatToIntImplType.ROUND,
    Rounding.FLOOR: FloatToIntImplType.FLOOR,
    Rounding.ROUND_TO_ZERO: FloatToIntImplType.ROUND_TO_ZERO,
}
"""QuantConfig rounding -> Brevitas ``float_to_int_impl_type``."""

_WEIGHT_BASE: dict[tuple[Granularity, ScaleType], type[ExtendedInjector]] = {
    (Granularity.PER_TENSOR, ScaleType.FLOAT): Int8WeightPerTensorFloat,
    (Granularity.PER_CHANNEL, ScaleType.FLOAT): Int8WeightPerChannelFloat,
    (Granularity.PER_TENSOR, ScaleType.PO2): Int8WeightPerTensorFixedPoint,
    (Granularity.PER_CHANNEL, ScaleType.PO2): Int8WeightPerChannelFixedPoint,
}

_ACT_BASE: dict[tuple[bool, ScaleType], type[ExtendedInjector]] = {
    (True, ScaleType.FLOAT): Int8ActPerTensorFloat,
    (False, ScaleType.FLOAT): Uint8ActPerTensorFloat,
    (True, ScaleType.PO2): Int8ActPerTensorFixedPoint,
    (False, ScaleType.PO2): Uint8ActPerTensorFixedPoint,
}


def weight_quant(qcfg: QuantConfig) -> type[ExtendedInjector]:
    """Signed narrow-range weight quantizer: ``qcfg.weight_bits`` bits, max-abs scale.

    Per-channel scales are one per output channel (dim 0: a conv filter, a linear or LSTM
    gate row). Pass the result as ``weight_quant=`` to a Brevitas layer.
    """
    base = _WEIGHT_BASE[(qcfg.granularity, qcfg.scale_type)]
    return base.let(bit_width=qcfg.weight_bits, float_to_int_impl_type=FLOAT_TO_INT[qcfg.rounding])


def act_quant(
    qcfg: QuantConfig,
    *,
    signed: bool,
    bits: int | None = None,
    collect_stats_steps: int | None = None,
) -> type[ExtendedInjector]:
    """Per-tensor activation quantizer with a stats-initialised, then learned, scale.

    ``signed=True`` for values of either sign (inputs, tanh, gate accumulators, cell
    state), ``False`` for non-negative ones (ReLU, sigmoid). ``bits`` overrides
    ``qcfg.act_bits`` (e.g. ``qcfg.cell_bits``); ``collect_stats_steps`` overrides
    Brevitas' default of 300 training forwards of percentile statistics before the scale
    becomes a learned parameter.
    """
    bits = qcfg.act_bits if bits is None else bits
    check_bits("act_quant", "bits", bits, allow_wide=True)
    options: dict[str, object] = {"bit_width": bits, "float_to_int_impl_type": FLOAT_TO_INT[qcfg.rounding]}
    if collect_stats_steps is not None:
        if collect_stats_steps < 1:
            raise ValueError(f"act_quant collect_stats_steps must be >= 1, got {collect_stats_steps}")
        options["collect_stats_steps"] = collect_stats_steps
    return _ACT_BASE[(signed, qcfg.scale_type)].let(**options)


def bias_quant(qcfg: QuantConfig) -> type[ExtendedInjector]:
    """Int32 bias quantizer whose scale is input scale x weight scale.

    Needs a quantized input (a ``QuantTensor`` or a layer with ``input_quant``). It rounds to
    nearest whatever ``qcfg.rounding`` says: at 32 bits the rounding mode of the bias is far
    below every other error, and a fixed mode keeps the integer engine's bias exact.
    """
    del qcfg  # one bias quantizer serves every config; the argument keeps the API uniform
    return Int32Bias
