"""Checks for chapter 03 (vector quantization: nearest code, straight-through estimator, L_vq, perplexity)."""

from __future__ import annotations

from typing import Callable

import torch

from ..quantize import VectorQuantizer, codebook_usage, nearest_code
from .core import CheckFailure, CheckResult, compare, fresh_seed, run_check


def check_nearest_code(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> CheckResult:
    """``fn(z, codebook)`` returns the index of the nearest code (Euclidean) for every row: ``(N, D), (K, D) -> (N,)``."""

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        for n, k, d in [(10, 4, 2), (64, 16, 4), (33, 256, 3)]:
            z, codes = torch.randn(n, d, generator=g), torch.randn(k, d, generator=g)
            got = fn(z, codes)
            if not isinstance(got, torch.Tensor):
                raise CheckFailure(f"expected a tensor of indices, got {type(got).__name__}")
            if got.dtype != torch.long:
                raise CheckFailure(f"indices must be int64 (torch.long) so that they can index the codebook, got {got.dtype}")
            compare(got, nearest_code(z, codes), f"nearest codes for z {tuple(z.shape)} and a codebook {tuple(codes.shape)}", atol=0, rtol=0)

    return run_check("nearest_code_indices", trial,
                     hint="distances (N, K) = ((z[:, None, :] - codebook[None]) ** 2).sum(-1), then argmin over the codes (dim 1).")


def check_vq_straight_through(fn: Callable[[torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]) -> CheckResult:
    """``fn(z_e, codebook, beta)`` returns ``(z_q, loss)`` like :class:`fftd_course.quantize.VectorQuantizer`.

    ``z_q`` must carry the straight-through gradient to ``z_e``; ``loss = ||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2``
    (means). Values and the gradients reaching ``z_e`` and the codebook are compared.
    """

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        for shape, k, beta in [((2, 3, 4, 4), 8, 0.25), ((1, 4, 2, 5), 32, 0.5), ((3, 2, 1, 1), 5, 1.0)]:
            z = torch.randn(shape, generator=g)
            codebook = torch.randn(k, shape[1], generator=g)
            weight = torch.randn(shape, generator=g)
            reference = VectorQuantizer(k, shape[1], beta=beta)
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

    return run_check("vq_straight_through", trial,
                     hint="e = codebook[indices]; loss = mse(e, z_e.detach()) + beta * mse(z_e, e.detach()); "
                          "z_q = z_e + (e - z_e).detach(). Work on (B*H*W, C) rows and reshape back to (B, C, H, W).")


def check_perplexity(fn: Callable[[torch.Tensor, int], object]) -> CheckResult:
    """``fn(indices, num_codes)`` returns ``exp(entropy)`` of the code histogram (a float or a 0-d tensor)."""

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
            want = torch.tensor(codebook_usage(indices, num_codes).perplexity, dtype=torch.float64)
            compare(got, want, f"perplexity of indices {tuple(indices.shape)} over {num_codes} codes", atol=1e-4, rtol=1e-4)

    return run_check("perplexity", trial,
                     hint="p = bincount(indices.flatten(), minlength=num_codes) / indices.numel(); "
                          "entropy = -(p * log p) over the codes with p > 0; perplexity = exp(entropy).")
