"""Chapter 11 checks: the chapter's answers pass, plausible wrong answers fail (and raise in strict mode), stubs are
"not attempted"; the chapter's buggy FID comparison is what its check refuses."""

import math

import torch

from fftd_course import checks
from fftd_course.evaluation import metrics

from check_contract import chapter_function, contract_tests

CHAPTER = "11_reproducing_the_paper"
verdict_from_seeds = chapter_function(CHAPTER, "verdict_from_seeds", math=math)
kid_unbiased = chapter_function(CHAPTER, "kid_unbiased", torch=torch)
fair_fid_pair = chapter_function(CHAPTER, "fair_fid_pair", metrics=metrics, torch=torch)
compare_fid_buggy = chapter_function(CHAPTER, "compare_fid_buggy", metrics=metrics, torch=torch)


def _stats(xs):
    m = sum(xs) / len(xs)
    return m, sum((x - m) ** 2 for x in xs)


def verdict_population_std(better, worse, lower_is_better=True):  # divides by n, not n - 1
    (mb, sb), (mw, sw) = _stats(better), _stats(worse)
    gain = (mw - mb) if lower_is_better else (mb - mw)
    se = math.sqrt(sb / len(better) ** 2 + sw / len(worse) ** 2)
    return "inside the noise" if abs(gain) <= 2 * se else ("agrees" if gain > 0 else "disagrees")


def verdict_std_not_se(better, worse, lower_is_better=True):  # the seeds' spread instead of the mean's
    (mb, sb), (mw, sw) = _stats(better), _stats(worse)
    gain = (mw - mb) if lower_is_better else (mb - mw)
    se = math.sqrt(sb / (len(better) - 1) + sw / (len(worse) - 1))
    return "inside the noise" if abs(gain) <= 2 * se else ("agrees" if gain > 0 else "disagrees")


def verdict_ignores_direction(better, worse, lower_is_better=True):
    return verdict_from_seeds(better, worse, True)


def kid_biased(a, b):  # keeps the self-comparisons
    a, b = a.double(), b.double()
    d = a.shape[1]
    k = lambda x, y: (x @ y.T / d + 1) ** 3  # noqa: E731
    return float(k(a, a).mean() + k(b, b).mean() - 2 * k(a, b).mean())


def kid_square_sizes(a, b):  # divides both within-set sums by m (m - 1), right only for equal sizes
    a, b = a.double(), b.double()
    d, m = a.shape[1], len(a)
    k = lambda x, y: (x @ y.T / d + 1) ** 3  # noqa: E731
    kaa, kbb = k(a, a), k(b, b)
    return float((kaa.sum() - kaa.trace() + kbb.sum() - kbb.trace()) / (m * (m - 1)) - 2 * k(a, b).mean())


def fair_pair_drops_reference(a, b, ref):  # also cuts the reference to n
    n = min(len(a), len(b))
    return (metrics.fid_from_features(a[:n], ref[:n]).value, metrics.fid_from_features(b[:n], ref[:n]).value)


CASES = [
    (checks.check_verdict_from_seeds, verdict_from_seeds,
     [verdict_population_std, verdict_std_not_se, verdict_ignores_direction]),
    (checks.check_kid_unbiased, kid_unbiased, [kid_biased, kid_square_sizes]),
    (checks.check_fair_fid_pair, fair_fid_pair, [compare_fid_buggy, fair_pair_drops_reference]),
]
test_reference_passes_wrong_fails_stub_not_attempted, test_strict_mode_raises_on_every_wrong_answer = contract_tests(
    CASES)


def test_the_buggy_comparison_ranks_two_samples_of_one_distribution_by_their_size():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(400, 32, generator=g, dtype=torch.float64)
    big, small = (torch.randn(n, 32, generator=g, dtype=torch.float64) for n in (300, 60))
    buggy = compare_fid_buggy(big, small, ref)
    fair = fair_fid_pair(big, small, ref)
    assert buggy[0] < buggy[1] - 2         # the bigger set "wins" by a wide margin
    assert abs(fair[0] - fair[1]) < 0.5 * (buggy[1] - buggy[0])
