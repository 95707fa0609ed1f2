"""The paper's tables as experiments: rows (what each (row, seed) measures), the paper's numbers, the claims.

Each :class:`Table` row is a function of a :class:`~.experiments.Lab` and a seed that returns a dict of
measures. The paper's values are copied from docs/PAPER.md (section 6; CelebA-HQ and AFHQ columns); a
toy-scale number is never equal to them, so a table is judged by its **claims**: "row A is better than row B
on measure M", which the paper's numbers make and ours confirm, contradict, or cannot separate (see
:func:`~.runner.verdict`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .experiments import Lab

__all__ = ["Table", "Row", "Claim", "TABLES"]


@dataclass(frozen=True)
class Row:
    id: str
    label: str
    measure: Callable[[Lab, int], dict[str, Any]]
    paper: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Claim:
    """``better`` beats ``worse`` on ``metric`` (lower is better unless ``higher``), as the paper's table says."""

    text: str
    better: str
    worse: str
    metric: str
    higher: bool = False


@dataclass(frozen=True)
class Table:
    number: int
    title: str
    rows: tuple[Row, ...]
    claims: tuple[Claim, ...]
    columns: tuple[str, ...]   # the measures the chapter and the README show, in order
    note: str = ""


def _generation(lab: Lab, stage1: str, variant: str, seed: int, steps: int | None = None,
                per_class: bool = False) -> dict[str, Any]:
    steps = steps or lab.recipe.ddim_steps
    generator, info = lab.fftd(stage1, variant, seed)
    s = lab.samples(f"fftd-{stage1}-{variant}-seed{seed}-ddim{steps}", generator, seed, steps)
    return {**lab.generation(s, per_class), "parameters": info["parameters"],
            "train_images_per_second": info["images_per_second"]}


def _baseline(lab: Lab, seed: int, steps: int, per_class: bool = False) -> dict[str, Any]:
    generator, info = lab.ddpm(seed)
    sampler = "ddpm" if steps == 1000 else "ddpm-respaced"
    s = lab.samples(f"ddpm-seed{seed}-{sampler}{steps}", generator, seed, steps, sampler)
    return {**lab.generation(s, per_class), "parameters": info["parameters"],
            "train_images_per_second": info["images_per_second"]}


def _ablation(lab: Lab, variant: str, seed: int) -> dict[str, Any]:
    rec = lab.reconstruction(variant, seed)
    gen = _generation(lab, variant, "default", seed)
    return {"l1": rec["l1"], "rfid": rec["fid"], "rkid": rec["kid"], "codes_used": rec["codes_used"],
            "fid": gen["fid"], "kid": gen["kid"], "kid_std": gen["kid_std"], "accuracy": gen["accuracy"],
            "n": gen["n"], "n_ref": gen["n_ref"], "stage1_parameters": rec["parameters"]}


def _recon(variant: str) -> Callable[[Lab, int], dict[str, Any]]:
    def measure(lab: Lab, seed: int) -> dict[str, Any]:
        r = lab.reconstruction(variant, seed)
        return {**{k: r[k] for k in ("l1", "lpips", "codes_used", "codes", "perplexity", "latent", "parameters",
                                     "train_seconds")}, "rfid": r["fid"], "rkid": r["kid"], "n": r["n"],
                "n_ref": r["n_ref"]}
    return measure


def _fftd(variant: str, steps: int | None = None, per_class: bool = False) -> Callable[[Lab, int], dict[str, Any]]:
    """A row that trains the FFTD ``variant`` per seed on the committed stage 1 (shared, as the paper's FFTD
    ablations share one autoencoder) and measures its samples."""
    return lambda lab, seed: _generation(lab, "committed", variant, seed, steps, per_class)


def _ddpm(steps: int, per_class: bool = False) -> Callable[[Lab, int], dict[str, Any]]:
    return lambda lab, seed: _baseline(lab, seed, steps, per_class)


def _paper(celeba: float | None, afhq: float | None, **more) -> dict[str, Any]:
    return {"fid_celebahq": celeba, "fid_afhq": afhq, **more}


T1 = Table(1, "Compression factor f: the IVQ-VAE's reconstructions (paper: CelebA-HQ 256 px, f = 32 / 64 / 128)", (
    Row("f4", "f = 4 (8x8 latent)", _recon("f4"), {"f": 32, "latent": "8x8", "l1": 0.068, "lpips": 0.157, "rfid": 48.67}),
    Row("f8", "f = 8 (4x4 latent)", _recon("f8"), {"f": 64, "latent": "4x4", "l1": 0.062, "lpips": 0.132, "rfid": 18.93}),
    Row("f16", "f = 16 (2x2 latent)", _recon("f16"), {"f": 128, "latent": "2x2", "note": "did not train"}),
), (Claim("a 4x4 latent reconstructs better than an 8x8 one (L1)", "f8", "f4", "l1"),
    Claim("a 4x4 latent reconstructs better than an 8x8 one (reconstruction KID)", "f8", "f4", "rkid")),
    ("l1", "rfid", "rkid", "codes_used", "perplexity"),
    "Rows are matched to the paper's by latent grid: our 32 px faces at f = 4 / 8 / 16 give the 8x8 / 4x4 / 2x2 "
    "grids of the paper's 256 px images at f = 32 / 64 / 128 (errata E7).")

T2 = Table(2, "FFTD patch size on the 4x4 latent (paper: CelebA-HQ)", (
    Row("p1", "patch 1x1 (16 tokens)", _fftd("default"), {"parameters_m": 14.98, "hours": 5.7, "fid_celebahq": 9.64}),
    Row("p2", "patch 2x2 (4 tokens)", _fftd("p2"), {"parameters_m": 13.73, "hours": 5.3, "fid_celebahq": 14.38}),
    Row("p4", "patch 4x4 (1 token)", _fftd("p4"), {"parameters_m": 12.76, "hours": 5.2, "fid_celebahq": 19.85}),
), (Claim("patch 1 generates better than patch 2 (KID)", "p1", "p2", "kid"),
    Claim("patch 2 generates better than patch 4 (KID)", "p2", "p4", "kid"),
    Claim("patch 1 trains slower than patch 4 (images/s)", "p4", "p1", "train_images_per_second", higher=True)),
    ("parameters", "train_images_per_second", "fid", "kid", "accuracy"))

T3 = Table(3, "Sampling steps: DDIM on one FFTD per seed, and the pixel-space DDPM baseline", (
    *(Row(f"ddim{n}", f"DDIM {n}", _fftd("default", n), _paper(*{50: (37.98, 59.84), 100: (16.83, 18.46),
                                                                   200: (14.37, 15.41), 500: (9.64, 10.25)}.get(n, (None, None)),
                                                               ms_per_image={50: 851, 100: 1140, 200: 1431,
                                                                             500: 4026}.get(n)))
      for n in (10, 20, 50, 100, 200, 500)),
    Row("ddpm1000", "DDPM baseline, 1000 steps", _ddpm(1000), _paper(14.96, 12.31, ms_per_image=10386)),
    Row("ddpm500", "DDPM baseline, 500 steps", _ddpm(500), _paper(18.55, 15.62)),
), (Claim("500 DDIM steps generate better than 50 (KID)", "ddim500", "ddim50", "kid"),
    Claim("500 DDIM steps generate better than 100 (KID)", "ddim500", "ddim100", "kid"),
    Claim("FFTD with 500 DDIM steps beats the 1000-step DDPM baseline (KID)", "ddim500", "ddpm1000", "kid")),
    ("fid", "kid", "accuracy", "ms_per_image"),
    "The paper's 500-step baseline trains a second model on an interpolated schedule; ours samples the same "
    "T = 1000 model on 500 respaced steps (DDIM with eta = 1, the ancestral sampler of the shorter chain).")

T4 = Table(4, "FFTD against the pixel-space DDPM baseline, overall and per class (paper: AFHQ)", (
    Row("baseline1000", "DDPM baseline, 1000 steps", _ddpm(1000, True),
        _paper(14.96, 12.31, dog=18.29, cat=8.15, wild=6.64)),
    Row("baseline500", "DDPM baseline, 500 steps", _ddpm(500, True), _paper(18.55, 15.62, dog=23.70, cat=13.45, wild=8.98)),
    Row("ours500", "FFTD, 500 DDIM steps", _fftd("default", 500, True), _paper(9.64, 10.25, dog=15.56, cat=7.38, wild=4.21)),
), (Claim("FFTD beats the 1000-step baseline (KID)", "ours500", "baseline1000", "kid"),
    Claim("FFTD beats the 500-step baseline (KID)", "ours500", "baseline500", "kid"),
    Claim("FFTD beats the 1000-step baseline on cats (KID)", "ours500", "baseline1000", "cat.kid"),
    Claim("FFTD beats the 1000-step baseline on dogs (KID)", "ours500", "baseline1000", "dog.kid"),
    Claim("FFTD beats the 1000-step baseline on wild animals (KID)", "ours500", "baseline1000", "wild.kid")),
    ("fid", "kid", "accuracy", "cat.kid", "dog.kid", "wild.kid"))

T7 = Table(7, "The IVQ-VAE ablation: each improvement switched off, and an FFTD trained on its latents", (
    Row("full", "attention + residual + hybrid loss", lambda lab, s: _ablation(lab, "f8", s), _paper(9.64, 10.25)),
    Row("no-attention", "without attention", lambda lab, s: _ablation(lab, "no-attention", s)),
    Row("no-residual", "without residual connections", lambda lab, s: _ablation(lab, "no-residual", s)),
    Row("no-hybrid", "without the hybrid loss (squared error)", lambda lab, s: _ablation(lab, "no-hybrid", s)),
), (Claim("attention helps generation (KID)", "full", "no-attention", "kid"),
    Claim("residual connections help generation (KID)", "full", "no-residual", "kid"),
    Claim("the hybrid loss helps generation (KID)", "full", "no-hybrid", "kid"),
    Claim("the hybrid loss helps reconstruction (L1)", "full", "no-hybrid", "l1")),
    ("l1", "rkid", "fid", "kid", "accuracy"),
    "The paper's rows keep one improvement at a time (97.26 / 68.31 / 36.57 on CelebA-HQ for attention / "
    "residual blocks / hybrid loss alone); ours switch one off at a time from the full model.")

T8 = Table(8, "The FFTD ablation: AdaptiveFusion and the multi-resolution hourglass", (
    Row("neither", "plain addition, flat", _fftd("add-flat"), _paper(64.96, 72.31)),
    Row("fusion-only", "AdaptiveFusion, flat", _fftd("adaptive-flat"), _paper(31.37, 43.21)),
    Row("multires-only", "plain addition, hourglass", _fftd("add"), _paper(24.52, 31.68)),
    Row("both", "AdaptiveFusion, hourglass", _fftd("default"), _paper(9.64, 10.25)),
), (Claim("both beat neither (KID)", "both", "neither", "kid"),
    Claim("both beat AdaptiveFusion alone (KID)", "both", "fusion-only", "kid"),
    Claim("both beat the hourglass alone (KID)", "both", "multires-only", "kid")),
    ("parameters", "fid", "kid", "accuracy"),
    "The paper's 'neither' row equals Table 9's 'Add' row to two decimals (errata E15).")

T9 = Table(9, "The kind of fusion (hourglass on)", (
    Row("add", "Add", _fftd("add"), _paper(64.96, 72.31, parameters_m=9.54, hours=3.8)),
    Row("concat", "Concat", _fftd("concat"), _paper(48.53, 54.12, parameters_m=11.49, hours=4.6)),
    Row("adaptive", "AdaptiveFusion", _fftd("default"), _paper(9.64, 10.25, parameters_m=14.98, hours=5.7)),
), (Claim("AdaptiveFusion beats Concat (KID)", "adaptive", "concat", "kid"),
    Claim("Concat beats Add (KID)", "concat", "add", "kid"),
    Claim("AdaptiveFusion beats Add (KID)", "adaptive", "add", "kid")),
    ("parameters", "train_images_per_second", "fid", "kid", "accuracy"))

TABLES: dict[int, Table] = {t.number: t for t in (T1, T2, T3, T4, T7, T8, T9)}
