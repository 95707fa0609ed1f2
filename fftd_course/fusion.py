"""Fusing two token sequences: the paper's AdaptiveFusion (section 3.2.3, eq. 18-25) and the two plain
fusions of its ablation (Table 9).

All three modules share one interface, ``fuse(x1, x2) -> x`` on tokens ``(B, L, D)``, where the ``L``
tokens are a square ``sqrt(L) x sqrt(L)`` grid (row-major, as :mod:`fftd_course.fftd` lays them out).
FFTD uses a fusion in three places: inside every block (attention output with MLP output) and on the two
long skips of its hourglass (Block1 with Block5, Block2 with Block4); see ``docs/PAPER.md``.

AdaptiveFusion, as built here:

* eq. 18-20, a **channel gate** in the manner of CBAM: pool the concatenated tokens ``x1 || x2`` over the
  tokens by mean and by max, concatenate the two pooled vectors, and map them through two linear layers to
  one weight in (0, 1) per channel;
* eq. 21-22, a **spatial gate**: lay ``x1 || x2`` out as a ``2D``-channel image and map it through three
  3x3 convolutions to one weight in (0, 1) per token;
* eq. 23-25: ``w_channel * LayerNorm(x1) + w_spatial * LayerNorm(x2) + s * Linear(x1 || x2)``.

The paper's misprints and gaps, and what this code does (``docs/ERRATA.md``):

* **E1**: eq. 18 prints ``Mean`` for both pools; ``p_max`` is a max pool, as in CBAM.
* **E2**: ``Concat(p_avg, p_max)`` of two ``2D``-wide vectors is ``4D`` wide, but eq. 20 prints
  ``Linear1: 2D -> D/16``. Here ``Linear1: 4D -> D/16``. The paper also prints no non-linearity between
  ``Linear1`` and ``Linear2`` (nor between the three convolutions); without one, a stack of linear maps is
  a single linear map of rank ``D/16``, so a ReLU sits between them, as in CBAM's shared MLP.

What a freshly initialised AdaptiveFusion computes (:meth:`AdaptiveFusion.initialize_weights`): the last
layer of each gate starts at zero, so both gates are ``sigmoid(0) = 0.5`` for every input, and ``s``
starts at 0, so the residual path is off: a fresh fusion is ``(LayerNorm(x1) + LayerNorm(x2)) / 2``, the
mean of the normalised inputs. Training then moves the gates away from one half where that helps, like
the learnable skip interpolation of Hourglass DiT, which starts at 0.5.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FUSIONS", "Fusion", "AdaptiveFusion", "AddFusion", "ConcatFusion", "make_fusion", "tokens_to_grid",
           "grid_to_tokens"]

FUSIONS = ("adaptive", "add", "concat")


def _grid_side(num_tokens: int) -> int:
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"tokens must form a square grid (L = side * side), got L = {num_tokens}; "
                         f"the spatial gate (eq. 21) reshapes them to sqrt(L) x sqrt(L)")
    return side


def tokens_to_grid(x: torch.Tensor) -> torch.Tensor:
    """``(B, L, D) -> (B, D, sqrt(L), sqrt(L))``, tokens in row-major order (eq. 21's Reshape)."""
    b, n, d = x.shape
    side = _grid_side(n)
    return x.transpose(1, 2).reshape(b, d, side, side)


def grid_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``(B, D, H, W) -> (B, H*W, D)``, the inverse of :func:`tokens_to_grid`."""
    return x.flatten(2).transpose(1, 2)


class Fusion(nn.Module):
    """The interface every fusion keeps: ``forward(x1, x2)`` maps two ``(B, L, D)`` tensors to one."""

    def __init__(self, dim: int):
        super().__init__()
        if not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"dim (the token width D) must be a positive integer, got {dim!r}")
        self.dim = dim

    def _check(self, x1: torch.Tensor, x2: torch.Tensor) -> None:
        # Shapes only: static under torch.compile, no device synchronisation.
        if x1.ndim != 3 or x1.shape != x2.shape:
            raise ValueError(f"{type(self).__name__} fuses two tensors of the same shape (B, L, D), "
                             f"got {tuple(x1.shape)} and {tuple(x2.shape)}")
        if x1.shape[-1] != self.dim:
            raise ValueError(f"{type(self).__name__} was built for D = {self.dim} channels, got {x1.shape[-1]}")

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class AddFusion(Fusion):
    """Table 9's "simple Add": ``x1 + x2``. No parameters."""

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        self._check(x1, x2)
        return x1 + x2

    def initialize_weights(self) -> None:
        """Nothing to initialise."""


class ConcatFusion(Fusion):
    """Table 9's "simple Concat": concatenate the channels and project back, ``Linear(x1 || x2)``, ``2D -> D``.

    It starts as the mean ``(x1 + x2) / 2`` (weight ``[I/2, I/2]``, bias 0), so that at initialisation it
    passes both inputs on unchanged in proportion, as the other two fusions do.
    """

    def __init__(self, dim: int):
        super().__init__(dim)
        self.proj = nn.Linear(2 * dim, dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        eye = torch.eye(self.dim) / 2
        with torch.no_grad():
            self.proj.weight.copy_(torch.cat([eye, eye], dim=1))
            self.proj.bias.zero_()

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        self._check(x1, x2)
        return self.proj(torch.cat([x1, x2], dim=-1))  # (B, L, 2D) -> (B, L, D)


class AdaptiveFusion(Fusion):
    """The paper's AdaptiveFusion (eq. 18-25) with errata E1 and E2 resolved (see the module docstring).

    ``reduction`` (16) and ``spatial_reduction`` (4) set the hidden widths ``D/16`` of the channel gate and
    ``D/4`` of the spatial gate; both are at least 1. Works for any square token grid, down to 1x1 (the
    bottom of the hourglass), where the max and mean pools coincide and the 3x3 convolutions see one
    token and its zero padding.
    """

    def __init__(self, dim: int, reduction: int = 16, spatial_reduction: int = 4):
        super().__init__(dim)
        if reduction <= 0 or spatial_reduction <= 0:
            raise ValueError(f"reductions must be positive, got {reduction} and {spatial_reduction}")
        hidden, spatial = max(1, dim // reduction), max(1, dim // spatial_reduction)
        # eq. 20 (E2): Linear1 takes the 4D-wide concat of the two pooled 2D-wide vectors.
        self.channel_gate = nn.Sequential(nn.Linear(4 * dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        # eq. 22: 2D -> D/4 -> D/4 -> 1 channels, kernel 3, padding 1 keeps the grid size.
        self.spatial_gate = nn.Sequential(
            nn.Conv2d(2 * dim, spatial, 3, padding=1), nn.ReLU(),
            nn.Conv2d(spatial, spatial, 3, padding=1), nn.ReLU(),
            nn.Conv2d(spatial, 1, 3, padding=1),
        )
        self.norm1 = nn.LayerNorm(dim)  # eq. 23
        self.norm2 = nn.LayerNorm(dim)  # eq. 24
        self.proj = nn.Linear(2 * dim, dim)  # eq. 25's Linear(x1 || x2)
        self.s = nn.Parameter(torch.zeros(()))  # eq. 25's learnable residual scale
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Start as the mean of the normalised inputs (module docstring).

        Hidden layers get Xavier-uniform weights and zero biases (as DiT's linear layers); the last layer of
        each gate starts at zero so both gates are exactly 0.5; ``s = 0`` so the residual path starts closed
        (its ``Linear`` still gets Xavier weights, so ``s`` receives a gradient from the first step).
        """
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for last in (self.channel_gate[-1], self.spatial_gate[-1]):
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        with torch.no_grad():
            self.s.zero_()

    def channel_weights(self, x1: torch.Tensor, x2: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """``w_channel``, ``(B, 1, D)``: one weight per channel of ``x1`` (eq. 18-20). ``x``: ``x1 || x2`` if the
        caller has it already."""
        x = torch.cat([x1, x2], dim=-1) if x is None else x  # x1 || x2: (B, L, 2D)
        p_avg = x.mean(dim=1)  # eq. 18, pooled over the tokens: (B, 2D)
        p_max = x.amax(dim=1)  # eq. 18 as intended (E1): a max pool, not a second mean
        p_channel = torch.cat([p_avg, p_max], dim=-1)  # eq. 19: (B, 4D)
        return torch.sigmoid(self.channel_gate(p_channel)).unsqueeze(1)  # eq. 20: (B, 1, D)

    def spatial_weights(self, x1: torch.Tensor, x2: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """``w_spatial``, ``(B, L, 1)``: one weight per token of ``x2`` (eq. 21-22). ``x``: ``x1 || x2`` if the
        caller has it already."""
        x = torch.cat([x1, x2], dim=-1) if x is None else x
        x_spatial = tokens_to_grid(x)  # eq. 21: (B, 2D, sqrt L, sqrt L)
        w = torch.sigmoid(self.spatial_gate(x_spatial))  # eq. 22: (B, 1, sqrt L, sqrt L)
        return grid_to_tokens(w)  # (B, L, 1)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """``x_fused = w_channel LN(x1) + w_spatial LN(x2) + s Linear(x1 || x2)`` (eq. 23-25).

        ``x1 || x2`` is built once and read by both gates and the residual path; the two products and sums of
        eq. 25 are two fused multiply-adds (``addcmul``).
        """
        self._check(x1, x2)
        _grid_side(x1.shape[1])
        x = torch.cat([x1, x2], dim=-1)  # x1 || x2: (B, L, 2D)
        x_channel = self.channel_weights(x1, x2, x) * self.norm1(x1)  # eq. 23
        x_fused = torch.addcmul(x_channel, self.spatial_weights(x1, x2, x), self.norm2(x2))  # eq. 23 + eq. 24
        return torch.addcmul(x_fused, self.s, self.proj(x))  # + s Linear(x1 || x2), eq. 25


def make_fusion(kind: str, dim: int) -> Fusion:
    """The fusion named ``kind`` (``"adaptive"``, ``"add"`` or ``"concat"``) for ``dim``-wide tokens."""
    if kind == "adaptive":
        return AdaptiveFusion(dim)
    if kind == "add":
        return AddFusion(dim)
    if kind == "concat":
        return ConcatFusion(dim)
    raise ValueError(f"unknown fusion {kind!r}; choose one of {FUSIONS}")
