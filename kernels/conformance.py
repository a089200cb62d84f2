"""Compare the integer engine with the Brevitas model it was extracted from.

The Brevitas side is the fake-quantized forward in eval mode: its hidden outputs are
``code * io_scale`` floats, so dividing by the io scale and rounding recovers the codes
exactly (the division of an integer-valued float32 by its own scale is exact up to the
rounding that ``round`` removes).
"""

from __future__ import annotations

import numpy as np
import torch
from brevitas.nn import QuantLinear, QuantLSTM

from kernels.engine import IntLSTMEngine, KernelBackend
from kernels.model import IntLSTMModel

__all__ = ["agreement", "brevitas_codes", "class_agreement", "step_agreement"]


@torch.no_grad()
def brevitas_codes(
    int_model: IntLSTMModel, quant_lstm: QuantLSTM, x: np.ndarray, head: QuantLinear | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The Brevitas model on (B, T, F) float ``x``: (B, T, H) io codes, (B, C) float32 logits."""
    quant_lstm.eval()
    out, _ = quant_lstm(torch.as_tensor(x, dtype=torch.float32))
    codes = torch.round(out / torch.as_tensor(int_model.io_quant.scale)).to(torch.int64).numpy()
    logits = None
    if head is not None:
        head.eval()
        logits = head(out.mean(dim=1) if int_model.pooling == "mean" else out[:, -1]).numpy()
    return codes, logits


@torch.no_grad()
def _brevitas_states(int_model: IntLSTMModel, quant_lstm: QuantLSTM, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every layer's per-step (h_t, c_t) codes of the Brevitas forward, each (L, T, B, H) int64.

    Read with forward hooks on the shared io and cell-state quantizers: Brevitas runs layer
    after layer, quantizing per step ``f*c``, ``i*g`` and ``c_t`` with the cell quantizer (so
    every third call is ``c_t``) and ``h_t`` with the io quantizer (whose 3-D calls are inputs).
    """
    first = quant_lstm.layers[0][0]
    calls: dict[str, list[torch.Tensor]] = {"io": [], "cell": []}
    hooks = [
        proxy.fused_activation_quant_proxy.register_forward_hook(
            lambda _m, _i, out, key=key: calls[key].append(out[0] / out[1]))
        for key, proxy in (("io", first.io_quant), ("cell", first.cell.cell_state_quant))
    ]
    try:
        quant_lstm(torch.as_tensor(x, dtype=torch.float32))
    finally:
        for hook in hooks:
            hook.remove()
    n_layers, (batch, steps, _) = len(int_model.layers), x.shape
    h = torch.stack([v for v in calls["io"] if v.dim() == 2]).reshape(n_layers, steps, batch, -1)
    c = torch.stack(calls["cell"][2::3]).reshape(n_layers, steps, batch, -1)
    return torch.round(h).to(torch.int64).numpy(), torch.round(c).to(torch.int64).numpy()


def step_agreement(int_model: IntLSTMModel, quant_lstm: QuantLSTM, x: np.ndarray,
                   *, backend: KernelBackend | str = KernelBackend.NUMBA,
                   states: tuple[np.ndarray, np.ndarray] | None = None) -> float:
    """Fraction of identical hidden codes when each engine step starts from Brevitas' own state.

    Teacher forcing isolates the arithmetic of one step from the recurrence, which carries
    any single flipped code into the following steps of a free-running comparison.
    ``states`` reuses a :func:`_brevitas_states` result for the same ``x``.
    """
    quant_lstm.eval()
    h_ref, c_ref = _brevitas_states(int_model, quant_lstm, x) if states is None else states
    engine = IntLSTMEngine(int_model, backend=backend)
    layer_input, same, total = int_model.quantize_input(x), 0, 0
    for index in range(len(int_model.layers)):
        hidden = h_ref.shape[-1]
        for t in range(x.shape[1]):
            h0 = h_ref[index, t - 1].copy() if t else np.zeros((x.shape[0], hidden), np.int64)
            c0 = c_ref[index, t - 1].copy() if t else np.zeros((x.shape[0], hidden), np.int64)
            out = engine.layer_step(index, layer_input[:, t:t + 1], h0, c0)
            same += int(np.sum(out[:, 0] == h_ref[index, t]))
            total += out[:, 0].size
        layer_input = h_ref[index].transpose(1, 0, 2)  # (B, T, H): the next layer's Brevitas input
    return same / total


def agreement(
    int_model: IntLSTMModel,
    quant_lstm: QuantLSTM,
    x: np.ndarray,
    *,
    head: QuantLinear | None = None,
    backend: KernelBackend | str = KernelBackend.NUMBA,
) -> dict[str, float]:
    """How closely the engine reproduces the Brevitas model on (B, T, F) float features ``x``.

    Returns ``hidden_code_agreement`` (fraction of identical top-layer hidden codes, free
    running), ``step_code_agreement`` (every layer, each step started from Brevitas' own
    state: see :func:`step_agreement`), ``hidden_max_code_diff`` and, with a head, the
    predicted-class figures of :func:`class_agreement` and ``logit_max_abs_diff``.
    """
    quant_lstm.eval()
    h_ref, c_ref = _brevitas_states(int_model, quant_lstm, x)
    out = IntLSTMEngine(int_model, backend=backend).run(int_model.quantize_input(x))
    ref_hidden = h_ref[-1].transpose(1, 0, 2)  # (B, T, H) top layer
    diff = np.abs(out.hidden.astype(np.int64) - ref_hidden)
    result = {
        "n_sequences": float(x.shape[0]),
        "hidden_code_agreement": float(np.mean(diff == 0)),
        "hidden_max_code_diff": float(diff.max()),
        "step_code_agreement": step_agreement(int_model, quant_lstm, x, backend=backend, states=(h_ref, c_ref)),
    }
    ref_logits = None
    if head is not None:
        head.eval()
        with torch.no_grad():  # Brevitas' hidden states are exactly code * io scale in float32
            seq = torch.from_numpy(ref_hidden.astype(np.float32)) * torch.as_tensor(int_model.io_quant.scale)
            ref_logits = head(seq.mean(dim=1) if int_model.pooling == "mean" else seq[:, -1]).numpy()
    if ref_logits is not None and out.logits is not None:
        result.update(class_agreement(out.logits, ref_logits))
        result["logit_max_abs_diff"] = float(np.abs(out.logits - ref_logits).max())
    return result


def class_agreement(engine_logits: np.ndarray, ref_logits: np.ndarray) -> dict[str, float]:
    """Predicted-class agreement of (N, C) engine logits with the reference's.

    ``class_agreement``: identical argmax. ``class_ties``: clips whose top engine logits are
    exactly equal (equal integer accumulators: the classes tie in the integer arithmetic, and
    the engine's argmax takes the first). Brevitas' float32 head breaks such a tie by rounding,
    so ``class_agreement_up_to_ties`` also counts a clip whose reference class is one of the
    engine's exactly tied top classes.
    """
    top = engine_logits.max(axis=1)
    ref_class = ref_logits.argmax(axis=1)
    engine_value_of_ref = engine_logits[np.arange(len(ref_class)), ref_class]
    return {
        "class_agreement": float(np.mean(engine_logits.argmax(axis=1) == ref_class)),
        "class_ties": float(np.sum((engine_logits == top[:, None]).sum(axis=1) > 1)),
        "class_agreement_up_to_ties": float(np.mean(engine_value_of_ref == top)),
    }
