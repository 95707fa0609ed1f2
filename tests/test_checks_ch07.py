"""Chapter 07's checks: the reference passes, plausible wrong answers fail (and raise in strict mode), stubs are
"not attempted"."""

import math

import torch
from torch import nn

from fftd_course import checks
from fftd_course.checks.ch07 import perturbed_fusion
from fftd_course.fusion import AdaptiveFusion

from check_contract import contract_tests


# Exercise 1: E2's CBAM reading of the channel gate.
def cbam(x1, x2, mlp):
    x = torch.cat([x1, x2], dim=-1)
    return torch.sigmoid(mlp(x.mean(dim=1)) + mlp(x.amax(dim=1))).unsqueeze(1)


def cbam_mean_twice(x1, x2, mlp):  # E1 as printed
    x = torch.cat([x1, x2], dim=-1)
    return torch.sigmoid(mlp(x.mean(dim=1)) + mlp(x.mean(dim=1))).unsqueeze(1)


def cbam_sum_before_mlp(x1, x2, mlp):  # pools added before the (non-linear) MLP
    x = torch.cat([x1, x2], dim=-1)
    return torch.sigmoid(mlp(x.mean(dim=1) + x.amax(dim=1))).unsqueeze(1)


def cbam_two_sigmoids(x1, x2, mlp):  # averages two gates instead of adding logits
    x = torch.cat([x1, x2], dim=-1)
    return ((torch.sigmoid(mlp(x.mean(dim=1))) + torch.sigmoid(mlp(x.amax(dim=1)))) / 2).unsqueeze(1)


def cbam_no_broadcast(x1, x2, mlp):  # (B, D): does not broadcast over the tokens
    x = torch.cat([x1, x2], dim=-1)
    return torch.sigmoid(mlp(x.mean(dim=1)) + mlp(x.amax(dim=1)))


def cbam_pool_over_channels(x1, x2, mlp):  # pools the wrong dimension
    x = torch.cat([x1, x2], dim=-1)
    return torch.sigmoid(mlp(x.mean(dim=-1)) + mlp(x.amax(dim=-1))).unsqueeze(1)


# Exercise 2: the spatial gate on a 1x1 grid is an MLP of the convolutions' centre taps.
def _convs(gate):
    return [m for m in gate if isinstance(m, nn.Conv2d)]


def centre_taps(gate):
    return [(c.weight[:, :, 1, 1], c.bias) for c in _convs(gate)]


def kernel_sums(gate):  # what a 1x1 grid with replicate padding would see
    return [(c.weight.sum(dim=(2, 3)), c.bias) for c in _convs(gate)]


def corner_taps(gate):
    return [(c.weight[:, :, 0, 0], c.bias) for c in _convs(gate)]


def no_biases(gate):
    return [(c.weight[:, :, 1, 1], torch.zeros_like(c.bias)) for c in _convs(gate)]


def transposed(gate):  # in x out instead of out x in
    return [(c.weight[:, :, 1, 1].T, c.bias) for c in _convs(gate)]


# Exercise 3: find the three bugs (the chapter's buggy_fuse).
def flawed_fuse(reshape_bug=False, norm_bug=False, order_bug=False):
    def fuse(x1, x2, f):
        x = torch.cat([x1, x2], dim=-1)
        b, n, d2 = x.shape
        side = math.isqrt(n)
        w_channel = torch.sigmoid(f.channel_gate(torch.cat([x.mean(dim=1), x.amax(dim=1)], dim=-1))).unsqueeze(1)
        grid = x.reshape(b, d2, side, side) if reshape_bug else x.transpose(1, 2).reshape(b, d2, side, side)
        w_spatial = torch.sigmoid(f.spatial_gate(grid)).flatten(2).transpose(1, 2)
        norm2 = f.norm1 if norm_bug else f.norm2
        cat = torch.cat([x2, x1], dim=-1) if order_bug else x
        return w_channel * f.norm1(x1) + w_spatial * norm2(x2) + f.s * f.proj(cat)

    return fuse


CASES = [
    (checks.check_cbam_channel_weights, cbam,
     [cbam_mean_twice, cbam_sum_before_mlp, cbam_two_sigmoids, cbam_no_broadcast, cbam_pool_over_channels]),
    (checks.check_spatial_gate_as_linears, centre_taps, [kernel_sums, corner_taps, no_biases, transposed]),
    (checks.check_fuse_fixed, flawed_fuse(),
     [flawed_fuse(True, True, True), flawed_fuse(reshape_bug=True), flawed_fuse(norm_bug=True),
      flawed_fuse(order_bug=True)]),
]

test_reference_passes_wrong_fails_stub_not_attempted, test_strict_mode_raises_on_every_wrong_answer = contract_tests(
    CASES)


def test_every_bug_is_invisible_on_a_fresh_fusion():
    """Why exercise 3's check uses perturbed fusions: on a fresh one the buggy function is right."""
    torch.manual_seed(0)
    f = AdaptiveFusion(32)
    x1, x2 = torch.randn(2, 16, 32), torch.randn(2, 16, 32)
    torch.testing.assert_close(flawed_fuse(True, True, True)(x1, x2, f), f(x1, x2))
    assert not torch.allclose(flawed_fuse(True, True, True)(x1, x2, perturbed_fusion(32, 0)),
                              perturbed_fusion(32, 0)(x1, x2))


def test_perturbed_fusion_moves_the_gates_and_s():
    f = perturbed_fusion(32, 1)
    x1, x2 = torch.randn(2, 16, 32), torch.randn(2, 16, 32)
    assert f.s.item() != 0
    assert f.channel_weights(x1, x2).std() > 0.01 and f.spatial_weights(x1, x2).std() > 0.01
