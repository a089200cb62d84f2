"""build_dataset: a DataConfig in, a FeatureDataset out, cached on disk by the config's key."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from qbench.data import events, keywords
from qbench.data.config import SPLITS, DataConfig, DatasetKind, default_cache_dir
from qbench.data.features import featurize
from qbench.data.loaders import Index, check_coverage, clips, index_dataset
from qbench.data.synth import SpeechBank
from qbench.data.types import FeatureDataset, SkippedClip, Split
from qbench.files import atomic_write

# A synthetic dataset is computed in parts of at least this many clips (``build_dataset(jobs=...)``):
# a worker's start and its copy of the build's speech synthesis cost about what a few hundred clips do.
PART_MIN_CLIPS = 1000

# Bump when generation or feature code changes what a config produces, to retire old caches.
CACHE_FORMAT = 2

log = logging.getLogger("qbench.data")

# Synthetic kinds: classes, multi-label or not, the per-split clip stream, the speech it needs.
SYNTHETIC = {
    DatasetKind.KEYWORDS: (keywords.CLASSES, False, keywords.keyword_clips, keywords.speech_requests),
    DatasetKind.EVENTS: (events.CLASSES, True, events.event_clips, events.speech_requests),
}


def build_dataset(cfg: DataConfig, *, cache_dir: Path | str | None = None, progress: bool = True,
                  jobs: int = 1) -> FeatureDataset:
    """Features of the dataset ``cfg`` describes, loaded from the cache or computed and cached.

    Every split holds ``(N, T, F)`` float32 log-mel frames with ``T = cfg.n_frames`` and
    ``F = cfg.features.n_mels``. Raises :class:`~qbench.errors.QbenchError` on bad input
    (missing folder, bad metadata, missing files, a class without examples); undecodable
    files inside a good dataset are skipped and listed in ``skipped``. ``jobs`` > 1 computes a
    synthetic dataset in up to that many processes at once (:func:`_compute_parts`; parts of at least
    :data:`PART_MIN_CLIPS` clips), the same arrays.
    """
    start = time.perf_counter()
    index = None if cfg.kind.synthetic else index_dataset(cfg)
    path = cache_path(cfg, Path(cache_dir) if cache_dir is not None else default_cache_dir(), index)
    dataset = load_npz(path, cfg)
    if dataset is None:
        parts = 1 if index is not None else min(jobs, _clip_count(cfg) // PART_MIN_CLIPS)
        dataset = _compute_parts(cfg, parts, progress) if parts > 1 else _compute(cfg, index, progress)
        try:
            save_npz(path, dataset)
        except OSError as exc:  # the features are fine; only the next run pays again
            log.warning("could not write the feature cache %s (%s)", path, exc)
    else:
        dataset = dataclasses.replace(dataset, from_cache=True)
    if dataset.skipped:
        first = dataset.skipped[0]
        log.warning("skipped %d unreadable clip(s), first %s: %s", len(dataset.skipped), first.path, first.reason)
    return dataclasses.replace(dataset, build_seconds=time.perf_counter() - start)


def cache_path(cfg: DataConfig, cache_dir: Path, index: Index | None = None) -> Path:
    """Cache file of ``cfg``; loader datasets add a fingerprint of their files, so edits rebuild."""
    tag = "" if index is None else f"-{index.fingerprint()}"
    return cache_dir / "data" / f"{cfg.kind.value}-{cfg.key()}{tag}-f{CACHE_FORMAT}.npz"


def _compute(cfg: DataConfig, index: Index | None, progress: bool, part: tuple[int, int] = (0, 1)) -> FeatureDataset:
    """The dataset ``cfg`` computed here; for a synthetic one, only part ``k`` of ``n`` of each split
    (``part = (k, n)``, see :func:`qbench.data.features.part_of`)."""
    skipped: list[SkippedClip] = []
    if index is None:
        classes, multilabel, source, requests = SYNTHETIC[cfg.kind]
        bank = SpeechBank(cfg.features.sample_rate)  # one bank per build: each word/voice synthesised once
        # One espeak worker per build, asked for every utterance in the same order even for a part: what
        # espeak-ng says depends on what it said before (qbench.data.espeak).
        bank.prepare(r for split in SPLITS for r in requests(cfg, split))
        streams = {split: source(cfg, split, bank, part) for split in SPLITS}
    else:
        classes, multilabel = index.classes, index.multilabel
        streams = {split: (len(index.items[split]), clips(index, split, cfg, skipped)) for split in SPLITS}
    splits = {
        split: _collect(cfg, count, stream, multilabel=multilabel, n_classes=len(classes),
                        desc=f"{cfg.kind.value} {split}", progress=progress)
        for split, (count, stream) in streams.items()
    }
    if index is not None:  # skipping may have emptied a split or a class
        check_coverage(index.source, classes, {s: _label_sets(splits[s], classes, multilabel) for s in SPLITS})
    return FeatureDataset(cfg, tuple(classes), multilabel, splits["train"], splits["val"], splits["test"],
                          tuple(skipped))


def _compute_parts(cfg: DataConfig, jobs: int, progress: bool) -> FeatureDataset:
    """The synthetic dataset ``cfg`` computed in ``jobs`` parts at once: this process computes the
    first, spawned workers the others; their splits are joined in order. Every part synthesises all of
    the build's speech (a few seconds per thousand utterances) and renders and featurizes its clips.
    ``worker_seconds`` says what the workers spent."""
    from concurrent.futures.process import BrokenProcessPool

    from qbench.pool import worker_pool

    with worker_pool(jobs - 1) as pool:
        futures = [pool.submit(_timed_part, cfg, (k, jobs)) for k in range(1, jobs)]
        parts = [_compute(cfg, None, progress, (0, jobs))]
        seconds = 0.0
        for k, future in enumerate(futures, start=1):
            try:
                part, elapsed = future.result()
            except BrokenProcessPool:  # a worker killed from outside: compute its part here
                log.warning("a dataset worker died; computing its part (%d of %d) here", k + 1, jobs)
                part, elapsed = _compute(cfg, None, progress, (k, jobs)), 0.0
            parts.append(part)
            seconds += elapsed
    splits = {name: _join([p.splits()[name] for p in parts]) for name in SPLITS}
    return FeatureDataset(cfg, parts[0].classes, parts[0].multilabel, splits["train"], splits["val"], splits["test"],
                          worker_seconds=seconds)


def _join(parts: list[Split]) -> Split:
    """One split from its parts, in order (an empty part has no spans, as an empty split has none)."""
    spans = [p.spans for p in parts if len(p)]
    return Split(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]),
                 np.concatenate(spans) if spans and all(s is not None for s in spans) else None)


def _clip_count(cfg: DataConfig) -> int:
    """Clips in the synthetic dataset ``cfg`` (planned, none rendered)."""
    _, _, source, _ = SYNTHETIC[cfg.kind]
    return sum(source(cfg, split, SpeechBank(cfg.features.sample_rate))[0] for split in SPLITS)


def _timed_part(cfg: DataConfig, part: tuple[int, int]) -> tuple[FeatureDataset, float]:
    """A worker's :func:`_compute` of ``part``, and its seconds."""
    start = time.perf_counter()
    return _compute(cfg, None, False, part), time.perf_counter() - start


def _collect(cfg: DataConfig, count: int, stream: Iterator, *, multilabel: bool, n_classes: int, desc: str,
             progress: bool) -> Split:
    """Featurise one split's ``(audio, target, span)`` stream into a :class:`Split`."""
    from tqdm import tqdm

    targets, spans = [], []

    def audio() -> Iterator[np.ndarray]:
        for clip, target, span in tqdm(stream, total=count, desc=desc, unit="clip", file=sys.stderr,
                                       disable=not progress, leave=False):
            targets.append(target)
            spans.append(span)
            yield clip

    x = featurize(audio(), count, cfg.features, cfg.n_samples)
    if multilabel:
        y = np.stack(targets).astype(np.float32) if targets else np.zeros((0, n_classes), np.float32)
    else:
        y = np.asarray(targets, dtype=np.int64)
    has_spans = bool(spans) and all(span is not None for span in spans)
    return Split(x, y, np.asarray(spans, dtype=np.int64) if has_spans else None)


def _label_sets(split: Split, classes: tuple[str, ...], multilabel: bool) -> list[set[str]]:
    if multilabel:
        return [{classes[c] for c in np.flatnonzero(row)} for row in split.y]
    return [{classes[c]} for c in split.y]


def save_npz(path: Path, dataset: FeatureDataset) -> None:
    """Write a dataset to one ``.npz`` atomically (temp file + rename): readers never see half a file."""
    arrays = {}
    for name, split in dataset.splits().items():
        arrays[f"{name}_x"], arrays[f"{name}_y"] = split.x, split.y
        if split.spans is not None:
            arrays[f"{name}_spans"] = split.spans
    meta = {
        "config": dataset.config.to_dict(),
        "classes": list(dataset.classes),
        "multilabel": dataset.multilabel,
        "skipped": [dataclasses.asdict(s) for s in dataset.skipped],
    }
    arrays["meta"] = np.array(json.dumps(meta))
    # Uncompressed float32: a cache hit is bit-identical to a fresh build, and log-mel noise
    # floors compress poorly anyway.
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_npz(path: Path, cfg: DataConfig | None = None) -> FeatureDataset | None:
    """The dataset saved at ``path``, or None when absent, unreadable or made from another config."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            config = DataConfig.from_dict(meta["config"])
            if cfg is not None and config != cfg:
                return None
            splits = {
                name: Split(data[f"{name}_x"], data[f"{name}_y"],
                            data[f"{name}_spans"] if f"{name}_spans" in data.files else None)
                for name in SPLITS
            }
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        log.warning("ignoring unreadable cache file %s (%s); rebuilding", path, exc)
        return None
    skipped = tuple(SkippedClip(**s) for s in meta["skipped"])
    return FeatureDataset(config, tuple(meta["classes"]), bool(meta["multilabel"]), splits["train"], splits["val"],
                          splits["test"], skipped)
