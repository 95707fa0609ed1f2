"""The architecture diagrams: each builds for the toy and the paper configurations, names what the configuration
says (widths, resolutions, grids, patch sizes, codebook), follows a changed configuration, lays its labels out
without overlaps, and saves to PNG."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from fftd_course import diagrams, fftd, fusion, ivqvae  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def joined(fig) -> str:
    return "\n".join(texts(fig))


def level_widths(c: ivqvae.IVQVAEConfig) -> list[tuple[int, int, int]]:
    """(resolution, encoder in, out) of each level, computed here independently of the diagram."""
    out, channels, res = [], c.ch, c.resolution
    for i, m in enumerate(c.ch_mult):
        out.append((res, channels, c.ch * m))
        channels = c.ch * m
        res //= 2 if i < len(c.ch_mult) - 1 else 1
    return out


DIAGRAMS = {
    "ivqvae-toy": lambda: diagrams.ivqvae_diagram(ivqvae.get_config("toy-f8")),
    "ivqvae-paper": lambda: diagrams.ivqvae_diagram(ivqvae.get_config("paper-f64")),
    "fusion-toy": lambda: diagrams.adaptive_fusion_diagram(fftd.get_config("toy")),
    "fusion-paper": lambda: diagrams.adaptive_fusion_diagram(fftd.get_config("paper")),
    "block-toy": lambda: diagrams.fftd_block_diagram(fftd.get_config("toy")),
    "block-paper": lambda: diagrams.fftd_block_diagram(fftd.get_config("paper")),
    "hourglass-toy": lambda: diagrams.hourglass_diagram(fftd.get_config("toy")),
    "hourglass-paper-p2": lambda: diagrams.hourglass_diagram(fftd.get_config("paper-p2")),
    "hourglass-no-multires": lambda: diagrams.hourglass_diagram(fftd.get_config("paper", multires=False)),
    "pipeline-toy": lambda: diagrams.pipeline_diagram(ivqvae.get_config("toy-f8"), fftd.get_config("toy")),
    "pipeline-paper": lambda: diagrams.pipeline_diagram(ivqvae.get_config("paper-f64"), fftd.get_config("paper")),
}


@pytest.mark.parametrize("name", sorted(DIAGRAMS))
def test_builds_lays_out_cleanly_and_saves_to_png(name, tmp_path):
    fig = DIAGRAMS[name]()
    assert isinstance(fig, matplotlib.figure.Figure)
    assert diagrams.layout_problems(fig) == []
    path = tmp_path / f"{name}.png"
    fig.savefig(path)
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000
    width, height = fig.get_size_inches()
    assert 4 < width < 14 and 2 < height < 10, f"{name}: {width:.1f} x {height:.1f} inches"


def test_layout_checker_sees_overlaps_overflows_and_arrows_through_text():
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.text(0.5, 0.5, "one label", ha="center")
    ax.text(0.5, 0.5, "another one", ha="center")
    ax.text(1.4, 0.5, "outside the figure")
    assert any("overlap" in p for p in diagrams.layout_problems(fig))
    assert any("outside" in p for p in diagrams.layout_problems(fig))
    fig.axes[0].set_xlim(0, 1), fig.axes[0].set_ylim(0, 1)
    fig.fftd_arrows = [[(0.1, 0.52), (0.9, 0.52)]]
    assert any("arrow runs through" in p for p in diagrams.layout_problems(fig))


@pytest.mark.parametrize("name", ["toy-f8", "toy-f16", "paper-f8", "paper-f64"])
def test_ivqvae_names_every_level_resolution_and_shape(name):
    c = ivqvae.get_config(name)
    fig = diagrams.ivqvae_diagram(c)
    words = texts(fig)
    for res, cin, cout in level_widths(c):
        assert f"{res}×{res}" in words
        assert any(w.endswith((f"ResBlock {cin}→{cout}", f"Attn) {cin}→{cout}")) for w in words), (res, cin)
        assert f"(B, {cout}, {res}, {res})" in words
    assert sum("Downsample" in w for w in words) == len(c.ch_mult) - 1
    assert sum("Upsample" in w for w in words) == len(c.ch_mult) - 1
    assert f"{c.num_codes} codes × {c.z_channels}" in joined(fig)
    assert f"z_e (B, {c.z_channels}, {c.latent_size}, {c.latent_size})" in words
    assert f"f = {c.f}" in joined(fig)


def test_ivqvae_follows_a_changed_config():
    base = ivqvae.get_config("toy-f8")
    wider = ivqvae.get_config("toy-f8", ch=32, num_res_blocks=2, attn_resolutions=(16,), num_codes=512)
    before, after = joined(diagrams.ivqvae_diagram(base)), joined(diagrams.ivqvae_diagram(wider))
    assert "ResBlock 16→16" in before and "ResBlock 16→16" not in after
    assert "2× (ResBlock + Attn) 32→32" in after    # the 16x16 level now attends, two blocks per level
    assert "512 codes" in after and "256 codes" in before
    no_attention = joined(diagrams.ivqvae_diagram(ivqvae.get_config("toy-f8", attention=False)))
    assert "Attn" not in no_attention
    fsq = joined(diagrams.ivqvae_diagram(ivqvae.get_config("toy-f8", quantizer="fsq")))
    assert "FSQ, levels (4, 4, 4, 4)" in fsq


@pytest.mark.parametrize("name", ["toy", "paper"])
def test_fusion_names_both_gates_with_the_module_widths(name):
    c = fftd.get_config(name)
    d, n, g = c.hidden_size, c.num_tokens, c.grid_size
    module = fusion.AdaptiveFusion(d)
    hidden, spatial = module.channel_gate[0].out_features, module.spatial_gate[0].out_channels
    text = joined(diagrams.adaptive_fusion_diagram(c))
    assert f"Linear {4 * d}→{hidden}, ReLU,\nLinear {hidden}→{d}, σ (eq. 20)" in text
    assert f"Conv3×3 {2 * d}→{spatial}" in text and f"Conv3×3 {spatial}→1, σ (eq. 22)" in text
    assert f"Mean and Max over\nthe {n} tokens (eq. 18)" in text
    assert f"Reshape to {g}×{g} (eq. 21)" in text
    assert f"(B, 1, {d})" in text and f"(B, {n}, 1)" in text   # w_channel per channel, w_spatial per token
    for eq in ("eq. 23", "eq. 24", "eq. 25"):
        assert eq in text
    assert "channel gate" in text and "spatial gate" in text


def test_fusion_follows_width_and_grid():
    small = joined(diagrams.adaptive_fusion_diagram(fusion.AdaptiveFusion(32), grid=2))
    assert "Linear 128→2" in small and "Reshape to 2×2" in small and "the 4 tokens" in small
    assert "Reshape to 1×1" in joined(diagrams.adaptive_fusion_diagram(64, grid=1))
    with pytest.raises(ValueError, match="grid"):
        diagrams.adaptive_fusion_diagram(64)


@pytest.mark.parametrize("name", ["toy", "paper"])
def test_block_names_branches_conditioning_and_fusion(name):
    c = fftd.get_config(name)
    d = c.hidden_size
    text = joined(diagrams.fftd_block_diagram(c))
    assert f"Attention\n{c.num_heads} heads × {d // c.num_heads}" in text
    assert f"MLP {d}→{int(d * c.mlp_ratio)}→{d}" in text
    assert f"Linear {d}→{6 * d}" in text
    assert f"table of {c.num_classes + 1} rows" in text and f"sin/cos ({c.frequency_embedding_size})" in text
    assert "AdaptiveFusion (eq. 18-25)" in text and "residual stream" in text
    assert "Add (Table 9)" in joined(diagrams.fftd_block_diagram(fftd.get_config(name, fusion="add")))


@pytest.mark.parametrize("name,overrides", [("toy", {}), ("paper-p2", {}), ("paper-p4", {}),
                                            ("paper", {"multires": False})])
def test_hourglass_names_each_block_grid_and_the_skips(name, overrides):
    c = fftd.get_config(name, **overrides)
    fig = diagrams.hourglass_diagram(c)
    words = texts(fig)
    for i, g in enumerate(c.block_grids):
        assert any(w.startswith(f"Block{i + 1}\n{g}×{g} grid\n{g * g} token") for w in words), (i, g)
    changes = [a != b for a, b in zip(c.block_grids, c.block_grids[1:])]
    assert sum("Downsample" in w for w in words) == sum(changes[:2])
    assert sum("Upsample" in w for w in words) == sum(changes[2:])
    assert sum(w == "long skip (E14)" for w in words) == 2
    assert f"patchify p = {c.patch_size}" in joined(fig)
    assert any(w.endswith("x₁ = Block2\nx₂ = Block4") for w in words)
    assert any(w.endswith("x₁ = Block1\nx₂ = Block5") for w in words)


def test_hourglass_follows_patch_size():
    p1 = joined(diagrams.hourglass_diagram(fftd.get_config("toy")))
    p2 = joined(diagrams.hourglass_diagram(fftd.get_config("toy", patch_size=2)))
    assert "Block1\n4×4 grid\n16 tokens" in p1 and "Block1\n2×2 grid\n4 tokens" in p2
    assert "Linear 16→64" in p2 and "Linear 4→64" in p1


def test_pipeline_names_both_paths_and_follows_the_configs():
    v, f = ivqvae.get_config("toy-f8"), fftd.get_config("toy")
    text = joined(diagrams.pipeline_diagram(v, f, timesteps=500, ddim_steps=50))
    for part in ("Algorithm 2", "Algorithm 3", "eq. 27", "eq. 28", "eq. 29", "eq. 30", "E16", "encoder E",
                 "decoder G", "nearest of 256 codes", "(B, 3, 32, 32)", "z_q (B, 4, 4, 4)", "50 of\n500 steps"):
        assert part in text, part
    other = joined(diagrams.pipeline_diagram(ivqvae.get_config("toy-f16"), fftd.get_config("toy", input_size=2),
                                             timesteps=100, ddim_steps=10))
    assert "(B, 4, 2, 2)" in other and "10 of\n100 steps" in other and "U{1..100}" in other
    with pytest.raises(ValueError, match="latents"):
        diagrams.pipeline_diagram(ivqvae.get_config("toy-f16"), f)
