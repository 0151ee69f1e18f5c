"""Speed of the compiled Detector's FCOS post-processing at the paper's input size (run by hand).

    .venv/bin/python benchmarks/detector_postprocess.py [--size 1088x800] [--batch 1]
        [--classes 80] [--repeats 20] [--device cpu] [--untrained]

Times ``Detector.postprocess`` alone (score, top-k per level, decoding, class-aware NMS,
padding to 100) on raw outputs of the right shapes.  By default the scores are sparse, as
for a trained model (a few hundred locations above 0.05); ``--untrained`` uses FCOS's
initial logits, where every location passes the threshold (worst case for NMS).
Prints one JSON line with milliseconds per call.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from nasfcos.compiler import CompileOptions
from nasfcos.compiler.baseline import baseline_module

STRIDES = (8, 16, 32, 64, 128)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1088x800", help="WIDTHxHEIGHT")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--untrained", action="store_true")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    device = torch.device(args.device)
    module = baseline_module(CompileOptions(fpn_channels=8, head_channels=64, num_classes=args.classes,
                                            detector=True))
    det = module.build(backbone="tiny").to(device).eval()
    g = torch.Generator(device="cpu").manual_seed(0)
    cls, reg, ctr = [], [], []
    for s in STRIDES:
        h, w = math.ceil(height / s), math.ceil(width / s)
        if args.untrained:
            c = torch.full((args.batch, args.classes, h, w), -4.6)
        else:
            c = torch.randn(args.batch, args.classes, h, w, generator=g) - 6.0
        cls.append(c.to(device))
        reg.append((torch.rand(args.batch, 4, h, w, generator=g) * 4).to(device))
        ctr.append(torch.randn(args.batch, 1, h, w, generator=g).to(device))
    with torch.no_grad():
        out = det.postprocess(cls, reg, ctr, height, width)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.repeats):
            out = det.postprocess(cls, reg, ctr, height, width)
        if device.type == "cuda":
            torch.cuda.synchronize()
        ms = (time.perf_counter() - start) / args.repeats * 1e3
    print(json.dumps({"benchmark": "detector_postprocess", "device": str(device), "size": [width, height],
                      "batch": args.batch, "classes": args.classes, "untrained": args.untrained,
                      "ms_per_call": round(ms, 3), "detections": int((out[1] > 0).sum())}))


if __name__ == "__main__":
    main()
