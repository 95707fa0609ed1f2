"""The stage registry: ``STAGES[name]`` is the class that trains stage ``name``.

A new stage (as the pixel-space DDPM baseline, ``stages/ddpm.py``) is one subclass of
:class:`~fftd_course.training.stages.base.Stage` decorated with :func:`register`, imported by
``fftd_course/training/stages/__init__.py``. Its name is the ``stage`` setting and the tag in its checkpoints,
its ``command`` the command line's train command, its ``presets`` the presets the command offers.
"""

from __future__ import annotations

from typing import Any

__all__ = ["STAGES", "register"]

STAGES: dict[str, Any] = {}


def register(cls):
    """Class decorator: add a stage class under its ``name`` (a name may be registered once)."""
    name = cls.name
    if name in STAGES and STAGES[name] is not cls:
        raise ValueError(f"a stage named {name!r} is already registered ({STAGES[name].__qualname__})")
    STAGES[name] = cls
    return cls
