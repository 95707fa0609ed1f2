"""fftd_course.evaluation.bench: the quick smoke bench on the CPU writes both files with every row (the CUDA graphs
path says why it is skipped); the report's logic."""

import json

import pytest
import torch

from fftd_course.evaluation import bench


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One bench on the CPU through the command line, shared by the tests: without CUDA the full bench falls back to
    the quick one (a few dozen seconds on a 2-core CPU)."""
    out = tmp_path_factory.mktemp("bench")
    report = bench.main(["--out", str(out), "--device", "cpu", "--quiet"])
    return out, report


def test_quick_bench_writes_json_and_markdown_with_every_row_for_each_path(quick):
    out, report = quick
    saved = json.loads((out / "bench.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(report["rows"]))
    assert saved["quick"] and saved["device"] == "cpu" and saved["torch"] == torch.__version__
    for key in ("device_name", "date", "cuda", "settings", "compile_mode", "targets", "seconds"):
        assert key in saved
    rows = saved["rows"]
    s = bench.SETTINGS["quick"]
    expected = {("ivqvae", 0, 8), ("fftd", 0, 8), ("sampling", 0, 8), *(("sampling", n, 8) for n in s.sample_steps)}
    larger = {("sampling", max(s.sample_steps), n) for n in s.sample_batches}  # the fast paths' extra batches
    assert larger and all(n > s.sample_batch for _, _, n in larger)
    for path in ("fp32 eager", "optimized"):
        mine = [r for r in rows if r["path"] == path]
        assert all(r["status"] == "ok" for r in mine), [r["status"] for r in mine]
        assert {(r["group"], r.get("steps", 0), r["batch"]) for r in mine} == (
            expected if path == "fp32 eager" else expected | larger)
        assert any(r.get("guidance") and r["model_batch"] == 2 * r["batch"] for r in mine)  # the guided row
        for r in mine:
            assert r["iters"] >= 1 and r["seconds"] > 0 and r["cuda_graphs"] is None
            assert (r.get("images_per_s") or r.get("ms_per_image")) > 0
            assert r["compiled"] == (path == "optimized")
            assert r["dtype"] == ("float32" if path == "fp32 eager" else "bfloat16 autocast")
    optimized = [r for r in rows if r["path"] == "optimized"]
    assert all(r["compile_backend"] == "eager" for r in optimized)  # on the CPU dynamo only, and the row says so
    assert rows[0]["lpips"] in ("random trunk (same cost)", "VGG16 ImageNet trunk")
    # The fp32 eager FFTD row counts what one training step dispatches; kernels are the non-view part.
    (eager_fftd,) = [r for r in rows if r["path"] == "fp32 eager" and r["group"] == "fftd"]
    assert 0 < eager_fftd["kernel_operators_per_iter"] < eager_fftd["operators_per_iter"]
    # CUDA graphs cannot run on a CPU: one row per group says so (none for the IVQ-VAE, which the path skips).
    graphs = [r for r in rows if r["path"] == "cuda graphs"]
    assert [r["group"] for r in graphs] == ["fftd", "sampling"]
    assert all(r["status"] == "skipped: CUDA graphs need a CUDA device" for r in graphs)
    assert graphs[0]["cuda_graphs"] == "torch.compile reduce-overhead"
    assert graphs[1]["cuda_graphs"] == "each DDIM step recorded and replayed"


def test_markdown_names_the_device_and_says_quick_is_no_benchmark(quick):
    out, report = quick
    text = (out / "bench.md").read_text()
    assert text.startswith(f"# fftd_course bench on {report['device_name']}")
    assert "NOT a benchmark" in text and "No CUDA device" in text
    for heading in ("## IVQ-VAE training", "## FFTD training", "## Sampling + decode"):
        assert heading in text
    assert "not judged here" in text
    assert "operators/iter" in text and "skipped: CUDA graphs need a CUDA device" in text


def fake_report(ivqvae=(20.0, 80.0), ms_500=1.5, fftd_img_s=25000.0):
    """A CUDA report with the rows the targets read, for the verdict logic."""
    def row(group, path, **fields):
        return {"group": group, "path": path, "name": group, "status": "ok", "batch": 256, **fields}

    rows = [row("ivqvae", "fp32 eager", images_per_s=ivqvae[0]), row("ivqvae", "optimized", images_per_s=ivqvae[1]),
            row("fftd", "optimized", images_per_s=fftd_img_s),
            row("sampling", "optimized", steps=500, guidance=False, ms_per_image=ms_500)]
    return {"device": "cuda", "device_name": "NVIDIA H100 80GB HBM3", "torch": "2.x", "cuda": "13.0",
            "fftd_course": "0", "date": "today", "quick": False, "note": None, "settings": {"name": "full"},
            "compile_mode": "default", "seconds": 1.0, "rows": rows}


def test_targets_met_and_not_met():
    good = fake_report()
    good["targets"] = bench._targets(good)
    assert [t["met"] for t in good["targets"]] == [True, True, True]
    text = bench.render_markdown(good)
    assert text.startswith("# fftd_course bench on NVIDIA H100 80GB HBM3") and text.count("**met**") == 3
    bad = fake_report(ivqvae=(30.0, 60.0), ms_500=2.5, fftd_img_s=5000.0)
    bad["targets"] = bench._targets(bad)
    assert [t["met"] for t in bad["targets"]] == [False, False, False]
    missing = fake_report()
    missing["rows"] = [r for r in missing["rows"] if r["group"] != "fftd"]
    missing["rows"][0]["status"] = "OOM at batch 16"
    missing["targets"] = bench._targets(missing)
    assert [t["met"] for t in missing["targets"]] == [None, True, None]
    assert "not measured" in bench.render_markdown(missing)


def test_targets_take_the_best_fast_path_and_batch_and_name_them():
    report = fake_report(ms_500=2.5, fftd_img_s=15000.0)  # the optimized path alone misses both
    graphs = {"status": "ok", "path": "cuda graphs"}
    report["rows"] += [
        {"group": "fftd", "name": "fftd", "batch": 256, "images_per_s": 24000.0, **graphs},
        {"group": "sampling", "name": "s", "batch": 1024, "steps": 500, "guidance": False, "ms_per_image": 0.9, **graphs},
        {"group": "sampling", "name": "s", "batch": 128, "steps": 500, "guidance": False, "ms_per_image": 0.1, **graphs},
        {"group": "sampling", "name": "s", "batch": 1024, "steps": 500, "guidance": True, "ms_per_image": 0.2, **graphs},
        {"group": "sampling", "name": "s", "batch": 1024, "steps": 500, "guidance": False, "ms_per_image": 0.05,
         "path": "fp32 eager", "status": "ok"},
        {"group": "sampling", "name": "s", "batch": 512, "steps": 500, "guidance": False, "ms_per_image": 0.01,
         "path": "cuda graphs", "status": "skipped: CUDA graphs need a CUDA device"},
    ]
    targets = {t["target"]: t for t in bench._targets(report)}
    # below batch 256, guided, fp32 eager and skipped rows do not count
    assert targets["sampling_500"]["value"] == 0.9 and targets["sampling_500"]["met"]
    assert targets["sampling_500"]["measured"] == "0.900 ms/img at batch 1024 (cuda graphs)"
    assert targets["fftd_throughput"]["value"] == 24000.0 and targets["fftd_throughput"]["met"]
    assert targets["fftd_throughput"]["measured"].endswith("(cuda graphs)")


def test_bad_rows_paths_and_modes_are_refused(capsys, tmp_path):
    with pytest.raises(ValueError, match="rows must name"):
        bench.run_bench("cpu", tmp_path, quick=True, rows="ivqvae,speed")
    with pytest.raises(ValueError, match="paths must name"):
        bench.run_bench("cpu", tmp_path, quick=True, paths="fast")
    with pytest.raises(ValueError, match="compile_mode"):
        bench.run_bench("cpu", tmp_path, quick=True, compile_mode="turbo")
    with pytest.raises(SystemExit):
        bench.main(["--rows", "nothing", "--out", str(tmp_path)])
    assert "rows must name" in capsys.readouterr().err
    assert [p.name for p in bench._parse_paths("optimized")] == ["optimized"]
    assert [p.name for p in bench._parse_paths(["fp32_eager"])] == ["fp32 eager"]
    assert [p.name for p in bench._parse_paths(bench.build_parser().parse_args([]).paths)] == [
        "fp32 eager", "optimized", "cuda graphs"]


def test_compile_mode_reaches_inductor_only_and_cuda_graphs_only_on_cuda():
    assert bench._compile_kwargs("eager", "reduce-overhead") == {"backend": "eager", "dynamic": False}
    assert bench._compile_kwargs("inductor", "default") == {"backend": "inductor", "dynamic": False}
    assert bench._compile_kwargs("inductor", "reduce-overhead")["mode"] == "reduce-overhead"
    graphs = bench.dataclasses.replace(bench.PATHS[1], compile_mode="reduce-overhead")
    assert bench._uses_cuda_graphs(graphs, torch.device("cuda"))
    assert not bench._uses_cuda_graphs(graphs, torch.device("cpu"))
    assert not bench._uses_cuda_graphs(bench.PATHS[1], torch.device("cuda"))
    assert bench._count_syncs(lambda: None, torch.device("cpu")) is None
    # The CUDA graphs path: its FFTD step compiles in reduce-overhead, whatever --compile-mode says.
    assert bench._fftd_path(bench.PATHS[2]).compile_mode == "reduce-overhead"
    assert bench._uses_cuda_graphs(bench._fftd_path(bench.PATHS[2]), torch.device("cuda"))
    assert bench._fftd_path(bench.PATHS[1]) is bench.PATHS[1]


def test_count_operators_counts_each_dispatch_and_kernels_leave_views_out():
    x = torch.ones(3, 4)
    counts = bench.count_operators(lambda: (x.view(4, 3).t() + 1).sum())
    assert counts["view"] == 1 and counts["t"] == 1 and counts["add"] == 1 and counts["sum"] == 1
    assert bench.kernel_operators(counts) == sum(counts.values()) - 2
