"""The sweep's stages, each built once and shared by every point that needs it.

dataset -> teacher -> fp32 student (per distillation mode) -> PTQ / QAT twin (per bit pair)
-> backend artifacts. Trained models are cached on disk (:mod:`qbench.model_cache`), so a
rerun loads them; within one run they are memoised, and so is a stage's failure: every point
that needs a failed stage fails with that stage's reason, without retrying it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from qbench.distill import DistillMode
from qbench.errors import QbenchError
from qbench.data.config import default_cache_dir
from qbench.model_cache import cache_key, load_or_fit
from qbench.sweep.config import SweepConfig


CALIBRATION_BATCHES = 8  # of 64 training clips: PTQ statistics, and QAT's starting scales


class StageFailed(QbenchError):
    """A shared stage failed earlier in this run; its reason is repeated, not retried."""


class Pipeline:
    """Stages of one sweep over one dataset. ``measure(point)`` is in :mod:`qbench.sweep.points`."""

    def __init__(self, cfg: SweepConfig, *, cache_dir: Path | None = None, progress: bool = True):
        self.cfg = cfg
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.progress = progress
        self._memo: dict[tuple, Any] = {}

    def measure(self, point) -> dict[str, Any]:
        from qbench.sweep.points import measure_point

        return measure_point(self, point)

    def _once(self, key: tuple, make: Callable[[], Any]) -> Any:
        if key in self._memo:
            value = self._memo[key]
            if isinstance(value, BaseException):
                raise StageFailed(f"{'/'.join(map(str, key))} failed: {value}")
            return value
        try:
            self._memo[key] = make()
        except Exception as exc:
            self._memo[key] = exc
            raise
        return self._memo[key]

    # -- stages ------------------------------------------------------------------------------

    def dataset(self):
        from qbench.data import build_dataset

        return self._once(("data",), lambda: build_dataset(self.cfg.data, cache_dir=self.cache_dir,
                                                           progress=self.progress))

    def teacher(self) -> nn.Module:
        from qbench.teacher_cache import train_teacher

        return self._once(("teacher",), lambda: train_teacher(
            self.cfg.teacher, self.dataset(), config=self.cfg.teacher_train.replace(seed=self.cfg.seed),
            cache_dir=self.cache_dir, progress=self.progress))

    def _student_description(self, model: str, mode: DistillMode) -> dict[str, Any]:
        desc = {"stage": "student", "model": model, "data": self.dataset().config.key(),
                "train": self.cfg.student_train.to_dict(), "distill": self.cfg.distill_config(mode).to_dict(),
                "seed": self.cfg.seed}
        if mode is not DistillMode.NONE:
            desc["teacher"] = {"name": self.cfg.teacher, "train": self.cfg.teacher_train.to_dict()}
        return desc

    def _build_student(self, model: str) -> nn.Module:
        import torch

        import models

        ds = self.dataset()
        torch.manual_seed(self.cfg.seed)  # initial weights are part of what the cache key names
        return models.build_student(model, n_mels=ds.n_mels, n_frames=ds.n_frames, n_classes=ds.n_classes)

    def _fit(self, model: nn.Module, *, train_cfg, mode: DistillMode) -> tuple[nn.Module, dict[str, Any]]:
        from qbench.train import train

        teacher = self.teacher() if mode is not DistillMode.NONE else None
        result = train(model, self.dataset(), config=train_cfg.replace(seed=self.cfg.seed), teacher=teacher,
                       distill=self.cfg.distill_config(mode), progress=self.progress)
        return result.model, {"best_epoch": result.best_epoch, "val": result.best_val, "test": result.test,
                              "train_seconds": result.seconds}

    def student(self, model: str, mode: DistillMode) -> tuple[nn.Module, dict[str, Any]]:
        """The fp32 student distilled with ``mode`` (cached), and its training metrics."""
        def make():
            path = self.cache_dir / "models" / f"student-{model}-{cache_key(self._student_description(model, mode))}.pt"
            return load_or_fit(path, lambda: self._build_student(model),
                               lambda m: self._fit(m, train_cfg=self.cfg.student_train, mode=mode))

        return self._once(("student", model, mode.value), make)

    def ptq(self, model: str, mode: DistillMode, w: int, a: int) -> nn.Module:
        """Post-training quantization of the fp32 student: calibration on training data only."""
        from qbench.quant.quantize import calibrate, quantize

        def make():
            qmodel = quantize(self.student(model, mode)[0], self.cfg.quant_config(w, a))
            calibrate(qmodel, self.dataset().train, batches=CALIBRATION_BATCHES)
            return qmodel.eval()

        return self._once(("ptq", model, mode.value, w, a), make)

    def qat(self, model: str, mode: DistillMode, w: int, a: int) -> tuple[nn.Module, dict[str, Any]]:
        """QAT from the PTQ model (its calibrated scales), distilled as the student was (cached)."""
        import copy

        def build() -> nn.Module:
            return copy.deepcopy(self.ptq(model, mode, w, a))

        def make():
            path = self.cache_dir / "models" / f"qat-{model}_w{w}a{a}-{self._qat_key(model, mode, w, a)}.pt"
            return load_or_fit(path, build, lambda m: self._fit(m, train_cfg=self.cfg.qat_train, mode=mode))

        return self._once(("qat", model, mode.value, w, a), make)

    def _qat_key(self, model: str, mode: DistillMode, w: int, a: int) -> str:
        """Cache key of everything that determines a QAT model's weights."""
        return cache_key({**self._student_description(model, mode), "stage": "qat",
                          "quant": self.cfg.quant_config(w, a).to_dict(), "qat": self.cfg.qat_train.to_dict()})

    def artifact_dir(self, model: str, mode: DistillMode, w: int, a: int) -> Path:
        """Where this QAT model's exported artifacts are written (one folder per QAT model)."""
        return self.cache_dir / "artifacts" / f"{model}_w{w}a{a}-{self._qat_key(model, mode, w, a)}"

    def eval_split(self):
        """The test split, capped at ``eval_limit`` clips when set (quick runs)."""
        test = self.dataset().test
        return test if self.cfg.eval_limit is None else test.subset(self.cfg.eval_limit)

    def thread_counts(self) -> list[int]:
        from qbench.provenance import machine_info

        usable = machine_info()["usable_cores"]
        return sorted({usable if t == 0 else t for t in self.cfg.threads})

    def latency_inputs(self) -> dict[int, np.ndarray]:
        """Batch size -> (B, T, F) input taken from the test split (repeated if it is short)."""
        x = self.eval_split().x
        return {b: np.ascontiguousarray(np.resize(x, (b, *x.shape[1:])), dtype=np.float32)
                for b in sorted({1, self.cfg.batch})}
