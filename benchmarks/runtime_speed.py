"""CPU speed targets of the runtime, measured in one run (issue: runtime speed targets).

    .venv/bin/python benchmarks/runtime_speed.py [--size 800x800] [--threads 2] [--runs 5]
        [--warmup 1] [--fpn-channels 128] [--backbone resnet50] [--json FILE]

For the paper genotype (``nas_fcos_fpn_head``) compiled as a whole detector (random weights,
batch 1), on the same seeded image:

* ``reference eager``: the straightforward implementation: the same detector whose decoder is
  the reference interpreter (``torchvision.ops.deform_conv2d`` for every deformable conv);
* ``compiled eager``: the generated ``model.py`` as it runs in PyTorch (its eager DCNv2 is
  grid_sample + one matmul);
* ``onnxruntime``: the dynamic ONNX export (onnxslim, ORT graph optimisations "all");
* ``reference decoder`` / ``compiled decoder``: the two decoders alone, on the backbone
  features of that image (what the compiler generates, without the shared torchvision trunk).

The PyTorch runs alternate each round, so machine noise hits them alike; ONNX Runtime is
timed in a block of its own (the two libraries' spinning thread pools would otherwise slow each
other down).  Each figure is the median of ``--runs`` rounds.  FLOPs (2 x MACs of convolutions, matmuls and
deformable convolutions, backbone + decoder) come from the same counter as ``nasfcos bench``;
the fp32 matmul peak is measured in this run with the same thread count.  Prints a table and
one JSON document with the two target ratios:

* eager speed-up = reference eager / compiled eager (target >= 1.5);
* best CPU backend GFLOP/s / matmul peak GFLOP/s (target >= 0.85).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _parse_size(text: str) -> tuple[int, int]:
    w, _, h = text.partition("x")
    return int(h or w), int(w)


def _backbone_flops(detector: torch.nn.Module, image: torch.Tensor) -> float:
    """FLOPs of the detector's backbone alone (meta device, same counter as the total)."""
    from torch.utils.flop_counter import FlopCounterMode

    backbone = copy.deepcopy(detector.backbone).to("meta")
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        backbone(torch.empty(image.shape, device="meta"))
    return float(counter.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="800x800", help="WIDTHxHEIGHT (default 800x800)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--fpn-channels", type=int, default=128)
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--json", help="also write the JSON document here")
    args = ap.parse_args()

    from nasfcos.compiler import CompileOptions, build_reference, compile_genotype
    from nasfcos.genotypes import load_paper_genotype
    from nasfcos.runtime.bench import count_flops, matmul_peak_gflops
    from nasfcos.runtime.export import ExportOptions, export_onnx
    from nasfcos.runtime.models import load_model
    from nasfcos.runtime.runners import OrtRunner

    torch.set_num_threads(args.threads)
    size = _parse_size(args.size)
    genotype = load_paper_genotype()
    opts = CompileOptions(fpn_channels=args.fpn_channels, detector=True, backbone=args.backbone)
    work = Path(tempfile.mkdtemp(prefix="nasfcos-runtime-speed-"))
    model_py = work / "model.py"
    model_py.write_text(compile_genotype(genotype, opts))

    lm = load_model(model_py, "detector", seed=0)
    compiled = lm.net.detector
    reference = copy.deepcopy(compiled)
    ref_decoder = build_reference(genotype, opts)
    ref_decoder.load_state_dict(compiled.decoder.state_dict(), strict=True)
    reference.decoder = ref_decoder.eval()
    image = torch.from_numpy(lm.inputs(size, 1, seed=0)[0])

    print(f"exporting {model_py.name} to ONNX ...", file=sys.stderr)
    onnx_path = work / "model.onnx"
    export_onnx(lm, onnx_path, ExportOptions(kind="detector", size=size, dynamic=True))
    feed = image.numpy()
    ort: list[OrtRunner] = []  # the session is made after the PyTorch block, as `bench` does

    with torch.no_grad():
        ref_out = reference.forward_raw(image)
        got_out = compiled.forward_raw(image)
    max_diff = max(float((a - b).abs().max()) for a, b in
                   zip([*ref_out[0], *ref_out[1], *ref_out[2]],
                       [*got_out[0], *got_out[1], *got_out[2]], strict=True))

    def run_torch(model: torch.nn.Module) -> None:
        with torch.no_grad():
            model(image)

    with torch.no_grad():
        features = compiled.backbone((image - compiled.pixel_mean) / compiled.pixel_std)

    def run_decoder(decoder: torch.nn.Module) -> None:
        with torch.no_grad():
            decoder(features)

    backends = {
        "reference eager": lambda: run_torch(reference),
        "compiled eager": lambda: run_torch(compiled),
        "onnxruntime": lambda: ort[0](feed),
        "reference decoder": lambda: run_decoder(reference.decoder),
        "compiled decoder": lambda: run_decoder(compiled.decoder),
    }
    times: dict[str, list[float]] = {k: [] for k in backends}
    # Two blocks: the PyTorch runs alternate among themselves; ONNX Runtime runs on its own,
    # since each library's thread pool keeps spinning for a while after its work and would
    # steal the cores from the other one if they alternated.
    for block in (["reference eager", "compiled eager", "reference decoder", "compiled decoder"],
                  ["onnxruntime"]):
        time.sleep(1.0)
        if block == ["onnxruntime"]:
            ort.append(OrtRunner(onnx_path, threads=args.threads))
        for _ in range(args.warmup):
            for name in block:
                backends[name]()
        for r in range(args.runs):
            for name in block:
                t0 = time.perf_counter_ns()
                backends[name]()
                times[name].append((time.perf_counter_ns() - t0) / 1e6)
            print(f"round {r + 1}/{args.runs}: " + ", ".join(
                f"{k} {times[k][-1]:.0f} ms" for k in block), file=sys.stderr)
    ort[0].close()

    flops = count_flops(lm, size, 1)
    peak = matmul_peak_gflops(args.threads)["gflops"]
    rows = {}
    decoder_flops = flops - _backbone_flops(compiled, image)
    for name, ts in times.items():
        med = statistics.median(ts)
        name_flops = decoder_flops if name.endswith("decoder") else flops
        rows[name] = {"median_ms": round(med, 1), "min_ms": round(min(ts), 1),
                      "std_ms": round(float(np.std(ts)), 1),
                      "gflops": round(name_flops / (med / 1e3) / 1e9, 1),
                      "of_peak": round(name_flops / (med / 1e3) / 1e9 / peak, 3)}
    best = min(("reference eager", "compiled eager", "onnxruntime"),
               key=lambda k: rows[k]["median_ms"])
    result = {
        "size": list(size), "threads": args.threads, "runs": args.runs,
        "fpn_channels": args.fpn_channels, "backbone": args.backbone,
        "gflop_per_image": round(flops / 1e9, 2), "matmul_peak_gflops": round(peak, 1),
        "compiled_vs_reference_max_abs_diff": max_diff, "results": rows,
        "eager_speedup": round(rows["reference eager"]["median_ms"]
                               / rows["compiled eager"]["median_ms"], 3),
        "decoder_speedup": round(rows["reference decoder"]["median_ms"]
                                 / rows["compiled decoder"]["median_ms"], 3),
        "decoder_gflop_per_image": round(decoder_flops / 1e9, 2),
        "best_backend": best, "best_of_peak": rows[best]["of_peak"],
        "torch": torch.__version__,
    }
    print(f"\npaper genotype @{args.fpn_channels}, {args.backbone}, {size[1]}x{size[0]}, batch 1, "
          f"{args.threads} threads; {flops / 1e9:.1f} GFLOP/image; matmul peak {peak:.0f} GFLOP/s")
    print(f"{'backend':<17} {'median ms':>10} {'min ms':>8} {'GFLOP/s':>8} {'of peak':>8}")
    for name, r in rows.items():
        print(f"{name:<17} {r['median_ms']:>10.1f} {r['min_ms']:>8.1f} {r['gflops']:>8.1f} "
              f"{r['of_peak']:>8.1%}")
    print(f"eager speed-up (reference / compiled): {result['eager_speedup']:.2f}x (target >= 1.5)")
    print(f"decoder alone (reference / compiled): {result['decoder_speedup']:.2f}x")
    print(f"best CPU backend ({best}): {rows[best]['of_peak']:.1%} of matmul peak (target >= 85%)")
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
