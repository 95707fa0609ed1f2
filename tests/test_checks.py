"""The exercise checks: reference answers pass, wrong answers fail (and raise in strict mode), stubs are
"not attempted" and never raise."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fftd_course import blocks, checks, viz

from check_contract import PostActivationLayers, contract_tests


# The fixtures `strict` and `lenient_env` come from tests/conftest.py.


StubPostActivation = PostActivationLayers  # the exercise's stub: its layers, no forward


class PostActivation(StubPostActivation):  # an independent answer: the original ResNet's order
    def forward(self, x):
        return F.silu(self.shortcut(x) + self.norm2(self.conv2(F.silu(self.norm1(self.conv1(x))))))


class PreActivationOrder(StubPostActivation):  # eq. 2's order (norm and Swish before each conv), nothing after the sum
    def forward(self, x):
        h = self.conv1(F.silu(F.group_norm(x, self.norm1.num_groups)))
        return self.shortcut(x) + self.conv2(F.silu(self.norm2(h)))


class SwishBeforeTheSum(StubPostActivation):  # the last Swish on the branch, the skip left clean
    def forward(self, x):
        return self.shortcut(x) + F.silu(self.norm2(self.conv2(F.silu(self.norm1(self.conv1(x))))))


class NormAfterTheSum(StubPostActivation):  # post-norm: GroupNorm on the sum instead of on the branch
    def forward(self, x):
        return F.silu(self.norm2(self.shortcut(x) + self.conv2(F.silu(self.norm1(self.conv1(x))))))


class PlainSkip(StubPostActivation):  # adds x even when the channel count changes (crashes there)
    def forward(self, x):
        return F.silu(x + self.norm2(self.conv2(F.silu(self.norm1(self.conv1(x))))))


class RenamedPostActivation(nn.Module):
    def __init__(self, c_in, c_out, num_groups=32):
        super().__init__()
        self.inner = PostActivation(c_in, c_out, num_groups=num_groups)

    def forward(self, x):
        return self.inner(x)


def swish_grad_autograd(x):  # right values, but by autograd
    x = x.clone().requires_grad_(True)
    return torch.autograd.grad(F.silu(x).sum(), x, create_graph=True)[0]


def gn_by_hand(x, groups, weight, bias, eps=1e-6):  # an independent answer
    b, c, h, w = x.shape
    g = x.reshape(b, groups, c // groups, h, w)
    mean, var = g.mean(dim=(2, 3, 4), keepdim=True), g.var(dim=(2, 3, 4), keepdim=True, unbiased=False)
    return ((g - mean) / torch.sqrt(var + eps)).reshape(b, c, h, w) * weight.view(1, c, 1, 1) + bias.view(1, c, 1, 1)


def gn_interleaved(x, groups, weight, bias, eps=1e-6):  # channel c goes to group c % G
    b, c, h, w = x.shape
    g = x.reshape(b, c // groups, groups, h, w)
    mean, var = g.mean(dim=(1, 3, 4), keepdim=True), g.var(dim=(1, 3, 4), keepdim=True, unbiased=False)
    return ((g - mean) / torch.sqrt(var + eps)).reshape(b, c, h, w) * weight.view(1, c, 1, 1) + bias.view(1, c, 1, 1)


def gn_unbiased(x, groups, weight, bias, eps=1e-6):
    b, c, h, w = x.shape
    g = x.reshape(b, groups, c // groups, h, w)
    mean, var = g.mean(dim=(2, 3, 4), keepdim=True), g.var(dim=(2, 3, 4), keepdim=True)
    return ((g - mean) / torch.sqrt(var + eps)).reshape(b, c, h, w) * weight.view(1, c, 1, 1) + bias.view(1, c, 1, 1)


def gn_no_affine(x, groups, weight, bias, eps=1e-6):
    return gn_by_hand(x, groups, torch.ones_like(weight), torch.zeros_like(bias), eps)


def gn_batch_stats(x, groups, weight, bias, eps=1e-6):  # statistics over the batch too
    b, c, h, w = x.shape
    g = x.reshape(b, groups, c // groups, h, w)
    mean, var = g.mean(dim=(0, 2, 3, 4), keepdim=True), g.var(dim=(0, 2, 3, 4), keepdim=True, unbiased=False)
    return ((g - mean) / torch.sqrt(var + eps)).reshape(b, c, h, w) * weight.view(1, c, 1, 1) + bias.view(1, c, 1, 1)


def shared_loop(a, b):  # an independent answer: every pair, image by image
    return sum(any(bool(torch.equal(x, y)) for y in a) for x in b)


def shared_python_set(a, b):  # a set of tensors compares identities, not values
    return len(set(a) & set(b))


def shared_by_sum(a, b):  # equal sums are not equal images
    return int(torch.isin(b.sum(dim=(1, 2, 3)), a.sum(dim=(1, 2, 3))).sum())


def shared_pairs(a, b):  # counts matching pairs: an image of b that matches two images of a counts twice
    return int((b[:, None] == a[None]).flatten(2).all(-1).sum())


def shared_same_position(a, b):  # compares image i with image i only
    n = min(len(a), len(b))
    return int((a[:n] == b[:n]).flatten(1).all(1).sum())


def stats_running(batches):  # an independent answer: running count, mean and sum of squared deviations (Chan)
    n, mean, m2 = 0, 0.0, 0.0
    for x in batches:
        x = x.double().transpose(0, 1).flatten(1)  # (C, B*H*W)
        k, m = x.shape[1], x.mean(1)
        delta = m - mean
        mean = mean + delta * k / (n + k)
        m2 = m2 + ((x - m[:, None]) ** 2).sum(1) + delta**2 * n * k / (n + k)
        n += k
    return mean.float(), (m2 / n).sqrt().float()


def stats_mean_of_batches(batches):  # averages each batch's own mean and std
    means, stds = [], []
    for x in batches:
        means.append(x.mean(dim=(0, 2, 3)))
        stds.append(x.std(dim=(0, 2, 3), unbiased=False))
    return torch.stack(means).mean(0), torch.stack(stds).mean(0)


def stats_weighted_stds(batches):  # the mean weighted by batch size (right), the batches' stds averaged (wrong)
    n, total, stds = 0, 0.0, []
    for x in batches:
        n, total = n + len(x), total + x.sum(dim=(0, 2, 3)) / (x.shape[2] * x.shape[3])
        stds.append(x.std(dim=(0, 2, 3), unbiased=False) * len(x))
    return total / n, torch.stack(stds).sum(0) / n


def stats_unbiased(batches):  # the sample estimate: divides by N - 1
    n, total, squares = 0, 0.0, 0.0
    for x in batches:
        x = x.double()
        n, total, squares = n + x.numel() // x.shape[1], total + x.sum(dim=(0, 2, 3)), squares + (x * x).sum(dim=(0, 2, 3))
    mean = total / n
    return mean.float(), ((squares - n * mean**2) / (n - 1)).sqrt().float()


def stats_keep_everything(batches):  # right numbers, but the whole set in memory
    x = torch.cat(list(batches))
    return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3), unbiased=False)


def stats_all_channels(batches):  # one mean and std for all channels together
    n, total, squares, c = 0, 0.0, 0.0, 0
    for x in batches:
        n, total, squares, c = n + x.numel(), total + x.double().sum(), squares + (x.double() ** 2).sum(), x.shape[1]
    mean = total / n
    return mean.repeat(c).float(), (squares / n - mean**2).sqrt().repeat(c).float()


def pixels_loop(x):
    c, h, w = x.shape
    out = torch.empty(h, w, c, dtype=torch.uint8)
    for i in range(c):
        out[:, :, i] = torch.round((x[i] + 1) * 255 / 2).to(torch.uint8)
    return out


def pixels_view(x):  # the scrambled picture
    c, h, w = x.shape
    return ((x + 1) * 127.5).round().view(h, w, c).to(torch.uint8)


def pixels_truncated(x):  # no rounding
    return ((x + 1) * 127.5).permute(1, 2, 0).to(torch.uint8)


def pixels_float(x):  # right values, wrong dtype
    return ((x + 1) * 127.5).round().permute(1, 2, 0)


def pixels_chw(x):  # channels still first
    return ((x + 1) * 127.5).round().to(torch.uint8)


def shuffle_loop(x, perm):
    flat = x.flatten(2)
    return torch.stack([flat[..., int(p)] for p in perm], dim=-1).reshape(x.shape)


def shuffle_scatter(x, perm):  # the inverse permutation
    flat = x.flatten(2)
    out = torch.empty_like(flat)
    out[..., perm] = flat
    return out.reshape(x.shape)


def shuffle_rows_only(x, perm):  # permutes along one axis only (and crashes where perm is longer)
    return x[..., perm % x.shape[-1]]


CASES = [
    # check, correct answer, wrong answers
    (checks.check_count_shared, shared_loop,
     [shared_python_set, shared_by_sum, shared_pairs, shared_same_position, lambda a, b: 0.5 * len(b)]),
    (checks.check_to_pixels, pixels_loop, [pixels_view, pixels_truncated, pixels_float, pixels_chw]),
    (checks.check_channel_stats, stats_running,
     [stats_mean_of_batches, stats_weighted_stds, stats_unbiased, stats_keep_everything, stats_all_channels]),
    (checks.check_swish_derivative, lambda x: torch.sigmoid(x) * (1 + x * (1 - torch.sigmoid(x))),
     [torch.sigmoid, lambda x: torch.sigmoid(x) * (1 - torch.sigmoid(x)), lambda x: x * torch.sigmoid(x),
      swish_grad_autograd]),
    (checks.check_post_activation_block, PostActivation,
     [PreActivationOrder, SwishBeforeTheSum, NormAfterTheSum, PlainSkip, RenamedPostActivation]),
    (checks.check_group_norm, gn_by_hand,
     [gn_interleaved, gn_unbiased, gn_no_affine, gn_batch_stats]),
    (checks.check_shuffle_pixels, shuffle_loop, [shuffle_scatter, shuffle_rows_only]),
]

test_reference_passes_wrong_fails_stub_not_attempted, test_strict_mode_raises_on_every_wrong_answer = contract_tests(
    CASES, stubs={checks.check_post_activation_block: StubPostActivation})


def test_lenient_block_suppresses_strict(strict, capsys):
    with checks.lenient():
        assert checks.check_count_shared(lambda a, b: 0).status == "fail"
    with pytest.raises(checks.ExerciseFailed):
        checks.check_count_shared(lambda a, b: 0)


def test_failure_messages_say_what_differs(lenient_env):
    msg = checks.check_post_activation_block(SwishBeforeTheSum).message
    assert "output" in msg and "hint" in msg
    msg = checks.check_post_activation_block(RenamedPostActivation).message
    assert "named" in msg
    msg = checks.check_channel_stats(lambda batches: (torch.zeros(1), torch.ones(1))).message
    assert "shape" in msg
    assert "in memory" in checks.check_channel_stats(stats_keep_everything).message
    assert "whole number" in checks.check_count_shared(lambda a, b: 1.5).message
    assert "expected" in checks.check_count_shared(shared_pairs).message
    assert "uint8" in checks.check_to_pixels(pixels_float).message
    msg = checks.check_swish_derivative(lambda x: 1 / 0).message
    assert "ZeroDivisionError" in msg
    assert "autograd" in checks.check_swish_derivative(swish_grad_autograd).message


def test_checks_use_fresh_inputs(monkeypatch, lenient_env):
    seen = []
    checks.check_count_shared(lambda a, b: (seen.append(a.clone()), shared_loop(a, b))[1])
    first = seen[0]
    seen.clear()
    checks.check_count_shared(lambda a, b: (seen.append(a.clone()), shared_loop(a, b))[1])
    assert not torch.equal(first, seen[0])
