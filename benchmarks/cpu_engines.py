"""CPU engines x precisions at 800 px, measured in one run against ONNX Runtime fp32 (issue 24).

    .venv/bin/python benchmarks/cpu_engines.py [--genotype nas_fcos_fpn_head] [--width 128]
        [--backbone resnet50] [--size 800] [--threads 2] [--blocks 5] [--runs 2]
        [--engines onnxruntime,onnxruntime:default,openvino,openvino:bf16,openvino:int8,onnxruntime:int8,torch,torch:bf16]
        [--calib-images 8] [--work DIR] [--json FILE]

The genotype @``width`` with ``backbone`` compiled as a Detector (random weights, seed 0),
exported static at ``size`` x ``size`` (fp32).  Engines: ``onnxruntime`` (the project's
session options), ``onnxruntime:int8`` (``export --precision int8 --int8-target cpu``),
``onnxruntime:default`` (the same file in a session with ONNX Runtime's default
``SessionOptions``: the baseline a user would otherwise have, against which issue 24 states
its targets; each row also gives its ratio to it), ``openvino`` / ``openvino:bf16`` / ``openvino:int8`` (NNCF; the ``[openvino]`` extra; an
engine that is not available here is listed as skipped with its reason), ``torch`` /
``torch:bf16`` (eager, BatchNorms folded, channels_last; bf16 autocast).  int8 is calibrated
on ``--calib-images`` synthetic images made on the spot.

Timing: every engine runs the same seeded image; ``blocks`` alternating blocks (the engine
order rotates per block) of ``runs`` runs each after one warm-up run per engine, so a slow
phase of the shared machine hits all engines alike.  Ratios are median(engine) /
median(ORT fp32) with a paired 95% bootstrap interval (runs paired by block and position).
The machine's fp32 and bf16 matmul peaks (torch, ``threads`` threads) are measured before
and after the blocks in the same run; each engine's GFLOP/s (FLOPs counted on the model) is
given as a share of the fp32 peak, and of the bf16 peak for bf16/int8 engines.
Agreement: detections matched to ORT fp32's top 100 at IoU >= 0.5 / 0.95 on the timing
image (random weights: this says nothing about accuracy; the precision table on the
trained yardstick does).  Targets (issue 24): best engine <= 0.5x ORT fp32; OpenVINO fp32
<= 0.85x ORT fp32.  Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_ENGINES = ("onnxruntime,onnxruntime:default,openvino,openvino:bf16,openvino:int8,onnxruntime:int8,"
                   "torch,torch:bf16")


def _make(engine: str, model: Path, fp32: Path, int8: Path | None, data: Path,
          args: argparse.Namespace):
    from nasfcos.runtime.precision import PrecisionOptions
    from nasfcos.runtime.runners import make_runner

    if engine == "onnxruntime:int8":
        return make_runner(int8, "onnxruntime", threads=args.threads)
    if engine == "onnxruntime:default":  # the yardstick: default SessionOptions
        from nasfcos.runtime.bench import plain_session

        runner = make_runner(fp32, "onnxruntime", threads=args.threads)
        runner.session = plain_session(fp32, args.threads)
        return runner
    if engine.startswith("torch"):
        return make_runner(model, engine, kind="detector", threads=args.threads)
    calib = PrecisionOptions("int8", data=data, calib_images=args.calib_images) \
        if engine.endswith(":int8") else None
    return make_runner(fp32, engine, threads=args.threads, calib=calib)


def _vs_default(t: list[float], times: dict[str, list[float]]) -> dict[str, object]:
    """Median ratio to ``onnxruntime:default`` with its paired 95% interval, when it ran."""
    from nasfcos.runtime.bench import median_ratio_interval

    base = times.get("onnxruntime:default")
    if not base:
        return {}
    lo, hi = median_ratio_interval(t, base, paired=True)
    return {"x_ort_default": round(float(np.median(t)) / float(np.median(base)), 3),
            "x_ort_default_95ci": [round(lo, 3), round(hi, 3)]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in (("genotype", "nas_fcos_fpn_head"), ("width", 128),
                          ("backbone", "resnet50"), ("size", 800), ("threads", 2),
                          ("blocks", 5), ("engines", DEFAULT_ENGINES), ("calib-images", 8)):
        ap.add_argument(f"--{name}", type=type(default), default=default)
    ap.add_argument("--runs", type=int, default=2, help="timed runs per engine and block")
    ap.add_argument("--work", help="keep the exports here (default: a temporary folder)")
    ap.add_argument("--json", help="also write the result here")
    ap.add_argument("--precision-report", metavar="FILE",
                    help="a 'nasfcos bench --precisions' JSON on the trained yardstick: with "
                         "--table-out, write the CPU engine table (speed from this run, "
                         "accuracy from that report) that the automatic CPU engine reads")
    ap.add_argument("--table-out", metavar="FILE", help="where to write that table")
    ap.add_argument("--from-json", metavar="FILE",
                    help="skip the measurement: take the speed from an earlier --json result")
    args = ap.parse_args()
    if args.from_json:
        return _write_table(json.loads(Path(args.from_json).read_text()), args)

    import torch

    torch.set_num_threads(args.threads)
    from nasfcos.compiler import CompileOptions, compile_genotype
    from nasfcos.errors import BackendUnavailable
    from nasfcos.fcos.synth import SynthConfig, write_synthetic
    from nasfcos.genotypes import load_paper_genotype
    from nasfcos.runtime.bench import count_flops, matmul_peak_gflops, median_ratio_interval
    from nasfcos.runtime.check import detection_agreement
    from nasfcos.runtime.export import ExportOptions, convert_onnx, export_onnx
    from nasfcos.runtime.models import load_model, make_inputs
    from nasfcos.runtime.precision import PrecisionOptions

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if "onnxruntime" not in engines:
        engines.insert(0, "onnxruntime")
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="nasfcos-cpu-engines-")
    work = Path(args.work or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    opts = CompileOptions(fpn_channels=args.width, head_channels=args.width, detector=True,
                          backbone=args.backbone)
    (model := work / "model.py").write_text(compile_genotype(load_paper_genotype(args.genotype),
                                                             opts))
    size = (args.size, args.size)
    fp32 = work / "fp32.onnx"
    if not fp32.is_file():
        export_onnx(model, fp32, ExportOptions(size=size))
    data = work / "calib"
    if not (data / "train.json").is_file():
        write_synthetic(data, SynthConfig(images=args.calib_images + 4, size=256, seed=0))
    int8 = None
    if "onnxruntime:int8" in engines:
        int8 = work / "int8-cpu.onnx"
        if not int8.is_file():
            convert_onnx(fp32, int8, PrecisionOptions("int8", data=data,
                                                      calib_images=args.calib_images,
                                                      int8_target="cpu"))
    gflop = count_flops(load_model(model, "detector"), size) / 1e9
    x = make_inputs("detector", size)
    runners, skipped = {}, {}
    for e in engines:
        t0 = time.perf_counter()
        try:
            runners[e] = _make(e, model, fp32, int8, data, args)
        except BackendUnavailable as exc:
            skipped[e] = str(exc)
            continue
        runners[e].bind(*x)
        runners[e].run()  # warm-up (first-run allocation / JIT)
        print(f"ready {e} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    outs = {e: r.fetch() for e, r in runners.items()}
    peaks = [matmul_peak_gflops(args.threads, seconds=1.0)["gflops"],
             _bf16_peak(args.threads)]
    times: dict[str, list[float]] = {e: [] for e in runners}
    order = list(runners)
    for b in range(args.blocks):
        for e in order[b % len(order):] + order[:b % len(order)]:
            for _ in range(args.runs):
                t = time.perf_counter_ns()
                runners[e].run()
                times[e].append((time.perf_counter_ns() - t) / 1e6)
        print(f"block {b + 1}/{args.blocks}", file=sys.stderr, flush=True)
    peaks += [matmul_peak_gflops(args.threads, seconds=1.0)["gflops"], _bf16_peak(args.threads)]
    fp32_peak, bf16_peak = max(peaks[0], peaks[2]), max(peaks[1], peaks[3])
    base = times["onnxruntime"]
    rows = {}
    for e, t in times.items():
        med = float(np.median(t))
        lo, hi = median_ratio_interval(t, base, paired=True)
        a50 = detection_agreement(outs["onnxruntime"], outs[e], iou_threshold=0.5)
        a95 = detection_agreement(outs["onnxruntime"], outs[e], iou_threshold=0.95)
        rate = gflop / (med / 1000)
        rows[e] = {"median_ms": round(med, 1), "p90_ms": round(float(np.percentile(t, 90)), 1),
                   "x_ort_fp32": round(med / float(np.median(base)), 3),
                   "x_ort_fp32_95ci": [round(lo, 3), round(hi, 3)],
                   **_vs_default(t, times),
                   "gflops_per_s": round(rate, 1),
                   "of_fp32_peak": round(rate / fp32_peak, 3),
                   "of_bf16_peak": round(rate / bf16_peak, 3),
                   # random weights may detect nothing: then there is nothing to agree on
                   "agree50": round(a50.match_rate, 3) if a50.reference else None,
                   "agree95": round(a95.match_rate, 3) if a95.reference else None,
                   "reference_detections": a50.reference,
                   "info": {k: v for k, v in runners[e].info().items()
                            if k in ("precision", "conv_runtime_precision",
                                     "deform_runtime_precision", "eager")}}
    for r in runners.values():
        r.close()
    res = {"genotype": args.genotype, "width": args.width, "backbone": args.backbone,
           "size": list(size), "threads": args.threads, "blocks": args.blocks,
           "runs": args.runs, "gflop": round(gflop, 1),
           "fp32_peak_gflops": round(fp32_peak, 1), "bf16_peak_gflops": round(bf16_peak, 1),
           "peaks_before_after": [round(p, 1) for p in peaks], "engines": rows,
           "skipped": skipped}
    print(f"{'engine':<20} {'median ms':>10} {'x ORT fp32 [95%]':>22} {'x ORT default [95%]':>22}"
          f" {'GFLOP/s':>8} {'%fp32pk':>8} {'%bf16pk':>8} {'agree .5/.95':>13}")
    for e, r in rows.items():
        ci, cd = r["x_ort_fp32_95ci"], r.get("x_ort_default_95ci")
        vs_default = (f"{r['x_ort_default']:>7.3f} [{cd[0]:.3f}-{cd[1]:.3f}]" if cd
                      else f"{'-':>22}")
        print(f"{e:<20} {r['median_ms']:>10.1f} {r['x_ort_fp32']:>7.3f} [{ci[0]:.3f}-{ci[1]:.3f}]"
              f" {vs_default}"
              f" {r['gflops_per_s']:>8.1f} {100 * r['of_fp32_peak']:>7.0f}% "
              f"{100 * r['of_bf16_peak']:>7.0f}% "
              + (f"{r['agree50']:>6.2f}/{r['agree95']:.2f}" if r["agree50"] is not None
                 else "   n/a (0 reference detections)"))
    for e, why in skipped.items():
        print(f"{e:<18} skipped: {why}")
    print(f"peaks (GFLOP/s, same run, before/after): fp32 {peaks[0]:.0f}/{peaks[2]:.0f}, "
          f"bf16 {peaks[1]:.0f}/{peaks[3]:.0f}")
    print(json.dumps(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    if tmp is not None:
        tmp.cleanup()
    return _write_table(res, args)


def _write_table(res: dict, args: argparse.Namespace) -> int:
    """The engine table of nasfcos.runtime.cpu_default from this speed result and a
    precision report (when --precision-report and --table-out are given)."""
    if not (args.precision_report and args.table_out):
        return 0
    from nasfcos.io import atomic_write_json
    from nasfcos.runtime.cpu_default import table_from_reports

    prec = json.loads(Path(args.precision_report).read_text())
    # the default-options session is a yardstick, not an engine nasfcos can pick
    speed = {**res, "engines": {e: r for e, r in res["engines"].items()
                                if e != "onnxruntime:default"}}
    table = table_from_reports(speed, prec)
    table["source"] = (f"benchmarks/cpu_engines.py at {res['size'][0]} px "
                       f"({res['genotype']}@{res['width']} {res['backbone']}), accuracy from "
                       f"the precision table of {Path(prec['model']).name} on {prec['data']}")
    table["speed"] = {k: res[k] for k in ("genotype", "width", "backbone", "size", "threads",
                                          "blocks", "runs", "fp32_peak_gflops",
                                          "bf16_peak_gflops")}
    table["machine"] = prec.get("machine", {}).get("cpu")
    atomic_write_json(Path(args.table_out), table)
    print(f"wrote {args.table_out}")
    return 0


def _bf16_peak(threads: int) -> float:
    from nasfcos.runtime.bench import matmul_peak_gflops

    return matmul_peak_gflops(threads, seconds=1.0, dtype="bfloat16")["gflops"]


if __name__ == "__main__":
    sys.exit(main())
