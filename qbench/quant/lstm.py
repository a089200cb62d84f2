"""The quantized LSTM: a Brevitas ``QuantLSTM`` built from an ``nn.LSTM`` and a QuantConfig.

Inputs share ``io_quant`` with the hidden state (Brevitas' design: one scale for the
concatenated ``[x_t, h_t]`` so one integer accumulator serves both, Brevitas issue #1041), and
its scale settles on the hidden state's range, about [-1, 1]: inputs beyond it are clipped
(measured on a normalised keyword LSTM: 21.5 % of input values at w8a8, its whole 8-bit loss).
So the module divides its input by a fixed ``input_scale`` (a buffer, 1 until fitted) and
carries the same factor in ``W_ih``: the float function is unchanged, and
:func:`fit_input_scale` (called by PTQ calibration) sets it to the 99.9th percentile of
``|x|`` so the input shares the hidden state's range. Every consumer of the quantized LSTM (the
integer engine, the ONNX graph) divides the float input by ``input_scale`` the same way.

Every tensor inside the cell is quantized, as an integer engine computes it:

==================  ===========================================  =========================
quantizer           what it quantizes                            bits, sign
==================  ===========================================  =========================
``io_quant``        layer input x_t and hidden state h_t         ``act_bits``, signed
                    (one quantizer shared by every layer)
weights             W_ih, W_hh of each gate (one quantizer per   ``weight_bits``, signed,
                    gate, shared by its W_ih and W_hh)           narrow range
bias                b_ih + b_hh of each gate                     int32, scale = io x weight
``gate_acc_quant``  each gate's pre-activation W x + U h + b     ``effective_gate_bits``, signed
``sigmoid_quant``   sigmoid of the i, f, o gates                 ``act_bits``, unsigned
``tanh_quant``      tanh of the cell gate g and of c_t           ``act_bits``, signed
``cell_state``      f*c, i*g and c_t (shared by every layer)     ``cell_bits``, signed
==================  ===========================================  =========================

Interface: :class:`QbenchQuantLSTM` is a ``brevitas.nn.QuantLSTM`` whose ``forward`` takes
``nn.LSTM``'s arguments, ``forward(x, hx=None)`` with ``hx = (h0, c0)`` each
``(num_layers, B, H)``, and returns ``nn.LSTM``'s ``(output, (h_n, c_n))`` with plain tensors
(``return_quant_tensor=False``): ``output`` is ``(B, T, H)`` (batch first) fake-quantized
hidden states, ``h_n``/``c_n`` are ``(num_layers, B, H)``. Code written as
``out, _ = self.lstm(x)`` therefore keeps working when the ``nn.LSTM`` is swapped (and
``hx`` is re-laid out for Brevitas 0.13, which reads layer ``l``'s state at index ``2*l``
even for unidirectional stacks). Inter-layer
dropout of the ``nn.LSTM`` is not reproduced (Brevitas has none); inference is unaffected.
"""

from __future__ import annotations

import warnings

import numpy as np

import torch
from brevitas.nn import QuantLSTM
from torch import Tensor, nn

from qbench.errors import QbenchError
from qbench.quant.config import QuantConfig
from qbench.quant.quantizers import act_quant, bias_quant, weight_quant

__all__ = ["QbenchQuantLSTM", "UnsupportedLSTM", "clipped_fraction", "fit_input_scale", "lstm_clipping", "quant_lstm_from"]

_GATES = ("input", "forget", "cell", "output")  # nn.LSTM's row-block order: i, f, g, o
MAX_LAYERS = 2
INPUT_RANGE_QUANTILE = 0.999  # |x| quantile mapped to 1.0, the hidden state's range


class UnsupportedLSTM(QbenchError):
    """An ``nn.LSTM`` option the quantized LSTM does not reproduce (bidirectional, proj_size)."""


class QbenchQuantLSTM(QuantLSTM):
    """``brevitas.nn.QuantLSTM`` with ``nn.LSTM``'s call signature ``(x, (h0, c0))``, and a
    state-dict load that keeps the forward on the loaded quantizers.

    Brevitas 0.13 builds each layer's ``_fast_cell`` lazily on the first forward, capturing the
    quantizer proxies of that moment, and uses it for every later forward (train and eval).
    ``load_state_dict`` re-initialises those proxies, so without help the forward would go on
    quantizing with the stale ones: a best checkpoint reloaded after training, or a cached model,
    would not compute what was loaded. After every load the fast cells are dropped (rebuilt on
    the next forward from the live proxies), and their keys are not demanded from the state dict.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("input_scale", torch.ones(()))
        self.register_load_state_dict_post_hook(_after_load)

    fast_path = True
    """Run :mod:`qbench.quant.fast_lstm` when it reproduces Brevitas' forward; False forces Brevitas'."""

    fast_path_declined: str | None = None
    """Why the last forward ran Brevitas' own forward instead of the fast path (None: it did not)."""

    def forward(  # type: ignore[override]
        self, inp: Tensor, hx: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``inp`` (B, T, F) float -> ``(output (B, T, H), (h_n, c_n) each (L, B, H))``."""
        from qbench.quant.fast_lstm import fast_forward

        inp = inp / self.input_scale  # W_ih carries the factor (see fit_input_scale)
        result = fast_forward(self, inp, hx)
        if not isinstance(result, str):
            self.fast_path_declined = None
            return result
        self.fast_path_declined = result
        if hx is None:
            return super().forward(inp)
        # Brevitas 0.13 reads layer l's initial state at index 2*l even when unidirectional
        return super().forward(inp, *(_brevitas_state_layout(s) for s in hx))


def _after_load(module: "QbenchQuantLSTM", incompatible_keys) -> None:
    for layer in module.layers:
        for direction in layer:
            direction._fast_cell = None
    # a fast cell aliases its layer's quantizers, whose own keys were loaded: nothing is missing
    incompatible_keys.missing_keys[:] = [k for k in incompatible_keys.missing_keys if "._fast_cell." not in k]


@torch.no_grad()
def fit_input_scale(qlstm: QbenchQuantLSTM, x: Tensor) -> float:
    """Set ``input_scale`` to the 99.9th percentile of ``|x|`` and rescale ``W_ih`` to match.

    ``x``: (B, T, F) float inputs as the module receives them (before its own division). The
    float function is unchanged (``(x / k) W_ih' k = x W_ih'``); refitting undoes the old factor
    first. Returns the new scale.
    """
    flat = x.detach().abs().flatten().float()
    k = float(torch.quantile(flat[torch.randperm(len(flat), generator=torch.Generator().manual_seed(0))[:1 << 20]],
                             INPUT_RANGE_QUANTILE)) if len(flat) else 1.0
    k = max(k, 1e-6)
    ratio = k / float(qlstm.input_scale)
    first = qlstm.layers[0][0]  # only layer 0 sees the module's input
    for gate in _GATES:
        getattr(first, f"{gate}_gate_params").input_weight.weight.mul_(ratio)
    qlstm.input_scale.fill_(k)
    return k


@torch.no_grad()
def clipped_fraction(values: Tensor, scale: float, bits: int, *, signed: bool = True, narrow: bool = False) -> float:
    """Fraction of ``values`` outside what a ``bits``-bit quantizer at ``scale`` represents."""
    from kernels.pack import code_range

    lo, hi = code_range(bits, signed=signed, narrow=narrow)
    codes = values.detach().float() / scale
    return float(((codes < lo - 0.5) | (codes > hi + 0.5)).float().mean()) if values.numel() else float("nan")


def _brevitas_state_layout(state: Tensor) -> Tensor:
    """(L, B, H) nn.LSTM state -> (2L, B, H) with layer l at index 2*l, as Brevitas indexes it."""
    spread = state.new_zeros((2 * state.shape[0], *state.shape[1:]))
    spread[0::2] = state
    return spread


def _check_supported(lstm: nn.LSTM) -> None:
    if lstm.bidirectional:
        raise UnsupportedLSTM("quant_lstm_from: bidirectional LSTMs are not supported (unidirectional only)")
    if lstm.proj_size:
        raise UnsupportedLSTM(f"quant_lstm_from: proj_size={lstm.proj_size} is not supported (use 0)")
    if not 1 <= lstm.num_layers <= MAX_LAYERS:
        raise UnsupportedLSTM(f"quant_lstm_from: num_layers must be 1..{MAX_LAYERS}, got {lstm.num_layers}")


@torch.no_grad()
def _copy_weights(lstm: nn.LSTM, qlstm: QuantLSTM) -> None:
    hs = lstm.hidden_size
    for layer_index, layer in enumerate(qlstm.layers):
        direction = layer[0]
        w_ih = getattr(lstm, f"weight_ih_l{layer_index}")
        w_hh = getattr(lstm, f"weight_hh_l{layer_index}")
        bias = None
        if lstm.bias:
            bias = getattr(lstm, f"bias_ih_l{layer_index}") + getattr(lstm, f"bias_hh_l{layer_index}")
        for k, gate in enumerate(_GATES):
            params = getattr(direction, f"{gate}_gate_params")
            rows = slice(k * hs, (k + 1) * hs)
            params.input_weight.weight.copy_(w_ih[rows])
            params.hidden_weight.weight.copy_(w_hh[rows])
            if bias is not None:
                params.bias.copy_(bias[rows])


def quant_lstm_from(
    lstm: nn.LSTM, qcfg: QuantConfig, *, collect_stats_steps: int | None = None
) -> QbenchQuantLSTM:
    """A quantized twin of ``lstm`` with its fp32 weights copied (biases ih + hh summed).

    ``collect_stats_steps`` is passed to every activation quantizer (see
    :func:`qbench.quant.quantizers.act_quant`). The result is in ``lstm``'s training mode.
    """
    _check_supported(lstm)
    act = dict(collect_stats_steps=collect_stats_steps)
    with warnings.catch_warnings():
        # Brevitas warns that dtype/device kwargs reach quantizers that ignore them
        warnings.filterwarnings("ignore", message="Keyword arguments are being passed")
        qlstm = _build(lstm, qcfg, act)
    _copy_weights(lstm, qlstm)
    qlstm.train(lstm.training)
    return qlstm


def _build(lstm: nn.LSTM, qcfg: QuantConfig, act: dict) -> QbenchQuantLSTM:
    return QbenchQuantLSTM(
        input_size=lstm.input_size,
        hidden_size=lstm.hidden_size,
        num_layers=lstm.num_layers,
        bias=lstm.bias,
        batch_first=lstm.batch_first,
        weight_quant=weight_quant(qcfg),
        bias_quant=bias_quant(qcfg) if lstm.bias else None,
        io_quant=act_quant(qcfg, signed=True, **act),
        gate_acc_quant=act_quant(qcfg, signed=True, bits=qcfg.effective_gate_bits, **act),
        sigmoid_quant=act_quant(qcfg, signed=False, **act),
        tanh_quant=act_quant(qcfg, signed=True, **act),
        cell_state_quant=act_quant(qcfg, signed=True, bits=qcfg.cell_bits, **act),
        return_quant_tensor=False,
        device=lstm.weight_ih_l0.device,
        dtype=lstm.weight_ih_l0.dtype,
    )


@torch.no_grad()
def lstm_clipping(qmodel: nn.Module, fp32_model: nn.Module, x, *, batch_size: int = 64) -> dict[str, float]:
    """How much of the float LSTM's input and hidden state the quantized LSTM's io quantizer clips.

    ``x``: (N, T, F) calibration clips. The fp32 student's ``nn.LSTM`` inputs (divided by the
    quantized twin's ``input_scale``) and outputs are compared with the io quantizer's range.
    Empty when the model has no quantized LSTM. (Only the first LSTM of a model is reported.)
    """
    from kernels.extract import _act_spec

    qlstm = next((m for m in qmodel.modules() if isinstance(m, QbenchQuantLSTM)), None)
    lstm = next((m for m in fp32_model.modules() if isinstance(m, nn.LSTM)), None)
    if qlstm is None or lstm is None:
        return {}
    qlstm.eval()
    io = _act_spec(qlstm.layers[0][0].io_quant, "io")
    seen: dict[str, list[Tensor]] = {"x": [], "h": []}
    def keep(_module, args, out) -> None:  # returns None: the forward's output is left alone
        seen["x"].append(args[0])
        seen["h"].append(out[0])

    hook = lstm.register_forward_hook(keep)
    was_training = fp32_model.training
    fp32_model.eval()
    try:
        for i in range(0, len(x), batch_size):
            fp32_model(torch.as_tensor(x[i:i + batch_size], dtype=torch.float32))
    finally:
        hook.remove()
        fp32_model.train(was_training)
    scale = float(np.asarray(io.scale).reshape(-1)[0])
    k = float(qlstm.input_scale)
    kw = dict(signed=io.signed, narrow=io.narrow_range)
    return {"input_scale": k, "io_scale": scale, "io_bits": io.bit_width,
            "clipped_input": clipped_fraction(torch.cat(seen["x"]) / k, scale, io.bit_width, **kw),
            "clipped_hidden": clipped_fraction(torch.cat(seen["h"]), scale, io.bit_width, **kw)}
