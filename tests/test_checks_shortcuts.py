"""The package is not the answer key: for every exercise of every chapter, an answer that calls the package's own
implementation fails with "this exercise asks you to write it yourself"; no helper a check module exports passes
any check; find-the-bug hints come one nudge per FAIL, with how many bugs remain.
"""

from __future__ import annotations

import inspect
import math
import os
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fftd_course.checks as checks
from fftd_course import blocks, checkpoints, diffusion, fftd, fusion, losses, pipeline, quantize, train, viz
from fftd_course.checks import core
from fftd_course.evaluation import metrics
from fftd_course.fusion import grid_to_tokens, tokens_to_grid
from fftd_course.quantize import nearest_code  # a learner's own alias of a package function

from check_contract import PostActivationLayers, chapter_function

CHAPTER_MODULES = [f"fftd_course.checks.ch{n:02d}" for n in range(12)]


def _module(name: str) -> types.ModuleType:
    return __import__(name, fromlist=["_"])


def exercise_checks() -> dict[str, object]:
    """Every check of every chapter, by name (the ``check_*`` functions of checks/ch00.py ... ch11.py)."""
    found = {}
    for name in CHAPTER_MODULES:
        for key, value in vars(_module(name)).items():
            if key.startswith("check_") and inspect.isfunction(value) and value.__module__ == name:
                found[key] = value
    return found


class ResBlockShortcut(PostActivationLayers):  # the post-activation block through the package's ResBlock.forward
    def forward(self, x):
        return blocks.swish(blocks.ResBlock.forward(self, x))


def _swish_by_autograd(x):
    x = x.clone().requires_grad_(True)
    return torch.autograd.grad(blocks.swish(x).sum(), x)[0]


def _group_norm_module(x, groups, weight, bias, eps):
    norm = blocks.group_norm(x.shape[1], groups)
    with torch.no_grad():
        norm.weight.copy_(weight), norm.bias.copy_(bias)
    return norm(x).detach()


def _vq_module(z_e, codebook, beta):
    vq = quantize.VectorQuantizer(codebook.shape[0], codebook.shape[1], beta=beta)
    vq.codebook = nn.Parameter(codebook)
    out = vq(z_e)
    return out.z_q, out.loss


def _resampling_by_counting(input_size, patch_size, hidden_size, multires):
    config = fftd.FFTDConfig(input_size=input_size, patch_size=patch_size, hidden_size=hidden_size, num_heads=4,
                             multires=multires)
    with torch.device("meta"):
        model = fftd.FFTD(config)
    return fftd.count_parameters(model.downsample) + fftd.count_parameters(model.upsample)


def _verdict_from_runner(better, worse, lower_is_better):
    from fftd_course.reproduction import runner

    return runner.verdict(None, {})["verdict"]


def _fair_pair_from_the_lab(a, b, ref):
    from fftd_course.reproduction.experiments import Lab

    n = min(len(a), len(b))
    return Lab.distance(None, None, a[:n], ref)["fid"], Lab.distance(None, None, b[:n], ref)["fid"]


def _revive_by_the_quantizer(codebook, counts, candidates, generator):
    vq = quantize.VectorQuantizer(codebook.shape[0], codebook.shape[1], replace_dead_codes=True,
                                  buffer_size=len(candidates))
    with torch.no_grad():
        vq.codebook.copy_(codebook), vq.counts_since_check.copy_(counts), vq.recent_z.copy_(candidates)
        vq.recent_z_count.fill_(len(candidates))
    vq.replace_dead_codes_now()
    return vq.codebook.detach().clone()


def _trainer_lr_factor(config, step, horizon):
    from fftd_course.training.stages.base import Stage

    return Stage.lr_factor(types.SimpleNamespace(config=config), step, horizon)


# For every exercise, one or more answers that call the package's own implementation of it (the shortcut).
SHORTCUTS = {
    "check_to_pixels": [lambda x: ((metrics.inception_inputs(x[None], size=x.shape[-1])[0] * 128 + 128)
                                   .round().permute(1, 2, 0).to(torch.uint8))],
    "check_swish_derivative": [_swish_by_autograd],
    "check_post_activation_block": [ResBlockShortcut],
    "check_group_norm": [lambda x, g, w, b, eps: F.group_norm(x, g, w, b, eps), _group_norm_module],
    "check_shuffle_pixels": [lambda x, perm: tokens_to_grid(grid_to_tokens(x)[:, perm])],
    "check_revive_dead_codes": [_revive_by_the_quantizer],
    "check_tiny_code_winner": [lambda z, codes: quantize.nearest_code(z, codes * 1e-6),
                               lambda z, codes: nearest_code(z, codes * 1e-6)],  # through the learner's alias
    "check_ema_codebook_step": [lambda codebook, z, idx, decay: quantize.kmeans(z, codebook.shape[0], iters=1)],
    "check_vq_straight_through": [_vq_module],
    "check_vanilla_d_loss": [lambda real, fake: losses.hinge_d_loss(real, fake)],
    "check_receptive_field": [lambda layers: losses.NLayerDiscriminator(ndf=4, n_layers=len(layers) - 2).receptive_field],
    "check_adaptive_weight": [lambda rec, g, last, w: losses.adaptive_weight(rec, g, last, w)],  # the audit's
    "check_reconstruct": [lambda model, x: (lambda out: (out[0], out[1].loss))(model(x))],
    "check_training_step": [pipeline.ivqvae_step,                                                 # the audit's
                            lambda *args: pipeline.ivqvae_update(*args[:4], [args[4]], args[5])],
    "check_code_influence": [lambda model, idx, r, c, k: pipeline.decode_latents(model, model.quantizer.lookup(idx), 1.0)],
    "check_ddim_step_v": [lambda x_t, v, a_t, a_s: diffusion.ddim_step(                         # eq. 29 itself
        x_t, (1 - torch.as_tensor(a_t)).sqrt() * x_t + torch.as_tensor(a_t).sqrt() * v, a_t, a_s),
                          lambda x_t, v, a_t, a_s: diffusion.ddim_step(x_t, v, a_t, a_s)],
    "check_ddim_sampler": [lambda model, x_T, ts, ab: diffusion.DDIMSampler.sample(None, model, x_T)],
    "check_exact_inversion": [lambda model, x0, ts, ab, it: diffusion.DDIMSampler.invert(None, model, x0)],
    "check_cbam_channel_weights": [lambda x1, x2, mlp: fusion.AdaptiveFusion.channel_weights(
        types.SimpleNamespace(channel_gate=mlp), x1, x2)],
    "check_spatial_gate_as_linears": [lambda gate: fusion.AdaptiveFusion.spatial_weights(None, None, None)],
    "check_fuse_fixed": [lambda x1, x2, f: f(x1, x2),                                             # the audit's
                         lambda x1, x2, f: fusion.AdaptiveFusion.forward(f, x1, x2)],
    "check_unpatchify": [lambda tokens, p, c: fftd.unpatchify(tokens, p, c)],
    "check_resampling_parameters": [_resampling_by_counting],
    "check_fftd_forward": [lambda model, x_t, t, y: fftd.FFTD.forward(model, x_t, t, y),           # the audit's
                           lambda model, x_t, t, y: model(x_t, t, y)],
    "check_guided_eps": [lambda model, z_t, t, y, scale, null: diffusion.DDIMSampler._eps(
        None, model, z_t, int(t[0]), y, scale, null, None)],
    "check_decode_sample": [lambda ivqvae, z, scale: pipeline.decode_latents(ivqvae, z, scale)],  # the audit's
    "check_off_code_distance": [lambda gen, steps, labels, seed: float(gen.ivqvae(gen.generate(
        labels, num_steps=steps, seed=seed).images)[1].loss)],
    "check_training_plan": [lambda config, n, gpus: (train.micro_batch(config, gpus), 0.0)],
    "check_save_checkpoint_atomically": [lambda obj, path: checkpoints.atomic_save(obj, path)],
    "check_resumed_lrs": [lambda config, ckpt, n: [config.lr * pipeline.cosine_lr(                  # the schedule
        ckpt["schedule_steps"], config.warmup_steps, config.lr_final_factor)(k) for k in range(ckpt["step"], ckpt["step"] + n)],
        lambda config, ckpt, n: [config.lr * _trainer_lr_factor(config, k, ckpt["schedule_steps"])  # the trainer's
                                 for k in range(ckpt["step"], ckpt["step"] + n)]],
    "check_verdict_from_seeds": [_verdict_from_runner],
    # exercises that replaced earlier ones (issue 18): chapter 00's shared images and one-pass statistics, chapter
    # 02's receptive pixels and multi-head attention, chapter 06's velocity step
    "check_count_shared": [lambda a, b: int(torch.unique(torch.cat([a, b]).flatten(1), dim=0).shape[0])],
    "check_channel_stats": [lambda batches: pipeline.latent_scale(next(iter(batches))),
                            lambda batches: (lambda st: (st.mean.float(), st.cov.diagonal().sqrt().float()))(
                                metrics.FeatureStats.from_features(torch.cat([x.transpose(0, 1).flatten(1).T
                                                                              for x in batches])))],
    "check_pixels_seen": [lambda block, x, row, col: blocks.AttnBlock.attention_map(block, x)[0, 0, row].view(
        x.shape[-2:]) > 0],
    "check_attention_fixed": [lambda block, x: block(x), lambda block, x: blocks.AttnBlock.forward(block, x),
                              lambda block, x: x + block.proj_out((blocks.attention_weights(*block.qkv(x)[:2])
                                                                   @ block.qkv(x)[2]).transpose(-2, -1).reshape(x.shape))],
    "check_kid_unbiased": [lambda a, b: metrics.kid_from_features(a, b, subsets=1).value],
    "check_fair_fid_pair": [_fair_pair_from_the_lab],
}


EXERCISES = sorted(exercise_checks())
WRITTEN = [name for name in EXERCISES if name in SHORTCUTS]  # (an entry of an exercise since replaced is unused)


def test_the_exercises_and_the_shortcuts_written_out():
    assert len(EXERCISES) >= 36
    assert all(name in checks.__all__ for name in EXERCISES)
    # (the audit's seventh, chapter 03's perplexity through codebook_usage, left with the exercise it answered)
    audit = ["check_adaptive_weight", "check_training_step", "check_fuse_fixed",
             "check_fftd_forward", "check_decode_sample", "check_save_checkpoint_atomically"]
    assert set(audit) <= set(WRITTEN)  # the shortcuts the audit found are among those written out
    assert len(WRITTEN) >= 30


def _stub(*args, **kwargs):
    raise NotImplementedError


def _calls(target: str):
    """An answer (a function, and a class for the checks that instantiate one) that calls the package piece
    ``target`` with whatever it was given: the stand-in raises at any arguments."""
    def call(*args, **kwargs):
        holder, attr, _ = core._resolve(target)
        raw = vars(holder).get(attr) if isinstance(holder, type) else None
        piece = raw.fget if isinstance(raw, property) else getattr(holder, attr)
        return piece(*args, **kwargs)

    class CallsThePiece(nn.Module):
        def __init__(self, *args, **kwargs):
            super().__init__()
            call(*args, **kwargs)

    return CallsThePiece


@pytest.mark.parametrize("name", EXERCISES)
def test_every_piece_an_exercise_names_is_switched_off(name, lenient_env, capsys):
    """For every exercise of every chapter: the check names the package pieces its exercise corresponds to, and an
    answer that calls any of them FAILs with "write it yourself" (the real piece is back afterwards)."""
    check = getattr(checks, name)
    before = dict(core.forbidden_pieces)
    assert check(_stub).status == "not attempted"
    (run_name,) = [k for k, v in core.forbidden_pieces.items() if before.get(k) is not v] or [None]
    pieces = core.forbidden_pieces[run_name]
    assert pieces, f"{name} switches nothing off"
    def piece(target):
        value = core._resolve(target)[2]
        return getattr(value, "__func__", value)  # (a class method comes back bound: compare its function)

    for target in pieces:
        real = piece(target)
        result = check(_calls(target))
        assert result.status == "fail" and core.WRITE_IT_YOURSELF in result.message, (target, result.message)
        assert piece(target) is real
    capsys.readouterr()


@pytest.mark.parametrize("name", WRITTEN)
def test_calling_the_package_fails(name, lenient_env, capsys):
    """The shortcuts as a learner would write them (the audit's seven among them)."""
    check = getattr(checks, name)
    for answer in SHORTCUTS[name]:
        result = check(answer)
        assert result.status == "fail", (name, result)
        assert core.WRITE_IT_YOURSELF in result.message, result.message
    assert "write it yourself" in capsys.readouterr().out


@pytest.mark.parametrize("name", WRITTEN)
def test_the_shortcut_raises_in_strict_mode(name, strict):
    with pytest.raises(checks.ExerciseFailed, match="write it yourself"):
        getattr(checks, name)(SHORTCUTS[name][0])


def test_the_stand_ins_are_gone_after_the_check(lenient_env):
    real = (quantize.nearest_code, nearest_code, fftd.FFTD.forward, F.group_norm, os.replace, torch.save)
    checks.check_tiny_code_winner(lambda z, codes: nearest_code(z, codes))
    checks.check_fftd_forward(lambda model, x_t, t, y: model(x_t, t, y))
    checks.check_group_norm(lambda x, g, w, b, eps: F.group_norm(x, g, w, b, eps))
    checks.check_save_checkpoint_atomically(lambda obj, path: checkpoints.atomic_save(obj, path))
    assert (quantize.nearest_code, nearest_code, fftd.FFTD.forward, F.group_norm, os.replace, torch.save) == real
    assert quantize.nearest_code(torch.ones(1, 2), torch.eye(2) * 2).tolist() == [0]


def test_a_caught_stand_in_still_fails(lenient_env):
    """An answer that tries the package first and falls back to its own code is still refused."""
    def winner(z, codebook):
        try:
            return nearest_code(z, codebook * 1e-6)
        except Exception:
            return (z @ codebook.T).argmax(dim=1)

    result = checks.check_tiny_code_winner(winner)
    assert result.status == "fail" and "write it yourself" in result.message


def test_a_module_imported_by_the_answer_keeps_the_real_piece(lenient_env, capsys):
    """A module first imported while the stand-in is active (it copies the package's names) gets the real piece
    back when the learner's code returns."""
    import sys

    name = "fftd_course_test_imported_during_a_check"

    def step(*args):
        module = types.ModuleType(name)
        sys.modules[name] = module
        exec("from fftd_course.pipeline import ivqvae_update", vars(module))
        return pipeline.ivqvae_step(*args)

    try:
        assert checks.check_training_step(step).status == "fail"
        assert sys.modules[name].ivqvae_update is pipeline.ivqvae_update
    finally:
        sys.modules.pop(name, None)
    capsys.readouterr()


# ---- no helper of a check module is an answer ------------------------------------------------------------------

# How each check calls the learner's code: the arguments' count (a class gets (in, out, num_groups=...)).
ARITY = {name: len(inspect.signature(SHORTCUTS[name][0]).parameters) for name in SHORTCUTS
         if not inspect.isclass(SHORTCUTS[name][0])}
CLASS_CHECKS = {"check_post_activation_block"}


def _module_callables() -> dict[int, tuple[str, object]]:
    """The functions and classes of the package that a check module holds at module level, but its checks (what
    it imports from the standard library, typing or torch cannot be a reference answer of the course)."""
    found = {}
    for name in CHAPTER_MODULES:
        for key, value in vars(_module(name)).items():
            if ((inspect.isfunction(value) or inspect.isclass(value)) and not key.startswith("check_")
                    and getattr(value, "__module__", "").startswith("fftd_course")):
                found.setdefault(id(value), (f"{name.rsplit('.', 1)[-1]}.{key}", value))
    return found


def _can_take(value: object, name: str) -> bool:
    """Whether ``value`` accepts the arguments ``name``'s check passes (else it fails with a TypeError anyway)."""
    try:
        signature = inspect.signature(value)
    except (TypeError, ValueError):
        return True
    try:
        if name in CLASS_CHECKS:
            signature.bind(16, 16, num_groups=8)
        elif name in ARITY:
            signature.bind(*[None] * ARITY[name])
    except TypeError:
        return False
    return True


def test_no_module_level_callable_of_a_check_module_passes_any_check(lenient_env, capsys, monkeypatch):
    monkeypatch.setattr(core.Bugs, "hint", lambda self, name: "")  # a FAIL's hint costs time and decides nothing here
    callables = _module_callables()
    assert len(callables) > 20
    tried = 0
    for name in EXERCISES:
        check = getattr(checks, name)
        for label, value in callables.values():
            if not _can_take(value, name):
                continue
            tried += 1
            assert check(value).status != "pass", f"{label} passes {name}"
    assert tried > 0
    capsys.readouterr()


def test_check_modules_hold_no_reference_answers():
    """No hidden reference at module level: what a check module holds besides checks is machinery and inputs."""
    for name in CHAPTER_MODULES:
        module = _module(name)
        assert not [k for k, v in vars(module).items()
                    if "reference" in k.lower() and getattr(v, "__module__", None) == name], name
        exported = getattr(module, "__all__", None)
        if exported is not None:
            assert all(k.startswith("check_") for k in exported), (name, exported)


# ---- find-the-bug hints, in steps --------------------------------------------------------------------------------

def _buggy(chapter: str, function: str):
    return chapter_function(chapter, function, torch=torch, F=F, math=math, quantize=quantize, fusion=fusion,
                            fftd=fftd, grid_to_tokens=grid_to_tokens, tokens_to_grid=tokens_to_grid,
                            metrics=metrics, diffusion=diffusion, Path=Path, os=os)


# (check, the chapter's given buggy code, how many bugs it has); chapter 05's (slow) is in test_checks_ch05.py
FIND_THE_BUG = [
    ("check_to_pixels", ("00_setup_and_tour", "buggy_to_pixels"), 2),
    ("check_group_norm", ("01_residual_blocks", "buggy_group_norm"), 2),
    ("check_vq_straight_through", ("03_vector_quantization", "buggy_vq"), 2),
    ("check_adaptive_weight", ("04_hybrid_loss", "buggy_adaptive_weight"), 3),
    ("check_ddim_sampler", ("06_ddim_math", "buggy_ddim_sample"), 1),
    ("check_fuse_fixed", ("07_adaptive_fusion", "buggy_fuse"), 3),
    ("check_fftd_forward", ("08_fftd", "buggy_forward"), 2),
    ("check_guided_eps", ("09_latent_diffusion", "guided_eps_buggy"), 2),
    ("check_decode_sample", ("09_latent_diffusion", "decode_sample_buggy"), 1),
    ("check_save_checkpoint_atomically", ("10_full_scale_cuda_training", "buggy_save_checkpoint"), 1),
    ("check_resumed_lrs", ("10_full_scale_cuda_training", "buggy_resumed_lrs"), 2),
    ("check_fair_fid_pair", ("11_reproducing_the_paper", "compare_fid_buggy"), 1),
]


@pytest.fixture
def fresh_nudges(monkeypatch):
    monkeypatch.setattr(core, "_nudges_given", {})


@pytest.mark.parametrize("name, given, bugs", FIND_THE_BUG, ids=[c[0] for c in FIND_THE_BUG])
def test_one_nudge_per_fail(name, given, bugs, lenient_env, fresh_nudges, capsys):
    check, buggy = getattr(checks, name), _buggy(*given)
    first = check(buggy)
    assert first.status == "fail"
    assert "nudge 1 of" in first.message and "nudge 2" not in first.message, first.message
    assert first.message.count("nudge") == 1
    assert (f"{bugs} of the {bugs} bug" in first.message or f"had {bugs} bug" in first.message), first.message
    second = check(buggy)
    assert "nudge 2 of" in second.message and "nudge 1 " not in second.message, second.message
    hint_1, hint_2 = first.message.split("nudge 1 of")[1], second.message.split("nudge 2 of")[1]
    assert hint_1 != hint_2
    capsys.readouterr()


def test_nudges_run_out_gently(lenient_env, fresh_nudges, capsys):
    buggy = _buggy("00_setup_and_tour", "buggy_to_pixels")
    messages = [checks.check_to_pixels(buggy).message for _ in range(6)]
    assert "no more nudges" in messages[-1]
    capsys.readouterr()


def test_the_count_follows_the_fixes(lenient_env, fresh_nudges, capsys):
    """Where each bug has its own sub-test, fixing one bug lowers the count by one."""
    def pixels_truncated(x):  # the layout fixed, the rounding not
        return ((x + 1) * 127.5).permute(1, 2, 0).to(torch.uint8)

    def pixels_view_rounded(x):  # the rounding fixed, the layout not
        c, h, w = x.shape
        return ((x + 1) * 127.5).round().view(h, w, c).to(torch.uint8)

    def gn_unbiased(x, groups, weight, bias, eps=1e-6):  # the grouping fixed, the variance not
        b, c, h, w = x.shape
        g = x.reshape(b, groups, c // groups, h, w)
        g = (g - g.mean(dim=(2, 3, 4), keepdim=True)) / torch.sqrt(g.var(dim=(2, 3, 4), keepdim=True) + eps)
        return g.reshape(b, c, h, w) * weight.view(1, c, 1, 1) + bias.view(1, c, 1, 1)

    for check, answer in ((checks.check_to_pixels, pixels_truncated), (checks.check_to_pixels, pixels_view_rounded),
                          (checks.check_group_norm, gn_unbiased)):
        assert "1 of the 2 bugs" in check(answer).message
    capsys.readouterr()


def test_a_shortcut_gives_no_nudge(lenient_env, fresh_nudges, capsys):
    message = checks.check_to_pixels(lambda x: viz.to_unit_range(x) * 0 + metrics.inception_inputs(x)).message
    assert "write it yourself" in message and "nudge" not in message
    assert core._nudges_given.get("to_pixels", 0) == 0
    capsys.readouterr()


def test_the_answer_scanner_reads_the_nudges():
    """tests/test_exercises.py looks for solution lines in every hint; the nudges are hints too."""
    from test_exercises import hints

    source = Path(checks.__file__).with_name("ch00.py").read_text()
    found = hints(source)
    assert any("NEAREST" in h for h in found) and all(isinstance(h, str) for h in found)
