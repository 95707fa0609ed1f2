"""Convolutional building blocks of the IVQ-VAE (paper section 3.1, eq. 1-10).

Everything here works on image-shaped tensors ``(B, C, H, W)``. The encoder and decoder of
:mod:`fftd_course.ivqvae` are loops over these blocks; the FFTD hourglass reuses ``Downsample``
(eq. 16) and ``Upsample`` (eq. 17), which are the same operations as eq. 3 and eq. 6.

Choices the paper leaves open (numbered in ``docs/ERRATA.md``) are named where they are made:

* E4: eq. 2 prints one (GroupNorm, Swish, Conv3x3) unit per residual block; ``ResBlock`` uses
  the reference VQGAN form with two such units and a 1x1 shortcut when the channel count changes.
* E17: eq. 8-10 print single-head attention and no normalisation; ``AttnBlock`` is single-head by default
  (``num_heads`` exists to show what the paper's one sentence about "multi-head" would mean) and
  normalises its input with GroupNorm first, as the reference implementation does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "swish",
    "Swish",
    "group_norm",
    "ResBlock",
    "Downsample",
    "Upsample",
    "attention_weights",
    "AttnBlock",
]


def swish(x: torch.Tensor) -> torch.Tensor:
    """Swish activation ``x * sigmoid(x)`` (eq. 2); PyTorch calls it SiLU."""
    return F.silu(x)


class Swish(nn.Module):
    """Module form of :func:`swish` (eq. 2), for use inside ``nn.Sequential``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return swish(x)


def group_norm(channels: int, num_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm as in the reference autoencoders: ``num_groups`` groups, ``eps=1e-6``, affine.

    GroupNorm normalises each sample on its own, so it behaves the same at the paper's batch size 1
    as at batch size 256, in training and in evaluation (chapter 01 measures why BatchNorm does not).
    """
    if channels <= 0 or num_groups <= 0:
        raise ValueError(f"group_norm needs positive sizes, got channels={channels}, num_groups={num_groups}")
    if channels % num_groups != 0:
        raise ValueError(
            f"GroupNorm splits {channels} channels into {num_groups} groups, which does not divide evenly. "
            f"Use a channel count divisible by {num_groups} or pass a num_groups that divides {channels}."
        )
    return nn.GroupNorm(num_groups=num_groups, num_channels=channels, eps=1e-6, affine=True)


def _check_image_batch(x: torch.Tensor, channels: int, who: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{who} expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"{who} was built for {channels} channels but got {x.shape[1]} (input shape {tuple(x.shape)})")


class ResBlock(nn.Module):
    """Residual block ``h + F(h)`` (eq. 2) in the reference VQGAN form (E4).

    ``F`` is two units of (GroupNorm, Swish, Conv3x3), with dropout before the second convolution.
    When ``out_channels != in_channels`` the skip path is a 1x1 convolution so that the sum is defined.
    The paper's eq. 2 prints a single unit; chapter 01 builds that form too and compares them.
    ``residual=False`` drops the skip path (``F(h)`` alone, the same layers): the "no residual blocks" row of
    the paper's Table 7 ablation.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, dropout: float = 0.0, num_groups: int = 32,
                 residual: bool = True):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = group_norm(in_channels, num_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = group_norm(out_channels, num_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        # A 1x1 projection only where the channel count changes: elsewhere the skip is the identity.
        self.shortcut = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)
        self.residual = bool(residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_image_batch(x, self.in_channels, "ResBlock")
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        return self.shortcut(x) + h if self.residual else h


def _check_even(x: torch.Tensor, who: str) -> None:
    h, w = x.shape[-2:]
    if h % 2 or w % 2:
        raise ValueError(
            f"{who} halves the height and width, so both must be even; got {h}x{w}. "
            f"Use image sizes divisible by 2 ** (number of downsamplings)."
        )


class Downsample(nn.Module):
    """Halve height and width with a 3x3 convolution of stride 2 and padding 1 (eq. 3; also eq. 16).

    The reference VQGAN pads asymmetrically (right and bottom only) with padding 0; for the even sizes
    used here both give ``H/2 x W/2`` outputs, and the symmetric form is what eq. 16 prints.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_image_batch(x, self.channels, "Downsample")
        _check_even(x, "Downsample")
        return self.conv(x)  # (B, C, H, W) -> (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Double height and width: nearest-neighbour x2, then a stride-1 3x3 convolution (eq. 6, E21; eq. 17)."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_image_batch(x, self.channels, "Upsample")
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # (B, C, H, W) -> (B, C, 2H, 2W)
        return self.conv(x)


def attention_weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Attention weights ``W = Softmax(Q K^T / sqrt(C))`` (eq. 9).

    ``q`` and ``k`` are ``(..., N, C)``: N tokens (here the H*W pixels) of C channels. Returns
    ``(..., N, N)``; row i says how much query pixel i takes from every pixel. The softmax runs in
    float32 whatever the input dtype, because half-precision exponentials overflow.
    """
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"queries and keys need the same channel count, got {q.shape[-1]} and {k.shape[-1]}")
    scores = q.float() @ k.float().transpose(-2, -1) / q.shape[-1] ** 0.5
    return scores.softmax(dim=-1).to(q.dtype)


class AttnBlock(nn.Module):
    """Self-attention over all pixels with a residual connection (eq. 8-10).

    ``Q, K, V = Conv1x1(h)`` (eq. 8) with ``h = GroupNorm(x)``, ``W = Softmax(Q K^T / sqrt(C))`` (eq. 9),
    ``x + Conv1x1(W V)`` (eq. 10). The product runs through ``F.scaled_dot_product_attention``, which
    computes the same numbers as :func:`attention_weights` followed by ``@ V`` without keeping the
    ``(HW x HW)`` matrix in memory where a fused kernel exists. With ``num_heads > 1`` the channels are
    split into heads and each head is scaled by the square root of its own width.
    """

    def __init__(self, channels: int, num_heads: int = 1, num_groups: int = 32):
        super().__init__()
        if num_heads <= 0 or channels % num_heads != 0:
            raise ValueError(f"num_heads must be a positive divisor of channels={channels}, got {num_heads}")
        self.channels, self.num_heads = channels, num_heads
        self.norm = group_norm(channels, num_groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, c, h, w = t.shape  # (B, C, H, W) -> (B, heads, HW, C/heads)
        return t.reshape(b, self.num_heads, c // self.num_heads, h * w).transpose(-2, -1)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values of eq. 8, each ``(B, heads, HW, C/heads)``."""
        _check_image_batch(x, self.channels, "AttnBlock")
        h = self.norm(x)
        return self._heads(self.q(h)), self._heads(self.k(h)), self._heads(self.v(h))

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """The weights of eq. 9, ``(B, heads, HW, HW)``, for plotting what each pixel attends to."""
        q, k, _ = self.qkv(x)
        return attention_weights(q, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, C/heads)
        b, c, h, w = x.shape
        out = out.transpose(-2, -1).reshape(b, c, h, w)
        return x + self.proj_out(out)
