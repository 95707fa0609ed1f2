"""Data: the procedural toy animal faces every CPU chapter trains on, and images from any folder.

**Toy faces.** The paper trains on CelebA-HQ and AFHQ (cat, dog, wild) at 256 px (docs/PAPER.md, 4.1),
which no laptop chapter can afford. ``ToyFaces`` draws AFHQ's three classes as simple cartoons instead:

* cat: pointy ears with pink insides, slit pupils, a small pink nose and whiskers;
* dog: floppy ears hanging at the sides, a light muzzle and a big round nose;
* wild: small round ears and either a mane (lion) or stripes (tiger).

Fur and background colours, position, scale and a small rotation are random. Shapes are signed
distance functions rendered with one-pixel anti-aliasing, so any size works (32 px by default).
Images are ``float32`` in ``[-1, 1]`` (the range of the decoder's tanh, eq. 7), shape ``(3, S, S)``.

Everything is deterministic from ``seed``, and image ``i`` depends only on ``(seed, i)``: the first
100 images of a 1000-image set are the 100 images of a 100-image set. Use another seed for a
held-out set.

**Image folders.** ``ImageFolder(root, resolution)`` reads real images (CelebA-HQ, AFHQ, your photos):
class sub-folders (``afhq/train/cat``, ``.../dog``, ``.../wild``) give labels ``0..K-1``; a folder of
images without sub-folders is an unconditional set (every label 0, ``num_classes == 0``: the FFTD's
null label, errata E12). Every image goes through :func:`load_image`: any mode to RGB (transparency
on white), the largest centred square (the paper centre-crops, 4.1), a bicubic antialiased resize,
``[-1, 1]``. Unreadable or truncated files are dropped with a warning that names them.
``export_toy_faces`` writes the toy faces as such a folder, so tests and chapters need no download.

**Data order.** ``EpochSampler`` is the full-scale trainer's order: a seeded permutation per epoch,
split across ranks, resumable from any position; ``make_loader`` wraps a data set and that sampler
in a ``DataLoader`` whose workers are seeded from the sampler (reproducible flips).
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
import random
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

__all__ = ["CLASSES", "make_toy_faces", "ToyFaces", "IMAGE_EXTENSIONS", "load_image", "ImageFolder", "DataError",
           "export_toy_faces", "EpochSampler", "make_loader"]


class DataError(ValueError):
    """An image folder holds no usable image (empty, only other files, or every image unreadable); says what to do."""

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


class _Canvas:
    """A batch of faces being drawn: each face's local coordinates, class masks and palette, and the image so far.

    ``u`` holds each image's random numbers (one column per choice, :func:`_uniforms`); painting follows the
    order of :func:`_render`, back to front, each shape blended over the image by its pixel coverage.
    """

    def __init__(self, u: torch.Tensor, labels: torch.Tensor, size: int):
        n = self.n = u.shape[0]
        self.u = u
        coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2.0 - 1.0
        gy, gx = torch.meshgrid(coords, coords, indexing="ij")  # y grows downwards
        gx, gy = gx.expand(n, size, size), gy.expand(n, size, size)

        # Pose: centre, scale and a rotation of up to 15 degrees; local coordinates p = R(-theta)(g - c) / s.
        cx, cy = _lerp(-0.15, 0.15, self.col(0)), _lerp(-0.12, 0.15, self.col(1))
        s = _lerp(0.72, 0.95, self.col(2))
        th = _lerp(-math.pi / 12, math.pi / 12, self.col(3))
        dx, dy = gx - cx, gy - cy
        self.x = (torch.cos(th) * dx + torch.sin(th) * dy) / s
        self.y = (-torch.sin(th) * dx + torch.cos(th) * dy) / s
        self.px = 2.0 / size / s  # one pixel in local units: the anti-aliasing width

        self.cat, self.dog, self.wild = ((labels == k).view(n, 1, 1) for k in range(3))
        cat_, dog_, wild_ = (m.float().unsqueeze(1) for m in (self.cat, self.dog, self.wild))
        self.cat_, self.dog_, self.wild_ = cat_, dog_, wild_
        rgb = self.rgb

        # Fur: per-class palettes (cats any grey/orange/cream, dogs browns and golds, wild tawny or orange).
        v, w = u[:, 4], u[:, 5]
        self.fur = (cat_ * rgb(_lerp(0.25, 0.95, v), _lerp(0.25, 0.8, v) * _lerp(0.7, 1.0, w), _lerp(0.25, 0.6, v) * _lerp(0.5, 1.0, w))
                    + dog_ * rgb(_lerp(0.35, 0.85, v), _lerp(0.2, 0.65, v), _lerp(0.1, 0.4, v) * w)
                    + wild_ * rgb(_lerp(0.7, 0.95, v), _lerp(0.4, 0.7, v), _lerp(0.1, 0.3, w)))
        self.dark = self.fur * 0.55
        # Background: any colour, pushed away from the fur's brightness so the face stands out.
        bg = rgb(u[:, 6], u[:, 7], u[:, 8]) * 0.6 + 0.2
        too_close = ((bg.mean(1, keepdim=True) - self.fur.mean(1, keepdim=True)).abs() < 0.25).float()
        bg = too_close * (1.0 - bg) * 0.9 + (1.0 - too_close) * bg
        self.img = bg * (1.0 - 0.25 * (gy.unsqueeze(1) + 1.0) / 2.0)  # a soft vertical gradient

    def col(self, i: int) -> torch.Tensor:
        return self.u[:, i].view(self.n, 1, 1)  # one random column per image, broadcast over pixels

    def rgb(self, r, g, b) -> torch.Tensor:
        return torch.stack([r, g, b], dim=1).view(self.n, 3, 1, 1)

    def solid(self, *values: float) -> torch.Tensor:
        """The same colour ``rgb(*values)`` for every image."""
        return self.rgb(*(torch.full((self.n,), c) for c in values))

    def paint(self, d: torch.Tensor, colour: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Blend ``colour`` over the image where the signed distance ``d`` is inside (``mask``: only those images)."""
        a = (0.5 - d / self.px).clamp(0.0, 1.0).unsqueeze(1)  # (N, 1, S, S) coverage in [0, 1]
        if mask is not None:
            a = a * mask.float().unsqueeze(1)
        self.img = self.img * (1.0 - a) + colour * a


def _paint_behind_head(f: _Canvas, head: torch.Tensor) -> torch.Tensor:
    """The lion's mane, the wild cats' round ears, the cats' pointy ears, then the head; returns the lion mask."""
    x, y = f.x, f.y
    lion = f.wild & (f.col(9) < 0.5)
    f.paint(_circle(x, y, 0.0, 0.08, 0.72), f.dark * 0.9 + 0.05, lion)
    for side in (-1.0, 1.0):
        f.paint(_circle(x, y, 0.34 * side, -0.36, 0.15), f.fur, f.wild)
        f.paint(_circle(x, y, 0.34 * side, -0.36, 0.08), f.dark, f.wild)
        tip = _lerp(0.5, 0.62, f.col(10))
        outer = [(0.1 * side, -0.28), (0.48 * side, -0.2), (0.36 * side, -0.28 - tip)]
        inner = [(0.17 * side, -0.28), (0.4 * side, -0.23), (0.34 * side, -0.28 - tip * 0.7)]
        if side > 0:  # keep vertices counter-clockwise in (x, y-down) coordinates
            outer, inner = outer[::-1], inner[::-1]
        f.paint(_triangle(x, y, outer), f.fur, f.cat)
        f.paint(_triangle(x, y, inner), f.solid(0.95, 0.6, 0.65), f.cat)

    f.paint(head, f.fur)
    return lion


def _paint_head_front(f: _Canvas, head: torch.Tensor, lion: torch.Tensor) -> None:
    """Tiger stripes (clipped to the head), the dogs' hanging ears and the muzzle."""
    x, y, n = f.x, f.y, f.n
    tiger = f.wild & ~lion
    for sx in (-0.24, 0.0, 0.24):
        stripe = _segment(x, y, torch.tensor(sx), torch.tensor(-0.4), torch.tensor(sx * 0.7), torch.tensor(-0.15), 0.045)
        f.paint(torch.maximum(stripe, head), f.dark * 0.5, tiger)
    for side in (-1.0, 1.0):
        stripe = _segment(x, y, torch.tensor(0.5 * side), torch.tensor(0.05), torch.tensor(0.3 * side), torch.tensor(0.12), 0.04)
        f.paint(torch.maximum(stripe, head), f.dark * 0.5, tiger)

    # Dog ears hang in front of the head's sides; the muzzle is lighter than the fur.
    for side in (-1.0, 1.0):
        ear_x = 0.47 * side + _lerp(-0.03, 0.03, f.u[:, 11]).view(n, 1, 1) * side
        f.paint(_ellipse(x, y, ear_x, 0.02, torch.tensor(0.15), torch.tensor(0.33)), f.dark, f.dog)
    muzzle = f.fur * 0.4 + 0.6
    f.paint(_ellipse(x, y, 0.0, 0.25, torch.tensor(0.24), torch.tensor(0.17)), muzzle, f.dog | f.wild)


def _paint_features(f: _Canvas) -> None:
    """Eyes, noses and the cats' whiskers."""
    x, y, n, u = f.x, f.y, f.n, f.u
    # Eyes: coloured iris and a pupil (a vertical slit for cats).
    iris = (f.cat_ * f.rgb(_lerp(0.4, 0.8, u[:, 12]), torch.full((n,), 0.8), torch.full((n,), 0.2))
            + f.dog_ * f.solid(0.25, 0.15, 0.05)
            + f.wild_ * f.rgb(torch.full((n,), 0.9), torch.full((n,), 0.65), torch.full((n,), 0.1)))
    black = f.solid(0.05, 0.05, 0.05)
    eye_dx = _lerp(0.16, 0.21, u[:, 13]).view(n, 1, 1)
    for side in (-1.0, 1.0):
        f.paint(_circle(x, y, eye_dx * side, -0.02, 0.085), iris)
        pupil_cat = _ellipse(x, y, eye_dx * side, -0.02, torch.tensor(0.025), torch.tensor(0.075))
        pupil_round = _circle(x, y, eye_dx * side, -0.02, 0.045)
        f.paint(torch.where(f.cat, pupil_cat, pupil_round), black)

    # Noses: small pink triangle (cat), big round black nose (dog), dark rounded triangle (wild).
    f.paint(_triangle(x, y, [(-0.07, 0.13), (0.0, 0.21), (0.07, 0.13)]), f.solid(0.95, 0.5, 0.6), f.cat)
    f.paint(_circle(x, y, 0.0, 0.16, 0.09), black, f.dog)
    f.paint(_triangle(x, y, [(-0.1, 0.14), (0.0, 0.25), (0.1, 0.14)]) - 0.015, black * 2, f.wild)

    # Whiskers (cats): three thin lines per side; at 32 px they are sub-pixel and come out faint.
    for side in (-1.0, 1.0):
        for k, end_y in enumerate((0.12, 0.2, 0.28)):
            wy = _lerp(-0.02, 0.02, u[:, 14 + k]).view(n, 1, 1)
            d = _segment(x, y, torch.tensor(0.12 * side), torch.tensor(0.21), torch.tensor(0.58 * side), end_y + wy, 0.012)
            f.paint(d, f.solid(0.97, 0.97, 0.97) * (1 - 0.9 * (f.fur.mean(1, keepdim=True) > 0.75).float()), f.cat)


def _render(u: torch.Tensor, labels: torch.Tensor, size: int) -> torch.Tensor:
    f = _Canvas(u, labels, size)  # pose, palette and background
    head = _ellipse(f.x, f.y, 0.0, 0.05, torch.tensor(0.5), torch.tensor(0.44))
    lion = _paint_behind_head(f, head)
    _paint_head_front(f, head, lion)
    _paint_features(f)
    return f.img.clamp(0.0, 1.0) * 2.0 - 1.0


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
        self.class_names = CLASSES  # as ImageFolder's: labels index CLASSES, whatever the draw
        self.skipped: list = []  # as ImageFolder's: drawn faces are never unreadable

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]


# ---- images from any folder -----------------------------------------------------------------------

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
"""File endings :class:`ImageFolder` reads, compared case-insensitively (``.JPG`` counts)."""

_BICUBIC = getattr(Image, "Resampling", Image).BICUBIC
_REDUCING_GAP = 3.0  # shrink by whole factors first; from 3 on "indistinguishable" from a full bicubic (Pillow docs)


def _check_resolution(resolution) -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, numbers.Integral) or resolution < 8:
        raise ValueError(f"resolution must be an integer number of pixels >= 8, got {resolution!r}")
    return int(resolution)


@contextlib.contextmanager
def _no_truncated_images():
    """Make PIL raise on truncated files, whatever another library set ``LOAD_TRUNCATED_IMAGES`` to."""
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB; transparent pixels are composited on white."""
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        # 16-bit and 32-bit greyscale: PIL's own convert would clip at 255 (a white picture), so scale.
        a = np.nan_to_num(np.asarray(im, dtype=np.float64))
        top = a.max(initial=0.0)
        if im.mode.startswith("I;16"):
            scale = 65535.0
        elif im.mode == "I":  # 16-bit PNGs open as "I" on older Pillow; a max <= 255 means 8-bit values
            scale = 255.0 if top <= 255 else 65535.0
        else:  # float images: [0, 1] or [0, 255]
            scale = 1.0 if top <= 1.0 else 255.0
        im = Image.fromarray(np.clip(np.rint(a * (255.0 / scale)), 0, 255).astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def load_image(path, resolution: int) -> torch.Tensor:
    """One image file as a ``float32`` tensor ``(3, resolution, resolution)`` in ``[-1, 1]``.

    Any mode becomes RGB (greyscale, palette, CMYK, 16-bit; transparency is composited on white), the
    camera's EXIF rotation is applied, the largest centred square is cut out and resized with PIL's
    antialiased bicubic filter. Truncated files raise (``OSError``) instead of loading half a picture;
    the first frame of an animation is used. Every data set in this module loads through here.
    """
    resolution = _check_resolution(resolution)
    with _no_truncated_images(), Image.open(path) as im:
        im.load()
        im = _to_rgb(ImageOps.exif_transpose(im))
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    box = (left, top, left + side, top + side)
    if side == resolution:
        im = im.crop(box)
    else:
        im = im.resize((resolution, resolution), _BICUBIC, box=box, reducing_gap=_REDUCING_GAP)
    pixels = torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1).contiguous()
    return pixels.float().div_(127.5).sub_(1.0)


def _images_in(folder: Path) -> list[Path]:
    # Hidden files are skipped: macOS's "._x.jpg" resource forks are not images.
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file())


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class _Probe(Dataset):
    """Loads every file once (in DataLoader workers) and reports ``(index, None or why it failed)``."""

    def __init__(self, files: list[Path], resolution: int):
        self.files, self.resolution = files, resolution

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            load_image(self.files[i], self.resolution)
            return i, None
        except Exception as e:  # noqa: BLE001 - any decoder error means "skip this file"
            return i, _reason(e)


def _as_list(batch):
    return batch


class ImageFolder(Dataset):
    """The images of a folder as ``(image (3, R, R) in [-1, 1], label int64)``, all through :func:`load_image`.

    Layout: if ``root`` has sub-folders that hold images, each one (sorted by name) is a class and
    ``class_names`` are their names, labels ``0..K-1`` (images lying directly in ``root`` are then
    ignored, with a warning). Otherwise the images in ``root`` itself form an unconditional set:
    ``class_names == ()``, every label 0 and ``num_classes == 0``, which is what an unconditional FFTD
    takes (its label 0 is the null label, errata E12). Hidden files and folders are ignored.

    ``verify=True`` decodes every file once now (``num_workers`` processes) and drops those that fail,
    truncated files included, each with a warning naming it; they are listed in ``skipped`` as
    ``(path, reason)``. A file that fails later (it changed after the scan) is warned about and
    replaced by the next readable item, so a batch never raises; in a DataLoader worker it is recorded
    in that worker's copy only. ``hflip`` flips half the images left-right with torch's RNG, which the
    loader's worker seeding controls (see :func:`make_loader`).
    """

    def __init__(self, root, resolution: int, *, hflip: bool = False, verify: bool = True, num_workers: int = 0,
                 progress: bool = True):
        self.resolution = _check_resolution(resolution)
        self.root = Path(root).expanduser()
        if not self.root.exists():
            raise FileNotFoundError(f"image folder {str(self.root)!r} does not exist: check the path "
                                    f"(relative paths start at {str(Path.cwd())!r})")
        if not self.root.is_dir():
            raise NotADirectoryError(f"{str(self.root)!r} is a file, not a folder: pass the folder that holds the "
                                     "images (or their class sub-folders)")
        self.hflip = bool(hflip)
        self.skipped: list[tuple[Path, str]] = []
        self._bad: set[int] = set()
        files, labels, self.class_names = self._scan()
        if verify:
            keep = self._verify(files, num_workers, progress)
            files, labels = [files[i] for i in keep], [labels[i] for i in keep]
            present = set(labels)
            for k, name in enumerate(self.class_names):
                if k not in present:
                    warnings.warn(f"class {name!r} of {str(self.root)!r} has no readable image left; its label {k} "
                                  "is kept so the other labels do not move", stacklevel=2)
        self.files: list[Path] = files
        self.labels = torch.tensor(labels, dtype=torch.long)

    def _scan(self) -> tuple[list[Path], list[int], tuple[str, ...]]:
        subdirs = sorted((d for d in self.root.iterdir() if d.is_dir() and not d.name.startswith(".")),
                         key=lambda d: d.name)
        per_dir = [(d, _images_in(d)) for d in subdirs]
        classes = [(d, fs) for d, fs in per_dir if fs]
        direct = _images_in(self.root)
        if classes:
            if direct:
                warnings.warn(f"ignoring the {len(direct)} image(s) lying directly in {str(self.root)!r}: the folder "
                              f"has class sub-folders ({', '.join(d.name for d, _ in classes)}), and only their "
                              "images are used; move the loose images into a class folder to use them", stacklevel=3)
            empty = [d.name for d, fs in per_dir if not fs]
            if empty:
                warnings.warn(f"sub-folders of {str(self.root)!r} without images are not classes: {', '.join(empty)}",
                              stacklevel=3)
            files = [f for _, fs in classes for f in fs]
            labels = [k for k, (_, fs) in enumerate(classes) for _ in fs]
            return files, labels, tuple(d.name for d, _ in classes)
        if direct:
            return direct, [0] * len(direct), ()
        raise DataError(f"no images in {str(self.root)!r} or its sub-folders (looked for files ending in "
                        f"{', '.join(IMAGE_EXTENSIONS)}, in any case): pass the folder that holds the images or "
                        "their class sub-folders")

    def _verify(self, files: list[Path], num_workers: int, progress: bool) -> list[int]:
        loader = DataLoader(_Probe(files, self.resolution), batch_size=16, num_workers=num_workers,
                            collate_fn=_as_list)
        failed: dict[int, str] = {}
        with tqdm(total=len(files), desc="checking images", unit="img", disable=not progress) as bar:
            for batch in loader:
                failed.update((i, why) for i, why in batch if why is not None)
                bar.update(len(batch))
        for i, why in sorted(failed.items()):
            warnings.warn(f"skipping {str(files[i])!r}: {why}", stacklevel=3)
            self.skipped.append((files[i], why))
        if len(failed) == len(files):
            first = min(failed)
            raise DataError(f"none of the {len(files)} image files in {str(self.root)!r} could be read "
                            f"(e.g. {files[first].name}: {failed[first]}): they are damaged or not images; "
                            "replace them with readable images (PNG, JPEG...)")
        return [i for i in range(len(files)) if i not in failed]

    @property
    def num_classes(self) -> int:
        """``len(class_names)``: 0 for an unconditional folder (an FFTD with only the null label, E12)."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.files)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} images")
        for k in range(n):
            j = (i + k) % n
            if j in self._bad:
                continue
            try:
                image = load_image(self.files[j], self.resolution)
            except Exception as e:  # noqa: BLE001 - never raise inside a batch: warn and take the next image
                self._bad.add(j)
                self.skipped.append((self.files[j], _reason(e)))
                warnings.warn(f"skipping {str(self.files[j])!r}, which could not be read any more "
                              f"({_reason(e)}); using the next image instead", stacklevel=2)
                continue
            if self.hflip and torch.rand(()) < 0.5:
                image = image.flip(-1)
            return image, self.labels[j]
        raise DataError(f"none of the {n} images of {str(self.root)!r} can be read any more (they changed after "
                        "the scan): restore the folder, or make the data set again")

    def __repr__(self) -> str:
        classes = ", ".join(self.class_names) if self.class_names else "none (unconditional)"
        return (f"ImageFolder(root={str(self.root)!r}, images={len(self)}, classes: {classes}, "
                f"resolution={self.resolution}, skipped={len(self.skipped)})")


def export_toy_faces(root, n: int, size: int = 64, seed: int = 0, progress: bool = True) -> Path:
    """Write ``make_toy_faces(n, size, seed)`` as ``root/<class>/<i:05d>.png`` (cat, dog, wild); returns ``root``.

    A class-folder data set without any download, for :class:`ImageFolder`. PNG is lossless, so the
    files load back to the drawn images up to the 8-bit rounding (1/255). ``root`` must be new or
    empty: stale files from an earlier export would mix into the set.
    """
    root = Path(root).expanduser()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{str(root)!r} already exists and is not an empty folder: pick a new folder "
                              "(or delete this one) so no earlier files mix into the set")
    images, labels = make_toy_faces(n, size, seed)
    pixels = ((images + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(n), desc="writing toy faces", unit="img", disable=not progress):
        Image.fromarray(pixels[i]).save(root / CLASSES[labels[i]] / f"{i:05d}.png", compress_level=1)
    return root


# ---- data order ------------------------------------------------------------------------------------

def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


class EpochSampler(Sampler[int]):
    """The full-scale trainer's data order, resumable exactly (also across ranks).

    Epoch ``e`` is ``torch.randperm(n, generator=torch.Generator().manual_seed(seed + e))`` (the identity
    without ``shuffle``); rank ``r`` of ``world_size`` takes positions ``r, r + world_size, ...`` of it.
    With ``drop_last`` every rank gets ``n // world_size`` items and the tail is dropped; without it the
    order wraps around so every rank gets ``ceil(n / world_size)`` (as ``DistributedSampler``).

    The sampler does not count what was consumed (DataLoader workers prefetch ahead): the trainer does.
    ``set_position(epoch, index)`` makes the next iteration start at per-rank position ``index`` of that
    epoch; after an epoch the trainer calls ``set_position(epoch + 1, 0)``, and before saving
    ``set_position(epoch, items_used_this_epoch)`` then ``state_dict()``.
    """

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 drop_last: bool = True):
        super().__init__()
        self.n = _check_int("n (the data set's size)", n, 1)
        self.seed = _check_int("seed", seed, 0)
        self.world_size = _check_int("world_size", world_size, 1)
        self.rank = _check_int("rank", rank, 0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank must be in [0, {self.world_size}) for world_size={self.world_size}, got {rank}")
        if drop_last and self.n < self.world_size:
            raise ValueError(f"{self.n} items cannot be shared by {self.world_size} ranks with drop_last: every "
                             "rank would get none (use more data or drop_last=False)")
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.num_samples = self.n // self.world_size if drop_last else -(-self.n // self.world_size)
        self.epoch = self.index = 0

    def indices(self, epoch: int) -> torch.Tensor:
        """This rank's whole order for ``epoch`` (LongTensor of length ``num_samples``)."""
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
        else:
            order = torch.arange(self.n)
        total = self.num_samples * self.world_size
        if total > self.n:  # pad by wrapping around
            order = order.repeat(-(-total // self.n))
        return order[self.rank:total:self.world_size]

    def set_position(self, epoch: int, index: int) -> None:
        """Start the next iteration at per-rank position ``index`` (``0..num_samples``) of ``epoch``."""
        epoch, index = _check_int("epoch", epoch, 0), _check_int("index", index, 0)
        if index > self.num_samples:
            raise ValueError(f"index {index} is past the end of an epoch ({self.num_samples} items per rank)")
        self.epoch, self.index = epoch, index

    def __iter__(self):
        return iter(self.indices(self.epoch)[self.index:].tolist())

    def __len__(self) -> int:
        return self.num_samples - self.index

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "n": self.n,
                "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        missing = {"epoch", "index", "seed", "n", "world_size"} - set(state)
        if missing:
            raise ValueError(f"not an EpochSampler state: {sorted(missing)} missing")
        if state["n"] != self.n:
            raise ValueError(f"the saved data order is for {state['n']} items but this sampler has {self.n}: the "
                             "data folder changed since the checkpoint (resume with the same images, or start "
                             "a new order)")
        if state["world_size"] != self.world_size:
            raise ValueError(f"the saved data order was split over {state['world_size']} ranks but this run has "
                             f"{self.world_size}: the GPU / process count changed (resume with the same count)")
        self.seed = _check_int("seed", state["seed"], 0)
        self.set_position(state["epoch"], state["index"])


def _seed_worker(sampler: EpochSampler, worker_id: int) -> None:
    # Runs in each worker as it starts (at iter(loader)): torch, random and numpy seeded from the
    # sampler's seed, epoch and rank, so an epoch's flips do not depend on what ran before.
    state = np.random.SeedSequence([sampler.seed, sampler.epoch, sampler.rank, worker_id]).generate_state(2)
    seed = int(state[0]) << 32 | int(state[1])
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(int(state[0]))


def make_loader(dataset: Dataset, batch_size: int, sampler: EpochSampler, *, num_workers: int = 0,
                pin_memory: bool | None = None, persistent_workers: bool = False,
                prefetch_factor: int = 2) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` in ``sampler``'s order: full batches only (``drop_last``).

    ``pin_memory`` defaults to "CUDA is available". Workers are seeded from the sampler's seed, epoch
    and rank each time an epoch's iteration starts, so flips repeat for the same epoch and
    ``num_workers``; with ``num_workers=0`` they follow the global torch RNG (seed it). Keep
    ``persistent_workers=False`` for exact resumes: persistent workers are seeded once and carry
    their RNG across epochs. A flip resumed in the middle of an epoch is drawn afresh.
    """
    batch_size = _check_int("batch_size", batch_size, 1)
    if len(dataset) != sampler.n:
        raise ValueError(f"the sampler orders {sampler.n} items but the data set has {len(dataset)}: build the "
                         "sampler with n=len(dataset)")
    if batch_size > sampler.num_samples:
        raise ValueError(f"batch_size {batch_size} is larger than an epoch ({sampler.num_samples} items per rank): "
                         "the loader would yield no batch")
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    extra = dict(prefetch_factor=prefetch_factor, persistent_workers=persistent_workers) if num_workers > 0 else {}
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=pin_memory, drop_last=True, worker_init_fn=functools.partial(_seed_worker, sampler),
                      generator=torch.Generator().manual_seed(sampler.seed), **extra)
