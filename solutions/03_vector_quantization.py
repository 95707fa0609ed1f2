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
# The "VQ" in IVQ-VAE: between the encoder and the decoder sits a **codebook**, a table of `K` vectors.
# Every vector of the encoder's output is replaced by the nearest entry of that table, so an image
# becomes a small grid of integers (code indices). The paper uses `K = 16384` codes of 4 channels and,
# at its chosen compression f = 64, a 4×4 grid: 16 integers per 256×256 image. Stage 2 (FFTD) then
# learns to generate those latents.
#
# The paper names the quantization loss `L_vq` in eq. 15 and says nothing more about it. This chapter
# fills that gap with the standard construction (VQ-VAE, VQGAN) and measures its best-known failure.
#
# **In this chapter you will**
# - snap vectors to their nearest code and see the codebook as a partition of space;
# - pass gradients through that snap with the **straight-through estimator**, and check that the
#   gradient is copied unchanged;
# - write the two terms of `L_vq`, see which parameters each one moves, and where `beta` belongs;
# - **measure codebook collapse** on toy faces and compare the fixes: dead-code replacement,
#   l2-normalised codes with k-means initialisation, and finite scalar quantization (FSQ);
# - count the bits a 4×4 grid of codes can hold, and what that means for the paper's f = 64.

# %%
import math
import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

import fftd_course
from fftd_course import checks, data, quantize
from fftd_course.ivqvae import CONFIGS

device = fftd_course.default_device()
chapter_start = time.perf_counter()
print(f"device: {device}")

# %% [markdown]
# ## 1. The nearest code
#
# A codebook is a `(K, D)` tensor: `K` codes of dimension `D` (the latent channels). A latent
# `(B, D, H, W)` holds `B·H·W` vectors; each one is replaced by the code at the smallest Euclidean
# distance. In two dimensions we can look at it: every code owns the region of points closer to it than
# to any other code (a Voronoi cell), and quantization maps the whole cell onto the code.

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
# Broadcasting builds an `(N, K, D)` difference tensor, which is wasteful at the paper's size. Expanding
# the square, `||z - e||² = ||z||² - 2 z·e + ||e||²`, needs only an `(N, K)` matrix product.
# `quantize.nearest_code` uses that form and works through the rows in blocks, so that not even the
# whole `(N, K)` matrix has to exist at once. Same answers:

# %%
def nearest_by_expansion(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    distances = (z**2).sum(1, keepdim=True) - 2 * z @ codebook.T + (codebook**2).sum(1)  # (N, K)
    return distances.argmin(dim=1)


z_test, codes_test = torch.randn(2000, 4, generator=g), torch.randn(512, 4, generator=g)
same = [torch.equal(nearest_by_broadcasting(z_test, codes_test), f(z_test, codes_test))
        for f in (nearest_by_expansion, quantize.nearest_code)]
print(f"broadcasting == expansion: {same[0]}, broadcasting == quantize.nearest_code: {same[1]}")

paper = CONFIGS["paper-f8"]
n_vectors = 16 * paper.latent_size**2  # a batch of 16 images at f = 8, 256 px
mib = 4 / 2**20
print(f"paper f = 8, batch 16: {n_vectors} vectors x {paper.num_codes} codes x {paper.z_channels} channels; "
      f"broadcasting needs {n_vectors * paper.num_codes * paper.z_channels * mib:,.0f} MiB, "
      f"the (N, K) matrix {n_vectors * paper.num_codes * mib:,.0f} MiB")

# %% [markdown]
# ## 2. The straight-through estimator
#
# `argmin` is piecewise constant: moving `z_e` a little does not change which code wins, so its
# derivative is zero almost everywhere (and PyTorch gives it none). Without a trick, the decoder's
# gradient stops at the codebook and the encoder never learns.
#
# The straight-through estimator (VQ-VAE, after Bengio et al.) pretends that quantization is the
# identity on the way back: `z_q = z_e + sg[e - z_e]`, where `sg` (stop-gradient, `.detach()`) makes
# the bracket a constant. Forward, `z_q` equals the code `e`; backward, the gradient that arrives at
# `z_q` is copied onto `z_e`.

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
# The gradient that reaches `z_e` is the loss gradient **evaluated at the code `e`**, copied
# unchanged. In one dimension: the forward pass is a staircase, the backward pass pretends it is the
# line `y = x`.

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
# ## 3. The two terms of `L_vq`
#
# The straight-through gradient trains the encoder and decoder, but nothing yet moves the codes. VQ-VAE
# adds two squared distances between each encoder output and its code, with the stop-gradient on
# opposite sides:
#
# `L_vq = ||sg[z_e] - e||²  +  beta · ||z_e - sg[e]||²`
#
# - the **codebook term** pulls each *chosen code* towards the encoder outputs assigned to it (a
#   k-means step done by gradient descent);
# - the **commitment term** pulls the *encoder* towards its codes, so that its outputs do not drift
#   away from the codebook; `beta = 0.25` (VQ-VAE) keeps it weaker.
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
# **Where `beta` goes.** taming-transformers' `VectorQuantizer2` defaults to `legacy=True`, which
# computes `beta · ||sg[z_e] - e||² + ||z_e - sg[e]||²`: `beta` on the codebook term (taming issues
# #46, #57). Both terms measure the same distance, so **the loss value is identical either way**; only
# the gradients differ, which is why the swap went unnoticed:

# %%
beta = 0.25
ours = codebook_term + beta * commitment_term
legacy = beta * codebook_term + commitment_term
print(f"loss value: ours {ours.item():.6f}, taming legacy {legacy.item():.6f}")
for name, loss in [("ours (beta on commitment)", ours), ("taming legacy (beta on codebook)", legacy)]:
    g_code, g_enc = torch.autograd.grad(loss, [codebook, z_e], retain_graph=True)
    print(f"{name:34s}: |grad| codebook {g_code.norm():.4f}, encoder {g_enc.norm():.4f}")

# %% [markdown]
# ### The package's version is the same computation
#
# `quantize.VectorQuantizer` does all of the above on `(B, C, H, W)` latents: it flattens to
# `(B·H·W, C)` rows, finds the nearest codes, applies the straight-through estimator and returns a
# `QuantizerOutput` with `z_q`, `loss`, the two terms, `indices` `(B, H, W)` and the batch perplexity.
# Here is the step-by-step version on a latent, compared with the package on the same codebook:

# %%
def vq_step_by_step(z: torch.Tensor, codebook: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, c, h, w = z.shape
    flat = z.permute(0, 2, 3, 1).reshape(-1, c)  # (B, C, H, W) -> (BHW, C)
    indices = nearest_by_expansion(flat.detach(), codebook.detach())
    e = codebook[indices]
    loss = F.mse_loss(e, flat.detach()) + beta * F.mse_loss(flat, e.detach())
    z_q = (flat + (e - flat).detach()).reshape(b, h, w, c).permute(0, 3, 1, 2)  # back to (B, C, H, W)
    return z_q, loss, indices.reshape(b, h, w)


vq = quantize.VectorQuantizer(num_codes=64, dim=4, beta=0.25)
with torch.no_grad():
    vq.codebook.normal_()
z = torch.randn(2, 4, 4, 4, generator=g)
mine_z, theirs_z = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
codes_copy = vq.codebook.detach().clone().requires_grad_(True)
z_q, loss, indices = vq_step_by_step(mine_z, codes_copy, 0.25)
out = vq(theirs_z)
weight = torch.randn(2, 4, 4, 4, generator=g)
((z_q * weight).sum() + loss).backward()
((out.z_q * weight).sum() + out.loss).backward()
torch.testing.assert_close(z_q, out.z_q)
torch.testing.assert_close(loss, out.loss)
torch.testing.assert_close(mine_z.grad, theirs_z.grad)
torch.testing.assert_close(codes_copy.grad, vq.codebook.grad)
assert torch.equal(indices, out.indices)
torch.testing.assert_close(vq.lookup(out.indices), out.z_q.detach())  # indices in, latents out
print("same z_q, loss, indices and gradients as quantize.VectorQuantizer;", f"indices shape {tuple(out.indices.shape)}")

# %% [markdown]
# ## 4. Codebook collapse, measured
#
# A code receives gradient only when it is **chosen**: the codebook term moves the codes that won an
# argmin, nothing else. A code that no encoder output is close to never wins, never moves, and stays
# useless: a **dead code**. If the encoder's outputs all land near a handful of codes early in training,
# the rest of the codebook dies. taming's initialisation makes this likely: codes start uniform in
# `±1/K`, tiny next to the encoder's outputs (the run prints both), so the few outermost codes win
# everything.
#
# The known fixes (E19 in `docs/ERRATA.md`; the README of
# [vector-quantize-pytorch](https://github.com/lucidrains/vector-quantize-pytorch) collects more):
# - **dead-code replacement**: every so often, move codes that were not chosen onto recent encoder
#   outputs. With a 4×4 latent an image makes only 16 assignments, so the candidates come from a
#   **buffer** of the last few thousand encoder outputs, not just the current batch;
# - **l2-normalised codes with k-means initialisation**: compare directions on the unit sphere (no code
#   can hide far away by its norm) and start the codes where the data is;
# - **FSQ** (finite scalar quantization): round each of the 4 channels to a few fixed levels; the
#   codebook is the grid of all combinations and has nothing to learn, so nothing can die.
#
# **The experiment.** To compare them in seconds, we shrink the autoencoder to its core: an f = 8
# encoder that looks at each 8×8 patch of a 32 px toy face (one strided convolution and a 1×1
# convolution) gives the paper's 4×4 grid of 4-channel vectors; the decoder mirrors it. Only the
# quantizer changes between runs. Usage is counted over a sliding window of the last assignments
# (`quantizer.usage()`), and at the end on held-out faces.

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


def patch_autoencoder() -> tuple[nn.Module, nn.Module]:
    encoder = nn.Sequential(nn.Conv2d(3, 128, 8, stride=8), nn.SiLU(), nn.Conv2d(128, 4, 1))  # (B,3,32,32) -> (B,4,4,4)
    decoder = nn.Sequential(nn.Conv2d(4, 128, 1), nn.SiLU(), nn.ConvTranspose2d(128, 3, 8, stride=8))  # and back
    return encoder.to(device), decoder.to(device)


results = {}
progress = tqdm(total=steps * len(variants), desc="training 5 quantizers")
for name, make in variants.items():
    torch.manual_seed(0)  # the same encoder, decoder and batches for every quantizer
    encoder, decoder = patch_autoencoder()
    quantizer = make().to(device)
    params = [*encoder.parameters(), *decoder.parameters(), *quantizer.parameters()]
    optimizer = torch.optim.Adam(params, lr=2e-3)
    curve = []
    if name == "plain VQ":
        with torch.no_grad():
            start_norms = (quantizer.codebook.norm(dim=1).mean().item(), encoder(train_images[:batch]).norm(dim=1).mean().item())
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
    results[name] = dict(curve=curve, usage=quantize.codebook_usage(out.indices, num_codes), l1=l1,
                         quantizer=quantizer, encoder=encoder)
progress.close()
print(f"at the start of training (plain VQ): mean code norm {start_norms[0]:.4f}, mean encoder-output norm "
      f"{start_norms[1]:.3f} ({start_norms[1] / start_norms[0]:.0f} times larger)")

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
# - **Plain VQ** starts with tiny codes (the printed start norms), so the few outermost codes win the
#   assignments and the rest never move. Its reconstructions can only be as varied as the codes it uses.
# - **Dead-code replacement** revives unused codes on real encoder outputs; the buffer of recent
#   outputs gives it thousands of candidates even though each image makes only 16 assignments.
# - **l2 + k-means** starts well and compares directions only; without replacement, codes that lose
#   early can still die, more slowly.
# - **FSQ** cannot collapse in the same way (there is no learned codebook to die), but nothing forces
#   the encoder to visit every grid cell either: its usage is whatever spread the encoder learns.
#
# At this scale one run of each is a measurement, not a verdict: seeds and step counts move the
# numbers. The IVQ-VAE configurations of `fftd_course.ivqvae` use l2 + k-means + dead-code replacement;
# `quantizer="fsq"` switches any of them to FSQ.
#
# > **What the paper says / what we chose** (E18, E6, E19)
# >
# > - *Paper:* eq. 15 adds `lambda_vq · L_vq` and calls `L_vq` "the quantization loss"; no formula, no
# >   `beta`, no word on codebook initialisation or collapse. *We:* use VQ-VAE's
# >   `||sg[z_e] - e||² + beta ||z_e - sg[e]||²` with `beta = 0.25` on the **commitment** term, not
# >   taming's legacy placement (identical loss values, different gradients, as measured above).
# > - *Paper:* 16384 codes, "latent space 4" (E6). *We:* read it as 4 channels; at f = 64 that is a
# >   4×4×4 latent, and collapse is the main risk of so many codes in so few dimensions. Every named
# >   IVQ-VAE configuration turns on l2-normalised codes, k-means initialisation and dead-code
# >   replacement from a buffer of recent encoder outputs; FSQ with levels (16, 16, 8, 8), exactly
# >   16384 codes in 4 channels, is the collapse-free alternative behind the same interface.
# > - *We:* report usage as distinct codes and perplexity over a stated set (a window of assignments in
# >   training, all held-out images at the end), never the perplexity of one batch: at batch size 1 and
# >   16 assignments per image, a batch can show at most 16 codes.
#
# ## 5. Bits per image
#
# A code index out of `K` carries at most `log2 K` bits. The whole image is then at most
# `(H/f)·(W/f)·log2 K` bits, whatever the decoder does with it:

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
# - For stage 2 the latent is tiny (a 4×4 grid of 4 channels), which is why the FFTD Transformer has
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
# | `nearest_code(z, codes)` | `(N, D), (K, D) -> (N,)` indices, blocked `‖z‖² - 2z·e + ‖e‖²` |
# | `straight_through(z_e, z_q)` | `z_e + sg[z_q - z_e]` |
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
# **Exercise 1.** Write `nearest_code_indices(z, codebook)`: for `z` of shape `(N, D)` and a codebook
# `(K, D)`, return the index (int64) of the nearest code for every row, shape `(N,)`.

# %%
def nearest_code_indices(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest code (squared Euclidean distance) for each row of z."""
    ### BEGIN SOLUTION
    distances = (z**2).sum(1, keepdim=True) - 2 * z @ codebook.T + (codebook**2).sum(1)
    return distances.argmin(dim=1)
    ### END SOLUTION


# %%
checks.check_nearest_code(nearest_code_indices)

# %% [markdown]
# **Exercise 2.** Write the forward pass of a vector quantizer on a latent `z_e` `(B, C, H, W)` with a
# codebook `(K, C)`: return `(z_q, loss)` where `z_q` `(B, C, H, W)` holds the nearest codes with the
# straight-through gradient and `loss = ||sg[z_e] - e||² + beta ||z_e - sg[e]||²` (means over all
# elements). You may use `quantize.nearest_code` for the indices. The check compares values **and** the
# gradients that reach `z_e` and the codebook.

# %%
def vq_straight_through(z_e: torch.Tensor, codebook: torch.Tensor, beta: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize z_e (B, C, H, W) with codebook (K, C): (z_q with straight-through gradient, L_vq)."""
    ### BEGIN SOLUTION
    b, c, h, w = z_e.shape
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, c)  # (B, C, H, W) -> (BHW, C)
    e = codebook[quantize.nearest_code(flat, codebook)]
    loss = F.mse_loss(e, flat.detach()) + beta * F.mse_loss(flat, e.detach())
    z_q = flat + (e - flat).detach()
    return z_q.reshape(b, h, w, c).permute(0, 3, 1, 2), loss
    ### END SOLUTION


# %%
checks.check_vq_straight_through(vq_straight_through)

# %% [markdown]
# **Exercise 3.** Write `perplexity(indices, num_codes)`: `exp` of the entropy of the code histogram,
# `exp(-Σ p_k log p_k)` over the codes with `p_k > 0`. It is 1 when one code takes everything and
# `num_codes` when all are used equally. Return a float or a 0-d tensor.

# %%
def perplexity(indices: torch.Tensor, num_codes: int) -> float:
    """exp(entropy) of the empirical distribution of code indices (any shape)."""
    ### BEGIN SOLUTION
    counts = torch.bincount(indices.flatten(), minlength=num_codes).double()
    p = counts[counts > 0] / counts.sum()
    return torch.exp(-(p * p.log()).sum()).item()
    ### END SOLUTION


# %%
checks.check_perplexity(perplexity)

# %% [markdown]
# ## Summary
#
# - Quantization replaces each latent vector by its nearest code: an image becomes a grid of integers.
# - The straight-through estimator `z_e + sg[e - z_e]` copies the decoder's gradient, evaluated at the
#   code, onto the encoder output.
# - `L_vq` has a codebook term (moves codes) and a commitment term (moves the encoder, weighted by
#   `beta`); taming's legacy default swaps `beta` without changing the loss value.
# - Codes that are never chosen never move: plain VQ collapses. Dead-code replacement from a buffer of
#   recent outputs, l2 + k-means and FSQ each keep many more codes alive, measured above.
# - At f = 64 a 256 px image is 16 tokens of `log2 16384` bits (section 5 counts them): the decoder
#   must invent the rest, and usage (perplexity) decides how many of those bits are real.
#
# Next: chapter 04 builds the rest of the hybrid loss (L1, LPIPS, the PatchGAN discriminator), and
# chapter 05 trains the whole IVQ-VAE.

# %%
print(f"chapter ran in {time.perf_counter() - chapter_start:.1f} s on {device}")
