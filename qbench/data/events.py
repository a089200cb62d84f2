"""Synthetic acoustic events: a multi-label task with acoustically distinct classes.

Each clip is ``clip_seconds`` of coloured noise with 0-3 events at random onsets, each at its
own SNR from ``DataConfig.snr_db``; events may overlap, and a class may occur twice. Every
event draws its parameters (pitch, rate, length, envelope) at random, so a class is a family
of sounds, not one template. Speech events use the split's own espeak-ng voices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from qbench.data.config import SPLITS, DataConfig
from qbench.data.features import part_of
from qbench.data.keywords import BABBLE_PHRASES
from qbench.data.synth import NOISE_COLOURS, SpeechBank, Voice, coloured_noise, rms
from qbench.data.voices import split_voices

EVENTS_PER_CLIP = (0, 1, 1, 2, 2, 2, 3, 3)  # drawn uniformly: mean 1.75, some clips hold nothing
LEVEL_DB = (-30.0, -3.0)  # peak level of a finished clip, dB full scale

Rng = np.random.Generator


def _fade(n: int, sr: int, ms: float = 5.0) -> np.ndarray:
    """``(n,)`` gain with short raised-cosine ramps, so tonal events start without a click."""
    k = max(1, min(n // 2, int(sr * ms / 1000)))
    env = np.ones(n, dtype=np.float32)
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, k, dtype=np.float32))
    env[:k], env[n - k :] = ramp, ramp[::-1]
    return env


def alarm(rng: Rng, sr: int) -> np.ndarray:
    """Beeping square-ish tone (odd harmonics), 0.6-2 s, 4-10 beeps per second at most."""
    f0, on, off = rng.uniform(700, 2500), rng.uniform(0.08, 0.25), rng.uniform(0.05, 0.2)
    t = np.arange(int(rng.uniform(0.6, 2.0) * sr), dtype=np.float32) / sr
    tone = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in (1, 3, 5) if f0 * k < sr / 2)
    gate = (np.mod(t, on + off) < on).astype(np.float32)
    return tone * gate * _fade(len(t), sr)


def siren(rng: Rng, sr: int) -> np.ndarray:
    """Slowly wailing tone: centre 500-1500 Hz, deviation 150-500 Hz at 0.4-3 Hz, 1-3 s."""
    fc, dev, fm = rng.uniform(500, 1500), rng.uniform(150, 500), rng.uniform(0.4, 3.0)
    t = np.arange(int(rng.uniform(1.0, 3.0) * sr), dtype=np.float32) / sr
    phase = 2 * np.pi * fc * t - dev / fm * np.cos(2 * np.pi * fm * t + rng.uniform(0, 2 * np.pi))
    return (np.sin(phase) + 0.3 * np.sin(2 * phase)) * _fade(len(t), sr)


def chirps(rng: Rng, sr: int) -> np.ndarray:
    """Bird-like trill: 2-7 fast sweeps (30-120 ms) between 2 and 7 kHz, all rising or falling."""
    up = rng.random() < 0.5
    out = []
    for _ in range(int(rng.integers(2, 8))):
        t = np.arange(int(rng.uniform(0.03, 0.12) * sr), dtype=np.float32) / sr
        f_a, f_b = sorted(rng.uniform(2000, min(7000, 0.45 * sr), size=2))
        f_a, f_b = (f_a, f_b) if up else (f_b, f_a)
        inst = f_a + (f_b - f_a) * t / t[-1]
        out.append(np.sin(2 * np.pi * np.cumsum(inst) / sr) * np.hanning(len(t)))
        out.append(np.zeros(int(rng.uniform(0.02, 0.1) * sr)))  # gap before the next sweep
    return np.concatenate(out).astype(np.float32)


def knocks(rng: Rng, sr: int) -> np.ndarray:
    """2-8 impulsive knocks: damped resonance (150-1200 Hz, 5-30 ms decay) plus a click, 80-300 ms apart."""
    f_res, decay = rng.uniform(150, 1200), rng.uniform(0.005, 0.03)
    t = np.arange(int(6 * decay * sr) + 1, dtype=np.float32) / sr
    click = 0.5 * rng.standard_normal(len(t)) * np.exp(-t / 0.002)
    hit = np.exp(-t / decay) * (np.sin(2 * np.pi * f_res * t) + click)
    gaps = (rng.uniform(0.08, 0.3, size=int(rng.integers(2, 9))) * sr).astype(int)
    out = np.zeros(int(gaps.sum()) + len(hit), dtype=np.float32)
    for start in np.concatenate([[0], np.cumsum(gaps)[:-1]]):
        out[start : start + len(hit)] += hit * rng.uniform(0.5, 1.0)
    return out


def engine(rng: Rng, sr: int) -> np.ndarray:
    """Engine-like hum: 30-120 Hz harmonic series, amplitude-modulated at 4-25 Hz, 1-3.5 s."""
    f0, fm, depth = rng.uniform(30, 120), rng.uniform(4, 25), rng.uniform(0.3, 0.9)
    t = np.arange(int(rng.uniform(1.0, 3.5) * sr), dtype=np.float32) / sr
    harmonics = [k for k in range(1, 16) if k * f0 < sr / 2]
    hum = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) / k**0.7 for k in harmonics)
    am = 1 - depth * (0.5 + 0.5 * np.sin(2 * np.pi * fm * t))
    return hum * am * _fade(len(t), sr, ms=50)


def noise_burst(rng: Rng, sr: int) -> np.ndarray:
    """Hiss: band-pass noise (centre 1-6 kHz, 0.3-1 octave), 0.2-1.2 s, sharp attack, slow decay."""
    n = int(rng.uniform(0.2, 1.2) * sr)
    centre = rng.uniform(1000, min(6000, 0.4 * sr))
    half = 2 ** (rng.uniform(0.3, 1.0) / 2)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / sr)
    spectrum[(freqs < centre / half) | (freqs > centre * half)] = 0
    t = np.arange(n, dtype=np.float32) / n
    return (np.fft.irfft(spectrum, n) * np.exp(-3 * t) * _fade(n, sr, ms=3)).astype(np.float32)


EventFn = Callable[[Rng, int], np.ndarray]
SOUND_EVENTS: dict[str, EventFn] = {
    "alarm": alarm, "siren": siren, "chirps": chirps, "knocks": knocks, "engine": engine, "noise_burst": noise_burst,
}
CLASSES = tuple(SOUND_EVENTS) + ("speech",)


def n_clips(cfg: DataConfig) -> int:
    """Clips of the whole set, so that each class occurs in about ``clips_per_class`` clips."""
    mean_events = float(np.mean(EVENTS_PER_CLIP))
    return max(3, int(np.ceil(cfg.clips_per_class * len(CLASSES) / mean_events)))


Request = tuple[str, Voice]
Clip = tuple[np.ndarray, np.ndarray, None]  # (audio (n_samples,), multi-hot (C,), no span)
Plan = list[tuple[int, Request | None]]  # per event: class index, and for speech what is said


def plan_clip(cfg: DataConfig, split_index: int, i: int, voices: list[Voice]) -> Plan:
    """The events of clip ``i``: classes, and text and voice of speech events."""
    # A stream of its own, so a build's utterances are known before any audio is rendered.
    rng = np.random.default_rng([cfg.seed, split_index, i, 0xE7E])
    plan = []
    for _ in range(EVENTS_PER_CLIP[int(rng.integers(len(EVENTS_PER_CLIP)))]):
        label = int(rng.integers(len(CLASSES)))
        speech = None
        if CLASSES[label] == "speech":
            speech = (BABBLE_PHRASES[int(rng.integers(len(BABBLE_PHRASES)))], voices[int(rng.integers(len(voices)))])
        plan.append((label, speech))
    return plan


def event_clip(cfg: DataConfig, plan: Plan, rng: Rng, bank: SpeechBank) -> tuple[np.ndarray, np.ndarray]:
    """``(n_samples,)`` float32 clip of the planned events and its ``(C,)`` float32 multi-hot target."""
    sr, n = cfg.features.sample_rate, cfg.n_samples
    colours = sorted(NOISE_COLOURS)
    audio = coloured_noise(rng, n, colours[int(rng.integers(len(colours)))])
    target = np.zeros(len(CLASSES), dtype=np.float32)
    for label, speech in plan:
        sound = bank.get(*speech) if speech else SOUND_EVENTS[CLASSES[label]](rng, sr).astype(np.float32, copy=False)
        sound = sound[:n]
        start = int(rng.integers(0, n - len(sound) + 1))
        # Background is unit RMS, so the event's gain alone sets its SNR.
        gain = 10 ** (rng.uniform(*cfg.snr_db) / 20) / (rms(sound) + 1e-12)
        audio[start : start + len(sound)] += np.float32(gain) * sound
        target[label] = 1.0
    audio *= np.float32(10 ** (rng.uniform(*LEVEL_DB) / 20) / max(np.abs(audio).max(), 1e-9))
    return audio, target


def plan_split(cfg: DataConfig, split: str) -> list[Plan]:
    """The events of every clip of one split."""
    index = SPLITS.index(split)
    voices = split_voices(cfg.seed, cfg.val_fraction, cfg.test_fraction)[split]
    count = cfg.split_sizes(n_clips(cfg))[split]
    return [plan_clip(cfg, index, i, voices) for i in range(count)]


def speech_requests(cfg: DataConfig, split: str) -> list[Request]:
    """Every utterance one split's speech events need, in clip order."""
    return [speech for plan in plan_split(cfg, split) for _, speech in plan if speech]


def event_clips(cfg: DataConfig, split: str, bank: SpeechBank,
                part: tuple[int, int] = (0, 1)) -> tuple[int, Iterator[Clip]]:
    """Clip count and a generator of ``(audio (n_samples,), multi-hot (C,), None)`` for one split, or
    for part ``k`` of ``n`` of its clips (``part = (k, n)``)."""
    index = SPLITS.index(split)
    plans = plan_split(cfg, split)
    todo = range(len(plans))[part_of(len(plans), *part)]

    def clips() -> Iterator[Clip]:
        bank.prepare(speech for plan in plans for _, speech in plan if speech)  # a no-op when the build did
        for i in todo:
            # Distinct stream tag from the keyword set, so the two sets never share draws.
            audio, target = event_clip(cfg, plans[i], np.random.default_rng([cfg.seed, index, i, 0xE7]), bank)
            yield audio, target, None

    return len(todo), clips()
