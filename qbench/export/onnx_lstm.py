"""ONNX export of quantized LSTM students, built from the extracted integer model.

Brevitas 0.13 cannot export a fully quantized ``QuantLSTM`` (QCDQ refuses its 16-bit cell
state; QONNX's ``QuantLSTMCell`` has no executor), so this module writes the graph itself
from :func:`kernels.extract_lstm`'s :class:`~kernels.IntLSTMModel`, with standard operators
only. Choices, and why:

* **unrolled time steps** (T fixed by the example, batch dynamic): no ``Loop``/``Scan`` body
  graphs, which both runtimes optimise less predictably; students run a few hundred steps.
* **weights** are ``int8 codes -> Clip -> DequantizeLinear`` exactly as Brevitas' QCDQ CNN
  graphs, so the same repacking into ONNX INT4/INT2 (:func:`qbench.export.onnx_cnn.pack_weights`)
  and the same runtime probing apply; biases are int32 codes dequantized at ``s_io * s_w``.
* **activations** (io, gate accumulators, sigmoid/tanh outputs, 16-bit cell state) are
  fake-quantized as Brevitas does it in float32, ``clip(round(v / s)) * s`` with
  ``Div/Round/Clip/Mul`` (``Round`` is half-to-even like ``torch.round``): ``QuantizeLinear``
  has no int16 output before opset 21, and this keeps one form for every bit width.

Supported students: ``[BatchNorm1d over features] -> QuantLSTM -> last step or mean over time
-> QuantLinear`` (``models.LSTMStudent``); anything else raises :class:`QbenchError`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from qbench.capabilities import first_int, lstm_student_parts
from qbench.export.onnx_cnn import INPUT_NAME, OUTPUT_NAME

LSTM_OPSET = 13
LSTM_IR_VERSION = 8  # what opset 13 needs; onnx's newest IR is ahead of ORT 1.31's loader


class _Graph:
    """A tiny ONNX graph builder: named initializers and nodes with generated output names."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.inits: list = []
        self._names: set[str] = set()
        self._n = 0

    def const(self, name: str, value: np.ndarray) -> str:
        """An initializer; a name already defined is reused (one quantizer, one scale tensor)."""
        from onnx import numpy_helper

        if name not in self._names:
            self._names.add(name)
            self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def split(self, v: str, sizes: np.ndarray, name: str) -> list[str]:
        from onnx import helper

        self._n += 1
        outs = [f"split_{self._n}_{i}" for i in range(len(sizes))]
        self.nodes.append(helper.make_node("Split", [v, self.const(name, sizes)], outs, axis=1))
        return outs

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        from onnx import helper

        self._n += 1
        out = f"{op_type.lower()}_{self._n}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def fake_quant(self, v: str, spec, name: str) -> str:
        """``clip(round(v / s), qmin, qmax) * s`` with the spec's scale (scalar or per column)."""
        s = self.const(f"{name}.scale", np.asarray(spec.scale, np.float32))
        lo = self.const(f"{name}.qmin", np.float32(spec.qmin))
        hi = self.const(f"{name}.qmax", np.float32(spec.qmax))
        return self.op("Mul", self.op("Clip", self.op("Round", self.op("Div", v, s)), lo, hi), s)

    def weight(self, codes: np.ndarray, scale: np.ndarray, bits: int, name: str) -> str:
        """``(K, N)`` int8 codes -> Clip to the signed narrow range -> DequantizeLinear per column."""
        w = self.const(f"{name}.codes", codes.astype(np.int8))
        q = (1 << (bits - 1)) - 1
        clip = self.op("Clip", w, self.const(f"{name}.min", np.int8(-q)), self.const(f"{name}.max", np.int8(q)))
        s = self.const(f"{name}.scale", scale.astype(np.float32))
        zp = self.const(f"{name}.zp", np.zeros(scale.shape, np.int8))
        return self.op("DequantizeLinear", clip, s, zp, axis=1)

    def bias(self, codes: np.ndarray, scale: np.ndarray, name: str) -> str:
        b = self.const(f"{name}.codes", codes.astype(np.int32))
        s = self.const(f"{name}.scale", scale.astype(np.float32))
        return self.op("DequantizeLinear", b, s, self.const(f"{name}.zp", np.zeros(scale.shape, np.int32)), axis=0)


def _columns(specs, hidden: int) -> np.ndarray:
    """Per-gate scales (each () or (H,)) -> one (4H,) float32 vector in gate order i, f, g, o."""
    return np.concatenate([np.broadcast_to(np.asarray(s.scale, np.float32), (hidden,)) for s in specs])


def _clip_norm(g: _Graph, x: str, clip_norm) -> str:
    """(B, T, F) minus the clip's mean level, or the running mean of the frames so far (causal)."""
    from models.frontend import ClipNormMode

    if clip_norm is None or clip_norm.mode is ClipNormMode.NONE:
        return x
    if clip_norm.mode is ClipNormMode.CLIP:
        return g.op("Sub", x, _snap_level(g, g.op("ReduceMean", x, axes=[1, 2], keepdims=1)))
    level = g.op("ReduceMean", x, axes=[2], keepdims=1)  # (B, T, 1)
    running = g.op("CumSum", level, g.const("clip_norm.axis", np.array(1, np.int64)))
    seen = g.op("Add", g.op("Cast", g.op("Range", g.const("clip_norm.zero", np.array(0, np.int64)),
                                                 g.op("Gather", g.op("Shape", x), g.const("clip_norm.t", np.array(1, np.int64))),
                                                 g.const("clip_norm.one", np.array(1, np.int64))), to=1),
                g.const("clip_norm.onef", np.array(1.0, np.float32)))  # 1, 2, ..., T as float32
    level = g.op("Div", running, g.op("Unsqueeze", seen, g.const("clip_norm.axes", np.array([1], np.int64))))
    return g.op("Sub", x, _snap_level(g, level))


def _snap_level(g: _Graph, level: str) -> str:
    """``models.frontend.snap_level``: Round (half to even) to multiples of LEVEL_STEP, exactly as torch."""
    from models.frontend import LEVEL_STEP

    step = g.const("clip_norm.step", np.array(LEVEL_STEP, np.float32))
    return g.op("Mul", g.op("Round", g.op("Div", level, step)), step)


def _front_end(g: _Graph, x: str, clip_norm, frame_pool: nn.AvgPool1d | None, norm: nn.BatchNorm1d | None) -> str:
    """(B, T, F) -> (B, T', F): clip level removed, non-overlapping frames averaged, eval-mode BatchNorm."""
    x = _clip_norm(g, x, clip_norm)
    if frame_pool is None and norm is None:
        return x
    y = g.op("Transpose", x, perm=[0, 2, 1])  # (B, F, T), as the student pools and normalises
    if frame_pool is not None:
        k = first_int(frame_pool.kernel_size)
        y = g.op("AveragePool", y, kernel_shape=[k], strides=[k])
    if norm is not None:
        y = _input_norm(g, y, norm)
    return g.op("Transpose", y, perm=[0, 2, 1])


def _input_norm(g: _Graph, x: str, norm: nn.BatchNorm1d) -> str:
    """Eval-mode BatchNorm over axis 1 of (B, F, T), as ATen computes it: x * alpha + beta'."""
    with torch.no_grad():
        invstd = 1.0 / torch.sqrt(norm.running_var + norm.eps)
        alpha = invstd * (norm.weight if norm.affine else 1.0)
        beta = (norm.bias if norm.affine else 0.0) - norm.running_mean * alpha
    alpha, beta = (v.numpy().astype(np.float32).reshape(-1, 1) for v in (alpha, beta))  # (F, 1)
    return g.op("Add", g.op("Mul", x, g.const("norm.alpha", alpha)), g.const("norm.beta", beta))


def _layer(g: _Graph, xq: str, steps: int, layer, io, cell, k: int) -> list[str]:
    """One layer over ``steps``; ``xq`` (B, T, F) fake-quantized input; returns h_t (B, H) per step."""
    f, h = layer.input_size, layer.hidden_size
    w_s = _columns(layer.weight_quant, h)
    bits = layer.weight_quant[0].bit_width
    w_ih = g.weight(layer.weight[:, :f].T, w_s, bits, f"l{k}.w_ih")  # (F, 4H)
    w_hh = g.weight(layer.weight[:, f:].T, w_s, bits, f"l{k}.w_hh")  # (H, 4H)
    bias = g.bias(layer.bias, np.float32(io.scale) * w_s, f"l{k}.bias")
    x_all = g.op("MatMul", xq, w_ih)  # (B, T, 4H): each step's input product, as F.linear computes it
    hs: list[str] = []
    h_t = c_t = None
    for t in range(steps):
        pre = g.op("Gather", x_all, g.const(f"l{k}.t{t}", np.int64(t)), axis=1)  # (B, 4H)
        if h_t is not None:
            pre = g.op("Add", pre, g.op("MatMul", h_t, w_hh))
        pre = g.op("Add", pre, bias)
        acc = g.fake_quant(pre, _AccSpec(layer.gate_acc_quant, h), f"l{k}.acc")
        parts = g.split(acc, np.full(4, h, np.int64), f"l{k}.split")
        i, f_, gg, o = (g.fake_quant(g.op("Tanh" if n == "g" else "Sigmoid", p), spec, f"l{k}.{n}act")
                        for n, p, spec in zip("ifgo", parts, layer.gate_act_quant))
        ic = g.fake_quant(g.op("Mul", i, gg), cell, "cell")
        c_t = ic if c_t is None else g.op("Add", g.fake_quant(g.op("Mul", f_, c_t), cell, "cell"), ic)
        c_t = g.fake_quant(c_t, cell, "cell")
        tanh_c = g.fake_quant(g.op("Tanh", c_t), layer.hidden_tanh_quant, f"l{k}.tanh_c")
        h_t = g.fake_quant(g.op("Mul", o, tanh_c), io, "io")
        hs.append(h_t)
    return hs


class _AccSpec:
    """The four gate-accumulator quantizers as one per-column quantizer over (B, 4H)."""

    def __init__(self, specs, hidden: int) -> None:
        self.scale, self.qmin, self.qmax = _columns(specs, hidden), specs[0].qmin, specs[0].qmax


def export_lstm_onnx(qmodel: nn.Module, path: Path, example: np.ndarray) -> Path:
    """Write an LSTM student's ONNX graph (``(B, T, F)`` -> ``(B, C)``, T fixed by ``example``)."""
    from kernels import extract_lstm

    clip_norm, frame_pool, norm, lstm, pooling, head = lstm_student_parts(qmodel)
    qmodel.eval()
    model = extract_lstm(lstm, head)
    frames, feats = int(example.shape[1]), int(example.shape[2])
    steps = frames // first_int(frame_pool.kernel_size) if frame_pool is not None else frames
    g = _Graph()
    x = _front_end(g, INPUT_NAME, clip_norm, frame_pool, norm)
    x = g.op("Div", x, g.const("input_scale", np.array(model.input_scale, np.float32)))  # as QbenchQuantLSTM divides
    seq = g.fake_quant(x, model.io_quant, "io")
    for k, layer in enumerate(model.layers):
        hs = _layer(g, seq, steps, layer, model.io_quant, model.cell_quant, k)
        axes = g.const(f"l{k}.axes", np.array([1], np.int64))
        seq = g.op("Concat", *[g.op("Unsqueeze", h_t, axes) for h_t in hs], axis=1)  # (B, T, H)
    feat = hs[-1] if pooling == "last" else g.op("ReduceMean", seq, axes=[1], keepdims=0)
    hq = g.fake_quant(feat, model.head.input_quant, "head.in")
    w = g.weight(model.head.weight.T, np.broadcast_to(np.asarray(model.head.weight_quant.scale, np.float32),
                                                      (model.head.weight.shape[0],)).copy(),
                 model.head.weight_quant.bit_width, "head.w")
    logits = g.op("MatMul", hq, w)
    if model.head.bias is not None:
        s_b = np.float32(model.head.input_quant.scale) * np.asarray(model.head.weight_quant.scale, np.float32)
        s_b = np.broadcast_to(s_b, model.head.bias.shape).copy()
        logits = g.op("Add", logits, g.bias(model.head.bias, s_b, "head.bias"))
    return save_graph(g, logits, path, name="qbench_lstm", frames=frames, feats=feats,
                      classes=model.head.weight.shape[0], opset=LSTM_OPSET)


def save_graph(g: _Graph, logits: str, path: Path, *, name: str, frames: int | str, feats: int, classes: int,
               opset: int) -> Path:
    """Write ``g`` as a checked ONNX model ``(B, frames, feats) -> (B, classes)`` whose output is ``logits``."""
    import onnx
    from onnx import TensorProto, helper

    g.nodes.append(helper.make_node("Identity", [logits], [OUTPUT_NAME]))
    graph = helper.make_graph(
        g.nodes, name,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", frames, feats])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", classes])],
        g.inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="qbench",
                              ir_version=LSTM_IR_VERSION)
    onnx.checker.check_model(proto)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return path
