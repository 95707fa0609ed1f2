"""fusion: AdaptiveFusion (eq. 18-25, errata E1/E2), AddFusion and ConcatFusion behind one interface."""

import pytest
import torch

from fftd_course import fusion
from fftd_course.fusion import AdaptiveFusion, AddFusion, ConcatFusion, make_fusion

KINDS = fusion.FUSIONS


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("L", [1, 4, 16])
def test_shapes_and_gradients_for_every_kind_and_grid(kind, L):
    torch.manual_seed(0)
    f = make_fusion(kind, 32)
    # Perturb the zero-initialised layers so that every parameter lies on a gradient path.
    with torch.no_grad():
        for p in f.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x1 = torch.randn(3, L, 32, requires_grad=True)
    x2 = torch.randn(3, L, 32, requires_grad=True)
    out = f(x1, x2)
    assert out.shape == (3, L, 32)
    out.square().mean().backward()
    assert x1.grad.abs().sum() > 0 and x2.grad.abs().sum() > 0
    for name, p in f.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if not (kind == "adaptive" and L == 1 and name.startswith("spatial_gate.") and name.endswith("weight")):
            assert p.grad.abs().sum() > 0, name


def test_fresh_adaptive_fusion_is_the_mean_of_the_normalised_inputs():
    torch.manual_seed(1)
    f = AdaptiveFusion(48)
    x1, x2 = torch.randn(2, 16, 48) * 3 + 1, torch.randn(2, 16, 48) - 2
    assert torch.equal(f.channel_weights(x1, x2), torch.full((2, 1, 48), 0.5))
    assert torch.equal(f.spatial_weights(x1, x2), torch.full((2, 16, 1), 0.5))
    ln = torch.nn.functional.layer_norm
    torch.testing.assert_close(f(x1, x2), (ln(x1, (48,)) + ln(x2, (48,))) / 2)


def test_fresh_concat_fusion_is_the_mean_and_add_is_the_sum():
    x1, x2 = torch.randn(2, 4, 16), torch.randn(2, 4, 16)
    torch.testing.assert_close(ConcatFusion(16)(x1, x2), (x1 + x2) / 2)
    assert torch.equal(AddFusion(16)(x1, x2), x1 + x2)
    assert sum(p.numel() for p in AddFusion(16).parameters()) == 0


def test_errata_e1_max_pool_and_e2_widths():
    torch.manual_seed(2)
    f = AdaptiveFusion(64)
    assert f.channel_gate[0].in_features == 4 * 64  # E2: concat of two 2D-wide pooled vectors
    assert f.channel_gate[0].out_features == 64 // 16 and f.channel_gate[-1].out_features == 64
    assert isinstance(f.channel_gate[1], torch.nn.ReLU)
    assert [m.out_channels for m in f.spatial_gate if isinstance(m, torch.nn.Conv2d)] == [16, 16, 1]
    # E1: the gate depends on the maximum over tokens, not only on the mean.
    with torch.no_grad():
        for p in f.channel_gate.parameters():
            p.normal_()
    x1, x2 = torch.zeros(1, 4, 64), torch.zeros(1, 4, 64)
    y1 = x1.clone()
    y1[0, 0, 0], y1[0, 1, 0] = 2.0, -2.0  # same mean over tokens, different max
    assert not torch.allclose(f.channel_weights(x1, x2), f.channel_weights(y1, x2))


def test_spatial_gate_sees_the_token_grid_in_row_major_order():
    x = torch.arange(2 * 16 * 3, dtype=torch.float32).reshape(2, 16, 3)
    grid = fusion.tokens_to_grid(x)
    assert grid.shape == (2, 3, 4, 4)
    assert grid[1, 2, 1, 3] == x[1, 1 * 4 + 3, 2]
    assert torch.equal(fusion.grid_to_tokens(grid), x)


@pytest.mark.parametrize("kind", KINDS)
def test_bad_inputs_get_clear_errors(kind):
    f = make_fusion(kind, 8)
    with pytest.raises(ValueError, match="same shape"):
        f(torch.randn(1, 4, 8), torch.randn(1, 9, 8))
    with pytest.raises(ValueError, match="built for D = 8"):
        f(torch.randn(1, 4, 6), torch.randn(1, 4, 6))
    with pytest.raises(ValueError, match="same shape"):
        f(torch.randn(4, 8), torch.randn(4, 8))


def test_non_square_token_count_is_refused():
    with pytest.raises(ValueError, match="square grid"):
        AdaptiveFusion(8)(torch.randn(1, 6, 8), torch.randn(1, 6, 8))


def test_unknown_kind_and_bad_width():
    with pytest.raises(ValueError, match="choose one of"):
        make_fusion("multiply", 8)
    with pytest.raises(ValueError, match="positive integer"):
        AdaptiveFusion(0)
