"""Run an IntLSTMModel: whole sequences in a batch, or streaming with carried state.

>>> engine = IntLSTMEngine(extract_lstm(qlstm, head))
>>> out = engine.run(engine.model.quantize_input(x))   # x: (B, T, F) float features
>>> out.hidden                                         # (B, T, H) int16 io codes, top layer
>>> out.logits                                         # (B, C) float32, head on the pooling
>>> stream = engine.stream(batch=1)
>>> for chunk in chunks: stream.push(chunk)            # (1, n, F) codes, any n >= 1
"""

from __future__ import annotations

import dataclasses
from enum import Enum

import numpy as np

from kernels.linear import HeadArrays, head_arrays, linear_numba, linear_ref
from kernels.lstm import layer_arrays, run_layer_numba
from kernels.lstm_ref import lstm_layer_ref
from kernels.model import IntLSTMModel

__all__ = ["EngineOutput", "IntLSTMEngine", "KernelBackend", "LSTMStream"]


class KernelBackend(str, Enum):
    """Which implementation of the same integer arithmetic runs."""

    NUMBA = "numba"
    """The compiled kernel (the fast one)."""
    NUMPY = "numpy"
    """The plain NumPy reference."""


@dataclasses.dataclass(frozen=True)
class EngineOutput:
    hidden: np.ndarray  # (B, T, H) int16 io codes of the top layer
    logits: np.ndarray | None  # (B, C) float32 head logits on the pooled hidden states, or None


class IntLSTMEngine:
    """The integer LSTM (+ head) of ``model``; weights flattened for the kernels once, here."""

    def __init__(self, model: IntLSTMModel, *, backend: KernelBackend | str = KernelBackend.NUMBA) -> None:
        self.model = model
        self.backend = KernelBackend(backend)
        self._layers = [layer_arrays(l, model.io_quant, model.cell_quant) for l in model.layers]
        self._heads: dict[int, HeadArrays] = {}  # by number of pooled steps

    def initial_state(self, batch: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Zero (h, c) codes per layer, each (B, H) int64 (Brevitas starts from zeros)."""
        return [(np.zeros((batch, l.hidden_size), np.int64), np.zeros((batch, l.hidden_size), np.int64))
                for l in self.model.layers]

    def layer_step(self, index: int, x: np.ndarray, h: np.ndarray, c: np.ndarray) -> np.ndarray:
        """Layer ``index`` alone: (B, n, F_l) io codes -> (B, n, H) int16 codes; ``h``, ``c`` (B, H) int64 advanced."""
        x = np.ascontiguousarray(x, dtype=np.int16)
        if self.backend is KernelBackend.NUMBA:
            out = run_layer_numba(self._layers[index], x, h, c)
        else:
            out = lstm_layer_ref(self._layers[index], x, h, c)
        return out.astype(np.int16, copy=False)  # io codes: at most 16 bits (the Numba kernel's already are)

    def step(self, x: np.ndarray, state: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """(B, n, F) io codes -> (B, n, H) int16 top-layer codes; ``state`` advanced in place."""
        layer_input = x
        for index, (h, c) in enumerate(state):
            layer_input = self.layer_step(index, layer_input, h, c)
        return layer_input

    def head_logits(self, features: np.ndarray, steps: int = 1) -> np.ndarray | None:
        """(B, H) features -> (B, C) float32 logits (None without a head).

        ``features`` are the last step's io codes (``pooling == "last"``, ``steps == 1``) or
        the int64 sum of the io codes over ``steps`` steps (``pooling == "mean"``).
        """
        if self.model.head is None:
            return None
        arrays = self._heads.get(steps)
        if arrays is None:
            arrays = self._heads[steps] = head_arrays(self.model.head, float(self.model.io_quant.scale), steps)
        features = np.ascontiguousarray(features, dtype=np.int64)
        if self.backend is KernelBackend.NUMBA:
            return linear_numba(*arrays, features)
        return linear_ref(arrays, features)

    def pooled_logits(self, hidden: np.ndarray) -> np.ndarray | None:
        """(B, T, H) top-layer io codes -> (B, C) logits of the head on the model's pooling."""
        if self.model.pooling == "mean":
            return self.head_logits(hidden.sum(axis=1, dtype=np.int64), hidden.shape[1])
        return self.head_logits(hidden[:, -1])

    def run(self, x: np.ndarray) -> EngineOutput:
        """Whole sequences: (B, T, F) io codes -> hidden codes and logits."""
        _check_codes(x, self.model.input_size)
        hidden = self.step(x, self.initial_state(x.shape[0]))
        return EngineOutput(hidden=hidden, logits=self.pooled_logits(hidden))

    def stream(self, batch: int = 1) -> LSTMStream:
        return LSTMStream(self, batch)


class LSTMStream:
    """Feeds frames a chunk at a time, carrying (h, c) across calls: same codes as one run."""

    def __init__(self, engine: IntLSTMEngine, batch: int) -> None:
        self.engine = engine
        self.state = engine.initial_state(batch)
        self.last_hidden: np.ndarray | None = None  # (B, H) top-layer codes of the newest frame
        self.hidden_sum = np.zeros((batch, engine.model.hidden_size), np.int64)  # for mean pooling
        self.frames = 0

    def push(self, x: np.ndarray) -> np.ndarray:
        """(B, n, F) io codes (n >= 1 frames) -> (B, n, H) int16 hidden codes of those frames."""
        _check_codes(x, self.engine.model.input_size)
        hidden = self.engine.step(x, self.state)
        self.last_hidden = hidden[:, -1]
        self.hidden_sum += hidden.sum(axis=1, dtype=np.int64)
        self.frames += hidden.shape[1]
        return hidden

    def logits(self) -> np.ndarray | None:
        """(B, C) logits of the head on every frame pushed so far (pooled as the model says)."""
        if self.last_hidden is None:
            raise ValueError("LSTMStream.logits: push at least one frame first")
        if self.engine.model.pooling == "mean":
            return self.engine.head_logits(self.hidden_sum, self.frames)
        return self.engine.head_logits(self.last_hidden)


def _check_codes(x: np.ndarray, n_features: int) -> None:
    if x.ndim != 3 or x.shape[2] != n_features or x.shape[1] < 1:
        raise ValueError(f"expected (B, T>=1, {n_features}) io codes, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"expected integer io codes (see IntLSTMModel.quantize_input), got {x.dtype}")
