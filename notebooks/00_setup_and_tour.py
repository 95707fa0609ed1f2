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
# # 00 · Setup and a tour of the course
#
# This course builds, piece by piece, the image generator of Liu, Chen and Gao, *Image Generation Based on
# Diffusion Model in Latent Space* (Computer Systems & Applications, 2026), in two stages:
#
# 1. an **improved VQ-VAE** (IVQ-VAE) that squeezes a $256\times 256$ image into a tiny $4\times 4$ grid of codebook
#    vectors and back (residual blocks, self-attention, vector quantization, an L1 + LPIPS + adversarial loss);
# 2. a **feature-fused Transformer diffusion model** (FFTD) that generates those $4\times 4$ latents from noise,
#    sampled with DDIM and decoded by the first stage.
#
# Each chapter builds one piece in small cells, shows that the package `fftd_course` holds the very same piece
# (same weights in, same numbers out), and ends with self-checking exercises. Where the paper is wrong or silent,
# the chapter says what we chose.
#
# **In this chapter you will**
# - check your environment (CPU or GPU);
# - meet the toy faces (cat, dog, wild) that every CPU chapter trains on;
# - see which chapter builds which equation;
# - learn how exercises and their checks work, and solve three (a prediction, a bug hunt, a stretch).

# %%
import platform
from collections.abc import Iterable

import matplotlib.pyplot as plt
import torch

import fftd_course
from fftd_course import checks, data, viz

device = fftd_course.setup_chapter(seed=0)
print(f"Python {platform.python_version()}")

# %% [markdown]
# Every chapter runs on a laptop CPU in about a minute. When a GPU is present, chapters that train
# something pick a larger size automatically; the results quoted in each chapter are whatever that
# run printed, on your machine.
#
# ## The pipeline in one picture
#
# The paper trains in three stages (its Algorithms 1-3). Stage 1 learns to compress; stage 2 learns
# to generate in the compressed space; stage 3 samples and decodes.

# %%
def draw_pipeline() -> plt.Figure:
    boxes = [
        ("image x\n3×256×256", "#dde"),
        ("encoder E\n(eq. 1-4)", "#cfc"),
        ("quantize\nto codebook", "#ffc"),
        ("latent z\n4×4×4", "#dde"),
        ("FFTD ε-model\n(eq. 16-25)", "#fcc"),
        ("DDIM sampler\n(eq. 26-30)", "#fcc"),
        ("decoder G\n(eq. 5-7)", "#cfc"),
    ]
    fig, ax = plt.subplots(figsize=(12, 2.0))
    for i, (text, colour) in enumerate(boxes):
        ax.text(i * 1.7, 0, text, ha="center", va="center", fontsize=9,
                bbox=dict(boxstyle="round,pad=0.5", facecolor=colour, edgecolor="#555"))
        if i:
            ax.annotate("", xy=(i * 1.7 - 0.72, 0), xytext=(i * 1.7 - 0.98, 0), arrowprops=dict(arrowstyle="->"))
    ax.text(1.7 * 1.5, 0.75, "stage 1: IVQ-VAE (chapters 01-05)", ha="center", fontsize=9, color="#070")
    ax.text(1.7 * 4.5, 0.75, "stages 2-3: FFTD + DDIM (chapters 06-09)", ha="center", fontsize=9, color="#a00")
    ax.set_xlim(-0.9, 6 * 1.7 + 0.9), ax.set_ylim(-0.8, 1.0), ax.set_axis_off()
    return fig


draw_pipeline()
plt.show()

# %% [markdown]
# ## The toy data set
#
# The paper trains on CelebA-HQ faces and AFHQ animal faces (cat, dog, wild) at $256\times 256$, far beyond a
# laptop's budget. `fftd_course.data` draws AFHQ's three classes as cartoons instead, with random fur
# and background colours, position, scale and a small rotation. Shapes are drawn as signed distance
# functions with one pixel of anti-aliasing, so any resolution works. Images come in $[-1, 1]$, the
# range of the decoder's final $\tanh$ (eq. 7).

# %%
images, labels = data.make_toy_faces(3000, size=32, seed=0)
print(f"drew {len(images)} images of shape {tuple(images.shape[1:])}")
print(f"value range [{images.min():.3f}, {images.max():.3f}], dtype {images.dtype}")
print("images per class:", {name: int((labels == c).sum()) for c, name in enumerate(data.CLASSES)})

# %%
viz.show_class_grid(images, labels, data.CLASSES, per_class=10)
plt.show()

# %% [markdown]
# The same faces at 64 px show the details that 32 px can only hint at (whiskers thinner than a pixel
# come out faint). The draw is deterministic: image *i* depends only on the seed and *i*, so the first
# images of any set drawn with seed 0 are the same faces, at any size.

# %%
big, big_labels = data.make_toy_faces(10, size=64, seed=0)
viz.show_images(big, nrow=10, title="the first 10 faces of seed 0, at 64 px", scale=1.2)
plt.show()
assert torch.equal(big_labels, labels[:10]), "the same seed gives the same classes at any size"
again, _ = data.make_toy_faces(5, size=32, seed=0)
print("the first 5 images of a 5-image draw equal those of the 3000-image draw:", torch.equal(again, images[:5]))

# %% [markdown]
# For training, `data.ToyFaces` wraps the same draw as a PyTorch `Dataset`. Use a different seed for
# a held-out set:

# %%
train_set = data.ToyFaces(n=512, size=32, seed=0)
held_out = data.ToyFaces(n=128, size=32, seed=1)
image, label = train_set[0]
print(f"{len(train_set)} training and {len(held_out)} held-out images; item 0: image {tuple(image.shape)}, "
      f"label {int(label)} ({data.CLASSES[label]})")
loader = torch.utils.data.DataLoader(train_set, batch_size=64, shuffle=True)
batch, batch_labels = next(iter(loader))
print("one batch:", tuple(batch.shape), tuple(batch_labels.shape))

# %% [markdown]
# ## Map of the course
#
# Stage 1, the autoencoder:
#
# | chapter | builds | paper | module |
# |---|---|---|---|
# | 00 setup and tour | environment, toy data, exercises | §4.1 | `data`, `checks`, `viz` |
# | 01 residual blocks | GroupNorm, Swish, residual block, resampling | eq. 1-3, 6, 7 | `blocks` |
# | 02 attention | self-attention over pixels | eq. 8-10 | `blocks` |
# | 03 vector quantization | codebook, straight-through gradient, collapse and fixes | §3.1, L_vq | `quantize` |
# | 04 hybrid loss | L1, LPIPS, PatchGAN, hinge loss, weighting | eq. 11-15 | `losses` |
# | 05 IVQ-VAE | the stage-1 autoencoder, trained | §3.1, Alg. 1, Table 1 | `ivqvae`, `evaluation.metrics` |

# %% [markdown]
# Stage 2, the diffusion model, and the paper at scale:
#
# | chapter | builds | paper | module |
# |---|---|---|---|
# | 06 DDIM math | forward process, ε-loss, DDIM and DDPM samplers | eq. 26-30, Alg. 3 | `diffusion` |
# | 07 adaptive fusion | channel and spatial gates fusing two feature maps | eq. 18-25 | `fusion` |
# | 08 FFTD | the multi-resolution Transformer hourglass | §3.2, eq. 16-17 | `fftd` |
# | 09 latent diffusion | both stages, trained and sampled | Alg. 1-3 | `pipeline` |
# | 10 full-scale CUDA training | the 256 px configuration on GPUs | §4.2 | `train`, `cli` |
# | 11 reproducing the paper | its tables re-run at toy scale with seeds and error bars, KID | eq. 31, Tables 1-4, 7-9 | `reproduction`, `evaluation.metrics` |

# %% [markdown]
# The paper has known errors (an impossible loss in eq. 14, a shape mismatch in eq. 19-20, a table row that cannot
# come from its own model...). Each chapter that meets one explains it in a box titled **What the paper says /
# what we chose**. They are numbered E1, E2, ... in [`docs/ERRATA.md`](../docs/ERRATA.md), and chapters cite them
# by number ("E3"); the paper itself, with its equation numbers and tables, is retold in
# [`docs/PAPER.md`](../docs/PAPER.md).

# %% [markdown]
# ## How exercises work
#
# Each exercise gives you a function or class with a marked gap. In your notebook (in `notebooks/`)
# the gap is a line that raises `NotImplementedError`; the complete version is in `solutions/`.
# Below each exercise a **check cell** calls a function from `fftd_course.checks` with your code. It
# compares your answer with the package's reference on fresh random inputs of several shapes and
# prints one of three verdicts:
#
# - `[x] ... PASS`: your code matched everywhere it was tried;
# - `[!] ... FAIL`: with what differed (shape, values, gradient), on which input, and a hint;
# - `[ ] ... not attempted yet`: the gap is still open. This never stops "Run All", so the rest of
#   the chapter (which uses the package's own version) always runs.
#
# Here is what a wrong answer looks like. This deliberately broken version of exercise 1 answers 0 whatever it
# is given:

# %%
def count_shared_wrong(a: torch.Tensor, b: torch.Tensor) -> int:
    return 0


with checks.lenient():  # lenient: show the FAIL without stopping (the test run would stop otherwise)
    checks.check_count_shared(count_shared_wrong)

# %% [markdown]
# ## Exercises
#
# **Exercise 1 (warm-up; predict, then measure).** Image *i* of a draw depends only on the seed and *i*. Someone
# builds a held-out set as `data.ToyFaces(n=128, size=32, seed=0)`, beside the training set `train_set` (512 images,
# seed 0). *Before measuring, write your prediction in the cell below*: how many of its 128 images are also
# training images? And how many of the 128 images of the chapter's `held_out` (seed 1)?
#
# To measure it, write `count_shared(a, b)`: for two sets of images of shape $(N, C, H, W)$, the number of images
# of `b` equal, value for value, to some image of `a` (wherever it sits; each image of `b` counts once). The check
# switches `torch.unique` off: compare the images yourself.

# %%
def predicted_shared() -> dict[str, int]:
    """How many of the 128 images of each set are also training images."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise: write your code here, then run the check cell below.")


# %%
def count_shared(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many images of b (N_b, C, H, W) equal some image of a (N_a, C, H, W)."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise: write your code here, then run the check cell below.")


# %%
checks.check_count_shared(checks.with_prediction(predicted_shared, count_shared))

# %%
careless = data.ToyFaces(n=128, size=32, seed=0)
shared = None
try:
    shared = {"seed 0, n=128": count_shared(train_set.images, careless.images),
              "seed 1 (held_out)": count_shared(train_set.images, held_out.images)}
except NotImplementedError:
    print("finish exercise 1 to see this measurement")
checks.compare_prediction(predicted_shared, shared, agrees=lambda predicted, measured: predicted == measured)

# %% [markdown]
# A smaller `n` is not another set: it is the start of the same draw. A held-out set needs its own seed, and
# chapter 05's held-out reconstruction error means something only because of it.

# %% [markdown]
# **Exercise 2 (find the bug).** To save a picture with an image library you need a $(H, W, C)$ array of
# bytes, $0 \dots 255$, with $-1 \mapsto 0$ and $1 \mapsto 255$, every value **rounded** to the nearest
# integer. Here is a version that runs and returns the right shape and dtype. Look at what it draws:

# %%
def buggy_to_pixels(x: torch.Tensor) -> torch.Tensor:
    c, h, w = x.shape
    pixels = (x + 1) * 127.5
    return pixels.view(h, w, c).to(torch.uint8)


pixels = buggy_to_pixels(images[0])
print("shape", tuple(pixels.shape), "dtype", pixels.dtype)
fig, axes = plt.subplots(1, 2, figsize=(4, 2))
axes[0].imshow(viz.to_unit_range(images[0]).permute(1, 2, 0)), axes[0].set_title("the image", fontsize=9)
axes[1].imshow(pixels.numpy()), axes[1].set_title("buggy_to_pixels", fontsize=9)
for ax in axes:
    ax.set_axis_off()
plt.show()

# %% [markdown]
# It has **two bugs**; one you can see above, the other only shows in the numbers (the check finds it).
# Write the corrected `to_pixels(x)`.

# %%
def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """(C, H, W) in [-1, 1] -> (H, W, C) uint8, -1 -> 0 and 1 -> 255, rounded."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise: write your code here, then run the check cell below.")


# %%
checks.check_to_pixels(to_pixels)

# %% [markdown]
# **Exercise 3 (stretch).** Diffusion works best on data with zero mean and unit variance per channel: chapter 09
# scales its latents for that (E16 in [`docs/ERRATA.md`](../docs/ERRATA.md)). The statistics must come from the
# whole training set, which at full scale does not fit in memory: a loader hands it over one batch at a time.
# Write `channel_stats(batches)`: from an iterable of $(B, C, H, W)$ batches, read once, the mean and standard
# deviation of each channel $c$ over every pixel of every image,
# $$\mu_c = \frac{1}{N} \sum_{b,h,w} x_{b,c,h,w}, \qquad s_c^2 = \frac{1}{N} \sum_{b,h,w} (x_{b,c,h,w} - \mu_c)^2,
#   \qquad N = \text{images} \cdot H \cdot W,$$
# exactly, whatever the batch sizes (the last batch is often short), and without keeping the batches: the check
# notices.

# %%
def channel_stats(batches: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation per channel, (C,) each, over every pixel of every batch, in one pass."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise: write your code here, then run the check cell below.")


# %%
checks.check_channel_stats(channel_stats)

# %% [markdown]
# The training set batch by batch (8 batches of 60 images and a short one of 32) against the whole set at once,
# and the pixel values before and after standardising with these statistics:

# %%
rounded = lambda t: [round(float(v), 4) for v in t]  # noqa: E731
whole = (train_set.images.mean(dim=(0, 2, 3)), train_set.images.std(dim=(0, 2, 3), unbiased=False))
print("whole set:      mean (R, G, B)", rounded(whole[0]), " std", rounded(whole[1]))
try:
    mean, std = channel_stats(x for x, _ in torch.utils.data.DataLoader(train_set, batch_size=60))
    print("batch by batch: mean (R, G, B)", rounded(mean), " std", rounded(std))
except NotImplementedError:
    print("finish exercise 3 to compare")
standardised = (train_set.images - whole[0].view(1, 3, 1, 1)) / whole[1].view(1, 3, 1, 1)
fig, axes = plt.subplots(1, 2, figsize=(12, 2.5))
for ax, (name, batch_) in zip(axes, {"raw": train_set.images, "standardised": standardised}.items()):
    for c, colour in enumerate(("red", "green", "blue")):
        ax.hist(batch_[:, c].flatten().numpy(), bins=60, histtype="step", color=colour, label=colour)
    ax.set_title(name), ax.set_xlabel("pixel value"), ax.set_ylabel("count"), ax.legend()
plt.show()

# %% [markdown]
# ## Going further
#
# No checks here: questions to explore with the code above.
#
# - **How many faces are different?** Two toy faces of a class differ in colours, position, scale and rotation.
#   Draw 3000 faces at 8 px: how many distinct images are there? At 32 px?
# - **Near copies.** `count_shared` finds exact copies only. Which distance between images would catch a copy
#   shifted by one pixel or recoloured slightly, and how many near copies does the toy set hold at 8 px?
# - **Standardise with which statistics?** Exercise 3 computes them on the training set. Should a model use those
#   or the statistics of each test batch at test time, and where would you store them? (Chapter 09 answers it
#   for the latents.)

# %% [markdown]
# ## Summary
#
# - The course builds a two-stage latent diffusion model; `fftd_course` holds every piece, and each chapter shows
#   its version is the package's.
# - The toy faces stand in for AFHQ on a CPU: three classes, any size, deterministic from a seed.
# - Exercises check themselves: PASS, FAIL with a reason, or "not attempted yet". Some ask you to write a piece,
#   some to predict and measure, some to find the bug in given code.
#
# Next: chapter 01 builds the residual blocks of the IVQ-VAE's encoder and decoder.

# %%
print(f"chapter ran in {fftd_course.chapter_seconds():.1f} s on {device}")
