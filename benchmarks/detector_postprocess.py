"""Speed of the compiled Detector's FCOS post-processing at the paper's input size (run by hand).

    .venv/bin/python benchmarks/detector_postprocess.py [--size 800x1088] [--batch 1]
        [--classes 80] [--repeats 20] [--device cpu] [--untrained]
        [--model model.py --weights final.pt --data DIR]

Times ``Detector.postprocess`` alone (score, top-k per level, decoding, class-aware NMS,
padding to 100) on raw outputs of the right shapes (``--size`` HxW).  By default the scores
are sparse, as for a trained model (a few hundred locations above 0.05); ``--untrained`` uses
FCOS's initial logits, where every location passes the threshold (worst case for NMS).
``--model/--weights/--data``: the raw outputs of a *trained* detector instead, on the first
val image of a COCO-format folder resized to ``--size`` (e.g. the yardstick's
``nasfcos train --preset synth`` run); also reports how many (location, class) candidates pass
the score threshold and the time of the NMS call alone on them.
Prints one JSON line with milliseconds per call.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from nasfcos.compiler import CompileOptions
from nasfcos.compiler.baseline import baseline_module

STRIDES = (8, 16, 32, 64, 128)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="800x1088", help="HEIGHTxWIDTH")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--untrained", action="store_true")
    ap.add_argument("--model", help="a compiled detector model.py (with --weights and --data)")
    ap.add_argument("--weights", help="its trained state_dict")
    ap.add_argument("--data", help="COCO-format folder; its first val image is the input")
    args = ap.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    if args.model and not (args.weights and args.data):
        ap.error("--model needs --weights and --data")
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
    extra = {}
    if args.model:
        det, cls, reg, ctr, extra = trained_outputs(args, height, width, device)
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
    print(json.dumps({"benchmark": "detector_postprocess", "device": str(device), "size_hw": [height, width],
                      "batch": args.batch, "classes": args.classes, "untrained": args.untrained,
                      "ms_per_call": round(ms, 3), "detections": int((out[1] > 0).sum()), **extra}))


def trained_outputs(args: argparse.Namespace, height: int, width: int, device: torch.device) -> tuple:
    """(detector, cls, reg, ctr, facts) of a trained model on one real image at ``height x width``;
    the facts include the NMS op's own time inside ``postprocess`` (torch profiler)."""
    import torch.nn.functional as F

    from nasfcos.fcos.data import CocoDetection
    from nasfcos.runtime.models import load_model

    lm = load_model(args.model, "detector", weights=args.weights)
    det = lm.net.detector.to(device)
    val = CocoDetection(f"{args.data}/val.json", f"{args.data}/images")
    image = val.load(0)[0]
    img = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
    img = F.interpolate(img[None], size=(height, width), mode="bilinear", align_corners=False).to(device)
    with torch.no_grad():
        cls, reg, ctr = det.forward_raw(img.expand(args.batch, -1, -1, -1))
        candidates = sum(int((torch.sigmoid(c) > det.score_thresh).sum()) for c in cls)
        out = det.postprocess(cls, reg, ctr, height, width)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(args.repeats):
                det.postprocess(cls, reg, ctr, height, width)
    nms_us = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key == "torchvision::nms")
    facts = {"model": str(args.model), "weights": str(args.weights), "candidates_above_thresh": candidates,
             "nms_ms_per_call": round(nms_us / args.repeats / 1e3, 3), "classes": det.num_classes,
             "trained_detections": int((out[1] > 0).sum())}
    return det, list(cls), list(reg), list(ctr), facts


if __name__ == "__main__":
    main()
