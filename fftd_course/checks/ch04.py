"""Checks for chapter 04 (the hybrid loss, eq. 13-15): the BCE discriminator loss (a variant of eq. 14), the
receptive field of a PatchGAN, and taming's adaptive weight (a find-the-bug exercise)."""

from __future__ import annotations

import random
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import losses
from .core import Bugs, CheckFailure, CheckResult, compare, fresh_seed, run_check, yours

# Logit maps of a PatchGAN: (batch, 1, H', W'); real and fake batches may differ in size.
_LOGIT_SHAPES = [((4, 1, 6, 6), (4, 1, 6, 6)), ((2, 1, 3, 3), (2, 1, 3, 3)), ((3, 1, 5, 5), (7, 1, 2, 2))]


def _logits(shape: tuple[int, ...], g: torch.Generator, scale: float = 1.5) -> torch.Tensor:
    # Spread over about [-3, 3] by default, so that both saturated and linear parts of the loss are exercised.
    return (torch.randn(shape, generator=g) * scale).requires_grad_(True)


def check_vanilla_d_loss(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> CheckResult:
    """``fn(logits_real, logits_fake)`` is the BCE discriminator loss (taming's ``vanilla_d_loss``), finite everywhere."""

    def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
        # the hidden reference: the halved binary cross-entropy, real labelled 1 and fake 0, on logits
        real = F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real))
        fake = F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake))
        return 0.5 * (real + fake)

    fn = yours(fn)

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        cases = [(shape_r, shape_f, 1.5) for shape_r, shape_f in _LOGIT_SHAPES] + [((2, 1, 4, 4), (3, 1, 4, 4), 150.0)]
        for shape_r, shape_f, scale in cases:
            real, fake = _logits(shape_r, g, scale), _logits(shape_f, g, scale)
            real_ref, fake_ref = real.detach().clone().requires_grad_(True), fake.detach().clone().requires_grad_(True)
            what = (f"BCE loss for real logits {shape_r} and fake logits {shape_f}"
                    + (f" (logits up to +-{scale * 3:.0f})" if scale > 10 else ""))
            got, want = fn(real, fake), vanilla_d_loss(real_ref, fake_ref)
            compare(got, want, what)
            if not got.requires_grad:
                raise CheckFailure(f"{what}: no gradient can flow back to the logits (did you detach or use .item()?)")
            got.backward()
            want.backward()
            if real.grad is None or fake.grad is None:
                raise CheckFailure(f"{what}: no gradient reached the logits")
            compare(real.grad, real_ref.grad, f"{what}: gradient with respect to the real logits")
            compare(fake.grad, fake_ref.grad, f"{what}: gradient with respect to the fake logits")

    return run_check("vanilla_d_loss", trial,
                     hint="a real patch should be called real and a fake one fake; average each map on its own, then "
                          "halve their sum as in eq. 14. For large logits, never form the probability first: "
                          "-log(sigma(d)) has a closed form in d alone that PyTorch provides as a stable function.",
                     # the package's discriminator losses (hinge, eq. 14 as the package trains it)
                     forbid=["fftd_course.losses.hinge_d_loss", "fftd_course.losses.HybridLoss.discriminator_loss"])


def _conv_layers(disc: nn.Module) -> list[tuple[int, int]]:
    return [(m.kernel_size[0], m.stride[0]) for m in disc.modules() if isinstance(m, nn.Conv2d)]


def check_receptive_field(fn: Callable[[list[tuple[int, int]]], int]) -> CheckResult:
    """``fn(layers)`` is the receptive field of a stack of ``(kernel, stride)`` convolutions, first layer first."""

    def receptive_field(layers: list[tuple[int, int]]) -> int:
        # the hidden reference: walk back from one output position; each layer maps a window of w outputs to
        # (w - 1) s + k inputs
        window = 1
        for kernel, stride in reversed(layers):
            window = (window - 1) * stride + kernel
        return window

    fn = yours(fn)

    def trial() -> None:
        for n in (1, 2, 3, 4):
            disc = losses.NLayerDiscriminator(ndf=4, n_layers=n)
            layers = _conv_layers(disc)
            got = fn(layers)
            if int(got) != disc.receptive_field:
                raise CheckFailure(f"PatchGAN with n_layers={n}, layers {layers}: you say {got}, "
                                   f"its logits see {disc.receptive_field} px")
        rng = random.Random(fresh_seed())
        for _ in range(20):
            layers = [(rng.randint(1, 7), rng.randint(1, 3)) for _ in range(rng.randint(1, 6))]
            got, want = fn(list(layers)), receptive_field(layers)
            if int(got) != want:
                raise CheckFailure(f"layers {layers} (kernel, stride), first layer first: you say {got}, expected {want}")

    return run_check("receptive_field", trial,
                     hint="a layer's kernel spans k of its inputs; how many input pixels lie between two neighbouring "
                          "inputs of that layer depends on the strides of the layers before it, not on its own "
                          "stride. Check a small case by hand: two 3x3 layers of stride 1, then of stride 2.",
                     forbid=["fftd_course.losses.NLayerDiscriminator.receptive_field",
                             "fftd_course.losses.NLayerDiscriminator.min_size"])


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
    """``fn(rec_loss, g_loss, last_layer, disc_weight)`` is taming's adaptive weight (detached, clamped).

    A find-the-bug exercise with three bugs, each with its own sub-test: the graph survives the weight (no crash,
    and the training step's backward still runs), the ratio's direction (a case far from the clamp), and a bound
    (an adversarial loss with zero gradient must not give more than the clamp).
    """
    fn = yours(fn)

    def one_case(g: torch.Generator, channels: int, size: int, disc_weight: float, zero: bool) -> None:
        what = (f"adaptive weight (last layer with {channels} input channels, disc_weight={disc_weight}"
                + (", an adversarial loss with zero gradient" if zero else "") + ")")
        rec, g_loss, last = _adaptive_setup(g, channels, size, zero)
        want = losses.adaptive_weight(rec, g_loss, last, disc_weight)
        got = fn(rec, g_loss, last, disc_weight)
        if isinstance(got, torch.Tensor) and got.requires_grad:
            raise CheckFailure(f"{what}: the weight still requires grad; it is a weight, not a quantity to "
                               "optimise, so no gradient should flow through it")
        compare(torch.as_tensor(got, dtype=torch.float64), want, what, atol=1e-6, rtol=1e-5)
        try:  # the training step still needs the graph after the weight was computed
            (rec + want * g_loss).backward()
        except RuntimeError:
            raise CheckFailure(f"{what}: the loss graph was freed while computing the weight, so the training "
                               "step's backward() fails afterwards") from None

    def remaining() -> int:
        g = torch.Generator().manual_seed(fresh_seed())
        try:  # the crash: the answer runs, and the step's backward() afterwards too
            rec, g_loss, last = _adaptive_setup(g, 4, 6)
            fn(rec, g_loss, last, 1.0)
            (rec + g_loss).backward()
            crash = 0
        except Exception:
            crash = 1
        try:  # the direction, far from the clamp
            one_case(g, 8, 5, 0.75, False)
            direction = 0
        except Exception:
            direction = 1
        try:  # the bound: never more than disc_weight * 1e4
            rec, g_loss, last = _adaptive_setup(g, 4, 4, zero_adversarial=True)
            value = float(torch.as_tensor(fn(rec, g_loss, last, 0.5)))
            explodes = int(not value <= 0.5 * 1e4 * (1 + 1e-6))
        except Exception:
            explodes = 1
        return crash + direction + explodes

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        for channels, size, disc_weight, zero in [(4, 6, 1.0, False), (8, 5, 0.75, False), (4, 4, 0.5, True)]:
            one_case(g, channels, size, disc_weight, zero)

    return run_check("adaptive_weight", trial, bugs=Bugs(3, nudges=(
        "what does autograd free after a gradient call unless told to keep it, and who needs the graph later?",
        "if the weighted adversarial push at the last layer should match the reconstruction's push, which "
        "gradient norm belongs on top of the ratio?",
        "what should the weight be when the adversarial gradient is zero: and what is the largest weight taming "
        "ever lets through?",
        "compute the weight by hand for a case where one gradient is ten times the other, and compare with "
        "what the weight is FOR in eq. 15."), remaining=remaining),
        forbid=["fftd_course.losses.adaptive_weight"])
