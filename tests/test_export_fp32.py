"""The fp32 student on each runtime: exported, held to the float tolerance, and refused when it drifts."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

import models
from qbench.backends import exported
from qbench.export import Backend, runner
from qbench.export.fp32 import FP32_LOGIT_RTOL, export_fp32, float_conformance

N_MELS, N_FRAMES, N_CLASSES = 40, 101, 7


@pytest.mark.parametrize("backend", list(exported()))
@pytest.mark.parametrize("name", ["lstm", "dscnn", "crnn"])
def test_fp32_export_conforms_to_pytorch(name: str, backend: Backend, tmp_path) -> None:
    torch.manual_seed(0)
    model = models.build_student(name, n_mels=N_MELS, n_frames=N_FRAMES, n_classes=N_CLASSES).eval()
    x = np.random.default_rng(0).normal(size=(6, N_FRAMES, N_MELS)).astype(np.float32) * 3 + 2
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    art = export_fp32(model, backend, out_dir=tmp_path, example=x)
    assert art.weight_container == "fp32" and art.size_bytes > 0
    conf = float_conformance(runner(art, threads=1)(x), reference)
    assert conf["status"] == "ok", conf["reason"]
    assert conf["max_rel_diff"] <= FP32_LOGIT_RTOL


def test_float_conformance_refuses_a_drifted_runtime() -> None:
    reference = np.random.default_rng(1).normal(size=(50, 5)).astype(np.float32)
    drifted = reference + 0.05
    conf = float_conformance(drifted, reference)
    assert conf["status"] == "failed" and "of their range" in conf["reason"]
    assert float_conformance(reference.copy(), reference)["status"] == "ok"


@pytest.mark.requires_onnxruntime
@pytest.mark.parametrize("mode", ["clip", "causal"])
def test_clip_level_is_the_same_number_on_every_runtime(mode: str, tmp_path) -> None:
    """The snapped level makes the front end bit-exact across runtimes: ORT's ReduceMean sums in
    another order than torch's mean, and an unsnapped level differed in the last bits (which flip
    input codes at rounding ties)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from models.frontend import ClipNorm
    from qbench.export.onnx_lstm import _clip_norm, _Graph

    x = (np.random.default_rng(0).normal(size=(64, N_FRAMES, N_MELS)) * 3 - 8).astype(np.float32)
    with torch.no_grad():
        ref = ClipNorm(mode)(torch.from_numpy(x)).numpy()
    g = _Graph()
    out = _clip_norm(g, "x", ClipNorm(mode))
    g.nodes.append(helper.make_node("Identity", [out], ["y"]))
    graph = helper.make_graph(g.nodes, "clip_norm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, N_FRAMES, N_MELS])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, N_FRAMES, N_MELS])], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, ref)


@pytest.mark.requires_openvino
def test_openvino_keeps_compiled_models_beside_the_artifact(tmp_path) -> None:
    """A second compile of the same IR and config loads OpenVINO's cached blob and computes the same."""
    from qbench.export.openvino import CACHE_DIR

    torch.manual_seed(0)
    model = models.build_student("lstm", n_mels=N_MELS, n_frames=N_FRAMES, n_classes=N_CLASSES).eval()
    x = np.random.default_rng(0).normal(size=(2, N_FRAMES, N_MELS)).astype(np.float32)
    art = export_fp32(model, Backend("openvino"), out_dir=tmp_path, example=x)
    first = runner(art, threads=1)(x)
    blobs = sorted((art.path.parent / CACHE_DIR).glob("*.blob"))
    assert blobs and not any(b in art.files for b in blobs)  # cached, and not counted in the file size
    stamps = {b: b.stat().st_mtime_ns for b in blobs}
    np.testing.assert_array_equal(runner(art, threads=1)(x), first)
    assert sorted((art.path.parent / CACHE_DIR).glob("*.blob")) == blobs  # loaded, not compiled anew
    # a re-measure exports the same model again, with new modification times: still loaded. The
    # weights are the same bytes; the IR's node names come from a counter of the process, so the
    # .xml differs in names only, which OpenVINO's cache key leaves out
    weights = {f.name: f.read_bytes() for f in art.files if f.suffix == ".bin"}
    time.sleep(0.05)
    again = export_fp32(model, Backend("openvino"), out_dir=tmp_path, example=x)
    assert weights and {f.name: f.read_bytes() for f in again.files if f.suffix == ".bin"} == weights
    np.testing.assert_array_equal(runner(again, threads=1)(x), first)
    assert {b: b.stat().st_mtime_ns for b in (art.path.parent / CACHE_DIR).glob("*.blob")} == stamps
