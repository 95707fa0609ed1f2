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
# # 09 · Latent diffusion: both stages together
#
# The paper's generator (section 3.3) joins the pieces: the frozen IVQ-VAE (Algorithm 1) encodes every training
# image once into a 4×4×4 grid of codes, the FFTD learns to denoise those grids (Algorithm 2), and DDIM turns noise
# into a grid for the decoder (Algorithm 3, eq. 30). On a CPU, with 32 px toy faces of three classes.
#
# **In this chapter you will** scale latents (E16), train an FFTD with an EMA, sample and follow the denoising,
# snap to the codebook or not (eq. 30), measure guidance and DDIM steps (Table 3), and drive the generator live;
# then fix a guided sampler and a decoder, and predict how far few-step samples land from the codes.

# %%
import json

import matplotlib.pyplot as plt
import torch

import fftd_course
from fftd_course import checks, data, diagrams, pipeline, viz
from fftd_course.evaluation import judge, metrics
from fftd_course.fftd import FFTD, count_parameters
from fftd_course.timing import Stopwatch

# One CPU thread: the FFTD's tensors are tiny (16 tokens of 64 numbers), and threads that wait for each
# other cost more than they save, above all on a shared machine.
device = fftd_course.setup_chapter(threads=1)
on_gpu = device.type == "cuda"
# Sizes: the CPU run fits the chapter's one-minute budget; a GPU trains and samples more.
N_TRAIN, N_HELD = (20000, 1000) if on_gpu else (2048, 300)
FFTD_STEPS, FFTD_BATCH = (3000, 256) if on_gpu else (200, 64)
JUDGE_STEPS, N_JUDGE = (600, 4096) if on_gpu else (100, 512)
N_PER_CLASS = 100 if on_gpu else 16      # samples per class in each measurement below
CLASSES = data.CLASSES
train_images, train_labels = data.make_toy_faces(N_TRAIN, size=32, seed=0)
held_images, held_labels = data.make_toy_faces(N_HELD, size=32, seed=1)   # another seed: never trained on
print(f"{N_TRAIN} training faces, {N_HELD} held-out faces, classes {CLASSES}")

# %% [markdown]
# ## 1. The whole pipeline
#
# $E$ is the encoder, $Z$ the codebook, $G$ the decoder, $\epsilon_\theta$ the FFTD, $\bar\alpha_t$ the paper's
# $\alpha_t$ (E5 in `docs/ERRATA.md`).
#
# | stage | the paper | what happens | `fftd_course` |
# |---|---|---|---|
# | 1 | Algorithm 1, eq. 1-15 | train $E$, $Z$, $G$ with the hybrid loss; **freeze** them | `pipeline.train_ivqvae` (chapter 05) |
# | 2 | Algorithm 2 | encode once: $z_q = \mathrm{Quantize}(E(x), Z)$ | `pipeline.encode_latents` |
# | | (E16) | scale to unit variance: $z_0 = s\,z_q$, $s = 1/\mathrm{std}(z_q)$ | `pipeline.latent_scale` |
# | | eq. 28, 27 | $t \sim U\{1..T\}$, $\epsilon \sim N(0, I)$, $z_t = \sqrt{\bar\alpha_t}\,z_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$, loss $\lVert\epsilon - \epsilon_\theta(z_t, t, y)\rVert^2$; EMA of the weights | `pipeline.train_fftd`, `pipeline.EMA` |
# | 3 | Algorithm 3, eq. 29 | $z_T \sim N(0, I)$, guided DDIM steps down a sub-sequence | `diffusion.DDIMSampler` |
# | | eq. 30 | unscale, snap, decode: $\hat x = G(\mathrm{Quantize}(z_0 / s, Z))$ | `pipeline.decode_latents` |
#
# `pipeline.LatentDiffusion` holds it all and samples by class in one call; `pipeline.load_toy()` loads the small
# one the course commits, whose stage 1 this chapter uses.

# %%
toy = pipeline.load_toy(device)
stage1, schedule = toy.ivqvae, toy.diffusion
provenance = json.loads(pipeline.TOY_CHECKPOINT.with_suffix(".json").read_text())
print(f"stage 1: {stage1.config.resolution} px -> {stage1.config.z_channels}x{stage1.config.latent_size}x"
      f"{stage1.config.latent_size} latents, {stage1.config.num_codes} codes; FFTD: "
      f"{sum(p.numel() for p in toy.fftd.parameters()):,} parameters; {schedule}; scale s = {toy.scale:.3f}")


def latent_strip(z: torch.Tensor) -> torch.Tensor:
    """A (C, h, w) latent as one (h, C*(w+1)-1) picture: the channels side by side, a blank column between."""
    c, h, w = z.shape
    out = torch.full((h, c * (w + 1) - 1), float("nan"))
    for i in range(c):
        out[:, i * (w + 1):i * (w + 1) + w] = z[i]
    return out


# %% [markdown]
# The table as a picture (`fftd_course.diagrams`, from the toy generator's configurations): training on top,
# sampling below.

# %%
diagrams.pipeline_diagram(stage1.config, toy.fftd.config, timesteps=schedule.T)
plt.show()

# %% [markdown]
# The same path on real tensors, one face per class: its codes $z_q$ (four 4×4 channels), the scaled $s\,z_q$, three
# noise levels of eq. 28, and the decoded codes (blue negative, red positive, one scale throughout).

# %%
faces = torch.stack([train_images[train_labels == c][0] for c in range(len(CLASSES))])
z_q = pipeline.encode_latents(stage1, faces)                    # (3, 4, 4, 4), every vector a code
noise = torch.randn(z_q.shape, generator=torch.Generator().manual_seed(0))
columns = [("$z_q$", z_q), ("$s\\,z_q$", z_q * toy.scale)]
columns += [(f"$z_t$, t = {t}", schedule.q_sample(z_q * toy.scale, torch.full((3,), t), noise)) for t in (100, 250, 499)]
decoded = pipeline.decode_latents(stage1, z_q * toy.scale, toy.scale)
fig, axes = plt.subplots(3, len(columns) + 2, figsize=(13, 3.6), gridspec_kw={"width_ratios": [1] + [2.5] * len(columns) + [1]})
for r in range(3):
    viz.show_images(faces[r:r + 1], nrow=1, ax=axes[r, 0])
    for c, (name, z) in enumerate(columns):
        axes[r, c + 1].imshow(latent_strip(z[r].cpu()), cmap="RdBu_r", vmin=-2.5, vmax=2.5)
        axes[r, c + 1].set_axis_off()
        if r == 0:
            axes[r, c + 1].set_title(name, fontsize=9)
    viz.show_images(decoded[r:r + 1], nrow=1, ax=axes[r, -1])
axes[0, 0].set_title("face $x$", fontsize=9), axes[0, -1].set_title("$G(z_q)$", fontsize=9)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 2. Algorithm 2, step 1: encode once, scale to unit variance
#
# Stage 1 is frozen, so encoding the training set once equals encoding every batch, and is far cheaper
# (`encode_latents` runs in eval mode, without gradients).

# %%
z_train = pipeline.encode_latents(stage1, train_images, progress=True)   # (N, 4, 4, 4)
scale = pipeline.latent_scale(z_train)
vector_norms = z_train.norm(dim=1)                                       # one length per latent position
print(f"latents {tuple(z_train.shape)}: std of the entries {z_train.std():.3f}, length of each latent vector "
      f"{vector_norms.mean():.3f} +- {vector_norms.std():.1e}")
print(f"scale s = 1 / std = {scale:.3f} (the toy generator stored {toy.scale:.3f}, from its own training set); "
      f"s z_q has std {(z_train * scale).std():.3f}")

# %% [markdown]
# Every latent vector has length 1 (chapter 03's **l2-normalised codes**), so its 4 entries have a standard
# deviation near $1/2$, while the schedule assumes unit variance. $z_t$'s signal-to-noise ratio is
# $\mathrm{std}^2\,\bar\alpha_t / (1 - \bar\alpha_t)$, so unscaled latents drown earlier:

# %%
snr = schedule.snr
std = float(z_train.std())
for t in (50, 150, 250):
    same = int((snr - std**2 * snr[t]).abs().argmin())     # where unit-variance data has that SNR
    print(f"unscaled latents at index t = {t} are as noisy as unit-variance data at t = {same}")
fig, ax = plt.subplots(figsize=(6, 2.6))
ax.hist(z_train.flatten().numpy(), bins=80, density=True, alpha=0.6, label="$z_q$ entries")
ax.hist((z_train * scale).flatten().numpy(), bins=80, density=True, alpha=0.6, label="$s\\,z_q$ entries")
grid = torch.linspace(-4, 4, 200)
ax.plot(grid, torch.exp(-grid**2 / 2) / (2 * torch.pi) ** 0.5, "k", lw=1, label="$N(0, 1)$")
ax.legend(fontsize=8), ax.set_xlabel("value")
plt.show()

# %% [markdown]
# > **What the paper says / what we chose** (errata E16 in `docs/ERRATA.md`). The paper never scales its latents.
# > With l2-normalised codes the schedule would work on a signal a quarter as strong (in variance) as the one it
# > was built for (printed above). Like latent diffusion's `scale_factor`, we multiply the codes by one number,
# > $s = 1/\mathrm{std}$, computed once on the encoded training set, stored in `LatentDiffusion.scale` and its
# > checkpoint (key `"scale"`), and undone before snapping and decoding (eq. 30). A per-channel scale is possible
# > too: see "Going further".
#
# ## 3. Algorithm 2, steps 2-5: train a fresh FFTD for a few seconds
#
# `train_fftd` noises scaled latents by eq. 28 and steps AdamW on eq. 27's loss; 10% of the labels become the
# **null label** (for guidance), and we sample an **EMA** of the weights.

# %%
torch.manual_seed(0)
fresh = FFTD("toy").to(device)
with Stopwatch(device) as clock:
    history, ema = pipeline.train_fftd(fresh, schedule, z_train * scale, train_labels, FFTD_STEPS,
                                       batch_size=FFTD_BATCH, lr=1e-3, ema_decay=0.999, seed=0)
train_seconds = clock.seconds
losses = torch.tensor(history["loss"])
print(f"{FFTD_STEPS} steps of batch {FFTD_BATCH} in {train_seconds:.1f} s ({count_parameters(fresh):,} parameters): "
      f"loss {losses[:20].mean():.3f} over the first 20 steps, {losses[-20:].mean():.3f} over the last 20")

# %% [markdown]
# A plain EMA ($d = 0.999$) would still hold $0.999^{200} \approx 82\%$ of the **random starting weights** after 200
# steps. Its warm-up, $d_k = \min\!\left(d,\; 1 - (1 + k)^{-3/4}\right)$ at update $k$ (0-based), copies the weights
# first ($d_0 = 0$) and reaches $d$ after about $(1-d)^{-4/3}$ steps.

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.2))
ax1.plot(losses, lw=0.6, alpha=0.5, label="per step")
ax1.plot(range(9, len(losses)), losses.unfold(0, 10, 1).mean(1), label="mean of 10 steps")
ax1.set_xlabel("step"), ax1.set_ylabel("epsilon loss (eq. 27)"), ax1.legend(fontsize=8)
ks = torch.logspace(0, 5, 200).long().unique() - 1
ax2.loglog(ks + 1, [1 - ema.decay_at(int(k)) for k in ks], label="warm-up, $d = 0.999$")
ax2.axvline(FFTD_STEPS, color="tab:red", ls=":", label=f"this run: {FFTD_STEPS} steps")
toy_steps = provenance["settings"]["fftd_steps"]
ax2.axvline(toy_steps, color="tab:green", ls=":", label=f"the toy generator: {toy_steps} steps")
ax2.set_xlabel("update k + 1"), ax2.set_ylabel("$1 - d_k$: weight of the new weights"), ax2.legend(fontsize=8)
fig.tight_layout()
plt.show()
print(f"decay of the last update of this run: {ema.decay_at(FFTD_STEPS - 1):.4f}")

# %% [markdown]
# What do a few seconds of training buy? Sample the fresh model's EMA weights, two per class:

# %%
fresh_generator = pipeline.LatentDiffusion(stage1, ema.model, schedule, scale, CLASSES)
fresh_samples = fresh_generator.sample(torch.arange(3).repeat_interleave(4), num_steps=25, seed=0)
viz.show_images(fresh_samples, nrow=12, title=f"the fresh FFTD after {FFTD_STEPS} steps: 4 cats, 4 dogs, 4 wild")
plt.show()

# %% [markdown]
# ## 4. The longer-trained toy generator
#
# The course commits a generator trained by `make weights`, with how it was trained written beside it:

# %%
settings, measured = provenance["settings"], provenance["metrics"]
print("command:", provenance["command"])
print(f"stage 1: {settings['stage1_steps']} steps of batch {settings['stage1_batch']}, held-out L1 "
      f"{measured['stage1']['heldout_l1']['value']:.4f}")
print(f"FFTD: {settings['fftd_steps']} steps of batch {settings['fftd_batch']}, lr {settings['fftd_lr']}, EMA "
      f"{settings['ema_decay']}; loss {measured['fftd']['loss_first_50']:.3f} -> {measured['fftd']['loss_last_50']:.3f}")
sampled = measured["samples"]["trained"]["class_accuracy"]
print(f"its samples' class accuracy, by the demo's own judge: {sampled['value']:.1%} of {sampled['n']} samples")
print("seconds:", provenance["seconds"], "on", provenance["machine"]["platform"])
print("versions:", provenance["versions"])

# %% [markdown]
# ## 5. A class judge
#
# A small classifier (`fftd_course.evaluation.judge`) answers "is this a cat?". It learns from faces **and** their
# blurred stage-1 reconstructions (sharp faces alone would leave it guessing on decoded images); its accuracy on
# reconstructions of held-out faces is the ceiling for any sample.

# %%
rec_train = pipeline.decode_latents(stage1, z_train[:N_JUDGE] * toy.scale, toy.scale)
the_judge, _ = judge.train_judge(train_images[:N_JUDGE], train_labels[:N_JUDGE], steps=JUDGE_STEPS, batch_size=32,
                                 extra_images=rec_train, seed=0)
rec_held = pipeline.decode_latents(stage1, pipeline.encode_latents(stage1, held_images) * toy.scale, toy.scale)
acc_real = judge.accuracy(the_judge, held_images, held_labels)
acc_rec = judge.accuracy(the_judge, rec_held, held_labels)
print(f"judge accuracy on {N_HELD} held-out faces: {acc_real:.1%}; on their stage-1 reconstructions: {acc_rec:.1%}")

# %% [markdown]
# ## 6. Samples of every class (Algorithm 3, eq. 30)
#
# `toy.generate(labels, num_steps, guidance_scale, seed)` runs guided DDIM from $z_T$, undoes the scale, snaps and
# decodes; it returns the images, the sampled latents and their codes.

# %%
labels = torch.arange(len(CLASSES)).repeat_interleave(N_PER_CLASS)
with Stopwatch(device) as clock:
    result = toy.generate(labels, num_steps=50, guidance_scale=2.0, seed=1)
ms_per_image = 1000 * clock.seconds / len(labels)
fig = viz.show_class_grid(result.images, labels, CLASSES, per_class=min(N_PER_CLASS, 12))
plt.show()
acc_samples = judge.accuracy(the_judge, result.images, labels)
print(f"{len(labels)} samples, 50 DDIM steps, guidance 2: {ms_per_image:.1f} ms per image; the judge agrees with "
      f"the requested class for {acc_samples:.1%} (its ceiling, on reconstructions: {acc_rec:.1%}; chance: 33%)")
fresh_acc = judge.accuracy(the_judge, fresh_generator.sample(labels, num_steps=25, seed=1), labels)
print(f"the fresh {FFTD_STEPS}-step FFTD of section 3, same labels (25 steps): {fresh_acc:.1%}")

# %% [markdown]
# ## 7. Denoising trajectories, in latent space and in image space
#
# `keep_trajectory=True` keeps $z_t$ and the clean estimate $\hat z_0$ (eq. 29's first term) after every step;
# decoding $\hat z_0$ shows what the model "has in mind". One sample per class, 20 steps:

# %%
traj = toy.generate(torch.arange(3), num_steps=20, guidance_scale=2.0, seed=3, keep_trajectory=True)
t_after = [t for t, _, _ in traj.trajectory]                       # 0-based timestep after each step; -1: clean
z_path = torch.stack([z for _, z, _ in traj.trajectory])            # (steps, 3, 4, 4, 4)
z0_path = torch.stack([z0 for _, _, z0 in traj.trajectory])
x0_images = pipeline.decode_latents(stage1, z0_path.flatten(0, 1), toy.scale).view(*z0_path.shape[:2], 3, 32, 32)
fig, ax = plt.subplots(figsize=(6.5, 2.8))
ax.plot(z_path.norm(dim=2).mean((1, 2, 3)), "o-", ms=3, label="$z_t$")
ax.plot(z0_path.norm(dim=2).mean((1, 2, 3)), "s-", ms=3, label="$\\hat z_0$")
ax.axhline(toy.scale, color="grey", ls=":", label="a scaled code: length $s$")
ax.set_xlabel("DDIM step"), ax.set_ylabel("mean length of a latent vector"), ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# Noise vectors have length about 2; samples end near the scaled codes' sphere. Slider rows: $z_t$, $\hat z_0$, and
# the decoded $\hat z_0$.

# %%
def draw_step(step: int) -> None:
    fig, axes = plt.subplots(3, 3, figsize=(9, 3.6), gridspec_kw={"height_ratios": [1, 1, 2.2]})
    for i, name in enumerate(CLASSES):
        axes[0, i].imshow(latent_strip(z_path[step, i]), cmap="RdBu_r", vmin=-2.5, vmax=2.5)
        axes[1, i].imshow(latent_strip(z0_path[step, i]), cmap="RdBu_r", vmin=-2.5, vmax=2.5)
        viz.show_images(x0_images[step, i:i + 1], nrow=1, ax=axes[2, i])
        axes[0, i].set_title(f"{name}: $z_t$, t = {t_after[step]}", fontsize=8)
        axes[1, i].set_title("$\\hat z_0$", fontsize=8)
        axes[0, i].set_axis_off(), axes[1, i].set_axis_off()
    fig.suptitle(f"after DDIM step {step + 1} of {len(t_after)}", fontsize=9)
    fig.tight_layout()


viz.explore(draw_step, "step", values=list(range(len(t_after))), static=[0, 4, 9, len(t_after) - 1])

# %% [markdown]
# $\hat z_0$ starts as a blurry average; layout settles first, details last (timestep `-1` is the clean latent).
#
# ## 8. Decode with and without re-quantization (eq. 30)
#
# The decoder was only trained on codes; eq. 30 snaps each sampled vector to its nearest code first.
# `decode_latents(..., requantize=False)` skips the snap, on section 6's samples:

# %%
raw = pipeline.decode_latents(stage1, result.latents, toy.scale, requantize=False)
snapped = result.images
image_l1 = (raw - snapped).abs().mean((1, 2, 3))
lengths = result.latents.norm(dim=1) / toy.scale                   # in stage 1's units: codes have length 1
pick = slice(None, None, N_PER_CLASS // 2)                         # two samples of each class
fig, axes = plt.subplots(3, 1, figsize=(6, 3.9))
for ax, (images, title) in zip(axes, [(snapped, "snapped to the codes (eq. 30)"), (raw, "decoded as sampled"),
                                      ((raw - snapped).abs() * 4 - 1, "|difference| x 4")]):
    viz.show_images(images[pick][:6], nrow=6, ax=ax, title=title)
fig.tight_layout()
plt.show()
print(f"image L1 between the two decodes: {image_l1.mean():.4f} on average (max {image_l1.max():.4f}); held-out "
      f"faces vs their reconstructions: {(rec_held - held_images).abs().mean():.4f}")
print(f"length of a sampled latent vector in stage 1's space: {lengths.mean():.3f} +- {lengths.std():.3f} (codes: 1)")
print(f"judge accuracy: snapped {acc_samples:.1%}, not snapped {judge.accuracy(the_judge, raw, labels):.1%}")

# %% [markdown]
# After 50 steps, snapping changes an image far less than stage 1 changes a face: it removes off-code noise the
# decoder never saw (exercise 3 asks about fewer steps).
#
# ## 9. The guidance scale
#
# Guidance (chapter 06) calls the FFTD with the label and with the null label, and extrapolates by $w$: $w = 1$ is
# the conditional model, $w = 0$ the unconditional one. It can only amplify what the FFTD learned, so first: how
# much does the label change its prediction?

# %%
t_mid = torch.full((256,), 250, device=device)
z_mid = schedule.q_sample(z_train[:256].to(device) * toy.scale, t_mid, torch.randn(256, 4, 4, 4, device=device))
with torch.no_grad():
    for name, model in [("the toy generator", toy.fftd), (f"the fresh {FFTD_STEPS}-step FFTD", ema.model)]:
        eps_c = model(z_mid, t_mid, train_labels[:256].to(device))
        eps_u = model(z_mid, t_mid, torch.full_like(t_mid, toy.null_label))
        print(f"{name}: at t = 250 the label changes the noise prediction by "
              f"{(eps_c - eps_u).norm() / eps_u.norm():.1%} of its size")

# %% [markdown]
# Now $w$ = 0, 1, 2 and 4: class accuracy (the judge), and diversity (mean L1 between samples of a class):

# %%
def diversity(images: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean pixel L1 between two different images of the same class, averaged over classes."""
    per_class = []
    for c in labels.unique():
        x = images[labels == c].flatten(1)
        d = torch.cdist(x, x, p=1) / x.shape[1]
        per_class.append(d.sum() / (len(x) * (len(x) - 1)))
    return float(torch.stack(per_class).mean())


guidance_rows = []
for w in (0.0, 1.0, 2.0, 4.0):
    images = toy.sample(labels, num_steps=25, guidance_scale=w, seed=4)
    guidance_rows.append((w, judge.accuracy(the_judge, images, labels), diversity(images, labels), images))
real_diversity = diversity(rec_held, held_labels)
for w, acc, div, _ in guidance_rows:
    print(f"guidance {w:3.1f}: class accuracy {acc:6.1%}, diversity {div:.3f}")
print(f"stage-1 reconstructions of held-out faces: accuracy {acc_rec:.1%}, diversity {real_diversity:.3f}")

# %%
fig, axes = plt.subplots(1, len(guidance_rows), figsize=(12, 2.4))
for ax, (w, acc, div, images) in zip(axes, guidance_rows):
    viz.show_images(images[labels == 0][:8], nrow=4, ax=ax, title=f"'cat', guidance {w:g}: acc {acc:.0%}")
fig.tight_layout()
plt.show()

# %% [markdown]
# At $w = 0$ accuracy is near chance (33%); above 1, guidance amplifies the label's measured effect, buying
# accuracy with diversity (the reconstructions' row is the data's own). The paper does not say which $w$ it used.
#
# > **What the paper says / what we chose** (errata E12 in `docs/ERRATA.md`). The FFTD takes a label $y$, but
# > CelebA-HQ has no classes. Our label table has one extra row, the **null label** (`num_classes`), trained by
# > label dropout; an unconditional model has `num_classes=0` (`generate(n=...)`). The toy faces, like AFHQ, have
# > three classes.
#
# ## 10. The number of DDIM steps
#
# Table 3 measures FID and time for 50 to 500 steps. Instead of the slow Inception FID: the judge's accuracy, and
# the Fréchet distance (eq. 31) of **the judge's features** to held-out faces, beside that of as many stage-1
# reconstructions (equal counts: the distance is biased upwards).

# %%
def judge_features(images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([the_judge.features(x).mean((2, 3)) for x in images.split(256)]).double()


real_features = judge_features(held_images)
reference = metrics.fid_from_features(judge_features(rec_held[:len(labels)]), real_features).value
step_rows = []
for steps in (5, 10, 25, 50, 100):
    with Stopwatch(device) as clock:
        images = toy.sample(labels, num_steps=steps, guidance_scale=2.0, seed=5)
    ms = 1000 * clock.seconds / len(labels)
    fd = metrics.fid_from_features(judge_features(images), real_features).value
    step_rows.append((steps, judge.accuracy(the_judge, images, labels), fd, ms))
    print(f"{steps:3d} steps: accuracy {step_rows[-1][1]:6.1%}, judge-feature FD {fd:7.2f}, {ms:6.2f} ms per image")
print(f"{len(labels)} reconstructions of held-out faces: judge-feature FD {reference:.2f}")
print(f"FD at 10 steps / FD at 100 steps: {step_rows[1][2] / step_rows[-1][2]:.2f}; the paper's FID at 50 / at 500 "
      f"steps: {37.98 / 9.64:.2f} (CelebA-HQ)")

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.2))
steps_axis = [r[0] for r in step_rows]
ax1.semilogx(steps_axis, [r[2] for r in step_rows], "o-", label="samples")
ax1.axhline(reference, color="grey", ls=":", label="stage-1 reconstructions")
ax1.set_xlabel("DDIM steps"), ax1.set_ylabel("judge-feature Fréchet distance"), ax1.legend(fontsize=8)
ax2.loglog(steps_axis, [r[3] for r in step_rows], "o-", label="this toy, this machine")
paper = {50: 851, 100: 1140, 200: 1431, 500: 4026}                     # Table 3, ms per image
ax2.loglog(list(paper), list(paper.values()), "s--", label="the paper (256 px, RTX 4070 S)")
ax2.set_xlabel("DDIM steps"), ax2.set_ylabel("ms per image"), ax2.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# Time grows with the steps, as in the paper; but where its FID keeps falling to 500 steps, a ratio near 1 here
# means extra steps buy little: snapping to 256 codes forgives small sampler errors, and the toy FFTD's own error
# dominates early.
#
# > **What the paper says / what we chose** (errata E10 in `docs/ERRATA.md`). Table 3's last row, "1000 steps
# > (DDPM)", cannot come from the paper's model: trained with $T = 500$, it has at most 500 steps (`DDIMSampler`
# > refuses more, chapter 06). The row is the pixel-space DDPM baseline of section 4.3.4, another network. Our plots
# > stop at 100 steps, where the toy has long stopped improving.
#
# ## 11. A live generator
#
# Sliders for the class, $w$, the DDIM steps and the seed redraw four faces and say how long that took (a static
# page shows one picture).

# %%
viz.live_generator(toy, n=4, default_steps=25, default_guidance=2.0)

# %% [markdown]
# ## Exercises
#
# **Exercise 1 (find the bug).** A colleague wrote classifier-free guidance for their own sampler. Their samples
# look like faces; run it beside the generator's guidance (scale 2, the same $z_T$), class by class:

# %%
def guided_eps_buggy(model, z_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor, scale: float,
                     null_label: int) -> torch.Tensor:
    """Classifier-free guidance: the noise prediction for labels y at guidance scale `scale`."""
    eps_c = model(z_t, t, y)
    eps_u = model(z_t, t, torch.zeros_like(y))        # no label
    return eps_c + scale * (eps_c - eps_u)


z_T = torch.randn(len(labels), 4, 4, 4, generator=torch.Generator().manual_seed(11))
with torch.no_grad():  # the sampler at guidance_scale=1 calls the model once per step: the colleague's guides
    z = fftd_course.diffusion.DDIMSampler(schedule, 25).sample(
        lambda z_t, t, y: guided_eps_buggy(toy.fftd, z_t, t, y, 2.0, toy.null_label), z_T.to(device), labels.to(device))
theirs = pipeline.decode_latents(stage1, z, toy.scale).cpu()
ours = toy.sample(labels, num_steps=25, guidance_scale=2.0, x_T=z_T)
for c, name in enumerate(CLASSES):
    pick = labels == c
    acc = [judge.accuracy(the_judge, images[pick], labels[pick]) for images in (theirs, ours)]
    div = [diversity(images[pick], labels[pick]) for images in (theirs, ours)]
    print(f"{name:>5}: accuracy {acc[0]:6.1%}, diversity {div[0]:.3f} with the colleague's guidance; "
          f"{acc[1]:6.1%} and {div[1]:.3f} with the generator's")

# %% [markdown]
# The code has two bugs (E12; chapter 06's guidance section). Write `guided_eps(model, z_t, t, y, scale, null_label)`
# correctly; the check counts the bugs left.

# %%
def guided_eps(model, z_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor, scale: float, null_label: int) -> torch.Tensor:
    """The noise prediction of classifier-free guidance at `scale` (0: unconditional, 1: conditional)."""
    ### BEGIN SOLUTION
    eps_c = model(z_t, t, y)
    eps_u = model(z_t, t, torch.full_like(y, null_label))
    return eps_u + scale * (eps_c - eps_u)
    ### END SOLUTION


# %%
checks.check_guided_eps(guided_eps)

# %% [markdown]
# **Exercise 2 (find the bug, stretching).** A colleague wrote the last step of sampling like this. Run it on the
# samples of section 6 and compare with the generator's own images:

# %%
def decode_sample_buggy(ivqvae, z: torch.Tensor, scale: float) -> torch.Tensor:
    """Images from sampled latents z (scaled, as the FFTD sees them)."""
    z_q, _ = ivqvae.snap(z)                 # nearest codes (eq. 30)
    return ivqvae.decode(z_q / scale)       # back to stage 1's scale, then decode


with torch.no_grad():
    buggy = decode_sample_buggy(stage1, result.latents.to(device), toy.scale).cpu()
    same_codes = (stage1.snap(result.latents.to(device))[1].cpu() == result.indices).float().mean()
viz.show_images(torch.cat([result.images[:8], buggy[:8]]), nrow=8, title="top: the generator; bottom: the colleague's")
plt.show()
print(f"image L1 between the two: {(buggy - result.images).abs().mean():.3f}; the colleague's codes are the "
      f"generator's at {same_codes:.0%} of the positions")

# %% [markdown]
# The right codes are picked at every position (why, with l2-normalised codes?), yet the images are wrong. Write a
# correct `decode_sample(ivqvae, z, scale)`. The check also tries a stage 1 with **unnormalised** codes, where a
# quieter form of the bug changes which codes are picked.

# %%
def decode_sample(ivqvae, z: torch.Tensor, scale: float) -> torch.Tensor:
    """Images in [-1, 1] from sampled latents z (scaled, as the FFTD sees them), as eq. 30 asks."""
    ### BEGIN SOLUTION
    z_q, _ = ivqvae.snap(z / scale)
    return ivqvae.decode(z_q)
    ### END SOLUTION


# %%
checks.check_decode_sample(decode_sample)

# %% [markdown]
# **Exercise 3 (predict, then measure).** Section 8 found the 50-step samples close to the codes. Before
# you measure: with **2** DDIM steps instead of 50, will the sampled latents land nearer to the codebook
# or further from it? Write `"nearer"` or `"further"` in the first cell below. (Keep two more guesses in mind
# for the pictures: will the snapped images look more or less like faces than the unsnapped ones, and will
# snapping matter more or less than at 50 steps?)
#
# Then write `off_code_distance(generator, num_steps, labels, seed=0)`: sample `labels` with the generator's
# `generate` method (its default guidance; pass the step count and the seed on) and return the mean
# Euclidean distance between each sampled latent vector and its nearest code, measured in stage 1's own
# space, over every position of every sample, as a Python float.

# %%
def predicted_code_distance() -> str:
    """With 2 DDIM steps instead of many, do the sampled latents land "nearer" to the codebook or "further"?"""
    ### BEGIN SOLUTION
    return "further"
    ### END SOLUTION


# %%
def off_code_distance(generator: pipeline.LatentDiffusion, num_steps: int, labels: torch.Tensor, seed: int = 0) -> float:
    """Mean distance of the sampled latent vectors (in stage 1's space) to their nearest codes."""
    ### BEGIN SOLUTION
    result = generator.generate(labels, num_steps=num_steps, seed=seed)
    z = result.latents / generator.scale
    codes = generator.ivqvae.quantizer.lookup(result.indices.to(generator.device)).cpu()
    return float((z - codes).norm(dim=1).mean())
    ### END SOLUTION


# %%
checks.check_off_code_distance(checks.with_prediction(predicted_code_distance, off_code_distance))

# %% [markdown]
# Now measure, and compare with your prediction (the cell waits for your function):

# %%
distances = None
try:
    distances = {steps: off_code_distance(toy, steps, labels[::2], seed=6) for steps in (2, 5, 25, 100)}
    for steps, d in distances.items():
        print(f"{steps:3d} DDIM steps: mean distance to the nearest code {d:.3f} (codes have length 1)")
    two = toy.generate(labels[::N_PER_CLASS // 2][:6], num_steps=2, seed=6)
    unsnapped = pipeline.decode_latents(stage1, two.latents, toy.scale, requantize=False)
    viz.show_images(torch.cat([two.images, unsnapped]), nrow=6, title="2 DDIM steps. Top: snapped; bottom: as sampled")
    plt.show()
except NotImplementedError:
    print("write off_code_distance above first, then run this cell again")

# %%
checks.compare_prediction(predicted_code_distance, distances and (
    f"{'further' if distances[2] > distances[100] else 'nearer'} ({distances[2]:.3f} at 2 steps, {distances[100]:.3f} at 100)"),
    what="2 DDIM steps against 100: the latents land")

# %% [markdown]
# ## Going further (no checks)
#
# - **Channel guidance**: guide some latent channels only (wrap the FFTD as exercise 1 does): which carry the class?
# - **A per-channel scale** (E16): one factor per latent channel; does the loss curve of section 3 change?
# - **$\eta > 0$** (`generate(..., eta=1.0)`): how do accuracy, diversity and distance to the codes change?
# - **Snap at every step** (a loop of `diffusion.ddim_step`): does it help at 5 steps?
# - **Train longer**: ten times section 3's steps; `make demo` trains both stages and measures Inception FID.

# %% [markdown]
# ## Summary
#
# - The frozen stage 1 encodes the data once; the codes are scaled to unit variance (E16).
# - Algorithm 2: eq. 27's loss on scaled latents, label dropout for guidance, an EMA with warm-up.
# - Algorithm 3 and eq. 30: DDIM, unscale, snap, decode.
# - Guidance trades diversity for accuracy; quality flattens far earlier than in Table 3, whose 1000-step row is
#   another model (E10).
# - Next: chapter 10 runs the same code at full scale on GPUs.

# %%
print(f"chapter 09 ran in {fftd_course.chapter_seconds():.0f} s on {device}")
