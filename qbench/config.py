"""Versioned, JSON-serialisable frozen configs.

Every config in qbench is a frozen dataclass that inherits :class:`Config`. It validates
itself in ``__post_init__`` (raising :class:`~qbench.errors.ConfigError`, a ``ValueError``, naming the field), serialises to a JSON
document carrying ``config_kind`` and ``config_version``, and hashes to a stable ``key()`` that names cache
entries. Nested configs, enums and tuples round-trip.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import types
import typing
from typing import Any, ClassVar, TypeVar

from qbench.errors import ConfigError

CONFIG_SCHEMA_VERSION = 1
# Metadata keys of a serialised config; prefixed so they never collide with a field name.
KIND_KEY = "config_kind"
VERSION_KEY = "config_version"

C = TypeVar("C", bound="Config")


def _encode(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    return value


def _decode(tp: Any, value: Any) -> Any:
    """Rebuild ``value`` as type ``tp`` (the dataclass field's resolved annotation)."""
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(tp):
            if arm is type(None):
                continue
            try:
                return _decode(arm, value)
            except (TypeError, ValueError, KeyError):
                continue
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v) for v in value)
        return tuple(_decode(a, v) for a, v in zip(args, value))
    if origin is dict:
        _, vt = typing.get_args(tp)
        return {k: _decode(vt, v) for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, Config):
        return tp.from_dict(value)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(value)
    if tp is float and isinstance(value, int):
        return float(value)
    return value


@dataclasses.dataclass(frozen=True)
class Config:
    """Base of every qbench config: validation hook, JSON round trip, stable cache key."""

    version: ClassVar[int] = CONFIG_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {KIND_KEY: type(self).__name__, VERSION_KEY: self.version}
        for f in dataclasses.fields(self):
            out[f.name] = _encode(getattr(self, f.name))
        return out

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        data = dict(data)
        kind = data.pop(KIND_KEY, cls.__name__)
        version = data.pop(VERSION_KEY, cls.version)
        if kind != cls.__name__:
            raise ConfigError(f"expected a {cls.__name__} document, got kind={kind!r}")
        if version != cls.version:
            raise ConfigError(f"{cls.__name__} version {version} is not supported (this qbench reads {cls.version})")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
        return cls(**{k: _decode(hints[k], v) for k, v in data.items()})

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        return cls.from_dict(json.loads(text))

    def key(self, length: int = 16) -> str:
        """A short stable hash of the config, for cache file names."""
        canon = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:length]

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)


E = TypeVar("E", bound=enum.Enum)


def coerce_enum(owner: str, name: str, value: object, enum_type: type[E]) -> E:
    """``value`` as a member of ``enum_type`` (members pass, values convert), or a ConfigError
    naming the field and listing the allowed values."""
    if isinstance(value, enum_type):
        return value
    try:
        return enum_type(value)
    except ValueError:
        choices = ", ".join(str(m.value) for m in enum_type)
        raise ConfigError(f"{owner}.{name} must be one of {choices}, got {value!r}") from None


def check_range(owner: str, name: str, value: Any, lo: float, hi: float, *, integer: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``lo <= value <= hi`` (and an int when ``integer``)."""
    if integer and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{owner}.{name} must be an integer in [{lo}, {hi}], got {value!r}")
    if not integer and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(f"{owner}.{name} must be a number in [{lo}, {hi}], got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"{owner}.{name} must be in [{lo}, {hi}], got {value!r}")
