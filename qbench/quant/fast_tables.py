"""Activation tables of the fast quantized LSTM (:mod:`qbench.quant.fast_lstm`).

sigmoid and tanh are not correctly rounded, and ATen's vector and scalar paths differ in the last
ulp for some inputs; Brevitas applies them to whole (B, H) blocks, the vector path for most
elements and the scalar path for a block's tail. Their inputs inside the LSTM are quantized codes
(a gate accumulator, the cell state: at most 16 bits), so each is evaluated by ATen over every
code of its input quantizer once per forward, and :mod:`qbench.quant.fast_cell` looks the
activation up by code and quantizes it as Brevitas quantizes ATen's. A table is exact when both
ATen paths give every code the same quantized output, which is checked for every entry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from qbench.quant.fast_cell import ACC, ACT, CELL, ROUNDING_MODES, TANH

__all__ = ["Bound", "Quant", "Tables", "detached_scale", "tables"]

_GATE_NAMES = ("input", "forget", "cell", "output")

Bound = float | Tensor  # a code bound: one number, or (4, 1, 1) for a stack of four gates


@dataclass(frozen=True)
class Quant:
    """An activation quantizer read for one forward: ``clamp(round(x / scale), lo, hi) * scale``.

    ``scale`` keeps its autograd graph to the learned parameter; it is a scalar, or ``(4, 1, 1)``
    for the four gates' quantizers stacked in gate order.
    """

    scale: Tensor
    lo: Bound
    hi: Bound
    rounding: str


def detached_scale(q: Quant) -> Tensor:
    """The scale detached, 0-d when scalar (ATen's cheapest operand, the same float32 value)."""
    return q.scale.detach().reshape(()) if q.scale.numel() == 1 else q.scale.detach()


@dataclass(frozen=True)
class Tables:
    """One layer's quantizers as :mod:`qbench.quant.fast_cell` reads them, and its activation tables:
    ``act_pre[k, code - act_lo]`` the activation of gate ``k`` at an accumulator code,
    ``tanh_pre[code - tanh_lo]`` tanh at a cell-state code."""

    scale: np.ndarray  # (QUANTIZERS,) float32, numbered as in fast_cell
    lo: np.ndarray  # (QUANTIZERS,) float32 code bounds
    hi: np.ndarray
    mode: np.ndarray  # (QUANTIZERS,) int64 rounding mode
    act_pre: np.ndarray  # (4, N) float32
    act_lo: int
    tanh_pre: np.ndarray  # (M,) float32
    tanh_lo: int


def _per_gate(bound: Bound) -> list[float]:
    return [bound] * 4 if isinstance(bound, float) else bound.reshape(-1).tolist()


def tables(acc: Quant, act: Quant, cell: Quant, tanh: Quant, io: Quant) -> Tables | str:
    """A layer's tables from its quantizers (the four gates' accumulators and activations stacked),
    or why they would not reproduce Brevitas (a code that depends on ATen's path).

    Brevitas applies sigmoid and tanh to whole (B, H) blocks: ATen's vector path for most
    elements, its scalar path for a block's tail, and the two differ in the last ulp for some
    inputs. A table is exact when both paths give every input the same *code* after the
    activation's quantizer, which is checked here for every entry (a last-ulp difference moves a
    code only when it straddles a rounding boundary: rare, and then the forward runs Brevitas').
    """
    gates = [acc, act, cell, tanh, io]
    scale = np.concatenate([detached_scale(q).reshape(-1).numpy() for q in gates]).astype(np.float32)
    lo = np.array([*_per_gate(acc.lo), *_per_gate(act.lo), cell.lo, tanh.lo, io.lo], dtype=np.float32)
    hi = np.array([*_per_gate(acc.hi), *_per_gate(act.hi), cell.hi, tanh.hi, io.hi], dtype=np.float32)
    mode = np.array([ROUNDING_MODES[q.rounding] for q in gates for _ in range(q.scale.numel())])
    act_lo, act_hi = int(lo[ACC:ACC + 4].min()), int(hi[ACC:ACC + 4].max())
    codes = torch.arange(act_lo, act_hi + 1, dtype=torch.float32)
    act_tables = []
    for k, fn in enumerate((torch.sigmoid, torch.sigmoid, torch.tanh, torch.sigmoid)):
        table = _table(fn, codes * torch.from_numpy(scale[ACC + k:ACC + k + 1]).reshape(()), ACT + k,
                       scale, lo, hi, act.rounding)
        if table is None:
            return f"the {_GATE_NAMES[k]} gate's activation code depends on ATen's vector or scalar path"
        act_tables.append(table)
    tanh_lo = int(lo[CELL])
    codes = torch.arange(tanh_lo, int(hi[CELL]) + 1, dtype=torch.float32)
    tanh_table = _table(torch.tanh, codes * torch.from_numpy(scale[CELL:CELL + 1]).reshape(()), TANH,
                        scale, lo, hi, tanh.rounding)
    if tanh_table is None:
        return "the cell state's tanh code depends on ATen's vector or scalar path"
    return Tables(scale, lo, hi, mode, np.stack(act_tables), act_lo, tanh_table, tanh_lo)


_VECTOR_BLOCK = 64  # a multiple of every ATen float vector loop (2 x 16 lanes on AVX-512)


def _table(fn, inputs: Tensor, q: int, scale: np.ndarray, lo: np.ndarray, hi: np.ndarray, rounding: str
           ) -> np.ndarray | None:
    """``fn`` of every input through ATen's vector path when its scalar path gives every input the
    same code under quantizer ``q``, else None."""
    n = len(inputs)
    padded = inputs.new_zeros(-(-n // _VECTOR_BLOCK) * _VECTOR_BLOCK)
    padded[:n] = inputs
    vector = fn(padded)[:n]  # contiguous whole vectors: the vector path
    strided = inputs.new_zeros(2 * n)
    strided[::2] = inputs
    scalar = fn(strided[::2])  # a strided operand takes the scalar path
    s = torch.from_numpy(scale[q:q + 1]).reshape(())

    def code(pre: Tensor) -> Tensor:
        return getattr(pre / s, rounding)().clamp_(float(lo[q]), float(hi[q]))

    return vector.numpy() if torch.equal(code(vector), code(scalar)) else None
