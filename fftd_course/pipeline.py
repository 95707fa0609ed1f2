"""Training the stages on top of the package's modules (the paper's Algorithms 1-3).

Algorithm 1 (IVQ-VAE pre-training) is :func:`ivqvae_step`, one iteration, and :func:`train_ivqvae`, a
small loop around it for the CPU chapters: encode, quantize, decode, the hybrid loss of eq. 15 for the
autoencoder, then (from ``disc_start`` on) one hinge-loss step for the discriminator. The full-scale
trainer (checkpoints, resume, mixed precision, several GPUs) builds on the same step.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from tqdm.auto import tqdm

from .ivqvae import IVQVAE
from .losses import HybridLoss

__all__ = ["stage1_optimizers", "ivqvae_step", "train_ivqvae"]


def stage1_optimizers(model: IVQVAE, loss: HybridLoss, lr: float = 2e-4,
                      betas: tuple[float, float] = (0.5, 0.9)) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """Adam for the autoencoder and for the discriminator, with the GAN betas (0.5, 0.9) of taming.

    The paper gives lr 1e-4 and Adam (section 4.2) at batch size 1; the CPU chapters train at batch
    sizes of 16-64 and use a larger default.
    """
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    opt_ae = torch.optim.Adam(model.parameters(), lr=lr, betas=betas)
    opt_d = torch.optim.Adam(loss.discriminator.parameters(), lr=lr, betas=betas)
    return opt_ae, opt_d


def ivqvae_step(model: IVQVAE, loss: HybridLoss, opt_ae: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
                x: torch.Tensor, step: int) -> dict[str, float]:
    """One iteration of Algorithm 1 on the batch ``x``; returns every logged term as a float.

    1. ``x_hat, q = model(x)``: encode, quantize (straight-through), decode;
    2. the autoencoder's loss ``L_rec + L_P + lambda_d L_G + lambda_vq L_vq`` (eq. 15) and an Adam step;
    3. from ``disc_start`` on, the discriminator's hinge loss (eq. 14, E3) and an Adam step.
    A NaN or inf in any term stops with the step and the term's name (``losses.NonFiniteLossError``).
    """
    model.train()
    x_hat, q = model(x)
    total, logs = loss(x, x_hat, step, vq_loss=q.loss, last_layer=model.last_layer)
    opt_ae.zero_grad(set_to_none=True)
    total.backward()
    opt_ae.step()
    d_loss, d_logs = loss.discriminator_loss(x, x_hat, step)
    if d_loss is not None:
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
    out = {k: float(v) for k, v in {**logs, **d_logs}.items()}
    out["perplexity"] = float(q.perplexity)
    return out


def train_ivqvae(model: IVQVAE, loss: HybridLoss, images: torch.Tensor, steps: int, batch_size: int = 32,
                 lr: float = 2e-4, seed: int = 0, progress: bool = True,
                 optimizers: tuple[torch.optim.Optimizer, torch.optim.Optimizer] | None = None,
                 start_step: int = 0) -> dict[str, list[float]]:
    """Train ``model`` for ``steps`` iterations of Algorithm 1 on ``images`` (N, 3, H, W) in [-1, 1].

    Batches are drawn by shuffling ``images`` once per epoch with ``seed``. Returns the history: for every
    logged term, one float per step. ``optimizers`` and ``start_step`` let a caller continue a run (the
    step number decides when the discriminator switches on).
    """
    if images.ndim != 4:
        raise ValueError(f"images must be a (N, C, H, W) tensor, got shape {tuple(images.shape)}")
    if not 0 < batch_size <= len(images):
        raise ValueError(f"batch_size must be between 1 and the number of images ({len(images)}), got {batch_size}")
    if images.min() < -1.0 - 1e-6 or images.max() > 1.0 + 1e-6:
        raise ValueError("images must be scaled to [-1, 1] (the decoder ends with tanh, eq. 7)")
    device = next(model.parameters()).device
    opt_ae, opt_d = optimizers if optimizers is not None else stage1_optimizers(model, loss, lr)
    generator = torch.Generator().manual_seed(seed)
    history: dict[str, list[float]] = defaultdict(list)
    order, cursor = torch.randperm(len(images), generator=generator), 0
    for step in tqdm(range(start_step, start_step + steps), desc="training IVQ-VAE", disable=not progress):
        if cursor + batch_size > len(order):
            order, cursor = torch.randperm(len(images), generator=generator), 0
        x = images[order[cursor:cursor + batch_size]].to(device)
        cursor += batch_size
        for k, v in ivqvae_step(model, loss, opt_ae, opt_d, x, step).items():
            history[k].append(v)
    return dict(history)
