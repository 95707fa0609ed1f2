"""Unit tests for fftd_course.losses (eq. 11-15, E3 and E11) and the NaN/inf training guard.

LPIPS tests use the random-trunk mode (lpips' pnet_rand) unless they write a VGG16-shaped file
themselves: they prove the wiring, loading and offline behaviour, not perceptual quality.
"""

import math
import socket
import urllib.request
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fftd_course import losses


@pytest.fixture(scope="module")
def random_lpips():
    with pytest.warns(losses.RandomTrunkWarning, match="RANDOM"):
        return losses.LPIPS(random_trunk=True)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME: the VGG16 file is certainly missing there."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection (whoever imported urlopen) fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def images(b=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g) * 2 - 1


# ---- LPIPS offline behaviour ---------------------------------------------------------------------

def test_vgg16_path_follows_torch_home(torch_home):
    assert losses.vgg16_weights_path() == torch_home / "hub" / "checkpoints" / "vgg16-397923af.pth"
    assert not losses.lpips_weights_available()


def test_missing_vgg16_gives_one_clear_error_and_no_download(torch_home, no_network):
    with pytest.raises(losses.LPIPSWeightsMissing) as err:
        losses.LPIPS()
    msg = str(err.value)
    assert str(losses.vgg16_weights_path()) in msg
    assert "torchvision.models.vgg16(weights='IMAGENET1K_V1')" in msg and losses.VGG16_URL in msg
    assert "random_trunk=True" in msg and "Nothing was downloaded" in msg
    with pytest.raises(losses.LPIPSWeightsMissing):  # HybridLoss builds the real LPIPS by default
        losses.HybridLoss(losses.NLayerDiscriminator(ndf=8, n_layers=1))


def _write_fake_vgg16(path, seed=0):
    """A file shaped like torchvision's VGG16 (only the `features` part LPIPS reads), random weights."""
    from torchvision.models import vgg

    torch.manual_seed(seed)
    features = vgg.make_layers(vgg.cfgs["D"])  # VGG16's convolutions, indexed as in torchvision's file
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_real_trunk_is_read_from_the_file_without_network(torch_home, no_network):
    state = _write_fake_vgg16(losses.vgg16_weights_path())
    with warnings.catch_warnings():
        warnings.simplefilter("error", losses.RandomTrunkWarning)  # the real mode must not warn
        lp = losses.LPIPS()
    assert not lp.random_trunk and "VGG16 ImageNet" in repr(lp)
    torch.testing.assert_close(getattr(lp.net.net.slice1, "0").weight, state["features.0.weight"])
    torch.testing.assert_close(getattr(lp.net.net.slice5, "28").bias, state["features.28.bias"])
    x = images()
    assert lp(x, x.flip(0)).shape == (2,)


def test_unreadable_or_wrong_vgg16_file_is_reported(torch_home):
    path = losses.vgg16_weights_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"truncated download")
    with pytest.raises(losses.LPIPSWeightsMissing, match="could not be read"):
        losses.LPIPS()
    torch.save({"something": torch.zeros(1)}, path)
    with pytest.raises(losses.LPIPSWeightsMissing, match="does not hold"):
        losses.LPIPS()


def test_random_trunk_is_flagged(random_lpips):
    assert random_lpips.random_trunk
    assert "RANDOM" in repr(random_lpips)
    hybrid = losses.HybridLoss(losses.NLayerDiscriminator(ndf=8, n_layers=1), random_lpips)
    assert hybrid.random_trunk and "RANDOM" in repr(hybrid)


# ---- LPIPS numerics (eq. 12) ---------------------------------------------------------------------

def _lpips_by_hand(lp: losses.LPIPS, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """eq. 12 written out: scale, VGG16 slices, unit-normalise channels, squared difference, 1x1 heads,
    spatial mean, sum over the five layers."""
    net = lp.net
    shift, scale = net.scaling_layer.shift, net.scaling_layer.scale
    fa, fb = (a - shift) / scale, (b - shift) / scale
    total = torch.zeros(a.shape[0])
    for slice_, lin in zip([net.net.slice1, net.net.slice2, net.net.slice3, net.net.slice4, net.net.slice5], net.lins):
        fa, fb = slice_(fa), slice_(fb)
        na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        w = lin.model[1].weight  # (1, C, 1, 1)
        total = total + F.conv2d((na - nb) ** 2, w).mean(dim=(1, 2, 3))
    return total


def test_lpips_matches_the_formula_and_is_a_distance(random_lpips):
    a, b = images(3, 32, 1), images(3, 32, 2)
    d = random_lpips(a, b)
    assert d.shape == (3,)
    torch.testing.assert_close(d, _lpips_by_hand(random_lpips, a, b), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(random_lpips(a, a), torch.zeros(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(random_lpips(b, a), d, atol=1e-6, rtol=1e-5)
    assert (d > 0).all()


def test_lpips_is_frozen_deterministic_and_passes_gradients(random_lpips):
    assert not any(p.requires_grad for p in random_lpips.parameters())
    random_lpips.train()
    assert not random_lpips.training and not random_lpips.net.training  # dropout in the heads stays off
    a, b = images(2, 32, 3), images(2, 32, 4)
    x_hat = a.clone().requires_grad_(True)
    d1 = random_lpips(x_hat, b)
    d1.sum().backward()
    assert x_hat.grad is not None and x_hat.grad.abs().sum() > 0
    torch.testing.assert_close(random_lpips(a, b), d1.detach())


def test_lpips_rejects_bad_inputs(random_lpips):
    x = images()
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        random_lpips(x * 127.5 + 127.5, x)
    with pytest.raises(ValueError, match="same shape"):
        random_lpips(x, x[:1])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        random_lpips(x[:, :1], x[:, :1])


def test_lpips_weights_stay_out_of_checkpoints_and_are_never_overwritten(random_lpips):
    hybrid = losses.HybridLoss(losses.NLayerDiscriminator(ndf=8, n_layers=1), random_lpips)
    keys = list(hybrid.state_dict())
    assert keys and all(k.startswith("discriminator.") for k in keys)
    before = getattr(random_lpips.net.net.slice1, "0").weight.clone()
    foreign = dict(hybrid.state_dict())
    foreign["perceptual.net.net.slice1.0.weight"] = torch.zeros_like(before)  # e.g. a taming checkpoint
    hybrid.load_state_dict(foreign)  # strict: LPIPS' keys are neither missing nor unexpected
    torch.testing.assert_close(getattr(random_lpips.net.net.slice1, "0").weight, before)


# ---- L1 (eq. 11) ---------------------------------------------------------------------------------

def test_l1_is_the_mean_absolute_error():
    a, b = images(2, 8, 5), images(2, 8, 6)
    expected = sum(abs(float(u) - float(v)) for u, v in zip(a.flatten(), b.flatten())) / a.numel()
    assert math.isclose(float(losses.l1_loss(a, b)), expected, rel_tol=1e-5)
    with pytest.raises(ValueError, match="same shape"):
        losses.l1_loss(a, b[:1])


# ---- discriminator -------------------------------------------------------------------------------

@pytest.mark.parametrize("n_layers, size, out", [(1, 32, 14), (2, 32, 6), (3, 64, 6), (3, 256, 30)])
def test_discriminator_output_shape(n_layers, size, out):
    d = losses.NLayerDiscriminator(ndf=8, n_layers=n_layers)
    assert d(torch.randn(2, 3, size, size)).shape == (2, 1, out, out)


@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_receptive_field_matches_the_gradient_support(n_layers):
    d = losses.NLayerDiscriminator(ndf=4, n_layers=n_layers, norm="none")  # a norm would couple all pixels
    x = torch.randn(1, 3, 128, 128, requires_grad=True)
    out = d(x)
    h, w = out.shape[-2:]
    out[0, 0, h // 2, w // 2].backward()
    support = x.grad.abs().sum(dim=(0, 1)) > 0
    rows, cols = support.any(1).nonzero(), support.any(0).nonzero()
    assert int(rows.max() - rows.min() + 1) == d.receptive_field == int(cols.max() - cols.min() + 1)
    assert losses.NLayerDiscriminator(n_layers=3).receptive_field == 70  # pix2pix's 70x70 PatchGAN


def test_discriminator_init_and_norm_choices():
    d = losses.NLayerDiscriminator(ndf=64, n_layers=3)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    weights = torch.cat([m.weight.detach().flatten() for m in convs])
    assert abs(float(weights.std()) - 0.02) < 0.002 and abs(float(weights.mean())) < 0.002
    assert sum(isinstance(m, nn.GroupNorm) for m in d.modules()) == 3  # GroupNorm by default
    assert all(m.bias is None for m in convs[1:-1])  # a norm follows: no redundant bias
    bn = losses.NLayerDiscriminator(ndf=8, norm="batch")
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == 3
    plain = losses.NLayerDiscriminator(ndf=8, norm="none")
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) for m in plain.modules())
    assert all(m.bias is not None for m in plain.modules() if isinstance(m, nn.Conv2d))


def test_groupnorm_discriminator_judges_each_image_on_its_own():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    for norm, independent in [("group", True), ("batch", False)]:
        d = losses.NLayerDiscriminator(ndf=8, n_layers=2, norm=norm).train()
        together, alone = d(x), torch.cat([d(x[i : i + 1]) for i in range(4)])
        assert torch.allclose(together, alone, atol=1e-5) == independent, norm


def test_discriminator_rejects_bad_config_and_small_images():
    with pytest.raises(ValueError, match="norm"):
        losses.NLayerDiscriminator(norm="instance")
    with pytest.raises(ValueError, match="at least 24 px"):
        losses.NLayerDiscriminator(ndf=8, n_layers=3)(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        losses.NLayerDiscriminator(ndf=8)(torch.randn(1, 1, 64, 64))


# ---- adversarial losses (eq. 13, 14) -------------------------------------------------------------

def test_generator_loss_is_minus_the_mean_logit():
    logits = torch.tensor([[0.5, -2.0], [3.0, 1.0]])
    assert float(losses.generator_loss(logits)) == pytest.approx(-0.625)


def test_hinge_loss_on_hand_computed_values():
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - real) = 0, 0.5, 2   -> mean 5/6
    fake = torch.tensor([-2.0, 0.0, 1.5])  # relu(1 + fake) = 0, 1, 2.5   -> mean 7/6
    assert float(losses.hinge_d_loss(real, fake)) == pytest.approx(0.5 * (2.5 / 3 + 3.5 / 3))


def test_hinge_loss_is_bounded_and_stops_pushing_past_the_margin():
    real = torch.tensor([1.5, 4.0], requires_grad=True)
    fake = torch.tensor([-1.2, -9.0], requires_grad=True)
    loss = losses.hinge_d_loss(real, fake)
    loss.backward()
    assert loss.item() == 0.0 and not real.grad.any() and not fake.grad.any()
    # Inside the margin the gradient is -1/(2N) on real logits and +1/(2N) on fake ones.
    real, fake = torch.zeros(4, requires_grad=True), torch.zeros(4, requires_grad=True)
    losses.hinge_d_loss(real, fake).backward()
    torch.testing.assert_close(real.grad, torch.full((4,), -0.125))
    torch.testing.assert_close(fake.grad, torch.full((4,), 0.125))


# ---- adaptive weight -----------------------------------------------------------------------------

def test_adaptive_weight_matches_the_analytic_gradient_norms():
    torch.manual_seed(0)
    w = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)  # the "last layer"
    x, t, c = (torch.randn(3, dtype=torch.float64), torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64))
    y = w @ x
    rec = 0.5 * ((y - t) ** 2).sum()  # d rec / dW = (y - t) x^T, norm ||y - t|| ||x||
    g = -(c * y).sum()                # d g / dW = -c x^T,        norm ||c|| ||x||
    got = losses.adaptive_weight(rec, g, w, disc_weight=0.75)
    r = (y - t).detach().norm() * x.norm()
    expected = 0.75 * r / (c.norm() * x.norm() + 1e-4)
    torch.testing.assert_close(got, expected)
    assert not got.requires_grad


def test_adaptive_weight_is_clamped_and_needs_a_trainable_layer():
    w = torch.ones(2, 2, requires_grad=True)
    y = w.sum()
    assert float(losses.adaptive_weight(1e6 * y, 0.0 * y, w)) == pytest.approx(1e4)  # zero adversarial gradient
    with pytest.raises(ValueError, match="last_layer"):
        losses.adaptive_weight(y, y, torch.ones(2, 2))


# ---- the NaN/inf guard ---------------------------------------------------------------------------

def test_check_finite_passes_finite_terms_and_names_the_first_bad_one():
    losses.check_finite({"a": torch.tensor(1.0), "b": 2.0}, step=3)
    with pytest.raises(losses.NonFiniteLossError) as err:
        losses.check_finite({"l1": torch.tensor(0.1), "lpips": torch.tensor(float("nan")), "total": torch.tensor(float("inf"))}, step=1234)
    assert err.value.step == 1234 and err.value.term == "lpips"
    assert "step 1234" in str(err.value) and "'lpips'" in str(err.value)
    with pytest.raises(losses.NonFiniteLossError, match="x_hat already held NaN"):
        losses.check_finite({"l1": float("nan")}, step=0, inputs={"x": torch.zeros(2), "x_hat": torch.tensor([0.0, float("nan")])})


# ---- HybridLoss (eq. 15) -------------------------------------------------------------------------

class CountingDiscriminator(losses.NLayerDiscriminator):
    calls = 0

    def forward(self, x):
        self.calls += 1
        return super().forward(x)


class TinyDecoder(nn.Module):
    """A stand-in decoder with a last layer, so the adaptive weight has something to differentiate."""

    def __init__(self):
        super().__init__()
        self.conv_out = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, z):
        return torch.tanh(self.conv_out(z))


def make_hybrid(random_lpips, **kwargs):
    torch.manual_seed(0)
    return losses.HybridLoss(CountingDiscriminator(ndf=8, n_layers=2), random_lpips, **kwargs)


def test_paper_weighting_sums_the_terms_of_eq15(random_lpips):
    hybrid = make_hybrid(random_lpips, weighting="paper", lambda_d=0.3, disc_start=0)
    x, x_hat, vq = images(2, 32, 7), images(2, 32, 8), torch.tensor(0.4)
    total, logs = hybrid(x, x_hat, step=10, vq_loss=vq)
    l1 = (x_hat - x).abs().mean()
    p = random_lpips(x_hat, x).mean()
    g = -hybrid.discriminator(x_hat).mean()
    torch.testing.assert_close(total, l1 + p + 0.3 * g + 0.7 * vq)
    assert hybrid.lambda_vq == pytest.approx(0.7)
    for key, value in [("l1", l1), ("lpips", p), ("g_loss", g), ("vq", vq), ("weight_g", 0.3), ("weight_vq", 0.7), ("disc_active", 1.0)]:
        assert float(logs[key]) == pytest.approx(float(torch.as_tensor(value).detach()), rel=1e-5), key
    assert set(logs) == {"l1", "lpips", "rec", "vq", "g_loss", "weight_g", "weight_vq", "disc_active", "total"}
    assert all(isinstance(v, torch.Tensor) and not v.requires_grad and v.ndim == 0 for v in logs.values())


def test_disc_start_gates_the_generator_term_and_the_discriminator(random_lpips):
    hybrid = make_hybrid(random_lpips, weighting="paper", lambda_d=0.5, disc_start=100)
    x, x_hat = images(2, 32, 9), images(2, 32, 10)
    total, logs = hybrid(x, x_hat, step=99)
    d_loss, d_logs = hybrid.discriminator_loss(x, x_hat, step=99)
    assert hybrid.discriminator.calls == 0 and d_loss is None  # not even run before the start (E11)
    assert float(logs["g_loss"]) == 0 and float(logs["weight_g"]) == 0 and float(logs["disc_active"]) == 0
    torch.testing.assert_close(total, logs["rec"] + 0.5 * logs["vq"])
    _, logs = hybrid(x, x_hat, step=100)
    d_loss, d_logs = hybrid.discriminator_loss(x, x_hat, step=100)
    assert float(logs["disc_active"]) == 1 and float(logs["weight_g"]) == 0.5 and d_loss is not None
    assert float(d_logs["disc_active"]) == 1 and not hybrid.discriminator_active(99) and hybrid.discriminator_active(100)


def test_generator_pass_leaves_the_discriminator_without_gradients(random_lpips):
    hybrid = make_hybrid(random_lpips, weighting="paper", perceptual_weight=0.0)
    x_hat = images(2, 32, 11).requires_grad_(True)
    total, _ = hybrid(images(2, 32, 12), x_hat, step=0)
    total.backward()
    assert x_hat.grad is not None
    assert all(p.grad is None and p.requires_grad for p in hybrid.discriminator.parameters())


def test_discriminator_loss_is_hinge_and_trains_only_the_discriminator(random_lpips):
    hybrid = make_hybrid(random_lpips)
    x, x_hat = images(2, 32, 13), images(2, 32, 14).requires_grad_(True)
    loss, logs = hybrid.discriminator_loss(x, x_hat, step=0)
    expected = losses.hinge_d_loss(hybrid.discriminator(x), hybrid.discriminator(x_hat.detach()))
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert x_hat.grad is None and all(p.grad is not None for p in hybrid.discriminator.parameters())
    assert set(logs) == {"d_loss", "logits_real", "logits_fake", "disc_active"}


def test_adaptive_weighting_uses_the_decoders_last_layer(random_lpips):
    hybrid = make_hybrid(random_lpips, weighting="adaptive", disc_weight=0.75, codebook_weight=1.0)
    decoder = TinyDecoder()
    x, z = images(2, 32, 15), torch.randn(2, 3, 32, 32)
    x_hat = decoder(z)
    total, logs = hybrid(x, x_hat, step=0, vq_loss=torch.tensor(0.2), last_layer=decoder.conv_out.weight)
    rec = (x_hat - x).abs().mean() + random_lpips(x_hat, x).mean()
    g = -hybrid.discriminator(x_hat).mean()
    weight = losses.adaptive_weight(rec, g, decoder.conv_out.weight, 0.75)
    torch.testing.assert_close(logs["weight_g"], weight)
    torch.testing.assert_close(total, rec + weight * g + 1.0 * 0.2)
    with pytest.raises(ValueError, match="last_layer"):
        hybrid(x, decoder(z), step=0)
    with torch.no_grad():  # evaluation: no gradients, so the adversarial term gets weight 0 (as in taming)
        _, logs = hybrid(x, decoder(z), step=0)
    assert float(logs["weight_g"]) == 0.0 and float(logs["g_loss"]) != 0.0


def test_nan_guard_names_the_step_and_the_term(random_lpips):
    hybrid = make_hybrid(random_lpips, weighting="paper")
    x, x_hat = images(2, 32, 16), images(2, 32, 17)
    bad = x_hat.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(losses.NonFiniteLossError) as err:
        hybrid(x, bad, step=4321)
    assert err.value.step == 4321 and err.value.term == "l1" and "x_hat" in str(err.value)
    with pytest.raises(losses.NonFiniteLossError) as err:
        hybrid(x, x_hat, step=7, vq_loss=torch.tensor(float("inf")))
    assert err.value.term == "vq" and "step 7" in str(err.value)
    with torch.no_grad():
        hybrid.discriminator.main[-1].bias.fill_(float("nan"))
    with pytest.raises(losses.NonFiniteLossError) as err:
        hybrid(x, x_hat, step=8)
    assert err.value.term == "g_loss"
    with pytest.raises(losses.NonFiniteLossError) as err:
        hybrid.discriminator_loss(x, x_hat, step=9)
    assert err.value.term == "logits_real" and err.value.step == 9
    quiet = make_hybrid(random_lpips, weighting="paper", check_finite=False)
    total, _ = quiet(x, bad, step=0)  # the guard can be switched off
    assert total.isnan()


def test_hybrid_loss_rejects_bad_configuration(random_lpips):
    d = losses.NLayerDiscriminator(ndf=8, n_layers=1)
    with pytest.raises(ValueError, match="weighting"):
        losses.HybridLoss(d, random_lpips, weighting="fixed")
    with pytest.raises(ValueError, match="lambda_d"):
        losses.HybridLoss(d, random_lpips, weighting="paper", lambda_d=1.5)
    with pytest.raises(ValueError, match="disc_start"):
        losses.HybridLoss(d, random_lpips, disc_start=-1)
    with pytest.raises(ValueError, match="same shape"):
        losses.HybridLoss(d, random_lpips)(images(2, 32), images(1, 32), step=0)


def test_without_perceptual_term_no_vgg16_is_needed(torch_home, no_network):
    hybrid = losses.HybridLoss(losses.NLayerDiscriminator(ndf=8, n_layers=1), perceptual_weight=0.0, weighting="paper")
    assert hybrid.perceptual is None and not hybrid.random_trunk
    _, logs = hybrid(images(1, 32), images(1, 32, 1), step=0)
    assert float(logs["lpips"]) == 0.0


def test_squared_error_reconstruction_for_table7s_ablation():
    HybridLoss, NLayerDiscriminator = losses.HybridLoss, losses.NLayerDiscriminator
    x, x_hat = torch.zeros(2, 3, 8, 8), torch.full((2, 3, 8, 8), 0.5)
    l2 = HybridLoss(NLayerDiscriminator(n_layers=1), perceptual_weight=0.0, disc_start=10**9, reconstruction="l2")
    l1 = HybridLoss(NLayerDiscriminator(n_layers=1), perceptual_weight=0.0, disc_start=10**9)
    assert float(l2(x, x_hat, 0)[1]["rec"]) == pytest.approx(0.25)
    assert float(l1(x, x_hat, 0)[1]["rec"]) == pytest.approx(0.5)
    assert float(l2(x, x_hat, 0)[1]["l1"]) == pytest.approx(0.5)  # the logged L1 stays the L1
    with pytest.raises(ValueError, match="reconstruction must be"):
        HybridLoss(NLayerDiscriminator(n_layers=1), perceptual_weight=0.0, reconstruction="l3")
