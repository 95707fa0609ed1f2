"""Chapter 09 checks: the reference answers pass, plausible wrong answers fail (and raise in strict mode),
stubs are "not attempted"."""

from fftd_course import checks, pipeline

from check_contract import contract_tests


# ---- exercise 1: guidance on some channels ----

def guided_reference(eps_c, eps_u, scale, channels):  # an independent answer
    out = eps_c.clone()
    out[:, list(channels)] = (eps_u + scale * (eps_c - eps_u))[:, list(channels)]
    return out


def guided_all_channels(eps_c, eps_u, scale, channels):  # ignores the channel list
    return eps_u + scale * (eps_c - eps_u)


def guided_rest_unconditional(eps_c, eps_u, scale, channels):  # the other channels take eps_u
    out = eps_u.clone()
    out[:, list(channels)] = (eps_u + scale * (eps_c - eps_u))[:, list(channels)]
    return out


def guided_swapped(eps_c, eps_u, scale, channels):  # extrapolates away from the label
    out = eps_c.clone()
    out[:, list(channels)] = (eps_c + scale * (eps_u - eps_c))[:, list(channels)]
    return out


def guided_in_place(eps_c, eps_u, scale, channels):  # right values, but overwrites the sampler's eps_c
    idx = list(channels)
    eps_c[:, idx] = eps_u[:, idx] + scale * (eps_c[:, idx] - eps_u[:, idx])
    return eps_c


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
    (checks.check_guided_eps_on_channels, guided_reference,
     [guided_all_channels, guided_rest_unconditional, guided_swapped, guided_in_place]),
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
