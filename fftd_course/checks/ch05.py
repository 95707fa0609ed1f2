"""Checks for chapter 05 (the IVQ-VAE trained end to end, Algorithm 1)."""

from __future__ import annotations

import copy
from typing import Callable

import torch

from .. import pipeline
from ..ivqvae import IVQVAE, get_config
from ..losses import HybridLoss, NLayerDiscriminator
from .core import Bugs, CheckFailure, CheckResult, compare, fresh_seed, run_check, yours


def _tiny_model(seed: int) -> IVQVAE:
    torch.manual_seed(seed)
    return IVQVAE(get_config("toy-f8", ch=8, num_codes=32))


def check_forward_fixed(fn: Callable[[IVQVAE, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]) -> CheckResult:
    """``fn(model, x)`` returns ``(x_hat, vq_loss)`` as ``model(x)`` does, with the same gradients: the reconstruction's
    reaches the encoder (straight through the quantizer), L_vq's reaches the codebook.

    A find-the-bug exercise with three bugs, each with a sub-test: the reconstruction's values, the encoder's
    gradient from the reconstruction, the codebook's gradient from L_vq.
    """
    fn = yours(fn)

    def run(model: IVQVAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        got = fn(model, x.clone())
        if not isinstance(got, tuple) or len(got) != 2 or not all(isinstance(t, torch.Tensor) for t in got):
            raise CheckFailure("return a pair of tensors (x_hat, vq_loss)")
        return got

    def grads(model: IVQVAE, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's first convolution's and the codebook's gradient of ``output`` (zeros where none arrives)."""
        model.zero_grad()
        if output.requires_grad:
            output.backward(retain_graph=True)
        params = (model.encoder.conv_in.weight, model.quantizer.codebook)
        return tuple(p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params)

    def setup(seed: int, shape: tuple[int, ...] = (2, 3, 16, 16)):
        model = _tiny_model(seed).eval()  # eval: the quantizer keeps its codebook as it is
        return model, torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1

    def values_differ(model, x, got) -> bool:
        with torch.no_grad():
            want = model(x)[0]
        return got[0].shape != want.shape or not torch.allclose(got[0], want, atol=1e-5, rtol=1e-4)

    def no_encoder_gradient(model, got) -> bool:
        return not grads(model, got[0].square().mean())[0].abs().sum() > 0

    def no_codebook_gradient(model, got) -> bool:
        return not grads(model, got[1].reshape(()))[1].abs().sum() > 0

    def remaining() -> int:
        model, x = setup(fresh_seed())
        got = run(model, x)
        return int(values_differ(model, x, got)) + int(no_encoder_gradient(model, got)) + int(
            no_codebook_gradient(model, got))

    def trial() -> None:
        seed = fresh_seed()
        for shape in [(2, 3, 16, 16), (1, 3, 16, 24)]:
            model, x = setup(seed, shape)
            got = run(model, x)
            x_hat, q = model(x)
            compare(got[0], x_hat, f"x_hat for a {shape} batch")
            compare(got[1].reshape(()), q.loss.reshape(()), f"vq_loss for a {shape} batch")
            if no_encoder_gradient(model, got):
                raise CheckFailure("the values match, but no gradient of x_hat reaches the encoder")
            for i, (mine, want) in enumerate(zip(grads(model, got[1].reshape(())), grads(model, q.loss))):
                compare(mine, want, f"the gradient of vq_loss reaching the {('encoder', 'codebook')[i]}")
            for i, (mine, want) in enumerate(zip(grads(model, (got[0] - x).abs().mean()),
                                                 grads(model, (x_hat - x).abs().mean()))):
                compare(mine, want, f"the gradient of the L1 loss reaching the {('encoder', 'codebook')[i]}")

    return run_check(
        "forward_fixed", trial,
        bugs=Bugs(3, nudges=(
            "compare the range of the images the encoder receives with the range this chapter's data already has.",
            "the quantizer hands back more than one version of the chosen codes: which one lets the reconstruction's "
            "gradient pass to the encoder (chapter 03, section 2)?",
            "L_vq is a loss the training step minimises (eq. 15): which part of the model can it still train in "
            "the form it is returned?"), remaining=remaining),
        forbid=["fftd_course.ivqvae.IVQVAE.forward"])


def check_training_step(fn: Callable[..., dict]) -> CheckResult:
    """``fn(model, loss, opt_ae, opt_d, x, step)`` does what :func:`fftd_course.pipeline.ivqvae_step` does.

    A find-the-bug exercise with four bugs; each has a sub-test: after one step before ``disc_start``, the
    answer has not crashed, the decoder (which only the reconstruction terms train) and the codebook (which
    only L_vq trains) match the package's; with the autoencoder frozen (learning rate 0), the discriminator
    matches after its second step. (A step that never updates the autoencoder also leaves the codebook where
    it was: the codebook's sub-test then counts as failing.)
    """
    fn = yours(fn)

    def setup(seed: int, ae_lr: float = 1e-3):
        model = _tiny_model(seed)
        loss = HybridLoss(discriminator=NLayerDiscriminator(ndf=8, n_layers=2), perceptual_weight=0.0, disc_start=1)
        mine_model, mine_loss = copy.deepcopy(model), copy.deepcopy(loss)
        ref_opts, my_opts = (pipeline.stage1_optimizers(m, l, lr=1e-3) for m, l in ((model, loss), (mine_model, mine_loss)))
        for opt_ae, _ in (ref_opts, my_opts):
            for group in opt_ae.param_groups:
                group["lr"] = ae_lr
        return (model, loss, ref_opts), (mine_model, mine_loss, my_opts)

    def step_both(ref, mine, x: torch.Tensor, step: int, seed: int) -> None:
        torch.manual_seed(seed + step)
        pipeline.ivqvae_step(ref[0], ref[1], *ref[2], x, step)
        torch.manual_seed(seed + step)
        fn(mine[0], mine[1], *mine[2], x, step)

    def same(got, want) -> bool:
        return all(torch.allclose(a.detach(), b.detach(), atol=1e-5, rtol=1e-4) for a, b in zip(got, want))

    def remaining() -> int:
        seed = fresh_seed()
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
        ref, mine = setup(seed)
        try:
            step_both(ref, mine, x, 0, seed)
            crash = 0
        except Exception:  # what the step changed before it crashed still counts below
            crash = 1
        decoder = not same(mine[0].decoder.parameters(), ref[0].decoder.parameters())
        codebook = not same([mine[0].quantizer.codebook], [ref[0].quantizer.codebook])
        ref, mine = setup(seed, ae_lr=0.0)
        try:
            for step in (1, 2):
                step_both(ref, mine, x if step == 1 else x.flip(0), step, seed)
            disc = not same(mine[1].discriminator.parameters(), ref[1].discriminator.parameters())
        except Exception:
            disc = True
        return crash + int(decoder) + int(codebook) + int(disc)

    def trial() -> None:
        seed = fresh_seed()
        (model, loss, ref_opts), (mine_model, mine_loss, my_opts) = setup(seed)
        g = torch.Generator().manual_seed(seed)
        batches = [torch.rand(4, 3, 32, 32, generator=g) * 2 - 1 for _ in range(3)]
        for step, x in enumerate(batches):  # step 0: autoencoder only; steps 1-2: the discriminator too
            step_both((model, loss, ref_opts), (mine_model, mine_loss, my_opts), x, step, seed)
            for (name, want), got in zip(model.named_parameters(), mine_model.parameters()):
                compare(got.detach(), want.detach(), f"after step {step}, autoencoder parameter {name}", atol=1e-5)
            for (name, want), got in zip(loss.discriminator.named_parameters(), mine_loss.discriminator.parameters()):
                compare(got.detach(), want.detach(), f"after step {step}, discriminator parameter {name}", atol=1e-5)

    return run_check("training_step", trial, bugs=Bugs(4, nudges=(
        "does every term of eq. 15 reach the autoencoder's loss? Which one is the only one that trains the "
        "codebook?",
        "when are old gradients cleared, relative to backward() and the optimizer's step? Try the order on paper.",
        "the discriminator has its own optimizer and its own gradients: are they ever cleared between steps?",
        "what does the discriminator's loss return before its start step (E11), and what happens to the line "
        "that follows?",
        "compare one parameter of each kind (encoder, codebook, decoder, discriminator) after a step of your "
        "version and of the package's: which kinds differ, and from which step on?"), remaining=remaining),
        forbid=["fftd_course.pipeline.ivqvae_step", "fftd_course.pipeline.ivqvae_update",
                "fftd_course.pipeline.train_ivqvae"])


def check_code_influence(fn: Callable[[IVQVAE, torch.Tensor, int, int, int], torch.Tensor]) -> CheckResult:
    """``fn(model, indices, row, col, new_code)``: the per-pixel change ``(B, H, W)`` when one code is replaced."""

    def code_influence(model: IVQVAE, indices: torch.Tensor, row: int, col: int, new_code: int) -> torch.Tensor:
        with torch.no_grad():  # the hidden reference
            before = model.decode_indices(indices)
            after = model.decode_indices(torch.where(
                (torch.arange(indices.shape[1]).view(-1, 1) == row) & (torch.arange(indices.shape[2]) == col),
                torch.full_like(indices, new_code), indices))
        return (after - before).abs().mean(dim=1)

    fn = yours(fn)

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
            compare(got, code_influence(model, indices, row, col, new_code),
                    f"change map for {batch} grid(s), code ({row}, {col}) replaced by {new_code}")

    return run_check("code_influence", trial,
                     hint="decode the grid twice, once as given and once with the one entry (row, col) of every image "
                          "replaced; which quantity is per pixel, and over which dimension do you average?",
                     # no package function measures this; these would go through images or scaled latents instead
                     forbid=["fftd_course.ivqvae.IVQVAE.forward", "fftd_course.pipeline.decode_latents"])
