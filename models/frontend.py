"""Per-clip level normalisation of log-mel frames: the first module of every built-in model.

A clip's recording level is an additive offset of every log-mel value (gain multiplies power,
the log turns it into a sum), and the built-in keywords vary it by 27 dB per clip: 61 % of the
feature variance was that offset, which BatchNorm over mel bands does not remove. Subtracting
the clip's mean log-mel takes it out.

Two modes, the same arithmetic up to what a frame may see:

* ``"clip"``: subtract the mean over all frames and bands of the clip (batch scoring).
* ``"causal"``: subtract the running mean of the frames seen so far (``t' <= t``), which a
  streaming deployment can compute frame by frame (:class:`RunningLevel`).

The level is snapped to a grid of :data:`LEVEL_STEP` (1/256 of a log unit) before it is
subtracted. Runtimes sum a mean in different orders (ONNX Runtime's ``ReduceMean`` and torch's
``mean`` differed in the last bits on 52 of 64 clips), and those last bits flip an input code at
a rounding tie, which a quantized LSTM's recurrence then spreads (a w8a8 LSTM graph was 33 output
steps off Brevitas on one clip in 256). Snapped, the level is the same number everywhere, and
``x - level`` is one correctly rounded subtraction, identical on every runtime.

Shapes: ``(B, T, F)`` float log-mel in, the same out. No parameters: it is kept float by the
quantizer, and every export and the integer engine's float front end apply it as written here.
"""

from __future__ import annotations

from enum import Enum

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["LEVEL_STEP", "ClipNorm", "ClipNormMode", "RunningLevel", "snap_level"]

LEVEL_STEP = 2.0 ** -8  # a power of two: snapping multiplies and divides exactly


def snap_level(level: Tensor) -> Tensor:
    """The level rounded (half to even) to a multiple of :data:`LEVEL_STEP`."""
    return torch.round(level / LEVEL_STEP) * LEVEL_STEP


class ClipNormMode(str, Enum):
    """How a model removes a clip's recording level from its log-mel input."""

    CLIP = "clip"
    """Subtract the whole clip's mean (not causal: for scoring whole clips)."""
    CAUSAL = "causal"
    """Subtract the running mean of the frames seen so far (streaming)."""
    NONE = "none"
    """Leave the input as it is (the model sees raw log-mel levels)."""


class ClipNorm(nn.Module):
    """``(B, T, F) -> (B, T, F)``: log-mel minus the clip's (or the running) mean level."""

    def __init__(self, mode: ClipNormMode | str = ClipNormMode.CLIP) -> None:
        super().__init__()
        self.mode = ClipNormMode(mode)

    def forward(self, x: Tensor) -> Tensor:
        if self.mode is ClipNormMode.NONE:
            return x
        if self.mode is ClipNormMode.CLIP:
            return x - snap_level(x.mean(dim=(1, 2), keepdim=True))
        frame_level = x.mean(dim=2, keepdim=True)  # (B, T, 1)
        seen = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device).view(1, -1, 1)
        return x - snap_level(torch.cumsum(frame_level, dim=1) / seen)

    def extra_repr(self) -> str:
        return f"mode={self.mode.value}"


class RunningLevel:
    """Streaming state of ``ClipNorm("causal")``: feed chunks of frames, get them normalised.

    ``RunningLevel().normalise(chunk)`` for consecutive ``(B, t, F)`` chunks of a clip equals
    ``ClipNorm("causal")`` of the whole clip, to float32 rounding of the running sum.
    """

    def __init__(self) -> None:
        self.total: np.ndarray | None = None  # (B, 1) float64 sum of frame levels so far
        self.frames = 0

    def normalise(self, chunk: np.ndarray) -> np.ndarray:
        """``(B, t, F)`` float frames -> the same frames minus the running mean level."""
        chunk = np.asarray(chunk, dtype=np.float32)
        level = chunk.mean(axis=2, dtype=np.float64)  # (B, t)
        start = np.zeros((len(chunk), 1)) if self.total is None else self.total
        running = start + np.cumsum(level, axis=1)
        seen = np.arange(self.frames + 1, self.frames + chunk.shape[1] + 1)
        self.total, self.frames = running[:, -1:], self.frames + chunk.shape[1]
        level = np.round((running / seen) / LEVEL_STEP) * LEVEL_STEP  # half to even, as torch.round
        return (chunk - level[:, :, None].astype(np.float32)).astype(np.float32)


def as_image(x: Tensor) -> Tensor:
    """(B, T, F) -> (B, 1, T, F), strided channels-last: the CPU convolutions (oneDNN) then run every
    layer after it in NHWC, which trains a DS-CNN about twice as fast as NCHW on one core (a
    one-channel image is both layouts; only its strides tell PyTorch which to pick). Same values as
    ``x.unsqueeze(1)``, which is what an ONNX export records."""
    if torch.onnx.is_in_onnx_export():
        return x.unsqueeze(1)
    return x.unsqueeze(3).permute(0, 3, 1, 2)
