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
# # 06 · Diffusion math and the DDIM sampler
#
# Stage 2 generates latents by **diffusion** (section 3.3): a network learns to predict the noise added step by step,
# so that a sampler can walk back to data. The paper trains with $T = 500$ noise levels and samples with **DDIM**
# (Algorithm 3), which skips most.
#
# - one step, with a linear schedule $\beta_1, \dots, \beta_T$:
#   $$q(z_t \mid z_{t-1}) = \mathcal N\!\left(\sqrt{1 - \beta_t}\, z_{t-1},\ \beta_t I\right); \tag{26}$$
# - all steps at once, with $\alpha_t = \prod_{s \le t} (1 - \beta_s)$ (E5):
#   $$z_t = \sqrt{\alpha_t}\, z_0 + \sqrt{1 - \alpha_t}\, \epsilon, \qquad \epsilon \sim \mathcal N(0, I); \tag{28}$$
# - the loss: $$L = \mathbb{E}_{z_0, \epsilon, t}\, \|\epsilon - \epsilon_\theta(z_t, t)\|^2; \tag{27}$$
# - the DDIM update (eq. 29, below).
#
# A Gaussian mixture's best noise predictor has a closed form: a *perfect* model, to study the sampler alone.
#
# **In this chapter you will** measure the signal the printed schedule leaves at $t = T$; build DDIM's update
# against `fftd_course.diffusion`; trade steps against error and time (Table 3, and its impossible 1000-step row);
# and in the exercises step a model that predicts velocity, fix an off-by-one and make inversion exact.

# %%
import math

import matplotlib.pyplot as plt
import torch
from tqdm.auto import tqdm

import fftd_course
from fftd_course import checks, data, diffusion, viz
from fftd_course.mixture import GaussianMixture, toy_mixture_2d

# Every tensor here is tiny and each sampling step is microseconds of work: one CPU thread is fastest.
device = fftd_course.setup_chapter(seed=0, threads=1)
# The analytic model runs on the CPU in float64 whatever the device; a GPU machine only draws more points.
N_POINTS = 1500 if device.type == "cpu" else 8000
T = 500
print(f"{N_POINTS} points per 2-D experiment, T = {T}")

# %% [markdown]
# ## Conventions: 0-based timesteps and the paper's $\alpha_t$
#
# Every off-by-one bug in diffusion code lives here.
#
# - The paper counts $t = 1, \dots, T$; the package uses **0-based indices**: the paper's $t$ is index $t - 1$, and
#   $\alpha_0 = 1$ (clean data) has no index: the last sampling step lands there.
# - The paper's $\alpha_t$ is the **cumulative product** $\prod_{s \le t} (1 - \beta_s)$ (E5 in `docs/ERRATA.md`),
#   DDPM's $\bar\alpha_t$ (DDPM's $\alpha_t$ is one step's $1 - \beta_t$). `diffusion.Diffusion` is built from the
#   `betas` and holds `alpha_bar`.

# %%
betas_printed = diffusion.beta_schedule("linear", T)            # 1e-4 -> 0.02, as printed
betas_rescaled = diffusion.beta_schedule("linear_rescaled", T)  # both ends x 1000 / T
printed, rescaled = diffusion.Diffusion(betas_printed), diffusion.Diffusion(betas_rescaled)
alpha_bar_by_hand = torch.cumprod(1 - betas_printed, dim=0)
torch.testing.assert_close(printed.alpha_bar, alpha_bar_by_hand)
print(printed)
print(rescaled)
print(f"paper t = 1 is index 0: alpha_bar[0] = 1 - beta_1 = {printed.alpha_bar[0].item():.6f}")

# %% [markdown]
# ## The forward process on toy faces
#
# Eq. 28 jumps from clean data to any noise level: scale by $\sqrt{\bar\alpha_t}$, add noise scaled by
# $\sqrt{1 - \bar\alpha_t}$. The variances add up to one, so images stay at about unit scale.
# `Diffusion.q_sample` does it for a batch, one timestep per image:

# %%
faces, face_labels = data.make_toy_faces(6, size=32, seed=0)
noise = torch.randn(faces.shape, generator=torch.Generator().manual_seed(1))
t_demo = torch.tensor([0, 50, 100, 200, 300, T - 1])  # one index per face
x_t_demo = rescaled.q_sample(faces, t_demo, noise)
signal = (x_t_demo * faces).flatten(1).sum(1) / (faces * faces).flatten(1).sum(1)  # projection onto the face
for t, ab, amp in zip(t_demo.tolist(), rescaled.alpha_bar[t_demo].tolist(), signal.tolist()):
    print(f"index {t:3d}: sqrt(alpha_bar) = {math.sqrt(ab):.3f}; the noised face keeps about {amp:+.3f} of the face")

# %% [markdown]
# Move the slider along $t$: top row the schedule as printed, bottom row the rescaled one, same noise. (Without a
# live kernel, a few values of `t` are drawn instead.)

# %%
def draw_noised(t: int) -> None:
    fig, axes = plt.subplots(2, 1, figsize=(7.5, 3.0))
    for ax, (name, sched) in zip(axes, [("printed", printed), ("rescaled", rescaled)]):
        x_t = sched.q_sample(faces, torch.full((len(faces),), t), noise)
        viz.show_images(x_t.clamp(-1, 1), nrow=6, ax=ax)
        ax.set_title(f"{name} linear, index t = {t}: $\\bar\\alpha_t$ = {sched.alpha_bar[t].item():.2e}", fontsize=9)
    fig.tight_layout()


viz.explore(draw_noised, "t", values=[0, 10, 25, 50, 100, 150, 200, 250, 300, 350, 400, 450, T - 1],
            static=[0, 100, 250, T - 1])

# %% [markdown]
# ## Two readings of "linear, $T = 500$": how much signal is left at $t = T$?
#
# DDPM's linear schedule runs $\beta_1 = 10^{-4} \to \beta_T = 0.02$ over **1000** steps; the paper prints the same
# ends with $T = 500$, so the betas sum to about half and $\bar\alpha_T$ stays far from zero. improved-diffusion and
# DiT scale both ends by $1000 / T$ ("linear_rescaled"). Cosine is shown for comparison.

# %%
cosine = diffusion.Diffusion(diffusion.beta_schedule("cosine", T))
schedules = {"linear as printed": printed, "linear rescaled (default)": rescaled, "cosine": cosine}
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.4))
for name, sched in schedules.items():
    ax1.plot(sched.alpha_bar, label=name)
    ax2.plot(sched.snr.log10(), label=name)
ax1.set_xlabel("index t"), ax1.set_ylabel(r"$\bar\alpha_t$ (the paper's $\alpha_t$)"), ax1.legend()
ax2.set_xlabel("index t"), ax2.set_ylabel(r"$\log_{10}$ SNR $= \log_{10} \bar\alpha_t / (1 - \bar\alpha_t)$")
ax2.axhline(0, color="grey", lw=0.5)
fig.tight_layout()
plt.show()
for name, sched in schedules.items():
    ab_T = sched.alpha_bar[-1].item()
    print(f"{name:26s} alpha_bar_T = {ab_T:.2e}: x_T keeps {100 * math.sqrt(ab_T):5.2f}% of the image's amplitude, "
          f"SNR_T = {sched.snr[-1].item():.1e}")

# %% [markdown]
# A few percent of the amplitude, over thousands of pixels: how far is $q(x_T \mid x_0)$ from the $\mathcal N(0, I)$
# that sampling starts from? With $a = \bar\alpha_T$, the KL between the two diagonal Gaussians is
#
# $$\mathrm{KL}\left(q(x_T \mid x_0)\,\|\,\mathcal N(0, I)\right) = \tfrac12 \sum_i \left[(1 - a) + a\, x_{0,i}^2 - 1 - \log(1 - a)\right].$$

# %%
toy, _ = data.make_toy_faces(64, size=32, seed=3)
for name, sched in [("linear as printed", printed), ("linear rescaled", rescaled)]:
    a = sched.alpha_bar[-1].double()
    x2 = toy.double().flatten(1) ** 2
    kl = 0.5 * ((1 - a) + a * x2 - 1 - torch.log1p(-a)).sum(1)
    print(f"{name:18s}: KL(q(x_T | x_0) || N(0, I)) = {kl.mean().item():.3f} nats per 32x32 face on average "
          f"(max {kl.max().item():.3f})")

# %% [markdown]
# A KL of a nat or more means $x_T$ still tells faces apart: the model trains on that leftover signal but gets pure
# noise when sampling.
#
# ## The DDIM update, piece by piece (eq. 29)
#
# At $x_t$ the model predicts the noise $\epsilon_\theta$. With $a_t = \bar\alpha_t$ and $s$ the previous timestep
# of the sub-sequence (not $t - 1$):
#
# 1. **Predict the clean data** (eq. 28 solved for $x_0$):
#    $\hat z_0 = \left(x_t - \sqrt{1 - a_t}\,\epsilon_\theta\right) / \sqrt{a_t}$.
# 2. **Re-noise it to level $s$**: $\sqrt{1 - a_s - \sigma^2}\,\epsilon_\theta + \sigma z$, $z$ fresh noise; the
#    variances add up to $1 - a_s$, keeping eq. 28's marginal.
# 3. **Choose** $\sigma = \eta \sqrt{(1 - a_s)/(1 - a_t)}\,\sqrt{1 - a_t / a_s}$: $\eta = 0$ is deterministic,
#    $\eta = 1$ the DDPM posterior $q(x_s \mid x_t, \hat z_0)$.
#
# $$x_s = \sqrt{a_s}\,\hat z_0 + \sqrt{1 - a_s - \sigma^2}\,\epsilon_\theta + \sigma z. \tag{29}$$
#
# With the noise that made $x_t$ each piece is exact: check `diffusion.predict_x0`, `ddim_sigma` and `ddim_step`
# from index 400 to 100:

# %%
sched = rescaled
t_from, t_to = 400, 100
a_t, a_s = sched.alpha_bar[t_from].item(), sched.alpha_bar[t_to].item()
x_t = sched.q_sample(faces, torch.full((6,), t_from), noise)
eps_theta = noise                                         # a perfect model

z0_hat = diffusion.predict_x0(x_t, eps_theta, a_t)                         # piece 1
x_s = diffusion.ddim_step(x_t, eps_theta, a_t, a_s, eta=0.0)              # pieces 1-3 with sigma = 0
torch.testing.assert_close(z0_hat, faces, atol=1e-4, rtol=0)
torch.testing.assert_close(x_s, sched.q_sample(faces, torch.full((6,), t_to), noise), atol=1e-5, rtol=0)
print("perfect eps: z0_hat is the clean image, and the step lands exactly on eq. 28 at the earlier index")

# %% [markdown]
# An error in $\epsilon_\theta$ becomes $\sqrt{(1 - a_t)/a_t}$ times that error in $\hat z_0$: at high noise, a small
# noise error is a large image error. Hence several steps, each correcting the last estimate.

# %%
eps_wrong = noise + 0.2 * torch.randn(noise.shape, generator=torch.Generator().manual_seed(2))
z0_wrong = diffusion.predict_x0(x_t, eps_wrong, a_t)
print(f"noise error 0.2 per pixel becomes an image error of {(z0_wrong - faces).std().item():.2f} per pixel at "
      f"index {t_from} (factor sqrt((1 - a_t) / a_t) = {math.sqrt((1 - a_t) / a_t):.2f})")
fig, axes = plt.subplots(1, 4, figsize=(11, 2.2))
for ax, (img, title) in zip(axes, [(x_t, f"x_t, index {t_from}"), (z0_hat, "z0_hat, perfect eps"),
                                   (z0_wrong, "z0_hat, eps off by 0.2"),
                                   (diffusion.ddim_step(x_t, eps_wrong, a_t, a_s), f"DDIM step to index {t_to}")]):
    viz.show_images(img.clamp(-1, 1)[:3], nrow=3, ax=ax, title=title)
plt.show()

# %% [markdown]
# Now $\sigma$: with $\eta = 1$ and neighbouring timesteps it equals DDPM's posterior std $\sqrt{\tilde\beta_t}$,
# $\tilde\beta_t = \beta_t (1 - a_{t-1}) / (1 - a_t)$; any $\eta$ keeps eq. 28's marginal:

# %%
t = 300
beta_tilde = sched.betas[t] * (1 - sched.alpha_bar[t - 1]) / (1 - sched.alpha_bar[t])
sigma_1 = diffusion.ddim_sigma(sched.alpha_bar[t], sched.alpha_bar[t - 1], eta=1.0)
torch.testing.assert_close(sigma_1, beta_tilde.sqrt())
print(f"eta = 1, index {t} -> {t - 1}: sigma = {sigma_1.item():.5f} = sqrt(beta_tilde) = {beta_tilde.sqrt().item():.5f}")

x0_point, n = 0.7, 1_000_000
e, z = torch.randn(n, dtype=torch.float64), torch.randn(n, dtype=torch.float64)
x_t_points = math.sqrt(a_t) * x0_point + math.sqrt(1 - a_t) * e
for eta in (0.0, 0.5, 1.0):
    x_s_points = diffusion.ddim_step(x_t_points, e, a_t, a_s, eta, z)
    print(f"eta = {eta}: mean {x_s_points.mean().item():.4f} (eq. 28: {math.sqrt(a_s) * x0_point:.4f}), "
          f"variance {x_s_points.var().item():.4f} (eq. 28: {1 - a_s:.4f})")

# %% [markdown]
# ## A data set with a perfect model
#
# For data from a mixture $\sum_k w_k\, \mathcal N(\mu_k, \mathrm{diag}(s_k^2))$, every noisy marginal is again a
# mixture: component $k$ moves to mean $\sqrt{a}\,\mu_k$ and variance $a s_k^2 + 1 - a$ ($a = \bar\alpha_t$). The
# minimiser of eq. 27 is the posterior mean of the noise (Tweedie):
#
# $$\epsilon^*(x_t, t) = \mathbb{E}[\epsilon \mid x_t] = -\sqrt{1 - a}\,\nabla \log p_t(x_t)
#   = \sqrt{1 - a} \sum_k r_k(x_t)\, \frac{x_t - \sqrt{a}\,\mu_k}{a s_k^2 + 1 - a},$$
#
# with $r_k$ the posterior probability of component $k$; `GaussianMixture.eps_model(diffusion)` wraps it as
# `model(x_t, t, y) -> eps`. Autograd checks it first:

# %%
gm = toy_mixture_2d()
x_check = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
a_check = 0.3
(score,) = torch.autograd.grad(gm.log_prob(x_check, a_check).sum(), x_check)
torch.testing.assert_close(gm.optimal_eps(x_check.detach(), a_check), -math.sqrt(1 - a_check) * score)
print(f"closed-form eps* equals -sqrt(1 - a) * grad log p_t on 5 random points; mixture weights {[round(w, 3) for w in gm.weights.tolist()]}")

model = gm.eps_model(rescaled)
data_points, data_labels = gm.sample(N_POINTS, torch.Generator().manual_seed(0))


def mixture_contours(ax: plt.Axes, mixture: GaussianMixture = gm) -> None:
    grid = torch.linspace(-3.2, 3.2, 120)
    gx, gy = torch.meshgrid(grid, grid, indexing="xy")
    density = mixture.log_prob(torch.stack([gx.flatten(), gy.flatten()], 1)).exp().view(120, 120)
    ax.contour(gx, gy, density, levels=6, colors="grey", linewidths=0.6)
    ax.set_xlim(-3.2, 3.2), ax.set_ylim(-3.2, 3.2), ax.set_aspect("equal")


# %%
fig, axes = plt.subplots(1, 4, figsize=(12, 3.1))
for ax, t in zip(axes, [0, 100, 250, T - 1]):
    noisy = rescaled.q_sample(data_points, torch.full((N_POINTS,), t), torch.randn(N_POINTS, 2))
    ax.scatter(*noisy.T, s=1, c=data_labels, cmap="viridis", alpha=0.5)
    mixture_contours(ax)
    ax.set_title(f"index t = {t}", fontsize=9)
fig.suptitle("the forward process on the 2-D mixture (contours: the clean data)", fontsize=10)
plt.show()

# %% [markdown]
# ## Algorithm 3 with the package
#
# From $x_T \sim \mathcal N(0, I)$, each timestep of the sub-sequence (noisiest first) predicts the noise and takes
# eq. 29 to the next; the last goes to clean data. `diffusion.ddim_timesteps` makes the sub-sequence; `DDIMSampler`
# runs the loop, and its `callback` sees every step:

# %%
x_T = torch.randn(N_POINTS, 2, generator=torch.Generator().manual_seed(1))
timesteps = diffusion.ddim_timesteps(T, 50, "trailing")
print("sub-sequence:", timesteps[:4].tolist(), "...", timesteps[-3:].tolist())


def show_step(s: diffusion.SamplerStep) -> None:
    if s.step < 2 or s.step >= s.num_steps - 2:
        print(f"  step {s.step:2d}: index {s.t_from:3d} -> {s.t_to:3d}, mean distance of x to the origin "
              f"{s.x.norm(dim=1).mean().item():.3f}")


sampler = diffusion.DDIMSampler(rescaled, num_steps=50, spacing="trailing", eta=0.0)
print(sampler)
samples_50 = sampler.sample(model, x_T, callback=show_step)

# %% [markdown]
# `DDIMSampler.sample(model, x_T, y)` takes $x_T$ of any shape (latents in chapter 09), up to `T` steps, a spacing
# (`"trailing"`, `"linspace"`, `"leading"`), $\eta$, guidance and a `callback`.
#
# ## Trajectories: 10, 50 and 500 steps, $\eta$ = 0 and 1
#
# The same starting points sampled six ways; grey contours are the data.

# %%
x_T_traj = torch.randn(300, 2, generator=torch.Generator().manual_seed(2))
fig, axes = plt.subplots(2, 3, figsize=(11.5, 7.6))
for row, eta in enumerate((0.0, 1.0)):
    for col, steps in enumerate((10, 50, T)):
        path = [x_T_traj]
        out = diffusion.DDIMSampler(rescaled, steps, eta=eta).sample(
            model, x_T_traj, generator=torch.Generator().manual_seed(3), callback=lambda s: path.append(s.x))
        path = torch.stack(path)                          # (steps + 1, 300, 2): the trajectory of every point
        assigned = gm.responsibilities(out).argmax(1)
        width = torch.stack([out[assigned == k].std(0).mean() / gm.stds[k].mean() for k in range(gm.K)]).mean()
        ax = axes[row, col]
        mixture_contours(ax)
        ax.plot(path[:, :40, 0], path[:, :40, 1], lw=0.5, alpha=0.6, color="tab:blue")  # 40 paths stay readable
        ax.scatter(*x_T_traj[:40].T, s=4, color="grey", label="x_T", zorder=3)
        ax.scatter(*out.T, s=4, color="tab:red", label="sample", zorder=4)
        ax.set_title(f"{steps} steps, eta = {eta:g}: cluster widths {width.item():.2f} x the true", fontsize=9)
axes[0, 0].legend(loc="upper left", fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# With $\eta = 0$ DDIM solves an ODE: smooth paths, the same $x_T$ always gives the same sample, and more steps follow
# the curve more closely. With $\eta = 1$ paths wander and can change cluster. With few steps the titles' width ratio
# (1.00 is exact) is off: the sampler's error, since the model is perfect.
#
# ## Steps against error and time (the shape of the paper's Table 3)
#
# Table 3 gives FID and ms per image for 50 to 500 DDIM steps. Here every error is the sampler's:
#
# - **ODE error**: mean distance to where 500 steps take the same $x_T$;
# - **width error**: mean relative error of the clusters' stds (per axis);
# - **weight error**: total-variation distance of the clusters' shares (samples assigned to their likeliest
#   component) from the true weights;
# - **time** per batch; `N_POINTS` points drawn from the data set the floor.

# %%
def cluster_errors(x: torch.Tensor) -> tuple[float, float]:
    """(mean relative error of the clusters' stds, total-variation distance of the cluster weights)."""
    assigned = gm.responsibilities(x).argmax(1)
    widths = torch.stack([x[assigned == k].double().std(0) / gm.stds[k] for k in range(gm.K)])  # (K, 2)
    weights = torch.bincount(assigned, minlength=gm.K).double() / len(x)
    return (widths - 1).abs().mean().item(), 0.5 * (weights - gm.weights).abs().sum().item()


def timed_sample(sampler, model, x_T, **kwargs) -> tuple[torch.Tensor, float]:
    start = fftd_course.chapter_seconds()
    out = sampler.sample(model, x_T.to(device), **kwargs).cpu()
    return out, fftd_course.chapter_seconds() - start


# %%
x_T_table = torch.randn(N_POINTS, 2, generator=torch.Generator().manual_seed(4))
reference, _ = timed_sample(diffusion.DDIMSampler(rescaled, T), model, x_T_table)
rows = []
for steps in tqdm([2, 5, 10, 20, 50, 100, 200, T], desc="DDIM step counts"):
    out, seconds = timed_sample(diffusion.DDIMSampler(rescaled, steps), model, x_T_table)
    width, weight = cluster_errors(out)
    rows.append((f"DDIM {steps}", steps, (out - reference).norm(dim=1).mean().item(), width, weight, seconds))
floor_width, floor_weight = cluster_errors(data_points)
print(f"{'sampler':12s} {'steps':>5s} {'ODE error':>10s} {'width err':>10s} {'weight err':>10s} {'time (ms)':>10s}")
for name, steps, ode, width, weight, seconds in rows:
    print(f"{name:12s} {steps:5d} {ode:10.4f} {width:10.3f} {weight:10.3f} {1000 * seconds:10.1f}")
print(f"{'data itself':12s} {'':5s} {'':10s} {floor_width:10.3f} {floor_weight:10.3f}")

# %%
fig, ax = plt.subplots(figsize=(6, 3.4))
steps_axis = [r[1] for r in rows[:-1]]
ax.loglog(steps_axis, [r[2] for r in rows[:-1]], "o-", label="ODE error (vs 500 steps)")
ax.loglog(steps_axis, [r[3] for r in rows[:-1]], "s-", label="cluster width error")
ax.axhline(floor_width, color="grey", ls=":", label="width error of data samples")
ax.set_xlabel("DDIM steps (eta = 0)"), ax.set_ylabel("error"), ax.legend(fontsize=8)
fig.tight_layout()
plt.show()
ratio = rows[-1][5] / next(r[5] for r in rows if r[1] == 50)
slope = math.log(rows[3][2] / rows[5][2]) / math.log(rows[5][1] / rows[3][1])
print(f"500 steps took {ratio:.1f} times as long as 50 (one model call per step); between 20 and 100 steps the "
      f"ODE error falls like steps^-{slope:.2f}")

# %% [markdown]
# Table 3's trade-off: error falls, time grows, and the distribution errors stop at the data's floor. (The paper's
# FID gain also mixes in how well its network learned.)
#
# ## Table 3's "1000 steps (DDPM)" row (E10)
#
# That row is worse than 500 DDIM steps; yet a $T = 500$ model has only 500 noise levels to visit.

# %%
PAPER_TABLE_3 = {  # steps: (FID CelebA-HQ, FID AFHQ, ms per image), from the paper
    "50": (37.98, 59.84, 851), "100": (16.83, 18.46, 1140), "200": (14.37, 15.41, 1431),
    "500": (9.64, 10.25, 4026), "1000 (DDPM)": (14.96, 12.31, 10386)}
print(f"the paper's Table 3:\n{'steps':>12s} {'FID CelebA-HQ':>14s} {'FID AFHQ':>9s} {'ms/image':>9s}")
for steps, (fid_celeba, fid_afhq, ms) in PAPER_TABLE_3.items():
    print(f"{steps:>12s} {fid_celeba:14.2f} {fid_afhq:9.2f} {ms:9d}")
try:
    diffusion.DDIMSampler(rescaled, num_steps=1000)
except ValueError as err:
    print("ValueError:", err)

# %% [markdown]
# That row is the paper's **pixel-space DDPM baseline** (section 4.3.4): another model, with $T = 1000$ (DDPM's
# $10^{-4} \to 0.02$), sampled through every step. The analytic model takes any schedule, so we add that row honestly
# with `DDPMSampler`, plus DDPM at $T = 500$ (every step, $\eta = 1$).

# %%
ddpm_1000 = diffusion.Diffusion(diffusion.beta_schedule("linear", 1000))
for name, sched in [("DDPM T=500", rescaled), ("DDPM T=1000", ddpm_1000)]:
    out, seconds = timed_sample(diffusion.DDPMSampler(sched), gm.eps_model(sched), x_T_table,
                                generator=torch.Generator().manual_seed(5))
    width, weight = cluster_errors(out)
    rows.append((name, sched.T, float("nan"), width, weight, seconds))
print(f"{'sampler':12s} {'steps':>5s} {'width err':>10s} {'weight err':>10s} {'time (ms)':>10s}")
for name, steps, _, width, weight, seconds in rows[-4:]:
    print(f"{name:12s} {steps:5d} {width:10.3f} {weight:10.3f} {1000 * seconds:10.1f}")
paper_ratio = PAPER_TABLE_3["1000 (DDPM)"][2] / PAPER_TABLE_3["500"][2]
print(f"DDPM with 1000 steps took {rows[-1][5] / rows[-3][5]:.1f} times as long as DDIM with 500 "
      f"(the paper: {paper_ratio:.1f} times, for two different networks)")

# %% [markdown]
# Ancestral sampling through every step is exact too as steps shrink (compare the data's row): the paper's row
# compares two models, not two samplers.
#
# ## Images: a perfect model of eight faces
#
# Make each component a 32×32 toy face plus a little pixel noise: the best model of eight images (it can only
# reproduce them, like a network that memorised its training set).

# %%
face_set, _ = data.make_toy_faces(8, size=32, seed=0)
FACE_STD = 0.05  # the pixel noise around each face in the data
faces_gm = GaussianMixture(face_set, torch.full((8,), FACE_STD))
face_model = faces_gm.eps_model(rescaled)
x_T_faces = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(6))
fig, axes = plt.subplots(5, 1, figsize=(8, 5.8))
viz.show_images(x_T_faces.clamp(-1, 1), nrow=8, ax=axes[0], title="x_T (clamped for display)")
for ax, steps in zip(axes[1:], (3, 10, 50, 200)):
    out = diffusion.DDIMSampler(rescaled, steps).sample(face_model, x_T_faces)
    residual = out - face_set[faces_gm.responsibilities(out).argmax(1)]   # the sample minus its face
    viz.show_images(out.clamp(-1, 1), nrow=8, ax=ax, title=f"DDIM, {steps} steps: pixel noise around its face "
                                                               f"has std {residual.std().item():.3f} (data: {FACE_STD:.3f})")
fig.tight_layout()
plt.show()

# %% [markdown]
# Even 3 steps land on a face (the last step returns the clean estimate); few steps get the variation around it wrong.
#
# Back to the schedule: sample many faces from $\mathcal N(0, I)$ and count each of the eight (equally likely)
# faces. The control starts from the true $q(x_T)$.

# %%
n_faces = 500 if device.type == "cpu" else 3000
order = (face_set.flatten(1) ** 2).sum(1).argsort()  # faces from the least to the most energy
shares = {}  # (schedule, start) -> share of the samples on each face
for name, sched in [("linear as printed", printed), ("linear rescaled", rescaled)]:
    x0_true, _ = faces_gm.sample(n_faces, torch.Generator().manual_seed(8))
    starts = {"x_T ~ N(0, I)": torch.randn(n_faces, 3, 32, 32, generator=torch.Generator().manual_seed(7)),
              "x_T ~ q(x_T), the truth": sched.q_sample(x0_true, torch.full((n_faces,), T - 1), torch.randn(
                  x0_true.shape, generator=torch.Generator().manual_seed(9)))}
    for start_name, start in starts.items():
        out = diffusion.DDIMSampler(sched, 20).sample(faces_gm.eps_model(sched), start)
        shares[name, start_name] = torch.bincount(faces_gm.responsibilities(out).argmax(1), minlength=8).double() / n_faces

# %%
weight_error = {key: 0.5 * (share - 1 / 8).abs().sum().item() for key, share in shares.items()}
fig, axes = plt.subplots(1, 2, figsize=(11, 3), sharey=True)
for (name, start_name), share in shares.items():
    ax = axes[0 if name == "linear as printed" else 1]
    ax.bar(torch.arange(8) + (-0.2 if "N(0" in start_name else 0.2), share[order], width=0.4, label=start_name)
    ax.axhline(1 / 8, color="grey", ls=":"), ax.set_title(name, fontsize=10)
    ax.set_xlabel("face, sorted by sum of squared pixels")
    print(f"{name:18s}, start {start_name:24s}: weight error (TV) {weight_error[name, start_name]:.3f}; share of the "
          f"highest-energy face {share[order[-1]].item():.3f}, of the lowest {share[order[0]].item():.3f} (true 0.125)")
axes[0].set_ylabel("share of samples"), axes[0].legend(fontsize=8)
fig.tight_layout()
plt.show()
ratio = weight_error["linear as printed", "x_T ~ N(0, I)"] / weight_error["linear rescaled", "x_T ~ N(0, I)"]
print(f"from N(0, I), the weight error with the printed schedule is {ratio:.1f} times that with the rescaled one")

# %% [markdown]
# From $\mathcal N(0, I)$ the printed schedule draws faces in the wrong proportions, while the control shows the
# sampler is fine: the faces with most energy ($\sum_i x_i^2$) have $q(x_T \mid x_0)$ furthest from
# $\mathcal N(0, I)$ (the KL above grows with it). With the rescaled schedule both starts agree.
#
# > **What the paper says / what we chose** (E24, E25). The paper prints a linear schedule $10^{-4} \to 0.02$ and
# > "diffusion period 500": taken literally, the model never sees pure noise in training but gets it when sampling.
# > The course's default is `beta_schedule("linear_rescaled", 500)`, both ends times $1000 / T$, as
# > improved-diffusion and DiT do and as the paper's "500-step variant by linearly interpolated schedule" of its
# > baseline suggests; `beta_schedule("linear", 500)` is the literal reading. DDIM's sub-sequence is `"trailing"` by
# > default, so the first step starts at index $T - 1$ like the paper's $z_T$ (diffusers' old `"leading"` does
# > not: see Going further); the last step goes to $\bar\alpha = 1$ (the paper's $\alpha_0 = 1$).

# %% [markdown]
# ## Inversion, guidance and the conventions the next chapters use
#
# DDIM with $\eta = 0$ is a deterministic map, so it can run backwards: `DDIMSampler.invert` walks the sub-sequence
# upwards to the $x_T$ that samples back to given data. It evaluates the model one step late (at the less noisy
# point), so the round trip is exact only as steps shrink:

# %%
x0_pts = data_points[:500]
for steps in (20, 100, T):
    inv_sampler = diffusion.DDIMSampler(rescaled, steps)
    x_T_inv = inv_sampler.invert(model, x0_pts)
    back = inv_sampler.sample(model, x_T_inv)
    print(f"{steps:3d} steps: x_T has std {x_T_inv.std().item():.2f}; data -> noise -> data error "
          f"{(back - x0_pts).norm(dim=1).mean().item():.4f} (mean distance)")

# %% [markdown]
# The samplers call `model(x_t, t, y)`: `t` a LongTensor `(B,)` of 0-based indices, `y` one of labels or `None`.
# **Classifier-free guidance** (chapter 09) also calls it with a learned `null_label` (E12) and extrapolates, on
# every channel: $\epsilon = \epsilon_u + s\,(\epsilon_c - \epsilon_u)$ ($s = 1$: conditional, $s = 0$:
# unconditional). Here `null_label = K` is the whole mixture:

# %%
y = torch.full((300,), 2)
fig, axes = plt.subplots(1, 3, figsize=(11, 3.8))
for ax, scale in zip(axes, (0.0, 1.0, 3.0)):
    out = sampler.sample(model, torch.randn(300, 2, generator=torch.Generator().manual_seed(10)), y,
                         guidance_scale=scale, null_label=gm.null_label)
    mixture_contours(ax)
    ax.scatter(*out.T, s=3, color="tab:red")
    share = (gm.responsibilities(out).argmax(1) == 2).double().mean().item()
    spread = out[gm.responsibilities(out).argmax(1) == 2].std(0).mean().item()
    ax.set_title(f"guidance {scale:g}:\n{100 * share:.0f}% in cluster 2, spread {spread:.2f}", fontsize=9)
fig.tight_layout()
plt.show()
print(f"cluster 2's own std: {gm.stds[2].mean().item():.2f}")

# %% [markdown]
# Guidance above 1 pushes samples towards what distinguishes the label (compare the spreads with the cluster's own
# std): variety traded for fidelity.

# %% [markdown]
# ## Exercises
#
# **Exercise 1 (a variant: another parameterisation).** Many newer models predict the *velocity*
# $v = \sqrt{a_t}\,\epsilon - \sqrt{1 - a_t}\,z_0$ instead of $\epsilon$. Write `ddim_step_v(x_t, v, a_t, a_s)`:
# eq. 29 with $\eta = 0$ for such a model, from level $a_t$ to $a_s$ (floats, or tensors that broadcast against
# `x_t`), without `predict_x0` or `ddim_step`. Eq. 28 and $v$'s definition are two equations in $z_0$ and
# $\epsilon$: what does the pair $(\sqrt{a_t}, \sqrt{1 - a_t})$ remind you of?

# %%
def ddim_step_v(x_t: torch.Tensor, v: torch.Tensor, a_t, a_s) -> torch.Tensor:
    """Deterministic DDIM (eq. 29, eta = 0) from alpha_bar a_t to a_s, for a model that predicts v."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise: write your code here, then run the check cell below.")


# %%
checks.check_ddim_step_v(ddim_step_v)

# %% [markdown]
# A step to $a_s = 1$ lands on $\hat z_0$. Why predict $v$? The same error of 0.2 per pixel, in $\epsilon$ or in $v$:

# %%
err = 0.2 * torch.randn(faces.shape, generator=torch.Generator().manual_seed(2))
try:
    for t in (100, 400, T - 1):
        a = rescaled.alpha_bar[t].item()
        x_noisy = rescaled.q_sample(faces, torch.full((6,), t), noise)
        v_true = math.sqrt(a) * noise - math.sqrt(1 - a) * faces
        from_eps = diffusion.predict_x0(x_noisy, noise + err, a)
        from_v = ddim_step_v(x_noisy, v_true + err, a, 1.0)
        print(f"index {t}: z0_hat is off by {(from_eps - faces).std().item():6.2f} per pixel with the error in eps, "
              f"by {(from_v - faces).std().item():.2f} with it in v")
except NotImplementedError:
    print("finish exercise 1 to see this")

# %% [markdown]
# **Exercise 2 (find the bug).** This deterministic DDIM sampler, written from Algorithm 3, gives almost-right
# samples: it has an off-by-one (see the conventions section). Write `ddim_sample` correctly: same arguments, the
# model called as `model(x_t, t, None)` with a LongTensor `t` of shape `(B,)`, and `diffusion.ddim_step` for eq. 29.

# %%
def buggy_ddim_sample(model, x_T: torch.Tensor, timesteps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) over `timesteps` (0-based, noisiest first). It has one bug."""
    x = x_T
    targets = timesteps.tolist()[1:] + [0]  # where each step goes; the last one goes to the clean data
    for t, t_target in zip(timesteps.tolist(), targets):
        eps = model(x, torch.full((len(x),), t), None)
        x = diffusion.ddim_step(x, eps, alpha_bar[t], alpha_bar[t_target])
    return x


# %%
def ddim_sample(model, x_T: torch.Tensor, timesteps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM (eta = 0, eq. 29) over `timesteps` (0-based, noisiest first), ending on clean data."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise: write your code here, then run the check cell below.")


# %%
checks.check_ddim_sampler(ddim_sample)

# %% [markdown]
# **Predict, then measure.** How far apart are the buggy and the correct samples? Predict the size of the
# difference per pixel (its standard deviation) from the schedule alone (which $\bar\alpha$ does the buggy last
# step land on, and what does eq. 28 then add?) in the cell below, then measure on the eight faces with 10 steps.

# %%
def predicted_gap_std() -> float:
    """The std per pixel of (buggy - correct) samples, from the schedule alone."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise: write your code here, then run the check cell below.")


# %%
ts10, gap = diffusion.ddim_timesteps(T, 10), None
try:
    gap = ddim_sample(face_model, x_T_faces, ts10, rescaled.alpha_bar) - buggy_ddim_sample(
        face_model, x_T_faces, ts10, rescaled.alpha_bar)
    print(f"buggy minus correct: std {gap.std().item():.4f} per pixel, against the data's own pixel noise "
          f"{FACE_STD}")
except NotImplementedError:
    print("finish exercise 2 to see this")

# %%
checks.compare_prediction(predicted_gap_std, None if gap is None else gap.std().item(), what="std of buggy - correct")

# %% [markdown]
# **Exercise 3 (extend: exact inversion; stretching).** `DDIMSampler.invert` steps up from $x_s$ to $x_t$ with
# $\epsilon_\theta(x_s, t)$, because $x_t$ is what it computes. The exact step solves eq. 29 ($\eta = 0$) for $x_t$
# with $\epsilon_\theta(x_t, t)$, a fixed point. Write `invert_exact(model, x0, timesteps, alpha_bar, iterations)`:
# take the package's estimate, then re-evaluate the model at the current estimate `iterations` times (`0` must equal
# `DDIMSampler.invert`). Start from clean data ($\bar\alpha = 1$); `timesteps` are in sampling order.

# %%
def invert_exact(model, x0: torch.Tensor, timesteps: torch.Tensor, alpha_bar: torch.Tensor,
                 iterations: int) -> torch.Tensor:
    """The x_T that deterministic DDIM over `timesteps` maps back to x0, by fixed-point iteration per step."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise: write your code here, then run the check cell below.")


# %%
checks.check_exact_inversion(invert_exact)

# %% [markdown]
# How much does the round trip improve? 20 steps on the 2-D mixture (`DDIMSampler.invert`'s error is printed above):

# %%
inv_sampler = diffusion.DDIMSampler(rescaled, 20)
try:
    for iterations in (0, 1, 2, 5):
        x_T_exact = invert_exact(model, x0_pts, inv_sampler.timesteps, rescaled.alpha_bar, iterations)
        back = inv_sampler.sample(model, x_T_exact)
        print(f"{iterations} fixed-point iterations per step: round-trip error "
              f"{(back - x0_pts).norm(dim=1).mean().item():.2e} (mean distance)")
except NotImplementedError:
    print("finish exercise 3 to see this")

# %% [markdown]
# ## Going further
#
# - `"leading"` spacing: for which $n$ does it start at $T - 1$? What does $n = 1$ give, and why does diffusers now
#   offer `timestep_spacing="trailing"` (https://arxiv.org/abs/2305.08891)?
# - Exercise 3's iteration converges only if the model changes slowly with $x_t$: try the eight-face model with 5
#   steps.
# - Inversion with guidance drifts (https://arxiv.org/abs/2211.09794): measure the round trip at `guidance_scale=3`.
# - Why can DDIM with $\eta > 0$ not be inverted this way?

# %% [markdown]
# ## Summary
#
# - Eq. 28 jumps to any noise level; `Diffusion` holds the schedule, `q_sample` and eq. 27's loss (0-based
#   timesteps).
# - At $T = 500$ the printed linear schedule leaves signal at $t = T$ and draws faces in the wrong proportions; the
#   course rescales it by $1000 / T$.
# - DDIM (eq. 29) predicts clean data, re-noises it to the previous timestep of a sub-sequence and adds $\sigma$ of
#   fresh noise: $\eta = 0$ is an ODE solver, $\eta = 1$ over every step is DDPM.
# - More steps, less error, more time (Table 3); its 1000-step row is another model.
# - Chapters 08-09 train with `Diffusion.loss` and sample with `DDIMSampler`.

# %%
print(f"chapter run time: {fftd_course.chapter_seconds():.1f} s on {device}")
