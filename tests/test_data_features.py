"""Log-mel front end: frame counts, filterbank shape, a pure tone landing in its band."""

from __future__ import annotations

import numpy as np
import pytest

from qbench.data import FeatureConfig
from qbench.data.features import featurize, hz_to_mel, log_mel, mel_band_edges, mel_filterbank
from qbench.errors import ConfigError

SR = 16000


def tone(freq: float, seconds: float = 0.5, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize(("seconds", "frames"), [(1.0, 101), (3.0, 301), (0.5, 51)])
def test_frames_per_clip(seconds, frames):
    fcfg = FeatureConfig()
    assert fcfg.n_frames(seconds) == frames
    x = log_mel(np.zeros((2, fcfg.n_samples(seconds)), np.float32), fcfg)
    assert x.shape == (2, frames, 40) and x.dtype == np.float32


def test_silence_sits_at_the_log_floor():
    fcfg = FeatureConfig(log_floor=1e-4)
    x = log_mel(np.zeros((1, SR), np.float32), fcfg)
    np.testing.assert_allclose(x, np.log(1e-4), rtol=1e-6)


def test_filterbank_is_triangular_and_covers_the_band():
    fcfg = FeatureConfig()
    fb = mel_filterbank(fcfg)
    assert fb.shape == (257, 40)
    assert fb.min() >= 0 and fb.max() <= 1 + 1e-6
    assert np.all(fb.max(axis=0) > 0.5)  # every band has a bin near its peak
    bins = np.fft.rfftfreq(512, 1 / SR)
    inside = (bins > fcfg.f_min + 40) & (bins < SR / 2 - 40)
    assert np.all(fb[inside].sum(axis=1) > 0)  # no gap between neighbouring bands
    centres = mel_band_edges(fcfg)[1:-1]
    np.testing.assert_allclose(np.diff(hz_to_mel(centres)), np.diff(hz_to_mel(centres))[0], rtol=1e-9)


@pytest.mark.parametrize("freq", [250.0, 1000.0, 3100.0, 6500.0])
def test_a_pure_tone_peaks_in_the_band_centred_nearest_it(freq):
    fcfg = FeatureConfig()
    x = log_mel(tone(freq)[None], fcfg)[0]  # (T, F)
    centres = mel_band_edges(fcfg)[1:-1]
    expected = int(np.argmin(np.abs(hz_to_mel(centres) - hz_to_mel(freq))))
    assert int(np.argmax(x[5:-5].mean(axis=0))) == expected
    # Far bands carry the window's leakage only: at least 60 dB (ln 10^6 ~ 13.8) below the peak band.
    profile = x[5:-5].mean(axis=0)
    far = np.abs(np.arange(40) - expected) > 6
    assert profile[expected] - profile[far].max() > 13.8


def test_too_many_mels_for_the_fft_is_a_config_error():
    with pytest.raises(ConfigError, match="FeatureConfig.n_mels=200 is too many for n_fft=512"):
        FeatureConfig(n_mels=200, n_fft=512, f_min=0.0)
    assert FeatureConfig(n_mels=200, n_fft=2048, f_min=0.0).fft_size == 2048  # a finer FFT resolves them


def test_featurize_batches_match_one_call():
    fcfg = FeatureConfig()
    rng = np.random.default_rng(0)
    clips = rng.standard_normal((37, 8000)).astype(np.float32)  # not a multiple of the batch size
    np.testing.assert_allclose(featurize(iter(clips), 37, fcfg, 8000), log_mel(clips, fcfg), rtol=1e-5, atol=1e-5)
    assert featurize(iter(clips[:5]), 37, fcfg, 8000).shape == (5, 51, 40)  # fewer yielded than announced
