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
    return F.group_norm(x, groups, None, None, eps)


def gn_batch_stats(x, groups, weight, bias, eps=1e-6):  # statistics over the batch too
    b, c, h, w = x.shape
    g = x.reshape(b, groups, c // groups, h, w)
    mean, var = g.mean(dim=(0, 2, 3, 4), keepdim=True), g.var(dim=(0, 2, 3, 4), keepdim=True, unbiased=False)
    return ((g - mean) / torch.sqrt(var + eps)).reshape(b, c, h, w) * weight.view(1, c, 1, 1) + bias.view(1, c, 1, 1)


class NoResidualAttn(blocks.AttnBlock):
    def forward(self, x):
        return super().forward(x) - x


CASES = [
    # check, correct answer, wrong answers
    (checks.check_to_unit_range, viz.to_unit_range, [lambda x: x + 1, lambda x: (x + 1) / 2 + 1e-3]),
    (checks.check_channel_mean, lambda x: x.mean(dim=(0, 2, 3)), [lambda x: x.mean(dim=(2, 3)), lambda x: x.mean(dim=(0, 1, 2))]),
    (checks.check_swish_derivative, lambda x: torch.sigmoid(x) * (1 + x * (1 - torch.sigmoid(x))),
     [torch.sigmoid, lambda x: torch.sigmoid(x) * (1 - torch.sigmoid(x)), lambda x: x * torch.sigmoid(x),
      swish_grad_autograd]),
    (checks.check_single_unit_resblock, SingleUnit,
     [SingleUnitNoSkip, SingleUnitConvFirst, SingleUnitPlainSkip, SingleUnitRelu, RenamedSingleUnit]),
    (checks.check_group_norm, lambda x, groups, w, b, eps: F.group_norm(x, groups, w, b, eps),
     [gn_interleaved, gn_unbiased, gn_no_affine, gn_batch_stats]),
    (checks.check_attention_weights, blocks.attention_weights,
     [lambda q, k: torch.softmax(q @ k.transpose(-2, -1), -1), lambda q, k: torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, -2)]),
    (checks.check_attn_block, blocks.AttnBlock, [NoResidualAttn]),
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
