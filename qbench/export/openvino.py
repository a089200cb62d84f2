"""OpenVINO backend: QCDQ ONNX (tightest container OpenVINO reads, probed) saved as IR .xml/.bin.

Registered as ``openvino`` (:mod:`qbench.backends`); ``openvino`` is imported only when used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from qbench.backends import BackendSpec, register
from qbench.export.base import Artifact, FloatPrecision, LSTMGraph, Run, files_size
from qbench.export.onnx_cnn import act_bits, check_same_outputs, try_packed, weight_bits, write_onnx

DEVICE = "CPU"


def _config(threads: int, precision: FloatPrecision) -> dict[str, Any]:
    config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if FloatPrecision(precision) == FloatPrecision.F32:
        config["INFERENCE_PRECISION_HINT"] = "f32"
    return config


CACHE_DIR = "openvino-cache"  # beside the model: compiled blobs, keyed by OpenVINO on the model and the config


def _compile(path: Path, *, threads: int = 1, precision: FloatPrecision = FloatPrecision.F32):
    """The model compiled for the CPU plugin. Compiled blobs are kept beside it (OpenVINO's model
    cache), so compiling an artifact again with the same config (conformance, scoring and latency
    share thread counts; a ``--fresh`` re-measure exports the same model again) loads the blob.

    The model is read first and compiled from memory: OpenVINO then keys its cache on the model's
    content (node names left out: the IR's come from a per-process counter), where for a file path
    it also checks the file's modification time, so a re-export of the same model had compiled anew
    (4.5-5 s for an unrolled LSTM graph against 0.8-1 s loaded)."""
    import openvino as ov

    config = {**_config(threads, precision), "CACHE_DIR": str(Path(path).parent / CACHE_DIR)}
    core = ov.Core()
    return core.compile_model(core.read_model(str(path)), DEVICE, config)


def default_precision() -> str:
    """What the CPU plugin computes in when no precision hint is given (bf16 on CPUs that have it)."""
    import openvino as ov

    hint = ov.Core().get_property(DEVICE, "INFERENCE_PRECISION_HINT")
    return hint.to_string() if hasattr(hint, "to_string") else str(hint)


def ir_from_onnx(onnx_path: Path, xml: Path | None = None) -> tuple[Path, Path]:
    """OpenVINO IR (``.xml`` + ``.bin``, no fp16 compression) of an ONNX file, beside it unless ``xml`` is given."""
    import openvino as ov

    xml = onnx_path.with_suffix(".xml") if xml is None else xml
    ov.save_model(ov.Core().read_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    return xml, xml.with_suffix(".bin")


def export_openvino(qmodel: nn.Module, *, out_dir: Path, example: np.ndarray, name: str = "model",
                    lstm_graph: LSTMGraph = LSTMGraph.FAKEQUANT_UNROLLED) -> Artifact:
    """QCDQ ONNX -> tightest weight container OpenVINO compiles -> IR (``.xml`` + ``.bin``, no fp16 compression).
    An LSTM student's ``integer_scan`` graph keeps int8 weight codes (MatMulInteger's input)."""
    from qbench.export.onnx_lstm_int import lstm_graph_of, write_integer_lstm

    bits = max(weight_bits(qmodel), default=8)
    graph = lstm_graph_of(qmodel, lstm_graph)
    if graph is LSTMGraph.INTEGER_SCAN:
        src, container, notes = write_integer_lstm(qmodel, out_dir / f"{name}.{graph.value}.onnx", example)
    else:
        onnx_path = write_onnx(qmodel, out_dir / f"{name}.qcdq.onnx", example)
        x = np.ascontiguousarray(example, dtype=np.float32)

        def check(path: Path) -> None:
            packed, int8 = _compile(path), _compile(onnx_path)
            check_same_outputs(lambda v: packed(v)[0], lambda v: int8(v)[0], x)

        src, container, notes = try_packed(onnx_path, check)
    files = ir_from_onnx(src, out_dir / f"{name}.{container}{'.' + graph.value if graph else ''}.xml")
    xml = files[0]
    notes = notes + (f"IR converted from {src.name}; CPU default inference precision is {default_precision()}",)
    return Artifact(
        backend=NAME, path=xml, files=files, size_bytes=files_size(files), precision=FloatPrecision.F32,
        weight_container=container, weight_bits=bits, act_bits=act_bits(qmodel), notes=notes,
        lstm_graph=graph and graph.value,
    )


def _variants(artifact: Artifact) -> dict[str, dict[str, Any]]:
    # OpenVINO has no switch to turn its graph transformations off; f32 is the checked form
    return {"openvino_f32": {"precision": FloatPrecision.F32}}


def openvino_runner(artifact: Artifact, *, threads: int, precision: FloatPrecision | None = None) -> Run:
    compiled = _compile(artifact.path, threads=threads, precision=precision or artifact.precision)
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        return request.get_output_tensor(0).data.copy()

    return run


def default_precision_latency(pipe, point, artifact: Artifact) -> dict[str, Any]:
    """What users get without a precision hint (bf16 on CPUs that have it): timed, never scored.
    Where the CPU plugin's default is f32 already, the default is the f32 figure: not timed twice."""
    from qbench.sweep.points import latency

    default = default_precision()
    precision = {"errors_and_latency": "f32", "latency_default_precision": default}
    if default == "f32":
        return {"runtime_precision": precision}
    return {"latency_default_precision": latency(
                pipe, lambda threads: openvino_runner(artifact, threads=threads, precision=FloatPrecision.DEFAULT)),
            "runtime_precision": precision}


NAME = "openvino"
register(BackendSpec(
    name=NAME, label="OpenVINO", tag="ov", library="openvino", order=3,
    description="the exported model compiled by OpenVINO's CPU plugin (errors at the f32 hint)",
    exporter=export_openvino, runner=openvino_runner, variants=_variants, files_from_onnx=ir_from_onnx,
    lstm_graphs=(LSTMGraph.INTEGER_SCAN.value, LSTMGraph.FAKEQUANT_UNROLLED.value),
    extra_figures=default_precision_latency,
))
