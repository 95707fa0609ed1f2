"""`python -m fftd_course.demo` (make demo): its options and a seconds-long smoke run writing all three files."""

import json

import pytest

from fftd_course import demo


def test_defaults_are_what_the_readme_promises():
    args = demo.build_parser().parse_args([])
    assert str(args.out) == "demo" and args.seed == 0
    assert args.stage1_steps == 1500 and args.stage1_lr == 2e-3
    assert args.num_steps == 50 and not args.no_fid and args.save_weights is None


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        demo.build_parser().parse_args(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in ("--stage1-steps", "--fftd-steps", "--samples-per-class", "--guidance", "--no-fid", "--save-weights"):
        assert option in text


def test_bad_options_are_refused(capsys):
    with pytest.raises(SystemExit):
        demo.build_parser().parse_args(["--fftd-steps", "many"])
    assert "invalid int value" in capsys.readouterr().err


def test_tiny_run_writes_samples_reconstructions_and_report(tmp_path, capsys):
    weights = tmp_path / "w" / "gen.pt"
    report = demo.main(["--out", str(tmp_path / "out"), "--train-size", "48", "--heldout-size", "12",
                        "--stage1-steps", "3", "--stage1-batch", "16", "--fftd-steps", "3", "--fftd-batch", "16",
                        "--judge-steps", "2", "--samples-per-class", "2", "--num-steps", "2", "--no-fid", "--quiet",
                        "--save-weights", str(weights)])
    out = tmp_path / "out"
    for name in ("samples.png", "reconstructions.png", "report.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    saved = json.loads((out / "report.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["samples"]["trained"]["class_accuracy"]["n"] == 6
    assert saved["samples"]["untrained"]["class_accuracy"]["n"] == 6
    assert saved["samples"]["trained"]["fid"] is None  # --no-fid
    assert 0.0 <= saved["stage1"]["heldout_l1"]["value"] and saved["stage1"]["heldout_l1"]["n"] == 12
    assert saved["sampling"]["ms_per_image"] > 0
    assert weights.is_file() and weights.with_suffix(".json").is_file()
    assert "samples.png" in capsys.readouterr().out
