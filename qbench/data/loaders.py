"""Indexes of recordings users bring: ESC-50, FSD50K, Speech Commands v2, and a labels.csv folder.

An index lists every clip with its labels and split, after checking the layout: a missing
folder, a metadata file without the expected columns, a file named but absent, or a class
without examples raises :class:`~qbench.errors.QbenchError` naming the file. Decoding happens
later (:func:`clips`); a file that fails to decode there is skipped and reported, not fatal.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from qbench.data.audio import AUDIO_SUFFIXES, UnreadableAudio, load_audio
from qbench.data.config import SPLITS, DataConfig, DatasetKind
from qbench.data.types import SkippedClip
from qbench.errors import QbenchError

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test",
               "testing": "test", "eval": "test"}


@dataclasses.dataclass(frozen=True)
class Item:
    """One recording: its file, its label names, its split."""

    path: Path
    labels: tuple[str, ...]
    split: str


@dataclasses.dataclass(frozen=True)
class Index:
    """Every clip of a dataset folder, checked: classes in target order and items per split."""

    source: Path  # the metadata file (or folder) that errors and skips refer to
    classes: tuple[str, ...]
    multilabel: bool
    items: dict[str, list[Item]]

    def target(self, item: Item) -> int | np.ndarray:
        """Class index (single-label) or ``(C,)`` float32 multi-hot (multi-label)."""
        if not self.multilabel:
            return self.classes.index(item.labels[0])
        hot = np.zeros(len(self.classes), dtype=np.float32)
        hot[[self.classes.index(label) for label in item.labels]] = 1.0
        return hot

    def fingerprint(self) -> str:
        """Hash of the listing and each file's size and mtime, so edited data misses the cache."""
        h = hashlib.sha256()
        for split in SPLITS:
            for item in self.items[split]:
                st = item.path.stat()
                h.update(f"{item.path}|{'|'.join(item.labels)}|{split}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return h.hexdigest()[:16]


def _root(cfg: DataConfig) -> Path:
    root = Path(cfg.path).expanduser()
    if not root.exists():
        raise QbenchError(f"dataset folder {root} does not exist")
    if not root.is_dir():
        raise QbenchError(f"dataset path {root} is not a folder")
    if not any(root.iterdir()):
        raise QbenchError(f"dataset folder {root} is empty")
    return root


def read_table(path: Path, *, required: dict[str, tuple[str, ...]]) -> list[dict[str, str]]:
    """Rows of a CSV file, with each ``required`` column renamed from the first alias present."""
    if not path.is_file():
        raise QbenchError(f"{path} does not exist")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [name.strip() for name in reader.fieldnames or []]
            rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise QbenchError(f"{path} is not a readable UTF-8 CSV file ({exc})") from None
    rename = {}
    for column, aliases in required.items():
        found = next((a for a in aliases if a in header), None)
        if found is None:
            found = ", ".join(header) or "none"
            raise QbenchError(f"{path}: no {column!r} column (looked for {', '.join(aliases)}; found {found})")
        rename[column] = found
    if not rows:
        raise QbenchError(f"{path} lists no clips")
    return [{**row, **{column: row[alias] for column, alias in rename.items()}} for row in rows]


def split_labels(field: str) -> tuple[str, ...]:
    """Label names of one CSV field: separated by ';' if it has any, else by ','."""
    sep = ";" if ";" in field else ","
    return tuple(dict.fromkeys(label.strip() for label in field.split(sep) if label.strip()))


def hash_split(name: str, val_fraction: float, test_fraction: float) -> str:
    """A split fixed by the file name alone, so adding files never moves existing ones."""
    u = int.from_bytes(hashlib.sha1(name.encode()).digest()[:8], "big") / 2**64
    return "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"


def _finish(source: Path, items: list[Item], classes: tuple[str, ...] | None = None) -> Index:
    missing = [item.path for item in items if not item.path.is_file()]
    if missing:
        raise QbenchError(f"{source} names {len(missing)} missing audio file(s), first: {missing[0]}")
    found = tuple(sorted({label for item in items for label in item.labels}))
    by_split = {split: [item for item in items if item.split == split] for split in SPLITS}
    index = Index(source, classes or found, any(len(item.labels) > 1 for item in items), by_split)
    check_coverage(source, index.classes, {s: [set(i.labels) for i in by_split[s]] for s in SPLITS})
    return index


def check_coverage(source: Path | str, classes: tuple[str, ...], labels: dict[str, list[set[str]]]) -> None:
    """Raise unless every split has clips and every class has at least one training clip."""
    for split in SPLITS:
        if not labels[split]:
            raise QbenchError(f"{source}: the {split} split has no clips")
    seen = set().union(*labels["train"])
    absent = [c for c in classes if c not in seen]
    if absent:
        raise QbenchError(f"{source}: class {absent[0]!r} has no training examples ({len(absent)} such classes)")


def index_esc50(cfg: DataConfig) -> Index:
    """ESC-50: meta/esc50.csv (filename, fold, category[, target]) and audio/; folds 1-3/4/5."""
    root = _root(cfg)
    meta = root / "meta" / "esc50.csv"
    rows = read_table(meta, required={"filename": ("filename",), "fold": ("fold",), "category": ("category",)})
    fold_split = {"1": "train", "2": "train", "3": "train", "4": "val", "5": "test"}
    items = []
    for row in rows:
        if row["fold"] not in fold_split:
            raise QbenchError(f"{meta}: fold must be 1-5, got {row['fold']!r} for {row['filename']}")
        items.append(Item(root / "audio" / row["filename"], (row["category"],), fold_split[row["fold"]]))
    if all(row.get("target", "").isdigit() for row in rows):  # keep ESC-50's own class numbering
        classes = tuple(name for _, name in sorted({(int(r["target"]), r["category"]) for r in rows}))
    else:
        classes = None
    return _finish(meta, items, classes)


def index_fsd50k(cfg: DataConfig) -> Index:
    """FSD50K: ground_truth/dev.csv (fname, labels, split train/val) and eval.csv (test)."""
    root = _root(cfg)
    truth = root / "FSD50K.ground_truth"
    required = {"fname": ("fname",), "labels": ("labels",)}
    items = []
    for row in read_table(truth / "dev.csv", required={**required, "split": ("split",)}):
        split = SPLIT_NAMES.get(row["split"].lower())
        if split not in ("train", "val"):
            raise QbenchError(f"{truth / 'dev.csv'}: split must be train or val, got {row['split']!r}")
        items.append(Item(root / "FSD50K.dev_audio" / f"{row['fname']}.wav", split_labels(row["labels"]), split))
    for row in read_table(truth / "eval.csv", required=required):
        items.append(Item(root / "FSD50K.eval_audio" / f"{row['fname']}.wav", split_labels(row["labels"]), "test"))
    index = _finish(truth, items)
    return dataclasses.replace(index, multilabel=True)  # FSD50K is multi-label even if a subset is not


def index_speechcommands(cfg: DataConfig) -> Index:
    """Speech Commands v2: one folder per word; validation_list.txt / testing_list.txt pick val/test.

    Folders starting with ``_`` (``_background_noise_``) are not classes. Without the lists,
    files are split by a hash of the speaker id in their name, as the dataset itself was.
    """
    root = _root(cfg)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    if not folders:
        raise QbenchError(f"{root} holds no class folders (expected one folder of wavs per word)")
    listed = {}
    for split, name in (("val", "validation_list.txt"), ("test", "testing_list.txt")):
        lst = root / name
        if lst.is_file():
            names = [line.strip() for line in lst.read_text().splitlines() if line.strip()]
            missing = [n for n in names if not (root / n).is_file()]
            if missing:
                raise QbenchError(f"{lst} names {len(missing)} missing audio file(s), first: {missing[0]}")
            listed.update(dict.fromkeys(names, split))
    items = []
    for folder in folders:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
        if not files:
            raise QbenchError(f"class folder {folder} holds no audio files")
        for path in files:
            split = listed.get(f"{folder.name}/{path.name}", "train")
            if not listed:  # hash the speaker ("<speaker>_nohash_<n>.wav"), so no voice spans two splits
                split = hash_split(path.name.split("_nohash_")[0], cfg.val_fraction, cfg.test_fraction)
            items.append(Item(path, (folder.name,), split))
    return _finish(root, items, tuple(f.name for f in folders))


def index_csv(cfg: DataConfig) -> Index:
    """A folder with labels.csv: file, labels (';' or ',' separated), optional split column."""
    root = _root(cfg)
    table = root / "labels.csv"
    columns = {"file": ("file", "filename", "path", "fname"), "labels": ("labels", "label")}
    rows = read_table(table, required=columns)
    items = []
    for line, row in enumerate(rows, start=2):
        labels = split_labels(row["labels"])
        if not labels:
            raise QbenchError(f"{table}:{line}: no label for {row['file']}")
        raw_split = row.get("split", "")
        if raw_split:
            split = SPLIT_NAMES.get(raw_split.lower())
        else:
            split = hash_split(row["file"], cfg.val_fraction, cfg.test_fraction)
        if split is None:
            raise QbenchError(f"{table}:{line}: split must be train, val or test, got {raw_split!r}")
        items.append(Item(root / row["file"], labels, split))
    return _finish(table, items)


INDEXERS: dict[DatasetKind, Callable[[DataConfig], Index]] = {
    DatasetKind.ESC50: index_esc50,
    DatasetKind.FSD50K: index_fsd50k,
    DatasetKind.SPEECHCOMMANDS: index_speechcommands,
    DatasetKind.CSV: index_csv,
}


def index_dataset(cfg: DataConfig) -> Index:
    """The checked index of ``cfg.path`` in the layout ``cfg.kind`` names."""
    return INDEXERS[cfg.kind](cfg)


def detect_format(path: Path) -> DatasetKind:
    """Guess a folder's layout from its metadata files (for the CLI's optional --dataset-format)."""
    if (path / "meta" / "esc50.csv").is_file():
        return DatasetKind.ESC50
    if (path / "FSD50K.ground_truth").is_dir():
        return DatasetKind.FSD50K
    if (path / "labels.csv").is_file():
        return DatasetKind.CSV
    if (path / "validation_list.txt").is_file() or (path / "testing_list.txt").is_file():
        return DatasetKind.SPEECHCOMMANDS
    raise QbenchError(f"cannot tell the layout of {path}: pass --dataset-format esc50|fsd50k|speechcommands|csv")


def clips(index: Index, split: str, cfg: DataConfig,
          skipped: list[SkippedClip]) -> Iterator[tuple[np.ndarray, Any, None]]:
    """``(audio (n_samples,), target, None)`` of one split's decodable files; others go to ``skipped``."""
    for item in index.items[split]:
        try:
            audio = load_audio(item.path, cfg.features.sample_rate, cfg.n_samples)
        except UnreadableAudio as exc:
            skipped.append(SkippedClip(str(item.path), str(exc)))
            continue
        yield audio, index.target(item), None
