"""Training loop: learns, is deterministic, distils without leaking the head, caches teachers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import models
import qbench.train
from qbench.data.types import FeatureDataset, Split
from qbench.distill import DistillConfig, TemporalAttentionHead
from qbench.errors import ConfigError, QbenchError
from qbench.teacher_cache import train_teacher
from qbench.train import TrainConfig, train

N_CLASSES, N_FRAMES, N_MELS = 3, 32, 12
QUICK = TrainConfig(epochs=3, batch_size=16, lr=3e-3, patience=3, seed=0, threads=1)


@dataclasses.dataclass(frozen=True)
class ToyDataConfig:
    """Stands in for DataConfig: the loop and the teacher cache only need ``key()``."""

    name: str = "toy"

    def key(self) -> str:
        return f"toy-{self.name}"


def _split(rng: np.random.Generator, n: int, multilabel: bool) -> Split:
    """Class c raises mel bins [4c, 4c+4) in the middle third of the clip: learnable, and temporal."""
    labels = np.arange(n) % N_CLASSES
    x = rng.normal(size=(n, N_FRAMES, N_MELS)).astype(np.float32)
    for c in range(N_CLASSES):
        x[labels == c, N_FRAMES // 3:2 * N_FRAMES // 3, 4 * c:4 * c + 4] += 1.5
    y = np.eye(N_CLASSES, dtype=np.float32)[labels] if multilabel else labels.astype(np.int64)
    return Split(x, y)


def toy_dataset(*, multilabel: bool = False, name: str = "toy", n_train: int = 96) -> FeatureDataset:
    rng = np.random.default_rng(0)
    return FeatureDataset(config=ToyDataConfig(name), classes=("a", "b", "c"), multilabel=multilabel,
                          train=_split(rng, n_train, multilabel), val=_split(rng, 30, multilabel),
                          test=_split(rng, 30, multilabel))


SMALL = {"dscnn": {"channels": 16}, "crnn": {"channels": 8, "hidden": 16}, "lstm": {"hidden": 16}}


def _student(name: str = "dscnn") -> nn.Module:
    torch.manual_seed(0)
    return models.build_student(name, n_mels=N_MELS, n_frames=N_FRAMES, n_classes=N_CLASSES, **SMALL[name])


@pytest.fixture(scope="module")
def teacher() -> nn.Module:
    torch.manual_seed(0)
    model = models.build_teacher("transformer", n_mels=N_MELS, n_frames=N_FRAMES, n_classes=N_CLASSES, dim=32,
                                 depth=2, heads=2, mlp=64, patch=4)
    return train(model, toy_dataset(), config=QUICK, progress=False).model


@pytest.mark.parametrize("multilabel", [False, True])
def test_training_lowers_the_loss_and_beats_chance(multilabel: bool) -> None:
    cfg = QUICK.replace(epochs=6, lr=1e-2, patience=6)
    result = train(_student(), toy_dataset(multilabel=multilabel), config=cfg, progress=False)
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < 0.7 * losses[0]
    chance_error = 2 / 3 if not multilabel else 0.4  # mAP of random scores is ~1/3 here; be generous
    assert result.test["error"] < chance_error
    assert result.best_val == result.history[result.best_epoch - 1]["val"]
    assert not result.model.training


def test_training_is_deterministic_for_a_seed() -> None:
    a = train(_student("crnn"), toy_dataset(), config=QUICK, progress=False)
    b = train(_student("crnn"), toy_dataset(), config=QUICK, progress=False)
    for (name, wa), wb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        torch.testing.assert_close(wa, wb, rtol=0, atol=0, msg=name)
    c = train(_student("crnn"), toy_dataset(), config=QUICK.replace(seed=1), progress=False)
    assert not torch.equal(a.model.fc.weight, c.model.fc.weight)


def test_max_train_batches_caps_an_epoch() -> None:
    result = train(_student(), toy_dataset(), config=QUICK.replace(epochs=1, max_train_batches=2), progress=False)
    assert len(result.history) == 1


@pytest.mark.parametrize("mode", ["kd", "tkd", "kd+tkd"])
def test_distillation_trains_and_leaves_no_head_in_the_student(teacher: nn.Module, mode: str) -> None:
    fresh = _student("lstm")
    result = train(_student("lstm"), toy_dataset(), config=QUICK, teacher=teacher,
                   distill=DistillConfig(mode=mode, lambda_=5.0), progress=False)
    assert set(result.model.state_dict()) == set(fresh.state_dict())
    assert sum(p.numel() for p in result.model.parameters()) == sum(p.numel() for p in fresh.parameters())
    assert not any(isinstance(m, TemporalAttentionHead) for m in result.model.modules())
    assert "train_kd" in result.history[0] or "train_tkd" in result.history[0]
    plain = train(_student("lstm"), toy_dataset(), config=QUICK, progress=False)
    assert not torch.equal(result.model.fc.weight, plain.model.fc.weight)  # the teacher changed training


def test_distillation_without_a_teacher_is_a_user_error() -> None:
    with pytest.raises(QbenchError, match="needs a teacher"):
        train(_student(), toy_dataset(), config=QUICK, distill=DistillConfig(mode="kd"), progress=False)


def test_temporal_kd_needs_an_attention_teacher() -> None:
    resnet = models.build_teacher("resnet", n_mels=N_MELS, n_frames=N_FRAMES, n_classes=N_CLASSES)
    with pytest.raises(QbenchError, match="keeps attention maps"):
        train(_student(), toy_dataset(), config=QUICK, teacher=resnet, distill=DistillConfig(mode="tkd"),
              progress=False)


def test_a_class_without_training_examples_is_a_user_error() -> None:
    ds = toy_dataset()
    keep = ds.train.y != 2
    ds = dataclasses.replace(ds, train=Split(ds.train.x[keep], ds.train.y[keep]))
    with pytest.raises(QbenchError, match="no examples of class.*c"):
        train(_student(), ds, config=QUICK, progress=False)


def test_train_config_validates_and_round_trips() -> None:
    cfg = TrainConfig(epochs=4, max_train_batches=10)
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match="TrainConfig.epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="TrainConfig.lr"):
        TrainConfig(lr=-1.0)


def test_teacher_cache_trains_once_then_loads(tmp_path, monkeypatch) -> None:
    ds, cfg = toy_dataset(), QUICK.replace(epochs=1)
    options = {"dim": 16, "depth": 1, "heads": 2, "mlp": 32}
    first = train_teacher("transformer", ds, config=cfg, cache_dir=tmp_path, progress=False, options=options)
    assert len(list((tmp_path / "teachers").glob("*.pt"))) == 1
    assert not list((tmp_path / "teachers").glob("*.tmp"))

    def no_training(*args, **kwargs):
        raise AssertionError("the cached teacher was trained again")

    monkeypatch.setattr(qbench.train, "train", no_training)
    second = train_teacher("transformer", ds, config=cfg, cache_dir=tmp_path, progress=False, options=options)
    x = torch.from_numpy(ds.test.x)
    torch.testing.assert_close(second(x), first(x), rtol=0, atol=0)
    with pytest.raises(AssertionError, match="trained again"):  # another data key is another teacher
        train_teacher("transformer", toy_dataset(name="other"), config=cfg, cache_dir=tmp_path, progress=False,
                      options=options)
    with pytest.raises(AssertionError, match="trained again"):  # another architecture is another teacher
        train_teacher("transformer", ds, config=cfg, cache_dir=tmp_path, progress=False, options={**options, "patch": 2})


def test_cli_trains_a_distilled_student_and_prints_the_table(tmp_path, monkeypatch, capsys) -> None:
    import qbench.data
    from qbench.cli import main

    monkeypatch.setattr(qbench.data, "build_dataset", lambda cfg, **kwargs: toy_dataset())
    code = main(["train", "--model", "crnn", "--distill", "kd+tkd", "--epochs", "1", "--teacher-epochs", "1",
                 "--threads", "1", "--cache", str(tmp_path), "--no-progress"])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("point"))
    assert lines[header].split()[:3] == ["point", "test", "err"]
    assert lines[header + 1].startswith("crnn fp32/kd+tkd/torch") and lines[header + 1].rstrip().endswith("ok")
    assert any(line.startswith("crnn/kd+tkd: best epoch") for line in lines)
    assert main(["train", "--model", "gru", "--cache", str(tmp_path)]) == 2
    assert "unknown student(s) gru" in capsys.readouterr().err
