"""Run under ``torchrun --nproc_per_node 2`` (gloo, CPU) by tests/test_engine.py.

``grads OUT``: gradient accumulation under DDP (``no_sync`` on all but the last micro-batch) gives the gradients of
one big batch, with one round of all-reduces per step; rank 0 writes the comparison to OUT.
``nan OUT ARGS...``: ``python -m fftd_course ARGS`` with a NaN loss injected on rank 1 only at its third step; each
rank's error output goes to OUT/rank<R>.txt.
"""

import json
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks


def grads(out: str) -> None:
    from fftd_course.diffusion import Diffusion
    from fftd_course.fftd import FFTD, get_config
    from fftd_course.pipeline import fftd_update
    from fftd_course.training.distributed import no_sync

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = FFTD(get_config("toy", num_classes=0))
    reference = FFTD(get_config("toy", num_classes=0))
    reference.load_state_dict(model.state_dict())
    diffusion = Diffusion()
    data = torch.randn(2, 2, 3, 4, 4, 4, generator=torch.Generator().manual_seed(42))  # [rank][micro-batch]: 3 latents
    calls = []

    def counting(state, bucket):
        calls.append(1)
        return default_hooks.allreduce_hook(None, bucket)

    wrapped = torch.nn.parallel.DistributedDataParallel(model)
    wrapped.register_comm_hook(None, counting)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # a step that changes nothing: the gradients stay readable
    two = [(data[rank, 0], None), (data[rank, 1], None)]

    def all_reduces(batches, sync_context) -> int:
        before = len(calls)
        fftd_update(model, diffusion, opt, None, batches, forward=wrapped,
                    generator=torch.Generator().manual_seed(rank), no_sync=sync_context)
        return len(calls) - before

    all_reduces(two[:1], None)  # DDP's first step also rebuilds its buckets: count from the second on
    one_micro_batch = all_reduces(two[:1], None)
    without_no_sync = all_reduces(two, None)
    accumulated = all_reduces(two, no_sync(wrapped))
    got = [p.grad.clone() for p in model.parameters()]
    if rank == 0:  # the big batch in one process: every rank's micro-batches with that rank's noise
        reference.train()
        for r in range(2):
            g = torch.Generator().manual_seed(r)
            for i in range(2):
                (diffusion.loss(reference, data[r, i], None, generator=g) / 4).backward()
        diff = max(float((a - p.grad).abs().max()) for a, p in zip(got, reference.parameters()))
        scale = max(float(p.grad.abs().max()) for p in reference.parameters())
        with open(out, "w") as f:
            json.dump({"max_diff": diff, "max_grad": scale, "allreduce_calls_accumulated": accumulated,
                       "allreduce_calls_one_micro_batch": one_micro_batch,
                       "allreduce_calls_without_no_sync": without_no_sync}, f)
    dist.destroy_process_group()


def nan(out: str, args: list[str]) -> int:
    """Each rank writes what it printed on stderr to OUT/rank<R>.txt, and both have written before either exits
    (torchrun stops the other processes as soon as one fails)."""
    import contextlib
    import io
    from pathlib import Path

    from fftd_course.cli import main
    from fftd_course.training.stages import base as stage_base

    real, count = stage_base.fftd_update, [0]

    def poisoned(*a, **k):
        loss = real(*a, **k)
        count[0] += 1
        return loss * float("nan") if os.environ["RANK"] == "1" and count[0] == 3 else loss

    stage_base.fftd_update = poisoned  # the diffusion stages step through stages/base.DenoiserStage
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(args)
    Path(out, f"rank{os.environ['RANK']}.txt").write_text(err.getvalue())
    if dist.is_initialized():
        dist.barrier()
    return code


if __name__ == "__main__":
    if sys.argv[1] == "grads":
        grads(sys.argv[2])
    else:
        sys.exit(nan(sys.argv[2], sys.argv[3:]))
