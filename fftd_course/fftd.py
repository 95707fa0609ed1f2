"""FFTD, the feature-fused Transformer diffusion model of stage 2 (section 3.2, eq. 16-25, Algorithm 2).

A DiT-like noise predictor on the latent grid: ``model(x_t, t, y) -> eps``, the convention of
:mod:`fftd_course.diffusion`, so ``DDIMSampler`` drives it unchanged.

1. **Patchify** (:func:`patchify`): the ``(B, C, H, W)`` latent becomes ``L = (H/p)^2`` tokens of
   ``p*p*C`` numbers, a linear layer widens them to ``D`` and a fixed 2-D sine-cosine position embedding is
   added (DiT). The paper uses ``p = 1``: each of the 16 latent positions of a 4x4 latent is a token.
2. **Conditioning**: a sinusoidal embedding of the timestep through an MLP, plus a label embedding with one
   extra *null* row for classifier-free guidance (E12: CelebA-HQ has no classes, so an unconditional
   model, ``num_classes = 0``, has only the null row). During training labels are replaced by the null label
   with probability ``class_dropout_prob``.
3. **Five** :class:`FFTDBlock` **s in an hourglass** (section 3.2.2): Block1 on the token grid, Block2 on a
   grid halved by eq. 16's strided convolution, Block3 halved again, Block4 and Block5 back up through eq.
   17's nearest-neighbour upsampling and convolution; long skips fuse Block1 with Block5 and Block2 with
   Block4 (section 3.2.3).
4. A **final layer** (adaLN-modulated LayerNorm and a linear map) turns tokens back into ``p*p*C`` numbers,
   and :func:`unpatchify` lays them out as the ``(B, C, H, W)`` noise prediction.

Open choices (``docs/ERRATA.md``), named where the code makes them:

* **E13, the block.** The paper fuses "the attention output (x1) with the feed-forward output (x2)" and says
  no more. Here both branches read the same normalised input and run **in parallel** (in sequence, the
  feed-forward output would already contain the attention output, and there would be two things to fuse
  only by keeping an extra copy); each is conditioned on ``t`` and ``y`` by DiT's **adaLN-Zero** (a shift
  and scale of its LayerNorm and a gate on its output, all regressed from the conditioning vector and
  zero-initialised); the fused result is added to the residual stream: ``x + fuse(attn, mlp)``.
* **E14, the long skips.** ``x1`` is Block1's output and ``x2`` is Block5's output (computed from the
  upsampled Block4 result); ``x1`` is Block2's output and ``x2`` is Block4's. The Block2/Block4 fusion is
  what is upsampled into Block5; the Block1/Block5 fusion goes to the final layer.
* **E8, the levels.** A 4x4 grid halves twice (4, 2, 1, 2, 4). Patch sizes 2 and 4 leave 2x2 and 1x1
  grids, where two halvings are impossible: the hourglass halves as often as the grid side stays whole, at
  most twice (2x2: 2, 1, 1, 1, 2; 1x1: every block at 1x1). ``multires=False`` keeps every block on the
  token grid (the ablation of Table 8).
* Fusion kind (Table 9) is ``fusion = "adaptive" | "add" | "concat"``, used in the blocks and the skips.

Initialisation is one method, :meth:`FFTD.initialize_weights`, which says why each part starts where it does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import Downsample, Upsample
from .configs import check_eps_inputs, count_parameters, named_config, xavier_init
from .fusion import FUSIONS, Fusion, grid_to_tokens, make_fusion, tokens_to_grid

__all__ = ["FFTDConfig", "CONFIGS", "get_config", "patchify", "unpatchify", "timestep_embedding",
           "sincos_position_embedding", "modulate", "TimestepEmbedder", "LabelEmbedder", "Attention", "Mlp",
           "FFTDBlock", "FinalLayer", "FFTD", "count_parameters"]


@dataclass(frozen=True)
class FFTDConfig:
    """Everything that defines an FFTD. The latent is ``in_channels x input_size x input_size``.

    ``patch_size`` must divide ``input_size``; the token grid is ``input_size / patch_size`` on a side.
    ``num_classes = 0`` makes an unconditional model (only the null label, E12). ``fusion`` and
    ``multires`` are the ablation switches of Tables 8 and 9; ``patch_size`` that of Table 2.
    """

    input_size: int = 4
    in_channels: int = 4
    patch_size: int = 1
    hidden_size: int = 288
    num_heads: int = 6
    mlp_ratio: float = 4.0
    num_classes: int = 3
    class_dropout_prob: float = 0.1
    fusion: str = "adaptive"
    multires: bool = True
    dropout: float = 0.0
    frequency_embedding_size: int = 256

    def __post_init__(self) -> None:
        for name in ("input_size", "in_channels", "patch_size", "hidden_size", "num_heads", "frequency_embedding_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"FFTDConfig.{name} must be a positive integer, got {value!r}")
        if self.input_size % self.patch_size:
            raise ValueError(f"patch_size {self.patch_size} does not divide the {self.input_size}x{self.input_size} "
                             f"latent; use a patch size that divides {self.input_size} (the paper's Table 2: 1, 2, 4)")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.frequency_embedding_size % 2:
            raise ValueError(f"frequency_embedding_size must be even (sines and cosines), got {self.frequency_embedding_size}")
        if self.hidden_size % 4:
            raise ValueError(f"hidden_size must be divisible by 4 (the 2-D position embedding splits it into sines "
                             f"and cosines of rows and columns), got {self.hidden_size}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {self.mlp_ratio}")
        if not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(f"num_classes must be an integer >= 0 (0: unconditional), got {self.num_classes!r}")
        if not 0.0 <= self.class_dropout_prob < 1.0:
            raise ValueError(f"class_dropout_prob must lie in [0, 1), got {self.class_dropout_prob}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")

    @property
    def grid_size(self) -> int:
        """Side of the token grid: ``input_size / patch_size``."""
        return self.input_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2

    @property
    def levels(self) -> int:
        """How often the hourglass halves the grid (E8): as often as the side stays whole, at most twice."""
        if not self.multires:
            return 0
        side, levels = self.grid_size, 0
        while levels < 2 and side % 2 == 0:
            side, levels = side // 2, levels + 1
        return levels

    @property
    def block_grids(self) -> tuple[int, int, int, int, int]:
        """The grid side each of the five blocks works on, e.g. ``(4, 2, 1, 2, 4)``."""
        g, n = self.grid_size, self.levels
        g2 = g // 2 if n >= 1 else g
        g3 = g2 // 2 if n >= 2 else g2
        return (g, g2, g3, g2, g)

    @property
    def null_label(self) -> int:
        """The label of "no class" (classifier-free guidance; every label of an unconditional model)."""
        return self.num_classes


def _paper(**kw) -> FFTDConfig:
    # The paper prints no widths. hidden_size 288 (6 heads of 48) gives 15.10M, 13.61M and 12.15M parameters at
    # patch sizes 1, 2, 4 with three classes (Table 2: 14.98M, 13.73M, 12.76M); chapter 08 prints every variant.
    return FFTDConfig(input_size=4, in_channels=4, hidden_size=288, num_heads=6, num_classes=3, **kw)


CONFIGS: dict[str, FFTDConfig] = {
    # The paper's model on the 4x4x4 latent of paper-f64 (Table 2 for patch sizes 1, 2, 4).
    "paper": _paper(patch_size=1),
    "paper-p2": _paper(patch_size=2),
    "paper-p4": _paper(patch_size=4),
    # CPU toy on the 4x4x4 latent of the IVQ-VAE toy-f8: same structure, narrow.
    "toy": FFTDConfig(input_size=4, in_channels=4, hidden_size=64, num_heads=4, num_classes=3),
    # The trainer's small64 preset (64 px images, 4x4x4 latents): twice the toy's width.
    "small": FFTDConfig(input_size=4, in_channels=4, hidden_size=128, num_heads=4, num_classes=3),
}


def get_config(name: str, **overrides) -> FFTDConfig:
    """A named configuration from :data:`CONFIGS` with fields replaced by ``overrides`` (e.g. ``fusion="add"``)."""
    return named_config(CONFIGS, name, "FFTD", **overrides)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """``(B, C, H, W) -> (B, (H/p)(W/p), p*p*C)``: non-overlapping ``p x p`` patches as tokens, row-major."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens: torch.Tensor, p: int, channels: int) -> torch.Tensor:
    """The inverse of :func:`patchify`: ``(B, L, p*p*C) -> (B, C, sqrt(L) p, sqrt(L) p)``."""
    b, n, _ = tokens.shape
    side = math.isqrt(n)
    x = tokens.reshape(b, side, side, p, p, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, side * p, side * p)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of timesteps ``(B,) -> (B, dim)``: ``[cos(t w_k), sin(t w_k)]``, ``w_k`` geometric.

    Frequencies run from 1 down to ``1 / max_period`` (as in DDPM and DiT), so nearby timesteps get nearby
    vectors while the whole range 0..T-1 stays distinguishable.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sincos_position_embedding(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D position embedding ``(grid*grid, dim)``: half the channels encode the row, half the column.

    Each half is a 1-D sine-cosine embedding of the coordinate (DiT's ``get_2d_sincos_pos_embed``); on a
    1x1 grid it is a constant vector.
    """
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    coords = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def embed(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1, 1) * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    return torch.cat([embed(rows), embed(cols)], dim=1).float()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x (1 + scale) + shift`` with per-sample ``shift, scale`` of shape ``(B, D)``.

    One fused multiply-add (``addcmul``) after the ``1 + scale`` on the small ``(B, D)`` vector.
    """
    return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1))


class TimestepEmbedder(nn.Module):
    """Timestep ``(B,) -> (B, D)``: :func:`timestep_embedding`, then Linear, SiLU, Linear."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.frequency_embedding_size))


class LabelEmbedder(nn.Module):
    """Labels ``(B,) -> (B, D)`` from a table with ``num_classes + 1`` rows; the last row is the null label.

    In training, each label is replaced by the null label with probability ``dropout_prob``, so one model
    learns both the conditional and the unconditional noise prediction that classifier-free guidance mixes.
    The draw is a tensor operation (``torch.where``), so it costs no device synchronisation.
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.num_classes, self.dropout_prob = num_classes, dropout_prob
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def drop(self, y: torch.Tensor) -> torch.Tensor:
        """Labels with each one replaced by the null label with probability ``dropout_prob``."""
        drop = torch.rand(y.shape, device=y.device) < self.dropout_prob
        return torch.where(drop, torch.full_like(y, self.null_label), y)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout_prob > 0:
            y = self.drop(y)
        return self.embedding_table(y)


class Attention(nn.Module):
    """Multi-head self-attention over the tokens (``F.scaled_dot_product_attention``)."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, L, D/heads)
        return self.dropout(self.proj(out.transpose(1, 2).reshape(b, n, d)))


class Mlp(nn.Module):
    """The feed-forward branch: Linear ``D -> ratio D``, GELU (tanh), Linear back to ``D``."""

    def __init__(self, dim: int, mlp_ratio: float, dropout: float = 0.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(F.gelu(self.fc1(x), approximate="tanh")))


class FFTDBlock(nn.Module):
    """One FFTD block (E13): ``x + fuse(gate_a Attn(adaLN(x)), gate_m MLP(adaLN(x)))``.

    The conditioning vector ``c`` (timestep plus label embedding, ``(B, D)``) is mapped by ``adaLN_modulation``
    to six ``(B, D)`` vectors: shift, scale and gate for each branch. Both branches read ``x``; their gated
    outputs are fused (AdaptiveFusion, eq. 18-25, or an ablation's plain fusion) and added to ``x``.

    ``norm_attn`` and ``norm_mlp`` are one LayerNorm without parameters (the same function): ``x`` is normalised
    once and each branch modulates that with its own shift and scale. :class:`FFTD` computes the modulation of
    all five blocks in one matrix product and passes each block its share as ``modulation``; a block called on
    its own computes it from ``c``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, fusion: str = "adaptive", dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads, dropout)
        self.mlp = Mlp(dim, mlp_ratio, dropout)
        self.fuse: Fusion = make_fusion(fusion, dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    @property
    def norm_attn(self) -> nn.LayerNorm:
        """The attention branch's LayerNorm (no parameters: the same module as :attr:`norm_mlp`)."""
        return self.norm

    @property
    def norm_mlp(self) -> nn.LayerNorm:
        """The feed-forward branch's LayerNorm (no parameters: the same module as :attr:`norm_attn`)."""
        return self.norm

    def forward(self, x: torch.Tensor, c: torch.Tensor, modulation: torch.Tensor | None = None) -> torch.Tensor:
        if modulation is None:
            modulation = self.adaLN_modulation(c)  # (B, 6D)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = modulation.chunk(6, dim=-1)
        h = self.norm(x)
        a = gate_a.unsqueeze(1) * self.attn(modulate(h, shift_a, scale_a))
        m = gate_m.unsqueeze(1) * self.mlp(modulate(h, shift_m, scale_m))
        return x + self.fuse(a, m)


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm, then a linear map from ``D`` to the ``p*p*C`` numbers of each patch."""

    def __init__(self, dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor, modulation: torch.Tensor | None = None) -> torch.Tensor:
        if modulation is None:
            modulation = self.adaLN_modulation(c)  # (B, 2D)
        shift, scale = modulation.chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class FFTD(nn.Module):
    """The five-block multi-resolution hourglass (section 3.2): ``model(x_t, t, y) -> eps``.

    ``FFTD("toy")``, ``FFTD(get_config("paper", fusion="add", multires=False))``. ``x_t`` is
    ``(B, in_channels, input_size, input_size)``, ``t`` a LongTensor ``(B,)`` of 0-based timesteps, ``y`` a
    LongTensor ``(B,)`` of labels in ``[0, num_classes]`` (``num_classes`` is the null label) or ``None``
    (every sample unconditional). The forward pass has no host-device synchronisation and no Python branch on
    tensor values: the hourglass's shape is fixed by the configuration.
    """

    def __init__(self, config: FFTDConfig | str):
        super().__init__()
        self.config = c = get_config(config) if isinstance(config, str) else config
        d = c.hidden_size
        self.x_embedder = nn.Linear(c.patch_size**2 * c.in_channels, d)
        self.register_buffer("pos_embed", sincos_position_embedding(d, c.grid_size)[None], persistent=False)
        self.t_embedder = TimestepEmbedder(d, c.frequency_embedding_size)
        self.y_embedder = LabelEmbedder(c.num_classes, d, c.class_dropout_prob)
        self.blocks = nn.ModuleList(FFTDBlock(d, c.num_heads, c.mlp_ratio, c.fusion, c.dropout) for _ in range(5))
        # eq. 16 and eq. 17 between blocks: downsample[i] and upsample[i] change the grid by a factor 2 at level i.
        self.downsample = nn.ModuleList(Downsample(d) for _ in range(c.levels))
        self.upsample = nn.ModuleList(Upsample(d) for _ in range(c.levels))
        self.skip_inner = make_fusion(c.fusion, d)  # Block2 output with Block4 output (E14)
        self.skip_outer = make_fusion(c.fusion, d)  # Block1 output with Block5 output (E14)
        self.final_layer = FinalLayer(d, c.patch_size, c.in_channels)
        # Every adaLN modulation reads the same conditioning vector: forward() runs them as one linear map over
        # the six layers' stacked weights (the parameters stay in their layers). Widths, known now:
        self._modulation_sizes = [m.adaLN_modulation[-1].out_features for m in (*self.blocks, self.final_layer)]
        self.initialize_weights()

    @property
    def null_label(self) -> int:
        return self.config.null_label

    def initialize_weights(self) -> None:
        """Initialise every parameter, and say why (after DiT's ``initialize_weights``).

        1. Every linear layer and convolution: Xavier-uniform weights, zero biases. Xavier keeps the variance
           of activations roughly constant through a layer in both directions, the usual choice for
           Transformers (DiT, ViT).
        2. Label table and timestep MLP: normal with std 0.02 (small, so that the conditioning vector starts
           near zero and the modulations below start near their neutral values).
        3. adaLN-Zero: every block's modulation regresses to zero, so each gate is 0 and each block is the
           identity at step 0 (``x + fuse(0, 0) = x`` for every fusion kind); the network starts as a
           shallow one and learns to use depth, which DiT found to train best.
        4. Final layer: modulation and output projection zero, so the first prediction is ``eps = 0`` (the
           mean of the target) rather than a large random vector.
        5. Fusions: their own ``initialize_weights`` (``fftd_course.fusion``): AdaptiveFusion and ConcatFusion
           start as the mean of their inputs, AddFusion has no parameters.
        """

        self.apply(xavier_init)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        for layer in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        for m in self.modules():
            if isinstance(m, Fusion) and hasattr(m, "initialize_weights"):
                m.initialize_weights()

    def check_inputs(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> None:
        """Clear errors for inputs the model cannot take (``configs.check_eps_inputs``: shapes always, values only
        where reading them costs no device synchronisation)."""
        c = self.config
        check_eps_inputs(x_t, t, y, (c.in_channels, c.input_size, c.input_size), c.num_classes, "FFTD",
                         "check the IVQ-VAE's z_channels and latent size against FFTDConfig.in_channels and input_size",
                         "latents")

    def _down(self, h: torch.Tensor, level: int) -> torch.Tensor:
        return grid_to_tokens(self.downsample[level](tokens_to_grid(h)))  # eq. 16: (B, L, D) -> (B, L/4, D)

    def _up(self, h: torch.Tensor, level: int) -> torch.Tensor:
        return grid_to_tokens(self.upsample[level](tokens_to_grid(h)))  # eq. 17: (B, L, D) -> (B, 4L, D)

    def modulations(self, cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Every block's adaLN output and the final layer's, ``(B, 6D)`` x 5 and ``(B, 2D)``, from one matrix
        product: ``SiLU(cond)`` times the six ``adaLN_modulation`` layers' weights stacked. Equal to calling each
        layer on ``cond``, with one kernel where there were six (and one SiLU where there were six)."""
        layers = [m.adaLN_modulation[-1] for m in (*self.blocks, self.final_layer)]
        weight = torch.cat([layer.weight for layer in layers])
        bias = torch.cat([layer.bias for layer in layers])
        return F.linear(F.silu(cond), weight, bias).split(self._modulation_sizes, dim=-1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self.check_inputs(x_t, t, y)
        c = self.config
        if y is None:
            y = torch.full_like(t, c.null_label)
        x = self.x_embedder(patchify(x_t, c.patch_size)) + self.pos_embed  # (B, C, H, W) -> (B, L, D)
        cond = self.t_embedder(t) + self.y_embedder(y)  # (B, D)
        mod = self.modulations(cond)  # each block's shifts, scales and gates, and the final layer's
        levels = c.levels
        h1 = self.blocks[0](x, cond, mod[0])  # grid g
        h2 = self.blocks[1](self._down(h1, 0) if levels >= 1 else h1, cond, mod[1])  # g/2
        h3 = self.blocks[2](self._down(h2, 1) if levels >= 2 else h2, cond, mod[2])  # g/4
        h4 = self.blocks[3](self._up(h3, 1) if levels >= 2 else h3, cond, mod[3])  # g/2
        h4 = self.skip_inner(h2, h4)
        h5 = self.blocks[4](self._up(h4, 0) if levels >= 1 else h4, cond, mod[4])  # g
        h5 = self.skip_outer(h1, h5)
        return unpatchify(self.final_layer(h5, cond, mod[5]), c.patch_size, c.in_channels)  # (B, L, p*p*C) -> (B, C, H, W)
