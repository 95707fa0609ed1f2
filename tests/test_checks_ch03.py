"""Chapter 03's exercise checks: the reference answers pass, plausible wrong answers fail (and raise in strict
mode), and stubs are reported as "not attempted"."""


import torch
import torch.nn.functional as F

from fftd_course import checks, quantize

from check_contract import contract_tests

# The fixtures `strict` and `lenient_env` come from tests/conftest.py.


# ---- exercise 2: the winner under tiny codes ---------------------------------------------------------

def winner_loop(z, codebook):  # an independent answer written the slow, obvious way
    return torch.tensor([max(range(len(codebook)), key=lambda k: float(row @ codebook[k])) for row in z])


def winner_nearest(z, codebook):  # the true nearest code: equal for tiny codes, not for large ones
    return torch.cdist(z, codebook).argmin(dim=1)  # (by hand: the package's nearest_code is switched off here)


def winner_smallest_dot(z, codebook):  # the sign turned around
    return (z @ codebook.T).argmin(dim=1)


def winner_longest_code(z, codebook):  # "the outermost code" without looking at z
    return codebook.norm(dim=1).argmax().repeat(len(z))


def winner_float(z, codebook):  # right indices, wrong dtype
    return (z @ codebook.T).argmax(dim=1).float()


# ---- exercise 3: EMA codebook step ------------------------------------------------------------------

def ema_loop(codebook, z, indices, decay):
    new = codebook.clone()
    for k in range(len(codebook)):
        mine = z[indices == k]
        if len(mine):
            new[k] = decay * codebook[k] + (1 - decay) * mine.mean(0)
    return new


def ema_moves_unused(codebook, z, indices, decay):  # unused codes are pulled towards 0
    n = torch.bincount(indices, minlength=len(codebook)).float().clamp_min(1)
    means = torch.zeros_like(codebook).index_add_(0, indices, z) / n[:, None]
    return decay * codebook + (1 - decay) * means


def ema_sum_not_mean(codebook, z, indices, decay):
    sums = torch.zeros_like(codebook).index_add_(0, indices, z)
    used = torch.bincount(indices, minlength=len(codebook))[:, None] > 0
    return torch.where(used, decay * codebook + (1 - decay) * sums, codebook)


def ema_decay_swapped(codebook, z, indices, decay):
    return ema_loop(codebook, z, indices, 1 - decay)


def ema_in_place(codebook, z, indices, decay):  # right values, but the caller's codebook is overwritten
    codebook.copy_(ema_loop(codebook, z, indices, decay))
    return codebook


# ---- exercise 4: straight-through + L_vq (the fixed quantizer) -------------------------------------------------------------

def _rows(z_e, codebook):
    b, c, h, w = z_e.shape
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, c)
    e = codebook[quantize.nearest_code(flat, codebook)]
    return flat, e, (b, h, w, c)


def _back(t, shape):
    b, h, w, c = shape
    return t.reshape(b, h, w, c).permute(0, 3, 1, 2)


def vq_reference(z_e, codebook, beta):
    flat, e, shape = _rows(z_e, codebook)
    loss = F.mse_loss(e, flat.detach()) + beta * F.mse_loss(flat, e.detach())
    return _back(flat + (e - flat).detach(), shape), loss


def vq_legacy_beta(z_e, codebook, beta):  # taming's legacy placement: beta on the codebook term
    flat, e, shape = _rows(z_e, codebook)
    loss = beta * F.mse_loss(e, flat.detach()) + F.mse_loss(flat, e.detach())
    return _back(flat + (e - flat).detach(), shape), loss


def vq_no_straight_through(z_e, codebook, beta):  # the decoder's gradient never reaches the encoder
    flat, e, shape = _rows(z_e, codebook)
    loss = F.mse_loss(e, flat.detach()) + beta * F.mse_loss(flat, e.detach())
    return _back(e, shape), loss


def vq_no_stop_gradient(z_e, codebook, beta):  # both terms move both sides
    flat, e, shape = _rows(z_e, codebook)
    loss = F.mse_loss(e, flat) + beta * F.mse_loss(flat, e)
    return _back(flat + (e - flat).detach(), shape), loss


def vq_wrong_layout(z_e, codebook, beta):  # flattens (B, C, H, W) without moving C last
    b, c, h, w = z_e.shape
    flat = z_e.reshape(-1, c)
    e = codebook[quantize.nearest_code(flat, codebook)]
    loss = F.mse_loss(e, flat.detach()) + beta * F.mse_loss(flat, e.detach())
    return (flat + (e - flat).detach()).reshape(b, c, h, w), loss


# ---- exercise 1: reviving dead codes ---------------------------------------------------------------

def revive_loop(codebook, counts, candidates, generator):  # an independent answer: one dead code at a time
    order = torch.randperm(len(candidates), generator=generator).tolist()
    revived = codebook.clone()
    for k in range(len(codebook)):
        if counts[k] == 0:
            revived[k] = candidates[order.pop(0)]
    return revived


def revive_live_ones(codebook, counts, candidates, generator):  # the mask the wrong way round
    return revive_loop(codebook, (counts == 0).long(), candidates, generator)


def revive_with_replacement(codebook, counts, candidates, generator):  # two codes may land on one candidate
    dead = counts == 0
    revived = codebook.clone()
    revived[dead] = candidates[torch.randint(len(candidates), (int(dead.sum()),), generator=generator)]
    return revived


def revive_first_candidates(codebook, counts, candidates, generator):  # no randomness: the oldest outputs only
    dead = counts == 0
    revived = codebook.clone()
    revived[dead] = candidates[: int(dead.sum())]
    return revived


def revive_in_place(codebook, counts, candidates, generator):  # moves the caller's codes
    dead = counts == 0
    codebook[dead] = candidates[torch.randperm(len(candidates), generator=generator)[: int(dead.sum())]]
    return codebook


def revive_global_rng(codebook, counts, candidates, generator):  # ignores the generator it was given
    dead = counts == 0
    revived = codebook.clone()
    revived[dead] = candidates[torch.randperm(len(candidates))[: int(dead.sum())]]
    return revived


CASES = [
    (checks.check_tiny_code_winner, winner_loop,
     [winner_nearest, winner_smallest_dot, winner_longest_code, winner_float]),
    (checks.check_ema_codebook_step, ema_loop, [ema_moves_unused, ema_sum_not_mean, ema_decay_swapped, ema_in_place]),
    (checks.check_vq_straight_through, vq_reference,
     [vq_legacy_beta, vq_no_straight_through, vq_no_stop_gradient, vq_wrong_layout]),
    (checks.check_revive_dead_codes, revive_loop,
     [revive_live_ones, revive_with_replacement, revive_first_candidates, revive_in_place, revive_global_rng]),
]

test_reference_passes_wrong_fails_stub_not_attempted, test_strict_mode_raises_on_every_wrong_answer = contract_tests(
    CASES)


def test_failure_messages_say_what_differs(lenient_env):
    assert "gradient reaching z_e" in checks.check_vq_straight_through(vq_legacy_beta).message
    assert "straight-through" in checks.check_vq_straight_through(vq_no_straight_through).message
    assert "int64" in checks.check_tiny_code_winner(winner_float).message
    assert "nearest codes" in checks.check_tiny_code_winner(winner_nearest).message
    assert "modified" in checks.check_ema_codebook_step(ema_in_place).message
    assert "two codes or more" in checks.check_revive_dead_codes(revive_with_replacement).message
    assert "at random" in checks.check_revive_dead_codes(revive_first_candidates).message
    assert "modified its inputs" in checks.check_revive_dead_codes(revive_in_place).message
    assert "used moved" in checks.check_revive_dead_codes(revive_live_ones).message
