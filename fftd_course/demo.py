"""``make demo``: both stages trained on the toy faces on a CPU, sampled per class, and measured.

``python -m fftd_course.demo`` (``--help`` lists the options; the defaults are what the README promises):

1. renders the toy faces (:mod:`fftd_course.data`): a training set (seed 0) and a held-out set (seed 1);
2. trains stage 1, the IVQ-VAE ``toy-f8`` (32 px -> 4x4x4 latents, 256 codes), with L1 + ``L_vq``
   (Algorithm 1 without the discriminator and LPIPS, which a few CPU minutes cannot use) and a cosine
   learning-rate decay, and measures its held-out L1 and codebook usage;
3. encodes the training set once with the frozen stage 1 and scales the latents to unit variance
   (errata E16), then trains the class-conditional FFTD (3 classes, label dropout for guidance) with EMA
   (Algorithm 2);
4. trains the class judge (:mod:`fftd_course.judge`) on the training faces and their stage-1
   reconstructions;
5. samples every class with DDIM and classifier-free guidance (Algorithm 3, eq. 30), for the trained
   FFTD and for an untrained one (the baseline), and measures both: FID against held-out faces with the
   real Inception weights (:mod:`fftd_course.metrics`) and class accuracy by the judge;
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
import sys
import time
from pathlib import Path

import torch

from . import __version__, data, ivqvae, judge, losses, metrics, pipeline
from .diffusion import Diffusion

__all__ = ["build_parser", "main", "run"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fftd_course.demo",
        description="Train both stages (IVQ-VAE, FFTD) on the toy faces on a CPU, sample every class, measure the "
                    "samples (FID, class accuracy) beside an untrained FFTD, and write samples.png, "
                    "reconstructions.png and report.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("demo"), help="folder for the three output files")
    p.add_argument("--seed", type=int, default=0, help="seed of every training run and of the samples")
    g = p.add_argument_group("data")
    g.add_argument("--train-size", type=int, default=4096, help="training faces (seed 0)")
    g.add_argument("--heldout-size", type=int, default=300, help="held-out faces (seed 1): L1, judge accuracy, FID")
    g = p.add_argument_group("stage 1 (IVQ-VAE toy-f8)")
    g.add_argument("--stage1-steps", type=int, default=1500)
    g.add_argument("--stage1-batch", type=int, default=32)
    g.add_argument("--stage1-lr", type=float, default=2e-3, help="peak learning rate (cosine decay)")
    g = p.add_argument_group("stage 2 (FFTD)")
    g.add_argument("--fftd-config", default="toy", help="named FFTD configuration")
    g.add_argument("--fftd-steps", type=int, default=3000)
    g.add_argument("--fftd-batch", type=int, default=128)
    g.add_argument("--fftd-lr", type=float, default=1e-3, help="peak learning rate (cosine decay)")
    g.add_argument("--ema-decay", type=float, default=0.999)
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


def _run(args: argparse.Namespace, argv: list[str] | None, all_threads: int) -> dict:
    from .fftd import FFTD, get_config as fftd_config

    start = time.perf_counter()
    if args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    progress = not args.quiet
    torch.manual_seed(args.seed)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    classes = data.CLASSES
    seconds: dict[str, float] = {}

    def lap(name: str, t0: float) -> None:
        seconds[name] = round(time.perf_counter() - t0, 1)

    # 1. data
    x_train, y_train = data.make_toy_faces(args.train_size, 32, seed=args.seed)
    x_held, y_held = data.make_toy_faces(args.heldout_size, 32, seed=args.seed + 1)

    # 2. stage 1
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    stage1 = ivqvae.IVQVAE("toy-f8")
    stage1_loss = losses.HybridLoss(discriminator=losses.NLayerDiscriminator(ndf=8, n_layers=2),
                                    perceptual_weight=0.0, disc_start=10**9)
    schedule = pipeline.cosine_lr(args.stage1_steps, warmup_steps=min(100, args.stage1_steps // 10))
    h1 = pipeline.train_ivqvae(stage1, stage1_loss, x_train, args.stage1_steps, batch_size=args.stage1_batch,
                               lr=args.stage1_lr, seed=args.seed, progress=progress, lr_schedule=schedule)
    stage1.eval().requires_grad_(False)
    lap("stage1_training", t0)
    with torch.no_grad():
        rec_held = torch.cat([stage1(x)[0] for x in x_held.split(256)])
    held_l1 = float(metrics.l1_per_image(rec_held, x_held).mean())
    held_idx = torch.cat([stage1.snap(stage1.encode(x))[1] for x in x_held.split(256)])
    usage = metrics.codebook_usage(held_idx, stage1.config.num_codes)

    # 3. latents and the FFTD
    t0 = time.perf_counter()
    z_train = pipeline.encode_latents(stage1, x_train, progress=progress)
    scale = pipeline.latent_scale(z_train)
    lap("encoding", t0)
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    fcfg = fftd_config(args.fftd_config, num_classes=len(classes))
    fftd = FFTD(fcfg)
    untrained = FFTD(fcfg).eval()
    untrained.load_state_dict(fftd.state_dict())  # the same initial weights, never trained
    diffusion = Diffusion()
    h2, ema = pipeline.train_fftd(fftd, diffusion, z_train * scale, y_train, args.fftd_steps,
                                  batch_size=min(args.fftd_batch, len(z_train)), lr=args.fftd_lr,
                                  ema_decay=args.ema_decay, seed=args.seed, progress=progress,
                                  lr_schedule=pipeline.cosine_lr(args.fftd_steps, min(100, args.fftd_steps // 10)))
    lap("fftd_training", t0)
    generator = pipeline.LatentDiffusion(stage1, ema.model, diffusion, scale, classes)
    if args.save_weights is not None:
        # Measure exactly what is committed: save (float16 weights), load back, sample from the loaded copy.
        generator.save(args.save_weights, dtype=torch.float16)
        generator = pipeline.LatentDiffusion.load(args.save_weights)
        stage1 = generator.ivqvae
        with torch.no_grad():
            rec_held = torch.cat([stage1(x)[0] for x in x_held.split(256)])
        held_l1 = float(metrics.l1_per_image(rec_held, x_held).mean())
        held_idx = torch.cat([stage1.snap(stage1.encode(x))[1] for x in x_held.split(256)])
        usage = metrics.codebook_usage(held_idx, stage1.config.num_codes)
    baseline = pipeline.LatentDiffusion(stage1, untrained, diffusion, scale, classes)

    # 4. the judge, trained on real faces and their stage-1 reconstructions
    t0 = time.perf_counter()
    with torch.no_grad():
        rec_train = torch.cat([stage1(x)[0] for x in x_train.split(256)])
    the_judge, hj = judge.train_judge(x_train, y_train, steps=args.judge_steps, seed=args.seed,
                                      num_classes=len(classes), extra_images=rec_train, progress=progress)
    lap("judge_training", t0)
    acc_real = judge.accuracy(the_judge, x_held, y_held)
    acc_rec = judge.accuracy(the_judge, rec_held, y_held)

    # 5. samples of every class, trained and untrained
    labels = torch.arange(len(classes)).repeat_interleave(args.samples_per_class)
    sample_kw = dict(num_steps=args.num_steps, guidance_scale=args.guidance, seed=args.seed + 2)
    t0 = time.perf_counter()
    samples = generator.sample(labels, progress=progress, **sample_kw)
    sample_seconds = time.perf_counter() - t0
    lap("sampling", t0)
    base_samples = baseline.sample(labels, **sample_kw)
    acc_samples = judge.accuracy(the_judge, samples, labels)
    predicted = judge.predict(the_judge, samples)
    per_class = {name: round(float((predicted[labels == c] == c).float().mean()), 4) for c, name in enumerate(classes)}
    acc_base = judge.accuracy(the_judge, base_samples, labels)

    fid_note = None
    fid_values: dict[str, dict | None] = {"trained": None, "untrained": None, "reconstructions": None}
    if not args.no_fid:
        t0 = time.perf_counter()
        torch.set_num_threads(all_threads)  # large convolutions: every thread helps
        try:
            f_real = metrics.inception_features(x_held, progress=progress)
            for key, imgs in (("trained", samples), ("untrained", base_samples), ("reconstructions", rec_held)):
                r = metrics.fid_from_features(metrics.inception_features(imgs, progress=progress), f_real)
                fid_values[key] = {"value": round(r.value, 3), "n_generated": r.n_a, "n_real": r.n_b}
        except metrics.InceptionMissing as e:
            fid_note = str(e)
        lap("fid", t0)

    # 6. pictures and the report
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

    n_samples = len(labels)
    report = {
        "command": " ".join(["python -m fftd_course.demo", *(sys.argv[1:] if argv is None else argv)]),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "cpu_count": os.cpu_count(),
                    "torch_threads": {"training_and_sampling": args.threads, "fid": all_threads}, "device": "cpu"},
        "versions": {"fftd_course": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "stage1": {
            "config": "toy-f8", "steps": args.stage1_steps, "batch_size": args.stage1_batch, "lr": args.stage1_lr,
            "heldout_l1": {"value": round(held_l1, 5), "n": len(x_held)},
            "codebook_usage": {"distinct": usage.distinct, "of": usage.num_codes, "perplexity": round(usage.perplexity, 2),
                               "n_images": len(x_held)},
            "train_l1_curve": _curve(h1["l1"]),
        },
        "latents": {"shape": list(z_train.shape[1:]), "scale": round(scale, 5), "n": len(z_train)},
        "fftd": {
            "config": args.fftd_config, "parameters": sum(p.numel() for p in fftd.parameters()),
            "steps": args.fftd_steps, "batch_size": args.fftd_batch, "lr": args.fftd_lr, "ema_decay": args.ema_decay,
            "loss_first_50": round(_mean(h2["loss"][:50]), 5), "loss_last_50": round(_mean(h2["loss"][-50:]), 5),
            "loss_curve": _curve(h2["loss"]),
        },
        "judge": {
            "steps": args.judge_steps, "final_loss": round(_mean(hj[-50:]), 4),
            "accuracy_heldout_real": {"value": round(acc_real, 4), "n": len(x_held)},
            "accuracy_heldout_reconstructions": {"value": round(acc_rec, 4), "n": len(x_held)},
        },
        "sampling": {"num_steps": args.num_steps, "guidance_scale": args.guidance, "eta": 0.0,
                     "ms_per_image": round(1000 * sample_seconds / n_samples, 2), "n": n_samples},
        "samples": {
            "trained": {"class_accuracy": {"value": round(acc_samples, 4), "n": n_samples, "per_class": per_class},
                        "fid": fid_values["trained"]},
            "untrained": {"class_accuracy": {"value": round(acc_base, 4), "n": n_samples}, "fid": fid_values["untrained"]},
            "stage1_reconstructions": {"class_accuracy": {"value": round(acc_rec, 4), "n": len(x_held)},
                                       "fid": fid_values["reconstructions"]},
        },
        "fid_note": fid_note or "FID against the held-out faces, real Inception weights; small n biases FID upward",
        "seconds": seconds,
    }
    if args.save_weights is not None:
        path = Path(args.save_weights)
        report["weights"] = {"path": str(path), "bytes": path.stat().st_size, "dtype": "float16"}
    report["seconds"]["total"] = round(time.perf_counter() - start, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    if args.save_weights is not None:
        provenance = {k: report[k] for k in ("command", "settings", "machine", "versions", "seconds")}
        provenance["metrics"] = {k: report[k] for k in ("stage1", "latents", "fftd", "judge", "sampling", "samples")}
        provenance["note"] = "written by `make weights` (python -m fftd_course.demo --save-weights ...); timings on this machine"
        Path(args.save_weights).with_suffix(".json").write_text(json.dumps(provenance, indent=2) + "\n")
    return report


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
