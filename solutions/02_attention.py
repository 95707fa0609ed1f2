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
# A 3×3 convolution sees a pixel's immediate neighbours; it takes many layers before one position can
# react to another far away (say, one eye to the other). Self-attention lets every pixel look at every
# other pixel in one step. The IVQ-VAE puts one attention block in the encoder and decoder at the 16×16
# resolution, and one in the middle block at the lowest resolution (paper section 3.1.2):
#
# - eq. 8: `Q, K, V = Conv1x1(h)`, three separate 1×1 convolutions;
# - eq. 9: `W = Softmax(Q Kᵀ / sqrt(C_h))`, an (HW × HW) matrix of weights;
# - eq. 10: `h_attn = h + Conv1x1(W V)`, a residual connection like chapter 01's.
#
# **In this chapter you will**
# - build attention from scratch and show it equals PyTorch's `scaled_dot_product_attention` and the
#   package's `AttnBlock`;
# - see why the scores are divided by `sqrt(C)`;
# - look at attention maps on toy faces;
# - measure the time and memory of attention at 8×8 to 64×64 maps, and see why the paper uses it at 16×16;
# - settle what the paper's "multi-head" sentence means for its single-head equations.

# %%
import math
import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

import fftd_course
from fftd_course import blocks, checks, data, viz

torch.manual_seed(0)
device = fftd_course.default_device()
images, labels = data.make_toy_faces(8, size=32, seed=0)
print("device:", device)

# %% [markdown]
# ## Attention, step by step
#
# Start from a feature map `h` of shape (B, C, H, W). Eq. 8 makes queries, keys and values with 1×1
# convolutions (a per-pixel linear map). Attention treats the H·W pixels as a set of tokens, so we
# flatten them: (B, C, H, W) -> (B, HW, C).

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
# Eq. 9: the score of query pixel *i* for key pixel *j* is the dot product of their vectors, divided by
# `sqrt(C)`; a softmax over *j* turns each row into weights that sum to 1.

# %%
scores = q @ k.transpose(1, 2) / math.sqrt(C)  # (B, HW, HW)
W = scores.softmax(dim=-1)
print("W:", tuple(W.shape), "| every row sums to 1:", torch.allclose(W.sum(-1), torch.ones(W.shape[:-1])))

# %% [markdown]
# Eq. 10: each pixel's output is the weighted average of all values, projected by a last 1×1 convolution
# and added back to the input.

# %%
out = W @ v                                                  # (B, HW, C)
out = out.transpose(1, 2).reshape(h.shape)                   # (B, HW, C) -> (B, C, H, W)
h_attn = h + proj_out(out)
print("h_attn:", tuple(h_attn.shape))

# %% [markdown]
# PyTorch has this computation built in: `F.scaled_dot_product_attention(q, k, v)` uses the same
# `1/sqrt(C)` scaling and, where a fused kernel exists, never stores the (HW × HW) matrix. The package's
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
# ## Why divide by sqrt(C)?
#
# If the entries of q and k have unit variance, their dot product over C channels has variance C. Without
# the scaling, scores grow like `sqrt(C)`, the softmax saturates into a near one-hot row, and its gradient
# vanishes. With it, the spread of the scores stays the same whatever C is. We measure the entropy of the
# attention rows (in nats; a uniform row over 256 pixels has `ln 256`) for random unit-variance q and k:

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
# `W[i, j]` is large where pixel *j* looks like pixel *i*, wherever it is in the image: a dark pupil finds
# the other pupil and the nose in a single step, which a 3×3 convolution could only do after many layers.
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
# ## Time and memory: why the paper puts attention at 16×16
#
# The weight matrix W has (HW)² entries: doubling the side of the map multiplies it by 16. We time one
# attention forward pass (explicit, storing W, and PyTorch's fused function; best of several runs) at 8×8 to 64×64 maps with
# C = 128 channels, batch 1, and measure the memory of W from the tensor itself (on a GPU, the peak
# allocated memory is shown too).

# %%
def time_it(fn, repeats: int) -> float:
    """The best of `repeats` timed calls, after one warm-up: the least disturbed measurement."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


rows = []
for side in tqdm([8, 16, 32, 64], desc="map size"):
    n = side * side
    qq, kk, vv = (torch.randn(1, n, 128, device=device) for _ in range(3))
    repeats = 20 if side <= 32 else 3
    explicit = time_it(lambda: blocks.attention_weights(qq, kk) @ vv, repeats)
    fused = time_it(lambda: F.scaled_dot_product_attention(qq, kk, vv), repeats)
    w_bytes = (lambda w: w.element_size() * w.nelement())(blocks.attention_weights(qq, kk))
    peak = ""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        blocks.attention_weights(qq, kk) @ vv
        peak = f"{torch.cuda.max_memory_allocated() / 2**20:9.1f}"
    rows.append((side, n, explicit, fused, w_bytes, peak))

print(f"{'map':>7} {'tokens':>7} {'explicit ms':>12} {'fused ms':>9} {'W size MiB':>11}" + ("  peak MiB" if device.type == "cuda" else ""))
for side, n, explicit, fused, w_bytes, peak in rows:
    print(f"{side:>4}x{side:<2} {n:>7} {explicit * 1e3:12.2f} {fused * 1e3:9.2f} {w_bytes / 2**20:11.2f} {peak}")
t16, t64 = rows[1][2], rows[3][2]
print(f"\n64x64 attention took {t64 / t16:.0f}x the time of 16x16 and its W is {rows[3][4] / rows[1][4]:.0f}x larger.")

fig, ax = plt.subplots(figsize=(5.5, 3.2))
ax.loglog([r[1] for r in rows], [r[2] * 1e3 for r in rows], "o-", label="explicit (stores W)")
ax.loglog([r[1] for r in rows], [r[3] * 1e3 for r in rows], "s-", label="F.scaled_dot_product_attention")
ax.set_xlabel("tokens (H·W)"), ax.set_ylabel("ms per forward pass"), ax.legend(), ax.grid(alpha=0.3, which="both")
plt.show()

# %% [markdown]
# At the paper's scale the encoder's levels run from 256×256 down to 4×4. The size of one float32 W,
# per image and per head, at each of those resolutions:

# %%
for side in [256, 128, 64, 32, 16, 8, 4]:
    print(f"{side:>4}x{side:<4} {side * side:>6} tokens   W = {(side * side) ** 2 * 4 / 2**20:>12,.2f} MiB")

# %% [markdown]
# At 256×256 a single W would take tens of GiB; at 16×16 it is a fraction of a MiB. Attention at 16×16
# (and in the middle block at 4×4) buys global context where it is cheap, and leaves the high resolutions,
# where detail is local anyway, to convolutions.
#
# > **What the paper says / what we chose** (E17). Section 3.1.2 calls the block "multi-head" in one sentence,
# > but eq. 8-10 are single-head: one Q, K, V of C_h channels and one scaling by `sqrt(C_h)`. We follow the
# > equations: `AttnBlock` is single-head by default. It also normalises its input with GroupNorm before
# > eq. 8, as the reference VQGAN block does (the paper does not mention a normalisation there).
# > `AttnBlock(C, num_heads=n)` shows what the multi-head reading would be: the same four 1×1
# > convolutions (so the same parameter count), with the channels split into n heads that each attend
# > on their own and are scaled by `sqrt(C / n)`. It computes a different function from the same weights:

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
# **Exercise 1.** Write the attention weights of eq. 9 for queries and keys of shape `(..., N, C)`:
# `Softmax(Q Kᵀ / sqrt(C))`, a `(..., N, M)` tensor whose rows sum to 1.

# %%
def attention_weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Softmax(Q K^T / sqrt(C)) over the last dimension (eq. 9)."""
    ### BEGIN SOLUTION
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return scores.softmax(dim=-1)
    ### END SOLUTION


# %%
checks.check_attention_weights(attention_weights)

# %% [markdown]
# **Exercise 2.** Write the forward pass of a single-head attention block (eq. 8-10): normalise, make
# q, k and v with the 1×1 convolutions, flatten the pixels to tokens, weight the values, reshape back,
# project with `proj_out` and add the input. You may use your `attention_weights`.

# %%
class MyAttnBlock(nn.Module):
    def __init__(self, channels: int, num_groups: int = 32):
        super().__init__()
        self.norm = blocks.group_norm(channels, num_groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        b, c, height, width = x.shape
        hn = self.norm(x)
        q, k, v = (conv(hn).flatten(2).transpose(1, 2) for conv in (self.q, self.k, self.v))  # (B, HW, C)
        out = attention_weights(q, k) @ v
        out = out.transpose(1, 2).reshape(b, c, height, width)
        return x + self.proj_out(out)
        ### END SOLUTION


# %%
checks.check_attn_block(MyAttnBlock)

# %% [markdown]
# **Going further (no check).** Time `MyAttnBlock` against `blocks.AttnBlock` at 32×32 and 64×64 maps.
# Where does the difference come from?
#
# ## Summary
#
# - Self-attention (eq. 8-10) mixes information between all pixels in one step; its weights are a
#   softmax of scaled dot products, and `F.scaled_dot_product_attention` computes the same numbers.
# - The `1/sqrt(C)` scaling keeps the softmax from saturating as the channel count grows.
# - Its cost grows with the square of the number of pixels: cheap at 16×16, prohibitive at 256×256, which
#   is why the paper (and VQGAN before it) puts attention only at low resolutions.
# - The paper's equations are single-head; so is our default.
#
# Next: chapter 03 turns the encoder's output into codebook entries: vector quantization.
