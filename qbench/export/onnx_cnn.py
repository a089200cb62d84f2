"""ONNX graphs of quantized students, and their weights repacked into ONNX INT4/INT2 containers.

:func:`write_onnx` writes a CNN student with Brevitas' QCDQ exporter and an LSTM student with
:mod:`qbench.export.onnx_lstm` (which emits weights in the same form). Brevitas' QCDQ form stores every weight as an ``int8`` initializer, then ``Clip`` to the real
bit-width's range, then ``DequantizeLinear``; activations are ``QuantizeLinear -> Clip ->
DequantizeLinear``. ONNX has true low-bit containers since opset 21 (``INT4``) and opset 25
(``INT2``): :func:`pack_weights` rewrites each ``int8 initializer -> Clip -> DequantizeLinear``
whose clip range fits into such a tensor, dropping the ``Clip``. Which container a runtime
takes is measured at export time by :func:`try_packed` (the tightest container the runtime loads
and computes the int8 graph's logits with) and recorded on the artifact with the refusals.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from enum import Enum
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qbench.errors import QbenchError

QCDQ_OPSET = 13  # Brevitas' QCDQ export target; pack_weights converts to the container's opset
INPUT_NAME, OUTPUT_NAME = "x", "logits"


class WeightContainer(str, Enum):
    """The ONNX tensor type weight codes are stored in."""

    INT8 = "int8"
    """Brevitas QCDQ: int8 initializer + Clip to the bit-width's range (any bits 2-8)."""
    INT4 = "int4"
    """ONNX INT4 initializer (opset 21), packed two codes a byte; weights of <= 4 bits."""
    INT2 = "int2"
    """ONNX INT2 initializer (opset 25), packed four codes a byte; weights of 2 bits."""


# container -> (ONNX element type, code range, opset that introduced it)
_CONTAINERS = {
    WeightContainer.INT4: ("INT4", (-8, 7), 21),
    WeightContainer.INT2: ("INT2", (-2, 1), 25),
}


def write_onnx(qmodel: nn.Module, path: Path, example: torch.Tensor | np.ndarray) -> Path:
    """The model's ONNX graph: Brevitas QCDQ, or for a QuantLSTM student :mod:`qbench.export.onnx_lstm`
    (Brevitas 0.13 cannot export a QuantLSTM with a 16-bit cell state)."""
    from qbench.capabilities import RECURRENT, capabilities, lstm_student_parts

    caps = capabilities(qmodel)
    if RECURRENT in caps:
        lstm_student_parts(qmodel)  # a recurrent model of another shape: one line naming the supported one
        from qbench.export.onnx_lstm import export_lstm_onnx

        return export_lstm_onnx(qmodel, path, np.asarray(example, dtype=np.float32))
    return export_qcdq(qmodel, path, example)


def export_qcdq(qmodel: nn.Module, path: Path, example: torch.Tensor | np.ndarray) -> Path:
    """Write ``qmodel`` as a QCDQ ONNX graph with a dynamic batch axis.

    ``example`` is a ``(B, T, F)`` input fixing T and F. Raises :class:`QbenchError` when Brevitas
    refuses the model (e.g. a fully quantized QuantLSTM: use the LSTM exporter).
    """
    from brevitas.export import export_onnx_qcdq

    from qbench.export.onnx_passes import install as install_onnx_passes

    x = torch.as_tensor(np.asarray(example, dtype=np.float32))
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = qmodel.training
    qmodel.eval()
    try:
        install_onnx_passes()  # onnxoptimizer is absent on aarch64 (no wheel): its two passes in plain onnx
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # TorchScript exporter: Brevitas' dynamo path refuses quantized (int32) biases
            export_onnx_qcdq(
                qmodel, args=x, export_path=str(path), opset_version=QCDQ_OPSET, dynamo=False,
                keep_initializers_as_inputs=False, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
    except ModuleNotFoundError as exc:  # Brevitas' ONNX path needs onnx
        raise QbenchError(f"ONNX export needs the {exc.name or 'onnx'} package: {exc}") from exc
    except (RuntimeError, AssertionError, NotImplementedError) as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise QbenchError(f"Brevitas QCDQ export failed for {type(qmodel).__name__}: {first}") from exc
    finally:
        qmodel.train(was_training)
    return path


def _initializer(model, name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    return None


def pack_weights(path: Path, containers: tuple[WeightContainer, ...], out: Path) -> dict[str, int]:
    """Rewrite each weight ``int8 -> Clip -> DequantizeLinear`` chain into the tightest of
    ``containers`` its clip range fits (per tensor: a mixed-precision model gets INT4 for its
    4-bit layers and keeps int8 for its 8-bit ones).

    Writes ``out`` when anything was converted; returns tensors per container, ``int8`` counting
    the chains left as they were.
    """
    import ml_dtypes
    import onnx
    import onnx.version_converter
    from onnx import numpy_helper

    if WeightContainer.INT8 in containers:
        raise ValueError("int8 is Brevitas' own container; nothing to pack")
    tightest_first = sorted(containers, key=hi_bits)
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    plan: list[tuple[object, WeightContainer]] = []  # (Clip node, container) per weight chain
    counts: dict[str, int] = {}
    for clip in [n for n in model.graph.node if n.op_type == "Clip" and n.input[0] in inits]:
        w = numpy_helper.to_array(inits[clip.input[0]])
        cmin, cmax = _initializer(model, clip.input[1]), _initializer(model, clip.input[2])
        dqs = consumers.get(clip.output[0], [])
        if w.dtype != np.int8 or cmin is None or cmax is None:
            continue
        if len(dqs) != 1 or dqs[0].op_type != "DequantizeLinear" or len(consumers[clip.input[0]]) != 1:
            continue
        fits = [c for c in tightest_first if _CONTAINERS[c][1][0] <= int(cmin) and int(cmax) <= _CONTAINERS[c][1][1]]
        container = fits[0] if fits else WeightContainer.INT8
        counts[container.value] = counts.get(container.value, 0) + 1
        if fits:
            plan.append((clip, container))
    if not plan:
        return counts
    # the version converter rewrites ops whose signature moved (ReduceMean axes, ...)
    opset = max(_CONTAINERS[c][2] for _, c in plan)
    converted = onnx.version_converter.convert_version(model, opset)
    inits = {i.name: i for i in converted.graph.initializer}
    consumers = {}
    for node in converted.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    chosen = {clip.output[0]: container for clip, container in plan}  # node outputs keep their names
    dead = []
    for clip in [n for n in converted.graph.node if n.op_type == "Clip" and n.output[0] in chosen]:
        container = chosen[clip.output[0]]
        np_type = getattr(ml_dtypes, _CONTAINERS[container][0].lower())
        w = numpy_helper.to_array(inits[clip.input[0]])
        cmin, cmax = _initializer(converted, clip.input[1]), _initializer(converted, clip.input[2])
        codes = np.clip(w, int(cmin), int(cmax)).astype(np.int8)
        dq = consumers[clip.output[0]][0]
        packed = numpy_helper.from_array(codes.astype(np_type), clip.input[0] + f"_{container.value}")  # raw, packed
        old_zp = _initializer(converted, dq.input[2]) if len(dq.input) > 2 else None
        zp_shape = () if old_zp is None else old_zp.shape  # per-axis DQ needs a zero point per scale
        zp = numpy_helper.from_array(np.zeros(zp_shape, np_type), clip.input[0] + f"_{container.value}_zp")
        converted.graph.initializer.extend([packed, zp])
        dq.input[0] = packed.name
        if len(dq.input) > 2:
            dq.input[2] = zp.name
        else:
            dq.input.append(zp.name)
        dead.append(clip)
    for node in dead:
        converted.graph.node.remove(node)
    _drop_unused_initializers(converted)
    del converted.graph.value_info[:]  # the converter's inferred shapes: runtimes infer them again, the file ships lighter
    onnx.save(converted, str(out))
    return counts


def container_summary(counts: dict[str, int]) -> str:
    """``int4``, or the containers of a mixed graph joined tightest first (``int4+int8``)."""
    order = [c.value for c in sorted(WeightContainer, key=hi_bits)]
    return "+".join(c for c in order if counts.get(c)) or WeightContainer.INT8.value


def _drop_unused_initializers(model) -> None:
    used = {name for node in model.graph.node for name in node.input}
    for init in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(init)


def weight_bits(qmodel: nn.Module) -> set[int]:
    """The distinct weight bit-widths of a Brevitas model."""
    return {
        int(m.weight_quant.bit_width().item()) for m in qmodel.modules()
        if getattr(m, "weight_quant", None) is not None and getattr(m.weight_quant, "is_quant_enabled", False)
    }


def hi_bits(container: WeightContainer) -> int:
    """The widest weight bit-width a container holds."""
    return {WeightContainer.INT2: 2, WeightContainer.INT4: 4, WeightContainer.INT8: 8}[container]


def act_bits(qmodel: nn.Module) -> int:
    """The widest activation bit-width of a Brevitas model (8 when it has none)."""
    from brevitas.proxy.runtime_quant import ActQuantProxyFromInjectorBase

    bits = [
        int(m.bit_width().item()) for m in qmodel.modules()
        if isinstance(m, ActQuantProxyFromInjectorBase) and m.is_quant_enabled and m.fused_activation_quant_proxy is not None
    ]
    return max(bits, default=8)


PACK_RTOL = 0.02
"""A repacked graph holds the very same dequantized weights as the int8 one, so a runtime must give
the same logits up to kernel reassociation (measured <= 0.4% of the logit range for INT4, where
ORT swaps DQ+MatMul for its MatMulNBits kernel); ORT 1.31's INT2 path at ENABLE_ALL is off by
~100%, which this bound refuses."""


def check_same_outputs(run_packed: Callable[[np.ndarray], np.ndarray], run_int8: Callable[[np.ndarray], np.ndarray],
                       x: np.ndarray) -> None:
    """Raise ValueError unless the packed graph's logits match the int8 graph's within PACK_RTOL."""
    ref, out = run_int8(x), run_packed(x)
    err = float(np.abs(out - ref).max() / max(float(np.abs(ref).max()), 1e-12))
    if not np.isfinite(err) or err > PACK_RTOL:
        raise ValueError(f"outputs differ from the int8 graph by {err:.3g} of the logit range (> {PACK_RTOL})")


def try_packed(onnx_path: Path, check: Callable[[Path], None]) -> tuple[Path, str, tuple[str, ...]]:
    """The tightest packed form of ``onnx_path`` that ``check`` accepts (it raises to refuse:
    the runtime cannot load it, or computes other logits than from the int8 graph).

    Each weight tensor goes into the tightest container its range fits (INT2 for 2-bit, INT4 for
    <= 4-bit, else Brevitas' int8); when the runtime refuses a container, the graph is packed
    again without it. Returns the path, the containers used (:func:`container_summary`) and one
    note per refused container.
    """
    notes: list[str] = []
    allowed = [WeightContainer.INT2, WeightContainer.INT4]
    while allowed:
        out = onnx_path.with_name(onnx_path.name.replace(".qcdq.onnx", ".packed.onnx"))
        counts = pack_weights(onnx_path, tuple(allowed), out)
        used = [c for c in allowed if counts.get(c.value)]
        if not used:
            break
        try:
            check(out)
        except Exception as exc:  # noqa: BLE001 - a runtime refusing a type is data, recorded as a note
            refused = min(used, key=hi_bits)  # the newest, tightest type is the one runtimes lack
            notes.append(f"{refused.value} weights refused: {str(exc).strip().splitlines()[-1][:200]}")
            out.unlink(missing_ok=True)
            allowed.remove(refused)
            continue
        summary = container_summary(counts)
        if out.stat().st_size >= onnx_path.stat().st_size:  # few narrow tensors, and the opset change costs more
            notes.append(f"{summary} graph kept int8: {out.stat().st_size} bytes packed, not smaller than "
                         f"{onnx_path.stat().st_size} as int8")
            out.unlink(missing_ok=True)
            break
        final = out.with_name(out.name.replace(".packed.onnx", f".{summary}.onnx"))
        out.replace(final)
        return final, summary, tuple(notes)
    return onnx_path, WeightContainer.INT8.value, tuple(notes)
