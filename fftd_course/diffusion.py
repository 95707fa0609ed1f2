"""Diffusion: noise schedules, the forward process, the epsilon loss and the DDIM / DDPM samplers.

Paper section 3.3: eq. 26 (forward step), eq. 27 (loss), eq. 28 (closed-form forward process),
eq. 29 (DDIM update), Algorithm 3 (sampling). Everything works on tensors of any shape ``(B, ...)``:
4x4x4 latents, pixels and 2-D toy points alike, on CPU and CUDA.

Conventions (chapters 08 FFTD and 09 latent diffusion rely on them)
-------------------------------------------------------------------
* **Timesteps are 0-based indices** ``t`` in ``{0, ..., T-1}``. The paper counts ``t`` in
  ``{1, ..., T}``: the paper's ``t`` is index ``t - 1`` here. ``alpha_bar[i]`` is the paper's
  ``alpha_t`` for ``t = i + 1``. The paper's ``alpha_0 = 1`` (clean data) has no index: it is the
  target of the last sampling step, written ``t_to = -1`` in :class:`SamplerStep`.
* **E5** (``docs/ERRATA.md``): the paper writes ``alpha_t`` for the cumulative product ``prod_{s<=t} (1 - beta_s)``
  (DDPM's alpha-bar); DDPM's per-step ``alpha_t`` is ``1 - beta_t``. Here the cumulative product is
  always called ``alpha_bar`` and the per-step one ``1 - betas``.
* **The model** is called as ``model(x_t, t, y)`` and returns epsilon with ``x_t``'s shape. ``t`` is
  a LongTensor ``(B,)`` of 0-based indices; ``y`` is a LongTensor ``(B,)`` of labels, or ``None`` for
  an unconditional model.
* **Classifier-free guidance**: the unconditional call passes ``y = null_label``, an integer the
  sampler is given (DiT-style: the label table has one extra "null" row that training fills by label
  dropout). ``eps = eps_u + s (eps_c - eps_u)``; ``s = 1`` means no guidance (one model call per step),
  ``s = 0`` the unconditional model. All channels are guided (DiT #41).
* **The schedule object** is :class:`Diffusion`, built from ``betas``. It holds ``alpha_bar`` and does
  :meth:`Diffusion.q_sample` and :meth:`Diffusion.loss`. Samplers take it:
  ``DDIMSampler(diffusion, num_steps, spacing, eta).sample(model, x_T, y)``.
* **Precision**: schedules are float64 on the CPU. Sampler arithmetic runs in float32 (float64 input
  stays float64). With ``autocast_dtype=torch.bfloat16`` only the model call runs under autocast; its
  output is cast back to float32 before any sampler arithmetic.
* **Randomness**: the caller draws ``x_T`` (any shape, e.g. ``torch.randn(B, 4, 4, 4)``). A sampler
  draws only the per-step noise, ``torch.randn(x.shape, generator=generator)`` once for each step whose
  ``sigma`` is above zero, in step order. Sampling runs under ``torch.no_grad()``.

Open choices (paper section 3.3, ``docs/PAPER.md``; E24, E25 in ``docs/ERRATA.md``) and what the code does:

* **Schedule** (E24): the paper prints a linear schedule ``1e-4 -> 0.02`` and ``T = 500``. Over 500 steps it
  leaves ``alpha_bar_T`` of about ``6e-3``: some signal at the last step, while sampling starts from pure
  noise. ``"linear_rescaled"`` scales both ends by ``1000 / T`` (DDPM's own schedule at ``T = 1000``;
  improved-diffusion and DiT do this) and leaves about ``4e-5``. It is the default; ``"linear"`` is the
  schedule exactly as printed; chapter 06 shows both.
* **Timestep spacing** of a DDIM sub-sequence (E25): ``"trailing"`` by default (it starts at index ``T - 1``,
  the paper's ``z_T``, and takes equal strides down); ``"linspace"`` and ``"leading"`` as in diffusers.
  The previous timestep is always the next element of the sub-sequence, never ``t - T // num_steps``
  (the source of diffusers' off-by-one bugs, #9261, #2585).
* **Final step** goes to the paper's ``alpha_0 = 1`` (diffusers' ``set_alpha_to_one=True``), so the
  last step returns the model's ``x0`` estimate and adds no noise.
* **E10**: a model trained with ``T = 500`` has 500 timesteps; it cannot be sampled with 1000
  steps. Table 3's "1000 steps (DDPM)" row is the pixel-space baseline, a ``T = 1000`` model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

__all__ = [
    "SCHEDULES",
    "SPACINGS",
    "beta_schedule",
    "Diffusion",
    "predict_x0",
    "ddim_sigma",
    "ddim_step",
    "ddim_timesteps",
    "SamplerStep",
    "DDIMSampler",
    "DDPMSampler",
]

SCHEDULES = ("linear", "linear_rescaled", "cosine")
SPACINGS = ("trailing", "linspace", "leading")

Model = Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


def beta_schedule(kind: str = "linear_rescaled", T: int = 500) -> torch.Tensor:
    """The noise variances ``beta_1 .. beta_T`` of eq. 26 as a float64 tensor ``(T,)``.

    * ``"linear"``: ``1e-4 -> 0.02`` exactly as the paper prints it, whatever ``T``;
    * ``"linear_rescaled"``: both ends times ``1000 / T`` (``2e-4 -> 0.04`` at ``T = 500``), so that the
      last step is as noisy as DDPM's ``T = 1000`` schedule (the default; see the module docstring);
    * ``"cosine"``: Nichol & Dhariwal's ``alpha_bar(u) = cos^2((u + s) / (1 + s) * pi / 2)``, ``s = 0.008``,
      betas capped at 0.999.
    """
    if not isinstance(T, int) or isinstance(T, bool) or T < 1:
        raise ValueError(f"T (the number of diffusion steps) must be a positive integer, got {T!r}")
    if kind == "linear":
        return torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    if kind == "linear_rescaled":
        scale = 1000.0 / T
        if 0.02 * scale >= 1.0:
            raise ValueError(f"'linear_rescaled' needs T > 20 (its last beta, 0.02 * 1000 / T, must stay below 1); "
                             f"got T={T}. Use 'linear' or 'cosine' for very short chains.")
        return torch.linspace(1e-4 * scale, 0.02 * scale, T, dtype=torch.float64)
    if kind == "cosine":
        def f(u: torch.Tensor) -> torch.Tensor:
            return torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        u = torch.arange(T + 1, dtype=torch.float64) / T
        return (1 - f(u[1:]) / f(u[:-1])).clamp(max=0.999)
    raise ValueError(f"unknown beta schedule {kind!r}; choose one of {SCHEDULES}")


def _check_timesteps(t: torch.Tensor, batch: int, T: int) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int64, torch.int32) or t.shape != (batch,):
        raise ValueError(f"t must be an integer tensor of shape ({batch},) (one 0-based timestep per sample), "
                         f"got {getattr(t, 'dtype', type(t).__name__)} of shape {tuple(getattr(t, 'shape', ()))}")
    # Checking the range of a CUDA tensor would cost a device sync on every training step; there an
    # out-of-range index stops with a device-side assert instead.
    if t.device.type == "cpu" and t.numel() and (int(t.min()) < 0 or int(t.max()) >= T):
        raise ValueError(f"timesteps are 0-based indices in [0, {T - 1}] (the paper's t = 1..{T} is index t - 1); "
                         f"got values from {int(t.min())} to {int(t.max())}")


class Diffusion:
    """The noise schedule and the forward process, built from ``betas`` (eq. 26-28).

    ``Diffusion()`` is the course's default: ``T = 500`` steps of the ``"linear_rescaled"`` schedule.
    ``Diffusion(beta_schedule("linear", 500))`` is the schedule exactly as printed.

    Attributes (float64, CPU): ``betas`` ``(T,)``; ``alpha_bar`` ``(T,)``, the paper's ``alpha_t``
    (E5), ``alpha_bar[i] = prod_{s <= i} (1 - betas[s])``; ``T``.
    """

    def __init__(self, betas: torch.Tensor | None = None):
        betas = beta_schedule() if betas is None else torch.as_tensor(betas)
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError(f"betas must be a non-empty 1-D tensor (one variance per step), got shape {tuple(betas.shape)}")
        betas = betas.detach().to("cpu", torch.float64)
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("every beta must lie strictly between 0 and 1 (a variance added per step); "
                             f"got values from {betas.min().item():.3g} to {betas.max().item():.3g}")
        self.betas = betas
        self.alpha_bar = torch.cumprod(1.0 - betas, dim=0)
        self.T = len(betas)
        self._tables: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def __repr__(self) -> str:
        return (f"Diffusion(T={self.T}, betas {self.betas[0].item():.3g} -> {self.betas[-1].item():.3g}, "
                f"alpha_bar_T={self.alpha_bar[-1].item():.3g})")

    @property
    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio ``alpha_bar / (1 - alpha_bar)`` of ``x_t`` at every index, ``(T,)``."""
        return self.alpha_bar / (1.0 - self.alpha_bar)

    def _alpha_bar_like(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``alpha_bar[t]`` on ``x``'s device in its arithmetic dtype, shaped ``(B, 1, ..., 1)`` to broadcast."""
        dtype = _work_dtype(x.dtype)
        key = (x.device, dtype)
        if key not in self._tables:  # one copy per device and dtype, not one transfer per call
            self._tables[key] = self.alpha_bar.to(device=x.device, dtype=dtype)
        return self._tables[key][t.to(x.device, non_blocking=True)].view(-1, *([1] * (x.ndim - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise`` (eq. 28) for 0-based ``t`` ``(B,)``.

        ``x0`` and ``noise`` have any shape ``(B, ...)``; the result has that shape, in float32 (or float64).
        """
        if noise.shape != x0.shape:
            raise ValueError(f"noise must have x0's shape {tuple(x0.shape)}, got {tuple(noise.shape)}")
        if x0.ndim == 0:
            raise ValueError("x0 needs a batch dimension: shape (B, ...)")
        _check_timesteps(t, x0.shape[0], self.T)
        ab = self._alpha_bar_like(t, x0)
        return ab.sqrt() * x0.to(ab.dtype) + (1.0 - ab).sqrt() * noise.to(ab.dtype)

    def loss(self, model: Model, x0: torch.Tensor, y: torch.Tensor | None = None, *, t: torch.Tensor | None = None,
             noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """The epsilon-prediction loss ``E ||eps - eps_theta(x_t, t, y)||^2`` (eq. 27), a scalar.

        ``t`` is drawn uniformly from ``{0, ..., T-1}`` (the paper's ``t ~ U{1..T}``) and ``noise`` from
        ``N(0, I)`` unless given. The squared error is averaged over every element, as DDPM's "simple" loss.
        """
        b = x0.shape[0]
        if t is None:
            t = torch.randint(0, self.T, (b,), generator=generator, device=_generator_device(generator, x0))
            t = t.to(x0.device, non_blocking=True)  # a CPU generator's draw: copied without waiting (_randn)
        if noise is None:
            noise = _randn(x0.shape, generator, x0.device, _work_dtype(x0.dtype))
        x_t = self.q_sample(x0, t, noise)
        eps = model(x_t, t, y)
        if eps.shape != x0.shape:
            raise ValueError(f"the model must return epsilon with x_t's shape {tuple(x0.shape)}, got {tuple(eps.shape)}")
        return ((eps.float() - noise.float()) ** 2).mean()


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    # float64 stays float64 (tests against an oracle); everything else (bf16, fp16, fp32) becomes float32.
    return torch.float64 if dtype == torch.float64 else torch.float32


def _generator_device(generator: torch.Generator | None, x: torch.Tensor) -> torch.device:
    return x.device if generator is None else generator.device


def _randn(shape: torch.Size, generator: torch.Generator | None, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # A CPU generator may drive CUDA sampling: draw where the generator lives, then move. A blocking copy to
    # the GPU would wait for every queued kernel (a synchronisation on each step); a non-blocking one from a
    # fresh host tensor does not, and is safe host -> device (the bytes are staged before the call returns).
    draw_on = device if generator is None else generator.device
    return torch.randn(shape, generator=generator, device=draw_on, dtype=dtype).to(device, non_blocking=True)


def _coef(value: float | torch.Tensor) -> torch.Tensor:
    # Python numbers become float64 scalars, so that coefficients such as 1 - a_t / a_prev (which cancels
    # near t = 0) are computed in double precision and rounded once, when they multiply a float32 tensor.
    return value if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=torch.float64)


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar_t: float | torch.Tensor) -> torch.Tensor:
    """The clean-data estimate ``z0_hat = (z_t - sqrt(1 - alpha_t) eps) / sqrt(alpha_t)`` (eq. 29; eq. 28 solved for z_0).

    ``alpha_bar_t`` is a float or a tensor that broadcasts against ``x_t`` (e.g. ``(B, 1, 1, 1)``).
    """
    ab = _coef(alpha_bar_t)
    return (x_t - (1.0 - ab).sqrt() * eps) / ab.sqrt()


def ddim_sigma(alpha_bar_t: float | torch.Tensor, alpha_bar_prev: float | torch.Tensor, eta: float) -> torch.Tensor:
    """The noise scale of eq. 29: ``sigma = eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev)``.

    ``eta = 0`` gives deterministic DDIM; ``eta = 1`` the DDPM posterior's standard deviation
    (``a`` = alpha_bar, the paper's alpha; ``a_prev`` is the previous timestep of the sub-sequence).
    """
    ab_t, ab_prev = _coef(alpha_bar_t), _coef(alpha_bar_prev)
    return eta * ((1.0 - ab_prev) / (1.0 - ab_t)).sqrt() * (1.0 - ab_t / ab_prev).sqrt()


def ddim_step(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar_t: float | torch.Tensor,
              alpha_bar_prev: float | torch.Tensor, eta: float = 0.0, noise: torch.Tensor | None = None) -> torch.Tensor:
    """One DDIM update (eq. 29), from ``alpha_bar_t`` to ``alpha_bar_prev``:

    ``z_prev = sqrt(a_prev) z0_hat + sqrt(1 - a_prev - sigma^2) eps + sigma noise``.

    The first term is where the clean estimate sits at the previous noise level, the second points
    back along the predicted noise, the third adds fresh noise (``noise`` must be given when ``eta > 0``).
    With ``eta = 0`` it also runs "upwards" (``a_prev < a_t``), which is DDIM inversion.
    """
    ab_t, ab_prev = _coef(alpha_bar_t), _coef(alpha_bar_prev)
    # eta = 0 skips the sigma formula, which is undefined when a_t = 1 or a_prev < a_t (inversion).
    sigma = ddim_sigma(ab_t, ab_prev, eta) if eta > 0 else torch.zeros_like(ab_prev)
    # Rounding can leave 1 - a_prev - sigma^2 a hair below 0 at eta = 1 when a_prev = 1.
    x_prev = ab_prev.sqrt() * predict_x0(x_t, eps, ab_t) + (1.0 - ab_prev - sigma**2).clamp(min=0.0).sqrt() * eps
    if eta > 0:
        if noise is None:
            raise ValueError("ddim_step with eta > 0 adds noise: pass noise=torch.randn_like(x_t)")
        x_prev = x_prev + sigma * noise
    return x_prev


def ddim_timesteps(T: int, num_steps: int, spacing: str = "trailing") -> torch.Tensor:
    """The DDIM sub-sequence of 0-based timesteps, in sampling order (descending), LongTensor ``(num_steps,)``.

    With ``r = T / num_steps``:

    * ``"trailing"``: ``round(T - k r) - 1`` for ``k = 0 .. num_steps-1``: starts at ``T - 1`` (the paper's
      ``z_T``), ends at about ``r - 1`` (the default);
    * ``"linspace"``: ``round(linspace(0, T - 1, num_steps))``: both ends included; one step gives ``[T - 1]``
      (diffusers gives ``[0]``, which would denoise pure noise as if it were almost clean);
    * ``"leading"``: ``k * (T // num_steps)``: starts at 0 and never reaches ``T - 1`` unless ``num_steps``
      divides ``T`` with ``T // num_steps = 1``: the first step sees less noise than ``x_T`` holds.

    These equal diffusers' ``timesteps`` for the same spacing (``steps_offset=0``), except ``linspace``
    with one step.
    """
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be a positive integer, got {T!r}")
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or not 1 <= num_steps <= T:
        raise ValueError(f"num_steps must be an integer from 1 to T={T}: a model trained with T={T} has only {T} "
                         f"timesteps to visit (docs/ERRATA.md, E10: Table 3's 1000-step row is a different, "
                         f"T=1000 model); got {num_steps!r}")
    k = torch.arange(num_steps, dtype=torch.float64)
    if spacing == "trailing":
        steps = torch.round(T - k * (T / num_steps)) - 1
    elif spacing == "linspace":
        steps = (torch.round(torch.linspace(0, T - 1, num_steps, dtype=torch.float64)).flip(0)
                 if num_steps > 1 else torch.tensor([T - 1.0]))
    elif spacing == "leading":
        steps = (k * (T // num_steps)).flip(0)
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of {SPACINGS}")
    return steps.long()


@dataclass
class SamplerStep:
    """What a sampler's ``callback`` receives after each step (for progress bars and trajectory capture).

    ``step`` counts from 0 to ``num_steps - 1``. The step went from timestep ``t_from`` to ``t_to``
    (0-based; ``-1`` is clean data, the paper's ``alpha_0 = 1``). ``x`` is the state after the step,
    ``x0_hat`` the clean estimate and ``eps`` the (guided) model output used by it; all ``(B, ...)``.
    """

    step: int
    num_steps: int
    t_from: int
    t_to: int
    x: torch.Tensor
    x0_hat: torch.Tensor
    eps: torch.Tensor


def _check_diffusion(diffusion: object) -> None:
    if not isinstance(diffusion, Diffusion):
        raise TypeError(f"a sampler needs a Diffusion (the schedule, e.g. Diffusion()), got {type(diffusion).__name__}")


class _Sampler:
    """What DDIM and DDPM sampling share: the (guided, autocast) model call and the loop over steps."""

    def __init__(self, diffusion: Diffusion, timesteps: torch.Tensor):
        _check_diffusion(diffusion)
        self.diffusion = diffusion
        self.timesteps = timesteps  # descending 0-based indices: the order the model sees them

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def _alpha_bar(self, t: int) -> float:
        return 1.0 if t < 0 else float(self.diffusion.alpha_bar[t])

    def _eps(self, model: Model, x: torch.Tensor, t: int | torch.Tensor, y: torch.Tensor | None,
             guidance_scale: float, null_label: int | None, autocast_dtype: torch.dtype | None) -> torch.Tensor:
        """``model(x, t, y)``, guided when ``guidance_scale != 1``; returned in ``x``'s (float32) dtype.
        ``t``: the step's timestep, a Python int or a 0-dim LongTensor on ``x``'s device (the static path)."""
        b = x.shape[0]
        t_in = t.expand(b) if isinstance(t, torch.Tensor) else torch.full((b,), t, dtype=torch.long, device=x.device)
        x_in, y_in = x, y
        guided = guidance_scale != 1.0
        if guided:  # one batched call: conditional rows first, then the same rows with the null label
            x_in, t_in = torch.cat([x, x]), torch.cat([t_in, t_in])
            y_in = torch.cat([y, torch.full_like(y, null_label)])
        with torch.autocast(device_type=x.device.type, dtype=autocast_dtype or torch.bfloat16,
                            enabled=autocast_dtype is not None):
            out = model(x_in, t_in, y_in)
        if not isinstance(out, torch.Tensor) or out.shape != x_in.shape:
            raise ValueError(f"the model must return epsilon with x_t's shape {tuple(x_in.shape)}, "
                             f"got {tuple(getattr(out, 'shape', ())) or type(out).__name__}")
        out = out.to(x.dtype)  # sampler arithmetic never runs in bf16
        if not guided:
            return out
        eps_c, eps_u = out.chunk(2)
        return eps_u + guidance_scale * (eps_c - eps_u)

    def _check_inputs(self, x: torch.Tensor, y: torch.Tensor | None, guidance_scale: float,
                      null_label: int | None) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim < 1 or x.shape[0] < 1 or not x.is_floating_point():
            raise ValueError("x must be a floating-point tensor of shape (B, ...) with B >= 1, e.g. torch.randn(B, 4, 4, 4)")
        if y is not None and (not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],) or y.is_floating_point()):
            raise ValueError(f"y must be a LongTensor of shape ({x.shape[0]},) (one label per sample) or None, "
                             f"got {getattr(y, 'dtype', type(y).__name__)} of shape {tuple(getattr(y, 'shape', ()))}")
        if guidance_scale != 1.0 and (y is None or null_label is None):
            raise ValueError("classifier-free guidance (guidance_scale != 1) needs labels y and the null_label the "
                             "model uses for 'no label' (DiT: the number of classes)")

    def _run(self, model: Model, x: torch.Tensor, y: torch.Tensor | None, pairs: list[tuple[int, int, int]],
             update: Callable[..., torch.Tensor], guidance_scale: float, null_label: int | None,
             callback: Callable[[SamplerStep], None] | None, progress: bool,
             autocast_dtype: torch.dtype | None, clip_x0: bool = False) -> torch.Tensor:
        """Loop over ``(t_from, t_to, t_model)``: the model sees timestep ``t_model``. ``clip_x0``: clamp ``x0_hat``
        to ``[-1, 1]`` and use the epsilon that clamped estimate implies (DDPM's ``clip_denoised``)."""
        self._check_inputs(x, y, guidance_scale, null_label)
        x = x.to(_work_dtype(x.dtype))
        if y is not None:
            y = y.to(device=x.device, dtype=torch.long)
        with torch.no_grad():
            for i, (t_from, t_to, t_model) in enumerate(tqdm(pairs, disable=not progress, leave=False)):
                eps = self._eps(model, x, t_model, y, guidance_scale, null_label, autocast_dtype)
                x0_hat = predict_x0(x, eps, self._alpha_bar(t_from))
                if clip_x0:  # eq. 28 solved for eps with the clamped x0: every update below then uses the clamped x0
                    ab = _coef(self._alpha_bar(t_from))
                    x0_hat = x0_hat.clamp(-1.0, 1.0)
                    eps = (x - ab.sqrt() * x0_hat) / (1.0 - ab).sqrt()
                x = update(x, eps, t_from, t_to)
                if callback is not None:
                    callback(SamplerStep(i, len(pairs), t_from, t_to, x, x0_hat, eps))
        return x

    def _step(self, x: torch.Tensor, eps: torch.Tensor, t: int, t_to: int,
              generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError

    def _static_update(self, x: torch.Tensor, eps: torch.Tensor, ab_t: torch.Tensor, ab_to: torch.Tensor) -> torch.Tensor:
        """The step as tensor arithmetic on 0-dim coefficients (no noise): what :meth:`_run_static` records."""
        raise ValueError(f"{type(self).__name__} adds fresh noise at every step; the static (CUDA graph) path "
                         f"runs deterministic DDIM only (DDIMSampler with eta=0)")

    def _run_static(self, model: Model, x: torch.Tensor, y: torch.Tensor | None, pairs: list[tuple[int, int, int]],
                    guidance_scale: float, null_label: int | None, autocast_dtype: torch.dtype | None,
                    clip_x0: bool, cuda_graph: bool) -> torch.Tensor:
        """The loop of :meth:`_run` with every per-step number read **on the device** (no Python value changes
        from one step to the next), so that one step, model call and update together, can be recorded once as a
        CUDA graph and replayed ``len(pairs)`` times: the GPU then never waits for Python to launch a kernel.

        The timesteps and the ``alpha_bar`` of both ends of every step sit in device tables; a device counter
        ``i`` selects the step's row and is advanced inside the step. The arithmetic is :meth:`_eps`,
        :func:`predict_x0` and the sampler's update with those 0-dim tensors in place of Python floats, so the
        result equals :meth:`_run`'s up to float rounding (tests/test_fast_sampling.py). ``cuda_graph=False`` runs
        the same step eagerly (any device; how the CPU tests check it).
        """
        self._check_inputs(x, y, guidance_scale, null_label)
        self._static_update(x[:1], x[:1], _coef(0.5), _coef(0.25))  # refuses a sampler that draws noise
        if cuda_graph and x.device.type != "cuda":
            raise ValueError(f"cuda_graph=True records the sampling step as a CUDA graph: x_T must be on a CUDA "
                             f"device, got {x.device}; leave cuda_graph False on a CPU")
        device, dtype = x.device, _work_dtype(x.dtype)
        t_table = torch.tensor([t_model for _, _, t_model in pairs], dtype=torch.long, device=device)
        ab_from = torch.tensor([self._alpha_bar(t) for t, _, _ in pairs], dtype=torch.float64, device=device)
        ab_to = torch.tensor([self._alpha_bar(t) for _, t, _ in pairs], dtype=torch.float64, device=device)
        i = torch.zeros((), dtype=torch.long, device=device)
        state = x.to(dtype).clone()
        if y is not None:
            y = y.to(device=device, dtype=torch.long)

        def step() -> None:
            eps = self._eps(model, state, t_table[i], y, guidance_scale, null_label, autocast_dtype)
            ab_t, ab_next = ab_from[i], ab_to[i]
            if clip_x0:  # as in _run: eps implied by the clamped x0 estimate
                x0_hat = predict_x0(state, eps, ab_t).clamp(-1.0, 1.0)
                eps = (state - ab_t.sqrt() * x0_hat) / (1.0 - ab_t).sqrt()
            state.copy_(self._static_update(state, eps, ab_t, ab_next))
            i.add_(1)

        with torch.no_grad():
            if not cuda_graph:
                for _ in pairs:
                    step()
                return state
            start = state.clone()
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):  # warm-up off the capture stream (cuBLAS workspaces, lazy init)
                step()
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
            state.copy_(start)
            i.zero_()
            for _ in pairs:
                graph.replay()
        return state

    def sample(self, model: Model, x_T: torch.Tensor, y: torch.Tensor | None = None, *, guidance_scale: float = 1.0,
               null_label: int | None = None, generator: torch.Generator | None = None,
               callback: Callable[[SamplerStep], None] | None = None, progress: bool = False,
               autocast_dtype: torch.dtype | None = None, clip_x0: bool = False,
               cuda_graph: bool = False) -> torch.Tensor:
        """Denoise ``x_T`` (any shape ``(B, ...)``) down ``timesteps`` to clean data (Algorithm 3).

        The step from ``timesteps[i]`` goes to ``timesteps[i + 1]``, the last one to clean data
        (``alpha_bar = 1``). ``y``: labels ``(B,)`` or ``None``; ``guidance_scale`` and ``null_label``:
        classifier-free guidance; ``generator`` drives the step noise; ``callback`` receives a
        :class:`SamplerStep` after every step; ``progress`` shows a tqdm bar; ``autocast_dtype`` (e.g.
        ``torch.bfloat16``) runs the model call under autocast. ``clip_x0=True`` clamps every clean estimate
        ``x0_hat`` to ``[-1, 1]`` before the step uses it, as DDPM's own sampler does for images
        (``clip_denoised``; diffusers' ``clip_sample``): for data known to lie in ``[-1, 1]`` (pixels, not
        latents). Returns float32 (float64 for float64 input).

        ``cuda_graph=True`` (``x_T`` on a CUDA device, deterministic DDIM only, no ``callback``): one step, the
        model call and the update, is recorded once as a CUDA graph and replayed for every step
        (:meth:`_run_static`); the model must run with static shapes and without host synchronisation (the FFTD,
        eager or ``torch.compile``'d in the default mode).
        """
        ts = [int(t) for t in self.timesteps]
        pairs = [(t, t_to, t) for t, t_to in zip(ts, ts[1:] + [-1])]
        if cuda_graph:
            if callback is not None:
                raise ValueError("cuda_graph=True replays the recorded steps without returning to Python: it cannot "
                                 "call a callback; sample without cuda_graph to watch the steps")
            return self._run_static(model, x_T, y, pairs, guidance_scale, null_label, autocast_dtype, clip_x0, True)

        def update(x: torch.Tensor, eps: torch.Tensor, t: int, t_to: int) -> torch.Tensor:
            return self._step(x, eps, t, t_to, generator)

        return self._run(model, x_T, y, pairs, update, guidance_scale, null_label, callback, progress, autocast_dtype,
                         clip_x0)


class DDIMSampler(_Sampler):
    """DDIM sampling (eq. 29, Algorithm 3) over a sub-sequence of ``num_steps`` of the ``T`` timesteps.

    ``eta = 0`` is deterministic (an ODE solver: the same ``x_T`` gives the same sample); ``eta = 1``
    with ``num_steps = T`` is DDPM's ancestral sampler. ``timesteps`` holds the sub-sequence
    (see :func:`ddim_timesteps` for ``spacing``). :meth:`invert` runs the deterministic map backwards.
    """

    def __init__(self, diffusion: Diffusion, num_steps: int = 50, spacing: str = "trailing", eta: float = 0.0):
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must lie in [0, 1] (0: deterministic DDIM, 1: DDPM-like noise), got {eta}")
        _check_diffusion(diffusion)
        super().__init__(diffusion, ddim_timesteps(diffusion.T, num_steps, spacing))
        self.spacing, self.eta = spacing, float(eta)

    def __repr__(self) -> str:
        return f"DDIMSampler(T={self.diffusion.T}, num_steps={self.num_steps}, spacing={self.spacing!r}, eta={self.eta})"

    def _step(self, x: torch.Tensor, eps: torch.Tensor, t: int, t_to: int,
              generator: torch.Generator | None) -> torch.Tensor:
        """Eq. 29 from ``t`` to ``t_to``, the next element of the sub-sequence (``-1``: clean data)."""
        ab_t, ab_to = self._alpha_bar(t), self._alpha_bar(t_to)
        # sigma is exactly 0 on the step to clean data (alpha_bar = 1): no noise is drawn there.
        noisy = self.eta > 0 and ab_to < 1.0
        noise = _randn(x.shape, generator, x.device, x.dtype) if noisy else None
        return ddim_step(x, eps, ab_t, ab_to, self.eta if noisy else 0.0, noise)

    def _static_update(self, x: torch.Tensor, eps: torch.Tensor, ab_t: torch.Tensor, ab_to: torch.Tensor) -> torch.Tensor:
        if self.eta > 0:
            raise ValueError(f"the static (CUDA graph) path runs deterministic DDIM only: this sampler has "
                             f"eta={self.eta}; use DDIMSampler(..., eta=0) or sample without cuda_graph")
        return ddim_step(x, eps, ab_t, ab_to, 0.0)

    def invert(self, model: Model, x0: torch.Tensor, y: torch.Tensor | None = None, *, guidance_scale: float = 1.0,
               null_label: int | None = None, callback: Callable[[SamplerStep], None] | None = None,
               progress: bool = False, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
        """DDIM inversion: map data ``x0`` to the noise ``x_T`` that deterministic sampling (eta = 0) maps back.

        It walks the sub-sequence upwards, from clean data to ``timesteps[0]``, with the eta = 0 update
        of eq. 29 in reverse. The exact inverse would need epsilon at the noisier point it is computing;
        like diffusers' ``DDIMInverseScheduler`` it uses the model at the *target* timestep on the current,
        less noisy point. The round trip is therefore exact only as steps shrink (chapter 06 measures it).
        This uses ``eta = 0`` whatever the sampler's ``eta``.
        """
        ts = [int(t) for t in self.timesteps.flip(0)]  # ascending
        pairs = [(t_from, t_to, t_to) for t_from, t_to in zip([-1] + ts[:-1], ts)]

        def update(x: torch.Tensor, eps: torch.Tensor, t_from: int, t_to: int) -> torch.Tensor:
            return ddim_step(x, eps, self._alpha_bar(t_from), self._alpha_bar(t_to), 0.0)

        return self._run(model, x0, y, pairs, update, guidance_scale, null_label, callback, progress, autocast_dtype)


class DDPMSampler(_Sampler):
    """DDPM ancestral sampling over all ``T`` timesteps (Ho et al. 2020, Algorithm 2), the baseline of Table 3/4.

    ``x_{t-1} = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(1 - beta_t) + sigma_t z`` with the
    posterior variance ``sigma_t^2 = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)`` ("fixed small")
    and no noise on the last step. It is written in DDPM's own form, not through eq. 29, so that the
    identity "DDIM with eta = 1 and all T steps is DDPM" is a real test.
    """

    def __init__(self, diffusion: Diffusion):
        _check_diffusion(diffusion)
        super().__init__(diffusion, torch.arange(diffusion.T - 1, -1, -1))

    def __repr__(self) -> str:
        return f"DDPMSampler(T={self.diffusion.T})"

    def _step(self, x: torch.Tensor, eps: torch.Tensor, t: int, t_to: int,
              generator: torch.Generator | None) -> torch.Tensor:
        """DDPM's ancestral step from ``t`` to ``t - 1`` (``t_to``), in its own form (not eq. 29)."""
        beta, ab, ab_prev = float(self.diffusion.betas[t]), self._alpha_bar(t), self._alpha_bar(t_to)
        mean = (x - beta / math.sqrt(1.0 - ab) * eps) / math.sqrt(1.0 - beta)
        if t == 0:
            return mean
        variance = beta * (1.0 - ab_prev) / (1.0 - ab)
        return mean + math.sqrt(variance) * _randn(x.shape, generator, x.device, x.dtype)
