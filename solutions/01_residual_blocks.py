# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext,-jupytext.text_representation.jupytext_version,-jupytext.text_representation.format_version
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Residual blocks: the bricks of the IVQ-VAE
#
# The IVQ-VAE's encoder turns a 3×H×W image into a small latent grid; its decoder turns the grid back
# into an image (paper section 3.1). Both are stacks of the same few bricks, which this chapter builds:
#
# | brick | paper | what it does |
# |---|---|---|
# | input convolution | eq. 1 | `h0 = Conv3x3(x; C -> C_h)` |
# | residual block | eq. 2 | `h + F(h)`, with `F` made of GroupNorm, Swish and 3×3 convolutions |
# | downsample | eq. 3 | `Conv3x3, stride 2`: halves height and width |
# | upsample | eq. 6 | nearest-neighbour ×2, then `Conv3x3` |
# | output convolution | eq. 7 | `x_hat = tanh(Conv3x3(h; C_h -> C))` |
#
# **In this chapter you will**
# - see why the paper's models normalise with GroupNorm, not BatchNorm, at its batch size of 1;
# - build Swish and the residual block, and choose between the paper's printed form and the reference one;
# - build downsampling and upsampling and follow the shapes through an encoder;
# - measure why the skip connection matters: gradient norms through deep stacks with and without it;
# - write Swish, the residual block's forward pass and the upsampler yourself.

# %%
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn

import fftd_course
from fftd_course import blocks, checks, data, viz

torch.manual_seed(0)
device = fftd_course.default_device()
images, labels = data.make_toy_faces(8, size=32, seed=0)
print("device:", device, "| a batch of toy faces:", tuple(images.shape))

# %% [markdown]
# ## Eq. 1: the input convolution
#
# The encoder starts by lifting the 3 colour channels to `C_h` feature channels with a 3×3 convolution of
# stride 1 and padding 1, so height and width stay the same. Untrained, its filters are random; each
# output channel is some local mixture of colours and edges.

# %%
conv_in = nn.Conv2d(3, 32, kernel_size=3, padding=1)  # eq. 1 with C_h = 32
h0 = conv_in(images)
print("x:", tuple(images.shape), "-> h0:", tuple(h0.shape))

fig, axes = plt.subplots(1, 9, figsize=(11, 1.5))
axes[0].imshow(viz.to_unit_range(images[0]).permute(1, 2, 0)), axes[0].set_title("x", fontsize=8)
for i, ax in enumerate(axes[1:]):
    ax.imshow(h0[0, i].detach(), cmap="coolwarm"), ax.set_title(f"h0 channel {i}", fontsize=8)
for ax in axes:
    ax.set_axis_off()
plt.show()

# %% [markdown]
# ## Normalisation at batch size 1: GroupNorm, not BatchNorm
#
# The paper trains with **batch size 1** (its section 4.2). BatchNorm normalises each channel with
# statistics over the *batch*, and in evaluation it switches to running averages collected during
# training. With one image per batch those two regimes disagree, and on a 1×1 feature map BatchNorm
# cannot even compute a variance. GroupNorm normalises each sample on its own, over groups of channels,
# so it computes the same thing whatever the batch size, in training and in evaluation.
#
# Here is GroupNorm written out: split the C channels into G groups, then standardise each (sample, group).

# %%
def group_norm_from_scratch(x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor,
                            eps: float = 1e-6) -> torch.Tensor:
    b, c, h, w = x.shape
    g = x.reshape(b, groups, c // groups, h, w)                # (B, G, C/G, H, W)
    mean = g.mean(dim=(2, 3, 4), keepdim=True)
    var = g.var(dim=(2, 3, 4), keepdim=True, unbiased=False)
    g = (g - mean) / torch.sqrt(var + eps)
    return g.reshape(b, c, h, w) * weight.view(1, c, 1, 1) + bias.view(1, c, 1, 1)


gn = blocks.group_norm(32, num_groups=8)  # the package's helper: GroupNorm(8 groups, eps=1e-6)
torch.testing.assert_close(group_norm_from_scratch(h0, 8, gn.weight, gn.bias), gn(h0))
print("our GroupNorm equals the package's blocks.group_norm")

# %% [markdown]
# Now the measurement. We train-mode both norms on 200 single images (as a batch-1 training loop would),
# then compare the output for one image in training mode with the output in evaluation mode.

# %%
bn, gn = nn.BatchNorm2d(32), blocks.group_norm(32, num_groups=8)
stream, _ = data.make_toy_faces(200, size=32, seed=1)
with torch.no_grad():
    feats = conv_in(stream)
    for i in range(len(feats)):  # batch size 1, as in the paper
        bn(feats[i : i + 1]), gn(feats[i : i + 1])
    one = feats[:1]
    bn.train(), gn.train()
    bn_train, gn_train = bn(one), gn(one)
    bn.eval(), gn.eval()
    bn_eval, gn_eval = bn(one), gn(one)
print(f"BatchNorm: mean |train - eval| output difference = {(bn_train - bn_eval).abs().mean():.4f}")
print(f"GroupNorm: mean |train - eval| output difference = {(gn_train - gn_eval).abs().mean():.4f}")

bn.train()
try:
    bn(torch.randn(1, 32, 1, 1))  # a 1x1 map at batch size 1: one value per channel
except ValueError as e:
    print("BatchNorm on a (1, 32, 1, 1) input:", e)
print("GroupNorm on the same input works, output shape:", tuple(gn(torch.randn(1, 32, 1, 1)).shape))

# %% [markdown]
# The package's `group_norm` uses 32 groups by default (the reference autoencoders' choice), and
# insists that the group count divides the channel count, with a message that says so:

# %%
try:
    blocks.group_norm(48, num_groups=32)
except ValueError as e:
    print("ValueError:", e)

# %% [markdown]
# ## Swish
#
# The paper's non-linearity is Swish, `Swish(x) = x · sigmoid(x)` (under eq. 2; PyTorch calls it SiLU).
# Unlike ReLU it is smooth, lets small negative values through, and is not monotonic: it dips to about
# -0.28 near x = -1.28 before rising. Its gradient never becomes exactly zero, so no unit "dies".

# %%
x = torch.linspace(-5, 5, 401, requires_grad=True)
swish_x = x * torch.sigmoid(x)
(grad_swish,) = torch.autograd.grad(swish_x.sum(), x)
fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3))
a.plot(x.detach(), swish_x.detach(), label="Swish"), a.plot(x.detach(), F.relu(x).detach(), "--", label="ReLU")
a.set_title("activation"), a.legend(), a.grid(alpha=0.3)
b.plot(x.detach(), grad_swish, label="Swish'"), b.plot(x.detach(), (x > 0).float(), "--", label="ReLU'")
b.set_title("derivative"), b.legend(), b.grid(alpha=0.3)
plt.show()
i_min = swish_x.argmin()
print(f"minimum of Swish on this grid: {swish_x[i_min]:.3f} at x = {x[i_min]:.2f}")
torch.testing.assert_close(blocks.swish(x), swish_x)
print("x * sigmoid(x) equals the package's blocks.swish")

# %% [markdown]
# ## The residual block (eq. 2)
#
# Eq. 2 of the paper reads `h_{i+1} = h_i + Conv3x3(Swish(GroupNorm(h_i)))`: one normalise-activate-convolve
# unit, added back to its input. Here it is, as printed:

# %%
class PaperResBlock(nn.Module):
    """Eq. 2 exactly as printed: a single (GroupNorm, Swish, Conv3x3) unit and the identity skip."""

    def __init__(self, channels: int, num_groups: int = 32):
        super().__init__()
        self.norm = blocks.group_norm(channels, num_groups)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(blocks.swish(self.norm(x)))


# %% [markdown]
# The reference implementation the paper builds on (VQGAN, in `taming-transformers`) uses **two** such
# units per block, with dropout before the second convolution, and when a block changes the channel
# count (at the start of a wider level) the skip becomes a 1×1 convolution, because `h + F(h)` needs both
# terms to have the same shape. Built step by step:

# %%
class ResBlockFromScratch(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0, num_groups: int = 32):
        super().__init__()
        self.norm1 = blocks.group_norm(in_channels, num_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = blocks.group_norm(out_channels, num_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(blocks.swish(self.norm1(x)))           # unit 1
        h = self.conv2(self.dropout(blocks.swish(self.norm2(h))))  # unit 2
        return self.shortcut(x) + h                             # the skip connection


for c_in, c_out in [(32, 32), (32, 64)]:
    ours, package = ResBlockFromScratch(c_in, c_out, num_groups=8), blocks.ResBlock(c_in, c_out, num_groups=8)
    ours.load_state_dict(package.state_dict())  # same weights in ...
    torch.testing.assert_close(ours(h0), package(h0))  # ... same numbers out
    print(f"ResBlock {c_in}->{c_out}: ours equals blocks.ResBlock; output {tuple(package(h0).shape)}, "
          f"skip is {type(package.shortcut).__name__}")

count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
print(f"parameters at 128 channels: paper's printed block {count(PaperResBlock(128)):,}, "
      f"reference block {count(blocks.ResBlock(128)):,}")

# %% [markdown]
# > **What the paper says / what we chose** (E4). Eq. 2 prints one
# > (GroupNorm, Swish, Conv3×3) unit per residual block and says nothing about blocks that change the
# > channel count. `fftd_course.blocks.ResBlock` uses the reference VQGAN form: two units, dropout
# > before the second convolution, and a 1×1 convolution on the skip path when the channel count
# > changes. It has about twice the parameters per block (printed above); the paper's own
# > description of "two residual blocks per level" is kept, so the total depth is the reference's.

# %% [markdown]
# ## Downsample (eq. 3) and Upsample (eq. 6)
#
# Between levels the encoder halves the resolution with a 3×3 convolution of stride 2, and the decoder
# doubles it with nearest-neighbour interpolation followed by a 3×3 convolution (interpolating first
# avoids the checkerboard artefacts of transposed convolutions). The FFTD hourglass reuses both
# (eq. 16 and 17 are the same operations).

# %%
class DownsampleFromScratch(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)  # (B, C, H, W) -> (B, C, H/2, W/2)


class UpsampleFromScratch(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, C, H, W) -> (B, C, 2H, 2W)


for ours, package in [(DownsampleFromScratch(32), blocks.Downsample(32)), (UpsampleFromScratch(32), blocks.Upsample(32))]:
    ours.load_state_dict(package.state_dict())
    torch.testing.assert_close(ours(h0), package(h0))
    print(f"{type(package).__name__}: ours equals the package's; {tuple(h0.shape)} -> {tuple(package(h0).shape)}")

# %% [markdown]
# Follow the shapes through a small encoder of three levels, as chapter 05 will build it: every level but
# the last ends with a downsample, so a 32×32 image becomes a 4×4 grid after three halvings (f = 8; the
# paper's f = 64 needs six halvings of a 256×256 image to reach the same 4×4 grid).

# %%
levels = [32, 64, 64, 128]
h = conv_in(images)
print(f"{'input':>24}: {tuple(images.shape)}")
print(f"{'conv_in (eq. 1)':>24}: {tuple(h.shape)}")
c = levels[0]
for i, c_out in enumerate(levels):
    for _ in range(2):  # two residual blocks per level
        h = blocks.ResBlock(c, c_out, num_groups=8)(h)
        c = c_out
    print(f"{f'level {i}: 2 x ResBlock':>24}: {tuple(h.shape)}")
    if i < len(levels) - 1:
        h = blocks.Downsample(c)(h)
        print(f"{'Downsample (eq. 3)':>24}: {tuple(h.shape)}")
print(f"compression factor f = 32 / {h.shape[-1]} = {32 // h.shape[-1]}")

# %% [markdown]
# A size that cannot be halved gets a clear message rather than a shape error three layers later:

# %%
try:
    blocks.Downsample(3)(torch.randn(1, 3, 30, 30)[..., :15, :15])
except ValueError as e:
    print("ValueError:", e)

# %% [markdown]
# ## Eq. 7: the output convolution and tanh
#
# The decoder ends with `x_hat = tanh(Conv3x3(h; C_h -> 3))`. The tanh bounds every pixel to `(-1, 1)`,
# exactly the range the images were scaled to, so the reconstruction can never leave the data range.

# %%
conv_out = nn.Conv2d(32, 3, 3, padding=1)
x_hat = torch.tanh(conv_out(h0 * 10))  # scaled up on purpose: even large features stay in range
print(f"x_hat {tuple(x_hat.shape)}, range [{x_hat.min():.3f}, {x_hat.max():.3f}]")

# %% [markdown]
# ## Why the skip connection: gradient norms through a deep stack
#
# A residual block adds its input back: `h + F(h)`. The gradient of the output with respect to the input is
# then `I + dF/dh`, so it always has a direct path back. Without the skip, the gradient that reaches a
# block is a product of one Jacobian per block above it, and its size can drift geometrically with depth.
# We measure it: a stack of 32 blocks (32 channels, 16×16 maps, PyTorch's default initialisation), a loss
# that projects the output on a fixed random direction, and the gradient norm of each block's first
# convolution, averaged over three random initialisations.

# %%
class NoSkipBlock(blocks.ResBlock):
    """The same block with its skip connection removed: only F(h)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(blocks.swish(self.norm1(x)))
        return self.conv2(self.dropout(blocks.swish(self.norm2(h))))


def grad_norm_per_block(block_cls: type[nn.Module], depth: int = 32, seeds: int = 3) -> torch.Tensor:
    runs = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        stack = nn.Sequential(*[block_cls(32, 32, num_groups=8) for _ in range(depth)])
        out = stack(torch.randn(4, 32, 16, 16))
        (out * torch.randn_like(out)).mean().backward()  # a fixed random projection of the output
        runs.append(torch.tensor([block.conv1.weight.grad.norm().item() for block in stack]))
    return torch.stack(runs).mean(0)


norms = {"with skip (ResBlock)": grad_norm_per_block(blocks.ResBlock), "without skip": grad_norm_per_block(NoSkipBlock)}
fig, ax = plt.subplots(figsize=(6, 3.5))
for name, values in norms.items():
    ax.plot(range(1, len(values) + 1), values, "o-", ms=3, label=name)
ax.set_yscale("log"), ax.set_xlabel("block (1 = nearest the input)"), ax.set_ylabel("‖gradient of conv1 weights‖")
ax.legend(), ax.grid(alpha=0.3)
plt.show()
for name, values in norms.items():
    print(f"{name:>22}: largest / smallest gradient norm across the 32 blocks = {values.max() / values.min():.1f}")

# %% [markdown]
# Read the ratios printed above: they say how differently sized the gradients of the 32 blocks are. A
# single learning rate has to suit every block at once, which is easy when the ratio is a small number
# and hopeless when it spans orders of magnitude. The paper's f = 64 encoder has seven levels of two
# blocks each plus a middle block, and the decoder as many again: the skip is what makes that depth
# trainable.

# %% [markdown]
# ## Exercises
#
# **Exercise 1.** Write Swish, `x · sigmoid(x)`, without calling `F.silu` or `blocks.swish`.

# %%
def swish(x: torch.Tensor) -> torch.Tensor:
    """Swish(x) = x * sigmoid(x) (eq. 2)."""
    ### BEGIN SOLUTION
    return x * torch.sigmoid(x)
    ### END SOLUTION


# %%
checks.check_swish(swish)

# %% [markdown]
# **Exercise 2.** Write the forward pass of the reference residual block: two (GroupNorm, Swish, Conv3×3)
# units with dropout before the second convolution, plus the skip connection. `MyResBlock` inherits its
# layers from `blocks.ResBlock` (`norm1`, `conv1`, `norm2`, `dropout`, `conv2`, and `shortcut`, which is the
# identity or a 1×1 convolution), and replaces only `forward` (calling `super().forward` would hand in the
# package's answer).

# %%
class MyResBlock(blocks.ResBlock):
    """The package's layers (norm1, conv1, norm2, dropout, conv2, shortcut), with your forward pass."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        return self.shortcut(x) + h
        ### END SOLUTION


# %%
checks.check_resblock(MyResBlock)

# %% [markdown]
# **Exercise 3.** Write the forward pass of the upsampler (eq. 6): nearest-neighbour interpolation by a
# factor of 2, then the 3×3 convolution.

# %%
class MyUpsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        ### END SOLUTION


# %%
checks.check_upsample(MyUpsample)

# %% [markdown]
# **Going further (no check).** Replace `NoSkipBlock` in the gradient experiment by the paper's
# `PaperResBlock` (one unit per block). Does one unit per block change the picture? And what happens to
# the "without skip" curve if you zero-initialise each block's last convolution?
#
# ## Summary
#
# - GroupNorm computes the same thing at any batch size and in training and evaluation; BatchNorm at batch
#   size 1 does not (and fails on 1×1 maps).
# - The residual block is `h + F(h)`; we use the reference form (two units, 1×1 skip when channels change)
#   rather than eq. 2's single unit, and say so.
# - Downsample and Upsample halve and double the resolution; f = 2^(number of downsamples).
# - The skip connection keeps gradients alive through deep stacks: measured above.
#
# Next: chapter 02 adds self-attention, the IVQ-VAE's one global operation.
