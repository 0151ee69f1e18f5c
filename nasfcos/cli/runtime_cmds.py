"""``nasfcos export``, ``nasfcos check`` and ``nasfcos bench``: the deployment verbs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from nasfcos.errors import NasfcosError

_FMT = argparse.RawDescriptionHelpFormatter


def _kind_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--detector", dest="kind", action="store_const", const="detector",
                   help="export/run the Detector (images -> boxes, scores, labels)")
    g.add_argument("--decoder", dest="kind", action="store_const", const="decoder",
                   help="export/run the Decoder alone (c2..c5 -> 15 raw maps)")
    p.set_defaults(kind=None)


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _write_json(path: str | None, obj: Any) -> None:
    if path:
        from nasfcos.io import atomic_write_json

        atomic_write_json(path, obj)
        print(f"json: {path}")


# -- export -----------------------------------------------------------------------------------

def export_main(argv: list[str]) -> int:
    """``nasfcos export``: model.py -> ONNX (+ manifest), optionally -> TensorRT engine."""
    p = argparse.ArgumentParser(
        prog="nasfcos export", formatter_class=_FMT,
        description="Export a compiled model.py to ONNX (dynamo exporter, opset >= 19: deformable "
                    "convs become DeformConv), check the graph, simplify it with onnxslim and "
                    "write a manifest <file>.json (genotype hash, widths, I/O names and shapes, "
                    "opset, tool versions, sha256).  With --trt, also build a TensorRT engine "
                    "(needs the [trt] extra and an NVIDIA GPU).  The model kind follows the "
                    "file (Detector if it has one) unless --detector/--decoder says otherwise.",
        epilog="examples:\n  nasfcos export model.py -o model.onnx --size 800x800\n"
               "  nasfcos export model.py -o model.onnx --decoder --dynamic\n"
               "  nasfcos export model.onnx --trt model.engine --fp16 --min 512x512 "
               "--opt 800x800 --max 1344x1344")
    p.add_argument("model", help="compiled model.py (or a .onnx with --trt)")
    p.add_argument("-o", "--output", help="ONNX file to write (default: next to model.py)")
    _kind_flags(p)
    p.add_argument("--size", default="800x800", help="example input size HxW (default 800x800)")
    p.add_argument("--batch", type=_positive_int, default=1, help="batch size (default 1)")
    p.add_argument("--dynamic", action="store_true",
                   help="symbolic batch, height and width (batch stays static if the model "
                        "fixes it); valid ranges go to the manifest")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 19, minimum 19)")
    p.add_argument("--no-simplify", action="store_true", help="skip the onnxslim pass")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument("--weights", help="state_dict file (torch.save) instead of random weights")
    t = p.add_argument_group("TensorRT")
    t.add_argument("--trt", metavar="ENGINE", help="also build a TensorRT engine here")
    t.add_argument("--fp16", action="store_true", help="allow FP16 kernels")
    t.add_argument("--int8-calib", metavar="DIR", help="INT8 with calibration images from DIR")
    t.add_argument("--workspace", type=float, default=4.0, metavar="GB",
                   help="builder workspace limit in GB (default 4)")
    t.add_argument("--min", dest="min_size", help="profile min size HxW (dynamic inputs)")
    t.add_argument("--opt", dest="opt_size", help="profile optimal size HxW")
    t.add_argument("--max", dest="max_size", help="profile max size HxW")
    t.add_argument("--timing-cache", help="timing cache file (read if present, then updated)")
    p.add_argument("--json", help="also write the export summary as JSON here")
    args = p.parse_args(argv)

    from nasfcos.runtime.export import DEFAULT_OPSET, ExportOptions, export_onnx, export_summary
    from nasfcos.runtime.models import parse_size

    src = Path(args.model)
    if not src.is_file():
        raise NasfcosError(f"{src}: no such file")
    summary: dict[str, Any] = {}
    if src.suffix == ".py":
        out = Path(args.output) if args.output else (
            Path(args.trt).with_suffix(".onnx") if args.trt else src.with_suffix(".onnx"))
        opts = ExportOptions(kind=args.kind, size=parse_size(args.size), batch=args.batch,
                             dynamic=args.dynamic, opset=args.opset or DEFAULT_OPSET,
                             simplify=not args.no_simplify, seed=args.seed,
                             weights=Path(args.weights) if args.weights else None)
        print(f"exporting {src} -> {out} ({'dynamic' if opts.dynamic else 'static'} "
              f"{opts.size[0]}x{opts.size[1]}, opset {opts.opset}) ...", flush=True)
        res = export_onnx(src, out, opts, progress=sys.stderr.isatty())
        summary = export_summary(res)
        print(f"onnx: {res.onnx_path} ({summary['bytes'] / 1e6:.1f} MB, "
              f"{summary['deform_convs']} DeformConv, sha256 {summary['sha256'][:12]})")
        for io in ("inputs", "outputs"):
            names = ", ".join(f"{t['name']}{t['shape']}" for t in summary[io][:4])
            more = f" (+{len(summary[io]) - 4} more)" if len(summary[io]) > 4 else ""
            print(f"  {io}: {names}{more}")
        print(f"manifest: {res.manifest_path}")
        onnx_path = res.onnx_path
    elif src.suffix == ".onnx":
        if not args.trt:
            raise NasfcosError(f"{src}: already ONNX; pass --trt ENGINE to build an engine")
        onnx_path = src
    else:
        raise NasfcosError(f"{src}: expected a model.py (or a .onnx with --trt)")

    if args.trt:
        from nasfcos.runtime.export import load_manifest
        from nasfcos.runtime.trt import TrtBuildOptions, build_engine, profile_shapes

        shapes = None
        sizes = [args.min_size, args.opt_size, args.max_size]
        if any(sizes):
            if not all(sizes):
                raise NasfcosError("give all of --min, --opt and --max (or none)")
            man = load_manifest(onnx_path)
            kind = man["source"]["kind"]
            shapes = profile_shapes(kind, [parse_size(s) for s in sizes],
                                    int(man["export"]["batch"]),
                                    (man.get("widths") or {}).get("in_channels"))
        engine = Path(args.trt)
        print(f"building TensorRT engine {engine} ...", flush=True)
        man = build_engine(onnx_path, engine, TrtBuildOptions(
            fp16=args.fp16, int8_calib=Path(args.int8_calib) if args.int8_calib else None,
            workspace_gb=args.workspace, shapes=shapes,
            timing_cache=Path(args.timing_cache) if args.timing_cache else None))
        print(f"engine: {engine} ({man['artifact']['bytes'] / 1e6:.1f} MB, "
              f"{'/'.join(man['build']['precision'])}, {man['build']['seconds']} s)")
        summary["engine"] = {"path": str(engine), "sha256": man["artifact"]["sha256"],
                             "precision": man["build"]["precision"]}
    _write_json(args.json, summary)
    return 0


# -- check ------------------------------------------------------------------------------------

def check_main(argv: list[str]) -> int:
    """``nasfcos check``: ONNX Runtime / TensorRT vs PyTorch on the same seeded inputs."""
    p = argparse.ArgumentParser(
        prog="nasfcos check", formatter_class=_FMT,
        description="Run an exported model and its PyTorch source on the same seeded inputs and "
                    "report, per output, the max abs error and the max error relative to the "
                    "output's largest magnitude, against tolerances (pass: |d| <= atol + rtol * "
                    "max|ref|).  The source model.py, its weight seed and kind come from the "
                    "manifest unless --against is given.  Exit status 1 (naming the outputs) "
                    "when they disagree.",
        epilog="examples:\n  nasfcos check model.onnx\n"
               "  nasfcos check model.onnx --against model.py --sizes 800x800,640x512\n"
               "  nasfcos check model.engine --json parity.json")
    p.add_argument("artifact", help="model.onnx or model.engine")
    p.add_argument("--against", help="reference: model.py (default: from the manifest) or .onnx")
    p.add_argument("--backend", help="backend for the artifact (default: from its suffix)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--sizes", help="input sizes HxW,... (default: the export size, plus a "
                                   "second one for dynamic exports)")
    p.add_argument("--batch", type=_positive_int, help="batch (default: the export's)")
    p.add_argument("--seed", type=int, default=0, help="input seed (default 0)")
    p.add_argument("--atol", type=float, help="absolute tolerance (default by precision)")
    p.add_argument("--rtol", type=float, help="relative tolerance (default by precision)")
    p.add_argument("--threads", type=_positive_int, help="CPU threads")
    _kind_flags(p)
    p.add_argument("--json", help="write the full report as JSON here")
    args = p.parse_args(argv)

    from nasfcos.runtime.check import TOLERANCES, Tolerance, check_artifact
    from nasfcos.runtime.models import parse_sizes

    tol = None
    if args.atol is not None or args.rtol is not None:
        base = TOLERANCES["fp32"]
        tol = Tolerance(args.atol if args.atol is not None else base.atol,
                        args.rtol if args.rtol is not None else base.rtol)
    report = check_artifact(args.artifact, args.against, backend=args.backend,
                            device=args.device,
                            sizes=parse_sizes(args.sizes) if args.sizes else None,
                            batch=args.batch, seed=args.seed, tol=tol, kind=args.kind,
                            threads=args.threads)
    print(f"{report.backend} ({report.artifact}) vs {report.reference_backend} "
          f"({report.reference}), sizes {', '.join('x'.join(map(str, s)) for s in report.sizes)}"
          f", seed {report.seed}")
    print(report.table())
    _write_json(args.json, report.to_dict())
    if not report.ok:
        bad = report.failures()
        names = ", ".join(f"{o.name} (max abs {o.max_abs:.3g}, rel {o.max_rel:.3g})"
                          for o in bad[:5])
        print(f"nasfcos check: FAILED: {len(bad)} output(s) disagree: {names}", file=sys.stderr)
        return 1
    print("parity: ok")
    return 0


# -- bench ------------------------------------------------------------------------------------

def bench_main(argv: list[str]) -> int:
    """``nasfcos bench``: latency across backends and sizes -> report.json/.md/.png."""
    p = argparse.ArgumentParser(
        prog="nasfcos bench", formatter_class=_FMT,
        description="Latency benchmark: the same seeded inputs for every backend, warm-up "
                    "excluded, per-run wall clock (perf_counter_ns on CPU, CUDA events on GPU); "
                    "median, mean, p90, p99, min, std, FPS; machine, library versions, FLOPs and "
                    "the machine's fp32 matmul peak in the report.  Writes REPORT.json, "
                    "REPORT.md (the table) and REPORT.png (latency vs size per backend).",
        epilog="examples:\n  nasfcos bench model.py --backends torch,onnxruntime "
               "--sizes 600,800,1000 -o report\n"
               "  nasfcos bench model.onnx --runs 20 --warmup 3 --threads 2\n"
               "  nasfcos bench model.engine --device cuda")
    p.add_argument("model", help="model.py, model.onnx or model.engine")
    p.add_argument("--backends", help="comma list of torch, torch-compile, onnxruntime, "
                                      "tensorrt (default: by file type)")
    p.add_argument("--sizes", default="600,800,1000", help="input sizes (default 600,800,1000)")
    p.add_argument("--batch", type=_positive_int, default=1)
    p.add_argument("--warmup", type=int, default=10, help="untimed runs first (default 10)")
    p.add_argument("--runs", type=_positive_int, default=100, help="timed runs (default 100)")
    p.add_argument("--max-seconds", type=float,
                   help="time budget per backend and size; stops early (>= 3 runs)")
    p.add_argument("--threads", type=_positive_int, help="CPU threads for every backend")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="input and weight seed (default 0)")
    p.add_argument("--onnx-static", action="store_true",
                   help="for a model.py: one static ONNX export per size instead of a dynamic one")
    p.add_argument("--ort-opt-level", default="all", choices=["none", "basic", "extended", "all"],
                   help="ONNX Runtime graph optimisation level (default all)")
    p.add_argument("--onnx", help="for a model.py: use this exported ONNX file for "
                                  "onnxruntime/tensorrt instead of exporting again")
    p.add_argument("--baseline", action="store_true",
                   help="detector model.py: also time the route without nasfcos (reference "
                        "interpreter's detector, plain torch.onnx.export, default ORT options)")
    p.add_argument("--fp16", action="store_true", help="TensorRT: build with FP16")
    p.add_argument("--no-matmul-peak", action="store_true", help="skip the matmul peak")
    _kind_flags(p)
    p.add_argument("-o", "--output", default="report", help="report path prefix (default report)")
    args = p.parse_args(argv)

    from nasfcos.runtime.bench import BenchConfig, markdown_table, run_benchmark, write_report
    from nasfcos.runtime.models import parse_sizes

    if args.warmup < 0:
        raise NasfcosError("--warmup must be >= 0")
    cfg = BenchConfig(
        backends=[b.strip() for b in args.backends.split(",") if b.strip()] if args.backends
        else None,
        sizes=parse_sizes(args.sizes), batch=args.batch, warmup=args.warmup, runs=args.runs,
        threads=args.threads, device=args.device, seed=args.seed, kind=args.kind,
        max_seconds=args.max_seconds, matmul_peak=not args.no_matmul_peak,
        onnx_static=args.onnx_static, ort_opt_level=args.ort_opt_level, trt_fp16=args.fp16,
        onnx_path=Path(args.onnx) if args.onnx else None, baseline=args.baseline)
    report = run_benchmark(args.model, cfg, progress=sys.stderr.isatty())
    paths = write_report(report, args.output)
    print(markdown_table(report))
    for k, v in paths.items():
        print(f"{k}: {v}")
    skipped = [r for r in report["results"] if r["status"] != "ok"]
    for r in skipped:
        print(f"note: {r['backend']} {r['size'][0]}x{r['size'][1]} {r['status']}: {r['reason']}")
    return 0 if any(r["status"] == "ok" for r in report["results"]) else 1


def main(argv: list[str]) -> int:  # pragma: no cover - the dispatcher calls the verbs directly
    return export_main(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(export_main(sys.argv[1:]))
