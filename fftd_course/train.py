"""The trainer's old name: ``fftd_course.train`` is :mod:`fftd_course.training` (kept for released notebooks)."""

import sys

from . import training as _module

sys.modules[__name__] = _module
