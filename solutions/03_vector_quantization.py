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
# # 03 · Vector quantization
#
# The "VQ" in IVQ-VAE: between the encoder and the decoder sits a **codebook**, a table of $K$ vectors. Every
# vector of the encoder's output is replaced by its nearest entry, so an image becomes a small grid of integers
# (code indices). The paper uses $K = 16384$ codes of 4 channels and, at its chosen $f = 64$, a $4\times4$ grid: 16
# integers per $256\times256$ image, which stage 2 (FFTD) learns to generate.
#
# The paper names the quantization loss $\mathcal{L}_{vq}$ (eq. 15) and says no more (E18 in
# [`docs/ERRATA.md`](../docs/ERRATA.md)): this chapter builds the standard one (VQ-VAE, VQGAN) and measures its
# best-known failure.
#
# **In this chapter you will**
# - snap vectors to their nearest code, and pass gradients through the snap with the **straight-through estimator**;
# - see which parameters each term of $\mathcal{L}_{vq}$ moves, and where $\beta$ belongs;
# - **measure codebook collapse** on toy faces and compare the fixes: dead-code replacement, l2-normalised codes
#   with k-means initialisation, and finite scalar quantization (FSQ);
# - count the bits a $4\times4$ grid of codes holds;
# - predict which codes win under taming's initialisation, write an EMA codebook update, and find two bugs in a
#   quantizer.

# %%
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

import fftd_course
from fftd_course import checks, data, quantize
from fftd_course.ivqvae import CONFIGS

device = fftd_course.setup_chapter(seed=0)

# %% [markdown]
# ## 1. The nearest code
#
# A codebook is a $(K, D)$ tensor: $K$ codes $e_1, \dots, e_K$ of dimension $D$ (the latent channels).
# A latent $(B, D, H, W)$ holds $B \cdot H \cdot W$ vectors; each one is replaced by the code at the
# smallest Euclidean distance,
# $$z_q = e_{k^*}, \qquad k^* = \arg\min_k \lVert z_e - e_k \rVert^2 .$$
# In two dimensions we can look at it: every code owns the region of points closer to it than to any
# other code (a Voronoi cell), and quantization maps the whole cell onto the code.

# %%
g = torch.Generator().manual_seed(0)
codebook_2d = torch.randn(8, 2, generator=g)
points = torch.randn(300, 2, generator=g) * 1.2


def nearest_by_broadcasting(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    distances = ((z[:, None, :] - codebook[None, :, :]) ** 2).sum(-1)  # (N, 1, D) - (1, K, D) -> (N, K)
    return distances.argmin(dim=1)  # (N,)


assign = nearest_by_broadcasting(points, codebook_2d)
xs = torch.linspace(-4.5, 4.5, 300)
grid = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)
cells = nearest_by_broadcasting(grid, codebook_2d).reshape(300, 300)

fig, ax = plt.subplots(figsize=(4.5, 4.5))
ax.imshow(cells, origin="lower", extent=(-4.5, 4.5, -4.5, 4.5), cmap="tab10", alpha=0.25, vmin=0, vmax=9)
ax.scatter(points[:, 0], points[:, 1], c=assign, cmap="tab10", vmin=0, vmax=9, s=8)
ax.scatter(codebook_2d[:, 0], codebook_2d[:, 1], c="black", marker="*", s=150, label="codes")
ax.set_title("each point goes to its nearest code"), ax.legend(loc="upper right")
plt.show()
print("points per code:", torch.bincount(assign, minlength=8).tolist())

# %% [markdown]
# Broadcasting builds an $(N, K, D)$ difference tensor, which is wasteful at the paper's size.
# Expanding the square,
# $$\lVert z - e_k \rVert^2 = \lVert z \rVert^2 - 2\, z \cdot e_k + \lVert e_k \rVert^2 ,$$
# needs only an $(N, K)$ matrix product. `quantize.nearest_code` uses that form and works through the
# rows in blocks, so that not even the whole $(N, K)$ matrix has to exist at once. Same answers:

# %%
z_test, codes_test = torch.randn(2000, 4, generator=g), torch.randn(512, 4, generator=g)
same = torch.equal(nearest_by_broadcasting(z_test, codes_test), quantize.nearest_code(z_test, codes_test))
print(f"broadcasting == quantize.nearest_code on 2000 vectors and 512 codes: {same}")

paper = CONFIGS["paper-f8"]
n_vectors = 16 * paper.latent_size**2  # a batch of 16 images at f = 8, 256 px
mib = 4 / 2**20
print(f"paper f = 8, batch 16: {n_vectors} vectors x {paper.num_codes} codes x {paper.z_channels} channels; "
      f"broadcasting needs {n_vectors * paper.num_codes * paper.z_channels * mib:,.0f} MiB, "
      f"the (N, K) matrix {n_vectors * paper.num_codes * mib:,.0f} MiB")

# %% [markdown]
# ## 2. The straight-through estimator
#
# $\arg\min$ is piecewise constant: moving $z_e$ a little does not change which code wins, so its
# derivative is zero almost everywhere (and PyTorch gives it none). Without a trick, the decoder's
# gradient stops at the codebook and the encoder never learns.
#
# The straight-through estimator (VQ-VAE, after Bengio et al.) pretends that quantization is the
# identity on the way back:
# $$z_q = z_e + \mathrm{sg}[e - z_e],$$
# where $\mathrm{sg}$ (stop-gradient, `.detach()`) makes the bracket a constant. Forward, $z_q$ equals
# the code $e$; backward, the gradient that arrives at $z_q$ is copied onto $z_e$.

# %%
z_e = torch.randn(5, 2, generator=g, requires_grad=True)
e = codebook_2d[nearest_by_broadcasting(z_e.detach(), codebook_2d)]
print("the code e depends on z_e through argmin only; does it carry a gradient?", e.requires_grad)

z_q = z_e + (e - z_e).detach()  # straight-through
print(f"forward values equal the codes up to float rounding: {torch.allclose(z_q, e, atol=1e-6)} "
      f"(largest difference {(z_q - e).abs().max().item():.1e}: z_e + (e - z_e) is rounded twice)")

w = torch.randn(5, 2, generator=g)
decoder_loss = (w * z_q**2).sum()  # any downstream loss; its gradient at z_q is 2 w z_q
decoder_loss.backward()
print("gradient reaching z_e      :", z_e.grad[0].tolist())
print("loss gradient at z_q (= e) :", (2 * w * e)[0].tolist())
print("max |difference| over all vectors:", (z_e.grad - 2 * w * e).abs().max().item())

# %% [markdown]
# The gradient that reaches $z_e$ is the loss gradient **evaluated at the code $e$**, copied
# unchanged. In one dimension: the forward pass is a staircase, the backward pass pretends it is the
# line $y = x$.

# %%
line = torch.linspace(-2, 2, 401, requires_grad=True)
codes_1d = torch.linspace(-1.75, 1.75, 8).unsqueeze(1)
stairs = codes_1d[quantize.nearest_code(line.detach().unsqueeze(1), codes_1d)].squeeze(1)
through = line + (stairs - line).detach()
(slope,) = torch.autograd.grad(through.sum(), line)

fig, axes = plt.subplots(1, 2, figsize=(9, 3))
axes[0].plot(line.detach(), through.detach(), label="forward: z_q (staircase)")
axes[0].plot(line.detach(), line.detach(), "--", color="grey", label="y = z_e")
axes[0].set_xlabel("z_e"), axes[0].legend()
axes[1].plot(line.detach(), slope, color="C1")
axes[1].set_ylim(-0.1, 1.2), axes[1].set_xlabel("z_e"), axes[1].set_title("backward: d z_q / d z_e used by autograd")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3. The two terms of $\mathcal{L}_{vq}$
#
# The straight-through gradient trains the encoder and decoder, but nothing yet moves the codes. VQ-VAE
# adds two squared distances between each encoder output and its code, with the stop-gradient on
# opposite sides:
# $$\mathcal{L}_{vq} = \underbrace{\lVert \mathrm{sg}[z_e] - e \rVert^2}_{\text{codebook term}}
#   + \beta\, \underbrace{\lVert z_e - \mathrm{sg}[e] \rVert^2}_{\text{commitment term}} .$$
#
# - the **codebook term** pulls each *chosen code* towards the encoder outputs assigned to it (a
#   k-means step done by gradient descent; exercise 3 makes that precise);
# - the **commitment term** pulls the *encoder* towards its codes, so that its outputs do not drift
#   away from the codebook; $\beta = 0.25$ (VQ-VAE) keeps it weaker.
#
# Autograd confirms which side each term moves:

# %%
codebook = torch.randn(8, 2, generator=g, requires_grad=True)
z_e = torch.randn(6, 2, generator=g, requires_grad=True)
e = codebook[nearest_by_broadcasting(z_e.detach(), codebook.detach())]
codebook_term = F.mse_loss(e, z_e.detach())
commitment_term = F.mse_loss(z_e, e.detach())
for name, term in [("codebook term", codebook_term), ("commitment term", commitment_term)]:
    g_code, g_enc = torch.autograd.grad(term, [codebook, z_e], retain_graph=True, allow_unused=True, materialize_grads=True)
    print(f"{name:16s}: |grad| on the codebook {g_code.norm():.4f}, on the encoder output {g_enc.norm():.4f}")

# %% [markdown]
# **Where $\beta$ goes.** taming-transformers' `VectorQuantizer2` defaults to `legacy=True`, which
# computes $\beta \lVert \mathrm{sg}[z_e] - e \rVert^2 + \lVert z_e - \mathrm{sg}[e] \rVert^2$: $\beta$ on
# the codebook term (taming issues #46, #57). Both terms measure the same distance, so **the loss value
# is identical either way**; only the gradients differ, which is why the swap went unnoticed:

# %%
beta = 0.25
ours = codebook_term + beta * commitment_term
legacy = beta * codebook_term + commitment_term
print(f"loss value: ours {ours.item():.6f}, taming legacy {legacy.item():.6f}")
for name, loss in [("ours (beta on commitment)", ours), ("taming legacy (beta on codebook)", legacy)]:
    g_code, g_enc = torch.autograd.grad(loss, [codebook, z_e], retain_graph=True)
    print(f"{name:34s}: |grad| codebook {g_code.norm():.4f}, encoder {g_enc.norm():.4f}")

# %% [markdown]
# ### The package's quantizer
#
# `quantize.VectorQuantizer` does all of the above on $(B, C, H, W)$ latents: it moves the channels
# last and flattens to $(B \cdot H \cdot W, C)$ rows, finds the nearest codes, applies the
# straight-through estimator, puts the rows back in place and returns a `QuantizerOutput` with `z_q`,
# `loss`, the two terms, `indices` $(B, H, W)$ and the batch perplexity. `lookup` turns indices back
# into latents. (Exercise 4 gives you a hand-written quantizer with two bugs to find.)

# %%
vq = quantize.VectorQuantizer(num_codes=64, dim=4, beta=0.25)
with torch.no_grad():
    vq.codebook.normal_()
z = torch.randn(2, 4, 4, 4, generator=g, requires_grad=True)
out = vq(z)
print(f"z_q {tuple(out.z_q.shape)}, indices {tuple(out.indices.shape)}, loss {out.loss.item():.4f} = "
      f"codebook {out.codebook_loss.item():.4f} + 0.25 x commitment {out.commitment_loss.item():.4f}")
torch.testing.assert_close(out.loss, out.codebook_loss + 0.25 * out.commitment_loss)
torch.testing.assert_close(vq.lookup(out.indices), out.z_q.detach())  # indices in, latents out
(out.z_q * torch.randn_like(out.z_q)).sum().backward()
print("z_q carries a straight-through gradient back to z:", z.grad is not None and bool(z.grad.abs().sum() > 0))

# %% [markdown]
# ## 4. Codebook collapse, measured
#
# A code receives gradient only when it is **chosen** (wins an argmin). A code that no encoder output is near never
# wins and never moves: a **dead code**. If the encoder's outputs land
# near a handful of codes early on, the rest of the codebook dies. taming's initialisation makes this likely: codes
# start uniform in $[-1/K, 1/K]$, tiny next to the encoder's outputs (the run prints both). *Which* codes win is
# exercise 2: predict it before you look at the plots below.
#
# The known fixes (E19 in [`docs/ERRATA.md`](../docs/ERRATA.md); the README of
# [vector-quantize-pytorch](https://github.com/lucidrains/vector-quantize-pytorch) collects more):
# - **dead-code replacement**: every so often, move unchosen codes onto recent encoder outputs. A $4\times 4$ latent
#   makes only 16 assignments per image, so candidates come from a **buffer** of the last few thousand outputs;
# - **l2-normalised codes with k-means initialisation**: compare directions on the unit sphere (no code can hide far
#   away by its norm), starting the codes where the data is;
# - **FSQ** (finite scalar quantization): round each of the 4 channels to a few fixed levels; the codebook is the
#   grid of all combinations, with nothing to learn and so nothing to die.

# %% [markdown]
# **The experiment.** To compare them in seconds, we shrink the autoencoder to its core: an $f = 8$ encoder (one
# strided convolution and a $1\times 1$ convolution) turns each $8\times8$ patch of a 32 px toy face into one vector
# of the paper's $4\times 4$ grid of 4-channel vectors; the decoder mirrors it. Only the quantizer changes between
# runs. Usage is counted over a sliding window of the last assignments (`quantizer.usage()`), and at the end on
# held-out faces.

# %%
on_gpu = device.type == "cuda"
if on_gpu:  # the paper's codebook size: 16384 codes, FSQ levels (16, 16, 8, 8)
    num_codes, fsq_levels, steps, n_train, n_held, batch = 16384, (16, 16, 8, 8), 1000, 16384, 4096, 256
else:  # CPU: 1024 codes, FSQ levels (8, 8, 4, 4) = 1024 codes in the same 4 channels
    num_codes, fsq_levels, steps, n_train, n_held, batch = 1024, (8, 8, 4, 4), 300, 2048, 256, 32
assert math.prod(fsq_levels) == num_codes
train_images, _ = data.make_toy_faces(n_train, 32, seed=0)
held_images, _ = data.make_toy_faces(n_held, 32, seed=1)
train_images, held_images = train_images.to(device), held_images.to(device)

variants = {
    "plain VQ": lambda: quantize.VectorQuantizer(num_codes, 4),
    "dead-code replacement": lambda: quantize.VectorQuantizer(num_codes, 4, replace_dead_codes=True),
    "l2 + k-means init": lambda: quantize.VectorQuantizer(num_codes, 4, l2_normalize=True, kmeans_init=True),
    "l2 + k-means + dead-code": lambda: quantize.VectorQuantizer(num_codes, 4, l2_normalize=True, kmeans_init=True,
                                                                 replace_dead_codes=True),
    f"FSQ {fsq_levels}": lambda: quantize.FiniteScalarQuantizer(fsq_levels),
}
print(f"{num_codes} codes of 4 channels, {steps} steps of {batch} images "
      f"({batch * 16} assignments per step), {n_held} held-out images ({n_held * 16} assignments)")


# %%
def patch_autoencoder() -> tuple[nn.Module, nn.Module]:
    encoder = nn.Sequential(nn.Conv2d(3, 128, 8, stride=8), nn.SiLU(), nn.Conv2d(128, 4, 1))  # (B,3,32,32) -> (B,4,4,4)
    decoder = nn.Sequential(nn.Conv2d(4, 128, 1), nn.SiLU(), nn.ConvTranspose2d(128, 3, 8, stride=8))  # and back
    return encoder.to(device), decoder.to(device)


torch.manual_seed(0)
encoder, _ = patch_autoencoder()
with torch.no_grad():  # what plain VQ starts from: taming's codes against a fresh encoder's outputs
    start_norms = (quantize.VectorQuantizer(num_codes, 4).codebook.norm(dim=1).mean().item(),
                   encoder(train_images[:batch]).norm(dim=1).mean().item())
print(f"at the start of training (plain VQ): mean code norm {start_norms[0]:.4f}, mean encoder-output norm "
      f"{start_norms[1]:.3f} ({start_norms[1] / start_norms[0]:.0f} times larger)")


# %%
def train_with(make_quantizer, progress) -> dict:
    torch.manual_seed(0)  # the same encoder, decoder and batches for every quantizer
    encoder, decoder = patch_autoencoder()
    quantizer = make_quantizer().to(device)
    params = [*encoder.parameters(), *decoder.parameters(), *quantizer.parameters()]
    optimizer = torch.optim.Adam(params, lr=2e-3)
    curve = []
    for step in range(1, steps + 1):
        x = train_images[torch.randint(len(train_images), (batch,), device=device)]
        out = quantizer(encoder(x))
        loss = (decoder(out.z_q) - x).abs().mean() + out.loss  # L1 (eq. 11) + L_vq
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 0:
            curve.append((step, quantizer.usage().distinct))
        progress.update()
    quantizer.eval()
    with torch.no_grad():
        out = quantizer(encoder(held_images))
        l1 = (decoder(out.z_q) - held_images).abs().mean().item()
    return dict(curve=curve, usage=quantize.codebook_usage(out.indices, num_codes), l1=l1,
                quantizer=quantizer, encoder=encoder, decoder=decoder)


# %%
progress = tqdm(total=steps * len(variants), desc="training 5 quantizers")
results = {name: train_with(make, progress) for name, make in variants.items()}
progress.close()

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
for name, r in results.items():
    steps_seen, used = zip(*r["curve"])
    axes[0].plot(steps_seen, used, label=name)
    counts = r["usage"].counts.sort(descending=True).values.cpu()
    axes[1].plot(torch.arange(1, num_codes + 1), counts.clamp(min=0.5), label=name)
axes[0].axhline(num_codes, color="grey", ls=":", label="codebook size")
axes[0].set_xlabel("training step"), axes[0].set_ylabel("distinct codes in the usage window")
axes[0].set_title("codes in use during training"), axes[0].set_yscale("log"), axes[0].legend(fontsize=8)
axes[1].set_xscale("log"), axes[1].set_yscale("log"), axes[1].set_ylim(bottom=0.7)
axes[1].set_xlabel("code rank"), axes[1].set_ylabel("uses on held-out faces"), axes[1].set_title("how evenly codes are used")
names = list(results)
axes[2].barh(names, [results[n]["usage"].distinct for n in names], color=[f"C{i}" for i in range(len(names))])
axes[2].set_xlabel("distinct codes on held-out faces"), axes[2].invert_yaxis()
plt.tight_layout()
plt.show()

# %%
print(f"{'quantizer':26s} {'held-out codes':>15s} {'perplexity':>11s} {'bits/token':>11s} {'held-out L1':>12s}")
for name, r in results.items():
    u = r["usage"]
    print(f"{name:26s} {u.distinct:8d} ({u.fraction_used:4.0%}) {u.perplexity:11.1f} {u.bits_per_code:11.2f} {r['l1']:12.4f}")
plain = results["plain VQ"]
best_name = max(results, key=lambda n: results[n]["usage"].distinct)
best = results[best_name]
print(f"\nplain VQ uses {plain['usage'].distinct} of {num_codes} codes on held-out faces; {best_name} uses "
      f"{best['usage'].distinct} ({best['usage'].distinct / max(1, plain['usage'].distinct):.1f} times as many), "
      f"with held-out L1 {best['l1']:.4f} against plain VQ's {plain['l1']:.4f}")

# %% [markdown]
# Where do the codes sit? Below, the first two of the four latent channels: grey dots are encoder
# outputs on held-out faces, red crosses are the codes. Where plain VQ has collapsed, its unused codes
# are still in the heap near the origin where they started (never chosen, never moved); dead-code
# replacement moves unused codes onto the data.

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 4))
for ax, name in zip(axes, ["plain VQ", "dead-code replacement"]):
    r = results[name]
    with torch.no_grad():
        outputs = r["encoder"](held_images[:128]).permute(0, 2, 3, 1).reshape(-1, 4).cpu()
    codes = r["quantizer"].codes().detach().cpu()
    ax.scatter(outputs[:, 0], outputs[:, 1], s=3, color="grey", alpha=0.4, label="encoder outputs")
    ax.scatter(codes[:, 0], codes[:, 1], s=6, color="red", marker="x", label="codes")
    ax.set_title(f"{name}: {r['usage'].distinct} codes used"), ax.set_xlabel("channel 0"), ax.set_ylabel("channel 1")
    ax.legend(loc="lower right", fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# How to read the numbers above (compare them with the run's printout):
# - **Plain VQ** starts with tiny codes (the printed start norms): the few outermost codes win and the rest never
#   move, so its reconstructions can only be as varied as the codes it uses.
# - **Dead-code replacement** revives unused codes on real encoder outputs, thousands of candidates from the buffer.
# - **l2 + k-means** starts well and compares directions only; without replacement, codes that lose early can still
#   die, more slowly.
# - **FSQ** has no learned codebook to die, but nothing forces the encoder to visit every grid cell: its usage is
#   whatever spread the encoder learns.
#
# One run of each is a measurement, not a verdict: seeds and step counts move the numbers. The IVQ-VAE
# configurations of `fftd_course.ivqvae` use l2 + k-means + dead-code replacement; `quantizer="fsq"` switches any of
# them to FSQ.

# %% [markdown]
# > **What the paper says / what we chose** (E18, E6, E19)
# >
# > - *Paper:* eq. 15 adds $\lambda_{vq} \mathcal{L}_{vq}$, "the quantization loss": no formula, no $\beta$, no word
# >   on codebook initialisation or collapse. *We:* use VQ-VAE's
# >   $\lVert \mathrm{sg}[z_e] - e \rVert^2 + \beta \lVert z_e - \mathrm{sg}[e] \rVert^2$ with $\beta = 0.25$ on the
# >   **commitment** term, not taming's legacy placement (same loss values, different gradients, as measured above).
# > - *Paper:* 16384 codes, "latent space 4" (E6). *We:* read it as 4 channels, a $4\times4\times4$ latent at
# >   f = 64, where collapse is the main risk of so many codes in so few dimensions. Every named IVQ-VAE
# >   configuration uses l2-normalised codes, k-means initialisation and dead-code replacement from a buffer of
# >   recent encoder outputs; FSQ with levels (16, 16, 8, 8), exactly 16384 codes in 4 channels, is the
# >   collapse-free alternative behind the same interface.
# > - *We:* report usage as distinct codes and perplexity over a stated set (a window of assignments in training,
# >   all held-out images at the end), never one batch's: at batch size 1 a batch shows at most 16 codes.

# %% [markdown]
# ## 5. Bits per image
#
# A code index out of $K$ carries at most $\log_2 K$ bits, so the whole image at most
# $\frac{H}{f} \cdot \frac{W}{f} \cdot \log_2 K$ bits, whatever the decoder does with it:

# %%
raw_bits = 256 * 256 * 3 * 8
print(f"{'config':10s} {'latent':>8s} {'tokens':>7s} {'bits':>7s} {'bytes':>6s} {'raw image / latent':>19s}")
for name in ["paper-f8", "paper-f16", "paper-f32", "paper-f64"]:
    c = CONFIGS[name]
    bits = c.bits_per_image
    print(f"{name:10s} {c.latent_size:4d}x{c.latent_size:<3d} {c.latent_size**2:7d} {bits:7.0f} {bits / 8:6.0f} {raw_bits / bits:18,.0f}x")
f64 = CONFIGS["paper-f64"]
tokens, bits_per_token = f64.latent_size**2, math.log2(f64.num_codes)
print(f"\nf = 64: {tokens} tokens x {bits_per_token:.0f} bits = {tokens * bits_per_token:.0f} bits "
      f"= {tokens * bits_per_token / 8:.0f} bytes per 256x256 image, against {raw_bits:,} bits of raw pixels")
print(f"distinct latents: 2^{tokens * bits_per_token:.0f} = {2.0 ** (tokens * bits_per_token):.2e}; "
      f"telling CelebA-HQ's 30,000 training faces apart needs only {math.log2(30000):.1f} bits")

# %% [markdown]
# What that implies:
# - A few dozen bytes cannot describe hair strands, skin texture or the background of a 256 px photo;
#   the decoder has to invent them. The paper itself reports blurry, smeared backgrounds and blames the
#   high compression (its section 5); the count above says why.
# - The same count is **far more than needed to index every training image**: an IVQ-VAE at f = 64 could
#   in principle memorise its training set as a lookup table, so reconstruction quality on
#   *training* images says little. Measure on held-out images (chapter 05 does).
# - For stage 2 the latent is tiny (a $4\times 4$ grid of 4 channels), which is why the FFTD Transformer has
#   only 16 tokens and samples quickly.
# - Only codes that are actually used carry information. The measured perplexity gives the effective
#   bits per token of each quantizer above:

# %%
for name, r in results.items():
    u = r["usage"]
    print(f"{name:26s}: {u.bits_per_code:5.2f} of {math.log2(num_codes):.0f} possible bits per token "
          f"-> at most {16 * u.bits_per_code:6.1f} bits per 4x4 image")

# %% [markdown]
# ## 6. The package: `fftd_course.quantize`
#
# | name | what it is |
# |---|---|
# | `nearest_code(z, codes)` | `(N, D), (K, D) -> (N,)` indices, blocked $\lVert z \rVert^2 - 2 z \cdot e + \lVert e \rVert^2$ |
# | `straight_through(z_e, z_q)` | $z_e + \mathrm{sg}[z_q - z_e]$ |
# | `vq_losses(z_e, z_q)` | `(codebook_loss, commitment_loss)` |
# | `codebook_usage(indices, K)` | distinct codes, perplexity, per-code counts |
# | `kmeans(x, k)` | Lloyd's k-means (used for codebook initialisation) |
# | `VectorQuantizer(K, D, beta, l2_normalize, kmeans_init, replace_dead_codes, usage_window, buffer_size)` | `forward(z) -> QuantizerOutput`, `lookup(indices)`, `snap(z)`, `usage()` |
# | `FiniteScalarQuantizer(levels)` | FSQ behind the same interface (`loss` is zero) |
#
# `snap(z)` is for stage 3: a latent sampled by the diffusion model is snapped to the nearest code
# before decoding (eq. 30). For FSQ this rounds to the grid without the `tanh` squashing that `forward`
# applies to encoder outputs.

# %%
fsq = quantize.FiniteScalarQuantizer((16, 16, 8, 8))
out = fsq(torch.randn(1, 4, 4, 4, generator=g) * 2)
print(f"FSQ {fsq.levels}: {fsq.num_codes} codes in {fsq.dim} channels; loss {out.loss.item()}, "
      f"indices {tuple(out.indices.shape)}, values per channel {[len(out.z_q[0, c].unique()) for c in range(4)]} (of the levels)")
assert torch.equal(fsq.lookup(out.indices), out.z_q) and torch.equal(fsq.snap(out.z_q)[1], out.indices)
print("lookup(indices) gives back z_q, and snap(z_q) gives back the indices")

# %% [markdown]
# ## Exercises
#
# **Exercise 1 (predict, then measure).** Plain VQ above ended with most of its codebook dead. Dead-code
# replacement (section 4) moves every code that no encoder output chose onto a recent encoder output. Do it
# once, by hand, to the trained plain-VQ model, then look at the held-out faces again. *Write your prediction in
# the first cell below:* how many codes will the held-out faces use, with what perplexity, and will the held-out
# L1 of the unchanged decoder get `"better"`, `"worse"` or stay `"about the same"`? (Section 4's table gives the
# values before.)
#
# Then write `revive_dead_codes(codebook, counts, candidates, generator)`: a new codebook in which every code
# with `counts == 0` sits on its own candidate row, drawn at random with `generator` (there are at least as many
# candidates as dead codes), while every used code stays where it was. The cell after the check counts uses on
# the training faces, revives the dead codes onto training outputs, and measures on held-out faces.

# %%
def predicted_revival() -> dict:
    """After the revival, on held-out faces: codes used, perplexity, and "better", "worse" or "about the same" L1."""
    ### BEGIN SOLUTION
    return {"codes used": 800, "perplexity": 600, "held-out L1": "worse"}
    ### END SOLUTION


# %%
def revive_dead_codes(codebook: torch.Tensor, counts: torch.Tensor, candidates: torch.Tensor,
                      generator: torch.Generator) -> torch.Tensor:
    """(K, D), (K,) counts, (N, D) -> (K, D): every code with count 0 moved onto a different random candidate."""
    ### BEGIN SOLUTION
    dead = (counts == 0).nonzero().squeeze(1)
    pick = torch.randperm(len(candidates), generator=generator)[: len(dead)].to(candidates.device)
    revived = codebook.clone()
    revived[dead] = candidates[pick].to(codebook.dtype)
    return revived
    ### END SOLUTION


# %%
checks.check_revive_dead_codes(checks.with_prediction(predicted_revival, revive_dead_codes))

# %%
plain = results["plain VQ"]
with torch.no_grad():  # (B, 4, h, w) -> (B h w, 4): one row per encoder output
    z_train, z_held = (plain["encoder"](x).permute(0, 2, 3, 1).reshape(-1, 4) for x in (train_images, held_images))
codes = plain["quantizer"].codes().detach()
train_counts = torch.bincount(quantize.nearest_code(z_train, codes), minlength=num_codes)
print(f"{int((train_counts == 0).sum())} of {num_codes} codes are dead on the {len(z_train)} training outputs")


@torch.no_grad()
def held_out(codebook: torch.Tensor) -> tuple[int, float, float]:
    """Codes used, perplexity and the decoder's L1 on the held-out faces, with their vectors snapped to codebook."""
    idx = quantize.nearest_code(z_held, codebook)
    usage = quantize.codebook_usage(idx, num_codes)
    z_q = codebook[idx].view(len(held_images), 4, 4, 4).permute(0, 3, 1, 2)  # rows back to (B, 4, 4, 4)
    return usage.distinct, usage.perplexity, (plain["decoder"](z_q) - held_images).abs().mean().item()


# %%
revival = {}
try:
    revived = revive_dead_codes(codes, train_counts, z_train, torch.Generator().manual_seed(0))
except NotImplementedError:
    print("finish exercise 1 to see this measurement")
else:
    (used0, ppl0, l1_0), (used1, ppl1, l1_1) = held_out(codes), held_out(revived)
    print(f"held-out faces before: {used0} codes, perplexity {ppl0:.1f}, L1 {l1_0:.4f}")
    print(f"held-out faces after:  {used1} codes, perplexity {ppl1:.1f}, L1 {l1_1:.4f}")
    word = "about the same" if abs(l1_1 - l1_0) < 0.02 * l1_0 else "better" if l1_1 < l1_0 else "worse"
    revival = {"codes used": used1, "perplexity": ppl1, "held-out L1": f"{word} ({l1_0:.4f} -> {l1_1:.4f})"}

# %%
checks.compare_prediction(predicted_revival, revival)

# %% [markdown]
# Perplexity counts how evenly the codes are *chosen*; it cannot tell whether the decoder knows what a chosen code
# means. A revived code sits on real data, but the decoder has never seen it. That is why the package revives codes
# during training, one usage window at a time, so that the decoder learns each new code before the next check.

# %% [markdown]
# **Exercise 2 (predict, then measure).** Plain VQ starts from taming's codebook, uniform in
# $[-1/K, 1/K]^D$, while a fresh encoder's outputs are many times longer (section 4 printed
# the ratio).
# *Before running anything, write your prediction in the first cell below:* which codes win the
# $\arg\min$? How many of them: `"all"`, `"most"` or `"a few"`? And where do the winners sit in the cube:
# `"near the origin"`, `"far from the origin"` or `"no pattern"`?
#
# Then turn the prediction into a rule. `winner_when_codes_are_tiny(z, codebook)` returns, for each row
# of `z`, the index of the code that wins **in the limit where every code is much shorter than `z`**,
# computed without any distance. The check tries codebooks of every scale and wants your limit rule
# there too (at the data's scale it is *not* the nearest code). The cell after the check measures how
# often the rule picks the true nearest code, and how many codes can win at all.

# %%
def predicted_winners() -> dict[str, str]:
    """Under taming's initialisation: how many codes ever win, and where they sit."""
    ### BEGIN SOLUTION
    return {"how many win": "a few", "where they sit": "far from the origin"}
    ### END SOLUTION


# %%
def winner_when_codes_are_tiny(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """(N, D), (K, D) -> (N,) int64: the winning code when ||e_k|| << ||z|| for every code."""
    ### BEGIN SOLUTION
    return (z @ codebook.T).argmax(dim=1)
    ### END SOLUTION


# %%
checks.check_tiny_code_winner(checks.with_prediction(predicted_winners, winner_when_codes_are_tiny))

# %%
K = num_codes
books = {"taming's ±1/K": torch.empty(K, 4).uniform_(-1 / K, 1 / K, generator=g),
         "data scale": torch.randn(K, 4, generator=g)}
z_fresh = torch.randn(20000, 4, generator=g)  # stand-ins for a fresh encoder's outputs
try:
    winners = {}
    for name, book in books.items():
        rule, nearest = winner_when_codes_are_tiny(z_fresh, book), quantize.nearest_code(z_fresh, book)
        winners[name] = nearest.unique()
        print(f"{name:>14}: your rule picks the nearest code for {(rule == nearest).float().mean():6.1%} of "
              f"{len(z_fresh)} vectors; {len(winners[name])} of {K} codes are ever nearest")
except NotImplementedError:
    winners = None
    print("finish exercise 2 to see this measurement")

# %%
winner_facts = None
if winners is not None:
    radius, won = books["taming's ±1/K"].norm(dim=1), winners["taming's ±1/K"]
    share, far = len(won) / K, (radius[won].mean() / radius.mean()).item()
    where = "far from the origin" if far > 1.1 else "near the origin" if far < 0.9 else "no pattern"
    winner_facts = {"how many win": f"{'all' if share > 0.95 else 'most' if share > 0.5 else 'a few'} "
                                    f"({len(won)} of {K})",
                    "where they sit": f"{where} (their mean length is {far:.2f} x the codebook's)"}
checks.compare_prediction(predicted_winners, winner_facts)

# %% [markdown]
# Compare with what you wrote down. Where do the winners of taming's codebook sit inside its cube?
# Below, all codes in grey and the winners in red, in the first two channels (scaled by $K$):

# %%
if winners is not None:
    tiny = books["taming's ±1/K"] * K
    won = tiny[winners["taming's ±1/K"]]
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(tiny[:, 0], tiny[:, 1], s=4, color="grey", label="all codes")
    ax.scatter(won[:, 0], won[:, 1], s=10, color="red", label="ever nearest")
    ax.set_xlabel("channel 0 × K"), ax.set_ylabel("channel 1 × K"), ax.legend(loc="lower right", fontsize=8)
    plt.show()
else:
    print("finish exercise 2 to see this picture")

# %% [markdown]
# **Exercise 3 (a variant: the EMA codebook).** The VQ-VAE paper's appendix, and taming's
# `EMAVectorQuantizer`, drop the codebook term and move the codes by an exponential moving average
# instead. Every code $e_k$ chosen by $n_k > 0$ of the $N$ vectors $z_i$ of a batch moves a fraction
# $1 - \gamma$ of the way towards their mean:
# $$e_k \leftarrow \gamma\, e_k + (1 - \gamma)\, m_k, \qquad m_k = \frac{1}{n_k} \sum_{i:\, k_i = k} z_i ,$$
# and a code that nobody chose stays where it is. Write `ema_codebook_step(codebook, z, indices, decay)`
# returning the new $(K, D)$ codebook (leave the input untouched, and avoid a Python loop over the
# codes). taming's version keeps running sums and counts with Laplace smoothing; this is the simplest form.

# %%
def ema_codebook_step(codebook: torch.Tensor, z: torch.Tensor, indices: torch.Tensor, decay: float) -> torch.Tensor:
    """codebook (K, D), z (N, D), indices (N,) of the chosen codes, decay gamma -> the updated codebook (K, D)."""
    ### BEGIN SOLUTION
    k = codebook.shape[0]
    n = torch.bincount(indices, minlength=k).to(z.dtype)
    sums = torch.zeros_like(codebook).index_add_(0, indices, z)
    means = sums / n.clamp_min(1).unsqueeze(1)
    moved = decay * codebook + (1 - decay) * means
    return torch.where(n.unsqueeze(1) > 0, moved, codebook)
    ### END SOLUTION


# %%
checks.check_ema_codebook_step(ema_codebook_step)

# %% [markdown]
# **How the EMA relates to the codebook term.** With `F.mse_loss`, the codebook term is
# $\frac{1}{ND} \sum_i \lVert \mathrm{sg}[z_i] - e_{k_i} \rVert^2$, and its gradient with respect to
# $e_k$ is $\frac{2 n_k}{ND} (e_k - m_k)$ (derive it on paper). One step of gradient descent with the
# **per-code** learning rate $\eta_k = (1 - \gamma) \frac{ND}{2 n_k}$ therefore lands exactly where your
# EMA step does. Autograd agrees:

# %%
codes_now = torch.randn(16, 4, generator=g)
z_batch = torch.randn(40, 4, generator=g)
chosen = quantize.nearest_code(z_batch, codes_now)
leaf = codes_now.clone().requires_grad_(True)
(grad,) = torch.autograd.grad(F.mse_loss(leaf[chosen], z_batch), leaf)  # the codebook term's gradient
n_k = torch.bincount(chosen, minlength=16).float().clamp_min(1)
gamma = 0.9
sgd = codes_now - ((1 - gamma) * z_batch.numel() / (2 * n_k)).unsqueeze(1) * grad
try:
    torch.testing.assert_close(ema_codebook_step(codes_now, z_batch, chosen, gamma), sgd)
    print("EMA step == one gradient step on the codebook term with a per-code learning rate")
except NotImplementedError:
    print("finish exercise 3 to see this comparison")

# %% [markdown]
# So the EMA is the codebook term with a learning rate that grows as $1/n_k$: a rarely chosen code
# jumps as far as a busy one. Look at what it does to a code with $n_k = 0$, and compare with
# section 4's dead codes (the "Going further" list comes back to it).
#
# **Exercise 4 (find the bug, stretching).** A colleague wrote the quantizer of section 3 by hand. It runs, every
# shape is right, the loss has the right value, and yet it has **two bugs**. Find them with the check's
# report, then write the corrected `vq_fixed(z_e, codebook, beta)`: `(z_q, loss)` as
# `quantize.VectorQuantizer` computes them (values *and* the gradients that reach `z_e` and the codebook).

# %%
def buggy_vq(z_e: torch.Tensor, codebook: torch.Tensor, beta: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    b, c, h, w = z_e.shape
    flat = z_e.reshape(-1, c)  # (B, C, H, W) -> (BHW, C)
    e = codebook[quantize.nearest_code(flat, codebook)]
    loss = beta * F.mse_loss(e, flat.detach()) + F.mse_loss(flat, e.detach())
    z_q = flat + (e - flat).detach()
    return z_q.reshape(b, c, h, w), loss


z_q, loss = buggy_vq(torch.randn(2, 4, 4, 4, generator=g), torch.randn(64, 4, generator=g))
print(f"z_q {tuple(z_q.shape)}, loss {loss.item():.4f}: it runs")
with checks.lenient():  # show the FAIL without stopping the test run
    checks.check_vq_straight_through(buggy_vq)


# %%
def vq_fixed(z_e: torch.Tensor, codebook: torch.Tensor, beta: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize z_e (B, C, H, W) with codebook (K, C): (z_q with straight-through gradient, L_vq)."""
    ### BEGIN SOLUTION
    b, c, h, w = z_e.shape
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, c)
    e = codebook[quantize.nearest_code(flat, codebook)]
    loss = F.mse_loss(e, flat.detach()) + beta * F.mse_loss(flat, e.detach())
    z_q = flat + (e - flat).detach()
    return z_q.reshape(b, h, w, c).permute(0, 3, 1, 2), loss
    ### END SOLUTION


# %%
checks.check_vq_straight_through(vq_fixed)

# %% [markdown]
# ## Going further
#
# No checks here: questions to explore with the code above.
#
# - **EMA and dead codes.** Train section 4's patch autoencoder with your `ema_codebook_step` in place
#   of the codebook term (call it under `torch.no_grad()` after each step, and keep only the commitment
#   term in the loss). Does the EMA alone keep more codes alive than plain VQ? What would you add?
# - **The legacy $\beta$.** Swap $\beta$ onto the codebook term in section 4's plain VQ run. The loss
#   values are the same; are the usage curves?
# - **Tiny codes on the sphere.** With `l2_normalize=True` every code has norm 1. What becomes of
#   exercise 2's argument, and why does k-means initialisation matter more there?
# - **FSQ levels.** $(8, 8, 4, 4)$ and $(4, 4, 8, 8)$ give the same 1024 codes. Does the order matter
#   for usage or held-out L1? Try $(32, 32)$ on 2 channels against $(4, 4, 4, 4, 4)$ on 5.

# %% [markdown]
# ## Summary
#
# - Quantization replaces each latent vector by its nearest code: an image becomes a grid of integers.
# - The straight-through estimator $z_e + \mathrm{sg}[e - z_e]$ copies the decoder's gradient, evaluated
#   at the code, onto the encoder output.
# - $\mathcal{L}_{vq}$ has a codebook term (moves codes) and a commitment term (moves the encoder,
#   weighted by $\beta$); taming's legacy default swaps $\beta$ without changing the loss value. An EMA
#   codebook is the codebook term with a per-code learning rate.
# - Codes that are never chosen never move: plain VQ collapses, and taming's tiny initial codes decide
#   which few win (exercise 2). Dead-code replacement from a buffer of recent outputs, l2 + k-means and
#   FSQ each keep many more codes alive, measured above.
# - At $f = 64$ a 256 px image is 16 tokens of $\log_2 16384 = 14$ bits: the decoder must invent the
#   rest, and usage (perplexity) decides how many of those bits are real.
#
# Next: chapter 04 builds the rest of the hybrid loss (L1, LPIPS, the PatchGAN discriminator), and
# chapter 05 trains the whole IVQ-VAE.

# %%
print(f"chapter ran in {fftd_course.chapter_seconds():.1f} s on {device}")
