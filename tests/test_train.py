"""Training loop: learns, is deterministic, distils without leaking the head, caches teachers."""

from __future__ import annotations

import copy
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


def test_a_cnn_trains_channels_last_and_comes_back_in_the_default_layout(monkeypatch) -> None:
    import qbench.train as training

    seen = []
    fit = training._fit

    def watching_fit(model, *args, **kwargs):
        seen.append(model.body[0].weight.is_contiguous(memory_format=torch.channels_last))
        return fit(model, *args, **kwargs)

    monkeypatch.setattr(training, "_fit", watching_fit)
    result = train(_student("dscnn"), toy_dataset(), config=QUICK.replace(epochs=1), progress=False)
    assert seen == [True]  # oneDNN's NHWC kernels while training
    assert all(p.is_contiguous() for p in result.model.parameters())  # what export and quantization see
    a = train(_student("dscnn"), toy_dataset(), config=QUICK.replace(epochs=1), progress=False)
    for (name, wa), wb in zip(a.model.state_dict().items(), result.model.state_dict().values()):
        torch.testing.assert_close(wa, wb, rtol=0, atol=0, msg=name)  # and still deterministic


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


def test_spec_augment_masks_spans_with_the_clip_level_and_keeps_old_keys() -> None:
    from qbench.train import SpecAugment, spec_augment

    x = torch.randn(64, 100, 40) + torch.linspace(-20, 0, 64).view(-1, 1, 1)  # clips at different levels
    aug = SpecAugment(time_masks=2, time_width=10, freq_masks=2, freq_width=4)
    out = spec_augment(x, aug, np.random.default_rng(0))
    changed = out != x
    level = x.mean(dim=(1, 2), keepdim=True).expand_as(x)
    assert torch.equal(out[changed], level[changed])  # masked cells hold their own clip's level
    # whole frames and whole bands: a masked cell's frame or band is masked throughout
    frames, bands = changed.all(dim=2), changed.all(dim=1)
    assert torch.equal(changed, frames[:, :, None] | bands[:, None, :])
    assert (frames.sum(1) <= 2 * 10).all() and (bands.sum(1) <= 2 * 4).all() and frames.any() and bands.any()
    assert torch.equal(spec_augment(x, SpecAugment(0, 10, 0, 4), np.random.default_rng(0)), x)
    # None: no masking, and the config document (every cache key) as before the option existed
    assert "augment" not in TrainConfig().to_dict() and "augment" in TrainConfig(augment=aug).to_dict()
    assert TrainConfig.from_json(TrainConfig(augment=aug).to_json()) == TrainConfig(augment=aug)
    with pytest.raises(ConfigError, match="SpecAugment.time_width"):
        SpecAugment(time_width=-1)


def test_augmented_training_learns_and_is_deterministic() -> None:
    from qbench.train import SpecAugment

    cfg = QUICK.replace(epochs=6, lr=1e-2, patience=6,
                        augment=SpecAugment(time_masks=1, time_width=4, freq_masks=1, freq_width=2))
    a = train(_student(), toy_dataset(), config=cfg, progress=False)
    b = train(_student(), toy_dataset(), config=cfg, progress=False)
    assert a.test["error"] < 2 / 3
    assert all(torch.equal(p, q) for p, q in zip(a.model.state_dict().values(), b.model.state_dict().values()))


def test_keep_start_returns_the_starting_weights_when_no_epoch_beats_them() -> None:
    trained = train(_student(), toy_dataset(), config=QUICK.replace(epochs=6, lr=1e-2, patience=6), progress=False)
    start = copy.deepcopy(trained.model.state_dict())
    # a fine-tune at a rate that can only wreck it: the start is kept, and says so
    wrecked = QUICK.replace(epochs=2, lr=5.0, patience=2, keep_start=True)
    result = train(trained.model, toy_dataset(), config=wrecked, progress=False)
    assert result.best_epoch == 0 and len(result.history) == 2
    assert all(torch.equal(start[k], v) for k, v in result.model.state_dict().items())
    assert "keep_start" not in TrainConfig().to_dict() and TrainConfig(keep_start=True).to_dict()["keep_start"]


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
