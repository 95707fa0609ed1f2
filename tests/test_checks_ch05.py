"""Chapter 05's checks: the reference passes, plausible wrong answers fail (and raise in strict mode), stubs are
"not attempted"."""

import pytest

from fftd_course import checks, pipeline


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise")


def reconstruct_reference(model, x):
    q = model.quantize(model.encode(x))
    return model.decode(q.z_q), q.loss


def reconstruct_detached_codes(model, x):  # decodes the codes without the straight-through gradient
    q = model.quantize(model.encode(x))
    return model.decode(q.z_q.detach()), q.loss


def reconstruct_unquantized(model, x):  # skips the quantizer's snapping
    z = model.encode(x)
    return model.decode(z), model.quantize(z).loss


def step_without_zero_grad(model, loss, opt_ae, opt_d, x, step):
    x_hat, q = model(x)
    total, _ = loss(x, x_hat, step, vq_loss=q.loss, last_layer=model.last_layer)
    total.backward()
    opt_ae.step()
    d_loss, _ = loss.discriminator_loss(x, x_hat, step)
    if d_loss is not None:
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
    return {}


def step_without_vq_loss(model, loss, opt_ae, opt_d, x, step):
    x_hat, q = model(x)
    total, _ = loss(x, x_hat, step, last_layer=model.last_layer)
    opt_ae.zero_grad()
    total.backward()
    opt_ae.step()
    d_loss, _ = loss.discriminator_loss(x, x_hat, step)
    if d_loss is not None:
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
    return {}


def step_discriminator_first(model, loss, opt_ae, opt_d, x, step):
    x_hat, q = model(x)
    d_loss, _ = loss.discriminator_loss(x, x_hat, step)
    if d_loss is not None:
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
    total, _ = loss(x, x_hat, step, vq_loss=q.loss, last_layer=model.last_layer)
    opt_ae.zero_grad()
    total.backward()
    opt_ae.step()
    return {}


CASES = [
    (checks.check_reconstruct, reconstruct_reference, [reconstruct_detached_codes, reconstruct_unquantized]),
    (checks.check_training_step, pipeline.ivqvae_step, [step_without_zero_grad, step_without_vq_loss, step_discriminator_first]),
]


@pytest.mark.parametrize("check, answer, wrong", CASES, ids=[c[0].__name__ for c in CASES])
def test_reference_passes_wrong_fails_stub_not_attempted(check, answer, wrong, lenient_env):
    assert check(answer).status == "pass"
    for bad in wrong:
        result = check(bad)
        assert result.status == "fail", bad.__name__
        assert result.message
    assert check(stub).status == "not attempted"


@pytest.mark.parametrize("check, answer, wrong", CASES, ids=[c[0].__name__ for c in CASES])
def test_strict_mode_raises_on_a_wrong_answer(check, answer, wrong, strict):
    with pytest.raises(checks.ExerciseFailed):
        check(wrong[0])
    assert check(stub).status == "not attempted"
