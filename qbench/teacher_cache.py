"""Trained teachers cached on disk, so every student of a sweep distils from the same teacher.

A cache entry is ``teacher-<name>-<key>.pt`` holding the state_dict and the run's metrics; the key
hashes the teacher name, its options, the TrainConfig and the dataset's ``config.key()``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

import models
from qbench import train as _train  # looked up at call time, so tests can stand in for train()
from qbench.data.config import default_cache_dir
from qbench.data.types import FeatureDataset
from qbench.model_cache import atomic_torch_save, cache_key
from qbench.train import TrainConfig

# Bump when a teacher's behaviour changes without changing its parameter shapes (those are
# hashed into the key already), so stale weights are never loaded.
TEACHER_CACHE_VERSION = 2


def _shapes(model: nn.Module) -> list[tuple[str, list[int]]]:
    """The model's state_dict layout: a changed default option changes the key, not a load error."""
    return [(name, list(t.shape)) for name, t in model.state_dict().items()]


def teacher_key(name: str, options: dict[str, Any], config: TrainConfig, data_key: str, model: nn.Module) -> str:
    """Stable 16-hex-digit key of everything that determines a trained teacher's weights (``data_key``:
    its dataset's ``config.key()``)."""
    doc = {"version": TEACHER_CACHE_VERSION, "name": name, "options": options, "layout": _shapes(model),
           "train": config.to_dict(), "data": data_key}
    return cache_key(doc)


def teacher_path(name: str, data_key: str, shape: dict[str, int], *, config: TrainConfig,
                 cache_dir: Path | str | None = None, options: dict[str, Any] | None = None) -> Path:
    """Where ``train_teacher`` keeps (or will keep) teacher ``name`` of ``shape`` (n_mels, n_frames,
    n_classes), trained on the dataset whose ``config.key()`` is ``data_key``."""
    options = dict(options or {})
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    with torch.random.fork_rng():  # an untrained build for its layout: the caller's random stream stays put
        key = teacher_key(name, options, config, data_key, models.build_teacher(name, **shape, **options))
    return root / "teachers" / f"teacher-{name}-{key}.pt"


def train_teacher(name: str, dataset: FeatureDataset, *, config: TrainConfig, cache_dir: Path | str | None = None,
                  progress: bool = True, options: dict[str, Any] | None = None) -> nn.Module:
    """A trained teacher in eval mode: loaded from the cache, or trained (seeded by ``config.seed``) and cached."""
    options = dict(options or {})
    shape = {"n_mels": dataset.n_mels, "n_frames": dataset.n_frames, "n_classes": dataset.n_classes}
    with torch.random.fork_rng():  # seed the teacher's initial weights without reseeding the caller
        torch.manual_seed(config.seed)
        teacher = models.build_teacher(name, **shape, **options)
    path = teacher_path(name, dataset.config.key(), shape, config=config, cache_dir=cache_dir, options=options)
    if path.exists():
        entry = torch.load(path, map_location="cpu", weights_only=True)
        teacher.load_state_dict(entry["state_dict"])
        return teacher.eval()
    result = _train.train(teacher, dataset, config=config, progress=progress)
    atomic_torch_save({"state_dict": result.model.state_dict(), "best_epoch": result.best_epoch,
                  "val": result.best_val, "test": result.test, "seconds": result.seconds}, path)
    return result.model.eval()
