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
                     hint="z = model.encode(x); q = model.quantize(z); return model.decode(q.z_q), q.loss")


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
                     hint="forward, loss(x, x_hat, step, vq_loss=..., last_layer=model.last_layer), zero_grad/backward/"
                          "step for the autoencoder; then loss.discriminator_loss(x, x_hat, step) and, if it is not None, "
                          "the same three calls for the discriminator.")
