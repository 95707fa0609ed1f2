"""The analytic Gaussian-mixture test bed: its optimal epsilon is right, and with it DDIM reproduces the data.

With the exact epsilon-predictor no training is needed, so what these tests measure is the sampler
itself: enough DDIM steps give the data distribution (moments and mixture weights), fewer steps give
a larger error, and classifier-free guidance picks the labelled component.
"""

import math

import pytest
import torch
from torch import distributions as dist

from fftd_course import diffusion as D
from fftd_course.mixture import GaussianMixture, toy_mixture_2d


def torch_noisy_mixture(gm: GaussianMixture, alpha_bar: float) -> dist.Distribution:
    """The noisy marginal of eq. 28 built with torch.distributions: an independent density."""
    a = alpha_bar
    comp = dist.Independent(dist.Normal(math.sqrt(a) * gm.means, (a * gm.stds**2 + 1 - a).sqrt()), 1)
    return dist.MixtureSameFamily(dist.Categorical(probs=gm.weights), comp)


def random_mixture(event=(2,), k=3, seed=0) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    return GaussianMixture(torch.randn(k, *event, generator=g) * 1.5, 0.2 + torch.rand(k, *event, generator=g) * 0.5,
                           0.5 + torch.rand(k, generator=g))


@pytest.mark.parametrize("event", [(2,), (3, 2, 2)])
@pytest.mark.parametrize("alpha_bar", [0.999, 0.6, 0.05, 1e-4])
def test_optimal_eps_is_tweedie_of_the_independent_density(event, alpha_bar):
    gm = random_mixture(event)
    x = torch.randn(64, *event, dtype=torch.float64) * 1.5
    xf = x.reshape(64, -1).clone().requires_grad_(True)
    density = torch_noisy_mixture(gm, alpha_bar)
    (score,) = torch.autograd.grad(density.log_prob(xf).sum(), xf)
    want = -math.sqrt(1 - alpha_bar) * score  # Tweedie: E[eps | x_t] = -sqrt(1 - a) grad log p_t
    got = gm.optimal_eps(x, alpha_bar)
    assert got.shape == x.shape and got.dtype == torch.float64
    torch.testing.assert_close(got.reshape(64, -1), want, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(gm.log_prob(x, alpha_bar), density.log_prob(xf.detach()), rtol=1e-9, atol=1e-9)


def test_optimal_eps_minimises_the_loss_of_eq_27():
    gm, d = toy_mixture_2d(), D.Diffusion(D.beta_schedule("cosine", 50))  # few distinct t: fast
    x0, _ = gm.sample(50_000, torch.Generator().manual_seed(0))
    t = torch.randint(0, d.T, (50_000,), generator=torch.Generator().manual_seed(1))
    model = gm.eps_model(d)
    loss = d.loss(model, x0, t=t, noise=torch.randn(50_000, 2, generator=torch.Generator().manual_seed(2)))
    for wrong in (lambda x, t, y: 0.9 * model(x, t, y), lambda x, t, y: model(x, t, y) + 0.05,
                  lambda x, t, y: gm.optimal_eps(x, d.alpha_bar[(t + 3).clamp(max=d.T - 1)])):
        worse = d.loss(wrong, x0, t=t, noise=torch.randn(50_000, 2, generator=torch.Generator().manual_seed(2)))
        assert worse > loss


def test_per_sample_noise_levels_and_labels():
    gm, d = random_mixture((2, 3)), D.Diffusion()
    x, t = torch.randn(6, 2, 3), torch.tensor([0, 499, 250, 250, 7, 499])
    batch = gm.eps_model(d)(x, t)
    for i in range(6):  # the grouped batch equals one call per sample
        torch.testing.assert_close(batch[i : i + 1], gm.optimal_eps(x[i : i + 1], d.alpha_bar[t[i]].item()))
    y = torch.tensor([0, 1, 2, 3, 3, 1])  # 3 = null label: the whole mixture
    cond = gm.optimal_eps(x.double(), 0.3, y)
    a, means, stds = 0.3, gm.means.view(3, 2, 3), gm.stds.view(3, 2, 3)
    for i, k in enumerate(y.tolist()):
        if k < 3:  # one Gaussian: eps = sqrt(1 - a) (x - sqrt(a) mu) / (a s^2 + 1 - a)
            want = math.sqrt(1 - a) * (x[i].double() - math.sqrt(a) * means[k]) / (a * stds[k] ** 2 + 1 - a)
        else:
            want = gm.optimal_eps(x[i : i + 1].double(), a)[0]
        torch.testing.assert_close(cond[i], want)


def test_sample_and_moments():
    gm = toy_mixture_2d()
    x, labels = gm.sample(200_000, torch.Generator().manual_seed(0))
    assert x.shape == (200_000, 2) and x.dtype == torch.float32
    torch.testing.assert_close(torch.bincount(labels).double() / 200_000, gm.weights, atol=0.005, rtol=0)
    torch.testing.assert_close(x.double().mean(0), gm.mean(), atol=0.01, rtol=0)
    torch.testing.assert_close(torch.cov(x.double().T), gm.covariance(), atol=0.01, rtol=0)
    r = gm.responsibilities(x[:1000])
    assert r.shape == (1000, 3) and (r.argmax(1) == labels[:1000]).float().mean() > 0.95


@pytest.mark.parametrize("kwargs, match", [(dict(means=torch.zeros(2, 3), stds=torch.ones(3)), "stds"),
                                           (dict(means=torch.zeros(2, 3), stds=-torch.ones(2)), "stds"),
                                           (dict(means=torch.zeros(2, 3), stds=torch.ones(2), weights=torch.ones(3)), "weights"),
                                           (dict(means=torch.zeros(0, 3), stds=torch.ones(0)), "K >= 1")])
def test_bad_mixtures_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**kwargs)


def test_wrong_event_shape_and_labels_raise():
    gm = toy_mixture_2d()
    with pytest.raises(ValueError, match="shape"):
        gm.optimal_eps(torch.randn(4, 3), 0.5)
    with pytest.raises(ValueError, match="labels"):
        gm.optimal_eps(torch.randn(4, 2), 0.5, torch.tensor([0, 1, 2, 4]))


# ---- DDIM on the analytic model ----------------------------------------------------------------------------

N = 4000


def sample_stats(gm: GaussianMixture, x: torch.Tensor) -> dict[str, float]:
    labels = gm.responsibilities(x).argmax(1)
    weights = torch.bincount(labels, minlength=gm.K).double() / len(x)
    spread = torch.stack([(x[labels == k].double().std(0) / gm.stds[k]).mean() for k in range(gm.K)])
    return dict(weights_tv=0.5 * (weights - gm.weights).abs().sum().item(),
                mean_err=(x.double().mean(0) - gm.mean()).norm().item(),
                cov_err=(torch.cov(x.double().T) - gm.covariance()).norm().item(),
                worst_spread=(spread - 1).abs().max().item())


@pytest.fixture(scope="module")
def runs():
    """DDIM samples of the 2-D mixture from one x_T batch at several step counts (eta = 0)."""
    gm, d = toy_mixture_2d(), D.Diffusion()
    model = gm.eps_model(d)
    x_T = torch.randn(N, 2, generator=torch.Generator().manual_seed(0))
    return gm, {steps: D.DDIMSampler(d, steps).sample(model, x_T) for steps in (3, 5, 10, 20, 50, 100, 500)}


def test_ddim_with_enough_steps_reproduces_the_data_distribution(runs):
    gm, samples = runs
    stats = sample_stats(gm, samples[500])
    # Tolerances are about 3 standard errors of N = 4000 draws from the data itself.
    assert stats["weights_tv"] < 0.03
    assert stats["mean_err"] < 0.06
    assert stats["cov_err"] < 0.12
    assert stats["worst_spread"] < 0.08  # every cluster keeps its own width (std error of a std: ~2.5%)


def test_ddim_error_grows_as_steps_shrink(runs):
    gm, samples = runs
    reference = samples[500]
    # Distance to the 500-step solution of the same x_T: the discretisation error of the ODE.
    errors = [(samples[s] - reference).norm(dim=1).mean().item() for s in (100, 50, 20, 10, 5, 3)]
    assert all(a < b for a, b in zip(errors, errors[1:])), errors
    assert errors[0] < 0.03 and errors[-1] > 0.3
    # and in distribution: few steps shrink the clusters and misplace the mass
    few, many = sample_stats(gm, samples[5]), sample_stats(gm, samples[500])
    assert few["cov_err"] > 4 * many["cov_err"] and few["worst_spread"] > 2 * many["worst_spread"]
    assert few["weights_tv"] > many["weights_tv"]


def test_stochastic_sampling_with_all_steps_also_reproduces_the_data():
    gm, d = toy_mixture_2d(), D.Diffusion()
    x_T = torch.randn(N, 2, generator=torch.Generator().manual_seed(1))
    x = D.DDPMSampler(d).sample(gm.eps_model(d), x_T, generator=torch.Generator().manual_seed(2))
    stats = sample_stats(gm, x)
    assert stats["weights_tv"] < 0.03 and stats["mean_err"] < 0.06 and stats["cov_err"] < 0.12
    assert stats["worst_spread"] < 0.08


def test_guidance_on_the_mixture_picks_the_labelled_component():
    gm, d = toy_mixture_2d(), D.Diffusion()
    y = torch.tensor([0, 1, 2] * 100)
    x = D.DDIMSampler(d, 50).sample(gm.eps_model(d), torch.randn(300, 2), y, guidance_scale=1.0, null_label=gm.null_label)
    assert (gm.responsibilities(x).argmax(1) == y).float().mean() > 0.99
    # guidance 0 is the unconditional model: the labels no longer matter
    x_u = D.DDIMSampler(d, 50).sample(gm.eps_model(d), torch.randn(3000, 2), torch.zeros(3000, dtype=torch.long),
                                      guidance_scale=0.0, null_label=gm.null_label)
    w = torch.bincount(gm.responsibilities(x_u).argmax(1), minlength=3).double() / 3000
    torch.testing.assert_close(w, gm.weights, atol=0.05, rtol=0)


def test_image_shaped_mixture_samples_land_on_its_images():
    means = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    gm, d = GaussianMixture(means, torch.full((4,), 0.05)), D.Diffusion()
    x = D.DDIMSampler(d, 50).sample(gm.eps_model(d), torch.randn(32, 3, 8, 8))
    nearest = gm.responsibilities(x).argmax(1)
    assert x.shape == (32, 3, 8, 8)
    assert ((x - means[nearest]).abs().amax(dim=(1, 2, 3)) < 0.3).all()
