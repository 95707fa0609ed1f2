"""Now fftd_course.course.syllabus; the old name is kept for released notebooks and `python -m fftd_course.syllabus`."""
import sys
from .course import syllabus as _module

if __name__ == "__main__":  # python -m fftd_course.syllabus: what python -m fftd_course.course.syllabus does
    sys.exit(_module.main())
else:
    sys.modules[__name__] = _module  # `import fftd_course.syllabus` gives the module itself
