"""Chapter 02's new checks (pixels_seen, attention_fixed): the reference passes, plausible wrong answers fail (and
raise in strict mode), stubs are "not attempted"; the find-the-bug check counts the bugs left. (check_shuffle_pixels
is tested in test_checks.py.)"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fftd_course import blocks, checks

from check_contract import chapter_function, contract_tests

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread runs them fastest


def seen_by_probing(block, x, row, col):  # an independent answer: nudge each input pixel, watch the output pixel
    with torch.no_grad():
        base = block(x)[:, :, row, col]
        mask = torch.zeros(x.shape[-2:], dtype=torch.bool)
        for i in range(x.shape[-2]):
            for j in range(x.shape[-1]):
                nudged = x.clone()
                nudged[:, :, i, j] += 1.0
                mask[i, j] = bool((block(nudged)[:, :, row, col] != base).any())
    return mask


def seen_whole_output(block, x, row, col):  # backpropagates every output pixel, not the one asked for
    x = x.detach().clone().requires_grad_(True)
    block(x).sum().backward()
    return x.grad.abs().sum(dim=(0, 1)) > 0


def seen_swapped(block, x, row, col):  # row and column swapped
    x = x.detach().clone().requires_grad_(True)
    block(x)[:, :, col % x.shape[-2], row % x.shape[-1]].sum().backward()
    return x.grad.abs().sum(dim=(0, 1)) > 0


def seen_counts(block, x, row, col):  # right pixels, but a float map of gradient sizes
    x = x.detach().clone().requires_grad_(True)
    block(x)[:, :, row, col].sum().backward()
    return x.grad.abs().sum(dim=(0, 1))


def seen_kernel_guess(block, x, row, col):  # assumes every block is a 3x3 convolution
    mask = torch.zeros(x.shape[-2:], dtype=torch.bool)
    mask[max(row - 1, 0):row + 2, max(col - 1, 0):col + 2] = True
    return mask


def attention_by_loops(block, x):  # an independent answer: one head at a time, tokens last
    b, c, height, width = x.shape
    n, d = block.num_heads, c // block.num_heads
    hn = block.norm(x)
    q, k, v = (conv(hn).flatten(2).transpose(1, 2) for conv in (block.q, block.k, block.v))  # (B, HW, C)
    heads = [F.scaled_dot_product_attention(q[..., i * d:(i + 1) * d], k[..., i * d:(i + 1) * d],
                                            v[..., i * d:(i + 1) * d]) for i in range(n)]
    out = torch.cat(heads, dim=-1).transpose(1, 2).reshape(b, c, height, width)
    return x + block.proj_out(out)


def attention_flawed(full_scale=False, query_softmax=False, token_layout=False):
    """The chapter's function with any of its three bugs switched on (all off: a correct answer)."""

    def fn(block, x):
        b, c, height, width = x.shape
        n, d = block.num_heads, c // block.num_heads
        hn = block.norm(x)
        q, k, v = (conv(hn).view(b, n, d, height * width) for conv in (block.q, block.k, block.v))
        scores = torch.einsum("bhci,bhcj->bhij", q, k) / math.sqrt(c if full_scale else d)
        weights = scores.softmax(dim=2 if query_softmax else 3)
        out = torch.einsum("bhij,bhcj->" + ("bhic" if token_layout else "bhci"), weights, v)
        return x + block.proj_out(out.reshape(b, c, height, width))

    return fn


def attention_no_heads(block, x):  # ignores num_heads: single-head attention with the block's weights
    b, c, height, width = x.shape
    hn = block.norm(x)
    q, k, v = (conv(hn).flatten(2).transpose(1, 2) for conv in (block.q, block.k, block.v))
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, c, height, width)
    return x + block.proj_out(out)


CASES = [
    (checks.check_pixels_seen, seen_by_probing, [seen_whole_output, seen_swapped, seen_counts, seen_kernel_guess]),
    (checks.check_attention_fixed, attention_by_loops,
     [attention_flawed(full_scale=True), attention_flawed(query_softmax=True), attention_flawed(token_layout=True),
      attention_no_heads]),
]

test_reference_passes_wrong_fails_stub_not_attempted, test_strict_mode_raises_on_every_wrong_answer = contract_tests(
    CASES)


def test_the_chapters_answers_pass(lenient_env):
    assert checks.check_pixels_seen(chapter_function("02_attention", "pixels_seen", torch=torch, nn=nn))
    assert checks.check_attention_fixed(chapter_function("02_attention", "attention_fixed", torch=torch, math=math))


def test_the_chapters_buggy_attention_fails_with_one_nudge(lenient_env):
    buggy = chapter_function("02_attention", "buggy_attention", torch=torch, math=math, blocks=blocks)
    result = checks.check_attention_fixed(buggy)
    assert result.status == "fail"
    assert "3 of the 3 bugs" in result.message and result.message.count("nudge") == 1


def test_the_bug_count_follows_the_fixes(lenient_env):
    assert "1 of the 3 bugs" in checks.check_attention_fixed(attention_flawed(query_softmax=True)).message
    assert "2 of the 3 bugs" in checks.check_attention_fixed(
        attention_flawed(full_scale=True, token_layout=True)).message
    assert "the given code had 3 bugs" in checks.check_attention_fixed(attention_no_heads).message  # no match: count unknown
