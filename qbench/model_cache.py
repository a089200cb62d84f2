"""Trained models cached on disk by what determines their weights.

An entry is ``<cache>/models/<kind>-<key>.pt`` holding a state_dict and the run's metrics;
``key`` hashes a JSON description (model name and options, configs, data key, the keys of the
models it learned from). A sweep that is interrupted and rerun, or a second sweep over the same
students, loads instead of retraining.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qbench.files import atomic_write

# Bump when a cached model's layout changes, so stale weights are never loaded into a new shape.
MODEL_CACHE_VERSION = 1


def cache_key(description: dict[str, Any]) -> str:
    """A stable 16-hex-digit key of a JSON-able description."""
    canon = json.dumps({"v": MODEL_CACHE_VERSION, **description}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` that readers never see half-written."""
    atomic_write(path, lambda f: torch.save(obj, f))


def load_or_fit(path: Path, build: Callable[[], nn.Module],
                fit: Callable[[nn.Module], tuple[nn.Module, dict[str, Any]]]) -> tuple[nn.Module, dict[str, Any]]:
    """The model at ``path`` if cached, else ``fit(build())`` saved there. Returns (model in eval mode, meta).

    ``build`` must make the same architecture every time (a fresh or quantized twin) so the
    cached state_dict loads into it strictly.
    """
    if path.exists():
        entry = torch.load(path, map_location="cpu", weights_only=True)
        model = build()
        model.load_state_dict(entry["state_dict"])
        return model.eval(), entry["meta"]
    model, meta = fit(build())
    atomic_torch_save({"state_dict": model.state_dict(), "meta": meta}, path)
    return model.eval(), meta
