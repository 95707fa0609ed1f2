"""``python -m fftd_course sample`` and ``fid``: a user's mistake is one line on stderr, exit code 2, no traceback.

Each case runs ``fftd_course.cli.main`` in-process (argparse's own errors are ``SystemExit(2)`` after its usage
lines); one runs as a subprocess. Bad ``fid`` inputs must be refused before the Inception network loads, so
``load_inception`` is replaced by a function that fails the test if it is reached. A valid checkpoint is the
committed toy generator (a few seconds on a CPU with ``--steps 2 --per-class 1``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch
from PIL import Image

from fftd_course import cli
from fftd_course.evaluation import metrics
from fftd_course.checkpoints import CheckpointError
from fftd_course.data import DataError, ImageFolder
from fftd_course.pipeline import TOY_CHECKPOINT, LatentDiffusion

TOY = str(TOY_CHECKPOINT)
INCEPTION_DIM = 2048


class ReachedInception(Exception):
    """Raised by the stand-in for ``load_inception``: every check before it passed."""


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.delenv("FFTD_DEVICE", raising=False)
    monkeypatch.chdir(tmp_path)  # a default samples.png lands here, not in the repository

    def no_inception(*args, **kwargs):
        raise AssertionError("should not be reached: the Inception network loaded before the input was checked")

    monkeypatch.setattr(metrics, "load_inception", no_inception)


@pytest.fixture
def no_sampling(monkeypatch):
    """Fail the test if any image is generated (the mistake must be found before the work)."""

    def refuse(*args, **kwargs):
        raise AssertionError("should not be reached: sampling started before the arguments were checked")

    monkeypatch.setattr(LatentDiffusion, "generate", refuse)


@pytest.fixture(scope="module")
def toy() -> LatentDiffusion:
    return LatentDiffusion.load(TOY)


def error_line(capsys, argv: list[str]) -> str:
    """Run ``main(argv)``; assert exit code 2 and exactly one non-empty stderr line ``error: ...``; return it."""
    code = cli.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def usage_error(capsys, argv: list[str]) -> str:
    """Run ``main(argv)``; assert argparse's one-line error (after its usage lines) and exit code 2; return it."""
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert "Traceback" not in err
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith(f"python -m fftd_course {argv[0]}: error: "), err
    return last


def bad_checkpoints(folder) -> dict[str, str]:
    """Files a user may give instead of a latent_diffusion.pt."""
    files = {}
    text = folder / "notes.pt"
    text.write_text("not a checkpoint\n")
    files["text"] = text
    truncated = folder / "truncated.pt"
    truncated.write_bytes(TOY_CHECKPOINT.read_bytes()[:20000])
    files["truncated"] = truncated
    ivqvae = LatentDiffusion.load(TOY).ivqvae
    files["training checkpoint"] = folder / "ckpt-00000100.pt"
    torch.save({"format": "fftd_course.train/1", "stage": "fftd", "step": 100, "model": {}},
               files["training checkpoint"])
    files["stage-1 ivqvae.pt"] = folder / "ivqvae.pt"
    torch.save({"format": "fftd_course.IVQVAE/1", "config": {}, "state": ivqvae.state_dict()},
               files["stage-1 ivqvae.pt"])
    files["tensor"] = folder / "tensor.pt"
    torch.save(torch.zeros(3), files["tensor"])
    return {k: str(v) for k, v in files.items()}


def write_images(folder, n: int, size: int = 16) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (size, size), (40 * i % 256, 90, 160)).save(folder / f"{i:03d}.png")


# ---- 1. damaged or wrong checkpoints -------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["sample", "fid"])
def test_a_bad_checkpoint_is_one_line(capsys, tmp_path, command, no_sampling):
    write_images(tmp_path / "ref", 3)
    extra = ["--ref", str(tmp_path / "ref")] if command == "fid" else []
    for kind, path in bad_checkpoints(tmp_path).items():
        line = error_line(capsys, [command, path, "--device", "cpu", *extra])
        assert path in line, (kind, line)
        assert "latent_diffusion.pt" in line, (kind, line)  # says what to give instead
    line = error_line(capsys, [command, str(tmp_path / "missing.pt"), "--device", "cpu", *extra])
    assert "missing.pt" in line


def test_checkpoint_error_is_one_class():
    from fftd_course import pipeline

    assert pipeline.CheckpointError is CheckpointError


def test_a_bad_checkpoint_in_a_subprocess(tmp_path):
    bad = tmp_path / "notes.pt"
    bad.write_text("hello\n")
    env = {k: v for k, v in os.environ.items() if k != "FFTD_DEVICE"}
    done = subprocess.run([sys.executable, "-m", "fftd_course", "sample", str(bad), "--device", "cpu"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "notes.pt" in lines[0], done.stderr
    assert not (tmp_path / "samples.png").exists()


# ---- 2. and 4. numbers refused at parse time ----------------------------------------------------------------

@pytest.mark.parametrize("args, named", [
    (["--per-class", "0"], "--per-class"),
    (["--per-class", "-2"], "--per-class"),
    (["--batch-size", "0"], "--batch-size"),
    (["--n", "0"], "--n"),
    (["--n", "-3"], "--n"),
    (["--steps", "0"], "--steps"),
    (["--guidance", "-5"], "--guidance"),
    (["--guidance", "nan"], "--guidance"),
    (["--guidance", "inf"], "--guidance"),
    (["--eta", "nan"], "--eta"),
    (["--eta", "-0.5"], "--eta"),
    (["--eta", "2"], "--eta"),
    (["--classes", ","], "--classes"),
    (["--classes", "cat", "--n", "2"], "--n"),
    (["--device", "nonsense"], "--device"),
])
def test_sample_refuses_bad_numbers_at_parse_time(capsys, args, named, no_sampling):
    line = usage_error(capsys, ["sample", TOY, *args])
    assert f"argument {named}" in line


@pytest.mark.parametrize("args, named, says", [
    (["--n", "1"], "--n", ">= 2"),
    (["--n", "0"], "--n", ">= 2"),
    (["--n-ref", "-1"], "--n-ref", ">= 0"),
    (["--n-ref", "1"], "--n-ref", "at least 2"),
    (["--workers", "-1"], "--workers", ">= 0"),
    (["--batch-size", "0"], "--batch-size", ">= 1"),
    (["--steps", "0"], "--steps", ">= 1"),
    (["--guidance", "nan"], "--guidance", "finite"),
    (["--guidance", "-1"], "--guidance", ">= 0"),
])
def test_fid_refuses_bad_numbers_at_parse_time(capsys, tmp_path, args, named, says):
    write_images(tmp_path / "ref", 3)
    line = usage_error(capsys, ["fid", TOY, "--ref", str(tmp_path / "ref"), *args])
    assert f"argument {named}" in line and says in line


def test_sample_refuses_what_only_the_checkpoint_can_tell(capsys, no_sampling):
    assert "at most 500" in error_line(capsys, ["sample", TOY, "--device", "cpu", "--steps", "501"])
    line = error_line(capsys, ["sample", TOY, "--device", "cpu", "--classes", "zebra"])
    assert "zebra" in line and "cat" in line
    assert "[0, 2]" in error_line(capsys, ["sample", TOY, "--device", "cpu", "--classes", "7"])


def test_a_missing_gpu_is_one_line(capsys, monkeypatch, no_sampling):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert "no GPU" in usage_error(capsys, ["sample", TOY, "--device", "cuda"])
    monkeypatch.setenv("FFTD_DEVICE", "cuda")
    assert "FFTD_DEVICE" in error_line(capsys, ["sample", TOY])


@pytest.mark.parametrize("kwargs, says", [
    (dict(guidance_scale=-5.0), "guidance_scale"),
    (dict(guidance_scale=float("nan")), "guidance_scale"),
    (dict(guidance_scale=float("inf")), "guidance_scale"),
    (dict(eta=float("nan")), "eta"),
    (dict(eta=-1.0), "eta"),
    (dict(num_steps=0), "num_steps"),
])
def test_generate_refuses_bad_settings(toy, kwargs, says):
    with pytest.raises(ValueError, match=says):
        toy.generate(["cat"], **kwargs)


def test_generate_refuses_no_images(toy):
    with pytest.raises(ValueError, match="n must be a positive integer"):
        toy.generate(n=0, num_steps=1)


# ---- 3. output paths ------------------------------------------------------------------------------------------

def test_sample_refuses_unwritable_outputs_before_sampling(capsys, tmp_path, no_sampling):
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "a_file").write_text("keep me\n")
    base = ["sample", TOY, "--device", "cpu", "--steps", "2", "--per-class", "1"]
    assert "is a folder" in error_line(capsys, [*base, "--grid", "a_folder"])
    assert "a_file is a file" in error_line(capsys, [*base, "--grid", "a_file/grid.png"])
    assert "is a file, not a folder" in error_line(capsys, [*base, "--folder", "a_file"])
    assert "a_file is a file" in error_line(capsys, [*base, "--folder", "a_file/sub"])
    assert "extension" in error_line(capsys, [*base, "--grid", "grid_without_extension"])
    assert (tmp_path / "a_file").read_text() == "keep me\n"


def test_sample_writes_grid_and_folder(capsys, tmp_path):
    code = cli.main(["sample", TOY, "--device", "cpu", "--steps", "2", "--per-class", "1", "--classes", "cat,dog",
                     "--grid", "out/grid.png", "--folder", "imgs"])
    assert code == 0
    assert capsys.readouterr().err.strip() == ""
    assert Image.open(tmp_path / "out" / "grid.png").size[0] > 0
    assert sorted(p.name for p in (tmp_path / "imgs").iterdir()) == ["00000.png", "00001.png"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["grid.png"]  # no temporary file left


# ---- 5. 6. 7. reference sets ----------------------------------------------------------------------------------

def test_image_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images in"):
        ImageFolder(tmp_path / "empty", 16, progress=False)
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "README.txt").write_text("hello")
    with pytest.raises(DataError, match="no images in"):
        ImageFolder(tmp_path / "text", 16, progress=False)
    (tmp_path / "corrupt").mkdir()
    for name in ("a.png", "b.png"):
        (tmp_path / "corrupt" / name).write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="skipping"), pytest.raises(DataError, match="none of the 2 image files"):
        ImageFolder(tmp_path / "corrupt", 16, progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolder(tmp_path / "nowhere", 16, progress=False)
    assert issubclass(DataError, ValueError)


@pytest.mark.parametrize("folder, says", [
    ("empty", "no images in"),
    ("text", "no images in"),
    ("corrupt", "could be read"),
    ("nowhere", "does not exist"),
    ("single", "at least 2 reference images"),
])
def test_fid_refuses_an_unusable_reference_folder(capsys, tmp_path, folder, says):
    (tmp_path / "empty").mkdir()
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "notes.txt").write_text("hello")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "a.png").write_bytes(b"\x89PNG broken")
    (tmp_path / "corrupt" / "b.png").write_text("text")
    write_images(tmp_path / "single", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would be a second stderr line (or a traceback here)
        line = error_line(capsys, ["fid", TOY, "--device", "cpu", "--ref", str(tmp_path / folder), "--n", "4"])
    assert says in line and folder in line


def test_fid_warns_about_a_small_reference_set_before_work(capsys, monkeypatch, tmp_path):
    write_images(tmp_path / "ref", 3)
    (tmp_path / "ref" / "zz_broken.png").write_bytes(b"broken")

    def reached(*args, **kwargs):
        raise ReachedInception

    monkeypatch.setattr(metrics, "load_inception", reached)
    with pytest.raises(ReachedInception):
        cli.main(["fid", TOY, "--device", "cpu", "--ref", str(tmp_path / "ref"), "--n", "10", "--workers", "0"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert any(line.startswith("warning: skipping") and "zz_broken.png" in line for line in lines), err
    few = [line for line in lines if "10 generated images with only 3 reference images" in line]
    assert len(few) == 1 and few[0].startswith("warning: ") and "lower --n to 3" in few[0], err
    with pytest.raises(ReachedInception):
        cli.main(["fid", TOY, "--device", "cpu", "--ref", str(tmp_path / "ref"), "--n", "10", "--n-ref", "2"])
    assert "raise --n-ref" in capsys.readouterr().err


def test_fid_refuses_bad_statistics_files(capsys, tmp_path):
    for name, content in [("text.pt", None), ("partial.pt", {"mean": torch.zeros(INCEPTION_DIM)}),
                          ("shape.pt", {"mean": torch.zeros(3), "cov": torch.eye(3), "n": 10}),
                          ("one.pt", {"mean": torch.zeros(INCEPTION_DIM), "cov": torch.eye(INCEPTION_DIM), "n": 1}),
                          ("nan.pt", {"mean": torch.full((INCEPTION_DIM,), float("nan")),
                                      "cov": torch.eye(INCEPTION_DIM), "n": 10}),
                          ("list.pt", [1, 2, 3])]:
        path = tmp_path / name
        if content is None:
            path.write_text("not statistics\n")
        else:
            torch.save(content, path)
        line = error_line(capsys, ["fid", TOY, "--device", "cpu", "--ref", str(path), "--n", "4"])
        assert str(path) in line and "--save-ref-stats" in line, line
    truncated = tmp_path / "truncated.pt"
    torch.save({"mean": torch.zeros(INCEPTION_DIM), "cov": torch.eye(INCEPTION_DIM), "n": 10}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    assert "damaged" in error_line(capsys, ["fid", TOY, "--device", "cpu", "--ref", str(truncated), "--n", "4"])


def test_fid_accepts_statistics_and_warns_when_they_are_few(capsys, monkeypatch, tmp_path):
    path = tmp_path / "stats.pt"
    torch.save({"mean": torch.zeros(INCEPTION_DIM, dtype=torch.float64),
                "cov": torch.eye(INCEPTION_DIM, dtype=torch.float64), "n": 5}, path)

    def reached(*args, **kwargs):
        raise ReachedInception

    monkeypatch.setattr(metrics, "load_inception", reached)
    with pytest.raises(ReachedInception):
        cli.main(["fid", TOY, "--device", "cpu", "--ref", str(path), "--n", "8"])
    err = capsys.readouterr().err
    assert "warning: FID compares 8 generated images with only 5 reference images" in err


def test_fid_refuses_a_folder_as_the_statistics_file(capsys, tmp_path):
    write_images(tmp_path / "ref", 3)
    (tmp_path / "stats").mkdir()
    line = error_line(capsys, ["fid", TOY, "--device", "cpu", "--ref", str(tmp_path / "ref"),
                               "--save-ref-stats", str(tmp_path / "stats")])
    assert "--save-ref-stats" in line and "is a folder" in line


def test_bench_gets_every_option_and_exits_0(monkeypatch):
    from fftd_course.evaluation import bench

    seen = []
    monkeypatch.setattr(bench, "main", lambda argv: seen.append(argv) or {"rows": []})
    assert cli.main(["bench", "--quick", "--device", "cpu"]) == 0
    assert cli.main(["bench"]) == 0
    assert seen == [["--quick", "--device", "cpu"], []]
