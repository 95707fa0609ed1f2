"""The pixel-space DDPM baseline (section 4.3.4): the U-Net, its configurations, the samplers driving it, the
PixelDiffusion generator and its file, load_generator, the train-ddpm stage (train, resume) and sample/fid on it."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from fftd_course import training as T
from fftd_course.baseline import PIXEL_FORMAT, PixelDiffusion, load_generator
from fftd_course.blocks import AttnBlock, Downsample, Upsample
from fftd_course.checkpoints import CheckpointError
from fftd_course.cli import main as cli_main
from fftd_course.diffusion import DDIMSampler, DDPMSampler, Diffusion, beta_schedule
from fftd_course.pipeline import TOY_CHECKPOINT, GenerativeModel, LatentDiffusion
from fftd_course.unet import CONFIGS, TimeResBlock, UNet, UNetConfig, count_parameters, get_config

pytestmark = pytest.mark.usefixtures("one_thread")
NAMES = ("cat", "dog", "wild")
PAPER_PARAMETERS = 75_378_691  # get_config("paper"): 256 px, 3 classes (AFHQ)


def perturbed(model: UNet, seed: int = 0) -> UNet:
    """The zero-initialised output layers make a fresh model output 0; nudge every parameter to test real paths."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def tiny_unet(**kw) -> UNet:
    return UNet(get_config("toy", **{"ch": 8, "num_groups": 4, "attn_resolutions": (8,), **kw}))


def tiny_generator(num_classes: int = 3, T_steps: int = 20) -> PixelDiffusion:
    torch.manual_seed(0)
    return PixelDiffusion(perturbed(tiny_unet(num_classes=num_classes)), Diffusion(beta_schedule("linear", T_steps)),
                          NAMES[:num_classes])


# ---- the network ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [get_config("toy"), get_config("paper", resolution=64)], ids=["toy", "paper@64px"])
def test_images_in_noise_predictions_out(config):
    torch.manual_seed(0)
    model = perturbed(UNet(config))
    x = torch.randn(2, 3, config.resolution, config.resolution)
    out = model(x, torch.tensor([0, 999]), torch.tensor([1, config.null_label]))
    assert out.shape == x.shape and out.is_contiguous() and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_the_paper_configuration_is_section_4_3_4():
    c = get_config("paper")
    assert c.levels == (256, 128, 64, 32, 16) and c.attn_resolutions == (16,) and c.num_res_blocks == 2
    model = UNet(c)
    kinds = [type(m) for m in model.modules()]
    assert kinds.count(Downsample) == 4 and kinds.count(Upsample) == 4  # 4 down and 4 up stages
    # attention at 16x16 only: the lowest level's 2 + 3 blocks and the middle block, which also sits at 16x16
    assert kinds.count(AttnBlock) == 2 + 3 + 1
    assert count_parameters(model) == PAPER_PARAMETERS


def test_attention_sits_where_the_configuration_says():
    model = UNet(get_config("paper", resolution=64))  # levels 64 .. 4: attention at 16x16 and in the middle (4x4)
    sides = []
    hooks = [m.register_forward_hook(lambda mod, i, o: sides.append(o.shape[-1]))
             for m in model.modules() if isinstance(m, AttnBlock)]
    model(torch.randn(1, 3, 64, 64), torch.tensor([5]))
    for h in hooks:
        h.remove()
    assert sorted(sides) == [4] + [16] * 5


def test_toy_configuration_is_cheap_and_says_where_it_departs():
    c = get_config("toy")
    assert (c.resolution, c.num_classes) == (32, 3) and len(c.ch_mult) == 4
    assert count_parameters(UNet(c)) < 500_000
    assert "departs from the paper" in Path(__file__).resolve().parents[1].joinpath("fftd_course", "unet.py").read_text()


@pytest.mark.parametrize("changes, says", [
    (dict(resolution=30), "resolution 30 is not divisible by"),
    (dict(ch=0), "ch must be a positive integer"),
    (dict(ch_mult=()), "ch_mult must be a non-empty tuple"),
    (dict(ch_mult=(1, 0)), "ch_mult must be a non-empty tuple"),
    (dict(num_groups=7), "not divisible by num_groups"),
    (dict(attn_resolutions=(12,)), r"no level is \[12\] px"),
    (dict(dropout=1.0), "dropout must lie in"),
    (dict(num_classes=-1), "num_classes must be an integer >= 0"),
    (dict(class_dropout_prob=1.0), "class_dropout_prob"),
    (dict(in_channels=True), "in_channels must be a positive integer"),
])
def test_bad_configurations_are_refused_by_name(changes, says):
    with pytest.raises(ValueError, match=says):
        get_config("toy", **changes)


def test_unknown_names_and_fields_are_refused():
    with pytest.raises(ValueError, match="unknown U-Net configuration 'huge'"):
        get_config("huge")
    with pytest.raises(ValueError, match="UNetConfig fields are"):
        get_config("toy", widths=3)
    assert get_config("toy", ch_mult=[1, 2, 2, 2]).ch_mult == (1, 2, 2, 2)  # a list means its tuple
    assert set(CONFIGS) >= {"paper", "toy"}


def test_a_fresh_model_predicts_zero_and_every_block_starts_as_its_shortcut():
    model = UNet("toy")
    for m in model.modules():
        if isinstance(m, TimeResBlock):
            assert not m.conv2.weight.any() and not m.conv2.bias.any()
        if isinstance(m, AttnBlock):
            assert not m.proj_out.weight.any()
    out = model(torch.randn(3, 3, 32, 32), torch.tensor([0, 10, 999]), torch.tensor([0, 1, 3]))
    assert not out.any()


def test_unconditional_and_conditional_models():
    torch.manual_seed(0)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([3, 700])
    free = perturbed(tiny_unet(num_classes=0)).eval()
    assert free.label_emb is None and free.null_label == 0
    assert torch.equal(free(x, t), free(x, t, torch.zeros(2, dtype=torch.long)))  # the null label is "no label"
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 0\].*unconditional"):
        free(x, t, torch.tensor([0, 1]))
    cond = perturbed(tiny_unet(num_classes=3)).eval()
    assert cond.null_label == 3
    assert torch.equal(cond(x, t), cond(x, t, torch.full((2,), 3)))  # y=None is the null label
    assert not torch.allclose(cond(x, t, torch.tensor([0, 0])), cond(x, t, torch.tensor([1, 1])))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\]"):
        cond(x, t, torch.tensor([0, 4]))


def test_labels_are_dropped_to_the_null_label_in_training_only():
    model = tiny_unet(num_classes=3, class_dropout_prob=0.9)
    t, y = torch.zeros(1000, dtype=torch.long), torch.zeros(1000, dtype=torch.long)
    null = model.eval().embed(t, torch.full_like(y, 3))
    torch.manual_seed(0)
    dropped = (model.train().embed(t, y) == null).all(dim=1).float().mean()
    assert 0.85 < dropped < 0.95
    assert not (model.eval().embed(t, y) == null).all(dim=1).any()


@pytest.mark.parametrize("args, says", [
    ((torch.randn(2, 1, 32, 32), torch.tensor([0, 1])), r"expects images of shape \(B, 3, 32, 32\)"),
    ((torch.randn(2, 3, 16, 16), torch.tensor([0, 1])), r"expects images of shape \(B, 3, 32, 32\)"),
    ((torch.randn(3, 32, 32), torch.tensor([0, 1])), "expects images"),
    ((torch.randn(2, 3, 32, 32), torch.tensor([0.5, 1.0])), "t must be an integer tensor of shape"),
    ((torch.randn(2, 3, 32, 32), torch.tensor([0])), r"t must be an integer tensor of shape \(2,\)"),
    ((torch.randn(2, 3, 32, 32), torch.tensor([-1, 0])), "0-based and non-negative"),
    ((torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), torch.tensor([0.0, 1.0])), "y must be an integer tensor"),
])
def test_bad_inputs_are_refused_at_the_entry(args, says):
    with pytest.raises(ValueError, match=says):
        tiny_unet()(*args)


def test_ddim_and_ddpm_samplers_drive_it_unchanged():
    torch.manual_seed(0)
    model, d = perturbed(tiny_unet(num_classes=3)).eval(), Diffusion(beta_schedule("linear", 20))
    x_T, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    out = DDIMSampler(d, 5).sample(model, x_T, y, guidance_scale=2.0, null_label=3)
    assert out.shape == x_T.shape and torch.isfinite(out).all()
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    ddpm = DDPMSampler(d).sample(model, x_T, y, generator=g1)
    # DDIM with eta = 1 over all T steps is DDPM's ancestral sampler (the identity tests/test_diffusion.py proves)
    torch.testing.assert_close(DDIMSampler(d, 20, eta=1.0).sample(model, x_T, y, generator=g2), ddpm,
                               rtol=1e-4, atol=1e-4)


# ---- the generator -----------------------------------------------------------------------------------------------

def test_pixel_diffusion_has_latent_diffusions_user_api():
    pd = tiny_generator()
    assert isinstance(pd, GenerativeModel) and pd.num_classes == 3 and pd.null_label == 3 and pd.resolution == 32
    assert pd.labels(["dog", 2]).tolist() == [1, 2] and not pd.training
    r = pd.generate(["cat", "wild"], num_steps=3, seed=1, keep_trajectory=True)
    assert r.images.shape == (2, 3, 32, 32) and r.images.abs().max() <= 1 and r.indices.numel() == 0
    assert torch.equal(r.images, r.latents.clamp(-1, 1)) and r.labels.tolist() == [0, 2] and len(r.trajectory) == 3
    assert torch.equal(pd.sample(["cat", "wild"], num_steps=3, seed=1), r.images)
    ddpm = pd.generate(n=2, sampler="ddpm", seed=1, keep_trajectory=True)
    assert ddpm.labels.tolist() == [3, 3] and len(ddpm.trajectory) == 20  # all T steps
    assert torch.equal(pd.sample(n=2, sampler="ddpm", num_steps=20, seed=1), ddpm.images)
    # DDPM's clip_denoised by default: every clean estimate is clamped to the image range; clip_x0=False does not
    assert all(x0_hat.abs().max() <= 1 for _, _, x0_hat in ddpm.trajectory)
    free = pd.generate(n=2, sampler="ddpm", seed=1, keep_trajectory=True, clip_x0=False)
    assert max(float(x0_hat.abs().max()) for _, _, x0_hat in free.trajectory) > 1


@pytest.mark.parametrize("kwargs, says", [
    (dict(classes=["horse"]), "unknown class 'horse'"),
    (dict(classes=[3]), r"labels must lie in \[0, 2\]"),
    (dict(), "either classes"),
    (dict(n=0), "n must be a positive integer"),
    (dict(n=1, num_steps=0), "num_steps must be an integer >= 1"),
    (dict(n=1, num_steps=21), "num_steps must be an integer from 1 to T=20"),
    (dict(n=1, sampler="euler"), "sampler must be one of"),
    (dict(n=1, sampler="ddpm", num_steps=5), "visits all T=20 timesteps"),
    (dict(n=1, sampler="ddpm", eta=0.5), "eta is DDIM's"),
    (dict(classes=["cat"], guidance_scale=float("nan")), "guidance_scale"),
    (dict(n=1, eta=-1.0), "eta must be"),
    (dict(n=1, x_T=torch.zeros(1, 3, 8, 8)), r"x_T must have shape \(1, 3, 32, 32\)"),
])
def test_generate_refuses_bad_requests(kwargs, says):
    with pytest.raises(ValueError, match=says):
        tiny_generator().generate(**kwargs)


def test_an_unconditional_generator_takes_n_only():
    pd = tiny_generator(num_classes=0)
    with pytest.raises(ValueError, match="unconditional"):
        pd.sample([0], num_steps=2)
    assert pd.sample(n=2, num_steps=2).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="class_names has 1 names but the U-Net has 0 classes"):
        PixelDiffusion(pd.unet, class_names=("a",))
    assert PixelDiffusion(pd.unet).diffusion.T == 1000  # DDPM's schedule by default
    assert torch.equal(PixelDiffusion(pd.unet).diffusion.betas, beta_schedule("linear", 1000))


def test_save_load_round_trip_gives_the_same_samples(tmp_path):
    pd = tiny_generator()
    path = pd.save(tmp_path / "sub" / "pixel_diffusion.pt")
    assert torch.load(path, weights_only=True)["format"] == PIXEL_FORMAT
    for back in (PixelDiffusion.load(path), load_generator(path)):
        assert isinstance(back, PixelDiffusion) and back.class_names == NAMES and back.unet.config == pd.unet.config
        torch.testing.assert_close(back.diffusion.betas, pd.diffusion.betas)
        torch.testing.assert_close(back.sample(["dog", "cat"], num_steps=3, seed=4),
                                   pd.sample(["dog", "cat"], num_steps=3, seed=4))


def test_damaged_and_foreign_files_are_checkpoint_errors(tmp_path):
    good = tiny_generator().save(tmp_path / "good.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint\n")
    for bad in (cut, junk):
        for read in (PixelDiffusion.load, load_generator):
            with pytest.raises(CheckpointError, match="damaged"):
                read(bad)
    other = tmp_path / "other.pt"
    torch.save({"format": "fftd_course.train/1", "step": 3}, other)
    with pytest.raises(CheckpointError, match="not a PixelDiffusion checkpoint"):
        PixelDiffusion.load(other)
    with pytest.raises(CheckpointError, match="pixel_diffusion.pt.*latent_diffusion.pt"):
        load_generator(other)
    ckpt = torch.load(good, weights_only=True)
    ckpt["unet"] = dict(list(ckpt["unet"].items())[1:])
    torch.save(ckpt, other)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_generator(other)
    with pytest.raises(FileNotFoundError, match="train-ddpm"):
        PixelDiffusion.load(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="no generator checkpoint"):
        load_generator(tmp_path / "missing.pt")


def test_load_generator_reads_the_latent_generator_too():
    ld = load_generator(TOY_CHECKPOINT)
    assert isinstance(ld, LatentDiffusion) and ld.resolution == 32 and ld.class_names == NAMES
    with pytest.raises(ValueError, match="visits all T=500 timesteps"):
        ld.generate(["cat"], sampler="ddpm", num_steps=50)


# ---- the trainer and the command line ------------------------------------------------------------------------------

def tiny(**changes) -> T.TrainConfig:
    """toy32 cut down to seconds: 64 toy faces, a narrow U-Net's batch of 8, every step logged, T = 20."""
    settings = dict(toy_images=64, batch_size=8, steps=4, log_every=1, ckpt_every=100, sample_every=0, num_workers=0,
                    sample_steps=2, T=20, device="cpu")
    return T.get_preset("toy32", "ddpm").replace(**{**settings, **changes})


def test_presets_and_settings():
    paper, toy = T.get_preset("paper", "ddpm"), T.get_preset("toy32", "ddpm")
    assert (paper.model, paper.resolution, paper.batch_size, paper.lr, paper.steps, paper.ema_decay, paper.T,
            paper.schedule) == ("paper", 256, 16, 2e-4, 400_000, 0.9999, 1000, "linear")
    assert (toy.model, toy.data, toy.resolution, toy.batch_size, toy.T, toy.schedule, toy.hflip) == \
        ("toy", "toy", 32, 64, 1000, "linear", False)
    assert T.get_preset("afhq256", "ddpm").stage == "ddpm" and T.STAGES["ddpm"].final_file == "pixel_diffusion.pt"
    with pytest.raises(T.ConfigError, match="model='toy-f8'.*unknown ddpm configuration"):
        toy.replace(model="toy-f8")
    with pytest.raises(T.ConfigError, match="resolution=20"):
        toy.replace(resolution=20)


def test_the_paper_preset_needs_data(tmp_path):
    with pytest.raises(T.ConfigError, match="data=''"):
        T.train(T.get_preset("paper", "ddpm").replace(out=str(tmp_path / "p"), device="cpu"), progress=False)


def test_train_resume_and_sample(tmp_path, capsys):
    a = T.train(tiny(out=str(tmp_path / "a")), progress=False)
    first = T.train(tiny(out=str(tmp_path / "b")), progress=False, stop_after=2)
    assert first.status == "stopped" and T.latest_checkpoint(tmp_path / "b").name == "ckpt-00000002.pt"
    b = T.train(tiny(out=str(tmp_path / "b")), progress=False)
    assert a.final.name == "pixel_diffusion.pt" and b.final.is_file() and (a.step, b.step) == (4, 4)
    wa, wb = (torch.load(r.final, weights_only=True)["unet"] for r in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)  # resumed = uninterrupted
    log = [json.loads(s) for s in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [h["step"] for h in log if "loss" in h] == [1, 2, 3, 4] and log[-1]["finished"]
    pd = load_generator(a.final)
    assert isinstance(pd, PixelDiffusion) and pd.class_names == NAMES and pd.diffusion.T == 20
    capsys.readouterr()
    for extra in (["--steps", "2"], ["--sampler", "ddpm"]):
        grid = tmp_path / f"grid-{extra[-1]}.png"
        assert cli_main(["sample", str(a.final), "--per-class", "1", "--grid", str(grid), "--device", "cpu",
                         *extra]) == 0
        assert Image.open(grid).size[0] > 0
    assert "wrote a grid of 3 samples" in capsys.readouterr().out
    assert cli_main(["sample", str(a.final), "--sampler", "ddpm", "--steps", "5", "--device", "cpu"]) == 2
    assert "DDPM sampler visits all T=20" in capsys.readouterr().err


def test_the_command_line_trains_it_and_fid_reads_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(["train-ddpm", "--preset", "toy32", "--toy-images", "32", "--batch-size", "8", "--steps", "2",
                     "--T", "20", "--sample-every", "0", "--sample-steps", "2", "--device", "cpu", "--out", str(out),
                     "--no-progress"]) == 0
    final = out / "pixel_diffusion.pt"
    assert "done: 2 steps" in capsys.readouterr().out and final.is_file()
    from fftd_course.data import export_toy_faces

    ref = export_toy_faces(tmp_path / "ref", 6, size=32, progress=False)
    assert cli_main(["fid", str(final), "--ref", str(ref), "--n", "3", "--steps", "2", "--batch-size", "3",
                     "--workers", "0", "--device", "cpu"]) == 0
    assert "n=3 vs 6" in capsys.readouterr().out
