"""DataConfig and FeatureConfig: which audio a dataset holds and how it becomes log-mel frames."""

from __future__ import annotations

import dataclasses
import math
import os
from enum import Enum
from pathlib import Path

from qbench.config import Config, check_range, coerce_enum
from qbench.errors import ConfigError

CACHE_ENV = "QBENCH_CACHE"
SPLITS = ("train", "val", "test")


class DatasetKind(str, Enum):
    """Where a dataset's audio comes from."""

    KEYWORDS = "keywords"
    """Synthetic spoken keywords (espeak-ng) in coloured noise and babble; single-label, 12 classes."""
    EVENTS = "events"
    """Synthetic acoustic events (alarms, chirps, knocks, ...) in noise; multi-label."""
    ESC50 = "esc50"
    """ESC-50 folder (meta/esc50.csv + audio/); single-label, split by fold."""
    FSD50K = "fsd50k"
    """FSD50K folder (FSD50K.ground_truth/ + dev/eval audio); multi-label."""
    SPEECHCOMMANDS = "speechcommands"
    """Speech Commands v2 folder (class folders + validation/testing lists); single-label."""
    CSV = "csv"
    """Any folder with labels.csv (file, labels[, split]); single- or multi-label."""

    @property
    def synthetic(self) -> bool:
        return self in (DatasetKind.KEYWORDS, DatasetKind.EVENTS)


def _floats(config: Config, *names: str) -> None:
    """Store int values of float fields as floats, so ``key()`` hashes 2 and 2.0 alike."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(config, name, float(value))


@dataclasses.dataclass(frozen=True)
class FeatureConfig(Config):
    """Log-mel front end: Hann-windowed STFT (centred frames), HTK mel filterbank, natural log.

    A clip of ``s`` seconds gives ``1 + round(s * sample_rate) // hop`` frames of ``n_mels``
    values each; see :meth:`n_frames`.
    """

    sample_rate: int = 16000  # Hz; every clip is resampled to it
    n_mels: int = 40
    win_ms: float = 25.0  # analysis window length
    hop_ms: float = 10.0  # frame step
    n_fft: int | None = None  # FFT size; None: next power of two >= the window
    f_min: float = 20.0  # Hz, lowest mel filter edge
    f_max: float | None = None  # Hz, highest mel filter edge; None: sample_rate / 2
    log_floor: float = 1e-6  # added to mel power before the log, sets the silence level

    def __post_init__(self) -> None:
        owner = "FeatureConfig"
        _floats(self, "win_ms", "hop_ms", "f_min", "f_max", "log_floor")
        check_range(owner, "sample_rate", self.sample_rate, 4000, 96000, integer=True)
        check_range(owner, "n_mels", self.n_mels, 1, 256, integer=True)
        check_range(owner, "win_ms", self.win_ms, 1.0, 200.0)
        check_range(owner, "hop_ms", self.hop_ms, 1.0, 100.0)
        if self.hop_ms > self.win_ms:
            raise ConfigError(f"{owner}.hop_ms ({self.hop_ms}) must not exceed win_ms ({self.win_ms})")
        if self.n_fft is not None:
            check_range(owner, "n_fft", self.n_fft, self.win_length, 65536, integer=True)
        nyquist = self.sample_rate / 2
        check_range(owner, "f_min", self.f_min, 0.0, nyquist)
        if self.f_max is not None:
            check_range(owner, "f_max", self.f_max, self.f_min, nyquist)
        if self.upper_hz <= self.f_min:
            raise ConfigError(f"{owner}.f_max ({self.upper_hz:g} Hz) must exceed f_min ({self.f_min:g} Hz)")
        check_range(owner, "log_floor", self.log_floor, 1e-12, 1.0)
        from qbench.data.features import mel_filterbank  # here, not at the top: features imports this module

        mel_filterbank(self)  # raises ConfigError when n_mels is too many for n_fft

    @property
    def win_length(self) -> int:
        """Window length in samples."""
        return int(round(self.win_ms * self.sample_rate / 1000))

    @property
    def hop_length(self) -> int:
        """Frame step in samples."""
        return int(round(self.hop_ms * self.sample_rate / 1000))

    @property
    def fft_size(self) -> int:
        return self.n_fft if self.n_fft is not None else 1 << (self.win_length - 1).bit_length()

    @property
    def upper_hz(self) -> float:
        return self.f_max if self.f_max is not None else self.sample_rate / 2

    def n_samples(self, seconds: float) -> int:
        return int(round(seconds * self.sample_rate))

    def n_frames(self, seconds: float) -> int:
        """Frames of a clip of ``seconds`` (centred frames: one per hop, plus one)."""
        return 1 + self.n_samples(seconds) // self.hop_length


@dataclasses.dataclass(frozen=True)
class DataConfig(Config):
    """What a dataset is: source, clip length, synthesis options, splits, seed, front end.

    ``clips_per_class`` sizes the synthetic datasets (for ``events``: each class occurs in about
    that many clips); loaders use every file they find. ``val_fraction``/``test_fraction`` split
    the synthetic sets (by voice settings) and CSV folders without a split column (by a hash of
    the file name); ESC-50, FSD50K and Speech Commands use their official splits.
    ``test_clips`` sizes the synthetic test split on its own (spread evenly over the classes):
    a test split must resolve the differences compared on it (+-1 point needs thousands of
    clips), while the training split's size is a budget choice.
    ``snr_db`` sets how hard the synthetic sets are (:data:`SNR_PRESETS`).
    """

    kind: DatasetKind = DatasetKind.KEYWORDS
    path: str | None = None  # dataset root; required by the loader kinds, unused by synthetic ones
    clip_seconds: float = 3.0  # every clip is padded or cropped to this length
    snr_db: tuple[float, float] = (0.0, 20.0)  # foreground-to-background ratio range, dB
    clips_per_class: int = 250
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    test_clips: int | None = None  # synthetic sets: clips in the test split (None: test_fraction)
    seed: int = 0
    features: FeatureConfig = dataclasses.field(default_factory=FeatureConfig)

    def __post_init__(self) -> None:
        owner = "DataConfig"
        _floats(self, "clip_seconds", "val_fraction", "test_fraction")
        object.__setattr__(self, "kind", coerce_enum(owner, "kind", self.kind, DatasetKind))
        if self.kind.synthetic and self.path is not None:
            raise ConfigError(f"{owner}.path is only used by loader kinds, not kind={self.kind.value}")
        if not self.kind.synthetic and not self.path:
            raise ConfigError(f"{owner}.path is required for kind={self.kind.value}")
        if self.path is not None and not isinstance(self.path, str):
            object.__setattr__(self, "path", os.fspath(self.path))
        check_range(owner, "clip_seconds", self.clip_seconds, 0.1, 60.0)
        self._check_snr()
        check_range(owner, "clips_per_class", self.clips_per_class, 3, 1_000_000, integer=True)
        check_range(owner, "val_fraction", self.val_fraction, 0.01, 0.5)
        check_range(owner, "test_fraction", self.test_fraction, 0.01, 0.5)
        if self.test_clips is not None:
            if not self.kind.synthetic:
                raise ConfigError(f"{owner}.test_clips sizes generated data only; {self.kind.value} has its own split")
            check_range(owner, "test_clips", self.test_clips, 1, 1_000_000, integer=True)
        check_range(owner, "seed", self.seed, 0, 2**32 - 1, integer=True)
        if not isinstance(self.features, FeatureConfig):
            raise ConfigError(f"{owner}.features must be a FeatureConfig, got {type(self.features).__name__}")
        if self.features.n_frames(self.clip_seconds) * self.features.hop_length < self.features.win_length:
            raise ConfigError(f"{owner}.clip_seconds={self.clip_seconds} is shorter than one analysis window")

    def _check_snr(self) -> None:
        snr = self.snr_db
        if not isinstance(snr, (tuple, list)) or len(snr) != 2:
            raise ConfigError(f"DataConfig.snr_db must be a (low, high) pair in dB, got {snr!r}")
        for value in snr:
            check_range("DataConfig", "snr_db", value, -30.0, 60.0)
        if snr[0] > snr[1]:
            raise ConfigError(f"DataConfig.snr_db low must not exceed high, got {tuple(snr)!r}")
        object.__setattr__(self, "snr_db", (float(snr[0]), float(snr[1])))

    def split_sizes(self, total: int, n_classes: int = 1) -> dict[str, int]:
        """Examples per split of a synthetic set of ``total`` (per class: ``n_classes=1``)."""
        counts = split_counts(total, self.val_fraction, self.test_fraction)
        if self.test_clips is not None:
            counts["test"] = max(1, math.ceil(self.test_clips / n_classes))
        return counts

    @property
    def n_samples(self) -> int:
        """Samples per clip at the feature rate."""
        return self.features.n_samples(self.clip_seconds)

    @property
    def n_frames(self) -> int:
        return self.features.n_frames(self.clip_seconds)


SNR_PRESETS: dict[str, tuple[float, float]] = {
    "hard": (0.0, 20.0),  # the default: babble and coloured noise up to as loud as the word
    "clean": (10.0, 30.0),  # closer to Speech Commands' recording conditions
}
"""Named foreground-to-background ranges (dB) of the synthetic sets."""


def default_cache_dir() -> Path:
    """``$QBENCH_CACHE`` if set, else ``~/.cache/qbench``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "qbench"


def split_counts(total: int, val_fraction: float, test_fraction: float) -> dict[str, int]:
    """Examples per split for ``total >= 3`` examples: at least one in each split."""
    n_val = max(1, math.floor(total * val_fraction + 0.5))
    n_test = max(1, math.floor(total * test_fraction + 0.5))
    return {"train": total - n_val - n_test, "val": n_val, "test": n_test}
