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
# The IVQ-VAE's encoder turns a $3\times H\times W$ image into a small latent grid and its decoder turns it back
# (section 3.1), both with the same few bricks:
#
# | brick | paper | what it does |
# |---|---|---|
# | input convolution | eq. 1 | $h_0 = \mathrm{Conv}_{3\times3}(x)$, $C \to C_h$ channels |
# | residual block | eq. 2 | $h + F(h)$, $F$: GroupNorm, Swish, $3\times3$ convolutions |
# | downsample | eq. 3 | stride-2 $3\times3$ convolution: halves height and width |
# | upsample | eq. 6 | nearest-neighbour $\times 2$, then a $3\times3$ convolution |
# | output convolution | eq. 7 | $\hat{x} = \tanh(\mathrm{Conv}_{3\times3}(h))$, $C_h \to C$ channels |
#
# **In this chapter you will** see why GroupNorm, not BatchNorm, suits the paper's batch size of 1; build the
# residual block (eq. 2 in the reference form) and down- and upsampling, following the shapes through an
# encoder; measure what the skip connection does to gradients in deep stacks; and, in the exercises, derive Swish's
# gradient, build the original ResNet's block and predict how it trains, and find two bugs in a hand-written GroupNorm.

# %%
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn

import fftd_course
from fftd_course import blocks, checks, data, viz

device = fftd_course.setup_chapter(seed=0)
images, labels = data.make_toy_faces(8, size=32, seed=0)
print("a batch of toy faces:", tuple(images.shape))

# %% [markdown]
# ## Eq. 1: the input convolution
#
# The encoder starts by lifting the 3 colour channels to $C_h$ feature channels with a $3\times3$
# convolution of stride 1 and padding 1, so height and width stay the same,
# $$h_0 = \mathrm{Conv}_{3\times3}(x). \tag{1}$$ Untrained, its filters are random; each
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
# The paper trains with **batch size 1** (its section 4.2; [E9](../docs/ERRATA.md#e9)). BatchNorm normalises each channel with
# statistics over the *batch*, and in evaluation it switches to running averages collected during
# training. With one image per batch those two regimes disagree, and on a $1\times 1$ feature map BatchNorm
# cannot even compute a variance. GroupNorm normalises each sample on its own, over groups of channels,
# so it computes the same thing whatever the batch size, in training and in evaluation.
#
# GroupNorm splits the $C$ channels into $G$ groups of $C/G$ neighbouring channels and standardises
# each (sample, group) with the mean $\mu_{b,g}$ and variance $\sigma^2_{b,g}$ of its $\frac{C}{G} H W$
# values, then scales and shifts every channel with learned $\gamma_c, \beta_c$:
# $$\mathrm{GN}(x)_{b,c,h,w} = \gamma_c \, \frac{x_{b,c,h,w} - \mu_{b,g(c)}}{\sqrt{\sigma^2_{b,g(c)} + \epsilon}} + \beta_c .$$
# No statistic crosses the batch, so one sample's output cannot depend on the others (exercise 3 has you
# find two bugs in a hand-written version):

# %%
gn = blocks.group_norm(32, num_groups=8)  # the package's helper: GroupNorm(8 groups, eps=1e-6)
torch.testing.assert_close(gn(h0)[:1], gn(h0[:1]))
print("GroupNorm of image 0 alone equals its output inside the batch of", len(h0))

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
# The paper's non-linearity is Swish, $\mathrm{Swish}(x) = x \, \sigma(x)$ with the logistic sigmoid
# $\sigma$ (under eq. 2; PyTorch calls it SiLU). Unlike ReLU it is smooth, lets small negative values
# through, and is not monotonic: it dips below zero before rising (the run below finds where). Its
# gradient, computed here by autograd, is zero only at that one point, so no unit "dies"
# as ReLU units can.

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
# Eq. 2 of the paper reads
# $$h_{i+1} = h_i + \mathrm{Conv}_{3\times3}\big(\mathrm{Swish}(\mathrm{GroupNorm}(h_i))\big): \tag{2}$$
# one normalise-activate-convolve unit, added back to its input.
# The reference implementation the paper builds on (VQGAN, in `taming-transformers`) uses **two** such
# units per block, with dropout before the second convolution, and when a block changes the channel
# count (at the start of a wider level) the skip becomes a $1\times 1$ convolution, because $h + F(h)$ needs both
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

# %% [markdown]
# How much bigger is the reference block than the single unit that eq. 2 prints?

# %%
count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
one_unit = count(blocks.group_norm(128)) + count(nn.Conv2d(128, 128, 3, padding=1))  # what eq. 2 prints
print(f"parameters at 128 channels: eq. 2's single unit {one_unit:,}, reference block {count(blocks.ResBlock(128)):,}")

# %% [markdown]
# > **What the paper says / what we chose** (E4 in [`docs/ERRATA.md`](../docs/ERRATA.md)). Eq. 2 prints one
# > (GroupNorm, Swish, Conv3×3) unit per residual block and says nothing about blocks that change the
# > channel count. `fftd_course.blocks.ResBlock` uses the reference VQGAN form: two units, dropout
# > before the second convolution, and a $1\times 1$ convolution on the skip path when the channel count
# > changes. It has about twice the parameters per block (printed above); the paper's own
# > description of "two residual blocks per level" is kept, so the total depth is the reference's.

# %% [markdown]
# ## Downsample (eq. 3) and Upsample (eq. 6)
#
# Between levels the encoder halves the resolution with a $3\times3$ convolution of stride 2 (eq. 3), and
# the decoder doubles it with nearest-neighbour interpolation followed by a $3\times3$ convolution (eq. 6) (interpolating first
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

# %%
as_printed = nn.Conv2d(32, 32, 3, stride=2, padding=1)  # eq. 6's convolution with the stride its text gives
doubled = F.interpolate(h0, scale_factor=2.0, mode="nearest")
print(f"eq. 6 with a stride-2 convolution: {tuple(h0.shape)} -> {tuple(as_printed(doubled).shape)}")

# %% [markdown]
# > **What the paper says / what we chose** ([E21](../docs/ERRATA.md#e21)). The sentence before eq. 6 gives the
# > upsampling convolution a stride of 2. After the ×2 interpolation that halves the map again, so the block
# > would return the size it was given (the cell above). Eq. 17, FFTD's upsampling, and the reference
# > VQGAN `Upsample` use stride 1, and so does `blocks.Upsample`: nearest ×2, then a stride-1 $3\times3$
# > convolution.

# %% [markdown]
# Follow the shapes through a small encoder of three levels, as chapter 05 will build it: every level but
# the last ends with a downsample, so a $32\times32$ image becomes a $4\times4$ grid after three halvings
# ($f = 8$; the paper's $f = 64$ needs six halvings of a $256\times256$ image to reach the same grid).

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
# The decoder ends with
# $$\hat{x} = \tanh\big(\mathrm{Conv}_{3\times3}(h)\big), \quad C_h \to 3 \text{ channels}. \tag{7}$$
# The tanh bounds every pixel to $(-1, 1)$,
# exactly the range the images were scaled to, so the reconstruction can never leave the data range.

# %%
conv_out = nn.Conv2d(32, 3, 3, padding=1)
x_hat = torch.tanh(conv_out(h0 * 10))  # scaled up on purpose: even large features stay in range
print(f"x_hat {tuple(x_hat.shape)}, range [{x_hat.min():.3f}, {x_hat.max():.3f}]")

# %% [markdown]
# ## Why the skip connection: gradient norms through a deep stack
#
# A residual block adds its input back: $h + F(h)$. The Jacobian of the output with respect to the input
# is then $I + \partial F / \partial h$, so the gradient always has a direct path back. Without the skip, the gradient that reaches a
# block is a product of one Jacobian per block above it, and its size can drift geometrically with depth.
# We measure it: a stack of 32 blocks (32 channels, $16\times 16$ maps, PyTorch's default initialisation), a loss
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


# %%
def plot_grad_norms(norms: dict[str, torch.Tensor]) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, values in norms.items():
        ax.plot(range(1, len(values) + 1), values, "o-", ms=3, label=name)
    ax.set_yscale("log"), ax.set_xlabel("block (1 = nearest the input)"), ax.set_ylabel("‖gradient of conv1 weights‖")
    ax.legend(), ax.grid(alpha=0.3)
    plt.show()
    for name, values in norms.items():
        print(f"{name:>22}: largest / smallest gradient norm across the {len(values)} blocks = {values.max() / values.min():.1f}")


# %%
norms = {"with skip (ResBlock)": grad_norm_per_block(blocks.ResBlock), "without skip": grad_norm_per_block(NoSkipBlock)}
plot_grad_norms(norms)

# %% [markdown]
# Read the ratios printed above: they say how differently sized the gradients of the 32 blocks are. A
# single learning rate has to suit every block at once, which is easy when the ratio is a small number
# and hopeless when it spans orders of magnitude. The paper's $f = 64$ encoder has seven levels of two
# blocks each plus a middle block, and the decoder as many again: the skip is what makes that depth
# trainable.


# %% [markdown]
# ## Exercises
#
# **Exercise 1 (warm-up).** The Swish section let autograd draw $\mathrm{Swish}'(x)$. Derive it by hand
# (product rule, and $\sigma'(x) = \sigma(x)\,(1 - \sigma(x))$) and write `swish_derivative(x)` in
# closed form, without autograd. Where is it zero, and what is its value for large negative $x$?

# %%
def swish_derivative(x: torch.Tensor) -> torch.Tensor:
    """d/dx [x * sigmoid(x)], elementwise, in closed form."""
    ### BEGIN SOLUTION
    s = torch.sigmoid(x)
    return s * (1 + x * (1 - s))
    ### END SOLUTION


# %%
checks.check_swish_derivative(swish_derivative)

# %% [markdown]
# **Exercise 2 (a variant, then predict and measure).** The original ResNet (He et al., 2016) orders its block
# differently from eq. 2: each convolution comes *first* and its normalisation after it, and the last activation
# acts on the *sum*,
# $$h_{i+1} = \mathrm{Swish}\Big(s(h_i) + \mathrm{GN}_2\big(\mathrm{Conv}_2(\mathrm{Swish}(\mathrm{GN}_1(\mathrm{Conv}_1(h_i))))\big)\Big),$$
# with $s$ the identity, or a $1\times1$ convolution when the channel count changes. Its skip path is no longer
# the identity: every block's Swish sits on it.
#
# *Before writing it, write your prediction in the cell below*, for a stack of 32 such blocks in the
# skip-connection experiment. The spread of gradient norms across the blocks: `"like ResBlock"`, `"in between"`
# or `"like no skip"` (the two spreads printed there)? The activations' scale after 32 blocks, against the input's:
# `"shrinks"`, `"about the same"` or `"grows"`? Then write `forward` (the layers are given) and run the measurement.

# %%
def predicted_spread() -> dict[str, str]:
    """32 post-activation blocks: the spread of gradient norms and the activations' scale after the stack."""
    ### BEGIN SOLUTION
    return {"gradient spread": "in between", "activation scale": "grows"}
    ### END SOLUTION


# %%
class PostActivationBlock(nn.Module):
    """The original ResNet's order: Conv, GroupNorm, Swish, Conv, GroupNorm, add the skip, then Swish."""

    def __init__(self, in_channels: int, out_channels: int, num_groups: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm1 = blocks.group_norm(out_channels, num_groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.norm2 = blocks.group_norm(out_channels, num_groups)
        self.shortcut = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        h = blocks.swish(self.norm1(self.conv1(x)))
        return blocks.swish(self.shortcut(x) + self.norm2(self.conv2(h)))
        ### END SOLUTION


# %%
checks.check_post_activation_block(checks.with_prediction(predicted_spread, PostActivationBlock))

# %%
measured = None
try:
    spreads = {**norms, "post-activation": grad_norm_per_block(PostActivationBlock)}
    plot_grad_norms(spreads)
    r, r_skip, r_none = (float(spreads[k].max() / spreads[k].min())
                         for k in ("post-activation", "with skip (ResBlock)", "without skip"))
    word = "like ResBlock" if r < 1.5 * r_skip else "like no skip" if r > r_none / 1.5 else "in between"
    torch.manual_seed(0)
    stack = nn.Sequential(*[PostActivationBlock(32, 32, num_groups=8) for _ in range(32)])
    with torch.no_grad():
        x_in = torch.randn(4, 32, 16, 16)
        growth = float(stack(x_in).std() / x_in.std())
    scale = "grows" if growth > 1.5 else "shrinks" if growth < 1 / 1.5 else "about the same"
    measured = {"gradient spread": f"{word} ({r:.1f}; ResBlock {r_skip:.1f}, no skip {r_none:.0f})",
                "activation scale": f"{scale} (x{growth:.2f} after 32 blocks)"}
except NotImplementedError:
    print("finish exercise 2 to see this measurement")

# %%
checks.compare_prediction(predicted_spread, measured)

# %% [markdown]
# Compare with your prediction. GroupNorm sits inside each branch, so it never rescales the sum that travels
# down the stack; what the skip path carries is whatever the blocks left on it. He et al. moved the activation off
# that path in their second ResNet paper (*Identity Mappings in Deep Residual Networks*, 2016) for this reason:
# VQGAN's blocks, and `blocks.ResBlock`, keep the order of eq. 2, with normalisation and Swish *before* each
# convolution and nothing after the sum.

# %% [markdown]
# **Exercise 3 (find the bug, stretching).** Here is GroupNorm written out by hand. It runs, the output has the right
# shape, and every sample comes out with mean 0 and standard deviation close to 1. It still has **two
# bugs**: the check's report shows how far it is from `F.group_norm`.

# %%
def buggy_group_norm(x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor,
                     eps: float = 1e-6) -> torch.Tensor:
    b, c, h, w = x.shape
    g = x.reshape(b, c // groups, groups, h, w)
    mean = g.mean(dim=(1, 3, 4), keepdim=True)
    var = g.var(dim=(1, 3, 4), keepdim=True)
    g = (g - mean) / torch.sqrt(var + eps)
    return g.reshape(b, c, h, w) * weight.view(1, c, 1, 1) + bias.view(1, c, 1, 1)


out = buggy_group_norm(h0, 8, torch.ones(32), torch.zeros(32))
print(f"shape {tuple(out.shape)}, per-sample mean {out.mean(dim=(1, 2, 3)).abs().max():.1e}, "
      f"per-sample std {out.std(dim=(1, 2, 3)).min():.4f} to {out.std(dim=(1, 2, 3)).max():.4f}")
with checks.lenient():  # show the FAIL without stopping the test run
    checks.check_group_norm(buggy_group_norm)

# %% [markdown]
# Write the corrected version. The check compares it with `F.group_norm` on small maps, where both bugs
# show.

# %%
def group_norm(x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor,
               eps: float = 1e-6) -> torch.Tensor:
    """GroupNorm of x (B, C, H, W) with `groups` groups of neighbouring channels and a per-channel affine."""
    ### BEGIN SOLUTION
    b, c, h, w = x.shape
    g = x.reshape(b, groups, c // groups, h, w)
    mean = g.mean(dim=(2, 3, 4), keepdim=True)
    var = g.var(dim=(2, 3, 4), keepdim=True, unbiased=False)
    g = (g - mean) / torch.sqrt(var + eps)
    return g.reshape(b, c, h, w) * weight.view(1, c, 1, 1) + bias.view(1, c, 1, 1)
    ### END SOLUTION


# %%
checks.check_group_norm(group_norm)

# %% [markdown]
# ## Going further
#
# No checks here: questions to explore with the code above.
#
# - **Zero-initialised residual branches.** Zero the last convolution of every block (`conv2` of
#   `blocks.ResBlock`) before the gradient experiment. What does each block compute at initialisation, and what
#   gradient reaches `conv1`? DiT and FFTD use the same idea (chapter 08's adaLN-Zero).
# - **Eq. 2 as printed.** Write the single-unit block (one GroupNorm, Swish, convolution unit and the skip) and
#   run the gradient experiment on it. Does halving the convolutions per block change the spread?
# - **Which of exercise 3's two bugs matters in training?** Once your version passes, put each bug back on its
#   own and measure the largest output difference from `F.group_norm` on a $256\times256$ map with 32 groups,
#   and on a $4\times4$ map with 128 channels. Which bug could a network learn to undo, and which not?
# - **BatchNorm at larger batches.** Repeat the GroupNorm section's train/eval comparison with batches of 8 and
#   64. From what batch size on would you trust BatchNorm here?
# - **Depth of the paper's encoder.** Count the residual blocks of the paper's $f = 64$ encoder and decoder
#   (`fftd_course.ivqvae.CONFIGS["paper-f64"]`), and their parameters with one unit and with two.

# %% [markdown]
# ## Summary
#
# - GroupNorm computes the same thing at any batch size and in training and evaluation; BatchNorm at batch
#   size 1 does not (and fails on $1\times1$ maps).
# - The residual block is $h + F(h)$; we use the reference form (two units, $1\times1$ skip when channels
#   change) rather than eq. 2's single unit, and say so (E4).
# - Downsample and Upsample halve and double the resolution; $f = 2^{\text{number of downsamples}}$.
# - The skip connection keeps gradients alive through deep stacks, as long as nothing sits on it: the original
#   ResNet's Swish after the sum spreads the gradients more (exercise 2).
#
# Next: chapter 02 adds self-attention, the IVQ-VAE's one global operation.

# %%
print(f"chapter ran in {fftd_course.chapter_seconds():.1f} s on {device}")
