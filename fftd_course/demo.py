"""``make demo``: both stages trained on the toy faces on a CPU, sampled per class, and measured.

``python -m fftd_course.demo`` (``--help`` lists the options; the defaults are what the README promises):

1. renders the toy faces (:mod:`fftd_course.data`): a training set (seed 0) and a held-out set (seed 1);
2. trains stage 1 through the training engine (:mod:`fftd_course.training`) with the ``toy32`` preset: the
   IVQ-VAE ``toy-f8`` (32 px -> 4x4x4 latents, 256 codes) with L1 + ``L_vq`` (Algorithm 1 without the
   discriminator and LPIPS, which a few CPU minutes cannot use) and a cosine learning-rate decay, and
   measures its held-out L1 and codebook usage; the run folder is ``demo/runs/ivqvae``;
3. trains stage 2 the same way (``toy32``, ``demo/runs/fftd``): the engine encodes the training set once
   with the frozen stage 1, scales the latents to unit variance (errata E16) and trains the
   class-conditional FFTD (3 classes, label dropout for guidance) with EMA (Algorithm 2);
4. trains the class judge (:mod:`fftd_course.evaluation.judge`) on the training faces and their stage-1
   reconstructions;
5. samples every class with DDIM and classifier-free guidance (Algorithm 3, eq. 30), for the trained
   FFTD and for an untrained one (the baseline), and measures both: FID against held-out faces with the
   real Inception weights (:mod:`fftd_course.evaluation.metrics`) and class accuracy by the judge;
6. writes ``demo/samples.png``, ``demo/reconstructions.png`` and ``demo/report.json`` and prints where
   they are. ``--save-weights PATH`` also saves the generator (``LatentDiffusion.save``) and a provenance
   file beside it: ``make weights`` writes the toy checkpoint committed with the package this way.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from . import __version__, data, pipeline, training
from .evaluation import judge, metrics

__all__ = ["build_parser", "main", "run"]


def build_parser() -> argparse.ArgumentParser:
    """The demo's options; the training defaults are the ``toy32`` preset's (one recipe for the demo and the CLI)."""
    s1, s2 = training.get_preset("toy32", "ivqvae"), training.get_preset("toy32", "fftd")
    p = argparse.ArgumentParser(
        prog="python -m fftd_course.demo",
        description="Train both stages (IVQ-VAE, FFTD) on the toy faces on a CPU with the trainer's toy32 preset, "
                    "sample every class, measure the samples (FID, class accuracy) beside an untrained FFTD, and "
                    "write samples.png, reconstructions.png and report.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("demo"), help="folder for the three output files (and runs/)")
    p.add_argument("--seed", type=int, default=0, help="seed of every training run and of the samples")
    g = p.add_argument_group("data")
    g.add_argument("--train-size", type=int, default=s1.toy_images, help="training faces (seed --seed)")
    g.add_argument("--heldout-size", type=int, default=300, help="held-out faces (seed --seed + 1): L1, judge, FID")
    g = p.add_argument_group(f"stage 1 (IVQ-VAE {s1.model}; preset toy32)")
    g.add_argument("--stage1-steps", type=int, default=s1.steps)
    g.add_argument("--stage1-batch", type=int, default=s1.batch_size)
    g.add_argument("--stage1-lr", type=float, default=s1.lr, help="peak learning rate (cosine decay)")
    g = p.add_argument_group("stage 2 (FFTD; preset toy32)")
    g.add_argument("--fftd-config", default=s2.model, help="named FFTD configuration")
    g.add_argument("--fftd-steps", type=int, default=s2.steps)
    g.add_argument("--fftd-batch", type=int, default=s2.batch_size)
    g.add_argument("--fftd-lr", type=float, default=s2.lr, help="peak learning rate (cosine decay)")
    g.add_argument("--ema-decay", type=float, default=s2.ema_decay)
    g = p.add_argument_group("judge")
    g.add_argument("--judge-steps", type=int, default=400)
    g = p.add_argument_group("sampling and measures")
    g.add_argument("--samples-per-class", type=int, default=100, help="samples of each class (trained and untrained)")
    g.add_argument("--num-steps", type=int, default=50, help="DDIM steps")
    g.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (1 = none)")
    g.add_argument("--no-fid", action="store_true", help="skip FID (e.g. without the Inception weights)")
    g = p.add_argument_group("weights")
    g.add_argument("--save-weights", type=Path, default=None,
                   help="also save the generator here (LatentDiffusion.save, float16 weights) with a provenance .json "
                        "beside it; the samples and measures then come from the saved file")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for training and sampling: the toy models' tensors are tiny, one thread runs them "
                        "fastest, and a second thread that spins while waiting makes them many times slower on a busy "
                        "machine. FID's Inception network always uses PyTorch's default thread count")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _mean(values: list[float]) -> float:
    return float(sum(values) / max(len(values), 1))


def _curve(values: list[float], points: int = 20) -> list[float]:
    """The history as ``points`` means of equal chunks (a short loss curve for the report)."""
    k = max(1, math.ceil(len(values) / points))
    return [round(_mean(values[i:i + k]), 5) for i in range(0, len(values), k)]


def _save_grid(path: Path, rows: list[torch.Tensor], names: list[str], title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    from .viz import show_images

    ncol = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), 1, figsize=(0.6 * ncol + 1.0, 0.65 * len(rows) + 0.5), squeeze=False)
    for ax, images, name in zip(axes[:, 0], rows, names):
        show_images(images, nrow=ncol, ax=ax)
        ax.set_axis_on()
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center")
        for spine in ax.spines.values():
            spine.set_visible(False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args: argparse.Namespace, argv: list[str] | None = None) -> dict:
    """Everything :func:`main` does, with parsed arguments; returns the report (also written to disk).

    ``argv``: the command-line arguments, recorded in the report (default ``sys.argv[1:]``).
    """
    all_threads = torch.get_num_threads()
    try:
        return _run(args, argv, all_threads)
    finally:
        torch.set_num_threads(all_threads)  # a caller (a test, a notebook) gets its thread count back


def _train_stages(args: argparse.Namespace, out: Path, progress: bool) -> tuple[pipeline.LatentDiffusion, dict]:
    """Both stages through the training engine with the toy32 preset (changed only by the demo's options);
    returns the generator (loaded from the engine's file) and what the report needs of the runs."""
    runs = out / "runs"
    shutil.rmtree(runs, ignore_errors=True)  # the demo's own runs, redone each time (demo/ is rewritten)
    common = dict(seed=args.seed, device="cpu", log_every=10, sample_every=0, ckpt_every=0)
    s1 = training.get_preset("toy32", "ivqvae").replace(
        out=str(runs / "ivqvae"), steps=args.stage1_steps, batch_size=args.stage1_batch, lr=args.stage1_lr,
        warmup_steps=min(100, args.stage1_steps // 10), toy_images=args.train_size, data_seed=args.seed, **common)
    r1 = training.train(s1, resume=False, progress=progress)
    s2 = training.get_preset("toy32", "fftd").replace(
        out=str(runs / "fftd"), stage1=str(r1.out), model=args.fftd_config, steps=args.fftd_steps,
        batch_size=min(args.fftd_batch, args.train_size), lr=args.fftd_lr, ema_decay=args.ema_decay,
        warmup_steps=min(100, args.fftd_steps // 10), **common)
    r2 = training.train(s2, resume=False, progress=progress)
    runs_info = {"stage1": {"config": s1, "history": r1.history, "seconds": r1.seconds},
                 "fftd": {"config": s2, "history": r2.history, "seconds": r2.seconds}}
    return pipeline.LatentDiffusion.load(r2.final), runs_info


def _stage1_measures(stage1, x_held: torch.Tensor) -> tuple[torch.Tensor, float, metrics.CodebookUsage]:
    """Held-out reconstructions, their L1 and the codebook usage of their codes."""
    with torch.no_grad():
        rec_held = torch.cat([stage1(x)[0] for x in x_held.split(256)])
        held_idx = torch.cat([stage1.snap(stage1.encode(x))[1] for x in x_held.split(256)])
    held_l1 = float(metrics.l1_per_image(rec_held, x_held).mean())
    return rec_held, held_l1, metrics.codebook_usage(held_idx, stage1.config.num_codes)


def _fid_values(samples, base_samples, rec_held, x_held, progress: bool, threads: int) -> tuple[dict, str | None]:
    """FID of the trained and untrained samples and of the reconstructions against the held-out faces."""
    values: dict[str, dict | None] = {"trained": None, "untrained": None, "reconstructions": None}
    torch.set_num_threads(threads)  # large convolutions: every thread helps
    try:
        f_real = metrics.inception_features(x_held, progress=progress)
        for key, imgs in (("trained", samples), ("untrained", base_samples), ("reconstructions", rec_held)):
            r = metrics.fid_from_features(metrics.inception_features(imgs, progress=progress), f_real)
            values[key] = {"value": round(r.value, 3), "n_generated": r.n_a, "n_real": r.n_b}
    except metrics.InceptionMissing as e:
        return values, str(e)
    return values, None


def _run(args: argparse.Namespace, argv: list[str] | None, all_threads: int) -> dict:
    from .fftd import FFTD

    start = time.perf_counter()
    if args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    progress, out, classes = not args.quiet, args.out, data.CLASSES
    out.mkdir(parents=True, exist_ok=True)
    x_train, y_train = data.make_toy_faces(args.train_size, 32, seed=args.seed)
    x_held, y_held = data.make_toy_faces(args.heldout_size, 32, seed=args.seed + 1)
    generator, runs = _train_stages(args, out, progress)
    seconds = {"stage1_training": round(runs["stage1"]["seconds"], 1),
               "fftd_training": round(runs["fftd"]["seconds"], 1)}  # stage 2 includes encoding the latents
    if args.save_weights is not None:  # measure exactly what is committed: float16 weights, loaded back
        generator.save(args.save_weights, dtype=torch.float16)
        generator = pipeline.LatentDiffusion.load(args.save_weights)
    stage1 = generator.ivqvae
    rec_held, held_l1, usage = _stage1_measures(stage1, x_held)
    torch.manual_seed(args.seed)  # the engine's FFTD started from these weights: the untrained baseline
    baseline = pipeline.LatentDiffusion(stage1, FFTD(generator.fftd.config).eval(), generator.diffusion,
                                        generator.scale, classes)

    t0 = time.perf_counter()
    with torch.no_grad():
        rec_train = torch.cat([stage1(x)[0] for x in x_train.split(256)])
    the_judge, hj = judge.train_judge(x_train, y_train, steps=args.judge_steps, seed=args.seed,
                                      num_classes=len(classes), extra_images=rec_train, progress=progress)
    seconds["judge_training"] = round(time.perf_counter() - t0, 1)

    labels = torch.arange(len(classes)).repeat_interleave(args.samples_per_class)
    sample_kw = dict(num_steps=args.num_steps, guidance_scale=args.guidance, seed=args.seed + 2)
    t0 = time.perf_counter()
    samples = generator.sample(labels, progress=progress, **sample_kw)
    sample_seconds = time.perf_counter() - t0
    seconds["sampling"] = round(sample_seconds, 1)
    base_samples = baseline.sample(labels, **sample_kw)
    predicted = judge.predict(the_judge, samples)
    measures = {
        "acc_real": judge.accuracy(the_judge, x_held, y_held), "acc_rec": judge.accuracy(the_judge, rec_held, y_held),
        "acc_samples": judge.accuracy(the_judge, samples, labels), "acc_base": judge.accuracy(the_judge, base_samples, labels),
        "per_class": {name: round(float((predicted[labels == c] == c).float().mean()), 4) for c, name in enumerate(classes)},
        "held_l1": held_l1, "usage": usage, "judge_history": hj, "ms_per_image": 1000 * sample_seconds / len(labels)}
    fid_values, fid_note = {"trained": None, "untrained": None, "reconstructions": None}, None
    if not args.no_fid:
        t0 = time.perf_counter()
        fid_values, fid_note = _fid_values(samples, base_samples, rec_held, x_held, progress, all_threads)
        seconds["fid"] = round(time.perf_counter() - t0, 1)
    _pictures(out, args, samples, labels, x_held, y_held, rec_held, held_l1)
    report = _report(args, argv, all_threads, generator, runs, measures, fid_values, fid_note, len(x_held), seconds)
    report["seconds"]["total"] = round(time.perf_counter() - start, 1)
    _write(report, out, args)
    return report


def _pictures(out: Path, args, samples, labels, x_held, y_held, rec_held, held_l1: float) -> None:
    classes = data.CLASSES
    per_row = min(10, args.samples_per_class)
    _save_grid(out / "samples.png", [samples[labels == c][:per_row] for c in range(len(classes))], list(classes),
               f"FFTD samples per class ({args.num_steps} DDIM steps, guidance {args.guidance})")
    recon_rows, recon_names = [], []
    for c, name in enumerate(classes):
        pick = (y_held == c).nonzero().flatten()[:per_row]
        recon_rows += [x_held[pick], rec_held[pick]]
        recon_names += [f"{name}\nheld-out", f"{name}\nstage 1"]
    _save_grid(out / "reconstructions.png", recon_rows, recon_names,
               f"held-out faces and their IVQ-VAE toy-f8 reconstructions (held-out L1 {held_l1:.3f})")


def _report(args, argv, all_threads: int, generator, runs: dict, m: dict, fid_values: dict, fid_note: str | None,
            n_held: int, seconds: dict) -> dict:
    s1, s2 = runs["stage1"]["config"], runs["fftd"]["config"]
    l1_curve = [h["l1"] for h in runs["stage1"]["history"]]
    loss_log = [h["loss"] for h in runs["fftd"]["history"]]  # one mean per 10 steps (log_every=10)
    n_samples, usage = args.samples_per_class * len(data.CLASSES), m["usage"]
    fftd_c = generator.fftd.config
    return {
        "command": " ".join(["python -m fftd_course.demo", *(sys.argv[1:] if argv is None else argv)]),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "cpu_count": os.cpu_count(),
                    "torch_threads": {"training_and_sampling": args.threads, "fid": all_threads}, "device": "cpu"},
        "versions": {"fftd_course": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "stage1": {
            "config": s1.model, "preset": "toy32", "steps": s1.steps, "batch_size": s1.batch_size, "lr": s1.lr,
            "heldout_l1": {"value": round(m["held_l1"], 5), "n": n_held},
            "codebook_usage": {"distinct": usage.distinct, "of": usage.num_codes, "perplexity": round(usage.perplexity, 2),
                               "n_images": n_held},
            "train_l1_curve": _curve(l1_curve),
        },
        "latents": {"shape": [fftd_c.in_channels, fftd_c.input_size, fftd_c.input_size],
                    "scale": round(generator.scale, 5), "n": args.train_size},
        "fftd": {
            "config": s2.model, "preset": "toy32", "parameters": sum(p.numel() for p in generator.fftd.parameters()),
            "steps": s2.steps, "batch_size": s2.batch_size, "lr": s2.lr, "ema_decay": s2.ema_decay,
            "loss_first_50": round(_mean(loss_log[:5]), 5), "loss_last_50": round(_mean(loss_log[-5:]), 5),
            "loss_curve": _curve(loss_log),
        },
        "judge": {
            "steps": args.judge_steps, "final_loss": round(_mean(m["judge_history"][-50:]), 4),
            "accuracy_heldout_real": {"value": round(m["acc_real"], 4), "n": n_held},
            "accuracy_heldout_reconstructions": {"value": round(m["acc_rec"], 4), "n": n_held},
        },
        "sampling": {"num_steps": args.num_steps, "guidance_scale": args.guidance, "eta": 0.0,
                     "ms_per_image": round(m["ms_per_image"], 2), "n": n_samples},
        "samples": {
            "trained": {"class_accuracy": {"value": round(m["acc_samples"], 4), "n": n_samples,
                                           "per_class": m["per_class"]}, "fid": fid_values["trained"]},
            "untrained": {"class_accuracy": {"value": round(m["acc_base"], 4), "n": n_samples},
                          "fid": fid_values["untrained"]},
            "stage1_reconstructions": {"class_accuracy": {"value": round(m["acc_rec"], 4), "n": n_held},
                                       "fid": fid_values["reconstructions"]},
        },
        "fid_note": fid_note or "FID against the held-out faces, real Inception weights; small n biases FID upward",
        "seconds": dict(seconds),
    }


def _write(report: dict, out: Path, args) -> None:
    """report.json, and with --save-weights the provenance file beside the weights."""
    if args.save_weights is not None:
        path = Path(args.save_weights)
        report["weights"] = {"path": str(path), "bytes": path.stat().st_size, "dtype": "float16"}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    if args.save_weights is not None:
        provenance = {k: report[k] for k in ("command", "settings", "machine", "versions", "seconds")}
        provenance["metrics"] = {k: report[k] for k in ("stage1", "latents", "fftd", "judge", "sampling", "samples")}
        provenance["note"] = "written by `make weights` (python -m fftd_course.demo --save-weights ...); timings on this machine"
        Path(args.save_weights).with_suffix(".json").write_text(json.dumps(provenance, indent=2) + "\n")


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    report = run(args, argv)
    s = report["samples"]

    def fid_text(entry: dict | None) -> str:
        return "not measured" if entry is None else f"{entry['value']:.1f} (n={entry['n_generated']} vs {entry['n_real']})"

    print(f"\nstage 1 held-out L1 {report['stage1']['heldout_l1']['value']:.4f}; "
          f"codes used {report['stage1']['codebook_usage']['distinct']}/{report['stage1']['codebook_usage']['of']}")
    print(f"judge accuracy: held-out faces {report['judge']['accuracy_heldout_real']['value']:.1%}, their stage-1 "
          f"reconstructions {report['judge']['accuracy_heldout_reconstructions']['value']:.1%}")
    print(f"samples: class accuracy {s['trained']['class_accuracy']['value']:.1%} (untrained FFTD "
          f"{s['untrained']['class_accuracy']['value']:.1%}), FID {fid_text(s['trained']['fid'])} "
          f"(untrained FFTD {fid_text(s['untrained']['fid'])})")
    print(f"sampling {report['sampling']['ms_per_image']:.1f} ms per image; total {report['seconds']['total']:.0f} s")
    out = Path(report["settings"]["out"])
    print(f"wrote {out / 'samples.png'}, {out / 'reconstructions.png'} and {out / 'report.json'}")
    if "weights" in report:
        print(f"saved the generator to {report['weights']['path']} ({report['weights']['bytes'] / 1e6:.2f} MB)")
    return report


if __name__ == "__main__":
    main()
