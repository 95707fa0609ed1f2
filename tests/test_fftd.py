"""fftd: configurations, patchify, embeddings, the block, the hourglass, initialisation, errors, compile."""

import itertools

import pytest
import torch

from fftd_course import diffusion, fftd
from fftd_course.fftd import FFTD, FFTDConfig, get_config, patchify, unpatchify

FUSIONS = ("adaptive", "add", "concat")
VARIANTS = list(itertools.product([1, 2, 4], [True, False], FUSIONS))


def small(**kw) -> FFTDConfig:
    return get_config("toy", **{"hidden_size": 32, "num_heads": 4, **kw})


def perturbed(model: FFTD, seed: int = 0) -> FFTD:
    """The zero-initialised gates make a fresh model output 0; nudge every parameter to test real paths."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize("patch, multires, kind", VARIANTS)
def test_every_variant_maps_latents_to_latents(patch, multires, kind):
    torch.manual_seed(0)
    model = perturbed(FFTD(small(patch_size=patch, multires=multires, fusion=kind)))
    x = torch.randn(2, 4, 4, 4)
    out = model(x, torch.tensor([0, 499]), torch.tensor([1, 3]))
    assert out.shape == (2, 4, 4, 4) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("patch, grids", [(1, (4, 2, 1, 2, 4)), (2, (2, 1, 1, 1, 2)), (4, (1, 1, 1, 1, 1))])
def test_levels_are_defined_for_every_patch_size(patch, grids):
    c = small(patch_size=patch)
    assert c.block_grids == grids  # E8
    assert small(patch_size=patch, multires=False).block_grids == (grids[0],) * 5
    model = FFTD(c)
    seen = []
    hooks = [b.register_forward_hook(lambda m, i, o: seen.append(o.shape[1])) for b in model.blocks]
    model(torch.randn(1, 4, 4, 4), torch.tensor([3]))
    for h in hooks:
        h.remove()
    assert seen == [g * g for g in grids]


def test_patchify_roundtrip_and_token_order():
    x = torch.randn(2, 4, 8, 8)
    for p in (1, 2, 4, 8):
        tokens = fftd.patchify(x, p)
        assert tokens.shape == (2, (8 // p) ** 2, p * p * 4)
        assert torch.equal(fftd.unpatchify(tokens, p, 4), x)
    tokens = fftd.patchify(x, 2)
    # token 1 is the patch in row 0, column 1; its first entry is channel 0 at pixel (0, 2)
    assert torch.equal(tokens[:, 1].reshape(2, 2, 2, 4)[..., 0], x[:, 0, 0:2, 2:4])


def test_timestep_embedding_and_position_embedding():
    emb = fftd.timestep_embedding(torch.tensor([0, 1, 499]), 256)
    assert emb.shape == (3, 256)
    assert torch.equal(emb[0, :128], torch.ones(128)) and torch.equal(emb[0, 128:], torch.zeros(128))
    assert (emb[1] - emb[0]).norm() < (emb[2] - emb[0]).norm()
    pos = fftd.sincos_position_embedding(32, 4)
    assert pos.shape == (16, 32)
    assert len({tuple(r.tolist()) for r in pos}) == 16  # every token gets its own position


def test_fresh_model_predicts_zero_and_every_block_is_the_identity():
    torch.manual_seed(0)
    for kind in FUSIONS:
        model = FFTD(small(fusion=kind))
        x = torch.randn(3, 4, 4, 4)
        assert torch.equal(model(x, torch.tensor([1, 2, 3]), torch.tensor([0, 1, 2])), torch.zeros_like(x))
        h, c = torch.randn(3, 16, 32), torch.randn(3, 32)
        for block in model.blocks:
            assert torch.equal(block(h, c), h)


def test_labels_change_the_prediction_and_none_means_null():
    torch.manual_seed(0)
    model = perturbed(FFTD(small())).eval()
    x, t = torch.randn(3, 4, 4, 4), torch.tensor([10, 10, 10])
    a = model(x, t, torch.tensor([0, 0, 0]))
    b = model(x, t, torch.tensor([1, 1, 1]))
    assert not torch.allclose(a, b)
    torch.testing.assert_close(model(x, t, None), model(x, t, torch.full((3,), model.null_label)))


def test_label_dropout_only_in_training_at_the_configured_rate():
    emb = fftd.LabelEmbedder(3, 8, dropout_prob=0.25)
    torch.manual_seed(0)
    dropped = emb.drop(torch.zeros(20000, dtype=torch.long))
    rate = (dropped == 3).float().mean().item()
    assert abs(rate - 0.25) < 0.015 and set(dropped.unique().tolist()) == {0, 3}
    y = torch.tensor([0, 1, 2])
    emb.eval()
    assert torch.equal(emb(y), emb.embedding_table(y))
    model = FFTD(small(class_dropout_prob=0.0)).train()
    assert model.y_embedder.dropout_prob == 0.0


def test_unconditional_model_has_only_the_null_label():
    model = FFTD(small(num_classes=0))
    assert model.null_label == 0 and model.y_embedder.embedding_table.num_embeddings == 1
    model(torch.randn(2, 4, 4, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 0\]"):
        model(torch.randn(1, 4, 4, 4), torch.tensor([0]), torch.tensor([1]))


def test_bad_inputs_get_clear_errors():
    model = FFTD(small())
    t = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"latents of shape \(B, 4, 4, 4\)"):
        model(torch.randn(2, 4, 8, 8), t)
    with pytest.raises(ValueError, match=r"latents of shape"):
        model(torch.randn(2, 3, 4, 4), t)
    with pytest.raises(ValueError, match="labels must lie in"):
        model(torch.randn(2, 4, 4, 4), t, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="labels must lie in"):
        model(torch.randn(2, 4, 4, 4), t, torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="integer tensor of shape"):
        model(torch.randn(2, 4, 4, 4), torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="non-negative"):
        model(torch.randn(2, 4, 4, 4), torch.tensor([-1, 0]))


@pytest.mark.parametrize("overrides, message", [
    ({"patch_size": 3}, "does not divide"),
    ({"patch_size": 0}, "positive integer"),
    ({"hidden_size": 30, "num_heads": 4}, "not divisible by num_heads"),
    ({"fusion": "mean"}, "fusion must be one of"),
    ({"num_classes": -1}, "num_classes"),
    ({"class_dropout_prob": 1.0}, "class_dropout_prob"),
])
def test_impossible_configs_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        small(**overrides)


def test_named_configs_and_unknown_names():
    assert set(fftd.CONFIGS) >= {"paper", "paper-p2", "paper-p4", "toy"}
    assert get_config("paper").patch_size == 1 and get_config("paper-p4").grid_size == 1
    with pytest.raises(ValueError, match="choose one of"):
        get_config("huge")
    with pytest.raises(ValueError, match="FFTDConfig fields"):
        get_config("toy", widht=3)


def test_paper_sizes_near_table_2():
    counts = {}
    for name in ("paper", "paper-p2", "paper-p4"):
        with torch.device("meta"):
            counts[name] = fftd.count_parameters(FFTD(name))
    assert 14e6 < counts["paper"] < 16e6  # Table 2: 14.98M
    assert counts["paper"] > counts["paper-p2"] > counts["paper-p4"]  # fewer levels, fewer convolutions


def test_ddim_sampler_drives_the_model_unchanged():
    torch.manual_seed(0)
    model = perturbed(FFTD(small())).eval()
    sampler = diffusion.DDIMSampler(diffusion.Diffusion(), num_steps=5)
    x = sampler.sample(model, torch.randn(3, 4, 4, 4), torch.tensor([0, 1, 2]), guidance_scale=2.0,
                       null_label=model.null_label)
    assert x.shape == (3, 4, 4, 4) and torch.isfinite(x).all()


COMPILE_VARIANTS = [(p, mr, "adaptive") for p in (1, 2, 4) for mr in (True, False)] + [(1, True, "add"), (1, True, "concat")]


@pytest.mark.parametrize("patch, multires, kind", COMPILE_VARIANTS)
def test_forward_compiles_as_one_graph(patch, multires, kind):
    """No graph breaks: no host-device synchronisation and no Python branch on tensor values."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = perturbed(FFTD(small(patch_size=patch, multires=multires, fusion=kind))).train()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    x, t, y = torch.randn(2, 4, 4, 4), torch.tensor([5, 7]), torch.tensor([0, 2])
    torch.manual_seed(1)
    got = compiled(x, t, y)
    torch.manual_seed(1)
    torch.testing.assert_close(got, model(x, t, y))
    assert compiled(x, t, None).shape == x.shape
    torch._dynamo.reset()


@pytest.mark.parametrize("name, overrides", [("toy", {}), ("toy", {"fusion": "concat", "multires": False}),
                                             ("paper-p2", {})])
def test_the_batched_adaln_forward_equals_calling_every_block_on_its_own(name, overrides):
    """FFTD.forward computes the six adaLN modulations in one product (issue 19); each block and the final layer,
    called on the conditioning vector alone, must give the same prediction."""
    torch.manual_seed(0)
    model = FFTD(get_config(name, **overrides)).eval()
    with torch.no_grad():
        for p in model.parameters():  # adaLN-Zero starts at zero: make every modulation matter
            p.add_(0.05 * torch.randn_like(p))
    c = model.config
    x = torch.randn(3, c.in_channels, c.input_size, c.input_size)
    t, y = torch.tensor([0, 250, 499]), torch.tensor([0, 1, c.null_label])
    cond = model.t_embedder(t) + model.y_embedder(y)
    layers = [m.adaLN_modulation for m in (*model.blocks, model.final_layer)]
    for got, layer in zip(model.modulations(cond), layers):
        torch.testing.assert_close(got, layer(cond))
    h = model.x_embedder(patchify(x, c.patch_size)) + model.pos_embed
    n = c.levels
    h1 = model.blocks[0](h, cond)
    h2 = model.blocks[1](model._down(h1, 0) if n >= 1 else h1, cond)
    h3 = model.blocks[2](model._down(h2, 1) if n >= 2 else h2, cond)
    h4 = model.skip_inner(h2, model.blocks[3](model._up(h3, 1) if n >= 2 else h3, cond))
    h5 = model.skip_outer(h1, model.blocks[4](model._up(h4, 0) if n >= 1 else h4, cond))
    want = unpatchify(model.final_layer(h5, cond), c.patch_size, c.in_channels)
    torch.testing.assert_close(model(x, t, y), want)


def test_both_branch_norms_of_a_block_are_one_parameter_free_layernorm():
    block = FFTD("toy").blocks[0]
    assert block.norm_attn is block.norm_mlp is block.norm
    assert not list(block.norm.parameters())
