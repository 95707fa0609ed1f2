"""fftd_course: the package the FFTD course builds, one module per idea.

Stage 1 (IVQ-VAE): :mod:`.blocks` (eq. 1-10). Data: :mod:`.data` (toy animal faces).
Course machinery: :mod:`.checks` (exercise checks), :mod:`.assignments` (solutions -> student
notebooks), :mod:`.viz` (pictures).
"""

from __future__ import annotations

import os

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
