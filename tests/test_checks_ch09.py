"""Chapter 09 checks: the reference answers pass, plausible wrong answers fail (and raise in strict mode),
stubs are "not attempted"."""

import torch

from fftd_course import checks, pipeline

from check_contract import chapter_function, contract_tests


# ---- exercise 1: find the bugs in a colleague's guidance ----

def guided_reference(model, z_t, t, y, scale, null_label):  # an independent answer: one batched call
    eps_c, eps_u = model(torch.cat([z_t, z_t]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null_label)])).chunk(2)
    return scale * eps_c + (1 - scale) * eps_u


# The chapter's code as the learner gets it: label 0 as "no label", and the scale on the wrong side.
guided_as_given_in_the_chapter = chapter_function("09_latent_diffusion", "guided_eps_buggy", torch=torch)


def guided_null_fixed_only(model, z_t, t, y, scale, null_label):
    eps_c, eps_u = model(z_t, t, y), model(z_t, t, torch.full_like(y, null_label))
    return eps_c + scale * (eps_c - eps_u)


def guided_scale_fixed_only(model, z_t, t, y, scale, null_label):
    eps_c, eps_u = model(z_t, t, y), model(z_t, t, torch.zeros_like(y))
    return eps_u + scale * (eps_c - eps_u)


def guided_away_from_label(model, z_t, t, y, scale, null_label):  # extrapolates the wrong way
    eps_c, eps_u = model(z_t, t, y), model(z_t, t, torch.full_like(y, null_label))
    return eps_c + scale * (eps_u - eps_c)


def guided_without_labels(model, z_t, t, y, scale, null_label):  # y = None as "no label"
    eps_c, eps_u = model(z_t, t, y), model(z_t, t, None)
    return eps_u + scale * (eps_c - eps_u)


# ---- exercise 2: decode a sample ----

def decode_buggy(ivqvae, z, scale):  # the chapter's buggy function: snaps, then unscales the unit codes
    return ivqvae.decode(ivqvae.snap(z)[0] / scale)


def decode_never_unscaled(ivqvae, z, scale):  # right for l2-normalised codes only
    return ivqvae.decode(ivqvae.snap(z)[0])


def decode_times_scale(ivqvae, z, scale):
    return ivqvae.decode(ivqvae.snap(z * scale)[0])


def decode_without_snap(ivqvae, z, scale):  # requantize=False
    return ivqvae.decode(z / scale)


def decode_reference(ivqvae, z, scale):
    return ivqvae.decode(ivqvae.snap(z / scale)[0])


# ---- exercise 3: distance to the codebook ----

def distance_reference(generator, num_steps, labels, seed=0):  # an independent answer
    r = generator.generate(labels, num_steps=num_steps, seed=seed)
    codes = generator.ivqvae.quantizer.lookup(r.indices)
    return float((r.latents / generator.scale - codes).norm(dim=1).mean())


def distance_scaled_space(generator, num_steps, labels, seed=0):  # forgets to unscale
    r = generator.generate(labels, num_steps=num_steps, seed=seed)
    return float((r.latents - generator.ivqvae.quantizer.lookup(r.indices)).norm(dim=1).mean())


def distance_squared(generator, num_steps, labels, seed=0):
    r = generator.generate(labels, num_steps=num_steps, seed=seed)
    z = r.latents / generator.scale
    return float((z - generator.ivqvae.quantizer.lookup(r.indices)).pow(2).sum(1).mean())


def distance_per_entry(generator, num_steps, labels, seed=0):  # mean absolute difference per entry
    r = generator.generate(labels, num_steps=num_steps, seed=seed)
    z = r.latents / generator.scale
    return float((z - generator.ivqvae.quantizer.lookup(r.indices)).abs().mean())


def distance_wrong_steps(generator, num_steps, labels, seed=0):  # always the default number of steps
    return distance_reference(generator, 50, labels, seed)


CASES = [
    (checks.check_guided_eps, guided_reference,
     [guided_as_given_in_the_chapter, guided_null_fixed_only, guided_scale_fixed_only, guided_away_from_label,
      guided_without_labels]),
    (checks.check_decode_sample, decode_reference,
     [decode_buggy, decode_never_unscaled, decode_times_scale, decode_without_snap]),
    (checks.check_off_code_distance, distance_reference,
     [distance_scaled_space, distance_squared, distance_per_entry, distance_wrong_steps]),
]

test_reference_passes_wrong_fails_stub_not_attempted, test_strict_mode_raises_on_every_wrong_answer = contract_tests(
    CASES)


def test_the_package_decoder_is_refused(lenient_env):
    result = checks.check_decode_sample(lambda m, z, s: pipeline.decode_latents(m, z, s))
    assert result.status == "fail" and "write it yourself" in result.message


def test_a_wrong_distance_names_both_numbers(lenient_env):
    message = checks.check_off_code_distance(distance_scaled_space).message
    assert "your distance" in message and "reference" in message


def test_each_guidance_bug_has_its_own_sub_test(lenient_env, monkeypatch, capsys):
    from fftd_course.checks import core

    monkeypatch.setattr(core, "_nudges_given", {})
    assert "2 of the 2 bugs" in checks.check_guided_eps(guided_as_given_in_the_chapter).message
    assert "1 of the 2 bugs" in checks.check_guided_eps(guided_null_fixed_only).message
    message = checks.check_guided_eps(guided_scale_fixed_only).message
    assert "1 of the 2 bugs" in message and "no label" in message
    assert "E12" in checks.check_guided_eps(guided_without_labels).message
    capsys.readouterr()
