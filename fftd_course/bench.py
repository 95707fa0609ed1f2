"""Now fftd_course.evaluation.bench; the old name is kept for released notebooks and `python -m fftd_course.bench`."""
import sys
from .evaluation import bench as _module

if __name__ == "__main__":  # python -m fftd_course.bench: what python -m fftd_course.evaluation.bench does
    _module.main()
else:
    sys.modules[__name__] = _module  # `import fftd_course.bench` gives the module itself
