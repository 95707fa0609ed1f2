"""Checks for chapter 03 (vector quantization: reviving dead codes, the winner under tiny codes, an EMA codebook step, a
quantizer with the straight-through estimator and L_vq)."""

from __future__ import annotations

from typing import Callable

import torch

from .. import quantize
from .core import Bugs, CheckFailure, CheckResult, compare, fresh_seed, run_check, yours


def check_tiny_code_winner(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> CheckResult:
    """``fn(z, codebook)``: for each row of ``z`` the code that wins the argmin when all codes are tiny, ``(N,)`` int64."""

    def winner(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        # The hidden reference: as every ||e_k|| -> 0, ||z - e_k||^2 = ||z||^2 - 2 z.e_k + ||e_k||^2 is decided by
        # the middle term alone.
        return (z @ codebook.T).argmax(dim=1)

    fn = yours(fn)

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        for n, k, d, scale in [(50, 16, 2, 1.0), (200, 64, 4, 1e-3), (100, 256, 4, 3.0), (30, 8, 3, 1e-6)]:
            z, codes = torch.randn(n, d, generator=g), torch.randn(k, d, generator=g) * scale
            got = fn(z, codes)
            if not isinstance(got, torch.Tensor):
                raise CheckFailure(f"expected a tensor of indices, got {type(got).__name__}")
            if got.dtype != torch.long:
                raise CheckFailure(f"indices must be int64 (torch.long) so that they can index the codebook, got {got.dtype}")
            what = f"winners for z {tuple(z.shape)} and {k} codes of scale {scale:g}"
            if scale >= 1.0 and torch.equal(got, quantize.nearest_code(z, codes)) and not torch.equal(got, winner(z, codes)):
                raise CheckFailure(f"{what}: these are the nearest codes; the exercise wants the rule that the nearest "
                                   "code follows only when the codes are tiny, applied to any codebook")
            if got.shape != (n,):
                raise CheckFailure(f"{what}: shape {tuple(got.shape)}, expected ({n},): one index per row of z")
            if got.min() < 0 or got.max() >= k:
                raise CheckFailure(f"{what}: indices must lie in [0, {k - 1}]")
            want = winner(z, codes)
            # Where two codes tie up to float rounding, either index is right.
            scores = z @ codes.T
            tie = (scores.gather(1, got.unsqueeze(1)) - scores.gather(1, want.unsqueeze(1))).abs().squeeze(1) <= 1e-5 * scale
            wrong = int(((got != want) & ~tie).sum())
            if wrong:
                raise CheckFailure(f"{what}: {wrong} of {n} winners differ from the reference")

    return run_check("winner_when_codes_are_tiny", trial,
                     hint="expand the squared distance of section 1: which of its three terms is the same for every "
                          "code, and which one vanishes as the codes shrink? The winner is decided by what is left.",
                     forbid=["fftd_course.quantize.nearest_code", "fftd_course.quantize.VectorQuantizer.snap",
                             "fftd_course.quantize.VectorQuantizer.forward"])


def check_ema_codebook_step(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]) -> CheckResult:
    """``fn(codebook, z, indices, decay)`` moves each chosen code a fraction ``1 - decay`` towards the mean of its vectors."""

    def ema_step(codebook: torch.Tensor, z: torch.Tensor, indices: torch.Tensor, decay: float) -> torch.Tensor:  # hidden
        k = codebook.shape[0]
        counts = torch.bincount(indices, minlength=k).to(z.dtype)
        means = torch.zeros_like(codebook).index_add_(0, indices, z) / counts.clamp_min(1)[:, None]
        return torch.where(counts[:, None] > 0, decay * codebook + (1 - decay) * means, codebook)

    fn = yours(fn)

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        for k, n, d, decay in [(8, 20, 2, 0.9), (32, 10, 4, 0.5), (5, 50, 3, 0.0), (64, 200, 4, 0.99)]:
            codebook, z = torch.randn(k, d, generator=g), torch.randn(n, d, generator=g)
            indices = torch.randint(0, max(1, k // 2), (n,), generator=g)  # the upper half of the codes is never chosen
            before = codebook.clone()
            got = fn(codebook, z.clone(), indices.clone(), decay)
            if not torch.equal(codebook, before):
                raise CheckFailure("the codebook passed in was modified: return a new tensor and leave the input as it was")
            compare(got, ema_step(before, z, indices, decay), f"{k} codes, {n} vectors, decay {decay}")

    return run_check("ema_codebook_step", trial,
                     hint="a code that no vector chose must not move; a chosen code moves towards the MEAN (not the sum) "
                          "of its vectors, and decay weighs the OLD code. Which of the three does the report contradict?",
                     # the package's k-means step (the mean of each code's vectors) and its weight EMA
                     forbid=["fftd_course.quantize.kmeans", "fftd_course.pipeline.EMA.update"])


def check_vq_straight_through(fn: Callable[[torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]) -> CheckResult:
    """``fn(z_e, codebook, beta)`` returns ``(z_q, loss)`` like :class:`fftd_course.quantize.VectorQuantizer`.

    ``z_q`` must carry the straight-through gradient to ``z_e``; ``loss = ||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2``
    (means). Values and the gradients reaching ``z_e`` and the codebook are compared. A find-the-bug exercise with
    two bugs, each with its own sub-test: the layout (beta = 1, where the two terms weigh alike) and beta (a 1x1
    latent, which every layout reads alike).
    """
    fn = yours(fn)

    def one_case(shape: tuple[int, ...], k: int, beta: float, g: torch.Generator) -> None:
        z = torch.randn(shape, generator=g)
        codebook = torch.randn(k, shape[1], generator=g)
        weight = torch.randn(shape, generator=g)
        reference = quantize.VectorQuantizer(k, shape[1], beta=beta)
        with torch.no_grad():
            reference.codebook.copy_(codebook)
        z_ref = z.clone().requires_grad_(True)
        out = reference(z_ref)
        ((out.z_q * weight).sum() + out.loss).backward()

        z_l, codes_l = z.clone().requires_grad_(True), codebook.clone().requires_grad_(True)
        result = fn(z_l, codes_l, beta)
        if not isinstance(result, tuple) or len(result) != 2:
            raise CheckFailure("return a tuple (z_q, loss)")
        z_q, loss = result
        what = f"z_e {shape}, {k} codes, beta={beta}"
        compare(z_q, out.z_q.detach(), f"{what}: z_q")
        compare(torch.as_tensor(loss).reshape(()), out.loss.detach(), f"{what}: loss")
        ((z_q * weight).sum() + loss).backward()
        if z_l.grad is None:
            raise CheckFailure(f"{what}: no gradient reached z_e: z_q needs the straight-through form z_e + (e - z_e).detach()")
        compare(z_l.grad, z_ref.grad, f"{what}: gradient reaching z_e (straight-through plus beta * commitment)")
        if codes_l.grad is None:
            raise CheckFailure(f"{what}: no gradient reached the codebook: the codebook term ||sg[z_e] - e||^2 moves the codes")
        compare(codes_l.grad, reference.codebook.grad, f"{what}: gradient reaching the codebook (codebook term only)")

    def fails(shape: tuple[int, ...], k: int, beta: float) -> int:
        try:
            one_case(shape, k, beta, torch.Generator().manual_seed(fresh_seed()))
        except Exception:
            return 1
        return 0

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        for shape, k, beta in [((2, 3, 4, 4), 8, 0.25), ((1, 4, 2, 5), 32, 0.5), ((3, 2, 1, 1), 5, 1.0)]:
            one_case(shape, k, beta, g)

    return run_check("vq_straight_through", trial, bugs=Bugs(2, nudges=(
        "is each row of C numbers that meets the codebook one latent position's channels? Try a latent whose "
        "channels differ a lot from each other.",
        "which of the two terms of L_vq carries beta (section 3), and which gradient, the codebook's or the "
        "encoder's, does that weight change?",
        "the latent is (B, C, H, W) and a code has C numbers: which axis must be last before the rows are cut, "
        "and is every vector put back where it came from?",
        "with beta = 1 the two terms weigh alike and this bug hides: compare the gradient reaching the codebook "
        "with the one reaching z_e for beta = 0.25."),
        remaining=lambda: fails((2, 3, 4, 4), 8, 1.0) + fails((3, 4, 1, 1), 8, 0.25)),
        forbid=["fftd_course.quantize.VectorQuantizer.forward", "fftd_course.quantize.VectorQuantizer.snap",
                "fftd_course.quantize.straight_through", "fftd_course.quantize.vq_losses"])


def check_revive_dead_codes(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]
                            ) -> CheckResult:
    """``fn(codebook, counts, candidates, generator)``: a new codebook in which every code with count 0 sits on its
    own candidate drawn at random (without replacement, with ``generator``), the used codes unchanged."""
    fn = yours(fn)

    def call(codebook: torch.Tensor, counts: torch.Tensor, candidates: torch.Tensor, seed: int) -> torch.Tensor:
        given = (codebook.clone(), counts.clone(), candidates.clone())
        got = fn(codebook, counts, candidates, torch.Generator().manual_seed(seed))
        if not all(torch.equal(a, b) for a, b in zip(given, (codebook, counts, candidates))):
            raise CheckFailure("your function modified its inputs; return a new codebook and leave the given one as "
                               "it was")
        if not isinstance(got, torch.Tensor) or got.shape != codebook.shape or got.dtype != codebook.dtype:
            raise CheckFailure(f"return a {tuple(codebook.shape)} {codebook.dtype} codebook, got "
                               f"{tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__}"
                               f"{' ' + str(got.dtype) if isinstance(got, torch.Tensor) else ''}")
        return got

    def one_case(k: int, d: int, n: int, dead: int, g: torch.Generator) -> None:
        codebook = torch.randn(k, d, generator=g)
        counts = torch.randint(1, 50, (k,), generator=g)
        counts[torch.randperm(k, generator=g)[:dead]] = 0
        candidates = torch.randn(n, d, generator=g) * 3 + 5  # far from every code: a moved code shows
        seed = int(torch.randint(2**31, (), generator=g))
        got = call(codebook, counts, candidates, seed)
        live, gone = counts > 0, counts == 0
        what = f"{k} codes, {dead} of them unused, {n} candidates"
        if not torch.equal(got[live], codebook[live]):
            raise CheckFailure(f"{what}: {int((got[live] != codebook[live]).any(1).sum())} codes that were used "
                               "moved; only the unused ones (count 0) should")
        if not dead:
            return
        match = (got[gone][:, None, :] == candidates[None]).all(-1)  # (dead, n): which candidate each revived code is
        if not match.any(1).all():
            raise CheckFailure(f"{what}: {int((~match.any(1)).sum())} unused codes are not exactly on a candidate")
        picked = match.float().argmax(1)
        if picked.unique().numel() < dead:
            raise CheckFailure(f"{what}: {dead - picked.unique().numel()} candidates were given to two codes or more; "
                               "two identical codes waste one of them")
        if not torch.equal(call(codebook, counts, candidates, seed), got):
            raise CheckFailure(f"{what}: the same generator seed gave another codebook; draw with the generator "
                               "you are given")
        if n > dead + 1 and all(torch.equal(call(codebook, counts, candidates, seed + i), got) for i in (1, 2, 3)):
            raise CheckFailure(f"{what}: four generator seeds gave the same codebook; draw the candidates at random "
                               "with the generator")

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        for k, d, n, dead in [(16, 3, 40, 6), (32, 4, 11, 10), (8, 2, 20, 0), (12, 4, 12, 12), (64, 4, 200, 50)]:
            one_case(k, d, n, dead, g)

    return run_check("revive_dead_codes", trial,
                     hint="which codes are dead is written in counts; each dead code needs a different candidate "
                          "(a random draw without replacement, from the generator you are given), and the codes in "
                          "use must not move. Work on a copy.",
                     forbid=["fftd_course.quantize.VectorQuantizer.replace_dead_codes_now",
                             "fftd_course.quantize.VectorQuantizer.maintain"])
