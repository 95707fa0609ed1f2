"""data_scripts/prepare.py: download (resumed, retried), verify, refuse unsafe archives, prepare, FID statistics.

No internet: a local HTTP server (a thread on 127.0.0.1, Range requests, can drop the connection once) serves zips
built here in the real AFHQ / CelebA-HQ layouts with a few dozen tiny images, and the tests pass their own
``DatasetSpec`` with those counts (the command line always uses the built-in table).
"""

from __future__ import annotations

import http.server
import importlib.util
import io
import json
import stat
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fftd_course.cli import _load_ref_stats
from fftd_course.cli import main as cli_main
from fftd_course.data import ImageFolder

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("prepare", REPO / "data_scripts" / "prepare.py")
P = importlib.util.module_from_spec(_spec)
sys.modules["prepare"] = P  # worker processes unpickle P._convert by this name
_spec.loader.exec_module(P)

pytestmark = pytest.mark.usefixtures("one_thread")

AFHQ_COUNTS = {"train": {"cat": 4, "dog": 3, "wild": 3}, "val": {"cat": 2, "dog": 2, "wild": 2}}


# ---- fixtures: images, archives, a server -------------------------------------------------------------------

def _image_bytes(seed: int, fmt: str) -> bytes:
    rng = np.random.default_rng(seed)
    w, h = int(rng.integers(40, 81)), int(rng.integers(40, 81))
    base = rng.integers(0, 256, size=3)
    pixels = np.clip(base + rng.normal(0, 30, size=(h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def make_zip(path: Path, counts: dict, *, prefix: str = "afhq/", folders: dict | None = None, extra=(),
             seed: int = 0) -> Path:
    """A zip of ``counts[split][class]`` images at ``prefix<folder>/<class>/<i>.jpg|png`` (+ ``extra`` entries)."""
    folders = folders or {}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        k = seed * 1000
        for split, per_class in counts.items():
            for cls, n in per_class.items():
                for i in range(n):
                    fmt = "PNG" if k % 3 == 0 else "JPEG"
                    name = f"{prefix}{folders.get(split, split)}/{cls}/flickr_{cls}_{k:06d}.{'png' if fmt == 'PNG' else 'jpg'}"
                    zf.writestr(name, _image_bytes(k, fmt))
                    k += 1
        for entry in extra:
            entry(zf)
    return path


def afhq_spec(url=None, **kw) -> P.DatasetSpec:
    return P.DatasetSpec(**{**dict(name="afhq", url=url, filename="afhq.zip", classes=("cat", "dog", "wild"),
                                   splits={"train": "train", "val": "val"}, counts=AFHQ_COUNTS, total=16), **kw})


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict = {}
    drop_after: int | None = None  # close the connection after this many bytes, once
    requests: list = []

    def do_GET(self):  # noqa: N802 - http.server's name
        data = self.files.get(self.path.split("?")[0])
        if data is None:
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
        type(self).requests.append(rng)
        body = data[start:]
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = type(self).drop_after
        if cut is not None:
            type(self).drop_after = None
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    handler = type("Handler", (_Handler,), {"files": {}, "drop_after": None, "requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    handler.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield handler
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def _quiet(*_):
    pass


# ---- the whole path -------------------------------------------------------------------------------------------

def test_download_prepare_stats_and_train(tmp_path, server):
    server.files["/afhq.zip"] = make_zip(tmp_path / "src.zip", AFHQ_COUNTS).read_bytes()
    root = tmp_path / "datasets"
    out = P.prepare(afhq_spec(server.base + "/afhq.zip?dl=1"), root, size=64, workers=0, progress=False, log=_quiet)
    assert out == root / "afhq-64"
    assert (root / "downloads" / "afhq.zip").read_bytes() == server.files["/afhq.zip"]
    assert not list(root.glob("**/*.part")) and not list(root.glob(".afhq-64.tmp-*"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == AFHQ_COUNTS and manifest["skipped_count"] == 0 and manifest["size"] == 64
    recorded = json.loads((root / "downloads" / "hashes.json").read_text())["afhq"]["sha256"]
    assert manifest["sha256"] == recorded
    for split in ("train", "val"):
        data = ImageFolder(out / split, 64, progress=False)
        assert data.class_names == ("cat", "dog", "wild") and len(data) == sum(AFHQ_COUNTS[split].values())
        png = next((out / split / "cat").glob("*.png"))
        assert Image.open(png).size == (64, 64) and Image.open(png).mode == "RGB"
        stats = torch.load(out / f"{split}-stats.pt", weights_only=True)
        assert stats["mean"].shape == (2048,) and stats["cov"].shape == (2048, 2048) and stats["n"] == len(data)
        assert _load_ref_stats(out / f"{split}-stats.pt", 2048)[2] == len(data)  # what `fid --ref FILE.pt` reads
    # the preparer and the trainer agree: loading a prepared PNG at its size gives back the same pixels
    src = zipfile.ZipFile(io.BytesIO(server.files["/afhq.zip"]))
    member = next(n for n in src.namelist() if "/val/dog/" in n)
    expected = P.load_image(io.BytesIO(src.read(member)), 64)
    assert torch.allclose(P.load_image(out / "val" / "dog" / (Path(member).stem + ".png"), 64), expected, atol=1e-6)
    assert cli_main(["train-ivqvae", "--preset", "small64", "--data", str(out / "train"), "--steps", "2",
                     "--batch-size", "4", "--lpips", "random", "--kmeans-batches", "1", "--log-every", "1",
                     "--sample-every", "0", "--num-workers", "0", "--no-progress", "--out", str(tmp_path / "run")]) == 0


def test_second_run_does_nothing_and_says_so(tmp_path):
    archive = make_zip(tmp_path / "afhq.zip", AFHQ_COUNTS)
    root, lines = tmp_path / "datasets", []
    out = P.prepare(afhq_spec(), root, archive=archive, size=32, workers=0, stats=False, progress=False, log=_quiet)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert P.prepare(afhq_spec(), root, archive=archive, size=32, workers=0, stats=False, progress=False,
                     log=lines.append) == out
    assert P.prepare(afhq_spec(), root, size=32, workers=0, stats=False, progress=False, log=lines.append) == out
    assert len(lines) == 2 and all(line.startswith("nothing to do") and "complete" in line for line in lines)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    (out / "train" / "cat" / next((out / "train" / "cat").iterdir()).name).unlink()  # a damaged folder is refused
    with pytest.raises(P.PrepareError, match="does not hold what its manifest.json lists"):
        P.prepare(afhq_spec(), root, archive=archive, size=32, workers=0, stats=False, progress=False, log=_quiet)


def test_two_workers_give_the_same_images(tmp_path):
    archive = make_zip(tmp_path / "afhq.zip", AFHQ_COUNTS)
    a = P.prepare(afhq_spec(), tmp_path / "a", archive=archive, size=32, workers=0, stats=False, progress=False,
                  log=_quiet)
    b = P.prepare(afhq_spec(), tmp_path / "b", archive=archive, size=32, workers=2, stats=False, progress=False,
                  log=_quiet)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.png")) and len(files) == 16
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def test_celebahq_layout(tmp_path):
    counts = {"train": {"female": 3, "male": 2}, "val": {"female": 2, "male": 2}}
    archive = make_zip(tmp_path / "celeba_hq.zip", counts, prefix="celeba_hq/")
    spec = P.DatasetSpec(name="celebahq", url=None, filename="celeba_hq.zip", classes=("female", "male"),
                         splits={"train": "train", "val": "val"}, counts=counts, total=9)
    out = P.prepare(spec, tmp_path / "d", archive=archive, size=32, workers=0, stats=False, progress=False, log=_quiet)
    assert ImageFolder(out / "val", 32, progress=False).class_names == ("female", "male")


def test_afhq_v2_test_folder_becomes_val(tmp_path):
    archive = make_zip(tmp_path / "afhq_v2.zip", AFHQ_COUNTS, prefix="", folders={"val": "test"})
    spec = afhq_spec(name="afhq-v2", filename="afhq_v2.zip", splits={"train": "train", "val": "test"}, counts=None)
    out = P.prepare(spec, tmp_path / "d", archive=archive, size=32, workers=0, stats=False, progress=False, log=_quiet)
    assert json.loads((out / "manifest.json").read_text())["counts"] == AFHQ_COUNTS


# ---- download: resume, checksums ------------------------------------------------------------------------------

def test_interrupted_download_resumes_to_the_same_hash(tmp_path, server):
    data = make_zip(tmp_path / "src.zip", AFHQ_COUNTS).read_bytes()
    server.files["/afhq.zip"] = data
    server.drop_after = len(data) // 3
    dest = tmp_path / "dl" / "afhq.zip"
    P.download(server.base + "/afhq.zip", dest, backoff=0.0, progress=False)
    assert dest.read_bytes() == data and not dest.with_name("afhq.zip.part").exists()
    assert server.requests == [None, f"bytes={len(data) // 3}-"]  # the second request resumed, not restarted
    # a download that keeps failing leaves its .part for the next run, which resumes it
    server.drop_after, server.requests[:] = 100, []
    with pytest.raises(P.PrepareError, match="run again to resume"):
        P.download(server.base + "/afhq.zip", tmp_path / "dl2" / "afhq.zip", retries=0, backoff=0.0, progress=False)
    assert (tmp_path / "dl2" / "afhq.zip.part").stat().st_size == 100
    P.download(server.base + "/afhq.zip", tmp_path / "dl2" / "afhq.zip", backoff=0.0, progress=False)
    assert P.sha256_file(tmp_path / "dl2" / "afhq.zip") == P.sha256_file(dest)
    with pytest.raises(P.PrepareError, match="HTTP 404"):
        P.download(server.base + "/nothing.zip", tmp_path / "dl3" / "x.zip", backoff=0.0, progress=False)


def test_wrong_published_checksum_is_refused_and_nothing_is_left(tmp_path, server):
    server.files["/afhq.zip"] = make_zip(tmp_path / "src.zip", AFHQ_COUNTS).read_bytes()
    root = tmp_path / "datasets"
    with pytest.raises(P.PrepareError, match="not the published"):
        P.prepare(afhq_spec(server.base + "/afhq.zip", sha256="0" * 64), root, size=32, workers=0, stats=False,
                  progress=False, log=_quiet)
    assert [p.relative_to(root) for p in root.rglob("*")] == [Path("downloads")]  # empty: no .part, no zip


def test_a_download_with_other_counts_is_refused_but_kept_and_not_recorded(tmp_path, server):
    server.files["/afhq.zip"] = make_zip(tmp_path / "src.zip", AFHQ_COUNTS).read_bytes()
    root = tmp_path / "datasets"
    with pytest.raises(P.PrepareError, match=r"holds 16 images, the published count is 17.*the download is kept as"):
        P.prepare(afhq_spec(server.base + "/afhq.zip", counts=None, total=17), root, size=32, workers=0,
                  stats=False, progress=False, log=_quiet)
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == ["downloads", "downloads/afhq.zip"]


def test_changed_archive_is_refused_against_the_recorded_hash(tmp_path):
    root = tmp_path / "datasets"
    first = make_zip(tmp_path / "a.zip", AFHQ_COUNTS)
    P.prepare(afhq_spec(), root, archive=first, size=32, workers=0, stats=False, progress=False, log=_quiet)
    changed = make_zip(tmp_path / "b.zip", AFHQ_COUNTS, seed=1)
    with pytest.raises(P.PrepareError, match="recorded"):
        P.prepare(afhq_spec(), root, archive=changed, size=48, workers=0, stats=False, progress=False, log=_quiet)
    assert sorted(p.name for p in root.iterdir()) == ["afhq-32", "downloads"]
    with pytest.raises(P.PrepareError, match="recorded"):  # also when the folder exists: the check is not skipped
        P.prepare(afhq_spec(), root, archive=changed, size=32, workers=0, stats=False, progress=False, log=_quiet)


def test_wrong_counts_are_refused_in_one_line(tmp_path):
    archive = make_zip(tmp_path / "afhq.zip", AFHQ_COUNTS)
    counts = {"train": {"cat": 5, "dog": 3, "wild": 3}, "val": AFHQ_COUNTS["val"]}
    with pytest.raises(P.PrepareError, match=r"train/cat 4 \(expected 5\)") as e:
        P.prepare(afhq_spec(counts=counts, total=17), tmp_path / "d", archive=archive, size=32, workers=0,
                  stats=False, progress=False, log=_quiet)
    assert "\n" not in str(e.value) and sorted(p.name for p in (tmp_path / "d").iterdir()) == []


# ---- unsafe archives ----------------------------------------------------------------------------------------

def _symlink(zf):
    info = zipfile.ZipInfo("afhq/train/cat/link.jpg")
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    zf.writestr(info, "/etc/passwd")


def _device(zf):
    info = zipfile.ZipInfo("afhq/train/cat/tty.jpg")
    info.create_system = 3
    info.external_attr = (stat.S_IFCHR | 0o666) << 16
    zf.writestr(info, b"")


def _bomb(zf):  # 40 MiB of zeros, about 40 KB compressed
    zf.writestr(zipfile.ZipInfo("afhq/train/cat/big.jpg"), b"\0" * (40 << 20), compress_type=zipfile.ZIP_DEFLATED)


@pytest.mark.parametrize("entry, message", [
    (lambda zf: zf.writestr("afhq/../../evil.jpg", b"x"), "escapes"),
    (lambda zf: zf.writestr("/tmp/evil.jpg", b"x"), "escapes"),
    (_symlink, "symbolic link"),
    (_device, "device"),
    (_bomb, "zip bomb"),
], ids=["dotdot", "absolute", "symlink", "device", "bomb"])
def test_unsafe_archives_are_refused_and_nothing_is_written(tmp_path, entry, message):
    archive = make_zip(tmp_path / "afhq.zip", AFHQ_COUNTS, extra=[entry])
    root = tmp_path / "inside" / "datasets"
    with pytest.raises(P.PrepareError, match=message):
        P.prepare(afhq_spec(), root, archive=archive, size=32, workers=0, stats=False, progress=False, log=_quiet)
    assert list(root.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afhq.zip", "inside"]


def test_too_many_entries_are_refused(tmp_path):
    archive = make_zip(tmp_path / "afhq.zip", AFHQ_COUNTS)
    with pytest.raises(P.PrepareError, match="more than 10"):
        P.prepare(afhq_spec(), tmp_path / "d", archive=archive, size=32, workers=0, stats=False, progress=False,
                  limits=P.Limits(max_entries=10), log=_quiet)


def test_corrupt_image_is_skipped_by_name_and_counted(tmp_path):
    counts = {"train": {"cat": 5, "dog": 3, "wild": 3}, "val": AFHQ_COUNTS["val"]}
    broken = _image_bytes(99, "JPEG")[:200]
    archive = make_zip(tmp_path / "afhq.zip", AFHQ_COUNTS,
                       extra=[lambda zf: zf.writestr("afhq/train/cat/broken.jpg", broken)])
    with pytest.warns(UserWarning, match="broken.jpg"):
        out = P.prepare(afhq_spec(counts=counts, total=17), tmp_path / "d", archive=archive, size=32, workers=0,
                        stats=False, progress=False, log=_quiet)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skipped_count"] == 1 and manifest["skipped"][0]["file"] == "afhq/train/cat/broken.jpg"
    assert "BytesIO" not in manifest["skipped"][0]["reason"]
    assert manifest["archive_counts"]["train"]["cat"] == 5 and manifest["counts"]["train"]["cat"] == 4


def test_a_failed_run_leaves_no_folder_that_looks_prepared(tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "afhq.zip", AFHQ_COUNTS)
    monkeypatch.setattr(P, "compute_stats", lambda *a: (_ for _ in ()).throw(RuntimeError("out of memory")))
    with pytest.raises(RuntimeError):
        P.prepare(afhq_spec(), tmp_path / "d", archive=archive, size=32, workers=0, progress=False, log=_quiet)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["downloads"]


# ---- command line --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["imagenet"], "invalid choice"),
    (["afhq", "--archive", "/nonexistent/afhq.zip"], "no such file"),
    (["afhq", "--size", "0", "--archive", "x.zip"], "--size must be"),
    (["afhq", "--archive", "a.zip", "--url", "http://x"], "not allowed with"),
    (["afhq", "--archive", "page.zip"], "not a zip archive"),
])
def test_command_line_mistakes_end_in_one_line_and_exit_2(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    Path("page.zip").write_text("<html>Dropbox: this link is temporarily disabled</html>")
    try:
        rc = P.main([*argv, "--root", str(tmp_path / "d"), "--no-progress"])
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_command_line_uses_the_published_counts(tmp_path, capsys):
    archive = make_zip(tmp_path / "afhq.zip", AFHQ_COUNTS)
    assert P.main(["afhq", "--archive", str(archive), "--root", str(tmp_path / "d"), "--size", "32", "--no-stats",
                   "--no-progress", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "train/cat 4 (expected 5153)" in err and err.count("\n") == 1
    assert P.SPECS["afhq"].total == 16130 and P.SPECS["afhq-v2"].total == 15803 and P.SPECS["celebahq"].total == 30000


def test_runs_as_a_script_from_any_folder(tmp_path):
    import subprocess

    result = subprocess.run([sys.executable, str(REPO / "data_scripts" / "prepare.py"), "imagenet"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error: argument dataset: invalid choice")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_a_second_run_computes_only_the_missing_statistics(tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "afhq.zip", AFHQ_COUNTS)
    out = P.prepare(afhq_spec(), tmp_path / "d", archive=archive, size=32, workers=0, stats=False, progress=False,
                    log=_quiet)
    calls, lines = [], []

    def fake_stats(folder, size, progress):
        calls.append((folder, size))
        for split in ("train", "val"):
            (folder / f"{split}-stats.pt").write_bytes(b"stats")
        return {"train": {}, "val": {}}

    monkeypatch.setattr(P, "compute_stats", fake_stats)
    P.prepare(afhq_spec(), tmp_path / "d", archive=archive, size=32, workers=0, progress=False, log=lines.append)
    assert calls == [(out, 32)] and "computing the missing statistics" in lines[0]
    P.prepare(afhq_spec(), tmp_path / "d", archive=archive, size=32, workers=0, progress=False, log=lines.append)
    assert calls == [(out, 32)] and lines[1].startswith("nothing to do") and "statistics" in lines[1]
