"""Checks for chapter 11 (reproducing the paper: error bars, KID, a fair FID comparison).

The references are written here, privately, from the definitions (not imported from the package): the checks
run in well under a second on random numbers and random feature sets, fresh every call.
"""

from __future__ import annotations

import math
import random
from typing import Callable

import torch

from ..evaluation import metrics
from .core import Bugs, CheckFailure, CheckResult, fresh_seed, run_check, yours

__all__ = ["check_verdict_from_seeds", "check_kid_unbiased", "check_fair_fid_pair"]

VERDICTS = ("agrees", "disagrees", "inside the noise")


# ---- exercise 1: does a table agree with the paper? ------------------------------------------------------------

def _verdict_cases(rng: random.Random) -> list[tuple[list[float], list[float], bool]]:
    cases = [([1.0, 1.2, 1.1], [2.0, 2.1, 1.9], True),      # clearly agrees
             ([2.0, 2.1, 1.9], [1.0, 1.2, 1.1], True),      # clearly disagrees
             ([0.9, 1.0, 1.1], [1.0, 1.1, 1.2], True),      # inside the noise
             ([1.0, 1.1, 1.2], [1.22, 1.32, 1.42], True),   # agrees: the means' spread, not the seeds', decides
             ([0.9, 0.95, 1.0], [0.5, 0.6, 0.55], False),   # higher is better: agrees
             # decided with the sample std (n - 1), inside the noise with the population std (n): and the reverse
             ([1.0, 1.3, 1.6], [1.45, 1.75, 2.05], True),
             ([1.0, 1.2, 1.4, 1.6], [1.34, 1.54, 1.74, 1.94], True),
             ([1.0, 1.1], [1.25, 1.4, 1.3, 1.35, 1.28], True)]  # unequal seed counts
    for _ in range(6):
        n, m = rng.randint(2, 6), rng.randint(2, 6)
        mu, shift, spread = rng.uniform(0.5, 2), rng.uniform(-0.5, 0.5), rng.uniform(0.02, 0.3)
        cases.append(([rng.gauss(mu, spread) for _ in range(n)], [rng.gauss(mu + shift, spread) for _ in range(m)],
                      rng.random() < 0.7))
    return cases


def check_verdict_from_seeds(fn: Callable[[list[float], list[float], bool], str]) -> CheckResult:
    """``fn(better, worse, lower_is_better)``: the verdict on "better beats worse" from per-seed values."""

    def verdict(better: list[float], worse: list[float], lower_is_better: bool) -> str:  # the hidden reference
        def var(xs: list[float]) -> float:
            m = sum(xs) / len(xs)
            return sum((x - m) ** 2 for x in xs) / (len(xs) - 1)

        gain = sum(worse) / len(worse) - sum(better) / len(better)
        gain = gain if lower_is_better else -gain
        se = math.sqrt(var(better) / len(better) + var(worse) / len(worse))
        return VERDICTS[2] if abs(gain) <= 2 * se else VERDICTS[0 if gain > 0 else 1]

    fn = yours(fn)

    def trial() -> None:
        for better, worse, lower in _verdict_cases(random.Random(fresh_seed())):
            want, got = verdict(better, worse, lower), fn(list(better), list(worse), lower)
            if got not in VERDICTS:
                raise CheckFailure(f"return one of {VERDICTS}, got {got!r}")
            if got != want:
                shown = ", ".join(f"{x:.3f}" for x in better), ", ".join(f"{x:.3f}" for x in worse)
                raise CheckFailure(f"better = [{shown[0]}], worse = [{shown[1]}], lower_is_better={lower}: you say "
                                   f"{got!r}, it is {want!r}")

    return run_check("verdict_from_seeds", trial,
                     hint="which spread does a handful of seeds estimate without bias, and how does the spread of "
                          "one mean shrink with the number of seeds? The two means are independent: how do their "
                          "variances combine in their difference?",
                     forbid=["fftd_course.reproduction.runner.verdict"])


# ---- exercise 2: KID from its definition -------------------------------------------------------------------------

def check_kid_unbiased(fn: Callable[[torch.Tensor, torch.Tensor], float]) -> CheckResult:
    """``fn(features_a, features_b)``: unbiased MMD^2 with the cubic kernel over the whole sets, a float."""

    def kid(a: torch.Tensor, b: torch.Tensor) -> float:  # the hidden reference
        a, b = a.double(), b.double()
        d = a.shape[1]

        def k(x, y):
            return (x @ y.T / d + 1) ** 3

        m, n = len(a), len(b)
        kaa, kbb = k(a, a), k(b, b)
        return float((kaa.sum() - kaa.trace()) / (m * (m - 1)) + (kbb.sum() - kbb.trace()) / (n * (n - 1))
                     - 2 * k(a, b).mean())

    fn = yours(fn)

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        for m, n, d, shift in ((5, 5, 8, 0.0), (7, 12, 16, 0.3), (30, 9, 64, 1.0), (4, 40, 2048, 0.1)):
            a = torch.randn(m, d, generator=g, dtype=torch.float64)
            b = torch.randn(n, d, generator=g, dtype=torch.float64) + shift
            want, got = kid(a, b), fn(a.clone(), b.clone())
            if not isinstance(got, (float, int)) and not (isinstance(got, torch.Tensor) and got.numel() == 1):
                raise CheckFailure(f"return a number (a float), got {type(got).__name__}")
            if not math.isclose(float(got), want, rel_tol=1e-6, abs_tol=1e-9):
                raise CheckFailure(f"{m} vs {n} features of width {d}: you return {float(got):.6g}, the unbiased "
                                   f"estimate is {want:.6g}")

    return run_check("kid_unbiased", trial,
                     hint="write the three kernel matrices first. Which of their entries compare an image with "
                          "itself, and what does averaging those in do to the estimate? Mind sets of different sizes.",
                     forbid=["fftd_course.evaluation.metrics.kid_from_features",
                             "fftd_course.evaluation.metrics._unbiased_mmd2"])


# ---- exercise 3: find the bug in an FID comparison ---------------------------------------------------------------

def check_fair_fid_pair(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[float, float]]) -> CheckResult:
    """``fn(features_a, features_b, reference)``: the FIDs of two models computed so that they can be compared
    (a find-the-bug exercise with one bug)."""
    fn = yours(fn)

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        for n_a, n_b in ((60, 20), (15, 45), (30, 30)):
            ref = torch.randn(80, 24, generator=g, dtype=torch.float64)
            a = torch.randn(n_a, 24, generator=g, dtype=torch.float64) * 1.1
            b = torch.randn(n_b, 24, generator=g, dtype=torch.float64) + 0.05
            m = min(n_a, n_b)
            want = (metrics.fid_from_features(a[:m], ref).value, metrics.fid_from_features(b[:m], ref).value)
            got = fn(a.clone(), b.clone(), ref.clone())
            if not (isinstance(got, tuple) and len(got) == 2):
                raise CheckFailure(f"return a pair (fid_a, fid_b) of numbers, got {got!r}")
            if not all(math.isclose(float(x), w, rel_tol=1e-6) for x, w in zip(got, want)):
                raise CheckFailure(f"{n_a} samples of model A, {n_b} of model B: you return ({float(got[0]):.4g}, "
                                   f"{float(got[1]):.4g}); a fair pair is ({want[0]:.4g}, {want[1]:.4g})")

    return run_check("fair_fid_pair", trial, bugs=Bugs(1, nudges=(
        "run the colleague's function on two sets drawn from the SAME distribution but of different sizes: "
        "which one wins, and why?",
        "FID is estimated from samples, and its bias depends on how many there are: what must the two models "
        "have in common for their FIDs to be compared?",
        "which samples may you keep of each model, and may you touch the reference?")),
        # the package's own FID/KID of a sample set (which leaves the sample counts to its caller)
        forbid=["fftd_course.reproduction.experiments.Lab.distance"])
