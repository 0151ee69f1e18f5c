"""``nasfcos validate`` and ``nasfcos draw``."""

from __future__ import annotations

import sys
from pathlib import Path

from nasfcos.cli import args as A
from nasfcos.errors import NasfcosError
from nasfcos.genotypes import (
    PAPER_GENOTYPES,
    Genotype,
    fpn_graph,
    resolve_genotype,
    to_paper_list,
)


def _summary(g: Genotype) -> dict[str, object]:
    graph = fpn_graph(g.fpn)
    return {
        "name": g.name,
        "hash": g.hash(),
        "head": g.head.kind,
        "share": list(g.share),
        "backbone_levels_read": [f"c{i + 2}" for i in graph.backbone_used],
        "outputs": {"p3": graph.p3, "p4": graph.p4, "p5": graph.p5},
        "dangling": list(graph.dangling),
        "paper_list": to_paper_list(g),
    }


def validate_main(argv: list[str]) -> int:
    parser = A.Parser(
        prog="nasfcos validate",
        description="Validate genotype JSON files (Contract 1). Exit 0 when all are valid; one line per bad file.",
        epilog="example:\n  nasfcos validate genotypes/nas_fcos_fpn_head.json my_search/top/*.json --json",
    )
    parser.add_argument("files", nargs="+", help="genotype files (JSON, list-form JSON, release config .yaml) or shipped names: {}".format(", ".join(PAPER_GENOTYPES)))
    A.add_json(parser, "print one JSON document with a result per file on stdout")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    args = parser.parse_args(argv)
    results = []
    for f in args.files:
        try:
            g = resolve_genotype(f)
        except NasfcosError as exc:
            results.append({"file": f, "valid": False, "error": str(exc)})
            if not args.json:
                print(f"{f}: invalid: {str(exc).removeprefix(f + ': ')}", file=sys.stderr)
            continue
        results.append({"file": f, "valid": True, **_summary(g)})
        if not args.json and not args.quiet:
            print(f"{f}: ok  name={g.name} head={g.head.kind} hash={g.short_hash()}")
    bad = sum(not r["valid"] for r in results)
    if args.json:
        A.print_json({"valid": bad == 0, "files": results})
    return 1 if bad else 0


def draw_main(argv: list[str]) -> int:
    parser = A.Parser(
        prog="nasfcos draw",
        description="Draw a genotype's FPN and head graph (pool nodes, ops on edges, aggregations, "
        "outputs p3..p7, dangling features; unused paths greyed).",
        epilog="example:\n  nasfcos draw nas_fcos_fpn_head -o arch.png",
    )
    parser.add_argument("genotype", type=A.genotype_arg, help="genotype JSON file (or a shipped name)")
    A.add_output(parser, "image file (.png, .svg or .pdf; default arch.png)", default="arch.png")
    A.add_json(parser, "print a JSON summary of the graph on stdout")
    args = parser.parse_args(argv)
    out = Path(args.output)
    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise NasfcosError(f"{out}: output must end in .png, .svg or .pdf")
    g = resolve_genotype(args.genotype)
    from nasfcos.genotypes.draw import draw_genotype

    draw_genotype(g, out)
    if args.json:
        A.print_json({"output": str(out), **_summary(g)})
    else:
        print(f"wrote {out}")
    return 0
