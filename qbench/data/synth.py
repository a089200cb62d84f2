"""Sound sources for the synthetic datasets: espeak-ng speech, coloured noise, babble.

Speech is synthesised in batches by a fresh espeak-ng worker (:mod:`qbench.data.espeak`
explains why) and kept in a :class:`SpeechBank`, trimmed and resampled to the feature rate.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

import numpy as np
import scipy.fft

from qbench.data.audio import resample
from qbench.data.espeak import ESPEAK_RATE, SynthesisError, Voice, synthesise
from qbench.errors import QbenchError

__all__ = ["ESPEAK_RATE", "NOISE_COLOURS", "SpeechBank", "Voice", "background", "babble", "coloured_noise", "rms"]


def trim_silence(audio: np.ndarray, threshold: float = 0.02) -> np.ndarray:
    """Drop leading/trailing samples quieter than ``threshold`` times the peak."""
    if audio.size == 0:
        return audio
    loud = np.flatnonzero(np.abs(audio) > threshold * np.abs(audio).max())
    return audio[loud[0] : loud[-1] + 1] if loud.size else audio[:0]


class SpeechBank:
    """Synthesised utterances at ``sample_rate``; each (text, voice) is synthesised once per bank.

    Call :meth:`prepare` with every utterance a build needs (in a fixed order, which fixes the
    audio), then :meth:`get` them while rendering clips.
    """

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._cache: dict[tuple[str, Voice], np.ndarray] = {}
        self.synthesised = 0

    def prepare(self, requests: Iterable[tuple[str, Voice]]) -> None:
        """Synthesise the requests not yet in the bank, in first-appearance order."""
        todo = [key for key in dict.fromkeys(requests) if key not in self._cache]
        try:
            raw = synthesise(todo)
        except SynthesisError as exc:
            raise QbenchError(str(exc)) from None
        for (text, voice), audio in zip(todo, raw):
            audio = self._normalise(audio)
            if audio.size == 0:  # every request is a real word: silence means a broken engine
                raise QbenchError(f"espeak-ng produced no audio for {text!r} in voice {voice}")
            self._cache[(text, voice)] = audio
        self.synthesised += len(todo)

    def _normalise(self, raw: np.ndarray) -> np.ndarray:
        audio = resample(trim_silence(raw.astype(np.float32) / 32768.0), ESPEAK_RATE, self.sample_rate)
        peak = np.abs(audio).max() if audio.size else 0.0
        if peak > 0:
            audio = audio / np.float32(peak)
        audio.setflags(write=False)
        return audio

    def get(self, text: str, voice: Voice) -> np.ndarray:
        """``(N,)`` float32 trimmed utterance, peak-normalised to 1 (read-only, shared)."""
        return self._cache[(text, voice)]


# Spectral slope of each noise colour: power spectral density ~ f ** exponent.
NOISE_COLOURS: dict[str, float] = {"white": 0.0, "pink": -1.0, "brown": -2.0, "blue": 1.0, "violet": 2.0}


def coloured_noise(rng: np.random.Generator, n: int, colour: str) -> np.ndarray:
    """``(n,)`` float32 Gaussian noise with the colour's spectral slope, unit RMS."""
    # A complex Gaussian spectrum is the rfft of white Gaussian noise; shaping it there
    # saves the forward FFT.
    spectrum = rng.standard_normal(2 * (n // 2 + 1), dtype=np.float32).view(np.complex64)
    spectrum *= _slope(n, colour)
    noise = scipy.fft.irfft(spectrum, n)  # float32
    noise /= np.float32(rms(noise) + 1e-12)
    return noise


@lru_cache(maxsize=64)
def _slope(n: int, colour: str) -> np.ndarray:
    """``(n // 2 + 1,)`` amplitude gains giving power ~ f ** exponent, zero at DC."""
    freqs = np.arange(n // 2 + 1, dtype=np.float32)
    freqs[0] = 1.0  # no infinite gain at DC for the red colours
    gains = freqs ** np.float32(NOISE_COLOURS[colour] / 2.0)
    gains[0] = 0.0
    gains.setflags(write=False)
    return gains


def rms(audio: np.ndarray) -> float:
    """Root mean square of a waveform (0 for an empty one)."""
    return float(np.sqrt(np.dot(audio, audio) / audio.size)) if audio.size else 0.0


def talker_stream(rng: np.random.Generator, utterances: list[np.ndarray], n: int, sample_rate: int) -> np.ndarray:
    """``(n,)`` one talker: random utterances back to back with 50-400 ms pauses, random phase."""
    out = np.zeros(n, dtype=np.float32)
    pos = -int(rng.integers(0, sample_rate))  # start mid-utterance so talkers do not align
    while pos < n:
        utt = utterances[int(rng.integers(len(utterances)))]
        lo, hi = max(pos, 0), min(pos + len(utt), n)
        if hi > lo:
            out[lo:hi] += utt[lo - pos : hi - pos]
        pos += len(utt) + int(rng.uniform(0.05, 0.4) * sample_rate)
    return out


def babble(rng: np.random.Generator, utterances: list[np.ndarray], n: int, sample_rate: int) -> np.ndarray:
    """``(n,)`` unit-RMS babble: 3-6 overlapping talkers at random levels within 6 dB."""
    talkers = int(rng.integers(3, 7))
    mix = np.zeros(n, dtype=np.float32)
    for _ in range(talkers):
        mix += talker_stream(rng, utterances, n, sample_rate) * np.float32(10 ** (rng.uniform(-6, 0) / 20))
    return mix / np.float32(rms(mix) + 1e-12)


def background(rng: np.random.Generator, n: int, babble_pool: list[np.ndarray] | None, sample_rate: int) -> np.ndarray:
    """``(n,)`` unit-RMS background: a random noise colour, mixed with babble half the time."""
    colours = sorted(NOISE_COLOURS)
    noise = coloured_noise(rng, n, colours[int(rng.integers(len(colours)))])
    if babble_pool and rng.random() < 0.5:
        talk = babble(rng, babble_pool, n, sample_rate)
        noise_db = rng.uniform(-20.0, 0.0)  # noise level relative to the babble
        noise = talk + noise * np.float32(10 ** (noise_db / 20))
        noise /= np.float32(rms(noise) + 1e-12)
    return noise
