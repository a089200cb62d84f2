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
    for the LSTM cell state, which is commonly kept wider (16 bits). ``layers`` holds per-layer
    overrides ``(module name or pattern, weight bits or None, act bits or None)``; the
    :class:`~qbench.quant.precision.Precision` of the config is :attr:`precision`.
    """

    weight_bits: int = 8
    act_bits: int = 8
    gate_bits: int | None = None
    cell_bits: int = 16
    granularity: Granularity = Granularity.PER_TENSOR
    scale_type: ScaleType = ScaleType.FLOAT
    rounding: Rounding = Rounding.ROUND
    layers: tuple[tuple[str, int | None, int | None], ...] = ()

    def __post_init__(self) -> None:
        check_bits("QuantConfig", "weight_bits", self.weight_bits)
        check_bits("QuantConfig", "act_bits", self.act_bits, allow_wide=True)
        if self.gate_bits is not None:
            check_bits("QuantConfig", "gate_bits", self.gate_bits, allow_wide=True)
        check_bits("QuantConfig", "cell_bits", self.cell_bits, allow_wide=True)
        for name, enum_type in (("granularity", Granularity), ("scale_type", ScaleType), ("rounding", Rounding)):
            object.__setattr__(self, name, coerce_enum("QuantConfig", name, getattr(self, name), enum_type))
        object.__setattr__(self, "layers", tuple((str(n), w, a) for n, w, a in self.layers))
        self.precision  # validates the overrides

    def to_dict(self):
        out = super().to_dict()
        if not self.layers:
            del out["layers"]  # uniform widths: the document (and every cache key) as before per-layer widths
        return out

    @property
    def precision(self):
        """The bit widths as a :class:`~qbench.quant.precision.Precision` (uniform or per layer)."""
        from qbench.quant.precision import LayerBits, Precision

        return Precision(self.weight_bits, self.act_bits, tuple(LayerBits(*o) for o in self.layers))

    def with_precision(self, precision) -> QuantConfig:
        """This config at ``precision``'s widths (scales, rounding and the LSTM's wide registers kept)."""
        return self.replace(weight_bits=precision.weight_bits, act_bits=precision.act_bits,
                            layers=tuple((o.layer, o.weight_bits, o.act_bits) for o in precision.layers))

    def for_layer(self, name: str) -> QuantConfig:
        """The uniform config the module named ``name`` is quantized with."""
        if not self.layers:
            return self
        w, a = self.precision.widths_of(name)
        return self.replace(weight_bits=w, act_bits=a, layers=())

    @property
    def effective_gate_bits(self) -> int:
        return self.act_bits if self.gate_bits is None else self.gate_bits

    @property
    def tag(self) -> str:
        """Short name of the bit-widths, e.g. ``w4a8`` (``mixed-...`` per layer); models prefix it: ``lstm_w4a8``."""
        return self.precision.name

    def name(self, model: str) -> str:
        return f"{model}_{self.tag}"
