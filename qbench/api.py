"""The road from Python: your model and data through the stages the sweep and every command use.

    import qbench
    frame = qbench.run_grid(my_module, my_dataset, bits=(4, 8), backends=("torch", "onnxruntime"))

:func:`run_grid` builds a :class:`~qbench.sweep.SweepConfig`, hands it to the sweep's
:class:`~qbench.sweep.pipeline.Pipeline` and measures the planned points with
:func:`qbench.sweep.points.measure_point`: the same cache keys and figures as ``qbench sweep``.
The single-stage commands (``train``, ``quantize``, ``export``) measure a slice of the same plan
through :func:`stage_points` and :func:`measure_points`.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    import pandas as pd
    from torch import nn

    from qbench.data import DataConfig, FeatureDataset
    from qbench.sweep.config import SweepConfig
    from qbench.sweep.pipeline import Pipeline
    from qbench.sweep.plan import Point

ModelLike = Union[str, "nn.Module", Callable[..., "nn.Module"]]
STAGES = ("train", "quantize", "export", "grid")
"""Slices of a sweep's plan: ``train`` the fp32 students; ``quantize`` adds PTQ and QAT in PyTorch;
``export`` the QAT models on every backend (PyTorch first: the reference); ``grid`` every point."""

_QUIET = logging.getLogger("qbench.api")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False  # a failed point is in its record; its traceback is not printed


def stage_points(cfg: SweepConfig, stage: str) -> list[Point]:
    """The points of ``plan_points(cfg)`` a stage measures (see :data:`STAGES`)."""
    from qbench.backends import REFERENCE
    from qbench.sweep.plan import plan_points

    points = [p for p in plan_points(cfg) if p.role == "student"]
    if stage == "grid":
        return plan_points(cfg)
    if stage == "train":
        return [p for p in points if p.method == "fp32" and p.backend == REFERENCE]
    if stage == "quantize":
        return [p for p in points if p.backend == REFERENCE
                and (p.method != "fp32" or (p.distill in cfg.qat_distill and p.seed is None))]
    if stage == "export":
        return [p for p in points if p.method == "qat"]
    raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")


def prepare(pipe: Pipeline, *, show: Callable[[Any], None] | None = None, todo: Sequence[Point] = (),
            jobs: int = 1, measure: bool = False):
    """What every point needs, built before any point: the dataset (passed to ``show``; with ``jobs``
    > 1 built on that many processes, or, on a cold sweep whose teacher has its own dataset, that one
    first and the sweep's while the teacher trains: :func:`qbench.sweep.ahead.teacher_first`), each
    student checked against its contract, and the teacher when some student is distilled. With
    ``jobs`` > 1, every model the points of ``todo`` need is trained first, ``jobs`` at a time in
    worker processes (:mod:`qbench.sweep.ahead`; ``pipe.ahead`` says how it went), and with
    ``measure`` idle workers measure points whose models are trained, for the measuring executor
    (:mod:`qbench.sweep.parallel`). Raises the one-line error of the first stage that cannot be
    built. Returns the dataset."""
    from qbench.sweep.ahead import teacher_first, train_ahead

    with teacher_first(pipe, jobs=jobs) as started:
        dataset = pipe.dataset(jobs=jobs - len(started))  # on every job the teacher leaves free
        if show is not None:
            show(dataset)
        for model in pipe.cfg.models:
            pipe.check_student(model)
        pipe.ahead = train_ahead(pipe, list(todo), jobs=jobs, measure=measure, started=started)
    if pipe.cfg.needs_teacher:
        pipe.teacher()
    return dataset


def measure_points(pipe: Pipeline, points: Iterable[Point], *, strict: bool = False) -> list[dict[str, Any]]:
    """One record per point, as a sweep records it. ``strict``: the first failure raises (a command's
    one line and exit 2) instead of being recorded ``status: failed``."""
    from qbench.records import STATUS_OK
    from qbench.sweep.run import measure_or_fail

    records = []
    for point in points:
        if strict:
            records.append({"id": point.id, **point.fields(), "status": STATUS_OK, "error": None,
                            **pipe.measure(point)})
        else:
            records.append(measure_or_fail(point, pipe.measure, _QUIET))
    return records


def run_grid(model: ModelLike | Sequence[ModelLike], data: DataConfig | FeatureDataset | None = None, *,
             bits: Sequence[int | tuple[int, int]] = (4, 8), backends: Sequence[str] = ("torch",),
             distill: Sequence[str] = ("none",), teacher: str = "transformer", trained: bool = False,
             quick: bool = False, latency: bool = False, threads: Sequence[int] = (1,), seed: int = 0,
             config: SweepConfig | None = None, cache_dir: Path | str | None = None,
             progress: bool = False) -> pd.DataFrame:
    """Quantize and measure your model(s) over a grid; one DataFrame row per point.

    ``model``: a registry name (``"lstm"``), a ``"file.py:factory"`` spec, an ``nn.Module`` mapping
    ``(B, T, F)`` log-mel to ``(B, C)`` logits, or a factory called with ``n_mels``, ``n_frames``,
    ``n_classes`` returning one (or a sequence of these). ``trained``: the modules' weights are the
    fp32 students (no training; PTQ and QAT start from them). ``data``: a :class:`DataConfig`
    (generated or a folder you bring), a :class:`FeatureDataset` in memory, or None (keywords).
    ``bits``: 4 means w4a4, ``(4, 8)`` is w4a8. ``backends``: ``torch`` (always measured),
    ``engine``, ``onnxruntime``, ``openvino``. ``distill``: fp32 distillation modes; PTQ/QAT run from
    the distilled ones (or from ``none`` alone). ``quick``: the CLI's ``--quick`` budgets.
    ``config``: a SweepConfig to start from (the other arguments replace its fields).

    Columns are the records' flattened fields (:func:`qbench.records.records_frame`):
    ``id``, ``model``, ``precision``, ``method``, ``backend``, ``status``, ``error``,
    ``metrics.error``, ``metrics.ci95``, ``packed_bytes``, ``latency.b1_t1.median_ms``, ...;
    ``frame.attrs["config"]`` is the SweepConfig as a dict.
    """
    from qbench.data import DataConfig
    from qbench.data.config import default_cache_dir
    from qbench.files import writable_dir
    from qbench.records import records_frame
    from qbench.sweep.config import SweepConfig
    from qbench.sweep.options import quick_preset, validate_names
    from qbench.sweep.pipeline import Pipeline

    cache = writable_dir(Path(cache_dir) if cache_dir is not None else default_cache_dir(), what="cache folder")
    names, checkpoints = _register_models(model if _is_many(model) else [model], trained=trained, cache_dir=cache)
    modes = tuple(distill)
    fields: dict[str, Any] = dict(
        models=names, checkpoints=checkpoints, teacher=teacher, distill=modes,
        qat_distill=tuple(m for m in modes if m != "none") or modes, bits=tuple(_pair(b) for b in bits),
        backends=tuple(dict.fromkeys(("torch", *backends))), latency=latency, threads=tuple(threads), seed=seed)
    in_memory = data is not None and not isinstance(data, DataConfig)
    if isinstance(data, DataConfig):
        fields["data"] = data
    if in_memory:
        fields["teacher_clips_per_class"] = None  # the teacher learns from the same arrays
    cfg = (config or SweepConfig()).replace(**fields)
    cfg = quick_preset(cfg) if quick else cfg
    validate_names(cfg)
    pipe = Pipeline(cfg, cache_dir=cache, progress=progress, dataset=data if in_memory else None)
    prepare(pipe)
    frame = records_frame(measure_points(pipe, stage_points(cfg, "grid")))
    frame.attrs["config"] = cfg.to_dict()
    return frame


def _is_many(model: Any) -> bool:
    return isinstance(model, (list, tuple))


def _pair(bits: int | tuple[int, int]) -> tuple[int, int]:
    return (bits, bits) if isinstance(bits, int) else (int(bits[0]), int(bits[1]))


def _register_models(items: Sequence[ModelLike], *, trained: bool, cache_dir: Path
                     ) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """Student names for ``items`` (modules and factories registered as user students) and the
    checkpoints of trained modules, saved under ``<cache>/user-models``."""
    from torch import nn

    import models
    from qbench.errors import ConfigError
    from qbench.model_cache import atomic_torch_save

    names: list[str] = []
    checkpoints: list[tuple[str, str]] = []
    for item in items:
        if isinstance(item, str):
            names.append(item)
            continue
        if isinstance(item, nn.Module):
            digest = module_digest(item)
            instance = item
            builder = lambda _m=instance, **shape: copy.deepcopy(_m)  # noqa: E731 (the shape is the module's own)
            base = type(item).__name__
        elif callable(item):
            digest = _source_digest(item)
            builder, base = item, getattr(item, "__name__", type(item).__name__)
        else:
            raise ConfigError(f"run_grid: model must be a name, an nn.Module or a factory, got {type(item).__name__}")
        name = base if base not in names else f"{base}-{len(names)}"
        models.register_user_student(name, builder, fingerprint=digest)
        names.append(name)
        if trained and isinstance(item, nn.Module):
            path = cache_dir / "user-models" / f"{models.file_name(name)}-{digest}.pt"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_torch_save(item.state_dict(), path)
            checkpoints.append((name, str(path)))
        elif trained:
            raise ConfigError(f"run_grid: trained=True needs nn.Module instances, {name!r} is a factory")
    return tuple(names), tuple(checkpoints)


def module_digest(module: nn.Module) -> str:
    """Hash of a module's class, structure and weights: what its cache keys carry."""
    h = hashlib.sha256(f"{type(module).__module__}.{type(module).__qualname__}\n{module!r}".encode())
    for key, tensor in module.state_dict().items():
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _source_digest(factory: Callable[..., Any]) -> str:
    try:
        text = inspect.getsource(factory)
    except (OSError, TypeError):
        text = f"{getattr(factory, '__module__', '')}.{getattr(factory, '__qualname__', repr(factory))}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def summary_table(records: Sequence[dict[str, Any]]) -> str:
    """A small fixed-width table of records for a command's output (errors in %, sizes in KiB)."""
    head = (f"{'point':<40}{'test err %':>11}{'95 % CI':>15}{'vs fp32':>9}{'packed KiB':>12}{'file KiB':>10}"
            f"{'b1 ms':>9}  status")
    lines = [head]
    for r in records:
        name = f"{r['model']} {r['precision'] + ' ' if r['method'] != 'fp32' else ''}{r['method']}/{r['distill']}/{r['backend']}"
        if r.get("seed") is not None:
            name += f" @seed{r['seed']}"
        if r["status"] != "ok":
            lines.append(f"{_short(name, 40):<40}{'':>66}  failed: {_first_line(r['error'])}")
            continue
        m = r.get("metrics", {})
        ci = m.get("ci95")
        lat = (r.get("latency") or {}).get("b1_t1", {}).get("median_ms")
        delta = r.get("delta_error_vs_fp32")
        variant = r.get("runtime_variant")
        lines.append(
            f"{_short(name, 40):<40}{_num(100 * m['error'], 1):>11}"
            f"{(f'{100 * ci[0]:.1f}-{100 * ci[1]:.1f}' if ci else ''):>15}"
            f"{(f'{100 * delta:+.1f}' if delta is not None else ''):>9}"
            f"{_num(r.get('packed_bytes', float('nan')) / 1024, 1):>12}{_num(r.get('file_bytes', float('nan')) / 1024, 1):>10}"
            f"{_num(lat, 3):>9}  ok{f' ({variant})' if variant else ''}")
    return "\n".join(lines)


def _num(value: float | None, digits: int) -> str:
    if value is None or value != value:  # NaN: not measured
        return "-"
    return f"{value:.{digits}f}"


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]


def _first_line(reason: Any) -> str:
    lines = str(reason or "").splitlines()
    return lines[0] if lines else ""
