"""Images from any folder (fftd_course.data): ImageFolder, load_image, export_toy_faces, EpochSampler, make_loader."""

import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from fftd_course import data


def _save(img: Image.Image, path, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def _stripes(w, h, horizontal):
    """Three equal bands red / green / blue, along the width (horizontal) or the height."""
    a = np.zeros((h, w, 3), np.uint8)
    n = w if horizontal else h
    for k in range(3):
        band = slice(k * n // 3, (k + 1) * n // 3)
        if horizontal:
            a[:, band, k] = 255
        else:
            a[band, :, k] = 255
    return Image.fromarray(a)


GREEN = torch.tensor([-1.0, 1.0, -1.0]).view(3, 1, 1)


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    return data.export_toy_faces(tmp_path_factory.mktemp("toy") / "faces", 30, size=16, seed=1, progress=False)


# ---- layout ------------------------------------------------------------------------------------

def test_class_folders_give_labels_and_names(toy_root):
    ds = data.ImageFolder(toy_root, 16, progress=False)
    x, y = data.make_toy_faces(30, 16, seed=1)
    assert ds.class_names == data.CLASSES and ds.num_classes == 3 and len(ds) == 30 and ds.skipped == []
    assert ds.files == sorted(ds.files) and ds.labels.dtype == torch.int64
    drawn = torch.tensor([int(f.stem) for f in ds.files])  # file i holds drawn image i
    assert torch.equal(ds.labels, y[drawn])
    for k in (0, 17):
        image, label = ds[k]
        assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and label.dtype == torch.int64
        assert (image - x[drawn[k]]).abs().max() <= 1 / 127.5 + 1e-6  # PNG is lossless up to 8-bit rounding
    assert "images=30" in repr(ds) and "cat, dog, wild" in repr(ds) and "resolution=16" in repr(ds)


def test_export_refuses_a_folder_in_use(toy_root):
    with pytest.raises(FileExistsError, match="not an empty folder"):
        data.export_toy_faces(toy_root, 3, size=16, progress=False)


def test_unconditional_folder_hidden_files_and_upper_case_extensions(tmp_path):
    face = _stripes(12, 12, True)
    _save(face, tmp_path / "a.png")
    _save(face, tmp_path / "B.JPG", quality=95)
    _save(face, tmp_path / ".hidden.png")  # hidden files and folders are ignored
    _save(face, tmp_path / ".ipynb_checkpoints" / "c.png")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = data.ImageFolder(tmp_path, 12, progress=False)
    assert [f.name for f in ds.files] == ["B.JPG", "a.png"]
    assert ds.class_names == () and ds.num_classes == 0 and ds.labels.tolist() == [0, 0]
    assert "unconditional" in repr(ds)


def test_loose_images_next_to_class_folders_are_ignored_with_one_warning(tmp_path):
    img = _stripes(10, 10, True)
    for name in ("zebra/1.png", "ant/1.png", "ant/2.png", "loose1.png", "loose2.png"):
        _save(img, tmp_path / name)
    with pytest.warns(UserWarning, match="ignoring the 2 image") as record:
        ds = data.ImageFolder(tmp_path, 10, progress=False)
    assert len([w for w in record if "ignoring" in str(w.message)]) == 1
    assert ds.class_names == ("ant", "zebra") and ds.labels.tolist() == [0, 0, 1]


# ---- load_image: modes, transparency, crop ----------------------------------------------------------

def test_modes_become_rgb_and_transparency_becomes_white(tmp_path):
    res = 8
    gray = _save(Image.new("L", (res, res), 0), tmp_path / "gray.png")
    assert torch.equal(data.load_image(gray, res), torch.full((3, res, res), -1.0))

    rgba = np.zeros((res, res, 4), np.uint8)
    rgba[..., 0] = 255                 # red everywhere ...
    rgba[:, res // 2:, 3] = 255         # ... opaque on the right half, fully transparent on the left
    out = data.load_image(_save(Image.fromarray(rgba, "RGBA"), tmp_path / "rgba.png"), res)
    assert torch.equal(out[:, :, : res // 2], torch.ones(3, res, res // 2))
    assert torch.equal(out[:, :, res // 2:], torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1).expand(3, res, res // 2))

    pal = Image.new("P", (res, res), 1)
    pal.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 black, index 1 blue
    pal.paste(0, (0, 0, res, res // 2))                 # top half index 0, which is transparent
    out = data.load_image(_save(pal, tmp_path / "pal.gif", transparency=0), res)
    assert torch.equal(out[:, : res // 2], torch.ones(3, res // 2, res))
    assert torch.equal(out[:, res // 2:], torch.tensor([-1.0, -1.0, 1.0]).view(3, 1, 1).expand(3, res // 2, res))

    la = Image.new("LA", (res, res), (0, 0))  # black but fully transparent
    assert torch.equal(data.load_image(_save(la, tmp_path / "la.png"), res), torch.ones(3, res, res))

    cmyk = Image.new("CMYK", (res, res), (255, 0, 0, 0))  # pure cyan
    out = data.load_image(_save(cmyk, tmp_path / "cmyk.tif"), res)
    assert torch.equal(out, torch.tensor([-1.0, 1.0, 1.0]).view(3, 1, 1).expand(3, res, res))


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    a = np.zeros((8, 8), np.uint16)
    a[:, 4:] = 65535
    a[:4, :4] = 128 * 257  # 8-bit 128 in 16 bits (65535 = 255 * 257)
    img = Image.fromarray(a)
    assert img.mode.startswith("I")
    out = data.load_image(_save(img, tmp_path / "deep.png"), 8)
    assert torch.equal(out[:, :, 4:], torch.ones(3, 8, 4))
    assert torch.equal(out[:, 4:, :4], torch.full((3, 4, 4), -1.0))
    torch.testing.assert_close(out[:, :4, :4], torch.full((3, 4, 4), 128 / 127.5 - 1), atol=1e-6, rtol=0)


@pytest.mark.parametrize("w, h", [(16, 48), (48, 16)], ids=["tall", "wide"])
def test_centre_crop_of_tall_and_wide_images(tmp_path, w, h):
    path = _save(_stripes(w, h, horizontal=w > h), tmp_path / "s.png")
    assert torch.equal(data.load_image(path, 16), GREEN.expand(3, 16, 16))  # exactly the middle band
    small = data.load_image(path, 8)                                        # and resized
    assert torch.allclose(small[:, 2:6, 2:6], GREEN.expand(3, 4, 4), atol=0.02)
    assert small.min() >= -1 and small.max() <= 1


def test_bad_resolution():
    for bad in (4, 16.0, True, "64"):
        with pytest.raises(ValueError, match="resolution"):
            data.ImageFolder(".", bad)


# ---- broken files ------------------------------------------------------------------------------------

def _truncated(src, dst):
    raw = src.read_bytes()
    dst.write_bytes(raw[: len(raw) // 2])


@pytest.mark.parametrize("load_truncated", [False, True], ids=["pil-default", "someone-set-LOAD_TRUNCATED"])
def test_corrupt_and_truncated_files_are_skipped_with_warnings_that_name_them(tmp_path, monkeypatch, load_truncated):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", load_truncated)  # we must refuse truncated files anyway
    x, _ = data.make_toy_faces(3, 48, seed=0)
    pixels = ((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i in range(3):
        _save(Image.fromarray(pixels[i]), tmp_path / f"good{i}.png")
    full_png = _save(Image.fromarray(pixels[0]), tmp_path / "full.png")
    full_jpg = _save(Image.fromarray(pixels[1]), tmp_path / "full.jpg", quality=90)
    _truncated(full_png, tmp_path / "half.png")
    _truncated(full_jpg, tmp_path / "half.jpg")
    full_png.unlink(), full_jpg.unlink()
    (tmp_path / "x.png").write_bytes(np.random.default_rng(0).bytes(500))
    with pytest.warns(UserWarning) as record:  # the second case also checks in two worker processes
        ds = data.ImageFolder(tmp_path, 16, progress=False, num_workers=2 if load_truncated else 0)
    messages = " ".join(str(w.message) for w in record)
    for name in ("x.png", "half.png", "half.jpg"):
        assert re.search(rf"skipping '[^']*{re.escape(name)}'", messages), (name, messages)
    assert sorted(p.name for p, _ in ds.skipped) == ["half.jpg", "half.png", "x.png"]
    assert all(reason for _, reason in ds.skipped)
    assert [f.name for f in ds.files] == ["good0.png", "good1.png", "good2.png"]
    assert "skipped=3" in repr(ds)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is load_truncated  # the global flag is restored


def test_a_file_broken_after_the_scan_is_replaced_by_the_next_one(tmp_path):
    for i in range(3):
        _save(_stripes(8, 8, True), tmp_path / f"{i}.png")
    ds = data.ImageFolder(tmp_path, 8, progress=False)
    (tmp_path / "1.png").write_bytes(b"broken")
    with pytest.warns(UserWarning, match=r"1\.png"):
        image, _ = ds[1]
    assert torch.equal(image, ds[2][0]) and len(ds.skipped) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known bad: skipped silently the second time
        ds[1]
    with pytest.raises(IndexError):
        ds[3]


def test_hflip_flips_about_half(tmp_path):
    _save(_stripes(8, 8, True), tmp_path / "a.png")
    ds = data.ImageFolder(tmp_path, 8, hflip=True, progress=False)
    plain = data.load_image(ds.files[0], 8)
    torch.manual_seed(0)
    images = [ds[0][0] for _ in range(40)]
    flipped = [torch.equal(x, plain.flip(-1)) for x in images]
    assert 5 < sum(flipped) < 35
    assert all(f or torch.equal(x, plain) for f, x in zip(flipped, images))


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.ImageFolder(tmp_path / "nowhere", 16)
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        data.ImageFolder(tmp_path / "file.png", 16)
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "readme.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"no images in .*empty.*\.png, \.jpg"):
        data.ImageFolder(empty, 16)
    junk = tmp_path / "junk"
    junk.mkdir()
    for name in ("a.png", "b.jpg"):
        (junk / name).write_bytes(b"not an image")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="none of the 2 image files"):
        data.ImageFolder(junk, 16, progress=False)


# ---- data order ----------------------------------------------------------------------------------

def test_ranks_partition_an_epoch_and_epochs_differ():
    n, ws = 103, 4
    parts = [list(data.EpochSampler(n, seed=5, rank=r, world_size=ws)) for r in range(ws)]
    assert all(len(p) == n // ws for p in parts)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(5)).tolist()
    assert sorted(sum(parts, [])) == sorted(order[: n // ws * ws])  # disjoint, the tail dropped
    assert parts[1] == order[1: n // ws * ws: ws]
    s = data.EpochSampler(n, seed=5)
    first = list(s)
    s.set_position(1, 0)
    assert list(s) != first and sorted(s) == list(range(n))
    assert list(data.EpochSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]
    padded = [list(data.EpochSampler(10, rank=r, world_size=4, drop_last=False)) for r in range(4)]
    assert all(len(p) == 3 for p in padded) and set(sum(padded, [])) == set(range(10))


def test_resume_gives_the_same_remaining_sequence():
    n, ws, batch = 100, 2, 4
    whole = data.EpochSampler(n, seed=3, rank=1, world_size=ws)
    uninterrupted = []
    for epoch in range(3):
        whole.set_position(epoch, 0)
        uninterrupted += list(whole)
    # interrupted after 7 batches of epoch 1, restarted from the saved state in a new sampler
    first = data.EpochSampler(n, seed=3, rank=1, world_size=ws)
    seen = list(first)
    first.set_position(1, 0)
    seen += list(first)[: 7 * batch]
    first.set_position(1, 7 * batch)
    state = first.state_dict()
    assert state == {"epoch": 1, "index": 28, "seed": 3, "n": n, "world_size": ws}
    resumed = data.EpochSampler(n, seed=999, rank=1, world_size=ws)
    resumed.load_state_dict(state)
    assert len(resumed) == n // ws - 28
    seen += list(resumed)
    resumed.set_position(2, 0)
    seen += list(resumed)
    assert seen == uninterrupted


def test_mismatched_state_is_refused():
    state = data.EpochSampler(50, world_size=2).state_dict()
    with pytest.raises(ValueError, match="data folder changed"):
        data.EpochSampler(51, world_size=2).load_state_dict(state)
    with pytest.raises(ValueError, match="GPU"):
        data.EpochSampler(50, world_size=4).load_state_dict(state)
    with pytest.raises(ValueError, match="rank"):
        data.EpochSampler(50, rank=2, world_size=2)
    with pytest.raises(ValueError, match="past the end"):
        data.EpochSampler(50).set_position(0, 51)


def test_make_loader_yields_full_batches(toy_root):
    ds = data.ImageFolder(toy_root, 16, hflip=True, verify=False, progress=False)
    sampler = data.EpochSampler(len(ds), seed=0)
    loader = data.make_loader(ds, 8, sampler)
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    assert all(x.shape == (8, 3, 16, 16) and y.shape == (8,) and y.dtype == torch.int64 for x, y in batches)
    assert torch.equal(batches[0][1], ds.labels[list(sampler)[:8]])
    with pytest.raises(ValueError, match="larger than an epoch"):
        data.make_loader(ds, 31, sampler)
    with pytest.raises(ValueError, match="n=len"):
        data.make_loader(ds, 8, data.EpochSampler(29))


def test_worker_flips_repeat_for_the_same_epoch(toy_root):
    ds = data.ImageFolder(toy_root, 16, hflip=True, verify=False, progress=False)
    sampler = data.EpochSampler(len(ds), seed=0)
    loader = data.make_loader(ds, 10, sampler, num_workers=2)
    a = torch.cat([x for x, _ in loader])
    sampler.set_position(1, 0)
    b = torch.cat([x for x, _ in loader])
    sampler.set_position(0, 0)
    c = torch.cat([x for x, _ in loader])
    assert torch.equal(a, c) and not torch.equal(a, b)
