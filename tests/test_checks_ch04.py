"""Chapter 04's checks: the reference passes, plausible wrong answers fail (and raise in strict mode), stubs
are "not attempted"."""

import torch
import torch.nn.functional as F

from fftd_course import checks, losses

from check_contract import chapter_function, contract_tests


def vanilla(r, f):
    return 0.5 * (F.softplus(-r).mean() + F.softplus(f).mean())


def vanilla_naive_log(r, f):  # right formula, but log(sigmoid) underflows to log(0) for large logits
    return 0.5 * (-torch.log(torch.sigmoid(r)).mean() - torch.log(1 - torch.sigmoid(f)).mean())


def receptive_field(layers):
    side, spacing = 1, 1
    for k, s in layers:
        side += (k - 1) * spacing
        spacing *= s
    return side


def rf_ignores_strides(layers):
    return 1 + sum(k - 1 for k, _ in layers)


def rf_own_stride_counts(layers):  # multiplies by the layer's own stride before adding its kernel
    side, spacing = 1, 1
    for k, s in layers:
        spacing *= s
        side += (k - 1) * spacing
    return side


def rf_sum_of_kernels(layers):
    return sum(k for k, _ in layers)


def _grads(rec, g, last):
    return (torch.autograd.grad(rec, last, retain_graph=True)[0], torch.autograd.grad(g, last, retain_graph=True)[0])


# The chapter's exercise 3 as the learner gets it, with all three of its bugs.
weight_as_given_in_the_chapter = chapter_function("04_hybrid_loss", "buggy_adaptive_weight", torch=torch)


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
    (checks.check_vanilla_d_loss, vanilla, [
        vanilla_naive_log,
        lambda r, f: 0.5 * ((1 - r).mean() + (1 + f).mean()),  # eq. 14 as printed
        lambda r, f: F.softplus(-r).mean() + F.softplus(f).mean(),  # no 1/2
        lambda r, f: torch.cat([F.softplus(-r).flatten(), F.softplus(f).flatten()]).mean(),  # one pooled mean
        lambda r, f: 0.5 * (F.softplus(r).mean() + F.softplus(-f).mean()),  # labels swapped
        lambda r, f: 0.5 * (F.relu(1 - r).mean() + F.relu(1 + f).mean()),  # the hinge loss
    ]),
    (checks.check_receptive_field, receptive_field, [rf_ignores_strides, rf_own_stride_counts, rf_sum_of_kernels]),
    (checks.check_adaptive_weight, losses.adaptive_weight, [
        weight_as_given_in_the_chapter, weight_without_retain, weight_inverted, weight_without_clamp,
        weight_ignoring_disc_weight, weight_of_loss_values,
    ]),
]

test_reference_passes_wrong_fails_stub_not_attempted, test_strict_mode_raises_on_every_wrong_answer = contract_tests(
    CASES)


def test_failure_messages_point_at_the_mistake(lenient_env):
    assert "NaN or inf" in checks.check_vanilla_d_loss(vanilla_naive_log).message
    assert "your code raised RuntimeError" in checks.check_adaptive_weight(weight_as_given_in_the_chapter).message
    assert "values differ" in checks.check_adaptive_weight(weight_inverted).message
    assert "n_layers=1" in checks.check_receptive_field(rf_ignores_strides).message

