"""QuantConfig: what a quantized student's bit-widths and scales are."""

from __future__ import annotations

import dataclasses
from enum import Enum

from qbench.config import Config, coerce_enum
from qbench.errors import ConfigError

BIT_WIDTHS = tuple(range(2, 9))  # the grid the CLI sweeps and tests parametrise over
WIDE_BITS = 16  # allowed where a wider register is usual (LSTM cell state)


class Granularity(str, Enum):
    """How many scales a weight tensor gets."""

    PER_TENSOR = "per_tensor"
    """One scale for the whole tensor."""
    PER_CHANNEL = "per_channel"
    """One scale per output channel (row of an LSTM gate matrix, filter of a conv)."""


class ScaleType(str, Enum):
    """What values a scale may take."""

    FLOAT = "float"
    """Any positive float32 scale."""
    PO2 = "po2"
    """Power-of-two scales: pure fixed-point, requantization is a shift."""


class Rounding(str, Enum):
    """How float values become integer codes."""

    ROUND = "round"
    """Round half to even (torch.round), Brevitas' default."""
    FLOOR = "floor"
    """Round toward minus infinity."""
    ROUND_TO_ZERO = "round_to_zero"
    """Truncate toward zero."""


def check_bits(owner: str, name: str, value: object, *, allow_wide: bool = False) -> None:
    """Raise ConfigError unless ``value`` is an integer in 2..8 (or 16 when ``allow_wide``)."""
    allowed = f"an integer from {BIT_WIDTHS[0]} to {BIT_WIDTHS[-1]}" + (f" or {WIDE_BITS}" if allow_wide else "")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{owner}.{name} must be {allowed}, got {value!r}")
    if value not in BIT_WIDTHS and not (allow_wide and value == WIDE_BITS):
        raise ConfigError(f"{owner}.{name} must be {allowed}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class QuantConfig(Config):
    """Bit-widths and scale choices for a quantized student.

    ``act_bits`` covers every activation (inputs, LSTM gates, sigmoid/tanh outputs, ReLU
    outputs); ``gate_bits`` overrides it for the LSTM gate accumulators and ``cell_bits``
    for the LSTM cell state, which is commonly kept wider (16 bits).
    """

    weight_bits: int = 8
    act_bits: int = 8
    gate_bits: int | None = None
    cell_bits: int = 16
    granularity: Granularity = Granularity.PER_TENSOR
    scale_type: ScaleType = ScaleType.FLOAT
    rounding: Rounding = Rounding.ROUND

    def __post_init__(self) -> None:
        check_bits("QuantConfig", "weight_bits", self.weight_bits)
        check_bits("QuantConfig", "act_bits", self.act_bits, allow_wide=True)
        if self.gate_bits is not None:
            check_bits("QuantConfig", "gate_bits", self.gate_bits, allow_wide=True)
        check_bits("QuantConfig", "cell_bits", self.cell_bits, allow_wide=True)
        for name, enum_type in (("granularity", Granularity), ("scale_type", ScaleType), ("rounding", Rounding)):
            object.__setattr__(self, name, coerce_enum("QuantConfig", name, getattr(self, name), enum_type))

    @property
    def effective_gate_bits(self) -> int:
        return self.act_bits if self.gate_bits is None else self.gate_bits

    @property
    def tag(self) -> str:
        """Short name of the bit-widths, e.g. ``w4a8``; models prefix it: ``lstm_w4a8``."""
        return f"w{self.weight_bits}a{self.act_bits}"

    def name(self, model: str) -> str:
        return f"{model}_{self.tag}"
