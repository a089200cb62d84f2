"""Model registry, shapes, and the module vocabulary the quantizer relies on."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import models
from models import build_student, build_teacher, list_students, list_teachers, model_size
from models.frontend import LEVEL_STEP, ClipNorm, RunningLevel, snap_level
from qbench.errors import ConfigError, QbenchError

N_MELS, N_FRAMES, N_CLASSES, BATCH = 40, 101, 7, 3

# What qbench.quant can swap or leave alone (ARCHITECTURE.md, models section).
ALLOWED_STUDENT_MODULES = (
    nn.LSTM, nn.Conv1d, nn.Conv2d, nn.Linear, nn.ReLU, nn.BatchNorm1d, nn.BatchNorm2d, nn.AvgPool1d, nn.AvgPool2d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout, ClipNorm,
)


def _student(name: str) -> nn.Module:
    torch.manual_seed(0)
    return build_student(name, n_mels=N_MELS, n_frames=N_FRAMES, n_classes=N_CLASSES).eval()


def test_registries_hold_the_paper_models() -> None:
    assert set(list_students()) == {"lstm", "dscnn", "crnn"}
    assert set(list_teachers()) == {"transformer", "resnet"}


@pytest.mark.parametrize("name", ["lstm", "dscnn", "crnn"])
def test_student_shapes_and_split_forward(name: str) -> None:
    model = _student(name)
    x = torch.randn(BATCH, N_FRAMES, N_MELS)
    feats = model.temporal_features(x)
    assert feats.ndim == 3 and feats.shape[0] == BATCH and 1 < feats.shape[1] <= N_FRAMES
    logits = model(x)
    assert logits.shape == (BATCH, N_CLASSES)
    torch.testing.assert_close(logits, model.classify(feats), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["lstm", "dscnn", "crnn"])
def test_students_use_only_quantizable_modules(name: str) -> None:
    model = _student(name)
    relus = []
    for sub in model.modules():
        if not list(sub.children()):  # leaves carry the computation
            assert isinstance(sub, ALLOWED_STUDENT_MODULES), f"{name} uses {type(sub).__name__}"
        if isinstance(sub, nn.LSTM):
            assert sub.batch_first
        if isinstance(sub, nn.ReLU):
            relus.append(id(sub))
    assert len(relus) == len(set(relus)), "a ReLU instance is reused"


@pytest.mark.parametrize("hidden,layers,pooling,stride", [(32, 1, "last", 1), (256, 2, "mean", 4)])
def test_lstm_options(hidden: int, layers: int, pooling: str, stride: int) -> None:
    model = build_student("lstm", n_mels=N_MELS, n_frames=N_FRAMES, n_classes=N_CLASSES, hidden=hidden,
                          layers=layers, pooling=pooling, frame_stride=stride).eval()
    x = torch.randn(BATCH, N_FRAMES, N_MELS)
    assert model.temporal_features(x).shape == (BATCH, N_FRAMES // stride, hidden)
    assert model(x).shape == (BATCH, N_CLASSES)


@pytest.mark.parametrize("name", ["transformer", "resnet"])
def test_teacher_shapes(name: str) -> None:
    torch.manual_seed(0)
    model = build_teacher(name, n_mels=N_MELS, n_frames=N_FRAMES, n_classes=N_CLASSES).eval()
    assert model(torch.randn(BATCH, N_FRAMES, N_MELS)).shape == (BATCH, N_CLASSES)


def test_transformer_keeps_row_stochastic_attention_per_layer() -> None:
    model = build_teacher("transformer", n_mels=N_MELS, n_frames=N_FRAMES, n_classes=N_CLASSES, depth=2,
                          heads=2, patch=4).eval()
    model(torch.randn(BATCH, N_FRAMES, N_MELS))
    tokens = 1 + N_FRAMES // 4
    assert len(model.attentions) == 2
    for att in model.attentions:
        assert att.shape == (BATCH, 2, tokens, tokens)
        torch.testing.assert_close(att.sum(-1), torch.ones(BATCH, 2, tokens))


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(ConfigError, match="unknown student 'gru'.*crnn, dscnn, lstm"):
        build_student("gru", n_mels=N_MELS, n_frames=N_FRAMES, n_classes=N_CLASSES)
    with pytest.raises(QbenchError, match="known teachers: resnet, transformer"):
        build_teacher("vit", n_mels=N_MELS, n_frames=N_FRAMES, n_classes=N_CLASSES)


def test_bad_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="student 'lstm': bad options"):
        build_student("lstm", n_mels=N_MELS, n_frames=N_FRAMES, n_classes=N_CLASSES, width=3)


def test_model_size_counts_parameters() -> None:
    model = nn.Linear(10, 3)  # 30 weights + 3 biases
    assert model_size(model) == {"params": 33, "fp32_bytes": 132}
    assert model_size(_student("dscnn"))["params"] < 40_000


def test_registering_a_name_twice_fails() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        models.register_student("lstm")(lambda **kw: nn.Identity())


# --- per-clip level normalisation (models.frontend) -----------------------------------------

FLOAT32_LEVEL_TOL = 1e-5  # float32 sums of ~300 log-mel frames: a few ulps of values ~10


@pytest.mark.parametrize("name", ["lstm", "dscnn", "crnn"])
def test_students_ignore_the_recording_level(name: str) -> None:
    """A gain change is an additive log-mel offset: the clip-normalised model does not see it."""
    model = _student(name).eval()
    x = torch.randn(BATCH, N_FRAMES, N_MELS)
    with torch.no_grad():
        torch.testing.assert_close(model(x + 7.5), model(x), rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", ["transformer", "resnet"])
def test_teachers_ignore_the_recording_level(name: str) -> None:
    model = build_teacher(name, n_mels=N_MELS, n_frames=N_FRAMES, n_classes=N_CLASSES).eval()
    x = torch.randn(BATCH, N_FRAMES, N_MELS)
    with torch.no_grad():
        torch.testing.assert_close(model(x - 4.0), model(x), rtol=0, atol=1e-4)


def test_clip_mode_removes_the_clip_mean() -> None:
    """Minus the clip's mean, snapped to the LEVEL_STEP grid (so every runtime subtracts the same number)."""
    x = torch.randn(BATCH, N_FRAMES, N_MELS) * 3 + torch.arange(BATCH).view(-1, 1, 1) * 10.0
    y = ClipNorm("clip")(x)
    assert torch.all(y.mean(dim=(1, 2)).abs() <= LEVEL_STEP / 2 + FLOAT32_LEVEL_TOL)
    level = x - y
    torch.testing.assert_close(level, snap_level(x.mean(dim=(1, 2), keepdim=True)).expand_as(x))
    assert torch.all(torch.remainder(level[:, 0, 0], LEVEL_STEP) == 0)


def test_causal_mode_sees_only_the_past() -> None:
    """Frame t of the causal output does not change when later frames change."""
    x = torch.randn(BATCH, N_FRAMES, N_MELS)
    later = x.clone()
    later[:, 50:] += 20.0
    norm = ClipNorm("causal")
    torch.testing.assert_close(norm(later)[:, :50], norm(x)[:, :50], rtol=0, atol=0)
    assert not torch.allclose(ClipNorm("clip")(later)[:, :50], ClipNorm("clip")(x)[:, :50])
    # the last frame of the causal output has seen the whole clip: same offset as clip mode
    torch.testing.assert_close(norm(x)[:, -1], ClipNorm("clip")(x)[:, -1], atol=FLOAT32_LEVEL_TOL, rtol=0)


@pytest.mark.parametrize("chunks", [[N_FRAMES], [1] * 10 + [N_FRAMES - 10], [7, 33, 61]])
def test_streaming_level_equals_causal_mode(chunks: list[int]) -> None:
    """RunningLevel over chunks of a clip == ClipNorm("causal") over the whole clip (batch vs streaming)."""
    x = torch.randn(BATCH, N_FRAMES, N_MELS) * 2 + 5.0
    whole = ClipNorm("causal")(x).numpy()
    state, start, pieces = RunningLevel(), 0, []
    for n in chunks:
        pieces.append(state.normalise(x[:, start:start + n].numpy()))
        start += n
    import numpy as np

    np.testing.assert_allclose(np.concatenate(pieces, axis=1), whole, rtol=0, atol=FLOAT32_LEVEL_TOL)


def test_clip_norm_rejects_unknown_modes() -> None:
    with pytest.raises(ValueError):
        ClipNorm("median")


def test_conv_students_run_channels_last_and_export_a_plain_unsqueeze() -> None:
    """``as_image`` strides the one-channel image channels-last, so the convolutions after it run NHWC
    (faster on CPU); the values are ``unsqueeze(1)``'s, and an ONNX export records the unsqueeze."""
    from models.frontend import as_image

    x = torch.randn(3, 20, 8)
    image = as_image(x)
    assert torch.equal(image, x.unsqueeze(1)) and image.stride() == (160, 1, 8, 1)
    model = build_student("dscnn", n_mels=40, n_frames=101, n_classes=5).eval()
    fmap = model.body(as_image(torch.randn(2, 101, 40)))
    assert fmap.is_contiguous(memory_format=torch.channels_last) and not fmap.is_contiguous()
    with torch.no_grad():
        nchw = model.body(torch.randn(2, 101, 40).unsqueeze(1))
    assert nchw.is_contiguous()  # the layout is the strides' doing, not the model's


def test_transformer_patch_embedding_is_its_convolution() -> None:
    """The patch embedding runs as one matrix product; it computes the strided Conv1d it stores
    (same parameters, so a saved teacher loads), trailing frames short of a patch dropped alike."""
    teacher = build_teacher("transformer", n_mels=40, n_frames=301, n_classes=5)
    x = torch.randn(3, 301, 40)
    conv = teacher.embed(x.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(teacher.patch_embedding(x), conv, atol=1e-5, rtol=1e-5)


def test_teacher_dropout_keeps_torch_dropout_semantics() -> None:
    from models.teachers import Dropout

    torch.manual_seed(0)
    drop, x = Dropout(0.25), torch.ones(200_000)
    y = drop(x)
    assert torch.unique(y).tolist() == [0.0, torch.tensor(1 / 0.75).item()]
    assert abs(float((y == 0).float().mean()) - 0.25) < 0.01  # 6 sigma of a binomial at n = 200k
    assert torch.equal(drop.eval()(x), x) and torch.equal(Dropout(0.0).train()(x), x)
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))
