"""Stages 2-3 in fftd_course.pipeline: latents, scaling, EMA, FFTD training, LatentDiffusion, checkpoints."""

import math

import pytest
import torch

from fftd_course import pipeline
from fftd_course.data import CLASSES, make_toy_faces
from fftd_course.diffusion import Diffusion
from fftd_course.fftd import FFTD, get_config
from fftd_course.ivqvae import IVQVAE, get_config as ivqvae_config


@pytest.fixture(scope="module")
def toy():
    """The committed toy generator (remade by `make weights`)."""
    return pipeline.load_toy()


def tiny_generator(num_classes=3, seed=0):
    torch.manual_seed(seed)
    stage1 = IVQVAE(ivqvae_config("toy-f8", ch=8, num_codes=32))
    fftd = FFTD(get_config("toy", num_classes=num_classes))
    names = CLASSES[:num_classes]
    return pipeline.LatentDiffusion(stage1, fftd, Diffusion(), scale=2.0, class_names=names)


def test_round_trip_encode_scale_unscale_snap_decode_gives_back_codes_and_images(toy):
    x = make_toy_faces(16, size=32, seed=7)[0]
    z = pipeline.encode_latents(toy.ivqvae, x, batch_size=5)
    _, codes = toy.ivqvae.snap(toy.ivqvae.encode(x))
    z_scaled = z * toy.scale
    assert torch.equal(toy.ivqvae.snap(z_scaled / toy.scale)[1], codes)  # unscale + snap finds the same codes
    images = pipeline.decode_latents(toy.ivqvae, z_scaled, toy.scale)
    with torch.no_grad():
        torch.testing.assert_close(images, toy.ivqvae.decode(toy.ivqvae.quantizer.lookup(codes)), atol=1e-5, rtol=0)
        torch.testing.assert_close(images, toy.ivqvae(x)[0], atol=1e-5, rtol=0)
    # The stage-1 model is good: the reconstructions are close to the faces (the demo demands L1 <= 0.06).
    assert float((images - x).abs().mean()) < 0.08


def test_latent_scale_gives_unit_variance_and_the_toy_stores_it(toy):
    z = pipeline.encode_latents(toy.ivqvae, make_toy_faces(64, size=32, seed=0)[0])
    s = pipeline.latent_scale(z)
    assert float((z * s).std()) == pytest.approx(1.0, rel=1e-5)
    assert toy.scale == pytest.approx(s, rel=0.2)  # the stored factor came from the (larger) training set
    with pytest.raises(ValueError, match="standard deviation"):
        pipeline.latent_scale(torch.ones(4, 4, 4, 4))


def test_decode_without_requantize_decodes_the_raw_latent(toy):
    z = torch.randn(2, 4, 4, 4)
    raw = pipeline.decode_latents(toy.ivqvae, z, toy.scale, requantize=False)
    snapped = pipeline.decode_latents(toy.ivqvae, z, toy.scale)
    with torch.no_grad():
        torch.testing.assert_close(raw, toy.ivqvae.decode(z / toy.scale))
    assert not torch.allclose(raw, snapped)
    with pytest.raises(ValueError, match="decode_latents expects"):
        pipeline.decode_latents(toy.ivqvae, torch.randn(2, 3, 4, 4), toy.scale)


def test_toy_samples_every_class_in_image_range(toy):
    result = toy.generate(["cat", "dog", "wild"], num_steps=5, seed=1, keep_trajectory=True)
    assert result.images.shape == (3, 3, 32, 32) and result.images.abs().max() <= 1.0
    assert result.labels.tolist() == [0, 1, 2] and result.indices.shape == (3, 4, 4)
    assert len(result.trajectory) == 5 and result.trajectory[-1][0] == -1  # the last step reaches clean data
    torch.testing.assert_close(result.trajectory[-1][1], result.latents)
    again = toy.sample(["cat", "dog", "wild"], num_steps=5, seed=1)
    torch.testing.assert_close(again, result.images)  # the seed decides the sample


def test_ema_warm_up_and_update():
    model = torch.nn.Linear(3, 2)
    ema = pipeline.EMA(model, decay=0.99)
    assert ema.decay_at(0) == 0.0  # the first update copies the weights
    assert ema.decay_at(9) == pytest.approx(1 - 10 ** -0.75)
    assert ema.decay_at(10**6) == 0.99  # capped at decay
    assert all(ema.decay_at(k) <= ema.decay_at(k + 1) for k in range(200))
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.model.weight, model.weight)
    old = ema.model.weight.clone()
    with torch.no_grad():
        model.weight.fill_(3.0)
    d = ema.update(model)
    assert d == pytest.approx(1 - 2 ** -0.75)
    torch.testing.assert_close(ema.model.weight, d * old + (1 - d) * 3.0)
    assert not ema.model.weight.requires_grad and not ema.model.training
    other = pipeline.EMA(torch.nn.Linear(3, 2), decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 2 and other.decay == 0.99
    torch.testing.assert_close(other.model.weight, ema.model.weight)
    with pytest.raises(ValueError, match="decay"):
        pipeline.EMA(model, decay=1.0)


def test_train_fftd_lowers_the_loss_on_a_tiny_problem():
    torch.manual_seed(0)
    # Two fixed latents, one per class: the noise is predictable from x_t and the label.
    base = torch.randn(2, 4, 4, 4)
    latents, labels = base.repeat(32, 1, 1, 1), torch.tensor([0, 1]).repeat(32)
    model = FFTD(get_config("toy", num_classes=2))
    history, ema = pipeline.train_fftd(model, Diffusion(), latents, labels, steps=80, batch_size=32, lr=2e-3,
                                       progress=False)
    loss = history["loss"]
    assert len(loss) == 80 and ema.num_updates == 80
    assert sum(loss[-10:]) / 10 < 0.7 * sum(loss[:10]) / 10


def test_train_fftd_rejects_bad_inputs():
    model = FFTD(get_config("toy", num_classes=3))
    latents, labels = torch.randn(8, 4, 4, 4), torch.zeros(8, dtype=torch.long)
    with pytest.raises(ValueError, match="latents must have shape"):
        pipeline.train_fftd(model, Diffusion(), torch.randn(8, 4, 8, 8), labels, 1, batch_size=4, progress=False)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        pipeline.train_fftd(model, Diffusion(), latents, labels + 3, 1, batch_size=4, progress=False)
    with pytest.raises(ValueError, match="class-conditional"):
        pipeline.train_fftd(model, Diffusion(), latents, None, 1, batch_size=4, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        pipeline.train_fftd(model, Diffusion(), latents, labels, 1, batch_size=9, progress=False)
    with pytest.warns(UserWarning, match="latent_scale"):
        pipeline.train_fftd(model, Diffusion(), latents * 0.25, labels, 1, batch_size=4, progress=False)
    unconditional = FFTD(get_config("toy", num_classes=0))
    with pytest.raises(ValueError, match="unconditional"):
        pipeline.train_fftd(unconditional, Diffusion(), latents, labels, 1, batch_size=4, progress=False)


def test_sample_rejects_bad_labels_and_unconditional_needs_n():
    gen = tiny_generator()
    with pytest.raises(ValueError, match="unknown class 'horse'"):
        gen.sample(["horse"], num_steps=2)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        gen.sample([3], num_steps=2)
    with pytest.raises(ValueError, match="either classes"):
        gen.sample(num_steps=2)
    assert gen.sample(n=2, num_steps=2).shape == (2, 3, 32, 32)  # unconditional: the null label
    unconditional = tiny_generator(num_classes=0)
    with pytest.raises(ValueError, match="unconditional"):
        unconditional.sample([0], num_steps=2)
    assert unconditional.sample(n=1, num_steps=2).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="class_names"):
        pipeline.LatentDiffusion(gen.ivqvae, gen.fftd, class_names=("a",))


def test_save_load_round_trip(tmp_path):
    gen = tiny_generator()
    path = gen.save(tmp_path / "sub" / "gen.pt")
    back = pipeline.LatentDiffusion.load(path)
    assert back.scale == gen.scale and back.class_names == gen.class_names
    assert back.ivqvae.config == gen.ivqvae.config and back.fftd.config == gen.fftd.config
    torch.testing.assert_close(back.diffusion.betas, gen.diffusion.betas)
    torch.testing.assert_close(back.sample(["dog", "cat"], num_steps=3, seed=4), gen.sample(["dog", "cat"], num_steps=3, seed=4))


def test_load_errors_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="make weights"):
        pipeline.LatentDiffusion.load(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(pipeline.CheckpointError, match="damaged"):
        pipeline.LatentDiffusion.load(junk)
    good = tiny_generator().save(tmp_path / "good.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(pipeline.CheckpointError, match="damaged"):
        pipeline.LatentDiffusion.load(cut)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(pipeline.CheckpointError, match="not a LatentDiffusion checkpoint"):
        pipeline.LatentDiffusion.load(other)
    ckpt = torch.load(good, weights_only=True)
    ckpt["fftd"] = {k: v for k, v in list(ckpt["fftd"].items())[1:]}
    torch.save(ckpt, other)
    with pytest.raises(pipeline.CheckpointError, match="does not fit"):
        pipeline.LatentDiffusion.load(other)


def test_cosine_lr():
    f = pipeline.cosine_lr(100, warmup_steps=10, final=0.1)
    assert f(0) == pytest.approx(0.1)  # warm-up: 1/10 of the peak
    assert f(9) == pytest.approx(1.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.09))))
    assert f(100) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
