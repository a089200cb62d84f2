"""Why a runtime's 8-bit artifact fails conformance on this CPU: a check qbench performs, not a guess.

x86 CPUs without VNNI (AVX2-only ones: AMD Zen 1-3, Intel before Cascade Lake) multiply u8
activations by s8 weights with ``vpmaddubsw``, which adds each pair of products into a
*saturating* int16: two products of 255 x 127 (64770) come out as 32767. oneDNN (OpenVINO) and
ONNX Runtime's int8 convolutions take that path on such CPUs unless weights are reduced to 7 bits;
VNNI's ``vpdpbusd`` adds into int32 and cannot saturate. An 8-bit CNN whose codes reach the top of
their range then deviates by tens of output steps from Brevitas, which computes in float.

:func:`saturation_probe` runs a one-convolution QDQ graph whose exact answer is 2 x 255 x 127 on
the runtime variant that failed; :func:`likely_cause` turns that, and the CPU's VNNI flags, into
the sentence a record carries.
"""

from __future__ import annotations

import functools
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from qbench.backends import Backend
from qbench.export.base import Artifact, FloatPrecision, files_size, runner
from qbench.export.onnx_cnn import INPUT_NAME

VNNI_FLAGS = ("avx512_vnni", "avx_vnni")
PROBE_EXACT = 2 * 255 * 127  # one output of the probe: two u8 x s8 products at the top of their range
INT16_MAX = 32767
OUT_SCALE = 256.0  # the probe's output step: 64770 -> code 253, a saturated 32767 -> code 128


def has_vnni(flags: str | None = None) -> bool | None:
    """Whether this x86 CPU has VNNI (``avx512_vnni`` or ``avx_vnni``); None off x86 or unknown.

    ``flags``: the ``flags`` line of ``/proc/cpuinfo`` (read from the file when omitted).
    """
    if flags is None:
        if platform.machine().lower() not in ("x86_64", "amd64", "i686"):
            return None
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
        flags = next((line.split(":", 1)[1] for line in text.splitlines() if line.startswith("flags")), None)
        if flags is None:
            return None
    return any(f in flags.split() for f in VNNI_FLAGS)


def _probe_graph(path: Path) -> Path:
    """x (1, 2, 1, 1) -> Q(u8) -> DQ -> Conv(DQ(s8 weights = 127)) -> Q(u8, scale 256) -> DQ -> y."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def const(name: str, value: Any, dtype) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)

    inits = [
        const("x_scale", 1.0, np.float32), const("x_zp", 0, np.uint8),
        const("w_q", np.full((1, 2, 1, 1), 127), np.int8), const("w_scale", 1.0, np.float32),
        const("w_zp", 0, np.int8), const("y_scale", OUT_SCALE, np.float32), const("y_zp", 0, np.uint8),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", [INPUT_NAME, "x_scale", "x_zp"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_dq"]),
        helper.make_node("Conv", ["x_dq", "w_dq"], ["conv"]),
        helper.make_node("QuantizeLinear", ["conv", "y_scale", "y_zp"], ["y_q"]),
        helper.make_node("DequantizeLinear", ["y_q", "y_scale", "y_zp"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "saturation_probe", [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 2, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1, 1, 1])], initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _probe_artifact(backend: Backend, folder: Path) -> Artifact:
    onnx_path = _probe_graph(folder / "probe.onnx")
    files = Backend(backend).spec.files_from_onnx(onnx_path)
    return Artifact(backend=backend, path=files[0], files=files, size_bytes=files_size(files),
                    precision=FloatPrecision.F32, weight_container="int8", weight_bits=8, act_bits=8)


@functools.lru_cache(maxsize=None)
def _probe(backend: Backend, options: tuple[tuple[str, Any], ...]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        art = _probe_artifact(backend, Path(tmp))
        x = np.full((1, 2, 1, 1), 255.0, np.float32)
        return float(np.asarray(runner(art, threads=1, **dict(options))(x)).ravel()[0])


def saturation_probe(backend: Backend | str, options: dict[str, Any] | None = None) -> float | None:
    """The probe's output under ``backend`` with runner ``options`` (exact: 64770, rounded to 256s).

    Returns None when the probe cannot run (the runtime refuses the graph): no evidence either way.
    """
    try:
        return _probe(Backend(backend), tuple(sorted((options or {}).items())))
    except Exception:  # noqa: BLE001 - a probe that cannot run proves nothing; the caller says so
        return None


def saturates(value: float | None) -> bool | None:
    """Whether a probe output shows the int16 pair saturation (None: no probe result)."""
    if value is None:
        return None
    return value <= INT16_MAX + OUT_SCALE  # exact is 64768 (253 x 256); saturated 32768 (128 x 256)


def likely_cause(backend: Backend | str, options: dict[str, Any], *, act_bits: int,
                 vnni: bool | None = None, probe_value: float | None = None) -> str | None:
    """A sentence naming the likely cause of an 8-bit int8-kernel deviation, or None if the checks do not point to one.

    ``vnni`` defaults to :func:`has_vnni`; ``probe_value`` to :func:`saturation_probe` of the variant.
    """
    if act_bits < 8:
        return None  # 7-bit or narrower codes cannot saturate an int16 pair sum (2 x 127 x 127 < 32767)
    vnni = has_vnni() if vnni is None else vnni
    if probe_value is None:
        probe_value = saturation_probe(backend, options)
    saturated = saturates(probe_value)
    isa = "the CPU lacks VNNI" if vnni is False else "the CPU has VNNI" if vnni else "non-x86 CPU"
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA")
    if limit and Backend(backend) == "openvino":  # oneDNN told to act as an older CPU
        isa = f"oneDNN limited to {limit} (ONEDNN_MAX_CPU_ISA)"
    if saturated:
        return (f"likely cause: {isa}; this runtime's int8 kernels saturate u8 x s8 pair products in int16 "
                f"(probe: 2 x 255 x 127 = {PROBE_EXACT} computed as {probe_value:.0f})")
    if vnni is False:
        probe = "the saturation probe did not run" if saturated is None else f"probe exact ({probe_value:.0f})"
        return f"possible cause: the CPU lacks VNNI (saturating u8 x s8 int8 path); {probe}"
    return None
