"""Now fftd_course.course.site; the old name is kept for released notebooks and `python -m fftd_course.site`."""
import sys
from .course import site as _module

if __name__ == "__main__":  # python -m fftd_course.site: what python -m fftd_course.course.site does
    sys.exit(_module.main())
else:
    sys.modules[__name__] = _module  # `import fftd_course.site` gives the module itself
