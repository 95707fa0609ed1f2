"""Checks for chapter 03 (vector quantization: perplexity, the winner under tiny codes, an EMA codebook step, a
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


def check_perplexity(fn: Callable[[torch.Tensor, int], object]) -> CheckResult:
    """``fn(indices, num_codes)`` returns ``exp(entropy)`` of the code histogram (a float or a 0-d tensor)."""
    fn = yours(fn)

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        cases = [
            (torch.randint(0, 16, (4, 4, 4), generator=g), 16),
            (torch.randint(0, 3, (50,), generator=g), 512),  # few codes used in a large codebook
            (torch.zeros(2, 4, 4, dtype=torch.long), 8),  # total collapse: perplexity 1
            (torch.arange(64).view(4, 4, 4), 64),  # every code once: perplexity 64
        ]
        for indices, num_codes in cases:
            got = fn(indices.clone(), num_codes)
            try:
                got = torch.as_tensor(got, dtype=torch.float64).reshape(())
            except (TypeError, RuntimeError, ValueError):
                raise CheckFailure(f"return one number (a float or a 0-d tensor), got {type(got).__name__}") from None
            want = torch.tensor(quantize.codebook_usage(indices, num_codes).perplexity, dtype=torch.float64)
            compare(got, want, f"perplexity of indices {tuple(indices.shape)} over {num_codes} codes", atol=1e-4, rtol=1e-4)

    return run_check("perplexity", trial,
                     hint="p_k is a fraction of ALL indices (every dimension), codes with p_k = 0 contribute nothing "
                          "(0 log 0 is taken as 0), and the answer is exp of the entropy, not the entropy itself.",
                     forbid=["fftd_course.quantize.codebook_usage", "fftd_course.quantize._batch_perplexity",
                             "fftd_course.quantize.Quantizer.usage"])
