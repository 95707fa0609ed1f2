#!/usr/bin/env python
"""Download, verify and prepare AFHQ, AFHQ-v2 or CelebA-HQ for the full-scale chapters (10-11).

    python data_scripts/prepare.py afhq --root datasets/ [--archive PATH | --url URL] [--size 256]
                                        [--workers N] [--no-stats]

1. **Download** the zip named in :data:`SPECS` (StarGAN v2's ``download.sh``) to
   ``<root>/downloads/<file>`` through ``<file>.part``: a progress bar, an interrupted download resumes
   with an HTTP ``Range`` request, a dropped connection is retried :data:`RETRIES` times.
   ``--archive PATH`` takes a zip you already have (offline); ``--url`` another address of the same zip.
2. **Verify** the SHA-256 against the published one where the spec has one (none is published for these
   three), else against the hash recorded in ``<root>/downloads/hashes.json`` by the first run that
   accepted the archive; then the archive's layout (``<split>/<class>/<image>``) and its image counts
   against the spec. Anything else is refused in one line.
3. **Read safely**: the whole central directory is checked before anything is written: entries that
   would escape (``..``, absolute paths, drive letters, backslashes), symlinks, devices, more than
   :attr:`Limits.max_entries` entries, or an uncompressed total larger than :attr:`Limits.max_ratio`
   times the archive (or :attr:`Limits.max_total`) refuse the archive. Images are decoded straight from
   the zip, never unpacked under their archive names: output paths are built from the split, class and
   file name only.
4. **Prepare** each image with the course's own loader, ``fftd_course.data.load_image`` (RGB, largest
   centred square, bicubic resize to ``--size``) in ``--workers`` processes and save it as PNG in
   ``<root>/<name>-<size>/{train,val}/<class>/``. Unreadable images are skipped with a warning naming
   them and counted in ``manifest.json``.
5. **FID statistics** of each split with the course's Inception: ``train-stats.pt`` / ``val-stats.pt``,
   the format ``python -m fftd_course fid RUN --ref FILE.pt`` reads (``--no-stats`` skips them).

Everything is built in a hidden temporary folder inside ``--root`` and renamed to ``<name>-<size>`` at
the end, so a failed or interrupted run never leaves a folder that looks prepared. A second run that
finds the folder complete (manifest, hash, counts, statistics) does nothing and says so. The Python API
is :func:`prepare` with a :class:`DatasetSpec` (tests pass their own, with their own counts).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import http.client
import io
import json
import os
import platform
import shutil
import stat
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
import zipfile
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parent.parent
if (REPO / "fftd_course").is_dir() and str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # `python data_scripts/prepare.py` from a checkout finds the course package

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from fftd_course.data import IMAGE_EXTENSIONS, load_image  # noqa: E402

RETRIES = 5  # a dropped connection is retried this many times (then the .part stays for the next run)
CHUNK = 1 << 20
MANIFEST = "manifest.json"
HASHES = "hashes.json"


class PrepareError(Exception):
    """A user mistake or a refused archive: the command line prints it as one ``error: ...`` line, exit 2."""


class WrongFileError(PrepareError):
    """The archive is not the expected file (hash mismatch, not a zip): a download that fails so is deleted."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What one data set's archive must hold.

    ``splits`` maps the output split (``train``, ``val``) to its folder in the archive (AFHQ-v2 calls its
    held-out split ``test``). ``counts[split][class]`` are the expected image counts (``None``: only
    ``total`` is checked); ``total`` the expected number of images (``None``: not checked).
    """

    name: str
    url: str | None
    filename: str
    classes: tuple[str, ...]
    splits: dict
    counts: dict | None = None
    total: int | None = None
    sha256: str | None = None  # a published SHA-256 (none is published for these three archives)
    approx_size: str = ""
    licence: str = ""


# Sources: clovaai/stargan-v2, download.sh (commit 875b70a) and README.md (the counts; see data_scripts/README.md
# for which of them were verified there). Dropbox serves the file itself with dl=1 (dl=0 is an HTML page).
SPECS = {
    "afhq": DatasetSpec(
        name="afhq", url="https://www.dropbox.com/s/t9l9o3vsx2jai3z/afhq.zip?dl=1", filename="afhq.zip",
        classes=("cat", "dog", "wild"), splits={"train": "train", "val": "val"},
        counts={"train": {"cat": 5153, "dog": 4739, "wild": 4738}, "val": {"cat": 500, "dog": 500, "wild": 500}},
        total=16130, approx_size="not published; 16,130 JPEGs at 512 px", licence="CC BY-NC 4.0 (NAVER Corp., StarGAN v2)"),
    "afhq-v2": DatasetSpec(
        name="afhq-v2", url="https://www.dropbox.com/s/vkzjokiwof5h8w6/afhq_v2.zip?dl=1", filename="afhq_v2.zip",
        classes=("cat", "dog", "wild"), splits={"train": "train", "val": "test"},
        counts=None, total=15803, approx_size="not published; 15,803 PNGs at 512 px",
        licence="CC BY-NC 4.0 (NAVER Corp., StarGAN v2)"),
    "celebahq": DatasetSpec(
        name="celebahq", url="https://www.dropbox.com/s/f7pvjij2xlpff59/celeba_hq.zip?dl=1", filename="celeba_hq.zip",
        classes=("female", "male"), splits={"train": "train", "val": "val"},
        counts={"train": {"female": 17943, "male": 10057}, "val": {"female": 1000, "male": 1000}},
        total=30000, approx_size="not published; 30,000 images",
        licence="CelebA terms: non-commercial research and education only"),
}


@dataclasses.dataclass(frozen=True)
class Limits:
    """When an archive is implausible (a zip bomb, a wrong file): checked on the central directory first."""

    max_entries: int = 200_000
    max_total: int = 64 << 30  # uncompressed bytes, all entries
    max_ratio: float = 20.0  # uncompressed total / archive size; images hardly compress
    max_entry: int = 256 << 20  # uncompressed bytes of one entry


# ---- download ------------------------------------------------------------------------------------------------

def _open(url: str, start: int, timeout: float):
    headers = {"User-Agent": "fftd-course-prepare/1"}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _fetch_once(url: str, part: Path, timeout: float, progress: bool) -> None:
    """Append the rest of ``url`` to ``part`` (start over if the server ignores ``Range``); raise when cut short."""
    have = part.stat().st_size if part.exists() else 0
    with _open(url, have, timeout) as r:
        if have and r.status != 206:
            have = 0  # the server sent the whole file
        length = r.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(part, "ab" if have else "wb") as f, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                                          desc=part.name[:-5], disable=not progress) as bar:
            while True:
                chunk = r.read(CHUNK)
                if not chunk:
                    break
                f.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size != total:
        raise ConnectionError(f"connection closed after {size} of {total} bytes")


def download(url: str, dest: Path, *, retries: int = RETRIES, timeout: float = 60.0, backoff: float = 1.0,
             progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming it (HTTP Range) and retrying drops."""
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, timeout, progress)
            break
        except urllib.error.HTTPError as e:
            if e.code == 416 and part.exists():  # a stale .part longer than the file: start over
                part.unlink()
            elif 400 <= e.code < 500:
                raise PrepareError(f"{url} answered HTTP {e.code} {e.reason}: check the address, or download the "
                                   "archive yourself and pass --archive") from None
            error = e
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            error = e
        if attempt < retries:
            time.sleep(backoff * (attempt + 1))
    else:
        raise PrepareError(f"downloading {url} failed {retries + 1} times ({type(error).__name__}: {error}); "
                           f"run again to resume from {part}, or pass --archive")
    os.replace(part, dest)
    return dest


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise PrepareError(f"{path} is damaged ({e}); fix or delete it") from None


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def check_hash(spec: DatasetSpec, digest: str, hashes_file: Path) -> str | None:
    """Refuse ``digest`` if it differs from the published or the recorded hash; returns the recorded one."""
    if spec.sha256 and digest != spec.sha256.lower():
        raise WrongFileError(f"the {spec.name} archive's SHA-256 is {digest}, not the published {spec.sha256}: the "
                           "file is damaged or another one; delete it and download again")
    recorded = _read_json(hashes_file).get(spec.name, {}).get("sha256")
    if recorded and digest != recorded:
        raise WrongFileError(f"the {spec.name} archive's SHA-256 is {digest}, but {hashes_file} recorded {recorded} "
                           "at the first run: the archive changed (damaged?); use the original, or delete that "
                           "entry if the new one is right")
    return recorded


def record_hash(spec: DatasetSpec, digest: str, size: int, source: str, hashes_file: Path) -> None:
    data = _read_json(hashes_file)
    if spec.name not in data:
        hashes_file.parent.mkdir(parents=True, exist_ok=True)
        data[spec.name] = {"sha256": digest, "bytes": size, "source": source, "file": spec.filename,
                           "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        _write_json(hashes_file, data)


# ---- the archive: safety and layout -------------------------------------------------------------------------

def _entry_problem(info: zipfile.ZipInfo, limits: Limits) -> str | None:
    name = info.filename
    path = PurePosixPath(name)
    if "\\" in name or "\0" in name or name.startswith("/") or path.is_absolute() or ".." in path.parts \
            or (path.parts and ":" in path.parts[0]):
        return "a path that escapes the target folder"
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        return "a symbolic link"
    if mode and kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "a device or other special file"
    if info.file_size > limits.max_entry:
        return f"an entry of {info.file_size} bytes uncompressed (more than {limits.max_entry})"
    if info.file_size > (1 << 20) and info.file_size > limits.max_ratio * max(info.compress_size, 1):
        return f"an entry that inflates {info.file_size / max(info.compress_size, 1):.0f}x (a zip bomb?)"
    return None


def check_archive(zf: zipfile.ZipFile, archive_size: int, limits: Limits) -> None:
    """Refuse the whole archive before anything is read: unsafe entries, too many, too large in total."""
    infos = zf.infolist()
    if len(infos) > limits.max_entries:
        raise PrepareError(f"the archive has {len(infos)} entries, more than {limits.max_entries}: refused as "
                           "implausible")
    total = sum(i.file_size for i in infos)
    if total > limits.max_total or total > limits.max_ratio * max(archive_size, 1):
        raise PrepareError(f"the archive claims {total} bytes uncompressed from {archive_size} bytes (limits: "
                           f"{limits.max_ratio:g}x, {limits.max_total} bytes): refused as a possible zip bomb")
    for info in infos:
        problem = _entry_problem(info, limits)
        if problem:
            raise PrepareError(f"the archive's entry {info.filename!r} is {problem}: refused, nothing was written")


def _ignored(path: PurePosixPath) -> bool:
    return path.parts[0] == "__MACOSX" or any(p.startswith(".") for p in path.parts)


def layout(spec: DatasetSpec, zf: zipfile.ZipFile) -> dict:
    """``{(split, class): [entry names]}`` of the archive's images, in the spec's layout, or refuse."""
    folders = {v: k for k, v in spec.splits.items()}
    found: dict = {(s, c): [] for s in spec.splits for c in spec.classes}
    prefixes, outputs = set(), set()
    for info in zf.infolist():
        path = PurePosixPath(info.filename)
        if info.is_dir() or _ignored(path) or path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        parts = path.parts
        if len(parts) < 3 or parts[-3] not in folders or parts[-2] not in spec.classes:
            raise PrepareError(f"the archive's image {info.filename!r} is not in {spec.name}'s layout "
                               f"(<{'|'.join(folders)}>/<{'|'.join(spec.classes)}>/<image>): is it the right archive?")
        prefixes.add(parts[:-3])
        split, cls = folders[parts[-3]], parts[-2]
        out = (split, cls, path.stem)
        if out in outputs:
            raise PrepareError(f"the archive holds two images named {path.stem} in {parts[-3]}/{cls}: refused")
        outputs.add(out)
        found[(split, cls)].append(info.filename)
    if len(prefixes) > 1:
        raise PrepareError(f"the archive holds images under several top folders ({sorted('/'.join(p) or '.' for p in prefixes)}): "
                           "is it the right archive?")
    return found


def check_counts(spec: DatasetSpec, found: dict) -> dict:
    counts = {s: {c: len(found[(s, c)]) for c in spec.classes} for s in spec.splits}
    total = sum(len(v) for v in found.values())
    if spec.counts is not None and counts != spec.counts:
        diff = [f"{s}/{c} {counts[s][c]} (expected {spec.counts[s][c]})" for s in spec.splits for c in spec.classes
                if counts[s][c] != spec.counts.get(s, {}).get(c)]
        raise PrepareError(f"the {spec.name} archive's image counts differ from the published ones: {', '.join(diff)}; "
                           "it is incomplete or another archive")
    if spec.total is not None and total != spec.total:
        raise PrepareError(f"the {spec.name} archive holds {total} images, the published count is {spec.total}: it is "
                           "incomplete or another archive")
    empty = [f"{s}/{c}" for s in spec.splits for c in spec.classes if not counts[s][c]]
    if empty:
        raise PrepareError(f"the {spec.name} archive has no images in {', '.join(empty)}: is it the right archive?")
    return counts


# ---- preparing the images -----------------------------------------------------------------------------------

_ZIP: zipfile.ZipFile | None = None


def _open_zip(path: str) -> None:
    global _ZIP
    torch.set_num_threads(1)
    _ZIP = zipfile.ZipFile(path)


class _Member(io.BytesIO):
    """An archive member's bytes; named by its path in decoder messages (not ``<_io.BytesIO object at ...>``)."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self.member = name

    def __repr__(self) -> str:
        return repr(self.member)


def _convert(job: tuple) -> str | None:
    """Decode one archive member with ``load_image``, save it as PNG; the reason it failed, or None."""
    member, dst, size = job
    try:
        info = _ZIP.getinfo(member)
        with _ZIP.open(info) as f:
            data = f.read(info.file_size + 1)
        image = load_image(_Member(data, member), size)
    except zipfile.BadZipFile:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder error means "skip this image"
        return f"{type(e).__name__}: {e}"
    pixels = ((image + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(np.ascontiguousarray(pixels)).save(dst)
    return None


def convert_all(archive: Path, jobs: list, workers: int, progress: bool) -> list:
    """Run :func:`_convert` on every job (``workers`` processes; 0 or 1: here); the reasons, in job order."""
    bar = dict(total=len(jobs), desc="preparing", unit="img", disable=not progress)
    if workers <= 1:
        threads = torch.get_num_threads()
        _open_zip(str(archive))
        try:
            return [_convert(j) for j in tqdm(jobs, **bar)]
        finally:
            torch.set_num_threads(threads)
            _close_zip()
    with ProcessPoolExecutor(workers, initializer=_open_zip, initargs=(str(archive),)) as pool:
        chunk = max(1, min(64, len(jobs) // (workers * 8) or 1))
        return list(tqdm(pool.map(_convert, jobs, chunksize=chunk), **bar))


def _close_zip() -> None:
    global _ZIP
    if _ZIP is not None:
        _ZIP.close()
        _ZIP = None


def compute_stats(folder: Path, size: int, progress: bool) -> dict:
    """Inception statistics of each split folder, saved as ``<split>-stats.pt`` with ``atomic_save``."""
    from fftd_course.checkpoints import atomic_save
    from fftd_course.data import ImageFolder
    from fftd_course.evaluation.metrics import FeatureStats, inception_features, load_inception

    net, out = load_inception(), {}
    for split in sorted(p.name for p in folder.iterdir() if p.is_dir()):
        dataset = ImageFolder(folder / split, size, verify=False, progress=False)
        loader = torch.utils.data.DataLoader(dataset, batch_size=50)
        stats = FeatureStats.from_features(inception_features(loader, progress=progress, net=net))
        atomic_save({"mean": stats.mean, "cov": stats.cov, "n": stats.n}, folder / f"{split}-stats.pt")
        out[split] = {"file": f"{split}-stats.pt", "n": stats.n}
    return out


# ---- the whole run ------------------------------------------------------------------------------------------

def _versions() -> dict:
    import PIL

    import fftd_course
    return {"python": platform.python_version(), "torch": torch.__version__, "pillow": PIL.__version__,
            "numpy": np.__version__, "fftd_course": getattr(fftd_course, "__version__", "?")}


def _on_disk(folder: Path, spec: DatasetSpec) -> dict:
    return {s: {c: len(list((folder / s / c).glob("*.png"))) if (folder / s / c).is_dir() else 0
                for c in spec.classes} for s in spec.splits}


def _done(spec: DatasetSpec, final: Path, hashes_file: Path, archive: Path | None, stats: bool, progress: bool,
          log) -> bool:
    """True when ``final`` is complete; refuse a folder that is not what its manifest says."""
    manifest = _read_json(final / MANIFEST)
    if not manifest:
        raise PrepareError(f"{final} exists but holds no {MANIFEST} (not made by this script, or damaged): "
                           "delete it and run again")
    recorded = _read_json(hashes_file).get(spec.name, {}).get("sha256")
    if archive is not None and archive.is_file():
        digest = sha256_file(archive)
        check_hash(spec, digest, hashes_file)
        if digest != manifest.get("sha256"):
            raise PrepareError(f"{archive} is not the archive {final} was prepared from (SHA-256 {digest[:12]}..., "
                               f"manifest {str(manifest.get('sha256'))[:12]}...): use that one, or delete {final}")
    if manifest.get("sha256") != (recorded or manifest.get("sha256")) or \
            (spec.sha256 and manifest.get("sha256") != spec.sha256.lower()):
        raise PrepareError(f"{final} was prepared from an archive whose hash differs from the recorded one: "
                           "delete it and run again")
    if manifest.get("dataset") != spec.name or manifest.get("counts") != _on_disk(final, spec) or \
            (spec.counts is not None and manifest.get("archive_counts") != spec.counts):
        raise PrepareError(f"{final} does not hold what its {MANIFEST} lists (files removed or added?): delete "
                           "it and run again")
    missing = [s for s in spec.splits if not (final / f"{s}-stats.pt").exists()]
    if stats and missing:
        log(f"{final} is prepared; computing the missing statistics ({', '.join(missing)})")
        t = time.perf_counter()
        manifest["stats"] = compute_stats(final, manifest["size"], progress)
        manifest.setdefault("seconds", {})["stats"] = round(time.perf_counter() - t, 2)
        _write_json(final / MANIFEST, manifest)
        return True
    log(f"nothing to do: {final} is complete (manifest, hash {str(manifest.get('sha256'))[:12]}..., counts"
        f"{', statistics' if not missing else ''} checked)")
    return True


def _get_archive(spec, root: Path, archive, url, progress: bool, log) -> tuple[Path, bool, str]:
    """The archive's path, whether this run downloaded it, and its source."""
    if archive is not None:
        archive = Path(archive).expanduser()
        if not archive.is_file():
            raise PrepareError(f"--archive {archive}: no such file")
        return archive, False, str(archive.resolve())
    dest = root / "downloads" / spec.filename
    if dest.is_file():
        log(f"using {dest}, downloaded earlier")
        return dest, False, str(dest)
    url = url or spec.url
    if not url:
        raise PrepareError(f"{spec.name} has no download address: pass --archive or --url")
    log(f"downloading {url} to {dest}")
    return download(url, dest, progress=progress), True, url


def _build(spec, archive: Path, tmp: Path, size: int, workers: int, progress: bool, limits: Limits) -> tuple:
    try:
        with zipfile.ZipFile(archive) as zf:
            check_archive(zf, archive.stat().st_size, limits)
            found = layout(spec, zf)
            counts = check_counts(spec, found)
    except zipfile.BadZipFile as e:
        raise WrongFileError(f"{archive} is not a zip archive or is damaged ({e}): is it the right file (a download "
                           "that returned a web page)?") from None
    jobs, names = [], []
    for (split, cls), members in sorted(found.items()):
        (tmp / split / cls).mkdir(parents=True, exist_ok=True)
        for m in sorted(members):
            jobs.append((m, str(tmp / split / cls / f"{PurePosixPath(m).stem}.png"), size))
            names.append(m)
    try:
        reasons = convert_all(archive, jobs, workers, progress)
    except zipfile.BadZipFile as e:
        raise WrongFileError(f"{archive} is damaged ({e}): delete it and download again") from None
    skipped = [{"file": n, "reason": r} for n, r in zip(names, reasons) if r is not None]
    for s in skipped:
        warnings.warn(f"skipping {s['file']!r}: {s['reason']}", stacklevel=2)
    return counts, skipped


def prepare(spec: DatasetSpec, root, *, archive=None, url: str | None = None, size: int = 256,
            workers: int | None = None, stats: bool = True, progress: bool = True, limits: Limits = Limits(),
            log=print) -> Path:
    """Download (or take ``archive``), verify and prepare ``spec`` under ``root``; returns ``<root>/<name>-<size>``."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise PrepareError(f"--size must be an integer number of pixels >= 8, got {size!r}")
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    if workers < 0:
        raise PrepareError(f"--workers must be >= 0, got {workers}")
    if archive is not None and not Path(archive).expanduser().is_file():
        raise PrepareError(f"--archive {archive}: no such file")
    start = time.perf_counter()
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    final, hashes_file = root / f"{spec.name}-{size}", root / "downloads" / HASHES
    for stale in root.glob(f".{final.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a killed run
    if final.exists():
        _done(spec, final, hashes_file, Path(archive).expanduser() if archive else root / "downloads" / spec.filename,
              stats, progress, log)
        return final
    path, downloaded, source = _get_archive(spec, root, archive, url, progress, log)
    t_download = time.perf_counter() - start
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
        digest = sha256_file(path)
        try:
            check_hash(spec, digest, hashes_file)
            t = time.perf_counter()
            counts, skipped = _build(spec, path, tmp, size, workers, progress, limits)
        except WrongFileError:
            if downloaded:
                path.unlink(missing_ok=True)  # a wrong file is not kept (an archive refused for its layout or
            raise                             # counts is kept: check it, then delete it or pass --archive)
        except PrepareError as e:
            if downloaded:
                raise PrepareError(f"{e} (the download is kept as {path})") from None
            raise
        record_hash(spec, digest, path.stat().st_size, source, hashes_file)
        t_prepare = time.perf_counter() - t
        t = time.perf_counter()
        stats_info = compute_stats(tmp, size, progress) if stats else None
        manifest = {"dataset": spec.name, "source": source, "archive": str(path), "sha256": digest,
                    "archive_bytes": path.stat().st_size, "size": size, "archive_counts": counts,
                    "counts": _on_disk(tmp, spec), "skipped": skipped, "skipped_count": len(skipped),
                    "stats": stats_info, "tools": _versions(), "workers": workers,
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "seconds": {"download": round(t_download, 2), "prepare": round(t_prepare, 2),
                                "stats": round(time.perf_counter() - t, 2) if stats else 0.0,
                                "total": round(time.perf_counter() - start, 2)}}
        _write_json(tmp / MANIFEST, manifest)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    n = sum(sum(c.values()) for c in manifest["counts"].values())
    log(f"prepared {n} images ({len(skipped)} skipped) in {final} in {manifest['seconds']['total']:.1f} s")
    return final


# ---- command line -------------------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse would print the usage too)
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="prepare.py", description="Download, verify and prepare AFHQ, AFHQ-v2 or CelebA-HQ "
                                               "(see data_scripts/README.md).")
    p.add_argument("dataset", choices=sorted(SPECS), help="which data set")
    p.add_argument("--root", default="datasets", help="where downloads/ and <dataset>-<size>/ go (default: datasets)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--archive", help="a zip you already have (no download)")
    src.add_argument("--url", help="download from this address instead of the built-in one")
    p.add_argument("--size", type=int, default=256, help="side of the square images in pixels (default 256)")
    p.add_argument("--workers", type=int, default=None, help="processes for the resize (default: CPUs, at most 8)")
    p.add_argument("--no-stats", action="store_true", help="skip the FID statistics of each split")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            prepare(SPECS[args.dataset], args.root, archive=args.archive, url=args.url, size=args.size,
                    workers=args.workers, stats=not args.no_stats, progress=not args.no_progress)
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; run again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
