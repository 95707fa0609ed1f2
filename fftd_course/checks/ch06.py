"""Checks for chapter 06 (diffusion math and the DDIM sampler, eq. 26-29, Algorithm 3): a DDIM step for a
velocity-predicting model, a sampler with its off-by-one repaired, and exact DDIM inversion by fixed-point iteration."""

from __future__ import annotations

from typing import Callable

import torch

from ..diffusion import DDIMSampler, Diffusion, beta_schedule, ddim_step
from ..mixture import toy_mixture_2d
from .core import Bugs, CheckFailure, CheckResult, compare, fresh_seed, run_check, yours


def check_ddim_step_v(fn: Callable[..., torch.Tensor]) -> CheckResult:
    """``fn(x_t, v, a_t, a_s)``: the deterministic DDIM step (eq. 29, eta = 0) for a model that predicts the velocity
    ``v = sqrt(a_t) eps - sqrt(1 - a_t) z_0`` instead of the noise, from level ``a_t`` to ``a_s``."""

    def step(x_t: torch.Tensor, v: torch.Tensor, a_t, a_s) -> torch.Tensor:  # the hidden reference
        a_t, a_s = torch.as_tensor(a_t, dtype=x_t.dtype), torch.as_tensor(a_s, dtype=x_t.dtype)
        z0 = a_t.sqrt() * x_t - (1 - a_t).sqrt() * v   # (x_t, v) is (z_0, eps) turned by the angle whose cosine
        eps = (1 - a_t).sqrt() * x_t + a_t.sqrt() * v  # is sqrt(a_t): turning back solves both equations at once
        return a_s.sqrt() * z0 + (1 - a_s).sqrt() * eps

    fn = yours(fn)

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        diffusion = Diffusion(beta_schedule("linear_rescaled", 200))
        ab = diffusion.alpha_bar.double()
        # 1. a perfect velocity (from the clean data and the noise that made x_t) must land exactly on eq. 28
        z0, noise = torch.randn(32, 3, 4, 4, generator=g, dtype=torch.float64), torch.randn(32, 3, 4, 4, generator=g,
                                                                                              dtype=torch.float64)
        for t, s in ((150, 40), (199, 120), (30, 0)):
            x_t = ab[t].sqrt() * z0 + (1 - ab[t]).sqrt() * noise
            v = ab[t].sqrt() * noise - (1 - ab[t]).sqrt() * z0
            got = fn(x_t, v, float(ab[t]), float(ab[s]))
            compare(got, ab[s].sqrt() * z0 + (1 - ab[s]).sqrt() * noise,
                    f"a perfect v at index {t}, stepping to index {s}: the step must land on eq. 28 at index {s} with "
                    "the same z_0 and noise", atol=1e-6, rtol=1e-6)
        # 2. any v (a model's guess), per-sample levels as (B, 1, 1, 1) tensors, the last step to clean data
        x_t, v = (torch.randn(16, 4, 4, 4, generator=g, dtype=torch.float64) for _ in range(2))
        t = torch.randint(1, 200, (16,), generator=g)
        s = (t * torch.rand(16, generator=g)).long()
        a_t, a_s = ab[t].view(-1, 1, 1, 1), ab[s].view(-1, 1, 1, 1)
        compare(fn(x_t, v, a_t, a_s), step(x_t, v, a_t, a_s),
                "a model's v with per-sample levels of shape (B, 1, 1, 1)", atol=1e-6, rtol=1e-6)
        compare(fn(x_t, v, a_t, torch.ones_like(a_s)), step(x_t, v, a_t, torch.ones_like(a_s)),
                "the last step (a_s = 1, clean data)", atol=1e-6, rtol=1e-6)

    return run_check("ddim_step_v", trial,
                     hint="write eq. 28 and the definition of v as two equations in z_0 and eps; the coefficients "
                          "(sqrt(a_t), sqrt(1 - a_t)) are a cosine and a sine of one angle, so the pair (x_t, v) is "
                          "(z_0, eps) turned by that angle. Turn it back, then use eq. 29 with sigma = 0.",
                     forbid=["fftd_course.diffusion.ddim_step", "fftd_course.diffusion.predict_x0"])


class _RecordingModel:
    """Wraps the analytic mixture model and checks every call's timesteps: (B,) integer indices in [0, T)."""

    def __init__(self, diffusion: Diffusion):
        self.inner, self.T, self.calls = toy_mixture_2d().eps_model(diffusion), diffusion.T, []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if not isinstance(t, torch.Tensor) or t.dtype not in (torch.long, torch.int32) or t.shape != (len(x),):
            raise CheckFailure(f"the model was called with t = {t!r}; pass a LongTensor of shape ({len(x)},)")
        if int(t.min()) < 0 or int(t.max()) >= self.T:
            raise CheckFailure(f"the model was called at index {int(t.max()) if int(t.max()) >= self.T else int(t.min())},"
                               f" outside 0 .. {self.T - 1}: timesteps are 0-based indices")
        self.calls.append(int(t[0]))
        return self.inner(x, t, y)


def check_ddim_sampler(fn: Callable[..., torch.Tensor]) -> CheckResult:
    """``fn(model, x_T, timesteps, alpha_bar)`` samples like ``DDIMSampler(..., eta=0).sample`` (a find-the-bug
    exercise with one bug)."""
    fn = yours(fn)

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        for kind, T, steps, spacing in [("linear_rescaled", 100, 10, "trailing"), ("linear", 60, 7, "linspace"),
                                        ("cosine", 40, 1, "trailing"), ("linear_rescaled", 30, 30, "leading")]:
            diffusion = Diffusion(beta_schedule(kind, T))
            sampler = DDIMSampler(diffusion, steps, spacing=spacing)
            x_T = torch.randn(64, 2, generator=g, dtype=torch.float64)
            model = _RecordingModel(diffusion)
            got = fn(model, x_T, sampler.timesteps.clone(), diffusion.alpha_bar.clone())
            what = f"{steps} {spacing} steps of a {kind} schedule with T={T}"
            if model.calls != sampler.timesteps.tolist():
                raise CheckFailure(f"{what}: the model was called at {model.calls[:8]}, expected "
                                   f"{sampler.timesteps.tolist()[:8]} (one call per timestep, noisiest first)")
            compare(got, sampler.sample(model.inner, x_T), f"samples after {what}", atol=1e-5, rtol=1e-5)

    return run_check("ddim_sampler", trial, bugs=Bugs(1, nudges=(
        "where does the last step of your loop land: on which timestep, and which alpha_bar does it use there?",
        "the paper's alpha_0 = 1 (clean data) has no index in the table (see the conventions section): what "
        "should the very last step aim for?",
        "print the pair (alpha_bar now, alpha_bar next) of every step for 3 steps and compare the last pair "
        "with Algorithm 3's.")),
        forbid=["fftd_course.diffusion.DDIMSampler.sample", "fftd_course.diffusion.DDIMSampler._run"])


def check_exact_inversion(fn: Callable[..., torch.Tensor]) -> CheckResult:
    """``fn(model, x0, timesteps, alpha_bar, iterations)``: DDIM inversion refined by fixed-point iteration."""

    def inversion(model, x0: torch.Tensor, timesteps: torch.Tensor, alpha_bar: torch.Tensor, iterations: int) -> torch.Tensor:
        levels = [1.0] + [alpha_bar[t] for t in timesteps.flip(0).tolist()]  # the hidden reference
        x = x0
        for k, t in enumerate(timesteps.flip(0).tolist()):
            t_vec = torch.full((len(x0),), t, dtype=torch.long)
            estimate = x
            for _ in range(iterations + 1):  # the first pass evaluates the model at the start point: the package's step
                estimate = ddim_step(x, model(estimate, t_vec, None), levels[k], levels[k + 1])
            x = estimate
        return x

    fn = yours(fn)

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        diffusion = Diffusion(beta_schedule("linear_rescaled", 100))
        model = toy_mixture_2d().eps_model(diffusion)
        for steps in (5, 12):
            sampler = DDIMSampler(diffusion, steps)
            x0 = toy_mixture_2d().sample(48, g)[0]
            got = fn(model, x0, sampler.timesteps.clone(), diffusion.alpha_bar.clone(), 0)
            compare(got, sampler.invert(model, x0), f"{steps} steps with iterations=0 (must equal DDIMSampler.invert)",
                    atol=1e-5, rtol=1e-5)
            for iterations in (1, 3):
                got = fn(model, x0, sampler.timesteps.clone(), diffusion.alpha_bar.clone(), iterations)
                compare(got, inversion(model, x0, sampler.timesteps, diffusion.alpha_bar, iterations),
                        f"{steps} steps with iterations={iterations}", atol=1e-5, rtol=1e-5)

    return run_check("exact_inversion", trial,
                     hint="per upward step, the equation to satisfy is eq. 29 with eta = 0, read from the noisier point "
                          "down to the point you start from; only the model's input changes between refinements, and "
                          "the starting point and the two alpha_bar values stay the same. Where does the first step "
                          "start (which alpha_bar belongs to clean data)?",
                     forbid=["fftd_course.diffusion.DDIMSampler.invert", "fftd_course.diffusion.DDIMSampler._run"])
