"""Students: small keyword-spotting / event-detection networks meant to be quantized.

Every student is built only from modules the quantizer knows how to swap for a Brevitas twin
(``nn.LSTM`` batch-first, ``nn.Conv1d/2d``, ``nn.Linear``, ``nn.ReLU``, ``nn.BatchNorm1d/2d``,
average pools, ``nn.Flatten``, ``nn.Dropout``); each ReLU is its own instance and there are no
functional activations. Each student splits its forward pass in two, so the training loop can
put a temporal-attention head on the middle::

    forward(x) == classify(temporal_features(x))
    x: (B, T, F) log-mel  ->  temporal_features: (B, T', D)  ->  classify: (B, C) logits
"""

from __future__ import annotations

from torch import Tensor, nn

from models.frontend import ClipNorm, ClipNormMode, as_image
from models.fused import run_sequential
from models.registry import register_student


class _MeanOverTime(nn.Module):
    """(B, T', D) -> (B, D) by average pooling over time (a pool module, so quantizers see it)."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.flatten = nn.Flatten()

    def forward(self, feats: Tensor) -> Tensor:
        return self.flatten(self.pool(feats.transpose(1, 2)))


@register_student("lstm")
class LSTMStudent(nn.Module):
    """LSTM over (pooled) log-mel frames, classified from the mean over time (default) or the last state.

    The mean suits words at random offsets in a clip: on the default keywords the last state
    stayed at chance for 8 epochs where the mean had started learning.

    ``frame_stride`` averages that many consecutive frames before the LSTM (an AvgPool1d over
    time): 10 ms frames make 3 s clips 300 steps long, and PyTorch's CPU LSTM backward is slow on
    long sequences (measured, hidden 64, batch 64: 0.5 s a step at 300 steps, 0.02 s at 75), so the
    default 4 (40 ms steps, common in keyword spotting) is what makes an epoch take seconds.
    ``input_norm`` puts a BatchNorm1d over mel bins in front of the LSTM: raw log-mel energies
    are offset by several units, which saturates the gates; at inference the BN is a per-mel
    affine map that folds into the LSTM's input weights. ``clip_norm`` first removes each clip's
    recording level (:mod:`models.frontend`).
    """

    def __init__(self, *, n_mels: int, n_frames: int, n_classes: int, hidden: int = 64, layers: int = 1,
                 pooling: str = "mean", frame_stride: int = 4, input_norm: bool = True, dropout: float = 0.1,
                 clip_norm: ClipNormMode | str = ClipNormMode.CLIP) -> None:
        super().__init__()
        if pooling not in ("last", "mean"):
            raise ValueError(f"pooling must be 'last' or 'mean', got {pooling!r}")
        if not 1 <= layers <= 2 or not 8 <= hidden <= 512:
            raise ValueError(f"need 1-2 layers and hidden in 8..512, got layers={layers}, hidden={hidden}")
        if not 1 <= frame_stride <= n_frames:
            raise ValueError(f"frame_stride must be in 1..n_frames={n_frames}, got {frame_stride}")
        self.clip_norm = ClipNorm(clip_norm)
        self.frame_pool = nn.AvgPool1d(frame_stride) if frame_stride > 1 else None
        self.input_norm = nn.BatchNorm1d(n_mels) if input_norm else None
        self.lstm = nn.LSTM(n_mels, hidden, num_layers=layers, batch_first=True)
        self.pool = _MeanOverTime() if pooling == "mean" else None
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden, n_classes)

    def temporal_features(self, x: Tensor) -> Tensor:
        """(B, T, F) -> (B, T // frame_stride, hidden) LSTM outputs (last layer)."""
        x = self.clip_norm(x).transpose(1, 2)  # (B, F, T): pool and normalise per mel bin
        if self.frame_pool is not None:
            x = self.frame_pool(x)
        if self.input_norm is not None:
            x = self.input_norm(x)
        out, _ = self.lstm(x.transpose(1, 2))
        return out

    def classify(self, feats: Tensor) -> Tensor:
        """(B, T', hidden) -> (B, C) logits."""
        pooled = feats[:, -1] if self.pool is None else self.pool(feats)
        return self.fc(self.dropout(pooled))

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.temporal_features(x))


def _conv_out(size: int, *, stride: int, kernel: int = 3, padding: int = 1) -> int:
    """Output length of a convolution along one axis."""
    return (size + 2 * padding - kernel) // stride + 1


def _conv_bn_relu(conv: nn.Conv2d) -> list[nn.Module]:
    return [conv, nn.BatchNorm2d(conv.out_channels), nn.ReLU()]


class _FreqPooledCNN(nn.Module):
    """Shared shape of the CNN students: conv body on (B, 1, T, F), mean over frequency, mean over time."""

    body: nn.Sequential

    def _init_head(self, channels: int, n_classes: int, dropout: float, clip_norm: ClipNormMode | str) -> None:
        self.clip_norm = ClipNorm(clip_norm)
        self.freq_pool = nn.AdaptiveAvgPool2d((None, 1))  # keep time, average frequency
        self.time_pool = _MeanOverTime()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, n_classes)

    def temporal_features(self, x: Tensor) -> Tensor:
        """(B, T, F) -> (B, T', C): the conv map before global pooling, averaged over frequency."""
        fmap = run_sequential(self.body, as_image(self.clip_norm(x)))  # (B, C, T', F'); BN+ReLU fused in training
        return self.freq_pool(fmap).squeeze(3).transpose(1, 2)

    def classify(self, feats: Tensor) -> Tensor:
        """(B, T', C) -> (B, n_classes) logits; mean over time then linear."""
        return self.fc(self.dropout(self.time_pool(feats)))

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.temporal_features(x))


@register_student("dscnn")
class DSCNNStudent(_FreqPooledCNN):
    """Depthwise-separable CNN after Hello Edge (Zhang et al. 2017), DS-CNN-S shaped.

    A (10, 4) stem conv strided ``stem_stride`` (time, mel), then ``blocks`` depthwise 3x3 +
    pointwise 1x1 pairs, the first depthwise conv strided ``ds_stride``. Hello Edge strides (2, 2)
    on 49 x 10 MFCC; our 3 s clips are ~300 x 40 log-mel, so the defaults stride 4x in time and
    mel in the stem and 2x more in time after it (38 x 10 maps: 80 ms steps), which keeps an
    epoch of ~2400 clips in seconds on two cores; the maps' size, not the MACs, sets the cost.
    """

    def __init__(self, *, n_mels: int, n_frames: int, n_classes: int, channels: int = 64, blocks: int = 4,
                 stem_stride: tuple[int, int] = (4, 4), ds_stride: tuple[int, int] = (2, 1),
                 dropout: float = 0.1, clip_norm: ClipNormMode | str = ClipNormMode.CLIP) -> None:
        super().__init__()
        layers = _conv_bn_relu(nn.Conv2d(1, channels, (10, 4), stride=tuple(stem_stride), padding=(4, 1), bias=False))
        for i in range(blocks):
            stride = tuple(ds_stride) if i == 0 else 1
            layers += _conv_bn_relu(nn.Conv2d(channels, channels, 3, stride=stride, padding=1, groups=channels,
                                              bias=False))
            layers += _conv_bn_relu(nn.Conv2d(channels, channels, 1, bias=False))
        self.body = nn.Sequential(*layers)
        self._init_head(channels, n_classes, dropout, clip_norm)


@register_student("crnn")
class CRNNStudent(nn.Module):
    """Two strided conv blocks, then an LSTM over time on the flattened (channels x mel) map.

    ``temporal_features`` are the LSTM outputs ``(B, T/4, hidden)``; the head is mean over time + linear.
    """

    def __init__(self, *, n_mels: int, n_frames: int, n_classes: int, channels: int = 16, hidden: int = 64,
                 dropout: float = 0.1, clip_norm: ClipNormMode | str = ClipNormMode.CLIP) -> None:
        super().__init__()
        self.clip_norm = ClipNorm(clip_norm)
        self.conv = nn.Sequential(
            *_conv_bn_relu(nn.Conv2d(1, channels, 3, stride=2, padding=1, bias=False)),
            *_conv_bn_relu(nn.Conv2d(channels, channels, 3, stride=(2, 4), padding=1, bias=False)),
        )
        freq = _conv_out(_conv_out(n_mels, stride=2), stride=4)
        self.lstm = nn.LSTM(channels * freq, hidden, batch_first=True)
        self.time_pool = _MeanOverTime()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden, n_classes)

    def temporal_features(self, x: Tensor) -> Tensor:
        """(B, T, F) -> (B, T', hidden) LSTM outputs over the conv map's time steps."""
        fmap = run_sequential(self.conv, as_image(self.clip_norm(x)))  # (B, C, T', F'); BN+ReLU fused in training
        b, c, t, f = fmap.shape
        out, _ = self.lstm(fmap.permute(0, 2, 1, 3).reshape(b, t, c * f))
        return out

    def classify(self, feats: Tensor) -> Tensor:
        """(B, T', hidden) -> (B, C) logits."""
        return self.fc(self.dropout(self.time_pool(feats)))

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.temporal_features(x))
