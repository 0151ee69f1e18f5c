"""``nasfcos import-release``: a checkpoint of the authors' release -> DIR/model.py + weights.pt."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nasfcos.cli import args as A

EPILOG = """example:
  nasfcos import-release R-50-NAS-head.pth --config R_50_NAS_head -o r50_head
  nasfcos import-release mbv2-NAS.pth --config configs/search/Mobile_NAS_densebox.yaml -o mbv2
  nasfcos export r50_head/model.py --weights r50_head/weights.pt -o r50_head/model.onnx --detector

CKPT is a checkpoint saved by the release's tools/train_net.py ({{"model": ..., "optimizer": ...}},
keys with or without "module.") or a bare state_dict; it is read with torch.load(weights_only=True).
--config is one of {names} (the *_densebox yaml names are accepted for the FCOS-head ones)
or a release config file (configs/search/*.yaml).  DIR must be new or empty; it gets model.py
(compiled for the config: genotype, width 256, the release's backbone variant, preprocessing
and post-processing), weights.pt (a state_dict that build() loads strictly) and import.json
(checkpoint sha256, config, class names and COCO category ids, the key mapping).  The
Detector takes RGB images in [0, 1] of any size; its labels are 0-based (COCO category id:
import.json labels.category_ids[label]).  Nothing is written when anything is wrong.
"""


def main(argv: list[str]) -> int:
    """Entry point of ``nasfcos import-release``."""
    from nasfcos.compiler.release import RELEASE_MODELS, import_release

    p = A.Parser(
        prog="nasfcos import-release",
        description="Import a trained NAS-FCOS checkpoint of the authors' release as a compiled model.",
        epilog=EPILOG.format(names=", ".join(RELEASE_MODELS)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", type=A.input_file, metavar="CKPT", help="release checkpoint (.pth)")
    p.add_argument("--config", required=True, metavar="NAME|FILE.yaml", help="release config name or yaml file")
    p.add_argument("-o", "--output", type=A.output_dir, required=True, metavar="DIR",
                   help="output folder (new or empty)")
    p.add_argument("--json", action="store_true", help="print import.json instead of a summary")
    args = p.parse_args(argv)
    print(f"importing {args.checkpoint} as {args.config} ...", file=sys.stderr, flush=True)
    doc = import_release(args.checkpoint, args.config, args.output)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    out = Path(args.output)
    m = doc["mapping"]
    ignored = sum(i["count"] for i in m["ignored"])
    print(f"wrote {out / 'model.py'}, {out / 'weights.pt'} ({doc['weights']['entries']} entries), "
          f"{out / 'import.json'}")
    print(f"config {doc['config']}: {doc['model']['genotype']} @{doc['model']['fpn_channels']}, backbone "
          f"{doc['model']['backbone']}; checkpoint {m['checkpoint_entries']} entries: {m['mapped']} mapped, "
          f"{ignored} ignored (listed in import.json)")
    return 0
