"""Data: the procedural toy animal faces every CPU chapter trains on.

The paper trains on CelebA-HQ and AFHQ (cat, dog, wild) at 256 px, which no laptop chapter can
afford. ``ToyFaces`` draws AFHQ's three classes as simple cartoons instead:

* cat: pointy ears with pink insides, slit pupils, a small pink nose and whiskers;
* dog: floppy ears hanging at the sides, a light muzzle and a big round nose;
* wild: small round ears and either a mane (lion) or stripes (tiger).

Fur and background colours, position, scale and a small rotation are random. Shapes are signed
distance functions rendered with one-pixel anti-aliasing, so any size works (32 px by default).
Images are ``float32`` in ``[-1, 1]`` (the range of the decoder's tanh, eq. 7), shape ``(3, S, S)``.

Everything is deterministic from ``seed``, and image ``i`` depends only on ``(seed, i)``: the first
100 images of a 1000-image set are the 100 images of a 100-image set. Use another seed for a
held-out set.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset

__all__ = ["CLASSES", "make_toy_faces", "ToyFaces"]

CLASSES = ("cat", "dog", "wild")

# Uniform random numbers drawn per image, one row each (see _params). Keep this count fixed: rows are
# drawn in one call so that image i depends only on (seed, i).
_NUM_RANDOM = 24
_CHUNK = 512  # images rendered at once; bounds memory at large sizes


def _params(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, _NUM_RANDOM, generator=g, dtype=torch.float64).float()


# ---- signed distance functions: negative inside, in the face's local units ------------------------

def _ellipse(x, y, cx, cy, rx, ry):
    # Scaled-circle approximation: exact on the axes, good enough within the one-pixel AA band.
    return (torch.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2) - 1.0) * torch.minimum(rx, ry)


def _circle(x, y, cx, cy, r):
    return torch.sqrt((x - cx) ** 2 + (y - cy) ** 2) - r


def _segment(x, y, ax, ay, bx, by, r):
    # Capsule around the segment a-b with radius r.
    px, py, dx, dy = x - ax, y - ay, bx - ax, by - ay
    t = ((px * dx + py * dy) / (dx * dx + dy * dy)).clamp(0.0, 1.0)
    return torch.sqrt((px - t * dx) ** 2 + (py - t * dy) ** 2) - r


def _triangle(x, y, pts):
    # Intersection of three half-planes (counter-clockwise vertices): exact inside, a lower bound outside.
    d = None
    for (ax, ay), (bx, by) in zip(pts, pts[1:] + pts[:1]):
        ex, ey = bx - ax, by - ay
        length = (ex * ex + ey * ey) ** 0.5
        side = ((x - ax) * ey - (y - ay) * ex) / length
        d = side if d is None else torch.maximum(d, side)
    return d


def _lerp(a, b, u):
    return a + (b - a) * u


def _render(u: torch.Tensor, labels: torch.Tensor, size: int) -> torch.Tensor:
    n = u.shape[0]
    col = lambda i: u[:, i].view(n, 1, 1)  # noqa: E731 - one random column per image, broadcast over pixels
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2.0 - 1.0
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")  # y grows downwards
    gx, gy = gx.expand(n, size, size), gy.expand(n, size, size)

    # Pose: centre, scale and a rotation of up to 15 degrees; local coordinates p = R(-theta)(g - c) / s.
    cx, cy = _lerp(-0.15, 0.15, col(0)), _lerp(-0.12, 0.15, col(1))
    s = _lerp(0.72, 0.95, col(2))
    th = _lerp(-math.pi / 12, math.pi / 12, col(3))
    dx, dy = gx - cx, gy - cy
    x = (torch.cos(th) * dx + torch.sin(th) * dy) / s
    y = (-torch.sin(th) * dx + torch.cos(th) * dy) / s
    px = 2.0 / size / s  # one pixel in local units: the anti-aliasing width

    def cover(d):
        return (0.5 - d / px).clamp(0.0, 1.0).unsqueeze(1)  # (N, 1, S, S) coverage in [0, 1]

    def rgb(r, g, b):
        return torch.stack([r, g, b], dim=1).view(n, 3, 1, 1)

    cat, dog, wild = (labels == 0).view(n, 1, 1), (labels == 1).view(n, 1, 1), (labels == 2).view(n, 1, 1)
    cat_, dog_, wild_ = (m.float().unsqueeze(1) for m in (cat, dog, wild))

    # Fur: per-class palettes (cats any grey/orange/cream, dogs browns and golds, wild tawny or orange).
    v, w = u[:, 4], u[:, 5]
    fur = (cat_ * rgb(_lerp(0.25, 0.95, v), _lerp(0.25, 0.8, v) * _lerp(0.7, 1.0, w), _lerp(0.25, 0.6, v) * _lerp(0.5, 1.0, w))
           + dog_ * rgb(_lerp(0.35, 0.85, v), _lerp(0.2, 0.65, v), _lerp(0.1, 0.4, v) * w)
           + wild_ * rgb(_lerp(0.7, 0.95, v), _lerp(0.4, 0.7, v), _lerp(0.1, 0.3, w)))
    dark = fur * 0.55
    # Background: any colour, pushed away from the fur's brightness so the face stands out.
    bg = rgb(u[:, 6], u[:, 7], u[:, 8]) * 0.6 + 0.2
    too_close = ((bg.mean(1, keepdim=True) - fur.mean(1, keepdim=True)).abs() < 0.25).float()
    bg = too_close * (1.0 - bg) * 0.9 + (1.0 - too_close) * bg
    img = bg * (1.0 - 0.25 * (gy.unsqueeze(1) + 1.0) / 2.0)  # a soft vertical gradient

    def paint(d, colour, mask=None):
        nonlocal img
        a = cover(d)
        if mask is not None:
            a = a * mask.float().unsqueeze(1)
        img = img * (1.0 - a) + colour * a

    head = _ellipse(x, y, 0.0, 0.05, torch.tensor(0.5), torch.tensor(0.44))

    # Behind the head: the lion's mane, the wild cats' round ears, the cats' pointy ears.
    lion = wild & (col(9) < 0.5)
    paint(_circle(x, y, 0.0, 0.08, 0.72), dark * 0.9 + 0.05, lion)
    for side in (-1.0, 1.0):
        paint(_circle(x, y, 0.34 * side, -0.36, 0.15), fur, wild)
        paint(_circle(x, y, 0.34 * side, -0.36, 0.08), dark, wild)
        tip = _lerp(0.5, 0.62, col(10))
        outer = [(0.1 * side, -0.28), (0.48 * side, -0.2), (0.36 * side, -0.28 - tip)]
        inner = [(0.17 * side, -0.28), (0.4 * side, -0.23), (0.34 * side, -0.28 - tip * 0.7)]
        if side > 0:  # keep vertices counter-clockwise in (x, y-down) coordinates
            outer, inner = outer[::-1], inner[::-1]
        paint(_triangle(x, y, outer), fur, cat)
        paint(_triangle(x, y, inner), rgb(*(torch.full((n,), c) for c in (0.95, 0.6, 0.65))), cat)

    paint(head, fur)

    # Tiger stripes, clipped to the head.
    tiger = wild & ~lion
    for sx in (-0.24, 0.0, 0.24):
        stripe = _segment(x, y, torch.tensor(sx), torch.tensor(-0.4), torch.tensor(sx * 0.7), torch.tensor(-0.15), 0.045)
        paint(torch.maximum(stripe, head), dark * 0.5, tiger)
    for side in (-1.0, 1.0):
        stripe = _segment(x, y, torch.tensor(0.5 * side), torch.tensor(0.05), torch.tensor(0.3 * side), torch.tensor(0.12), 0.04)
        paint(torch.maximum(stripe, head), dark * 0.5, tiger)

    # Dog ears hang in front of the head's sides; the muzzle is lighter than the fur.
    for side in (-1.0, 1.0):
        ear_x = 0.47 * side + _lerp(-0.03, 0.03, u[:, 11]).view(n, 1, 1) * side
        paint(_ellipse(x, y, ear_x, 0.02, torch.tensor(0.15), torch.tensor(0.33)), dark, dog)
    muzzle = fur * 0.4 + 0.6
    paint(_ellipse(x, y, 0.0, 0.25, torch.tensor(0.24), torch.tensor(0.17)), muzzle, dog | wild)

    # Eyes: coloured iris and a pupil (a vertical slit for cats).
    iris = (cat_ * rgb(_lerp(0.4, 0.8, u[:, 12]), torch.full((n,), 0.8), torch.full((n,), 0.2))
            + dog_ * rgb(*(torch.full((n,), c) for c in (0.25, 0.15, 0.05)))
            + wild_ * rgb(torch.full((n,), 0.9), torch.full((n,), 0.65), torch.full((n,), 0.1)))
    black = rgb(*(torch.full((n,), 0.05),) * 3)
    eye_dx = _lerp(0.16, 0.21, u[:, 13]).view(n, 1, 1)
    for side in (-1.0, 1.0):
        paint(_circle(x, y, eye_dx * side, -0.02, 0.085), iris)
        pupil_cat = _ellipse(x, y, eye_dx * side, -0.02, torch.tensor(0.025), torch.tensor(0.075))
        pupil_round = _circle(x, y, eye_dx * side, -0.02, 0.045)
        paint(torch.where(cat, pupil_cat, pupil_round), black)

    # Noses: small pink triangle (cat), big round black nose (dog), dark rounded triangle (wild).
    paint(_triangle(x, y, [(-0.07, 0.13), (0.0, 0.21), (0.07, 0.13)]), rgb(*(torch.full((n,), c) for c in (0.95, 0.5, 0.6))), cat)
    paint(_circle(x, y, 0.0, 0.16, 0.09), black, dog)
    paint(_triangle(x, y, [(-0.1, 0.14), (0.0, 0.25), (0.1, 0.14)]) - 0.015, black * 2, wild)

    # Whiskers (cats): three thin lines per side; at 32 px they are sub-pixel and come out faint.
    for side in (-1.0, 1.0):
        for k, end_y in enumerate((0.12, 0.2, 0.28)):
            wy = _lerp(-0.02, 0.02, u[:, 14 + k]).view(n, 1, 1)
            d = _segment(x, y, torch.tensor(0.12 * side), torch.tensor(0.21), torch.tensor(0.58 * side), end_y + wy, 0.012)
            paint(d, rgb(*(torch.full((n,), 0.97),) * 3) * (1 - 0.9 * (fur.mean(1, keepdim=True) > 0.75).float()), cat)

    return img.clamp(0.0, 1.0) * 2.0 - 1.0


def make_toy_faces(n: int, size: int = 32, seed: int = 0, *, classes: tuple[str, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` toy animal faces: ``(images (n, 3, size, size) in [-1, 1], labels (n,) int64)``.

    ``labels`` index :data:`CLASSES`. ``classes`` restricts the draw (e.g. ``("cat",)``); the labels
    keep their global meaning. Image ``i`` depends only on ``(seed, i)`` (and ``classes``).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels to draw a face, got {size}")
    chosen = CLASSES if classes is None else tuple(classes)
    unknown = [c for c in chosen if c not in CLASSES]
    if unknown or not chosen:
        raise ValueError(f"classes must be a non-empty subset of {CLASSES}, got {classes!r}")
    u = _params(n, seed)
    allowed = torch.tensor([CLASSES.index(c) for c in chosen])
    labels = allowed[(u[:, 23] * len(allowed)).long().clamp(max=len(allowed) - 1)]
    images = torch.empty(n, 3, size, size)
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        images[start:stop] = _render(u[start:stop], labels[start:stop], size)
    return images, labels


class ToyFaces(Dataset):
    """A ``torch.utils.data.Dataset`` of toy faces, drawn once at construction (thousands per second).

    Items are ``(image, label)`` with ``image`` in ``[-1, 1]`` of shape ``(3, size, size)``.
    ``seed`` picks the draw: use different seeds for training and held-out sets.
    """

    classes = CLASSES

    def __init__(self, n: int = 2048, size: int = 32, seed: int = 0, classes: tuple[str, ...] | None = None):
        self.size, self.seed = size, seed
        self.images, self.labels = make_toy_faces(n, size, seed, classes=classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]
