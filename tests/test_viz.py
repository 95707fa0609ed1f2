"""Pictures and the device helper: the functions run, draw what they say, and reject bad input."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import fftd_course  # noqa: E402
from fftd_course import data, viz  # noqa: E402


def test_to_unit_range_maps_and_clamps():
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0])
    torch.testing.assert_close(viz.to_unit_range(x), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))


def test_show_images_draws_a_grid_of_the_right_size():
    images = torch.rand(10, 3, 8, 8) * 2 - 1
    ax = viz.show_images(images, nrow=5, title="t")
    shown = ax.get_images()[0].get_array()
    assert shown.shape == (2 * 8 + 3, 5 * 8 + 6, 3)  # 1-pixel padding around and between images
    assert ax.get_title() == "t"
    plt.close("all")
    with pytest.raises(ValueError, match="B, 1 or 3"):
        viz.show_images(torch.rand(3, 8, 8))


def test_show_class_grid_has_one_labelled_row_per_class():
    images, labels = data.make_toy_faces(30, size=16)
    fig = viz.show_class_grid(images, labels, data.CLASSES, per_class=4)
    assert [ax.get_ylabel() for ax in fig.axes] == list(data.CLASSES)
    plt.close("all")


def test_explore_static_fallback_draws_requested_values(monkeypatch):
    monkeypatch.setenv("FFTD_STATIC_PLOTS", "1")
    seen = []
    viz.explore(lambda t: seen.append(t), "t", [1, 2, 3, 4, 5])
    assert seen == [1, 3, 5]
    seen.clear()
    viz.explore(lambda t: seen.append(t), "t", [1, 2, 3], static=[2])
    assert seen == [2]
    with pytest.raises(ValueError):
        viz.explore(lambda t: None, "t", [])


def test_explore_with_widgets_calls_once_with_the_default(monkeypatch):
    monkeypatch.delenv("FFTD_STATIC_PLOTS", raising=False)
    seen = []
    viz.explore(lambda t: seen.append(t), "t", [10, 20, 30], default=20)
    assert seen == [20]


def test_default_device(monkeypatch):
    monkeypatch.delenv("FFTD_DEVICE", raising=False)
    assert fftd_course.default_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv("FFTD_DEVICE", "cpu")
    assert fftd_course.default_device() == torch.device("cpu")
    if not torch.cuda.is_available():
        monkeypatch.setenv("FFTD_DEVICE", "cuda")
        with pytest.raises(RuntimeError, match="no GPU"):
            fftd_course.default_device()


class FakeGenerator:
    """What live_generator needs of a LatentDiffusion: class names and generate(...).images; records each call."""

    class_names = ("cat", "dog", "wild")

    def __init__(self):
        self.calls = []

    def generate(self, classes, num_steps, guidance_scale, seed):
        self.calls.append((tuple(classes), num_steps, guidance_scale, seed))
        return type("Result", (), {"images": torch.rand(len(classes), 3, 8, 8) * 2 - 1})()


def test_live_generator_static_draws_the_defaults_once(monkeypatch):
    monkeypatch.setenv("FFTD_STATIC_PLOTS", "1")
    fake = FakeGenerator()
    assert viz.live_generator(fake, n=3, default_steps=25, default_guidance=2.0) is None
    assert fake.calls == [(("cat",) * 3, 25, 2.0, 0)]
    with pytest.raises(ValueError, match="defaults"):
        viz.live_generator(fake, default_steps=30)
    plt.close("all")


def test_live_generator_sliders_redraw_with_their_values(monkeypatch):
    monkeypatch.delenv("FFTD_STATIC_PLOTS", raising=False)
    fake = FakeGenerator()
    widget = viz.live_generator(fake, n=2)
    names = [w._kwarg for w in widget.kwargs_widgets]
    assert names == ["class_name", "guidance_scale", "ddim_steps", "seed"]
    assert fake.calls == [(("cat", "cat"), 25, 2.0, 0)]          # drawn once with the defaults
    controls = dict(zip(names, widget.kwargs_widgets))
    controls["class_name"].value = "wild"
    controls["ddim_steps"].value = 50
    controls["guidance_scale"].value = 4.0
    controls["seed"].value = 7
    assert fake.calls[-1] == (("wild", "wild"), 50, 4.0, 7)
    assert len(fake.calls) == 5                                     # one redraw per change
    plt.close("all")


def test_live_generator_samples_the_committed_toy_generator(monkeypatch):
    from fftd_course import pipeline

    monkeypatch.delenv("FFTD_STATIC_PLOTS", raising=False)
    plt.close("all")
    widget = viz.live_generator(pipeline.load_toy(), n=2, steps=(2, 5), default_steps=2)
    assert widget.kwargs == {"class_name": "cat", "guidance_scale": 2.0, "ddim_steps": 2, "seed": 0}
    # Outside a kernel the drawn figure stays open (an exception in the callback would only be logged).
    title = plt.gcf().axes[0].get_title()
    assert title.startswith("cat, guidance 2, 2 DDIM steps, seed 0:\n2 samples in"), title
    plt.close("all")
