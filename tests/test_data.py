"""Unit tests for the toy animal faces (fftd_course.data)."""

import pytest
import torch

from fftd_course import data


def test_shapes_range_and_labels():
    x, y = data.make_toy_faces(60, size=32, seed=3)
    assert x.shape == (60, 3, 32, 32) and x.dtype == torch.float32
    assert y.shape == (60,) and y.dtype == torch.int64
    assert x.min() >= -1 and x.max() <= 1
    assert set(y.tolist()) == {0, 1, 2}


def test_deterministic_and_prefix_stable_and_seed_dependent():
    a, la = data.make_toy_faces(50, seed=7)
    b, lb = data.make_toy_faces(50, seed=7)
    c, lc = data.make_toy_faces(10, seed=7)
    d, _ = data.make_toy_faces(50, seed=8)
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert torch.equal(a[:10], c) and torch.equal(la[:10], lc)
    assert not torch.equal(a, d)


def test_chunking_does_not_change_images():
    x, _ = data.make_toy_faces(data._CHUNK + 5, size=16, seed=1)
    y, _ = data.make_toy_faces(5, size=16, seed=1)
    torch.testing.assert_close(x[:5], y)


def test_any_size_and_the_same_face_at_two_sizes():
    small, _ = data.make_toy_faces(4, size=32, seed=0)
    big, _ = data.make_toy_faces(4, size=64, seed=0)
    assert big.shape[-1] == 64
    down = torch.nn.functional.avg_pool2d(big, 2)
    assert (down - small).abs().mean() < 0.05  # anti-aliased rendering: 64 px averaged ~ 32 px


def test_classes_differ_visibly():
    x, y = data.make_toy_faces(600, size=32, seed=0)
    # Cats have pointy ears above the head: more non-background pixels in the top rows than dogs.
    means = torch.stack([x[y == c].mean(0) for c in range(3)])
    assert (means[0] - means[1]).abs().mean() > 0.02 and (means[1] - means[2]).abs().mean() > 0.02


def test_images_are_anti_aliased_not_binary():
    x, _ = data.make_toy_faces(20, size=32, seed=0)
    # Edge pixels blend colours: many distinct values, not a handful of flat fills.
    assert torch.unique(x[:, 0]).numel() > 1000


def test_class_subset():
    _, y = data.make_toy_faces(100, seed=0, classes=("dog", "wild"))
    assert set(y.tolist()) == {1, 2}
    with pytest.raises(ValueError, match="subset"):
        data.make_toy_faces(5, classes=("horse",))


def test_bad_arguments():
    with pytest.raises(ValueError, match="size"):
        data.make_toy_faces(2, size=4)
    with pytest.raises(ValueError, match="n must"):
        data.make_toy_faces(-1)


def test_dataset_wraps_the_draw_and_loads():
    ds = data.ToyFaces(n=40, size=16, seed=2)
    x, y = data.make_toy_faces(40, size=16, seed=2)
    assert len(ds) == 40
    img, lab = ds[5]
    assert torch.equal(img, x[5]) and lab == y[5]
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=8)))
    assert batch[0].shape == (8, 3, 16, 16)

