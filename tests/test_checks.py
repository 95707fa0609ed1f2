"""The exercise checks: reference answers pass, wrong answers fail (and raise in strict mode), stubs are
"not attempted" and never raise."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fftd_course import blocks, checks, viz

from check_contract import contract_tests


# The fixtures `strict` and `lenient_env` come from tests/conftest.py.


class StubResBlock(blocks.ResBlock):
    def forward(self, x):
        raise NotImplementedError


class NoSkipResBlock(blocks.ResBlock):  # the classic mistake: forgetting the skip connection
    def forward(self, x):
        h = self.conv1(blocks.swish(self.norm1(x)))
        return self.conv2(self.dropout(blocks.swish(self.norm2(h))))


class RenamedResBlock(nn.Module):
    def __init__(self, c_in, c_out, num_groups=32):
        super().__init__()
        self.inner = blocks.ResBlock(c_in, c_out, num_groups=num_groups)

    def forward(self, x):
        return self.inner(x)


class BilinearUpsample(blocks.Upsample):
    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="bilinear"))


class NoResidualAttn(blocks.AttnBlock):
    def forward(self, x):
        return super().forward(x) - x


class DetachedSwishGrad:
    def __call__(self, x):
        return (x * torch.sigmoid(x)).detach() + 0 * x  # right values, zero gradient


CASES = [
    # check, correct answer, wrong answers
    (checks.check_to_unit_range, viz.to_unit_range, [lambda x: x + 1, lambda x: (x + 1) / 2 + 1e-3]),
    (checks.check_channel_mean, lambda x: x.mean(dim=(0, 2, 3)), [lambda x: x.mean(dim=(2, 3)), lambda x: x.mean(dim=(0, 1, 2))]),
    (checks.check_swish, lambda x: x * torch.sigmoid(x), [torch.sigmoid, DetachedSwishGrad(), torch.relu]),
    (checks.check_resblock, blocks.ResBlock, [NoSkipResBlock, RenamedResBlock]),
    (checks.check_upsample, blocks.Upsample, [BilinearUpsample]),
    (checks.check_attention_weights, blocks.attention_weights,
     [lambda q, k: torch.softmax(q @ k.transpose(-2, -1), -1), lambda q, k: torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, -2)]),
    (checks.check_attn_block, blocks.AttnBlock, [NoResidualAttn]),
]

test_reference_passes_wrong_fails_stub_not_attempted, test_strict_mode_raises_on_every_wrong_answer = contract_tests(
    CASES, stubs={checks.check_resblock: StubResBlock})


def test_lenient_block_suppresses_strict(strict, capsys):
    with checks.lenient():
        assert checks.check_to_unit_range(lambda x: x).status == "fail"
    with pytest.raises(checks.ExerciseFailed):
        checks.check_to_unit_range(lambda x: x)


def test_failure_messages_say_what_differs(lenient_env):
    msg = checks.check_resblock(NoSkipResBlock).message
    assert "output" in msg and "hint" in msg and "skip" in msg
    msg = checks.check_resblock(RenamedResBlock).message
    assert "named" in msg
    msg = checks.check_channel_mean(lambda x: x.mean(dim=(2, 3))).message
    assert "shape" in msg
    msg = checks.check_swish(lambda x: 1 / 0).message
    assert "ZeroDivisionError" in msg


def test_checks_use_fresh_inputs(monkeypatch, lenient_env):
    seen = []
    checks.check_to_unit_range(lambda x: (seen.append(x.clone()), (x + 1) / 2)[1])
    first = seen[0]
    seen.clear()
    checks.check_to_unit_range(lambda x: (seen.append(x.clone()), (x + 1) / 2)[1])
    assert not torch.equal(first, seen[0])
