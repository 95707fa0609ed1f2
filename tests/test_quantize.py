"""Unit tests for fftd_course.quantize: nearest codes, straight-through gradient, L_vq terms, usage,
dead-code replacement, l2 codes, k-means, FSQ, and clear errors."""

import math

import pytest
import torch
from torch import nn

from fftd_course import quantize
from fftd_course.quantize import FiniteScalarQuantizer, VectorQuantizer, codebook_usage


def _vq(num_codes=8, dim=3, seed=0, **kw) -> VectorQuantizer:
    torch.manual_seed(seed)
    vq = VectorQuantizer(num_codes, dim, **kw)
    with torch.no_grad():
        vq.codebook.normal_()  # spread-out codes, so that the tests see many different indices
    return vq


def test_nearest_code_matches_cdist_also_in_blocks(monkeypatch):
    g = torch.Generator().manual_seed(1)
    z, codes = torch.randn(300, 5, generator=g), torch.randn(40, 5, generator=g)
    want = torch.cdist(z.double(), codes.double()).argmin(dim=1)
    assert torch.equal(quantize.nearest_code(z, codes), want)
    monkeypatch.setattr(quantize, "_DISTANCE_BLOCK", 7 * 40)  # 7 rows per block, a ragged last block
    assert torch.equal(quantize.nearest_code(z, codes), want)
    assert quantize.nearest_code(z[:0], codes).shape == (0,)


def test_forward_shapes_values_and_lookup():
    vq = _vq(num_codes=16, dim=4)
    z = torch.randn(2, 4, 3, 5)
    out = vq(z)
    assert out.z_q.shape == z.shape and out.indices.shape == (2, 3, 5) and out.indices.dtype == torch.long
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    want_idx = torch.cdist(flat, vq.codebook.detach()).argmin(1).reshape(2, 3, 5)
    assert torch.equal(out.indices, want_idx)
    want_zq = vq.codebook.detach()[want_idx].permute(0, 3, 1, 2)
    torch.testing.assert_close(out.z_q, want_zq)
    torch.testing.assert_close(vq.lookup(out.indices), want_zq)
    z_snap, idx_snap = vq.snap(z)
    assert torch.equal(idx_snap, out.indices)
    torch.testing.assert_close(z_snap, want_zq)


def test_straight_through_gradient_equals_gradient_at_quantized_output():
    vq = _vq(num_codes=10, dim=3)
    z_e = torch.randn(2, 3, 4, 4, requires_grad=True)
    w = torch.randn(2, 3, 4, 4)
    out = vq(z_e)
    # A decoder-like loss that is not linear, so that its gradient depends on where it is evaluated.
    (out.z_q**2 * w).sum().backward()
    z_q = out.z_q.detach()
    torch.testing.assert_close(z_e.grad, 2 * z_q * w)  # d/dz_q of sum(w z_q^2), evaluated at z_q
    assert not torch.allclose(z_e.grad, 2 * z_e.detach() * w)  # ... and not at z_e
    # The functional form copies the gradient unchanged as well.
    a = torch.randn(5, requires_grad=True)
    quantize.straight_through(a, torch.zeros(5)).mul(torch.arange(5.0)).sum().backward()
    torch.testing.assert_close(a.grad, torch.arange(5.0))


def test_loss_terms_are_placed_as_stated():
    beta = 0.3
    vq = _vq(num_codes=6, dim=2, beta=beta)
    z_e = torch.randn(3, 2, 2, 2, requires_grad=True)
    out = vq(z_e)
    flat = z_e.detach().permute(0, 2, 3, 1).reshape(-1, 2)
    e = vq.codebook.detach()[out.indices.reshape(-1)]
    n = flat.numel()
    torch.testing.assert_close(out.codebook_loss, ((e - flat) ** 2).sum() / n)
    torch.testing.assert_close(out.commitment_loss, ((e - flat) ** 2).sum() / n)
    torch.testing.assert_close(out.loss, (1 + beta) * out.codebook_loss)
    out.loss.backward()
    # The encoder sees only beta * commitment: d/dz_e beta ||z_e - sg[e]||^2 / n.
    grad_z = (2 * beta * (flat - e) / n).reshape(3, 2, 2, 2).permute(0, 3, 1, 2)
    torch.testing.assert_close(z_e.grad, grad_z)
    # The codes see only the codebook term (weight 1, not beta): d/de ||sg[z_e] - e||^2 / n, summed per code.
    grad_codes = torch.zeros(6, 2).index_add_(0, out.indices.reshape(-1), 2 * (e - flat) / n)
    torch.testing.assert_close(vq.codebook.grad, grad_codes)


def test_vq_losses_stop_gradients():
    z_e = torch.randn(4, 3, requires_grad=True)
    z_q = torch.randn(4, 3, requires_grad=True)
    codebook, commitment = quantize.vq_losses(z_e, z_q)
    (g_e,) = torch.autograd.grad(codebook, z_e, allow_unused=True, materialize_grads=True)
    assert torch.count_nonzero(g_e) == 0
    (g_q,) = torch.autograd.grad(commitment, z_q, allow_unused=True, materialize_grads=True)
    assert torch.count_nonzero(g_q) == 0


def test_codebook_usage_against_independent_count():
    idx = torch.tensor([[0, 0, 3], [3, 3, 7]])
    u = codebook_usage(idx, 10)
    assert u.distinct == 3 and u.total == 6 and u.counts.tolist() == [2, 0, 0, 3, 0, 0, 0, 1, 0, 0]
    p = [2 / 6, 3 / 6, 1 / 6]
    assert u.perplexity == pytest.approx(math.exp(-sum(q * math.log(q) for q in p)))
    assert u.fraction_used == pytest.approx(0.3)
    assert codebook_usage(torch.arange(16), 16).perplexity == pytest.approx(16)
    assert codebook_usage(torch.zeros(50, dtype=torch.long), 16).perplexity == pytest.approx(1)
    assert codebook_usage(torch.arange(16), 16).bits_per_code == pytest.approx(4)
    assert codebook_usage(torch.empty(0, dtype=torch.long), 4).distinct == 0


def test_batch_perplexity_matches_codebook_usage():
    vq = _vq(num_codes=12, dim=2)
    out = vq(torch.randn(4, 2, 5, 5))
    assert out.perplexity.item() == pytest.approx(codebook_usage(out.indices, 12).perplexity, rel=1e-5)


def test_usage_window_keeps_the_last_assignments_of_training_only():
    vq = VectorQuantizer(4, 1, usage_window=6)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0], [10.0], [20.0], [30.0]]))
    batch = lambda *codes: torch.tensor([10.0 * c for c in codes]).view(1, 1, 1, -1)  # noqa: E731
    vq(batch(0, 0, 1, 1))
    assert vq.usage().counts.tolist() == [2, 2, 0, 0]
    vq(batch(2, 3, 3, 3))  # 8 assignments seen, the window keeps the last 6
    assert vq.usage().counts.tolist() == [0, 2, 1, 3] and vq.usage().total == 6
    vq.eval()
    vq(batch(0, 0, 0, 0))  # evaluation does not count
    assert vq.usage().counts.tolist() == [0, 2, 1, 3]
    vq.train()
    vq(batch(*([0] * 10)))  # a batch bigger than the window
    assert vq.usage().counts.tolist() == [6, 0, 0, 0]
    vq.reset_usage()
    assert vq.usage().total == 0


def _train_collapsing_setup(replace_dead_codes: bool, steps: int = 150) -> tuple[int, int]:
    """Linear encoder and decoder around 256 codes on 4-d Gaussian data, with taming's tiny initial codebook:
    plain VQ funnels everything into a few codes. Returns (distinct codes on fresh data, codes replaced)."""
    torch.manual_seed(0)
    enc, dec = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)
    vq = VectorQuantizer(256, 4, replace_dead_codes=replace_dead_codes, usage_window=512)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters(), *vq.parameters()], lr=1e-2)
    data = torch.randn(4096, 4)
    for _ in range(steps):
        x = data[torch.randint(len(data), (64,))].view(4, 4, 4, 4).permute(0, 3, 1, 2)  # (B, C, H, W), 16 per image
        out = vq(enc(x))
        loss = ((dec(out.z_q) - x) ** 2).mean() + out.loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    vq.eval()
    with torch.no_grad():
        out = vq(enc(torch.randn(64, 4, 4, 4)))
    return codebook_usage(out.indices, 256).distinct, int(vq.replaced_total)


def test_dead_code_replacement_raises_distinct_codes_where_plain_vq_collapses():
    plain, replaced_plain = _train_collapsing_setup(False)
    fixed, replaced = _train_collapsing_setup(True)
    assert replaced_plain == 0 and replaced > 0
    assert plain <= 32, f"the setup should collapse without replacement, used {plain} of 256"
    assert fixed >= 4 * plain and fixed >= 192, (plain, fixed)


def test_dead_codes_come_from_the_buffer_of_recent_outputs_not_only_the_batch():
    vq = VectorQuantizer(32, 2, replace_dead_codes=True, usage_window=64, buffer_size=64)
    with torch.no_grad():
        vq.codebook.zero_()
    first = torch.full((1, 2, 4, 8), 5.0)  # 32 assignments, all to code 0
    second = torch.full((1, 2, 4, 8), -5.0)  # 32 more: the window is full, the check runs after this batch
    vq(first)
    vq(second)
    rows = vq.codebook.detach()
    assert int(vq.replaced_total) == 31  # every code but code 0 was dead
    moved = rows[1:]
    assert ((moved == 5.0).all(dim=1) | (moved == -5.0).all(dim=1)).all()
    assert (moved == 5.0).all(dim=1).any() and (moved == -5.0).all(dim=1).any()  # drawn from both batches
    assert int(vq.counts_since_check.sum()) == 0


def test_replacement_inside_forward_keeps_backward_working():
    vq = _vq(num_codes=16, dim=3, l2_normalize=True, replace_dead_codes=True, usage_window=8)
    z = torch.randn(2, 3, 2, 2, requires_grad=True)
    out = vq(z)  # 8 assignments: the check runs inside this forward and moves unused codes
    assert int(vq.replaced_total) > 0
    (out.z_q.sum() + out.loss).backward()
    assert z.grad is not None and vq.codebook.grad is not None


def test_l2_normalised_codes_and_cosine_assignment():
    vq = _vq(num_codes=9, dim=3, l2_normalize=True)
    z = torch.randn(2, 3, 4, 4) * 5
    out = vq(z)
    torch.testing.assert_close(out.z_q.norm(dim=1), torch.ones(2, 4, 4))
    flat = torch.nn.functional.normalize(z.permute(0, 2, 3, 1).reshape(-1, 3), dim=1)
    codes = torch.nn.functional.normalize(vq.codebook.detach(), dim=1)
    assert torch.equal(out.indices.reshape(-1), (flat @ codes.T).argmax(1))
    assert torch.equal(vq.snap(z * 0.01)[1], out.indices)  # the norm of a sample does not matter


def test_kmeans_converges_to_a_lloyd_fixed_point_that_beats_its_start():
    g = torch.Generator().manual_seed(3)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    x = centres.repeat_interleave(50, 0) + torch.randn(200, 2, generator=g)
    start = quantize.kmeans(x, 6, iters=0, generator=torch.Generator().manual_seed(4))
    found = quantize.kmeans(x, 6, iters=50, generator=torch.Generator().manual_seed(4))

    def inertia(c):
        return torch.cdist(x, c).min(dim=1).values.pow(2).sum()

    assert inertia(found) < inertia(start)
    # Independent check of the fixed point: each centre is the mean of the points nearest to it.
    assign = torch.cdist(x, found).argmin(dim=1)
    for k in assign.unique():
        torch.testing.assert_close(found[k], x[assign == k].mean(dim=0), atol=1e-4, rtol=1e-4)
    many = quantize.kmeans(x[:2], 5, iters=3)  # fewer points than codes still gives 5 finite centres
    assert many.shape == (5, 2) and torch.isfinite(many).all()
    unit = quantize.kmeans(x + 1, 4, normalize=True)
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(4))


def test_kmeans_init_runs_on_the_first_training_batch_only():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 2, kmeans_init=True)
    assert not bool(vq.initialized)
    vq.eval()
    vq(torch.randn(1, 2, 4, 4) + 100)
    assert not bool(vq.initialized)  # evaluation does not initialise
    vq.train()
    z = torch.randn(2, 2, 8, 8) + 100
    vq(z)
    assert bool(vq.initialized)
    assert (vq.codebook.detach() - 100).abs().max() < 5  # the codes moved onto the data
    before = vq.codebook.detach().clone()
    vq(z - 200)
    assert torch.equal(vq.codebook.detach(), before)


def test_state_dict_round_trip_carries_usage_and_buffers():
    vq = _vq(num_codes=8, dim=2, replace_dead_codes=True, usage_window=100)
    vq(torch.randn(2, 2, 3, 3))
    clone = VectorQuantizer(8, 2, replace_dead_codes=True, usage_window=100)
    clone.load_state_dict(vq.state_dict())
    assert torch.equal(clone.usage().counts, vq.usage().counts)
    assert torch.equal(clone.recent_z, vq.recent_z)


def test_fsq_codes_grid_lookup_and_snap():
    fsq = FiniteScalarQuantizer((16, 16, 8, 8))
    assert fsq.num_codes == 16384 and fsq.dim == 4
    every = torch.arange(16384).view(1, 128, 128)
    grid = fsq.lookup(every)  # (1, 4, 128, 128)
    # Independent decoding of the mixed-radix index: digit_i = (index // prod(levels[:i])) % levels[i].
    levels, basis = [16, 16, 8, 8], [1, 16, 256, 2048]
    for c, (levels_c, b) in enumerate(zip(levels, basis)):
        digit = (every // b) % levels_c
        torch.testing.assert_close(grid[:, c], (digit - levels_c // 2).float() / (levels_c // 2))
    z_q, idx = fsq.snap(grid)
    assert torch.equal(idx, every) and torch.equal(z_q, grid)
    assert len({tuple(v) for v in grid.reshape(4, -1).T.tolist()}) == 16384  # all codes distinct


def test_fsq_forward_rounds_bounded_values_with_straight_through_gradient():
    fsq = FiniteScalarQuantizer((5, 4))
    z = (torch.randn(3, 2, 4, 4) * 3).requires_grad_(True)
    out = fsq(z)
    assert out.loss.item() == 0 and out.z_q.shape == z.shape
    assert set(out.z_q[:, 0].detach().unique().tolist()) <= {-1.0, -0.5, 0.0, 0.5, 1.0}
    assert set(out.z_q[:, 1].detach().unique().tolist()) <= {-1.0, -0.5, 0.0, 0.5}
    torch.testing.assert_close(fsq.lookup(out.indices), out.z_q.detach())
    out.z_q.sum().backward()
    # Straight-through rounding: the gradient is that of bound(z) / (L // 2), not zero.
    z2 = z.detach().clone().requires_grad_(True)
    (fsq.bound(z2) / torch.tensor([2.0, 2.0]).view(1, 2, 1, 1)).sum().backward()
    torch.testing.assert_close(z.grad, z2.grad)
    assert torch.equal(FiniteScalarQuantizer((5, 4)).bound(torch.zeros(1, 2, 1, 1)).round(), torch.zeros(1, 2, 1, 1))


def test_fsq_snap_clamps_outside_values_and_records_usage_in_training():
    fsq = FiniteScalarQuantizer((4, 4), usage_window=16)
    z_q, idx = fsq.snap(torch.tensor([[[[5.0]], [[-5.0]]]]))
    torch.testing.assert_close(z_q.view(-1), torch.tensor([0.5, -1.0]))
    fsq(torch.randn(2, 2, 2, 2))
    assert fsq.usage().total == 8
    fsq.eval()
    fsq(torch.randn(2, 2, 2, 2))
    assert fsq.usage().total == 8


@pytest.mark.parametrize("make, match", [
    (lambda: VectorQuantizer(0, 4), "positive"),
    (lambda: VectorQuantizer(8, 4, beta=-1), "beta"),
    (lambda: VectorQuantizer(8, 4, dead_code_threshold=0), "dead_code_threshold"),
    (lambda: VectorQuantizer(8, 4, usage_window=0), "usage_window"),
    (lambda: FiniteScalarQuantizer((8, 1)), "levels"),
    (lambda: FiniteScalarQuantizer(()), "levels"),
])
def test_bad_construction_is_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("quantizer", [VectorQuantizer(8, 4), FiniteScalarQuantizer((2, 2, 2, 2))])
def test_bad_inputs_get_clear_errors(quantizer):
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        quantizer(torch.randn(4, 4))
    with pytest.raises(ValueError, match="channels"):
        quantizer(torch.randn(1, 3, 2, 2))
    with pytest.raises(ValueError, match=r"\[0, 15\]|\[0, 7\]"):
        quantizer.lookup(torch.full((1, 2, 2), 99))
    with pytest.raises(ValueError, match="integer"):
        quantizer.lookup(torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        quantizer.lookup(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="channels"):
        quantizer.snap(torch.randn(1, 5, 2, 2))


def test_usage_and_nearest_code_errors():
    with pytest.raises(ValueError, match="integer"):
        codebook_usage(torch.zeros(3), 4)
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        codebook_usage(torch.tensor([4]), 4)
    with pytest.raises(ValueError, match="same D"):
        quantize.nearest_code(torch.randn(3, 2), torch.randn(4, 3))
    with pytest.raises(ValueError, match="init_codebook"):
        VectorQuantizer(4, 2).init_codebook(torch.randn(5, 3))
