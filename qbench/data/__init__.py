"""The data stage: audio in (synthetic or user recordings), cached log-mel features out.

``build_dataset(DataConfig(...)) -> FeatureDataset``; see ARCHITECTURE.md for the contract.
"""

from qbench.data.config import DataConfig, DatasetKind, FeatureConfig, default_cache_dir
from qbench.data.dataset import build_dataset
from qbench.data.types import FeatureDataset, SkippedClip, Split

__all__ = [
    "DataConfig",
    "DatasetKind",
    "FeatureConfig",
    "FeatureDataset",
    "SkippedClip",
    "Split",
    "build_dataset",
    "default_cache_dir",
]
