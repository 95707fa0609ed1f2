"""The static sampling path (issue 19): every per-step number read on the device, so that one DDIM step can be
recorded as a CUDA graph and replayed. On the CPU its step runs eagerly and must give exactly what the ordinary
loop gives; on CUDA the recorded graph must agree with the eager loop within bf16 / float rounding."""

import pytest
import torch

from fftd_course import fftd
from fftd_course.diffusion import DDIMSampler, DDPMSampler, Diffusion, beta_schedule

CUDA = torch.cuda.is_available()


def random_fftd(device="cpu"):
    torch.manual_seed(0)
    model = fftd.FFTD(fftd.get_config("toy", hidden_size=32, num_heads=4)).eval()
    with torch.no_grad():  # non-zero adaLN and output layers, so that every path of the model matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.to(device)


def pairs_of(sampler):
    ts = sampler.timesteps.tolist()
    return [(t, t_to, t) for t, t_to in zip(ts, ts[1:] + [-1])]


@pytest.mark.parametrize("steps, guidance, clip", [(10, 1.0, False), (25, 3.0, False), (7, 2.0, True)])
def test_the_static_step_gives_exactly_the_ordinary_loops_samples(steps, guidance, clip):
    model, diffusion = random_fftd(), Diffusion(beta_schedule("linear_rescaled", 100))
    x, y = torch.randn(6, 4, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    sampler = DDIMSampler(diffusion, steps)
    want = sampler.sample(model, x, y, guidance_scale=guidance, null_label=3, clip_x0=clip)
    got = sampler._run_static(model, x, y, pairs_of(sampler), guidance, 3, None, clip, cuda_graph=False)
    assert torch.equal(got, want)


def test_what_the_static_path_cannot_do_is_refused_by_name():
    model, diffusion = random_fftd(), Diffusion(beta_schedule("linear_rescaled", 40))
    x = torch.randn(2, 4, 4, 4)
    with pytest.raises(ValueError, match="deterministic DDIM only"):
        DDIMSampler(diffusion, 5, eta=1.0).sample(model, x, cuda_graph=True)
    with pytest.raises(ValueError, match="adds fresh noise"):
        DDPMSampler(diffusion).sample(model, x, cuda_graph=True)
    with pytest.raises(ValueError, match="cannot call a callback"):
        DDIMSampler(diffusion, 5).sample(model, x, cuda_graph=True, callback=lambda s: None)
    with pytest.raises(ValueError, match="must be on a CUDA device"):
        DDIMSampler(diffusion, 5).sample(model, x, cuda_graph=True)


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("autocast_dtype, tol", [(None, 1e-4), (torch.bfloat16, 5e-2)])
def test_the_recorded_step_replays_to_the_eager_samples(autocast_dtype, tol):
    model, diffusion = random_fftd("cuda"), Diffusion()
    x = torch.randn(64, 4, 4, 4, device="cuda")
    y = torch.randint(0, 3, (64,), device="cuda")
    sampler = DDIMSampler(diffusion, 50)
    want = sampler.sample(model, x, y, guidance_scale=3.0, null_label=3, autocast_dtype=autocast_dtype)
    got = sampler.sample(model, x, y, guidance_scale=3.0, null_label=3, autocast_dtype=autocast_dtype,
                         cuda_graph=True)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, atol=tol * want.abs().max().item(), rtol=tol)


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a GPU")
def test_fast_generation_matches_the_float32_path_within_bf16_tolerance():
    from fftd_course.pipeline import LatentDiffusion
    from fftd_course import ivqvae

    stage1 = ivqvae.IVQVAE("toy-f8").cuda()
    generator = LatentDiffusion(stage1, random_fftd("cuda"), Diffusion(), scale=1.0, class_names=("cat", "dog", "wild"))
    slow = generator.generate(["cat", "dog", "wild"] * 4, num_steps=20, seed=1)
    fast = generator.generate(["cat", "dog", "wild"] * 4, num_steps=20, seed=1, fast=True)
    scale = slow.latents.abs().max().item()
    torch.testing.assert_close(fast.latents, slow.latents, atol=5e-2 * scale, rtol=5e-2)
