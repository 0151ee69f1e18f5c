"""``nasfcos import-release``: a checkpoint of the authors' release -> DIR/model.py + weights.pt."""

from __future__ import annotations

import sys
from pathlib import Path

from nasfcos.cli import args as A

EPILOG = """example:
  nasfcos import-release --make-test-checkpoint Mobile_NAS_head -o mbv2-test.pth
  nasfcos import-release mbv2-test.pth --config Mobile_NAS_head -o mbv2
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

The seven trained checkpoints are published by the authors with their code (the NAS-FCOS
project of Lausannen on GitHub: its README's model table).  To try the import first,
--make-test-checkpoint CONFIG -o FILE.pth writes an untrained checkpoint laid out exactly as
the release saves one ({samples}; weights from the golden data's deterministic rule).
"""


def main(argv: list[str]) -> int:
    """Entry point of ``nasfcos import-release``."""
    from nasfcos.compiler.release import RELEASE_MODELS, import_release
    from nasfcos.compiler.release_sample import SAMPLE_CONFIGS
    from nasfcos.io import claim_folder, writable_path

    p = A.Parser(
        prog="nasfcos import-release",
        description="Import a trained NAS-FCOS checkpoint of the authors' release as a compiled model.",
        epilog=EPILOG.format(names=", ".join(RELEASE_MODELS), samples=", ".join(SAMPLE_CONFIGS)),
    )
    p.add_argument("checkpoint", nargs="?", type=A.input_file, metavar="CKPT",
                   help="release checkpoint (.pth)")
    p.add_argument("--config", metavar="NAME|FILE.yaml", help="release config name or yaml file")
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="output folder (new or empty); with --make-test-checkpoint, the .pth file")
    p.add_argument("--make-test-checkpoint", metavar="CONFIG", choices=SAMPLE_CONFIGS,
                   help="write an untrained test checkpoint of CONFIG to -o instead of importing "
                        f"({', '.join(SAMPLE_CONFIGS)})")
    p.add_argument("--json", action="store_true", help="print import.json instead of a summary")
    args = p.parse_args(argv)
    if args.make_test_checkpoint:
        if args.checkpoint or args.config:
            p.error("--make-test-checkpoint takes no CKPT or --config")
        from nasfcos.compiler.release_sample import write_sample_checkpoint

        out = write_sample_checkpoint(args.make_test_checkpoint, writable_path(args.output))
        print(f"wrote {out} (untrained {args.make_test_checkpoint} test checkpoint); import it "
              f"with: nasfcos import-release {out} --config {args.make_test_checkpoint} -o DIR")
        return 0
    if not args.checkpoint or not args.config:
        p.error("give CKPT and --config (or --make-test-checkpoint CONFIG)")
    args.output = str(writable_path(args.output, directory=True))
    claim_folder(args.output)  # this run's until it ends; a second run fails here, naming it
    print(f"importing {args.checkpoint} as {args.config} ...", file=sys.stderr, flush=True)
    doc = import_release(args.checkpoint, args.config, args.output)
    if args.json:
        A.print_json(doc)
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
