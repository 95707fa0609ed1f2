"""The full-scale trainer and its command line, on tiny CPU runs: settings, exact resume (also after SIGKILL),
atomic checkpoints, damaged or foreign checkpoints, the NaN guard, image folders, two-process DDP (gloo)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fftd_course import train as T
from fftd_course.cli import main as cli_main
from fftd_course.losses import NonFiniteLossError

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(stage="ivqvae", **changes):
    """toy32 cut down to seconds: 64 toy faces, batch 8, every step logged, no image grids."""
    base = T.get_preset("toy32", stage)
    settings = dict(toy_images=64, batch_size=8, steps=8, log_every=1, ckpt_every=100, sample_every=0, num_workers=0)
    if stage == "ivqvae":
        settings.update(disc_start=3, kmeans_batches=1)
    else:
        settings.update(sample_steps=3, batch_size=16)
    settings.update(changes)
    return base.replace(**settings)


def losses(run_dir, key):
    lines = [json.loads(s) for s in (Path(run_dir) / "log.jsonl").read_text().splitlines()]
    return [(h["step"], h[key]) for h in lines if key in h]


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1") / "s1"
    result = T.train(tiny(out=str(out), steps=6), progress=False)
    assert result.status == "finished" and result.final == out / "ivqvae.pt"
    return out


# ---- settings -----------------------------------------------------------------------------------------------

def test_presets_cover_both_stages_and_the_paper():
    for name in ("toy32", "small64", "celebahq256", "afhq256", "paper"):
        for stage in ("ivqvae", "fftd"):
            assert T.get_preset(name, stage).stage == stage
    paper = T.get_preset("paper", "fftd")
    assert (paper.batch_size, paper.lr, paper.ema_decay, paper.steps) == (1, 1e-4, 0.9999, 4_000_000)
    assert T.get_preset("afhq256", "fftd").batch_size > 1 and T.get_preset("small64", "ivqvae").resolution == 64


def test_every_field_is_commented():
    helps = __import__("fftd_course.cli", fromlist=["_field_help"])._field_help()
    assert set(helps) == set(T.FIELDS), set(T.FIELDS) - set(helps)


@pytest.mark.parametrize("changes, key", [({"lr": -1.0}, "lr="), ({"batch_size": 0}, "batch_size="),
                                          ({"precision": "fp16"}, "precision="), ({"steps": "many"}, "steps="),
                                          ({"hflip": "maybe"}, "hflip="), ({"model": "nope"}, "model="),
                                          ({"batch_size": 10, "grad_accum": 3}, "batch_size="),
                                          ({"lerning_rate": 1e-4}, "lerning_rate")])
def test_bad_settings_are_refused_by_name(changes, key):
    with pytest.raises(T.ConfigError, match=key):
        T.get_preset("toy32", "ivqvae").replace(**changes)


def test_config_files_yaml_and_toml(tmp_path):
    (tmp_path / "a.yaml").write_text("preset: small64\nlr: 0.0005\nsteps: 10\n")
    (tmp_path / "b.toml").write_text('lr = 5e-4\nlr_schedule = "cosine"\n')
    (tmp_path / "bad.yaml").write_text("lr: 1e-4\nbatchsize: 3\n")
    assert T.load_config_file(tmp_path / "a.yaml") == {"preset": "small64", "lr": 0.0005, "steps": 10}
    config = T.make_config(T.get_preset("toy32", "ivqvae"), T.load_config_file(tmp_path / "b.toml"))
    assert (config.lr, config.lr_schedule) == (5e-4, "cosine")
    with pytest.raises(T.ConfigError, match="batchsize"):
        T.make_config(T.get_preset("toy32", "ivqvae"), T.load_config_file(tmp_path / "bad.yaml"))


def test_command_line_refuses_a_bad_value_by_name(capsys):
    assert cli_main(["train-ivqvae", "--lr", "fast", "--out", "unused"]) == 2
    assert "lr='fast'" in capsys.readouterr().err


def test_help_at_every_level(capsys):
    for argv in (["--help"], ["train-ivqvae", "--help"], ["train-fftd", "--help"], ["sample", "--help"],
                 ["fid", "--help"], ["toy-data", "--help"]):
        with pytest.raises(SystemExit) as e:
            cli_main(argv)
        assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--grad-accum" in text and "micro-batches per step" in text and "--guidance" in text


# ---- resume, checkpoints --------------------------------------------------------------------------------------

def test_stage1_resume_equals_an_uninterrupted_run(tmp_path):
    config = tiny(steps=8, disc_start=3, hflip=True)
    T.train(config.replace(out=str(tmp_path / "a")), progress=False)
    first = T.train(config.replace(out=str(tmp_path / "b")), progress=False, stop_after=4)
    assert first.status == "stopped" and T.latest_checkpoint(tmp_path / "b").name == "ckpt-00000004.pt"
    T.train(config.replace(out=str(tmp_path / "b")), progress=False)
    for key in ("total", "d_loss", "perplexity"):
        assert losses(tmp_path / "a", key) == losses(tmp_path / "b", key)


def test_stage2_resume_equals_an_uninterrupted_run(tmp_path, stage1):
    config = tiny("fftd", stage1=str(stage1), steps=6)
    a = T.train(config.replace(out=str(tmp_path / "a")), progress=False)
    T.train(config.replace(out=str(tmp_path / "b")), progress=False, stop_after=3)
    b = T.train(config.replace(out=str(tmp_path / "b")), progress=False)
    assert losses(tmp_path / "a", "loss") == losses(tmp_path / "b", "loss") and len(losses(tmp_path / "a", "loss")) == 6
    assert a.final.name == "latent_diffusion.pt" and b.final.is_file()
    ckpt = torch.load(b.final, weights_only=True)
    assert ckpt["class_names"] == ["cat", "dog", "wild"] and ckpt["scale"] > 0


def test_resume_after_sigkill_gives_the_losses_of_an_uninterrupted_run(tmp_path):
    args = [sys.executable, "-m", "fftd_course", "train-ivqvae", "--toy-images", "64", "--batch-size", "8",
            "--steps", "14", "--disc-start", "3", "--kmeans-batches", "1", "--log-every", "1", "--ckpt-every", "3",
            "--sample-every", "0", "--num-workers", "0", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    subprocess.run(args + ["--out", str(tmp_path / "a")], check=True, env=env, capture_output=True, timeout=300)
    proc = subprocess.Popen(args + ["--out", str(tmp_path / "b")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not (tmp_path / "b" / "checkpoints" / "ckpt-00000006.pt").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    latest = T.latest_checkpoint(tmp_path / "b")
    assert latest is not None and int(latest.stem[5:]) < 14, "the run finished before it could be killed"
    subprocess.run(args + ["--out", str(tmp_path / "b")], check=True, env=env, capture_output=True, timeout=300)
    assert losses(tmp_path / "a", "total") == losses(tmp_path / "b", "total")
    assert len(losses(tmp_path / "b", "total")) == 14


def test_a_checkpoint_interrupted_while_written_is_never_the_latest(tmp_path, monkeypatch):
    config = tiny(steps=4, ckpt_every=2, out=str(tmp_path / "run"))
    T.train(config.replace(steps=2), progress=False)
    good = T.latest_checkpoint(tmp_path / "run")
    real_save = torch.save

    def crash(obj, f, *a, **k):  # write a little, then die as a killed process would
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        T.train(config, progress=False)
    monkeypatch.setattr(torch, "save", real_save)
    assert T.latest_checkpoint(tmp_path / "run") == good
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "run" / "checkpoints").iterdir()), \
        "the failed write's temporary file was left behind"
    assert T.train(config, progress=False).status == "finished"


def test_damaged_and_foreign_checkpoints_get_clear_errors(tmp_path):
    config = tiny(steps=2, ckpt_every=2, out=str(tmp_path / "run"))
    T.train(config, progress=False)
    with pytest.raises(T.CheckpointError, match="disc_layers"):
        T.train(config.replace(steps=4, disc_layers=3), progress=False)
    with pytest.raises(T.CheckpointError, match="already holds checkpoints"):
        T.train(config, resume=False, progress=False)
    latest = T.latest_checkpoint(tmp_path / "run")
    latest.write_bytes(latest.read_bytes()[:1000])
    with pytest.raises(T.CheckpointError, match="damaged"):
        T.train(config.replace(steps=4), progress=False)
    with pytest.raises(T.CheckpointError, match="not a training checkpoint"):
        T.train(config.replace(steps=4), resume=REPO / "fftd_course" / "weights" / "toy_latent_diffusion.pt",
                progress=False)


def test_nan_guard_stops_without_writing_a_checkpoint(tmp_path, stage1, monkeypatch):
    from fftd_course.training.stages import base as stage_base

    real = stage_base.fftd_update

    def poisoned(*args, **kwargs):
        return real(*args, **kwargs) * float("nan")

    monkeypatch.setattr(stage_base, "fftd_update", poisoned)  # DenoiserStage.train_step calls it
    config = tiny("fftd", stage1=str(stage1), steps=6, log_every=2, ckpt_every=2, out=str(tmp_path / "nan"))
    with pytest.raises(NonFiniteLossError, match="step 0: the loss term 'loss'"):
        T.train(config, progress=False)
    assert T.latest_checkpoint(tmp_path / "nan") is None


# ---- data folders and the command line end to end --------------------------------------------------------------

def test_small64_command_line_end_to_end_on_a_class_folder(tmp_path, capsys):
    from fftd_course.data import export_toy_faces

    data = export_toy_faces(tmp_path / "faces", 48, size=64, progress=False)
    (data / "cat" / "broken.png").write_bytes(b"not an image at all")
    s1, s2 = tmp_path / "runs" / "s1", tmp_path / "runs" / "s2"
    common = ["--steps", "3", "--batch-size", "8", "--log-every", "1", "--sample-every", "0", "--num-workers", "0",
              "--no-progress"]
    with pytest.warns(UserWarning, match="broken.png"):
        assert cli_main(["train-ivqvae", "--preset", "small64", "--data", str(data), "--out", str(s1), "--lpips",
                         "random", "--disc-start", "1", "--kmeans-batches", "1", *common]) == 0
    summary = json.loads((s1 / "log.jsonl").read_text().splitlines()[-1])
    assert summary["skipped_images"] == 1
    assert cli_main(["train-fftd", "--preset", "small64", "--stage1", str(s1), "--out", str(s2), "--sample-steps", "2",
                     *common]) == 0
    ld = s2 / "latent_diffusion.pt"
    assert cli_main(["sample", str(ld), "--per-class", "2", "--steps", "3", "--grid", str(tmp_path / "grid.png"),
                     "--folder", str(tmp_path / "samples"), "--device", "cpu"]) == 0
    assert (tmp_path / "grid.png").is_file() and len(list((tmp_path / "samples").glob("*.png"))) == 6
    assert cli_main(["fid", str(ld), "--ref", str(data), "--n", "6", "--n-ref", "9", "--steps", "2", "--batch-size", "6",
                     "--workers", "0", "--device", "cpu", "--save-ref-stats", str(tmp_path / "ref.pt")]) == 0
    out = capsys.readouterr().out
    assert "n=6 vs 9" in out
    assert cli_main(["fid", str(ld), "--ref", str(tmp_path / "ref.pt"), "--n", "4", "--steps", "2", "--device", "cpu"]) == 0
    assert "n=4 vs 9" in capsys.readouterr().out


def test_two_process_ddp_keeps_the_replicas_equal(tmp_path):
    """torchrun with gloo on the CPU: both ranks train, replace dead codes (all-reduced counts, rank 0's codebook
    broadcast) and hold equal parameters and codebooks at every checkpoint; stage 2 runs the same way."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533", "-m",
           "fftd_course"]
    common = ["--toy-images", "128", "--batch-size", "16", "--log-every", "3", "--ckpt-every", "3", "--sample-every",
              "0", "--num-workers", "0", "--no-progress"]
    subprocess.run(run + ["train-ivqvae", "--steps", "9", "--disc-start", "3", "--kmeans-batches", "1", "--out",
                          str(tmp_path / "s1"), *common], check=True, env=env, capture_output=True, timeout=400)
    for path in T.checkpoints(tmp_path / "s1"):
        ckpt = torch.load(path, weights_only=True)
        assert ckpt["world_size"] == 2 and len(ckpt["ranks"]) == 2
        a, b = ckpt["replica_checksums"]
        assert a == b
    final = torch.load(T.latest_checkpoint(tmp_path / "s1"), weights_only=True)
    assert int(final["state"]["model"]["quantizer.replaced_total"]) > 0, "no dead code was replaced: test the DDP path"
    subprocess.run(run + ["train-fftd", "--stage1", str(tmp_path / "s1"), "--steps", "3", "--sample-steps", "2", "--out",
                          str(tmp_path / "s2"), *common], check=True, env=env, capture_output=True, timeout=400)
    a, b = torch.load(T.latest_checkpoint(tmp_path / "s2"), weights_only=True)["replica_checksums"]
    assert a == b and (tmp_path / "s2" / "latent_diffusion.pt").is_file()
