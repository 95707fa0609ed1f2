"""Several processes (``torchrun``): who is who, and the few collective operations the engine needs.

Under DDP every rank runs the same loop. Rank 0 writes logs, images and checkpoints; every rank reads its
own share of each epoch (:class:`~fftd_course.data.EpochSampler`). Gradients of the wrapped model are
all-reduced by DDP on the last micro-batch of a step only (:func:`no_sync` for the others); the logged
losses and the non-finite check are reduced over the ranks (:func:`reduce_window`), so every rank logs the
global mean and every rank stops on the same step with the same message.
"""

from __future__ import annotations

import contextlib
import os
import random
import warnings
from dataclasses import dataclass
from typing import Any, Callable, ContextManager

import torch
import torch.distributed as dist
from torch import nn

from .config import TrainConfig, resolve_device

__all__ = ["Dist", "init_distributed", "gather", "ddp", "unwrap", "average_gradients", "checksum", "rng_state",
           "set_rng_state", "no_sync", "all_reduce"]


@dataclass
class Dist:
    """This process's place: ``rank`` of ``world`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def on(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.on:
            dist.barrier()


def init_distributed(config: TrainConfig) -> tuple[Dist, torch.device]:
    """One process, or the process group ``torchrun`` describes (NCCL on GPUs, gloo on CPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), resolve_device(config.device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = config.device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world, local), torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(int(v) for v in state["python"]), None))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def gather(obj: Any, d: Dist) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` in one process)."""
    if not d.on:
        return [obj]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def all_reduce(t: torch.Tensor, d: Dist, op: str = "sum") -> torch.Tensor:
    """``t`` reduced over the ranks in place ("sum", "min" or "max"); unchanged in one process."""
    if d.on:
        dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op])
    return t


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside a compiled and/or DDP wrapper."""
    module = getattr(module, "_orig_mod", module)
    return getattr(module, "module", module)


def no_sync(forward: Callable) -> Callable[[], ContextManager]:
    """A context factory for gradient accumulation: DDP's ``no_sync`` of ``forward``'s wrapper, or a no-op.

    Under it the backward of a micro-batch keeps its gradients local; the last micro-batch of a step runs
    without it, and DDP all-reduces the accumulated gradients once.
    """
    wrapper = getattr(forward, "_orig_mod", forward)
    if isinstance(wrapper, nn.parallel.DistributedDataParallel):
        return wrapper.no_sync
    return contextlib.nullcontext


def average_gradients(module: nn.Module) -> None:
    """All-reduce (mean) the gradients of ``module`` over the ranks, as DDP does for wrapped modules."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if grads:
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        for g, v in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(v.view_as(g))


def ddp(module: nn.Module, device: torch.device, rank_local_buffers: bool = False) -> nn.Module:
    """``DistributedDataParallel`` on ``device``; ``rank_local_buffers``: each rank keeps its own buffers (the
    quantizer's usage counts and recent encoder outputs, summed or broadcast by the quantizer itself)."""
    kwargs: dict[str, Any] = {}
    if rank_local_buffers:
        kwargs["broadcast_buffers"] = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # newer PyTorch renames broadcast_buffers; same meaning here
        return nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None, **kwargs)


def checksum(module: nn.Module) -> float:
    """The sum of every parameter (float64): equal on every rank, and not finite once a weight is not."""
    return float(sum(p.detach().double().sum() for p in module.parameters()))
