"""Name -> constructor registries for teachers and students.

A constructor takes keyword-only ``n_mels``, ``n_frames``, ``n_classes`` plus its own options
and returns an ``nn.Module`` mapping ``(B, T, F)`` log-mel to ``(B, C)`` logits.

A student may also be a model you bring: the spec ``path/to/file.py:factory`` names a Python
file and a constructor in it (same contract). It is loaded with importlib the first time it is
named and registered under the spec string, with a fingerprint of the file's contents that
cache keys carry (an edited file never loads weights trained from the old one).
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from qbench.errors import ConfigError

Builder = Callable[..., nn.Module]

_STUDENTS: dict[str, Builder] = {}
_TEACHERS: dict[str, Builder] = {}
_USER_FINGERPRINTS: dict[str, str] = {}  # user student name -> hash of what defines it (file contents, weights)
SPEC_SUFFIX = ".py"


def _register(table: dict[str, Builder], kind: str, name: str) -> Callable[[Builder], Builder]:
    def decorate(builder: Builder) -> Builder:
        if name in table:
            raise ValueError(f"{kind} {name!r} is registered twice")
        table[name] = builder
        return builder

    return decorate


def register_student(name: str) -> Callable[[Builder], Builder]:
    """Class or function decorator: make ``build_student(name, ...)`` call it."""
    return _register(_STUDENTS, "student", name)


def register_teacher(name: str) -> Callable[[Builder], Builder]:
    """Class or function decorator: make ``build_teacher(name, ...)`` call it."""
    return _register(_TEACHERS, "teacher", name)


def list_students() -> tuple[str, ...]:
    """The built-in and registered students (user models appear once they have been named)."""
    return tuple(sorted(_STUDENTS))


def is_model_spec(name: str) -> bool:
    """True for ``file.py:factory`` (a model you bring), False for a registry name."""
    path, sep, factory = name.rpartition(":")
    return bool(sep) and path.endswith(SPEC_SUFFIX) and factory.isidentifier()


def register_user_student(name: str, builder: Builder, *, fingerprint: str) -> str:
    """Register (or re-register) a student defined outside qbench; ``fingerprint`` goes into its cache keys."""
    _STUDENTS[name] = builder
    _USER_FINGERPRINTS[name] = fingerprint
    return name


def is_user_student(name: str) -> bool:
    """True for a model you bring (a spec or a registered ``nn.Module``/factory): built-in options do not apply."""
    return is_model_spec(name) or name in _USER_FINGERPRINTS


def student_fingerprint(name: str) -> dict[str, str]:
    """What a cache key must carry besides the name: ``{}`` for built-ins, ``{"source": hash}`` for user models."""
    if is_model_spec(name):
        resolve_student(name)
    fp = _USER_FINGERPRINTS.get(name)
    return {} if fp is None else {"source": fp}


def resolve_student(name: str) -> str:
    """Check that ``name`` is a known student, loading a ``file.py:factory`` spec; a one-line ConfigError if not."""
    if is_model_spec(name):
        return _load_spec(name)
    if name not in _STUDENTS:
        raise ConfigError(f"unknown student {name!r}; known: {', '.join(list_students())} "
                          f"or a model you bring as file.py:factory")
    return name


def _load_spec(spec: str) -> str:
    file, _, factory = spec.rpartition(":")
    path = Path(file).expanduser()
    try:
        source = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"--models {spec}: cannot read {path}: {exc.strerror or exc}") from None
    digest = hashlib.sha256(source).hexdigest()[:16]
    if _USER_FINGERPRINTS.get(spec) == digest and spec in _STUDENTS:
        return spec
    module_name = f"qbench_user_models.{path.stem}_{digest}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look their module up here
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # the user's file: its error is theirs, reported in one line
        sys.modules.pop(module_name, None)
        raise ConfigError(f"--models {spec}: importing {path} failed: {type(exc).__name__}: {exc}") from None
    builder = getattr(module, factory, None)
    if not callable(builder):
        raise ConfigError(f"--models {spec}: {path} has no function {factory!r}")
    return register_user_student(spec, _checked(spec, builder), fingerprint=digest)


def _checked(name: str, builder: Builder) -> Builder:
    """``builder`` that refuses, in one line, to return anything but an ``nn.Module``."""
    def build(**kwargs: Any) -> nn.Module:
        model = builder(**kwargs)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"student {name}: the factory returned {type(model).__name__}, not a torch nn.Module")
        return model

    return build


def file_name(name: str) -> str:
    """``name`` as one file-name component: ``dir/my_models.py:build_kws`` -> ``my_models.build_kws``."""
    if is_model_spec(name):
        file, _, factory = name.rpartition(":")
        name = f"{Path(file).stem}.{factory}"
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def list_teachers() -> tuple[str, ...]:
    return tuple(sorted(_TEACHERS))


def _build(table: dict[str, Builder], kind: str, name: str, shape: dict[str, int], options: dict[str, Any]) -> nn.Module:
    if name not in table:
        raise ConfigError(f"unknown {kind} {name!r}; known {kind}s: {', '.join(sorted(table))}")
    try:
        return table[name](**shape, **options)
    except TypeError as exc:  # an option the constructor does not take
        raise ConfigError(f"{kind} {name!r}: bad options {sorted(options)}: {exc}") from exc


def build_student(name: str, *, n_mels: int, n_frames: int, n_classes: int, **options: Any) -> nn.Module:
    """A fresh student: ``(B, T, F)`` -> ``(B, C)`` logits (built-ins also have ``temporal_features``
    and ``classify``); ``name`` may be a ``file.py:factory`` spec."""
    if is_model_spec(name):
        _load_spec(name)
    shape = {"n_mels": n_mels, "n_frames": n_frames, "n_classes": n_classes}
    return _build(_STUDENTS, "student", name, shape, options)


def build_teacher(name: str, *, n_mels: int, n_frames: int, n_classes: int, **options: Any) -> nn.Module:
    """A fresh teacher: ``(B, T, F)`` -> ``(B, C)`` logits."""
    shape = {"n_mels": n_mels, "n_frames": n_frames, "n_classes": n_classes}
    return _build(_TEACHERS, "teacher", name, shape, options)


def model_size(model: nn.Module) -> dict[str, int]:
    """Trainable parameter count and their size in bytes at fp32 (buffers such as BN statistics excluded)."""
    params = sum(p.numel() for p in model.parameters())
    return {"params": int(params), "fp32_bytes": int(params) * 4}
