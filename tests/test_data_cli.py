"""``qbench data``: builds and summarises, writes --out, turns user errors into one line and exit 2."""

from __future__ import annotations

import json

import numpy as np
import soundfile as sf

from qbench.cli import main
from qbench.data import DataConfig
from qbench.data.dataset import load_npz

TINY = ["--seconds", "0.5", "--clips-per-class", "3", "--no-progress"]


def test_data_builds_keywords_and_writes_out(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["data", "--dataset", "keywords", *TINY, "--cache", str(tmp_path / "cache"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "classes (12, single-label): yes, no, up" in printed
    assert "train 12, val 12, test 12" in printed and "(T, F) = (51, 40)" in printed and "skipped: 0" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"train": 12, "val": 12, "test": 12} and summary["feature_shape"] == [51, 40]
    cfg = DataConfig.from_json((out / "config.json").read_text())
    assert cfg.clip_seconds == 0.5 and cfg.clips_per_class == 3
    saved = load_npz(out / "features.npz", cfg)
    assert saved is not None and saved.train.x.shape == (12, 51, 40)

    assert main(["data", *TINY, "--cache", str(tmp_path / "cache")]) == 0  # keywords is the default
    assert "(loaded from cache)" in capsys.readouterr().out


def test_data_on_a_csv_folder_reports_skipped_clips(tmp_path, capsys):
    root = tmp_path / "mine"
    root.mkdir()
    rows = ["file,labels,split"]
    for i, split in enumerate(["train", "train", "val", "test"]):
        sf.write(root / f"{i}.wav", np.sin(np.arange(4000) * (0.1 + i / 10)), 16000)
        rows.append(f"{i}.wav,{'ab'[i % 2]},{split}")
    (root / "bad.wav").write_bytes(b"")
    rows.append("bad.wav,a,train")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    code = main(["data", "--data", str(root), "--seconds", "0.5", "--no-progress", "--cache", str(tmp_path / "c")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "skipped: 1 clip(s)" in printed and "bad.wav: zero-length file" in printed  # format detected


def test_missing_data_path_is_one_line_and_exit_2(tmp_path, capsys):
    missing = tmp_path / "no-such-folder"
    code = main(["data", "--data", str(missing), "--dataset-format", "esc50", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "qbench data: error:" in err and str(missing) in err


def test_bad_option_values_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["data", "--seconds", "-1", "--cache", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "DataConfig.clip_seconds" in err
    assert main(["data", "--dataset", "fsd50k"]) == 2
    assert "--data PATH" in capsys.readouterr().err
    assert main(["data", *TINY, "--jobs", "0", "--cache", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--jobs must be between 1 and 1024, got 0" in err
