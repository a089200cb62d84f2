"""ONNX Runtime backend: QCDQ ONNX with the tightest weight container ORT runs (probed).

Registered as ``onnxruntime`` (:mod:`qbench.backends`); ``onnxruntime`` is imported only when used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from qbench.backends import BackendSpec, register
from qbench.export.base import Artifact, FloatPrecision, LSTMGraph, Run, files_size
from qbench.export.onnx_cnn import INPUT_NAME, act_bits, check_same_outputs, try_packed, weight_bits, write_onnx

OPT_LEVELS = ("disable_all", "enable_all")


def _session(path: Path, *, threads: int, opt_level: str = "enable_all"):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = {
        "disable_all": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "enable_basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "enable_extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "enable_all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[opt_level]
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _runs_like(int8_path: Path, x: np.ndarray):
    """A check that a packed graph loads and matches the int8 graph at every optimisation level."""

    def check(path: Path) -> None:
        for level in OPT_LEVELS:  # ORT's fusions reject some element types, or mis-handle them
            run_packed, run_int8 = (_session(p, threads=1, opt_level=level) for p in (path, int8_path))
            check_same_outputs(lambda v: run_packed.run(None, {INPUT_NAME: v})[0],
                               lambda v: run_int8.run(None, {INPUT_NAME: v})[0], x)

    return check


def _kernels_after_fusion(path: Path) -> str:
    """Which integer/contrib kernels ORT's ENABLE_ALL optimiser put in the graph, e.g. ``QLinearConv x5``."""
    import tempfile
    from collections import Counter

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        so.log_severity_level = 3  # ORT warns that a saved ENABLE_ALL graph is machine-specific: we only read it
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        ops = Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node
                      if n.domain not in ("", "ai.onnx") or "Integer" in n.op_type or n.op_type.startswith("QLinear"))
    return ", ".join(f"{op} x{n}" for op, n in sorted(ops.items())) or "float kernels on dequantized weights"


def export_ort(qmodel: nn.Module, *, out_dir: Path, example: np.ndarray, name: str = "model",
               lstm_graph: LSTMGraph = LSTMGraph.FAKEQUANT_UNROLLED) -> Artifact:
    """QCDQ ONNX; each weight tensor of <= 4 (<= 2) bits is repacked as INT4 (INT2) when ORT runs that form.
    An LSTM student's ``integer_scan`` graph keeps int8 weight codes (MatMulInteger's input)."""
    from qbench.export.onnx_lstm_int import lstm_graph_of, write_integer_lstm

    graph = lstm_graph_of(qmodel, lstm_graph)
    if graph is LSTMGraph.INTEGER_SCAN:
        path, container, notes = write_integer_lstm(qmodel, out_dir / f"{name}.{graph.value}.onnx", example)
    else:
        onnx_path = write_onnx(qmodel, out_dir / f"{name}.qcdq.onnx", example)
        x = np.ascontiguousarray(example, dtype=np.float32)
        path, container, notes = try_packed(onnx_path, _runs_like(onnx_path, x))
    notes = notes + (f"CPU execution provider; ENABLE_ALL runs {_kernels_after_fusion(path)}",)
    return Artifact(
        backend=NAME, path=path, files=(path,), size_bytes=files_size((path,)), precision=FloatPrecision.F32,
        weight_container=container, weight_bits=max(weight_bits(qmodel), default=8),
        act_bits=act_bits(qmodel), notes=notes, lstm_graph=graph and graph.value,
    )


# Conformance checks every graph optimisation level, most optimised first, so the artifact is
# timed at the fastest level that still computes the quantized model (measured: EXTENDED and ALL
# fuse the LSTM's DequantizeLinear+MatMul into kernels that change its logits; BASIC is exact).
CONFORMANCE_LEVELS = ("enable_all", "enable_extended", "enable_basic", "disable_all")


def _variants(artifact: Artifact) -> dict[str, dict[str, Any]]:
    return {f"ort_{level}": {"opt_level": level} for level in CONFORMANCE_LEVELS}


def ort_runner(artifact: Artifact, *, threads: int, opt_level: str = "enable_all") -> Run:
    sess = _session(artifact.path, threads=threads, opt_level=opt_level)

    def run(x: np.ndarray) -> np.ndarray:
        return sess.run(None, {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})[0]

    return run


NAME = "onnxruntime"
register(BackendSpec(
    name=NAME, label="ONNX Runtime", tag="ort", library="onnxruntime", order=2,
    description="the exported ONNX graph in ONNX Runtime (CPU execution provider)",
    exporter=export_ort, runner=ort_runner, variants=_variants, files_from_onnx=lambda onnx_path: (onnx_path,),
    lstm_graphs=(LSTMGraph.INTEGER_SCAN.value, LSTMGraph.FAKEQUANT_UNROLLED.value),
))
