"""Throughput on the current device: training and sampling speed of both stages, plain and optimized.

``python -m fftd_course.evaluation.bench`` (also ``python -m fftd_course bench``; ``--help`` lists the options;
``docs/BENCHMARKS.md`` explains every row) writes ``bench/bench.json`` and ``bench/bench.md``. Three groups of
rows (``--rows ivqvae,fftd,sampling``):

* **ivqvae**: stage-1 training images/s (Algorithm 1) with the full hybrid loss of eq. 15: L1, LPIPS, the
  adversarial term with the adaptive weight, and the discriminator's step (``disc_start=0``), on the paper's
  ``paper-f64`` IVQ-VAE at 256 px (4x4x4 latents, 16384 codes). One iteration is :func:`pipeline.ivqvae_update`,
  the function the trainer calls.
* **fftd**: stage-2 training images/s (Algorithm 2) of the ``paper`` FFTD on 4x4x4 latents at batch 256: one
  :func:`pipeline.fftd_update` (eq. 27, AdamW, EMA).
* **sampling**: milliseconds per 256 px image for 50, 100, 200 and 500 DDIM steps (eq. 29, Algorithm 3) including
  the snap to the codebook (eq. 30) and the decoder, classifier-free guidance **off** (one model call per
  step); one row with guidance **on** at 500 steps (the conditional and unconditional calls batched together:
  the model sees twice the batch); one row that only snaps and decodes.

Each along three paths (``--paths``): **fp32 eager** (float32, no TF32, no compilation, the optimizers' default
``foreach`` kernels), **optimized** (bf16 autocast, ``torch.compile`` with static shapes in the default mode
or ``--compile-mode`` for the FFTD and sampling rows, fused Adam/AdamW, TF32 matmuls and convolutions, cuDNN
autotuning) and **cuda graphs** (as optimized, with the FFTD training step compiled in mode ``reduce-overhead`` and
every DDIM step, model call and update, recorded once as a CUDA graph and replayed: ``DDIMSampler.sample(...,
cuda_graph=True)``; CUDA only, and not for the compute-bound IVQ-VAE). The fast paths also time the 500-step row
at larger batches (``sample_batches``: 512 and 1024). The fp32 eager FFTD row counts the ATen operators one
training step dispatches (``operators_per_iter``, :func:`count_operators`). The models have random weights and
the data are one fixed random batch on the device: the rows measure compute, not data loading or a trained model. LPIPS uses the real VGG16 trunk when its file is on the
machine, else a random trunk of the same network (the same arithmetic); the JSON says which.

Timing: warm-up iterations first (compilation happens there and is reported as ``compile_s``), then one
more iteration with CUDA's sync debug mode on, which counts the host-device synchronisations per iteration
(``syncs_per_iter``; 0 means the GPU never waits for Python), then the timed iterations between two
``torch.cuda.synchronize()`` calls (:class:`fftd_course.timing.Stopwatch`). images/s = batch * iterations /
seconds. ``peak_mb`` is ``torch.cuda.max_memory_allocated`` of the row. An out-of-memory error is recorded in
the row (``"OOM at batch N"``) and the bench goes on; ``bench.json`` is rewritten after every group.

``quick=True`` runs tiny configurations (``toy-f8`` at 32 px, the ``toy`` FFTD, batch 8, 2 timed iterations,
5 and 10 steps) in seconds: a smoke test of the code path, not a benchmark. On a CPU the full bench would take
hours, so without CUDA the quick one runs instead (and says so); on a CPU its "optimized" rows compile with
``backend="eager"`` (dynamo only: compiling C++ kernels would take longer than the bench), named in each row's
``compile_backend``, and use one thread (the toy tensors are tiny).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import gc
import json
import platform
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from .. import __version__, default_device, fftd, ivqvae, losses, pipeline
from ..diffusion import DDIMSampler, Diffusion
from ..timing import Stopwatch

__all__ = ["BenchSettings", "SETTINGS", "BenchPath", "PATHS", "GROUPS", "COMPILE_MODES", "TARGETS", "run_bench",
           "render_markdown", "build_parser", "main", "count_operators", "kernel_operators", "VIEW_OPERATORS"]

GROUPS = ("ivqvae", "fftd", "sampling")


@dataclass(frozen=True)
class BenchSettings:
    """What one bench measures: configurations, batch sizes, iteration counts, DDIM step counts."""

    name: str
    ivqvae_config: str
    ivqvae_batch: int
    ivqvae_warmup: int
    ivqvae_iters: int
    fftd_config: str
    fftd_batch: int
    fftd_warmup: int
    fftd_iters: int
    sample_batch: int
    sample_steps: tuple[int, ...]
    guided_steps: int
    sample_iters: int
    guidance_scale: float = 4.0  # any scale != 1 costs the same: two model calls per step
    # Larger batches for the 500-step row on the fast paths (the target allows any batch >= 256): a launch-bound
    # step costs about the same at batch 1024 as at 256, so the time per image falls until the GPU is busy.
    sample_batches: tuple[int, ...] = ()


SETTINGS: dict[str, BenchSettings] = {
    # The GPU bench. Batch 16 for stage 1 (the paper trains at batch 1; in float32 it took 34 GB of an H100). Most of
    # a run is compilation: docs/BENCHMARKS.md says how long each group took on an H100 and how to run them in parts.
    "full": BenchSettings("full", ivqvae_config="paper-f64", ivqvae_batch=16, ivqvae_warmup=3, ivqvae_iters=5,
                          fftd_config="paper", fftd_batch=256, fftd_warmup=5, fftd_iters=50,
                          sample_batch=256, sample_steps=(50, 100, 200, 500), guided_steps=500, sample_iters=1,
                          sample_batches=(512, 1024)),
    # The smoke test: the same code path on tiny models, seconds on a CPU.
    "quick": BenchSettings("quick", ivqvae_config="toy-f8", ivqvae_batch=8, ivqvae_warmup=1, ivqvae_iters=2,
                           fftd_config="toy", fftd_batch=8, fftd_warmup=1, fftd_iters=2,
                           sample_batch=8, sample_steps=(5, 10), guided_steps=10, sample_iters=2,
                           sample_batches=(16,)),
}


@dataclass(frozen=True)
class BenchPath:
    """How a row runs: precision, compilation, optimizer kernels, TF32 and cuDNN autotuning."""

    name: str
    amp_dtype: torch.dtype | None
    compile: bool
    fused_optimizer: bool
    tf32: bool
    cudnn_benchmark: bool
    compile_mode: str = "default"  # torch.compile's mode for the FFTD and sampling rows (COMPILE_MODES)
    # CUDA graphs: the FFTD training step compiled with mode "reduce-overhead" (forward and backward replayed as
    # graphs), and every DDIM step (model call and update) recorded once and replayed (DDIMSampler cuda_graph=True)
    cuda_graphs: bool = False

    @property
    def dtype(self) -> str:
        return "float32" if self.amp_dtype is None else f"{str(self.amp_dtype).removeprefix('torch.')} autocast"


PATHS = (
    BenchPath("fp32 eager", amp_dtype=None, compile=False, fused_optimizer=False, tf32=False, cudnn_benchmark=False),
    BenchPath("optimized", amp_dtype=torch.bfloat16, compile=True, fused_optimizer=True, tf32=True,
              cudnn_benchmark=True),
    BenchPath("cuda graphs", amp_dtype=torch.bfloat16, compile=True, fused_optimizer=True, tf32=True,
              cudnn_benchmark=True, cuda_graphs=True),
)

# torch.compile modes a bench may ask for. "default" is the bench's; "reduce-overhead" adds CUDA graphs, which cut
# the per-kernel launch cost that dominates the small FFTD (its 4x4 latents are 16 tokens per image).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")

# The targets a full GPU run (H100 or H200) is judged against: (key, text).
TARGETS = (
    ("ivqvae_speedup", "optimized IVQ-VAE training >= 3x fp32 eager images/s"),
    ("sampling_500", "500 DDIM steps + decode <= 2 ms per 256 px image at batch >= 256 (guidance off)"),
    ("fftd_throughput", "FFTD training >= 20k images/s at batch 256"),
)


# ---- measuring ---------------------------------------------------------------------------------------------

# Operators that only re-describe memory (a view, a transpose): no kernel runs for them on a GPU.
VIEW_OPERATORS = frozenset({"view", "_unsafe_view", "t", "transpose", "permute", "unsqueeze", "squeeze", "expand",
                            "slice", "select", "split", "split_with_sizes", "unbind", "chunk", "alias", "as_strided",
                            "detach", "_reshape_alias", "reshape", "flatten", "unflatten"})


def count_operators(fn: Callable[[], object]) -> "collections.Counter[str]":
    """How many times one call of ``fn`` dispatches each ATen operator (``aten.addmm`` counts as ``"addmm"``).

    Every operator PyTorch runs below Python is counted once per call, including views (:data:`VIEW_OPERATORS`,
    which launch nothing on a GPU) and the operators autograd runs in a backward pass. On a GPU each of the
    others is at least one kernel launch, so the count is what a launch-bound model pays for in Python and driver
    time; tests/test_operator_counts.py holds the FFTD to its counts.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    counts: collections.Counter[str] = collections.Counter()

    class _Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            counts[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    with _Count():
        fn()
    return counts


def kernel_operators(counts: "collections.Counter[str]") -> int:
    """The operators of :func:`count_operators`'s result that compute something (views left out)."""
    return sum(n for name, n in counts.items() if name not in VIEW_OPERATORS)

def _count_syncs(fn: Callable[[], object], device: torch.device) -> int | None:
    """Host-device synchronisations in one call of ``fn`` (CUDA's sync debug mode); ``None`` off CUDA."""
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught)


@dataclass
class _Timing:
    warmup_s: float
    seconds: float
    iters: int
    syncs_per_iter: int | None


def _measure(fn: Callable[[], object], warmup: int, iters: int, device: torch.device) -> _Timing:
    """Warm up (compilation happens here), count syncs in one more call, then time ``iters`` calls."""
    with Stopwatch(device) as warm:
        for _ in range(warmup):
            fn()
    syncs = _count_syncs(fn, device)
    with Stopwatch(device) as clock:
        for _ in range(iters):
            fn()
    return _Timing(warm.seconds, clock.seconds, iters, syncs)


@contextmanager
def _backend_flags(path: BenchPath, device: torch.device) -> Iterator[None]:
    """TF32 and cuDNN autotuning as ``path`` asks, restored afterwards."""
    cuda, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (cuda.allow_tf32, cudnn.allow_tf32, cudnn.benchmark)
    if device.type == "cuda":
        cuda.allow_tf32, cudnn.allow_tf32, cudnn.benchmark = path.tf32, path.tf32, path.cudnn_benchmark
    try:
        yield
    finally:
        cuda.allow_tf32, cudnn.allow_tf32, cudnn.benchmark = saved


def _compile_backend(device: torch.device) -> str:
    return "inductor" if device.type == "cuda" else "eager"


def _compile_kwargs(backend: str, mode: str) -> dict:
    # Static shapes: every row has one batch size, and a dynamic-shape graph would be slower. A mode means
    # something to inductor only.
    kwargs = {"backend": backend, "dynamic": False}
    if backend == "inductor" and mode != "default":
        kwargs["mode"] = mode
    return kwargs


def _compile(module: torch.nn.Module, backend: str, mode: str = "default") -> Callable:
    return torch.compile(module, **_compile_kwargs(backend, mode))


def _uses_cuda_graphs(path: BenchPath, device: torch.device) -> bool:
    """Whether torch.compile's CUDA graphs (cudagraph trees) run the model calls of ``path``."""
    return path.compile and device.type == "cuda" and path.compile_mode in ("reduce-overhead", "max-autotune")


def _fftd_path(path: BenchPath) -> BenchPath:
    """The FFTD training row's path: the CUDA graphs path compiles its step with mode ``reduce-overhead``."""
    return dataclasses.replace(path, compile_mode="reduce-overhead") if path.cuda_graphs else path


def _skipped(group: str, path: BenchPath, device: torch.device, s: "BenchSettings") -> list[dict] | None:
    """The row that says why ``path`` does not run ``group`` here, or ``None`` when it runs."""
    if not path.cuda_graphs:
        return None
    if group == "ivqvae":  # compute-bound at batch 16, with host-side codebook upkeep: graphs would not help
        return []
    if device.type != "cuda":
        batch = s.fftd_batch if group == "fftd" else s.sample_batch
        return [_row(group, f"{group} with CUDA graphs", path, device, batch=batch,
                     status="skipped: CUDA graphs need a CUDA device")]
    return None


def _step_begin(path: BenchPath, device: torch.device) -> None:
    """With CUDA graphs, tell them a new iteration starts: the last call's outputs may now be overwritten."""
    if _uses_cuda_graphs(path, device):
        torch.compiler.cudagraph_mark_step_begin()


def _fresh(device: torch.device) -> None:
    """Start a row clean: no compiled graphs of the last row (dynamo's recompile limit), no cached memory."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def _lpips() -> tuple[losses.LPIPS, str]:
    """The real LPIPS when its VGG16 file is here, else the same network with a random trunk (same cost)."""
    if losses.lpips_weights_available():
        return losses.LPIPS(), "VGG16 ImageNet trunk"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", losses.RandomTrunkWarning)
        return losses.LPIPS(random_trunk=True), "random trunk (same cost)"


def _redraw_zeros(module: torch.nn.Module, seed: int = 0) -> None:
    """Redraw zero-initialised weights (adaLN-Zero, the final layer) so that no timed kernel multiplies zeros."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim and not p.any():
                p.copy_(0.02 * torch.randn(p.shape, generator=generator))


# ---- the rows ----------------------------------------------------------------------------------------------

def _row(group: str, name: str, path: BenchPath, device: torch.device, **fields) -> dict:
    """One row's description; the measurement adds ``status``, the timings and ``peak_mb``."""
    compiled = path.compile
    graphs = None
    if path.cuda_graphs:
        graphs = "torch.compile reduce-overhead" if group == "fftd" else "each DDIM step recorded and replayed"
    return {"group": group, "name": name, "path": path.name, "dtype": path.dtype, "compiled": compiled,
            "compile_backend": _compile_backend(device) if compiled else None,
            "compile_mode": (path.compile_mode if group != "ivqvae" else "default") if compiled else None,
            "cuda_graphs": graphs,
            "fused_optimizer": path.fused_optimizer, "tf32": path.tf32 and device.type == "cuda",
            "cudnn_benchmark": path.cudnn_benchmark and device.type == "cuda", **fields}


def _ivqvae_rows(s: BenchSettings, path: BenchPath, device: torch.device) -> list[dict]:
    config = ivqvae.get_config(s.ivqvae_config)
    b, res = s.ivqvae_batch, config.resolution
    row = _row("ivqvae", "IVQ-VAE training (L1 + LPIPS + adversarial, adaptive weight, discriminator step)", path,
               device, config=f"ivqvae {s.ivqvae_config}", resolution=res, batch=b, latent=(
                   f"{config.z_channels}x{config.latent_size}x{config.latent_size}"), codes=config.num_codes)
    torch.manual_seed(0)
    model = ivqvae.IVQVAE(config).to(device)
    perceptual, lpips_note = _lpips()
    row["lpips"] = lpips_note
    loss = losses.HybridLoss(losses.NLayerDiscriminator(), perceptual, check_finite=False, disc_start=0).to(device)
    x = torch.rand(b, 3, res, res, device=device) * 2 - 1
    with torch.no_grad():  # k-means now, so that none runs inside the timed loop
        if hasattr(model.quantizer, "init_codebook"):
            model.quantizer.init_codebook(model.encode(x))
    # The trainer's optimizers (pipeline.stage1_optimizers: Adam, lr 2e-4, betas (0.5, 0.9)), fused or not.
    opt_ae, opt_d = pipeline.stage1_optimizers(model, loss, 2e-4, (0.5, 0.9), fused=path.fused_optimizer)
    forward = None
    if path.compile:  # always the default mode: this step is compute-bound, and its graph breaks, buffer updates
        # and the adaptive weight's autograd.grad are what CUDA graphs handle worst
        backend = _compile_backend(device)
        forward = _compile(model, backend)
        loss.perceptual.compile(backend=backend, dynamic=False)  # in place: HybridLoss calls the compiled modules
        loss.discriminator.compile(backend=backend, dynamic=False)
    maintain = getattr(model.quantizer, "maintain", None) if path.compile else None
    assignments = b * config.latent_size**2
    step = [0]

    def one_step() -> None:
        pipeline.ivqvae_update(model, loss, opt_ae, opt_d, [x], step[0], forward=forward, amp_dtype=path.amp_dtype)
        if maintain is not None:  # a compiled step leaves the quantizer's host-side bookkeeping to the caller
            maintain(assignments)
        step[0] += 1

    t = _measure(one_step, s.ivqvae_warmup, s.ivqvae_iters, device)
    row.update(_timing_fields(t, path), images_per_s=round(b * t.iters / t.seconds, 2), peak_mb=_peak_mb(device))
    return [row]


def _fftd_rows(s: BenchSettings, path: BenchPath, device: torch.device) -> list[dict]:
    path = _fftd_path(path)
    config = fftd.get_config(s.fftd_config)
    b = s.fftd_batch
    row = _row("fftd", "FFTD training (eq. 27, AdamW, EMA)", path, device, config=f"fftd {s.fftd_config}",
               latent=f"{config.in_channels}x{config.input_size}x{config.input_size}", batch=b)
    torch.manual_seed(0)
    model = fftd.FFTD(config).to(device)
    diffusion = Diffusion()
    ema = pipeline.EMA(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=path.fused_optimizer)
    z0 = torch.randn(b, config.in_channels, config.input_size, config.input_size, device=device)
    y = torch.randint(0, config.num_classes, (b,), device=device) if config.num_classes else None
    forward = _compile(model, _compile_backend(device), path.compile_mode) if path.compile else None

    def one_step() -> None:
        _step_begin(path, device)
        pipeline.fftd_update(model, diffusion, optimizer, ema, [(z0, y)], forward=forward, amp_dtype=path.amp_dtype)

    t = _measure(one_step, s.fftd_warmup, s.fftd_iters, device)
    row.update(_timing_fields(t, path), images_per_s=round(b * t.iters / t.seconds, 2), peak_mb=_peak_mb(device))
    if not path.compile:  # what each step asks Python and the driver to launch (one more, untimed step)
        counts = count_operators(one_step)
        row.update(operators_per_iter=sum(counts.values()), kernel_operators_per_iter=kernel_operators(counts))
    return [row]


def _sampling_rows(s: BenchSettings, path: BenchPath, device: torch.device) -> list[dict]:
    """Sampling with decode: one pair of models per path, compiled once, then one row per step count."""
    ivq_config = ivqvae.get_config(s.ivqvae_config)
    config = fftd.get_config(s.fftd_config)
    b = s.sample_batch
    torch.manual_seed(0)
    model = fftd.FFTD(config)
    _redraw_zeros(model)
    model = model.to(device).eval().requires_grad_(False)
    stage1 = ivqvae.IVQVAE(ivq_config).to(device).eval().requires_grad_(False)
    with torch.no_grad():  # a codebook of encoder outputs, as after training (the snap's cost does not depend on it)
        x = torch.rand(min(b, 16), 3, ivq_config.resolution, ivq_config.resolution, device=device) * 2 - 1
        if hasattr(stage1.quantizer, "init_codebook"):
            stage1.quantizer.init_codebook(stage1.encode(x))
    call = model
    if path.cuda_graphs:  # compiled in the default mode; the sampler records each step (model and update) itself
        call = _compile(model, _compile_backend(device))
        stage1.decoder.compile(**_compile_kwargs(_compile_backend(device), "default"))
    elif path.compile:
        compiled = _compile(model, _compile_backend(device), path.compile_mode)
        stage1.decoder.compile(**_compile_kwargs(_compile_backend(device), path.compile_mode))

        def call(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
            _step_begin(path, device)  # the sampler uses each output before the next call
            return compiled(x, t, y)
    diffusion = Diffusion()
    scale = 2.0  # a latent scale (errata E16); its value does not change the cost
    noise = {n: torch.randn(n, config.in_channels, config.input_size, config.input_size, device=device)
             for n in (b, *s.sample_batches)}
    labels = {n: torch.randint(0, config.num_classes, (n,), device=device) if config.num_classes else None
              for n in noise}

    def generate(steps: int, guided: bool, batch: int = b) -> torch.Tensor:
        x_T, y = noise[batch], labels[batch]
        z0 = x_T
        if steps:
            sampler = DDIMSampler(diffusion, steps)
            z0 = sampler.sample(call, x_T, y, guidance_scale=s.guidance_scale if guided else 1.0,
                                null_label=config.null_label if guided else None, autocast_dtype=path.amp_dtype,
                                cuda_graph=path.cuda_graphs)
        with torch.no_grad():
            z_q = stage1.snap(z0 / scale)[0]  # eq. 30, as pipeline.decode_latents; the snap stays in float32
            _step_begin(path, device)
            with pipeline.autocast(device, path.amp_dtype):
                return stage1.decode(z_q)

    cases = [(0, False, b)] + [(n, False, b) for n in s.sample_steps] + (
        [(s.guided_steps, True, b)] if config.num_classes else [])
    if path.compile:  # the fast paths: the 500-step row again at larger batches
        cases += [(max(s.sample_steps), False, n) for n in s.sample_batches]
    rows, seen = [], {}  # (guided, sampling at all, batch) -> syncs of a 2-step call of those shapes
    for steps, guided, batch in cases:
        guided = guided and bool(steps)
        name = ("snap + decode only" if not steps else
                f"{steps} DDIM steps + decode, guidance {'on' if guided else 'off'}")
        row = _row("sampling", name, path, device, config=f"fftd {s.fftd_config} + ivqvae {s.ivqvae_config}",
                   resolution=ivq_config.resolution, batch=batch, model_batch=2 * batch if guided else batch,
                   steps=steps, guidance=guided, guidance_scale=s.guidance_scale if guided else 1.0)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            shapes = (guided, bool(steps), batch)
            warm = None
            if shapes not in seen:  # new shapes (batch, guided batch): warm up (compiles), count syncs, once
                warm = _measure(lambda: generate(min(steps, 2), guided, batch), 1, 0, device)
                seen[shapes] = warm.syncs_per_iter
            with Stopwatch(device) as clock:
                for _ in range(s.sample_iters):
                    generate(steps, guided, batch)
            t = _Timing(warm.warmup_s if warm else 0.0, clock.seconds, s.sample_iters, seen[shapes])
            row.update(_timing_fields(t, path), ms_per_image=round(1000 * t.seconds / (t.iters * batch), 4),
                       peak_mb=_peak_mb(device), note="syncs_per_iter: in one 2-step call of these shapes")
            if warm is None:  # warmed up and compiled by an earlier row of the same shapes
                row["warmup_s"] = row["compile_s"] = None
        except Exception as e:  # noqa: BLE001 - recorded in the row, the bench goes on
            row.update(_failure(e, batch, device))
            if _is_oom(e):
                _fresh_memory(device)
        rows.append(row)
    return rows


def _timing_fields(t: _Timing, path: BenchPath) -> dict:
    return {"status": "ok", "iters": t.iters, "seconds": round(t.seconds, 4),
            "warmup_s": round(t.warmup_s, 2), "compile_s": round(t.warmup_s, 2) if path.compile else None,
            "syncs_per_iter": t.syncs_per_iter}


def _failure(error: BaseException, batch: int, device: torch.device) -> dict:
    if _is_oom(error):
        return {"status": f"OOM at batch {batch}", "peak_mb": _peak_mb(device)}
    return {"status": f"error: {type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"}


def _fresh_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


_RUNNERS: dict[str, Callable[[BenchSettings, BenchPath, torch.device], list[dict]]] = {
    "ivqvae": _ivqvae_rows, "fftd": _fftd_rows, "sampling": _sampling_rows}


def _run_group(group: str, s: BenchSettings, path: BenchPath, device: torch.device) -> list[dict]:
    skipped = _skipped(group, path, device, s)
    if skipped is not None:
        return skipped
    _fresh(device)
    with _backend_flags(path, device):
        try:
            rows = _RUNNERS[group](s, path, device)
        except Exception as e:  # noqa: BLE001 - an OOM (or another failure) is one row's result
            batch = {"ivqvae": s.ivqvae_batch, "fftd": s.fftd_batch, "sampling": s.sample_batch}[group]
            rows = [_row(group, f"{group} (failed before the first row)", path, device, batch=batch,
                         **_failure(e, batch, device))]
    _fresh(device)
    return rows


# ---- the report --------------------------------------------------------------------------------------------

def _parse_rows(rows: str | Sequence[str] | None) -> tuple[str, ...]:
    if rows is None:
        return GROUPS
    names = [r.strip() for r in (rows.split(",") if isinstance(rows, str) else rows) if r.strip()]
    unknown = [r for r in names if r not in GROUPS]
    if unknown or not names:
        raise ValueError(f"rows must name some of {', '.join(GROUPS)} (comma-separated); got {rows!r}")
    return tuple(g for g in GROUPS if g in names)


def _parse_paths(paths: str | Sequence[str] | None) -> list[BenchPath]:
    if paths is None:
        return list(PATHS)
    by_name = {p.name.replace(" ", "-"): p for p in PATHS}
    names = [n.strip().replace(" ", "-").replace("_", "-")
             for n in (paths.split(",") if isinstance(paths, str) else paths) if n.strip()]
    unknown = [n for n in names if n not in by_name]
    if unknown or not names:
        raise ValueError(f"paths must name some of {', '.join(by_name)} (comma-separated); got {paths!r}")
    return [p for key, p in by_name.items() if key in names]


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads available)"


def _find(rows: list[dict], group: str, path: str, **match) -> dict | None:
    for row in rows:
        if row["group"] == group and row["path"] == path and all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def _targets(report: dict) -> list[dict]:
    """Each target with the measured value and met / not met (``None`` when its rows are missing or failed)."""
    rows = report["rows"]
    ok = lambda r: r is not None and r.get("status") == "ok"  # noqa: E731
    out = []
    for key, text in TARGETS:
        value, met = None, None
        if key == "ivqvae_speedup":
            base, fast = _find(rows, "ivqvae", "fp32 eager"), _find(rows, "ivqvae", "optimized")
            if ok(base) and ok(fast):
                value = fast["images_per_s"] / base["images_per_s"]
                met, shown = value >= 3.0, f"{value:.2f}x ({fast['images_per_s']:.1f} vs {base['images_per_s']:.1f} img/s)"
        elif key == "sampling_500":  # the fastest fast path at any batch >= 256
            found = [r for r in rows if r["group"] == "sampling" and r["path"] != "fp32 eager" and ok(r)
                     and r.get("steps") == 500 and not r.get("guidance") and r["batch"] >= 256]
            if found:
                r = min(found, key=lambda r: r["ms_per_image"])
                value = r["ms_per_image"]
                met, shown = value <= 2.0, f"{value:.3f} ms/img at batch {r['batch']} ({r['path']})"
        elif key == "fftd_throughput":
            found = [r for r in rows if r["group"] == "fftd" and r["path"] != "fp32 eager" and ok(r)
                     and r["batch"] == 256]
            if found:
                r = max(found, key=lambda r: r["images_per_s"])
                value = r["images_per_s"]
                met, shown = value >= 20000, f"{value:,.0f} img/s at batch {r['batch']} ({r['path']})"
        out.append({"target": key, "text": text, "value": value,
                    "measured": shown if value is not None else "not measured", "met": met})
    return out


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def render_markdown(report: dict) -> str:
    """The report as a Markdown page: the device in the title, one table per group, the targets on CUDA."""
    lines = [f"# fftd_course bench on {report['device_name']}", ""]
    if report["quick"]:
        lines += ["> **Quick run: a smoke test of the code path on tiny models, NOT a benchmark.** "
                  "Its numbers say nothing about the paper's models.", ""]
    if report.get("note"):
        lines += [f"> {report['note']}", ""]
    lines += [f"- device: `{report['device']}` ({report['device_name']}); PyTorch {report['torch']}, "
              f"CUDA {report['cuda'] or 'none'}; fftd_course {report['fftd_course']}; {report['date']}"
              + (f"; {report['threads']} CPU thread(s) used" if report.get("threads") else ""),
              f"- settings: `{report['settings']['name']}`; bench took {report['seconds']:.0f} s",
              "- paths: **fp32 eager** (float32, no TF32, no compile, foreach optimizers); **optimized** (bf16 "
              f"autocast, torch.compile (mode `{report['compile_mode']}` for FFTD and sampling, `default` for the "
              "IVQ-VAE), static shapes, fused Adam/AdamW, TF32, cuDNN autotuning); **cuda graphs** (as optimized, "
              "with the FFTD step compiled in mode `reduce-overhead` and every DDIM step recorded once as a CUDA "
              "graph and replayed; CUDA only, not run for the IVQ-VAE)",
              "- random weights and one fixed random batch on the device: compute only, no data loading",
              ""]
    lpips_notes = sorted({r["lpips"] for r in report["rows"] if r.get("lpips")})
    if lpips_notes:
        lines += [f"- LPIPS: {', '.join(lpips_notes)}", ""]
    cuda = report["device"].startswith("cuda")
    headers = {
        "ivqvae": ("IVQ-VAE training", ["path", "config", "batch", "img/s", "compile s", "syncs/iter", "peak MB",
                                        "status"]),
        "fftd": ("FFTD training", ["path", "config", "batch", "img/s", "compile s", "syncs/iter", "operators/iter",
                                   "peak MB", "status"]),
        "sampling": ("Sampling + decode (classifier-free guidance off unless stated)",
                     ["path", "what", "batch", "model batch", "ms/img", "compile s", "syncs/iter", "peak MB",
                      "status"]),
    }
    for group in GROUPS:
        rows = [r for r in report["rows"] if r["group"] == group]
        if not rows:
            continue
        title, cols = headers[group]
        lines += [f"## {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in rows:
            cells = {"path": r["path"], "config": r.get("config", "-"), "batch": _fmt(r.get("batch")),
                     "img/s": _fmt(r.get("images_per_s"), 1), "compile s": _fmt(r.get("compile_s"), 1),
                     "syncs/iter": _fmt(r.get("syncs_per_iter")), "peak MB": _fmt(r.get("peak_mb"), 0),
                     "status": r.get("status", "-"), "what": r["name"], "model batch": _fmt(r.get("model_batch")),
                     "ms/img": _fmt(r.get("ms_per_image"), 3), "operators/iter": _fmt(r.get("operators_per_iter"))}
            lines.append("| " + " | ".join(cells[c] for c in cols) + " |")
        lines.append("")
    if cuda and not report["quick"]:
        lines += ["## Targets", ""]
        for t in report["targets"]:
            verdict = {True: "**met**", False: "**not met**", None: "not measured"}[t["met"]]
            lines.append(f"- {t['text']}: {t['measured']} -> {verdict}")
        lines.append("")
    elif report["targets"]:
        lines += ["## Targets", "", "The targets are for a full run on an H100/H200 GPU; not judged here.", ""]
    return "\n".join(lines)


def _write(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    report["targets"] = _targets(report)
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "bench.md").write_text(render_markdown(report))


def run_bench(device: torch.device | str | None = None, out_dir: str | Path = "bench", quick: bool = False,
              rows: str | Sequence[str] | None = None, progress: bool = True, *,
              paths: str | Sequence[str] | None = None, compile_mode: str = "default") -> dict:
    """Measure the rows on ``device`` (default :func:`fftd_course.default_device`); write ``bench.json`` and
    ``bench.md`` into ``out_dir`` (rewritten after every row, so an interrupted run leaves what it measured);
    return the report.

    ``rows``: which groups, ``"ivqvae,fftd,sampling"`` (default all). ``paths``: ``"fp32 eager,optimized"``
    (default both; the names may be written with ``-`` or ``_`` for the space). ``compile_mode``: torch.compile's mode
    for the optimized FFTD and sampling rows (one of :data:`COMPILE_MODES`; the IVQ-VAE rows always use the
    default mode). ``quick=True``: the tiny smoke test. Without CUDA the quick one runs whatever ``quick`` says (a
    CPU cannot run the 256 px bench in reasonable time).
    """
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device} asks for CUDA, but PyTorch sees no GPU here; use --device cpu")
    groups = _parse_rows(rows)
    if compile_mode not in COMPILE_MODES:
        raise ValueError(f"compile_mode must be one of {', '.join(COMPILE_MODES)}; got {compile_mode!r}")
    chosen = [p if p.cuda_graphs else dataclasses.replace(p, compile_mode=compile_mode) for p in _parse_paths(paths)]
    note = None
    if device.type != "cuda" and not quick:
        note = ("No CUDA device: ran the quick smoke test instead of the full bench "
                "(a CPU cannot run the 256 px bench in reasonable time).")
        quick = True
    settings = SETTINGS["quick" if quick else "full"]
    out = Path(out_dir)
    report = {
        "device": str(device), "device_name": _device_name(device), "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None, "fftd_course": __version__,
        "python": platform.python_version(), "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "quick": quick, "note": note, "settings": dataclasses.asdict(settings), "compile_mode": compile_mode,
        "paths": [p.name for p in chosen], "seconds": 0.0,
        "guidance": "off in every sampling row except the one marked guidance on (2 model calls per step, batched)",
        "rows": [],
    }
    threads = torch.get_num_threads()
    if device.type == "cpu":  # the quick models' tensors are tiny: one thread runs them fastest (see demo.py)
        torch.set_num_threads(1)
    report["threads"] = torch.get_num_threads() if device.type == "cpu" else None
    try:
        _run_all(report, groups, chosen, settings, device, out, progress)
    finally:
        torch.set_num_threads(threads)
    return report


def _run_all(report: dict, groups: tuple[str, ...], paths: list[BenchPath], settings: BenchSettings,
             device: torch.device, out: Path, progress: bool) -> None:
    start = time.perf_counter()
    jobs = [(g, p) for g in groups for p in paths]
    bar = tqdm(jobs, desc="bench", disable=not progress)
    for group, path in bar:
        bar.set_postfix_str(f"{group}, {path.name}")
        new = _run_group(group, settings, path, device)
        report["rows"].extend(new)
        report["seconds"] = round(time.perf_counter() - start, 1)
        _write(report, out)
        if progress:
            for r in new:
                value = (f"{r['images_per_s']:,.1f} img/s" if "images_per_s" in r else
                         f"{r['ms_per_image']:.3f} ms/img" if "ms_per_image" in r else r.get("status"))
                bar.write(f"{group:8s} {path.name:10s} {r['name'][:48]:48s} {value}  (compile {_fmt(r.get('compile_s'), 1)} s, "
                          f"syncs {_fmt(r.get('syncs_per_iter'))}, peak {_fmt(r.get('peak_mb'), 0)} MB)")
    _write(report, out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fftd_course.evaluation.bench",
        description="Training and sampling throughput of both stages on this device, fp32 eager and optimized; "
                    "writes bench.json and bench.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench"), help="folder for bench.json and bench.md")
    p.add_argument("--quick", action="store_true", help="tiny models, seconds: a smoke test, not a benchmark")
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu; unset: CUDA when present (FFTD_DEVICE overrides)")
    p.add_argument("--rows", default=",".join(GROUPS), help="which groups to run, comma-separated")
    p.add_argument("--paths", default="fp32-eager,optimized,cuda-graphs", help="which paths to run, comma-separated")
    p.add_argument("--compile-mode", default="default", choices=COMPILE_MODES,
                   help="torch.compile mode of the optimized FFTD and sampling rows (reduce-overhead: CUDA graphs)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    try:
        report = run_bench(args.device, args.out, args.quick, args.rows, progress=not args.quiet, paths=args.paths,
                           compile_mode=args.compile_mode)
    except ValueError as e:
        build_parser().error(str(e))
    print(f"wrote {args.out / 'bench.md'} and {args.out / 'bench.json'} ({report['seconds']:.0f} s)")
    return report


if __name__ == "__main__":
    main()
