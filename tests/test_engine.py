"""The training engine's promises, one test per defect of issue 15: no poisoned checkpoint, stage 2 on stage 1's
data, tiny data sets refused, branches on resume, a lock, changed inputs named, the cosine horizon, atomic final
saves, SIGTERM's exit code, DDP's accumulation and its non-finite stop, and the stage registry."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fftd_course import checkpoints as ck
from fftd_course import training as T
from fftd_course.cli import main as cli_main
from fftd_course.losses import NonFiniteLossError

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_thread")
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def tiny(stage="ivqvae", **changes):
    """toy32 cut down to seconds: 64 toy faces, batch 8, every step logged, no image grids."""
    settings = dict(toy_images=64, batch_size=8, steps=8, log_every=1, ckpt_every=100, sample_every=0, num_workers=0,
                    device="cpu")
    settings.update(kmeans_batches=1) if stage == "ivqvae" else settings.update(sample_steps=2, batch_size=16)
    settings.update(changes)
    return T.get_preset("toy32", stage).replace(**settings)


def logged(run_dir, key):
    lines = [json.loads(s) for s in (Path(run_dir) / "log.jsonl").read_text().splitlines()]
    return [(h["step"], h[key]) for h in lines if key in h]


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1") / "s1"
    assert T.train(tiny(out=str(out), steps=4), progress=False).status == "finished"
    return out


# ---- 1. nothing non-finite is ever saved --------------------------------------------------------------------

def test_a_poisoned_step_is_never_checkpointed_and_the_last_good_one_survives(tmp_path, monkeypatch):
    from fftd_course.training.stages import ivqvae as stage_module

    real = stage_module.ivqvae_update

    def poison_at_5(model, *args, **kwargs):  # the weights go bad at step 5, as a too-large lr makes them
        if args[4] == 5:
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float("nan"))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(stage_module, "ivqvae_update", poison_at_5)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"step 5: the loss term '\w+' is not finite.*ckpt-00000004\.pt") as e:
        T.train(tiny(steps=20, log_every=20, ckpt_every=2, keep_checkpoints=2, out=str(out)), progress=False)
    assert e.value.step == 5
    assert [p.name for p in T.checkpoints(out)] == ["ckpt-00000002.pt", "ckpt-00000004.pt"]
    for path in T.checkpoints(out):
        state = torch.load(path, weights_only=True)["state"]["model"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path


# ---- 2. stage 2 trains on stage 1's data --------------------------------------------------------------------

def test_stage2_uses_the_folder_stage1_was_trained_on(tmp_path):
    from fftd_course.data import export_toy_faces

    folder = export_toy_faces(tmp_path / "mine", 24, size=32, progress=False)
    s1 = tmp_path / "s1"
    T.train(tiny(data=str(folder), steps=2, out=str(s1)), progress=False)
    s2 = T.get_preset("toy32", "fftd").replace(stage1=str(s1), out=str(tmp_path / "s2"), steps=1, batch_size=8,
                                               log_every=1, sample_every=0, ckpt_every=0, device="cpu")
    assert s2.data == "", "the toy32 stage-2 preset must not name data of its own"
    T.train(s2, progress=False)
    cache = torch.load(tmp_path / "s2" / "latents.pt", weights_only=True)
    assert cache["key"]["data"]["data"] == str(folder) and len(cache["latents"]) == 24


# ---- 3. a data set smaller than a batch is refused at once ----------------------------------------------------

@pytest.mark.parametrize("stage", ["ivqvae", "fftd"])
def test_a_data_set_smaller_than_a_batch_is_refused_at_start(tmp_path, stage, stage1):
    extra = {"stage1": str(stage1)} if stage == "fftd" else {}
    started = time.perf_counter()
    with pytest.raises(T.ConfigError, match="fewer than one batch"):
        T.train(tiny(stage, toy_images=64, batch_size=128, out=str(tmp_path / "r"), **extra), progress=False)
    assert time.perf_counter() - started < 60


# ---- 4. resuming from an older checkpoint starts a clean branch ----------------------------------------------

def test_resuming_an_older_checkpoint_moves_the_abandoned_branch_aside(tmp_path):
    out = tmp_path / "run"
    config = tiny(steps=8, ckpt_every=2, keep_checkpoints=2, out=str(out))
    T.train(config, progress=False)
    assert [p.name for p in T.checkpoints(out)] == ["ckpt-00000006.pt", "ckpt-00000008.pt"]
    r = T.train(config, resume=out / "checkpoints" / "ckpt-00000006.pt", progress=False, stop_after=1)
    assert r.status == "stopped" and r.step == 7
    assert [p.name for p in T.checkpoints(out)] == ["ckpt-00000006.pt", "ckpt-00000007.pt"]
    aside = [p for p in (out / "checkpoints").iterdir() if p.name.startswith("abandoned-after-00000006")]
    assert len(aside) == 1 and (aside[0] / "ckpt-00000008.pt").is_file()
    assert [s for s, _ in logged(out, "l1")] == list(range(1, 8))
    T.train(config, progress=False)  # a plain rerun continues the new branch from step 7
    assert [s for s, _ in logged(out, "l1")] == list(range(1, 9))


# ---- 5. inputs that changed since the checkpoint are named ---------------------------------------------------

def test_resuming_stage2_on_a_changed_stage1_is_refused(tmp_path):
    s1 = tmp_path / "s1"
    T.train(tiny(steps=2, out=str(s1)), progress=False)
    config = tiny("fftd", stage1=str(s1), steps=4, ckpt_every=1, out=str(tmp_path / "s2"))
    T.train(config, progress=False, stop_after=2)
    T.train(tiny(steps=2, seed=1, out=str(tmp_path / "other")), progress=False)
    (s1 / "ivqvae.pt").write_bytes((tmp_path / "other" / "ivqvae.pt").read_bytes())
    with pytest.raises(T.CheckpointError, match="stage1: checkpoint [0-9a-f]{16}, now [0-9a-f]{16}"):
        T.train(config, progress=False)


def test_resuming_on_a_changed_data_folder_is_refused(tmp_path):
    from fftd_course.data import export_toy_faces

    folder = export_toy_faces(tmp_path / "faces", 24, size=32, progress=False)
    config = tiny(data=str(folder), steps=4, ckpt_every=1, out=str(tmp_path / "run"))
    T.train(config, progress=False, stop_after=2)
    (folder / "cat" / sorted(os.listdir(folder / "cat"))[0]).unlink()
    with pytest.raises(T.CheckpointError, match="inputs changed.*data"):
        T.train(config, progress=False)


# ---- 6. one trainer per run folder ---------------------------------------------------------------------------

def test_a_second_trainer_in_the_same_folder_is_refused_with_the_holders_pid(tmp_path):
    with ck.RunLock(tmp_path / "run"):
        with pytest.raises(ck.RunLockedError, match=f"pid {os.getpid()}"):
            T.train(tiny(out=str(tmp_path / "run")), progress=False)
    assert T.train(tiny(steps=1, out=str(tmp_path / "run")), progress=False).status == "finished"


# ---- 7. a longer --steps continues the cosine schedule ---------------------------------------------------------

def test_more_steps_keep_the_cosine_horizon_and_say_so(tmp_path, capsys):
    config = tiny(steps=4, ckpt_every=4, warmup_steps=0, out=str(tmp_path / "run"))
    T.train(config, progress=False)
    capsys.readouterr()
    T.train(config.replace(steps=6), progress=False)
    assert "keeps its 4-step horizon" in capsys.readouterr().out
    lrs = [lr for _, lr in logged(tmp_path / "run", "lr")]
    assert lrs[4] == lrs[5] == pytest.approx(config.lr * config.lr_final_factor)
    assert lrs[3] > lrs[4]


# ---- 8. final saves, temporary files and signals -------------------------------------------------------------

def test_an_interrupted_final_save_keeps_the_old_generator(tmp_path, monkeypatch):
    from fftd_course.pipeline import load_toy

    ld = load_toy()
    path = ld.save(tmp_path / "latent_diffusion.pt")
    before = path.read_bytes()

    def crash(obj, f, *a, **k):
        f.write(b"PK\x03\x04 nine")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        ld.save(path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["latent_diffusion.pt"]


def test_stale_temporary_files_are_cleaned_when_a_run_starts(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    stale = tmp_path / "run" / "checkpoints" / ".tmp-ckpt-00000002.pt-12345"
    stale.write_bytes(b"half")
    T.train(tiny(steps=1, out=str(tmp_path / "run")), progress=False)
    assert not stale.exists()


def test_sigterm_checkpoints_logs_the_last_steps_and_exits_143(tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "fftd_course", "train-ivqvae", "--toy-images", "64", "--batch-size", "8",
            "--steps", "100000", "--kmeans-batches", "1", "--log-every", "1000", "--ckpt-every", "1000",
            "--sample-every", "0", "--device", "cpu", "--no-progress", "--out", str(out)]
    proc = subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "config.yaml").exists():
        time.sleep(0.05)
    time.sleep(2.0)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, stdout
    step = int(T.latest_checkpoint(out).stem[5:])
    assert 0 < step < 1000 and logged(out, "l1")[-1][0] == step  # the steps since the last log line are logged
    assert "interrupted at step" in stdout


# ---- 9. the command line: one line, exit 2 ---------------------------------------------------------------------

def test_a_config_file_for_the_other_stage_is_refused(tmp_path, capsys):
    cfg = tmp_path / "s2.yaml"
    cfg.write_text("stage: fftd\nstage1: runs/x\n")
    assert cli_main(["train-ivqvae", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stage: fftd" in err[0] and "train-fftd" in err[0]
    assert not (tmp_path / "r").exists()


def test_a_truncated_latent_cache_is_rebuilt(tmp_path, stage1):
    config = tiny("fftd", stage1=str(stage1), steps=1, out=str(tmp_path / "s2"))
    T.train(config, progress=False)
    cache = tmp_path / "s2" / "latents.pt"
    cache.write_bytes(cache.read_bytes()[:100])
    with pytest.warns(UserWarning, match="encoding the latents again"):
        T.train(config.replace(steps=2), progress=False)
    assert torch.load(cache, weights_only=True)["latents"].shape[0] == 64


def test_the_preview_grid_of_many_classes_is_capped(tmp_path, stage1, monkeypatch):
    from fftd_course.training.stages.latent_diffusion import LatentDiffusionStage

    stage = LatentDiffusionStage(tiny("fftd", stage1=str(stage1), out=str(tmp_path / "s2")), T.distributed.Dist(),
                                 torch.device("cpu"), progress=False)
    stage.class_names = tuple(f"c{i}" for i in range(1000))
    drawn = []

    class Recorder:
        def sample(self, classes, **kwargs):
            drawn.append(classes)
            return torch.zeros(len(classes), 3, 32, 32)

    monkeypatch.setattr(stage, "generator", Recorder)
    stage.images()
    assert len(drawn[0]) == 64 and len(set(drawn[0])) == 8 and max(drawn[0]) == 999


# ---- 6 (DDP): accumulation all-reduces once; a NaN on one rank stops both -------------------------------------

def _torchrun(*args, timeout=300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29547",
           str(REPO / "tests" / "ddp_engine_worker.py"), *args]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)


def test_ddp_accumulation_equals_one_big_batch_and_syncs_once(tmp_path):
    result = _torchrun("grads", str(tmp_path / "grads.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads((tmp_path / "grads.json").read_text())
    assert got["max_diff"] <= 1e-6 * max(1.0, got["max_grad"]), got
    assert got["allreduce_calls_accumulated"] == got["allreduce_calls_one_micro_batch"] > 0, got
    assert got["allreduce_calls_without_no_sync"] == 2 * got["allreduce_calls_one_micro_batch"], got  # the control


def test_ddp_a_nan_on_one_rank_stops_both_with_the_same_message(tmp_path, stage1):
    result = _torchrun("nan", str(tmp_path), "train-fftd", "--stage1", str(stage1), "--toy-images", "64",
                       "--batch-size", "16", "--steps", "6", "--log-every", "1", "--ckpt-every", "1", "--sample-every",
                       "0", "--device", "cpu", "--no-progress", "--out", str(tmp_path / "s2"), timeout=240)
    assert result.returncode != 0
    messages = [(tmp_path / f"rank{r}.txt").read_text().strip() for r in (0, 1)]
    assert "step 2: the loss term 'loss' is not finite on some process" in messages[0], result.stderr[-3000:]
    assert messages[0] == messages[1] and len(messages[0].splitlines()) == 1
    assert [p.name for p in T.checkpoints(tmp_path / "s2")][-1] == "ckpt-00000002.pt"


# ---- the registry ---------------------------------------------------------------------------------------------

def test_a_new_stage_is_one_class_and_one_registry_entry(capsys):
    from fftd_course.cli import build_parser
    from fftd_course.training.stages.ivqvae import IVQVAEStage

    @T.register
    class Echo(IVQVAEStage):  # a stand-in third stage: its command and presets come from the class
        name, command, help = "echo", "train-echo", "a test stage"
        presets = {"mini": dict(IVQVAEStage.presets["toy32"], out="runs/echo")}

    try:
        assert T.get_preset("mini", "echo").stage == "echo"
        with pytest.raises(SystemExit):
            build_parser().parse_args(["train-echo", "--help"])
        assert "--preset {mini}" in capsys.readouterr().out
    finally:
        del T.STAGES["echo"]
