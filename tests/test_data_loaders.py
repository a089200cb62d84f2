"""Loaders on small fixture folders: ESC-50, FSD50K, Speech Commands, labels.csv; bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from qbench.data import DataConfig, build_dataset
from qbench.data.loaders import detect_format, hash_split, index_dataset, split_labels
from qbench.errors import QbenchError

SECONDS = 0.5
FREQS = {"dog": 300.0, "rain": 1200.0, "bird": 3000.0, "yes": 500.0, "no": 2000.0}


def write_tone(path: Path, freq: float, rate: int = 16000, seconds: float = 0.4, channels: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(rate * seconds)) / rate
    audio = 0.3 * np.sin(2 * np.pi * freq * t)
    sf.write(path, np.repeat(audio[:, None], channels, axis=1) if channels > 1 else audio, rate)


def write_bad(path: Path, kind: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"" if kind == "empty" else b"RIFF$\x00\x00\x00WAVEfmt garbage, not audio")


def build(kind: str, root: Path, cache: Path, **options):
    return build_dataset(DataConfig(kind=kind, path=str(root), clip_seconds=SECONDS, **options), cache_dir=cache,
                         progress=False)


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# ESC-50 ---------------------------------------------------------------------------------------------


def make_esc50(root: Path) -> None:
    """Two classes (rain is target 0, dog target 1) in folds 1-5, plus a corrupt and an empty file."""
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    for fold in range(1, 6):
        for target, category in ((0, "rain"), (1, "dog")):
            name = f"{fold}-{category}.wav"
            write_tone(root / "audio" / name, FREQS[category], rate=44100, channels=2)
            rows.append(f"{name},{fold},{target},{category},False,x,A")
    write_bad(root / "audio" / "1-corrupt.wav", "corrupt")
    write_bad(root / "audio" / "2-empty.wav", "empty")
    rows += ["1-corrupt.wav,1,1,dog,False,x,A", "2-empty.wav,2,0,rain,False,x,A"]
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")


def test_esc50_splits_by_fold_and_skips_bad_files(tmp_path):
    make_esc50(tmp_path / "esc")
    ds = build("esc50", tmp_path / "esc", tmp_path / "cache")
    assert ds.classes == ("rain", "dog") and not ds.multilabel  # ESC-50's own target order
    assert [len(s) for s in ds.splits().values()] == [6, 2, 2]  # folds 1-3 / 4 / 5, bad files out
    assert ds.train.x.shape == (6, 51, 40) and ds.train.y.dtype == np.int64
    assert sorted(Path(s.path).name for s in ds.skipped) == ["1-corrupt.wav", "2-empty.wav"]
    assert any("zero-length" in s.reason for s in ds.skipped)
    assert ds.summary()["skipped"] == 2
    # The 300 Hz dog tone and the 1.2 kHz rain tone peak in different mel bands.
    peak = {ds.classes[y]: int(np.argmax(x.mean(axis=0))) for x, y in zip(ds.test.x, ds.test.y)}
    assert peak["dog"] < peak["rain"]


def test_esc50_fold_out_of_range_names_the_file(tmp_path):
    make_esc50(tmp_path / "esc")
    meta = tmp_path / "esc" / "meta" / "esc50.csv"
    meta.write_text(meta.read_text().replace("5-dog.wav,5,", "5-dog.wav,9,"))
    with pytest.raises(QbenchError, match="esc50.csv: fold must be 1-5") as exc:
        build("esc50", tmp_path / "esc", tmp_path / "cache")
    one_line(exc)


# FSD50K ---------------------------------------------------------------------------------------------


def make_fsd50k(root: Path) -> None:
    truth = root / "FSD50K.ground_truth"
    truth.mkdir(parents=True)
    dev = [("1", "Bark,Dog", "train"), ("2", "Rain", "train"), ("3", "Bird", "train"), ("4", "Bark", "val"),
           ("5", "Rain,Bird", "val")]
    lines = ["fname,labels,mids,split"] + [f'{f},"{labels}","/m/x",{split}' for f, labels, split in dev]
    (truth / "dev.csv").write_text("\n".join(lines) + "\n")
    (truth / "eval.csv").write_text('fname,labels,mids\n10,"Dog,Rain","/m/x"\n11,Bird,/m/y\n')
    for fname, *_ in dev:
        write_tone(root / "FSD50K.dev_audio" / f"{fname}.wav", 440.0 * int(fname), rate=44100)
    for fname in ("10", "11"):
        write_tone(root / "FSD50K.eval_audio" / f"{fname}.wav", 700.0)


def test_fsd50k_is_multilabel_with_quoted_label_lists(tmp_path):
    make_fsd50k(tmp_path / "fsd")
    ds = build("fsd50k", tmp_path / "fsd", tmp_path / "cache")
    assert ds.multilabel and ds.classes == ("Bark", "Bird", "Dog", "Rain")
    assert [len(s) for s in ds.splits().values()] == [3, 2, 2]
    assert ds.train.y.dtype == np.float32 and ds.train.y.shape == (3, 4)
    np.testing.assert_array_equal(ds.train.y[0], [1, 0, 1, 0])  # "Bark,Dog"
    np.testing.assert_array_equal(ds.test.y[0], [0, 0, 1, 1])  # "Dog,Rain"


def test_fsd50k_without_eval_csv_names_it(tmp_path):
    make_fsd50k(tmp_path / "fsd")
    (tmp_path / "fsd" / "FSD50K.ground_truth" / "eval.csv").unlink()
    with pytest.raises(QbenchError, match="eval.csv does not exist"):
        build("fsd50k", tmp_path / "fsd", tmp_path / "cache")


# Speech Commands ------------------------------------------------------------------------------------


def make_speechcommands(root: Path) -> None:
    for word in ("yes", "no"):
        for i in range(4):
            write_tone(root / word / f"spk{i}_nohash_0.wav", FREQS[word], seconds=1.0)
    write_tone(root / "_background_noise_" / "white_noise.wav", 100.0, seconds=2.0)
    (root / "validation_list.txt").write_text("yes/spk1_nohash_0.wav\nno/spk1_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("yes/spk2_nohash_0.wav\nno/spk2_nohash_0.wav\n")
    (root / "LICENSE").write_text("cc-by")


def test_speechcommands_uses_its_lists_and_ignores_background_noise(tmp_path):
    make_speechcommands(tmp_path / "sc")
    ds = build("speechcommands", tmp_path / "sc", tmp_path / "cache")
    assert ds.classes == ("no", "yes")
    assert [len(s) for s in ds.splits().values()] == [4, 2, 2]
    assert sorted(ds.val.y.tolist()) == [0, 1]


def test_speechcommands_list_naming_a_missing_file(tmp_path):
    make_speechcommands(tmp_path / "sc")
    (tmp_path / "sc" / "testing_list.txt").write_text("yes/ghost.wav\n")
    with pytest.raises(QbenchError, match=r"testing_list.txt names 1 missing audio file\(s\), first: yes/ghost.wav"):
        build("speechcommands", tmp_path / "sc", tmp_path / "cache")


def test_speechcommands_class_without_examples(tmp_path):
    make_speechcommands(tmp_path / "sc")
    (tmp_path / "sc" / "stop").mkdir()
    with pytest.raises(QbenchError, match="class folder .*stop holds no audio files") as exc:
        build("speechcommands", tmp_path / "sc", tmp_path / "cache")
    one_line(exc)


# labels.csv -----------------------------------------------------------------------------------------


def make_csv_folder(root: Path, rows: list[str], header: str = "file,labels,split") -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "labels.csv").write_text("\n".join([header, *rows]) + "\n")


def test_csv_with_split_column_single_label_flac_and_ogg(tmp_path):
    root = tmp_path / "mine"
    rows = []
    for i, (label, split) in enumerate([("dog", "train"), ("bird", "train"), ("dog", "val"), ("bird", "test"),
                                        ("dog", "test"), ("bird", "validation")]):
        name = f"clips/{i}.{'flac' if i % 2 else 'ogg'}"
        write_tone(root / name, FREQS[label], rate=8000)
        rows.append(f"{name},{label},{split}")
    write_bad(root / "clips" / "broken.wav", "corrupt")
    rows.append("clips/broken.wav,dog,train")
    make_csv_folder(root, rows)
    ds = build("csv", root, tmp_path / "cache")
    assert ds.classes == ("bird", "dog") and not ds.multilabel
    assert [len(s) for s in ds.splits().values()] == [2, 2, 2] and len(ds.skipped) == 1


def test_csv_without_split_column_is_multilabel_and_hash_split(tmp_path):
    root = tmp_path / "mine"
    labels = ["dog;bird", "rain", "dog", "bird,rain"]
    rows = []
    for i in range(40):
        write_tone(root / f"{i:02d}.wav", 200.0 + 50 * i, seconds=0.2)
        rows.append(f'{i:02d}.wav,"{labels[i % 4]}"')
    make_csv_folder(root, rows, header="file,labels")
    ds = build("csv", root, tmp_path / "cache")
    assert ds.multilabel and ds.classes == ("bird", "dog", "rain")
    expected = {s: sum(hash_split(f"{i:02d}.wav", 0.1, 0.1) == s for i in range(40)) for s in ("train", "val", "test")}
    assert {name: len(s) for name, s in ds.splits().items()} == expected
    assert ds.train.y.sum(axis=1).max() == 2  # "dog;bird" and "bird,rain" rows


def test_csv_naming_a_missing_file(tmp_path):
    root = tmp_path / "mine"
    write_tone(root / "a.wav", 300.0)
    make_csv_folder(root, ["a.wav,dog,train", "gone.wav,dog,val"])
    with pytest.raises(QbenchError, match=r"labels.csv names 1 missing audio file\(s\), first: .*gone.wav") as exc:
        build("csv", root, tmp_path / "cache")
    one_line(exc)


def test_csv_unknown_label_column(tmp_path):
    root = tmp_path / "mine"
    write_tone(root / "a.wav", 300.0)
    make_csv_folder(root, ["a.wav,dog"], header="file,tags")
    with pytest.raises(QbenchError, match=r"labels.csv: no 'labels' column .*found file, tags") as exc:
        build("csv", root, tmp_path / "cache")
    one_line(exc)


def test_csv_class_without_training_examples(tmp_path):
    root = tmp_path / "mine"
    for name in "abc":
        write_tone(root / f"{name}.wav", 300.0)
    make_csv_folder(root, ["a.wav,dog,train", "b.wav,dog,val", "c.wav,cat,test"])
    with pytest.raises(QbenchError, match="labels.csv: class 'cat' has no training examples"):
        build("csv", root, tmp_path / "cache")


def test_csv_where_skipping_empties_a_class(tmp_path):
    root = tmp_path / "mine"
    for name in "abc":
        write_tone(root / f"{name}.wav", 300.0)
    write_bad(root / "d.wav", "empty")
    make_csv_folder(root, ["a.wav,dog,train", "b.wav,dog,val", "c.wav,cat,test", "d.wav,cat,train"])
    with pytest.raises(QbenchError, match="class 'cat' has no training examples"):
        build("csv", root, tmp_path / "cache")


def test_csv_bad_split_value(tmp_path):
    root = tmp_path / "mine"
    write_tone(root / "a.wav", 300.0)
    make_csv_folder(root, ["a.wav,dog,holdout"])
    with pytest.raises(QbenchError, match=r"labels.csv:2: split must be train, val or test, got 'holdout'"):
        build("csv", root, tmp_path / "cache")


# Any loader -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["esc50", "fsd50k", "speechcommands", "csv"])
def test_missing_path(tmp_path, kind):
    with pytest.raises(QbenchError, match=r"dataset folder .*nowhere does not exist") as exc:
        build(kind, tmp_path / "nowhere", tmp_path / "cache")
    one_line(exc)


@pytest.mark.parametrize("kind", ["esc50", "fsd50k", "speechcommands", "csv"])
def test_empty_folder(tmp_path, kind):
    (tmp_path / "empty").mkdir()
    with pytest.raises(QbenchError, match=r"dataset folder .*empty is empty"):
        build(kind, tmp_path / "empty", tmp_path / "cache")


def test_edited_data_misses_the_cache(tmp_path):
    make_speechcommands(tmp_path / "sc")
    first = build("speechcommands", tmp_path / "sc", tmp_path / "cache")
    assert build("speechcommands", tmp_path / "sc", tmp_path / "cache").from_cache
    write_tone(tmp_path / "sc" / "yes" / "spk9_nohash_0.wav", 500.0)
    again = build("speechcommands", tmp_path / "sc", tmp_path / "cache")
    assert not again.from_cache and len(again.train) == len(first.train) + 1


def test_detect_format(tmp_path):
    make_esc50(tmp_path / "esc")
    make_speechcommands(tmp_path / "sc")
    make_fsd50k(tmp_path / "fsd")
    make_csv_folder(tmp_path / "mine", [])
    assert [detect_format(tmp_path / d).value for d in ("esc", "sc", "fsd", "mine")] == \
        ["esc50", "speechcommands", "fsd50k", "csv"]
    with pytest.raises(QbenchError, match="--dataset-format"):
        detect_format(tmp_path / "esc" / "audio")


def test_label_field_separators():
    assert split_labels("a;b, c") == ("a", "b, c")
    assert split_labels("a, b,a") == ("a", "b")
    assert split_labels(" ") == ()


def test_speechcommands_without_lists_keeps_each_speaker_in_one_split(tmp_path):
    root = tmp_path / "sc"
    for word in ("yes", "no"):
        for speaker in range(12):
            for take in range(2):
                write_tone(root / word / f"spk{speaker:02d}_nohash_{take}.wav", FREQS[word], seconds=0.1)
    index = index_dataset(DataConfig(kind="speechcommands", path=str(root), val_fraction=0.2, test_fraction=0.2))
    owner: dict[str, set[str]] = {}
    for split, items in index.items.items():
        for item in items:
            owner.setdefault(item.path.name.split("_nohash_")[0], set()).add(split)
    assert len(owner) == 12 and all(len(splits) == 1 for splits in owner.values())
    assert all(index.items[s] for s in ("train", "val", "test"))
