"""On a GPU the training and sampling hot paths read no value on the host.

``torch.cuda.set_sync_debug_mode("error")`` turns every call that makes the host wait for the GPU
(``.item()``, ``bool(tensor)``, a blocking host -> device copy, ``nonzero``, ``bincount``...) into an error; it
is a prototype that catches the common ones, not every one. Each test runs one warm-up step first (one-time
work such as the schedule's copy to the GPU may synchronise), then the steps under test. Skipped without CUDA
(CI has none); on a GPU machine run ``pytest tests/test_cuda_sync.py``. Synchronisations that remain by
design, and are not run here: ``check_finite`` (one per call; a GPU trainer passes ``check_finite=False``),
``VectorQuantizer.maintain`` when the usage window is full (one replacement per window), k-means initialisation
(once), ``Quantizer.usage()`` (logging).
"""

import warnings
from contextlib import contextmanager

import pytest
import torch

from fftd_course import fftd, ivqvae, losses
from fftd_course.diffusion import DDIMSampler, DDPMSampler, Diffusion, beta_schedule

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


@contextmanager
def no_syncs():
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    torch.cuda.synchronize()


def images(b=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, 3, size, size, generator=g) * 2 - 1).to(CUDA)


@pytest.mark.parametrize("quantizer", ["vq", "fsq"])
def test_stage1_training_step_does_not_synchronise(quantizer):
    torch.manual_seed(0)
    model = ivqvae.IVQVAE(ivqvae.get_config("toy-f8", quantizer=quantizer)).to(CUDA).train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", losses.RandomTrunkWarning)
        lpips = losses.LPIPS(random_trunk=True)
    hybrid = losses.HybridLoss(losses.NLayerDiscriminator(ndf=8, n_layers=2), lpips, weighting="paper",
                               disc_start=0, check_finite=False).to(CUDA)
    x = images()

    def step(i):
        x_hat, out = model(x)  # the eager forward calls quantizer.maintain itself
        total, logs = hybrid(x, x_hat, i, vq_loss=out.loss)
        total.backward()
        d_loss, _ = hybrid.discriminator_loss(x, x_hat, i)
        if d_loss is not None:
            d_loss.backward()
        return out

    step(0)  # warm-up: k-means initialisation of the codebook (host work, once), first kernels
    with no_syncs():
        for i in range(1, 3):  # 2 x 32 assignments: the 1024-assignment usage window does not fill
            out = step(i)
        if quantizer == "vq":
            model.quantizer.maintain(out.indices.numel())  # what a compiled step's trainer calls
        model.eval()
        with torch.no_grad():
            z_q, indices = model.snap(model.encode(x))
            model.decode_indices(indices)


def test_diffusion_loss_and_samplers_do_not_synchronise():
    torch.manual_seed(0)
    model = fftd.FFTD(fftd.get_config("toy", hidden_size=32, num_heads=4)).to(CUDA)
    diffusion = Diffusion(beta_schedule("linear_rescaled", 50))
    x0 = torch.randn(4, 4, 4, 4, device=CUDA)
    y = torch.tensor([0, 1, 2, 0], device=CUDA)
    cpu = torch.Generator().manual_seed(0)

    def run():
        diffusion.loss(model, x0, y).backward()  # drawn on the GPU
        diffusion.loss(model, x0, y, generator=cpu).backward()  # a CPU generator: t and noise copied over
        with torch.no_grad():
            DDIMSampler(diffusion, 10, eta=1.0).sample(model, torch.randn_like(x0), y, generator=cpu,
                                                       guidance_scale=2.0, null_label=3)
            DDPMSampler(diffusion).sample(model, torch.randn_like(x0), y, generator=cpu)

    run()  # warm-up: the schedule's one copy to the GPU
    with no_syncs():
        run()
