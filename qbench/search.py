"""Which layer gets which bit width: per-layer sensitivity, a greedy search under a cost, QAT confirmation.

The road, per student (every stage is the sweep's: :class:`~qbench.sweep.pipeline.Pipeline`
trains, calibrates and fine-tunes; :func:`qbench.sweep.points.measure_point` scores):

1. **Layers**: the student's weight layers (each conv, linear and the LSTM) with their
   parameters and multiply-accumulates per clip (:func:`layer_table`).
2. **Sensitivity**: for each layer and candidate width, PTQ with only that layer lowered (the rest
   at the widest candidate) scored on the *validation* split: error and output SQNR against the
   fp32 student. A Fisher estimate (squared training gradients times the rounding noise of each
   width, summed over the layer) ranks the same (layer, width) pairs without quantizing; the
   search records how well it agrees (Spearman) with the measured sensitivities.
3. **Search**: greedy descent as AIMET's AMP: from every layer at the widest width, repeatedly
   lower the one layer whose measured sensitivity rises least per unit of cost saved, down to
   the narrowest widths; every step is a candidate, scored by PTQ on the validation split. The
   greedy path needs one PTQ per step instead of an integer program over all combinations, and
   works with any cost: packed bytes, BitOps (MACs x weight bits x activation bits) or, for
   ``--cost latency``, BitOps on the path and measured latency for the confirmed candidates.
4. **Confirmation**: mixed candidates on the validation frontier within ``confirm_margin`` points
   of the fp32 student by PTQ (QAT recovers much of what PTQ loses; spread over their cost range,
   the cheapest kept) and the uniform widths are fine-tuned by QAT as a sweep point is (distilled as the sweep's
   quantized path) and scored on the test split with the paired interval of their change
   against the fp32 student. The answer is the cheapest confirmed configuration whose interval's
   upper end is within ``max_error_increase`` points.

Sensitivity and search never see the test split, so the confirmed figures are not selected on it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from qbench.config import Config, check_range
from qbench.errors import ConfigError
from qbench.quant.precision import LayerBits, Precision
from qbench.stats import pareto_front

SEARCH_SCHEMA_VERSION = 1
DOCUMENT_KIND = "qbench-search"
COSTS = ("bytes", "bitops", "latency")
DEFAULT_WIDTHS = (2, 3, 4, 6, 8)


@dataclasses.dataclass(frozen=True)
class SearchConfig(Config):
    """What a mixed-precision search explores and how it decides (the data, students and training
    budgets come from the sweep's :class:`~qbench.sweep.config.SweepConfig`)."""

    widths: tuple[int, ...] = DEFAULT_WIDTHS  # candidate weight widths of every layer
    act_bits: int = 8  # activations stay at one width: the search is over weights
    cost: str = "bytes"
    max_error_increase: float = 1.0  # points of error above fp32, at 95 % confidence
    confirm: int = 4  # mixed candidates confirmed by QAT per student (plus every uniform width)
    confirm_margin: float = 10.0  # points of PTQ validation error above fp32 a candidate may have to be confirmed
    fisher_batches: int = 8
    latency_backend: str | None = None  # --cost latency: where it is measured (default: engine or onnxruntime)

    def __post_init__(self) -> None:
        from qbench.quant.config import check_bits

        owner = "SearchConfig"
        object.__setattr__(self, "widths", tuple(sorted(set(self.widths))))
        if len(self.widths) < 2:
            raise ConfigError(f"{owner}.widths: give at least two widths to choose between, got {self.widths}")
        for w in self.widths:
            check_bits(owner, "widths", w)
        check_bits(owner, "act_bits", self.act_bits)
        if self.cost not in COSTS:
            raise ConfigError(f"{owner}.cost must be one of {', '.join(COSTS)}, got {self.cost!r}")
        check_range(owner, "max_error_increase", self.max_error_increase, 0.0, 100.0)
        check_range(owner, "confirm", self.confirm, 1, 100, integer=True)
        check_range(owner, "confirm_margin", self.confirm_margin, 0.0, 100.0)
        check_range(owner, "fisher_batches", self.fisher_batches, 1, 10000, integer=True)

    def precision(self, widths: dict[str, int], layers: list[str] | None = None) -> Precision:
        """The precision of per-layer ``widths`` (layers not named: the widest candidate), written
        with the most common width as the default (ties: the wider) so its text stays short; all
        layers alike is the uniform precision."""
        from collections import Counter

        full = {name: self.widths[-1] for name in (layers or [])} | dict(widths)
        counts = Counter(full.values())
        default = max(counts, key=lambda w: (counts[w], w)) if counts else self.widths[-1]
        return Precision(default, self.act_bits,
                         tuple(LayerBits(name, w, None) for name, w in full.items() if w != default))

    def uniform(self, width: int) -> Precision:
        return Precision(width, self.act_bits)


# ---- layers --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Layer:
    name: str
    kind: str
    params: int  # weights (the LSTM: input and recurrent)
    macs: int  # multiply-accumulates per clip


def layer_table(model: nn.Module, example: np.ndarray) -> list[Layer]:
    """The weight layers of a float student, in execution order, with their weights and MACs per clip."""
    found: dict[str, Layer] = {}
    hooks = []

    def hook(name: str):
        def record(module: nn.Module, args, out) -> None:
            out = out[0] if isinstance(out, tuple) else out
            if isinstance(module, nn.LSTM):
                steps = out.shape[1] if module.batch_first else out.shape[0]
                params = sum(getattr(module, f"weight_{k}_l{i}").numel() for k in ("ih", "hh")
                             for i in range(module.num_layers))
                macs = steps * params
            elif isinstance(module, (nn.Conv1d, nn.Conv2d)):
                params = module.weight.numel()
                macs = (out.numel() // out.shape[0]) * (module.weight[0].numel())
            else:
                params = module.weight.numel()
                macs = (out.numel() // out.shape[0]) * module.in_features
            found.setdefault(name, Layer(name, type(module).__name__, int(params), int(macs)))
        return record

    inside_lstm = set()
    for name, m in model.named_modules():
        if isinstance(m, nn.LSTM):
            inside_lstm.update(n for n, _ in m.named_modules(prefix=name) if n != name)
            hooks.append(m.register_forward_hook(hook(name)))
        elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) and name not in inside_lstm:
            hooks.append(m.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            model.eval()(torch.as_tensor(np.ascontiguousarray(example[:1], dtype=np.float32)))
    finally:
        for h in hooks:
            h.remove()
    return list(found.values())


def weight_bytes(layers: list[Layer], widths: dict[str, int], default: int) -> int:
    """Packed weight codes of ``layers`` at ``widths`` (the cost the greedy descent compares)."""
    return sum(math.ceil(l.params * widths.get(l.name, default) / 8) for l in layers)


def bitops(layers: list[Layer], widths: dict[str, int], default: int, act_bits: int) -> int:
    """MACs x weight bits x activation bits, summed over layers, per clip."""
    return sum(l.macs * widths.get(l.name, default) * act_bits for l in layers)


# ---- Fisher ranking ------------------------------------------------------------------------------

def _rounding_noise(w: torch.Tensor, bits: int) -> torch.Tensor:
    """(w - Q(w))^2 of a signed narrow-range per-tensor max-abs quantizer (qbench's weight quantizer)."""
    levels = 2 ** (bits - 1) - 1
    scale = w.abs().max().clamp_min(1e-12) / levels
    return (w - torch.round(w / scale).clamp(-levels, levels) * scale) ** 2


def fisher_sensitivity(model: nn.Module, layers: list[Layer], batches, widths: tuple[int, ...]) -> dict[str, dict[int, float]]:
    """Sum over a layer's weights of (mean squared training gradient) x (rounding noise at each width):
    the expected loss increase to second order with the empirical Fisher for the Hessian."""
    import copy

    model = copy.deepcopy(model).train()
    params = {l.name: [p for n, p in model.get_submodule(l.name).named_parameters() if "weight" in n] for l in layers}
    sq = {name: [torch.zeros_like(p) for p in ps] for name, ps in params.items()}
    n = 0
    for x, y in batches:
        model.zero_grad()
        logits = model(x)
        loss = (nn.functional.binary_cross_entropy_with_logits(logits, y) if y.dtype.is_floating_point
                else nn.functional.cross_entropy(logits, y))
        loss.backward()
        for name, ps in params.items():
            for acc, p in zip(sq[name], ps):
                if p.grad is not None:
                    acc += p.grad.detach() ** 2
        n += 1
    out: dict[str, dict[int, float]] = {}
    for name, ps in params.items():
        out[name] = {b: float(sum(((acc / max(n, 1)) * _rounding_noise(p.detach(), b)).sum()
                                  for acc, p in zip(sq[name], ps))) for b in widths}
    return out


def spearman(a: list[float], b: list[float]) -> float:
    """Rank correlation (average ranks for ties); NaN for fewer than 3 pairs or a constant side."""
    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
        return float("nan")
    from scipy.stats import spearmanr

    rho = spearmanr(a, b).statistic
    return float(rho) if np.isfinite(rho) else float("nan")


# ---- the greedy descent --------------------------------------------------------------------------

def greedy_path(layers: list[Layer], sensitivity: dict[str, dict[int, float]], widths: tuple[int, ...],
                cost: Callable[[dict[str, int]], float]) -> list[dict[str, int]]:
    """From every layer at the widest width to every layer at the narrowest, one layer one width
    down per step: the step whose measured error increase per unit of cost saved is smallest
    (ties: the larger saving). Returns the widths after each step (the start first)."""
    state = {l.name: widths[-1] for l in layers}
    path = [dict(state)]
    while True:
        moves = []
        for l in layers:
            i = widths.index(state[l.name])
            if i == 0:
                continue
            lower = {**state, l.name: widths[i - 1]}
            saved = cost(state) - cost(lower)
            rise = sensitivity[l.name][widths[i - 1]] - sensitivity[l.name][state[l.name]]
            moves.append((max(rise, 0.0) / saved if saved > 0 else math.inf, -saved, l.name, lower))
        if not moves:
            return path
        _, _, _, state = min(moves, key=lambda m: m[:3])
        path.append(dict(state))


def spread(indices: list[int], k: int) -> list[int]:
    """``k`` of ``indices`` spread evenly over their order (both ends kept)."""
    if len(indices) <= k:
        return list(indices)
    picks = {indices[round(j * (len(indices) - 1) / (k - 1))] for j in range(k)} if k > 1 else {indices[0]}
    return [i for i in indices if i in picks]


# ---- the road per student ------------------------------------------------------------------------

def _scores(model: nn.Module, x: np.ndarray) -> np.ndarray:
    from qbench.measure import torch_runner
    from qbench.sweep.points import scores_of

    return scores_of(torch_runner(model, threads=1), x)


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    noise = float(np.mean((reference - test) ** 2))
    return float(10 * np.log10(float(np.mean(reference ** 2)) / noise)) if noise > 0 else float("inf")


def _train_batches(ds, n: int, batch_size: int = 64):
    x, y = ds.train.x, ds.train.y
    for i in range(0, min(len(x), n * batch_size), batch_size):
        yield torch.as_tensor(x[i:i + batch_size]), torch.as_tensor(y[i:i + batch_size])


def search_student(pipe, scfg: SearchConfig, model: str, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Layers, sensitivities, Fisher ranking, greedy path, uniform widths and QAT confirmations of
    one student (see the module docstring); the document's ``students[model]`` entry."""
    from qbench.distill import DistillMode
    from qbench.metrics import evaluate
    from qbench.train import torch_settings

    mode = pipe.cfg.qat_distill[0] if pipe.cfg.qat_distill else DistillMode.NONE
    ds = pipe.dataset()
    student, _ = pipe.student(model, mode)
    layers = layer_table(student, ds.val.x)
    top = scfg.widths[-1]
    with torch_settings(threads=pipe.cfg.student_train.threads, seed=pipe.cfg.seed):
        reference = _scores(student, ds.val.x)
    fp32_val = evaluate(ds.val.y, reference, multilabel=ds.multilabel)["error"]

    names = [l.name for l in layers]

    def ptq_val(widths: dict[str, int]) -> dict[str, float]:
        bits = scfg.precision(widths, names)
        key = ("search-ptq", model, mode.value, str(bits))

        def make():
            with torch_settings(threads=pipe.cfg.student_train.threads, seed=pipe.cfg.seed):
                scores = _scores(pipe.ptq(model, mode, bits), ds.val.x)
            return {"error": evaluate(ds.val.y, scores, multilabel=ds.multilabel)["error"],
                    "sqnr_db": sqnr_db(reference, scores)}

        return pipe.once(key, make)

    log(f"{model}: {len(layers)} weight layers, {len(scfg.widths)} widths: sensitivity by PTQ on "
        f"{len(ds.val.x)} validation clips")
    sensitivity = {l.name: {top: ptq_val({})["error"]} for l in layers}
    sqnr = {l.name: {top: ptq_val({})["sqnr_db"]} for l in layers}
    for l in layers:
        for w in scfg.widths[:-1]:
            figures = ptq_val({l.name: w})
            sensitivity[l.name][w], sqnr[l.name][w] = figures["error"], figures["sqnr_db"]
    with torch_settings(threads=pipe.cfg.student_train.threads, seed=pipe.cfg.seed):
        fisher = fisher_sensitivity(student, layers, _train_batches(ds, scfg.fisher_batches), scfg.widths)
    pairs = [(fisher[l.name][w], sensitivity[l.name][w] - sensitivity[l.name][top])
             for l in layers for w in scfg.widths[:-1]]

    def cost_of(widths: dict[str, int]) -> float:
        if scfg.cost == "bytes":
            return weight_bytes(layers, widths, top)
        return bitops(layers, widths, top, scfg.act_bits)

    log(f"{model}: greedy descent ({scfg.cost if scfg.cost != 'latency' else 'bitops, then measured latency'})")
    path = []
    for step, widths in enumerate(greedy_path(layers, sensitivity, scfg.widths, cost_of)):
        bits = scfg.precision(widths, names)
        path.append({"step": step, "bits": str(bits), "name": bits.name, "widths": widths,
                     "weight_bytes": weight_bytes(layers, widths, top),
                     "bitops": bitops(layers, widths, top, scfg.act_bits), "val_error": ptq_val(widths)["error"]})
    uniform = []
    for w in scfg.widths:
        widths = {l.name: w for l in layers}
        uniform.append({"bits": str(scfg.uniform(w)), "name": scfg.uniform(w).name, "widths": widths,
                        "weight_bytes": weight_bytes(layers, widths, top),
                        "bitops": bitops(layers, widths, top, scfg.act_bits),
                        "val_error": ptq_val(widths)["error"] if w != top else ptq_val({})["error"]})
    key = "weight_bytes" if scfg.cost == "bytes" else "bitops"
    front = pareto_front([(p[key], p["val_error"]) for p in path])
    # QAT recovers much of what PTQ loses, so candidates within a margin of fp32 by PTQ are worth
    # confirming; they are spread over that part of the frontier (the cheapest kept)
    mixed_front = [i for i in front if Precision.parse(path[i]["bits"]).mixed]
    eligible = [i for i in mixed_front if 100 * (path[i]["val_error"] - fp32_val) <= scfg.confirm_margin]
    chosen = spread(eligible, scfg.confirm)
    log(f"{model}: {len(front)} of {len(path)} path steps on the validation frontier, {len(eligible)} mixed "
        f"within {scfg.confirm_margin:g} points of fp32 by PTQ; confirming {len(chosen)} of them and "
        f"{len(uniform)} uniform configurations by QAT on the test split")
    confirmed = [_confirm(pipe, scfg, model, mode, Precision.parse(path[i]["bits"]), layers, log)
                 for i in chosen]
    confirmed += [_confirm(pipe, scfg, model, mode, scfg.uniform(w), layers, log) for w in scfg.widths]
    return {
        "distill": mode.value, "fp32_val_error": fp32_val, "val_clips": len(ds.val.x),
        "teacher_test_error": _teacher_error(pipe),
        "classes": [] if ds.multilabel else list(ds.classes),
        "layers": [dataclasses.asdict(l) for l in layers],
        "sensitivity": {n: {str(w): v for w, v in d.items()} for n, d in sensitivity.items()},
        "sqnr_db": {n: {str(w): v for w, v in d.items()} for n, d in sqnr.items()},
        "fisher": {n: {str(w): v for w, v in d.items()} for n, d in fisher.items()},
        "fisher_spearman": spearman([a for a, _ in pairs], [b for _, b in pairs]),
        "path": path, "frontier_steps": front, "uniform": uniform, "confirmed": confirmed,
    }


def _teacher_error(pipe) -> float | None:
    """The teacher's test error, as the sweep's teacher point scores it (None when distillation is off)."""
    from qbench.backends import REFERENCE
    from qbench.distill import DistillMode
    from qbench.sweep.plan import Point

    if not pipe.cfg.qat_distill or pipe.cfg.qat_distill[0] is DistillMode.NONE:
        return None
    point = Point("teacher", pipe.cfg.teacher, "fp32", DistillMode.NONE, REFERENCE)
    return pipe.once(("teacher-score",), lambda: pipe.measure(point)["metrics"]["error"])


def latency_backend(scfg: SearchConfig, model: str, pipe) -> str:
    """Where ``--cost latency`` is measured: the option, else the engine for students it runs, else ONNX Runtime."""
    from qbench.sweep.plan import student_capabilities
    from qbench.backends import get

    if scfg.latency_backend is not None:
        return scfg.latency_backend
    return "engine" if get("engine").supports(student_capabilities(pipe.cfg, model)) else "onnxruntime"


def _confirm(pipe, scfg: SearchConfig, model: str, mode, bits: Precision, layers: list[Layer], log) -> dict[str, Any]:
    """The QAT point of ``bits`` as a sweep measures it (test split, paired interval against fp32),
    plus its costs; with ``--cost latency`` also the point on the latency backend."""
    import logging

    from qbench.backends import REFERENCE, Backend
    from qbench.sweep.plan import Point, lstm_graphs, student_capabilities
    from qbench.sweep.run import measure_or_fail

    quiet = logging.getLogger("qbench.search")
    widths = {l.name: bits.widths_of(l.name)[0] for l in layers}
    out = {"bits": str(bits), "name": bits.name, "kind": "mixed" if bits.mixed else "uniform", "widths": widths,
           "weight_bytes": weight_bytes(layers, widths, scfg.widths[-1]),
           "bitops": bitops(layers, widths, scfg.widths[-1], scfg.act_bits)}
    record = measure_or_fail(Point("student", model, "qat", mode, REFERENCE, bits), pipe.measure, quiet)
    out["qat"] = _figures(record)
    if scfg.cost == "latency" and record["status"] == "ok":
        backend = Backend(latency_backend(scfg, model, pipe))
        graph = lstm_graphs(student_capabilities(pipe.cfg, model), backend)[0]
        timed = measure_or_fail(Point("student", model, "qat", mode, backend, bits, lstm_graph=graph), pipe.measure, quiet)
        out["latency"] = {"backend": str(backend), "lstm_graph": graph, **_figures(timed)}
    q = out["qat"]
    log(f"  {model} {bits.name} ({bits}): " + (f"test error {100 * q['error']:.1f} %, change "
        f"{100 * q['delta']:+.1f} [{100 * q['delta_ci95'][0]:+.1f}, {100 * q['delta_ci95'][1]:+.1f}] points"
        if q["status"] == "ok" else f"failed: {q['reason']}"))
    return out


def _figures(record: dict[str, Any]) -> dict[str, Any]:
    if record["status"] != "ok":
        return {"status": "failed", "reason": record["error"]}
    metrics = record["metrics"]
    return {"status": "ok", "id": record["id"], "error": metrics["error"], "ci95": metrics.get("ci95"),
            "n": metrics.get("n"), "delta": record["delta_error_vs_fp32"], "delta_ci95": record["delta_ci95"],
            "packed_bytes": record.get("packed_bytes"), "file_bytes": record.get("file_bytes"),
            "latency": record.get("latency") or {}, "conformance": (record.get("conformance") or {}).get("status")}


LATENCY_KEY = "b1_t1"


def candidate_latency_ms(candidate: dict[str, Any], missing: float = math.inf) -> float:
    """A candidate's measured median latency (ms) at ``LATENCY_KEY``, or ``missing`` when not timed."""
    lat = ((candidate.get("latency") or {}).get("latency") or {}).get(LATENCY_KEY) or {}
    return float(lat.get("median_ms", missing))


def candidate_cost(candidate: dict[str, Any], cost: str) -> float:
    """The cost the answer minimises: packed bytes (the QAT model's), BitOps, or measured latency (ms)."""
    if cost == "bytes":
        return float(candidate["qat"].get("packed_bytes") or math.inf)
    if cost == "bitops":
        return float(candidate["bitops"])
    return candidate_latency_ms(candidate)


def answer(students: dict[str, dict[str, Any]], scfg: SearchConfig) -> dict[str, Any]:
    """Per student: the cheapest confirmed configuration whose change against fp32 is within the
    budget at 95 % confidence (upper end of its paired interval), and the best uniform one."""
    out = {}
    for model, s in students.items():
        ok = [c for c in s["confirmed"] if c["qat"]["status"] == "ok"
              and 100 * c["qat"]["delta_ci95"][1] <= scfg.max_error_increase
              and math.isfinite(candidate_cost(c, scfg.cost))]
        best = min(ok, key=lambda c: candidate_cost(c, scfg.cost), default=None)
        best_uniform = min((c for c in ok if c["kind"] == "uniform"), key=lambda c: candidate_cost(c, scfg.cost),
                           default=None)
        if best is not None and best_uniform is not None and candidate_cost(best_uniform, scfg.cost) <= candidate_cost(best, scfg.cost):
            best = best_uniform  # a tie goes to the uniform configuration: simpler to deploy
        out[model] = {"best": best and best["bits"], "best_name": best and best["name"],
                      "best_cost": best and candidate_cost(best, scfg.cost),
                      "best_uniform": best_uniform and best_uniform["bits"],
                      "best_uniform_cost": best_uniform and candidate_cost(best_uniform, scfg.cost),
                      "mixed_wins": bool(best and best["kind"] == "mixed")}  # strictly cheaper than any uniform
    return out


def reproduce_command(model: str, bits: str, cfg) -> str:
    """The sweep command that measures ``bits`` for ``model`` on every backend."""
    mode = cfg.qat_distill[0].value if cfg.qat_distill else "none"
    p = Precision.parse(bits)
    widths = f"--mixed '{bits}'" if p.mixed else f"--weight-bits {p.weight_bits} --act-bits {p.act_bits}"
    distill = "none" if mode == "none" else f"none,{mode} --qat-distill {mode}"
    return f"python -m qbench sweep --models {model} --distill {distill} --no-ptq {widths}"


def deployment(pipe, model: str, bits: Precision, *, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """The answer on every backend of the sweep that runs ``model``: the QAT point as a sweep
    measures it there (conformance, file size, latency with its load), one row per backend."""
    import logging

    from qbench.distill import DistillMode
    from qbench.sweep.plan import Point, lstm_graphs, quant_backends, student_capabilities
    from qbench.sweep.run import measure_or_fail

    mode = pipe.cfg.qat_distill[0] if pipe.cfg.qat_distill else DistillMode.NONE
    rows = []
    for backend in quant_backends(pipe.cfg, model):
        for graph in lstm_graphs(student_capabilities(pipe.cfg, model), backend):
            record = measure_or_fail(Point("student", model, "qat", mode, backend, bits, lstm_graph=graph),
                                     pipe.measure, logging.getLogger("qbench.search"))
            lat = ((record.get("latency") or {}).get(LATENCY_KEY) or {})
            rows.append({"backend": str(backend), "lstm_graph": graph, "status": record["status"],
                         "reason": record.get("error"), "error": (record.get("metrics") or {}).get("error"),
                         "file_bytes": record.get("file_bytes"), "packed_bytes": record.get("packed_bytes"),
                         "weight_container": (record.get("artifact") or {}).get("weight_container"),
                         "latency_ms": lat.get("median_ms"), "latency_iqr_ms": lat.get("iqr_ms"),
                         "noisy": lat.get("noisy"), "load": lat.get("load")})
            log(f"  {model} {bits.name} on {backend}{'+' + graph if graph else ''}: {record['status']}"
                + (f", {lat['median_ms']:.3g} ms" if lat.get("median_ms") else ""))
    return rows
