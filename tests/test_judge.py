"""The class judge of make demo: blur augmentation, training, accuracy."""

import pytest
import torch

from fftd_course.evaluation import judge
from fftd_course.data import make_toy_faces


def test_random_blur_keeps_flat_images_and_smooths_edges():
    flat = torch.full((3, 3, 8, 8), 0.3)
    torch.testing.assert_close(judge.random_blur(flat), flat)
    x = make_toy_faces(4, size=32, seed=0)[0]
    g = torch.Generator().manual_seed(0)
    blurred = judge.random_blur(x, max_sigma=1.5, generator=g)
    assert blurred.shape == x.shape
    tv = lambda im: (im[..., 1:] - im[..., :-1]).abs().mean()  # noqa: E731
    assert tv(blurred) < tv(x)
    sharp = judge.random_blur(x, max_sigma=0.0)  # sigma ~ 1e-3: the identity
    torch.testing.assert_close(sharp, x)


def test_train_judge_learns_the_classes_quickly():
    x, y = make_toy_faces(192, size=32, seed=0)
    model, history = judge.train_judge(x, y, steps=40, batch_size=32, extra_images=x.flip(-1), progress=False)
    assert not model.training and len(history) == 40
    assert sum(history[-5:]) / 5 < sum(history[:5]) / 5
    assert judge.predict(model, x[:10]).shape == (10,)
    assert 0.0 <= judge.accuracy(model, x[:10], y[:10]) <= 1.0


def test_bad_inputs():
    x, y = make_toy_faces(8, size=32, seed=0)
    with pytest.raises(ValueError, match="labels"):
        judge.train_judge(x, y[:4], steps=1, progress=False)
    with pytest.raises(ValueError, match="extra_images"):
        judge.train_judge(x, y, steps=1, extra_images=x[:4], progress=False)
    with pytest.raises(ValueError, match="as many labels"):
        judge.accuracy(judge.ToyJudge(), x, y[:3])
