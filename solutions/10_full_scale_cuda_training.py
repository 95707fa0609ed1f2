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
# # 10 · Full-scale training on GPUs
#
# A real run takes hours to days on a GPU: configured in one place, launched from a notebook, a terminal or
# several GPUs, stopped and resumed without losing a step, and measured. `fftd_course.train` is that trainer (one
# loop for both stages), `python -m fftd_course` its command line. On a CPU the same code makes a **smoke run**:
# a few toy steps, enough to see every file and number appear.
#
# **In this chapter you will**
# - see with numbers why the paper's batch size 1 (E9) is odd, and predict the optimizer steps per epoch of a
#   batch split over GPUs and accumulation steps;
# - launch both stages, read the run folder, and resume a run exactly;
# - sample, measure FID (and why small $n$ lies), and time sampling beside Table 3;
# - fix a checkpoint writer that a crash would break, and a learning rate that a resume would break.

# %%
import json
import math
import os
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import torch

import fftd_course
from fftd_course import checks, data, train, viz
from fftd_course.evaluation import metrics
from fftd_course.losses import lpips_weights_available
from fftd_course.pipeline import LatentDiffusion
from fftd_course.timing import Stopwatch

# One CPU thread: on a CPU the toy models are tiny (threads that wait for each other cost more than they
# save); on a GPU the CPU only feeds it, and the DataLoader's worker processes read the images.
device = fftd_course.setup_chapter(threads=1)

# %% [markdown]
# One `if` picks the configuration; every later cell is the same code on a CPU and a GPU.
#
# - **GPU**: the preset `FFTD_PRESET` (default `small64`) at its full steps, on the image folder `FFTD_DATA` (class
#   sub-folders become labels), else on 4,000 exported 64 px toy faces. Rerunning resumes.
# - **CPU**: `toy32` on 256 toy faces, a few dozen steps, no LPIPS: a fresh smoke run every time.
#
# The paper's 256 px data sets take one command each (`data_scripts/README.md`: checksummed download, safe
# extraction, centre crops, FID statistics per split):
#
# ```bash
# python data_scripts/prepare.py afhq --root datasets/       # datasets/afhq-256/{train,val}/{cat,dog,wild}
# FFTD_PRESET=afhq256 FFTD_DATA=datasets/afhq-256/train python solutions/10_full_scale_cuda_training.py  # on a GPU
# python -m fftd_course fid runs/afhq256/fftd/latent_diffusion.pt --ref datasets/afhq-256/val-stats.pt
# ```

# %%
if device.type == "cuda":                                    # the real thing
    PRESET = os.environ.get("FFTD_PRESET", "small64")
    DATA = os.environ.get("FFTD_DATA", "")
    if not DATA and PRESET != "small64":
        raise ValueError(f"FFTD_PRESET={PRESET} is 256 px: set FFTD_DATA (data_scripts/prepare.py, above)")
    if not DATA:
        DATA = "datasets/toy64"
        if not Path(DATA).exists():
            data.export_toy_faces(DATA, 4000, size=64)
    RUNS = Path("runs") / PRESET
    lpips = "vgg" if lpips_weights_available() else "off"   # "off": the VGG16 file is missing (chapter 04)
    stage1 = train.get_preset(PRESET, "ivqvae").replace(data=DATA, lpips=lpips, out=str(RUNS / "ivqvae"))
    stage2 = train.get_preset(PRESET, "fftd").replace(stage1=stage1.out, data=DATA, out=str(RUNS / "fftd"))
    N_FID, RESUME_STEPS, RESUME_RTOL = 1000, 20, 1e-3
else:                                                        # a smoke run: the same code, tiny
    PRESET, RUNS = "toy32", Path("runs") / "ch10-smoke"
    shutil.rmtree(RUNS, ignore_errors=True)
    stage1 = train.get_preset(PRESET, "ivqvae").replace(
        toy_images=256, steps=40, batch_size=16, disc_start=20, kmeans_batches=2, log_every=5, sample_every=20,
        ckpt_every=20, out=str(RUNS / "ivqvae"))
    stage2 = train.get_preset(PRESET, "fftd").replace(
        stage1=stage1.out, toy_images=256, steps=60, batch_size=32, warmup_steps=10, log_every=5, sample_every=0,
        ckpt_every=20, sample_steps=10, out=str(RUNS / "fftd"))
    N_FID, RESUME_STEPS, RESUME_RTOL = 24, 12, 0.0
print(f"{PRESET}: stage 1 {stage1.steps} x {stage1.batch_size}, stage 2 {stage2.steps} x {stage2.batch_size}; {RUNS}/")

# %% [markdown]
# ## 1. The configuration, and why
#
# A run is one frozen dataclass, `train.TrainConfig`: data and model (`stage`, `model`, `data`, `resolution`),
# optimisation (`steps`, `batch_size`, `grad_accum`, `lr`, ...), stage 1's loss (eq. 15: `lpips`, `disc_start`,
# `disc_weight`), stage 2's diffusion (`schedule`, `T`, `ema_decay`), speed (`precision`, `compile`) and
# bookkeeping (`out`, `log_every`, ...), each documented in `fftd_course/train.py` and `--help`. Named **presets**
# fill them in; `replace(...)` changes and checks values. The fields that differ:

# %%
def preset_table(stage: str) -> None:
    configs = {name: train.get_preset(name, stage) for name in train.PRESETS}
    values = {f: [getattr(c, f) if getattr(c, f) != "" else "(yours)" for c in configs.values()] for f in train.FIELDS}
    print(f"{'stage ' + stage:<16}" + "".join(f"{name:>13}" for name in configs))
    for f, row in values.items():
        if f not in ("out", "stage1") and len(set(map(repr, row))) > 1:     # only what differs
            print(f"{f:<16}" + "".join(f"{v!s:>13}" for v in row))


preset_table("ivqvae")
print()
preset_table("fftd")

# %% [markdown]
# `toy32` is what `make demo` trains on a CPU; `small64` a 64 px configuration for any image folder (`(yours)`);
# `celebahq256` and `afhq256` the paper's data at 256 px with its f = 64 autoencoder (`paper-f64`) and FFTD
# (`paper`); `paper` the paper's own recipe (`docs/PAPER.md`, section 4.2). A bad value is refused by name, with
# what to do:

# %%
try:
    stage1.replace(batch_size=30, grad_accum=4)
except train.ConfigError as e:
    print("ConfigError:", e)

# %% [markdown]
# **Batch size 1 (E9 in `docs/ERRATA.md`).** The paper trains both stages on one image per step for $4\times10^6$
# steps, with an EMA of decay 0.9999. A run sees **images** (steps × batch size) and has an **EMA horizon**:
# $\bar\theta \leftarrow d\,\bar\theta + (1-d)\,\theta$ gives step $k$ back the weight $(1-d)\,d^{\,k}$, a memory of
# about $1/(1-d)$ steps ($B/(1-d)$ images). With chapter 09's warm-up ($d_k = \min(d, 1-(1+k)^{-3/4})$) the full
# decay arrives after about $(1-d)^{-4/3}$ steps.

# %%
SIZES = {"celebahq256": 30_000, "afhq256": 15_000, "paper": 30_000}  # images (docs/PAPER.md 4.1); paper: CelebA-HQ
print(f"{'stage 2':<12}{'steps':>10}{'batch':>7}{'images seen':>14}{'epochs':>8}{'EMA memory: steps':>19}"
      f"{'images':>11}{'epochs':>8}{'warm-up steps':>15}")
for name, n in SIZES.items():
    c = train.get_preset(name, "fftd")
    memory = 1 / (1 - c.ema_decay)
    seen = c.steps * c.batch_size
    print(f"{name:<12}{c.steps:>10,}{c.batch_size:>7}{seen:>14,}{seen / n:>8.0f}{memory:>19,.0f}"
          f"{memory * c.batch_size:>11,.0f}{memory * c.batch_size / n:>8.2f}{(1 - c.ema_decay) ** (-4 / 3):>15,.0f}")

# %% [markdown]
# The `paper` row's EMA remembers $10^4$ single images, a fraction of one epoch, each from one noisy step. The
# 256 px presets take 256 images per step for a tenth of the steps: far more images, averaged gradients, a busy GPU;
# their EMA spans many epochs, and its warm-up a larger share of the run.
#
# > **What the paper says / what we chose** (errata E9). The paper prints a batch size of 1 and never says
# > why. GroupNorm and LayerNorm work at any batch size (every norm of both networks, and our discriminator's:
# > E23), so batch size 1 trains, but noisily and slowly. The trainer makes `batch_size` and `grad_accum`
# > ordinary settings, the `paper` preset reproduces the printed recipe, and every run writes the values it
# > used into its `config.yaml`.

# %% [markdown]
# **Gradient accumulation and GPUs.** `batch_size` $B$ is the number of images behind **one optimizer step**. With
# $g$ GPUs (DDP) and `grad_accum` $a$, each GPU adds up the gradients of $a$ **micro-batches** of $m$ images before
# the GPUs average them and step:
#
# $$B = m \cdot a \cdot g .$$
#
# Each micro-batch's loss is divided by $a$, so the gradient is the mean over all $B$ images: exactly one big
# batch's in stage 2 (no FFTD layer mixes images), nearly in stage 1, whose adaptive weight (eq. 15, chapter 04)
# sees one micro-batch's gradients. $a$ trades time for memory, $g$ buys time; `batch_size` must split evenly.
#
# ## 2. Launching and monitoring
#
# `train.train(config)` builds the models, optimizers and data order, resumes from the newest checkpoint in
# `config.out` if any, and trains. Stage 2 first encodes the data set with the frozen stage 1 (cached).

# %%
with Stopwatch(device) as clock1:
    result1 = train.train(stage1)
with Stopwatch(device) as clock2:
    result2 = train.train(stage2)
for result, clock in ((result1, clock1), (result2, clock2)):
    print(f"{result.out}: {result.status} at step {result.step} in {clock.seconds:.1f} s; final model {result.final}")

# %% [markdown]
# The same runs from a terminal: settings come from a preset, then an optional `--config` file (YAML or TOML), then
# options (one per `TrainConfig` field). The same command again resumes; `torchrun` trains with DDP, one process per
# GPU (rank 0 logs and saves).

# %%
def command_line(config: train.TrainConfig, preset: str, launcher: str = "python -m fftd_course") -> str:
    base = train.get_preset(preset, config.stage)
    options = [f"--{k.replace('_', '-')} {v}" for k, v in config.to_dict().items() if v != getattr(base, k)]
    return " ".join([launcher, "train-" + config.stage, "--preset", preset, *options])


print(command_line(stage1, PRESET))
print(command_line(stage2, PRESET))
print(command_line(train.get_preset("celebahq256", "fftd").replace(data="datasets/celebahq256"), "celebahq256",
                   launcher="torchrun --nproc_per_node 8 -m fftd_course"))

# %% [markdown]
# What a run leaves in its folder:

# %%
for path in sorted([*Path(stage1.out).rglob("*"), *Path(stage2.out).rglob("*")]):
    if path.is_file():
        print(f"{str(path.relative_to(RUNS)):<58}{path.stat().st_size / 1e3:>10.1f} kB")

# %% [markdown]
# - `config.yaml`: every setting, as it ran (a resume refuses others, except harmless ones such as `steps`);
# - `log.jsonl`: a JSON line per `log_every` steps (mean of each loss term, learning rate, images per second), and
#   a summary line;
# - `tb/`: the same, with the image grids, for TensorBoard (`tensorboard --logdir runs/`);
# - `images/`: grids (stage 1: fixed images over their reconstructions; stage 2: samples);
# - `checkpoints/ckpt-NNNNNNNN.pt`: what a resume needs (section 3), the newest `keep_checkpoints`;
# - `ivqvae.pt`, `latent_diffusion.pt`: the results; `latents.pt`: stage 2's cache of the encoded data.
#
# The losses and the speed, from the log:

# %%
def read_log(run: str) -> list[dict]:
    lines = [json.loads(s) for s in (Path(run) / "log.jsonl").read_text().splitlines() if s.strip()]
    return [h for h in lines if "finished" not in h]


log1, log2 = read_log(stage1.out), read_log(stage2.out)
fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
for key in ("l1", "vq", "d_loss"):
    axes[0].plot([h["step"] for h in log1], [h[key] for h in log1], label=key)
axes[0].axvline(stage1.disc_start, color="grey", ls=":", label="disc_start (E11)")
axes[1].plot([h["step"] for h in log2], [h["loss"] for h in log2], label="epsilon loss (eq. 27)")
for log, name in ((log1, "stage 1"), (log2, "stage 2")):
    axes[2].plot([h["step"] for h in log], [h["images_per_s"] for h in log], "o-", ms=3, label=name)
axes[2].set_yscale("log")
for ax, title in zip(axes, ("stage 1 (IVQ-VAE)", "stage 2 (FFTD)", "images per second")):
    ax.set_title(title, fontsize=9), ax.set_xlabel("step"), ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# A window's speed includes whatever happened in it (start-up, compilation, a checkpoint, a grid, the discriminator
# from `disc_start`, other processes). Smoke-run losses mean only "finite, and going down". Stage 1's newest grid
# (top: fixed training images; bottom: reconstructions):

# %%
newest = sorted((Path(stage1.out) / "images").glob("reconstructions-*.png"))[-1]
plt.figure(figsize=(8, 2.4))
plt.imshow(plt.imread(newest)), plt.axis("off"), plt.title(newest.name, fontsize=9)
plt.show()

# %% [markdown]
# ## 3. Stopping and resuming
#
# Long runs get interrupted. The trainer checkpoints every `ckpt_every` steps, at the end, and on SIGINT or SIGTERM
# (after finishing the step). A resume must continue **the same run**: models, EMA, both optimizers' moments, the
# step, every random generator and the data position. The test: a short run, and the same run stopped half-way
# (`stop_after`, as a signal would) and resumed.

# %%
demo = stage1.replace(steps=RESUME_STEPS, log_every=1, ckpt_every=0, sample_every=0)
whole, split = demo.replace(out=str(RUNS / "resume-whole")), demo.replace(out=str(RUNS / "resume-split"))
for run in (whole, split):
    shutil.rmtree(run.out, ignore_errors=True)
uninterrupted = train.train(whole, progress=False)
first = train.train(split, stop_after=RESUME_STEPS // 2, progress=False)
print(f"first call: {first.status} at step {first.step}")
second = train.train(split, progress=False)      # resume=True (the default): the newest checkpoint in split.out
print(f"second call: {second.status} at step {second.step}")

# %%
logged = set.intersection(*(set(h) for h in uninterrupted.history + second.history))
keys = sorted(logged - {"step", "lr", "images_per_s"})                 # every loss term and statistic
a = torch.tensor([[h[k] for k in keys] for h in uninterrupted.history])
b = torch.tensor([[h[k] for k in keys] for h in second.history])   # the log of both calls
shown = [keys.index(k) for k in ("l1", "vq", "perplexity", "total") if k in keys]
print(f"{'step':>4}  " + "".join(f"{keys[i]:>12}" for i in shown) + "   (uninterrupted / stopped and resumed)")
for step in range(RESUME_STEPS // 2 - 2, RESUME_STEPS // 2 + 3):
    print(f"{step + 1:>4}  " + "".join(f"{a[step, i]:>12.7f}" for i in shown))
    mark = "   <- resumed here" if step == RESUME_STEPS // 2 else ""
    print(f"{'':>4}  " + "".join(f"{b[step, i]:>12.7f}" for i in shown) + mark)
print(f"largest difference over {len(keys)} logged terms x {RESUME_STEPS} steps: {(a - b).abs().max().item()}")
torch.testing.assert_close(b, a, rtol=RESUME_RTOL, atol=RESUME_RTOL)   # CPU: 0, bit for bit

# %% [markdown]
# On a CPU the runs agree exactly. On a GPU some kernels (atomic additions) add in a varying order, so runs drift
# in the last bits: the chapter asserts agreement to `RESUME_RTOL` (`torch.use_deterministic_algorithms(True)` buys
# bit-exact runs). What the checkpoint holds:

# %%
ckpt_path = train.latest_checkpoint(split.out)
ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
print(f"{ckpt_path.name}: {ckpt_path.stat().st_size / 1e6:.1f} MB")
for key, value in ckpt.items():
    if key == "config":
        inside = f"the run's {len(value)} settings (a dict, as in config.yaml)"
    elif isinstance(value, dict):
        inside = f"keys {list(value)}"
    else:
        inside = f"a list of {len(value)}, one per process" if isinstance(value, list) else repr(value)
    print(f"  {key:<18} {inside}")
rank0 = ckpt["ranks"][0]
print("  ranks[0]:", {k: (v if k == "position" else f"{type(v).__name__}") for k, v in rank0.items()},
      "with RNG states", list(rank0["rng"]))

# %% [markdown]
# `state` holds the networks (stage 1: the IVQ-VAE and the discriminator; stage 2: the FFTD, its EMA and E16's
# latent scale), `optimizers` their Adam moments, `ranks` each GPU's data position (`epoch`, `index`) and random
# states. `config` and `world_size` must match the resuming run's.
#
# **Atomic writes.** A checkpoint goes to a temporary file in the same folder, is flushed to the disk (`fsync`),
# then renamed to `ckpt-NNNNNNNN.pt` in one step: a crash never leaves a half-written file under a checkpoint's
# name. `torch.load(weights_only=True)` refuses to run code from a file.
#
# ## 4. Sampling and FID
#
# The stage-2 result is a `LatentDiffusion` (chapter 09): DDIM, snap to the codebook, decode (eq. 30). A smoke
# run draws colour blobs; `small64` on a GPU draws faces.

# %%
generator = LatentDiffusion.load(result2.final, device)
if generator.num_classes:
    grid = generator.sample([c for c in range(generator.num_classes) for _ in range(8)], num_steps=50, seed=0)
else:
    grid = generator.sample(n=24, num_steps=50, seed=0)
viz.show_images(grid, nrow=8, title=f"{result2.step} steps of {stage2.model}, 50 DDIM steps"
                + (f"; rows: {', '.join(generator.class_names)}" if generator.num_classes else ""))
plt.show()

# %% [markdown]
# FID (eq. 31) compares the mean and covariance of InceptionV3 features (real weights, chapter 05) of generated and
# real images. The paper uses 50,000 samples; with few, FID is **biased upward**. Two disjoint real sets at the
# same $n$ show how much: their true FID is 0.

# %%
def real_images(config: train.TrainConfig, n: int, offset: int) -> torch.Tensor:
    """n images of the run's data (toy faces of another seed than the training set's, or the folder's)."""
    if config.data == "toy":
        return data.make_toy_faces(n, config.resolution, seed=config.data_seed + 1 + offset)[0]
    folder = data.ImageFolder(config.data, config.resolution, verify=False)
    order = torch.randperm(len(folder), generator=torch.Generator().manual_seed(0))
    return torch.stack([folder[int(i)][0] for i in order[offset * n:(offset + 1) * n]])


labels = [i % generator.num_classes for i in range(N_FID)] if generator.num_classes else None
fake = generator.sample(labels, n=None if labels else N_FID, num_steps=50, seed=1)
features = {name: metrics.inception_features(images, device=device) for name, images in
            (("generated", fake), ("real A", real_images(stage1, N_FID, 0)), ("real B", real_images(stage1, N_FID, 1)))}
fid_model = metrics.fid_from_features(features["generated"], features["real A"])
fid_floor = metrics.fid_from_features(features["real B"], features["real A"])
print(f"generated vs real: {fid_model}; real vs real: {fid_floor}")

# %% [markdown]
# Without both sample counts an FID compares with nothing. Real against real is the bias at this $n$: only
# differences far above it count. From a terminal:
#
# ```bash
# python -m fftd_course sample runs/small64/fftd/latent_diffusion.pt --grid samples.png --steps 50
# python -m fftd_course fid runs/small64/fftd/latent_diffusion.pt --ref datasets/toy64 --n 10000 \
#     --save-ref-stats toy64_stats.pt      # later: --ref toy64_stats.pt
# ```
#
# ## 5. Sampling speed beside the paper's Table 3
#
# Table 3 (`docs/PAPER.md`) times 50 to 500 DDIM steps per image on an RTX 4070 Super; we time one image at a
# time (the paper gives no batch size), with guidance when the model has classes. On a CUDA device the cell also
# times `generate(..., fast=True)`: every DDIM step, model call and update, recorded once as a CUDA graph and
# replayed, under bf16 autocast (decoding stays float32). One image per call is where that helps most: each step
# is hundreds of small kernels, and the graph launches them all at once instead of one Python call at a time.

# %%
paper_ms = {50: 851, 100: 1140, 200: 1431, 500: 4026}     # Table 3, ms per image, 256 px, RTX 4070 Super
one = [0] if generator.num_classes else None
modes = (False, True) if device.type == "cuda" else (False,)  # fast=True changes nothing off CUDA
ours_ms = {fast: {} for fast in modes}
for fast in modes:
    generator.sample(one, n=None if one else 1, num_steps=2, seed=2, fast=fast)  # warm-up: first-call costs out of the timing
    for steps in paper_ms:
        with Stopwatch(device) as clock:
            generator.sample(one, n=None if one else 1, num_steps=steps, seed=2, fast=fast)
        ours_ms[fast][steps] = 1000 * clock.seconds
print(f"{'DDIM steps':>10}{'paper (ms)':>12}{'this machine (ms)':>19}" + (f"{'fast=True (ms)':>16}" if True in ours_ms else ""))
for steps in paper_ms:
    print(f"{steps:>10}{paper_ms[steps]:>12}{ours_ms[False][steps]:>19.0f}"
          + (f"{ours_ms[True][steps]:>16.0f}" if True in ours_ms else ""))
print(f"500 steps / 50 steps: paper {paper_ms[500] / paper_ms[50]:.1f}x, "
      f"this machine {ours_ms[False][500] / ours_ms[False][50]:.1f}x")
name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU, 1 thread (fast=True needs CUDA: not timed)"
print(f"this machine: {name}; FFTD {stage2.model} ({sum(p.numel() for p in generator.fftd.parameters()):,} "
      f"parameters), images of {stage1.resolution} px")

# %% [markdown]
# Not the same experiment: another model size (this FFTD's parameters are printed above; the paper's 14.98M, Table
# 2), image size and hardware. Compare the ratios: each DDIM step is one FFTD call (two with guidance), so a time
# dominated by the steps grows tenfold from 50 to 500. A ratio well below 10, as in the paper's column, means much
# of the time is not the steps (decoding 256 px, or a fixed overhead: the paper does not say how it timed). Large
# batches, bf16, `torch.compile` and CUDA graphs cut the time per image by orders of magnitude;
# `python -m fftd_course bench` measures this machine, and `docs/BENCHMARKS.md` collects GPU numbers.

# %% [markdown]
# ## Exercises
#
# **Exercise 1 (predict, then measure; stretching).** Write `training_plan(config, n_images, gpus)`: the
# micro-batch each GPU holds at once, and the **optimizer steps per epoch** (one pass over the data; a float, since
# an epoch need not end on a step) when `fftd_course.train` trains `config` on `n_images` images with `gpus` GPUs.
# Raise a `ValueError` where the trainer would refuse the split. Careful: the two stages do not iterate over the
# same items, and a last, incomplete micro-batch is not used; read the `batches` methods, `_latents` and
# `data.EpochSampler` first.

# %%
def training_plan(config: train.TrainConfig, n_images: int, gpus: int) -> tuple[int, float]:
    """(micro-batch per GPU, optimizer steps per epoch) of `config` on `n_images` images and `gpus` GPUs."""
    ### BEGIN SOLUTION
    micro, rest = divmod(config.batch_size, config.grad_accum * gpus)
    if micro < 1 or rest:
        raise ValueError(f"batch_size {config.batch_size} does not split over {config.grad_accum} x {gpus}")
    items = n_images * 2 if config.stage == "fftd" and config.hflip else n_images
    micro_batches_per_gpu = (items // gpus) // micro
    return micro, micro_batches_per_gpu / config.grad_accum
    ### END SOLUTION


# %%
checks.check_training_plan(training_plan)

# %% [markdown]
# Before you run the next cell, use your function to predict where the two runs of section 2 stand in their
# data at the end: after $S$ steps, $S \cdot a \cdot m$ items were handed out; in epochs and items, where
# is that? The checkpoint records where the trainer actually is.

# %%
def images_in(config: train.TrainConfig) -> int:
    if config.stage == "fftd" and not config.data:  # stage 2's data "" means stage 1's (its ivqvae.pt says which)
        config = stage1
    if config.data == "toy":
        return config.toy_images
    return len(data.ImageFolder(config.data, config.resolution, verify=False))


try:
    for config, result in ((stage1, result1), (stage2, result2)):
        micro, per_epoch = training_plan(config, images_in(config), gpus=1)
        used, epoch_items = result.step * config.grad_accum * micro, round(per_epoch * config.grad_accum) * micro
        epoch, index = divmod(used - 1, epoch_items)   # an epoch ends when the next item is asked for
        position = torch.load(train.latest_checkpoint(config.out), weights_only=True)["ranks"][0]["position"]
        print(f"{config.stage}: micro-batch {micro}, {per_epoch:g} steps per epoch; predicted epoch, item = "
              f"{epoch}, {index + 1}; the checkpoint: {position['epoch']}, {position['index']}")
except NotImplementedError:
    print("write training_plan above first, then run this cell again")

# %% [markdown]
# If a stage's numbers disagree, find the items the trainer took that no optimizer step counts (what happens before
# stage 1's first step, in `train()` and `_Stage1`?). Then predict below the `paper` preset's stage 2 on 2 GPUs and
# 30,000 images: `(micro-batch, steps per epoch)` or `"refused"`.

# %%
def predicted_paper_on_two_gpus() -> tuple[int, float] | str:
    """The paper preset's stage 2 on 2 GPUs: (micro-batch, steps per epoch), or "refused"."""
    ### BEGIN SOLUTION
    return "refused"
    ### END SOLUTION


# %%
paper_plan = None
try:
    paper_plan = training_plan(train.get_preset("paper", "fftd"), SIZES["paper"], gpus=2)
except ValueError as e:
    paper_plan = f"refused ({e})"
except NotImplementedError:
    print("write training_plan above first, then run this cell again")
checks.compare_prediction(predicted_paper_on_two_gpus, paper_plan, what="paper preset, stage 2, 2 GPUs")

# %% [markdown]
# **Exercise 2 (find the bug).** A colleague's trainer saves its checkpoints like this:

# %%
def buggy_save_checkpoint(obj: dict, path: Path) -> None:
    """Write a checkpoint to `path`."""
    torch.save(obj, path)


class CrashHalfway:
    """Stands for a crash (power cut, kill -9, a full disk) in the middle of torch.save."""

    def __reduce__(self):
        raise RuntimeError("simulated crash in the middle of writing the checkpoint")


# %% [markdown]
# It works until the machine dies mid-save. Simulate that: save step 1, then crash while saving step 2 over it (as
# a trainer that keeps one "latest" file does at every save):

# %%
colleague = RUNS / "colleague" / "checkpoints"
colleague.mkdir(parents=True, exist_ok=True)
latest = colleague / "ckpt-00000001.pt"
buggy_save_checkpoint({"step": 1, "weights": torch.ones(1000)}, latest)
try:
    buggy_save_checkpoint({"step": 2, "weights": torch.ones(1000), "optimizer": CrashHalfway()}, latest)
except RuntimeError as e:
    print("crashed:", e)
print(f"{latest.name} is now {latest.stat().st_size} bytes")
try:
    torch.load(latest, weights_only=True)
except Exception as e:
    print(f"and cannot be loaded: {type(e).__name__}: {str(e).splitlines()[0][:90]}")

# %% [markdown]
# Write `save_checkpoint_atomically(obj, path)`: after a successful call `path` holds `obj` (loadable with
# `torch.load(path, weights_only=True)`) and nothing else is left in the folder; after a crash at any moment
# of a call, every checkpoint that was there is still whole, and no incomplete file carries a checkpoint's
# name (`ckpt-` + 8 digits + `.pt`: the pattern `train.checkpoints` lists and a resume picks from).

# %%
def save_checkpoint_atomically(obj: dict, path: Path) -> None:
    """Write `obj` to `path` so that a crash never leaves a damaged checkpoint behind."""
    ### BEGIN SOLUTION
    path = Path(path)
    scratch = path.parent / f".partial-{path.name}-{os.getpid()}"
    with open(scratch, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(scratch, path)
    ### END SOLUTION


# %%
checks.check_save_checkpoint_atomically(save_checkpoint_atomically)

# %% [markdown]
# The check cannot cut the power: argue what `fsync` adds (the bytes reach the disk, not just the system's cache,
# before the rename). Why must the temporary file be in the checkpoint's folder?
#
# **Exercise 3 (find the bug).** A colleague's trainer sets each step's learning rate like this when it resumes,
# and their loss jumps after every resume:

# %%
def buggy_resumed_lrs(config: train.TrainConfig, ckpt: dict, n: int) -> list[float]:
    """The learning rates of the next n optimizer steps after `config` resumes from the checkpoint dict `ckpt`."""
    lrs = []
    for step in range(n):
        factor = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0  # linear warm-up
        if config.lr_schedule == "cosine":  # then a cosine from 1 to lr_final_factor, flat after the last step
            u = min(step, config.steps) / config.steps
            factor *= config.lr_final_factor + (1 - config.lr_final_factor) * 0.5 * (1 + math.cos(math.pi * u))
        lrs.append(config.lr * factor)
    return lrs


# %% [markdown]
# It has two bugs. Write `resumed_lrs(config, ckpt, n)` as `fftd_course.train` sets the rates: a resumed run is the
# uninterrupted one, also when the resume raises `steps` (section 3 printed a checkpoint's keys).

# %%
def resumed_lrs(config: train.TrainConfig, ckpt: dict, n: int) -> list[float]:
    """The learning rates of the next n optimizer steps after `config` resumes from the checkpoint dict `ckpt`."""
    ### BEGIN SOLUTION
    start, horizon = ckpt["step"], ckpt["schedule_steps"]  # steps taken; the cosine's length, kept from the start
    lrs = []
    for step in range(start, start + n):
        factor = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
        if config.lr_schedule == "cosine":
            u = min(step, horizon) / horizon
            factor *= config.lr_final_factor + (1 - config.lr_final_factor) * 0.5 * (1 + math.cos(math.pi * u))
        lrs.append(config.lr * factor)
    return lrs
    ### END SOLUTION


# %%
checks.check_resumed_lrs(resumed_lrs)

# %% [markdown]
# A `small64` stage 2 of 1,000 steps, stopped at steps 300 and 600; the third call raises `steps` to 1,500:

# %%
run = train.get_preset("small64", "fftd").replace(steps=1000)                       # cosine, 100 warm-up steps
calls = [(run, {"step": 0, "schedule_steps": 1000}, 300), (run, {"step": 300, "schedule_steps": 1000}, 300),
         (run.replace(steps=1500), {"step": 600, "schedule_steps": 1000}, 900)]
fig, ax = plt.subplots(figsize=(7, 2.6))
for name, lrs_of in (("the colleague's", buggy_resumed_lrs), ("yours", resumed_lrs)):
    try:
        ax.plot([lr for config, ckpt, n in calls for lr in lrs_of(config, ckpt, n)], label=name)
    except NotImplementedError:
        print("write resumed_lrs above first, then run this cell again")
for step in (300, 600):
    ax.axvline(step, color="grey", ls=":")
ax.set_xlabel("optimizer step"), ax.set_ylabel("learning rate"), ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## Going further (no checks)
#
# - **Batch 1 against 32, at equal images**: smoke stage 2 with `batch_size=1` for 32 times the steps, same `lr`,
#   then a smaller one; compare losses at equal images seen, and wall time (E9).
# - **Accumulation is (almost) a batch**: stage 2 with `batch_size=32`, `grad_accum` 1 and 4, same seed: why not
#   bit-identical? Stage 1 after `disc_start`: which term pulls them apart? Which layer would break stage 2's equality?
# - **Interrupt for real**: Ctrl-C section 2's `train-fftd` line in a terminal, rerun it, and compare `log.jsonl`
#   with an uninterrupted run's.
# - **FID against $n$**: section 4's real-against-real FID for $n$ from 50 to 500, against $1/n$: the bias shrinks
#   roughly like $1/n$; extrapolate to $n = \infty$ ([Effectively Unbiased FID](https://arxiv.org/abs/1911.07023)).

# %% [markdown]
# ## Summary
#
# - A run is one `TrainConfig` (a preset, a file, options); the `paper` preset's batch size 1 (E9) sees few images,
#   remembers $10^4$ in its EMA and idles a GPU.
# - $B = m \cdot a \cdot g$: one big batch's gradient in stage 2, nearly in stage 1.
# - Notebook, command line and `torchrun` run one loop; atomic checkpoints make a resumed run the uninterrupted one.
# - FID needs its sample counts: at small $n$ even real against real scores far above 0.
# - Sampling time grows with the DDIM steps (Table 3).
#
# Next: chapter 11 reads the paper's tables re-run at toy scale, three seeds per row, and says which claims hold.

# %%
print(f"chapter 10 ran in {fftd_course.chapter_seconds():.0f} s on {device}")
