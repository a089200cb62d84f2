"""The integer engine behind an LSTM student: float front end, integer LSTM and head.

An ``models.LSTMStudent`` is ``[ClipNorm] -> [frame AvgPool1d] -> [BatchNorm1d] -> QuantLSTM ->
last/mean -> QuantLinear``. The front end stays float (a deployment runs it on the feature extractor's
output before requantizing); its output is quantized to the LSTM's io codes exactly as
Brevitas does (``round_half_even(x / scale)``, clamped, in float32), and from there on every
value is an integer code in :class:`kernels.IntLSTMEngine`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from kernels import IntLSTMEngine, IntLSTMModel, extract_lstm
from qbench.backends.engine import ENGINE_THREADS
from qbench.capabilities import lstm_student_parts



class StudentEngine:
    """``run(x (B, T, F) float log-mel) -> (B, C) float32 logits`` through the integer engine."""

    def __init__(self, qmodel: nn.Module) -> None:
        clip_norm, frame_pool, norm, qlstm, pooling, head = lstm_student_parts(qmodel)
        self.model: IntLSTMModel = extract_lstm(qlstm, head, pooling=pooling)
        self.engine = IntLSTMEngine(self.model)
        self._clip_norm = (clip_norm or nn.Identity()).eval()
        self._front = nn.Sequential(*[m for m in (frame_pool, norm) if m is not None]).eval()

    @torch.no_grad()
    def features(self, x: np.ndarray) -> np.ndarray:
        """(B, T, F) float frames -> (B, T', F) float32 LSTM input (the float front end)."""
        feats = self._clip_norm(torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))).transpose(1, 2)
        return self._front(feats).transpose(1, 2).contiguous().numpy()

    def codes(self, x: np.ndarray) -> np.ndarray:
        """(B, T, F) float frames -> (B, T', F) int16 io codes of the LSTM input."""
        return self.model.quantize_input(self.features(x))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.engine.run(self.codes(x)).logits


def engine_runner(qmodel: nn.Module, *, threads: int = ENGINE_THREADS) -> Callable[[np.ndarray], np.ndarray]:
    """A runner for :func:`qbench.measure.measure_latency`; pins torch's front end to ``threads``."""
    from qbench.measure import set_torch_threads

    set_torch_threads(threads)
    return StudentEngine(qmodel)
