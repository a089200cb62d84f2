"""From command-line options to a validated SweepConfig, before any work starts."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from qbench.data.config import SNR_PRESETS, DataConfig, DatasetKind
from qbench.errors import ConfigError, QbenchError
from qbench.sweep.config import DEFAULT_TEST_CLIPS, SweepConfig, bit_pairs, parse_bits, parse_int_list
from qbench.train import TrainConfig


def _csv(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def quick_preset(cfg: SweepConfig) -> SweepConfig:
    """A smoke run of the same road: 1 s clips, a dozen clips a class, a few batches per stage."""
    tiny = TrainConfig(epochs=1, patience=1, batch_size=16, max_train_batches=3)
    return cfg.replace(
        data=cfg.data.replace(clip_seconds=min(cfg.data.clip_seconds, 1.0), clips_per_class=12, test_clips=None)
        if cfg.data.kind.synthetic else cfg.data,
        teacher_train=tiny, student_train=tiny, qat_train=tiny.replace(lr=5e-4), student_epochs=(),
        teacher_clips_per_class=None,
        latency_repeats=5, eval_limit=64, batch=8,
    )


def data_config(args: argparse.Namespace) -> DataConfig:
    """The DataConfig the data options describe; a one-line error for an unusable path."""
    if args.data is not None and args.dataset is not None:
        raise ConfigError("--data takes a folder you bring; --dataset names generated data: use one")
    if args.data is None and args.dataset_format is not None:
        raise ConfigError("--dataset-format describes --data, which is missing")
    fields: dict = {}
    if args.seconds is not None:
        fields["clip_seconds"] = args.seconds
    if args.clips_per_class is not None:
        fields["clips_per_class"] = args.clips_per_class
    if args.seed is not None:
        fields["seed"] = args.seed
    if getattr(args, "snr", None) is not None:
        fields["snr_db"] = parse_snr(args.snr)
    if getattr(args, "test_clips", None) is not None:
        fields["test_clips"] = args.test_clips
    if args.data is not None:
        if "snr_db" in fields or "test_clips" in fields:
            raise ConfigError("--snr and --test-clips shape generated data; --data brings its own")
        if args.dataset_format is None:
            raise ConfigError("--data needs --dataset-format (esc50, fsd50k, speechcommands or csv)")
        check_readable_dir(args.data)
        return DataConfig(kind=DatasetKind(args.dataset_format), path=str(args.data.resolve()), **fields)
    fields.setdefault("test_clips", DEFAULT_TEST_CLIPS)
    return DataConfig(kind=DatasetKind(args.dataset or "keywords"), **fields)


def parse_snr(text: str) -> tuple[float, float]:
    """``--snr``: a preset name (hard, clean) or ``LOW,HIGH`` in dB."""
    if text in SNR_PRESETS:
        return SNR_PRESETS[text]
    parts = [t.strip() for t in text.split(",")]
    try:
        low, high = (float(t) for t in parts)
    except ValueError:
        raise ConfigError(f"--snr: expected {' or '.join(SNR_PRESETS)} or LOW,HIGH in dB, got {text!r}") from None
    return (low, high)


def check_readable_dir(path: Path) -> None:
    if not path.exists():
        raise QbenchError(f"data path {path} does not exist")
    if not path.is_dir():
        raise QbenchError(f"data path {path} is not a folder")
    if not os.access(path, os.R_OK | os.X_OK):
        raise QbenchError(f"data path {path} is not readable")


def config_from_args(args: argparse.Namespace) -> SweepConfig:
    """Every option checked (bits, names, paths) and folded into one SweepConfig."""
    fields: dict = {"data": data_config(args)}
    pairs = bit_pairs(
        bits=parse_bits("--bits", args.bits) if args.bits is not None else None,
        weight_bits=parse_bits("--weight-bits", args.weight_bits) if args.weight_bits is not None else None,
        act_bits=parse_bits("--act-bits", args.act_bits) if args.act_bits is not None else None,
    )
    if pairs is not None:
        fields["bits"] = pairs
    if getattr(args, "mixed", None):
        from qbench.quant.precision import Precision

        fields["mixed"] = tuple(str(Precision.parse(m)) for m in args.mixed)
    for option, name in (("models", "models"), ("distill", "distill"), ("qat_distill", "qat_distill"),
                         ("backends", "backends")):
        value = getattr(args, option)
        if value is not None:
            if not _csv(value):
                raise ConfigError(f"--{option.replace('_', '-')}: expected a comma-separated list, got {value!r}")
            fields[name] = _csv(value)
    if args.teacher is not None:
        fields["teacher"] = args.teacher
    if getattr(args, "checkpoint", None) is not None:
        fields["checkpoints"] = checkpoint_option(args.checkpoint, fields.get("models", SweepConfig.models))
    if args.threads is not None:
        fields["threads"] = parse_int_list("--threads", args.threads)
    for name in ("batch", "seed"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    if getattr(args, "seeds", None) is not None:
        seeds = parse_int_list("--seeds", args.seeds)
        if args.seed is not None:
            raise ConfigError("--seeds lists every training seed; drop --seed")
        fields["seed"], fields["seeds"] = seeds[0], seeds[1:]
    if getattr(args, "augment", None) is not None:
        fields["augment"] = augment_option(args.augment, fields.get("models", SweepConfig.models))
    if getattr(args, "clip_norm", None) is not None:
        fields["clip_norm"] = args.clip_norm
    if args.no_ptq:
        fields["ptq"] = False
    if args.no_latency:
        fields["latency"] = False
    if args.no_quant:
        if args.qat_distill is not None:
            raise ConfigError("--no-quant trains fp32 students only: drop --qat-distill")
        fields["qat_distill"] = ()
    elif args.qat_distill is None and "distill" in fields:
        # QAT follows the user's modes: the distilled ones when any, else the ones given
        modes = [m for m in fields["distill"] if m != "none"] or list(fields["distill"])
        fields["qat_distill"] = tuple(modes)
    base = SweepConfig(**fields)
    quant = {k: getattr(args, k) for k in ("scale_type", "granularity") if getattr(args, k) is not None}
    if quant:
        base = base.replace(quant=base.quant.replace(**quant))
    distill = {field: getattr(args, option) for option, field in
               (("kd_temperature", "temperature"), ("kd_alpha", "alpha"), ("tkd_lambda", "lambda_"))
               if getattr(args, option) is not None}
    if distill:
        base = base.replace(distill_params=base.distill_params.replace(**distill))
    base = quick_preset(base) if args.quick else base
    return epochs_options(base, getattr(args, "epochs", None), getattr(args, "teacher_epochs", None))


def augment_option(text: str, models: tuple[str, ...]) -> tuple[str, ...]:
    """``--augment dscnn,crnn`` or ``--augment none``: the students trained with SpecAugment."""
    names = () if text.strip() == "none" else _csv(text)
    strays = [n for n in names if n not in models]
    if strays:
        raise ConfigError(f"--augment {','.join(strays)}: not among the students ({','.join(models)})")
    return names


def epochs_options(cfg: SweepConfig, epochs: int | None, teacher_epochs: int | None) -> SweepConfig:
    """``--epochs`` (every fp32 student, replacing per-student overrides) and ``--teacher-epochs``;
    applied after ``--quick``, so a smoke run can still ask for more epochs."""
    if epochs is not None:
        cfg = cfg.replace(student_train=cfg.student_train.replace(epochs=epochs), student_epochs=())
    if teacher_epochs is not None:
        cfg = cfg.replace(teacher_train=cfg.teacher_train.replace(epochs=teacher_epochs))
    return cfg


def checkpoint_option(path: Path, students: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """``--checkpoint PATH``: the one student named in ``--models`` starts from these weights."""
    if len(students) != 1:
        raise ConfigError(f"--checkpoint holds one student's weights: name that student alone in --models "
                          f"(got {', '.join(students)})")
    path = Path(path).expanduser()
    if not path.is_file() or not os.access(path, os.R_OK):
        raise QbenchError(f"--checkpoint {path}: no readable file there")
    return ((students[0], str(path.resolve())),)


def validate_names(cfg: SweepConfig) -> None:
    """Unknown students or teacher: a one-line error listing the known names."""
    import models

    unknown = [m for m in cfg.models if not models.is_model_spec(m) and m not in models.list_students()]
    if unknown:
        raise ConfigError(f"--models: unknown student(s) {', '.join(unknown)}; known: {', '.join(models.list_students())}"
                          f", or a model you bring as file.py:factory")
    for m in cfg.models:
        models.resolve_student(m)  # loads a file.py:factory spec: a bad file is one line now, not a failed point
    if cfg.teacher not in models.list_teachers():
        raise ConfigError(f"--teacher: unknown teacher {cfg.teacher!r}; known: {', '.join(models.list_teachers())}")
    _check_mixed(cfg)


def _check_mixed(cfg: SweepConfig) -> None:
    """Every ``--mixed`` override names a layer of every student: a typo is one line before any work."""
    from qbench.sweep.plan import nominal_student

    for precision in (p for p in cfg.precisions() if p.mixed):
        for model in cfg.models:
            names = [n for n, _ in nominal_student(cfg, model).named_modules() if n]
            for o in precision.layers:
                if not any(o.matches(n) for n in names):
                    raise ConfigError(f"--mixed {precision}: {o.layer!r} names no layer of {model} "
                                      f"(its layers: {', '.join(n for n in names if '.' not in n)}, ...)")
