"""DataConfig / FeatureConfig: validation naming the field, JSON round trip, cache keys."""

from __future__ import annotations

import pytest

from qbench.data import DataConfig, DatasetKind, FeatureConfig
from qbench.errors import ConfigError, QbenchError


def test_defaults_describe_the_keyword_task():
    cfg = DataConfig()
    assert cfg.kind is DatasetKind.KEYWORDS
    assert cfg.clip_seconds == 3.0
    assert cfg.features.sample_rate == 16000 and cfg.features.n_mels == 40
    assert cfg.features.win_length == 400 and cfg.features.hop_length == 160 and cfg.features.fft_size == 512
    assert cfg.n_frames == 301


def test_round_trip_json_keeps_nested_features_and_enum():
    cfg = DataConfig(kind="csv", path="/data/x", clip_seconds=2, snr_db=(-5, 10), seed=7,
                     features=FeatureConfig(n_mels=64, hop_ms=20.0, f_max=7000.0))
    back = DataConfig.from_json(cfg.to_json())
    assert back == cfg
    assert back.kind is DatasetKind.CSV
    assert isinstance(back.snr_db, tuple) and back.features.n_mels == 64
    assert back.key() == cfg.key()


def test_key_changes_with_the_feature_config():
    assert DataConfig().key() != DataConfig(features=FeatureConfig(n_mels=41)).key()
    assert DataConfig().key() != DataConfig(seed=1).key()
    assert DataConfig().key() == DataConfig().key()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"clip_seconds": 0.0}, "clip_seconds"),
        ({"snr_db": (10.0, 0.0)}, "snr_db"),
        ({"snr_db": (0.0,)}, "snr_db"),
        ({"clips_per_class": 2}, "clips_per_class"),
        ({"val_fraction": 0.9}, "val_fraction"),
        ({"seed": -1}, "seed"),
        ({"kind": "mp3s"}, "kind"),
        ({"kind": "esc50"}, "path"),
        ({"path": "/somewhere"}, "path"),  # synthetic kinds take no path
    ],
)
def test_bad_data_config_names_the_field(changes, field):
    with pytest.raises(ConfigError, match=rf"DataConfig\.{field}"):
        DataConfig(**changes)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"n_mels": 0}, "n_mels"),
        ({"sample_rate": 1000}, "sample_rate"),
        ({"hop_ms": 30.0}, "hop_ms"),
        ({"n_fft": 256}, "n_fft"),  # shorter than the 400-sample window
        ({"f_max": 9000.0}, "f_max"),  # above Nyquist
        ({"f_min": 8000.0}, "f_max"),  # no band left between f_min and Nyquist
    ],
)
def test_bad_feature_config_names_the_field(changes, field):
    with pytest.raises(ConfigError, match=rf"FeatureConfig\.{field}"):
        FeatureConfig(**changes)


def test_config_errors_are_user_errors():
    with pytest.raises(QbenchError):
        DataConfig(clip_seconds=-1.0)
