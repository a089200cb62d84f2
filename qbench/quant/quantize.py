"""Swap a float student for its Brevitas twin, then calibrate it (PTQ); QAT is ordinary training.

:func:`quantize` deep-copies the student and replaces each supported leaf module by a
Brevitas layer built from :mod:`qbench.quant.quantizers`, through a registry keyed by module
type (``@register_quantizer(nn.Conv2d)``). The copy keeps the student's class, so its
``forward`` and ``temporal_features`` still run, now over quantized layers.

Decisions, and why:

* **BatchNorm is folded** into the conv/linear right before it in an ``nn.Sequential``
  (where registration order is execution order) before the swap. The deployed graph has no
  BN, QAT trains the weights that ship, and the packed size counts only what ships. A BN
  without such a predecessor is kept float and counted as float by ``packed_size``.
* **Activations between layers are quantized where a deployment would requantize**: a
  weight layer whose input comes straight from a ``QuantReLU`` in the same ``Sequential``
  (through max-pool/flatten/dropout only) takes the ReLU's unsigned ``QuantTensor``; every
  other weight layer (the first layer, the classifier head, a layer after a mean or an LSTM)
  quantizes its own input with a signed ``input_quant``, which is the "input QuantIdentity"
  without changing the student's forward. Only ReLUs feeding a weight layer return a
  ``QuantTensor``: anything else the student does sees plain tensors.
* **Global adaptive average pools** become :class:`GlobalMean` (``ReduceMean`` in ONNX): the
  TorchScript ONNX exporter refuses adaptive pools with a ``None`` output size.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from models.frontend import ClipNorm
from qbench.errors import QbenchError
from qbench.quant.config import QuantConfig

M = TypeVar("M", bound=nn.Module)
Handler = Callable[[nn.Module, QuantConfig, "SwapContext"], nn.Module]

_QUANTIZERS: dict[type[nn.Module], Handler] = {}

PASSTHROUGH: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.Flatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
    nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
)
"""Leaf modules kept as they are that a ``QuantTensor`` passes through unchanged."""

KEPT_FLOAT: tuple[type[nn.Module], ...] = (
    ClipNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
)
"""Leaf modules kept float: the per-clip level normalisation, unfolded BN (counted as float params),
average pools other than global ones (their output is requantized by the next weight layer's ``input_quant``)."""

FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)
WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)


class SwapContext:
    """What a handler needs to know about its neighbours in the enclosing ``Sequential``."""

    def __init__(self, quant_input: bool = True, return_quant_tensor: bool = False) -> None:
        self.quant_input = quant_input  # False: the input already arrives as a QuantTensor
        self.return_quant_tensor = return_quant_tensor  # True: a weight layer consumes it next


def register_quantizer(*types: type[nn.Module]) -> Callable[[Handler], Handler]:
    """Register ``handler(module, qcfg, ctx) -> quantized module`` for the given float types."""

    def deco(handler: Handler) -> Handler:
        for t in types:
            _QUANTIZERS[t] = handler
        return handler

    return deco


def quantize(model: M, qcfg: QuantConfig) -> M:
    """A quantized deep copy of ``model`` (same class and forward), fp32 weights copied, BN folded.

    Raises :class:`QbenchError` naming the first module with no quantized twin.
    """
    qmodel = copy.deepcopy(model).cpu().float()
    fold_batchnorm(qmodel)
    _check_supported(qmodel)
    swapped = _swap_children(qmodel, qcfg)
    unmatched = [o.layer for o in qcfg.precision.layers if not any(o.matches(n) for n in swapped)]
    if unmatched:
        raise QbenchError(f"precision {qcfg.precision}: {', '.join(unmatched)} names no quantized layer of "
                          f"{type(model).__name__}; its layers: {', '.join(swapped)}")
    qmodel.train(model.training)
    return qmodel


def _check_supported(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if type(module) in _QUANTIZERS or isinstance(module, PASSTHROUGH + KEPT_FLOAT):
            continue
        if any(True for _ in module.children()):
            if any(True for _ in module.parameters(recurse=False)):
                raise QbenchError(f"cannot quantize module {name!r} ({type(module).__name__}): it owns parameters "
                                  "outside its sub-modules")
            continue
        raise QbenchError(f"cannot quantize module {name or '<root>'!r} of type {type(module).__name__}: "
                          f"supported are {sorted(t.__name__ for t in _QUANTIZERS)} and pass-through "
                          f"{sorted(t.__name__ for t in PASSTHROUGH + KEPT_FLOAT)}")


def _swap_children(parent: nn.Module, qcfg: QuantConfig, prefix: str = "") -> list[str]:
    """Swap ``parent``'s supported children, each at the widths ``qcfg`` gives its qualified name;
    returns the qualified names swapped."""
    names = list(parent._modules)
    swapped: list[str] = []
    # contexts read the float neighbours, so take them all before the first swap
    contexts = [_context(parent, names, i) if isinstance(parent, nn.Sequential) else SwapContext()
                for i in range(len(names))]
    for name, ctx in zip(names, contexts):
        child = parent._modules[name]
        if child is None:
            continue
        handler = _QUANTIZERS.get(type(child))
        if handler is None:
            if not isinstance(child, PASSTHROUGH + KEPT_FLOAT):
                swapped += _swap_children(child, qcfg, f"{prefix}{name}.")
            continue
        parent._modules[name] = handler(child, qcfg.for_layer(prefix + name), ctx)
        swapped.append(prefix + name)
    return swapped


def _neighbour(parent: nn.Module, names: list[str], i: int, step: int) -> nn.Module | None:
    j = i + step
    while 0 <= j < len(names):
        m = parent._modules[names[j]]
        if not isinstance(m, PASSTHROUGH):
            return m
        j += step
    return None


def _context(parent: nn.Module, names: list[str], i: int) -> SwapContext:
    before, after = _neighbour(parent, names, i, -1), _neighbour(parent, names, i, +1)
    return SwapContext(
        quant_input=not isinstance(before, (nn.ReLU,)),
        return_quant_tensor=isinstance(after, WEIGHT_LAYERS),
    )


# --- BatchNorm folding ---------------------------------------------------------------------


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every BN that directly follows a conv/linear in an ``nn.Sequential`` into it, in place.

    The BN is replaced by ``nn.Identity``; returns how many were folded. Exact in eval mode.
    """
    folded = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for prev, name in zip(names, names[1:]):
            layer, bn = seq._modules[prev], seq._modules[name]
            if isinstance(bn, nn.modules.batchnorm._BatchNorm) and isinstance(layer, FOLDABLE):
                if layer.weight.shape[0] != bn.num_features:
                    continue
                _fold_into(layer, bn)
                seq._modules[name] = nn.Identity()
                folded += 1
    return folded


@torch.no_grad()
def _fold_into(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    mean = bn.running_mean if bn.running_mean is not None else torch.zeros(bn.num_features)
    var = bn.running_var if bn.running_var is not None else torch.ones(bn.num_features)
    gamma = bn.weight if bn.affine else torch.ones(bn.num_features)
    beta = bn.bias if bn.affine else torch.zeros(bn.num_features)
    k = gamma / torch.sqrt(var + bn.eps)  # (C_out,)
    layer.weight.mul_(k.view(-1, *([1] * (layer.weight.dim() - 1))))
    bias = layer.bias if layer.bias is not None else torch.zeros_like(mean)
    new_bias = (bias - mean) * k + beta
    if layer.bias is None:
        layer.bias = nn.Parameter(new_bias.clone())
    else:
        layer.bias.copy_(new_bias)


# --- handlers ------------------------------------------------------------------------------


def _layer_quant_kwargs(qcfg: QuantConfig, ctx: SwapContext) -> dict[str, Any]:
    from qbench.quant.quantizers import act_quant, bias_quant, weight_quant

    return {
        "weight_quant": weight_quant(qcfg),
        "bias_quant": bias_quant(qcfg),
        "input_quant": act_quant(qcfg, signed=True) if ctx.quant_input else None,
        "return_quant_tensor": False,
    }


@torch.no_grad()
def _copy_params(src: nn.Module, dst: nn.Module) -> nn.Module:
    dst.weight.copy_(src.weight)
    if src.bias is not None:
        dst.bias.copy_(src.bias)
    return dst


@register_quantizer(nn.Conv1d, nn.Conv2d)
def _quant_conv(conv: nn.Conv1d | nn.Conv2d, qcfg: QuantConfig, ctx: SwapContext) -> nn.Module:
    import brevitas.nn as qnn

    from qbench.quant.fast_conv import QbenchQuantConv2d

    cls = qnn.QuantConv1d if isinstance(conv, nn.Conv1d) else QbenchQuantConv2d
    q = cls(
        conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
        dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
        **_layer_quant_kwargs(qcfg, ctx),
    )
    return _copy_params(conv, q)


@register_quantizer(nn.Linear)
def _quant_linear(linear: nn.Linear, qcfg: QuantConfig, ctx: SwapContext) -> nn.Module:
    import brevitas.nn as qnn

    q = qnn.QuantLinear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                        **_layer_quant_kwargs(qcfg, ctx))
    return _copy_params(linear, q)


@register_quantizer(nn.ReLU)
def _quant_relu(relu: nn.ReLU, qcfg: QuantConfig, ctx: SwapContext) -> nn.Module:
    from qbench.quant.fast_act import QbenchQuantReLU
    from qbench.quant.quantizers import act_quant

    return QbenchQuantReLU(act_quant=act_quant(qcfg, signed=False), return_quant_tensor=ctx.return_quant_tensor)


class GlobalMean(nn.Module):
    """Mean over fixed dims, keeping them: an adaptive average pool to size 1 that ONNX
    (TorchScript) export accepts as ``ReduceMean`` (adaptive pools with ``None`` sizes are refused)."""

    def __init__(self, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.mean(getattr(x, "value", x), dim=self.dims, keepdim=True)

    def extra_repr(self) -> str:
        return f"dims={self.dims}"


def global_mean_dims(pool: nn.Module) -> tuple[int, ...] | None:
    """The dims an adaptive average pool to sizes 1/None averages away; None for a real resampling pool."""
    sizes = pool.output_size if isinstance(pool.output_size, tuple) else (pool.output_size,) * (
        1 if isinstance(pool, nn.AdaptiveAvgPool1d) else 2)
    if any(s not in (1, None) for s in sizes):
        return None
    n = len(sizes)
    return tuple(-n + i for i, s in enumerate(sizes) if s == 1)


@register_quantizer(nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
def _global_mean(pool: nn.Module, qcfg: QuantConfig, ctx: SwapContext) -> nn.Module:
    dims = global_mean_dims(pool)
    # a real resampling pool is kept float, its output requantized by the next layer
    return pool if dims is None else GlobalMean(dims)


@register_quantizer(nn.LSTM)
def _quant_lstm(lstm: nn.LSTM, qcfg: QuantConfig, ctx: SwapContext) -> nn.Module:
    from qbench.quant.lstm import quant_lstm_from

    return quant_lstm_from(lstm, qcfg)


# --- PTQ calibration -----------------------------------------------------------------------


def _batches_of(data: Any, batch_size: int) -> Iterable[torch.Tensor]:
    """Yield ``(B, T, F)`` float tensors from a dataset, a split, an array or an iterable."""
    if hasattr(data, "train") and hasattr(data.train, "x"):
        data = data.train
    if hasattr(data, "x"):
        data = data.x
    if isinstance(data, (np.ndarray, torch.Tensor)):
        arr = torch.as_tensor(np.asarray(data, dtype=np.float32)) if isinstance(data, np.ndarray) else data.float()
        for i in range(0, len(arr), batch_size):
            yield arr[i:i + batch_size]
        return
    for b in data:
        b = b[0] if isinstance(b, (tuple, list)) else b
        yield torch.as_tensor(np.asarray(b, dtype=np.float32)) if isinstance(b, np.ndarray) else b.float()


@torch.no_grad()
def calibrate(qmodel: nn.Module, data: Any, *, batches: int | None = 16, batch_size: int = 64) -> int:
    """Post-training quantization: set activation scales from statistics over ``batches`` batches.

    ``data`` is a ``FeatureDataset`` (its train split), a ``Split``, a ``(N, T, F)`` array or an
    iterable of ``(B, T, F)`` batches. Weight scales are max-abs statistics and need no data.
    Each quantized LSTM's ``input_scale`` is fitted on the first batch before its statistics are
    collected (:func:`qbench.quant.lstm.fit_input_scale`: its input and hidden state share one
    quantizer). Leaves the model in eval mode; returns the number of batches seen.
    """
    from brevitas.graph.calibrate import calibration_mode

    qmodel.eval()
    seen = 0
    _fit_lstm_inputs_on_first_call(qmodel)
    with calibration_mode(qmodel):
        for batch in _batches_of(data, batch_size):
            if batches is not None and seen >= batches:
                break
            qmodel(batch)
            seen += 1
    if seen == 0:
        raise QbenchError("calibration data is empty")
    qmodel.eval()
    return seen


def _fit_lstm_inputs_on_first_call(qmodel: nn.Module) -> None:
    """Hook each quantized LSTM to fit its ``input_scale`` on the first input it sees."""
    from qbench.quant.lstm import QbenchQuantLSTM

    for module in qmodel.modules():
        if isinstance(module, QbenchQuantLSTM):
            _FitOnce(module)


class _FitOnce:
    """A forward pre-hook that fits the LSTM's input scale on its first call, then removes itself."""

    def __init__(self, module: nn.Module) -> None:
        self.handle = module.register_forward_pre_hook(self)

    def __call__(self, module: nn.Module, args: tuple) -> None:
        from qbench.quant.lstm import fit_input_scale

        fit_input_scale(module, args[0])
        self.handle.remove()
