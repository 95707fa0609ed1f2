"""Training the stages on top of the package's modules (the paper's Algorithms 1-3).

Algorithm 1 (IVQ-VAE pre-training) is :func:`ivqvae_step`, one iteration, and :func:`train_ivqvae`, a
small loop around it for the CPU chapters: encode, quantize, decode, the hybrid loss of eq. 15 for the
autoencoder, then (from ``disc_start`` on) one hinge-loss step for the discriminator. The full-scale
trainer (checkpoints, resume, mixed precision, several GPUs) builds on the same step.

Algorithm 2 (FFTD training on the frozen stage 1):

1. :func:`encode_latents`: encode the data set once with the frozen IVQ-VAE; the quantized latents
   ``z_q`` are the diffusion model's data (step 2 of Algorithm 2).
2. :func:`latent_scale`: the factor that gives those latents unit variance (errata E16: the paper never
   scales latents; with l2-normalised 4-channel codes every entry has a standard deviation near 1/2, so
   the schedule would meet a signal four times weaker in variance than the one it was designed for).
   Diffusion sees ``z_q * scale``; :func:`decode_latents` divides by it again before snapping to the
   codebook. The factor is computed once, from the training set, and stored in
   :class:`LatentDiffusion` (attribute ``scale``) and in its checkpoint (key ``"scale"``).
3. :func:`fftd_step`: the epsilon loss of eq. 27 (``diffusion.loss``), one AdamW step, one :class:`EMA`
   update; :func:`train_fftd` loops over it.

Algorithm 3 (sampling) and eq. 30: :meth:`LatentDiffusion.generate` draws ``z_T``, runs ``DDIMSampler``
(with classifier-free guidance for class-conditional models), unscales, snaps every latent vector to
its nearest code (eq. 30) and decodes. :class:`LatentDiffusion` holds both stages, the schedule, the
scale factor and the class names, and saves / loads them as one file; :func:`load_toy` loads the small
checkpoint committed with the package (remade by ``make weights``, see :mod:`fftd_course.demo`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoints import CheckpointError, atomic_save
from .checkpoints import load as load_checkpoint
from .diffusion import DDIMSampler, DDPMSampler, Diffusion, SamplerStep
from .ivqvae import IVQVAE, IVQVAEConfig
from .losses import HybridLoss

__all__ = ["stage1_optimizers", "autocast", "ivqvae_update", "ivqvae_step", "fftd_update", "train_ivqvae", "cosine_lr", "encode_latents", "latent_scale",
           "decode_latents", "EMA", "fftd_step", "train_fftd", "SampleResult", "GenerativeModel", "LatentDiffusion",
           "CheckpointError", "TOY_CHECKPOINT", "load_toy"]


def stage1_optimizers(model: IVQVAE, loss: HybridLoss, lr: float = 2e-4, betas: tuple[float, float] = (0.5, 0.9),
                      fused: bool = False) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """Adam for the autoencoder and for the discriminator, with the GAN betas (0.5, 0.9) of taming.

    The paper gives lr 1e-4 and Adam (section 4.2) at batch size 1; the CPU chapters train at batch
    sizes of 16-64 and use a larger default. ``fused=True`` (CUDA) runs each step as one kernel.
    """
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    opt_ae = torch.optim.Adam(model.parameters(), lr=lr, betas=betas, fused=fused)
    opt_d = torch.optim.Adam(loss.discriminator.parameters(), lr=lr, betas=betas, fused=fused)
    return opt_ae, opt_d


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """``torch.autocast`` on ``device``'s type with ``dtype`` (e.g. ``torch.bfloat16``), or a no-op for ``None``."""
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None)


def ivqvae_update(model: IVQVAE, loss: HybridLoss, opt_ae: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
                  batches: Sequence[torch.Tensor], step: int, *, forward: Callable | None = None,
                  amp_dtype: torch.dtype | None = None,
                  no_sync: Callable[[], ContextManager] | None = None) -> dict[str, torch.Tensor]:
    """One iteration of Algorithm 1 over the micro-batches ``batches`` (gradient accumulation); no host syncs.

    For each micro-batch: ``x_hat, q = forward(x)`` (``forward`` defaults to ``model``; pass a compiled or
    DDP-wrapped ``model`` there), the autoencoder's loss (eq. 15) divided by the number of micro-batches,
    backward; then one optimizer step. From ``disc_start`` on, the discriminator's hinge loss (eq. 14, E3) on
    the same micro-batches and one step of ``opt_d``. ``amp_dtype`` (e.g. ``torch.bfloat16``) runs the
    forward passes under autocast. ``no_sync`` (DDP's ``no_sync`` of the wrapper) runs every micro-batch but
    the last under it, so gradients are all-reduced once per step. A compiled ``forward`` makes no host
    decisions in the quantizer: this step then calls ``quantizer.maintain(n)`` itself, so no caller has to.
    Returns every logged term averaged over the micro-batches, as detached 0-dim tensors (reading them with
    ``float`` is what synchronises a GPU; do that only when logging).
    """
    forward = forward if forward is not None else model
    device = batches[0].device
    n = len(batches)
    model.train()
    opt_ae.zero_grad(set_to_none=True)
    sums_ae: dict[str, torch.Tensor] = {}
    sums_d: dict[str, torch.Tensor] = {}

    def add(sums: dict[str, torch.Tensor], logs: dict[str, torch.Tensor]) -> None:
        for k, v in logs.items():
            sums[k] = sums[k] + v.float() / n if k in sums else v.float() / n

    fakes = []
    for i, x in enumerate(batches):
        with _accumulating(no_sync, i < n - 1):
            with autocast(device, amp_dtype):
                x_hat, q = forward(x)
                total, logs = loss(x, x_hat, step, vq_loss=q.loss, last_layer=model.last_layer)
            (total / n).backward()
        fakes.append(x_hat.detach())
        add(sums_ae, {**logs, "perplexity": q.perplexity.detach()})
    opt_ae.step()
    if forward is not model and hasattr(forward, "_orig_mod") and hasattr(model.quantizer, "maintain"):
        # A compiled forward leaves dead-code replacement to the caller (VectorQuantizer.maintain): done here.
        model.quantizer.maintain(sum(len(x) for x in batches) * model.config.latent_size ** 2)
    if loss.discriminator_active(step):
        opt_d.zero_grad(set_to_none=True)
    for x, x_hat in zip(batches, fakes):
        with autocast(device, amp_dtype):
            d_loss, d_logs = loss.discriminator_loss(x, x_hat, step)
        if d_loss is not None:
            (d_loss / n).backward()
        add(sums_d, d_logs)
    if loss.discriminator_active(step):
        opt_d.step()
    return {**sums_ae, **sums_d}


def _accumulating(no_sync: Callable[[], ContextManager] | None, local: bool) -> ContextManager:
    """``no_sync()`` for a micro-batch whose gradients stay local (all but the last of a step), else a no-op."""
    return no_sync() if (no_sync is not None and local) else nullcontext()


def ivqvae_step(model: IVQVAE, loss: HybridLoss, opt_ae: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
                x: torch.Tensor, step: int) -> dict[str, float]:
    """One iteration of Algorithm 1 on the batch ``x``; returns every logged term as a float.

    1. ``x_hat, q = model(x)``: encode, quantize (straight-through), decode;
    2. the autoencoder's loss ``L_rec + L_P + lambda_d L_G + lambda_vq L_vq`` (eq. 15) and an Adam step;
    3. from ``disc_start`` on, the discriminator's hinge loss (eq. 14, E3) and an Adam step.
    A NaN or inf in any term stops with the step and the term's name (``losses.NonFiniteLossError``).
    This is :func:`ivqvae_update` on one batch, read back as floats (the full-scale trainer uses that one).
    """
    return {k: float(v) for k, v in ivqvae_update(model, loss, opt_ae, opt_d, [x], step).items()}


def train_ivqvae(model: IVQVAE, loss: HybridLoss, images: torch.Tensor, steps: int, batch_size: int = 32,
                 lr: float = 2e-4, seed: int = 0, progress: bool = True,
                 optimizers: tuple[torch.optim.Optimizer, torch.optim.Optimizer] | None = None,
                 start_step: int = 0, lr_schedule: Callable[[int], float] | None = None) -> dict[str, list[float]]:
    """Train ``model`` for ``steps`` iterations of Algorithm 1 on ``images`` (N, 3, H, W) in [-1, 1].

    Batches are drawn by shuffling ``images`` once per epoch with ``seed``. Returns the history: for every
    logged term, one float per step. ``optimizers`` and ``start_step`` let a caller continue a run (the
    step number decides when the discriminator switches on). ``lr_schedule`` (optional, e.g.
    :func:`cosine_lr`) maps the step number to a factor on the autoencoder's learning rate ``lr``;
    without it the rate stays constant.
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
        if lr_schedule is not None:
            for group in opt_ae.param_groups:
                group["lr"] = lr * lr_schedule(step)
        for k, v in ivqvae_step(model, loss, opt_ae, opt_d, x, step).items():
            history[k].append(v)
    return dict(history)


def cosine_lr(total_steps: int, warmup_steps: int = 0, final: float = 0.02) -> Callable[[int], float]:
    """A learning-rate factor per step: linear warm-up over ``warmup_steps``, then a cosine from 1 to ``final``.

    For ``train_ivqvae(lr_schedule=...)`` and :func:`train_fftd`. Steps past ``total_steps`` keep ``final``.
    """
    if total_steps < 1 or warmup_steps < 0 or not 0.0 <= final <= 1.0:
        raise ValueError(f"need total_steps >= 1, warmup_steps >= 0 and 0 <= final <= 1; got {total_steps}, "
                         f"{warmup_steps}, {final}")

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
        u = min(max(step, 0), total_steps) / total_steps
        return warm * (final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * u)))

    return factor


# ---- Algorithm 2: latents of the frozen stage 1 ---------------------------------------------------

@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[torch.device]:
    """Run ``model`` in eval mode inside the block (its train/eval mode is restored afterwards); yields its device."""
    was_training = model.training
    model.eval()
    try:
        yield next(model.parameters()).device
    finally:
        model.train(was_training)


@torch.no_grad()
def encode_latents(ivqvae: IVQVAE, images: torch.Tensor, batch_size: int = 256, progress: bool = False) -> torch.Tensor:
    """The quantized latents ``z_q`` of ``images`` ``(N, 3, H, W)`` in ``[-1, 1]`` (Algorithm 2, step 2).

    Stage 1 is frozen: the model runs in eval mode (restored afterwards) without gradients, and the
    quantizer's usage statistics and dead-code replacement are left untouched. Returns a float32 CPU
    tensor ``(N, z_channels, H/f, W/f)``: every latent vector is a code of the codebook.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be a (N, C, H, W) tensor, got shape {tuple(images.shape)}")
    out = []
    with _eval_mode(ivqvae) as device:
        for x in tqdm(images.split(batch_size), desc="encoding latents", disable=not progress):
            z_e = ivqvae.encode(x.to(device))
            out.append(ivqvae.snap(z_e)[0].float().cpu())  # nearest code: the z_q of the forward pass, no side effects
    return torch.cat(out)


def latent_scale(latents: torch.Tensor) -> float:
    """``1 / std`` of the training latents: ``latents * scale`` has unit variance (errata E16).

    Computed once on the encoded training set, over all entries (one number, as latent-diffusion's
    ``scale_factor``). Multiply before diffusion; :func:`decode_latents` divides by it before snapping.
    """
    std = float(latents.float().std())
    if not math.isfinite(std) or std <= 0:
        raise ValueError(f"cannot scale latents whose standard deviation is {std}: are they all equal (collapsed codebook)?")
    return 1.0 / std


@torch.no_grad()
def decode_latents(ivqvae: IVQVAE, z: torch.Tensor, scale: float, requantize: bool = True,
                   batch_size: int = 256) -> torch.Tensor:
    """Images in ``[-1, 1]`` from diffusion latents ``z`` (scaled, as the FFTD sees them).

    Divides by ``scale``, snaps every latent vector to its nearest code (eq. 30) and decodes (eq. 5-7).
    ``requantize=False`` decodes the unscaled latent as it is, off the codebook (chapter 09 compares
    both). Runs stage 1 in eval mode without gradients; returns a tensor on ``z``'s device.
    """
    if z.ndim != 4 or z.shape[1] != ivqvae.config.z_channels:
        raise ValueError(f"decode_latents expects latents (B, {ivqvae.config.z_channels}, h, w), got {tuple(z.shape)}")
    out = []
    with _eval_mode(ivqvae) as device:
        for zb in z.split(batch_size):
            zb = zb.to(device).float() / scale
            if requantize:
                zb = ivqvae.snap(zb)[0]
            out.append(ivqvae.decode(zb).to(z.device))
    return torch.cat(out)


# ---- Algorithm 2: training the FFTD -----------------------------------------------------------------

class EMA:
    """An exponential moving average of a model's parameters, with a warm-up, in a frozen copy of the model.

    After optimisation step ``k`` (0-based) the average moves as ``ema = d_k ema + (1 - d_k) theta`` with
    ``d_k = min(decay, 1 - (1 + k) ** -power)`` (diffusers' ``EMAModel`` with ``inv_gamma=1``,
    ``power=3/4``): ``d_0 = 0`` copies the weights, ``d_9`` is about 0.82, and ``decay`` is reached only
    after about ``(1 - decay) ** (-1 / power)`` steps (10^4 for 0.999). Without the warm-up a short run
    would sample from weights still close to their random start. Buffers are copied, not averaged.

    ``ema.model`` is the averaged model (eval mode, no gradients): sample from it. ``state_dict`` /
    ``load_state_dict`` save the average and the step count for checkpoints.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, power: float = 0.75):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        if power <= 0:
            raise ValueError(f"EMA warm-up power must be positive, got {power}")
        self.decay, self.power, self.num_updates = decay, power, 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """The decay used by update number ``step`` (0-based): ``min(decay, 1 - (1 + step) ** -power)``."""
        return min(self.decay, 1.0 - (1.0 + step) ** -self.power)

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        """Move the average towards ``model``'s current parameters; returns the decay used.

        ``model`` is the trained module itself (not a compiled or DDP wrapper). One fused ``lerp`` over all
        parameters (``torch._foreach_lerp_``), no host-device synchronisation.
        """
        d = self.decay_at(self.num_updates)
        ema_params = dict(self.model.named_parameters())
        names = [name for name, _ in model.named_parameters()]
        # Under no_grad the trained parameters are read as they are (a detach per parameter would be one more
        # dispatched operator each, hundreds per step).
        torch._foreach_lerp_([ema_params[name] for name in names], [p for _, p in model.named_parameters()], 1.0 - d)
        ema_buffers = dict(self.model.named_buffers())
        for name, b in model.named_buffers():
            ema_buffers[name].copy_(b)
        self.num_updates += 1
        return d

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "num_updates": self.num_updates, "decay": self.decay, "power": self.power}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.num_updates, self.decay, self.power = int(state["num_updates"]), float(state["decay"]), float(state["power"])


def _model_config(model: nn.Module):
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError("the FFTD model has no .config; build it as FFTD(get_config(...))")
    return config


def _check_latents_and_labels(model: nn.Module, latents: torch.Tensor, labels: torch.Tensor | None) -> None:
    """Clear errors where data enters the FFTD (or the pixel-space U-Net, whose inputs are images): shape vs the
    model's config, labels vs its classes."""
    c = _model_config(model)
    size = getattr(c, "input_size", None) or c.resolution
    want = (c.in_channels, size, size)
    if latents.ndim != 4 or tuple(latents.shape[1:]) != want:
        raise ValueError(f"latents must have shape (N, {want[0]}, {want[1]}, {want[2]}) for this FFTD configuration "
                         f"(in_channels={c.in_channels}, input_size={size}); got {tuple(latents.shape)}. "
                         "Encode with the IVQ-VAE whose latent grid matches, or build the FFTD with matching "
                         "in_channels / input_size")
    if c.num_classes == 0:
        if labels is not None:
            raise ValueError("this FFTD is unconditional (num_classes=0, errata E12): pass labels=None")
        return
    if labels is None:
        raise ValueError(f"this FFTD is class-conditional ({c.num_classes} classes): pass one label per latent "
                         "(or build it with num_classes=0 for an unconditional model)")
    if labels.ndim != 1 or len(labels) != len(latents) or labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"labels must be an integer tensor (N,) with N = {len(latents)}, got "
                         f"{labels.dtype} of shape {tuple(labels.shape)}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= c.num_classes):
        raise ValueError(f"labels must lie in [0, {c.num_classes - 1}] (label {c.num_classes} is the null label, "
                         f"which label dropout inserts itself); got values from {int(labels.min())} to {int(labels.max())}")


def fftd_update(model: nn.Module, diffusion: Diffusion, optimizer: torch.optim.Optimizer, ema: "EMA | None",
                batches: Sequence[tuple[torch.Tensor, torch.Tensor | None]], *, forward: Callable | None = None,
                generator: torch.Generator | None = None, amp_dtype: torch.dtype | None = None,
                no_sync: Callable[[], ContextManager] | None = None) -> torch.Tensor:
    """One iteration of Algorithm 2 over the micro-batches ``batches`` of ``(z0, y)``; returns the mean loss.

    ``model`` is any noise predictor ``model(x_t, t, y) -> eps``: the FFTD on scaled latents, or the pixel-space
    baseline's U-Net (:mod:`fftd_course.unet`) on images; nothing here depends on which.

    For each micro-batch: ``t ~ U{0..T-1}``, ``eps ~ N(0, I)``, ``z_t`` by eq. 28 and the loss
    ``||eps - eps_theta(z_t, t, y)||^2`` (eq. 27, ``diffusion.loss``; the model drops labels to the null label
    itself in train mode), divided by the number of micro-batches, backward; then one optimizer step and
    ``ema.update(model)``. ``forward`` (default ``model``) is what is called: a compiled or DDP-wrapped
    ``model``. ``amp_dtype`` runs the forward under autocast; ``no_sync`` (DDP's ``no_sync``) keeps the gradients
    of all but the last micro-batch local. The loss comes back as a detached 0-dim tensor: no host-device
    synchronisation here.
    """
    forward = forward if forward is not None else model
    n = len(batches)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    total = None
    for i, (z0, y) in enumerate(batches):
        with _accumulating(no_sync, i < n - 1):
            with autocast(z0.device, amp_dtype):
                loss = diffusion.loss(forward, z0, y, generator=generator) / n
            loss.backward()
        total = loss.detach() if total is None else total + loss.detach()
    optimizer.step()
    if ema is not None:
        ema.update(model)
    return total


def fftd_step(model: nn.Module, diffusion: Diffusion, optimizer: torch.optim.Optimizer, ema: EMA | None,
              z0: torch.Tensor, y: torch.Tensor | None, generator: torch.Generator | None = None) -> float:
    """One iteration of Algorithm 2 on the batch ``z0`` (scaled latents) with labels ``y``; returns the loss.

    ``t ~ U{0..T-1}``, ``eps ~ N(0, I)``, ``z_t`` by eq. 28, loss ``||eps - eps_theta(z_t, t, y)||^2``
    (eq. 27, ``diffusion.loss``; the model drops labels to the null label itself in train mode), one
    optimizer step, then ``ema.update``. No checks here: :func:`train_fftd` checks its inputs once.
    This is :func:`fftd_update` on one batch, read back as a float.
    """
    return float(fftd_update(model, diffusion, optimizer, ema, [(z0, y)], generator=generator))


def train_fftd(model: nn.Module, diffusion: Diffusion, latents: torch.Tensor, labels: torch.Tensor | None,
               steps: int, batch_size: int = 64, lr: float = 1e-3, ema_decay: float = 0.999, seed: int = 0,
               progress: bool = True, weight_decay: float = 0.0, lr_schedule: Callable[[int], float] | None = None,
               optimizer: torch.optim.Optimizer | None = None, ema: EMA | None = None,
               start_step: int = 0) -> tuple[dict[str, list[float]], EMA]:
    """Train the FFTD ``model`` for ``steps`` iterations of Algorithm 2; returns ``(history, ema)``.

    ``latents`` ``(N, C, s, s)`` are already scaled (``z_q * scale``, see :func:`latent_scale`);
    ``labels`` ``(N,)`` in ``[0, num_classes)``, or ``None`` for an unconditional model. Batches come
    from shuffling once per epoch with ``seed``, which also draws the timesteps and noise. AdamW
    (the paper's optimizer, DiT's weight decay 0 by default) at ``lr``, optionally times
    ``lr_schedule(step)``. ``history["loss"]`` holds one float per step; ``ema.model`` is the averaged
    model to sample from. ``optimizer``, ``ema`` and ``start_step`` continue an earlier run.
    """
    _check_latents_and_labels(model, latents, labels)
    if not 0 < batch_size <= len(latents):
        raise ValueError(f"batch_size must be between 1 and the number of latents ({len(latents)}), got {batch_size}")
    std = float(latents.std())
    pixels = not hasattr(_model_config(model), "input_size")  # the pixel-space U-Net trains on images as they are
    if not pixels and not 0.5 < std < 2.0:
        warnings.warn(f"the latents' standard deviation is {std:.3g}; the schedule expects unit variance. "
                      "Multiply them by pipeline.latent_scale(...) first (errata E16)", stacklevel=2)
    device = next(model.parameters()).device
    optimizer = optimizer if optimizer is not None else torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    ema = ema if ema is not None else EMA(model, ema_decay)
    generator = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator(device).manual_seed(seed + 1) if device.type != "cpu" else generator
    history: dict[str, list[float]] = defaultdict(list)
    order, cursor = torch.randperm(len(latents), generator=generator), 0
    bar = tqdm(range(start_step, start_step + steps), desc="training FFTD", disable=not progress)
    for step in bar:
        if cursor + batch_size > len(order):
            order, cursor = torch.randperm(len(latents), generator=generator), 0
        idx = order[cursor:cursor + batch_size]
        cursor += batch_size
        if lr_schedule is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr * lr_schedule(step)
        y = labels[idx].to(device) if labels is not None else None
        history["loss"].append(fftd_step(model, diffusion, optimizer, ema, latents[idx].to(device), y, noise_gen))
        if progress and step % 50 == 0:
            bar.set_postfix(loss=f"{sum(history['loss'][-50:]) / len(history['loss'][-50:]):.4f}")
    return dict(history), ema


# ---- Algorithm 3 and eq. 30: both stages in one object -------------------------------------------------

CHECKPOINT_FORMAT = "fftd_course.LatentDiffusion/1"
TOY_CHECKPOINT = Path(__file__).resolve().parent / "weights" / "toy_latent_diffusion.pt"


@dataclass
class SampleResult:
    """What :meth:`LatentDiffusion.generate` (and the pixel baseline's ``PixelDiffusion.generate``) returns.

    ``images`` ``(B, 3, H, W)`` in ``[-1, 1]``; ``latents``: the sampler's output ``z_0``, scaled (as the
    FFTD sees them; the pixel baseline's: the sampled images before clamping); ``indices`` ``(B, h, w)``:
    the codes they snap to (eq. 30; an empty tensor for the pixel baseline, which has no codebook);
    ``labels``: the labels sampled (the null label for unconditional samples); ``trajectory``: with
    ``keep_trajectory=True``, one ``(timestep, z_t, z0_hat)`` per sampler step (on the CPU), else empty.
    """

    images: torch.Tensor
    latents: torch.Tensor
    indices: torch.Tensor
    labels: torch.Tensor
    trajectory: list[tuple[int, torch.Tensor, torch.Tensor]] = field(default_factory=list)


def _config_dict(config) -> dict:
    return dataclasses.asdict(config)


def _config_from_dict(cls, d: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise CheckpointError(f"the checkpoint's {cls.__name__} has fields this code does not know: {sorted(unknown)}; "
                              "remake it with `make weights` (or use the course version that wrote it)")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


DDIM_STEPS = 50  # what generate(num_steps=None) runs with the DDIM sampler
SAMPLERS = ("ddim", "ddpm")


def _number(value) -> float:
    """``float(value)``, or NaN for anything that is not a real number (bools and strings included)."""
    try:
        return math.nan if isinstance(value, (bool, str)) else float(value)
    except (TypeError, ValueError, RuntimeError):
        return math.nan


class GenerativeModel(nn.Module):
    """What the generators share: :class:`LatentDiffusion` and the pixel-space baseline
    (:class:`fftd_course.baseline.PixelDiffusion`).

    A subclass sets ``diffusion`` (the schedule), ``class_names`` and ``meta``, names its noise predictor in
    :meth:`eps_model` and its image side in :attr:`resolution`, and writes ``generate``; this class gives
    it the labels (:meth:`labels`), the checks of ``generate``'s arguments and the draw of ``x_T``
    (:meth:`_request`), the sampler run with guidance and trajectory (:meth:`_denoise`) and :meth:`sample`.
    Both stages are frozen here: the module stays in eval mode.
    """

    diffusion: Diffusion
    class_names: tuple[str, ...]

    def __init__(self) -> None:
        super().__init__()
        self.training = False  # frozen (see train); the parts are put in eval mode by the subclass

    def eps_model(self) -> nn.Module:
        """The noise predictor ``model(x_t, t, y) -> eps`` the sampler calls."""
        raise NotImplementedError

    @property
    def resolution(self) -> int:
        """The side in pixels of the images this generator makes."""
        raise NotImplementedError

    def train(self, mode: bool = True) -> "GenerativeModel":
        """Frozen: the module stays in eval mode (train the parts with the pipeline functions or the trainer)."""
        return super().train(False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def null_label(self) -> int:
        return self.num_classes

    @property
    def device(self) -> torch.device:
        return next(self.eps_model().parameters()).device

    def labels(self, classes: Sequence[str | int] | torch.Tensor) -> torch.Tensor:
        """Class names or indices -> a LongTensor of labels (checked against ``class_names``)."""
        if isinstance(classes, torch.Tensor):
            y = classes.long().flatten()
        else:
            if isinstance(classes, (str, int)):
                classes = [classes]
            y = []
            for c in classes:
                if isinstance(c, str):
                    if c not in self.class_names:
                        raise ValueError(f"unknown class {c!r}; this model knows {list(self.class_names)}")
                    y.append(self.class_names.index(c))
                else:
                    y.append(int(c))
            y = torch.tensor(y, dtype=torch.long)
        if self.num_classes == 0:
            raise ValueError("this model is unconditional (no classes, errata E12): call sample(n=...) without labels")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes - 1}] ({list(self.class_names)}), got "
                             f"values from {int(y.min())} to {int(y.max())}")
        return y

    def _request(self, classes, n, num_steps: int | None, guidance_scale: float, eta: float, sampler: str,
                 shape: tuple[int, ...], seed: int, x_T: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
        """``generate``'s arguments checked; returns the labels ``y``, ``x_T`` ``(len(y), *shape)`` and the
        generator that drew it (it also draws the step noise)."""
        if (classes is None) == (n is None):
            raise ValueError("pass either classes (names or labels, one image each) or n (unconditional samples)")
        if n is not None and (isinstance(n, bool) or not _number(n).is_integer() or _number(n) < 1):
            raise ValueError(f"n must be a positive integer (the number of unconditional images), got {n!r}")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS} (DDIM, eq. 29; or DDPM's ancestral sampler over all "
                             f"T steps), got {sampler!r}")
        if num_steps is not None and (isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1):
            raise ValueError(f"num_steps must be an integer >= 1 (DDIM steps), got {num_steps!r}")
        if sampler == "ddpm" and num_steps not in (None, self.diffusion.T):
            raise ValueError(f"the DDPM sampler visits all T={self.diffusion.T} timesteps: leave num_steps out (or "
                             f"pass {self.diffusion.T}), or use sampler='ddim' for {num_steps} steps")
        if not (math.isfinite(_number(guidance_scale)) and _number(guidance_scale) >= 0):
            raise ValueError(f"guidance_scale must be a finite number >= 0 (0: the unconditional model, 1: no "
                             f"guidance, larger: stronger guidance), got {guidance_scale!r}")
        if not (math.isfinite(_number(eta)) and _number(eta) >= 0):
            raise ValueError(f"eta must be a finite number >= 0 (0: deterministic DDIM), got {eta!r}")
        if sampler == "ddpm" and eta != 0:
            raise ValueError(f"eta is DDIM's noise setting; the DDPM sampler has its own (eta must be 0, got {eta!r})")
        y = self.labels(classes) if classes is not None else torch.full((int(n),), self.null_label, dtype=torch.long)
        shape = (len(y), *shape)
        generator = torch.Generator().manual_seed(seed)
        if x_T is None:
            x_T = torch.randn(shape, generator=generator)
        elif tuple(x_T.shape) != shape:
            raise ValueError(f"x_T must have shape {shape}, got {tuple(x_T.shape)}")
        return y, x_T, generator

    def _denoise(self, x_T: torch.Tensor, y: torch.Tensor, conditional: bool, generator: torch.Generator, *,
                 sampler: str, num_steps: int | None, guidance_scale: float, eta: float, keep_trajectory: bool,
                 progress: bool, clip_x0: bool = False, fast: bool = False
                 ) -> tuple[torch.Tensor, list[tuple[int, torch.Tensor, torch.Tensor]]]:
        """Run the sampler from ``x_T`` (Algorithm 3); ``conditional``: ``y`` holds classes, guided by
        ``guidance_scale``; ``clip_x0``: the sampler's clamping of ``x0_hat`` to ``[-1, 1]`` (pixels only).
        ``fast``: on a CUDA device, deterministic DDIM runs the model in bf16 autocast and replays each step as a
        CUDA graph (``DDIMSampler.sample(cuda_graph=True)``); elsewhere, or with noise or a trajectory, the usual
        path. Returns the sample ``x_0`` and, with ``keep_trajectory``, one ``(timestep, x_t, x0_hat)`` per step on
        the CPU."""
        trajectory: list[tuple[int, torch.Tensor, torch.Tensor]] = []

        def keep(s: SamplerStep) -> None:
            trajectory.append((s.t_to, s.x.detach().cpu(), s.x0_hat.detach().cpu()))

        if sampler == "ddpm":
            runner, noisy = DDPMSampler(self.diffusion), True
        else:
            runner, noisy = DDIMSampler(self.diffusion, num_steps or DDIM_STEPS, eta=eta), eta > 0
        guided = conditional and guidance_scale != 1.0
        graphed = fast and self.device.type == "cuda" and not noisy and not keep_trajectory
        x0 = runner.sample(self.eps_model(), x_T.to(self.device), y.to(self.device),
                           guidance_scale=guidance_scale if conditional else 1.0,
                           null_label=self.null_label if guided else None, generator=generator if noisy else None,
                           callback=keep if keep_trajectory else None, progress=progress, clip_x0=clip_x0,
                           autocast_dtype=torch.bfloat16 if graphed else None, cuda_graph=graphed)
        return x0, trajectory

    def sample(self, classes: Sequence[str | int] | torch.Tensor | None = None, n: int | None = None,
               **kwargs) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` in ``[-1, 1]``: ``generate``'s ``images`` (same arguments)."""
        return self.generate(classes, n, **kwargs).images


class LatentDiffusion(GenerativeModel):
    """The two-stage generator: a frozen IVQ-VAE, an FFTD (its EMA weights), the schedule and the scale factor.

    ``LatentDiffusion(ivqvae, fftd, diffusion, scale, class_names)``. ``scale`` is :func:`latent_scale` of
    the encoded training set (errata E16): the FFTD works on ``z_q * scale``; it is stored here and in the
    checkpoint. ``class_names`` has one name per label (empty for an unconditional model, errata E12).

    * :meth:`sample` returns images for labels (names or indices), e.g.
      ``ld.sample(["cat", "dog"], guidance_scale=2.0)``, or ``ld.sample(n=8)`` unconditionally;
      :meth:`generate` returns a :class:`SampleResult` with latents, codes and an optional trajectory.
    * :meth:`save` / :meth:`load` write and read one file (configurations as plain dicts, tensors only,
      so ``torch.load(weights_only=True)`` reads it).

    Labels, argument checks and the sampler run are :class:`GenerativeModel`'s, shared with the pixel-space
    baseline (:class:`fftd_course.baseline.PixelDiffusion`).
    """

    def __init__(self, ivqvae: IVQVAE, fftd: nn.Module, diffusion: Diffusion | None = None, scale: float = 1.0,
                 class_names: Sequence[str] = (), meta: dict | None = None):
        super().__init__()
        c = _model_config(fftd)
        if (c.in_channels, c.input_size) != (ivqvae.config.z_channels, ivqvae.config.latent_size):
            raise ValueError(f"the FFTD works on {c.in_channels}x{c.input_size}x{c.input_size} latents but the IVQ-VAE "
                             f"makes {ivqvae.config.z_channels}x{ivqvae.config.latent_size}x{ivqvae.config.latent_size}")
        if len(class_names) != c.num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but the FFTD has {c.num_classes} classes")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive number, got {scale}")
        self.ivqvae = ivqvae.eval().requires_grad_(False)
        self.fftd = fftd.eval().requires_grad_(False)
        self.diffusion = diffusion if diffusion is not None else Diffusion()
        self.scale = float(scale)
        self.class_names = tuple(class_names)
        self.meta = dict(meta or {})

    def eps_model(self) -> nn.Module:
        return self.fftd

    @property
    def resolution(self) -> int:
        return self.ivqvae.config.resolution

    @torch.no_grad()
    def generate(self, classes: Sequence[str | int] | torch.Tensor | None = None, n: int | None = None, *,
                 num_steps: int | None = None, guidance_scale: float = 3.0, eta: float = 0.0, seed: int = 0,
                 requantize: bool = True, keep_trajectory: bool = False, progress: bool = False,
                 x_T: torch.Tensor | None = None, sampler: str = "ddim", fast: bool = False) -> SampleResult:
        """Sample (Algorithm 3), unscale, snap to the codebook (eq. 30) and decode; see :class:`SampleResult`.

        ``classes``: names or label indices, one image each, sampled with classifier-free guidance
        ``guidance_scale`` (1 = no guidance). ``n``: that many unconditional images (the null label;
        the only choice for an unconditional model). ``num_steps``: DDIM steps (default 50);
        ``sampler="ddpm"`` runs DDPM's ancestral sampler over all ``T`` steps instead. ``seed`` draws ``z_T``
        (and the step noise when ``eta > 0`` or with DDPM); ``x_T`` replaces the drawn ``z_T``.
        ``requantize=False`` decodes the sampled latent without snapping it. ``fast=True``: the fastest path
        the device allows (on CUDA, bf16 and one CUDA graph per DDIM step; samples then differ from the float32
        path by bf16 rounding); the same as ``False`` on a CPU.
        """
        c = _model_config(self.fftd)
        y, x_T, generator = self._request(classes, n, num_steps, guidance_scale, eta, sampler,
                                          (c.in_channels, c.input_size, c.input_size), seed, x_T)
        z0, trajectory = self._denoise(x_T, y, classes is not None, generator, sampler=sampler, num_steps=num_steps,
                                       guidance_scale=guidance_scale, eta=eta, keep_trajectory=keep_trajectory,
                                       progress=progress, fast=fast)
        indices = self.ivqvae.snap(z0 / self.scale)[1]
        images = decode_latents(self.ivqvae, z0, self.scale, requantize=requantize)  # float32: the snap needs it
        return SampleResult(images.cpu(), z0.cpu(), indices.cpu(), y, trajectory)

    # ---- checkpoints ----

    def checkpoint(self, dtype: torch.dtype = torch.float32) -> dict:
        """Everything :meth:`load` needs, as tensors, numbers, strings, lists and dicts only.

        Floating-point weights are stored as ``dtype`` (``torch.float16`` halves the file; :meth:`load`
        always returns float32 weights).
        """

        def weights(module: nn.Module) -> dict[str, torch.Tensor]:
            return {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).cpu()
                    for k, v in module.state_dict().items()}

        return {
            "format": CHECKPOINT_FORMAT,
            "ivqvae_config": _config_dict(self.ivqvae.config),
            "fftd_config": _config_dict(_model_config(self.fftd)),
            "ivqvae": weights(self.ivqvae),
            "fftd": weights(self.fftd),
            "betas": self.diffusion.betas.clone(),
            "scale": self.scale,
            "class_names": list(self.class_names),
            "meta": self.meta,
        }

    def save(self, path: str | Path, dtype: torch.dtype = torch.float32) -> Path:
        """Write the checkpoint to ``path`` atomically (parent folders are created; weights stored as ``dtype``).

        A crash during the write leaves the previous file at ``path`` as it was (``checkpoints.atomic_save``).
        """
        return atomic_save(self.checkpoint(dtype), path)

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> "LatentDiffusion":
        """Read a file written by :meth:`save` (``torch.load(weights_only=True)``) onto ``device``.

        A missing file raises ``FileNotFoundError``; a damaged or foreign one :class:`CheckpointError`,
        each saying what to do. (:func:`fftd_course.baseline.load_generator` reads this file or a pixel-space
        baseline's.)
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no LatentDiffusion checkpoint at {path}; write one with LatentDiffusion.save "
                                    "(the committed toy checkpoint is remade by `make weights`)")
        ckpt = load_checkpoint(path, CHECKPOINT_FORMAT, "LatentDiffusion checkpoint",
                               remedy="use a latent_diffusion.pt written by train-fftd (or remake the toy checkpoint "
                                      "with `make weights`)")
        return cls.from_checkpoint(ckpt, path).to(device)

    @classmethod
    def from_checkpoint(cls, ckpt: dict, path: str | Path = "the checkpoint") -> "LatentDiffusion":
        """The generator from :meth:`checkpoint`'s dict (already read); :class:`CheckpointError` if it does not fit."""
        from .fftd import FFTD, FFTDConfig  # here, not at import time: the FFTD module imports nothing from here

        try:
            ivqvae = IVQVAE(_config_from_dict(IVQVAEConfig, ckpt["ivqvae_config"]))
            ivqvae.load_state_dict(ckpt["ivqvae"])
            fftd = FFTD(_config_from_dict(FFTDConfig, ckpt["fftd_config"]))
            fftd.load_state_dict(ckpt["fftd"])
            return cls(ivqvae, fftd, Diffusion(ckpt["betas"]), float(ckpt["scale"]), ckpt["class_names"],
                       ckpt.get("meta"))
        except CheckpointError:
            raise
        except (KeyError, RuntimeError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path} does not fit this code ({type(e).__name__}: {e}); remake it "
                                  "(`make weights` for the toy checkpoint)") from None


def load_toy(device: torch.device | str = "cpu") -> LatentDiffusion:
    """The toy generator committed with the package (toy faces, 32 px, classes cat / dog / wild).

    Trained by ``make weights`` (``python -m fftd_course.demo --weights``); its provenance (command,
    seed, versions, measured metrics, seconds, machine) is ``fftd_course/weights/toy_latent_diffusion.json``.
    """
    return LatentDiffusion.load(TOY_CHECKPOINT, device)
