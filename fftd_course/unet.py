"""The pixel-space DDPM baseline's U-Net (paper section 4.3.4, Table 4): ``model(x_t, t, y) -> eps`` on images.

The paper compares FFTD with "a pixel-space DDPM (Ho et al. 2020) with a U-Net of 4 down and 4 up stages,
2 residual blocks each, attention only at 16x16", trained with lr 2e-4, batch 16, 4e5 steps, EMA 0.9999 and
DDPM's linear schedule (``beta`` from 1e-4 to 0.02 over ``T = 1000`` steps), epsilon-prediction, images in
``[-1, 1]`` at 256 px. This is that network, built from :mod:`fftd_course.blocks`; it follows the convention of
:mod:`fftd_course.diffusion` (0-based ``t``, labels with a null label), so ``DDIMSampler`` and ``DDPMSampler``
drive it unchanged. Table 3's and Table 4's 1000-step "DDPM" rows are this model (errata E10: the FFTD has
``T = 500`` timesteps and cannot be sampled with 1000 ancestral steps). The paper's 500-step variant "uses a
linearly interpolated schedule" and says no more: here it is 500 evenly spaced DDIM steps of the same ``T = 1000``
model (``PixelDiffusion.generate(num_steps=500)``, ``diffusion.ddim_timesteps``); a model trained with 500 steps
of its own is ``train-ddpm --T 500`` (``--schedule linear`` as printed, or ``linear_rescaled``, E24).

The network (DDPM's ``ddpm/diffusion_utils`` U-Net, in the words of this package):

1. **Conditioning**: a sinusoidal embedding of ``t`` (:func:`fftd_course.fftd.timestep_embedding`, ``ch``
   numbers) through Linear, Swish, Linear to ``4 ch``; for a class-conditional model (``num_classes > 0``) plus
   a label embedding with one extra *null* row (:class:`fftd_course.fftd.LabelEmbedder`: labels are replaced by
   the null label with probability ``class_dropout_prob`` in training, so classifier-free guidance works as
   it does for FFTD). DDPM itself is unconditional; the label is the course's addition so that the baseline
   can be compared with FFTD per AFHQ class (Table 4).
2. **Down**: a 3x3 convolution to ``ch``, then one level per entry of ``ch_mult``: ``num_res_blocks``
   :class:`TimeResBlock` s of width ``ch * m`` (each followed by :class:`~fftd_course.blocks.AttnBlock`
   where the level's resolution is in ``attn_resolutions``), and a :class:`~fftd_course.blocks.Downsample`
   after every level but the last. ``len(ch_mult) - 1`` halvings, as in :mod:`fftd_course.ivqvae`: the
   paper's "4 down stages" are the 4 halvings of ``ch_mult = (1, 1, 2, 2, 4)`` (256, 128, 64, 32, 16 px).
3. **Middle**: residual block, attention, residual block at the lowest resolution.
4. **Up**: the levels in reverse, each with ``num_res_blocks + 1`` residual blocks whose input is the
   running tensor concatenated with the matching output of the down path (every stored tensor is used
   once, as in DDPM: that is why the up path has one block more per level), then an
   :class:`~fftd_course.blocks.Upsample` after every level but the last (the 4 "up stages").
5. **Out**: GroupNorm, Swish, a 3x3 convolution back to ``in_channels``, zero-initialised.

Choices the paper leaves open (none is an erratum of its own; they are DDPM's):

* widths ``ch = 128`` and ``ch_mult = (1, 1, 2, 2, 4)`` (the paper gives none; DDPM's 256 px models use
  ``(1, 1, 2, 2, 4, 4)``, one level more than the paper's 4 halvings allow);
* the residual block is :class:`fftd_course.blocks.ResBlock` (the two-unit VQGAN form, E4, which is also
  DDPM's) with DDPM's timestep projection added after its first convolution (:class:`TimeResBlock`);
* dropout 0 (DDPM uses 0.1 on CIFAR-10 and 0 at 256 px); attention single-head, GroupNorm first (E17);
* sampling clamps every clean estimate to ``[-1, 1]`` (DDPM's own sampler, ``clip_denoised``; the paper's
  Algorithm 2 does not print it): ``PixelDiffusion.generate(clip_x0=True)``, the default.

Initialisation is one method, :meth:`UNet.initialize_weights`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .blocks import AttnBlock, Downsample, ResBlock, Upsample, group_norm, swish
from .configs import check_eps_inputs, count_parameters, named_config, xavier_init
from .fftd import LabelEmbedder, timestep_embedding

__all__ = ["UNetConfig", "CONFIGS", "get_config", "TimeResBlock", "UNet", "describe", "count_parameters"]


@dataclass(frozen=True)
class UNetConfig:
    """Everything that defines a :class:`UNet`. Images are ``in_channels x resolution x resolution``.

    ``ch_mult`` has one entry per level (widths ``ch * m``); the image is halved ``len(ch_mult) - 1`` times, so
    ``resolution`` must be divisible by ``2 ** (len(ch_mult) - 1)``. ``attn_resolutions`` lists the sides (in
    pixels) of the levels that attend; each must be one of :attr:`levels`. ``num_classes = 0`` makes an
    unconditional model (no label embedding; labels, if given, must be the null label 0).
    """

    resolution: int = 256
    in_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.0
    num_groups: int = 32
    num_classes: int = 0
    class_dropout_prob: float = 0.1

    def __post_init__(self) -> None:
        for name in ("resolution", "in_channels", "ch", "num_res_blocks", "num_groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"UNetConfig.{name} must be a positive integer, got {value!r}")
        for name in ("ch_mult", "attn_resolutions"):  # a list (a file's, a user's) becomes the tuple it means
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
            elif not isinstance(value, tuple):
                raise ValueError(f"UNetConfig.{name} must be a tuple of integers, got {value!r}")
        if not self.ch_mult or any(not isinstance(m, int) or isinstance(m, bool) or m <= 0 for m in self.ch_mult):
            raise ValueError(f"UNetConfig.ch_mult must be a non-empty tuple of positive integers (one width multiplier "
                             f"per level), got {self.ch_mult!r}")
        if self.resolution % self.factor:
            raise ValueError(f"UNetConfig.resolution {self.resolution} is not divisible by 2 ** (len(ch_mult) - 1) = "
                             f"{self.factor}: ch_mult {self.ch_mult} halves the image {len(self.ch_mult) - 1} times; "
                             f"use a resolution that is a multiple of {self.factor} or fewer levels")
        for m in self.ch_mult:
            if (self.ch * m) % self.num_groups:
                raise ValueError(f"UNetConfig: width ch*m = {self.ch * m} is not divisible by num_groups = "
                                 f"{self.num_groups} (GroupNorm); change ch, ch_mult or num_groups")
        missing = [r for r in self.attn_resolutions if r not in self.levels]
        if missing:
            raise ValueError(f"UNetConfig.attn_resolutions {self.attn_resolutions}: no level is {missing} px a side; "
                             f"at resolution {self.resolution} with ch_mult {self.ch_mult} the levels are {self.levels}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"UNetConfig.dropout must lie in [0, 1), got {self.dropout}")
        if not isinstance(self.num_classes, int) or isinstance(self.num_classes, bool) or self.num_classes < 0:
            raise ValueError(f"UNetConfig.num_classes must be an integer >= 0 (0: unconditional), got {self.num_classes!r}")
        if not 0.0 <= self.class_dropout_prob < 1.0:
            raise ValueError(f"UNetConfig.class_dropout_prob must lie in [0, 1), got {self.class_dropout_prob}")

    @property
    def factor(self) -> int:
        """How much the lowest level is smaller than the image: ``2 ** (len(ch_mult) - 1)``."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def levels(self) -> tuple[int, ...]:
        """The side in pixels of every level, e.g. ``(256, 128, 64, 32, 16)`` for the paper's configuration."""
        return tuple(self.resolution // 2**i for i in range(len(self.ch_mult)))

    @property
    def temb_channels(self) -> int:
        """Width of the timestep (and label) embedding: ``4 ch``, as in DDPM."""
        return 4 * self.ch

    @property
    def null_label(self) -> int:
        """The label of "no class" (classifier-free guidance; the only label of an unconditional model)."""
        return self.num_classes


CONFIGS: dict[str, UNetConfig] = {
    # Section 4.3.4 at 256 px: 4 halvings (256 -> 16), 2 residual blocks per level, attention at 16x16 only
    # (the lowest level and the middle block). 3 classes (AFHQ); get_config("paper", num_classes=0) for CelebA-HQ.
    "paper": UNetConfig(resolution=256, ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,),
                        num_classes=3),
    # The CPU toy on 32 px toy faces (3 classes), for ~2000 training steps at batch 64 and 1000-step sampling on a
    # 2-core CPU. Where it departs from the paper: 3 halvings (32 -> 4 px; a fourth would leave 2x2), widths 16-32
    # instead of 128-512, 1 residual block per level instead of 2 (so 2 on the way up), 8 groups, and attention at
    # the lowest level (4x4) and in the middle block instead of at 16x16: the paper's 16x16 is its lowest level
    # (256 / 16), and at batch 150 a 16x16 attention costs more than the rest of this network on a CPU.
    # Measured with one thread on the course's 2-core CPU (the other core busy): 0.38M parameters, a forward pass at
    # batch 150 (no grad) 0.41-0.48 s, a training step at batch 64 (AdamW) 0.53-0.63 s, so 2000 steps take ~20 min
    # and 1000 DDPM steps for 150 images ~8 min (twice that with guidance). Nothing of this shape reaches 40 ms:
    # ch 8 runs at 0.14 s / 0.19 s but its held-out epsilon loss after 600 steps was twice this one's (0.051 vs
    # 0.025). Trained by the toy32 preset (2000 steps, lr 2e-3), DDPM sampling with clip_x0 gives faces of the
    # asked class; without the clamping, samples drift to saturated colour (see baseline.PixelDiffusion.generate).
    "toy": UNetConfig(resolution=32, ch=16, ch_mult=(1, 2, 2, 2), num_res_blocks=1, attn_resolutions=(4,),
                      num_groups=8, num_classes=3),
}


def get_config(name: str, **overrides) -> UNetConfig:
    """A named configuration from :data:`CONFIGS`, with fields replaced by ``overrides`` (e.g. ``resolution=64``)."""
    return named_config(CONFIGS, name, "U-Net", **overrides)


class TimeResBlock(ResBlock):
    """DDPM's residual block: :class:`~fftd_course.blocks.ResBlock` with the timestep embedding added in the middle.

    ``h = Conv(Swish(GN(x))) + Linear(Swish(temb))`` (one number per channel, broadcast over the pixels), then
    ``Conv(Dropout(Swish(GN(h))))`` and the shortcut: the parent's layers, plus the projection ``temb_proj``.
    """

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float = 0.0,
                 num_groups: int = 32):
        super().__init__(in_channels, out_channels, dropout, num_groups)
        self.temb_proj = nn.Linear(temb_channels, out_channels)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        h = self.conv1(swish(self.norm1(x)))
        h = h + self.temb_proj(swish(temb))[:, :, None, None]  # (B, C_out) -> (B, C_out, 1, 1)
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        return self.shortcut(x) + h


class UNet(nn.Module):
    """DDPM's U-Net (section 4.3.4): ``model(x_t, t, y) -> eps`` with ``eps`` of ``x_t``'s shape.

    ``UNet("toy")``, ``UNet(get_config("paper", num_classes=0))``. ``x_t`` is ``(B, in_channels, resolution,
    resolution)``, ``t`` a LongTensor ``(B,)`` of 0-based timesteps, ``y`` a LongTensor ``(B,)`` of labels in
    ``[0, num_classes]`` (``num_classes`` is the null label) or ``None`` (every sample unconditional). The
    forward pass has no host-device synchronisation; its shape is fixed by the configuration.
    """

    def __init__(self, config: UNetConfig | str):
        super().__init__()
        self.config = c = get_config(config) if isinstance(config, str) else config
        if not isinstance(c, UNetConfig):
            raise TypeError(f"UNet takes a UNetConfig or a configuration name ({sorted(CONFIGS)}), got {type(c).__name__}")
        tc = c.temb_channels
        self.temb = nn.Sequential(nn.Linear(c.ch, tc), nn.SiLU(), nn.Linear(tc, tc))
        self.label_emb = LabelEmbedder(c.num_classes, tc, c.class_dropout_prob) if c.num_classes else None
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, kernel_size=3, padding=1)
        self.down, skips = self._build_down()
        mid = c.ch * c.ch_mult[-1]
        self.mid = nn.ModuleList([TimeResBlock(mid, mid, tc, c.dropout, c.num_groups), AttnBlock(mid, num_groups=c.num_groups),
                                  TimeResBlock(mid, mid, tc, c.dropout, c.num_groups)])
        self.up = self._build_up(skips)
        self.norm_out = group_norm(c.ch * c.ch_mult[0], c.num_groups)
        self.conv_out = nn.Conv2d(c.ch * c.ch_mult[0], c.in_channels, kernel_size=3, padding=1)
        self.initialize_weights()

    def _build_down(self) -> tuple[nn.ModuleList, list[int]]:
        """The down levels, and the channel count of every tensor they store for the up path (in order)."""
        c, tc = self.config, self.config.temb_channels
        down, skips, width = nn.ModuleList(), [c.ch], c.ch
        for i, (m, side) in enumerate(zip(c.ch_mult, c.levels)):
            level = nn.Module()
            level.blocks, level.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(c.num_res_blocks):
                level.blocks.append(TimeResBlock(width, c.ch * m, tc, c.dropout, c.num_groups))
                width = c.ch * m
                level.attn.append(AttnBlock(width, num_groups=c.num_groups) if side in c.attn_resolutions else nn.Identity())
                skips.append(width)
            level.downsample = Downsample(width) if i < len(c.ch_mult) - 1 else nn.Identity()
            if i < len(c.ch_mult) - 1:
                skips.append(width)
            down.append(level)
        return down, skips

    def _build_up(self, skips: list[int]) -> nn.ModuleList:
        """The up levels (stored lowest first, run in that order): ``num_res_blocks + 1`` blocks each, one per skip."""
        c, tc = self.config, self.config.temb_channels
        skips, up, width = list(skips), nn.ModuleList(), c.ch * c.ch_mult[-1]
        for i in reversed(range(len(c.ch_mult))):
            level = nn.Module()
            level.blocks, level.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(c.num_res_blocks + 1):
                level.blocks.append(TimeResBlock(width + skips.pop(), c.ch * c.ch_mult[i], tc, c.dropout, c.num_groups))
                width = c.ch * c.ch_mult[i]
                level.attn.append(AttnBlock(width, num_groups=c.num_groups) if c.levels[i] in c.attn_resolutions
                                  else nn.Identity())
            level.upsample = Upsample(width) if i > 0 else nn.Identity()
            up.append(level)
        return up

    @property
    def null_label(self) -> int:
        return self.config.null_label

    def initialize_weights(self) -> None:
        """Initialise every parameter, and say why (after DDPM's ``default_init``).

        1. Every convolution and linear layer: Xavier-uniform weights (DDPM's ``variance_scaling(1, 'fan_avg',
           'uniform')``), zero biases: activations keep roughly their variance through each layer.
        2. The last convolution of every residual block and the output projection of every attention block:
           zero (DDPM scales them by 1e-10). Each block then starts as its shortcut, so the network starts as a
           shallow one, as adaLN-Zero makes FFTD start (:meth:`fftd_course.fftd.FFTD.initialize_weights`).
        3. The output convolution: zero, so that the first prediction is ``eps = 0``, the mean of the target.
        4. The label table (class-conditional models): normal with std 1 (PyTorch's and improved-diffusion's
           default): the label starts as strong in the conditioning vector as the timestep.
        """

        self.apply(xavier_init)
        for m in self.modules():
            last = m.conv2 if isinstance(m, TimeResBlock) else m.proj_out if isinstance(m, AttnBlock) else None
            if last is not None:
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        if self.label_emb is not None:
            nn.init.normal_(self.label_emb.embedding_table.weight, std=1.0)

    def check_inputs(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> None:
        """Clear errors for inputs the model cannot take (``configs.check_eps_inputs``, as the FFTD's)."""
        c = self.config
        check_eps_inputs(x_t, t, y, (c.in_channels, c.resolution, c.resolution), c.num_classes, "UNet",
                         "build it with get_config(..., resolution=, in_channels=) to match the data", "images")

    def embed(self, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The conditioning vector ``(B, 4 ch)``: timestep MLP, plus the label embedding (null label for ``None``)."""
        emb = self.temb(timestep_embedding(t, self.config.ch))
        if self.label_emb is not None:
            emb = emb + self.label_emb(torch.full_like(t, self.null_label) if y is None else y)
        return emb

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self.check_inputs(x_t, t, y)
        emb = self.embed(t, y)
        if x_t.device.type == "cpu":  # oneDNN's convolutions at 8-64 channels: 2-4x faster on channels-last tensors
            x_t = x_t.contiguous(memory_format=torch.channels_last)
        h = self.conv_in(x_t)
        hs = [h]
        for level in self.down:  # resolution, resolution/2, ..., resolution/factor
            for block, attn in zip(level.blocks, level.attn):
                h = attn(block(h, emb))
                hs.append(h)
            if not isinstance(level.downsample, nn.Identity):
                h = level.downsample(h)
                hs.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, emb)), emb)
        for level in self.up:  # back up: each block takes the running tensor and one stored skip
            for block, attn in zip(level.blocks, level.attn):
                h = attn(block(torch.cat([h, hs.pop()], dim=1), emb))
            h = level.upsample(h)
        return self.conv_out(swish(self.norm_out(h))).contiguous()  # (B, C, H, W) in the usual layout


def describe(config: UNetConfig | str) -> str:
    """One line: the levels with their widths and where attention is, and the parameter count."""
    c = get_config(config) if isinstance(config, str) else config
    levels = ", ".join(f"{s}px x{c.ch * m}{' +attn' if s in c.attn_resolutions else ''}" for s, m in zip(c.levels, c.ch_mult))
    return f"U-Net {levels}; {c.num_res_blocks} res blocks down, {c.num_res_blocks + 1} up; " \
           f"{count_parameters(UNet(c)) / 1e6:.2f}M parameters"

