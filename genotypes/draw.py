"""Draw a genotype in the spirit of the paper's Figures 2-4 (matplotlib, no GUI needed).

Left panel, the FPN: backbone levels c2..c5 and block outputs are placed by stride (rows)
and creation order (columns); each edge carries its op, each block node its aggregation;
p3..p5 are the chosen outputs, p6/p7 come from p5; dangling outputs reach every output
level through dashed edges; backbone levels no block reads are greyed.  Right panel, the
head: the sequential chain, the FCOS tower or the DAG with dead paths greyed, plus the
sharing index per level.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

from nasfcos.genotypes.analysis import fpn_graph, head_live
from nasfcos.genotypes.genotype import Genotype
from nasfcos.genotypes.space import BACKBONE_LEVELS, FCOS_HEAD_LAYERS, OUTPUT_LEVELS, OUTPUT_STRIDES
from nasfcos.io import atomic_write_bytes

SHORT = {
    "sep_conv_3x3": "sep3",
    "sep_conv_3x3_dil3": "sep3 d3",
    "sep_conv_5x5_dil6": "sep5 d6",
    "skip": "skip",
    "deform_conv_3x3": "dcn3",
    "conv_1x1": "conv1",
    "conv_3x3": "conv3",
}
OP_COLOURS = {
    "sep_conv_3x3": "#4C72B0",
    "sep_conv_3x3_dil3": "#55A868",
    "sep_conv_5x5_dil6": "#8172B2",
    "skip": "#999999",
    "deform_conv_3x3": "#C44E52",
    "conv_1x1": "#CCB974",
    "conv_3x3": "#DD8452",
}
GREY = "#d0d0d0"


def _node(ax, x: float, y: float, text: str, colour: str, *, dead: bool = False) -> None:
    ax.text(
        x, y, text, ha="center", va="center", fontsize=8, zorder=3,
        color="#888888" if dead else "black",
        bbox={"boxstyle": "round,pad=0.35", "fc": GREY if dead else colour, "ec": "#555555", "lw": 0.8},
    )


def _edge(ax, a: tuple[float, float], b: tuple[float, float], label: str | None, colour: str,
          *, dashed: bool = False, dead: bool = False, rad: float = 0.0) -> None:
    ax.annotate(
        "", xy=b, xytext=a, zorder=1,
        arrowprops={
            "arrowstyle": "-|>", "lw": 1.2, "color": GREY if dead else colour,
            "linestyle": "--" if dashed else "-", "shrinkA": 12, "shrinkB": 12,
            "connectionstyle": f"arc3,rad={rad}",
        },
    )
    if label:
        # near the destination, so each label is read with the block it feeds
        t = 0.72
        mx, my = a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])
        ax.text(mx, my, label, fontsize=6.5, ha="center", va="center", zorder=2,
                color="#888888" if dead else colour,
                bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.85})


def _draw_fpn(ax, g: Genotype) -> None:
    graph = fpn_graph(g.fpn)
    pos: dict[int, tuple[float, float]] = {}
    for i, name in enumerate(BACKBONE_LEVELS):
        pos[i] = (0.0, math.log2(graph.strides[i]))
        _node(ax, *pos[i], f"{name}\n/{graph.strides[i]}", "#e8f0fb", dead=i not in graph.backbone_used)
    used_y: dict[float, int] = {}
    for k, blk in enumerate(g.fpn):
        idx = len(BACKBONE_LEVELS) + k
        y = math.log2(graph.strides[idx])
        jitter = 0.28 * used_y.get(y, 0)
        used_y[y] = used_y.get(y, 0) + 1
        pos[idx] = (1.3 * (k + 1), y + jitter)
        for j in (0, 1):
            src = blk.inputs[j]
            op = blk.ops[j]
            rad = 0.25 if blk.inputs[0] == blk.inputs[1] and j == 1 else (-0.12 if j == 0 else 0.12)
            _edge(ax, pos[src], pos[idx], SHORT[op], OP_COLOURS[op], rad=rad)
        _node(ax, *pos[idx], f"{idx}\n{blk.agg}", "#fdf1d6")
    xo = 1.3 * (len(g.fpn) + 1.4)
    outs = {graph.p3: "p3", graph.p4: "p4", graph.p5: "p5"}
    out_pos = {}
    for lvl, (name, stride) in enumerate(zip(OUTPUT_LEVELS, OUTPUT_STRIDES, strict=True)):
        out_pos[name] = (xo, math.log2(stride))
        _node(ax, *out_pos[name], f"{name}\n/{stride}", "#dff3e3")
        if lvl >= 3:
            prev = OUTPUT_LEVELS[lvl - 1]
            _edge(ax, out_pos[prev], out_pos[name], "conv3/2", "#555555")
    for idx, name in outs.items():
        _edge(ax, pos[idx], out_pos[name], None, "#2a7a3b")
    for idx in graph.dangling:
        for name in ("p3", "p4", "p5"):
            _edge(ax, pos[idx], out_pos[name], None, "#b07aa1", dashed=True, rad=0.1)
    ax.set_title(f"FPN  (outputs p3={graph.p3}, p4={graph.p4}, p5={graph.p5}; "
                 f"dangling={list(graph.dangling) or 'none'})", fontsize=9)
    ax.set_xlim(-0.8, xo + 0.8)
    ax.set_ylim(1.3, 7.7)
    ax.set_yticks([])
    ax.set_xticks([])


def _draw_head(ax, g: Genotype) -> None:
    head = g.head
    if head.kind in ("fcos", "sequential"):
        ops = ["conv_3x3"] * FCOS_HEAD_LAYERS if head.kind == "fcos" else list(head.layers)
        prev = (0.0, 0.0)
        _node(ax, *prev, "p_l", "#dff3e3")
        for i, op in enumerate(ops):
            cur = (1.2 * (i + 1), 0.0)
            _node(ax, *cur, f"L{i}", "#fdf1d6")
            _edge(ax, prev, cur, SHORT[op] + ("+GN" if op != "skip" else ""), OP_COLOURS[op])
            prev = cur
        out = (1.2 * (len(ops) + 1), 0.0)
        _node(ax, *out, "cls / box\n+ ctr", "#e8f0fb")
        _edge(ax, prev, out, None, "#555555")
        ax.set_xlim(-0.8, out[0] + 0.8)
        ax.set_ylim(-1.5, 1.5)
    else:
        live = head_live(head)
        pos = {0: (0.0, 0.0), 1: (1.2, 0.0)}
        _node(ax, *pos[0], "p_l", "#dff3e3")
        _node(ax, *pos[1], "1", "#fdf1d6", dead=1 not in live)
        _edge(ax, pos[0], pos[1], SHORT[head.first_op or "skip"], OP_COLOURS[head.first_op or "skip"],
              dead=1 not in live)
        for b, blk in enumerate(head.blocks):
            x = 1.2 * (b + 2)
            agg = 4 + 3 * b
            for j in (0, 1):
                opi = 2 + 3 * b + j
                pos[opi] = (x - 0.35, 0.9 if j == 0 else -0.9)
                dead = opi not in live
                _edge(ax, pos[blk.inputs[j]], pos[opi], SHORT[blk.ops[j]], OP_COLOURS[blk.ops[j]],
                      dead=dead, rad=0.15)
                _node(ax, *pos[opi], str(opi), "#f6f6f6", dead=dead)
            pos[agg] = (x + 0.25, 0.0)
            _node(ax, *pos[agg], f"{agg}\n{blk.agg}", "#fdf1d6", dead=agg not in live)
            for j in (0, 1):
                _edge(ax, pos[2 + 3 * b + j], pos[agg], None, "#555555", dead=agg not in live)
        ax.set_xlim(-0.8, pos[agg][0] + 0.8)
        ax.set_ylim(-1.8, 1.8)
    share = ", ".join(f"{lvl}:{s}" for lvl, s in zip(OUTPUT_LEVELS, g.share, strict=True))
    ax.set_title(f"head ({head.kind}; layers from the sharing index on are shared)\nshare {share}",
                 fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def draw_genotype(g: Genotype, path: str | os.PathLike[str], *, dpi: int = 130) -> Path:
    """Render ``g`` to an image file (PNG, SVG or PDF by suffix), written atomically."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    fig, (ax1, ax2) = plt.subplots(
        2, 1, figsize=(12, 8.5), gridspec_kw={"height_ratios": [2.3, 1]}, layout="constrained"
    )
    _draw_fpn(ax1, g)
    _draw_head(ax2, g)
    fig.suptitle(f"{g.name}   sha256 {g.short_hash()}", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
