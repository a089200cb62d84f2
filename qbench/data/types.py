"""The value the data stage hands to every later stage: dense log-mel splits."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of a dataset.

    ``x`` is ``(N, T, F)`` float32 log-mel frames; ``y`` is ``(N,)`` int64 class indices for
    single-label data or ``(N, C)`` float32 multi-hot targets for multi-label data.
    ``spans``, when the source knows it (synthetic keywords), is ``(N, 2)`` int64: the frames
    ``[onset, offset)`` the keyword occupies, ``(-1, -1)`` for clips without one.
    """

    x: np.ndarray
    y: np.ndarray
    spans: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.x.ndim != 3:
            raise ValueError(f"Split.x must be (N, T, F), got shape {self.x.shape}")
        if len(self.x) != len(self.y):
            raise ValueError(f"Split has {len(self.x)} inputs but {len(self.y)} targets")
        if self.spans is not None and self.spans.shape != (len(self.x), 2):
            raise ValueError(f"Split.spans must be (N, 2) = ({len(self.x)}, 2), got shape {self.spans.shape}")

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, n: int) -> "Split":
        """The first ``n`` examples (the split is already shuffled deterministically)."""
        return Split(self.x[:n], self.y[:n], None if self.spans is None else self.spans[:n])


@dataclasses.dataclass(frozen=True)
class SkippedClip:
    """A clip left out of a good dataset, with the reason (corrupt, empty, unreadable)."""

    path: str
    reason: str


@dataclasses.dataclass(frozen=True)
class FeatureDataset:
    """Features and targets of a dataset, ready for training and evaluation."""

    config: Any  # qbench.data.DataConfig
    classes: tuple[str, ...]
    multilabel: bool
    train: Split
    val: Split
    test: Split
    skipped: tuple[SkippedClip, ...] = ()
    build_seconds: float = float("nan")  # wall time of the build_dataset call that returned it
    worker_seconds: float = 0.0  # what worker processes spent computing parts of it beside that call
    from_cache: bool = False  # True when build_dataset loaded it instead of computing it

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def n_frames(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def n_mels(self) -> int:
        return int(self.train.x.shape[2])

    def splits(self) -> dict[str, Split]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def class_counts(self, split: Split) -> list[int]:
        """Examples per class (label occurrences for multi-label data)."""
        if self.multilabel:
            return [int(v) for v in split.y.sum(axis=0)]
        return [int(v) for v in np.bincount(split.y, minlength=self.n_classes)]

    def summary(self) -> dict[str, Any]:
        clip_seconds = getattr(self.config, "clip_seconds", float("nan"))
        return {
            "classes": list(self.classes),
            "multilabel": self.multilabel,
            "feature_shape": [self.n_frames, self.n_mels],
            "counts": {name: len(s) for name, s in self.splits().items()},
            "per_class": {name: self.class_counts(s) for name, s in self.splits().items()},
            "clip_seconds": clip_seconds,
            "hours": {name: len(s) * clip_seconds / 3600 for name, s in self.splits().items()},
            "skipped": len(self.skipped),
            "skipped_clips": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "build_seconds": self.build_seconds,
            "from_cache": self.from_cache,
        }
