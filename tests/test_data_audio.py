"""Decoding: wav/flac/ogg, resampling from 44.1 and 8 kHz, stereo mixdown, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from qbench.data.audio import UnreadableAudio, fit_length, load_audio, resample

SR = 16000


def tone(freq: float, rate: int, seconds: float = 0.5, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(audio: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / rate)[np.argmax(spectrum)])


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg"])
def test_decodes_each_container(tmp_path, suffix):
    path = tmp_path / f"tone{suffix}"
    sf.write(path, tone(1000.0, SR), SR)
    audio = load_audio(path, SR, SR // 2)
    assert audio.shape == (SR // 2,) and audio.dtype == np.float32
    assert abs(peak_hz(audio, SR) - 1000.0) <= 4.0  # one FFT bin of a 0.5 s clip is 2 Hz
    # Lossless containers give the samples back to 16-bit precision; Vorbis is lossy.
    atol = 0.05 if suffix == ".ogg" else 1e-4
    np.testing.assert_allclose(audio[1000:7000], tone(1000.0, SR)[1000:7000], atol=atol)


@pytest.mark.parametrize("rate", [44100, 8000])
def test_resamples_to_the_feature_rate(tmp_path, rate):
    path = tmp_path / "tone.wav"
    sf.write(path, tone(440.0, rate, seconds=1.0), rate)
    audio = load_audio(path, SR, SR)
    assert audio.shape == (SR,)
    assert abs(peak_hz(audio, SR) - 440.0) <= 2.0
    # Amplitude survives the polyphase filter (away from the edges).
    assert abs(np.abs(audio[2000:-2000]).max() - 0.5) < 0.02


def test_stereo_is_mixed_down_to_the_channel_mean(tmp_path):
    left, right = tone(500.0, SR), tone(2000.0, SR, amp=0.2)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), SR, subtype="FLOAT")
    audio = load_audio(path, SR, len(left))
    np.testing.assert_allclose(audio, (left + right) / 2, atol=1e-6)


def test_long_files_are_cropped_and_short_ones_zero_padded(tmp_path):
    long_path, short_path = tmp_path / "long.wav", tmp_path / "short.wav"
    sf.write(long_path, tone(300.0, 44100, seconds=5.0), 44100)
    sf.write(short_path, tone(300.0, SR, seconds=0.25), SR)
    assert load_audio(long_path, SR, SR).shape == (SR,)
    short = load_audio(short_path, SR, SR)
    assert short.shape == (SR,) and np.all(short[SR // 4 :] == 0) and np.abs(short[: SR // 4]).max() > 0.4


def test_fit_length_and_identity_resample():
    x = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(fit_length(x, 4), x[:4])
    np.testing.assert_array_equal(fit_length(x, 12)[10:], [0, 0])
    np.testing.assert_array_equal(resample(x, SR, SR), x)
    assert resample(np.zeros(441), 44100, SR).shape == (160,)


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "zero-length"), (b"RIFF\x10\x00\x00\x00WAVEnot really audio at all", "unreadable")],
)
def test_bad_files_raise_unreadable_audio(tmp_path, content, reason):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(UnreadableAudio, match=reason):
        load_audio(path, SR, SR)


def test_a_header_without_samples_is_unreadable(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, np.float32), SR)
    with pytest.raises(UnreadableAudio, match="no audio samples"):
        load_audio(path, SR, SR)
