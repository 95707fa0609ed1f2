"""Evaluation: measuring models, never training or changing them.

* :mod:`.metrics`: reconstruction L1 and LPIPS wrappers and FID (eq. 31) with real Inception weights,
  offline; codebook usage re-exported from :mod:`fftd_course.quantize`.
* :mod:`.judge`: the class judge, a small classifier that says how often a generated "cat" is seen as a cat.
* :mod:`.bench`: training and sampling throughput of both stages on the current device
  (``python -m fftd_course.evaluation.bench``, or ``python -m fftd_course bench``).

These modules build on the model modules (:mod:`fftd_course.pipeline`, :mod:`fftd_course.losses`, ...) and
import nothing from training (:mod:`fftd_course.train`, :mod:`fftd_course.training`) or from the course's
machinery (:mod:`fftd_course.course`); ``tests/test_layering.py`` holds them to that. Released notebooks
import them by their old names (``from fftd_course import metrics``), which stay as aliases of these modules.
The exercise checks are not here: they live in :mod:`fftd_course.checks`, which stays where it is because
every notebook imports it by that name.
"""
