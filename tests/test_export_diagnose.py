"""The likely cause qbench records when a runtime's int8 kernels deviate, and the onnxoptimizer stand-in."""

from __future__ import annotations

import numpy as np
import pytest

from qbench.backends import exported
from qbench.export import Backend
from qbench.export.diagnose import PROBE_EXACT, has_vnni, likely_cause, saturates, saturation_probe

EXACT = 253 * 256.0  # the probe's exact answer on its output grid (64770 rounded to 256s)
SATURATED = 128 * 256.0  # a pair sum clamped at 32767, on the same grid


@pytest.mark.parametrize(("flags", "expected"), [
    ("fpu sse2 avx2 fma avx512f avx512_vnni", True),
    ("fpu sse2 avx2 fma avx_vnni", True),
    ("fpu sse2 avx2 fma bmi2", False),  # AMD Zen 3
])
def test_has_vnni_reads_the_flags(flags: str, expected: bool) -> None:
    assert has_vnni(flags) is expected


def test_saturation_is_told_from_the_probe_value() -> None:
    assert saturates(EXACT) is False and saturates(SATURATED) is True and saturates(None) is None


def test_a_saturating_runtime_is_named_as_the_cause() -> None:
    cause = likely_cause(Backend("openvino"), {}, act_bits=8, vnni=False, probe_value=SATURATED)
    assert cause.startswith("likely cause: the CPU lacks VNNI") and "saturate" in cause and str(PROBE_EXACT) in cause


def test_without_probe_evidence_a_pre_vnni_cpu_is_a_possible_cause_only() -> None:
    cause = likely_cause(Backend("onnxruntime"), {"opt_level": "enable_all"}, act_bits=8, vnni=False, probe_value=EXACT)
    assert cause.startswith("possible cause: the CPU lacks VNNI")


def test_no_cause_is_claimed_on_vnni_or_below_8_bits() -> None:
    assert likely_cause(Backend("openvino"), {}, act_bits=8, vnni=True, probe_value=EXACT) is None
    assert likely_cause(Backend("openvino"), {}, act_bits=7, vnni=False, probe_value=SATURATED) is None


@pytest.mark.parametrize("backend", list(exported()))
def test_probe_runs_on_each_runtime(backend: Backend) -> None:
    # exact on VNNI (and ARM) CPUs; saturated where the int8 path is vpmaddubsw: both are findings
    options = {"opt_level": "enable_all"} if backend == Backend("onnxruntime") else {}
    assert saturation_probe(backend, options) in (EXACT, SATURATED)


@pytest.mark.requires_onnxruntime
def test_onnx_passes_stand_in_matches_onnxoptimizer() -> None:
    """The two passes Brevitas' QCDQ export asks of onnxoptimizer, done with plain onnx."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from qbench.export.onnx_passes import optimize

    w = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w_value")
    nodes = [helper.make_node("Constant", [], ["w"], value=w), helper.make_node("MatMul", ["x", "w"], ["y"])]
    unused = numpy_helper.from_array(np.zeros(4, np.float32), "unused")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], initializer=[unused])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    out = optimize(model, ["extract_constant_to_initializer", "eliminate_unused_initializer"])
    assert [n.op_type for n in out.graph.node] == ["MatMul"]
    assert [i.name for i in out.graph.initializer] == ["w"]
    assert len(model.graph.node) == 2  # the input model is left alone
    x = np.ones((1, 2), np.float32)
    y = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(y, x @ numpy_helper.to_array(w))
    try:
        import onnxoptimizer
    except ModuleNotFoundError:
        return
    ref = onnxoptimizer.optimize(model, ["extract_constant_to_initializer", "eliminate_unused_initializer"])
    assert [n.op_type for n in ref.graph.node] == ["MatMul"]
    assert sorted(i.name for i in ref.graph.initializer) == ["w"]


def test_an_unknown_pass_is_a_one_line_error() -> None:
    from qbench.errors import QbenchError
    from qbench.export.onnx_passes import optimize

    with pytest.raises(QbenchError, match="pip install onnxoptimizer"):
        optimize(object(), ["fuse_bn_into_conv"])
