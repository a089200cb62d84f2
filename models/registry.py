"""Name -> constructor registries for teachers and students.

A constructor takes keyword-only ``n_mels``, ``n_frames``, ``n_classes`` plus its own options
and returns an ``nn.Module`` mapping ``(B, T, F)`` log-mel to ``(B, C)`` logits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from qbench.errors import ConfigError

Builder = Callable[..., nn.Module]

_STUDENTS: dict[str, Builder] = {}
_TEACHERS: dict[str, Builder] = {}


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
    return tuple(sorted(_STUDENTS))


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
    """A fresh student: ``(B, T, F)`` -> ``(B, C)`` logits, with ``temporal_features`` and ``classify``."""
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
