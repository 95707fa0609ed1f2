"""fftd_course: the package the FFTD course builds, one module per idea.

Stage 1 (IVQ-VAE, section 3.1): :mod:`.blocks` (eq. 1-10), :mod:`.quantize` (L_vq, codebook usage),
:mod:`.losses` (eq. 11-15), :mod:`.ivqvae` (the autoencoder and its configurations).
Stages 2-3 (section 3.3): :mod:`.diffusion` (eq. 26-30: schedules, DDIM and DDPM samplers),
:mod:`.mixture` (a Gaussian mixture whose optimal noise predictor is known in closed form),
:mod:`.fusion` (AdaptiveFusion, eq. 18-25, and the plain fusions of Table 9), :mod:`.fftd` (the FFTD
hourglass, section 3.2, eq. 16-17).
Training and sampling: :mod:`.pipeline` (Algorithms 1-3, eq. 30; ``LatentDiffusion`` holds both stages,
``load_toy()`` the committed toy generator). Evaluation: :mod:`.metrics` (L1, LPIPS, FID, eq. 31),
:mod:`.judge` (class accuracy of toy samples). ``python -m fftd_course.demo`` (:mod:`.demo`) is ``make demo``;
``python -m fftd_course.bench`` (:mod:`.bench`) measures training and sampling throughput on the current device.
Full-scale training: :mod:`.train` (``TrainConfig``, presets, the trainer for both stages) and
``python -m fftd_course`` (:mod:`.cli`: train-ivqvae, train-fftd, sample, fid, bench, toy-data).
Data: :mod:`.data` (toy animal faces, image folders, the trainer's data order).
Course machinery: :mod:`.checks` (exercise checks), :mod:`.assignments` (solutions -> student notebooks),
:mod:`.viz` (pictures), :mod:`.timing` (measurement clocks), :mod:`.configs` (what the named configurations share).
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
