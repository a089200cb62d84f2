"""Teachers: larger fp32 networks whose outputs (and attention) the students learn from.

``transformer``: frames grouped into time patches, a class token, pre-norm encoder layers whose
attention maps are written out explicitly and kept after each forward in ``attentions``
(one ``(B, H, N, N)`` tensor per layer, class token at index 0) for attention rollout.
``resnet``: a residual CNN on the log-mel image, as the teacher of Shi et al. (2019), pooled
by max over time (it has no attention maps, so it serves output KD only).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.frontend import ClipNorm, ClipNormMode, as_image
from models.fused import dropout
from models.registry import register_teacher


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose training pass is one fused kernel (:func:`models.fused.dropout`: a hashed
    32-bit draw per element instead of PyTorch's float draw, compare, scale and multiply). PyTorch's
    CPU draw alone took a sixth of the transformer teacher's training step."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)


class SelfAttention(nn.Module):
    """Multi-head self-attention that keeps its softmax weights (``last_weights``, (B, H, N, N))."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = Dropout(dropout)
        self.last_weights: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // self.heads), dim=-1)
        self.last_weights = weights.detach()  # pre-dropout: what the model attends to
        out = (self.drop(weights) @ v).transpose(1, 2).reshape(b, n, d)
        return self.proj(out)


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer: x + attn(LN x), then x + MLP(LN x)."""

    def __init__(self, dim: int, heads: int, mlp: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), Dropout(dropout), nn.Linear(mlp, dim))
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.mlp(self.norm2(x)))


@register_teacher("transformer")
class TransformerTeacher(nn.Module):
    """Audio transformer over time patches of ``patch`` frames x all mel bins.

    Tokens: ``[CLS] + n_frames // patch`` patches; token ``i >= 1`` covers frames
    ``[(i-1)*patch, i*patch)``, so the class row of the attention is a weight over time.
    ``patch=8`` (80 ms tokens) trained as well as 4 on the default keywords in half the time.
    """

    def __init__(self, *, n_mels: int, n_frames: int, n_classes: int, dim: int = 64, depth: int = 3,
                 heads: int = 4, mlp: int = 128, patch: int = 8, dropout: float = 0.1,
                 clip_norm: ClipNormMode | str = ClipNormMode.CLIP) -> None:
        super().__init__()
        self.clip_norm = ClipNorm(clip_norm)
        self.n_tokens = n_frames // patch
        if self.n_tokens < 1:
            raise ValueError(f"n_frames {n_frames} is shorter than one patch of {patch}")
        self.input_norm = nn.BatchNorm1d(n_mels)
        self.embed = nn.Conv1d(n_mels, dim, kernel_size=patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, self.n_tokens + 1, dim) * 0.02)
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, mlp, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, n_classes)

    @property
    def attentions(self) -> list[Tensor]:
        """Per-layer attention of the last forward, each (B, H, N, N), N = 1 + n_tokens."""
        return [layer.attn.last_weights for layer in self.layers if layer.attn.last_weights is not None]

    def patch_embedding(self, x: Tensor) -> Tensor:
        """(B, T, F) -> (B, T // patch, dim): ``embed`` (a strided Conv1d) as one matrix product over
        the patches, which is what it computes; PyTorch's CPU Conv1d backward took 5x longer."""
        b, t, f = x.shape
        k = self.embed.kernel_size[0]
        patches = x[:, :t // k * k].reshape(b, t // k, k * f)  # patch i: frames [i k, (i+1) k), frame-major
        weight = self.embed.weight.transpose(1, 2).reshape(self.embed.out_channels, k * f)  # (dim, F, k) -> frame-major
        return F.linear(patches, weight, self.embed.bias)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, F) log-mel -> (B, C) logits."""
        b, t, f = x.shape
        # BatchNorm1d over mel bins, on (B * T, F) rows: the statistics of its (B, F, T) form, without
        # the strided passes over a transposed view (a twelfth of a training step)
        tokens = self.patch_embedding(self.input_norm(self.clip_norm(x).reshape(b * t, f)).view(b, t, f))
        h = torch.cat([self.cls.expand(len(x), -1, -1), tokens], dim=1) + self.pos
        for layer in self.layers:
            h = layer(h)
        return self.fc(self.norm(h[:, 0]))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN, identity or 1x1 projection shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


@register_teacher("resnet")
class ResNetTeacher(nn.Module):
    """Residual CNN on the (1, T, F) log-mel image: strided stem, one block per width, global pool.

    ``pooling="max"`` averages the last map over frequency and takes the max over time: a keyword
    fills a fraction of a 3 s clip, and a mean over time dilutes it with background.
    """

    def __init__(self, *, n_mels: int, n_frames: int, n_classes: int, widths: tuple[int, ...] = (16, 32, 64),
                 pooling: str = "max", dropout: float = 0.2, clip_norm: ClipNormMode | str = ClipNormMode.CLIP) -> None:
        super().__init__()
        self.clip_norm = ClipNorm(clip_norm)
        if pooling not in ("mean", "max"):
            raise ValueError(f"pooling must be 'mean' or 'max', got {pooling!r}")
        self.input_norm = nn.BatchNorm1d(n_mels)
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks, c_in = [], widths[0]
        for i, width in enumerate(widths):
            blocks.append(BasicBlock(c_in, width, stride=1 if i == 0 else 2))
            c_in = width
        self.blocks = nn.Sequential(*blocks)
        self.freq_pool = nn.AdaptiveAvgPool2d((None, 1))
        self.time_pool = nn.AdaptiveMaxPool2d(1) if pooling == "max" else nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in, n_classes))

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, F) log-mel -> (B, C) logits."""
        x = self.input_norm(self.clip_norm(x).transpose(1, 2)).transpose(1, 2)
        fmap = self.blocks(self.stem(as_image(x)))  # (B, C, T', F')
        return self.head(self.time_pool(self.freq_pool(fmap)))
