"""Chapter 05's checks: the reference passes, plausible wrong answers fail (and raise in strict mode), stubs are
"not attempted"."""

from fftd_course import checks, pipeline

from check_contract import contract_tests


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

test_reference_passes_wrong_fails_stub_not_attempted, test_strict_mode_raises_on_every_wrong_answer = contract_tests(
    CASES)


