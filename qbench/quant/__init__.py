"""Quantization: configs, Brevitas QAT/PTQ, and packed-size accounting.

Import the heavy parts from their modules (they load Brevitas):
``from qbench.quant.quantize import quantize, calibrate`` and
``from qbench.quant.size import packed_size, fp32_size``.
"""

from qbench.quant.config import Granularity, QuantConfig, Rounding, ScaleType

__all__ = ["Granularity", "QuantConfig", "Rounding", "ScaleType"]
