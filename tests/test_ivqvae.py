"""Unit tests for fftd_course.ivqvae: every named configuration's shape round trip, the structure the paper
states (levels, blocks, attention, tanh), gradients through the quantizer, and clear errors."""

import math

import pytest
import torch

from fftd_course import blocks, ivqvae, quantize
from fftd_course.ivqvae import CONFIGS, IVQVAE, get_config
from fftd_course.quantize import FiniteScalarQuantizer, VectorQuantizer

PAPER = [n for n in CONFIGS if n.startswith("paper")]
TOY = [n for n in CONFIGS if n.startswith("toy")]


def test_named_configurations_have_the_stated_factors():
    want = {"paper-f8": 8, "paper-f16": 16, "paper-f32": 32, "paper-f64": 64, "toy-f4": 4, "toy-f8": 8, "toy-f16": 16, "small-f16": 16}
    assert {n: CONFIGS[n].f for n in CONFIGS} == want
    for name in PAPER:
        c = CONFIGS[name]
        assert (c.resolution, c.num_codes, c.z_channels, c.num_res_blocks) == (256, 16384, 4, 2)
        assert c.f == 2 ** (len(c.ch_mult) - 1)
    assert len(CONFIGS["paper-f64"].ch_mult) == 7 and CONFIGS["paper-f64"].latent_size == 4
    assert CONFIGS["paper-f64"].bits_per_image == 16 * 14 == 224
    assert CONFIGS["toy-f8"].resolution == 32 and CONFIGS["toy-f8"].latent_size == 4


@pytest.mark.parametrize("name", TOY)
def test_toy_configurations_round_trip_at_their_resolution(name):
    torch.manual_seed(0)
    model = IVQVAE(name)
    c = model.config
    x = torch.rand(2, 3, c.resolution, c.resolution) * 2 - 1
    z = model.encode(x)
    assert z.shape == (2, 4, c.resolution // c.f, c.resolution // c.f)
    x_hat, out = model(x)
    assert x_hat.shape == x.shape and out.z_q.shape == z.shape and out.indices.shape == (2, *z.shape[-2:])
    assert x_hat.abs().max() <= 1  # tanh output (eq. 7)


@pytest.mark.parametrize("name", PAPER)
def test_paper_configurations_round_trip(name):
    # The networks are fully convolutional, so a (f x 2f) input checks the same layers as 256 px at a
    # fraction of the time (a 256 px pass takes seconds per configuration on a CPU).
    torch.manual_seed(0)
    model = IVQVAE(name).eval()
    f = model.f
    x = torch.rand(1, 3, f, 2 * f) * 2 - 1
    with torch.no_grad():
        z = model.encode(x)
        assert z.shape == (1, 4, 1, 2)
        x_hat, out = model(x)
    assert x_hat.shape == x.shape and out.indices.shape == (1, 1, 2)


def _count(module, cls):
    return sum(isinstance(m, cls) for m in module.modules())


@pytest.mark.parametrize("name", PAPER)
def test_paper_structure_two_blocks_per_level_attention_at_16_and_mid(name):
    model = IVQVAE(name)
    c = model.config
    levels = len(c.ch_mult)
    for part in (model.encoder, model.decoder):
        assert [len(level.blocks) for level in part.levels] == [2] * levels
        assert _count(part, blocks.ResBlock) == 2 * levels + 2  # two per level, two in the middle block
        has_16 = 16 in [c.resolution // 2**i for i in range(levels)]
        assert _count(part, blocks.AttnBlock) == (2 if has_16 else 0) + 1  # after each block at 16x16, and mid
    assert _count(model.encoder, blocks.Downsample) == levels - 1
    assert _count(model.decoder, blocks.Upsample) == levels - 1
    # Widths follow ch * m_i: the encoder's last level and the decoder's first have ch * m_last channels.
    assert model.encoder.levels[-1].blocks[-1].out_channels == c.ch * c.ch_mult[-1]
    assert model.decoder.conv_in.out_channels == c.ch * c.ch_mult[-1]
    assert model.decoder.levels[-1].blocks[-1].out_channels == c.ch * c.ch_mult[0]


def test_attention_sits_at_the_16x16_level():
    model = IVQVAE("paper-f64")
    # Encoder level i works at 256 / 2**i: level 4 is 16x16.
    assert [len(level.attn) for level in model.encoder.levels] == [0, 0, 0, 0, 2, 0, 0]
    assert [len(level.attn) for level in model.decoder.levels] == [0, 0, 2, 0, 0, 0, 0]  # decoder runs 4 -> 256
    seen = []
    for level in model.encoder.levels:
        level.register_forward_hook(lambda mod, inp, out: seen.append((len(mod.attn), out.shape[-1])))
    with torch.no_grad():
        model.encode(torch.zeros(1, 3, 256, 256))
    assert [res for n_attn, res in seen if n_attn] == [16]


def test_decode_indices_equals_decode_of_quantized_latent_and_snap():
    torch.manual_seed(0)
    model = IVQVAE("toy-f8")
    model(torch.rand(32, 3, 32, 32) * 2 - 1)  # one training forward: k-means on 512 vectors sets the 256 codes
    model.eval()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        out = model.quantize(model.encode(x))
        torch.testing.assert_close(model.decode_indices(out.indices), model.decode(out.z_q))
        z_q, idx = model.snap(out.z_q)
    assert torch.equal(idx, out.indices)


def test_gradients_reach_encoder_codebook_and_last_layer():
    torch.manual_seed(0)
    model = IVQVAE("toy-f8")
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    x_hat, out = model(x)
    ((x_hat - x).abs().mean() + out.loss).backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0  # through the straight-through estimator
    assert model.quantizer.codebook.grad.abs().sum() > 0
    assert model.last_layer is model.decoder.conv_out.weight and model.last_layer.grad is not None


def test_fsq_configuration_and_overrides():
    model = IVQVAE(get_config("paper-f64", quantizer="fsq"))
    assert isinstance(model.quantizer, FiniteScalarQuantizer) and model.quantizer.num_codes == 16384
    toy = IVQVAE(get_config("toy-f8", quantizer="fsq", fsq_levels=(4, 4, 4, 4)))
    assert toy.quantizer.num_codes == 256
    vq = IVQVAE("toy-f8").quantizer
    assert isinstance(vq, VectorQuantizer) and vq.l2_normalize and vq.kmeans_init and vq.replace_dead_codes
    assert get_config("toy-f8", num_res_blocks=2).num_res_blocks == 2
    assert CONFIGS["toy-f8"].num_res_blocks == 1  # overrides do not change the named configuration


@pytest.mark.parametrize("quantizer", ["vq", "fsq"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_named_configuration_builds_and_runs_with_each_quantizer(name, quantizer):
    config = get_config(name, quantizer=quantizer)
    if quantizer == "fsq":
        assert math.prod(config.fsq_levels) == config.num_codes and len(config.fsq_levels) == config.z_channels
    if name.startswith("paper"):  # 256 px models, up to 126M parameters: build on the meta device, run the quantizer
        with torch.device("meta"):
            IVQVAE(config)
        q = config.make_quantizer()
        assert q.num_codes == config.num_codes and q.dim == config.z_channels
        assert q(torch.randn(2, config.z_channels, 4, 4)).z_q.shape == (2, config.z_channels, 4, 4)
        return
    model = IVQVAE(config)
    assert model.quantizer.num_codes == config.num_codes and model.quantizer.dim == config.z_channels
    x = torch.rand(2, 3, config.resolution, config.resolution) * 2 - 1
    x_hat, out = model(x)
    assert x_hat.shape == x.shape and out.indices.shape == (2, config.latent_size, config.latent_size)


def test_fsq_levels_come_from_the_code_count():
    assert quantize.fsq_levels_for(16384, 4) == (16, 16, 8, 8)
    assert quantize.fsq_levels_for(256, 4) == (4, 4, 4, 4)
    assert quantize.fsq_levels_for(512, 3) == (8, 8, 8)
    assert get_config("toy-f8", quantizer="fsq").fsq_levels == (4, 4, 4, 4)
    assert get_config("paper-f64", quantizer="fsq").fsq_levels == (16, 16, 8, 8)
    with pytest.raises(ValueError, match="pass fsq_levels explicitly"):
        get_config("toy-f8", quantizer="fsq", num_codes=1000)
    assert get_config("toy-f8", quantizer="fsq", num_codes=1000, fsq_levels=(10, 10, 5, 2)).num_codes == 1000


def test_count_parameters_counts_trainable_parameters():
    model = IVQVAE("toy-f8")
    want = sum(math.prod(p.shape) for p in model.parameters())
    assert ivqvae.count_parameters(model) == want
    model.decoder.requires_grad_(False)
    assert ivqvae.count_parameters(model) == want - sum(math.prod(p.shape) for p in model.decoder.parameters())


def test_inputs_not_divisible_by_f_get_a_clear_error():
    model = IVQVAE("toy-f8")
    with pytest.raises(ValueError, match="divisible by the compression factor f = 8"):
        model.encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match="divisible"):
        model(torch.zeros(1, 3, 32, 36))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model.encode(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 4, h, w\)"):
        model.decode(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        model.decode_indices(torch.full((1, 4, 4), 256))


@pytest.mark.parametrize("overrides, match", [
    (dict(resolution=100), "not divisible by f"),
    (dict(ch=20), "num_groups"),
    (dict(ch_mult=()), "ch_mult"),
    (dict(quantizer="rvq"), "'vq' or 'fsq'"),
    (dict(quantizer="fsq", fsq_levels=(8, 8, 8)), "z_channels"),
    (dict(quantizer="fsq", fsq_levels=(4, 4, 4, 2)), "num_codes"),
    (dict(colour="red"), "fields"),
])
def test_bad_configurations_are_refused(overrides, match):
    with pytest.raises(ValueError, match=match):
        get_config("toy-f8", **overrides)


def test_unknown_configuration_name_lists_the_choices():
    with pytest.raises(ValueError, match="paper-f64"):
        IVQVAE("paper-f128")


def test_table7_ablation_switches_remove_attention_and_skips():
    """``attention=False`` removes every attention (the middle block's too); ``residual=False`` keeps the layers and
    drops the identity paths, so the same weights compute something else."""
    from fftd_course import blocks

    full = IVQVAE(get_config("toy-f8", attn_resolutions=(16,)))
    no_attn = IVQVAE(get_config("toy-f8", attn_resolutions=(16,), attention=False))
    assert any(isinstance(m, blocks.AttnBlock) for m in full.modules())
    assert not any(isinstance(m, blocks.AttnBlock) for m in no_attn.modules())
    plain = IVQVAE(get_config("toy-f8", residual=False))
    resnet = IVQVAE(get_config("toy-f8"))
    plain.load_state_dict(resnet.state_dict())
    res_blocks = [m for m in plain.modules() if isinstance(m, blocks.ResBlock)]
    assert res_blocks and all(not m.residual for m in res_blocks)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert not torch.allclose(plain.encode(x), resnet.encode(x))
        block = blocks.ResBlock(8, 8, num_groups=4, residual=False)
        h = torch.randn(1, 8, 4, 4)
        assert torch.allclose(block(h), block.conv2(block.dropout(blocks.swish(block.norm2(block.conv1(blocks.swish(block.norm1(h))))))))
