"""fftd_course: the package the FFTD course builds, in layers; each layer imports only from the ones above it.

**Model (what the chapters teach), at the top level** so that learners type ``fftd_course.blocks``:
stage 1 (IVQ-VAE, section 3.1): :mod:`.blocks` (eq. 1-10), :mod:`.quantize` (L_vq, codebook usage),
:mod:`.losses` (eq. 11-15), :mod:`.ivqvae` (the autoencoder and its configurations); stages 2-3 (section 3.3):
:mod:`.diffusion` (eq. 26-30: schedules, DDIM and DDPM samplers), :mod:`.mixture` (a Gaussian mixture whose
optimal noise predictor is known in closed form), :mod:`.fusion` (AdaptiveFusion, eq. 18-25, and the plain
fusions of Table 9), :mod:`.fftd` (the FFTD hourglass, section 3.2, eq. 16-17); :mod:`.pipeline` (Algorithms
1-3, eq. 30; ``LatentDiffusion`` holds both stages, ``load_toy()`` the committed toy generator); the pixel-space
DDPM baseline (section 4.3.4): :mod:`.unet` (DDPM's U-Net) and :mod:`.baseline` (``PixelDiffusion``, and
``load_generator`` for either kind of generator file). Beside them
the base they share: :mod:`.data` (toy animal faces, image folders, the trainer's data order), :mod:`.configs`
(what the named configurations share), :mod:`.checkpoints` (files that hold work), :mod:`.viz` (pictures),
:mod:`.timing` (measurement clocks), and this module (``setup_chapter``, ``default_device``).

**Training** (:mod:`.training`, also importable as ``fftd_course.train``): the engine that trains both stages
at full scale, its stages, settings and presets.

**Evaluation** (:mod:`.evaluation`): measuring models: :mod:`.evaluation.metrics` (L1, LPIPS, FID, eq. 31),
:mod:`.evaluation.judge` (class accuracy of toy samples), :mod:`.evaluation.bench` (training and sampling
throughput on the current device).

**Course machinery**: :mod:`.checks` (the exercise checks, one module per chapter; every notebook imports it
by this name) and :mod:`.course` (releasing student notebooks, grading, the static site, the syllabus).

**Command lines**, on top of everything: ``python -m fftd_course`` (:mod:`.cli`: train-ivqvae, train-fftd,
train-ddpm, sample, fid, bench, toy-data) and ``python -m fftd_course.demo`` (:mod:`.demo`, ``make demo``).

The old flat names ``fftd_course.metrics``, ``.judge``, ``.bench``, ``.assignments``, ``.grading``, ``.site``
and ``.syllabus`` stay importable (and runnable with ``python -m``) for released notebooks: each is the same
module object as its new home. ``tests/test_layering.py`` enforces the layers and the absence of import cycles.
"""

from __future__ import annotations

import os
import time

import torch

__version__ = "0.1.0"


def default_device() -> torch.device:
    """CUDA when a GPU is present, else CPU; ``FFTD_DEVICE=cpu`` (or ``cuda:1``...) overrides it."""
    wanted = os.environ.get("FFTD_DEVICE")
    if wanted:
        device = torch.device(wanted)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"FFTD_DEVICE={wanted} asks for CUDA, but PyTorch sees no GPU here; unset it or use cpu")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


_chapter_started: float | None = None


def setup_chapter(seed: int = 0, threads: int | None = None) -> torch.device:
    """The one setup call at the top of every chapter; returns the device to use (:func:`default_device`).

    It seeds PyTorch's global generator with ``seed``, sets the number of CPU threads when ``threads`` is given
    (chapters whose tensors are tiny run faster on one thread than on several that wait for each other),
    starts the clock that :func:`chapter_seconds` reads, and prints one line saying where the chapter runs.
    Plots follow ``FFTD_STATIC_PLOTS`` (see :func:`fftd_course.viz.explore`), set by the test run.
    """
    global _chapter_started
    torch.manual_seed(seed)
    if threads is not None:
        torch.set_num_threads(threads)
    device = default_device()
    _chapter_started = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"fftd_course {__version__}, PyTorch {torch.__version__}, running on {device} ({name}); seed {seed}")
    return device


def chapter_seconds() -> float:
    """Seconds since :func:`setup_chapter` (for a chapter's closing line)."""
    if _chapter_started is None:
        raise RuntimeError("call fftd_course.setup_chapter() at the top of the chapter first")
    return time.perf_counter() - _chapter_started
