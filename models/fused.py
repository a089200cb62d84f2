"""Training-time fused passes for the fp32 networks: dropout, and BatchNorm followed by ReLU.

Both compute what their PyTorch modules compute, in one compiled pass per direction (Numba, one
thread: the sweep trains one model per core) where PyTorch makes several passes that each read and
write a whole tensor. They serve training only: in eval mode, under export and for any input they
do not handle, the modules run PyTorch's own operations, so inference, export and the state dict
are untouched.

* **Dropout** (:func:`dropout`): PyTorch's CPU dropout draws a float per element (``rand_like`` or
  ``bernoulli_``), compares, scales and multiplies: four passes, and the draw alone took a sixth of
  the transformer teacher's training step. Here each element takes a 32-bit hash of its index
  keyed by two seeds (two rounds of MurmurHash3's finaliser), and is dropped when the hash falls
  below ``round(p * 2^32)``; kept ones are scaled by the inverse of the kept fraction, so the drop
  probability is ``p`` to within 2^-33 and the expectation is exact. The seeds come from PyTorch's
  generator, so ``torch.manual_seed`` fixes the masks.
* **BatchNorm + ReLU** (:func:`batch_norm_relu`): ``relu(batch_norm(x))`` in training mode, with
  ``BatchNorm2d``'s batch statistics (biased variance to normalise, unbiased into the running
  variance, ``momentum`` updates), for a channels-last map. Forward: one pass for the per-channel
  sums, one to write the output. Backward: one pass for the per-channel sums of the gradient, one
  to write the input's gradient. PyTorch's chain (statistics, normalise, ReLU; ReLU's backward,
  BatchNorm's two backward passes) reads and writes the map 13 times against 8 here (a DS-CNN
  step 1.11x [1.09, 1.15] on the AMD EPYC's memory-bound 2-core VM,
  ``tests/benchmarks/test_bench_training.py``; 1.01-1.08x while the backward passes compiled
  to masked loads: see :func:`_relu_grad`). Sums are
  accumulated in float64 (PyTorch's are float32), so results differ from PyTorch's by float32
  rounding; ``tests/test_models_fused.py`` bounds the difference.

Each kernel follows its reference (plain NumPy/PyTorch, ``_reference_*``), which the tests hold it
to before anything is timed.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba.core import types
from numba.extending import intrinsic, overload
from torch import Tensor, nn

__all__ = ["DROP_BITS", "batch_norm_relu", "dropout", "fused_batch_norm_relu_declined", "run_sequential"]

DROP_BITS = 32  # bits of hash per element: the drop probability's resolution is 2^-32
_U32 = np.uint32
_GOLDEN, _M1, _M2 = _U32(0x9E3779B9), _U32(0x85EBCA6B), _U32(0xC2B2AE35)  # MurmurHash3's fmix32 constants


# ---- dropout -------------------------------------------------------------------------------------

def drop_threshold(p: float) -> int:
    """The threshold below which an element's 32-bit hash drops it: ``round(p * 2^32)``."""
    return int(round(p * (1 << DROP_BITS)))


def _keep_scale(threshold: int) -> float:
    """The factor on kept elements: one over the kept fraction, so the output's expectation is x."""
    return float((1 << DROP_BITS) / ((1 << DROP_BITS) - threshold))


def _reference_keep(seeds: tuple[int, int], n: int, threshold: int) -> np.ndarray:
    """The keep mask of :func:`dropout` in NumPy: element i keeps when
    ``fmix32(fmix32(i * golden ^ seed0) ^ seed1) >= threshold`` (MurmurHash3's finaliser; tensors
    of more than 2^32 elements would repeat masks)."""
    def fmix32(h: np.ndarray) -> np.ndarray:
        h = h ^ (h >> _U32(16))
        h = h * _M1
        h = h ^ (h >> _U32(13))
        h = h * _M2
        return h ^ (h >> _U32(16))

    with np.errstate(over="ignore"):
        h = fmix32(np.arange(n, dtype=np.uint32) * _GOLDEN ^ _U32(seeds[0]))
        return fmix32(h ^ _U32(seeds[1])) >= threshold


def _mul32(a, b):
    """``a * b mod 2^32`` of two uint32 values."""
    return _U32((int(a) * int(b)) & 0xFFFFFFFF)


def _xor32(a, b):
    """``a ^ b`` of two uint32 values."""
    return _U32(int(a) ^ int(b))


def _xorshift32(a, s):
    """``a ^ (a >> s)`` of a uint32 value, ``0 <= s < 32``."""
    return _U32(int(a) ^ (int(a) >> int(s)))


# Compiled, the three are single 32-bit LLVM operations. Numba types uint32 arithmetic in 64 bits,
# and AVX2 has no 64-bit multiply: the hash's products were emulated lane by lane, the pass ran at
# 1.3-1.5 ns an element; in 32 bits (vpmulld) 0.64. Same bits either way.
@intrinsic
def _mul32_ir(typingctx, a, b):
    return types.uint32(types.uint32, types.uint32), lambda context, builder, sig, args: builder.mul(*args)


@intrinsic
def _xor32_ir(typingctx, a, b):
    return types.uint32(types.uint32, types.uint32), lambda context, builder, sig, args: builder.xor(*args)


@intrinsic
def _xorshift32_ir(typingctx, a, s):
    def codegen(context, builder, sig, args):
        a, s = args
        return builder.xor(a, builder.lshr(a, builder.trunc(s, a.type)))
    return types.uint32(types.uint32, types.int64), codegen


overload(_mul32, inline="always")(lambda a, b: lambda a, b: _mul32_ir(a, b))
overload(_xor32, inline="always")(lambda a, b: lambda a, b: _xor32_ir(a, b))
overload(_xorshift32, inline="always")(lambda a, s: lambda a, s: _xorshift32_ir(a, s))


@numba.njit(cache=True, nogil=True, inline="always")
def _fmix32(h):
    """MurmurHash3's 32-bit finaliser."""
    h = _xorshift32(h, 16)
    h = _mul32(h, _M1)
    h = _xorshift32(h, 13)
    h = _mul32(h, _M2)
    return _xorshift32(h, 16)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _dropout_forward(x, seed0, seed1, threshold, scale, out, keep):
    for i in range(x.size):
        h = _fmix32(_xor32(_mul32(_U32(i), _GOLDEN), seed0))
        h = _fmix32(_xor32(h, seed1))  # the second round keys the first's output on seed1
        k = np.uint8(h >= threshold)
        keep[i] = k
        out[i] = x[i] * (scale * np.float32(k))


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _masked_scale(grad, keep, scale, out):
    for i in range(grad.size):
        out[i] = grad[i] * (scale * np.float32(keep[i]))


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, threshold: int) -> Tensor:
        x = x.detach().contiguous()
        seeds = torch.randint(0, 2**32, (2,), dtype=torch.int64).tolist()  # torch.manual_seed fixes the masks
        scale = np.float32(_keep_scale(threshold))
        out = torch.empty_like(x)
        keep = np.empty(x.numel(), dtype=np.uint8)
        _dropout_forward(x.view(-1).numpy(), _U32(seeds[0]), _U32(seeds[1]), _U32(threshold), scale,
                         out.view(-1).numpy(), keep)
        ctx.keep, ctx.scale = keep, scale
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.detach().contiguous()
        dx = torch.empty_like(grad)
        _masked_scale(grad.view(-1).numpy(), ctx.keep, ctx.scale, dx.view(-1).numpy())
        return dx, None


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """``F.dropout(x, p, training)`` for float32 CPU tensors, one fused pass (see the module's doc);
    anything else, and probabilities 0 and 1, go to ``F.dropout``."""
    threshold = drop_threshold(p)
    if not training or not 0 < threshold < (1 << DROP_BITS) or x.dtype != torch.float32 or x.device.type != "cpu":
        return nn.functional.dropout(x, p, training)
    return _Dropout.apply(x, threshold)


# ---- BatchNorm + ReLU ----------------------------------------------------------------------------

def _reference_batch_norm_relu(x: Tensor, bn: nn.BatchNorm2d) -> Tensor:
    """What :func:`batch_norm_relu` computes: PyTorch's own modules, one after the other."""
    return torch.relu(bn(x))


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _channel_sums(x, s, ss):
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            v = np.float64(x[i, j])
            s[j] += v
            ss[j] += v * v


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _affine_relu(x, a, b, out):
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = max(x[i, j] * a[j] + b[j], np.float32(0.0))


@numba.njit(cache=True, nogil=True, inline="always")
def _relu_grad(xv, gv, a, b):
    """The gradient ``gv`` where ReLU passes ``xv * a + b``, else zero (NaN and inf included).

    Both backward passes call it with values already loaded: a load inside the condition compiles
    to AVX2's masked load (``vmaskmovps``), which made the passes twice as slow on the AMD EPYC;
    loaded first, the mask is a select. Same values either way."""
    return gv if xv * a + b > np.float32(0.0) else np.float32(0.0)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _grad_sums(x, grad, a, b, mean, sg, sgx):
    """Per channel: the sums of the ReLU-masked gradient g and of g * (x - mean), in float64."""
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            xv = x[i, j]
            g = _relu_grad(xv, grad[i, j], a[j], b[j])
            sg[j] += np.float64(g)
            sgx[j] += np.float64(g) * np.float64(xv - mean[j])


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _grad_input(x, grad, a, b, mean, ga, gb, gc, dx):
    """dx = ga * g + gb * (x - mean) + gc per channel, g the ReLU-masked gradient."""
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            xv = x[i, j]
            g = _relu_grad(xv, grad[i, j], a[j], b[j])
            dx[i, j] = ga[j] * g + gb[j] * (xv - mean[j]) + gc[j]


def _rows(t: Tensor) -> np.ndarray:
    """A channels-last (B, C, H, W) tensor's memory as a (B * H * W, C) array (no copy)."""
    return t.detach().permute(0, 2, 3, 1).reshape(-1, t.shape[1]).numpy()


class _BatchNormReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, eps: float):
        rows = _rows(x)
        n = rows.shape[0]
        s, ss = np.zeros(rows.shape[1]), np.zeros(rows.shape[1])
        _channel_sums(rows, s, ss)
        mean = s / n
        var = np.maximum(ss / n - mean * mean, 0.0)  # biased, as BatchNorm normalises
        invstd = 1.0 / np.sqrt(var + eps)
        a = weight.detach().numpy().astype(np.float64) * invstd
        b = bias.detach().numpy().astype(np.float64) - mean * a
        out = torch.empty_like(x, memory_format=torch.channels_last)
        a32, b32, mean32 = a.astype(np.float32), b.astype(np.float32), mean.astype(np.float32)
        _affine_relu(rows, a32, b32, _rows(out))
        ctx.save_for_backward(x)
        ctx.stats = (a32, b32, mean32, invstd, weight.detach().numpy().astype(np.float64))
        return out, torch.from_numpy(mean), torch.from_numpy(var)

    @staticmethod
    def backward(ctx, grad: Tensor, _grad_mean, _grad_var):
        (x,) = ctx.saved_tensors
        a32, b32, mean32, invstd, w = ctx.stats
        rows = _rows(x)
        grad_rows = _rows(grad.contiguous(memory_format=torch.channels_last))
        n = rows.shape[0]
        sg, sgx = np.zeros(rows.shape[1]), np.zeros(rows.shape[1])
        _grad_sums(rows, grad_rows, a32, b32, mean32, sg, sgx)
        ga = w * invstd  # dx = w invstd (g - mean(g) - xhat mean(g xhat)), xhat = (x - mean) invstd
        gb = -ga * invstd * invstd * sgx / n
        gc = -ga * sg / n
        dx = torch.empty_like(x, memory_format=torch.channels_last)
        _grad_input(rows, grad_rows, a32, b32, mean32, ga.astype(np.float32), gb.astype(np.float32),
                    gc.astype(np.float32), _rows(dx))
        d_weight = torch.from_numpy((sgx * invstd).astype(np.float32))
        d_bias = torch.from_numpy(sg.astype(np.float32))
        return dx, d_weight, d_bias, None


def fused_batch_norm_relu_declined(x: Tensor, bn: nn.Module) -> str | None:
    """Why :func:`batch_norm_relu` would run PyTorch's BatchNorm and ReLU on ``x``, or None."""
    if type(bn) is not nn.BatchNorm2d:
        return f"{type(bn).__name__} is not nn.BatchNorm2d"
    if not bn.training:
        return "eval mode"
    if not bn.affine or (bn.track_running_stats and bn.momentum is None):
        return "no affine parameters, or a cumulative running average"
    if bn._forward_hooks or bn._forward_pre_hooks:
        return "hooks on the BatchNorm"
    if type(x) is not Tensor or x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 4:
        return "input is not a 4-D float32 CPU tensor"
    if not x.is_contiguous(memory_format=torch.channels_last) or x.shape[0] * x.shape[2] * x.shape[3] < 2:
        return "input is not channels-last, or has one value a channel"
    return None


def batch_norm_relu(x: Tensor, bn: nn.BatchNorm2d) -> Tensor:
    """``relu(bn(x))``, fused while ``bn`` trains on a channels-last map (see the module's doc),
    with ``bn``'s running statistics updated as its own forward would; otherwise PyTorch's."""
    if fused_batch_norm_relu_declined(x, bn) is not None:
        return _reference_batch_norm_relu(x, bn)
    return _fused_batch_norm_relu(x, bn)


def _fused_batch_norm_relu(x: Tensor, bn: nn.BatchNorm2d) -> Tensor:
    """:func:`batch_norm_relu` where :func:`fused_batch_norm_relu_declined` said None."""
    out, mean, var = _BatchNormReLU.apply(x, bn.weight, bn.bias, bn.eps)
    if bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            n = x.numel() // x.shape[1]
            bn.running_mean.mul_(1 - bn.momentum).add_(mean.to(torch.float32), alpha=bn.momentum)
            bn.running_var.mul_(1 - bn.momentum).add_((var * (n / (n - 1))).to(torch.float32), alpha=bn.momentum)
    return out


def run_sequential(body: nn.Sequential, x: Tensor) -> Tensor:
    """``body(x)``, with each ``BatchNorm2d`` that an ``nn.ReLU`` follows run by :func:`batch_norm_relu`."""
    modules = list(body)
    i = 0
    while i < len(modules):
        module = modules[i]
        nxt = modules[i + 1] if i + 1 < len(modules) else None
        if type(nxt) is nn.ReLU and not (nxt._forward_hooks or nxt._forward_pre_hooks) \
                and fused_batch_norm_relu_declined(x, module) is None:
            x = _fused_batch_norm_relu(x, module)  # checked just above
            i += 2
        else:
            x = module(x)
            i += 1
    return x
