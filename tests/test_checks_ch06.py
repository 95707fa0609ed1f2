"""Chapter 06 checks: the reference answers pass, plausible wrong answers fail (and raise in strict mode),
stubs are "not attempted"."""

import torch

from fftd_course import checks
from fftd_course import diffusion as D

from check_contract import chapter_function, contract_tests


def leading(T, n):  # an independent answer (the package's ddim_timesteps is switched off in the check)
    return torch.arange(n - 1, -1, -1, dtype=torch.long) * (T // n)


def leading_ascending(T, n):  # the right set, in the wrong order
    return leading(T, n).flip(0)


def leading_float_stride(T, n):  # T / n instead of the integer stride
    return (torch.arange(n - 1, -1, -1) * (T / n)).round().long()


def leading_from_one(T, n):  # counts the multiples from 1, as if timesteps were the paper's 1-based t
    return torch.arange(n, 0, -1) * (T // n)


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
    (checks.check_leading_timesteps, leading, [leading_ascending, leading_float_stride, leading_from_one]),
    (checks.check_ddim_sampler, sample_reference,
     [sample_as_given_in_the_chapter, sample_minus_one_wraps, sample_paper_index, sample_neighbour_not_subsequence]),
    (checks.check_exact_inversion, invert, [invert_ignores_iterations, invert_moves_the_start, invert_from_first_index]),
]

test_reference_passes_wrong_fails_stub_not_attempted, test_strict_mode_raises_on_every_wrong_answer = contract_tests(
    CASES)


def test_messages_name_the_convention(lenient_env):
    assert "0-based" in checks.check_ddim_sampler(sample_paper_index).message
    assert "LongTensor" in checks.check_leading_timesteps(lambda T, n: leading(T, n).float()).message
