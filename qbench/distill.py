"""Knowledge distillation losses: output KD (Hinton et al.) and temporal attention KD (Choi et al. 2022).

Output KD mixes the hard-label loss with a soft-target loss at temperature ``T``::

    loss = (1 - alpha) * task(student, y) + alpha * T^2 * KL(teacher_T || student_T)

Temporal KD rolls the transformer teacher's attention out across layers into a weight over
time, resamples it to the student's time resolution, and pulls a training-only attention head
on the student's temporal features towards it::

    loss += lambda_ * KL(teacher_time || head(student.temporal_features(x)))
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from enum import Enum

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qbench.config import Config, check_range, coerce_enum
from qbench.errors import ConfigError, QbenchError


class DistillMode(str, Enum):
    """Which teacher signals a student learns from."""

    NONE = "none"
    """Hard labels only; no teacher."""
    KD = "kd"
    """Output KD: the teacher's softened outputs."""
    TKD = "tkd"
    """Temporal KD: the teacher's attention rollout over time, on an auxiliary head."""
    KD_TKD = "kd+tkd"
    """Both."""

    @property
    def uses_outputs(self) -> bool:
        return self in (DistillMode.KD, DistillMode.KD_TKD)

    @property
    def uses_attention(self) -> bool:
        return self in (DistillMode.TKD, DistillMode.KD_TKD)


@dataclasses.dataclass(frozen=True)
class DistillConfig(Config):
    """How a student is distilled. ``alpha`` weighs the soft-target loss against the hard-label
    loss (0 = labels only); ``lambda_`` weighs the temporal attention KL (added on top)."""

    mode: DistillMode = DistillMode.NONE
    temperature: float = 4.0
    alpha: float = 0.5
    lambda_: float = 1.0
    teacher: str = "transformer"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", coerce_enum("DistillConfig", "mode", self.mode, DistillMode))
        check_range("DistillConfig", "temperature", self.temperature, 1e-3, 1e3)
        check_range("DistillConfig", "alpha", self.alpha, 0.0, 1.0)
        check_range("DistillConfig", "lambda_", self.lambda_, 0.0, 1e6)
        if not isinstance(self.teacher, str) or not self.teacher:
            raise ConfigError(f"DistillConfig.teacher must be a teacher name, got {self.teacher!r}")


# ---- output KD -------------------------------------------------------------------------------

def task_loss(logits: Tensor, y: Tensor, *, multilabel: bool) -> Tensor:
    """Hard-label loss: cross-entropy on (B,) class indices, or BCE on (B, C) multi-hot targets."""
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, y)
    return F.cross_entropy(logits, y)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, *, temperature: float, multilabel: bool) -> Tensor:
    """Soft-target loss, scaled by T^2 so its gradients keep their size as T grows.

    Single-label: KL(softmax(t/T) || softmax(s/T)), mean over the batch. Multi-label: per-class
    binary KL between sigmoid(t/T) and sigmoid(s/T), mean over batch and classes (BCE minus the
    target entropy, so it is zero when the student matches). For large T the sigmoid is linear
    near 0, so the multi-label gradient also shrinks like 1/T^2 and the same T^2 factor applies.
    """
    t = temperature
    if multilabel:
        p = torch.sigmoid(teacher_logits / t)
        bce = F.binary_cross_entropy_with_logits(student_logits / t, p)
        entropy = F.binary_cross_entropy_with_logits(teacher_logits / t, p)
        return (bce - entropy) * t * t
    log_s = F.log_softmax(student_logits / t, dim=-1)
    log_p = F.log_softmax(teacher_logits / t, dim=-1)
    return F.kl_div(log_s, log_p, reduction="batchmean", log_target=True) * t * t


# ---- temporal attention KD -------------------------------------------------------------------

def attention_rollout(attentions: Sequence[Tensor]) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020) of per-layer maps, each (B, H, N, N), to (B, N, N).

    Each layer's head-mean attention is mixed half-and-half with the identity (the residual
    path), rows renormalised, and the layers multiplied in order: R = A'_L @ ... @ A'_1.
    """
    if not attentions:
        raise QbenchError("attention rollout needs at least one layer of attention maps")
    rollout = None
    for att in attentions:
        a = att.float().mean(dim=1)
        a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    return rollout


def class_attention_over_time(attentions: Sequence[Tensor]) -> Tensor:
    """(B, N-1) distribution over time tokens: the class token's rollout row without its own column."""
    row = attention_rollout(attentions)[:, 0, 1:]
    return row / row.sum(dim=-1, keepdim=True)


def interpolate_attention(weights: Tensor, length: int) -> Tensor:
    """Resample (B, T_teacher) time weights to (B, length) and renormalise to sum to one.

    ``align_corners=False``: teacher tokens and student steps are both uniform grids of cells
    spanning the same clip, so sample values sit at cell centres; ``True`` would pin the first
    and last samples to the clip's edges and shift every interior position by up to half a cell.
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if weights.shape[-1] == length:
        out = weights
    else:
        out = F.interpolate(weights.unsqueeze(1), size=length, mode="linear", align_corners=False).squeeze(1)
    return out / out.sum(dim=-1, keepdim=True)


def attention_kl(teacher_weights: Tensor, student_log_weights: Tensor) -> Tensor:
    """KL(teacher || student) over time, mean over the batch. Inputs (B, T'): probabilities and log-probabilities."""
    return F.kl_div(student_log_weights, teacher_weights, reduction="batchmean")


class TemporalAttentionHead(nn.Module):
    """Training-only head: a learned query attends over student temporal features (B, T', D) -> (B, T').

    Owned by the training loop and never attached to the student, so it never reaches the
    inference model, its state_dict, or any export.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.key = nn.Linear(dim, dim)
        self.query = nn.Parameter(torch.randn(dim) / math.sqrt(dim))

    def log_weights(self, feats: Tensor) -> Tensor:
        """(B, T', D) -> (B, T') log-softmax over time."""
        scores = torch.tanh(self.key(feats)) @ self.query
        return F.log_softmax(scores, dim=-1)

    def forward(self, feats: Tensor) -> Tensor:
        """(B, T', D) -> (B, T') attention weights over time, each row summing to one."""
        return self.log_weights(feats).exp()


def teacher_time_weights(teacher: nn.Module) -> Tensor:
    """(B, T_teacher) rollout weights over time from the teacher's last forward pass."""
    attentions = getattr(teacher, "attentions", None)
    if not attentions:
        raise QbenchError(f"temporal KD needs a teacher that keeps attention maps (e.g. 'transformer'); "
                          f"{type(teacher).__name__} has none")
    return class_attention_over_time(attentions)


@dataclasses.dataclass(frozen=True)
class TeacherTargets:
    """Teacher signals for every example of a split, computed once (training is augmentation-free)."""

    logits: Tensor  # (N, C)
    time_weights: Tensor | None  # (N, T_teacher) rollout weights, None unless temporal KD


@torch.no_grad()
def teacher_targets(teacher: nn.Module, x: np.ndarray, *, attention: bool, batch_size: int = 128) -> TeacherTargets:
    """Run the teacher (eval mode) over (N, T, F) inputs once, keeping logits and optionally time weights."""
    was_training = teacher.training
    teacher.eval()
    logits, weights = [], []
    for start in range(0, len(x), batch_size):
        logits.append(teacher(torch.from_numpy(x[start:start + batch_size])))
        if attention:
            weights.append(teacher_time_weights(teacher))
    teacher.train(was_training)
    return TeacherTargets(torch.cat(logits), torch.cat(weights) if attention else None)


def distill_loss(logits: Tensor, y: Tensor, *, multilabel: bool, config: DistillConfig,
                 teacher_logits: Tensor | None = None, student_log_time: Tensor | None = None,
                 teacher_time: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """Total training loss for one batch and its parts (for logging).

    ``student_log_time`` (B, T') comes from :class:`TemporalAttentionHead`; ``teacher_time`` is
    the teacher's rollout already resampled to T'.
    """
    hard = task_loss(logits, y, multilabel=multilabel)
    parts = {"task": hard.item()}
    loss = hard
    if config.mode.uses_outputs:
        soft = kd_loss(logits, teacher_logits, temperature=config.temperature, multilabel=multilabel)
        loss = (1.0 - config.alpha) * hard + config.alpha * soft
        parts["kd"] = soft.item()
    if config.mode.uses_attention:
        tkd = attention_kl(teacher_time, student_log_time)
        loss = loss + config.lambda_ * tkd
        parts["tkd"] = tkd.item()
    return loss, parts
