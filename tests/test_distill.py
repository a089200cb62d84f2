"""Distillation maths checked against hand computations: KD loss, attention rollout, interpolation, KL."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qbench.distill import (DistillConfig, DistillMode, TemporalAttentionHead, attention_kl, attention_rollout,
                            class_attention_over_time, distill_loss, interpolate_attention, kd_loss)
from qbench.errors import ConfigError, QbenchError

# float32 maths compared with float64 NumPy references: a few ulps of float32 on O(1) values.
FLOAT32_ATOL = 1e-6


def _row_normalise(a: np.ndarray) -> np.ndarray:
    return a / a.sum(axis=-1, keepdims=True)


def test_rollout_two_tokens_closed_form() -> None:
    # Uniform attention over 2 tokens: A' = 0.5*A + 0.5*I = [[.75, .25], [.25, .75]];
    # two layers: A'^2 = [[.625, .375], [.375, .625]].
    uniform = torch.full((1, 1, 2, 2), 0.5)
    rollout = attention_rollout([uniform, uniform])
    torch.testing.assert_close(rollout[0], torch.tensor([[0.625, 0.375], [0.375, 0.625]]))


def test_rollout_matches_numpy_on_two_layers_two_heads_four_tokens() -> None:
    rng = np.random.default_rng(3)
    layers = [_row_normalise(rng.uniform(0.1, 1.0, size=(1, 2, 4, 4))) for _ in range(2)]
    mixed = [_row_normalise(0.5 * a[0].mean(axis=0) + 0.5 * np.eye(4)) for a in layers]
    expected = mixed[1] @ mixed[0]  # later layer on the left
    got = attention_rollout([torch.tensor(a, dtype=torch.float32) for a in layers])[0].numpy()
    np.testing.assert_allclose(got, expected, atol=FLOAT32_ATOL)
    cls_row = expected[0, 1:] / expected[0, 1:].sum()
    got_row = class_attention_over_time([torch.tensor(a, dtype=torch.float32) for a in layers])[0].numpy()
    np.testing.assert_allclose(got_row, cls_row, atol=FLOAT32_ATOL)
    assert got_row.shape == (3,)


def test_rollout_of_nothing_is_a_user_error() -> None:
    with pytest.raises(QbenchError):
        attention_rollout([])


def test_interpolation_upsampling_by_hand() -> None:
    # align_corners=False, 2 -> 4: sources at -0.25 (clamped), 0.25, 0.75, 1.25 (clamped).
    w = torch.tensor([[0.2, 0.8]])
    raw = np.array([0.2, 0.75 * 0.2 + 0.25 * 0.8, 0.25 * 0.2 + 0.75 * 0.8, 0.8])
    np.testing.assert_allclose(interpolate_attention(w, 4)[0].numpy(), raw / raw.sum(), atol=FLOAT32_ATOL)


@pytest.mark.parametrize("t_teacher,t_student", [(75, 301), (75, 38), (10, 10), (7, 1)])
def test_interpolation_length_sum_and_endpoints(t_teacher: int, t_student: int) -> None:
    w = torch.softmax(torch.randn(2, t_teacher, generator=torch.Generator().manual_seed(0)), dim=-1)
    out = interpolate_attention(w, t_student)
    assert out.shape == (2, t_student)
    torch.testing.assert_close(out.sum(-1), torch.ones(2))
    assert (out >= 0).all()
    if t_student == t_teacher:
        torch.testing.assert_close(out, w)
    if t_student > t_teacher:  # upsampling keeps the end values (up to the common renormalisation)
        torch.testing.assert_close(out[:, 0] / out[:, -1], w[:, 0] / w[:, -1])


def test_interpolation_keeps_a_peak_in_place() -> None:
    w = torch.zeros(1, 10)
    w[0, 7] = 1.0  # token 7 of 10 covers [0.7, 0.8) of the clip
    out = interpolate_attention(w, 100)
    assert 70 <= int(out.argmax()) < 80


def test_attention_kl_zero_iff_equal() -> None:
    p = torch.softmax(torch.randn(3, 9), dim=-1)
    assert attention_kl(p, p.log()).abs().item() < FLOAT32_ATOL
    q = torch.softmax(torch.randn(3, 9), dim=-1)
    assert attention_kl(p, q.log()).item() > 1e-3


def test_kd_loss_single_label_by_hand() -> None:
    s = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = np.array([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    temp = 2.0
    soft = lambda z: np.exp(z / temp) / np.exp(z / temp).sum(axis=1, keepdims=True)  # noqa: E731
    p, q = soft(t), soft(s)
    expected = (p * np.log(p / q)).sum(axis=1).mean() * temp**2
    got = kd_loss(torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32), temperature=temp,
                  multilabel=False)
    assert got.item() == pytest.approx(expected, abs=1e-5)


def test_kd_loss_multi_label_by_hand() -> None:
    s = np.array([[1.0, -2.0], [0.5, 3.0]])
    t = np.array([[2.0, 0.0], [-1.0, 1.0]])
    temp = 3.0
    sig = lambda z: 1.0 / (1.0 + np.exp(-z / temp))  # noqa: E731
    p, q = sig(t), sig(s)
    binary_kl = p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))
    expected = binary_kl.mean() * temp**2
    got = kd_loss(torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32), temperature=temp,
                  multilabel=True)
    assert got.item() == pytest.approx(expected, abs=1e-5)
    same = kd_loss(torch.tensor(t, dtype=torch.float32), torch.tensor(t, dtype=torch.float32), temperature=temp,
                   multilabel=True)
    assert abs(same.item()) < 1e-5


def test_distill_loss_mixes_by_alpha_and_lambda() -> None:
    torch.manual_seed(0)
    logits, t_logits, y = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    t_time = torch.softmax(torch.randn(4, 6), -1)
    s_log_time = torch.log_softmax(torch.randn(4, 6), -1)
    cfg = DistillConfig(mode="kd+tkd", alpha=0.25, lambda_=2.0, temperature=2.0)
    loss, parts = distill_loss(logits, y, multilabel=False, config=cfg, teacher_logits=t_logits,
                               student_log_time=s_log_time, teacher_time=t_time)
    ce = torch.nn.functional.cross_entropy(logits, y).item()
    kd = kd_loss(logits, t_logits, temperature=2.0, multilabel=False).item()
    tkd = attention_kl(t_time, s_log_time).item()
    assert loss.item() == pytest.approx(0.75 * ce + 0.25 * kd + 2.0 * tkd, rel=1e-6)
    assert parts == pytest.approx({"task": ce, "kd": kd, "tkd": tkd})


def test_head_gives_a_distribution_over_time() -> None:
    head = TemporalAttentionHead(8)
    w = head(torch.randn(2, 13, 8))
    assert w.shape == (2, 13)
    torch.testing.assert_close(w.sum(-1), torch.ones(2))


def test_distill_config_validates_and_round_trips() -> None:
    cfg = DistillConfig(mode="kd+tkd", temperature=3.0, alpha=0.7, lambda_=0.5, teacher="resnet")
    assert cfg.mode is DistillMode.KD_TKD and cfg.mode.uses_outputs and cfg.mode.uses_attention
    assert DistillConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match="mode"):
        DistillConfig(mode="attention")
    with pytest.raises(ConfigError, match="temperature"):
        DistillConfig(temperature=0.0)
    with pytest.raises(ConfigError, match="alpha"):
        DistillConfig(alpha=1.5)
    with pytest.raises(ConfigError, match="lambda_"):
        DistillConfig(lambda_=-1.0)
