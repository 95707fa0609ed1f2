"""Chapter 06 checks: the reference answers pass, plausible wrong answers fail (and raise in strict mode),
stubs are "not attempted"."""

from fftd_course import checks
from fftd_course import diffusion as D

from check_contract import contract_tests


def _gather(alpha_bar, t, x0):
    return alpha_bar[t].view(-1, *([1] * (x0.ndim - 1)))


def q_sample(x0, t, noise, alpha_bar):
    ab = _gather(alpha_bar, t, x0)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def q_sample_no_sqrt(x0, t, noise, alpha_bar):  # variances used as amplitudes
    ab = _gather(alpha_bar, t, x0)
    return ab * x0 + (1 - ab) * noise


def q_sample_paper_index(x0, t, noise, alpha_bar):  # treats t as the paper's 1-based t
    ab = _gather(alpha_bar, (t - 1).clamp(min=0), x0)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def q_sample_first_alpha(x0, t, noise, alpha_bar):  # one alpha_bar for the whole batch
    ab = alpha_bar[t[0]]
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def ddim_step(x_t, eps, a_t, a_prev, eta, noise):
    x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    sigma = D.ddim_sigma(a_t, a_prev, eta)
    return a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).sqrt() * eps + sigma * noise


def ddim_step_no_sigma_in_direction(x_t, eps, a_t, a_prev, eta, noise):
    x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    sigma = D.ddim_sigma(a_t, a_prev, eta)
    return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps + sigma * noise


def ddim_step_sign(x_t, eps, a_t, a_prev, eta, noise):
    x0 = (x_t + (1 - a_t).sqrt() * eps) / a_t.sqrt()
    sigma = D.ddim_sigma(a_t, a_prev, eta)
    return a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).sqrt() * eps + sigma * noise


def ddim_step_deterministic_only(x_t, eps, a_t, a_prev, eta, noise):
    return D.ddim_step(x_t, eps, a_t, a_prev, 0.0)


def sigma(a_t, a_prev, eta):
    return eta * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).sqrt()


def sigma_no_ratio(a_t, a_prev, eta):
    return eta * (1 - a_t / a_prev).sqrt()


def sigma_squared(a_t, a_prev, eta):  # the variance, not the standard deviation
    return eta * (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)


CASES = [
    (checks.check_q_sample, q_sample, [q_sample_no_sqrt, q_sample_paper_index, q_sample_first_alpha]),
    (checks.check_ddim_step, ddim_step, [ddim_step_no_sigma_in_direction, ddim_step_sign, ddim_step_deterministic_only]),
    (checks.check_ddim_sigma, sigma, [sigma_no_ratio, sigma_squared]),
]

test_reference_passes_wrong_fails_stub_not_attempted, test_strict_mode_raises_on_every_wrong_answer = contract_tests(
    CASES)


def test_package_versions_pass_their_own_checks(lenient_env):
    assert checks.check_ddim_step(D.ddim_step)
    assert checks.check_ddim_sigma(D.ddim_sigma)


def test_q_sample_message_names_the_index_convention(lenient_env):
    assert "0-based" in checks.check_q_sample(q_sample_paper_index).message
