"""Unit tests for fftd_course.blocks (eq. 1-10): shapes, numerics against independent code, gradients."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fftd_course import blocks


def test_swish_matches_definition_and_gradient():
    x = torch.linspace(-6, 6, 101, dtype=torch.float64, requires_grad=True)
    y = blocks.swish(x)
    torch.testing.assert_close(y, x * torch.sigmoid(x))
    (g,) = torch.autograd.grad(y.sum(), x)
    s = torch.sigmoid(x)
    torch.testing.assert_close(g, s + x * s * (1 - s))  # d/dx x*sigmoid(x)
    assert torch.equal(blocks.Swish()(x), y)


def test_group_norm_normalises_each_sample_and_group():
    gn = blocks.group_norm(8, num_groups=4)
    assert gn.eps == 1e-6 and gn.num_groups == 4
    x = torch.randn(3, 8, 5, 5) * 7 + 3
    y = gn(x).view(3, 4, -1)
    torch.testing.assert_close(y.mean(-1), torch.zeros(3, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(-1, unbiased=False), torch.ones(3, 4), atol=1e-3, rtol=0)


def test_group_norm_same_in_train_and_eval_and_at_batch_one():
    gn = blocks.group_norm(16, 8)
    x = torch.randn(4, 16, 3, 3)
    out_batch = gn(x)
    out_single = torch.cat([gn(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(out_batch, out_single)
    gn.eval()
    torch.testing.assert_close(gn(x), out_batch)


@pytest.mark.parametrize("channels, groups", [(30, 32), (10, 4), (0, 1)])
def test_group_norm_rejects_bad_sizes(channels, groups):
    with pytest.raises(ValueError, match="group"):
        blocks.group_norm(channels, groups)


def _reference_resblock(block: blocks.ResBlock, x: torch.Tensor) -> torch.Tensor:
    """Independent computation of the VQGAN residual block with the same weights."""
    def unit(norm, conv, h):
        h = F.group_norm(h, norm.num_groups, norm.weight, norm.bias, norm.eps)
        h = h * torch.sigmoid(h)
        return F.conv2d(h, conv.weight, conv.bias, padding=1)

    h = unit(block.norm1, block.conv1, x)
    h = unit(block.norm2, block.conv2, h)
    skip = x if isinstance(block.shortcut, nn.Identity) else F.conv2d(x, block.shortcut.weight, block.shortcut.bias)
    return skip + h


@pytest.mark.parametrize("c_in, c_out", [(16, 16), (16, 32), (32, 8)])
def test_resblock_matches_independent_computation(c_in, c_out):
    torch.manual_seed(0)
    block = blocks.ResBlock(c_in, c_out, num_groups=8)
    x = torch.randn(2, c_in, 6, 10)
    y = block(x)
    assert y.shape == (2, c_out, 6, 10)
    torch.testing.assert_close(y, _reference_resblock(block, x))
    assert isinstance(block.shortcut, nn.Identity) == (c_in == c_out)


def test_resblock_with_zeroed_residual_is_identity_and_passes_gradient():
    block = blocks.ResBlock(8, 8, num_groups=4)
    nn.init.zeros_(block.conv2.weight), nn.init.zeros_(block.conv2.bias)
    x = torch.randn(1, 8, 4, 4, requires_grad=True)
    y = block(x)
    torch.testing.assert_close(y, x)
    (g,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g, torch.ones_like(x))  # the skip carries the gradient unchanged


def test_resblock_gradients_reach_every_parameter():
    block = blocks.ResBlock(8, 16, num_groups=4)
    block(torch.randn(2, 8, 4, 4)).square().mean().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_resblock_input_errors():
    block = blocks.ResBlock(8, num_groups=4)
    with pytest.raises(ValueError, match="8 channels"):
        block(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="B, C, H, W"):
        block(torch.randn(8, 4, 4))
    with pytest.raises(ValueError, match="dropout"):
        blocks.ResBlock(8, dropout=1.5, num_groups=4)


def test_downsample_halves_and_matches_conv():
    down = blocks.Downsample(4)
    x = torch.randn(2, 4, 8, 6)
    y = down(x)
    assert y.shape == (2, 4, 4, 3)
    torch.testing.assert_close(y, F.conv2d(x, down.conv.weight, down.conv.bias, stride=2, padding=1))


def test_downsample_rejects_odd_sizes_with_advice():
    with pytest.raises(ValueError, match="even"):
        blocks.Downsample(4)(torch.randn(1, 4, 7, 8))


def test_upsample_doubles_with_nearest_then_conv():
    up = blocks.Upsample(3)
    x = torch.randn(2, 3, 2, 3)
    y = up(x)
    assert y.shape == (2, 3, 4, 6)
    nearest = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # independent nearest x2
    torch.testing.assert_close(y, F.conv2d(nearest, up.conv.weight, up.conv.bias, padding=1))


def test_up_down_gradients_flow():
    x = torch.randn(1, 4, 8, 8, requires_grad=True)
    blocks.Upsample(4)(blocks.Downsample(4)(x)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_attention_weights_match_explicit_softmax():
    q, k = torch.randn(2, 5, 3, dtype=torch.float64), torch.randn(2, 7, 3, dtype=torch.float64)
    w = blocks.attention_weights(q, k)
    assert w.shape == (2, 5, 7)
    scores = torch.einsum("bic,bjc->bij", q, k) / math.sqrt(3)
    expected = scores.exp() / scores.exp().sum(-1, keepdim=True)
    torch.testing.assert_close(w, expected)
    with pytest.raises(ValueError, match="channel"):
        blocks.attention_weights(q, torch.randn(2, 7, 4))


def test_attention_weights_half_precision_does_not_overflow():
    q = torch.full((1, 4, 8), 30.0, dtype=torch.bfloat16)
    w = blocks.attention_weights(q, q)
    assert torch.isfinite(w).all()
    torch.testing.assert_close(w.float().sum(-1), torch.ones(1, 4), atol=1e-2, rtol=0)


def _reference_attention(block: blocks.AttnBlock, x: torch.Tensor) -> torch.Tensor:
    """Eq. 8-10 written out with loops over the batch and explicit matrices."""
    b, c, h, w = x.shape
    n = block.norm
    hn = F.group_norm(x, n.num_groups, n.weight, n.bias, n.eps)
    outs = []
    for i in range(b):
        flat = hn[i].reshape(c, h * w)  # (C, HW)
        q = block.q.weight.view(c, c) @ flat + block.q.bias[:, None]
        k = block.k.weight.view(c, c) @ flat + block.k.bias[:, None]
        v = block.v.weight.view(c, c) @ flat + block.v.bias[:, None]
        weights = torch.softmax(q.T @ k / math.sqrt(c), dim=1)  # (HW, HW)
        o = (weights @ v.T).T  # (C, HW)
        outs.append(block.proj_out.weight.view(c, c) @ o + block.proj_out.bias[:, None])
    return x + torch.stack(outs).view(b, c, h, w)


def test_attn_block_matches_explicit_equations():
    torch.manual_seed(0)
    block = blocks.AttnBlock(8, num_groups=4)
    x = torch.randn(3, 8, 4, 5)
    y = block(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, _reference_attention(block, x), atol=1e-5, rtol=1e-4)


def test_attn_block_map_rows_sum_to_one_and_multihead_shapes():
    block = blocks.AttnBlock(8, num_heads=2, num_groups=4)
    x = torch.randn(2, 8, 3, 3)
    maps = block.attention_map(x)
    assert maps.shape == (2, 2, 9, 9)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 2, 9))
    q, k, v = block.qkv(x)
    manual = (maps @ v).transpose(-2, -1).reshape(2, 8, 3, 3)
    torch.testing.assert_close(block(x), x + block.proj_out(manual), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="num_heads"):
        blocks.AttnBlock(8, num_heads=3, num_groups=4)


def test_attn_block_gradients():
    block = blocks.AttnBlock(8, num_groups=4)
    x = torch.randn(1, 8, 4, 4, requires_grad=True)
    block(x).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in block.named_parameters():
        assert p.grad is not None, name
