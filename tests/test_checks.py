"""The exercise checks: reference answers pass, wrong answers fail (and raise in strict mode), stubs are
"not attempted" and never raise."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fftd_course import blocks, checks, viz

from check_contract import contract_tests


# The fixtures `strict` and `lenient_env` come from tests/conftest.py.


class StubSingleUnit(nn.Module):
    def __init__(self, c_in, c_out, num_groups=32):
        super().__init__()
        self.norm1 = blocks.group_norm(c_in, num_groups)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.shortcut = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x):
        raise NotImplementedError


class SingleUnit(StubSingleUnit):  # an independent answer: eq. 2 as printed
    def forward(self, x):
        return self.shortcut(x) + self.conv1(F.silu(self.norm1(x)))


class SingleUnitNoSkip(StubSingleUnit):  # the classic mistake: forgetting the skip connection
    def forward(self, x):
        return self.conv1(F.silu(self.norm1(x)))


class SingleUnitConvFirst(StubSingleUnit):  # eq. 2 read from the outside in
    def forward(self, x):
        return self.shortcut(x) + F.silu(self.norm1(self.conv1(x)))


class SingleUnitPlainSkip(StubSingleUnit):  # adds x even when the channel count changes (crashes there)
    def forward(self, x):
        return x + self.conv1(F.silu(self.norm1(x)))


class SingleUnitRelu(StubSingleUnit):
    def forward(self, x):
        return self.shortcut(x) + self.conv1(F.relu(self.norm1(x)))


class RenamedSingleUnit(nn.Module):
    def __init__(self, c_in, c_out, num_groups=32):
        super().__init__()
        self.inner = SingleUnit(c_in, c_out, num_groups=num_groups)

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


def standardize_loop(x):  # an independent answer, channel by channel
    out = torch.empty_like(x)
    for c in range(x.shape[1]):
        ch = x[:, c]
        out[:, c] = (ch - ch.mean()) / (ch - ch.mean()).pow(2).mean().sqrt()
    return out


def standardize_per_image(x):  # statistics per image and channel
    return (x - x.mean(dim=(2, 3), keepdim=True)) / x.std(dim=(2, 3), keepdim=True, unbiased=False)


def standardize_unbiased(x):
    return (x - x.mean(dim=(0, 2, 3), keepdim=True)) / x.std(dim=(0, 2, 3), keepdim=True)


def standardize_mean_only(x):
    return x - x.mean(dim=(0, 2, 3), keepdim=True)


def standardize_whole_batch(x):  # one mean and std for all channels
    return (x - x.mean()) / x.std(unbiased=False)


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


def heads_loop(x, n):  # an independent answer: slice the channels head by head
    d = x.shape[-1] // n
    return torch.stack([x[..., i * d:(i + 1) * d] for i in range(n)], dim=1)


def heads_view_only(x, n):  # reshapes straight to (B, n, N, d): mixes tokens and channels
    b, t, c = x.shape
    return x.reshape(b, n, t, c // n)


def heads_interleaved(x, n):  # head i gets channels i, i + n, i + 2n, ...
    b, t, c = x.shape
    return x.view(b, t, c // n, n).permute(0, 3, 1, 2)


def heads_not_moved(x, n):  # (B, N, n, d): right groups, wrong axis order
    b, t, c = x.shape
    return x.view(b, t, n, c // n)


def mha_loop(q, k, v, n):
    d = q.shape[-1] // n
    outs = []
    for i in range(n):
        qi, ki, vi = (t[..., i * d:(i + 1) * d] for t in (q, k, v))
        outs.append(torch.softmax(qi @ ki.transpose(-2, -1) / d ** 0.5, dim=-1) @ vi)
    return torch.cat(outs, dim=-1)


def mha_full_width_scale(q, k, v, n):  # scales every head by sqrt(C) instead of sqrt(C / n)
    return mha_loop(q * (1 / n) ** 0.5, k, v, n)


def mha_bad_merge(q, k, v, n):  # heads merged without moving the head axis back
    heads = F.scaled_dot_product_attention(heads_loop(q, n), heads_loop(k, n), heads_loop(v, n))
    return heads.reshape(q.shape[0], q.shape[1], -1)


def mha_single_head(q, k, v, n):  # ignores num_heads
    return F.scaled_dot_product_attention(q, k, v)


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
    (checks.check_to_unit_range, lambda x: (x + 1) / 2, [lambda x: x + 1, lambda x: (x + 1) / 2 + 1e-3]),
    (checks.check_standardize_channels, standardize_loop,
     [standardize_per_image, standardize_unbiased, standardize_mean_only, standardize_whole_batch]),
    (checks.check_to_pixels, pixels_loop, [pixels_view, pixels_truncated, pixels_float, pixels_chw]),
    (checks.check_swish_derivative, lambda x: torch.sigmoid(x) * (1 + x * (1 - torch.sigmoid(x))),
     [torch.sigmoid, lambda x: torch.sigmoid(x) * (1 - torch.sigmoid(x)), lambda x: x * torch.sigmoid(x),
      swish_grad_autograd]),
    (checks.check_single_unit_resblock, SingleUnit,
     [SingleUnitNoSkip, SingleUnitConvFirst, SingleUnitPlainSkip, SingleUnitRelu, RenamedSingleUnit]),
    (checks.check_group_norm, gn_by_hand,
     [gn_interleaved, gn_unbiased, gn_no_affine, gn_batch_stats]),
    (checks.check_split_heads, heads_loop, [heads_view_only, heads_interleaved, heads_not_moved]),
    (checks.check_multi_head_attention, mha_loop, [mha_full_width_scale, mha_bad_merge, mha_single_head]),
    (checks.check_shuffle_pixels, shuffle_loop, [shuffle_scatter, shuffle_rows_only]),
]

test_reference_passes_wrong_fails_stub_not_attempted, test_strict_mode_raises_on_every_wrong_answer = contract_tests(
    CASES, stubs={checks.check_single_unit_resblock: StubSingleUnit})


def test_lenient_block_suppresses_strict(strict, capsys):
    with checks.lenient():
        assert checks.check_to_unit_range(lambda x: x).status == "fail"
    with pytest.raises(checks.ExerciseFailed):
        checks.check_to_unit_range(lambda x: x)


def test_failure_messages_say_what_differs(lenient_env):
    msg = checks.check_single_unit_resblock(SingleUnitNoSkip).message
    assert "output" in msg and "hint" in msg
    msg = checks.check_single_unit_resblock(RenamedSingleUnit).message
    assert "named" in msg
    msg = checks.check_standardize_channels(lambda x: x.mean(dim=(2, 3))).message
    assert "shape" in msg
    assert "uint8" in checks.check_to_pixels(pixels_float).message
    msg = checks.check_swish_derivative(lambda x: 1 / 0).message
    assert "ZeroDivisionError" in msg
    assert "autograd" in checks.check_swish_derivative(swish_grad_autograd).message


def test_checks_use_fresh_inputs(monkeypatch, lenient_env):
    seen = []
    checks.check_to_unit_range(lambda x: (seen.append(x.clone()), (x + 1) / 2)[1])
    first = seen[0]
    seen.clear()
    checks.check_to_unit_range(lambda x: (seen.append(x.clone()), (x + 1) / 2)[1])
    assert not torch.equal(first, seen[0])
