"""Checks for chapter 06 (diffusion math and the DDIM sampler, eq. 26-29)."""

from __future__ import annotations

from typing import Callable

import torch

from ..diffusion import Diffusion, beta_schedule, ddim_sigma, ddim_step
from .core import CheckFailure, CheckResult, compare, fresh_seed, run_check

SHAPES = [(4, 3, 8, 8), (5, 4, 4, 4), (7, 2)]


def _alpha_bars(g: torch.Generator, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``(alpha_bar_t, alpha_bar_prev)`` with ``alpha_bar_prev > alpha_bar_t``, shaped ``(B, 1, ..., 1)``."""
    ab = Diffusion(beta_schedule("linear_rescaled", 500)).alpha_bar
    t = torch.randint(1, 500, (shape[0],), generator=g)
    t_prev = (t - torch.randint(1, 60, (shape[0],), generator=g)).clamp(min=-1)
    ab_t = ab[t].float()
    ab_prev = torch.where(t_prev >= 0, ab[t_prev.clamp(min=0)], torch.ones(())).float()
    view = (-1,) + (1,) * (len(shape) - 1)
    return ab_t.view(view), ab_prev.view(view)


def check_q_sample(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> CheckResult:
    """``fn(x0, t, noise, alpha_bar)`` is eq. 28 for 0-based ``t`` ``(B,)``, like :meth:`Diffusion.q_sample`."""

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        for shape, (kind, T) in zip(SHAPES, [("linear_rescaled", 500), ("linear", 500), ("cosine", 40)]):
            diffusion = Diffusion(beta_schedule(kind, T))
            x0, noise = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
            t = torch.randint(0, T, (shape[0],), generator=g)
            t[0], t[-1] = 0, T - 1  # both ends: index 0 is the paper's t = 1, index T - 1 its t = T
            got = fn(x0, t, noise, diffusion.alpha_bar.float())
            compare(got, diffusion.q_sample(x0, t, noise), f"q_sample on a {shape} batch ({kind} schedule, T={T})")

    return run_check("q_sample", trial,
                     hint="look up alpha_bar[t] (0-based, no t - 1), reshape it to (B, 1, ..., 1) so it broadcasts over "
                          "x0, then sqrt(alpha_bar) * x0 + sqrt(1 - alpha_bar) * noise.")


def check_ddim_step(fn: Callable[..., torch.Tensor]) -> CheckResult:
    """``fn(x_t, eps, alpha_bar_t, alpha_bar_prev, eta, noise)`` is eq. 29, like :func:`fftd_course.diffusion.ddim_step`."""

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        for shape in SHAPES:
            ab_t, ab_prev = _alpha_bars(g, shape)
            x_t, eps, noise = (torch.randn(shape, generator=g) for _ in range(3))
            for eta in (0.0, 0.5, 1.0):
                got = fn(x_t, eps, ab_t, ab_prev, eta, noise)
                compare(got, ddim_step(x_t, eps, ab_t, ab_prev, eta, noise), f"one DDIM step with eta={eta} on a {shape} batch")
        # The last step of a sampler goes to clean data: alpha_bar_prev = 1 returns the x0 estimate itself.
        x_t, eps = torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g)
        ab_t = torch.full((3, 1), 0.3)
        compare(fn(x_t, eps, ab_t, torch.ones(3, 1), 0.0, torch.zeros(3, 2)), (x_t - 0.7**0.5 * eps) / 0.3**0.5,
                "the last step (alpha_bar_prev = 1), which must return z0_hat")

    return run_check("ddim_step", trial,
                     hint="z0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t); sigma = ddim_sigma(a_t, a_prev, eta); "
                          "x_prev = sqrt(a_prev) z0_hat + sqrt(1 - a_prev - sigma**2) eps + sigma * noise.")


def check_ddim_sigma(fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> CheckResult:
    """``fn(alpha_bar_t, alpha_bar_prev, eta)`` is the sigma of eq. 29, like :func:`fftd_course.diffusion.ddim_sigma`."""

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        for shape in SHAPES:
            ab_t, ab_prev = _alpha_bars(g, shape)
            for eta in (0.0, 0.3, 1.0):
                compare(fn(ab_t, ab_prev, eta), ddim_sigma(ab_t, ab_prev, eta), f"sigma with eta={eta} for {shape[0]} pairs")
        # eta = 1 between neighbouring timesteps must be DDPM's posterior std sqrt(beta_tilde) (DDPM eq. 7).
        d = Diffusion(beta_schedule("linear", 100))
        t = torch.arange(1, 100)
        beta_tilde = d.betas[t] * (1 - d.alpha_bar[t - 1]) / (1 - d.alpha_bar[t])
        got = fn(d.alpha_bar[t], d.alpha_bar[t - 1], 1.0)
        if not isinstance(got, torch.Tensor) or not torch.allclose(got.double(), beta_tilde.sqrt(), rtol=1e-4, atol=1e-7):
            raise CheckFailure("at eta = 1 between neighbouring timesteps sigma must equal DDPM's posterior std "
                               "sqrt(beta_t (1 - a_prev) / (1 - a_t))")

    return run_check("ddim_sigma", trial,
                     hint="sigma = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev).")
