"""Chapter 10 checks: the reference answers pass, plausible wrong answers fail (and raise in strict mode),
stubs are "not attempted"; the batch-plan reference agrees with where a real (tiny) run stands in its data."""

import math
import os
from pathlib import Path

import pytest
import torch

from fftd_course import checks, data, train

from check_contract import chapter_function, contract_tests


# ---- exercise 1: the batch plan ----

def training_plan_reference(config, n_images, gpus):  # read from the trainer, as the check's hidden reference is
    micro = train.micro_batch(config, gpus)
    items = n_images * (2 if config.stage == "fftd" and config.hflip else 1)
    return micro, (data.EpochSampler(items, world_size=gpus).num_samples // micro) / config.grad_accum


def plan_by_hand(config, n, gpus):  # an independent answer (the trainer's micro_batch is switched off in the check)
    micro, rest = divmod(config.batch_size, config.grad_accum * gpus)
    if micro < 1 or rest:
        raise ValueError("batch cannot be split")
    items = n * (2 if config.stage == "fftd" and config.hflip else 1)
    return micro, ((items // gpus) // micro) / config.grad_accum


def plan_ignores_gpus(config, n, gpus):
    micro = config.batch_size // config.grad_accum
    return micro, (n // micro) / config.grad_accum


def plan_no_flips(config, n, gpus):  # forgets that stage 2 also trains on the mirrored images' latents
    micro = config.batch_size // (config.grad_accum * gpus)
    if micro < 1 or micro * config.grad_accum * gpus != config.batch_size:
        raise ValueError("batch cannot be split")
    return micro, ((n // gpus) // micro) / config.grad_accum


def plan_rounds_up(config, n, gpus):  # counts a last, incomplete micro-batch
    micro = config.batch_size // (config.grad_accum * gpus)
    if micro < 1 or micro * config.grad_accum * gpus != config.batch_size:
        raise ValueError("batch cannot be split")
    items = n * (2 if config.stage == "fftd" and config.hflip else 1)
    return micro, -(-(items // gpus) // micro) / config.grad_accum


def plan_steps_are_micro_batches(config, n, gpus):  # forgets the accumulation in the step count
    micro, steps = plan_by_hand(config, n, gpus)
    return micro, steps * config.grad_accum


def plan_never_refuses(config, n, gpus):
    micro = max(1, config.batch_size // (config.grad_accum * gpus))
    items = n * (2 if config.stage == "fftd" and config.hflip else 1)
    return micro, ((items // gpus) // micro) / config.grad_accum


# ---- exercise 2: atomic checkpoints ----

def save_in_place(obj, path):  # the chapter's buggy_save_checkpoint
    torch.save(obj, path)


def save_after_deleting(obj, path):
    Path(path).unlink(missing_ok=True)
    torch.save(obj, path)


def save_via_checkpoint_named_scratch(obj, path):  # the scratch file looks like a checkpoint of step 0
    tmp = Path(path).with_name("ckpt-00000000.pt")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_and_forget_rename(obj, path):
    torch.save(obj, str(path) + ".tmp")


def save_and_keep_copy(obj, path):  # safe, but leaves its scratch file behind after every save
    import shutil

    tmp = str(path) + ".tmp"
    torch.save(obj, tmp)
    shutil.copyfile(tmp, path)


def save_copy_then_delete(obj, path):  # the old file is overwritten by a copy: a crash halfway damages it
    import shutil

    tmp = Path(path).with_name(".scratch-" + Path(path).name)
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    shutil.copyfile(tmp, path)
    os.remove(tmp)


def save_rename_without_fsync(obj, path):  # atomic against a killed process, not against a power cut
    tmp = Path(path).with_name(".scratch-" + Path(path).name)
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_delete_then_rename(obj, path):  # a crash between the two leaves no checkpoint at all
    tmp = Path(path).with_name(".scratch-" + Path(path).name)
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    Path(path).unlink(missing_ok=True)
    os.rename(tmp, path)


def save_atomically_reference(obj, path):  # write to a temporary file, fsync, rename (independent of the package)
    path = Path(path)
    tmp = path.with_name(f".partial-{path.name}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_with_mkstemp(obj, path):  # the same with the low-level calls: os.open, os.write, os.fsync, Path.replace
    import io
    import tempfile

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    fd, tmp = tempfile.mkstemp(dir=Path(path).parent, prefix=".tmp-")
    try:
        os.write(fd, buffer.getvalue())
        os.fsync(fd)
    finally:
        os.close(fd)
    Path(tmp).replace(path)


# ---- exercise 3: the learning rate after a resume ----

def _factor(config, horizon, k):
    warm = min(1.0, (k + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    if config.lr_schedule == "cosine":
        u = min(k, horizon) / horizon
        warm *= config.lr_final_factor + (1 - config.lr_final_factor) * 0.5 * (1 + math.cos(math.pi * u))
    return warm


def lrs_reference(config, ckpt, n):  # an independent answer: the step and the horizon from the checkpoint
    return [config.lr * _factor(config, ckpt["schedule_steps"], k) for k in range(ckpt["step"], ckpt["step"] + n)]


# The chapter's code as the learner gets it: counts from 0 after a resume, and runs the cosine over this call's steps.
lrs_as_given_in_the_chapter = chapter_function("10_full_scale_cuda_training", "buggy_resumed_lrs", math=math,
                                               train=train)


def lrs_step_fixed_only(config, ckpt, n):
    return [config.lr * _factor(config, config.steps, k) for k in range(ckpt["step"], ckpt["step"] + n)]


def lrs_horizon_fixed_only(config, ckpt, n):
    return [config.lr * _factor(config, ckpt["schedule_steps"], k) for k in range(n)]


def lrs_horizon_from_saved_config(config, ckpt, n):  # right until a second resume raises steps again
    return [config.lr * _factor(config, ckpt["config"]["steps"], k) for k in range(ckpt["step"], ckpt["step"] + n)]


def lrs_off_by_one(config, ckpt, n):  # the step after the checkpoint's, as if "step" were the last one taken
    return [config.lr * _factor(config, ckpt["schedule_steps"], k + 1) for k in range(ckpt["step"], ckpt["step"] + n)]


CASES = [
    (checks.check_training_plan, plan_by_hand,
     [plan_ignores_gpus, plan_no_flips, plan_rounds_up, plan_steps_are_micro_batches, plan_never_refuses]),
    (checks.check_save_checkpoint_atomically, save_atomically_reference,
     [save_in_place, save_after_deleting, save_via_checkpoint_named_scratch, save_and_forget_rename,
      save_and_keep_copy, save_copy_then_delete, save_rename_without_fsync, save_delete_then_rename]),
    (checks.check_resumed_lrs, lrs_reference,
     [lrs_as_given_in_the_chapter, lrs_step_fixed_only, lrs_horizon_fixed_only, lrs_horizon_from_saved_config,
      lrs_off_by_one]),
]

test_reference_passes_wrong_fails_stub_not_attempted, test_strict_mode_raises_on_every_wrong_answer = contract_tests(
    CASES)


class CrashHalfway:
    """Fails in the middle of torch.save (as chapter 10's does)."""

    def __reduce__(self):
        raise RuntimeError("simulated crash in the middle of writing the checkpoint")


def test_the_buggy_save_loses_the_previous_checkpoint(tmp_path):
    path = tmp_path / "ckpt-00000001.pt"
    save_in_place({"step": 1}, path)
    try:
        save_in_place({"step": 2, "x": CrashHalfway()}, path)
    except RuntimeError:
        pass
    try:
        torch.load(path, weights_only=True)
    except Exception:
        return
    raise AssertionError("the in-place save should leave a damaged file after a crash")


@pytest.fixture
def one_thread():
    """The tiny models train fastest on one thread (and a second, spinning one is slow on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_the_plan_matches_where_a_real_run_stands_in_its_data(tmp_path, one_thread):
    """Both stages, with accumulation: after S steps the checkpoint's data position is what the plan predicts."""
    stage1 = train.get_preset("toy32", "ivqvae").replace(
        toy_images=72, steps=7, batch_size=8, grad_accum=2, kmeans_batches=1, disc_start=100, log_every=7,
        sample_every=0, ckpt_every=0, out=str(tmp_path / "s1"))
    stage2 = train.get_preset("toy32", "fftd").replace(
        stage1=str(tmp_path / "s1"), steps=5, batch_size=16, grad_accum=2, log_every=5, sample_every=0,
        ckpt_every=0, sample_steps=2, out=str(tmp_path / "s2"))
    for config in (stage1, stage2):
        train.train(config, progress=False)
        micro, per_epoch = training_plan_reference(config, 72, 1)
        ckpt = torch.load(train.latest_checkpoint(config.out), weights_only=True)
        position = ckpt["ranks"][0]["position"]
        used = config.steps * config.grad_accum * micro      # items handed out to training steps
        if config.stage == "ivqvae":  # and, before the first step, the k-means batches that initialise the codebook
            used += config.kmeans_batches * micro
        per_epoch_items = int(per_epoch * config.grad_accum) * micro
        epoch, index = divmod(used, per_epoch_items)
        if index == 0:  # the trainer moves to the next epoch only when it asks for the next item
            epoch, index = epoch - 1, per_epoch_items
        assert (position["epoch"], position["index"]) == (epoch, index), (config.stage, position, epoch, index)


def test_the_reference_is_the_trainers_schedule():
    """The independent answer agrees with the trainer's own lr_factor, fresh and with the horizon a resume keeps."""
    import types

    from fftd_course.training.stages.base import Stage

    for schedule, warmup in (("cosine", 30), ("constant", 30), ("cosine", 0)):
        config = train.get_preset("toy32", "fftd").replace(lr_schedule=schedule, warmup_steps=warmup, steps=300)
        stage = types.SimpleNamespace(config=config)
        for horizon in (300, 200):
            want = [config.lr * Stage.lr_factor(stage, k, horizon) for k in range(120, 320)]
            got = lrs_reference(config, {"step": 120, "schedule_steps": horizon}, 200)
            assert got == pytest.approx(want, rel=1e-12)


def test_each_resume_bug_has_its_own_sub_test(lenient_env, monkeypatch, capsys):
    from fftd_course.checks import core

    monkeypatch.setattr(core, "_nudges_given", {})
    assert "2 of the 2 bugs" in checks.check_resumed_lrs(lrs_as_given_in_the_chapter).message
    assert "1 of the 2 bugs" in checks.check_resumed_lrs(lrs_step_fixed_only).message
    assert "1 of the 2 bugs" in checks.check_resumed_lrs(lrs_horizon_fixed_only).message
    message = checks.check_resumed_lrs(lrs_horizon_from_saved_config).message
    assert "second resume" in message and "bugs of the given code look fixed" in message
    capsys.readouterr()


def test_the_chapters_answers_on_atomic_saves(lenient_env):
    """The chapter's buggy save (write in place) fails, a copy-then-delete answer fails, the chapter's solution and
    a low-level write-fsync-rename pass; the message names the file operation the crash came at."""
    buggy = chapter_function("10_full_scale_cuda_training", "buggy_save_checkpoint", torch=torch)
    solution = chapter_function("10_full_scale_cuda_training", "save_checkpoint_atomically", torch=torch, os=os, Path=Path)
    for answer, status in ((buggy, "fail"), (save_copy_then_delete, "fail"), (solution, "pass"),
                           (save_with_mkstemp, "pass")):
        result = checks.check_save_checkpoint_atomically(answer)
        assert result.status == status, (answer.__name__, result.message)
    message = checks.check_save_checkpoint_atomically(save_copy_then_delete).message
    assert "copying" in message and "damaged" in message
    assert "os.fsync" in checks.check_save_checkpoint_atomically(save_rename_without_fsync).message


def test_the_crash_cannot_be_tidied_up(lenient_env):
    """An answer that catches every error and finishes its work afterwards still meets a stopped machine."""
    def save_and_retry(obj, path):
        try:
            torch.save(obj, path)
        except BaseException:
            torch.save(obj, path)

    assert checks.check_save_checkpoint_atomically(save_and_retry).status == "fail"
