"""``python -m fftd_course``: the course's command line (see :mod:`fftd_course.cli`)."""

import sys

from .cli import main

sys.exit(main())
