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
# # 07 · AdaptiveFusion: two token streams, two gates (eq. 18-25)
#
# The paper's own building block is **AdaptiveFusion** (section 3.2.3 of the paper, eq. 18-25 in
# [`docs/PAPER.md`](../docs/PAPER.md)). Wherever FFTD has two streams of tokens to merge, it does not simply add
# them: it weighs the first one **channel by channel** and the second one **token by token**, with weights
# computed from both, and adds a learnable share of a plain linear mix. The paper's Table 9 credits this
# block with most of its quality (FID 64.96 with plain addition, 9.64 with AdaptiveFusion).
#
# The paper prints two of these equations wrongly ([E1](../docs/ERRATA.md#e1), [E2](../docs/ERRATA.md#e2));
# this chapter shows what goes wrong and what the package `fftd_course.fusion` does instead.
#
# **In this chapter you will**
# - find the seven places where FFTD fuses, and the token shapes there (4×4, 2×2 and 1×1 grids);
# - meet the block's ancestor, CBAM's channel and spatial attention;
# - build eq. 18-25 one at a time on real tokens and check the result against `fusion.AdaptiveFusion`;
# - see numerically why `p_max` must be a max pool (E1) and why a ReLU belongs between the two linear
#   layers of eq. 20 (E2);
# - predict what a freshly initialised fusion computes, and count the parameters of Table 9's three fusions;
# - watch the two gates learn to pick the informative channels and tokens of a toy task;
# - write CBAM's reading of the channel gate, take the spatial gate apart on a 1×1 grid, and find three
#   bugs that no test on a fresh fusion can see.

# %%
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

import fftd_course
from fftd_course import checks, data, diagrams, diffusion, fftd, fusion

# Every tensor in this chapter is tiny (at most 128 x 16 x 64 numbers): one CPU thread is faster than several
# that wait for each other, and the chapter keeps its tensors on the CPU whatever the machine has.
fftd_course.setup_chapter(seed=0, threads=1)

# %% [markdown]
# ## 1. Where FFTD fuses, and on what
#
# FFTD (chapter 08) is a five-block Transformer hourglass on the 4×4 latent grid: Block1 at 4×4, Block2 at
# 2×2, Block3 at 1×1, Block4 at 2×2, Block5 at 4×4. Between blocks the token grid is halved by a strided
# convolution (eq. 16) or doubled by nearest interpolation and a convolution (eq. 17). AdaptiveFusion joins
# two streams of tokens $x_1, x_2 \in \mathbb{R}^{B \times L \times D}$ in three kinds of place:
#
# 1. **inside every block**: the attention output ($x_1$) with the feed-forward output ($x_2$); the package
#    runs the two branches in parallel on the same input ([E13](../docs/ERRATA.md#e13));
# 2. **the inner long skip**: Block2's output ($x_1$) with Block4's output ($x_2$), both on the 2×2 grid;
# 3. **the outer long skip**: Block1's output ($x_1$) with Block5's output ($x_2$), both on the 4×4 grid
#    ([E14](../docs/ERRATA.md#e14) says exactly what flows where).
#
# Let us run a small FFTD on stand-in latents and record the inputs of every fusion with forward hooks. A fresh
# FFTD closes every branch of every block (adaLN-Zero: the gates on the attention and MLP outputs start at 0,
# chapter 08 says why), so the fusions inside the blocks would see only zeros; to look at what they see
# during training we open those gates by setting their biases to 1.

# %%
faces, labels = data.make_toy_faces(4, size=32, seed=0)
pooled = F.adaptive_avg_pool2d(faces, 4)                      # (4, 3, 32, 32) -> (4, 3, 4, 4)
latents = torch.cat([pooled, pooled.mean(1, keepdim=True)], 1)  # a stand-in 4x4x4 latent per face
schedule = diffusion.Diffusion(diffusion.beta_schedule("linear_rescaled", 500))
t = torch.full((4,), 100)
x_t = schedule.q_sample(latents, t, torch.randn_like(latents))

model = fftd.FFTD("toy").eval()
D = model.config.hidden_size
with torch.no_grad():
    for block in model.blocks:                     # adaLN chunks: shift, scale, gate (attention), shift, scale, gate (MLP)
        block.adaLN_modulation[-1].bias[2 * D:3 * D] = 1.0
        block.adaLN_modulation[-1].bias[5 * D:6 * D] = 1.0
print(f"toy FFTD: D = {D}, block grids {model.config.block_grids}, input x_t {tuple(x_t.shape)}")

# %%
ROLES = {"blocks.0.fuse": "Block1: attention + MLP", "blocks.1.fuse": "Block2: attention + MLP",
         "blocks.2.fuse": "Block3: attention + MLP", "blocks.3.fuse": "Block4: attention + MLP",
         "skip_inner": "long skip Block2 + Block4", "blocks.4.fuse": "Block5: attention + MLP",
         "skip_outer": "long skip Block1 + Block5"}
seen = {}  # name -> (x1, x2), in the order the fusions run


def record(name: str):
    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        seen[name] = inputs
    return hook


hooks = [m.register_forward_hook(record(name)) for name, m in model.named_modules() if isinstance(m, fusion.Fusion)]
with torch.no_grad():
    eps = model(x_t, t, labels)
for h in hooks:
    h.remove()
print(f"{'fusion':<15} {'joins':<27} {'x1 = x2 shape':<15} grid")
for name, (a, b) in seen.items():
    side = math.isqrt(a.shape[1])
    print(f"{name:<15} {ROLES[name]:<27} {str(tuple(a.shape)):<15} {side}x{side}")
print(f"output eps {tuple(eps.shape)}")

# %% [markdown]
# Seven fusions, all with the same interface `fuse(x1, x2) -> x` on `(B, L, D)` tokens: $L = 16$ (4×4),
# $L = 4$ (2×2) and, at the bottom, $L = 1$ (1×1). Whatever the fusion does must make sense on all three grids,
# including one with a single token.
#
# ## 2. The ancestor: CBAM
#
# AdaptiveFusion's two gates come from CBAM, the Convolutional Block Attention Module
# ([Woo et al. 2018](https://arxiv.org/abs/1807.06521); reference code:
# [`MODELS/cbam.py`](https://github.com/Jongchan/attention-module/blob/master/MODELS/cbam.py)). CBAM refines
# **one** feature map $F \in \mathbb{R}^{C \times H \times W}$ of a CNN in two steps:
#
# - **channel gate**: pool over the positions twice, by mean and by max, send each pooled vector through
#   the same small MLP $C \to C/r \to C$ (with a ReLU in the middle) and add the two results:
#   $$M_c(F) = \sigma\big(\mathrm{MLP}(\mathrm{AvgPool}(F)) + \mathrm{MLP}(\mathrm{MaxPool}(F))\big) \in (0, 1)^C;$$
# - **spatial gate**: pool over the channels by mean and by max, stack the two maps, and convolve:
#   $M_s(F) = \sigma\big(\mathrm{conv}_{7 \times 7}([\mathrm{AvgPool}_c(F); \mathrm{MaxPool}_c(F)])\big) \in (0, 1)^{H \times W}$;
# - $F' = M_c(F) \odot F$, then $F'' = M_s(F') \odot F'$.
#
# AdaptiveFusion keeps the two kinds of gate but changes their job: there are **two** inputs, both gates look
# at both of them ($x_1 \Vert x_2$, concatenated on the channels), the channel gate weighs $x_1$ and the
# spatial gate weighs $x_2$, and the results are **added** (with a linear mix of both) instead of applied one
# after the other. The spatial gate also sees all $2D$ channels (not two pooled maps) through three 3×3
# convolutions instead of one 7×7 one: on a 4×4 grid a 7×7 kernel would be mostly padding.
#
# The whole block at the toy FFTD's width, drawn by `fftd_course.diagrams` from the model's configuration (change
# the configuration and the widths follow). The channel gate runs along the top, the spatial gate along the bottom:

# %%
diagrams.adaptive_fusion_diagram(model.config)
plt.show()

# %% [markdown]
# ## 3. Eq. 18-25, one at a time
#
# We take the fusion inside Block1: $x_1$ is the attention output, $x_2$ the MLP output, 16 tokens of width
# 64 for each of the 4 faces. A fresh `AdaptiveFusion` has both gates at exactly 0.5 (section 6); to see the
# equations do something, we move every weight a little away from its initial value, as training would.

# %%
x1, x2 = seen["blocks.0.fuse"]
B, L, _ = x1.shape
f = fusion.AdaptiveFusion(D)
with torch.no_grad():
    for p in f.parameters():
        p.add_(0.3 * torch.randn_like(p))
f.requires_grad_(False)  # this section only looks at numbers
print(f"x1 (attention output) {tuple(x1.shape)}, x2 (MLP output) {tuple(x2.shape)}; s = {f.s.item():.3f}")

# %% [markdown]
# **Eq. 18**, the pooled channel statistics. $x_1 \Vert x_2$ has $2D$ channels; pool over the tokens
# (dim 1), once by mean and once by **max** (the paper prints `Mean` twice: [E1](../docs/ERRATA.md#e1), section 4):
# $$p_{avg} = \mathrm{Mean}(x_1 \Vert x_2,\ \mathrm{dim}=1), \qquad p_{max} = \mathrm{Max}(x_1 \Vert x_2,\ \mathrm{dim}=1) \tag{18}$$

# %%
x = torch.cat([x1, x2], dim=-1)   # x1 || x2: (B, L, 2D)
p_avg = x.mean(dim=1)             # (B, 2D)
p_max = x.amax(dim=1)             # (B, 2D)
print(f"x1 || x2 {tuple(x.shape)} -> p_avg {tuple(p_avg.shape)}, p_max {tuple(p_max.shape)}")
print(f"first face, first 4 channels: p_avg {p_avg[0, :4].numpy().round(3)}, p_max {p_max[0, :4].numpy().round(3)}")

# %% [markdown]
# **Eq. 19** concatenates them. Each is $2D$ wide, so $p_{channel}$ is $4D$ wide
# ([E2](../docs/ERRATA.md#e2): the paper's $\mathrm{Linear}_1$ takes $2D$; section 5):
# $$p_{channel} = \mathrm{Concat}(p_{avg}, p_{max}) \tag{19}$$

# %%
p_channel = torch.cat([p_avg, p_max], dim=-1)
print(f"p_channel {tuple(p_channel.shape)} = 4 x D = {4 * D}")

# %% [markdown]
# **Eq. 20**, the channel weights: two linear layers, $4D \to D/16 \to D$, with a ReLU between them (section 5
# says why), and a sigmoid. One weight in $(0, 1)$ per channel of $x_1$, the same for all its tokens:
# $$w_{channel} = \sigma\big(\mathrm{Linear}_2(\mathrm{ReLU}(\mathrm{Linear}_1(p_{channel})))\big) \tag{20}$$

# %%
lin1, lin2 = f.channel_gate[0], f.channel_gate[2]
hidden = F.relu(F.linear(p_channel, lin1.weight, lin1.bias))      # (B, 4D) -> (B, D/16)
w_channel = torch.sigmoid(F.linear(hidden, lin2.weight, lin2.bias)).unsqueeze(1)  # (B, 1, D)
print(f"Linear1: {lin1.in_features} -> {lin1.out_features}, hidden {tuple(hidden.shape)}, w_channel {tuple(w_channel.shape)}")
print(f"w_channel of the first face ranges over [{w_channel[0].min():.3f}, {w_channel[0].max():.3f}]")
torch.testing.assert_close(w_channel, f.channel_weights(x1, x2))

# %% [markdown]
# **Eq. 21** lays the tokens out as an image again: $2D$ channels on the $\sqrt L \times \sqrt L$ grid. Token
# $k$ is row $\lfloor k / \sqrt L \rfloor$, column $k \bmod \sqrt L$ (row-major, as FFTD's patchify orders them):
# $$x_{spatial} = \mathrm{Reshape}(x_1 \Vert x_2;\ B, 2D, \sqrt L, \sqrt L) \tag{21}$$

# %%
x_grid = fusion.tokens_to_grid(x)   # (B, L, 2D) -> (B, 2D, sqrt L, sqrt L)
side = math.isqrt(L)
k = 6
print(f"x_spatial {tuple(x_grid.shape)}; token {k} sits at row {k // side}, column {k % side}:",
      torch.equal(x_grid[:, :, k // side, k % side], x[:, k]))

# %% [markdown]
# **Eq. 22**, the spatial weights: three 3×3 convolutions $2D \to D/4 \to D/4 \to 1$ (padding 1 keeps the grid;
# ReLUs between them, as between the linears) and a sigmoid: one weight in $(0, 1)$ per token of $x_2$,
# the same for all its channels:
# $$w_{spatial} = \sigma\big(\mathrm{Conv}_3(\mathrm{Conv}_2(\mathrm{Conv}_1(x_{spatial})))\big) \tag{22}$$

# %%
conv1, conv2, conv3 = (m for m in f.spatial_gate if isinstance(m, nn.Conv2d))
h = F.relu(F.conv2d(x_grid, conv1.weight, conv1.bias, padding=1))   # (B, D/4, 4, 4)
h = F.relu(F.conv2d(h, conv2.weight, conv2.bias, padding=1))        # (B, D/4, 4, 4)
w_grid = torch.sigmoid(F.conv2d(h, conv3.weight, conv3.bias, padding=1))  # (B, 1, 4, 4)
w_spatial = fusion.grid_to_tokens(w_grid)                            # (B, L, 1)
print(f"conv widths {[c.out_channels for c in (conv1, conv2, conv3)]}; w_spatial {tuple(w_spatial.shape)}")
print("first face's token weights on the grid:\n", w_grid[0, 0].numpy().round(3))
torch.testing.assert_close(w_spatial, f.spatial_weights(x1, x2))

# %% [markdown]
# **Eq. 23 and 24** weigh the two inputs after a LayerNorm each (over the channels of every token, with its
# own learnable scale and shift):
# $$x_{channel} = w_{channel} \cdot \mathrm{LayerNorm}(x_1), \qquad x_{spatial} = w_{spatial} \cdot \mathrm{LayerNorm}(x_2) \tag{23, 24}$$

# %%
def layer_norm(v: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """LayerNorm over the last dimension, written out."""
    mu, var = v.mean(-1, keepdim=True), v.var(-1, unbiased=False, keepdim=True)
    return (v - mu) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


x_channel = w_channel * layer_norm(x1, f.norm1)   # (B, 1, D) * (B, L, D): one weight per channel
x_spat = w_spatial * layer_norm(x2, f.norm2)      # (B, L, 1) * (B, L, D): one weight per token
print(f"x_channel {tuple(x_channel.shape)}, x_spatial {tuple(x_spat.shape)}")

# %% [markdown]
# **Eq. 25** adds them and a learnable share $s$ of a linear map of both inputs, $\mathrm{Linear}: 2D \to D$:
# $$x_{fused} = x_{channel} + x_{spatial} + s \cdot \mathrm{Linear}(x_1 \Vert x_2) \tag{25}$$
# The package's module, with the same weights, must give the same numbers.

# %%
x_fused = x_channel + x_spat + f.s * F.linear(x, f.proj.weight, f.proj.bias)
torch.testing.assert_close(x_fused, f(x1, x2))
print(f"x_fused {tuple(x_fused.shape)}: eq. 18-25 written out = fusion.AdaptiveFusion, "
      f"largest difference {(x_fused - f(x1, x2)).abs().max().item():.1e}")

# %% [markdown]
# ## 4. E1: why `p_max` must be a max pool
#
# Eq. 18 as printed pools twice by the mean. Then $p_{max} = p_{avg}$ and the gate only ever sees the average of
# each channel over the tokens. Two inputs make the difference plain: in the first, channel 0 is 1 on every
# token (a feature spread thinly over the grid); in the second it is 16 on one token and 0 elsewhere (a
# feature present in one place, like an eye). Their means are equal.

# %%
spread, spot = torch.zeros(1, 16, D), torch.zeros(1, 16, D)
spread[0, :, 0] = 1.0
spot[0, 5, 0] = 16.0
zeros = torch.zeros(1, 16, D)


def channel_weights_as_printed(f: fusion.AdaptiveFusion, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Eq. 18-20 read literally: 'p_max' is a second mean."""
    v = torch.cat([x1, x2], dim=-1)
    return torch.sigmoid(f.channel_gate(torch.cat([v.mean(1), v.mean(1)], dim=-1))).unsqueeze(1)


with torch.no_grad():
    printed = [channel_weights_as_printed(f, v, zeros) for v in (spread, spot)]
    ours = [f.channel_weights(v, zeros) for v in (spread, spot)]
print(f"as printed (mean, mean): the channel weights of the two inputs differ by up to "
      f"{(printed[0] - printed[1]).abs().max().item():.4f}")
print(f"E1 (mean, max):          the channel weights of the two inputs differ by up to "
      f"{(ours[0] - ours[1]).abs().max().item():.4f}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(5.5, 2.6))
for ax, (name, v) in zip(axes, [("spread: 1 everywhere", spread), ("spot: 16 in one token", spot)]):
    im = ax.imshow(v[0, :, 0].view(4, 4), cmap="viridis", vmin=0, vmax=16)
    ax.set_title(f"{name}\nmean {v[0, :, 0].mean():.0f}, max {v[0, :, 0].max():.0f}", fontsize=9)
    ax.set_xticks([]), ax.set_yticks([])
fig.colorbar(im, ax=axes, shrink=0.8, label="channel 0")
plt.show()

# %% [markdown]
# With two means the gate is blind to the difference: it gives both inputs the same channel weights, exactly.
# The max pool sees that the second input has something strong somewhere. That is why CBAM uses both pools,
# and why the package reads eq. 18's second `Mean` as a misprint.
#
# ## 5. E2: a width that does not fit, and a layer that is missing
#
# Eq. 20 prints $\mathrm{Linear}_1: \mathbb{R}^{2D} \to \mathbb{R}^{D/16}$, but eq. 19 hands it $4D$ numbers.
# Taken literally, the layer cannot even be called:

# %%
linear1_as_printed = nn.Linear(2 * D, D // 16)
try:
    linear1_as_printed(p_channel)
except RuntimeError as err:
    print("RuntimeError:", err)

# %% [markdown]
# Two readings make the shapes consistent:
#
# - **(a) widen $\mathrm{Linear}_1$ to $4D \to D/16$** and keep the concatenation of eq. 19. This is the
#   package's choice: it changes one number and keeps every equation's form.
# - **(b) follow CBAM**: a shared MLP $2D \to D/16 \to D$ takes $p_{avg}$ and $p_{max}$ one at a time and the
#   two results are summed before the sigmoid; then "Concat" in eq. 19 is a misprint too. (Exercise 1.)
#
# Their sizes at the paper's width $D = 288$:

# %%
D_PAPER = 288
reading_a = nn.Sequential(nn.Linear(4 * D_PAPER, D_PAPER // 16), nn.ReLU(), nn.Linear(D_PAPER // 16, D_PAPER))
reading_b = nn.Sequential(nn.Linear(2 * D_PAPER, D_PAPER // 16), nn.ReLU(), nn.Linear(D_PAPER // 16, D_PAPER))
for name, gate in [("(a) Linear1: 4D -> D/16 (package)", reading_a), ("(b) CBAM, shared 2D -> D/16", reading_b)]:
    print(f"{name:<35} {sum(p.numel() for p in gate.parameters()):>7,} parameters per channel gate")

# %% [markdown]
# The paper prints no non-linearity between $\mathrm{Linear}_1$ and $\mathrm{Linear}_2$ either. Without one,
# the two layers are a single linear map: $W_2(W_1 p + b_1) + b_2 = (W_2 W_1) p + (W_2 b_1 + b_2)$, whose
# matrix $W_2 W_1$ has rank at most $D/16$. The gate's logits are then a linear function of the pooled
# statistics, squeezed through a rank-$D/16$ bottleneck for nothing:

# %%
p = torch.randn(8, 4 * D)
W = lin2.weight @ lin1.weight                    # (D, D/16) @ (D/16, 4D) = (D, 4D)
b = lin2.weight @ lin1.bias + lin2.bias
torch.testing.assert_close(lin2(lin1(p)), F.linear(p, W, b))
print(f"Linear2(Linear1(p)) = one Linear({4 * D}, {D}) whose matrix has rank {torch.linalg.matrix_rank(W).item()} "
      f"= D/16 = {D // 16}")
q = torch.randn(8, 4 * D)
for name, g in [("without ReLU", lambda v: lin2(lin1(v))), ("with ReLU", lambda v: lin2(F.relu(lin1(v))))]:
    gap = (g(p + q) - g(p) - g(q) + g(torch.zeros_like(p))).abs().max().item()
    print(f"{name:<12}: g(p + q) - g(p) - g(q) + g(0) is at most {gap:.2e} (0 for an affine map)")

# %% [markdown]
# With a ReLU between them, as in CBAM's shared MLP, the gate can respond non-linearly, for example open a
# channel only when a pooled statistic passes a threshold. The package puts a ReLU between $\mathrm{Linear}_1$
# and $\mathrm{Linear}_2$, and likewise between the three convolutions of eq. 22.
#
# > **What the paper says / what we chose.**
# > [E1](../docs/ERRATA.md#e1): eq. 18 prints $p_{max} = \mathrm{Mean}(x_1 \Vert x_2, \mathrm{dim}=1)$. We read it as
# > a **max pool over the tokens**, as CBAM does; a second mean would make the gate blind to where a feature is
# > strong (section 4).
# > [E2](../docs/ERRATA.md#e2): eq. 19 makes $p_{channel}$ $4D$ wide while eq. 20's $\mathrm{Linear}_1$ takes $2D$.
# > We use **$\mathrm{Linear}_1: 4D \to D/16$**, a **ReLU**, then $\mathrm{Linear}_2: D/16 \to D$; ReLUs also sit
# > between $\mathrm{Conv}_1$, $\mathrm{Conv}_2$ and $\mathrm{Conv}_3$. CBAM's shared MLP on each pooled vector is
# > the other consistent reading (exercise 1).
# > Where FFTD uses the fusion: inside each block on the parallel attention and MLP branches
# > ([E13](../docs/ERRATA.md#e13)) and on the two long skips ([E14](../docs/ERRATA.md#e14)).
#
# ## 6. What a fresh fusion computes
#
# `AdaptiveFusion.initialize_weights` gives the hidden layers Xavier weights, but the **last** layer of each
# gate starts at zero, and $s$ starts at 0. Before you run the next cell, write down what a fresh fusion
# returns for any $x_1, x_2$: what are the two gates, what is left of eq. 25?

# %%
fresh = fusion.AdaptiveFusion(D)
with torch.no_grad():
    wc, ws, out = fresh.channel_weights(x1, x2), fresh.spatial_weights(x1, x2), fresh(x1, x2)
print(f"channel weights: all exactly 0.5? {bool((wc == 0.5).all())}; spatial weights: all exactly 0.5? "
      f"{bool((ws == 0.5).all())}; s = {fresh.s.item()}")
mean_of_normalised = (F.layer_norm(x1, (D,)) + F.layer_norm(x2, (D,))) / 2
torch.testing.assert_close(out, mean_of_normalised)
print("a fresh AdaptiveFusion returns (LayerNorm(x1) + LayerNorm(x2)) / 2 for these inputs")
with torch.no_grad():
    change = (fresh(100 * x1, x2) - out).abs().max().item()
print(f"scaling x1 by 100 changes its output by at most {change:.1e}")

# %% [markdown]
# Since $\sigma(0) = 0.5$ whatever the pooled statistics, a fresh fusion is the **mean of the normalised inputs**:
# it passes both streams on in equal parts, and training moves the gates away from one half only where that
# helps, like the learnable skip interpolation of Hourglass DiT, which also starts at 0.5 (`TokenSplit` in
# [k-diffusion's `image_transformer_v2.py`](https://github.com/crowsonkb/k-diffusion/blob/master/k_diffusion/models/image_transformer_v2.py)).
# The LayerNorms matter even here: a fresh fusion does not care how large either input is (Add and Concat would).
#
# Table 9 of the paper compares AdaptiveFusion with two plain fusions: **Add**, $x_1 + x_2$, and **Concat**,
# $\mathrm{Linear}(x_1 \Vert x_2)$ with $2D \to D$, which the package starts at the mean $(x_1 + x_2)/2$. What
# each costs at the paper's $D = 288$, and in the whole model, which has seven fusions (five blocks, two skips):

# %%
PAPER_TABLE_9 = {"add": 9.54e6, "concat": 11.49e6, "adaptive": 14.98e6}   # parameters, from the paper
whole = {}
print(f"{'fusion':<9} {'one fusion':>11} {'x 7':>11} {'FFTD (ours)':>12} {'Table 9':>9}")
for kind in ("add", "concat", "adaptive"):
    with torch.device("meta"):  # counts shapes only: no memory, no time
        one = sum(p.numel() for p in fusion.make_fusion(kind, D_PAPER).parameters())
        whole[kind] = fftd.count_parameters(fftd.FFTD(fftd.get_config("paper", fusion=kind)))
    print(f"{kind:<9} {one:>11,} {7 * one:>11,} {whole[kind] / 1e6:>11.2f}M {PAPER_TABLE_9[kind] / 1e6:>8.2f}M")
for kind in ("concat", "adaptive"):
    print(f"{kind} - add: ours {(whole[kind] - whole['add']) / 1e6:.2f}M, "
          f"Table 9 {(PAPER_TABLE_9[kind] - PAPER_TABLE_9['add']) / 1e6:.2f}M")

# %%
with torch.device("meta"):
    adaptive = fusion.AdaptiveFusion(D_PAPER)
for name, part in adaptive.named_children():
    print(f"  {name:<13} {sum(p.numel() for p in part.parameters()):>8,}")
print(f"  {'s':<13} {adaptive.s.numel():>8,}")

# %% [markdown]
# Most of an AdaptiveFusion's parameters sit in the first 3×3 convolution of the spatial gate ($2D \cdot D/4 \cdot 9$)
# and in eq. 25's linear map; the channel gate, with its $D/16$ bottleneck, is small. Our whole-model counts
# differ from Table 9's because the paper prints no widths (chapter 08 compares every variant); the order
# Add < Concat < Adaptive is the same, and the steps between them are of the same order (printed above).
#
# Table 8's "neither fusion nor multi-resolution" row and Table 9's "Add" row print the same FID to two
# decimals on both data sets, although the two models differ ([E15](../docs/ERRATA.md#e15)); that is one reason
# the package keeps all three fusions, so that the ablation can be rerun.
#
# ## 7. Watching the gates learn
#
# On the stand-in tokens above the gates mean little. A toy task where the right gates are known shows what
# they can learn. Each sample has two token sets on a 4×4 grid, $D = 32$:
#
# - in $x_1$, only the **first 16 channels** are useful: the target keeps them and drops the rest;
# - $x_2$ carries an **object**, a 2×2 block of tokens at a random place marked by a fixed direction $v$ added
#   to those tokens; the target keeps $x_2$ on the object's tokens and drops it elsewhere.
#
# The target is $m_c \odot \mathrm{LN}(x_1) + m_s \odot \mathrm{LN}(x_2)$ with a channel mask $m_c$ and the
# object's token mask $m_s$: exactly what eq. 23-24 can express if the channel gate learns $m_c$ and the spatial
# gate learns to find the object.

# %%
D_TOY = 32
channel_mask = (torch.arange(D_TOY) < D_TOY // 2).float()        # m_c: the useful channels of x1
v = F.normalize(torch.randn(D_TOY, generator=torch.Generator().manual_seed(1)), dim=0)


def toy_task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x1, x2, target, object mask (n, 4, 4)) for the toy fusion task."""
    g = torch.Generator().manual_seed(seed)
    x1, x2 = torch.randn(n, 16, D_TOY, generator=g), torch.randn(n, 16, D_TOY, generator=g)
    r, c = torch.randint(0, 3, (2, n, 1, 1), generator=g)           # the object's top-left corner
    rows, cols = torch.arange(4).view(1, 4, 1), torch.arange(4).view(1, 1, 4)
    mask = ((rows - r >= 0) & (rows - r < 2) & (cols - c >= 0) & (cols - c < 2)).float()  # (n, 4, 4)
    x2 = x2 + 4.0 * mask.view(n, 16, 1) * v                         # the object's tokens point along v
    target = channel_mask * F.layer_norm(x1, (D_TOY,)) + mask.view(n, 16, 1) * F.layer_norm(x2, (D_TOY,))
    return x1, x2, target, mask


train_x1, train_x2, train_target, _ = toy_task(2048, seed=2)
test_x1, test_x2, test_target, test_mask = toy_task(256, seed=3)

# %% [markdown]
# Train an AdaptiveFusion and, for comparison, a Concat fusion on it (Add has nothing to train) with Adam,
# 400 steps of 128 samples:

# %%
def train_fusion(kind: str, steps: int = 400, seed: int = 0) -> tuple[nn.Module, float, float]:
    """Fit a fresh fusion of ``kind`` to the toy task; returns it and its test MSE before and after."""
    torch.manual_seed(seed)
    m = fusion.make_fusion(kind, D_TOY)
    with torch.no_grad():
        before = F.mse_loss(m(test_x1, test_x2), test_target).item()
    params = list(m.parameters())
    opt = torch.optim.Adam(params, lr=1e-2) if params else None
    for _ in tqdm(range(steps if params else 0), desc=f"{kind} fusion", leave=False):
        idx = torch.randint(0, len(train_x1), (128,))
        loss = F.mse_loss(m(train_x1[idx], train_x2[idx]), train_target[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return m, before, F.mse_loss(m(test_x1, test_x2), test_target).item()


trained = {}
for kind in ("add", "concat", "adaptive"):
    trained[kind], before, after = train_fusion(kind)
    print(f"{kind:<9} test MSE: fresh {before:.3f} -> trained {after:.3f}")

# %% [markdown]
# Add cannot weigh anything, and Concat's linear map treats every token alike, so neither can keep $x_2$ on the
# object and drop it elsewhere. The gates of the trained AdaptiveFusion, on held-out samples:

# %%
ada = trained["adaptive"]
with torch.no_grad():
    wc = ada.channel_weights(test_x1, test_x2)[:, 0]                # (n, D)
    ws = ada.spatial_weights(test_x1, test_x2)[:, :, 0].view(-1, 4, 4)
fig, ax = plt.subplots(figsize=(8, 2.4))
colours = ["tab:green" if m else "tab:grey" for m in channel_mask.tolist()]
ax.bar(range(D_TOY), wc.mean(0), yerr=wc.std(0), color=colours)
ax.axhline(0.5, color="black", lw=0.5, ls=":")
ax.set_xlabel("channel of x1 (green: kept by the target)"), ax.set_ylabel("w_channel")
ax.set_title(f"channel gate, mean and std over {len(wc)} held-out samples (a fresh gate: 0.5)", fontsize=9)
plt.show()

# %%
fig, axes = plt.subplots(2, 5, figsize=(9.5, 4.2))
for i in range(5):
    axes[0, i].imshow(test_mask[i], cmap="gray", vmin=0, vmax=1)
    im = axes[1, i].imshow(ws[i], cmap="magma", vmin=0, vmax=1)
    on = test_mask[i].bool()
    axes[1, i].set_xlabel(f"object {ws[i][on].mean():.2f}\nrest {ws[i][~on].mean():.2f}", fontsize=8)
    for ax in axes[:, i]:
        ax.set_xticks([]), ax.set_yticks([])
axes[0, 0].set_ylabel("object in x2"), axes[1, 0].set_ylabel("w_spatial")
fig.suptitle("spatial gate on the 4x4 grid, five held-out samples", fontsize=10)
fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="weight")
plt.show()
on_object = ws[test_mask.bool()].mean().item()
print(f"mean spatial weight on object tokens {on_object:.3f}, elsewhere {ws[~test_mask.bool()].mean().item():.3f}; "
      f"s = {ada.s.item():.3f}")

# %% [markdown]
# The channel gate opens on the useful channels of $x_1$ and closes on the rest, the same for every sample,
# because the useful channels never change. The spatial gate finds the object wherever it is: it reads the
# content of the tokens through its convolutions, so its weights follow the object from sample to sample.
# That is the promise of the block: the network decides, per channel and per token, how much of each stream
# to pass on. (Whether that is what takes the paper's Table 9 from FID 64.96 with Add to 9.64 is another question:
# see "Going further".)
#
# ## 8. Exercises
#
# **Exercise 1 (a variant: E2's other reading).** Write the channel gate as CBAM would have it
# ([E2](../docs/ERRATA.md#e2), reading (b) of section 5): `mlp` is a shared module $2D \to D/16 \to D$ (with its
# ReLU inside); it takes $p_{avg}$ and $p_{max}$ of eq. 18 **one at a time**. Return the channel weights with
# the shape eq. 23 multiplies by, `(B, 1, D)`.

# %%
def cbam_channel_weights(x1: torch.Tensor, x2: torch.Tensor, mlp: nn.Module) -> torch.Tensor:
    """w_channel of E2's CBAM reading: (B, L, D), (B, L, D) -> (B, 1, D)."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise: write your code here, then run the check cell below.")


# %%
checks.check_cbam_channel_weights(cbam_channel_weights)

# %% [markdown]
# **Exercise 2 (predict, then measure: the bottom of the hourglass).** Block3 works on a **1×1** grid, and its
# fusion's spatial gate runs three 3×3 convolutions (padding 1) on a single token. Think about what a 3×3 kernel
# can see there. Then write `spatial_gate_as_linears(gate)`: given the `nn.Sequential` of eq. 22 (`Conv2d`,
# `ReLU`, `Conv2d`, `ReLU`, `Conv2d`), return three `(W, b)` pairs of plain matrices and bias vectors
# (`W` of shape out × in) such that on a 1×1 grid the gate equals
# $\sigma(W_3\,\mathrm{ReLU}(W_2\,\mathrm{ReLU}(W_1 u + b_1) + b_2) + b_3)$ for the single token
# $u = x_1 \Vert x_2$. The check builds that MLP from your pairs and compares it with the real gate.

# %%
def spatial_gate_as_linears(gate: nn.Sequential) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Three (W, b) with which eq. 22 on a 1x1 grid is a three-layer MLP of the one token."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise: write your code here, then run the check cell below.")


# %%
checks.check_spatial_gate_as_linears(spatial_gate_as_linears)

# %% [markdown]
# Now measure what the answer implies: on a 1×1 grid, which of the spatial gate's weights receive a gradient at
# all? And what do the two pools of eq. 18 give there?

# %%
g1 = fusion.AdaptiveFusion(D)
with torch.no_grad():
    for p in g1.parameters():
        p.add_(0.3 * torch.randn_like(p))
u1, u2 = torch.randn(4, 1, D), torch.randn(4, 1, D)
g1(u1, u2).square().sum().backward()
weights = [c.weight for c in g1.spatial_gate if isinstance(c, nn.Conv2d)]
total = sum(w.numel() for w in weights)
used = sum(int((w.grad != 0).sum()) for w in weights)
off_centre = sum(int((w.grad[:, :, [0, 0, 0, 1, 1, 2, 2, 2], [0, 1, 2, 0, 2, 0, 1, 2]] != 0).sum()) for w in weights)
print(f"on a 1x1 grid {used:,} of the spatial gate's {total:,} conv weights get a gradient ({100 * used / total:.1f}%); "
      f"{off_centre} of them lie off the kernels' centres")
u = torch.cat([u1, u2], dim=-1)
print("p_avg equals p_max on one token:", torch.equal(u.mean(1), u.amax(1)))

# %% [markdown]
# At the bottom of the hourglass the spatial gate is a small MLP that gives the one token one weight, and at most
# one ninth of its convolution weights (the centre taps) can learn there; fewer still where a ReLU is off for every
# sample of the batch. The channel gate's two pools coincide. Every Block3
# fusion still works (the package's tests run every fusion kind on 1×1 grids), but the "spatial" in it means
# nothing on a single token. The paper does not discuss this ([E8](../docs/ERRATA.md#e8) defines how many
# halvings each grid gets).
#
# **Exercise 3 (find the bug, stretching).** A colleague wrote the fusion as one function, and it passes a test
# against a freshly initialised `AdaptiveFusion` to the last digit (run the cell). It has **three** bugs.

# %%
def buggy_fuse(x1: torch.Tensor, x2: torch.Tensor, f: fusion.AdaptiveFusion) -> torch.Tensor:
    """Eq. 18-25 with f's weights, as one function. It has three bugs."""
    x = torch.cat([x1, x2], dim=-1)                                        # (B, L, 2D)
    b, n, d2 = x.shape
    side = math.isqrt(n)
    p_channel = torch.cat([x.mean(dim=1), x.amax(dim=1)], dim=-1)         # eq. 18-19
    w_channel = torch.sigmoid(f.channel_gate(p_channel)).unsqueeze(1)      # eq. 20
    x_spatial = x.reshape(b, d2, side, side)                               # eq. 21
    w_spatial = torch.sigmoid(f.spatial_gate(x_spatial)).flatten(2).transpose(1, 2)  # eq. 22
    x_channel = w_channel * f.norm1(x1)                                    # eq. 23
    x_spat = w_spatial * f.norm1(x2)                                       # eq. 24
    return x_channel + x_spat + f.s * f.proj(torch.cat([x2, x1], dim=-1))  # eq. 25


with torch.no_grad():
    torch.testing.assert_close(buggy_fuse(x1, x2, fresh), fresh(x1, x2))
print("buggy_fuse agrees with a fresh AdaptiveFusion")

# %% [markdown]
# Why can no test on a fresh fusion see these bugs? Use that to find them (try `buggy_fuse` on a fusion whose
# weights you moved, as in section 3, and compare the intermediate results with eq. 18-25), then write the
# corrected function. The check runs it against `AdaptiveFusion` with moved weights on 4×4, 2×2 and 1×1 grids.
# (One of the bugs cannot show on the 1×1 grid: which, and why?)

# %%
def fuse_fixed(x1: torch.Tensor, x2: torch.Tensor, f: fusion.AdaptiveFusion) -> torch.Tensor:
    """Eq. 18-25 with f's weights, as one function, without the three bugs."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise: write your code here, then run the check cell below.")


# %%
checks.check_fuse_fixed(fuse_fixed)

# %% [markdown]
# ## Going further
#
# No checks here: open questions, with what to look at.
#
# - **Which reading of E2 trains better?** Swap the package's channel gate for exercise 1's CBAM gate in the toy
#   task of section 7 (or in chapter 09's model) and compare the test loss and the gates. Reading (b) has fewer
#   parameters; does it lose anything?
# - **Is the gain in Table 9 the gates, or the LayerNorms?** AdaptiveFusion normalises both inputs; Add does
#   not. Train a fusion that is only $(\mathrm{LN}(x_1) + \mathrm{LN}(x_2))/2$ (a fresh AdaptiveFusion with its
#   gates frozen) in chapter 09's pipeline and compare with Add and with the full fusion.
# - **Harder toy tasks.** Make the useful channels of $x_1$ depend on the sample (say, on a label channel).
#   Can the channel gate follow them? It sees only pooled statistics of both inputs: what must the inputs carry
#   so that it can?
# - **The spatial gate at 2×2.** On a 2×2 grid every output of a 3×3 convolution sees all four tokens, but through
#   different taps. Which fraction of the weights gets a gradient there (repeat the measurement after exercise 2)?
# - **Where are the gates used in a trained FFTD?** After chapter 09 has trained a model, hook its seven fusions
#   and draw their channel and spatial weights across timesteps: do the gates of the long skips behave like
#   those inside the blocks?
#
# ## Summary
#
# - FFTD fuses two token streams seven times: attention with MLP inside each of its five blocks, and Block1 with
#   Block5, Block2 with Block4 on its long skips; on 4×4, 2×2 and 1×1 grids.
# - AdaptiveFusion (eq. 18-25) weighs $x_1$ per channel (a CBAM-style gate on mean- and max-pooled statistics of
#   both inputs) and $x_2$ per token (three 3×3 convolutions on both inputs), after a LayerNorm each, and adds a
#   learnable share $s$ of a linear mix.
# - E1: the second pool is a **max** pool; a mean-only gate cannot tell a feature spread over the grid from the
#   same amount concentrated in one token. E2: $\mathrm{Linear}_1$ takes the $4D$-wide concatenation, and a
#   **ReLU** sits between the two linear layers (and between the convolutions); without it the gate is one
#   linear map of rank $D/16$.
# - A fresh fusion returns $(\mathrm{LN}(x_1) + \mathrm{LN}(x_2))/2$: both gates 0.5, $s = 0$. That also hides
#   bugs: test a fusion with moved weights and on more than one grid.
# - Of Table 9's three fusions, AdaptiveFusion has by far the most parameters (counted in section 6); on a toy
#   task its gates learn to pass the useful channels of one input and the informative tokens of the other, which
#   neither Add nor Concat can do.
#
# Next, chapter 08 builds the FFTD block and the hourglass around this fusion.

# %%
print(f"chapter 07 ran in {fftd_course.chapter_seconds():.0f} s")
