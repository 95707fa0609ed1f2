"""An analytic test bed for diffusion: a Gaussian mixture whose optimal epsilon-predictor is closed-form.

If the data are a mixture of Gaussians ``sum_k w_k N(mu_k, diag(s_k^2))``, then every noisy marginal
of eq. 28 is one too: ``x_t ~ sum_k w_k N(sqrt(a) mu_k, diag(a s_k^2 + 1 - a))`` with ``a = alpha_bar_t``.
The best possible epsilon-predictor (the minimiser of eq. 27) is the posterior mean of the noise,
which Tweedie's formula ties to the score of that marginal:

    eps*(x_t, t) = E[eps | x_t] = -sqrt(1 - a) grad log p_t(x_t)
                 = sqrt(1 - a) sum_k r_k(x_t) (x_t - sqrt(a) mu_k) / (a s_k^2 + 1 - a),

where ``r_k(x_t)`` is the posterior probability of component ``k``. So a sampler can be tested
without training anything: with this "perfect model", whatever error remains in the samples is the
sampler's own (step count, eta, schedule). Labels select a component (``y = k``), which gives a
class-conditional model with a null label (``y = K``) for classifier-free guidance.

The mixture lives in any event shape: 2-D points for pictures, or ``(3, H, W)`` images (each
component a picture with a little noise around it: the optimal model of a small image data set).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .diffusion import Diffusion

__all__ = ["GaussianMixture", "toy_mixture_2d"]


def _softmax_over_components(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over dim 0 of ``(K, n)`` logits. Written out because ``torch.softmax`` over a short
    leading dim can take milliseconds on a busy CPU (thread start-up for microseconds of work)."""
    e = (logits - logits.amax(0, keepdim=True)).exp()
    return e / e.sum(0, keepdim=True)


class GaussianMixture:
    """``sum_k w_k N(mu_k, diag(s_k^2))`` in any event shape, with its exact noisy marginals.

    ``means``: ``(K, *event_shape)``; ``stds``: ``(K, *event_shape)`` or ``(K,)`` (one std per component);
    ``weights``: ``(K,)``, positive (normalised here). Computations run in float64.
    """

    def __init__(self, means: torch.Tensor, stds: torch.Tensor, weights: torch.Tensor | None = None):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim < 1 or len(means) < 1:
            raise ValueError(f"means must have shape (K, *event_shape) with K >= 1, got {tuple(means.shape)}")
        k = len(means)
        stds = torch.as_tensor(stds, dtype=torch.float64)
        if stds.shape == (k,):
            stds = stds.view(k, *([1] * (means.ndim - 1))).expand_as(means)
        if stds.shape != means.shape or not bool((stds > 0).all()):
            raise ValueError(f"stds must be positive with shape ({k},) or {tuple(means.shape)}, got {tuple(stds.shape)}")
        weights = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (k,) or not bool((weights > 0).all()):
            raise ValueError(f"weights must be {k} positive numbers, got {weights.tolist()}")
        self.means = means.reshape(k, -1)  # flattened: (K, D)
        self.stds = stds.reshape(k, -1).contiguous()
        self.weights = weights / weights.sum()
        self.event_shape = tuple(means.shape[1:])
        self.K = k
        self.null_label = k  # y = K means "no label": the whole mixture

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` draws: ``(x (n, *event_shape) float32, component labels (n,) int64)``."""
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[labels] + self.stds[labels] * z
        return x.float().view(n, *self.event_shape), labels

    def mean(self) -> torch.Tensor:
        """The mixture's mean, flattened ``(D,)``."""
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        """The mixture's covariance, flattened ``(D, D)``: ``sum_k w_k (diag(s_k^2) + mu_k mu_k^T) - m m^T``."""
        m = self.mean()
        second = torch.einsum("k,kd,ke->de", self.weights, self.means, self.means)
        return second + torch.diag(self.weights @ self.stds**2) - torch.outer(m, m)

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, self.event_shape))}), got {tuple(x.shape)}")
        return x.to("cpu", torch.float64).reshape(len(x), -1)  # keeps autograd: log_prob can be differentiated

    def _per_alpha_bar(self, x: torch.Tensor, alpha_bar: float | torch.Tensor) -> list[tuple[slice | torch.Tensor, torch.Tensor, float]]:
        """Split the batch by noise level: ``[(rows, flat x (n, D) float64, alpha_bar)]``.

        Sampling calls have one noise level for the whole batch: one group, no gathering.
        """
        xf = self._flat(x)
        a = torch.as_tensor(alpha_bar, dtype=torch.float64).cpu().reshape(-1)
        if len(a) not in (1, len(xf)):
            raise ValueError(f"alpha_bar must be a number or one value per sample ({len(xf)}), got {len(a)} values")
        if bool((a == a[0]).all()):
            return [(slice(None), xf, float(a[0]))]
        return [(rows, xf[rows], float(value)) for value in a.unique() for rows in [torch.nonzero(a == value).squeeze(1)]]

    def _log_joint(self, xf: torch.Tensor, a: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``log w_k + log N(x; sqrt(a) mu_k, diag(v_k))`` ``(K, n)`` with ``v_k = a s_k^2 + 1 - a``; also ``1/v``, ``m/v``.

        Written with matrix products, ``|x - m|^2 / v = x^2 . 1/v - 2 x . m/v + m^2 . 1/v``, so that no
        ``(n, K, D)`` tensor is built: image-sized mixtures stay fast. Components run along dim 0
        because reductions over a short leading dim are much faster than over a short last dim.
        """
        m = math.sqrt(a) * self.means                               # (K, D) component means at this noise level
        inv_v = 1.0 / (a * self.stds**2 + (1.0 - a))                # (K, D)
        m_over_v = m * inv_v
        quad = inv_v @ (xf**2).T - 2.0 * m_over_v @ xf.T + (m * m_over_v).sum(1, keepdim=True)  # (K, n)
        log_n = -0.5 * (quad - inv_v.log().sum(1, keepdim=True) + self.dim * math.log(2 * math.pi))
        return self.weights.log()[:, None] + log_n, inv_v, m_over_v

    def log_prob(self, x: torch.Tensor, alpha_bar: float | torch.Tensor = 1.0) -> torch.Tensor:
        """``log p_t(x)`` of the noisy marginal at ``alpha_bar`` (1: the data), ``(B,)`` float64."""
        out = torch.empty(len(x), dtype=torch.float64)
        for rows, xf, a in self._per_alpha_bar(x, alpha_bar):
            out[rows] = torch.logsumexp(self._log_joint(xf, a)[0], dim=0)
        return out

    def responsibilities(self, x: torch.Tensor, alpha_bar: float | torch.Tensor = 1.0) -> torch.Tensor:
        """Posterior component probabilities ``r_k(x)`` at ``alpha_bar``, ``(B, K)`` float64."""
        out = torch.empty(len(x), self.K, dtype=torch.float64)
        for rows, xf, a in self._per_alpha_bar(x, alpha_bar):
            out[rows] = _softmax_over_components(self._log_joint(xf, a)[0]).T
        return out

    def optimal_eps(self, x_t: torch.Tensor, alpha_bar: float | torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``E[eps | x_t]``, the minimiser of eq. 27, in ``x_t``'s shape, dtype and device.

        ``alpha_bar`` is a float or a ``(B,)`` tensor. ``y`` (``(B,)``, optional) picks a component per
        sample; ``y = null_label`` (or ``y = None``) uses the whole mixture.
        """
        conditional = None
        if y is not None:
            y = y.detach().cpu().long()
            if y.shape != (len(x_t),) or bool(((y < 0) | (y > self.K)).any()):
                raise ValueError(f"y must hold ({len(x_t)},) labels in [0, {self.K}] ({self.K} = null label)")
            conditional = y < self.K
        eps = torch.empty(len(x_t), self.dim, dtype=torch.float64)
        for rows, xf, a in self._per_alpha_bar(x_t, alpha_bar):
            log_joint, inv_v, m_over_v = self._log_joint(xf, a)
            r = _softmax_over_components(log_joint).T                               # (n, K)
            if conditional is not None:  # a label pins the component: its posterior is one-hot
                one_hot = F.one_hot(y[rows].clamp(max=self.K - 1), self.K).double()
                r = torch.where(conditional[rows, None], one_hot, r)
            # sqrt(1 - a) sum_k r_k (x - m_k) / v_k, again as matrix products: (n, D)
            eps[rows] = math.sqrt(1.0 - a) * (xf * (r @ inv_v) - r @ m_over_v)
        return eps.view_as(x_t).to(device=x_t.device, dtype=x_t.dtype)

    def eps_model(self, diffusion: Diffusion):
        """The optimal model for ``diffusion``'s schedule, called like a network: ``model(x_t, t, y) -> eps``."""
        def model(x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
            t = t.detach().cpu()
            same = len(t) > 0 and bool((t == t[0]).all())  # sampling: one timestep for the whole batch
            return self.optimal_eps(x_t, float(diffusion.alpha_bar[t[0]]) if same else diffusion.alpha_bar[t], y)

        return model


def toy_mixture_2d() -> GaussianMixture:
    """The chapter's 2-D data set: three unequal, well-separated clusters (weights 0.5, 0.3, 0.2)."""
    means = torch.tensor([[-1.5, -0.8], [1.6, -0.6], [0.2, 1.6]])
    stds = torch.tensor([[0.35, 0.2], [0.2, 0.45], [0.3, 0.3]])
    return GaussianMixture(means, stds, torch.tensor([0.5, 0.3, 0.2]))
