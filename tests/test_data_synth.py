"""Synthetic keywords and events: determinism, voice-disjoint splits, labels, spans, the cache."""

from __future__ import annotations

import re

import numpy as np
import pytest

from qbench.data import DataConfig, build_dataset
from qbench.data import dataset as dataset_module
from qbench.data import events, keywords
from qbench.data.espeak import ESPEAK_RATE, synthesise
from qbench.data.features import BATCH, part_of
from qbench.data.synth import NOISE_COLOURS, SpeechBank, Voice, coloured_noise
from qbench.data.voices import SPLITS, all_cells, cell_voices, split_cells
from qbench.errors import QbenchError

TINY = DataConfig(clip_seconds=1.0, clips_per_class=3)
TINY_EVENTS = DataConfig(kind="events", clip_seconds=1.5, clips_per_class=4)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_dataset(TINY, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)


def test_espeak_worker_speaks_reproducibly():
    requests = [("yes", Voice("en+m3", 50, 50, 175)), ("the weather is nice", Voice("en+f2", 70, 25, 230)),
                ("yes", Voice("en+m3", 50, 50, 175))]
    first, second = synthesise(requests), synthesise(requests)
    assert [a.dtype for a in first] == [np.int16] * 3
    assert 0.1 * ESPEAK_RATE < len(first[0]) < 2 * ESPEAK_RATE and len(first[1]) > len(first[0])
    assert np.abs(first[0]).max() > 1000
    for a, b in zip(first, second):  # a fresh engine per call: the same requests, the same samples
        np.testing.assert_array_equal(a, b)


def test_an_unknown_voice_is_a_one_line_user_error():
    bank = SpeechBank(16000)
    with pytest.raises(QbenchError, match="espeak-ng worker failed: espeak-ng has no voice 'zz-nope'") as exc:
        bank.prepare([("yes", Voice("zz-nope", 50, 50, 175))])
    assert "\n" not in str(exc.value)


def test_speech_bank_synthesises_each_word_and_voice_once():
    bank = SpeechBank(16000)
    voice = Voice("en+f2", 60, 40, 200)
    bank.prepare([("stop", voice), ("stop", voice)])
    first = bank.get("stop", voice)
    assert bank.synthesised == 1
    bank.prepare([("stop", voice), ("stop", Voice("en+f2", 60, 40, 140))])
    assert bank.synthesised == 2 and bank.get("stop", voice) is first
    assert np.abs(first).max() == pytest.approx(1.0) and first.dtype == np.float32


def test_same_seed_same_arrays_and_other_seed_differs(tiny, tmp_path):
    again = build_dataset(TINY, cache_dir=tmp_path / "fresh", progress=False)
    assert not again.from_cache
    for name in SPLITS:
        np.testing.assert_array_equal(again.splits()[name].x, tiny.splits()[name].x)
        np.testing.assert_array_equal(again.splits()[name].y, tiny.splits()[name].y)
    other = build_dataset(TINY.replace(seed=1), cache_dir=tmp_path / "fresh", progress=False)
    assert not np.allclose(other.train.x, tiny.train.x)


def test_keyword_dataset_shape_classes_and_balance(tiny):
    assert tiny.classes == keywords.CLASSES and len(tiny.classes) == 12 and not tiny.multilabel
    assert (tiny.n_frames, tiny.n_mels) == (101, 40)
    for split in tiny.splits().values():
        assert split.x.dtype == np.float32 and split.y.dtype == np.int64
        assert np.all(np.bincount(split.y, minlength=12) == len(split) // 12)
    assert [len(s) for s in tiny.splits().values()] == [12, 12, 12]  # 3 per class: 1/1/1


def test_keyword_spans_lie_inside_the_clip_and_only_silence_has_none(tiny):
    silence = keywords.CLASSES.index("silence")
    for split in tiny.splits().values():
        spans, y = split.spans, split.y
        assert np.all(spans[y == silence] == -1)
        spoken = spans[y != silence]
        assert np.all(spoken[:, 0] >= 0) and np.all(spoken[:, 1] <= tiny.n_frames)
        assert np.all(spoken[:, 1] - spoken[:, 0] >= 10)  # a word lasts at least 100 ms


def test_the_keyword_is_louder_than_its_surroundings_at_high_snr(tmp_path):
    cfg = TINY.replace(snr_db=(30.0, 30.0))
    train = build_dataset(cfg, cache_dir=tmp_path, progress=False).train
    gaps = []
    for x, (on, off) in zip(train.x, train.spans):
        if on >= 0 and off - on < 80:  # leave room around the word
            inside = x[on:off].mean()
            outside = np.concatenate([x[:on], x[off:]]).mean()
            gaps.append(inside - outside)
    assert gaps and np.median(gaps) > 1.0  # natural-log mel units: the span marks the word


class _RecordingBank(SpeechBank):
    def __init__(self) -> None:
        super().__init__(16000)
        self.voices: list[Voice] = []

    def get(self, text, voice):
        self.voices.append(voice)
        return super().get(text, voice)


@pytest.mark.parametrize("source", [keywords.keyword_clips, events.event_clips])
def test_splits_are_disjoint_by_voice_cell(source):
    kind = "keywords" if source is keywords.keyword_clips else "events"
    # Enough clips that val and test of the events set hold speech events too.
    cfg = DataConfig(kind=kind, clip_seconds=0.5, clips_per_class=10 if kind == "keywords" else 60)
    cells = split_cells(cfg.seed, cfg.val_fraction, cfg.test_fraction)
    owner = {voice: split for split in SPLITS for cell in cells[split] for voice in cell_voices(cell)}
    for split in SPLITS:
        bank = _RecordingBank()
        for _ in source(cfg, split, bank)[1]:
            pass
        assert bank.voices, "no speech synthesised"
        assert {owner[v] for v in bank.voices} == {split}  # babble and words alike


def test_voice_cells_partition_the_grid():
    cells = split_cells(0, 0.1, 0.1)
    flat = [c for split in SPLITS for c in cells[split]]
    assert sorted(flat) == sorted(all_cells()) and len(set(flat)) == len(flat)
    assert all(cells[s] for s in SPLITS)
    assert split_cells(1, 0.1, 0.1) != cells


def test_babble_never_says_a_keyword():
    for phrase in keywords.BABBLE_PHRASES:
        assert not set(re.findall(r"[a-z]+", phrase)) & set(keywords.KEYWORDS), phrase
    assert not set(keywords.UNKNOWN_WORDS) & set(keywords.KEYWORDS)


@pytest.mark.parametrize("colour", sorted(NOISE_COLOURS))
def test_noise_colours_have_their_spectral_slope(colour):
    noise = coloured_noise(np.random.default_rng(0), 1 << 16, colour)
    assert noise.dtype == np.float32 and np.sqrt(np.mean(noise**2)) == pytest.approx(1.0, rel=1e-4)
    power = np.abs(np.fft.rfft(noise)) ** 2
    octaves = [power[(1 << k) : (1 << (k + 1))].mean() for k in (6, 12)]  # two bands 6 octaves apart
    slope_db_per_octave = 10 * np.log10(octaves[1] / octaves[0]) / 6
    assert slope_db_per_octave == pytest.approx(3.01 * NOISE_COLOURS[colour], abs=0.6)


def test_events_are_multilabel_and_deterministic(tmp_path):
    ds = build_dataset(TINY_EVENTS, cache_dir=tmp_path, progress=False)
    assert ds.multilabel and ds.classes == events.CLASSES
    y = np.concatenate([s.y for s in ds.splits().values()])
    assert y.dtype == np.float32 and y.shape[1] == len(events.CLASSES) and set(np.unique(y)) <= {0.0, 1.0}
    assert (y.sum(axis=1) >= 2).any() and y.sum(axis=0).min() > 0
    assert ds.train.spans is None
    again = build_dataset(TINY_EVENTS, cache_dir=tmp_path / "other", progress=False)
    np.testing.assert_array_equal(again.test.x, ds.test.x)


@pytest.mark.parametrize("name", sorted(events.SOUND_EVENTS))
def test_each_event_generator_makes_finite_varied_sound(name):
    make = events.SOUND_EVENTS[name]
    a, b = make(np.random.default_rng(1), 16000), make(np.random.default_rng(2), 16000)
    assert np.all(np.isfinite(a)) and 0.03 * 16000 < len(a) < 4 * 16000 and np.abs(a).max() > 0.1
    assert len(a) != len(b) or not np.allclose(a, b)  # parameters are random, not a template


def test_second_build_loads_from_the_cache(tiny, tmp_path, monkeypatch):
    build_dataset(TINY, cache_dir=tmp_path, progress=False)
    files = list((tmp_path / "data").glob("*.npz"))
    assert len(files) == 1 and TINY.key() in files[0].name
    mtime = files[0].stat().st_mtime_ns

    def no_recompute(*args, **kwargs):
        raise AssertionError("features recomputed despite a cache hit")

    monkeypatch.setattr(dataset_module, "featurize", no_recompute)
    cached = build_dataset(TINY, cache_dir=tmp_path, progress=False)
    assert cached.from_cache and files[0].stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(cached.val.x, tiny.val.x)
    np.testing.assert_array_equal(cached.val.spans, tiny.val.spans)
    with pytest.raises(AssertionError, match="recomputed"):  # another config misses the cache
        build_dataset(TINY.replace(seed=5), cache_dir=tmp_path, progress=False)


def test_a_corrupt_cache_file_is_rebuilt(tmp_path):
    first = build_dataset(TINY, cache_dir=tmp_path, progress=False)
    (path,) = (tmp_path / "data").glob("*.npz")
    path.write_bytes(b"not a zip")
    again = build_dataset(TINY, cache_dir=tmp_path, progress=False)
    assert not again.from_cache
    np.testing.assert_array_equal(again.train.x, first.train.x)
    assert not list((tmp_path / "data").glob(".*tmp"))  # no temp files left behind


def test_cache_dir_defaults_to_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("QBENCH_CACHE", str(tmp_path / "env-cache"))
    build_dataset(TINY, progress=False)
    assert list((tmp_path / "env-cache" / "data").glob("keywords-*.npz"))


@pytest.mark.parametrize("count", [0, 1, 15, 16, 17, 100, 2401])
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_parts_partition_a_split_at_batch_boundaries(count, n):
    parts = [part_of(count, k, n) for k in range(n)]
    assert [i for p in parts for i in range(count)[p]] == list(range(count))  # each clip once, in order
    assert all(p.start % BATCH == 0 or p.start == count for p in parts)  # a part's batches are the build's


@pytest.mark.parametrize("cfg", [TINY.replace(clips_per_class=8), TINY_EVENTS], ids=["keywords", "events"])
def test_a_dataset_built_in_parts_is_the_one_process_build(cfg, tmp_path, monkeypatch):
    whole = build_dataset(cfg, cache_dir=tmp_path / "one", progress=False)
    monkeypatch.setattr(dataset_module, "PART_MIN_CLIPS", 1)
    parts = build_dataset(cfg, cache_dir=tmp_path / "three", progress=False, jobs=3)
    assert parts.worker_seconds > 0 and whole.worker_seconds == 0  # two workers computed parts
    for name, split in whole.splits().items():
        theirs = parts.splits()[name]
        np.testing.assert_array_equal(theirs.x, split.x, err_msg=name)
        np.testing.assert_array_equal(theirs.y, split.y, err_msg=name)
        assert (split.spans is None) == (theirs.spans is None)
        if split.spans is not None:
            np.testing.assert_array_equal(theirs.spans, split.spans)
    assert build_dataset(cfg, cache_dir=tmp_path / "three", progress=False).from_cache  # cached as any build


def test_small_datasets_are_built_in_one_process(tmp_path, monkeypatch):
    def no_parts(*args, **kwargs):
        raise AssertionError("a small dataset was split into parts")

    monkeypatch.setattr(dataset_module, "_compute_parts", no_parts)
    assert build_dataset(TINY, cache_dir=tmp_path, progress=False, jobs=4).worker_seconds == 0
