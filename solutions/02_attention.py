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
# # 02 · Self-attention over pixels
#
# A $3\times 3$ convolution sees a pixel's neighbours; it takes many layers before one position can react to
# another far away (say, one eye to the other). Self-attention lets every pixel see every other in one step. The IVQ-VAE puts one attention block in the encoder and decoder at the
# $16\times16$ resolution, and one in the middle block at the lowest resolution (paper section 3.1.2):
# $$Q = \mathrm{Conv}_{1\times1}(h), \quad K = \mathrm{Conv}_{1\times1}(h), \quad V = \mathrm{Conv}_{1\times1}(h), \tag{8}$$
# $$W = \mathrm{Softmax}\Big(\frac{Q K^\top}{\sqrt{C_h}}\Big), \tag{9}$$
# $$h_{attn} = h + \mathrm{Conv}_{1\times1}(W V), \tag{10}$$
# three $1\times1$ convolutions, an $(HW \times HW)$ matrix of weights, and a residual connection.
#
# **In this chapter you will**
# - build attention from scratch, equal to `F.scaled_dot_product_attention` and the package's `AttnBlock`;
# - see why the scores are divided by $\sqrt{C}$, and look at attention maps on toy faces;
# - measure attention's time and memory up to $64\times64$, and see why the paper uses it at $16\times16$;
# - settle what the paper's "multi-head" sentence means for its single-head equations, and repair that reading;
# - predict, then measure, one output pixel's reach, and what shuffling the pixels does.

# %%
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

import fftd_course
from fftd_course import blocks, checks, data, timing, viz

device = fftd_course.setup_chapter(seed=0)
images, labels = data.make_toy_faces(8, size=32, seed=0)

# %% [markdown]
# ## Attention, step by step
#
# Start from a feature map $h$ of shape $(B, C, H, W)$. Eq. 8 makes queries, keys and values with
# $1\times1$ convolutions (a per-pixel linear map). Attention treats the $H \cdot W$ pixels as a set of
# tokens, so we flatten them: $(B, C, H, W) \to (B, HW, C)$.

# %%
C = 32
h = nn.Conv2d(3, C, 3, padding=1)(F.interpolate(images, size=16))  # some 16x16 features, as at the paper's level
norm = blocks.group_norm(C, num_groups=8)
to_q, to_k, to_v, proj_out = (nn.Conv2d(C, C, 1) for _ in range(4))

hn = norm(h)
q = to_q(hn).flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, HW, C)
k = to_k(hn).flatten(2).transpose(1, 2)
v = to_v(hn).flatten(2).transpose(1, 2)
print("h:", tuple(h.shape), "-> q, k, v:", tuple(q.shape))

# %% [markdown]
# Eq. 9: the score of query pixel $i$ for key pixel $j$ is the dot product of their vectors, divided by
# $\sqrt{C}$; a softmax over $j$ turns each row into weights that sum to 1.

# %%
scores = q @ k.transpose(1, 2) / math.sqrt(C)  # (B, HW, HW)
W = scores.softmax(dim=-1)
print("W:", tuple(W.shape), "| every row sums to 1:", torch.allclose(W.sum(-1), torch.ones(W.shape[:-1])))

# %% [markdown]
# Eq. 10: each pixel's output is the weighted average of all values, projected by a last $1\times 1$ convolution
# and added back to the input.

# %%
out = W @ v                                                  # (B, HW, C)
out = out.transpose(1, 2).reshape(h.shape)                   # (B, HW, C) -> (B, C, H, W)
h_attn = h + proj_out(out)
print("h_attn:", tuple(h_attn.shape))

# %% [markdown]
# PyTorch has this computation built in: `F.scaled_dot_product_attention(q, k, v)` uses the same
# $1/\sqrt{C}$ scaling and, where a fused kernel exists, never stores the $(HW \times HW)$ matrix. The package's
# `AttnBlock` uses it. Same weights in, same numbers out:

# %%
torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v), W @ v)
print("our W @ V equals F.scaled_dot_product_attention")

package = blocks.AttnBlock(C, num_groups=8)
with torch.no_grad():
    for ours, theirs in [(norm, package.norm), (to_q, package.q), (to_k, package.k), (to_v, package.v), (proj_out, package.proj_out)]:
        theirs.load_state_dict(ours.state_dict())
torch.testing.assert_close(package(h), h_attn)
torch.testing.assert_close(package.attention_map(h)[:, 0], W)  # (B, heads=1, HW, HW)
print("our attention block equals blocks.AttnBlock (and its attention map equals our W)")

# %% [markdown]
# ## Why divide by $\sqrt{C}$?
#
# If the entries of $q$ and $k$ have unit variance, their dot product over $C$ channels has variance $C$.
# Without the scaling, scores grow like $\sqrt{C}$, the softmax saturates into a near one-hot row, and
# its gradient vanishes. With it, the spread of the scores stays the same whatever $C$ is. We measure the
# entropy of the attention rows (in nats; a uniform row over 256 pixels has $\ln 256$) for random
# unit-variance $q$ and $k$:

# %%
widths = [4, 16, 64, 256, 1024]
entropy = {"scores / sqrt(C)": [], "unscaled scores": []}
for c in widths:
    qq, kk = torch.randn(1, 256, c), torch.randn(1, 256, c)
    for name, s in [("scores / sqrt(C)", qq @ kk.transpose(1, 2) / math.sqrt(c)), ("unscaled scores", qq @ kk.transpose(1, 2))]:
        p = s.softmax(-1)
        entropy[name].append(-(p * p.clamp_min(1e-30).log()).sum(-1).mean().item())
fig, ax = plt.subplots(figsize=(6, 3))
for name, values in entropy.items():
    ax.plot(widths, values, "o-", label=name)
ax.axhline(math.log(256), ls=":", c="gray", label="uniform over 256 pixels")
ax.set_xscale("log", base=2), ax.set_xlabel("channels C"), ax.set_ylabel("row entropy (nats)"), ax.legend()
plt.show()
print(f"at C = {widths[-1]}: entropy {entropy['scores / sqrt(C)'][-1]:.2f} nats scaled, "
      f"{entropy['unscaled scores'][-1]:.2f} nats unscaled (0 would be one-hot)")

# %% [markdown]
# ## What does a pixel attend to?
#
# The weights of a trained model would show learned structure; ours are random. To see what attention *can*
# do, give it meaningful features: let each pixel's query and key be its own colour, centred on the image's
# mean colour and scaled to unit length (so the dot product measures how alike two colours are). Then
# $W_{ij}$ is large where pixel *j* looks like pixel *i*, wherever it is in the image: a dark pupil finds
# the other pupil and the nose in a single step, which a $3\times 3$ convolution could only do after many layers.
# The query points are found from the image itself (the darkest face pixel, the face's centre, the pinkest
# pixel, a corner).

# %%
face = images[labels == 0][:1]                               # a cat
pixels = face[0].flatten(1).T                                # (HW, 3): one colour per pixel
features = pixels - pixels.mean(0)
features = features / features.norm(dim=1, keepdim=True).clamp_min(1e-6)
sharpness = 6.0                                              # plays the role of a learned projection's scale
attn = blocks.attention_weights(features * sharpness, features * sharpness)  # (HW, HW)

foreground = (face[0] - face[0, :, :1, :1]).abs().sum(0) > 0.3  # differs from the corner colour
rows, cols = torch.nonzero(foreground, as_tuple=True)
brightness = torch.where(foreground, face[0].mean(0), torch.tensor(float("inf")))
queries = {
    "darkest spot": divmod(int(brightness.argmin()), 32),
    "face centre": (int(rows.float().mean().round()), int(cols.float().mean().round())),
    "pinkest pixel": divmod(int((face[0, 0] - face[0, 1]).argmax()), 32),
    "background": (2, 2),
}


# %%
def show_attention(query: str) -> None:
    row, col = queries[query]
    fig, (a, b) = plt.subplots(1, 2, figsize=(5, 2.6))
    a.imshow(viz.to_unit_range(face[0]).permute(1, 2, 0)), a.plot(col, row, "c+", ms=14, mew=2)
    a.set_title(f"query: {query}", fontsize=9)
    b.imshow(attn[row * 32 + col].view(32, 32), cmap="magma"), b.set_title("its attention weights", fontsize=9)
    for ax in (a, b):
        ax.set_axis_off()
    plt.show()


viz.explore(show_attention, "query", list(queries), static=list(queries))

# %% [markdown]
# ## Time and memory: why the paper puts attention at $16\times16$
#
# The weight matrix $W$ has $(HW)^2$ entries: doubling the side of the map multiplies it by 16. We time
# one attention forward pass (explicit, storing $W$, and PyTorch's fused function; the best of several
# runs, `timing.best_time`) at $8\times8$ to $64\times64$ maps with $C = 128$ channels, batch 1, and
# measure the memory of $W$ from the tensor itself (on a GPU, the peak allocated memory is shown too).

# %%
rows = []
for side in tqdm([8, 16, 32, 64], desc="map size"):
    n = side * side
    qq, kk, vv = (torch.randn(1, n, 128, device=device) for _ in range(3))
    repeats = 20 if side <= 32 else 3
    explicit = timing.best_time(lambda: blocks.attention_weights(qq, kk) @ vv, repeats, device)
    fused = timing.best_time(lambda: F.scaled_dot_product_attention(qq, kk, vv), repeats, device)
    w_bytes = (lambda w: w.element_size() * w.nelement())(blocks.attention_weights(qq, kk))
    peak = ""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        blocks.attention_weights(qq, kk) @ vv
        peak = f"{torch.cuda.max_memory_allocated() / 2**20:9.1f}"
    rows.append((side, n, explicit, fused, w_bytes, peak))

# %%
print(f"{'map':>7} {'tokens':>7} {'explicit ms':>12} {'fused ms':>9} {'W size MiB':>11}" + ("  peak MiB" if device.type == "cuda" else ""))
for side, n, explicit, fused, w_bytes, peak in rows:
    print(f"{side:>4}x{side:<2} {n:>7} {explicit * 1e3:12.2f} {fused * 1e3:9.2f} {w_bytes / 2**20:11.2f} {peak}")
t16, t64 = rows[1][2], rows[3][2]
print(f"\n64x64 attention took {t64 / t16:.0f}x the time of 16x16 and its W is {rows[3][4] / rows[1][4]:.0f}x larger.")

# %%
fig, ax = plt.subplots(figsize=(5.5, 3.2))
ax.loglog([r[1] for r in rows], [r[2] * 1e3 for r in rows], "o-", label="explicit (stores W)")
ax.loglog([r[1] for r in rows], [r[3] * 1e3 for r in rows], "s-", label="F.scaled_dot_product_attention")
ax.set_xlabel("tokens (H·W)"), ax.set_ylabel("ms per forward pass"), ax.legend(), ax.grid(alpha=0.3, which="both")
plt.show()

# %% [markdown]
# At the paper's scale the encoder's levels run from $256\times256$ down to $4\times4$. The size of one
# float32 $W$, per image and per head, at each of those resolutions:

# %%
for side in [256, 128, 64, 32, 16, 8, 4]:
    print(f"{side:>4}x{side:<4} {side * side:>6} tokens   W = {(side * side) ** 2 * 4 / 2**20:>12,.2f} MiB")

# %% [markdown]
# At $256\times256$ a single $W$ takes 16,384 MiB (16 GiB) for one image and one head; at $16\times16$ it is
# a quarter of a MiB.
# Attention at $16\times16$ (and in the middle block at $4\times4$) buys global context where it is cheap, and leaves the high resolutions,
# where detail is local anyway, to convolutions.
#
# > **What the paper says / what we chose** (E17 in [`docs/ERRATA.md`](../docs/ERRATA.md)). Section
# > 3.1.2 calls the block "multi-head" in one sentence, but eq. 8-10 are single-head: one $Q, K, V$ of
# > $C_h$ channels and one scaling by $\sqrt{C_h}$. We follow the equations: `AttnBlock` is single-head by
# > default. It also normalises its input with GroupNorm before eq. 8, as the reference VQGAN block does
# > (the paper does not mention a normalisation there). `AttnBlock(C, num_heads=n)` shows what the
# > multi-head reading would be: the same four $1\times1$ convolutions (so the same parameter count), with
# > the channels split into $n$ heads that each attend on their own and are scaled by $\sqrt{C/n}$
# > (exercise 3 repairs a hand-written one). It computes a different function from the same weights:

# %%
single, multi = blocks.AttnBlock(C, num_groups=8), blocks.AttnBlock(C, num_heads=4, num_groups=8)
multi.load_state_dict(single.state_dict())
count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
print(f"parameters: 1 head {count(single):,}, 4 heads {count(multi):,}")
print(f"mean |difference| of outputs with the same weights: {(single(h) - multi(h)).abs().mean():.4f}")
print("attention maps:", tuple(single.attention_map(h).shape), "vs", tuple(multi.attention_map(h).shape))

# %% [markdown]
# ## Exercises
#
# **Exercise 1 (predict, then measure).** Take the $16\times16$ map `h` of the walkthrough and its centre pixel
# $(8, 8)$. On how many of the 256 input pixels does that one output pixel depend, after a $3\times3$
# convolution, after two $3\times3$ convolutions in a row, and after the attention block `package`? *Write your
# prediction in the first cell below* (three numbers), before measuring.
#
# To measure it, write `pixels_seen(block, x, row, col)`: an $(H, W)$ bool map, `True` where the output pixel
# `(row, col)` of `block(x)` (all its channels, every sample) depends on the input pixel. You need no formula
# for each block: autograd knows which inputs an output was computed from.

# %%
def predicted_pixels_seen() -> dict[str, int]:
    """Of the 256 pixels of h, how many the centre output pixel depends on, for each block."""
    ### BEGIN SOLUTION
    return {"3x3 convolution": 9, "two 3x3 convolutions": 25, "attention block": 256}
    ### END SOLUTION


# %%
def pixels_seen(block: nn.Module, x: torch.Tensor, row: int, col: int) -> torch.Tensor:
    """(H, W) bool: True where output pixel (row, col) of block(x) depends on that input pixel."""
    ### BEGIN SOLUTION
    x = x.detach().clone().requires_grad_(True)
    block(x)[:, :, row, col].sum().backward()
    return x.grad.abs().sum(dim=(0, 1)) > 0
    ### END SOLUTION


# %%
checks.check_pixels_seen(checks.with_prediction(predicted_pixels_seen, pixels_seen))

# %%
conv_a, conv_b = nn.Conv2d(C, C, 3, padding=1), nn.Conv2d(C, C, 3, padding=1)
reach_blocks = {"3x3 convolution": conv_a, "two 3x3 convolutions": nn.Sequential(conv_a, conv_b),
                "attention block": package}
seen = {}
try:
    seen = {name: pixels_seen(block, h, 8, 8) for name, block in reach_blocks.items()}
except NotImplementedError:
    print("finish exercise 1 to see this measurement")
else:
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.6))
    for ax, (name, mask) in zip(axes, seen.items()):
        ax.imshow(mask, cmap="gray", vmin=0, vmax=1), ax.plot(8, 8, "r+", ms=10), ax.set_axis_off()
        ax.set_title(f"{name}: {int(mask.sum())} pixels", fontsize=9)
    plt.show()

# %%
checks.compare_prediction(predicted_pixels_seen, {name: int(mask.sum()) for name, mask in seen.items()})

# %% [markdown]
# How many $3\times3$ convolutions in a row would it take for the centre pixel to see the whole $16\times16$
# map, and for a corner pixel? That is the depth one attention block saves the encoder.
#
# **Exercise 2 (predict, then measure).** Shuffle the $H \cdot W$ pixels of a feature map with a random
# permutation, run a block, and put the output's pixels back in their original order. *Before running
# anything, write your prediction in the first cell below* for two blocks: the attention block `package`
# from the walkthrough, and a $3\times3$ convolution. Will the result `"equal"` the block's output on the
# unshuffled map (up to float rounding), `"differ a little"`, or `"differ completely"`?
#
# To measure it, write `shuffle_pixels(x, perm)`: for $x$ of shape $(B, C, H, W)$ and a permutation
# `perm` of $0 \dots HW - 1$, output pixel $i$ (in row-major order) is input pixel `perm[i]`, the same for
# every sample and channel. Putting pixels back is then a shuffle by the inverse permutation,
# `torch.argsort(perm)`.

# %%
def predicted_round_trip() -> dict[str, str]:
    """For each block: "equal", "differ a little" or "differ completely"."""
    ### BEGIN SOLUTION
    return {"attention block": "equal", "3x3 convolution": "differ completely"}
    ### END SOLUTION


# %%
def shuffle_pixels(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W): output pixel i (row-major) is input pixel perm[i]."""
    ### BEGIN SOLUTION
    return x.flatten(2)[:, :, perm].view_as(x)
    ### END SOLUTION


# %%
checks.check_shuffle_pixels(checks.with_prediction(predicted_round_trip, shuffle_pixels))

# %%
perm = torch.randperm(h.shape[-2] * h.shape[-1])
conv3 = nn.Conv2d(C, C, 3, padding=1)
round_trips = {}
try:
    with torch.no_grad():
        for name, block in [("attention block", package), ("3x3 convolution", conv3)]:
            direct = block(h)
            round_trip = shuffle_pixels(block(shuffle_pixels(h, perm)), torch.argsort(perm))
            gap = ((round_trip - direct).abs().max() / direct.abs().max()).item()
            word = "equal" if gap < 1e-5 else "differ a little" if gap < 0.1 else "differ completely"
            round_trips[name] = f"{word} ({gap:.1e} of the output's scale)"
except NotImplementedError:
    print("finish exercise 2 to see this measurement")

# %%
checks.compare_prediction(predicted_round_trip, round_trips)

# %% [markdown]
# Compare with your prediction. What does the result say about how much an attention block knows about
# *where* a pixel is? The FFTD Transformer of chapter 08 works on tokens too, and adds position
# embeddings to them: this measurement is the reason.
#
# **Exercise 3 (find the bugs, stretching).** A colleague wrote the multi-head reading of the block (E17) in one
# function, with the channels kept before the pixels. It runs, and with one head it even looks plausible, but
# it has three bugs: its output differs from `blocks.AttnBlock(C, num_heads=n)` with the same weights. Find
# them and write `attention_fixed(block, x)`, equal to `block(x)` for any number of heads, using the block's
# layers (`block.norm`, `block.q`, `block.k`, `block.v`, `block.proj_out`) but not the block's own methods.
# The check tells you how many bugs remain and gives one nudge per try.

# %%
def buggy_attention(block: blocks.AttnBlock, x: torch.Tensor) -> torch.Tensor:
    b, c, height, width = x.shape
    n, d = block.num_heads, c // block.num_heads
    hn = block.norm(x)
    q, k, v = (conv(hn).view(b, n, d, height * width) for conv in (block.q, block.k, block.v))  # (B, heads, d, HW)
    scores = torch.einsum("bhci,bhcj->bhij", q, k) / math.sqrt(c)  # score of query pixel i for key pixel j
    weights = scores.softmax(dim=2)
    out = torch.einsum("bhij,bhcj->bhic", weights, v)  # every query pixel's weighted average of the values
    return x + block.proj_out(out.reshape(b, c, height, width))


with checks.lenient():  # show the FAIL without stopping the test run
    checks.check_attention_fixed(buggy_attention)


# %%
def attention_fixed(block: blocks.AttnBlock, x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W): equal to block(x) for blocks.AttnBlock(C, num_heads=n)."""
    ### BEGIN SOLUTION
    b, c, height, width = x.shape
    n, d = block.num_heads, c // block.num_heads
    hn = block.norm(x)
    q, k, v = (conv(hn).view(b, n, d, height * width) for conv in (block.q, block.k, block.v))  # (B, heads, d, HW)
    scores = torch.einsum("bhci,bhcj->bhij", q, k) / math.sqrt(d)  # each head scaled by its own width
    weights = scores.softmax(dim=-1)  # row i (query pixel i) sums to 1 over the keys j
    out = torch.einsum("bhij,bhcj->bhci", weights, v)  # (B, heads, d, HW): a head's channels together, then pixels
    return x + block.proj_out(out.reshape(b, c, height, width))
    ### END SOLUTION


# %%
checks.check_attention_fixed(attention_fixed)

# %% [markdown]
# ## Going further
#
# No checks here: questions to explore with the code above.
#
# - **Heads and sharpness.** Repeat the entropy measurement of the $\sqrt{C}$ section per head, with $C = 256$
#   split into 1, 4 and 16 heads. Do more heads make each head's attention sharper or flatter?
# - **Which head looks where?** Give `blocks.AttnBlock(C, num_heads=4)` the colour features of the "What does a
#   pixel attend to?" section in one head and zeros in the others. What do the other heads' maps show, and why?
# - **Memory at the paper's scale.** At batch 16, 4 heads, bfloat16: at which resolution does one layer's
#   explicit $W$ outgrow an 80 GB GPU? What does the fused kernel change?
# - **Positions.** Add a sinusoidal position embedding to `h` before the block and repeat exercise 2's
#   measurement. Where must the embedding go for the round trip to break?

# %% [markdown]
# ## Summary
#
# - Self-attention (eq. 8-10) mixes information between all pixels in one step; its weights are a
#   softmax of scaled dot products, and `F.scaled_dot_product_attention` computes the same numbers.
# - The $1/\sqrt{C}$ scaling keeps the softmax from saturating as the channel count grows.
# - Its cost grows with the square of the number of pixels: cheap at $16\times16$, prohibitive at
#   $256\times256$, which is why the paper (and VQGAN before it) puts attention only at low resolutions.
# - The paper's equations are single-head; so is our default. The multi-head reading splits the
#   channels into heads, each scaled by its own width (E17).
# - Attention alone does not know where a pixel is: shuffling the pixels commutes with it (measured in
#   exercise 2).
#
# Next: chapter 03 turns the encoder's output into codebook entries: vector quantization.

# %%
print(f"chapter ran in {fftd_course.chapter_seconds():.1f} s on {device}")
