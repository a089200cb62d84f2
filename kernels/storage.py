"""Store an :class:`~kernels.model.IntLSTMModel` with its weights bit-packed; unpack once at load.

File format: one ``.npz``. Weight code matrices are stored as :func:`kernels.pack.pack_codes`
streams (``<path>.packed``) with their shape (``<path>.shape``); every other array (scales,
biases, LUTs) is stored as is, except that integer arrays take the narrowest integer type that
holds their values (a LUT of 8-bit activation codes is stored as int8) and get their own type
back at load; ints and bools go into a JSON document under ``meta``.
``<path>`` is the dotted field path, e.g. ``layers.0.weight``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from kernels.model import IntLinear, IntLSTMLayer, IntLSTMModel, QuantSpec
from kernels.pack import pack_codes, unpack_codes

__all__ = ["FORMAT_VERSION", "load_model", "save_model"]

FORMAT_VERSION = 2  # 2: integer arrays stored narrowed, with their dtype
_PACKED_FIELDS = {(IntLSTMLayer, "weight"), (IntLinear, "weight")}


def _weight_bits(obj: Any) -> int:
    spec = obj.weight_quant[0] if isinstance(obj.weight_quant, tuple) else obj.weight_quant
    return spec.bit_width


def _flatten(obj: Any, path: str, arrays: dict[str, np.ndarray]) -> Any:
    """Replace arrays by npz keys, dataclasses by dicts; returns the JSON-able skeleton."""
    if dataclasses.is_dataclass(obj):
        out: dict[str, Any] = {"__type__": type(obj).__name__}
        for f in dataclasses.fields(obj):
            value, key = getattr(obj, f.name), f"{path}{f.name}"
            if (type(obj), f.name) in _PACKED_FIELDS:
                arrays[key + ".packed"] = pack_codes(value, _weight_bits(obj))
                arrays[key + ".shape"] = np.asarray(value.shape, dtype=np.int64)
                out[f.name] = {"__packed__": key}
            else:
                out[f.name] = _flatten(value, key + ".", arrays)
        return out
    if isinstance(obj, tuple):
        return {"__tuple__": [_flatten(v, f"{path}{i}.", arrays) for i, v in enumerate(obj)]}
    if isinstance(obj, np.ndarray):
        arrays[path.rstrip(".")] = _narrowest(obj)
        return {"__array__": path.rstrip("."), "dtype": obj.dtype.str}
    return obj


def _narrowest(a: np.ndarray) -> np.ndarray:
    """``a`` in the smallest integer type holding its values (other arrays unchanged)."""
    if a.dtype.kind not in "iu" or a.size == 0:
        return a
    return a.astype(np.result_type(np.min_scalar_type(int(a.min())), np.min_scalar_type(int(a.max()))))


_TYPES = {cls.__name__: cls for cls in (IntLSTMModel, IntLSTMLayer, IntLinear, QuantSpec)}


def _rebuild(skeleton: Any, data: Any) -> Any:
    if isinstance(skeleton, dict) and "__type__" in skeleton:
        cls = _TYPES[skeleton["__type__"]]
        fields = {k: v for k, v in skeleton.items() if k != "__type__"}
        built = {k: _rebuild(v, data) for k, v in fields.items() if not _is_packed(v)}
        for k, v in fields.items():
            if _is_packed(v):
                spec = built["weight_quant"]
                width = (spec[0] if isinstance(spec, tuple) else spec).bit_width
                shape = tuple(int(n) for n in data[v["__packed__"] + ".shape"])
                built[k] = unpack_codes(data[v["__packed__"] + ".packed"], width, shape)
        return cls(**built)
    if isinstance(skeleton, dict) and "__tuple__" in skeleton:
        return tuple(_rebuild(v, data) for v in skeleton["__tuple__"])
    if isinstance(skeleton, dict) and "__array__" in skeleton:
        return np.array(data[skeleton["__array__"]]).astype(np.dtype(skeleton["dtype"]), copy=False)
    return skeleton


def _is_packed(value: Any) -> bool:
    return isinstance(value, dict) and "__packed__" in value


def save_model(model: IntLSTMModel, path: Path | str) -> None:
    """Write ``model`` to ``path`` (``.npz``) with every weight matrix bit-packed at its width."""
    arrays: dict[str, np.ndarray] = {}
    skeleton = _flatten(model, "", arrays)
    meta = json.dumps({"format_version": FORMAT_VERSION, "model": skeleton})
    np.savez(path, meta=np.frombuffer(meta.encode(), dtype=np.uint8), **arrays)


def load_model(path: Path | str) -> IntLSTMModel:
    """Read a model written by :func:`save_model`, unpacking each weight matrix once."""
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(data["meta"].tobytes().decode())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: integer model format {meta.get('format_version')} is not {FORMAT_VERSION}")
        return _rebuild(meta["model"], data)
