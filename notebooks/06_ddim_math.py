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
# Stage 2 of the paper generates latents by **diffusion** (section 3.3): a fixed forward process adds
# Gaussian noise to data step by step until nothing but noise is left, and a network learns to predict
# that noise so that a sampler can walk back from pure noise to data. The paper trains with `T = 500`
# noise levels and samples with **DDIM** (its Algorithm 3), which can skip most of them.
#
# - eq. 26: one forward step, `q(z_t | z_{t-1}) = N(sqrt(1 - beta_t) z_{t-1}, beta_t I)`, linear `beta_t`;
# - eq. 28: all steps at once, `z_t = sqrt(alpha_t) z_0 + sqrt(1 - alpha_t) eps`, `eps ~ N(0, I)`;
# - eq. 27: the loss, `E ||eps - eps_theta(z_t, t)||^2`;
# - eq. 29: the DDIM update from `z_t` to the previous timestep of a sub-sequence.
#
# This chapter needs no neural network. For a Gaussian-mixture data set the best possible noise
# predictor is known in closed form, so we can run the samplers with a *perfect* model and see what
# the sampler alone does: how many steps it needs, what `eta` changes, what the schedule changes.
#
# **In this chapter you will**
# - noise toy faces with the forward process and move along `t` with a slider;
# - compare the paper's printed linear schedule at `T = 500` with the rescaled one, and measure the
#   signal the printed one leaves at `t = T`;
# - derive the DDIM update step by step and check every piece against `fftd_course.diffusion`;
# - watch DDIM trajectories of the analytic model for 10 / 50 / 500 steps and `eta` 0 / 1;
# - measure steps against error and time (the shape of the paper's Table 3), and see why Table 3's
#   1000-step row cannot come from a `T = 500` model;
# - implement `q_sample`, one DDIM step and (bonus) the `sigma` of `eta`.

# %%
import math
import time

import matplotlib.pyplot as plt
import torch
from tqdm.auto import tqdm

import fftd_course
from fftd_course import checks, data, diffusion, viz
from fftd_course.mixture import GaussianMixture, toy_mixture_2d

torch.manual_seed(0)
device = fftd_course.default_device()
# The analytic model runs on the CPU in float64 whatever the device; a GPU machine only draws more points.
N_POINTS = 1500 if device.type == "cpu" else 8000
T = 500
# Every tensor here is small (2-D points, a few 32x32 images) and each sampling step is microseconds
# of work: splitting that over threads costs more than it saves, and on a busy machine the threads
# wait for each other. So this chapter uses one.
torch.set_num_threads(1)
print(f"device: {device}, {N_POINTS} points per 2-D experiment, T = {T}, {torch.get_num_threads()} CPU thread")

# %% [markdown]
# ## Conventions: 0-based timesteps and the paper's `alpha_t`
#
# Two conventions first, because every off-by-one bug in diffusion code lives here.
#
# - The paper counts noise levels `t = 1 .. T`. Tensors count from 0, so the package uses **0-based
#   indices** `t = 0 .. T-1`: the paper's `t` is index `t - 1`, the model is called with indices, and
#   the paper's `alpha_0 = 1` (clean data) has no index: it is where the last sampling step lands.
# - The paper writes `alpha_t` for the **cumulative product** `prod_{s <= t} (1 - beta_s)` (E5 in
#   `docs/ERRATA.md`). DDPM writes that as `alpha-bar_t` and keeps `alpha_t = 1 - beta_t` for a single step.
#   The package always says `alpha_bar` for the product, so it cannot be confused with a single step.
#
# `diffusion.Diffusion` holds a schedule: it is built from the `betas`, and holds `alpha_bar`.

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
# Eq. 28 jumps straight from clean data to any noise level: scale the image down by `sqrt(alpha_bar_t)`
# and add noise scaled by `sqrt(1 - alpha_bar_t)`. The variances add up to one, so images in `[-1, 1]`
# stay at about unit scale all the way. For one timestep and a whole batch it is one line:

# %%
faces, face_labels = data.make_toy_faces(6, size=32, seed=0)
noise = torch.randn(faces.shape, generator=torch.Generator().manual_seed(1))
t_demo = 200
ab = rescaled.alpha_bar[t_demo].float()
x_t_by_hand = ab.sqrt() * faces + (1 - ab).sqrt() * noise   # eq. 28 with one t for the batch
t_batch = torch.full((len(faces),), t_demo)
torch.testing.assert_close(rescaled.q_sample(faces, t_batch, noise), x_t_by_hand)
print(f"q_sample at index {t_demo} equals the line above; alpha_bar = {ab.item():.4f}")

# %% [markdown]
# Move the slider along `t`. The top row uses the schedule as printed, the bottom row the rescaled
# one; both use the same noise. (Without a live kernel, or under the tests, a few values of `t` are
# drawn one after another instead.)

# %%
def draw_noised(t: int) -> None:
    fig, axes = plt.subplots(2, 1, figsize=(7.5, 3.0))
    for ax, (name, sched) in zip(axes, [("printed", printed), ("rescaled", rescaled)]):
        x_t = sched.q_sample(faces, torch.full((len(faces),), t), noise)
        viz.show_images(x_t.clamp(-1, 1), nrow=6, ax=ax)
        ax.set_title(f"{name} linear, index t = {t}: alpha_bar = {sched.alpha_bar[t].item():.2e}", fontsize=9)
    fig.tight_layout()


viz.explore(draw_noised, "t", values=[0, 10, 25, 50, 100, 150, 200, 250, 300, 350, 400, 450, T - 1],
            static=[0, 100, 250, T - 1])

# %% [markdown]
# ## Two readings of "linear, T = 500": how much signal is left at `t = T`?
#
# DDPM's linear schedule runs from `1e-4` to `0.02` over **1000** steps. The paper prints the same
# endpoints with `T = 500`. Over half as many steps the betas add up to about half as much, so the
# last `alpha_bar` is far from zero. improved-diffusion and DiT instead scale both endpoints by
# `1000 / T` ("linear_rescaled": `2e-4 -> 0.04` at `T = 500`), which makes the last step as noisy as
# DDPM's. The cosine schedule (Nichol & Dhariwal) is shown for comparison.

# %%
cosine = diffusion.Diffusion(diffusion.beta_schedule("cosine", T))
schedules = {"linear as printed": printed, "linear rescaled (default)": rescaled, "cosine": cosine}
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.4))
for name, sched in schedules.items():
    ax1.plot(sched.alpha_bar, label=name)
    ax2.plot(sched.snr.log10(), label=name)
ax1.set_xlabel("index t"), ax1.set_ylabel("alpha_bar_t (the paper's alpha_t)"), ax1.legend()
ax2.set_xlabel("index t"), ax2.set_ylabel("log10 SNR = log10(alpha_bar / (1 - alpha_bar))")
ax2.axhline(0, color="grey", lw=0.5)
fig.tight_layout()
plt.show()
for name, sched in schedules.items():
    ab_T = sched.alpha_bar[-1].item()
    print(f"{name:26s} alpha_bar_T = {ab_T:.2e}: x_T keeps {100 * math.sqrt(ab_T):5.2f}% of the image's amplitude, "
          f"SNR_T = {sched.snr[-1].item():.1e}")

# %% [markdown]
# A few percent of the amplitude sounds harmless, but an image has thousands of pixels. How far is
# `q(x_T | x_0)` from the `N(0, I)` that sampling starts from? Per image this is a KL divergence
# between two Gaussians with the same diagonal form, in closed form:
# `KL = 1/2 sum_i [ (1 - a) + a x_i^2 - 1 - log(1 - a) ]` with `a = alpha_bar_T`.

# %%
toy, _ = data.make_toy_faces(64, size=32, seed=3)
for name, sched in [("linear as printed", printed), ("linear rescaled", rescaled)]:
    a = sched.alpha_bar[-1].double()
    x2 = toy.double().flatten(1) ** 2
    kl = 0.5 * ((1 - a) + a * x2 - 1 - torch.log1p(-a)).sum(1)
    print(f"{name:18s}: KL(q(x_T | x_0) || N(0, I)) = {kl.mean().item():.3f} nats per 32x32 face on average "
          f"(max {kl.max().item():.3f})")

# %% [markdown]
# A KL of a nat or more means the noise at `t = T` still tells faces apart; the model is trained on
# that leftover signal but at sampling time gets pure noise. Later in this chapter the analytic model
# shows what this does to the samples.
#
# ## The DDIM update, step by step (eq. 29)
#
# Suppose we are at `x_t` and the model has predicted the noise `eps_theta`. Three pieces:
#
# 1. **Predict the clean data.** Solve eq. 28 for `x_0`:
#    `z0_hat = (x_t - sqrt(1 - a_t) eps_theta) / sqrt(a_t)` (`a` = alpha_bar).
# 2. **Re-noise it to the previous level.** Eq. 28 at the earlier timestep `s` says
#    `x_s = sqrt(a_s) x_0 + sqrt(1 - a_s) eps`. DDIM reuses the predicted noise for part of that
#    variance and fresh noise `z` for the rest: `sqrt(1 - a_s - sigma^2) eps_theta + sigma z`. Their
#    variances add up to `1 - a_s` whatever `sigma` is, so the marginal of eq. 28 is kept.
# 3. **Choose `sigma`.** `sigma = eta sqrt((1 - a_s) / (1 - a_t)) sqrt(1 - a_t / a_s)`. With `eta = 0`
#    the step is deterministic; with `eta = 1` it is the DDPM posterior `q(x_s | x_t, z0_hat)`.
#
# Together: `x_s = sqrt(a_s) z0_hat + sqrt(1 - a_s - sigma^2) eps_theta + sigma z`, eq. 29. The
# previous timestep `s` is the **previous element of the sub-sequence**, not `t - 1`.
#
# With a perfect noise prediction (the noise that made `x_t`), each piece is exact. Let us check on
# the faces, jumping from index 400 straight to index 100:

# %%
sched = rescaled
t_from, t_to = 400, 100
a_t, a_s = sched.alpha_bar[t_from].item(), sched.alpha_bar[t_to].item()
x_t = sched.q_sample(faces, torch.full((6,), t_from), noise)
eps_theta = noise                                         # a perfect model

z0_hat = (x_t - math.sqrt(1 - a_t) * eps_theta) / math.sqrt(a_t)          # piece 1
x_s = math.sqrt(a_s) * z0_hat + math.sqrt(1 - a_s) * eps_theta            # piece 2 with sigma = 0
torch.testing.assert_close(z0_hat, faces, atol=1e-4, rtol=0)
torch.testing.assert_close(x_s, sched.q_sample(faces, torch.full((6,), t_to), noise), atol=1e-5, rtol=0)
torch.testing.assert_close(x_s, diffusion.ddim_step(x_t, eps_theta, a_t, a_s), atol=1e-5, rtol=0)
print("perfect eps: z0_hat is the clean image, and the step lands exactly on eq. 28 at the earlier index")

# %% [markdown]
# A real model is not perfect. With some error in `eps_theta`, `z0_hat` is wrong by
# `sqrt((1 - a_t) / a_t)` times that error: at high noise a small error in the noise is a large error
# in the image. That is why a sampler takes several steps, each of which corrects the last estimate.

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
# Now `sigma`. With `eta = 1` and neighbouring timesteps it must equal DDPM's posterior standard
# deviation `sqrt(beta_tilde_t)`, `beta_tilde_t = beta_t (1 - a_{t-1}) / (1 - a_t)`; and for any `eta`
# the step keeps the marginal of eq. 28 (mean `sqrt(a_s) x_0`, variance `1 - a_s`):

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
# Take data from a mixture of Gaussians, `sum_k w_k N(mu_k, diag(s_k^2))`. Then every noisy marginal of
# eq. 28 is again a mixture: component `k` moves to mean `sqrt(a) mu_k` and variance `a s_k^2 + 1 - a`.
# The minimiser of the loss (eq. 27) is the posterior mean of the noise, and Tweedie's formula ties it
# to the gradient of the log-density:
#
# `eps*(x_t, t) = E[eps | x_t] = -sqrt(1 - a) grad log p_t(x_t) = sqrt(1 - a) sum_k r_k(x_t) (x_t - sqrt(a) mu_k) / (a s_k^2 + 1 - a)`,
#
# with `r_k(x_t)` the posterior probability of component `k`. `fftd_course.mixture.GaussianMixture`
# computes it; `eps_model(diffusion)` wraps it as a model with the network's signature,
# `model(x_t, t, y) -> eps`. First, a check that the closed form is Tweedie's formula, by autograd:

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


fig, axes = plt.subplots(1, 4, figsize=(12, 3.1))
for ax, t in zip(axes, [0, 100, 250, T - 1]):
    noisy = rescaled.q_sample(data_points, torch.full((N_POINTS,), t), torch.randn(N_POINTS, 2))
    ax.scatter(*noisy.T, s=1, c=data_labels, cmap="viridis", alpha=0.5)
    mixture_contours(ax)
    ax.set_title(f"index t = {t}", fontsize=9)
fig.suptitle("the forward process on the 2-D mixture (contours: the clean data)", fontsize=10)
plt.show()

# %% [markdown]
# ## DDIM by hand, then with the package
#
# Algorithm 3 is a loop: start from `x_T ~ N(0, I)`, and for each timestep of the sub-sequence from
# the noisiest down, predict the noise and take eq. 29 to the next element (the last step goes to
# clean data, `alpha_bar = 1`). Here is a 50-step deterministic sampler in a few lines:

# %%
x_T = torch.randn(N_POINTS, 2, generator=torch.Generator().manual_seed(1))
timesteps = diffusion.ddim_timesteps(T, 50, "trailing")   # 499, 489, ..., 9: "trailing" spacing
print("sub-sequence:", timesteps[:4].tolist(), "...", timesteps[-3:].tolist())

x = x_T.clone()
for i, t in enumerate(timesteps.tolist()):
    t_prev = timesteps[i + 1].item() if i + 1 < len(timesteps) else -1
    eps = model(x, torch.full((len(x),), t), None)
    a_t = rescaled.alpha_bar[t].item()
    a_prev = rescaled.alpha_bar[t_prev].item() if t_prev >= 0 else 1.0
    z0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    x = math.sqrt(a_prev) * z0 + math.sqrt(1 - a_prev) * eps          # eq. 29 with eta = 0

sampler = diffusion.DDIMSampler(rescaled, num_steps=50, spacing="trailing", eta=0.0)
torch.testing.assert_close(sampler.sample(model, x_T), x, atol=1e-5, rtol=1e-5)
print(f"{sampler}: same samples as the loop above")

# %% [markdown]
# `DDIMSampler.sample(model, x_T, y)` takes `x_T` of any shape (2-D points here, `(B, 4, 4, 4)` latents
# in chapter 09), any number of steps up to `T`, the spacing of the sub-sequence (`"trailing"`,
# `"linspace"` or `"leading"`), `eta`, classifier-free guidance and a `callback` that sees every step,
# which we use now to record trajectories.
#
# ## Trajectories: 10, 50 and 500 steps, eta 0 and 1
#
# The same starting points, sampled six ways; the paths of a few of them are drawn. Grey contours are
# the data.

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
# With `eta = 0` the paths are smooth curves: DDIM is then a solver of an ordinary differential
# equation, the same `x_T` always gives the same sample, and more steps only follow that curve more
# closely. With `eta = 1` every step adds fresh noise; the paths wander, and the same `x_T` can end
# in a different cluster. The titles compare the spread of each cluster of samples with the true one
# (1.00 would be exact): with few steps the spread is off, which is the sampler's error, since the
# model is perfect. The table below measures it properly.
#
# ## Steps against error and time (the shape of the paper's Table 3)
#
# Table 3 of the paper reports FID and milliseconds per image for 50 to 500 DDIM steps. We can measure
# the same trade-off exactly, because our model is perfect, so every error is the sampler's:
#
# - **ODE error**: mean distance of each sample to where 500 steps take the same `x_T`;
# - **width error**: the mean relative error of the clusters' standard deviations (per axis);
# - **weight error**: total-variation distance between the clusters' shares among the samples and the
#   true weights (each sample assigned to its most likely component);
# - **time** per batch of points (the model is cheap, so this is mostly the sampler's loop).
#
# The same `N_POINTS` points drawn from the data themselves give the floor that sampling noise sets.

# %%
def cluster_errors(x: torch.Tensor) -> tuple[float, float]:
    """(mean relative error of the clusters' stds, total-variation distance of the cluster weights)."""
    assigned = gm.responsibilities(x).argmax(1)
    widths = torch.stack([x[assigned == k].double().std(0) / gm.stds[k] for k in range(gm.K)])  # (K, 2)
    weights = torch.bincount(assigned, minlength=gm.K).double() / len(x)
    return (widths - 1).abs().mean().item(), 0.5 * (weights - gm.weights).abs().sum().item()


def timed_sample(sampler, model, x_T, **kwargs) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    out = sampler.sample(model, x_T.to(device), **kwargs).cpu()
    return out, time.perf_counter() - start


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
# The ODE error shrinks steadily with the number of steps, and the time grows in proportion to them:
# the trade-off of Table 3. The distribution errors fall too, until they reach the floor that a finite
# number of points sets (the row of the data's own points). The paper's FID also falls from 50 to 500
# steps, but its model is not perfect, so there the gain mixes the sampler's error with how well the
# network learned.
#
# ## Table 3's "1000 steps (DDPM)" row (E10)
#
# Table 3 ends with a 1000-step row labelled DDPM, with a worse FID than 500 DDIM steps. But a model
# trained with `T = 500` has exactly 500 noise levels: a 1000-step sampler has nothing to visit.

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
# That row is the paper's **pixel-space DDPM baseline** (section 4.3.4), a different model trained with
# `T = 1000` (DDPM's own schedule, `1e-4 -> 0.02`) and sampled by ancestral sampling through every
# step. Our analytic model works with any schedule, so we can add such a row honestly: a `T = 1000`
# model, sampled with `DDPMSampler`. The DDPM sampler at `T = 500` (every step, `eta = 1`) is shown too.

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
# With a perfect model, ancestral sampling through every step is also exact in the limit of small
# steps; compare its errors with the data's own row above. Whatever the paper's 1000-step row shows
# about FID, it compares two different models, not two samplers of one model.
#
# ## Images: a perfect model of eight faces
#
# The mixture can live in any shape. Make each component a 32×32 toy face with a little noise around
# it: this is the best possible model of a data set of eight images. (It can only reproduce them, which
# is exactly what a network that memorised its training set would do.) The same sampler code now
# produces images.

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
# Even 3 steps land on a face, because the last step returns the model's clean estimate. What few steps
# get wrong is the variation around each face: compare the printed noise levels with the data's own.
#
# Now the schedule question again, with images. Sample many faces starting from `N(0, I)`, as every
# sampler does, and count how often each of the eight faces comes out; all eight have the same weight.
# As a control, start instead from the true `q(x_T)` (noise a real face to `t = T` with eq. 28).

# %%
n_faces = 500 if device.type == "cpu" else 3000
face_norms = (face_set.flatten(1) ** 2).sum(1)
order = face_norms.argsort()
weight_error = {}
fig, axes = plt.subplots(1, 2, figsize=(11, 3), sharey=True)
for ax, (name, sched) in zip(axes, [("linear as printed", printed), ("linear rescaled", rescaled)]):
    m = faces_gm.eps_model(sched)
    starts = {"x_T ~ N(0, I)": torch.randn(n_faces, 3, 32, 32, generator=torch.Generator().manual_seed(7))}
    x0_true, _ = faces_gm.sample(n_faces, torch.Generator().manual_seed(8))
    starts["x_T ~ q(x_T), the truth"] = sched.q_sample(x0_true, torch.full((n_faces,), T - 1),
                                                       torch.randn(x0_true.shape, generator=torch.Generator().manual_seed(9)))
    for offset, (start_name, start) in zip((-0.2, 0.2), starts.items()):
        out = diffusion.DDIMSampler(sched, 20).sample(m, start)
        share = torch.bincount(faces_gm.responsibilities(out).argmax(1), minlength=8).double() / n_faces
        ax.bar(torch.arange(8) + offset, share[order], width=0.4, label=start_name)
        tv = 0.5 * (share - 1 / 8).abs().sum().item()
        if start_name.startswith("x_T ~ N"):
            weight_error[name] = tv
        print(f"{name:18s}, start {start_name:24s}: weight error (TV) {tv:.3f}; share of the highest-energy "
              f"face {share[order[-1]].item():.3f}, of the lowest {share[order[0]].item():.3f} (true {1 / 8:.3f})")
    ax.axhline(1 / 8, color="grey", ls=":")
    ax.set_title(name, fontsize=10), ax.set_xlabel("face, sorted by sum of squared pixels")
axes[0].set_ylabel("share of samples"), axes[0].legend(fontsize=8)
fig.tight_layout()
plt.show()
print(f"from N(0, I), the weight error with the printed schedule is {weight_error['linear as printed'] / weight_error['linear rescaled']:.1f} "
      f"times that with the rescaled one")

# %% [markdown]
# With the schedule as printed, starting from `N(0, I)` is starting from the wrong distribution: the
# faces are no longer drawn in their true proportions, while the control start shows the sampler
# itself is fine. The faces with the most energy (largest `sum x^2`) are the ones whose `q(x_T | x_0)`
# lies furthest from `N(0, I)` (the KL above grows with `sum x^2`); compare their printed shares with
# the true, equal share. With the rescaled schedule `x_T` holds almost no signal and both starts agree.
#
# > **What the paper says / what we chose** (E24, E25). The paper prints a linear schedule `1e-4 -> 0.02` and
# > "diffusion period 500". Taken literally, `alpha_bar_T` stays far from zero (printed above), so the
# > model never sees pure noise in training but gets it when sampling. The course's default is
# > `beta_schedule("linear_rescaled", 500)`, both ends times `1000 / T`, as improved-diffusion and DiT
# > do and as the paper's own "500-step variant by linearly interpolated schedule" of its baseline
# > suggests; `beta_schedule("linear", 500)` gives the literal reading. The DDIM sub-sequence uses
# > `"trailing"` spacing by default, so that the first step starts at index `T - 1` like the paper's
# > `z_T`; `"leading"` (diffusers' old default) never visits the noisiest timesteps with few steps.
# > The last step always goes to `alpha_bar = 1` (the paper's `alpha_0 = 1`).
#
# ## Inversion, guidance and the conventions the next chapters use
#
# Because DDIM with `eta = 0` is a deterministic map from noise to data, it can be run backwards:
# `DDIMSampler.invert` walks the sub-sequence upwards and finds the `x_T` that samples back to given
# data. It has to evaluate the model one step late (at the current, less noisy point), so the round
# trip is only exact as steps shrink:

# %%
x0_pts = data_points[:500]
for steps in (20, 100, T):
    inv_sampler = diffusion.DDIMSampler(rescaled, steps)
    x_T_inv = inv_sampler.invert(model, x0_pts)
    back = inv_sampler.sample(model, x_T_inv)
    print(f"{steps:3d} steps: x_T has std {x_T_inv.std().item():.2f}; data -> noise -> data error "
          f"{(back - x0_pts).norm(dim=1).mean().item():.4f} (mean distance)")

# %% [markdown]
# The samplers call every model as `model(x_t, t, y)`: `t` is a LongTensor `(B,)` of 0-based indices and
# `y` a LongTensor `(B,)` of labels (or `None`). **Classifier-free guidance** (used for AFHQ's classes in
# chapter 09) calls the model twice per step, once with the labels and once with a `null_label` the
# model learned as "no label", and extrapolates: `eps = eps_u + s (eps_c - eps_u)`, on every channel.
# `s = 1` is the plain conditional model, `s = 0` the unconditional one. The mixture's components are
# its labels and `null_label = K` means the whole mixture:

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
# Guidance above 1 pushes samples further towards what distinguishes the label from the unconditional
# model: compare the spread at guidance 3 with guidance 1 and with the cluster's own std. Stronger
# guidance trades variety for fidelity to the label.
#
# ## Exercises
#
# **Exercise 1.** Write `q_sample(x0, t, noise, alpha_bar)`: eq. 28 for a batch in which **every sample
# has its own timestep**. `t` is a LongTensor `(B,)` of 0-based indices, `alpha_bar` the `(T,)` table,
# `x0` and `noise` have any shape `(B, ...)`. (Look up, then reshape so that it broadcasts.)

# %%
def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(alpha_bar[t]) x0 + sqrt(1 - alpha_bar[t]) noise, one t per sample (eq. 28)."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise: write your code here, then run the check cell below.")


# %%
checks.check_q_sample(q_sample)

# %% [markdown]
# **Exercise 2.** Write one DDIM step, eq. 29: `ddim_step(x_t, eps, alpha_bar_t, alpha_bar_prev, eta,
# noise)`. The two `alpha_bar` arguments are tensors that broadcast against `x_t` (shape `(B, 1, ...)`),
# `noise` is the fresh `z`. You may use `diffusion.ddim_sigma` for `sigma` (or your own from exercise 3).

# %%
def ddim_step(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar_t: torch.Tensor, alpha_bar_prev: torch.Tensor,
              eta: float, noise: torch.Tensor) -> torch.Tensor:
    """x_prev = sqrt(a_prev) z0_hat + sqrt(1 - a_prev - sigma^2) eps + sigma noise (eq. 29)."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise: write your code here, then run the check cell below.")


# %%
checks.check_ddim_step(ddim_step)

# %% [markdown]
# **Exercise 3 (bonus).** Write `ddim_sigma(alpha_bar_t, alpha_bar_prev, eta)`, the noise scale of
# eq. 29: zero for `eta = 0`, DDPM's posterior standard deviation for `eta = 1`. The check also tests
# that at `eta = 1` between neighbouring timesteps it equals `sqrt(beta_t (1 - a_{t-1}) / (1 - a_t))`.

# %%
def ddim_sigma(alpha_bar_t: torch.Tensor, alpha_bar_prev: torch.Tensor, eta: float) -> torch.Tensor:
    """sigma = eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev)."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise: write your code here, then run the check cell below.")


# %%
checks.check_ddim_sigma(ddim_sigma)

# %% [markdown]
# ## Summary
#
# - The forward process (eq. 28) jumps to any noise level in one line; the package's `Diffusion` holds
#   the schedule (`betas`, `alpha_bar`, the paper's `alpha_t`) and does `q_sample` and the loss of eq. 27.
#   Timesteps are 0-based: the paper's `t` is index `t - 1`.
# - The linear schedule as printed leaves signal at `t = T` when `T = 500`; the course rescales it by
#   `1000 / T`. With a perfect model, the printed one draws the wrong proportions of faces.
# - DDIM (eq. 29) predicts the clean data, re-noises it to the previous timestep of a sub-sequence, and
#   adds `sigma` of fresh noise; `eta = 0` is a deterministic ODE solver, `eta = 1` with every step is DDPM.
# - With a perfect model, DDIM's error shrinks as steps grow and its time grows with them: Table 3's
#   trade-off. Table 3's 1000-step row is a different (`T = 1000`, pixel-space) model.
# - `fftd_course.diffusion` is checked against diffusers' schedulers in the tests, trajectory by
#   trajectory; chapters 08 and 09 train a real network with `Diffusion.loss` and sample it with
#   `DDIMSampler`.
