"""The course's own machinery: what turns the chapters into a course, none of it taught by a chapter.

* :mod:`.sources`: where the chapters are, and how a solution chapter's text becomes a student notebook
  (the pieces that releasing, grading, the site and the syllabus share; it imports none of them).
* :mod:`.assignments`: releasing student notebooks from ``solutions/`` and checking every pair is in sync
  (``python -m fftd_course.course.assignments release|check|grade``, ``make release``, ``make check-sync``).
* :mod:`.grading`: scoring submitted notebooks, each run in a fresh kernel (``... assignments grade``).
* :mod:`.site`: the course as a static web site (``python -m fftd_course.course.site``, ``make html``).
* :mod:`.syllabus`: SYLLABUS.md's table of chapter times (``python -m fftd_course.course.syllabus``,
  ``make syllabus``).

These modules may build on every other layer of the package (they run the chapters), while the model,
training and evaluation code imports nothing from here; ``tests/test_layering.py`` holds the package to that. The old names
(``fftd_course.assignments``, ``python -m fftd_course.site``, ...) stay as aliases of these modules.
The exercise checks are course machinery too, but they live in :mod:`fftd_course.checks`, which stays where
it is because every notebook imports it by that name (``from fftd_course import checks``).
"""
