"""A model you bring (``--models file.py:factory``, ``--checkpoint``) through sweep, quantize and export,
on the built-in keywords and on a folder of your own recordings (issue 14, item 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from qbench.cli import main
from qbench.records import STATUS_OK
from qbench.sweep.run import RESULTS_FILE

USER_MODELS = '''
from torch import nn


class TinyKws(nn.Module):
    """(B, T, F) log-mel -> (B, C) logits: one convolution, global pooling, a linear head."""

    def __init__(self, n_classes):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, n_classes)

    def forward(self, x):
        return self.fc(self.pool(self.relu(self.conv(x.unsqueeze(1)))).flatten(1))


class WithGru(nn.Module):
    def __init__(self, n_mels, n_classes):
        super().__init__()
        self.gru = nn.GRU(n_mels, 8, batch_first=True)
        self.fc = nn.Linear(8, n_classes)

    def forward(self, x):
        return self.fc(self.gru(x)[0][:, -1])


def build_kws(*, n_mels, n_frames, n_classes):
    return TinyKws(n_classes)


def build_gru(*, n_mels, n_frames, n_classes):
    return WithGru(n_mels, n_classes)
'''
QUICK = ["--quick", "--distill", "none", "--threads", "1", "--no-latency", "--no-progress"]
BITS = ["--bits", "4"]
SPLITS = ("train", "train", "train", "val", "test")


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("user-model")
    (root / "my_models.py").write_text(USER_MODELS)
    recordings = root / "recordings"
    recordings.mkdir()
    rows = ["file,labels,split"]
    for i in range(20):  # two classes, tones and noise: four clips a class in train, one in val and test
        label, freq = (("tone", 440.0), ("chirp", 2000.0))[i % 2]
        t = np.arange(4000) / 16000
        audio = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * np.random.default_rng(i).standard_normal(t.size)
        sf.write(recordings / f"{i}.wav", audio, 16000)
        rows.append(f"{i}.wav,{label},{SPLITS[(i // 2) % 5]}")
    (recordings / "labels.csv").write_text("\n".join(rows) + "\n")
    return {"root": root, "spec": f"{root / 'my_models.py'}:build_kws", "recordings": recordings,
            "cache": root / "cache"}


def _data(env, source: str) -> list[str]:
    if source == "keywords":
        return []
    return ["--data", str(env["recordings"]), "--dataset-format", "csv", "--seconds", "0.5"]


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("source", ["keywords", "recordings"])
def test_user_model_runs_through_sweep_quantize_and_export(env, source, capsys, tmp_path) -> None:
    common = ["--models", env["spec"], *QUICK, *BITS, *_data(env, source), "--cache", str(env["cache"])]
    code, _, err = cli(["sweep", *common, "--backends", "torch,onnxruntime", "--out", str(tmp_path / "sweep")], capsys)
    assert code == 0, err
    records = json.loads((tmp_path / "sweep" / RESULTS_FILE).read_text())["records"]
    assert {r["status"] for r in records} == {STATUS_OK}
    mine = [r for r in records if r["model"] == env["spec"]]
    assert {(r["method"], r["backend"]) for r in mine} >= {("fp32", "torch"), ("ptq", "torch"), ("qat", "torch"),
                                                           ("qat", "onnxruntime")}
    assert not [r for r in mine if r["backend"] == "engine"]  # a user model gets no engine point (not planned)

    code, out, err = cli(["quantize", *common], capsys)
    assert code == 0, err
    assert "w4a4 qat/none/torch" in out and "w4a4 ptq/none/torch" in out

    code, out, err = cli(["export", *common, "--backends", "onnxruntime", "--out", str(tmp_path / "art")], capsys)
    assert code == 0, err
    assert "w4a4 qat/none/onnxruntime" in out
    assert list((tmp_path / "art").rglob("*.onnx"))
    assert not list((env["cache"] / "models").glob("*my_models.py*"))  # file names carry no path or colon


def test_checkpoint_replaces_training_and_keys_the_cache(env, capsys, tmp_path) -> None:
    from models import build_student

    net = build_student(env["spec"], n_mels=40, n_frames=101, n_classes=12)
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    argv = ["train", "--models", env["spec"], "--checkpoint", str(tmp_path / "weights.pt"), *QUICK,
            "--cache", str(env["cache"])]
    code, out, err = cli(argv, capsys)
    assert code == 0, err
    assert f"from {tmp_path / 'weights.pt'}" in out
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    code, _, err = cli([*argv[:4], str(tmp_path / "bad.pt"), *argv[5:]], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--checkpoint" in err


@pytest.mark.parametrize("argv, expected", [
    (["quantize", "--models", "{root}/my_models.py:build_gru"], "cannot quantize module 'gru' of type GRU: supported are"),
    (["train", "--models", "{root}/my_models.py:build_kws", "--distill", "tkd"], "temporal KD needs temporal_features"),
    (["sweep", "--models", "{root}/missing.py:build"], "cannot read"),
    (["export", "--models", "{root}/my_models.py:no_such"], "has no function 'no_such'"),
])
def test_bad_user_models_are_one_line_and_exit_2(env, capsys, argv, expected) -> None:
    argv = [a.format(root=env["root"]) for a in argv]
    extra = [a for a in QUICK if a not in ("--distill", "none")] if "--distill" in argv else QUICK
    bits = [] if argv[0] == "train" else BITS
    code, _, err = cli([*argv, *extra, *bits, "--cache", str(env["cache"])], capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and expected in err, err
