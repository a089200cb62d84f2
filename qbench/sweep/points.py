"""What a sweep measures at each point: error, size, agreement and latency.

Figures (see :mod:`qbench.report` for how they are shown):

* ``metrics``: the task's metrics on the test split through *this backend* (``error`` first);
* ``metrics.n`` clips scored and ``metrics.ci95`` the 95 % interval of the error (:mod:`qbench.stats`);
* ``delta_error_vs_fp32``: that error minus the fp32 student's (same model and distillation), with
  ``delta_ci95`` its paired 95 % interval (same clips); fp32 students distilled with a mode
  other than ``none`` carry ``delta_error_vs_no_kd`` / ``delta_ci95_vs_no_kd`` likewise;
* ``input_range`` (quantized LSTM students): the LSTM's fitted input scale and the fraction of
  its input and hidden values the shared io quantizer clips on calibration data;
* ``params``, ``packed_bytes`` (fp32 bytes for float models), ``pct_fp32``, ``pct_teacher``;
* ``file_bytes``: the deployed artifact on disk (NaN for PyTorch, which deploys nothing);
* ``agreement``: top-1 agreement with the Brevitas model and the largest logit difference;
* ``latency``: ``b<batch>_t<threads>`` -> median/IQR in ms (see :mod:`qbench.measure`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from qbench.backends import Backend, specs
from qbench.capabilities import capabilities
from qbench.distill import DistillMode
from qbench.errors import QbenchError
from qbench.metrics import error_change_interval, evaluate
from qbench.sweep.plan import Point

NAN = float("nan")
Run = Callable[[np.ndarray], np.ndarray]
RunnerFactory = Callable[[int], Run]  # threads -> run(x) -> (B, C) logits
EVAL_BATCH = 256


def scores_of(run: Run, x: np.ndarray) -> np.ndarray:
    """(N, C) outputs of ``run`` over ``x`` (N, T, F), in batches."""
    return np.concatenate([np.asarray(run(x[i:i + EVAL_BATCH])) for i in range(0, len(x), EVAL_BATCH)])


def latency(pipe, factory: RunnerFactory, *, threads: tuple[int, ...] | None = None) -> dict[str, dict[str, float]]:
    """Latency at batch 1 and the sweep's batch, for each thread count (default: the sweep's).

    Every timing of a sweep goes through here; a pipeline whose ``latency_sink`` is set (a Ray
    task, :mod:`qbench.sweep.deferred`) hands the runner factory to it instead of timing."""
    if not pipe.cfg.latency:
        return {}  # not measured: the tables show NaN
    if getattr(pipe, "latency_sink", None) is not None:
        return pipe.latency_sink(factory, threads)
    inputs = pipe.latency_inputs()
    with pipe.timed("latency"):
        return _timings(pipe, factory, inputs, threads or pipe.thread_counts())


def _timings(pipe, factory: RunnerFactory, inputs: dict[int, np.ndarray], thread_counts) -> dict[str, dict[str, float]]:
    """Per thread count, the batch sizes' rounds interleaved, so passing load hits them alike."""
    from qbench.measure import measure_interleaved

    out = {}
    for threads in thread_counts:
        run = factory(threads)
        stats = measure_interleaved({b: (run, x, threads) for b, x in inputs.items()}, repeats=pipe.cfg.latency_repeats)
        out.update({f"b{b}_t{threads}": s.to_dict() for b, s in stats.items()})
    return out


def agreement(scores: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Top-1 agreement and largest absolute output difference against the reference model."""
    return {"top1": float(np.mean(scores.argmax(1) == reference.argmax(1))),
            "max_abs_diff": float(np.max(np.abs(scores - reference))) if scores.size else NAN}


def _error(pipe, scores: np.ndarray) -> dict[str, float]:
    ds = pipe.dataset()
    y = pipe.eval_split().y
    return {**evaluate(y, scores, multilabel=ds.multilabel), "chance": chance_error(y, multilabel=ds.multilabel)}


def chance_error(y: np.ndarray, *, multilabel: bool) -> float:
    """The error of a model that knows only the test split's class frequencies: always the most
    frequent class (single-label), or scores that rank clips at random (multi-label: AP = prevalence)."""
    if multilabel:
        return float(1.0 - np.mean(np.asarray(y, dtype=np.float64).mean(axis=0)))
    return float(1.0 - np.bincount(np.asarray(y)).max() / len(y))


def _torch_scores(pipe, model) -> np.ndarray:
    """(N, C) outputs of a PyTorch model (float or Brevitas) on the test split."""
    from qbench.measure import torch_runner

    return scores_of(torch_runner(model, threads=pipe.compute_threads()), pipe.eval_split().x)


def error_figures(pipe, point: Point, scores: np.ndarray) -> dict[str, Any]:
    """The test metrics of ``scores`` and their error change against this point's fp32 student."""
    metrics = _error(pipe, scores)
    _, fp32_scores, fp32_metrics = fp32_reference(pipe, point)
    return {"metrics": metrics, "delta_error_vs_fp32": metrics["error"] - fp32_metrics["error"],
            "delta_ci95": _change_interval(pipe, fp32_scores, scores)}


def _change_interval(pipe, reference: np.ndarray, scores: np.ndarray) -> list[float]:
    """Paired 95 % interval of error(scores) - error(reference) on the same test clips."""
    return error_change_interval(pipe.eval_split().y, reference, scores, multilabel=pipe.dataset().multilabel)


def _torch_factory(model) -> RunnerFactory:
    from qbench.measure import torch_runner

    return lambda threads: torch_runner(model, threads=threads)


def _teacher_bytes(pipe) -> int:
    return pipe.teacher_bytes()


def fp32_reference(pipe, point: Point, mode: DistillMode | None = None) -> tuple[Any, np.ndarray, dict[str, float]]:
    """The fp32 student of this point's model, seed and mode (or ``mode``): model, test scores, metrics."""
    mode = point.distill if mode is None else mode

    def make():
        model, _ = pipe.student(point.model, mode, point.seed)
        scores = _torch_scores(pipe, model)
        return model, scores, _error(pipe, scores)

    return pipe.once(("fp32-scores", point.model, mode.value, point.seed), make)


def _no_kd_figures(pipe, point: Point) -> dict[str, Any]:
    """A distilled fp32 student against the undistilled one of the same seed (when the grid has it)."""
    if point.distill is DistillMode.NONE or DistillMode.NONE not in pipe.cfg.distill:
        return {}
    _, scores, metrics = fp32_reference(pipe, point)
    _, base_scores, base = fp32_reference(pipe, point, DistillMode.NONE)
    return {"delta_error_vs_no_kd": metrics["error"] - base["error"],
            "delta_ci95_vs_no_kd": _change_interval(pipe, base_scores, scores)}


def _float_figures(pipe, model, *, teacher: bool, factory: RunnerFactory | None = None) -> dict[str, Any]:
    """Size and latency of a float model (its error figures come from the caller), in PyTorch or ``factory``."""
    from qbench.quant.size import fp32_size

    size = fp32_size(model)
    return {"params": sum(p.numel() for p in model.parameters()),
            "packed_bytes": size, "file_bytes": NAN, "pct_fp32": 100.0,
            "pct_teacher": 100.0 * size / (size if teacher else _teacher_bytes(pipe)),
            "latency": latency(pipe, factory or _torch_factory(model))}


def measure_point(pipe, point: Point) -> dict[str, Any]:
    if point.role == "teacher":
        teacher = pipe.teacher()
        return {"metrics": _error(pipe, _torch_scores(pipe, teacher)), **_float_figures(pipe, teacher, teacher=True)}
    spec = Backend(point.backend).spec
    if point.method == "fp32" and spec.exported:
        return _fp32_exported(pipe, point)
    if point.method == "fp32":
        model, _, metrics = fp32_reference(pipe, point)
        return {"metrics": metrics, "delta_error_vs_fp32": 0.0, **_no_kd_figures(pipe, point),
                **_float_figures(pipe, model, teacher=False),
                "train": pipe.student(point.model, point.distill, point.seed)[1]}
    if point.method == "ptq":
        qmodel = pipe.ptq(point.model, point.distill, point.bits)
        return {**quant_torch_figures(pipe, point, qmodel, with_latency=False), **input_range(pipe, point, qmodel)}
    return spec.measure(pipe, point) if spec.measure is not None else _exported_figures(pipe, point)


def size_figures(pipe, point: Point, qmodel) -> dict[str, Any]:
    from qbench.quant.size import packed_size

    fp32_model = pipe.student(point.model, point.distill)[0]
    size = packed_size(qmodel, fp32_reference=fp32_model)
    return {"params": sum(p.numel() for p in fp32_model.parameters()), "packed_bytes": size.total_bytes,
            "size": size.to_dict(), "pct_fp32": 100.0 * size.ratio_to_fp32,
            "pct_teacher": 100.0 * size.ratio_to(_teacher_bytes(pipe))}


def quant_torch_figures(pipe, point: Point, qmodel, *, with_latency: bool) -> dict[str, Any]:
    out = {**error_figures(pipe, point, quant_scores(pipe, point, qmodel)), "file_bytes": NAN,
           **size_figures(pipe, point, qmodel)}
    out["latency"] = latency(pipe, _torch_factory(qmodel)) if with_latency else {}
    return out


def quant_scores(pipe, point: Point, qmodel) -> np.ndarray:
    key = ("quant-scores", point.model, point.method, point.distill.value, point.bits)
    return pipe.once(key, lambda: _torch_scores(pipe, qmodel))


def input_range(pipe, point: Point, qmodel) -> dict[str, Any]:
    """Clipping of the quantized LSTM's shared io quantizer on calibration data (LSTM students)."""
    from qbench.quant.lstm import lstm_clipping
    from qbench.sweep.pipeline import CALIBRATION_BATCHES

    fp32_model, _ = pipe.student(point.model, point.distill)
    x = pipe.dataset().train.x[:CALIBRATION_BATCHES * 64]
    figures = lstm_clipping(qmodel, fp32_model, x)
    return {"input_range": figures} if figures else {}


class ConformanceFailed(QbenchError):
    """An exported artifact does not compute what the Brevitas model computes; it is not timed."""


CONFORMANCE_CLIPS = 256  # test clips each artifact is checked on before it is measured


def _artifact(pipe, point: Point):
    """The exported artifact of this point's QAT model (exported once per run), checked for conformance."""
    from qbench.export import check_conformance, export
    from qbench.export.base import LSTMGraph

    graph = LSTMGraph(point.lstm_graph or LSTMGraph.FAKEQUANT_UNROLLED)
    backend = Backend(point.backend)

    def make():
        qmodel, _ = pipe.qat(point.model, point.distill, point.bits)
        out_dir = pipe.artifact_dir(point.model, point.distill, point.bits) / backend.value
        art = export(qmodel, backend, out_dir=out_dir, example=pipe.latency_inputs()[1], lstm_graph=graph)
        with pipe.timed("conformance"):
            conf = check_conformance(art, qmodel, pipe.eval_split().x[:CONFORMANCE_CLIPS],
                                     threads=pipe.compute_threads())
        if not conf.ok:
            raise ConformanceFailed(f"conformance failed: {conf.reason}")
        return art, conf

    key = ("artifact", backend.value, point.model, point.distill.value, point.bits, graph.value)
    return pipe.once(key, make)


def _exported_figures(pipe, point: Point) -> dict[str, Any]:
    """Error, agreement, sizes and latency of the artifact under its fastest conforming variant, and
    what its backend measures besides (``extra_figures``)."""
    from qbench.export import runner

    qmodel, _ = pipe.qat(point.model, point.distill, point.bits)
    art, conf = _artifact(pipe, point)
    run_options = conf.best_options
    scores = scores_of(runner(art, threads=pipe.compute_threads(), **run_options), pipe.eval_split().x)
    return {
        **error_figures(pipe, point, scores), **size_figures(pipe, point, qmodel), "file_bytes": art.size_bytes,
        "agreement": {**agreement(scores, quant_scores(pipe, point, qmodel)),
                      **_second_references(pipe, point, qmodel, scores)},
        "artifact": {"weight_container": art.weight_container, "notes": list(art.notes),
                     "files": [p.name for p in art.files], "lstm_graph": art.lstm_graph},
        "conformance": conf.to_dict(), "runtime_variant": conf.best,
        "latency": latency(pipe, lambda threads: runner(art, threads=threads, **run_options)),
        **_extra_figures(pipe, point, art),
    }


def _second_references(pipe, point: Point, qmodel, scores: np.ndarray) -> dict[str, Any]:
    """Agreement with every in-process backend that scores this model besides Brevitas (the integer
    engine for LSTM students), keyed by its name."""
    caps = capabilities(qmodel)
    return {spec.name: agreement(scores, spec.scores(pipe, point, qmodel))
            for spec in specs() if spec.scores is not None and spec.supports(caps)}


def _extra_figures(pipe, point: Point, art) -> dict[str, Any]:
    extra = art.backend.spec.extra_figures
    return extra(pipe, point, art) if extra is not None else {}


def _fp32_exported(pipe, point: Point) -> dict[str, Any]:
    """The fp32 student on an exported runtime: float conformance with PyTorch, error, file size, latency."""
    from qbench.export import runner
    from qbench.export.fp32 import export_fp32, float_conformance

    model, reference, _ = fp32_reference(pipe, point)
    backend = Backend(point.backend)
    out_dir = pipe.fp32_artifact_dir(point.model, point.distill) / backend.value
    with pipe.timed("export"):
        art = export_fp32(model, backend, out_dir=out_dir, example=pipe.latency_inputs()[1])
    scores = scores_of(runner(art, threads=pipe.compute_threads()), pipe.eval_split().x)
    conf = float_conformance(scores, reference)
    if conf["status"] != "ok":
        raise ConformanceFailed(f"fp32 conformance failed: {conf['reason']}")
    figures = _float_figures(pipe, model, teacher=False, factory=lambda threads: runner(art, threads=threads))
    out = {**error_figures(pipe, point, scores), **figures, "file_bytes": art.size_bytes,
           "agreement": agreement(scores, reference), "conformance": conf,
           "artifact": {"weight_container": art.weight_container, "notes": list(art.notes),
                        "files": [p.name for p in art.files]}}
    return {**out, **_extra_figures(pipe, point, art)}
