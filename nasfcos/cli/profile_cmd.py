"""``nasfcos profile``: parameters and FLOPs (multiply-adds) of detectors, as in paper Table 2."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from nasfcos.cli import args as A
from nasfcos.io import atomic_write_json

EPILOG = """example:
  nasfcos profile model.py
  nasfcos profile nas_fcos_fpn_head --backbone mobilenet_v2 --fpn-channels 128 --head-channels 256
  nasfcos profile nas_fcos_fpn nas_fcos_fpn_head --widths 128 128-256 256 \\
      --backbone resnet50 mobilenet_v2 --baseline --size 800x1088 -o profile.json

MODEL is a compiled model.py, a genotype .json, a shipped genotype name
(nas_fcos_fpn, nas_fcos_fpn_head) or fpn-fcos (the FPN-FCOS baseline); genotypes are
compiled as detectors in memory.  One row per MODEL x backbone x width.
FLOPs are the paper's: multiply-adds (MACs) of backbone + decoder at HEIGHTxWIDTH,
batch 1 (torch's FlopCounterMode count / 2), deformable convolutions counted as convs
(sampling not counted).  Parameters include frozen-BN affine weights.  Counting runs on
the meta device (no weights are allocated).  --json prints JSON instead of the table;
-o FILE also writes the JSON to FILE.
"""


def _model_arg(text: str) -> str:
    """A MODEL: ``fpn-fcos``, a shipped name, or a path that, if it exists, is a regular file."""
    if text != "fpn-fcos" and Path(text).exists():
        A.input_file(text)
    return text


def _widths(text: str) -> tuple[int, int | None]:
    parts = text.lstrip("@").split("-")
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected FPN or FPN-HEAD widths such as 128-256, got {text!r}")
    values = [A.width(p) for p in parts]
    return (values[0], values[1] if len(values) == 2 else None)


def _parser() -> argparse.ArgumentParser:
    p = A.Parser(
        prog="nasfcos profile",
        description="Parameters (total, backbone, FPN, head) and FLOPs (multiply-adds) of detectors.",
        epilog=EPILOG,
    )
    p.add_argument("models", nargs="+", metavar="MODEL", type=_model_arg,
                   help="model.py, genotype .json, shipped genotype name, or fpn-fcos")
    A.add_backbone(p, "backbone(s): {names} (default: a model file's compiled backbone, else "
                      "resnet50)", nargs="+", default=[None])
    A.add_widths(p, fpn_help="FPN width (default: the model file's; 256 for genotypes and fpn-fcos)",
                 head_help="head width (default: the FPN width)")
    p.add_argument("--widths", nargs="+", type=_widths, default=None, metavar="F[-H]",
                   help="several widths at once, e.g. 128 128-256 256 (overrides --fpn/--head-channels)")
    A.add_num_classes(p, "number of classes (default: 80)")
    p.add_argument("--size", type=A.size_hw, default=(800, 1088), metavar="HxW",
                   help="input size, height x width (a single number: square; default: "
                        "800x1088, the paper's)")
    p.add_argument("--baseline", action="store_true",
                   help="add the FPN-FCOS @256 baseline for every backbone (rows first)")
    p.add_argument("--device", default="meta", choices=("meta", "cpu"),
                   help="where to build and trace (default: meta, no memory used)")
    A.add_json(p, "print JSON on stdout instead of the table")
    A.add_output(p, "also write the JSON to FILE")
    A.add_quiet(p)
    return p


def _requests(args: argparse.Namespace) -> list[Any]:
    from nasfcos.compiler.profile import ProfileRequest

    widths = args.widths or [(args.fpn_channels, args.head_channels)]
    out = []
    for backbone in args.backbone:
        common = {"backbone": backbone, "num_classes": args.num_classes, "size": args.size,
                  "device": args.device}
        if args.baseline:
            out.append(ProfileRequest("fpn-fcos", fpn_channels=256, **common))
        for model in args.models:
            for fpn, head in widths:
                out.append(ProfileRequest(model, fpn_channels=fpn, head_channels=head, **common))
    return out


def main(argv: list[str]) -> int:
    """Entry point of ``nasfcos profile``."""
    args = _parser().parse_args(argv)
    from nasfcos.compiler.profile import format_table, profile
    from nasfcos.progress import progress_bar

    requests = _requests(args)
    results = []
    bar = progress_bar(len(requests), desc="profile", unit="model",
                       enabled=len(requests) >= 3 and not args.quiet)
    for req in requests:
        if bar is not None:
            bar.set_postfix_str(f"{req.model} {req.backbone or ''}".strip())
        results.append(profile(req))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    doc = {"format": "nasfcos-profile/1", "profiles": [r.to_dict() for r in results]}
    if args.output:
        atomic_write_json(args.output, doc)
    if args.json:
        A.print_json(doc)
    else:
        print(format_table(results))
        if args.output:
            print(f"JSON: {args.output}")
    return 0
