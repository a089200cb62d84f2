"""Quantization: configs, Brevitas QAT/PTQ, and packed-size accounting."""

from qbench.quant.config import Granularity, QuantConfig, Rounding, ScaleType

__all__ = ["Granularity", "QuantConfig", "Rounding", "ScaleType"]
