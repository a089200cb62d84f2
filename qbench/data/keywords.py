"""Synthetic spoken keywords in noise: the 12-class Speech Commands task, voiced by espeak-ng.

Each clip is ``clip_seconds`` of background (a noise colour, half the time with babble of other
talkers) with one word at a random offset and a random SNR: one of the ten keywords, an
"unknown" word, or nothing ("silence"). Voices are dealt to splits by voice cell
(:mod:`qbench.data.voices`), and every clip draws from its own seeded generator, so a seed
fixes every sample.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from qbench.data.config import SPLITS, DataConfig
from qbench.data.features import part_of
from qbench.data.synth import SpeechBank, Voice, background, rms
from qbench.data.voices import split_voices

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN, SILENCE = "unknown", "silence"
CLASSES = KEYWORDS + (UNKNOWN, SILENCE)

# Speech Commands' auxiliary words plus near-rhymes of the keywords, which make "unknown" hard.
UNKNOWN_WORDS = (
    "bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow",
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "backward", "forward", "follow", "learn", "visual",
    "yet", "note", "cup", "town", "lift", "bright", "gone", "cough", "shop", "though", "goat", "yellow",
)

# Babble material: no phrase contains a keyword (a test guards it), so backgrounds never hold one.
BABBLE_PHRASES = (
    "the weather is nice today", "we should meet at the station", "i think she already knew",
    "could you pass the salt please", "they bought a new car last week", "this is the best coffee in town",
    "my brother lives near the river", "please call me when you arrive", "the meeting was very long",
    "what time does the shop close", "he forgot his keys again", "the children are playing outside",
    "a cup of tea would be lovely", "the train was late this morning", "i have never seen that film",
    "she works at the hospital", "we walked along the beach", "the garden needs some water",
    "that sounds like a good plan", "the kitchen smells of bread", "her sister plays the piano",
    "it was a quiet evening", "the students finished their project", "let me think about it",
)

BABBLE_POOL_SIZE = 32  # utterances per split that babble talkers draw from
LEVEL_DB = (-30.0, -3.0)  # peak level of a finished clip, dB full scale: gain augmentation


Request = tuple[str, Voice]  # (text, voice) for the speech bank
Clip = tuple[np.ndarray, int, tuple[int, int]]  # (audio (n_samples,), class index, keyword span in frames)


def babble_requests(voices: list[Voice], seed: int, split_index: int) -> list[Request]:
    """The babble utterances of one split, voiced only by that split's voices."""
    rng = np.random.default_rng([seed, split_index, 0xBAB])
    return [
        (BABBLE_PHRASES[int(rng.integers(len(BABBLE_PHRASES)))], voices[int(rng.integers(len(voices)))])
        for _ in range(BABBLE_POOL_SIZE)
    ]


def split_labels(cfg: DataConfig, split_index: int) -> np.ndarray:
    """``(n,)`` int64 class indices of one split: balanced, shuffled by the seed."""
    per_class = cfg.split_sizes(cfg.clips_per_class, len(CLASSES))[SPLITS[split_index]]
    labels = np.repeat(np.arange(len(CLASSES), dtype=np.int64), per_class)
    return np.random.default_rng([cfg.seed, split_index, 0x1AB]).permutation(labels)


def word_request(cfg: DataConfig, split_index: int, i: int, label: int, voices: list[Voice]) -> Request | None:
    """What clip ``i`` says: a keyword, an unknown word, or nothing, and in which voice."""
    if CLASSES[label] == SILENCE:
        return None
    # A stream of its own, so the words of a build are known before any audio is rendered.
    rng = np.random.default_rng([cfg.seed, split_index, i, 0x5A7])
    text = CLASSES[label] if label < len(KEYWORDS) else UNKNOWN_WORDS[int(rng.integers(len(UNKNOWN_WORDS)))]
    return text, voices[int(rng.integers(len(voices)))]


def place(audio: np.ndarray, word: np.ndarray, rng: np.random.Generator, snr_db: float) -> tuple[int, int]:
    """Add ``word`` at a random offset of unit-RMS ``audio`` (in place) at ``snr_db``; return its samples."""
    word = word[: len(audio)]
    start = int(rng.integers(0, len(audio) - len(word) + 1))
    # SNR over the word's own extent: the background is scaled, the word keeps its level.
    audio *= np.float32(rms(word) / 10 ** (snr_db / 20))
    audio[start : start + len(word)] += word
    return start, start + len(word)


def keyword_clip(cfg: DataConfig, word: np.ndarray | None, rng: np.random.Generator,
                 pool: list[np.ndarray]) -> tuple[np.ndarray, tuple[int, int]]:
    """One ``(n_samples,)`` float32 clip holding ``word`` (None: silence) and its span in frames."""
    audio = background(rng, cfg.n_samples, pool, cfg.features.sample_rate)
    span = (-1, -1)
    if word is not None:
        start, stop = place(audio, word, rng, rng.uniform(*cfg.snr_db))
        hop = cfg.features.hop_length
        span = (start // hop, min(stop // hop + 1, cfg.n_frames))
    peak = np.abs(audio).max()
    audio *= np.float32(10 ** (rng.uniform(*LEVEL_DB) / 20) / max(peak, 1e-9))
    return audio, span


def plan_split(cfg: DataConfig, split: str) -> tuple[np.ndarray, list[Request], list[Request | None]]:
    """One split's labels ``(n,)``, babble utterances, and each clip's word (None for silence)."""
    index = SPLITS.index(split)
    voices = split_voices(cfg.seed, cfg.val_fraction, cfg.test_fraction)[split]
    labels = split_labels(cfg, index)
    words = [word_request(cfg, index, i, int(label), voices) for i, label in enumerate(labels)]
    return labels, babble_requests(voices, cfg.seed, index), words


def speech_requests(cfg: DataConfig, split: str) -> list[Request]:
    """Every utterance one split needs, in the order that fixes their audio: babble, then words."""
    _, babble, words = plan_split(cfg, split)
    return babble + [w for w in words if w is not None]


def keyword_clips(cfg: DataConfig, split: str, bank: SpeechBank,
                  part: tuple[int, int] = (0, 1)) -> tuple[int, Iterator[Clip]]:
    """Clip count and a generator of ``(audio (n_samples,), class index, span)`` for one split, or for
    part ``k`` of ``n`` of its clips (``part = (k, n)``, :func:`~qbench.data.features.part_of`; each clip draws
    from its own generator, so a part's clips are the whole split's)."""
    index = SPLITS.index(split)
    labels, babble, words = plan_split(cfg, split)
    todo = range(len(labels))[part_of(len(labels), *part)]

    def clips() -> Iterator[Clip]:
        bank.prepare(babble + [w for w in words if w is not None])  # a no-op when the build prepared it all
        pool = [bank.get(*request) for request in babble]
        for i in todo:
            word = None if words[i] is None else bank.get(*words[i])
            audio, span = keyword_clip(cfg, word, np.random.default_rng([cfg.seed, index, i]), pool)
            yield audio, int(labels[i]), span

    return len(todo), clips()
