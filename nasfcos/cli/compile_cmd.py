"""``nasfcos compile``: genotype JSON -> standalone model.py (Contract 2)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

from nasfcos.cli import args as A
from nasfcos.compiler import GENERATOR_VERSION, CompileOptions, compile_genotype, parse_in_channels
from nasfcos.compiler.options import BOX_REGRESSION, PREPROCESS, SCORING
from nasfcos.compiler.release import release_target
from nasfcos.errors import NasfcosError
from nasfcos.genotypes import PAPER_GENOTYPES, resolve_genotype
from nasfcos.genotypes.resolve import YAML_SUFFIXES
from nasfcos.io import atomic_write_text, sha256_bytes

EPILOG = """example:
  nasfcos compile nas_fcos_fpn_head -o model.py
  nasfcos compile my_genotype.json -o model.py --fpn-channels 128 --head-channels 256 --num-classes 20
  nasfcos compile R_50_NAS_head.yaml -o model.py --detector --backbone resnet50_c2
  nasfcos compile nas_fcos_fpn_head -o detector.py --detector --backbone resnet50

GENOTYPE is a genotype JSON file, the release's list form as JSON, a release config
(configs/search/*.yaml: its SEARCH.DECODER.CONFIG, AGG_SIZE and, with --detector, its
backbone as the release's variant with Caffe2 preprocessing) or the name of a
shipped genotype ({}).  The file written imports only torch and torchvision;
load it with `build()` (see its header).  --json prints a machine-readable summary.
""".format(", ".join(PAPER_GENOTYPES))


def _parser() -> argparse.ArgumentParser:
    p = A.Parser(
        prog="nasfcos compile",
        description="Compile a genotype into a standalone, readable PyTorch model.py.",
        epilog=EPILOG,
    )
    p.add_argument("genotype", nargs="?", type=A.genotype_arg, metavar="GENOTYPE",
                   help="genotype file (JSON, list-form JSON, release config .yaml) or shipped "
                        "genotype name")
    p.add_argument("--genotype", dest="genotype_opt", type=A.genotype_arg, metavar="GENOTYPE",
                   help="same as the positional argument")
    p.add_argument("-o", "--output", type=lambda t: t if t == "-" else A.output_file(t),
                   default="model.py", help="output file ('-' for stdout; default: model.py)")
    A.add_widths(p, fpn_help="FPN width (default: 256, the released models'; a release .yaml's AGG_SIZE)",
                 head_help="head width, a multiple of 32 (default: the FPN width; a 1x1 conv bridges "
                           "different widths)")
    A.add_num_classes(p, "number of classes K (default: 80)")
    p.add_argument("--in-channels", default="256,512,1024,2048",
                   help="backbone widths of c2,c3,c4,c5 (default: 256,512,1024,2048, ResNet-50)")
    p.add_argument("--detector", action="store_true",
                   help="also emit class Detector (backbone + decoder + FCOS post-processing)")
    A.add_backbone(p, "backbone of the detector: {names} (with --detector; default: resnet50)")
    p.add_argument("--box-regression", choices=BOX_REGRESSION, default=CompileOptions.box_regression,
                   help="units of bbox_reg = exp(scale * x): pixels (the release's, default) or "
                        "stride (FCOS's later stride-normalised regression)")
    p.add_argument("--scoring", choices=SCORING, default="product",
                   help="detector score: product sigmoid(cls) * sigmoid(ctr) (the release's, default) "
                        "or sqrt of it (with --detector)")
    p.add_argument("--preprocess", choices=PREPROCESS, default=None,
                   help="detector input normalisation: caffe2 (BGR x 255 - mean, the release's) or "
                        "imagenet (default: the backbone's own; caffe2 for the *_c2 backbones)")
    p.add_argument("--json", action="store_true", help="print a JSON summary instead of text")
    A.add_quiet(p)
    return p


def main(argv: list[str]) -> int:
    """Entry point of ``nasfcos compile``."""
    args = _parser().parse_args(argv)
    if args.genotype and args.genotype_opt:
        raise NasfcosError("give the genotype once (positional or --genotype)")
    source_arg = args.genotype or args.genotype_opt
    if not source_arg:
        raise NasfcosError("missing GENOTYPE (a genotype JSON file or a shipped name; see --help)")
    if args.backbone is not None and not args.detector:
        raise NasfcosError("--backbone only applies with --detector")
    if (args.preprocess is not None or args.scoring != "product") and not args.detector:
        raise NasfcosError("--preprocess and --scoring only apply with --detector")
    # a release config also gives the width (AGG_SIZE) and, for a detector, the release's
    # backbone variant and Caffe2 preprocessing, unless the flags say otherwise (read once)
    fpn_channels, backbone, preprocess = args.fpn_channels, args.backbone, args.preprocess
    if Path(source_arg).suffix.lower() not in YAML_SUFFIXES or not Path(source_arg).is_file():
        genotype = resolve_genotype(source_arg)
    else:
        target = release_target(source_arg)
        genotype = target.genotype
        fpn_channels = fpn_channels or target.options.fpn_channels
        if args.detector:
            backbone = backbone or target.options.backbone
            preprocess = preprocess or "caffe2"
    fpn_channels = fpn_channels or 256
    options = CompileOptions(
        fpn_channels=fpn_channels,
        head_channels=args.head_channels,
        num_classes=args.num_classes,
        in_channels=parse_in_channels(args.in_channels),
        detector=args.detector,
        backbone=backbone or "resnet50",
        box_regression=args.box_regression,
        scoring=args.scoring,
        preprocess=preprocess,
    )
    source = compile_genotype(genotype, options)
    data = source.encode("utf-8")
    if args.output == "-":
        sys.stdout.write(source)
        written = "-"
    else:
        out = Path(args.output)
        try:
            atomic_write_text(out, source)
        except OSError as exc:
            raise NasfcosError(f"{out}: cannot write ({exc.strerror})") from None
        written = str(out)
    detector_options = {"backbone": options.backbone, "scoring": options.scoring,
                        "preprocess": options.resolved_preprocess}  # None without a Detector
    summary = {
        "output": written,
        "genotype": genotype.name,
        "genotype_hash": genotype.hash(),
        "generator_version": GENERATOR_VERSION,
        "bytes": len(data),
        "sha256": sha256_bytes(data),
        "options": {**asdict(options), "head_channels": options.resolved_head_channels,
                    **{k: v if options.detector else None for k, v in detector_options.items()}},
    }
    if args.json:
        A.print_json(summary, sys.stderr if written == "-" else sys.stdout)
    elif written != "-" and not args.quiet:
        print(f"wrote {written}: genotype {genotype.name} (sha256 {genotype.short_hash()}), "
              f"fpn {options.fpn_channels}, head {options.resolved_head_channels}, "
              f"{options.num_classes} classes, {len(data)} bytes")
        print("load it with: nasfcos.modelfile.load_model_file(path).build()  (or import it directly)")
    return 0
