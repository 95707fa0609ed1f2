"""Chapter 05's checks: the reference passes, plausible wrong answers fail (and raise in strict mode), stubs are
"not attempted"."""

import pytest
import torch

from fftd_course import checks, ivqvae

from check_contract import chapter_function, contract_tests

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread runs them fastest


def forward_flawed(rescale=False, lookup=False, detach_loss=False):
    """The chapter's forward pass with any of its three bugs switched on (all off: a correct answer)."""

    def fn(model, x):
        q = model.quantize(model.encode(2 * x - 1 if rescale else x))
        x_hat = model.decode(model.quantizer.lookup(q.indices) if lookup else q.z_q)
        return x_hat, q.loss.detach() if detach_loss else q.loss

    return fn


def forward_by_hand(model, x):  # an independent answer: the straight-through estimator written out
    z = model.encode(x)
    q = model.quantize(z)
    codes = model.quantizer.lookup(q.indices)
    z_e = torch.nn.functional.normalize(z, dim=1) if model.quantizer.l2_normalize else z
    return model.decode(z_e + (codes - z_e).detach()), q.loss


def forward_unquantized(model, x):  # skips the quantizer's snapping
    z = model.encode(x)
    return model.decode(z), model.quantize(z).loss


def forward_loss_as_float(model, x):  # L_vq as a Python number
    x_hat, vq_loss = forward_flawed()(model, x)
    return x_hat, float(vq_loss)


def flawed_step(zero_grad_ae: bool = True, pass_vq_loss: bool = True, discriminator_first: bool = False):
    """A training step with one classic mistake switched on (the defaults give the correct step)."""

    def step_fn(model, loss, opt_ae, opt_d, x, step):
        x_hat, q = model(x)

        def autoencoder_update():
            total, _ = loss(x, x_hat, step, vq_loss=q.loss if pass_vq_loss else None, last_layer=model.last_layer)
            if zero_grad_ae:
                opt_ae.zero_grad()
            total.backward()
            opt_ae.step()

        def discriminator_update():
            d_loss, _ = loss.discriminator_loss(x, x_hat, step)
            if d_loss is not None:
                opt_d.zero_grad()
                d_loss.backward()
                opt_d.step()

        for update in ((discriminator_update, autoencoder_update) if discriminator_first else (autoencoder_update, discriminator_update)):
            update()
        return {}

    return step_fn


CASES = [
    (checks.check_forward_fixed, forward_by_hand,
     [forward_flawed(rescale=True), forward_flawed(lookup=True), forward_flawed(detach_loss=True), forward_unquantized,
      forward_loss_as_float]),
    (checks.check_training_step, flawed_step(),  # the defaults: a correct step, written without the package
     [flawed_step(zero_grad_ae=False), flawed_step(pass_vq_loss=False), flawed_step(discriminator_first=True)]),
]

test_reference_passes_wrong_fails_stub_not_attempted, test_strict_mode_raises_on_every_wrong_answer = contract_tests(
    CASES)




def influence(model, indices, row, col, new_code):
    edited = indices.clone()
    edited[:, row, col] = new_code
    return (model.decode_indices(edited) - model.decode_indices(indices)).abs().mean(dim=1)


def influence_in_place(model, indices, row, col, new_code):  # edits the caller's grid
    before = model.decode_indices(indices)
    indices[:, row, col] = new_code
    return (model.decode_indices(indices) - before).abs().mean(dim=1)


def influence_transposed(model, indices, row, col, new_code):
    return influence(model, indices, col, row, new_code)


def influence_signed(model, indices, row, col, new_code):
    edited = indices.clone()
    edited[:, row, col] = new_code
    return (model.decode_indices(edited) - model.decode_indices(indices)).mean(dim=1)


def influence_summed_channels(model, indices, row, col, new_code):
    return 3 * influence(model, indices, row, col, new_code)


INFLUENCE_CASES = [(checks.check_code_influence, influence,
                    [influence_in_place, influence_transposed, influence_signed, influence_summed_channels])]

test_influence_reference_passes_wrong_fails, test_influence_strict_mode_raises = contract_tests(INFLUENCE_CASES)


def test_the_chapters_buggy_step_fails(lenient_env):
    buggy = chapter_function("05_ivqvae", "buggy_training_step")  # exercise 2, as given to the learner

    result = checks.check_training_step(buggy)
    assert result.status == "fail"
    assert "4 of the 4 bugs" in result.message and result.message.count("nudge") == 1  # one nudge, the count


def test_the_bug_count_follows_the_fixes(lenient_env):
    """Each of the four bugs has its own sub-test: one left in is counted as one."""
    assert "1 of the 4 bugs" in checks.check_training_step(flawed_step(pass_vq_loss=False)).message


def test_the_chapters_forward_pass_bugs_are_counted(lenient_env):
    buggy = chapter_function("05_ivqvae", "buggy_forward", ivqvae=ivqvae, torch=torch)
    result = checks.check_forward_fixed(buggy)
    assert result.status == "fail"
    assert "3 of the 3 bugs" in result.message and result.message.count("nudge") == 1
    assert "2 of the 3 bugs" in checks.check_forward_fixed(forward_flawed(lookup=True, detach_loss=True)).message
    assert "1 of the 3 bugs" in checks.check_forward_fixed(forward_flawed(rescale=True)).message
    assert checks.check_forward_fixed(chapter_function("05_ivqvae", "forward_fixed", ivqvae=ivqvae, torch=torch))
