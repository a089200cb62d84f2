"""The grid of espeak-ng voice settings and its split: every voice cell belongs to one split.

A *cell* is (accent + variant, pitch band, speed band). Each cell holds a few concrete
:class:`~qbench.data.synth.Voice` settings (two pitches x two speeds x two pitch ranges inside
its bands). Cells, not clips, are dealt to train/val/test, so a test voice never speaks in
training -- not even in the babble.
"""

from __future__ import annotations

import itertools

import numpy as np

from qbench.data.config import SPLITS, split_counts
from qbench.data.synth import Voice

ACCENTS = ("en", "en-us", "en-gb-scotland", "en-029")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m7", "f1", "f2", "f3", "f4", "Andy", "Denis", "belinda",
            "croak", "klatt3", "whisper")
# espeak-ng pitch is 0-99 (50 is the voice's own base pitch); speed is words per minute.
PITCH_BANDS = {"low": (22, 34), "mid": (46, 58), "high": (70, 84)}
SPEED_BANDS = {"slow": (125, 145), "normal": (165, 190), "fast": (215, 250)}
PITCH_RANGES = (25, 75)

Cell = tuple[str, str, str]  # (voice name, pitch band, speed band)


def all_cells() -> list[Cell]:
    """Every voice cell, in a fixed order."""
    names = [f"{accent}+{variant}" for accent in ACCENTS for variant in VARIANTS]
    return list(itertools.product(names, PITCH_BANDS, SPEED_BANDS))


def cell_voices(cell: Cell) -> list[Voice]:
    """The concrete voice settings of a cell (2 pitches x 2 speeds x 2 pitch ranges)."""
    name, pitch_band, speed_band = cell
    return [
        Voice(name=name, pitch=pitch, range=rng, rate=rate)
        for pitch in PITCH_BANDS[pitch_band]
        for rate in SPEED_BANDS[speed_band]
        for rng in PITCH_RANGES
    ]


def split_cells(seed: int, val_fraction: float, test_fraction: float) -> dict[str, list[Cell]]:
    """Deal the cells to the splits at random (fixed by ``seed``); disjoint, covering all cells."""
    cells = all_cells()
    order = np.random.default_rng([seed, 0x70CE]).permutation(len(cells))
    counts = split_counts(len(cells), val_fraction, test_fraction)
    out, start = {}, 0
    for split in ("test", "val", "train"):
        out[split] = [cells[i] for i in order[start : start + counts[split]]]
        start += counts[split]
    return {split: out[split] for split in SPLITS}


def split_voices(seed: int, val_fraction: float, test_fraction: float) -> dict[str, list[Voice]]:
    """The voice settings each split may use."""
    return {
        split: [voice for cell in cells for voice in cell_voices(cell)]
        for split, cells in split_cells(seed, val_fraction, test_fraction).items()
    }
