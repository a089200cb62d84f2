"""Precision: the bit widths of a quantized student, uniform (``w4a8``) or per layer (``mixed-...``).

A :class:`Precision` is a default weight and activation width plus per-layer overrides, each
naming modules by their qualified name or an ``fnmatch`` pattern (``fc``, ``blocks.0.*``,
``lstm``); the first override that matches a module wins. It travels as one value through
points, pipelines, artifacts and records, and its text form is what the CLI reads and a record
stores, so a result can be rebuilt from it::

    w4a8                      every layer: 4-bit weights, 8-bit activations
    w8a8:fc=w4,lstm=w6a8      8/8 except the head's weights (4) and the LSTM (6/8)

``name`` is the short label of tables and file names: the uniform ``w4a8``, or
``mixed-w<lo>-<hi>a<...>-<hash>`` for per-layer widths (the hash tells two mixes apart).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import re

from qbench.errors import ConfigError

_WIDTHS = re.compile(r"^w(\d+)(?:a(\d+))?$")


@dataclasses.dataclass(frozen=True)
class LayerBits:
    """An override: modules whose qualified name matches ``layer`` get these widths (None: the default's)."""

    layer: str
    weight_bits: int | None = None
    act_bits: int | None = None

    def matches(self, name: str) -> bool:
        return name == self.layer or fnmatch.fnmatchcase(name, self.layer)

    def __str__(self) -> str:
        widths = (f"w{self.weight_bits}" if self.weight_bits is not None else "") + \
                 (f"a{self.act_bits}" if self.act_bits is not None else "")
        return f"{self.layer}={widths}"


@dataclasses.dataclass(frozen=True)
class Precision:
    """Default widths and per-layer overrides of a quantized student (see the module docstring)."""

    weight_bits: int
    act_bits: int
    layers: tuple[LayerBits, ...] = ()

    def __post_init__(self) -> None:
        from qbench.quant.config import check_bits

        check_bits("precision", "weight bits", self.weight_bits)
        check_bits("precision", "activation bits", self.act_bits, allow_wide=True)
        object.__setattr__(self, "layers", tuple(self.layers))
        for o in self.layers:
            if o.weight_bits is None and o.act_bits is None:
                raise ConfigError(f"precision: the override for {o.layer!r} sets no width")
            if o.weight_bits is not None:
                check_bits("precision", f"weight bits of {o.layer}", o.weight_bits)
            if o.act_bits is not None:
                check_bits("precision", f"activation bits of {o.layer}", o.act_bits, allow_wide=True)

    @classmethod
    def uniform(cls, weight_bits: int, act_bits: int) -> Precision:
        return cls(weight_bits, act_bits)

    @classmethod
    def parse(cls, text: str) -> Precision:
        """``w4a8`` or ``w8a8:fc=w4,lstm=w6a8`` (see the module docstring); a one-line ConfigError if not."""
        default, _, overrides = str(text).strip().partition(":")
        m = _WIDTHS.match(default)
        if m is None or m.group(2) is None:
            raise ConfigError(f"precision {text!r}: expected w<bits>a<bits> (e.g. w4a8), then optionally "
                              f":layer=w<bits>[a<bits>],... (e.g. w8a8:fc=w4)")
        layers = []
        for item in filter(None, (s.strip() for s in overrides.split(","))):
            layer, eq, widths = item.partition("=")
            wm = _WIDTHS.match(widths) or re.match(r"^()a(\d+)$", widths)
            if not eq or not layer or wm is None:
                raise ConfigError(f"precision {text!r}: override {item!r} is not layer=w<bits>[a<bits>] or layer=a<bits>")
            w, a = wm.group(1), wm.group(2)
            layers.append(LayerBits(layer, int(w) if w else None, int(a) if a else None))
        return cls(int(m.group(1)), int(m.group(2)), tuple(layers))

    @property
    def mixed(self) -> bool:
        return bool(self.layers)

    def widths_of(self, layer: str) -> tuple[int, int]:
        """(weight bits, act bits) of the module named ``layer``."""
        for o in self.layers:
            if o.matches(layer):
                return (self.weight_bits if o.weight_bits is None else o.weight_bits,
                        self.act_bits if o.act_bits is None else o.act_bits)
        return self.weight_bits, self.act_bits

    @property
    def weight_range(self) -> tuple[int, int]:
        ws = [self.weight_bits, *(o.weight_bits for o in self.layers if o.weight_bits is not None)]
        return min(ws), max(ws)

    @property
    def act_range(self) -> tuple[int, int]:
        acts = [self.act_bits, *(o.act_bits for o in self.layers if o.act_bits is not None)]
        return min(acts), max(acts)

    @property
    def name(self) -> str:
        """``w4a8``, or ``mixed-w4-8a8-1a2b3c`` for per-layer widths."""
        if not self.mixed:
            return f"w{self.weight_bits}a{self.act_bits}"

        def span(lo: int, hi: int) -> str:
            return f"{lo}" if lo == hi else f"{lo}-{hi}"

        digest = hashlib.sha256(str(self).encode()).hexdigest()[:6]
        return f"mixed-w{span(*self.weight_range)}a{span(*self.act_range)}-{digest}"

    def __str__(self) -> str:
        """The text form :meth:`parse` reads back."""
        base = f"w{self.weight_bits}a{self.act_bits}"
        return base + (":" + ",".join(str(o) for o in self.layers) if self.layers else "")
