"""Algorithm 1 in fftd_course.pipeline: one step, the training loop, its guards."""

import copy

import pytest
import torch

from fftd_course import ivqvae, losses, pipeline
from fftd_course.data import make_toy_faces


def tiny(seed=0, disc_start=0):
    torch.manual_seed(seed)
    model = ivqvae.IVQVAE(ivqvae.get_config("toy-f8", ch=8, num_codes=32))
    loss = losses.HybridLoss(discriminator=losses.NLayerDiscriminator(ndf=8, n_layers=2), perceptual_weight=0.0,
                             disc_start=disc_start)
    return model, loss


def params(module):
    return [p.detach().clone() for p in module.parameters()]


def test_step_updates_autoencoder_and_discriminator_only_from_disc_start():
    model, loss = tiny(disc_start=1)
    opts = pipeline.stage1_optimizers(model, loss, lr=1e-3)
    x = make_toy_faces(4, size=32, seed=0)[0]
    ae0, d0 = params(model), params(loss.discriminator)
    logs = pipeline.ivqvae_step(model, loss, *opts, x, step=0)
    assert logs["disc_active"] == 0.0 and logs["weight_g"] == 0.0
    assert any(not torch.equal(a, b) for a, b in zip(ae0, params(model)))
    assert all(torch.equal(a, b) for a, b in zip(d0, params(loss.discriminator)))  # not yet
    logs = pipeline.ivqvae_step(model, loss, *opts, x, step=1)
    assert logs["disc_active"] == 1.0 and logs["weight_g"] > 0.0 and "d_loss" in logs
    assert any(not torch.equal(a, b) for a, b in zip(d0, params(loss.discriminator)))


def test_step_equals_the_algorithm_written_out():
    model, loss = tiny()
    ref_model, ref_loss = copy.deepcopy(model), copy.deepcopy(loss)
    opts, ref_opts = pipeline.stage1_optimizers(model, loss), pipeline.stage1_optimizers(ref_model, ref_loss)
    x = make_toy_faces(4, size=32, seed=1)[0]
    torch.manual_seed(3)
    pipeline.ivqvae_step(model, loss, *opts, x, step=0)
    torch.manual_seed(3)
    x_hat, q = ref_model(x)
    total, _ = ref_loss(x, x_hat, 0, vq_loss=q.loss, last_layer=ref_model.last_layer)
    ref_opts[0].zero_grad(), total.backward(), ref_opts[0].step()
    d_loss, _ = ref_loss.discriminator_loss(x, x_hat, 0)
    ref_opts[1].zero_grad(), d_loss.backward(), ref_opts[1].step()
    for a, b in zip(list(model.parameters()) + list(loss.parameters()), list(ref_model.parameters()) + list(ref_loss.parameters())):
        torch.testing.assert_close(a, b)


def test_training_reduces_reconstruction_error_and_logs_every_step():
    model, loss = tiny(disc_start=10**6)
    images = make_toy_faces(64, size=32, seed=0)[0]
    history = pipeline.train_ivqvae(model, loss, images, steps=40, batch_size=16, lr=2e-3, progress=False)
    assert set(history) >= {"l1", "vq", "total", "perplexity", "d_loss"}
    assert all(len(v) == 40 for v in history.values())
    assert sum(history["l1"][-5:]) / 5 < 0.8 * sum(history["l1"][:5]) / 5


def test_training_is_reproducible_from_a_seed_and_resumable():
    images = make_toy_faces(48, size=32, seed=0)[0]
    runs = []
    for _ in range(2):
        model, loss = tiny(seed=5, disc_start=3)
        runs.append(pipeline.train_ivqvae(model, loss, images, steps=4, batch_size=16, seed=1, progress=False)["total"])
    assert runs[0] == runs[1]
    # Continuing with the same optimizers and start_step keeps the step count that gates the discriminator.
    model, loss = tiny(seed=5, disc_start=3)
    opts = pipeline.stage1_optimizers(model, loss)
    first = pipeline.train_ivqvae(model, loss, images, 2, batch_size=16, progress=False, optimizers=opts)
    second = pipeline.train_ivqvae(model, loss, images, 2, batch_size=16, progress=False, optimizers=opts, start_step=2)
    assert first["disc_active"] == [0.0, 0.0] and second["disc_active"] == [0.0, 1.0]


def test_bad_inputs_are_reported_before_training():
    model, loss = tiny()
    images = make_toy_faces(8, size=32, seed=0)[0]
    with pytest.raises(ValueError, match="batch_size"):
        pipeline.train_ivqvae(model, loss, images, 1, batch_size=16, progress=False)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        pipeline.train_ivqvae(model, loss, images * 255, 1, batch_size=4, progress=False)
    with pytest.raises(ValueError, match="N, C, H, W"):
        pipeline.train_ivqvae(model, loss, images[0], 1, batch_size=4, progress=False)
    with pytest.raises(ValueError, match="lr"):
        pipeline.stage1_optimizers(model, loss, lr=0)


def test_a_nan_stops_training_with_the_step_and_term():
    model, loss = tiny()
    images = make_toy_faces(8, size=32, seed=0)[0]
    with torch.no_grad():
        model.decoder.conv_out.weight.fill_(float("nan"))
    with pytest.raises(losses.NonFiniteLossError) as err:
        pipeline.train_ivqvae(model, loss, images, 3, batch_size=4, progress=False, start_step=7)
    assert err.value.step == 7 and "x_hat" in str(err.value)


def test_lr_schedule_scales_the_autoencoder_learning_rate_per_step():
    model, loss = tiny(disc_start=10**6)
    opts = pipeline.stage1_optimizers(model, loss, lr=1e-3)
    images = make_toy_faces(16, size=32, seed=0)[0]
    schedule = pipeline.cosine_lr(4, warmup_steps=0, final=0.1)
    pipeline.train_ivqvae(model, loss, images, 3, batch_size=8, lr=1e-3, progress=False, optimizers=opts,
                          lr_schedule=schedule)
    assert opts[0].param_groups[0]["lr"] == pytest.approx(1e-3 * schedule(2))
    assert opts[1].param_groups[0]["lr"] == pytest.approx(1e-3)  # the discriminator's rate is left alone


def test_encode_latents_is_frozen_and_returns_codes():
    model, _ = tiny()
    model.train()
    images = make_toy_faces(6, size=32, seed=0)[0]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    z = pipeline.encode_latents(model, images, batch_size=4)
    assert model.training  # mode restored
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # no statistics, no k-means
    assert z.shape == (6, 4, 4, 4) and not z.requires_grad
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    with torch.no_grad():
        codes = model.quantizer.codes()
    assert (flat[:, None] - codes[None]).norm(dim=-1).min(1).values.max() < 1e-6  # every latent vector is a code
