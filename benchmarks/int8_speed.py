"""ONNX Runtime int8 vs fp32 latency on CPU, measured in one run (issue 12's speed target).

    .venv/bin/python benchmarks/int8_speed.py [--genotype nas_fcos_fpn_head] [--width 128]
        [--backbone resnet50] [--size 800] [--threads 2] [--runs 12] [--calib-images 8]
        [--work DIR] [--json FILE]

The paper genotype @``width`` with ``backbone`` compiled as a Detector (random weights, seed
0), exported static at ``size`` x ``size``, lowered to int8 Q/DQ for the ``cpu`` target (U8S8)
and the ``tensorrt`` target (symmetric), both calibrated (minmax) on ``--calib-images``
images of a synthetic set made on the spot.  The three ONNX Runtime sessions (``threads``
intra-op threads) run the same seeded image in turn, ``runs`` rounds after two warm-up
rounds, so machine noise hits them alike.  Prints median and min per session, the ratios
int8 / fp32 (target for the cpu target: <= 0.7) and the file sizes, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--genotype", default="nas_fcos_fpn_head")
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--size", type=int, default=800)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=12)
    ap.add_argument("--calib-images", type=int, default=8)
    ap.add_argument("--work", help="keep the exports here (default: a temporary folder)")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from nasfcos.compiler import CompileOptions, compile_genotype
    from nasfcos.fcos.synth import SynthConfig, write_synthetic
    from nasfcos.genotypes import load_paper_genotype
    from nasfcos.runtime.export import ExportOptions, convert_onnx, export_onnx
    from nasfcos.runtime.models import make_inputs
    from nasfcos.runtime.precision import PrecisionOptions
    from nasfcos.runtime.runners import make_runner

    tmp = None
    if args.work:
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="nasfcos-int8-speed-")
        work = Path(tmp.name)
    model = work / "model.py"
    model.write_text(compile_genotype(load_paper_genotype(args.genotype), CompileOptions(
        fpn_channels=args.width, head_channels=args.width, detector=True,
        backbone=args.backbone)))
    size = (args.size, args.size)
    files = {"fp32": work / "fp32.onnx"}
    t0 = time.perf_counter()
    export_onnx(model, files["fp32"], ExportOptions(size=size))
    data = work / "calib"
    write_synthetic(data, SynthConfig(images=args.calib_images + 4, size=256, seed=0))
    for target in ("cpu", "tensorrt"):
        files[f"int8-{target}"] = work / f"int8-{target}.onnx"
        convert_onnx(files["fp32"], files[f"int8-{target}"], PrecisionOptions(
            "int8", data=data, calib_images=args.calib_images, int8_target=target))
    prep = time.perf_counter() - t0
    x = make_inputs("detector", size)
    runners = {k: make_runner(f, threads=args.threads) for k, f in files.items()}
    for r in runners.values():
        r.bind(*x)
        r.run()
        r.run()
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(args.runs):
        for k, r in runners.items():
            t = time.perf_counter_ns()
            r.run()
            times[k].append((time.perf_counter_ns() - t) / 1e6)
    med = {k: float(np.median(v)) for k, v in times.items()}
    low = {k: float(np.min(v)) for k, v in times.items()}
    res = {"genotype": args.genotype, "width": args.width, "backbone": args.backbone,
           "size": list(size), "threads": args.threads, "runs": args.runs,
           "median_ms": med, "min_ms": low,
           "ratio_median": {k: med[k] / med["fp32"] for k in med if k != "fp32"},
           "ratio_min": {k: low[k] / low["fp32"] for k in low if k != "fp32"},
           "mb": {k: f.stat().st_size / 1e6 for k, f in files.items()},
           "prepare_s": round(prep, 1)}
    print(f"{'session':<15} {'median ms':>10} {'min ms':>10} {'x fp32 (median)':>16} {'MB':>8}")
    for k in runners:
        ratio = res["ratio_median"].get(k, 1.0)
        print(f"{k:<15} {med[k]:>10.1f} {low[k]:>10.1f} {ratio:>16.3f} {res['mb'][k]:>8.1f}")
    print(json.dumps(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    for r in runners.values():
        r.close()
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
