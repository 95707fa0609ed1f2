"""Vector quantization: the codebook between the IVQ-VAE's encoder and decoder (section 3.1, L_vq of eq. 15).

The encoder's output ``z_e`` (``(B, C, H, W)``, one ``C``-dimensional vector per latent position) is
replaced by its nearest codebook vector. Two things make that trainable:

* the **straight-through estimator** copies the decoder's gradient at ``z_q`` onto ``z_e`` (argmin has
  no gradient of its own);
* the **vector-quantization loss** ``L_vq = ||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2`` pulls the chosen
  codes ``e`` towards the encoder outputs (codebook term) and keeps the encoder close to its codes
  (commitment term, weighted by ``beta``).

Choices the paper leaves open, named where the code makes them (numbered in ``docs/ERRATA.md``):

* E18: the paper names ``L_vq`` but prints no formula and no ``beta``. We use VQ-VAE's form with
  ``beta = 0.25`` on the **commitment** term. taming-transformers' ``VectorQuantizer2`` defaults to
  ``legacy=True``, which puts ``beta`` on the codebook term instead (taming issues #46, #57, PR #58); we do
  not follow that placement.
* E19: the paper is silent on codebook collapse, the main risk of 16384 codes of dimension 4 (E6).
  :class:`VectorQuantizer` offers the standard fixes as options: dead-code replacement from a buffer of
  recent encoder outputs, l2-normalised codes, k-means initialisation. :class:`FiniteScalarQuantizer`
  (FSQ, levels (16, 16, 8, 8) = 16384 codes in exactly 4 channels) has no codebook to collapse.

Both quantizers share one interface: ``forward(z)`` returns a :class:`QuantizerOutput`, ``lookup(indices)``
turns code indices back into latents, ``snap(z)`` maps a latent that already lives in code space (a
sample of the diffusion model, eq. 30) to its nearest code, ``num_codes`` and ``dim`` say the sizes, and
``usage()`` reports :func:`codebook_usage` over the last ``usage_window`` code assignments seen in training.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "QuantizerOutput",
    "CodebookUsage",
    "codebook_usage",
    "nearest_code",
    "straight_through",
    "vq_losses",
    "kmeans",
    "Quantizer",
    "VectorQuantizer",
    "FiniteScalarQuantizer",
    "fsq_levels_for",
]

# Largest (vectors x codes) distance block computed at once: 2**24 floats = 64 MiB. A 256 px batch at
# f = 8 (16 x 32 x 32 vectors) against 16384 codes would otherwise need a 1 GiB matrix.
_DISTANCE_BLOCK = 2**24


@dataclass
class QuantizerOutput:
    """What a quantizer's ``forward`` returns.

    ``z_q``: ``(B, C, H, W)`` quantized latent with the straight-through gradient (its values are codes,
    its gradient flows to ``z_e``); ``loss``: scalar ``L_vq`` (zero for FSQ); ``indices``: ``(B, H, W)``
    long code indices; ``codebook_loss`` and ``commitment_loss``: the two terms of ``L_vq`` before
    weighting; ``perplexity``: ``exp(entropy)`` of the code histogram of this batch (for logging; it grows
    with the batch size, so compare usage over a fixed window with :meth:`Quantizer.usage`).
    """

    z_q: torch.Tensor
    loss: torch.Tensor
    indices: torch.Tensor
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor
    perplexity: torch.Tensor


@dataclass
class CodebookUsage:
    """How a set of code indices uses a codebook of ``num_codes`` entries.

    ``distinct``: number of codes used at least once; ``perplexity``: ``exp`` of the entropy (natural log)
    of the empirical code distribution, i.e. the number of equally used codes that would have the same
    entropy (1 when one code takes everything, ``num_codes`` when all are used equally);
    ``counts``: ``(num_codes,)`` long, how often each code was used; ``total``: number of indices.
    """

    distinct: int
    perplexity: float
    counts: torch.Tensor
    num_codes: int
    total: int

    @property
    def fraction_used(self) -> float:
        """``distinct / num_codes``."""
        return self.distinct / self.num_codes

    @property
    def bits_per_code(self) -> float:
        """``log2(perplexity)``: the information one code carries at this usage (<= ``log2(num_codes)``)."""
        return math.log2(self.perplexity)


def codebook_usage(indices: torch.Tensor, num_codes: int) -> CodebookUsage:
    """Distinct codes, perplexity and per-code counts of ``indices`` (any shape) for a ``num_codes`` codebook.

    Report usage over a fixed, stated set (e.g. all held-out images): both numbers grow with the number of
    indices counted, so a batch's perplexity at batch size 1 is not comparable to one at batch size 64.
    """
    if num_codes <= 0:
        raise ValueError(f"num_codes must be positive, got {num_codes}")
    if indices.dtype.is_floating_point or indices.dtype == torch.bool:
        raise ValueError(f"indices must be an integer tensor, got dtype {indices.dtype}")
    flat = indices.reshape(-1).long()
    if flat.numel() and (flat.min() < 0 or flat.max() >= num_codes):
        raise ValueError(f"indices must lie in [0, {num_codes - 1}], got values from {int(flat.min())} to {int(flat.max())}")
    counts = torch.bincount(flat, minlength=num_codes)
    total = int(flat.numel())
    if total == 0:
        return CodebookUsage(0, 0.0, counts, num_codes, 0)
    p = counts.double() / total
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return CodebookUsage(int((counts > 0).sum()), float(entropy.exp()), counts, num_codes, total)


def nearest_code(z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Index of the nearest code (squared Euclidean distance) for each row: ``(N, D), (K, D) -> (N,)`` long.

    Uses ``||z||^2 - 2 z.e + ||e||^2`` in float32 blocks of rows, so that the ``(N, K)`` distance matrix
    never exceeds 64 MiB. Ties go to the lowest index. No gradient: argmin is piecewise constant.
    """
    if z.ndim != 2 or codes.ndim != 2 or z.shape[1] != codes.shape[1]:
        raise ValueError(f"nearest_code expects z (N, D) and codes (K, D) with the same D, got {tuple(z.shape)} and {tuple(codes.shape)}")
    with torch.no_grad():
        z, codes = z.float(), codes.float()
        codes_sq = (codes**2).sum(dim=1)  # (K,)
        rows = max(1, _DISTANCE_BLOCK // max(1, codes.shape[0]))
        out = []
        for start in range(0, z.shape[0], rows):
            block = z[start : start + rows]
            # ||z||^2 is the same for every code of a row, so it does not change the argmin; we keep it to
            # return the true squared distance in the formula the docstring states.
            dist = (block**2).sum(dim=1, keepdim=True) - 2.0 * block @ codes.T + codes_sq  # (n, K)
            out.append(dist.argmin(dim=1))
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=z.device)


def straight_through(z_e: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
    """Straight-through estimator: the values of ``z_q`` with the gradient of ``z_e``.

    ``z_e + sg[z_q - z_e]``: forward it equals ``z_q``; backward the stop-gradient term is a constant, so
    the gradient that arrives at the output is copied unchanged onto ``z_e``.
    """
    return z_e + (z_q - z_e).detach()


def vq_losses(z_e: torch.Tensor, z_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two terms of ``L_vq`` (section 3.1.3), each a mean squared error over all elements.

    Returns ``(codebook_loss, commitment_loss)``: ``codebook = ||sg[z_e] - e||^2`` moves only the codes,
    ``commitment = ||z_e - sg[e]||^2`` moves only the encoder. ``L_vq = codebook + beta * commitment``
    (beta on the commitment term; taming's legacy default puts it on the codebook term).
    """
    codebook_loss = F.mse_loss(z_q, z_e.detach())
    commitment_loss = F.mse_loss(z_e, z_q.detach())
    return codebook_loss, commitment_loss


def kmeans(x: torch.Tensor, k: int, iters: int = 10, normalize: bool = False,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Lloyd's k-means on the rows of ``x`` ``(N, D)``: returns ``(k, D)`` centres.

    Centres start at ``k`` random rows (with replacement plus a little noise when ``N < k``); an empty
    cluster keeps its previous centre. ``normalize=True`` projects the centres back onto the unit sphere
    after each update (spherical k-means, for l2-normalised codes).
    """
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"kmeans expects a non-empty (N, D) tensor, got shape {tuple(x.shape)}")
    if k <= 0 or iters < 0:
        raise ValueError(f"kmeans needs k > 0 and iters >= 0, got k={k}, iters={iters}")
    x = x.detach().float()
    n = x.shape[0]
    if n >= k:
        centres = x[torch.randperm(n, generator=generator, device="cpu")[:k].to(x.device)].clone()
    else:  # fewer points than codes: duplicates, nudged apart so that they can split later
        pick = torch.randint(n, (k,), generator=generator, device="cpu").to(x.device)
        noise = torch.randn(k, x.shape[1], generator=generator, device="cpu").to(x.device)
        centres = x[pick] + 1e-3 * (x.std(dim=0, unbiased=False) + 1e-6) * noise
    if normalize:
        centres = F.normalize(centres, dim=1)
    for _ in range(iters):
        assign = nearest_code(x, centres)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1)
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
        if normalize:
            centres = F.normalize(centres, dim=1)
    return centres


def _check_latent(z: torch.Tensor, dim: int, who: str) -> None:
    if z.ndim != 4:
        raise ValueError(f"{who} expects a latent of shape (B, C, H, W), got shape {tuple(z.shape)}")
    if z.shape[1] != dim:
        raise ValueError(f"{who} was built for {dim} latent channels but got {z.shape[1]} (shape {tuple(z.shape)}); "
                         f"the encoder's output channels must equal the quantizer's dim")


def _flatten(z: torch.Tensor) -> torch.Tensor:
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (B, C, H, W) -> (B*H*W, C)


def _unflatten(flat: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
    return flat.reshape(b, h, w, -1).permute(0, 3, 1, 2)  # (B*H*W, C) -> (B, C, H, W)


def _code_counts(indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """How often each code occurs in ``indices`` (any shape): ``(num_codes,)`` long, like ``bincount``.

    ``torch.bincount`` sizes its output from the largest index, which on CUDA reads that value on the host (a
    device synchronisation) and under torch.compile is a data-dependent shape; a scatter-add into a tensor of
    the known size ``num_codes`` is neither. Used in the forward passes; :func:`codebook_usage` keeps bincount.
    """
    flat = indices.reshape(-1).long()
    return torch.zeros(num_codes, dtype=torch.long, device=flat.device).scatter_add_(0, flat, torch.ones_like(flat))


def _batch_perplexity(indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    p = _code_counts(indices, num_codes).float() / max(1, indices.numel())
    return torch.exp(-(p * torch.log(p.clamp(min=1e-10))).sum())


class Quantizer(nn.Module):
    """The interface shared by :class:`VectorQuantizer` and :class:`FiniteScalarQuantizer`.

    Subclasses implement ``forward``, ``lookup`` and ``snap``. This base class keeps the last
    ``usage_window`` code indices assigned in training mode in a ring buffer (part of the state dict, so
    usage survives a resume) and reports them with :meth:`usage`. The window counts code assignments,
    not steps, so that usage read at batch size 1 and at batch size 64 means the same thing.
    """

    def __init__(self, num_codes: int, dim: int, usage_window: int | None = None):
        super().__init__()
        if num_codes <= 0 or dim <= 0:
            raise ValueError(f"num_codes and dim must be positive, got num_codes={num_codes}, dim={dim}")
        self.num_codes, self.dim = num_codes, dim
        # Default: four assignments per code, so that a healthy codebook can show every code as used.
        self.usage_window = 4 * num_codes if usage_window is None else usage_window
        if self.usage_window <= 0:
            raise ValueError(f"usage_window must be positive, got {usage_window}")
        self.register_buffer("recent_indices", torch.full((self.usage_window,), -1, dtype=torch.long))
        self.register_buffer("recent_position", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def _record_usage(self, indices: torch.Tensor) -> None:
        flat = indices.reshape(-1)[-self.usage_window :]
        slots = (self.recent_position + torch.arange(flat.numel(), device=flat.device)) % self.usage_window
        self.recent_indices[slots] = flat
        self.recent_position.add_(flat.numel()).remainder_(self.usage_window)

    def usage(self) -> CodebookUsage:
        """:func:`codebook_usage` of the last ``usage_window`` code assignments made in training mode."""
        seen = self.recent_indices[self.recent_indices >= 0]
        return codebook_usage(seen, self.num_codes)

    def reset_usage(self) -> None:
        """Forget the usage window (e.g. after changing the codebook by hand)."""
        self.recent_indices.fill_(-1)
        self.recent_position.zero_()

    def _check_indices(self, indices: torch.Tensor) -> None:
        if indices.ndim != 3:
            raise ValueError(f"lookup expects code indices of shape (B, H, W), got shape {tuple(indices.shape)}")
        if indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise ValueError(f"code indices must be an integer tensor, got dtype {indices.dtype}")
        # Values are checked only where reading them is free: CPU tensors outside torch.compile (on a GPU an
        # out-of-range index stops with a device-side assert instead of a synchronisation on every call).
        if (not torch.compiler.is_compiling() and indices.device.type == "cpu" and indices.numel()
                and (indices.min() < 0 or indices.max() >= self.num_codes)):
            raise ValueError(f"code indices must lie in [0, {self.num_codes - 1}], got values from "
                             f"{int(indices.min())} to {int(indices.max())}")

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Latents of the codes ``indices``: ``(B, H, W)`` long -> ``(B, C, H, W)``."""
        raise NotImplementedError

    def snap(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        """Nearest code to a latent already in code space (eq. 30): ``(B, C, H, W) -> (z_q, indices)``."""
        raise NotImplementedError


class VectorQuantizer(Quantizer):
    """Nearest-neighbour vector quantization with a learned codebook (section 3.1, ``L_vq`` of eq. 15).

    ``forward(z_e)``: every ``dim``-vector of ``z_e`` ``(B, dim, H, W)`` is replaced by its nearest code
    (:func:`nearest_code`), the gradient passes straight through (:func:`straight_through`), and
    ``loss = codebook_loss + beta * commitment_loss`` (:func:`vq_losses`; beta on the commitment term, not
    taming's legacy placement).

    Options against codebook collapse (the paper is silent on it; all off by default, i.e. plain VQ with
    taming's ``uniform(-1/K, 1/K)`` initialisation):

    * ``replace_dead_codes``: in training, codes used fewer than ``dead_code_threshold`` times in the last
      ``usage_window`` assignments are moved onto random encoder outputs from a buffer of the last
      ``buffer_size`` training vectors. The buffer matters: with a 4x4 latent an image makes only 16
      assignments, so one batch is too small a sample of the encoder's outputs. Checks happen each time
      another ``usage_window`` assignments have been counted, so a replaced code gets a full window to
      be chosen before it can be replaced again.
    * ``l2_normalize``: encoder outputs and codes are projected onto the unit sphere before the distance,
      and ``z_q`` is the normalised code (cosine similarity; ViT-VQGAN). Then ``z_q`` has unit norm.
    * ``kmeans_init``: on the first training ``forward`` the codebook is set by k-means on that batch's
      encoder outputs (:meth:`init_codebook` does the same on any vectors you pass). A batch with fewer
      vectors than codes (batch size 1 at f = 64 gives 16 for 16384 codes) leaves near-duplicate codes;
      dead-code replacement spreads them later, or call :meth:`init_codebook` on several batches first.

    Under ``torch.distributed`` the counts are summed over ranks and rank 0's replacement is broadcast,
    so that every rank keeps the same codebook. Both are collective calls: every rank must reach the check
    on the same step, which holds when all ranks use the same batch size.

    On a GPU the forward reads no tensor value on the host (no device synchronisation), and under
    ``torch.compile(fullgraph=True)`` it is one graph: the decisions "initialise now?" and "is the window
    full?" use Python counters that mirror the buffers (``initialized``, ``counts_since_check``), restored
    from them by ``load_state_dict``; the number of assignments per step is a static shape. In eager mode
    the forward calls :meth:`maintain` itself. A compiled forward does only the tensor bookkeeping (usage
    window, counts, buffer of recent outputs), so **a compiled training step calls**
    ``quantizer.maintain(n)`` **after each step**, with ``n = out.indices.numel()`` (``B * h * w``); the
    replacement then happens on the same steps as in eager mode. k-means initialisation cannot run inside a
    compiled forward: run one eager training step or :meth:`init_codebook` before compiling.
    """

    def __init__(self, num_codes: int, dim: int, beta: float = 0.25, *, l2_normalize: bool = False,
                 kmeans_init: bool = False, kmeans_iters: int = 10, replace_dead_codes: bool = False,
                 dead_code_threshold: int = 1, usage_window: int | None = None, buffer_size: int | None = None):
        super().__init__(num_codes, dim, usage_window)
        if beta < 0:
            raise ValueError(f"beta weighs the commitment loss and must be >= 0, got {beta}")
        if dead_code_threshold < 1:
            raise ValueError(f"dead_code_threshold is a count of uses in the window and must be >= 1, got {dead_code_threshold}")
        self.beta = beta
        self.l2_normalize, self.kmeans_init, self.kmeans_iters = l2_normalize, kmeans_init, kmeans_iters
        self.replace_dead_codes, self.dead_code_threshold = replace_dead_codes, dead_code_threshold
        self.buffer_size = self.usage_window if buffer_size is None else buffer_size
        if self.buffer_size <= 0:
            raise ValueError(f"buffer_size must be positive, got {buffer_size}")
        # taming's initialisation: tiny codes near the origin. Encoder outputs of order 1 then all find the
        # same few outermost codes, which is how plain VQ collapses (chapter 03 measures it).
        self.codebook = nn.Parameter(torch.empty(num_codes, dim).uniform_(-1.0 / num_codes, 1.0 / num_codes))
        self.register_buffer("initialized", torch.tensor(not kmeans_init))
        self.register_buffer("counts_since_check", torch.zeros(num_codes, dtype=torch.long))
        self.register_buffer("recent_z", torch.zeros(self.buffer_size, dim))
        self.register_buffer("recent_z_count", torch.zeros((), dtype=torch.long))
        self.register_buffer("replaced_total", torch.zeros((), dtype=torch.long))
        # Host-side mirrors of the buffers, so that the forward's decisions cost no device synchronisation.
        self._needs_init = bool(kmeans_init)  # not initialized
        self._assignments_since_check = 0  # counts_since_check.sum()

    def extra_repr(self) -> str:
        return (f"num_codes={self.num_codes}, dim={self.dim}, beta={self.beta}, l2_normalize={self.l2_normalize}, "
                f"kmeans_init={self.kmeans_init}, replace_dead_codes={self.replace_dead_codes}")

    def codes(self) -> torch.Tensor:
        """The codebook as used for lookup, ``(num_codes, dim)``: normalised rows if ``l2_normalize``."""
        return F.normalize(self.codebook, dim=1) if self.l2_normalize else self.codebook

    def _gather(self, indices: torch.Tensor) -> torch.Tensor:
        rows = self.codebook[indices]  # gather first, so that autograd saves the rows, not the whole codebook
        return F.normalize(rows, dim=-1) if self.l2_normalize else rows

    @torch.no_grad()
    def init_codebook(self, z: torch.Tensor) -> None:
        """Set the codebook to k-means centres of the vectors ``z`` (``(N, dim)``, or a ``(B, dim, H, W)`` latent)."""
        if z.ndim == 4:
            _check_latent(z, self.dim, "init_codebook")
            z = _flatten(z)
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise ValueError(f"init_codebook expects (N, {self.dim}) vectors or a (B, {self.dim}, H, W) latent, got {tuple(z.shape)}")
        if self.l2_normalize:
            z = F.normalize(z.float(), dim=1)
        self.codebook.copy_(kmeans(z, self.num_codes, self.kmeans_iters, normalize=self.l2_normalize))
        self.initialized.fill_(True)
        self._needs_init = False

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        # Loading is no hot path: read the loaded buffers once to set their host-side mirrors.
        self._needs_init = not bool(self.initialized)
        self._assignments_since_check = int(self.counts_since_check.sum())

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        _check_latent(z, self.dim, "VectorQuantizer")
        b, _, h, w = z.shape
        z_e = _flatten(z).float()  # (B, C, H, W) -> (BHW, C); quantize in float32 even under bf16 autocast
        if self.l2_normalize:
            z_e = F.normalize(z_e, dim=1)
        if self.training and self._needs_init:
            if torch.compiler.is_compiling():
                raise RuntimeError("VectorQuantizer(kmeans_init=True) initialises its codebook on the first training "
                                   "batch, which cannot run inside torch.compile: run one training step eagerly, or "
                                   "call init_codebook(z_e) on encoder outputs, before compiling")
            self.init_codebook(z_e.detach())
        indices = nearest_code(z_e, self.codes())  # (BHW,)
        z_q = self._gather(indices)  # (BHW, C)
        codebook_loss, commitment_loss = vq_losses(z_e, z_q)
        loss = codebook_loss + self.beta * commitment_loss
        z_st = straight_through(z_e, z_q)
        if self.training:
            self._after_training_step(z_e.detach(), indices)
        return QuantizerOutput(
            z_q=_unflatten(z_st, b, h, w),
            loss=loss,
            indices=indices.reshape(b, h, w),
            codebook_loss=codebook_loss,
            commitment_loss=commitment_loss,
            perplexity=_batch_perplexity(indices, self.num_codes),
        )

    @torch.no_grad()
    def _after_training_step(self, z_e: torch.Tensor, indices: torch.Tensor) -> None:
        self._record_usage(indices)
        if not self.replace_dead_codes:
            return
        self.counts_since_check += _code_counts(indices, self.num_codes)
        self._push_recent(z_e)
        if not torch.compiler.is_compiling():  # compiled: the trainer calls maintain() after the step
            # The codebook rows are not saved for backward (see _gather), so changing them here is safe.
            self.maintain(indices.numel())

    @torch.no_grad()
    def maintain(self, num_assignments: int) -> int:
        """Count ``num_assignments`` more training assignments and replace dead codes when the window is full.

        Returns how many codes moved (0 unless a check ran, and always 0 without ``replace_dead_codes``). The
        count is a Python integer (a batch's ``B * h * w``, a static shape), so deciding costs no device
        synchronisation; the replacement itself (:meth:`replace_dead_codes_now`) reads values once per window.
        The eager forward calls this itself. A compiled training step calls ``quantizer.maintain(n)`` after
        each step, with ``n = out.indices.numel()``, since a compiled forward makes no host decisions. Under
        ``torch.distributed`` every rank reaches the check on the same step, as all count the same numbers.
        """
        if not self.replace_dead_codes:
            return 0
        # A Python (or NumPy) integer, never a tensor: reading a tensor's value here would synchronise.
        is_int = hasattr(num_assignments, "__index__") and not isinstance(num_assignments, (bool, torch.Tensor))
        n = operator.index(num_assignments) if is_int else -1
        if n < 0:
            raise ValueError(f"maintain expects the number of code assignments of the step as an int >= 0 "
                             f"(out.indices.numel()), got {num_assignments!r}")
        self._assignments_since_check += n
        if self._assignments_since_check < self.usage_window:
            return 0
        return self.replace_dead_codes_now()

    @torch.no_grad()
    def _push_recent(self, z_e: torch.Tensor) -> None:
        if z_e.shape[0] > self.buffer_size:  # a huge batch: keep a random subset
            z_e = z_e[torch.randperm(z_e.shape[0], device=z_e.device)[: self.buffer_size]]
        n = z_e.shape[0]
        slots = (self.recent_z_count + torch.arange(n, device=z_e.device)) % self.buffer_size
        self.recent_z[slots] = z_e.float()
        self.recent_z_count += n

    @torch.no_grad()
    def replace_dead_codes_now(self) -> int:
        """Move every code used fewer than ``dead_code_threshold`` times since the last check onto a random
        recent encoder output (from the buffer), reset the counts, and return how many codes moved."""
        counts = self.counts_since_check.clone()
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed:
            torch.distributed.all_reduce(counts)
        dead = (counts < self.dead_code_threshold).nonzero().squeeze(1)
        filled = int(min(self.recent_z_count, self.buffer_size))
        moved = 0
        if dead.numel() and filled:
            if filled >= dead.numel():
                pick = torch.randperm(filled, device=dead.device)[: dead.numel()]
            else:
                pick = torch.randint(filled, (dead.numel(),), device=dead.device)
            new = self.recent_z[pick]
            self.codebook[dead] = F.normalize(new, dim=1) if self.l2_normalize else new
            moved = int(dead.numel())
        if distributed:
            torch.distributed.broadcast(self.codebook.data, src=0)
        self.counts_since_check.zero_()
        self._assignments_since_check = 0
        self.replaced_total += moved
        return moved

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Latents of the codes ``indices``: ``(B, H, W)`` long -> ``(B, dim, H, W)`` (to decode tokens)."""
        self._check_indices(indices)
        return self._gather(indices).permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)

    def snap(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest code to each vector of ``z`` ``(B, dim, H, W)``: returns ``(z_q, indices)`` (eq. 30).

        For a latent that already lives in code space, e.g. one sampled by the diffusion model. With
        ``l2_normalize`` the nearest unit code to ``z`` is the one of largest cosine, whatever the norm of
        ``z``, so no normalisation is needed. No gradient, no statistics.
        """
        _check_latent(z, self.dim, "VectorQuantizer.snap")
        b, _, h, w = z.shape
        with torch.no_grad():
            indices = nearest_code(_flatten(z), self.codes()).reshape(b, h, w)
            return self.lookup(indices), indices


def fsq_levels_for(num_codes: int, channels: int) -> tuple[int, ...]:
    """FSQ levels for ``num_codes`` codes in ``channels`` channels: powers of two, as even as possible.

    ``log2(num_codes)`` bits are shared out over the channels, the first channels taking the spare bits:
    16384 codes in 4 channels give ``(16, 16, 8, 8)`` (4 + 4 + 3 + 3 bits), 256 codes give ``(4, 4, 4, 4)``.
    This is the one place where a configuration's FSQ levels come from its code count.
    """
    bits = math.log2(num_codes) if num_codes > 0 else -1.0
    if channels <= 0 or bits != int(bits) or bits < channels:
        raise ValueError(f"no standard FSQ levels for {num_codes} codes in {channels} channels: the code count must be "
                         f"a power of two with at least one bit per channel (>= {2 ** max(channels, 0)}); pass fsq_levels "
                         f"explicitly, e.g. (8, 5, 5, 5) for 1000 codes in 4 channels")
    base, extra = divmod(int(bits), channels)
    return tuple(2 ** (base + (i < extra)) for i in range(channels))


class FiniteScalarQuantizer(Quantizer):
    """Finite scalar quantization (FSQ; Mentzer et al. 2023): a codebook that cannot collapse.

    Channel ``i`` of the latent is squashed into ``levels[i]`` values by ``tanh`` and rounded to the nearest
    one (straight-through). The implicit codebook is the grid of all combinations: levels (16, 16, 8, 8)
    give ``16*16*8*8 = 16384`` codes in exactly 4 channels, the paper's codebook size and latent channels.
    There is nothing to learn and no ``L_vq`` (``loss`` is zero): the encoder learns to spread its outputs
    over the grid. ``z_q`` lies in ``[-1, 1]``: level values ``(q - L//2) / (L//2)`` for ``q = 0 .. L-1``.
    """

    def __init__(self, levels: tuple[int, ...] = (16, 16, 8, 8), usage_window: int | None = None, eps: float = 1e-3):
        levels = tuple(int(v) for v in levels)
        if not levels or any(v < 2 for v in levels):
            raise ValueError(f"FSQ needs at least one channel and at least 2 levels per channel, got levels={levels}")
        super().__init__(math.prod(levels), len(levels), usage_window)
        self.levels = levels
        self.register_buffer("_levels", torch.tensor(levels, dtype=torch.long), persistent=False)
        # Mixed-radix place values: index = sum_i digit_i * prod(levels[:i]).
        basis = torch.cumprod(torch.tensor((1,) + levels[:-1], dtype=torch.long), dim=0)
        self.register_buffer("_basis", basis, persistent=False)
        self.eps = eps

    def extra_repr(self) -> str:
        return f"levels={self.levels}, num_codes={self.num_codes}"

    def _shape(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(1, -1, 1, 1)  # per-channel constants broadcast over (B, C, H, W)

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """Squash each channel into ``(-L/2 - eps', L/2 - 1 + eps')`` (odd L: ``(-(L-1)/2, (L-1)/2)``) so that
        rounding gives exactly ``L`` integers. For even L the tanh is shifted by half a level, so that the zero
        input maps to 0 as in the FSQ reference."""
        levels = self._shape(self._levels).to(z.dtype)
        half = (levels - 1) * (1 + self.eps) / 2
        offset = torch.where(levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half)
        return torch.tanh(z + shift) * half - offset

    def _digits_to_latent(self, digits: torch.Tensor) -> torch.Tensor:
        half_width = self._shape(self._levels // 2)
        return (digits - half_width).float() / half_width

    def _indices(self, digits: torch.Tensor) -> torch.Tensor:
        return (digits.long() * self._shape(self._basis)).sum(dim=1)  # (B, C, H, W) -> (B, H, W)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        _check_latent(z, self.dim, "FiniteScalarQuantizer")
        bounded = self.bound(z.float())
        rounded = straight_through(bounded, bounded.round())  # integers in [-L//2, (L-1)//2]
        half_width = self._shape(self._levels // 2)
        z_q = rounded / half_width
        digits = rounded.detach().long() + half_width  # in [0, L-1]
        indices = self._indices(digits)
        if self.training:
            self._record_usage(indices)
        zero = z.new_zeros((), dtype=torch.float32)
        return QuantizerOutput(z_q=z_q, loss=zero, indices=indices, codebook_loss=zero, commitment_loss=zero,
                               perplexity=_batch_perplexity(indices, self.num_codes))

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Grid latents of the codes ``indices``: ``(B, H, W)`` long -> ``(B, C, H, W)``."""
        self._check_indices(indices)
        digits = (indices.long().unsqueeze(1) // self._shape(self._basis)) % self._shape(self._levels)
        return self._digits_to_latent(digits)

    def snap(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest grid point to a latent in ``z_q`` space (eq. 30): ``(B, C, H, W) -> (z_q, indices)``.

        Unlike ``forward``, no ``tanh`` is applied: ``z`` is taken to be already on the ``[-1, 1]`` scale of
        ``z_q`` (as a diffusion sample of FSQ latents is); values outside are clamped to the grid.
        """
        _check_latent(z, self.dim, "FiniteScalarQuantizer.snap")
        with torch.no_grad():
            half_width = self._shape(self._levels // 2)
            digits = (z.float() * half_width).round() + half_width
            digits = torch.minimum(digits.clamp(min=0), self._shape(self._levels - 1).float()).long()
            return self._digits_to_latent(digits), self._indices(digits)
