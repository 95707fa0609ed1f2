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
# # 04 · The hybrid loss: L1, LPIPS and a PatchGAN discriminator
#
# The IVQ-VAE is trained with four terms at once (paper section 3.1.3, eq. 11-15):
#
# $$L_{total} = \underbrace{\|\hat x - x\|_1}_{L_{rec},\ \text{eq. 11}} + \underbrace{\mathrm{LPIPS}(\hat x, x)}_{L_P,\ \text{eq. 12}}
#   + \lambda_d \underbrace{\left(-\mathbb{E}[\mathrm{Dis}(\hat x)]\right)}_{L_G,\ \text{eq. 13}} + \lambda_{vq} L_{vq},
#   \qquad \lambda_d + \lambda_{vq} = 1 \quad \text{(eq. 15)}$$
#
# while a discriminator `Dis` learns to tell real images from reconstructions (eq. 14). Pixel losses
# alone give blurry reconstructions; the perceptual and adversarial terms push towards sharp ones.
#
# **In this chapter you will**
# - see L1 and LPIPS rank reconstruction-like degradations of toy images differently;
# - build LPIPS from its parts, and learn what happens on a machine without its VGG16 weights;
# - build the PatchGAN discriminator, and see why eq. 14 as printed cannot be trained (the hinge loss can);
# - compare taming's adaptive weight with the paper's fixed $\lambda_d + \lambda_{vq} = 1$ (eq. 15), switching a
#   discriminator on while training the smallest IVQ-VAE;
# - in the exercises: write the other classic discriminator loss, predict how large a patch each PatchGAN logit
#   sees, and find the bugs in a broken adaptive weight.

# %%
import copy
from collections import defaultdict

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.functional import gaussian_blur

import fftd_course
from fftd_course import checks, data, ivqvae, losses, pipeline, viz
from fftd_course.evaluation import metrics

device = fftd_course.setup_chapter(seed=0)
ON_GPU = device.type == "cuda"
# The training runs below are small on a CPU and larger on a GPU.
PRE_STEPS, POST_STEPS, BATCH = (600, 400, 32) if ON_GPU else (120, 60, 8)
LR = 1e-3  # Adam for the IVQ-VAE and its discriminator (chapter 05 uses 5e-4 for a longer run)
D_DEMO_STEPS = 300 if ON_GPU else 100
print(f"IVQ-VAE: {PRE_STEPS} steps, then {POST_STEPS} per branch, batch {BATCH}, lr {LR:g}")

# %% [markdown]
# ## Reconstruction-like degradations
#
# No autoencoder is trained yet (a small one is, later in this chapter), so we make "reconstructions" by
# degrading toy faces in the ways an autoencoder typically fails: it blurs, it adds noise, it gets colours
# slightly wrong, it misplaces edges by a pixel, and a coarse latent grid gives blocky output.

# %%
faces, _ = data.make_toy_faces(8, size=32, seed=3)


def degrade(x: torch.Tensor, kind: str) -> torch.Tensor:
    """One reconstruction-like degradation of a (B, 3, H, W) batch in [-1, 1]."""
    if kind == "blur":
        return gaussian_blur(x, kernel_size=5, sigma=1.0)
    if kind == "noise":
        return (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    if kind == "colour shift":
        return (x + torch.tensor([0.15, 0.0, -0.15]).view(1, 3, 1, 1)).clamp(-1, 1)
    if kind == "shift 1 px":
        return F.pad(x, (1, 0, 1, 0), mode="replicate")[..., :-1, :-1]  # content moves right and down
    if kind == "blocky":
        return F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")
    raise ValueError(kind)


# %%
KINDS = ["blur", "noise", "colour shift", "shift 1 px", "blocky"]
degraded = {kind: degrade(faces, kind) for kind in KINDS}
fig, axes = plt.subplots(len(KINDS) + 1, 1, figsize=(8, 7.5))
viz.show_images(faces, nrow=8, ax=axes[0], title="original")
for ax, kind in zip(axes[1:], KINDS):
    viz.show_images(degraded[kind], nrow=8, ax=ax, title=kind)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## L1 (eq. 11)
#
# The paper writes a norm, $\|\hat x - x\|_1$. Like taming, we take the **mean** absolute error, so
# that the value (and the weights of eq. 15) do not depend on image size or batch size.

# %%
def l1(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (x_hat - x).abs().mean()


torch.testing.assert_close(l1(degraded["blur"], faces), losses.l1_loss(degraded["blur"], faces))
l1_scores = {kind: float(losses.l1_loss(degraded[kind], faces)) for kind in KINDS}
print("L1 per degradation:", {k: round(v, 4) for k, v in l1_scores.items()})

# %% [markdown]
# ## LPIPS (eq. 12) and its weights
#
# LPIPS (Zhang et al., 2018) runs both images through VGG16, takes the activations of five layers,
# normalises each pixel's feature vector to unit length, squares the differences, weighs the channels
# with learned 1x1 "linear heads", averages over space and sums over the layers. The heads were fitted
# to human judgements of which of two distortions looks closer to the original.
#
# The `lpips` package ships the heads. The VGG16 trunk is torchvision's ImageNet file, about 528 MB,
# that `torchvision` would download on first use. This course never downloads at run time:
# `losses.LPIPS()` looks for the file first and, if it is missing, stops with one message that says
# where to put it. Here is what this machine has:

# %%
print("VGG16 file expected at:", losses.vgg16_weights_path())
REAL_LPIPS = losses.lpips_weights_available()
if REAL_LPIPS:
    lpips_net = losses.LPIPS()
else:
    try:
        losses.LPIPS()
    except losses.LPIPSWeightsMissing as e:
        print("losses.LPIPS() says:\n ", e)
    lpips_net = losses.LPIPS(random_trunk=True)  # warns: wiring only
lpips_net = lpips_net.to(device)
TRUNK = "real ImageNet VGG16" if REAL_LPIPS else "RANDOM VGG16 (the file is missing)"
print(f"\nthis chapter's LPIPS uses the {TRUNK} trunk; random_trunk flag = {lpips_net.random_trunk}")

# %% [markdown]
# **With the real file** the numbers below are LPIPS as published. **Without it** the trunk is
# randomly initialised (lpips' `pnet_rand=True`): the same computation on random convolutional
# features. That proves the wiring (shapes, gradients, the value 0 for identical images), and random
# conv features still respond to local structure such as edges and noise, but the heads were fitted to
# the real trunk's features, so the values are **not** perceptual distances. The line above says which
# case this run is. Every object built on the random trunk carries `random_trunk = True` and says so
# when printed.
#
# Now LPIPS step by step, on the network's own weights:

# %%
def unit_normalise(f: torch.Tensor) -> torch.Tensor:
    """Scale each pixel's feature vector (over channels) to length 1."""
    return f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)


def lpips_by_layer(net, x_hat: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor]:
    """The five per-layer terms of LPIPS, each (B,); their sum is LPIPS."""
    a, b = net.scaling_layer(x_hat), net.scaling_layer(x)  # ImageNet mean/std, for inputs in [-1, 1]
    terms = []
    for stage, head in zip([net.net.slice1, net.net.slice2, net.net.slice3, net.net.slice4, net.net.slice5], net.lins):
        a, b = stage(a), stage(b)  # VGG16 up to relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
        squared = (unit_normalise(a) - unit_normalise(b)) ** 2  # (B, C, h, w)
        terms.append(head(squared).mean(dim=(1, 2, 3)))  # 1x1 conv to one channel, then average over space
    return terms


# %%
with torch.no_grad():
    x_in, x_hat_in = faces.to(device), degraded["blur"].to(device)
    by_layer = lpips_by_layer(lpips_net.net, x_hat_in, x_in)
    torch.testing.assert_close(sum(by_layer), lpips_net(x_hat_in, x_in))
print("the step-by-step LPIPS equals losses.LPIPS on the same weights")
print("share of each VGG stage in LPIPS(blur):", [round(float(t.mean() / sum(by_layer).mean()), 3) for t in by_layer])

# %% [markdown]
# ### L1 and LPIPS rank the degradations differently
#
# L1 charges every pixel's error at face value: a one-pixel shift of a sharp cartoon costs as much as
# the edges it moves. LPIPS compares features that pool over neighbourhoods, after scaling each
# feature vector to unit length. The plot puts the two side by side, each divided by its largest value, so that the
# **order** can be compared.

# %%
with torch.no_grad():
    lpips_scores = {kind: float(lpips_net(degraded[kind].to(device), faces.to(device)).mean()) for kind in KINDS}
rank_l1 = sorted(KINDS, key=l1_scores.get, reverse=True)
rank_lp = sorted(KINDS, key=lpips_scores.get, reverse=True)

fig, ax = plt.subplots(figsize=(8, 3))
pos = torch.arange(len(KINDS)).float()
ax.bar(pos - 0.2, [l1_scores[k] / max(l1_scores.values()) for k in KINDS], width=0.4, label="L1")
ax.bar(pos + 0.2, [lpips_scores[k] / max(lpips_scores.values()) for k in KINDS], width=0.4, label=f"LPIPS ({TRUNK})")
ax.set_xticks(pos.tolist(), KINDS), ax.set_ylabel("relative to the worst"), ax.set_ylim(0, 1.3)
ax.legend(loc="upper left", fontsize=8, ncols=2)
plt.show()
print("L1:   ", {k: round(l1_scores[k], 4) for k in KINDS})
print("LPIPS:", {k: round(lpips_scores[k], 4) for k in KINDS})
print("worst to best by L1:   ", rank_l1)
print("worst to best by LPIPS:", rank_lp)
moved = [k for k in KINDS if rank_l1.index(k) != rank_lp.index(k)]
print(f"the two orders {'agree' if not moved else 'differ'} (LPIPS trunk: {TRUNK})"
      + (f"; degradations placed differently: {moved}" if moved else ""))
print(f"'shift 1 px' is number {rank_l1.index('shift 1 px') + 1} of {len(KINDS)} by L1 "
      f"and number {rank_lp.index('shift 1 px') + 1} by LPIPS")

# %% [markdown]
# > **What the paper says / what we chose (eq. 11, 12).** The paper writes $\|\hat x - x\|_1$ and
# > "LPIPS on VGG features", nothing more. We use the mean absolute error, and LPIPS v0.1 of the
# > `lpips` package with torchvision's VGG16 ImageNet weights, read from
# > `torch.hub.get_dir()/checkpoints/vgg16-397923af.pth`. A missing file is an error with instructions,
# > never a download that hangs; the random trunk is opt-in, warns, and is flagged on every object and
# > result that uses it. LPIPS' weights never enter `state_dict()` (they come from files), so
# > checkpoints stay small and cannot overwrite a real trunk with a random one.

# %% [markdown]
# ## The PatchGAN discriminator
#
# The discriminator is taming's `NLayerDiscriminator` (from pix2pix): 4x4 convolutions, the first
# `n_layers` with stride 2, then one with stride 1 and a last one down to a single channel. The output
# is not one verdict per image but a **map of logits**, one per overlapping patch. For 32 px images we
# use `n_layers=2` and 16 base channels. Step by step, with the sizes:

# %%
ndf = 16
my_disc = nn.Sequential(
    nn.Conv2d(3, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2),  # 32 -> 16
    nn.Conv2d(ndf, 2 * ndf, 4, stride=2, padding=1, bias=False), nn.GroupNorm(32, 2 * ndf), nn.LeakyReLU(0.2),  # 16 -> 8
    nn.Conv2d(2 * ndf, 4 * ndf, 4, stride=1, padding=1, bias=False), nn.GroupNorm(32, 4 * ndf), nn.LeakyReLU(0.2),  # 8 -> 7
    nn.Conv2d(4 * ndf, 1, 4, stride=1, padding=1),  # 7 -> 6: one logit per patch
)
disc = losses.NLayerDiscriminator(ndf=ndf, n_layers=2)
my_disc.load_state_dict(disc.main.state_dict())
torch.testing.assert_close(my_disc(faces), disc(faces))
print("input", tuple(faces.shape), "-> logits", tuple(disc(faces).shape), "; the step-by-step network equals the package's")
for n in (1, 2, 3):
    d = losses.NLayerDiscriminator(n_layers=n)
    print(f"n_layers={n}: {tuple(d(torch.zeros(1, 3, 256, 256)).shape[-2:])} logits at 256 px; "
          f"inputs need >= {d.min_size} px")

# %% [markdown]
# How large a patch does each logit judge? That depends only on the kernel sizes and strides; exercise 2
# asks you to predict it before the chapter measures it.
#
# Weights start from $\mathcal N(0, 0.02^2)$, as in DCGAN, pix2pix and taming (`initialize_weights`).
#
# > **What the paper says / what we chose (normalisation, E23).** The paper does not describe its
# > discriminator and trains at **batch size 1**. taming's uses BatchNorm, whose statistics then come
# > from a single image, and differ between the real and the fake batch and between training and
# > evaluation. `NLayerDiscriminator` defaults to **GroupNorm**, which normalises each image on its own
# > and so behaves the same at any batch size (chapter 01's argument for the autoencoder);
# > `norm="batch"` gives taming's network and `norm="none"` none at all.

# %% [markdown]
# ## The adversarial losses (eq. 13, 14) and the eq. 14 erratum
#
# The autoencoder's adversarial term is $L_G = -\mathbb{E}[\mathrm{Dis}(\hat x)]$ (eq. 13): make the
# discriminator's logits on reconstructions large. The discriminator's loss, eq. 14, is printed as
#
# $$L_D^{printed} = \tfrac12\left(\mathbb{E}[1 - \mathrm{Dis}(x)] + \mathbb{E}[1 + \mathrm{Dis}(\hat x)]\right)
#   = 1 + \tfrac12\left(\mathbb{E}[\mathrm{Dis}(\hat x)] - \mathbb{E}[\mathrm{Dis}(x)]\right).$$
#
# That is linear in the logits: its slope is the same however well real and fake are already
# separated, so it has no minimum. The loss it stands for is the **hinge** loss of taming and SAGAN,
#
# $$L_D = \tfrac12\left(\mathbb{E}[\mathrm{relu}(1 - \mathrm{Dis}(x))] + \mathbb{E}[\mathrm{relu}(1 + \mathrm{Dis}(\hat x))]\right),$$
#
# which stops pushing once real patches score above 1 and fake ones below -1. Per logit:

# %%
def d_loss_as_printed(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """eq. 14 exactly as printed: NOT a usable loss (no minimum). Only for this demonstration."""
    return 0.5 * ((1 - logits_real).mean() + (1 + logits_fake).mean())


d = torch.linspace(-3, 3, 121)
fig, axes = plt.subplots(1, 2, figsize=(10, 3), sharey=True)
for ax, name, real_term, fake_term in [
    (axes[0], "eq. 14 as printed", 0.5 * (1 - d), 0.5 * (1 + d)),
    (axes[1], "hinge (what eq. 14 means)", 0.5 * F.relu(1 - d), 0.5 * F.relu(1 + d)),
]:
    ax.plot(d, real_term, label="term for a real patch")
    ax.plot(d, fake_term, label="term for a fake patch")
    ax.axhline(0, color="grey", lw=0.5), ax.set_title(name), ax.set_xlabel("logit Dis(.)")
axes[0].legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# Now train the same small discriminator twice, once with each loss, to tell real faces from blurred
# ones (a stand-in for blurry reconstructions); same initialisation, same batches.

# %%
real_pool, _ = data.make_toy_faces(512, size=32, seed=4)
fake_pool = gaussian_blur(real_pool, kernel_size=5, sigma=1.0)
demo_batches = torch.randint(0, len(real_pool), (D_DEMO_STEPS, 16), generator=torch.Generator().manual_seed(1))


def train_discriminator(loss_fn) -> tuple[nn.Module, dict[str, list[float]]]:
    torch.manual_seed(0)
    disc = losses.NLayerDiscriminator(ndf=16, n_layers=2).to(device)
    opt = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.9))
    history = defaultdict(list)
    for idx in demo_batches:
        logits_real, logits_fake = disc(real_pool[idx].to(device)), disc(fake_pool[idx].to(device))
        loss = loss_fn(logits_real, logits_fake)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history["loss"].append(loss.item())
        history["real"].append(logits_real.mean().item())
        history["fake"].append(logits_fake.mean().item())
    return disc, history


# %%
_, printed_run = train_discriminator(d_loss_as_printed)
hinge_disc, hinge_run = train_discriminator(losses.hinge_d_loss)

fig, axes = plt.subplots(1, 2, figsize=(11, 3))
for run, name in [(printed_run, "eq. 14 as printed"), (hinge_run, "hinge")]:
    line, = axes[0].plot(run["loss"], label=name)
    axes[1].plot(run["real"], color=line.get_color(), label=f"{name}: mean logit on real")
    axes[1].plot(run["fake"], color=line.get_color(), ls="--", label=f"{name}: on blurred")
axes[0].set_title("discriminator loss"), axes[1].set_title("mean logits")
axes[0].set_xlabel("step"), axes[1].set_xlabel("step"), axes[0].legend(), axes[1].legend(fontsize=7)
fig.tight_layout()
plt.show()
for run, name in [(printed_run, "printed eq. 14"), (hinge_run, "hinge")]:
    print(f"{name:>14}: loss {run['loss'][0]:+.3f} -> {run['loss'][-1]:+.3f}; "
          f"mean logits real {run['real'][-1]:+.2f}, blurred {run['fake'][-1]:+.2f} after {D_DEMO_STEPS} steps")

# %% [markdown]
# The printed loss keeps falling below zero, because the logits are pushed apart at a constant rate
# with nothing to stop them; the generator's $-\mathbb{E}[\mathrm{Dis}(\hat x)]$ would grow with them.
# The hinge loss cannot go below 0, and its gradient vanishes for every patch that is past its margin. Here is what the hinge-trained
# PatchGAN sees: one logit per patch (bright = "real").

# %%
with torch.no_grad():
    show_real, show_fake = real_pool[:4].to(device), fake_pool[:4].to(device)
    maps = torch.cat([hinge_disc(show_real), hinge_disc(show_fake)]).cpu()
fig, axes = plt.subplots(2, 8, figsize=(11, 3))
for i in range(8):
    img = show_real[i] if i < 4 else show_fake[i - 4]
    axes[0, i].imshow(viz.to_unit_range(img.cpu()).permute(1, 2, 0)), axes[0, i].set_axis_off()
    axes[1, i].imshow(maps[i, 0], cmap="RdBu", vmin=-3, vmax=3), axes[1, i].set_axis_off()
    axes[0, i].set_title("real" if i < 4 else "blurred", fontsize=8)
fig.suptitle("PatchGAN logit maps (red = fake, blue = real)")
plt.show()

# %% [markdown]
# > **What the paper says / what we chose (eq. 14, E3).** Eq. 14 as printed has no minimum,
# > as the run above shows. `losses.hinge_d_loss` is the hinge form, as in taming's `hinge_d_loss`;
# > the generator keeps eq. 13, `losses.generator_loss`.

# %% [markdown]
# ## Weighting the adversarial term: adaptive weight vs. $\lambda_d + \lambda_{vq} = 1$
#
# The adversarial gradient's size depends on the discriminator, which changes all the time. taming
# therefore rescales $L_G$ at every step so that, at the decoder's **last layer**, it pushes as hard as
# the reconstruction loss:
#
# $$\lambda_d = w_{disc}\cdot\frac{\|\nabla_{last} L_{rec}\|}{\|\nabla_{last} L_G\| + 10^{-4}},
#   \quad\text{clamped to } [0, 10^4] \text{ and detached.}$$
#
# The paper instead fixes $\lambda_d + \lambda_{vq} = 1$: one number shared between the adversarial term
# and the codebook term, without saying which. `HybridLoss(weighting="paper", lambda_d=...)` implements
# that; `weighting="adaptive"` (the default) implements taming's weight with `disc_weight = 0.75`
# (as in latent-diffusion's VQ-f16 configuration) and the codebook term at weight 1.

# %% [markdown]
# To see both at work we borrow chapter 05's IVQ-VAE in its smallest CPU configuration `toy-f4` (codes 4 times
# smaller than the face on each side; the cell prints the sizes). `model(x)` returns the reconstruction and the
# quantizer's output, whose `.loss` is $L_{vq}$ (weighed by $\lambda_{vq}$); `model.last_layer` is the decoder's
# final convolution, where the adaptive weight compares gradients. `pipeline.train_ivqvae` runs Algorithm 1
# (`pipeline.ivqvae_step` at every step): the hybrid loss for the autoencoder and, from `disc_start` on, the hinge
# loss for the discriminator, logging every term.
#
# The perceptual term stays out of the gradient (`perceptual_weight=0`): on a CPU, VGG16's backward pass would
# multiply each step's cost (chapter 05 trains with it when the VGG16 file is present); LPIPS is measured on the
# results instead. First, `PRE_STEPS` steps with a discriminator that never starts, so that the loss is
# $L_{rec} + \lambda_{vq} L_{vq}$:

# %%
train_images, _ = data.make_toy_faces(2048, size=32, seed=0)
held_out, _ = data.make_toy_faces(64, size=32, seed=1)
config = ivqvae.get_config("toy-f4")
torch.manual_seed(0)
model = ivqvae.IVQVAE(config).to(device)
side = config.latent_size
print(f"IVQ-VAE toy-f4: {config.resolution} px images -> {side}x{side}x{config.z_channels} latents, "
      f"{config.num_codes} codes, {ivqvae.count_parameters(model):,} parameters")

SWITCH = PRE_STEPS
no_disc = losses.HybridLoss(losses.NLayerDiscriminator(ndf=16, n_layers=2), perceptual_weight=0.0,
                            disc_start=10**9).to(device)  # a discriminator that never starts
opts = pipeline.stage1_optimizers(model, no_disc, lr=LR)  # Adam for the autoencoder and for the discriminator
start = fftd_course.chapter_seconds()
pre_run = pipeline.train_ivqvae(model, no_disc, train_images, PRE_STEPS, batch_size=BATCH, seed=0, optimizers=opts)
print(f"{PRE_STEPS} steps without a discriminator in {fftd_course.chapter_seconds() - start:.1f} s; over the last 10 steps: "
      f"training L1 {sum(pre_run['l1'][-10:]) / 10:.4f}, L_vq {sum(pre_run['vq'][-10:]) / 10:.4f}, "
      f"codebook perplexity per batch {sum(pre_run['perplexity'][-10:]) / 10:.0f} of {config.num_codes} codes")

# %% [markdown]
# At this point, what would the adaptive weight be? Take the hinge-trained discriminator from above
# as "some discriminator" and compare the two gradients at the decoder's last layer. (The model runs in
# evaluation mode here, so that the quantizer's usage statistics stay as training left them.)

# %%
model.eval()
x = train_images[:BATCH].to(device)
x_hat, _ = model(x)
rec = losses.l1_loss(x_hat, x)
g_loss = losses.generator_loss(hinge_disc(x_hat))
grad_rec = torch.autograd.grad(rec, model.last_layer, retain_graph=True)[0]
grad_g = torch.autograd.grad(g_loss, model.last_layer, retain_graph=True)[0]
weight = losses.adaptive_weight(rec, g_loss, model.last_layer, disc_weight=0.75)
print(f"||grad L_rec|| = {grad_rec.norm():.4g}, ||grad L_G|| = {grad_g.norm():.4g} at the last layer")
print(f"adaptive lambda_d with w_disc = 0.75: {weight:.4g} "
      f"(the paper's fixed lambda_d would be one number for the whole run, e.g. 0.1)")

# %% [markdown]
# ## Switching the discriminator on
#
# Algorithm 1 starts updating the discriminator only after 250k of 4M steps; taming also keeps the
# generator's adversarial term off until then (`disc_start`). `HybridLoss(disc_start=...)` gates both:
# before it the discriminator is not even run and `discriminator_loss` returns `None`.
#
# From the model above (trained for `SWITCH` steps without a discriminator) the run splits into three
# branches. Each starts from one `copy.deepcopy` of the model, the loss (with its discriminator, never
# run so far) and both optimizers: copied together, each optimizer copy keeps its Adam state and updates
# its own copy of the parameters. Each continues at step `SWITCH` (`start_step=SWITCH`) on the same
# batches (the same `seed`): **no discriminator** ($L_{rec} + L_{vq}$, as before), **adaptive** (the
# discriminator switches on at `SWITCH`, taming's weight, $\lambda_{vq} = 1$) and **paper** (the same, with
# the fixed $\lambda_d = 0.1$, so $\lambda_{vq} = 0.9$).

# %%
branches = {"no discriminator": None, "adaptive": dict(weighting="adaptive"),
            "paper, lambda_d=0.1": dict(weighting="paper", lambda_d=0.1)}
runs, models = {}, {}
for name, options in branches.items():
    m, loss_fn, opt_ae, opt_d = copy.deepcopy((model, no_disc, *opts))
    assert all(p is q for p, q in zip(opt_ae.param_groups[0]["params"], m.parameters()))  # the copy trains the copy
    if options is not None:  # the copied discriminator (and opt_d, which holds its parameters), on from SWITCH
        loss_fn = losses.HybridLoss(loss_fn.discriminator, perceptual_weight=0.0, disc_start=SWITCH, **options)
    torch.manual_seed(1)  # the quantizer's dead-code replacement draws random numbers: the same in every branch
    start = fftd_course.chapter_seconds()
    runs[name] = pipeline.train_ivqvae(m, loss_fn, train_images, POST_STEPS, batch_size=BATCH, seed=1,
                                       optimizers=(opt_ae, opt_d), start_step=SWITCH)
    models[name] = m.eval()
    print(f"{name:>16}: {POST_STEPS} steps in {fftd_course.chapter_seconds() - start:.1f} s "
          f"(lambda_vq = {loss_fn.lambda_vq:g})")


# %%
def smooth(values: list[float], k: int = 5) -> torch.Tensor:
    v = torch.tensor(values)
    return F.avg_pool1d(v.view(1, 1, -1), k, stride=1, padding=k // 2, count_include_pad=False).flatten()


after = range(SWITCH, SWITCH + POST_STEPS)
colours = dict(zip(branches, ["tab:blue", "tab:orange", "tab:green"]))
fig, axes = plt.subplots(1, 3, figsize=(14, 3.4))
axes[0].plot(range(PRE_STEPS), smooth(pre_run["l1"]), color="black", label="before the switch")
for name, run in runs.items():
    axes[0].plot(after, smooth(run["l1"]), color=colours[name], label=name)
    if name != "no discriminator":
        axes[1].plot(after, smooth(run["d_loss"]), color=colours[name], label=name)
        axes[2].plot(after, run["weight_g"], color=colours[name], label=name)
axes[0].axvline(SWITCH, color="grey", ls=":"), axes[0].set_ylim(0, 2 * max(pre_run["l1"][-20:]))
axes[0].set_title("training L1 (smoothed)"), axes[1].set_title("discriminator hinge loss")
axes[2].set_title("lambda_d actually used (weight_g)")
for ax in axes:
    ax.set_xlabel("step"), ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %%
window = slice(0, min(10, POST_STEPS))
first = {name: sum(run["l1"][window]) / len(run["l1"][window]) for name, run in runs.items()}
for name, run in runs.items():
    extra = ""
    if name != "no discriminator":
        extra = (f"; {first[name] / first['no discriminator']:.2f}x the no-discriminator L1 on the same batches "
                 f"right after the switch; discriminator loss {sum(run['d_loss'][-10:]) / 10:.3f} over the last 10 "
                 f"steps (1.0 = cannot tell), mean lambda_d {sum(run['weight_g']) / POST_STEPS:.3f}")
    print(f"{name:>16}: training L1 {sum(pre_run['l1'][-10:]) / 10:.4f} before the switch, "
          f"{first[name]:.4f} in the first 10 steps after, {sum(run['l1'][-10:]) / 10:.4f} at the end{extra}")

# %% [markdown]
# How do the three end points compare on held-out faces? L1, and LPIPS with this chapter's trunk:

# %%
scores = {name: metrics.evaluate_reconstructions(lambda x, m=m: m(x)[0], held_out, lpips=lpips_net, device=device)
          for name, m in models.items()}
for name, s in scores.items():
    print(f"{name:>16}: {s}")
best = min(scores, key=lambda n: scores[n].l1)
print(f"lowest held-out L1: {best}; adaptive vs no discriminator: "
      f"{scores['adaptive'].l1 / scores['no discriminator'].l1:.2f}x the L1")

# %%
with torch.no_grad():
    show = held_out[:8].to(device)
    rows = [show] + [models[name](show)[0] for name in branches]
fig, axes = plt.subplots(len(rows), 1, figsize=(8, 1.3 * len(rows)))
for ax, imgs, title in zip(axes, rows, ["held-out originals", *branches]):
    viz.show_images(imgs, nrow=8, ax=ax, title=title)
fig.tight_layout()
plt.show()

# %% [markdown]
# What the run shows depends on the numbers it printed; what to look for:
#
# - **Right after the switch**, compare the adversarial branches' training L1 with the branch without a
#   discriminator, over the same batches. A jump is the effect taming's users report (issues #44, #93):
#   reconstructions get worse when the discriminator comes on, and usually recover later.
# - A **discriminator loss near 1.0** means it cannot yet tell reconstructions from real images, so the
#   "adversarial" gradient is mostly noise. A run this short cannot profit from the adversarial term; its benefit
#   (sharper textures) shows at the paper's scale, and in FID more than in L1.
# - The adaptive weight moves at every step, the paper's stays where it was set: compare their printed means.

# %% [markdown]
# > **What the paper says / what we chose (eq. 15, E22 and E11).** The paper fixes
# > $\lambda_d + \lambda_{vq} = 1$ with no values: one number shared between two unrelated terms (raising the
# > adversarial weight lowers the codebook weight). `HybridLoss` implements it as `weighting="paper"`
# > (default $\lambda_d = 0.1$, our choice) and defaults to taming's adaptive weight ($w_{disc} = 0.75$,
# > codebook weight 1). `disc_start` gates both the discriminator's update and the generator's
# > adversarial term; Algorithm 1 only mentions the former.

# %% [markdown]
# ## A guard against NaN
#
# A long run that produces NaN should stop at once and say where. `HybridLoss` checks every term at
# every step (one device synchronisation) and raises `NonFiniteLossError` with the step and the first
# term that broke; `losses.check_finite` does the same for any other training loop. Here a reconstruction
# with one NaN pixel arrives at step 1234:

# %%
broken = held_out[:2].clone()
broken[0, 0, 5, 5] = float("nan")
try:
    no_disc(held_out[:2], broken, step=1234)
except losses.NonFiniteLossError as err:
    print(f"NonFiniteLossError (step={err.step}, term='{err.term}'):\n  {err}")

# %% [markdown]
# ## Exercises
#
# **Exercise 1 (a variant: the other classic discriminator loss).** Before the hinge loss, GANs trained the
# discriminator as a plain classifier: every real patch is labelled 1, every fake patch 0, and the loss is the
# binary cross-entropy of the logits, with the probability "real" given by the logistic function
# $\sigma(d) = 1/(1 + e^{-d})$:
#
# $$L_D^{BCE} = \tfrac12\left(\mathbb{E}[-\log\sigma(\mathrm{Dis}(x))] + \mathbb{E}[-\log(1 - \sigma(\mathrm{Dis}(\hat x)))]\right).$$
#
# taming calls it `vanilla_d_loss`. Write it so that it stays finite for logits of any size (what does
# `torch.sigmoid` return for a logit of $-200$ in float32, and what is the log of that?). The two maps may come
# from batches of different sizes.

# %%
def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of a PatchGAN's logits: real patches labelled 1, fake ones 0, each map averaged."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise: write your code here, then run the check cell below.")


# %%
checks.check_vanilla_d_loss(vanilla_d_loss)

# %% [markdown]
# **Predict, then run.** Trained on the real and blurred faces above, does this loss let the logits settle
# like the hinge loss, or drift apart without end like eq. 14 as printed? Write your guess, `"settle"` or
# `"drift apart"`, in the cell below (and why: look at the slope of each term far from zero), then run the same
# steps as the two runs above (`D_DEMO_STEPS` of them: 100 on a CPU, 300 on a GPU) with your loss.

# %%
def predicted_bce_logits() -> str:
    """Under the BCE loss, do the real and blurred logits "settle" or "drift apart"?"""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise: write your code here, then run the check cell below.")


# %%
bce_logits = None
try:
    _, vanilla_run = train_discriminator(vanilla_d_loss)
except NotImplementedError:
    print("finish exercise 1 to see this")
else:
    for run, name in [(printed_run, "printed eq. 14"), (hinge_run, "hinge"), (vanilla_run, "BCE (yours)")]:
        gap = [r - f for r, f in zip(run["real"], run["fake"])]
        print(f"{name:>14}: loss {run['loss'][-1]:+.3f}; gap between mean real and blurred logits "
              f"{gap[len(gap) // 2]:+.2f} half-way, {gap[-1]:+.2f} at the end")
    growth = gap[-1] / gap[len(gap) // 2]  # the BCE run's: how much the gap still grew in the second half
    bce_logits = f"{'drift apart' if growth > 1.5 else 'settle'} (the gap grew {growth:.2f}x in the second half)"

# %%
checks.compare_prediction(predicted_bce_logits, bce_logits, what="BCE: real and blurred logits")

# %% [markdown]
# **Exercise 2 (predict, then measure).** Each logit of the PatchGAN judges a square patch of the input.
# Write `receptive_field(layers)`: for a stack of convolutions given as `(kernel, stride)` pairs, first layer
# first, the side in input pixels of the patch that one output position depends on. Work it out on paper first:
# how many input pixels apart are two neighbouring positions of a layer's output, and by how much does one more
# $k \times k$ layer widen the window? Predict the answer for pix2pix's `n_layers = 3` (the side in pixels) in the
# first cell below before you run the check.

# %%
def predicted_patch_side() -> int:
    """Side in input pixels of the patch one logit of pix2pix's PatchGAN (n_layers = 3) judges."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise: write your code here, then run the check cell below.")


# %%
def receptive_field(layers: list[tuple[int, int]]) -> int:
    """Side in input pixels of the patch that one output of the convolution stack sees."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise: write your code here, then run the check cell below.")


# %%
checks.check_receptive_field(checks.with_prediction(predicted_patch_side, receptive_field))

# %% [markdown]
# Now measure it, without any formula: send the gradient of the centre logit back to the input and see which
# pixels receive any. (With the check passed, your numbers should match the measured ones.)

# %%
def measured_patch(disc: nn.Module, size: int = 160) -> int:
    x = torch.randn(1, 3, size, size, requires_grad=True)
    logits = disc(x)
    logits[0, 0, logits.shape[-2] // 2, logits.shape[-1] // 2].backward()
    rows = x.grad.abs().sum(dim=(0, 1, 3)).nonzero()  # input rows that the centre logit depends on
    return int(rows.max() - rows.min() + 1)


patch_sides = {}
for n in (1, 2, 3, 4):
    d = losses.NLayerDiscriminator(ndf=8, n_layers=n, norm="none")  # GroupNorm would mix in every pixel's statistics
    convs = [(m.kernel_size[0], m.stride[0]) for m in d.modules() if isinstance(m, nn.Conv2d)]
    try:
        yours = receptive_field(convs)
    except NotImplementedError:
        yours = "finish exercise 2"
    patch_sides[n] = measured_patch(d)
    print(f"n_layers={n}: measured {patch_sides[n]} px, your formula {yours}, the package {d.receptive_field}")

# %%
checks.compare_prediction(predicted_patch_side, patch_sides[3], what="patch side for n_layers = 3 (px)")

# %% [markdown]
# **Exercise 3 (find the bug).** Below is an attempt at taming's adaptive weight (the formula is in the section
# "Weighting the adversarial term"). It has three bugs: one makes it crash, one makes it push in the wrong
# direction, one lets it explode. Find them by reasoning and by running it, then write a correct
# `adaptive_weight_fixed` with the same arguments. (The training step calls `backward()` on the total loss
# **after** the weight has been computed.)

# %%
def buggy_adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                          disc_weight: float = 1.0) -> torch.Tensor:
    grads = [torch.autograd.grad(loss, last_layer)[0] for loss in (g_loss, rec_loss)]
    ratio = grads[0].norm() / (grads[1].norm() + 1e-4)
    return disc_weight * ratio


def adaptive_weight_fixed(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                          disc_weight: float = 1.0) -> torch.Tensor:
    """taming's adaptive weight of the adversarial term (calculate_adaptive_weight)."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise: write your code here, then run the check cell below.")


# %%
checks.check_adaptive_weight(adaptive_weight_fixed)

# %% [markdown]
# **Predict, then measure.** Suppose the discriminator's logits were ten times larger (multiply its last
# convolution by 10). What happens to $\lambda_d$, and to the adversarial push $\lambda_d \|\nabla_{last} L_G\|$
# that the decoder's last layer receives? Write the factor by which each changes in the cell below (10 for ten
# times larger, 0.1 for ten times smaller), then run the measurement (it uses the package's
# `losses.adaptive_weight`, which passes the same check):

# %%
def predicted_factors() -> dict[str, float]:
    """The factor by which lambda_d and the adversarial push change when the logits are ten times larger."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise: write your code here, then run the check cell below.")


# %%
x = train_images[:BATCH].to(device)
x_hat, _ = model(x)
rec = losses.l1_loss(x_hat, x)
measured_at = {}
for scale in (1.0, 10.0):
    g_loss = scale * losses.generator_loss(hinge_disc(x_hat))  # the same as scaling the last conv by `scale`
    lam = losses.adaptive_weight(rec, g_loss, model.last_layer, disc_weight=0.75)
    push = lam * torch.autograd.grad(g_loss, model.last_layer, retain_graph=True)[0].norm()
    measured_at[scale] = {"lambda_d": lam.item(), "adversarial push": push.item()}
    print(f"logits x{scale:>4g}: lambda_d = {lam:.4g}, adversarial push at the last layer {push:.4g}")

# %%
checks.compare_prediction(predicted_factors, {k: measured_at[10.0][k] / measured_at[1.0][k] for k in measured_at[1.0]})

# %% [markdown]
# ## Going further
#
# - The paper ties the adversarial weight to the codebook weight ($\lambda_d + \lambda_{vq} = 1$, eq. 15). What
#   would you expect to happen to codebook usage if you raised $\lambda_d$ to 0.5 in the three-branch run above?
#   Try it, and look at the perplexity that `pipeline.train_ivqvae` logs.
# - With the real VGG16 file, which of LPIPS' five layers carries most of the distance for a one-pixel shift,
#   and which for noise? Use `lpips_by_layer` from above.
# - The adaptive weight compares gradients at the decoder's *last* layer only. Would the answer change much at
#   another layer? Compute both ratios for `model.decoder.conv_in.weight` and `model.last_layer` during a run.
# - A PatchGAN of `n_layers = 2` judges patches of the size you computed in exercise 2 on 32 px faces. What
#   does a discriminator whose patch covers the whole face learn that a smaller one cannot?

# %% [markdown]
# ## Summary
#
# - `losses.l1_loss` (eq. 11) and `losses.LPIPS` (eq. 12) measure different things: their orders of the
#   degradations above were printed side by side. LPIPS needs torchvision's VGG16 file; without it
#   the course says so and offers a random trunk that proves wiring only.
# - `losses.NLayerDiscriminator` is a PatchGAN (GroupNorm by default, for batch size 1);
#   `losses.generator_loss` is eq. 13 and `losses.hinge_d_loss` is what eq. 14 means: the printed
#   form has no minimum.
# - `losses.HybridLoss` combines everything (eq. 15) with either the paper's $\lambda_d + \lambda_{vq} = 1$ or
#   taming's adaptive weight, gates the adversarial part with `disc_start` (E11), logs every
#   term, and stops with the step and the term when a loss becomes NaN or inf.
#
# Next: chapter 05 assembles the IVQ-VAE and trains it end to end with this loss.

# %%
print(f"chapter run time: {fftd_course.chapter_seconds():.1f} s on {device}")
