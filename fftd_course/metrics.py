"""Now fftd_course.evaluation.metrics; the old name is kept for released notebooks (it is the same module object)."""
import sys
from .evaluation import metrics as _module
sys.modules[__name__] = _module
