"""fftd_course.setup_chapter / chapter_seconds: the one setup call of every chapter."""

import pytest
import torch

import fftd_course


def test_setup_chapter_seeds_sets_threads_and_starts_the_clock(capsys, monkeypatch):
    monkeypatch.setenv("FFTD_DEVICE", "cpu")
    before = torch.get_num_threads()
    try:
        device = fftd_course.setup_chapter(seed=3, threads=1)
        assert device == torch.device("cpu") and torch.get_num_threads() == 1
        a = torch.rand(2)
        fftd_course.setup_chapter(seed=3)
        assert torch.equal(a, torch.rand(2))
        assert "running on cpu" in capsys.readouterr().out
        assert 0 <= fftd_course.chapter_seconds() < 60
    finally:
        torch.set_num_threads(before)


def test_chapter_seconds_needs_setup(monkeypatch):
    monkeypatch.setattr(fftd_course, "_chapter_started", None)
    with pytest.raises(RuntimeError, match="setup_chapter"):
        fftd_course.chapter_seconds()
