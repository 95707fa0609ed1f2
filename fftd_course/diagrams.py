"""Pictures of the architecture, drawn from the configuration objects (matplotlib only).

Each function takes the configuration a model is built from and returns a matplotlib ``Figure``, so that the
picture stays true when a configuration changes: every channel count, resolution, patch size, grid and
codebook size printed in it is read from the object, never typed in.

* :func:`ivqvae_diagram` ``(IVQVAEConfig)``: stage 1, the IVQ-VAE of section 3.1: encoder (eq. 1-4) with its
  residual blocks (eq. 2), downsampling (eq. 3) and attention (eq. 8-10), the quantizer and its codebook
  (``L_vq``), decoder (eq. 5-7), with the tensor shape after every part;
* :func:`adaptive_fusion_diagram` ``(FFTDConfig or AdaptiveFusion)``: AdaptiveFusion (section 3.2.3,
  eq. 18-25), its channel gate and its spatial gate, what each pools and where each multiplies;
* :func:`fftd_block_diagram` ``(FFTDConfig)``: one FFTD block (E13): adaLN-Zero modulation from ``t`` and
  ``y``, attention and MLP in parallel, their fusion added to the residual stream;
* :func:`hourglass_diagram` ``(FFTDConfig)``: the five blocks of section 3.2.2 on their grids (E8),
  the resampling of eq. 16-17 and the two long skips (E14);
* :func:`pipeline_diagram` ``(IVQVAEConfig, FFTDConfig)``: the two stages together (section 3.3): the
  training path of Algorithm 2 (eq. 27-28) and the sampling path of Algorithm 3 (eq. 29-30).

The layout works in inches: every box is sized from its measured label, and the figure from what it holds, so
labels neither overflow their boxes nor overlap at matplotlib's default size. :func:`layout_problems` lists
any that do (the tests call it for every configuration).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch
from matplotlib.path import Path

from .fftd import FFTDConfig
from .fusion import AdaptiveFusion
from .ivqvae import IVQVAEConfig

__all__ = ["ivqvae_diagram", "adaptive_fusion_diagram", "fftd_block_diagram", "hourglass_diagram",
           "pipeline_diagram", "layout_problems", "KINDS"]

LABEL, SMALL, TITLE = 8.0, 6.5, 9.5  # font sizes (points) of box labels, annotations and titles
PAD_X, PAD_Y = 0.09, 0.06             # inches between a label and its box's edge
GAP = 0.32                            # inches between neighbouring boxes
EDGE = "#4d4d4d"                      # arrows and plain text

# kind -> (fill, edge, what the colour means in the legend)
KINDS = {
    "data": ("#f2f2f2", "#8c8c8c", "tensor"),
    "conv": ("#dceaf7", "#4a7bb7", "convolutions, residual blocks"),
    "attn": ("#fde3cc", "#d9822b", "attention"),
    "block": ("#fde3cc", "#d9822b", "FFTD block (attention, MLP, fusion)"),
    "quant": ("#dff0d8", "#4f8a3c", "quantizer, codebook"),
    "mlp": ("#fff4c2", "#b8962e", "linear layers, MLP"),
    "cond": ("#f7d9e6", "#b24a7a", "conditioning (t, y)"),
    "fusion": ("#e8def5", "#7651a8", "fusion"),
    "stage2": ("#e8def5", "#7651a8", "stage 2: FFTD"),
    "op": ("#ffffff", "#555555", "operation"),
}


# ---- measuring and laying out ----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _measuring_figure() -> tuple[Figure, object]:
    fig = Figure(dpi=72)  # at 72 dpi a pixel is a point
    return fig, FigureCanvasAgg(fig).get_renderer()


@functools.lru_cache(maxsize=4096)
def _measure(text: str, size: float) -> tuple[float, float]:
    """Width and height in inches of ``text`` (several lines, maths allowed) at ``size`` points."""
    fig, renderer = _measuring_figure()
    artist = fig.text(0, 0, text, fontsize=size, multialignment="center")
    box = artist.get_window_extent(renderer)
    artist.remove()
    return box.width / 72, box.height / 72


@dataclass
class _Node:
    """A box (or a circle) centred at ``(x, y)``, ``w`` by ``h`` inches."""

    x: float
    y: float
    w: float
    h: float
    text: str
    kind: str
    size: float = LABEL
    circle: bool = False

    @property
    def left(self) -> float:
        return self.x - self.w / 2

    @property
    def right(self) -> float:
        return self.x + self.w / 2

    @property
    def top(self) -> float:
        return self.y + self.h / 2

    @property
    def bottom(self) -> float:
        return self.y - self.h / 2


@dataclass
class _Scene:
    """Boxes, arrows and free text in inch coordinates, drawn at the end by :meth:`render`."""

    nodes: list[_Node] = field(default_factory=list)
    arrows: list[tuple[list[tuple[float, float]], bool, bool]] = field(default_factory=list)
    texts: list[tuple[float, float, str, float, str, str, dict]] = field(default_factory=list)

    def box(self, text: str, kind: str, x: float | None = None, y: float = 0.0, left: float | None = None,
            w: float | None = None, h: float | None = None, size: float = LABEL) -> _Node:
        """A box around ``text``, centred at ``x`` (or with its left edge at ``left``), at least ``w`` x ``h``."""
        tw, th = _measure(text, size)
        w, h = max(w or 0.0, tw + 2 * PAD_X), max(h or 0.0, th + 2 * PAD_Y)
        x = left + w / 2 if left is not None else x
        node = _Node(x, y, w, h, text, kind, size)
        self.nodes.append(node)
        return node

    def op(self, symbol: str, x: float, y: float) -> _Node:
        """A small circle holding ``symbol`` (``+`` or ``×``)."""
        node = _Node(x, y, 0.26, 0.26, symbol, "op", LABEL + 1, circle=True)
        self.nodes.append(node)
        return node

    def arrow(self, *points: tuple[float, float], dashed: bool = False, head: bool = True) -> None:
        """A polyline through ``points``, with an arrow head at the last one (``head=False``: none)."""
        self.arrows.append(([tuple(map(float, p)) for p in points], dashed, head))

    def text(self, x: float, y: float, s: str, size: float = SMALL, ha: str = "center", va: str = "center",
             **style) -> None:
        self.texts.append((x, y, s, size, ha, va, style))

    def legend(self, kinds: Sequence[str], left: float, y: float) -> None:
        """One small swatch and its meaning per kind, in a row starting at ``left``."""
        x = left
        for kind in kinds:
            swatch = self.box(" ", kind, left=x, y=y, w=0.22, h=0.14, size=SMALL)
            self.text(swatch.right + 0.06, y, KINDS[kind][2], ha="left")
            x = swatch.right + 0.06 + _measure(KINDS[kind][2], SMALL)[0] + 0.25

    def _bounds(self) -> tuple[float, float, float, float]:
        xs, ys = [], []
        for n in self.nodes:
            xs += [n.left, n.right]
            ys += [n.bottom, n.top]
        for points, _, _ in self.arrows:
            xs += [p[0] for p in points]
            ys += [p[1] for p in points]
        for x, y, s, size, ha, va, _ in self.texts:
            w, h = _measure(s, size)
            x0 = {"left": x, "center": x - w / 2, "right": x - w}[ha]
            y0 = {"bottom": y, "center": y - h / 2, "top": y - h, "baseline": y - h / 2}[va]
            xs += [x0, x0 + w]
            ys += [y0, y0 + h]
        return min(xs), max(xs), min(ys), max(ys)

    def render(self, title: str, margin: float = 0.15) -> Figure:
        """The figure: title on top, sized to hold everything with ``margin`` inches around it."""
        x0, x1, y0, y1 = self._bounds()
        tw, th = _measure(title, TITLE)
        self.texts.append(((x0 + x1) / 2, y1 + 0.12 + th / 2, title, TITLE, "center", "center", {"weight": "bold"}))
        x0, x1, y0, y1 = min(x0, (x0 + x1 - tw) / 2), max(x1, (x0 + x1 + tw) / 2), y0, y1 + 0.12 + th
        width, height = x1 - x0 + 2 * margin, y1 - y0 + 2 * margin
        fig = plt.figure(figsize=(width, height))
        ax = fig.add_axes((0, 0, 1, 1))
        ax.set_xlim(x0 - margin, x1 + margin)
        ax.set_ylim(y0 - margin, y1 + margin)
        ax.set_axis_off()
        for node in self.nodes:
            _draw_node(ax, node)
        for points, dashed, head in self.arrows:
            ax.add_patch(FancyArrowPatch(path=Path(points), arrowstyle="-|>" if head else "-", mutation_scale=9,
                                         lw=1.0, color=EDGE, linestyle="--" if dashed else "-", shrinkA=0, shrinkB=0,
                                         zorder=1))
        for x, y, s, size, ha, va, style in self.texts:
            style = {"color": EDGE, **style}
            ax.text(x, y, s, fontsize=size, ha=ha, va=va, zorder=3, **style)
        fig.fftd_arrows = [points for points, _, _ in self.arrows]  # for layout_problems
        return fig


def _draw_node(ax, node: _Node) -> None:
    fill, edge, _ = KINDS[node.kind]
    if node.circle:
        patch = Circle((node.x, node.y), node.w / 2, facecolor=fill, edgecolor=edge, lw=1.0, zorder=2)
    else:
        patch = FancyBboxPatch((node.left, node.bottom), node.w, node.h, boxstyle="round,pad=0,rounding_size=0.05",
                               facecolor=fill, edgecolor=edge, lw=1.0, zorder=2)
    ax.add_patch(patch)
    if node.text.strip():
        label = ax.text(node.x, node.y, node.text, fontsize=node.size, ha="center", va="center",
                        multialignment="center", color="black", zorder=3)
        label.fftd_box = patch  # layout_problems checks that it stays inside


def _row(scene: _Scene, items: Sequence[tuple[str, str]], left: float, y: float, gap: float = GAP,
         arrows: bool = True) -> list[_Node]:
    """Boxes ``(text, kind)`` left to right from ``left`` at height ``y``, joined by arrows."""
    nodes = []
    for text, kind in items:
        node = scene.box(text, kind, left=left, y=y)
        if arrows and nodes:
            scene.arrow((nodes[-1].right, y), (node.left, y))
        nodes.append(node)
        left = node.right + gap
    return nodes


def _shape(*dims: object) -> str:
    return "(" + ", ".join(str(d) for d in dims) + ")"


# ---- the checker the tests use -----------------------------------------------------------------------------------

def layout_problems(fig: Figure, tolerance: float = 1.0) -> list[str]:
    """What is wrong with a diagram's layout, as sentences (an empty list: nothing).

    Checks, in display pixels with ``tolerance`` pixels of slack: no two texts overlap; every box label lies
    inside its box; every text lies inside the figure; no arrow runs through a text.
    """
    renderer = fig.canvas.get_renderer()
    texts = [t for ax in fig.axes for t in ax.texts if t.get_text().strip()]
    boxes = [(t, t.get_window_extent(renderer).expanded(1.0, 1.0).padded(-tolerance)) for t in texts]
    problems = []
    frame = fig.bbox.padded(tolerance)
    for i, (t, b) in enumerate(boxes):
        if not (frame.contains(b.x0, b.y0) and frame.contains(b.x1, b.y1)):
            problems.append(f"text {t.get_text()!r} runs outside the figure")
        patch = getattr(t, "fftd_box", None)
        if patch is not None:
            p = patch.get_window_extent(renderer).padded(tolerance)
            if not (p.contains(b.x0, b.y0) and p.contains(b.x1, b.y1)):
                problems.append(f"label {t.get_text()!r} does not fit inside its box")
        for u, c in boxes[i + 1:]:
            if b.overlaps(c):
                problems.append(f"texts {t.get_text()!r} and {u.get_text()!r} overlap")
    to_display = fig.axes[0].transData if fig.axes else None
    for points in getattr(fig, "fftd_arrows", []):
        pixels = to_display.transform(points)
        for (xa, ya), (xb, yb) in zip(pixels[:-1], pixels[1:]):
            for k in range(41):
                px, py = xa + (xb - xa) * k / 40, ya + (yb - ya) * k / 40
                hit = next((t for t, b in boxes if b.contains(px, py)), None)
                if hit is not None:
                    problems.append(f"an arrow runs through the text {hit.get_text()!r}")
                    break
    return sorted(set(problems))


# ---- stage 1: the IVQ-VAE ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Level:
    resolution: int
    enc_in: int
    dec_in: int
    out: int
    attend: bool


def _ivqvae_levels(c: IVQVAEConfig) -> list[_Level]:
    """The encoder's levels as :class:`~fftd_course.ivqvae.Encoder` builds them, with the decoder's input width
    at the same resolution (:class:`~fftd_course.ivqvae.Decoder` runs the multipliers in reverse)."""
    levels, channels, resolution = [], c.ch, c.resolution
    for i, mult in enumerate(c.ch_mult):
        out = c.ch * mult
        dec_in = c.ch * c.ch_mult[min(i + 1, len(c.ch_mult) - 1)]
        levels.append(_Level(resolution, channels, dec_in, out, c.attention and resolution in c.attn_resolutions))
        channels = out
        if i < len(c.ch_mult) - 1:
            resolution //= 2
    return levels


def _res_label(c: IVQVAEConfig, cin: int, cout: int, attend: bool) -> str:
    what = "(ResBlock + Attn)" if attend else "ResBlock"
    times = f"{c.num_res_blocks}× " if c.num_res_blocks > 1 else ""
    return f"{times}{what} {cin}→{cout}"


def _ivqvae_rows(c: IVQVAEConfig) -> list[tuple]:
    """One row per part, top to bottom: (encoder label, kind, shape, resolution, decoder label, kind, shape)."""
    r, z, top = c.resolution, c.z_channels, c.ch * c.ch_mult[-1]
    h = c.latent_size
    mid = "Mid: ResBlock, Attn, ResBlock" if c.attention else "Mid: ResBlock, ResBlock"
    mid_kind = "attn" if c.attention else "conv"
    rows = [("image x", "data", _shape("B", c.in_channels, r, r), f"{r}×{r}",
             "reconstruction x̂ in [-1, 1]", "data", _shape("B", c.in_channels, r, r)),
            (f"Conv3×3 {c.in_channels}→{c.ch} (eq. 1)", "conv", _shape("B", c.ch, r, r), "",
             f"GN, Swish, Conv3×3 {c.ch}→{c.in_channels}, tanh (eq. 7)", "conv", _shape("B", c.in_channels, r, r))]
    for lv in _ivqvae_levels(c):
        kind = "attn" if lv.attend else "conv"
        shape = _shape("B", lv.out, lv.resolution, lv.resolution)
        rows.append((_res_label(c, lv.enc_in, lv.out, lv.attend), kind, shape, f"{lv.resolution}×{lv.resolution}",
                     _res_label(c, lv.dec_in, lv.out, lv.attend), kind, shape))
    rows.append((f"{mid} ({top})", mid_kind, _shape("B", top, h, h), "", f"{mid} ({top})", mid_kind,
                 _shape("B", top, h, h)))
    rows.append((f"GN, Swish, Conv1×1 {top}→{z} (eq. 4)", "conv", "z_e " + _shape("B", z, h, h), f"{h}×{h}",
                 f"Conv1×1 {z}→{top} (eq. 5)", "conv", _shape("B", top, h, h)))
    return rows


def _column(scene: _Scene, labels: Sequence[tuple[str, str]], x: float, ys: Sequence[float], width: float
            ) -> list[_Node]:
    return [scene.box(text, kind, x=x, y=y, w=width, h=0.27) for (text, kind), y in zip(labels, ys)]


def ivqvae_diagram(config: IVQVAEConfig) -> Figure:
    """The IVQ-VAE of ``config`` (section 3.1): encoder down the left (eq. 1-4), the quantizer with its codebook
    at the bottom (``L_vq``), decoder up the right (eq. 5-7); residual blocks (eq. 2), attention (eq. 8-10),
    down- and upsampling (eq. 3, 6) with every level's width and resolution, and the shape after each part."""
    c, pitch = config, 0.52
    rows = _ivqvae_rows(c)
    ys = [-pitch * i for i in range(len(rows))]
    enc_w = max(_measure(r[0], LABEL)[0] for r in rows) + 2 * PAD_X
    dec_w = max(_measure(r[4], LABEL)[0] for r in rows) + 2 * PAD_X
    shape_w = max(_measure(r[k], SMALL)[0] for r in rows for k in (2, 6))
    res_w = max(0.75, max(_measure(r[3], SMALL)[0] for r in rows) + 0.2)
    enc_x = shape_w + 0.15 + enc_w / 2
    res_x = enc_x + enc_w / 2 + 0.2 + res_w / 2
    dec_x = res_x + res_w / 2 + 0.2 + dec_w / 2
    scene = _Scene()
    enc = _column(scene, [(r[0], r[1]) for r in rows], enc_x, ys, enc_w)
    dec = _column(scene, [(r[4], r[5]) for r in rows], dec_x, ys, dec_w)
    n_levels = len(c.ch_mult)
    for i, (row, y) in enumerate(zip(rows, ys)):
        scene.text(enc[i].left - 0.1, y, row[2], ha="right")
        scene.text(dec[i].right + 0.1, y, row[6], ha="left")
        if row[3]:
            scene.text(res_x, y, row[3], color="#777777")
        if i + 1 < len(rows):
            scene.arrow((enc_x, enc[i].bottom), (enc_x, enc[i + 1].top))
            scene.arrow((dec_x, dec[i + 1].top), (dec_x, dec[i].bottom))
        if 2 <= i < 2 + n_levels - 1:  # between two levels: eq. 3 on the way down, eq. 6 on the way up
            gap_y = (y + ys[i + 1]) / 2
            scene.text(enc_x + 0.08, gap_y, "Downsample ÷2 (eq. 3)", ha="left")
            scene.text(dec_x + 0.08, gap_y, "Upsample ×2 (eq. 6)", ha="left")
    quant_y = ys[-1] - 0.75
    codebook = (f"FSQ, levels {c.fsq_levels}" if c.quantizer == "fsq" else
                f"codebook Z: {c.num_codes} codes × {c.z_channels}" + (", l2-normalised" if c.l2_normalize else ""))
    quant = scene.box("Quantize: nearest code, " + r"$L_{vq}$" + f"\n{codebook}", "quant", x=res_x, y=quant_y)
    scene.arrow((enc_x, enc[-1].bottom), (enc_x, quant_y), (quant.left, quant_y))
    scene.arrow((quant.right, quant_y), (dec_x, quant_y), (dec_x, dec[-1].bottom))
    scene.text(enc_x + 0.08, (enc[-1].bottom + quant.top) / 2, "z_e", ha="left")
    scene.text(dec_x - 0.08, (dec[-1].bottom + quant.top) / 2, "z_q", ha="right")
    scene.text(enc_x, ys[0] + 0.3, "encoder E", size=LABEL, weight="bold")
    scene.text(dec_x, ys[0] + 0.3, "decoder G", size=LABEL, weight="bold")
    scene.legend(["data", "conv", "attn", "quant"], left=0.0, y=quant_y - 0.55)
    title = (f"IVQ-VAE (section 3.1): {c.resolution}×{c.resolution} image → {c.z_channels}×{c.latent_size}×"
             f"{c.latent_size} latent, f = {c.f}, {c.bits_per_image:.0f} bits per image; B = batch")
    return scene.render(title)


# ---- AdaptiveFusion ----------------------------------------------------------------------------------------------

def _fusion_sizes(config: FFTDConfig | AdaptiveFusion | int, grid: int | None) -> tuple[int, int, int, int]:
    """``(D, channel-gate hidden width, spatial-gate width, grid side)``, read from a fusion module."""
    if isinstance(config, FFTDConfig):
        with torch.device("meta"):
            module = AdaptiveFusion(config.hidden_size)
        grid = config.grid_size if grid is None else grid
    elif isinstance(config, AdaptiveFusion):
        module = config
    else:
        with torch.device("meta"):
            module = AdaptiveFusion(int(config))
    if grid is None:
        raise ValueError("adaptive_fusion_diagram needs the grid side for a module or a width: pass grid=")
    return module.dim, module.channel_gate[0].out_features, module.spatial_gate[0].out_channels, grid


def adaptive_fusion_diagram(config: FFTDConfig | AdaptiveFusion | int, grid: int | None = None) -> Figure:
    """AdaptiveFusion (section 3.2.3, eq. 18-25) at the width of ``config`` (an ``FFTDConfig``, an
    ``AdaptiveFusion`` or a width ``D``) on a ``grid`` x ``grid`` token grid (default: the config's token grid).

    The channel gate (eq. 18-20) pools ``x1 || x2`` over the tokens and weighs the channels of ``LayerNorm(x1)``
    (eq. 23); the spatial gate (eq. 21-22) convolves ``x1 || x2`` on the grid and weighs the tokens of
    ``LayerNorm(x2)`` (eq. 24); eq. 25 adds both and ``s · Linear(x1 || x2)``. Errata E1 and E2 as the code has them.
    """
    d, hidden, spatial, g = _fusion_sizes(config, grid)
    n = g * g
    p = 0.78
    y_x1, y_ch, y_mid, y_sp, y_x2 = 4 * p, 3 * p, 2 * p, p, 0.0
    scene = _Scene()
    x1 = scene.box(f"x₁ {_shape('B', n, d)}", "data", left=0.12, y=y_x1)
    x2 = scene.box(f"x₂ {_shape('B', n, d)}", "data", left=0.12, y=y_x2)
    cat = scene.box(f"x₁ ‖ x₂\n{_shape('B', n, 2 * d)}", "data", left=max(x1.right, x2.right) - 0.3, y=y_mid)
    start = cat.right + 0.45
    chan = _row(scene, [(f"Mean and Max over\nthe {n} tokens (eq. 18)", "fusion"),
                        (f"Concat (eq. 19)\n{_shape('B', 4 * d)}", "fusion"),
                        (f"Linear {4 * d}→{hidden}, ReLU,\nLinear {hidden}→{d}, σ (eq. 20)", "mlp")], start, y_ch)
    spat = _row(scene, [(f"Reshape to {g}×{g} (eq. 21)\n{_shape('B', 2 * d, g, g)}", "fusion"),
                        (f"Conv3×3 {2 * d}→{spatial}, ReLU, Conv3×3 {spatial}→{spatial},\n"
                         f"ReLU, Conv3×3 {spatial}→1, σ (eq. 22)", "conv")], start, y_sp)
    res = _row(scene, [(f"Linear {2 * d}→{d} (eq. 25)", "mlp"), ("× s (learned, starts at 0)", "op")], start, y_mid)
    ln1 = scene.box("LayerNorm (eq. 23)", "mlp", left=start, y=y_x1)
    ln2 = scene.box("LayerNorm (eq. 24)", "mlp", left=start, y=y_x2)
    scene.arrow((x1.x, x1.bottom), (x1.x, y_mid + 0.08), (cat.left, y_mid + 0.08))
    scene.arrow((x2.x - 0.12, x2.top), (x2.x - 0.12, y_mid - 0.08), (cat.left, y_mid - 0.08))
    scene.arrow((x1.right, y_x1), (ln1.left, y_x1))
    scene.arrow((x2.right, y_x2), (ln2.left, y_x2))
    scene.arrow((cat.x, cat.top), (cat.x, y_ch), (chan[0].left, y_ch))
    scene.arrow((cat.x, cat.bottom), (cat.x, y_sp), (spat[0].left, y_sp))
    scene.arrow((cat.right, y_mid), (res[0].left, y_mid))
    x_mul = max(chan[-1].right, spat[-1].right, res[-1].right) + 0.35
    w_ch, w_sp = f"$w_{{channel}}$ {_shape('B', 1, d)}", f"$w_{{spatial}}$ {_shape('B', n, 1)}"
    x_add = x_mul + max(_measure(w_ch, SMALL)[0], _measure(w_sp, SMALL)[0]) + 0.35
    mul1, mul2, add = scene.op("×", x_mul, y_x1), scene.op("×", x_mul, y_x2), scene.op("+", x_add, y_mid)
    scene.arrow((ln1.right, y_x1), (mul1.left, y_x1))
    scene.arrow((ln2.right, y_x2), (mul2.left, y_x2))
    scene.arrow((chan[-1].right, y_ch), (x_mul, y_ch), (x_mul, mul1.bottom))
    scene.arrow((spat[-1].right, y_sp), (x_mul, y_sp), (x_mul, mul2.top))
    scene.text(x_mul + 0.08, (y_ch + y_x1) / 2, w_ch, ha="left")
    scene.text(x_mul + 0.08, (y_sp + y_x2) / 2, w_sp, ha="left")
    scene.arrow((mul1.right, y_x1), (x_add, y_x1), (x_add, add.top))
    scene.arrow((mul2.right, y_x2), (x_add, y_x2), (x_add, add.bottom))
    scene.arrow((res[-1].right, y_mid), (add.left, y_mid))
    out = scene.box(f"x_fused\n{_shape('B', n, d)}", "data", left=add.right + 0.35, y=y_mid)
    scene.arrow((add.right, y_mid), (out.left, y_mid))
    scene.text(start, y_ch + 0.33, f"channel gate: one weight per channel of x₁, the same for all {n} tokens",
               ha="left", style="italic")
    scene.text(start, y_sp - 0.36, f"spatial gate: one weight per token of x₂, the same for all {d} channels",
               ha="left", style="italic")
    scene.text(0.0, y_x2 - 0.5, "E1: p_max is a max pool (the paper prints Mean twice).  E2: Linear₁ takes "
               f"the 4D = {4 * d} pooled numbers, with a ReLU after it (docs/ERRATA.md).", ha="left")
    scene.legend(["data", "fusion", "mlp", "conv", "op"], left=0.0, y=y_x2 - 0.8)
    return scene.render(f"AdaptiveFusion (eq. 18-25): D = {d}, a {g}×{g} grid of L = {n} tokens; B = batch")


# ---- FFTD: one block and the hourglass ---------------------------------------------------------------------------

def fftd_block_diagram(config: FFTDConfig) -> Figure:
    """One FFTD block of ``config`` (E13): ``x + Fuse(α_a · Attn(modulate(LN(x))), α_m · MLP(modulate(LN(x))))``,
    the two branches in parallel, conditioned by adaLN-Zero on ``c = emb(t) + emb(y)``; the fusion is
    AdaptiveFusion (eq. 18-25) or the config's ablation (Table 9)."""
    c, d = config, config.hidden_size
    n, hidden = c.num_tokens, int(d * c.mlp_ratio)
    p = 0.62
    y_attn, y_mid, y_mlp = 2 * p, p, 0.0
    scene = _Scene()
    x = scene.box(f"tokens x\n{_shape('B', n, d)}", "data", left=0.0, y=y_mid)
    lanes = [[("LayerNorm", "mlp"), ("modulate\n" + r"$\beta_a, \gamma_a$", "cond"),
              (f"Attention\n{c.num_heads} heads × {d // c.num_heads}", "attn"), (r"gate $\times\,\alpha_a$", "cond")],
             [("LayerNorm", "mlp"), ("modulate\n" + r"$\beta_m, \gamma_m$", "cond"),
              (f"MLP {d}→{hidden}→{d}\nGELU", "mlp"), (r"gate $\times\,\alpha_m$", "cond")]]
    widths = [max(_measure(lane[k][0], LABEL)[0] for lane in lanes) + 2 * PAD_X for k in range(4)]
    start = x.right + 0.45
    nodes = []
    for lane, y in zip(lanes, (y_attn, y_mlp)):
        left, row = start, []
        for (text, kind), w in zip(lane, widths):
            row.append(scene.box(text, kind, left=left, y=y, w=w))
            if len(row) > 1:
                scene.arrow((row[-2].right, y), (row[-1].left, y))
            left = row[-1].right + GAP
        nodes.append(row)
        scene.arrow((x.right, y_mid), (x.right + 0.2, y_mid), (x.right + 0.2, y), (row[0].left, y))
    names = {"adaptive": "AdaptiveFusion (eq. 18-25)", "add": "Add (Table 9)", "concat": "Concat (Table 9)"}
    fuse = scene.box(f"{names[c.fusion]}\nx₁ = attention, x₂ = MLP", "fusion", left=nodes[0][-1].right + 0.3,
                     y=y_mid)
    for row, y, end in ((nodes[0], y_attn, fuse.top), (nodes[1], y_mlp, fuse.bottom)):
        scene.arrow((row[-1].right, y), (fuse.x, y), (fuse.x, end))
    add = scene.op("+", fuse.right + 0.4, y_mid)
    scene.arrow((fuse.right, y_mid), (add.left, y_mid))
    out = scene.box(f"x + Fuse(a, m)\n{_shape('B', n, d)}", "data", left=add.right + 0.35, y=y_mid)
    scene.arrow((add.right, y_mid), (out.left, y_mid))
    y_res = nodes[0][0].top + 0.3
    scene.arrow((x.x, x.top), (x.x, y_res), (add.x, y_res), (add.x, add.top))
    scene.text((x.x + add.x) / 2, y_res + 0.04, "residual stream", va="bottom")
    _conditioning_row(scene, c, y_mlp - 1.05)
    return scene.render(f"One FFTD block (E13): D = {d}, {c.num_heads} heads, MLP ratio {c.mlp_ratio:g}, "
                        f"fusion '{c.fusion}', on {n} token(s); B = batch")


def _conditioning_row(scene: _Scene, c: FFTDConfig, y: float) -> None:
    """t and y -> c -> adaLN -> the six modulation vectors, in a row at height ``y``, with a legend below."""
    d = c.hidden_size
    t = scene.box(f"timestep t: sin/cos ({c.frequency_embedding_size})\n→ Linear, SiLU, Linear → {d}", "cond",
                  left=0.0, y=y + 0.27)
    labels = (f"label y: table of {c.num_classes + 1} rows\n({c.num_classes} classes + null label {c.null_label})")
    lab = scene.box(labels, "cond", left=0.0, y=y - 0.27)
    add = scene.op("+", max(t.right, lab.right) + 0.35, y)
    scene.arrow((t.right, t.y), (add.x, t.y), (add.x, add.top))
    scene.arrow((lab.right, lab.y), (add.x, lab.y), (add.x, add.bottom))
    row = _row(scene, [(f"c {_shape('B', d)}", "data"), (f"adaLN: SiLU,\nLinear {d}→{6 * d}", "cond"),
                       (r"$\beta_a, \gamma_a, \alpha_a, \beta_m, \gamma_m, \alpha_m$" + f"\n6 × {_shape('B', d)}, "
                        "zero at the start", "cond")],
               add.right + 0.3, y)
    scene.arrow((add.right, y), (row[0].left, y))
    scene.text(row[-1].right + 0.12, y, "→ the pink boxes above\n(shift β, scale γ, gate α)", ha="left")
    scene.legend(["data", "mlp", "attn", "cond", "fusion"], left=0.0, y=lab.bottom - 0.3)


def _level_ys(c: FFTDConfig) -> list[float]:
    """Height of each block: one step down per halving of the grid (E8)."""
    steps = {g: i for i, g in enumerate(sorted(set(c.block_grids), reverse=True))}
    return [-1.15 * steps[g] for g in c.block_grids]


def hourglass_diagram(config: FFTDConfig) -> Figure:
    """The five FFTD blocks of ``config`` on their grids (section 3.2.2, E8): Downsample (eq. 16) and Upsample
    (eq. 17) between levels, the long skips (section 3.2.3, E14) fusing Block2 with Block4 (then upsampled into
    Block5) and Block1 with Block5 (then to the final layer)."""
    c, d = config, config.hidden_size
    fuse_name = {"adaptive": "AdaptiveFusion", "add": "Add", "concat": "Concat"}[c.fusion]
    ys = _level_ys(c)
    latent = _shape("B", c.in_channels, c.input_size, c.input_size)
    patch = c.patch_size ** 2 * c.in_channels
    texts = [(f"z_t {latent}\npatchify p = {c.patch_size}\nLinear {patch}→{d}\n+ position emb.", "data", ys[0])]
    blocks = [(f"Block{i + 1}\n{g}×{g} grid\n{g * g} token{'s' * (g > 1)}", "block", y)
              for i, (g, y) in enumerate(zip(c.block_grids, ys))]
    texts += blocks[:4] + [(f"{fuse_name}\nx₁ = Block2\nx₂ = Block4", "fusion", ys[3]), blocks[4],
                           (f"{fuse_name}\nx₁ = Block1\nx₂ = Block5", "fusion", ys[4]),
                           (f"final layer\nadaLN, Linear {d}→{patch}\nunpatchify\n→ ε {latent}", "data", ys[4])]
    scene, nodes = _Scene(), []
    for text, kind, y in texts:
        w = _measure(text, LABEL)[0] + 2 * PAD_X
        if not nodes:
            left = 0.0
        elif y < nodes[-1].y - 1e-6:      # down a level: the arrow leaves the previous box's bottom
            left = nodes[-1].x + 0.3
        elif y > nodes[-1].y + 1e-6:      # up a level: the arrow enters this box's bottom
            left = nodes[-1].right + 0.3 - w / 2
        else:
            left = nodes[-1].right + GAP
        nodes.append(scene.box(text, kind, left=left, y=y, h=0.66))
    for a, b in zip(nodes[:-1], nodes[1:]):
        _link(scene, a, b)
    _skip(scene, nodes[2], nodes[5], nodes[2:6], 0.28)                 # Block2 -> fusion with Block4
    _skip(scene, nodes[1], nodes[7], nodes[1:8], 0.58)                 # Block1 -> fusion with Block5
    bottom = min(n.bottom for n in nodes)
    scene.text(0.0, bottom - 0.3, f"Every block also reads c = emb(t) + emb(y) (adaLN). The grid is halved "
               f"{c.levels} time(s) (E8){'' if c.multires else ': multires=False, Table 8'}; D = {d} throughout.",
               ha="left")
    scene.legend(["data", "block", "fusion"], left=0.0, y=bottom - 0.62)
    return scene.render(f"FFTD hourglass (section 3.2): patch size {c.patch_size}, {c.grid_size}×{c.grid_size} "
                        f"token grid, block grids {c.block_grids}")


def _link(scene: _Scene, a: _Node, b: _Node) -> None:
    """``a`` to ``b``: straight on one level, else down (eq. 16) or up (eq. 17) at ``a``'s or ``b``'s centre."""
    if abs(a.y - b.y) < 1e-6:
        scene.arrow((a.right, a.y), (b.left, b.y))
    elif b.y < a.y:
        scene.arrow((a.x, a.bottom), (a.x, b.y), (b.left, b.y))
        scene.text(a.x - 0.07, (a.bottom + b.y) / 2, "Downsample\n÷2 (eq. 16)", ha="right")
    else:
        scene.arrow((a.right, a.y), (b.x, a.y), (b.x, b.bottom))
        scene.text(b.x + 0.07, (a.y + b.bottom) / 2, "Upsample\n×2 (eq. 17)", ha="left")


def _skip(scene: _Scene, start: _Node, end: _Node, spanned: Sequence[_Node], rise: float) -> None:
    """A long skip from ``start`` over ``spanned`` into the top of ``end``, dashed."""
    y = max(n.top for n in spanned) + rise
    scene.arrow((start.x, start.top), (start.x, y), (end.x, y), (end.x, end.top), dashed=True)
    scene.text((start.x + end.x) / 2, y + 0.04, "long skip (E14)", va="bottom")


# ---- both stages -------------------------------------------------------------------------------------------------

def pipeline_diagram(ivqvae_config: IVQVAEConfig, fftd_config: FFTDConfig, timesteps: int = 500,
                     ddim_steps: int = 50) -> Figure:
    """The two-stage generator (section 3.3): the training path of Algorithm 2 on top (encode once with the
    frozen stage 1, scale (E16), noise by eq. 28, the epsilon loss of eq. 27) and the sampling path of
    Algorithm 3 below, right to left (DDIM with guidance, eq. 29; unscale, snap to the codebook and decode,
    eq. 30). ``timesteps`` is the schedule's ``T``, ``ddim_steps`` the sampler's step count."""
    v, f = ivqvae_config, fftd_config
    if (f.in_channels, f.input_size) != (v.z_channels, v.latent_size):
        raise ValueError(f"the FFTD works on {f.in_channels}x{f.input_size}x{f.input_size} latents but the IVQ-VAE "
                         f"makes {v.z_channels}x{v.latent_size}x{v.latent_size}")
    image, latent = _shape("B", v.in_channels, v.resolution, v.resolution), _shape("B", v.z_channels, v.latent_size,
                                                                                    v.latent_size)
    top = [(f"image x\n{image}", "data"), ("encoder E\n(frozen)", "conv"),
           (f"quantize\nnearest of {v.num_codes} codes\nz_q {latent}", "quant"),
           ("× s (E16)\n" + r"$z_0 = s\,z_q$", "data"),
           (f"noise (eq. 28)\nt ~ U{{1..{timesteps}}}, ε ~ N(0, I)\n" + r"$z_t = \sqrt{\bar\alpha_t}\,z_0 + "
            r"\sqrt{1 - \bar\alpha_t}\,\epsilon$", "data"),
           ("FFTD\n" + r"$\epsilon_\theta(z_t, t, y)$" + f"\n{f.num_classes} classes + null", "stage2"),
           ("loss (eq. 27)\n" + r"$\Vert\epsilon - \epsilon_\theta\Vert^2$" + "\nAdamW, EMA", "data")]
    bottom = {0: (f"image x̂\n{image}", "data"), 1: ("decoder G\n(frozen)", "conv"),
              2: (f"÷ s, snap to the\nnearest code (eq. 30)\nz_q {latent}", "quant"),
              5: (f"DDIM (eq. 29), {ddim_steps} of\n{timesteps} steps, guided by\n" +
                  r"$\epsilon_\theta(z_t, t, y), \epsilon_\theta(z_t, t, \varnothing)$", "stage2"),
              6: (r"$z_T \sim N(0, I)$" + f"\n{latent}\nlabel y", "data")}
    widths = [max(_measure(t, LABEL)[0] for t in (top[k][0], bottom.get(k, ("", ""))[0])) + 2 * PAD_X
              for k in range(len(top))]
    scene, left, xs = _Scene(), 0.0, []
    for w in widths:
        xs.append(left + w / 2)
        left += w + GAP
    y_top, y_bottom = 0.0, -1.35
    upper = [scene.box(t, k, x=x, y=y_top, w=w, h=0.62) for (t, k), x, w in zip(top, xs, widths)]
    lower = {i: scene.box(t, k, x=xs[i], y=y_bottom, w=widths[i], h=0.62) for i, (t, k) in bottom.items()}
    for a, b in zip(upper[:-1], upper[1:]):
        scene.arrow((a.right, y_top), (b.left, y_top))
    order = sorted(lower, reverse=True)
    for i, j in zip(order[:-1], order[1:]):
        scene.arrow((lower[i].left, y_bottom), (lower[j].right, y_bottom))
    for i, text in ((1, "stage 1: trained\nfirst (Algorithm 1)"), (2, "the same\ncodebook"),
                    (5, "the same FFTD\n(EMA weights)")):
        scene.arrow((xs[i], upper[i].bottom), (xs[i], lower[i].top), dashed=True, head=False)
        scene.text(xs[i] + 0.08, (y_top + y_bottom) / 2, text, ha="left")
    scene.text(-0.15, y_top, "training\n(Algorithm 2)", size=LABEL, ha="right", weight="bold")
    scene.text(-0.15, y_bottom, "sampling\n(Algorithm 3)", size=LABEL, ha="right", weight="bold")
    scene.legend(["data", "conv", "quant", "stage2"], left=0.0, y=y_bottom - 0.55)
    return scene.render(f"Latent diffusion (section 3.3): {v.resolution}×{v.resolution} images, "
                        f"{v.z_channels}×{v.latent_size}×{v.latent_size} latents (f = {v.f}), "
                        f"FFTD with D = {f.hidden_size}, T = {timesteps}; B = batch")
