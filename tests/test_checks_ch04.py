"""Chapter 04's checks: the reference passes, plausible wrong answers fail (and raise in strict mode), stubs
are "not attempted"."""

import torch
import torch.nn.functional as F

from fftd_course import checks, losses

from check_contract import contract_tests


def _grads(rec, g, last):
    return (torch.autograd.grad(rec, last, retain_graph=True)[0], torch.autograd.grad(g, last, retain_graph=True)[0])


def weight_without_retain(rec, g, last, disc_weight=1.0):
    a, b = torch.autograd.grad(rec, last)[0], torch.autograd.grad(g, last)[0]
    return (a.norm() / (b.norm() + 1e-4)).clamp(0, 1e4).detach() * disc_weight


def weight_inverted(rec, g, last, disc_weight=1.0):
    a, b = _grads(rec, g, last)
    return (b.norm() / (a.norm() + 1e-4)).clamp(0, 1e4).detach() * disc_weight


def weight_without_clamp(rec, g, last, disc_weight=1.0):
    a, b = _grads(rec, g, last)
    return (a.norm() / (b.norm() + 1e-4)).detach() * disc_weight


def weight_ignoring_disc_weight(rec, g, last, disc_weight=1.0):
    a, b = _grads(rec, g, last)
    return (a.norm() / (b.norm() + 1e-4)).clamp(0, 1e4).detach()


def weight_of_loss_values(rec, g, last, disc_weight=1.0):  # compares the losses, not their gradients
    return (rec / (g.abs() + 1e-4)).clamp(0, 1e4).detach() * disc_weight


CASES = [
    (checks.check_hinge_d_loss, losses.hinge_d_loss, [
        lambda r, f: 0.5 * ((1 - r).mean() + (1 + f).mean()),  # eq. 14 as printed
        lambda r, f: F.relu(1 - r).mean() + F.relu(1 + f).mean(),  # no 1/2
        lambda r, f: torch.cat([F.relu(1 - r).flatten(), F.relu(1 + f).flatten()]).mean(),  # one pooled mean
        lambda r, f: 0.5 * (F.relu(1 + r).mean() + F.relu(1 - f).mean()),  # real and fake swapped
    ]),
    (checks.check_generator_loss, losses.generator_loss, [
        lambda f: f.mean(),
        lambda f: -f.sum(),
        lambda f: F.relu(1 - f).mean(),
        lambda f: -f.mean().detach(),
    ]),
    (checks.check_adaptive_weight, losses.adaptive_weight, [
        weight_without_retain, weight_inverted, weight_without_clamp, weight_ignoring_disc_weight, weight_of_loss_values,
    ]),
]

test_reference_passes_wrong_fails_stub_not_attempted, test_strict_mode_raises_on_every_wrong_answer = contract_tests(
    CASES)


def test_failure_messages_point_at_the_mistake(lenient_env):
    assert "retain_graph" in checks.check_adaptive_weight(weight_without_retain).message
    msg = checks.check_hinge_d_loss(lambda r, f: 0.5 * ((1 - r).mean() + (1 + f).mean())).message
    assert "values differ" in msg and "relu" in msg
    assert "no gradient" in checks.check_generator_loss(lambda f: -f.mean().detach()).message
