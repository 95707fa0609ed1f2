"""Pictures for the chapters: image grids, per-class grids and sliders with a static fallback."""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Sequence

import matplotlib.pyplot as plt
import torch
from torchvision.utils import make_grid

__all__ = ["to_unit_range", "show_images", "show_class_grid", "explore", "live_generator"]


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """Map images from the model range ``[-1, 1]`` to the display range ``[0, 1]`` (clamped)."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def show_images(images: torch.Tensor, nrow: int = 8, title: str | None = None, ax: plt.Axes | None = None,
                scale: float = 1.0) -> plt.Axes:
    """Draw a batch ``(B, 3, H, W)`` of ``[-1, 1]`` images as one grid; returns the axes."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"show_images expects (B, 1 or 3, H, W) images, got shape {tuple(images.shape)}")
    grid = make_grid(to_unit_range(images.detach().float().cpu()), nrow=nrow, padding=1, pad_value=1.0)
    if ax is None:
        rows = (len(images) + nrow - 1) // nrow
        _, ax = plt.subplots(figsize=(scale * min(nrow, len(images)), scale * rows + (0.4 if title else 0)))
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def show_class_grid(images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], per_class: int = 8,
                    scale: float = 1.0) -> plt.Figure:
    """One row of ``per_class`` images for each class, labelled on the left."""
    fig, axes = plt.subplots(len(classes), 1, figsize=(scale * per_class, scale * len(classes) * 1.05), squeeze=False)
    for c, (name, ax) in enumerate(zip(classes, axes[:, 0])):
        show_images(images[labels == c][:per_class], nrow=per_class, ax=ax)
        ax.set_axis_on()
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center")
        for spine in ax.spines.values():
            spine.set_visible(False)
    fig.tight_layout()
    return fig


def explore(draw: Callable[..., Any], name: str, values: Sequence[Any], default: Any = None,
            static: Sequence[Any] | None = None) -> None:
    """Explore ``draw(**{name: value})`` with a slider over ``values``.

    In JupyterLab this is an ipywidgets slider. Where widgets cannot be shown (no ipywidgets, or the
    environment variable ``FFTD_STATIC_PLOTS=1``, which the test run sets) it draws ``static`` values
    (default: first, middle and last) one after another instead, so the chapter still shows something.
    """
    values = list(values)
    if not values:
        raise ValueError("explore needs at least one value")
    ipywidgets = _widgets()
    if ipywidgets is None:
        for v in static if static is not None else [values[0], values[len(values) // 2], values[-1]]:
            draw(**{name: v})
            plt.show()
        return
    slider = ipywidgets.SelectionSlider(options=values, value=values[0] if default is None else default,
                                        description=name, continuous_update=False)
    ipywidgets.interact(draw, **{name: slider})


def _widgets():
    """The ipywidgets module, or None where sliders cannot be shown (not installed, or ``FFTD_STATIC_PLOTS=1``)."""
    if os.environ.get("FFTD_STATIC_PLOTS") == "1":
        return None
    try:
        import ipywidgets
    except ImportError:  # pragma: no cover - ipywidgets is a dependency; this keeps bare installs working
        return None
    return ipywidgets


def live_generator(generator: Any, n: int = 4, steps: Sequence[int] = (5, 10, 25, 50, 100), default_steps: int = 25,
                   guidance: Sequence[float] = (0.0, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0), default_guidance: float = 2.0,
                   seeds: int = 100) -> Any:
    """Sliders for class, guidance scale, DDIM steps and seed that redraw ``n`` samples of ``generator``.

    ``generator`` is a :class:`fftd_course.pipeline.LatentDiffusion` (anything with ``class_names`` and
    ``generate(labels, num_steps=, guidance_scale=, seed=)``). Each redraw samples ``n`` images of one class from
    the same seed (so moving one slider changes one thing) and its title says how long sampling took. Where
    widgets cannot be shown (``FFTD_STATIC_PLOTS=1``, which the tests and the html site set, or no ipywidgets) it
    draws the defaults once and returns None; else it returns the ``ipywidgets.interactive`` that holds the
    sliders and the picture (its ``kwargs`` are the current values), which the last line of a cell displays.
    """
    classes = list(generator.class_names)
    if not classes:
        raise ValueError("live_generator needs a class-conditional generator (this one has no classes, errata E12)")
    if default_steps not in steps or default_guidance not in guidance:
        raise ValueError(f"the defaults ({default_steps} steps, guidance {default_guidance}) must be among the "
                         f"slider values {list(steps)} and {list(guidance)}")

    def draw(class_name: str, guidance_scale: float, ddim_steps: int, seed: int) -> None:
        start = time.perf_counter()
        images = generator.generate([class_name] * n, num_steps=ddim_steps, guidance_scale=guidance_scale,
                                    seed=seed).images
        seconds = time.perf_counter() - start
        _, ax = plt.subplots(figsize=(1.6 * n, 1.95))
        show_images(images, nrow=n, ax=ax, title=f"{class_name}, guidance {guidance_scale:g}, {ddim_steps} DDIM "
                                                  f"steps, seed {seed}:\n{n} samples in {seconds:.2f} s")

    ipywidgets = _widgets()
    if ipywidgets is None:
        draw(classes[0], default_guidance, default_steps, 0)
        plt.show()
        return None
    style = {"description_width": "initial"}
    controls = dict(
        class_name=ipywidgets.ToggleButtons(options=classes, value=classes[0], description="class", style=style),
        guidance_scale=ipywidgets.SelectionSlider(options=list(guidance), value=default_guidance,
                                                  description="guidance scale", continuous_update=False, style=style),
        ddim_steps=ipywidgets.SelectionSlider(options=list(steps), value=default_steps, description="DDIM steps",
                                              continuous_update=False, style=style),
        seed=ipywidgets.IntSlider(value=0, min=0, max=seeds - 1, description="seed", continuous_update=False,
                                  style=style))
    return ipywidgets.interactive(draw, **controls)
