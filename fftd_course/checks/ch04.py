"""Checks for chapter 04 (the hybrid loss, eq. 13-15): hinge loss, generator loss, adaptive weight."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..losses import adaptive_weight, generator_loss, hinge_d_loss
from .core import CheckFailure, CheckResult, compare, fresh_seed, run_check

# Logit maps of a PatchGAN: (batch, 1, H', W'); real and fake batches may differ in size.
_LOGIT_SHAPES = [((4, 1, 6, 6), (4, 1, 6, 6)), ((2, 1, 3, 3), (2, 1, 3, 3)), ((3, 1, 5, 5), (7, 1, 2, 2))]


def _logits(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    # Spread over [-3, 3] so that both sides of the hinge margins at +-1 are exercised.
    return (torch.randn(shape, generator=g, dtype=torch.float64) * 1.5).requires_grad_(True)


def check_hinge_d_loss(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> CheckResult:
    """``fn(logits_real, logits_fake)`` is ``1/2 (E[relu(1 - real)] + E[relu(1 + fake)])`` (eq. 14, E3)."""

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        for shape_r, shape_f in _LOGIT_SHAPES:
            real, fake = _logits(shape_r, g), _logits(shape_f, g)
            real_ref, fake_ref = real.detach().clone().requires_grad_(True), fake.detach().clone().requires_grad_(True)
            got, want = fn(real, fake), hinge_d_loss(real_ref, fake_ref)
            what = f"hinge loss for real logits {shape_r} and fake logits {shape_f}"
            compare(got, want, what)
            if not got.requires_grad:
                raise CheckFailure(f"{what}: no gradient can flow back to the logits (did you detach or use .item()?)")
            got.backward()
            want.backward()
            if real.grad is None or fake.grad is None:
                raise CheckFailure(f"{what}: no gradient reached the logits (did you detach or use .item()?)")
            compare(real.grad, real_ref.grad, f"{what}: gradient with respect to the real logits")
            compare(fake.grad, fake_ref.grad, f"{what}: gradient with respect to the fake logits")

    return run_check("hinge_d_loss", trial,
                     hint="0.5 * (F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean()); take the two means "
                          "separately (the batches may differ in size) and keep the relus: without them this is eq. 14 "
                          "as printed, which has no minimum.")


def check_generator_loss(fn: Callable[[torch.Tensor], torch.Tensor]) -> CheckResult:
    """``fn(logits_fake)`` is ``-E[Dis(x_hat)]`` (eq. 13), with the right gradient."""

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        for _, shape in _LOGIT_SHAPES:
            fake = _logits(shape, g)
            fake_ref = fake.detach().clone().requires_grad_(True)
            got, want = fn(fake), generator_loss(fake_ref)
            compare(got, want, f"generator loss for logits {shape}")
            if not got.requires_grad:
                raise CheckFailure(f"generator loss for logits {shape}: no gradient can flow back to the logits "
                                   "(did you detach or use .item()?)")
            got.backward()
            want.backward()
            if fake.grad is None:
                raise CheckFailure(f"generator loss for logits {shape}: no gradient reached the logits")
            compare(fake.grad, fake_ref.grad, f"gradient of the generator loss for logits {shape}")

    return run_check("generator_loss", trial,
                     hint="minus the mean over every logit of every image: -logits_fake.mean(). The autoencoder wants "
                          "the discriminator to call its reconstructions real (large logits).")


def _adaptive_setup(g: torch.Generator, channels: int, size: int, zero_adversarial: bool = False):
    """A decoder's last layer, its output, an L1 loss and a tiny discriminator's generator loss."""
    last = (torch.randn(3, channels, 3, 3, generator=g, dtype=torch.float64) * 0.1).requires_grad_(True)
    h = torch.randn(2, channels, size, size, generator=g, dtype=torch.float64)
    x = torch.rand(2, 3, size, size, generator=g, dtype=torch.float64) * 2 - 1
    x_hat = torch.tanh(F.conv2d(h, last, padding=1))
    rec = (x_hat - x).abs().mean() * (1e3 if zero_adversarial else 1.0)  # large enough to reach the clamp at 1e4
    d_weight = torch.randn(1, 3, 4, 4, generator=g, dtype=torch.float64) * (0.0 if zero_adversarial else 0.5)
    g_loss = -F.conv2d(x_hat, d_weight, stride=2, padding=1).mean()
    return rec, g_loss, last


def check_adaptive_weight(fn: Callable[..., torch.Tensor]) -> CheckResult:
    """``fn(rec_loss, g_loss, last_layer, disc_weight)`` is taming's adaptive weight (detached, clamped)."""

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        for channels, size, disc_weight, zero in [(4, 6, 1.0, False), (8, 5, 0.75, False), (4, 4, 0.5, True)]:
            what = (f"adaptive weight (last layer with {channels} input channels, disc_weight={disc_weight}"
                    + (", an adversarial loss with zero gradient" if zero else "") + ")")
            rec, g_loss, last = _adaptive_setup(g, channels, size, zero)
            want = adaptive_weight(rec, g_loss, last, disc_weight)
            got = fn(rec, g_loss, last, disc_weight)
            if isinstance(got, torch.Tensor) and got.requires_grad:
                raise CheckFailure(f"{what}: the weight still requires grad; .detach() it (it is a weight, not a "
                                   "quantity to optimise)")
            compare(torch.as_tensor(got, dtype=torch.float64), want, what, atol=1e-6, rtol=1e-5)
            try:  # the training step still needs the graph after the weight was computed
                (rec + want * g_loss).backward()
            except RuntimeError:
                raise CheckFailure(f"{what}: the loss graph was freed; pass retain_graph=True to torch.autograd.grad") from None

    return run_check("adaptive_weight", trial,
                     hint="torch.autograd.grad(loss, last_layer, retain_graph=True)[0] for both losses, then "
                          "disc_weight * ||g_rec|| / (||g_G|| + 1e-4), clamped to [0, 1e4] and detached.")
