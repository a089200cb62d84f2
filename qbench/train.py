"""Training for teachers and students, with optional output and temporal attention distillation.

One function trains anything that maps (B, T, F) log-mel to (B, C) logits::

    result = train(student, dataset, config=TrainConfig(epochs=10), teacher=teacher,
                   distill=DistillConfig(mode="kd+tkd"))
    result.model        # best-by-validation-error checkpoint loaded
    result.test         # qbench.metrics.evaluate(...) on the test split

Training is seeded and deterministic on CPU for a given thread count. The model is only ever
called as ``model(x)``, ``model.temporal_features(x)`` and ``model.classify(feats)``, so a
quantized twin with the same methods trains (QAT) through the same loop.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from qbench.config import Config, check_range
from qbench.data.types import FeatureDataset, Split
from qbench.distill import (DistillConfig, DistillMode, TeacherTargets, TemporalAttentionHead, distill_loss,
                            interpolate_attention, task_loss, teacher_targets)
from qbench.errors import ConfigError, QbenchError
from qbench.metrics import evaluate


@dataclasses.dataclass(frozen=True)
class SpecAugment(Config):
    """SpecAugment-style masking of the training inputs (Park et al., Interspeech 2019): per clip,
    ``time_masks`` spans of 0..``time_width`` frames and ``freq_masks`` spans of 0..``freq_width``
    mel bands are set to the clip's mean log-mel level, which per-clip normalisation maps to 0.
    Training only: validation, test and every export see the clips as they are."""

    time_masks: int = 2
    time_width: int = 10
    freq_masks: int = 2
    freq_width: int = 4

    def __post_init__(self) -> None:
        for name in ("time_masks", "time_width", "freq_masks", "freq_width"):
            check_range("SpecAugment", name, getattr(self, name), 0, 10_000, integer=True)


def spec_augment(x: Tensor, config: SpecAugment, rng: np.random.Generator) -> Tensor:
    """``(B, T, F)`` inputs with :class:`SpecAugment` masks drawn from ``rng`` (a new tensor)."""
    b, t, f = x.shape

    def spans(count: int, width: int, length: int) -> np.ndarray:
        hit = np.zeros((b, length), dtype=bool)
        pos = np.arange(length)
        for _ in range(count):
            w = rng.integers(0, min(width, length) + 1, size=b)
            start = rng.integers(0, length - w + 1)
            hit |= (pos >= start[:, None]) & (pos < (start + w)[:, None])
        return hit

    masked = spans(config.time_masks, config.time_width, t)[:, :, None] | \
        spans(config.freq_masks, config.freq_width, f)[:, None, :]
    level = x.mean(dim=(1, 2), keepdim=True)
    return torch.where(torch.from_numpy(masked), level, x)


@dataclasses.dataclass(frozen=True)
class TrainConfig(Config):
    """Optimiser and loop settings. ``max_train_batches`` caps batches per epoch (quick runs);
    ``patience`` is how many epochs without a better validation error end training."""

    epochs: int = 20
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    patience: int = 5
    seed: int = 0
    max_train_batches: int | None = None
    threads: int = 1  # one intra-op thread per process: two on a shared 2-core host ran 11-17x slower (spin-wait)
    augment: SpecAugment | None = None  # masking of training inputs (None: the clips as they are)
    keep_start: bool = False  # the starting weights compete as epoch 0 (fine-tuning never ends worse on val)

    def __post_init__(self) -> None:
        check_range("TrainConfig", "epochs", self.epochs, 1, 10_000, integer=True)
        check_range("TrainConfig", "batch_size", self.batch_size, 2, 65_536, integer=True)
        check_range("TrainConfig", "lr", self.lr, 1e-8, 10.0)
        check_range("TrainConfig", "weight_decay", self.weight_decay, 0.0, 10.0)
        check_range("TrainConfig", "patience", self.patience, 1, 10_000, integer=True)
        check_range("TrainConfig", "seed", self.seed, 0, 2**32 - 1, integer=True)
        if self.max_train_batches is not None:
            check_range("TrainConfig", "max_train_batches", self.max_train_batches, 1, 10**9, integer=True)
        check_range("TrainConfig", "threads", self.threads, 1, 1024, integer=True)
        if self.augment is not None and not isinstance(self.augment, SpecAugment):
            raise ConfigError(f"TrainConfig.augment must be a SpecAugment or None, got {type(self.augment).__name__}")

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        for name, unset in (("augment", None), ("keep_start", False)):
            if out[name] == unset:
                del out[name]  # unset: the document (and every cache key) as before the option existed
        return out


@dataclasses.dataclass
class TrainResult:
    """What a training run produced: the best model and how it got there."""

    model: nn.Module  # best validation checkpoint loaded, in eval mode
    history: list[dict[str, Any]]  # one row per epoch: epoch, train_loss, loss parts, val metrics, seconds
    best_epoch: int  # 0: the starting weights were best (``keep_start``)
    best_val: dict[str, float]
    test: dict[str, float]
    seconds: float


@contextlib.contextmanager
def torch_settings(*, threads: int, seed: int) -> Iterator[None]:
    """Seed torch, fix the thread count and ask for deterministic kernels; restore afterwards.

    ``warn_only``: an op without a deterministic CPU kernel (none in the built-in models, but a
    quantized twin's library may add one) warns instead of aborting the run.
    """
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)


@contextlib.contextmanager
def _channels_last(model: nn.Module) -> Iterator[None]:
    """Train a model that convolves 2-D maps with its 4-D weights channels-last, and hand it back in
    the default layout. oneDNN's NHWC convolutions trained the DS-CNN 1.8x faster on one thread (its
    depthwise backward most of all); the arithmetic is the same up to float summation order."""
    if not any(p.dim() == 4 for p in model.parameters()):
        yield
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)


def _targets(split: Split, multilabel: bool) -> Tensor:
    return torch.from_numpy(split.y.astype(np.float32 if multilabel else np.int64))


def check_classes(dataset: FeatureDataset) -> None:
    """Raise QbenchError if some class has no training example (it could never be learned)."""
    missing = [c for c, n in zip(dataset.classes, dataset.class_counts(dataset.train)) if n == 0]
    if missing:
        raise QbenchError(f"the training split has no examples of class(es) {', '.join(map(str, missing))}")


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, *, batch_size: int = 256) -> Tensor:
    """(N, C) logits of ``model`` in eval mode over (N, T, F) inputs."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(torch.from_numpy(x[i:i + batch_size])) for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


def evaluate_model(model: nn.Module, split: Split, *, multilabel: bool) -> dict[str, float]:
    """qbench.metrics.evaluate on one split, plus the mean task ``loss``."""
    logits = predict(model, split.x)
    y = _targets(split, multilabel)
    scores = torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=-1)
    metrics = evaluate(split.y, scores.numpy(), multilabel=multilabel)
    metrics["loss"] = float(task_loss(logits, y, multilabel=multilabel))
    return metrics


class _Step:
    """One optimisation step's loss: plain, output KD, temporal KD, or both."""

    def __init__(self, model: nn.Module, distill: DistillConfig | None, targets: TeacherTargets | None,
                 head: TemporalAttentionHead | None, multilabel: bool) -> None:
        self.model, self.distill, self.targets, self.head, self.multilabel = model, distill, targets, head, multilabel

    def loss(self, x: Tensor, y: Tensor, idx: np.ndarray) -> tuple[Tensor, dict[str, float]]:
        if self.distill is None:
            loss = task_loss(self.model(x), y, multilabel=self.multilabel)
            return loss, {"task": loss.item()}
        t_logits = self.targets.logits[idx]
        if self.head is None:
            return distill_loss(self.model(x), y, multilabel=self.multilabel, config=self.distill,
                                teacher_logits=t_logits)
        feats = self.model.temporal_features(x)  # (B, T', D)
        t_time = interpolate_attention(self.targets.time_weights[idx], feats.shape[1])
        return distill_loss(self.model.classify(feats), y, multilabel=self.multilabel, config=self.distill,
                            teacher_logits=t_logits, student_log_time=self.head.log_weights(feats),
                            teacher_time=t_time)


@torch.no_grad()
def _feature_dim(model: nn.Module, x: np.ndarray) -> int:
    """D of ``model.temporal_features`` (probed in eval mode so BatchNorm statistics stay untouched)."""
    was_training = model.training
    model.eval()
    dim = model.temporal_features(torch.from_numpy(x)).shape[-1]
    model.train(was_training)
    return int(dim)


def _prepare_distill(model: nn.Module, dataset: FeatureDataset, teacher: nn.Module | None,
                     distill: DistillConfig | None) -> tuple[DistillConfig | None, TeacherTargets | None,
                                                             TemporalAttentionHead | None]:
    if distill is None or distill.mode is DistillMode.NONE:
        return None, None, None
    if teacher is None:
        raise QbenchError(f"distillation mode {distill.mode.value!r} needs a teacher")
    head = None
    if distill.mode.uses_attention:
        if not (hasattr(model, "temporal_features") and hasattr(model, "classify")):
            raise QbenchError(f"temporal KD needs a student with temporal_features() and classify(); "
                              f"{type(model).__name__} has not")
        head = TemporalAttentionHead(_feature_dim(model, dataset.train.x[:2]))
    targets = teacher_targets(teacher, dataset.train.x, attention=distill.mode.uses_attention)
    return distill, targets, head


def _batches(n: int, config: TrainConfig, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(n)
    batches = [order[i:i + config.batch_size] for i in range(0, n, config.batch_size)]
    batches = [b for b in batches if len(b) > 1]  # BatchNorm cannot train on a single example
    return batches[:config.max_train_batches] if config.max_train_batches else batches


def train(model: nn.Module, dataset: FeatureDataset, *, config: TrainConfig, teacher: nn.Module | None = None,
          distill: DistillConfig | None = None, progress: bool = True) -> TrainResult:
    """Train ``model`` on ``dataset.train``, keep the checkpoint with the lowest validation error.

    With ``distill`` (and a ``teacher``), the teacher's outputs and/or attention rollout over the
    training split are computed once up front and mixed into the loss (see :mod:`qbench.distill`).
    """
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"config must be a TrainConfig, got {type(config).__name__}")
    check_classes(dataset)
    start = time.perf_counter()
    with torch_settings(threads=config.threads, seed=config.seed):
        with _channels_last(model):
            distill, targets, head = _prepare_distill(model, dataset, teacher, distill)
            step = _Step(model, distill, targets, head, dataset.multilabel)
            history, best, state = _fit(model, head, step, dataset, config, progress)
            model.load_state_dict(state)
        model.eval()
        test = evaluate_model(model, dataset.test, multilabel=dataset.multilabel)
    return TrainResult(model, history, best["epoch"], best["val"], test, time.perf_counter() - start)


def _train_epoch(step: _Step, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, batches: list[np.ndarray],
                 augment: SpecAugment | None, rng: np.random.Generator, bar: tqdm,
                 postfix: dict[str, Any]) -> dict[str, float]:
    """One pass over ``batches``; returns the mean loss and its parts, prefixed ``train_``."""
    step.model.train()
    sums: dict[str, float] = {}
    for idx in batches:
        xb = x[idx] if augment is None else spec_augment(x[idx], augment, rng)
        loss, parts = step.loss(xb, y[idx], idx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for k, v in {"loss": loss.item(), **parts}.items():
            sums[k] = sums.get(k, 0.0) + v
        bar.update()
        bar.set_postfix(**postfix, loss=f"{loss.item():.3f}")
    return {f"train_{k}": v / len(batches) for k, v in sums.items()}


def _fit(model: nn.Module, head: nn.Module | None, step: _Step, dataset: FeatureDataset, config: TrainConfig,
         progress: bool) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Tensor]]:
    """The epoch loop with validation and early stopping: (history, best row, best state_dict)."""
    params = list(model.parameters()) + (list(head.parameters()) if head is not None else [])
    # fused: one kernel for all parameters (0.7 against 4.2 ms a transformer teacher's step, one thread)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    rng = np.random.default_rng(config.seed)
    augment_rng = np.random.default_rng([config.seed, 1])  # its own stream: the batch order stays as without it
    x, y = torch.from_numpy(dataset.train.x), _targets(dataset.train, dataset.multilabel)
    n_batches = len(_batches(len(x), config, np.random.default_rng(0)))
    bar = tqdm(total=config.epochs * n_batches, disable=not progress, desc="train", leave=False)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    state: dict[str, Tensor] = {}
    if config.keep_start:
        best = {"epoch": 0, "val": evaluate_model(model, dataset.val, multilabel=dataset.multilabel)}
        state = copy.deepcopy(model.state_dict())
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        postfix = {"epoch": epoch, "best_val_err": f"{best['val']['error']:.3f}" if best else "-"}
        row: dict[str, Any] = {"epoch": epoch, **_train_epoch(step, optimizer, x, y, _batches(len(x), config, rng),
                                                              config.augment, augment_rng, bar, postfix)}
        schedule.step()
        row["val"] = evaluate_model(model, dataset.val, multilabel=dataset.multilabel)
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        # NaN error (e.g. mAP of a split without positives) never improves, but epoch 1 is always kept.
        if best is None or row["val"]["error"] < best["val"]["error"]:
            best, state = row, copy.deepcopy(model.state_dict())
        elif epoch - best["epoch"] >= config.patience:
            break
    bar.close()
    return history, best, state
