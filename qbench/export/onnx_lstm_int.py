"""An integer ONNX lowering of quantized LSTM students: integer gate products, one Scan over time.

:mod:`qbench.export.onnx_lstm` (``fakequant_unrolled``) computes Brevitas' float32 graph with
float MatMuls and T unrolled steps. This lowering (``integer_scan``) computes what the integer
engine (:mod:`kernels.lstm`) computes, from the same :class:`~kernels.IntLSTMModel`:

* **gate products** are ``MatMulInteger`` on io codes (uint8, ``code + 128`` with zero point
  128, the form both runtimes' u8 x s8 GEMMs take) and int8 weight codes, accumulated in int32.
  The input product of every step runs once, before the loop, as one (B, T, F) x (F, 4H) GEMM
  plus the int32 bias; the recurrent one runs inside it.
* **time loop**: one ``Scan`` over the step axis, state (h codes as uint8, c as float32
  values), so T is free (one file for any clip length) and the file holds one copy of each
  weight and table.
* **requantization** of each gate accumulator is ``Round(float32(acc) * M)``, clamped:
  ``|acc| < 2**24`` converts exactly and ``M = s_io * s_w / s_acc`` is a power of two with po2
  scales, so the code is the engine's exactly; with float scales ``M`` is its float32 (the
  engine uses a 30-bit fixed-point multiplier), which can move a gate sitting within 2**-24 of
  a .5 tie.
* **activations** are ``Gather`` over the gate codes from the model's own lookup tables (one
  flat table of the four gates), and tanh(c) a ``Gather`` over cell codes from the table cut
  to its unsaturated span. Tables are stored as narrow integer codes, dequantized after the
  lookup; the tanh table is still up to one byte per 16-bit cell code (64 KiB).
* **cell update** repeats the engine's float32 mode operation for operation (itself Brevitas'
  own float32 operations; with po2 scales every one is exact and equal to its fixed-point mode).
* **head**: ``MatMulInteger`` on the head's input codes (requantized from the last h or the
  mean over time), int32 bias, times ``s_in * s_w``.

The float front end (ClipNorm, frame AvgPool, BatchNorm, division by the fitted input scale)
is :mod:`qbench.export.onnx_lstm`'s, and the input is quantized as ``quantize_input`` does.
Needs io codes of at most 8 bits (signed) and gate accumulators below 2**24.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from qbench.errors import QbenchError
from qbench.export.onnx_cnn import INPUT_NAME
from qbench.capabilities import lstm_student_parts
from qbench.export.onnx_lstm import _front_end, _Graph, save_graph

INT_LSTM_OPSET = 16  # Scan-16, MatMulInteger-10, Gather/Round/Clip on float32
ZERO_POINT = 128  # io codes travel as uint8 code + 128
FLOAT_EXACT = 2**24  # integers below this convert to float32 exactly
_BODY_NAMES = 10**6  # the Scan body's generated names start here, clear of the outer graph's


def _f32(v) -> np.ndarray:
    return np.asarray(v, dtype=np.float32)


def _check(model) -> None:
    io = model.io_quant
    if not (io.signed and io.qmin >= -ZERO_POINT and io.qmax < ZERO_POINT):
        raise QbenchError(f"integer LSTM graph: io codes must be signed 8-bit at most, got {io.bit_width} bits")
    for k, layer in enumerate(model.layers):
        bound = np.abs(layer.weight.astype(np.int64)).sum(axis=1) * ZERO_POINT + np.abs(layer.bias.astype(np.int64))
        if bound.max() >= FLOAT_EXACT:
            raise QbenchError(f"integer LSTM graph: layer {k}'s gate accumulators reach {bound.max()} >= 2**24")


def _codes(g: _Graph, v: str, scale, lo: int, hi: int, name: str) -> str:
    """Float32 codes ``clip(round(v / s))`` of float32 values ``v``, as Brevitas quantizes."""
    q = g.op("Round", g.op("Div", v, g.const(f"{name}.scale", _f32(scale))))
    return g.op("Clip", q, g.const(f"{name}.lo", _f32(lo)), g.const(f"{name}.hi", _f32(hi)))


def _u8(g: _Graph, codes: str) -> str:
    """Float32 io codes -> uint8 ``code + 128`` (MatMulInteger's A with zero point 128)."""
    return g.op("Cast", g.op("Add", codes, g.const("u8.offset", _f32(ZERO_POINT))), to=2)  # 2: UINT8


def _narrow(codes: np.ndarray) -> np.ndarray:
    """Integer codes in the narrowest of int8, uint8, int16 that holds them (what the file stores)."""
    for dtype in (np.int8, np.uint8, np.int16):
        if codes.min() >= np.iinfo(dtype).min and codes.max() <= np.iinfo(dtype).max:
            return codes.astype(dtype)
    return codes.astype(np.int32)


def _lookup(g: _Graph, codes: np.ndarray, index: str, scale: np.ndarray, name: str) -> str:
    """``float32(table[index]) * scale``: a table stored as narrow integer codes, dequantized after the
    Gather as the engine dequantizes (and a body initializer: OpenVINO's Scan takes no outer-scope values)."""
    found = g.op("Gather", g.const(f"{name}.codes", _narrow(codes)), index, axis=0)
    return g.op("Mul", g.op("Cast", found, to=1), g.const(f"{name}.scale", _f32(scale)))


def _tanh_span(layer) -> tuple[int, int]:
    """First and last index of the tanh(c) table outside its saturated ends (16-bit cells: 64 Ki entries)."""
    changes = np.flatnonzero(np.diff(layer.cell_tanh_lut))
    return (0, 0) if changes.size == 0 else (int(changes[0]), int(changes[-1]) + 1)


def _body(layer, io, cell, k: int, emit_codes: bool):
    """The Scan body of layer ``k``: (h_u8, c, xacc_t) -> (h_u8', c', [h codes])."""
    from onnx import TensorProto, helper

    g = _Graph()
    g._n = _BODY_NAMES * (k + 1)
    h, rows = layer.hidden_size, 4 * layer.hidden_size
    n_codes = layer.gate_luts.shape[1]
    acc_q = layer.gate_acc_quant[0]
    w_hh = g.const("w_hh", np.ascontiguousarray(layer.weight[:, layer.input_size:].T, dtype=np.int8))  # (H, 4H)
    acc = g.op("Add", "xacc_t", g.op("MatMulInteger", "h_u8", w_hh, g.const("zp", np.uint8(ZERO_POINT))))
    acc_scale = np.concatenate([np.broadcast_to(_f32(q.scale).astype(np.float64), (h,)) for q in layer.gate_acc_quant])
    mult = _f32(np.float64(io.scale) * layer.weight_scale_rows() / acc_scale)  # (4H,)
    gate = g.op("Clip", g.op("Round", g.op("Mul", g.op("Cast", acc, to=1), g.const("gate.mult", mult))),
                g.const("gate.lo", _f32(acc_q.qmin)), g.const("gate.hi", _f32(acc_q.qmax)))
    offset = _f32(np.arange(rows) // h * n_codes - acc_q.qmin)  # row's table in the flat (4 x n_codes) one
    index = g.op("Cast", g.op("Add", gate, g.const("gate.offset", offset)), to=6)  # 6: INT32
    act_scale = np.concatenate([np.broadcast_to(_f32(q.scale), (h,)) for q in layer.gate_act_quant])
    act = _lookup(g, layer.gate_luts.reshape(-1), index, act_scale, "gate.table")  # (B, 4H) activations
    i, f, gg, o = g.split(act, np.full(4, h, np.int64), "gate.split")
    s_c = _f32(cell.scale)
    fc = _codes(g, g.op("Mul", f, "c"), s_c, cell.qmin, cell.qmax, "cell")
    ic = _codes(g, g.op("Mul", i, gg), s_c, cell.qmin, cell.qmax, "cell")
    c_sum = g.op("Add", g.op("Mul", fc, g.const("cell.scale", s_c)), g.op("Mul", ic, "cell.scale"))
    c_codes = _codes(g, c_sum, s_c, cell.qmin, cell.qmax, "cell")
    c_new = g.op("Identity", g.op("Mul", c_codes, "cell.scale"))
    lo, hi = _tanh_span(layer)
    first, last = cell.qmin + lo, cell.qmin + hi
    t_index = g.op("Cast", g.op("Sub", g.op("Clip", c_codes, g.const("tanh.lo", _f32(first)), g.const("tanh.hi", _f32(last))),
                                "tanh.lo"), to=6)
    tanh_c = _lookup(g, layer.cell_tanh_lut[lo:hi + 1], t_index, _f32(layer.hidden_tanh_quant.scale), "tanh.table")
    h_codes = _codes(g, g.op("Mul", o, tanh_c), io.scale, io.qmin, io.qmax, "io")
    outputs = [_u8(g, h_codes), c_new] + ([g.op("Identity", h_codes)] if emit_codes else [])
    info = helper.make_tensor_value_info
    graph = helper.make_graph(
        g.nodes, f"lstm_layer{k}_step",
        [info("h_u8", TensorProto.UINT8, ["batch", h]), info("c", TensorProto.FLOAT, ["batch", h]),
         info("xacc_t", TensorProto.INT32, ["batch", rows])],
        [info(outputs[0], TensorProto.UINT8, ["batch", h]), info(outputs[1], TensorProto.FLOAT, ["batch", h])]
        + ([info(outputs[2], TensorProto.FLOAT, ["batch", h])] if emit_codes else []),
        g.inits,
    )
    return graph


def _layer(g: _Graph, x_codes: str, zeros: tuple[str, str], layer, io, cell, k: int, emit_codes: bool) -> list[str]:
    """Layer ``k`` over (B, T, F) float32 io codes: [last h codes (B, H), and (B, T, H) codes when asked]."""
    from onnx import helper

    w_ih = g.const(f"l{k}.w_ih", np.ascontiguousarray(layer.weight[:, :layer.input_size].T, dtype=np.int8))  # (F, 4H)
    xacc = g.op("MatMulInteger", _u8(g, x_codes), w_ih, g.const("u8.zp", np.uint8(ZERO_POINT)))  # (B, T, 4H) int32
    xacc = g.op("Add", xacc, g.const(f"l{k}.bias", layer.bias.astype(np.int32)))
    g._n += 1
    outs = [f"scan{k}_h_u8", f"scan{k}_c"] + ([f"scan{k}_codes"] if emit_codes else [])
    g.nodes.append(helper.make_node(
        "Scan", [*zeros, xacc], outs, body=_body(layer, io, cell, k, emit_codes), num_scan_inputs=1,
        scan_input_axes=[1], **({"scan_output_axes": [1]} if emit_codes else {})))
    last = g.op("Sub", g.op("Cast", outs[0], to=1), g.const("u8.offset", _f32(ZERO_POINT)))
    return [last] + outs[2:]


def _zeros(g: _Graph, x: str, hidden: int, k: int) -> tuple[str, str]:
    """Zero initial (h + 128 as uint8, c float32) states of shape (B, H)."""
    from onnx import TensorProto, helper

    batch = g.op("Slice", g.op("Shape", x), g.const("shape.0", np.array([0], np.int64)),
                 g.const("shape.1", np.array([1], np.int64)))
    shape = g.op("Concat", batch, g.const(f"l{k}.hidden", np.array([hidden], np.int64)), axis=0)
    h0 = g.op("ConstantOfShape", shape, value=helper.make_tensor("v", TensorProto.UINT8, [1], [ZERO_POINT]))
    c0 = g.op("ConstantOfShape", shape, value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0]))
    return h0, c0


def _head(g: _Graph, feat_codes: str, model, steps_div: str | None) -> str:
    """(B, D) float32 io codes (or their sum over time) -> (B, C) logits, as kernels.linear computes."""
    head = model.head
    v = g.op("Mul", feat_codes, g.const("head.ratio", _f32(np.float64(model.io_quant.scale) / np.float64(head.input_quant.scale))))
    if steps_div is not None:
        v = g.op("Div", v, steps_div)
    q = g.op("Clip", g.op("Round", v), g.const("head.lo", _f32(head.input_quant.qmin)),
             g.const("head.hi", _f32(head.input_quant.qmax)))
    acc = g.op("MatMulInteger", _u8(g, q), g.const("head.w", np.ascontiguousarray(head.weight.T, dtype=np.int8)),
               g.const("u8.zp", np.uint8(ZERO_POINT)))
    if head.bias is not None:
        acc = g.op("Add", acc, g.const("head.bias", head.bias.astype(np.int32)))
    n_out = head.weight.shape[0]
    scale = np.broadcast_to(np.float64(head.input_quant.scale) * head.weight_quant.scale.astype(np.float64), (n_out,))
    return g.op("Mul", g.op("Cast", acc, to=1), g.const("head.scale", _f32(scale)))


def export_lstm_int_onnx(qmodel: nn.Module, path: Path, example: np.ndarray) -> Path:
    """Write an LSTM student's integer graph (``(B, T, F)`` -> ``(B, C)``, B and T free; ``example``
    fixes F)."""
    from kernels import extract_lstm

    clip_norm, frame_pool, norm, lstm, pooling, head = lstm_student_parts(qmodel)
    qmodel.eval()
    model = extract_lstm(lstm, head, pooling=pooling)
    _check(model)
    io = model.io_quant
    g = _Graph()
    x = _front_end(g, INPUT_NAME, clip_norm, frame_pool, norm)
    x = g.op("Div", x, g.const("input_scale", _f32(model.input_scale)))  # as QbenchQuantLSTM divides
    codes = _codes(g, x, io.scale, io.qmin, io.qmax, "io")  # (B, T', F), as IntLSTMModel.quantize_input
    for k, layer in enumerate(model.layers):
        emit = k < len(model.layers) - 1 or pooling == "mean"
        outs = _layer(g, codes, _zeros(g, x, layer.hidden_size, k), layer, io, model.cell_quant, k, emit)
        last, codes = outs[0], (outs[1] if emit else None)
    if pooling == "mean":
        steps = g.op("Cast", g.op("Gather", g.op("Shape", codes), g.const("shape.t", np.array(1, np.int64))), to=1)
        logits = _head(g, g.op("ReduceSum", codes, g.const("time.axis", np.array([1], np.int64)), keepdims=0), model, steps)
    else:
        logits = _head(g, last, model, None)
    return save_graph(g, logits, path, name="qbench_lstm_int", frames="frames", feats=int(example.shape[2]),
                      classes=model.head.weight.shape[0], opset=INT_LSTM_OPSET)


def lstm_graph_of(qmodel: nn.Module, requested):
    """The :class:`~qbench.export.base.LSTMGraph` an exporter writes for ``qmodel``: ``requested`` for
    an LSTM student, None for any other student (it has one graph)."""
    from qbench.capabilities import LSTM_STUDENT, capabilities
    from qbench.export.base import LSTMGraph

    return LSTMGraph(requested) if LSTM_STUDENT in capabilities(qmodel) else None


def write_integer_lstm(qmodel: nn.Module, path: Path, example: np.ndarray):
    """:func:`export_lstm_int_onnx` for an exporter: (path, weight container, notes)."""
    from qbench.export.onnx_cnn import WeightContainer

    export_lstm_int_onnx(qmodel, path, np.asarray(example, dtype=np.float32))
    return path, WeightContainer.INT8.value, ("integer_scan graph: int8 weight codes feed MatMulInteger (no INT4/INT2 packing)",)
