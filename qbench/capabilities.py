"""What a student can do, as named capabilities: what backends require and policies read.

* :data:`RECURRENT`: it carries state across time steps (an LSTM, GRU or RNN, float or
  quantized). Conformance gives recurrent models a wider step bound: a one-step difference in
  a hidden code is fed back and can grow. Layer types are registered
  (:func:`register_recurrent`), so a quantized GRU added later is recurrent without an edit here.
* :data:`LSTM_STUDENT`: it has the shape of ``models.LSTMStudent`` ([ClipNorm] -> [frame pool]
  -> [BatchNorm] -> one LSTM -> last/mean -> Linear), which the integer engine and the LSTM ONNX
  lowerings implement (see :func:`lstm_student_parts`).
"""

from __future__ import annotations

import sys

from torch import nn

from qbench.errors import QbenchError

RECURRENT = "recurrent"
LSTM_STUDENT = "lstm_student"

_RECURRENT_TYPES: list[type[nn.Module]] = [nn.LSTM, nn.GRU, nn.RNN]


def register_recurrent(*types: type[nn.Module]) -> None:
    """Declare layer types that carry state over time (e.g. a quantized LSTM)."""
    _RECURRENT_TYPES.extend(t for t in types if t not in _RECURRENT_TYPES)


def _brevitas_loaded() -> bool:
    """Whether Brevitas' layers are imported: a model that holds them has imported them, so a check of
    a float model need not pay Brevitas' import (3 s; a resumed sweep makes no other use of it)."""
    return "brevitas.nn" in sys.modules


def _brevitas_recurrent() -> None:
    if not _brevitas_loaded():
        return
    from brevitas.nn import QuantLSTM, QuantRNN

    register_recurrent(QuantLSTM, QuantRNN)


def is_recurrent(model: nn.Module) -> bool:
    _brevitas_recurrent()
    return any(isinstance(m, tuple(_RECURRENT_TYPES)) for m in model.modules())


def capabilities(model: nn.Module) -> frozenset[str]:
    """The capabilities of ``model`` (float or quantized)."""
    caps = set()
    if is_recurrent(model):
        caps.add(RECURRENT)
    try:
        lstm_student_parts(model)
        caps.add(LSTM_STUDENT)
    except QbenchError:
        pass
    return frozenset(caps)


def first_int(v) -> int:
    """An int from a module attribute that may be an int or a 1-tuple (kernel sizes, strides)."""
    return int(v[0] if isinstance(v, tuple) else v)


def lstm_student_parts(model: nn.Module):
    """(clip_norm, frame_pool, input_norm, lstm, pooling, head) of a ``models.LSTMStudent``-shaped
    model, float (``nn.LSTM``) or quantized (``QuantLSTM``); a QbenchError naming the shape if not."""
    from models.frontend import ClipNorm

    lstm_types: tuple[type, ...] = (nn.LSTM,)
    if _brevitas_loaded():
        from brevitas.nn import QuantLSTM

        lstm_types = (QuantLSTM, nn.LSTM)
    names = ("clip_norm", "frame_pool", "input_norm", "lstm", "pool", "fc", "dropout")
    parts = {name: getattr(model, name, None) for name in names}
    expected = {"clip_norm": (ClipNorm, type(None)), "frame_pool": (nn.AvgPool1d, type(None)),
                "input_norm": (nn.BatchNorm1d, type(None)), "lstm": lstm_types,
                "pool": (nn.Module, type(None)), "fc": (nn.Linear,), "dropout": (nn.Dropout, type(None))}
    known = {id(m) for m in parts.values() if m is not None}
    pooling = "last" if parts["pool"] is None else "mean"  # the student's classify(): feats[:, -1] or pool(feats)
    if (any(not isinstance(parts[n], t) for n, t in expected.items())
            or any(id(m) not in known for m in model.children())):
        raise QbenchError(f"the integer engine and LSTM export support models.LSTMStudent ([ClipNorm] -> [frame "
                          f"AvgPool1d] -> [BatchNorm1d] -> LSTM -> last/mean -> Linear), not {type(model).__name__}")
    lstm = parts["lstm"]
    if isinstance(lstm, nn.LSTM) and (lstm.num_layers != 1 or lstm.bidirectional or not lstm.batch_first):
        raise QbenchError(f"the integer engine and LSTM export support one unidirectional batch-first LSTM layer, got {lstm}")
    fp = parts["frame_pool"]
    if fp is not None and (first_int(fp.kernel_size) != first_int(fp.stride) or first_int(fp.padding) != 0 or fp.ceil_mode):
        raise QbenchError(f"LSTM export: frame pooling must be non-overlapping without padding, got {fp}")
    return parts["clip_norm"], fp, parts["input_norm"], parts["lstm"], pooling, parts["fc"]
