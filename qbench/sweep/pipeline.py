"""The sweep's stages, each built once and shared by every point that needs it.

dataset -> teacher -> fp32 student (per distillation mode) -> PTQ / QAT twin (per bit pair)
-> backend artifacts. Trained models are cached on disk (:mod:`qbench.model_cache`), so a
rerun loads them; within one run they are memoised, and so is a stage's failure: every point
that needs a failed stage fails with that stage's reason, without retrying it.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from qbench.distill import DistillConfig, DistillMode
from qbench.errors import QbenchError
from qbench.data.config import default_cache_dir
from qbench.model_cache import cache_key, load_or_fit
from qbench.quant.precision import Precision
from qbench.sweep.config import SweepConfig


STAGES = {"data": "data", "teacher-data": "data", "teacher": "teacher", "student": "students", "ptq": "ptq",
          "qat": "qat", "artifact": "export", "engine": "export"}
"""Memoised stage kinds -> the stage their wall time is booked to; everything else is ``scoring``
(test-split scores); :func:`qbench.sweep.points.latency` books ``latency``, and an exported
artifact's conformance check (:func:`qbench.sweep.points._artifact`) ``conformance``."""
CALIBRATION_BATCHES = 8  # of 64 training clips: PTQ statistics, and QAT's starting scales
TRAIN_ERROR_CLIPS = 1000  # training clips scored after training: train vs test error says whether it learned


class StageFailed(QbenchError):
    """A shared stage failed earlier in this run; its reason is repeated, not retried."""


class Pipeline:
    """Stages of one sweep over one dataset. ``measure(point)`` is in :mod:`qbench.sweep.points`."""

    def __init__(self, cfg: SweepConfig, *, cache_dir: Path | None = None, progress: bool = True,
                 dataset=None):
        """``dataset``: a :class:`~qbench.data.FeatureDataset` already in memory (the Python API), used
        instead of building ``cfg.data``; it is keyed by its contents (:func:`dataset_key`)."""
        self.cfg = cfg
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.progress = progress
        self._memo: dict[tuple, Any] = {}
        self.holds_dataset = dataset is not None  # in memory only: another process cannot rebuild it
        self.ahead: dict[str, Any] | None = None  # how models were trained ahead (qbench.sweep.ahead), if they were
        self.measured_ahead: dict[tuple, list] = {}  # group key -> its PointResults, measured while models trained
        if dataset is not None:
            self._memo[("data",)] = self._memo[("teacher-data",)] = keyed_dataset(dataset)
        self.stage_seconds: dict[str, float] = {}  # wall time per stage in this run (see STAGES)
        # set while a worker computes points whose timing belongs elsewhere (qbench.sweep.deferred)
        self.latency_sink: Callable[..., dict[str, Any]] | None = None
        self._open: list[list[float]] = []  # [start, seconds spent in nested stages] per running stage

    def measure(self, point) -> dict[str, Any]:
        """The point's record; time not booked to a stage inside it (scoring artifacts, agreement) is scoring."""
        from qbench.sweep.points import measure_point

        with self.timed("scoring"):
            return measure_point(self, point)

    def once(self, key: tuple, make: Callable[[], Any]) -> Any:
        """``make()`` memoised under ``key`` for this run; a failure is memoised too and repeated as
        :class:`StageFailed`. ``key[0]`` names the stage its time is booked to (:data:`STAGES`)."""
        if key in self._memo:
            value = self._memo[key]
            if isinstance(value, BaseException):
                raise StageFailed(f"{'/'.join(map(str, key))} failed: {value}")
            return value
        try:
            with self.timed(STAGES.get(key[0], "scoring")):
                self._memo[key] = make()
        except Exception as exc:
            self._memo[key] = exc
            raise
        return self._memo[key]

    def fail_stage(self, key: tuple, reason: str) -> None:
        """Record that stage ``key`` failed elsewhere (a worker process) with ``reason``: the points that
        need it fail with it, as after a failure here."""
        self._memo[key] = QbenchError(reason)

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Add the wall time of the block to ``stage_seconds[stage]``, less the stages nested in it."""
        self._open.append([time.perf_counter(), 0.0])
        try:
            yield
        finally:
            start, nested = self._open.pop()
            elapsed = time.perf_counter() - start
            self.book({stage: elapsed - nested})
            if self._open:
                self._open[-1][1] += elapsed

    def book(self, seconds: dict[str, float]) -> None:
        """Add ``seconds`` (stage -> seconds) to this run's stage times; another process's (a training or
        measuring worker, a Ray task) are summed in too, though they overlapped."""
        for stage, s in seconds.items():
            self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + s

    # -- stages ------------------------------------------------------------------------------

    def dataset(self, *, jobs: int = 1):
        """The sweep's dataset; ``jobs``: processes that compute it if it is not cached (the first call's)."""
        from qbench.data import build_dataset

        def build():
            dataset = build_dataset(self.cfg.data, cache_dir=self.cache_dir, progress=self.progress, jobs=jobs)
            self.book({"data": dataset.worker_seconds})
            return dataset

        return self.once(("data",), build)

    def teacher_dataset(self):
        """The teacher's training data: the sweep's dataset, or a bigger draw of the same generator."""
        from qbench.data import build_dataset

        if self.cfg.teacher_data == self.cfg.data:
            return self.dataset()
        return self.once(("teacher-data",), lambda: build_dataset(self.cfg.teacher_data, cache_dir=self.cache_dir,
                                                                   progress=self.progress))

    def teacher(self) -> nn.Module:
        from qbench.teacher_cache import train_teacher

        return self.once(("teacher",), lambda: train_teacher(
            self.cfg.teacher, self.teacher_dataset(), config=self.cfg.teacher_train.replace(seed=self.cfg.seed),
            cache_dir=self.cache_dir, progress=self.progress, options=self.cfg.model_options))

    def teacher_bytes(self) -> int:
        """The teacher's fp32 size, which every point states its own against: from the architecture
        alone, so an undistilled grid needs no trained teacher for it."""
        import models
        from qbench.quant.size import fp32_size

        ds = self.dataset()
        return self.once(("teacher-bytes",), lambda: fp32_size(models.build_teacher(
            self.cfg.teacher, n_mels=ds.n_mels, n_frames=ds.n_frames, n_classes=ds.n_classes,
            **self.cfg.model_options)))

    def teacher_file(self) -> Path:
        """Where the teacher is cached (trained or not), without building its dataset."""
        from qbench.teacher_cache import teacher_path

        held = self._memo.get(("teacher-data",))
        ds = self.dataset()
        return teacher_path(self.cfg.teacher, (held.config if held is not None else self.cfg.teacher_data).key(),
                            {"n_mels": ds.n_mels, "n_frames": ds.n_frames, "n_classes": ds.n_classes},
                            config=self.cfg.teacher_train.replace(seed=self.cfg.seed), cache_dir=self.cache_dir,
                            options=self.cfg.model_options)

    def _student_description(self, model: str, mode: DistillMode, seed: int | None = None) -> dict[str, Any]:
        import models

        desc = {"stage": "student", "model": model, **models.student_fingerprint(model),
                "data": self.dataset().config.key(),
                "train": self.cfg.student_train_for(model).to_dict(), "distill": self._distill_key(mode),
                "seed": self.cfg.seed if seed is None else seed, **self.cfg.model_options}
        if mode is not DistillMode.NONE:
            desc["teacher"] = {"name": self.cfg.teacher, "train": self.cfg.teacher_train.to_dict()}
            if self.cfg.teacher_data != self.cfg.data:
                desc["teacher"]["data"] = self.cfg.teacher_data.key()
        checkpoint = self.checkpoint(model)
        if checkpoint is not None:
            desc["checkpoint"] = file_digest(checkpoint)
        return desc

    def _distill_key(self, mode: DistillMode) -> dict[str, Any]:
        """The distillation settings that shape a student of ``mode``: an undistilled student uses none
        of them, so it keys on the defaults (changing ``--kd-temperature`` does not retrain it)."""
        if mode is DistillMode.NONE:
            return DistillConfig(mode=mode).to_dict()
        return self.cfg.distill_config(mode).to_dict()

    def checkpoint(self, model: str) -> Path | None:
        """The state-dict file ``model`` starts from instead of training (``SweepConfig.checkpoints``)."""
        path = dict(self.cfg.checkpoints).get(model)
        return None if path is None else Path(path)

    def model_options(self, model: str) -> dict[str, Any]:
        """Options ``model`` is built with: the sweep's for built-ins; none for a model you bring."""
        import models

        return {} if models.is_user_student(model) else self.cfg.model_options

    def _build_student(self, model: str, seed: int) -> nn.Module:
        import torch

        import models

        ds = self.dataset()
        torch.manual_seed(seed)  # initial weights are part of what the cache key names
        return models.build_student(model, n_mels=ds.n_mels, n_frames=ds.n_frames, n_classes=ds.n_classes,
                                    **self.model_options(model))

    def check_student(self, model: str) -> None:
        """Build ``model`` once for this data and check the contract before any training: ``(B, T, F)``
        in, ``(B, C)`` out, and ``temporal_features`` when a distillation mode needs it. One-line errors."""
        import torch

        import models

        ds = self.dataset()
        with torch.random.fork_rng():
            net = self._build_student(model, self.cfg.seed).eval()
            with torch.no_grad():
                out = net(torch.from_numpy(np.ascontiguousarray(ds.train.x[:2])))
        expected = (min(2, len(ds.train.x)), ds.n_classes)
        if tuple(getattr(out, "shape", ())) != expected:
            raise QbenchError(f"student {model}: maps (B, T, F) = {tuple(ds.train.x[:2].shape)} to "
                              f"{tuple(getattr(out, 'shape', ()))}, expected (B, C) = {expected}")
        if any(m.uses_attention for m in self.cfg.distill) and not (
                callable(getattr(net, "temporal_features", None)) and callable(getattr(net, "classify", None))):
            raise QbenchError(f"student {models.file_name(model)}: temporal KD needs temporal_features(x) -> (B, T', D) "
                              f"and classify(feats) -> (B, C); the model has none: drop tkd from --distill")


    def _fit(self, model: nn.Module, *, train_cfg, mode: DistillMode, seed: int | None = None
             ) -> tuple[nn.Module, dict[str, Any]]:
        from qbench.train import evaluate_model, train

        teacher = self.teacher() if mode is not DistillMode.NONE else None
        ds = self.dataset()
        result = train(model, ds, config=train_cfg.replace(seed=self.cfg.seed if seed is None else seed),
                       teacher=teacher, distill=self.cfg.distill_config(mode), progress=self.progress)
        # did it learn? error on (a slice of) the clips it trained on, beside validation and test
        seen = evaluate_model(result.model, ds.train.subset(min(len(ds.train.x), TRAIN_ERROR_CLIPS)),
                              multilabel=ds.multilabel)
        return result.model, {"best_epoch": result.best_epoch, "epochs": train_cfg.epochs, "train_split": seen,
                              "val": result.best_val, "test": result.test, "train_seconds": result.seconds}

    def student(self, model: str, mode: DistillMode, seed: int | None = None) -> tuple[nn.Module, dict[str, Any]]:
        """The fp32 student distilled with ``mode`` (cached), and its training metrics.

        ``seed``: an extra training seed (None: the sweep's own, which PTQ and QAT start from).
        """
        seed = self.cfg.seed if seed is None else seed

        def make():
            path = self.student_path(model, mode, seed)
            if self.checkpoint(model) is not None:
                return load_or_fit(path, lambda: self._build_student(model, seed),
                                   lambda m: self._load_checkpoint(m, self.checkpoint(model)))
            return load_or_fit(path, lambda: self._build_student(model, seed),
                               lambda m: self._fit(m, train_cfg=self.cfg.student_train_for(model), mode=mode,
                                                   seed=seed))

        return self.once(("student", model, mode.value, seed), make)

    def _load_checkpoint(self, model: nn.Module, path: Path) -> tuple[nn.Module, dict[str, Any]]:
        """The student with the weights of ``path`` (a state dict, or qbench's ``{"state_dict": ...}``)
        and its errors; no training."""
        import torch

        from qbench.train import evaluate_model

        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # not a torch file, or not loadable safely: the user's input
            raise QbenchError(f"--checkpoint {path}: cannot load: {type(exc).__name__}: {_first_line(exc)}") from None
        state = entry.get("state_dict", entry) if isinstance(entry, dict) else None
        if not isinstance(state, dict):
            raise QbenchError(f"--checkpoint {path}: expected a state dict, got {type(entry).__name__}")
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise QbenchError(f"--checkpoint {path} does not fit the model: {_first_line(exc)}") from None
        model.eval()
        ds = self.dataset()
        figures = {name: evaluate_model(model, split, multilabel=ds.multilabel) for name, split in
                   (("train_split", ds.train.subset(min(len(ds.train.x), TRAIN_ERROR_CLIPS))), ("val", ds.val),
                    ("test", ds.test))}
        return model, {"checkpoint": str(path), "checkpoint_sha256": file_digest(path), "epochs": 0, **figures}

    def ptq(self, model: str, mode: DistillMode, bits: Precision) -> nn.Module:
        """Post-training quantization of the fp32 student: calibration on training data only."""
        from qbench.quant.quantize import calibrate, quantize
        from qbench.train import torch_settings

        def build() -> nn.Module:
            return quantize(self.student(model, mode)[0], self.cfg.quant_config(bits))

        def fit(qmodel: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
            # calibration runs on training's thread policy (one thread unless configured)
            with torch_settings(threads=self.cfg.student_train.threads, seed=self.cfg.seed):
                calibrate(qmodel, self.dataset().train, batches=CALIBRATION_BATCHES)
            return qmodel, {"calibration_batches": CALIBRATION_BATCHES}

        # cached, so a re-measure, and the measuring process after a QAT worker calibrated it, load it
        return self.once(("ptq", model, mode.value, str(bits)),
                         lambda: load_or_fit(self.ptq_path(model, mode, bits), build, fit)[0])

    def qat(self, model: str, mode: DistillMode, bits: Precision) -> tuple[nn.Module, dict[str, Any]]:
        """QAT from the PTQ model (its calibrated scales), distilled as the student was (cached)."""
        import copy

        def build() -> nn.Module:
            return copy.deepcopy(self.ptq(model, mode, bits))

        def make():
            return load_or_fit(self.qat_path(model, mode, bits), build,
                               lambda m: self._fit(m, train_cfg=self.cfg.qat_train, mode=mode))

        return self.once(("qat", model, mode.value, str(bits)), make)

    def _quantized_key(self, model: str, mode: DistillMode, bits: Precision, stage: str, **settings: Any) -> str:
        """Cache key of everything that determines a quantized model's weights: its student, its
        quantization at ``bits`` and the ``stage``'s own ``settings``."""
        return cache_key({**self._student_description(model, mode), "stage": stage,
                          "quant": self.cfg.quant_config(bits).to_dict(), **settings})

    def _qat_key(self, model: str, mode: DistillMode, bits: Precision) -> str:
        """Cache key of everything that determines a QAT model's weights."""
        return self._quantized_key(model, mode, bits, "qat", qat=self.cfg.qat_train.to_dict())

    def fp32_artifact_dir(self, model: str, mode: DistillMode) -> Path:
        """Where the fp32 student's runtime artifacts are written (one folder per trained student)."""
        return self.cache_dir / "artifacts" / f"{self._file_name(model)}_fp32-{cache_key(self._student_description(model, mode))}"

    def artifact_dir(self, model: str, mode: DistillMode, bits: Precision) -> Path:
        """Where this QAT model's exported artifacts are written (one folder per QAT model)."""
        return self.cache_dir / "artifacts" / f"{self._file_name(model)}_{bits.name}-{self._qat_key(model, mode, bits)}"

    def student_path(self, model: str, mode: DistillMode, seed: int | None = None) -> Path:
        """The cache file of the fp32 student (``seed`` None: the sweep's seed)."""
        key = cache_key(self._student_description(model, mode, seed))
        return self.cache_dir / "models" / f"student-{self._file_name(model)}-{key}.pt"

    def ptq_path(self, model: str, mode: DistillMode, bits: Precision) -> Path:
        """The cache file of the calibrated (PTQ) model at ``bits``."""
        key = self._quantized_key(model, mode, bits, "ptq", calibration_batches=CALIBRATION_BATCHES)
        return self.cache_dir / "models" / f"ptq-{self._file_name(model)}_{bits.name}-{key}.pt"

    def qat_path(self, model: str, mode: DistillMode, bits: Precision) -> Path:
        """The cache file of the QAT model at ``bits``."""
        return self.cache_dir / "models" / f"qat-{self._file_name(model)}_{bits.name}-{self._qat_key(model, mode, bits)}.pt"

    @staticmethod
    def _file_name(model: str) -> str:
        import models

        return models.file_name(model)

    def eval_split(self):
        """The test split, capped at ``eval_limit`` clips when set (quick runs)."""
        test = self.dataset().test
        return test if self.cfg.eval_limit is None else test.subset(self.cfg.eval_limit)

    def thread_counts(self) -> list[int]:
        from qbench.provenance import machine_info

        usable = machine_info()["usable_cores"]
        return sorted({usable if t == 0 else t for t in self.cfg.threads})

    def compute_threads(self) -> int:
        """Threads for scoring and conformance (not timed): the largest thread count timed."""
        return max(self.thread_counts())

    def failed_stage(self, key: tuple) -> str | None:
        """Why stage ``key`` failed in this run (here or in a worker), or None."""
        value = self._memo.get(key)
        return str(value) if isinstance(value, BaseException) else None

    def latency_inputs(self) -> dict[int, np.ndarray]:
        """Batch size -> (B, T, F) input taken from the test split (repeated if it is short)."""
        x = self.eval_split().x
        return {b: np.ascontiguousarray(np.resize(x[:b], (b, *x.shape[1:])), dtype=np.float32)
                for b in sorted({1, self.cfg.batch})}


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """sha256 (16 hex digits) of a file's contents, remembered per (path, size, mtime)."""
    path = Path(path)
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _DIGESTS:
            _DIGESTS[key] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError as exc:
        raise QbenchError(f"cannot read {path}: {exc.strerror or exc}") from None
    return _DIGESTS[key]


class InMemoryData:
    """The ``config`` of a dataset handed in as arrays: its cache key is a hash of the contents."""

    def __init__(self, key: str, source: Any = None) -> None:
        self._key = key
        self.source = source  # the dataset's own config, when it had one
        self.clip_seconds = getattr(source, "clip_seconds", float("nan"))

    def key(self, length: int = 16) -> str:
        return self._key[:length]

    def to_dict(self) -> dict[str, Any]:
        return {"in_memory": self._key}


def dataset_key(ds) -> str:
    """A stable key of a FeatureDataset's classes and arrays (what training on it depends on)."""
    h = hashlib.sha256(repr((tuple(ds.classes), bool(ds.multilabel))).encode())
    for split in (ds.train, ds.val, ds.test):
        for arr in (split.x, split.y):
            a = np.ascontiguousarray(arr)
            h.update(repr((a.dtype.str, a.shape)).encode())
            h.update(a.tobytes())
    return h.hexdigest()[:16]


def keyed_dataset(ds):
    """``ds`` with a config whose ``key()`` names its contents (unchanged when it has one already)."""
    import dataclasses

    from qbench.data.config import DataConfig

    if isinstance(ds.config, (DataConfig, InMemoryData)):
        return ds
    return dataclasses.replace(ds, config=InMemoryData(dataset_key(ds), ds.config))
