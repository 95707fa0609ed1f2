"""The IVQ-VAE autoencoder of stage 1 (section 3.1, eq. 1-7; attention eq. 8-10; quantizer L_vq).

``Encoder`` (eq. 1-4) and ``Decoder`` (eq. 5-7) are loops over levels built from
:mod:`fftd_course.blocks`; the channel multipliers ``ch_mult`` set both the widths (``ch * m_i``) and the
number of levels, so the compression factor is ``f = 2 ** (len(ch_mult) - 1)`` (f = 64 needs 7 levels).
:class:`IVQVAE` puts a quantizer from :mod:`fftd_course.quantize` between them.

Choices the paper leaves open (numbered in ``docs/ERRATA.md``), named where the code makes them:

* E4: every residual block is the two-unit VQGAN form of :class:`~fftd_course.blocks.ResBlock`.
* E20: two residual blocks per level in the encoder **and** the decoder, as the paper says. taming's decoder
  has ``num_res_blocks + 1`` blocks per level (3 with its usual ``num_res_blocks=2``), one more than its
  encoder; ours has ``num_res_blocks`` in both, so it matches taming's decoder with ``num_res_blocks=1``.
* The paper gives no base width ``ch`` and no ``ch_mult``. The 256 px configurations use ``ch=128`` and
  taming's multipliers: vq-f8 ``(1, 2, 2, 4)``, extended with 1s at the top and 4s at the bottom for more
  levels (f = 64: ``(1, 1, 2, 2, 4, 4, 4)``).
* eq. 4 prints only ``Conv1x1``; the residual stream of pre-activation blocks is not normalised, so the
  encoder ends with GroupNorm and Swish before that 1x1 convolution, as the reference does (it uses a 3x3
  there). The decoder ends with GroupNorm, Swish, ``Conv3x3`` and ``tanh`` (eq. 7; taming has no tanh).
* Attention (eq. 8-10) sits after each residual block of the level whose resolution is in
  ``attn_resolutions`` (16x16 as the paper says, for the configured ``resolution``) and in a middle block
  (res, attn, res) at the lowest resolution. At f = 8 and 256 px no level is 16x16 (the lowest is 32x32),
  so only the middle block attends.
* "Latent space set to 4" (E6) is read as ``z_channels = 4`` with a 16384-entry codebook; at f = 64
  the 256 px image becomes a 4x4x4 latent: 16 tokens of 14 bits, 224 bits per image.
* E19: the paper is silent on codebook collapse. Every named configuration uses l2-normalised codes, k-means
  initialisation and dead-code replacement from a buffer of recent encoder outputs (chapter 03 measures
  why); ``quantizer="fsq"`` swaps in FSQ with levels (16, 16, 8, 8), the same 16384 codes in 4 channels.
* The CPU toys (32 px) keep the structure but not the size: widths 16-64, 256 codes, one residual block
  per level instead of two and attention only in the middle block (see ``_toy``);
  ``get_config("toy-f8", num_res_blocks=2, attn_resolutions=(16,))`` restores both.
"""

from __future__ import annotations

import dataclasses

import math
from dataclasses import dataclass

import torch
from torch import nn

from .blocks import AttnBlock, Downsample, ResBlock, Upsample, group_norm, swish
from .configs import count_parameters, named_config
from .quantize import FiniteScalarQuantizer, Quantizer, QuantizerOutput, VectorQuantizer, fsq_levels_for

__all__ = ["IVQVAEConfig", "CONFIGS", "get_config", "Encoder", "Decoder", "IVQVAE", "count_parameters"]


@dataclass(frozen=True)
class IVQVAEConfig:
    """Everything that defines an IVQ-VAE. ``f = 2 ** (len(ch_mult) - 1)``; latents are ``z_channels x resolution/f``.

    Quantizer fields: ``quantizer`` is ``"vq"`` (:class:`~fftd_course.quantize.VectorQuantizer` with
    ``num_codes``, ``beta``, ``l2_normalize``, ``kmeans_init``, ``replace_dead_codes``, ``usage_window``)
    or ``"fsq"`` (:class:`~fftd_course.quantize.FiniteScalarQuantizer`). ``num_codes`` is the code count for
    both: with FSQ, ``fsq_levels`` left at ``None`` is derived from it
    (:func:`~fftd_course.quantize.fsq_levels_for`: 16384 codes in 4 channels give ``(16, 16, 8, 8)``, the toys'
    256 give ``(4, 4, 4, 4)``), so ``get_config(name, quantizer="fsq")`` works for every named configuration;
    explicit ``fsq_levels`` must multiply to ``num_codes`` and have ``z_channels`` entries.

    The collapse fixes (``l2_normalize``, ``kmeans_init``, ``replace_dead_codes``) are **on** here and in every
    named configuration, while :class:`~fftd_course.quantize.VectorQuantizer` itself defaults to plain VQ (all
    off), so that chapter 03 can show the collapse they fix.
    """

    resolution: int = 256
    in_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    z_channels: int = 4
    dropout: float = 0.0
    num_groups: int = 32
    quantizer: str = "vq"
    num_codes: int = 16384
    beta: float = 0.25
    l2_normalize: bool = True
    kmeans_init: bool = True
    replace_dead_codes: bool = True
    usage_window: int | None = None
    fsq_levels: tuple[int, ...] | None = None
    attention: bool = True  # False: no attention anywhere, the middle block's included (Table 7's ablation)
    residual: bool = True   # False: the blocks lose their identity path, F(h) alone (Table 7's ablation)

    def __post_init__(self) -> None:
        if not self.ch_mult or any(m <= 0 for m in self.ch_mult):
            raise ValueError(f"ch_mult must be a non-empty tuple of positive multipliers, got {self.ch_mult}")
        if self.ch <= 0 or self.z_channels <= 0 or self.in_channels <= 0 or self.num_res_blocks <= 0:
            raise ValueError("ch, z_channels, in_channels and num_res_blocks must be positive")
        if self.resolution % self.f:
            raise ValueError(f"resolution {self.resolution} is not divisible by f = 2**(len(ch_mult)-1) = {self.f}; "
                             f"use a resolution that is a multiple of {self.f} or fewer levels in ch_mult")
        for m in self.ch_mult:
            if (self.ch * m) % self.num_groups:
                raise ValueError(f"width ch*m = {self.ch * m} is not divisible by num_groups = {self.num_groups} "
                                 f"(GroupNorm); change ch, ch_mult or num_groups")
        if self.quantizer not in ("vq", "fsq"):
            raise ValueError(f"quantizer must be 'vq' or 'fsq', got {self.quantizer!r}")
        if self.quantizer == "fsq":
            if self.fsq_levels is None:  # frozen dataclass: set the derived field once, here
                object.__setattr__(self, "fsq_levels", fsq_levels_for(self.num_codes, self.z_channels))
            if len(self.fsq_levels) != self.z_channels:
                raise ValueError(f"FSQ quantizes each latent channel on its own: fsq_levels {self.fsq_levels} has "
                                 f"{len(self.fsq_levels)} entries but z_channels = {self.z_channels}")
            if math.prod(self.fsq_levels) != self.num_codes:
                raise ValueError(f"FSQ levels {self.fsq_levels} give {math.prod(self.fsq_levels)} codes, but num_codes = "
                                 f"{self.num_codes}; set num_codes to the product of the levels")

    @property
    def f(self) -> int:
        """Compression factor: each level but the last halves height and width."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def latent_size(self) -> int:
        """Side of the latent grid at the configured resolution."""
        return self.resolution // self.f

    @property
    def bits_per_image(self) -> float:
        """``latent_size^2`` tokens of ``log2(num_codes)`` bits each (224 bits at 4x4 with 16384 codes)."""
        return self.latent_size**2 * math.log2(self.num_codes)

    def make_quantizer(self) -> Quantizer:
        """The quantizer this configuration asks for."""
        if self.quantizer == "fsq":
            return FiniteScalarQuantizer(self.fsq_levels, usage_window=self.usage_window)
        return VectorQuantizer(self.num_codes, self.z_channels, self.beta, l2_normalize=self.l2_normalize,
                               kmeans_init=self.kmeans_init, replace_dead_codes=self.replace_dead_codes,
                               usage_window=self.usage_window)


def _paper(ch_mult: tuple[int, ...]) -> IVQVAEConfig:
    return IVQVAEConfig(resolution=256, ch=128, ch_mult=ch_mult)


def _toy(ch_mult: tuple[int, ...]) -> IVQVAEConfig:
    # Sized for chapter 05 on a 2-core CPU (measured there when the chapter was written): widths 16-64, one residual
    # block per level (two cost 1.7x the time and learned no faster per second), attention only in the
    # middle block (at 32 px the 16x16 level sits right below the input, where the 256 px model has none),
    # and 256 codes: at 16 tokens per image a few hundred held-out images make thousands of assignments,
    # enough to see every code in use.
    return IVQVAEConfig(resolution=32, ch=16, ch_mult=ch_mult, num_res_blocks=1, attn_resolutions=(), num_groups=8,
                        num_codes=256)


CONFIGS: dict[str, IVQVAEConfig] = {
    # The paper's settings at 256 px: codebook 16384, 4 latent channels, f = 8 ... 64 (Table 1).
    "paper-f8": _paper((1, 2, 2, 4)),
    "paper-f16": _paper((1, 1, 2, 2, 4)),
    "paper-f32": _paper((1, 1, 2, 2, 4, 4)),
    "paper-f64": _paper((1, 1, 2, 2, 4, 4, 4)),
    # CPU toys on 32 px toy faces; toy-f8 has the paper's 4x4 latent grid, f4 and f16 give 8x8 and 2x2.
    "toy-f4": _toy((1, 1, 2)),
    "toy-f8": _toy((1, 1, 2, 4)),
    "toy-f16": _toy((1, 1, 2, 4, 4)),
    # The trainer's small64 preset: 64 px images, f = 16 -> the paper's 4x4 latent grid; the toys' widths, and
    # 1024 codes (4,000 images make 64,000 assignments per epoch, enough to use them all).
    "small-f16": dataclasses.replace(_toy((1, 1, 2, 2, 4)), resolution=64, num_codes=1024),
}


def get_config(name: str, **overrides) -> IVQVAEConfig:
    """A named configuration from :data:`CONFIGS`, with fields replaced by ``overrides`` (e.g. ``quantizer="fsq"``)."""
    return named_config(CONFIGS, name, "IVQ-VAE", **overrides)


class _Level(nn.Module):
    """One level: ``num_res_blocks`` residual blocks (eq. 2), each followed by attention (eq. 8-10) where wanted."""

    def __init__(self, in_channels: int, out_channels: int, attend: bool, c: IVQVAEConfig):
        super().__init__()
        self.blocks = nn.ModuleList()
        self.attn = nn.ModuleList()
        for i in range(c.num_res_blocks):
            self.blocks.append(ResBlock(in_channels if i == 0 else out_channels, out_channels, c.dropout, c.num_groups,
                                        residual=c.residual))
            if attend and c.attention:
                self.attn.append(AttnBlock(out_channels, num_groups=c.num_groups))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            h = block(h)
            if self.attn:
                h = self.attn[i](h)
        return h


class _Middle(nn.Module):
    """The middle block at the lowest resolution: residual block, attention, residual block.

    Without ``config.attention`` the attention is an identity (Table 7's ablation)."""

    def __init__(self, channels: int, c: IVQVAEConfig):
        super().__init__()
        self.block1 = ResBlock(channels, channels, c.dropout, c.num_groups, residual=c.residual)
        self.attn = AttnBlock(channels, num_groups=c.num_groups) if c.attention else nn.Identity()
        self.block2 = ResBlock(channels, channels, c.dropout, c.num_groups, residual=c.residual)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block2(self.attn(self.block1(h)))


class Encoder(nn.Module):
    """``x (B, 3, H, W) -> z_e (B, z_channels, H/f, W/f)`` (eq. 1-4, attention eq. 8-10)."""

    def __init__(self, config: IVQVAEConfig):
        super().__init__()
        self.config = c = config
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, kernel_size=3, padding=1)  # eq. 1
        self.levels = nn.ModuleList()
        self.downsample = nn.ModuleList()
        channels, resolution = c.ch, c.resolution
        for i, mult in enumerate(c.ch_mult):
            out = c.ch * mult
            self.levels.append(_Level(channels, out, resolution in c.attn_resolutions, c))
            channels = out
            if i < len(c.ch_mult) - 1:  # every level but the last halves the resolution (eq. 3)
                self.downsample.append(Downsample(channels))
                resolution //= 2
        self.mid = _Middle(channels, c)
        self.norm_out = group_norm(channels, c.num_groups)
        self.conv_out = nn.Conv2d(channels, c.z_channels, kernel_size=1)  # eq. 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # (B, 3, H, W) -> (B, ch, H, W)
        for i, level in enumerate(self.levels):
            h = level(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)  # (B, C, H, W) -> (B, C, H/2, W/2)
        h = self.mid(h)
        return self.conv_out(swish(self.norm_out(h)))  # (B, C_h, H/f, W/f) -> (B, z_channels, H/f, W/f)


class Decoder(nn.Module):
    """``z_q (B, z_channels, h, w) -> x_hat (B, 3, h*f, w*f)`` in ``[-1, 1]`` (eq. 5-7, attention eq. 8-10)."""

    def __init__(self, config: IVQVAEConfig):
        super().__init__()
        self.config = c = config
        channels = c.ch * c.ch_mult[-1]
        resolution = c.latent_size
        self.conv_in = nn.Conv2d(c.z_channels, channels, kernel_size=1)  # eq. 5
        self.mid = _Middle(channels, c)
        # Levels run from the lowest resolution up, with the multipliers in reverse; built in that order so
        # that forward reads top to bottom.
        self.levels = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, mult in reversed(list(enumerate(c.ch_mult))):
            out = c.ch * mult
            self.levels.append(_Level(channels, out, resolution in c.attn_resolutions, c))
            channels = out
            if i > 0:  # every level but the last doubles the resolution (eq. 6)
                self.upsample.append(Upsample(channels))
                resolution *= 2
        self.norm_out = group_norm(channels, c.num_groups)
        self.conv_out = nn.Conv2d(channels, c.in_channels, kernel_size=3, padding=1)  # eq. 7

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))  # (B, z_channels, h, w) -> (B, ch*m_last, h, w)
        for i, level in enumerate(self.levels):
            h = level(h)
            if i < len(self.upsample):
                h = self.upsample[i](h)  # (B, C, H, W) -> (B, C, 2H, 2W)
        return torch.tanh(self.conv_out(swish(self.norm_out(h))))  # (B, ch, H, W) -> (B, 3, H, W) in [-1, 1]


class IVQVAE(nn.Module):
    """Encoder, quantizer and decoder (section 3.1, Algorithm 1).

    ``IVQVAE("toy-f8")`` or ``IVQVAE(get_config("paper-f64", quantizer="fsq"))``. The network is fully
    convolutional: any input whose height and width are multiples of ``f`` works (attention stays at the
    levels chosen for the configured resolution); other sizes raise a ``ValueError`` up front.
    """

    def __init__(self, config: IVQVAEConfig | str):
        super().__init__()
        self.config = get_config(config) if isinstance(config, str) else config
        self.encoder = Encoder(self.config)
        self.quantizer = self.config.make_quantizer()
        self.decoder = Decoder(self.config)

    @property
    def f(self) -> int:
        return self.config.f

    @property
    def last_layer(self) -> nn.Parameter:
        """Weight of the decoder's last convolution: taming's adaptive GAN weight takes gradients here."""
        return self.decoder.conv_out.weight

    def _check_images(self, x: torch.Tensor) -> None:
        c = self.config
        if x.ndim != 4 or x.shape[1] != c.in_channels:
            raise ValueError(f"IVQVAE expects images of shape (B, {c.in_channels}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % c.f or w % c.f:
            raise ValueError(f"image size {h}x{w} is not divisible by the compression factor f = {c.f}; "
                             f"crop or resize to multiples of {c.f} (this configuration was built for {c.resolution} px)")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder output before quantization: ``(B, 3, H, W) -> (B, z_channels, H/f, W/f)`` (eq. 1-4)."""
        self._check_images(x)
        return self.encoder(x)

    def quantize(self, z: torch.Tensor) -> QuantizerOutput:
        """Quantize an encoder output (straight-through ``z_q``, ``L_vq``, indices)."""
        return self.quantizer(z)

    def snap(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest code to a latent already in code space, e.g. a diffusion sample (eq. 30): ``(z_q, indices)``."""
        return self.quantizer.snap(z)

    def _check_latent(self, z: torch.Tensor) -> None:
        if z.ndim != 4 or z.shape[1] != self.config.z_channels:
            raise ValueError(f"decode expects a latent of shape (B, {self.config.z_channels}, h, w), got {tuple(z.shape)}")

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """Reconstruct images in ``[-1, 1]``: ``(B, z_channels, h, w) -> (B, 3, h*f, w*f)`` (eq. 5-7)."""
        self._check_latent(z_q)
        return self.decoder(z_q)

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Images from code indices ``(B, h, w)``: look the codes up, then decode."""
        return self.decode(self.quantizer.lookup(indices))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, QuantizerOutput]:
        """``x -> (x_hat, quantizer output)``; the training loss adds ``out.loss`` (``L_vq``) to the image losses."""
        out = self.quantize(self.encode(x))
        return self.decode(out.z_q), out
