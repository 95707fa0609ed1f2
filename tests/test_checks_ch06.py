"""Chapter 06 checks: the reference answers pass, plausible wrong answers fail (and raise in strict mode),
stubs are "not attempted"."""

import torch

from fftd_course import checks
from fftd_course import diffusion as D

from check_contract import chapter_function, contract_tests


def step_v(x_t, v, a_t, a_s):  # an independent answer: z_0 and eps from the two linear equations, then eq. 29
    a_t, a_s = torch.as_tensor(a_t, dtype=x_t.dtype), torch.as_tensor(a_s, dtype=x_t.dtype)
    eps = (1 - a_t).sqrt() * x_t + a_t.sqrt() * v
    z0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    return a_s.sqrt() * z0 + (1 - a_s).sqrt() * eps


def step_v_as_eps(x_t, v, a_t, a_s):  # feeds v to eq. 29 as if it were the noise
    a_t, a_s = torch.as_tensor(a_t, dtype=x_t.dtype), torch.as_tensor(a_s, dtype=x_t.dtype)
    z0 = (x_t - (1 - a_t).sqrt() * v) / a_t.sqrt()
    return a_s.sqrt() * z0 + (1 - a_s).sqrt() * v


def step_v_sign(x_t, v, a_t, a_s):  # z_0 = sqrt(a) x_t + sqrt(1 - a) v: a sign lost in the algebra
    a_t, a_s = torch.as_tensor(a_t, dtype=x_t.dtype), torch.as_tensor(a_s, dtype=x_t.dtype)
    z0 = a_t.sqrt() * x_t + (1 - a_t).sqrt() * v
    eps = (x_t - a_t.sqrt() * z0) / (1 - a_t).sqrt()
    return a_s.sqrt() * z0 + (1 - a_s).sqrt() * eps


def step_v_swapped(x_t, v, a_t, a_s):  # sine and cosine swapped
    a_t, a_s = torch.as_tensor(a_t, dtype=x_t.dtype), torch.as_tensor(a_s, dtype=x_t.dtype)
    z0 = (1 - a_t).sqrt() * x_t - a_t.sqrt() * v
    eps = a_t.sqrt() * x_t + (1 - a_t).sqrt() * v
    return a_s.sqrt() * z0 + (1 - a_s).sqrt() * eps


def step_v_math_sqrt(x_t, v, a_t, a_s):  # right for floats, but math.sqrt cannot take per-sample tensors
    import math
    z0 = math.sqrt(a_t) * x_t - math.sqrt(1 - a_t) * v
    eps = math.sqrt(1 - a_t) * x_t + math.sqrt(a_t) * v
    return math.sqrt(a_s) * z0 + math.sqrt(1 - a_s) * eps


def sample_reference(model, x_T, timesteps, alpha_bar):
    x, ts = x_T, timesteps.tolist()
    for i, t in enumerate(ts):
        a_next = alpha_bar[ts[i + 1]] if i + 1 < len(ts) else torch.ones((), dtype=alpha_bar.dtype)
        x = D.ddim_step(x, model(x, torch.full((len(x),), t), None), alpha_bar[t], a_next)
    return x


# The chapter's buggy sampler as the learner gets it: the last step lands on index 0.
sample_as_given_in_the_chapter = chapter_function("06_ddim_math", "buggy_ddim_sample", torch=torch, diffusion=D)


def sample_minus_one_wraps(model, x_T, timesteps, alpha_bar):  # -1 as "clean", but used as an index
    x = x_T
    for t, t_target in zip(timesteps.tolist(), timesteps.tolist()[1:] + [-1]):
        x = D.ddim_step(x, model(x, torch.full((len(x),), t), None), alpha_bar[t], alpha_bar[t_target])
    return x


def sample_paper_index(model, x_T, timesteps, alpha_bar):  # calls the model with the paper's 1-based t
    x, ts = x_T, timesteps.tolist()
    for i, t in enumerate(ts):
        a_next = alpha_bar[ts[i + 1]] if i + 1 < len(ts) else torch.ones((), dtype=alpha_bar.dtype)
        x = D.ddim_step(x, model(x, torch.full((len(x),), t + 1), None), alpha_bar[t], a_next)
    return x


def sample_neighbour_not_subsequence(model, x_T, timesteps, alpha_bar):  # steps to t - 1, not the next element
    x = x_T
    for t in timesteps.tolist():
        a_next = alpha_bar[t - 1] if t > 0 else torch.ones((), dtype=alpha_bar.dtype)
        x = D.ddim_step(x, model(x, torch.full((len(x),), t), None), alpha_bar[t], a_next)
    return x


def invert(model, x0, timesteps, alpha_bar, iterations, start=None):
    """Reference inversion; ``start`` replaces clean data's alpha_bar = 1 (for the wrong answer below)."""
    x, a_here = x0, torch.ones((), dtype=alpha_bar.dtype) if start is None else start
    for t in timesteps.flip(0).tolist():
        tv = torch.full((len(x),), t)
        up = D.ddim_step(x, model(x, tv, None), a_here, alpha_bar[t])
        for _ in range(iterations):
            up = D.ddim_step(x, model(up, tv, None), a_here, alpha_bar[t])
        x, a_here = up, alpha_bar[t]
    return x


def invert_ignores_iterations(model, x0, timesteps, alpha_bar, iterations):
    return invert(model, x0, timesteps, alpha_bar, 0)


def invert_moves_the_start(model, x0, timesteps, alpha_bar, iterations):  # restarts each refinement from the estimate
    x, a_here = x0, torch.ones((), dtype=alpha_bar.dtype)
    for t in timesteps.flip(0).tolist():
        tv = torch.full((len(x),), t)
        for _ in range(iterations + 1):
            x = D.ddim_step(x, model(x, tv, None), a_here, alpha_bar[t])
            a_here_next = alpha_bar[t]
        a_here = a_here_next
    return x


def invert_from_first_index(model, x0, timesteps, alpha_bar, iterations):  # starts at alpha_bar[0], not clean data
    return invert(model, x0, timesteps, alpha_bar, iterations, start=alpha_bar[0])


CASES = [
    (checks.check_ddim_step_v, step_v, [step_v_as_eps, step_v_sign, step_v_swapped, step_v_math_sqrt]),
    (checks.check_ddim_sampler, sample_reference,
     [sample_as_given_in_the_chapter, sample_minus_one_wraps, sample_paper_index, sample_neighbour_not_subsequence]),
    (checks.check_exact_inversion, invert, [invert_ignores_iterations, invert_moves_the_start, invert_from_first_index]),
]

test_reference_passes_wrong_fails_stub_not_attempted, test_strict_mode_raises_on_every_wrong_answer = contract_tests(
    CASES)


def test_messages_name_the_convention(lenient_env):
    assert "0-based" in checks.check_ddim_sampler(sample_paper_index).message
    assert "land on eq. 28" in checks.check_ddim_step_v(step_v_as_eps).message
