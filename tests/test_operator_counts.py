"""The FFTD launches few operators: counted on the CPU for the ``paper`` configuration (issue 19).

On a GPU the FFTD is launch-bound (16 tokens per image): every dispatched operator costs Python and driver time
whether or not its kernel has work to do (docs/BENCHMARKS.md). These tests count what one forward pass and one
training step dispatch (``bench.count_operators``) and fail when the counts grow past what the model needs today.

The limits: the counts measured when they were set (PyTorch 2.14.1, CPU), plus 3% for other PyTorch versions,
which decompose a few operators differently. Before the savings (batched adaLN, one LayerNorm per block, fused
multiply-adds, one concatenation per fusion, no detach per parameter in the EMA) the same counts were 541 per
forward and 2,096 per training step.
"""

import pytest
import torch

from fftd_course import fftd, pipeline
from fftd_course.diffusion import Diffusion
from fftd_course.evaluation.bench import count_operators, kernel_operators

MEASURED = {"forward": 475, "forward_kernels": 248, "train_step": 1788}
HEADROOM = 1.03


def limit(name):
    return int(MEASURED[name] * HEADROOM)


@pytest.fixture(scope="module")
def paper():
    torch.manual_seed(0)
    model = fftd.FFTD("paper")
    x = torch.randn(2, 4, 4, 4)
    return model, x, torch.tensor([3, 400]), torch.tensor([0, 1])


def test_a_forward_of_the_paper_fftd_dispatches_no_more_operators_than_it_needs(paper):
    model, x, t, y = paper
    model.eval()
    with torch.no_grad():
        counts = count_operators(lambda: model(x, t, y))
    total, kernels = sum(counts.values()), kernel_operators(counts)
    assert total <= limit("forward"), counts.most_common(20)
    assert kernels <= limit("forward_kernels"), counts.most_common(20)
    # the structure the savings rely on: one SiLU and one matrix product for the six adaLN modulations, one
    # LayerNorm per block (plus two per AdaptiveFusion and the final layer's)
    assert counts["silu"] == 2  # the timestep MLP's and the stacked modulation's
    assert counts["native_layer_norm"] == 5 + 2 * 7 + 1


def test_a_training_step_dispatches_no_more_operators_than_it_needs(paper):
    model, x, t, y = paper
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ema = pipeline.EMA(model)
    diffusion = Diffusion()
    step = lambda: pipeline.fftd_update(model, diffusion, optimizer, ema, [(x, y)])  # noqa: E731
    step()  # the optimizer's state is created on the first step
    counts = count_operators(step)
    assert sum(counts.values()) <= limit("train_step"), counts.most_common(20)
    assert counts["_fused_adamw_"] == 1 and counts["_foreach_lerp_"] == 1  # one optimizer and one EMA kernel call


def test_count_operators_counts_each_dispatch_and_tells_views_from_kernels():
    a = torch.randn(3, 4)
    counts = count_operators(lambda: (a.t() @ a).relu().view(-1))
    assert counts["relu"] == 1 and counts["t"] == 1 and counts["view"] == 1
    assert kernel_operators(counts) == sum(counts.values()) - 2
