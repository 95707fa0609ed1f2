"""Checks for chapter 05 (the IVQ-VAE trained end to end, Algorithm 1)."""

from __future__ import annotations

import copy
from typing import Callable

import torch

from ..ivqvae import IVQVAE, get_config
from ..losses import HybridLoss, NLayerDiscriminator
from ..pipeline import ivqvae_step, stage1_optimizers
from .core import CheckFailure, CheckResult, compare, fresh_seed, run_check


def _tiny_model(seed: int) -> IVQVAE:
    torch.manual_seed(seed)
    return IVQVAE(get_config("toy-f8", ch=8, num_codes=32))


def check_reconstruct(fn: Callable[[IVQVAE, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]) -> CheckResult:
    """``fn(model, x)`` returns ``(x_hat, vq_loss)``: encode, quantize, decode (Algorithm 1's forward pass)."""

    def trial() -> None:
        seed = fresh_seed()
        model = _tiny_model(seed).eval()  # eval: the quantizer keeps its codebook as it is
        for shape in [(2, 3, 32, 32), (1, 3, 16, 24)]:
            x = torch.rand(shape) * 2 - 1
            got = fn(model, x)
            if not isinstance(got, tuple) or len(got) != 2:
                raise CheckFailure("return a pair (x_hat, vq_loss)")
            x_hat, q = model(x)
            compare(got[0], x_hat, f"x_hat for a {shape} batch")
            compare(got[1], q.loss, f"vq_loss for a {shape} batch")
            model.zero_grad()
            got[0].square().mean().backward()
            grad = model.encoder.conv_in.weight.grad
            if grad is None or not grad.abs().sum() > 0:
                raise CheckFailure("no gradient reached the encoder: decode the quantizer's straight-through z_q, "
                                   "not the plain nearest codes")

    return run_check("reconstruct", trial,
                     hint="three parts in the order of Algorithm 1; the quantizer returns several things: which one "
                          "carries the straight-through gradient (chapter 03), and which one is L_vq?")


def check_training_step(fn: Callable[..., dict]) -> CheckResult:
    """``fn(model, loss, opt_ae, opt_d, x, step)`` does what :func:`fftd_course.pipeline.ivqvae_step` does."""

    def trial() -> None:
        seed = fresh_seed()
        model = _tiny_model(seed)
        loss = HybridLoss(discriminator=NLayerDiscriminator(ndf=8, n_layers=2), perceptual_weight=0.0, disc_start=1)
        mine_model, mine_loss = copy.deepcopy(model), copy.deepcopy(loss)
        ref_opts, my_opts = stage1_optimizers(model, loss, lr=1e-3), stage1_optimizers(mine_model, mine_loss, lr=1e-3)
        g = torch.Generator().manual_seed(seed)
        batches = [torch.rand(4, 3, 32, 32, generator=g) * 2 - 1 for _ in range(3)]
        for step, x in enumerate(batches):  # step 0: autoencoder only; steps 1-2: the discriminator too
            torch.manual_seed(seed + step)
            ivqvae_step(model, loss, *ref_opts, x, step)
            torch.manual_seed(seed + step)
            fn(mine_model, mine_loss, *my_opts, x, step)
            for (name, want), got in zip(model.named_parameters(), mine_model.parameters()):
                compare(got.detach(), want.detach(), f"after step {step}, autoencoder parameter {name}", atol=1e-5)
            for (name, want), got in zip(loss.discriminator.named_parameters(), mine_loss.discriminator.parameters()):
                compare(got.detach(), want.detach(), f"after step {step}, discriminator parameter {name}", atol=1e-5)

    return run_check("training_step", trial,
                     hint="four questions. Does every term of eq. 15 reach the autoencoder's loss (which one trains the "
                          "codebook)? When are old gradients cleared, relative to backward and the optimizer's step? "
                          "Are the discriminator's gradients ever cleared? What does the discriminator's loss return "
                          "before its start step (E11)?")


def _reference_code_influence(model: IVQVAE, indices: torch.Tensor, row: int, col: int, new_code: int) -> torch.Tensor:
    with torch.no_grad():
        before = model.decode_indices(indices)
        after = model.decode_indices(torch.where(
            (torch.arange(indices.shape[1]).view(-1, 1) == row) & (torch.arange(indices.shape[2]) == col),
            torch.full_like(indices, new_code), indices))
    return (after - before).abs().mean(dim=1)


def check_code_influence(fn: Callable[[IVQVAE, torch.Tensor, int, int, int], torch.Tensor]) -> CheckResult:
    """``fn(model, indices, row, col, new_code)``: the per-pixel change ``(B, H, W)`` when one code is replaced."""

    def trial() -> None:
        seed = fresh_seed()
        model = _tiny_model(seed).eval()
        g = torch.Generator().manual_seed(seed)
        for batch, row, col in [(3, 0, 0), (2, 1, 3), (1, 3, 2)]:  # row != col: rows and columns must not be swapped
            indices = torch.randint(0, 32, (batch, 4, 4), generator=g)
            new_code = int((indices[0, row, col] + 1 + torch.randint(0, 30, (), generator=g)) % 32)
            original = indices.clone()
            got = fn(model, indices, row, col, new_code)
            if not torch.equal(indices, original):
                raise CheckFailure("your function changed the caller's indices; edit a copy")
            compare(got, _reference_code_influence(model, indices, row, col, new_code),
                    f"change map for {batch} grid(s), code ({row}, {col}) replaced by {new_code}")

    return run_check("code_influence", trial,
                     hint="decode the grid twice, once as given and once with the one entry (row, col) of every image "
                          "replaced; which quantity is per pixel, and over which dimension do you average?")
