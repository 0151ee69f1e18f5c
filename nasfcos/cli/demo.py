"""``nasfcos demo``: the main job on the shipped paper genotype, end to end.

compile (NAS-FCOS @256 or --fpn-channels, ResNet-50 detector, random weights) -> export ONNX (dynamic batch,
height/width) -> parity check (ONNX Runtime vs PyTorch) -> latency benchmark (torch vs
ONNX Runtime on CPU at 600/800/1000 px, TensorRT too where a GPU and TensorRT exist) ->
the table and the report paths.  Defaults are sized to finish in a few minutes on a
2-core machine (1 warm-up and 3 timed runs per cell); the flags give the full protocol.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from nasfcos.cli import args as A
from nasfcos.errors import NasfcosError


def _threads_default() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def main(argv: list[str]) -> int:
    """Entry point of ``nasfcos demo``."""
    from nasfcos.compiler.backbones import BACKBONE_NAMES as BACKBONES

    p = A.Parser(
        prog="nasfcos demo", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        epilog="examples:\n  nasfcos demo -o demo_out\n"
               "  nasfcos demo -o demo_out --quick\n"
               "  nasfcos demo -o demo_out --runs 100 --warmup 10   # the full protocol")
    p.add_argument("-o", "--output", "--out", dest="out", type=A.output_dir, default="demo_out",
                   metavar="DIR", help="output folder (default demo_out)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 320/416/512 px, 1 timed run, one parity size")
    p.add_argument("--sizes", type=A.size_list, help="benchmark sizes HxW,... (default 600,800,1000)")
    A.add_timing(p, runs=None, runs_help="timed runs per backend and size (default 3)",
                 warmup=None, warmup_help="warm-up runs (default 1)")
    A.add_threads(p, default=_threads_default())
    p.add_argument("--backends", default="torch,onnxruntime",
                   help="CPU backends (default torch,onnxruntime; add torch-compile to try it)")
    p.add_argument("--fpn-channels", type=A.width, default=256,
                   help="decoder width (default 256, the released models'; make demo uses 128)")
    p.add_argument("--backbone", default="resnet50", choices=BACKBONES,
                   help="detector backbone (default resnet50)")
    p.add_argument("--genotype", type=A.genotype_arg, default="nas_fcos_fpn_head",
                   help="shipped genotype name or a genotype .json (default nas_fcos_fpn_head)")
    p.add_argument("--static", action="store_true",
                   help="a static ONNX export at the one --sizes entry instead of a dynamic one "
                        "(several times faster to export; parity at that size only)")
    A.add_json(p, "print the summary (demo.json) as JSON on stdout")
    A.add_quiet(p)
    args = p.parse_args(argv)
    if args.static and len(args.sizes or ()) != 1:
        raise NasfcosError("--static needs exactly one --sizes entry (a static graph runs at one size)")

    from nasfcos.compiler import CompileOptions, compile_genotype
    from nasfcos.genotypes import resolve_genotype
    from nasfcos.io import atomic_write_json, atomic_write_text
    from nasfcos.runtime.bench import BenchConfig, markdown_table, run_benchmark, write_report
    from nasfcos.runtime.check import check_artifact
    from nasfcos.runtime.export import ExportOptions, export_onnx
    from nasfcos.runtime.trt import tensorrt_status

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    quick = args.quick
    sizes = args.sizes or A.size_list("320,416,512" if quick else "600,800,1000")
    runs = args.runs if args.runs is not None else (1 if quick else 3)
    warmup = args.warmup if args.warmup is not None else (0 if quick else 1)
    show = not args.quiet
    stream = sys.stderr if args.json else sys.stdout  # --json: stdout holds only the JSON

    def say(*parts: Any) -> None:
        print(*parts, file=stream, flush=True)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    summary: dict[str, Any] = {"out": str(out), "steps": {}}
    t_all = time.perf_counter()

    def step(name: str, t0: float) -> None:
        summary["steps"][name] = round(time.perf_counter() - t0, 1)

    # 1. compile
    t0 = time.perf_counter()
    gname = args.genotype
    genotype = resolve_genotype(gname)
    opts = CompileOptions(fpn_channels=args.fpn_channels, detector=True, backbone=args.backbone)
    model_py = out / "model.py"
    atomic_write_text(model_py, compile_genotype(genotype, opts))
    step("compile", t0)
    say(f"[1/4] compiled {genotype.name} @{args.fpn_channels} with {args.backbone} "
          f"-> {model_py}")

    # 2. export
    t0 = time.perf_counter()
    ordered = sorted(sizes, key=lambda s: s[0] * s[1])
    mid = ordered[len(ordered) // 2]
    shape = "static" if args.static else "dynamic batch/H/W"
    say(f"[2/4] exporting to ONNX ({shape}, traced at {mid[0]}x{mid[1]}; "
          "takes a while for ResNet-50) ...")
    res = export_onnx(model_py, out / "model.onnx", ExportOptions(size=mid, dynamic=not args.static),
                      progress=show)
    step("export", t0)
    summary["onnx"] = {"path": str(res.onnx_path), "manifest": str(res.manifest_path),
                       "bytes": res.manifest["artifact"]["bytes"],
                       "deform_convs": res.manifest["export"]["ops"].get("DeformConv", 0)}
    say(f"      {res.onnx_path} ({res.manifest['artifact']['bytes'] / 1e6:.0f} MB, "
          f"{summary['onnx']['deform_convs']} DeformConv), manifest {res.manifest_path}")

    # 3. parity
    t0 = time.perf_counter()
    check_sizes = [ordered[0]] if quick or args.static else [ordered[0], (ordered[0][0], ordered[0][1] + 64)]
    say(f"[3/4] parity: ONNX Runtime vs PyTorch at "
          f"{', '.join(f'{h}x{w}' for h, w in check_sizes)} ...")
    check = check_artifact(res.onnx_path, model_py, sizes=check_sizes, threads=args.threads)
    step("check", t0)
    atomic_write_json(out / "parity.json", check.to_dict())
    say(check.table())
    summary["parity"] = {"ok": check.ok, "json": str(out / "parity.json"),
                         "max_abs": {o.name: o.max_abs for o in check.outputs}}
    if not check.ok:
        bad = ", ".join(o.name for o in check.failures())
        print(f"nasfcos demo: parity FAILED for {bad}", file=sys.stderr)

    # 4. benchmark
    t0 = time.perf_counter()
    say(f"[4/4] benchmark {', '.join(backends)} on CPU ({args.threads} threads) at "
          f"{', '.join(f'{h}x{w}' for h, w in sizes)}: {warmup} warm-up + {runs} timed runs "
          "each ...")
    cfg = BenchConfig(backends=backends, sizes=sizes, warmup=warmup, runs=runs,
                      threads=args.threads, device="cpu", onnx_path=res.onnx_path)
    report = run_benchmark(model_py, cfg, progress=show)
    paths = write_report(report, out / "report")
    summary["report"] = {k: str(v) for k, v in paths.items()}
    trt_reason = tensorrt_status()
    if trt_reason is None:
        gcfg = BenchConfig(backends=["torch", "tensorrt"], sizes=sizes, warmup=max(warmup, 3),
                           runs=max(runs, 10), device="cuda", onnx_path=res.onnx_path)
        greport = run_benchmark(model_py, gcfg, progress=show)
        gpaths = write_report(greport, out / "report_gpu")
        summary["report_gpu"] = {k: str(v) for k, v in gpaths.items()}
    else:
        summary["tensorrt"] = f"not run: {trt_reason}"
    step("bench", t0)
    summary["seconds"] = round(time.perf_counter() - t_all, 1)
    summary["results"] = [{k: r.get(k) for k in ("backend", "size", "status", "median_ms",
                                                  "p90_ms", "gflops_per_s", "peak_fraction")}
                          for r in report["results"]]
    atomic_write_json(out / "demo.json", summary)

    say()
    say(markdown_table(report))
    if "report_gpu" in summary:
        say(Path(summary["report_gpu"]["md"]).read_text())
    else:
        say(f"TensorRT: {summary['tensorrt']}")
    say(f"model:    {model_py}\nonnx:     {res.onnx_path}\nparity:   {out / 'parity.json'} "
          f"({'ok' if check.ok else 'FAILED'})")
    for v in paths.values():
        say(f"report:   {v}")
    say(f"summary:  {out / 'demo.json'}  (total {summary['seconds']} s)")
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    return 0 if check.ok else 1
