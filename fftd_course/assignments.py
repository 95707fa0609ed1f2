"""Now fftd_course.course.assignments; the old name is kept for released notebooks and `python -m fftd_course.assignments`."""
import sys
from .course import assignments as _module

if __name__ == "__main__":  # python -m fftd_course.assignments: what python -m fftd_course.course.assignments does
    sys.exit(_module.main())
else:
    sys.modules[__name__] = _module  # `import fftd_course.assignments` gives the module itself
