"""Unit tests for fftd_course.diffusion (eq. 26-29, Algorithm 3).

The samplers are checked against an independent oracle, the schedulers of Hugging Face ``diffusers``,
configured like ours: no clipping, the same timestep spacing, the last step to alpha_bar = 1
(``set_alpha_to_one=True``), ``steps_offset=0``. Where diffusers' float32 tables would hide a 1e-5
comparison (1 - a_t / a_prev cancels in float32), both sides run in float64 and diffusers is given the
alpha_bar table this file computes on its own, with numpy.
"""

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, DDPMScheduler
from torch import nn

from fftd_course import diffusion as D

T = 500


def numpy_alpha_bar(betas: np.ndarray) -> np.ndarray:
    return np.cumprod(1.0 - betas)


def printed_betas(T: int = T) -> np.ndarray:
    return np.linspace(1e-4, 0.02, T)


def toy_model(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """A nonlinear stand-in for a network whose output depends on x and strongly on t: a model
    called with the wrong timestep returns visibly different epsilon."""
    tt = t.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
    return torch.sin(x * (1.0 + tt / 50.0) + tt / 7.0) + 0.1 * x


def oracle(cls, spacing: str, betas: np.ndarray, **config):
    sched = cls(num_train_timesteps=len(betas), trained_betas=betas, clip_sample=False, timestep_spacing=spacing,
                steps_offset=0, **config)
    sched.alphas_cumprod = torch.from_numpy(numpy_alpha_bar(betas))  # float64: see the module docstring
    return sched


# ---- schedules ---------------------------------------------------------------------------------------------

def test_linear_schedule_is_exactly_as_printed():
    betas = D.beta_schedule("linear", 500)
    assert betas.dtype == torch.float64 and betas.shape == (500,)
    assert betas[0].item() == pytest.approx(1e-4, rel=1e-12) and betas[-1].item() == pytest.approx(0.02, rel=1e-12)
    np.testing.assert_allclose(betas.numpy(), printed_betas(500), rtol=1e-12)


@pytest.mark.parametrize("T_", [50, 500, 1000, 4000])
def test_rescaled_linear_schedule_scales_both_ends_by_1000_over_T(T_):
    np.testing.assert_allclose(D.beta_schedule("linear_rescaled", T_).numpy(), printed_betas(T_) * 1000 / T_, rtol=1e-12)


def test_at_T_1000_the_rescaled_schedule_is_ddpms():
    torch.testing.assert_close(D.beta_schedule("linear_rescaled", 1000), D.beta_schedule("linear", 1000))


def test_printed_schedule_leaves_signal_at_T_500_and_rescaled_does_not():
    # Independent product with the standard library.
    ab_printed = math.prod(1 - (1e-4 + (0.02 - 1e-4) * i / 499) for i in range(500))
    ab_rescaled = math.prod(1 - 2 * (1e-4 + (0.02 - 1e-4) * i / 499) for i in range(500))
    assert D.Diffusion(D.beta_schedule("linear", 500)).alpha_bar[-1].item() == pytest.approx(ab_printed, rel=1e-9)
    assert D.Diffusion().alpha_bar[-1].item() == pytest.approx(ab_rescaled, rel=1e-9)
    assert 5e-3 < ab_printed < 8e-3  # sqrt: 8% of the signal amplitude is still there
    assert ab_rescaled < 1e-4


@pytest.mark.parametrize("kind, diffusers_kind", [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
@pytest.mark.parametrize("T_", [100, 500, 1000])
def test_schedules_match_diffusers(kind, diffusers_kind, T_):
    sched = DDPMScheduler(num_train_timesteps=T_, beta_start=1e-4, beta_end=0.02, beta_schedule=diffusers_kind)
    ours = D.Diffusion(D.beta_schedule(kind, T_))
    # diffusers keeps float32 tables: compare at float32 precision.
    torch.testing.assert_close(ours.betas.float(), sched.betas, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours.alpha_bar.float(), sched.alphas_cumprod, rtol=1e-4, atol=1e-7)


def test_cosine_schedule_is_capped_and_ends_near_zero():
    betas = D.beta_schedule("cosine", 500)
    assert betas.max() <= 0.999 and betas.min() > 0
    assert D.Diffusion(betas).alpha_bar[-1] < 1e-6


@pytest.mark.parametrize("kind, T_, match", [("quadratic", 500, "unknown beta schedule"), ("linear", 0, "positive"),
                                             ("linear_rescaled", 20, "T > 20"), ("cosine", 2.5, "positive")])
def test_bad_schedules_raise(kind, T_, match):
    with pytest.raises(ValueError, match=match):
        D.beta_schedule(kind, T_)


def test_diffusion_defaults_and_alpha_bar():
    d = D.Diffusion()
    assert d.T == 500
    torch.testing.assert_close(d.betas, D.beta_schedule("linear_rescaled", 500))
    np.testing.assert_allclose(d.alpha_bar.numpy(), numpy_alpha_bar(d.betas.numpy()), rtol=1e-12)
    assert bool((d.alpha_bar[1:] < d.alpha_bar[:-1]).all())
    torch.testing.assert_close(d.snr, d.alpha_bar / (1 - d.alpha_bar))
    assert "T=500" in repr(d)


@pytest.mark.parametrize("betas", [torch.tensor([0.1, 1.0]), torch.tensor([0.0, 0.1]), torch.ones(2, 2) * 0.1,
                                   torch.tensor([])])
def test_diffusion_rejects_bad_betas(betas):
    with pytest.raises(ValueError, match="beta"):
        D.Diffusion(betas)


# ---- forward process and loss ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(5, 4, 4, 4), (3, 2), (2, 3, 8, 8), (4,)])
def test_q_sample_matches_eq_28_per_sample(shape):
    d = D.Diffusion()
    x0, noise = torch.randn(shape), torch.randn(shape)
    t = torch.tensor([0, T - 1, 17, 250, 3][: shape[0]])
    out = d.q_sample(x0, t, noise)
    assert out.shape == shape and out.dtype == torch.float32
    ab = numpy_alpha_bar(np.linspace(2e-4, 0.04, T))
    for i, ti in enumerate(t.tolist()):
        want = math.sqrt(ab[ti]) * x0[i].double() + math.sqrt(1 - ab[ti]) * noise[i].double()
        torch.testing.assert_close(out[i].double(), want, rtol=1e-5, atol=1e-5)  # float32 rounding


def test_q_sample_has_the_marginal_of_eq_28():
    d = D.Diffusion()
    x0 = torch.tensor([1.5, -0.5]).expand(200_000, 2)
    t = torch.full((200_000,), 100)
    xt = d.q_sample(x0, t, torch.randn(200_000, 2))
    ab = d.alpha_bar[100].item()
    torch.testing.assert_close(xt.mean(0), math.sqrt(ab) * x0[0], atol=0.01, rtol=0)
    torch.testing.assert_close(xt.var(0), torch.full((2,), 1 - ab), atol=0.01, rtol=0)


def test_q_sample_keeps_float64_and_lifts_bf16_to_float32():
    d = D.Diffusion()
    t = torch.tensor([3, 9])
    assert d.q_sample(torch.randn(2, 3, dtype=torch.float64), t, torch.randn(2, 3, dtype=torch.float64)).dtype == torch.float64
    assert d.q_sample(torch.randn(2, 3).bfloat16(), t, torch.randn(2, 3)).dtype == torch.float32


@pytest.mark.parametrize("t, match", [(torch.tensor([0, 500]), "0-based"), (torch.tensor([-1, 2]), "0-based"),
                                      (torch.tensor([1.0, 2.0]), "integer"), (torch.tensor([1, 2, 3]), "shape"),
                                      ([1, 2], "integer")])
def test_q_sample_rejects_bad_timesteps(t, match):
    with pytest.raises(ValueError, match=match):
        D.Diffusion().q_sample(torch.randn(2, 3), t, torch.randn(2, 3))


def test_q_sample_rejects_mismatched_noise():
    with pytest.raises(ValueError, match="noise"):
        D.Diffusion().q_sample(torch.randn(2, 3), torch.tensor([1, 2]), torch.randn(2, 4))


def test_loss_is_the_mse_of_eq_27():
    d = D.Diffusion()
    x0, noise, t = torch.randn(6, 4, 4, 4), torch.randn(6, 4, 4, 4), torch.randint(0, T, (6,))
    loss = d.loss(toy_model, x0, t=t, noise=noise)
    x_t = math_q_sample(x0, t, noise)
    torch.testing.assert_close(loss, ((toy_model(x_t, t) - noise) ** 2).mean(), rtol=1e-5, atol=1e-6)


def math_q_sample(x0, t, noise):
    ab = torch.from_numpy(numpy_alpha_bar(np.linspace(2e-4, 0.04, T)))[t].float().view(-1, *([1] * (x0.ndim - 1)))
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def test_loss_of_the_true_noise_is_zero_and_gradients_flow():
    d = D.Diffusion()
    x0 = torch.randn(8, 2)

    def oracle_model(x_t, t, y=None):  # knows x0: recovers the exact noise from eq. 28
        ab = d.alpha_bar[t].float().view(-1, 1)
        return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()

    assert d.loss(oracle_model, x0).item() < 1e-10
    net = nn.Linear(2, 2)
    loss = d.loss(lambda x, t, y: net(x), x0)
    loss.backward()
    assert loss.item() > 0 and net.weight.grad is not None and net.weight.grad.abs().sum() > 0


def test_loss_draws_t_uniformly_over_all_indices_and_passes_labels():
    d = D.Diffusion(D.beta_schedule("linear", 10))
    seen, labels = [], []

    def recorder(x_t, t, y):
        seen.append(t.clone()), labels.append(y)
        return torch.zeros_like(x_t)

    y = torch.arange(40_000) % 3
    d.loss(recorder, torch.zeros(40_000, 1), y, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(seen[0], minlength=10)
    assert seen[0].min() == 0 and seen[0].max() == 9 and len(counts) == 10
    assert (counts - 4000).abs().max() < 5 * math.sqrt(4000 * 0.9)  # 5 sigma of a binomial count
    assert labels[0] is y


def test_loss_rejects_a_model_of_the_wrong_shape():
    with pytest.raises(ValueError, match="shape"):
        D.Diffusion().loss(lambda x, t, y: x[:, :1], torch.randn(4, 3))


# ---- the DDIM step -----------------------------------------------------------------------------------------

def test_predict_x0_and_ddim_step_are_exact_with_the_true_noise():
    d = D.Diffusion()
    x0, eps = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randn(4, 3, 8, 8, dtype=torch.float64)
    t, t_prev = torch.full((4,), 400), torch.full((4,), 123)
    x_t = d.q_sample(x0, t, eps)
    ab_t, ab_prev = d.alpha_bar[400].item(), d.alpha_bar[123].item()
    torch.testing.assert_close(D.predict_x0(x_t, eps, ab_t), x0)
    # eta = 0 with the exact noise lands exactly where eq. 28 puts x at the earlier timestep.
    torch.testing.assert_close(D.ddim_step(x_t, eps, ab_t, ab_prev), d.q_sample(x0, t_prev, eps))
    torch.testing.assert_close(D.ddim_step(x_t, eps, ab_t, 1.0), x0)


def test_ddim_step_keeps_the_marginal_of_eq_28_for_any_eta():
    d = D.Diffusion()
    n = 400_000
    x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
    eps, z = torch.randn(n, 1, dtype=torch.float64), torch.randn(n, 1, dtype=torch.float64)
    ab_t, ab_prev = d.alpha_bar[300].item(), d.alpha_bar[200].item()
    x_t = math.sqrt(ab_t) * x0 + math.sqrt(1 - ab_t) * eps
    for eta in (0.0, 0.5, 1.0):
        x_prev = D.ddim_step(x_t, eps, ab_t, ab_prev, eta, z)
        assert x_prev.mean().item() == pytest.approx(math.sqrt(ab_prev) * 0.7, abs=0.005)
        assert x_prev.var().item() == pytest.approx(1 - ab_prev, abs=0.005)


def test_ddim_sigma_at_eta_1_is_the_ddpm_posterior_std():
    d = D.Diffusion(D.beta_schedule("linear", 100))
    betas, ab = d.betas.numpy(), numpy_alpha_bar(d.betas.numpy())
    for t in (1, 10, 99):
        beta_tilde = betas[t] * (1 - ab[t - 1]) / (1 - ab[t])  # DDPM eq. 7
        assert D.ddim_sigma(ab[t], ab[t - 1], 1.0).item() == pytest.approx(math.sqrt(beta_tilde), rel=1e-10)
        assert D.ddim_sigma(ab[t], ab[t - 1], 0.3).item() == pytest.approx(0.3 * math.sqrt(beta_tilde), rel=1e-10)
    assert D.ddim_sigma(ab[5], 1.0, 1.0).item() == 0.0  # the step to clean data adds no noise


def test_ddim_step_with_eta_needs_noise():
    with pytest.raises(ValueError, match="noise"):
        D.ddim_step(torch.randn(2, 2), torch.randn(2, 2), 0.5, 0.6, eta=0.5)


# ---- timestep sub-sequences --------------------------------------------------------------------------------

@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("T_, steps", [(500, 50), (500, 500), (500, 7), (500, 3), (1000, 50), (100, 33), (10, 10),
                                       (500, 2), (1000, 1)])
def test_timesteps_match_diffusers(spacing, T_, steps):
    if spacing == "linspace" and steps == 1:
        pytest.skip("one linspace step: we start at T - 1, diffusers at 0 (see ddim_timesteps)")
    sched = DDIMScheduler(num_train_timesteps=T_, timestep_spacing=spacing, steps_offset=0)
    sched.set_timesteps(steps)
    ours = D.ddim_timesteps(T_, steps, spacing)
    assert ours.dtype == torch.int64
    assert torch.equal(ours, sched.timesteps)


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("T_, steps", [(500, 1), (500, 37), (500, 499), (7, 3), (1000, 999)])
def test_timesteps_descend_without_repeats_inside_the_range(spacing, T_, steps):
    ts = D.ddim_timesteps(T_, steps, spacing)
    assert len(ts) == steps and bool((ts[1:] < ts[:-1]).all())
    assert 0 <= ts.min() and ts.max() <= T_ - 1
    if spacing != "leading":
        assert ts[0] == T_ - 1  # the first step sees x_T: the paper's z_T ~ N(0, I)


def test_all_steps_visit_every_timestep_for_every_spacing():
    for spacing in D.SPACINGS:
        assert torch.equal(D.ddim_timesteps(T, T, spacing), torch.arange(T - 1, -1, -1))


@pytest.mark.parametrize("steps, spacing, match", [(0, "trailing", "from 1 to T"), (1000, "trailing", "E10"),
                                                   (50, "uniform", "spacing"), (2.0, "trailing", "integer")])
def test_bad_sub_sequences_raise(steps, spacing, match):
    with pytest.raises(ValueError, match=match):
        D.ddim_timesteps(T, steps, spacing)


def test_ddim_sampler_refuses_more_steps_than_T():
    with pytest.raises(ValueError, match="1000-step"):
        D.DDIMSampler(D.Diffusion(), num_steps=1000)


@pytest.mark.parametrize("eta", [-0.1, 1.5])
def test_ddim_sampler_rejects_eta_outside_0_1(eta):
    with pytest.raises(ValueError, match="eta"):
        D.DDIMSampler(D.Diffusion(), 10, eta=eta)


# ---- DDIM against diffusers' DDIMScheduler -----------------------------------------------------------------

def capture(sampler, model, x, **kwargs):
    steps = []
    out = sampler.sample(model, x, callback=steps.append, **kwargs)
    return out, steps


# diffusers steps to t - T // num_steps, which is the previous element of the sub-sequence only in these cases.
ORACLE_CASES = [("leading", 500, 50), ("leading", 500, 7), ("leading", 500, 3), ("trailing", 500, 50),
                ("trailing", 100, 20), ("trailing", 500, 500), ("linspace", 500, 500), ("linspace", 10, 10)]


@pytest.mark.parametrize("spacing, T_, steps", ORACLE_CASES)
@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("shape", [(3, 4, 4, 4), (5, 2)])
def test_ddim_trajectory_matches_diffusers(spacing, T_, steps, eta, shape):
    betas = printed_betas(T_)
    ours = D.DDIMSampler(D.Diffusion(torch.from_numpy(betas)), steps, spacing, eta)
    sched = oracle(DDIMScheduler, spacing, betas, set_alpha_to_one=True)
    sched.set_timesteps(steps)
    assert torch.equal(ours.timesteps, sched.timesteps)

    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out, steps_seen = capture(ours, toy_model, x_T, generator=torch.Generator().manual_seed(1))

    noise = torch.Generator().manual_seed(1)  # we draw one noise per step with sigma > 0, in step order
    x = x_T
    for i, t in enumerate(sched.timesteps):
        eps = toy_model(x, t.repeat(shape[0]))
        last = i == len(sched.timesteps) - 1  # the step to alpha_bar = 1 has sigma = 0: we draw nothing there
        variance_noise = torch.zeros(shape, dtype=torch.float64) if last or eta == 0 else \
            torch.randn(shape, generator=noise, dtype=torch.float64)
        x = sched.step(eps, t, x, eta=eta, variance_noise=variance_noise).prev_sample
        torch.testing.assert_close(steps_seen[i].x, x, atol=1e-5, rtol=0)
        assert steps_seen[i].t_from == int(t)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("spacing, steps", [("leading", 50), ("trailing", 25)])
def test_ddim_float32_matches_diffusers_in_its_own_float32_configuration(spacing, steps):
    ours = D.DDIMSampler(D.Diffusion(D.beta_schedule("linear", T)), steps, spacing)
    sched = DDIMScheduler(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                          clip_sample=False, set_alpha_to_one=True, timestep_spacing=spacing, steps_offset=0)
    sched.set_timesteps(steps)
    x_T = torch.randn(4, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    x = x_T
    for t in sched.timesteps:
        x = sched.step(toy_model(x, t.repeat(4)), t, x).prev_sample
    # float32 on both sides, so compare relative to the size of the values (the toy model's x0 is not small)
    torch.testing.assert_close(ours.sample(toy_model, x_T), x, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("spacing, steps", [("linspace", 37), ("trailing", 30), ("linspace", 50), ("leading", 33)])
def test_ddim_eta_1_on_any_sub_sequence_is_the_ddpm_posterior(spacing, steps):
    """diffusers' DDPMScheduler with custom timesteps steps to the true previous element of any sub-sequence."""
    betas = printed_betas()
    ours = D.DDIMSampler(D.Diffusion(torch.from_numpy(betas)), steps, spacing, eta=1.0)
    sched = oracle(DDPMScheduler, "leading", betas, variance_type="fixed_small")
    sched.set_timesteps(timesteps=ours.timesteps.tolist())
    x_T = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out, seen = capture(ours, toy_model, x_T, generator=torch.Generator().manual_seed(5))
    g, x = torch.Generator().manual_seed(5), x_T
    for i, t in enumerate(sched.timesteps):
        x = sched.step(toy_model(x, t.repeat(6)), t, x, generator=g).prev_sample
        torch.testing.assert_close(seen[i].x, x, atol=1e-5, rtol=0)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-5), (torch.float32, 1e-4)])
def test_ddim_eta_1_with_all_steps_is_ddpm_ancestral_sampling(dtype, tol):
    d = D.Diffusion()
    x_T = torch.randn(8, 4, 4, 4, generator=torch.Generator().manual_seed(0), dtype=dtype)
    ddim = D.DDIMSampler(d, T, eta=1.0).sample(toy_model, x_T, generator=torch.Generator().manual_seed(9))
    ddpm = D.DDPMSampler(d).sample(toy_model, x_T, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(ddim, ddpm, atol=tol, rtol=tol)


def test_ddpm_matches_diffusers_ddpm_scheduler():
    betas = printed_betas(100)
    sched = oracle(DDPMScheduler, "leading", betas, variance_type="fixed_small")
    sched.set_timesteps(100)
    x_T = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out, seen = capture(D.DDPMSampler(D.Diffusion(torch.from_numpy(betas))), toy_model, x_T,
                        generator=torch.Generator().manual_seed(2))
    g, x = torch.Generator().manual_seed(2), x_T
    for i, t in enumerate(sched.timesteps):
        x = sched.step(toy_model(x, t.repeat(4)), t, x, generator=g).prev_sample
        torch.testing.assert_close(seen[i].x, x, atol=1e-5, rtol=0)
    assert [s.t_from for s in seen] == list(range(99, -1, -1)) and seen[-1].t_to == -1


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_clip_x0_matches_diffusers_clip_sample(kind):
    """clip_x0 (the pixel baseline's sampling) is DDPM's clip_denoised: diffusers' clip_sample, with epsilon re-derived
    from the clamped x0 (DDIM: use_clipped_model_output=True)."""
    betas = printed_betas(100)
    d = D.Diffusion(torch.from_numpy(betas))
    if kind == "ddpm":
        ours = D.DDPMSampler(d)
        sched = DDPMScheduler(num_train_timesteps=100, trained_betas=betas, clip_sample=True, variance_type="fixed_small")
        sched.set_timesteps(100)
    else:
        ours = D.DDIMSampler(d, 20, "leading", eta=0.5)
        sched = DDIMScheduler(num_train_timesteps=100, trained_betas=betas, clip_sample=True, set_alpha_to_one=True,
                              timestep_spacing="leading", steps_offset=0)
        sched.set_timesteps(20)
    sched.alphas_cumprod = torch.from_numpy(numpy_alpha_bar(betas))
    x_T = 2.0 * torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out, seen = capture(ours, toy_model, x_T, generator=torch.Generator().manual_seed(2), clip_x0=True)
    g, x = torch.Generator().manual_seed(2), x_T
    for i, t in enumerate(sched.timesteps):
        kw = {} if kind == "ddpm" else {"eta": 0.5, "use_clipped_model_output": True}
        if kind == "ddim" and i < len(sched.timesteps) - 1:
            kw["variance_noise"] = torch.randn(x.shape, generator=g, dtype=torch.float64)
        step = sched.step(toy_model(x, t.repeat(4)), t, x, generator=g if kind == "ddpm" else None, **kw)
        x = step.prev_sample
        torch.testing.assert_close(seen[i].x, x, atol=1e-5, rtol=0)
        torch.testing.assert_close(seen[i].x0_hat, step.pred_original_sample, atol=1e-6, rtol=0)
        assert seen[i].x0_hat.abs().max() <= 1.0
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)
    assert not torch.allclose(ours.sample(toy_model, x_T, generator=torch.Generator().manual_seed(2)), out)


# ---- inversion ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [10, 50])
def test_inversion_matches_diffusers_ddim_inverse_scheduler(steps):
    betas = printed_betas()
    ours = D.DDIMSampler(D.Diffusion(torch.from_numpy(betas)), steps, "leading")
    sched = oracle(DDIMInverseScheduler, "leading", betas, set_alpha_to_one=True)
    sched.set_timesteps(steps)
    x0 = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    seen = []
    out = ours.invert(toy_model, x0, callback=seen.append)
    x = x0
    for i, t in enumerate(sched.timesteps):
        x = sched.step(toy_model(x, t.repeat(3)), t, x).prev_sample
        torch.testing.assert_close(seen[i].x, x, atol=1e-5, rtol=0)
        assert seen[i].t_to == int(t)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)
    assert seen[0].t_from == -1 and seen[-1].t_to == int(ours.timesteps[0])


def smooth_model(x, t, y=None):
    """Epsilon of Gaussian data N(0.5, 0.3^2): a smooth, exactly invertible flow."""
    ab = D.Diffusion().alpha_bar[t].to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
    return (1 - ab).sqrt() * (x - ab.sqrt() * 0.5) / (ab * 0.09 + 1 - ab)


@pytest.mark.parametrize("shape", [(16, 4, 4, 4), (64, 2)])
def test_inversion_then_sampling_returns_the_input(shape):
    sampler = D.DDIMSampler(D.Diffusion(), T)
    x0 = 0.5 + 0.3 * torch.randn(shape, generator=torch.Generator().manual_seed(0))
    x_T = sampler.invert(smooth_model, x0)
    assert x_T.shape == shape
    assert abs(x_T.std().item() - 1.0) < 0.15  # inversion lands on something like N(0, I)
    back = sampler.sample(smooth_model, x_T)
    # Inversion evaluates epsilon one step late, so the round trip is only first-order accurate.
    torch.testing.assert_close(back, x0, atol=0.03, rtol=0)


def test_inversion_error_shrinks_with_more_steps():
    x0 = 0.5 + 0.3 * torch.randn(256, 2, generator=torch.Generator().manual_seed(1))
    errors = []
    for steps in (5, 20, 100):
        s = D.DDIMSampler(D.Diffusion(), steps)
        errors.append((s.sample(smooth_model, s.invert(smooth_model, x0)) - x0).abs().max().item())
    assert errors[0] > 2 * errors[1] > 4 * errors[2]  # about first order: error ~ 1 / steps


# ---- sampler behaviour -------------------------------------------------------------------------------------

def test_eta_0_is_deterministic_and_eta_above_0_follows_the_generator():
    d, x_T = D.Diffusion(), torch.randn(4, 3, 8, 8)
    det = D.DDIMSampler(d, 20)
    torch.testing.assert_close(det.sample(toy_model, x_T, generator=torch.Generator().manual_seed(1)),
                               det.sample(toy_model, x_T, generator=torch.Generator().manual_seed(2)), rtol=0, atol=0)
    sto = D.DDIMSampler(d, 20, eta=0.5)
    a = sto.sample(toy_model, x_T, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, sto.sample(toy_model, x_T, generator=torch.Generator().manual_seed(1)), rtol=0, atol=0)
    assert (a - sto.sample(toy_model, x_T, generator=torch.Generator().manual_seed(2))).abs().max() > 1e-3


@pytest.mark.parametrize("shape", [(3,), (2, 5), (2, 4, 4, 4), (1, 3, 8, 8), (2, 1, 2, 3, 4)])
@pytest.mark.parametrize("sampler_cls", ["ddim", "ddpm"])
def test_samplers_work_on_any_shape(shape, sampler_cls):
    d = D.Diffusion(D.beta_schedule("cosine", 50))
    sampler = D.DDIMSampler(d, 10, eta=0.3) if sampler_cls == "ddim" else D.DDPMSampler(d)
    out = sampler.sample(toy_model, torch.randn(shape))
    assert out.shape == shape and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_callback_sees_every_step_in_order():
    sampler = D.DDIMSampler(D.Diffusion(), 12, "linspace")
    out, steps = capture(sampler, toy_model, torch.randn(2, 3), progress=True)
    ts = sampler.timesteps.tolist()
    assert [s.step for s in steps] == list(range(12)) and all(s.num_steps == 12 for s in steps)
    assert [s.t_from for s in steps] == ts and [s.t_to for s in steps] == ts[1:] + [-1]
    assert torch.equal(steps[-1].x, out)
    assert all(s.x.shape == s.x0_hat.shape == s.eps.shape == (2, 3) for s in steps)
    # the last step goes to alpha_bar = 1: its result is the clean estimate
    torch.testing.assert_close(steps[-1].x0_hat, out)


def test_dtypes_float64_stays_bf16_input_becomes_float32():
    sampler = D.DDIMSampler(D.Diffusion(), 5)
    assert sampler.sample(toy_model, torch.randn(2, 3, dtype=torch.float64)).dtype == torch.float64
    _, steps = capture(sampler, toy_model, torch.randn(2, 3).bfloat16())
    assert all(s.x.dtype == torch.float32 for s in steps)


class FlatLinear(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.lin = nn.Linear(dim, dim)
        self.out_dtypes = []

    def forward(self, x, t, y=None):
        h = self.lin(x.flatten(1))
        self.out_dtypes.append(h.dtype)
        return (0.1 * h).view_as(x)


def test_bf16_autocast_runs_only_the_model_in_bf16():
    torch.manual_seed(0)
    model = FlatLinear(2 * 4 * 4)
    x_T = torch.randn(4, 2, 4, 4)
    sampler = D.DDIMSampler(D.Diffusion(), 20)
    ref = sampler.sample(model, x_T)
    assert set(model.out_dtypes) == {torch.float32}
    model.out_dtypes.clear()
    out, steps = capture(sampler, model, x_T, autocast_dtype=torch.bfloat16)
    assert set(model.out_dtypes) == {torch.bfloat16}
    assert all(s.x.dtype == s.eps.dtype == torch.float32 for s in steps) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=0.05, rtol=0.05)
    assert not torch.is_autocast_enabled("cpu")


def test_model_of_the_wrong_shape_and_bad_labels_raise_clear_errors():
    sampler = D.DDIMSampler(D.Diffusion(), 5)
    with pytest.raises(ValueError, match="shape"):
        sampler.sample(lambda x, t, y: x.sum(1), torch.randn(2, 3))
    with pytest.raises(ValueError, match="y must be"):
        sampler.sample(toy_model, torch.randn(2, 3), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="floating-point"):
        sampler.sample(toy_model, torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="Diffusion"):
        D.DDIMSampler(D.beta_schedule(), 5)


# ---- classifier-free guidance ------------------------------------------------------------------------------

class LabelModel:
    """eps = 0.1 x + c[y] with a different vector for every label and channel; records its calls."""

    def __init__(self, num_labels: int, event=(3, 2, 2)):
        self.c = torch.randn(num_labels + 1, *event, generator=torch.Generator().manual_seed(0))
        self.calls = []

    def __call__(self, x, t, y):
        self.calls.append(y.clone())
        return 0.1 * x + self.c[y]


@pytest.mark.parametrize("scale", [0.0, 1.0, 2.5, 4.0])
def test_guidance_combines_conditional_and_null_label_outputs_on_all_channels(scale):
    model, null = LabelModel(3), 3
    y, x_T = torch.tensor([0, 2, 1, 2]), torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    sampler = D.DDIMSampler(D.Diffusion(), 10)
    out = sampler.sample(model, x_T, y, guidance_scale=scale, null_label=null)
    guided_c = model.c[null] + scale * (model.c[y] - model.c[null])  # eps_u + s (eps_c - eps_u), per channel

    def combined(x, t, y_):  # what the guided model should be, computed by hand
        return 0.1 * x + guided_c

    torch.testing.assert_close(out, sampler.sample(combined, x_T), atol=1e-5, rtol=1e-5)
    calls = model.calls
    if scale == 1.0:  # no guidance: one conditional call per step, no null labels
        assert all(torch.equal(c, y) for c in calls)
    else:
        assert all(torch.equal(c, torch.cat([y, torch.full_like(y, null)])) for c in calls)
    assert len(calls) == 10


def test_guidance_needs_labels_and_a_null_label():
    sampler = D.DDIMSampler(D.Diffusion(), 5)
    with pytest.raises(ValueError, match="null_label"):
        sampler.sample(LabelModel(3), torch.randn(2, 3, 2, 2), torch.tensor([0, 1]), guidance_scale=2.0)
    with pytest.raises(ValueError, match="null_label"):
        sampler.sample(LabelModel(3), torch.randn(2, 3, 2, 2), None, guidance_scale=2.0, null_label=3)


# ---- CUDA --------------------------------------------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_sampling_matches_cpu_and_runs_bf16_autocast():
    d, x_T = D.Diffusion(), torch.randn(8, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    sampler = D.DDIMSampler(d, 25, eta=0.5)
    cpu = sampler.sample(toy_model, x_T, generator=torch.Generator().manual_seed(1))
    gpu = sampler.sample(toy_model, x_T.cuda(), generator=torch.Generator().manual_seed(1))  # CPU generator, CUDA x
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)
    model = FlatLinear(64).cuda()
    out, steps = capture(sampler, model, x_T.cuda(), autocast_dtype=torch.bfloat16,
                         generator=torch.Generator("cuda").manual_seed(1))
    assert set(model.out_dtypes) == {torch.bfloat16} and out.dtype == torch.float32 and torch.isfinite(out).all()
    t = torch.randint(0, d.T, (8,), device="cuda")
    assert d.q_sample(x_T.cuda(), t, torch.randn_like(x_T).cuda()).device.type == "cuda"
    assert d.loss(toy_model, x_T.cuda()).device.type == "cuda"
    ddpm = D.DDPMSampler(D.Diffusion(D.beta_schedule("linear", 50))).sample(toy_model, x_T.cuda())
    assert ddpm.device.type == "cuda" and torch.isfinite(ddpm).all()
