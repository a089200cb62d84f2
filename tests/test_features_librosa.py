"""The log-mel front end against librosa, the field's reference implementation (issue 14, item 6).

qbench computes its own filterbank and STFT (a sparse product, no BLAS thread pool: see
``qbench/data/features.py``); these tests hold it to ``librosa.filters.mel(..., htk=True,
norm=None)`` (peak-1 HTK triangles, as qbench's) and ``librosa.feature.melspectrogram`` with
the same framing (centred frames, zero padding, periodic Hann of ``win_length`` centred in ``n_fft``).
"""

from __future__ import annotations

import numpy as np
import pytest

from qbench.data.config import FeatureConfig
from qbench.data.features import log_mel, mel_filterbank

librosa = pytest.importorskip("librosa")

# Filter weights are computed in float64 by both and stored as float32 by both: one float32 ulp
# of a weight <= 1, with room for the two libraries' different (equivalent) ramp arithmetic.
FILTERBANK_ATOL = 1e-6
# Log-mel of float32 STFTs: power agrees to float32 rounding of the FFT sums (relative ~1e-6 to
# 1e-5 across FFT implementations), i.e. ~1e-5 in the log; 1e-3 leaves room on quiet bins near
# the log floor, where the relative error of the power is largest.
LOG_MEL_ATOL = 1e-3
# Bins below the floor carry no information either way: compare only above this power.
AUDIBLE_POWER = 1e-4

CONFIGS = [
    FeatureConfig(),  # the default: 16 kHz, 40 bands, 25 ms window, 10 ms hop, n_fft 512
    FeatureConfig(n_mels=64, win_ms=32.0, hop_ms=16.0, f_min=50.0, f_max=7000.0),
    FeatureConfig(sample_rate=8000, n_mels=24, win_ms=20.0, hop_ms=10.0),
]


def _librosa_kwargs(fcfg: FeatureConfig) -> dict:
    return dict(sr=fcfg.sample_rate, n_fft=fcfg.fft_size, n_mels=fcfg.n_mels, fmin=fcfg.f_min,
                fmax=fcfg.upper_hz, htk=True, norm=None)


@pytest.mark.parametrize("fcfg", CONFIGS, ids=lambda c: f"{c.sample_rate}Hz-{c.n_mels}mels")
def test_mel_filterbank_matches_librosa_htk(fcfg: FeatureConfig) -> None:
    reference = librosa.filters.mel(**_librosa_kwargs(fcfg)).T  # (K, n_mels)
    ours = mel_filterbank(fcfg)
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, rtol=0, atol=FILTERBANK_ATOL)


@pytest.mark.parametrize("fcfg", CONFIGS, ids=lambda c: f"{c.sample_rate}Hz-{c.n_mels}mels")
def test_log_mel_matches_librosa_melspectrogram(fcfg: FeatureConfig) -> None:
    rng = np.random.default_rng(0)
    n = fcfg.sample_rate  # 1 s: a chirp in noise, so every band carries energy
    t = np.arange(n) / fcfg.sample_rate
    audio = (0.3 * np.sin(2 * np.pi * (100 + 3000 * t) * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)
    ours = log_mel(audio[None], fcfg)[0]  # (T, n_mels)
    power = librosa.feature.melspectrogram(
        y=audio, hop_length=fcfg.hop_length, win_length=fcfg.win_length, window="hann", center=True,
        pad_mode="constant", power=2.0, **_librosa_kwargs(fcfg)).T  # (T, n_mels)
    assert ours.shape == power.shape
    audible = power > AUDIBLE_POWER
    assert audible.mean() > 0.9
    reference = np.log(power + fcfg.log_floor)
    np.testing.assert_allclose(ours[audible], reference[audible], rtol=0, atol=LOG_MEL_ATOL)
