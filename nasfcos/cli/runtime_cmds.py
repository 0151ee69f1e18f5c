"""``nasfcos export``, ``nasfcos check`` and ``nasfcos bench``: the deployment verbs."""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from nasfcos.cli import args as A
from nasfcos.errors import NasfcosError
from nasfcos.io import atomic_write_bytes, atomic_write_json, atomic_write_text


def _kind_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--detector", dest="kind", action="store_const", const="detector",
                   help="export/run the Detector (images -> boxes, scores, labels)")
    g.add_argument("--decoder", dest="kind", action="store_const", const="decoder",
                   help="export/run the Decoder alone (c2..c5 -> 15 raw maps)")


def _precision_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("precision (built into the ONNX file; see the README)")
    g.add_argument("--precision", choices=["fp32", "fp16", "int8"], default=None,
                   help="fp32 (default), fp16 (float16 with float32 I/O) or int8 (Q/DQ)")
    g.add_argument("--calib", type=A.input_dir, metavar="DIR", help="int8: folder of calibration images")
    g.add_argument("--data", type=A.input_dir, metavar="DIR", help="int8: COCO data folder to calibrate on")
    A.add_calibration(g, images_help="int8: calibration images (default 32)",
                      method_help="int8: range estimator (default minmax)")
    g.add_argument("--int8-target", choices=["tensorrt", "cpu"], default="tensorrt",
                   help="int8: tensorrt (symmetric, per-channel) or cpu (U8S8 for ONNX "
                        "Runtime on x86; TensorRT cannot build it)")


def _precision_options(args: argparse.Namespace) -> Any:
    """PrecisionOptions from the flags, the legacy --fp16/--int8-calib mapped onto them."""
    from nasfcos.runtime.precision import PrecisionOptions

    precision, calib = args.precision, args.calib
    if args.fp16 and args.int8_calib:
        raise NasfcosError("give one of --fp16 and --int8-calib")
    legacy = "fp16" if args.fp16 else "int8" if args.int8_calib else None
    if legacy and precision not in (None, legacy):
        raise NasfcosError(f"--precision {precision} contradicts the legacy flag (= {legacy})")
    precision = precision or legacy or "fp32"
    if args.int8_calib:
        if calib and calib != args.int8_calib:
            raise NasfcosError("give the calibration folder once (--calib or --int8-calib)")
        calib = args.int8_calib
    opts = PrecisionOptions(precision=precision, calib=Path(calib) if calib else None,
                            data=Path(args.data) if args.data else None,
                            calib_images=args.calib_images, calib_method=args.calib_method,
                            int8_target=args.int8_target)
    if args.trt and precision == "int8" and opts.int8_target != "tensorrt":
        raise NasfcosError("TensorRT cannot build --int8-target cpu (uint8 activations; its "
                           "INT8 is symmetric): use --int8-target tensorrt with --trt")
    return opts


def _emit_json(args: argparse.Namespace, obj: Any, path: str | None = None) -> None:
    """``--json``: the result on stdout; ``path`` (check's ``-o``) also gets it."""
    if path:
        atomic_write_json(path, obj)
        A.say(args, f"json: {path}")
    if args.json:
        A.print_json(obj)


# -- export -----------------------------------------------------------------------------------

def _export_parser() -> argparse.ArgumentParser:
    p = A.Parser(
        prog="nasfcos export",
        description="Export a compiled model.py to ONNX (dynamo exporter, opset >= 19: deformable "
                    "convs become DeformConv), check the graph, simplify it with onnxslim and "
                    "write a manifest <file>.json (genotype hash, widths, I/O names and shapes, "
                    "opset, tool versions, sha256).  With --trt, also build a TensorRT engine "
                    "(needs the [trt] extra and an NVIDIA GPU).  The model kind follows the "
                    "file (Detector if it has one) unless --detector/--decoder says otherwise.",
        epilog="examples:\n  nasfcos export model.py -o model.onnx --size 800x800\n"
               "  nasfcos export model.py -o model.onnx --decoder --dynamic\n"
               "  nasfcos export model.py -o m.int8.onnx --precision int8 --data data/synth\n"
               "  nasfcos export model.onnx --precision fp16 -o model.fp16.onnx\n"
               "  nasfcos export model.onnx --trt model.engine --fp16 --min 512x512 "
               "--opt 800x800 --max 1344x1344")
    p.add_argument("model", type=A.input_file, help="compiled model.py (or a .onnx with --trt)")
    p.add_argument("-o", "--output", type=A.output_file,
                   help="ONNX file to write (default: next to model.py)")
    _kind_flags(p)
    p.add_argument("--size", type=A.size_hw, default="800x800",
                   help="example input size HxW (default 800x800)")
    p.add_argument("--dynamic", action="store_true",
                   help="symbolic batch, height and width (batch stays static if the model "
                        "fixes it); valid ranges go to the manifest")
    p.add_argument("--opset", type=A.opset, default=None, help="ONNX opset (default 19, minimum 19)")
    p.add_argument("--no-simplify", action="store_true", help="skip the onnxslim pass")
    A.add_run_inputs(p, batch=1, batch_help="batch size (default 1)",
                     seed_help="seed of the random weights (default 0)")
    p.add_argument("--weights", type=A.input_file,
                   help="state_dict file (torch.save) instead of random weights")
    _precision_flags(p)
    t = p.add_argument_group("TensorRT")
    t.add_argument("--trt", type=A.output_file, metavar="ENGINE",
                   help="also build a TensorRT engine here (strongly typed: the precision is "
                        "the ONNX file's)")
    t.add_argument("--fp16", action="store_true", help="same as --precision fp16")
    t.add_argument("--int8-calib", type=A.input_dir, metavar="DIR",
                   help="same as --precision int8 --calib DIR --int8-target tensorrt")
    t.add_argument("--workspace", type=A.positive_float, default=4.0, metavar="GB",
                   help="builder workspace limit in GB (default 4)")
    t.add_argument("--min", dest="min_size", type=A.size_hw,
                   help="profile min size HxW (dynamic inputs)")
    t.add_argument("--opt", dest="opt_size", type=A.size_hw, help="profile optimal size HxW")
    t.add_argument("--max", dest="max_size", type=A.size_hw, help="profile max size HxW")
    t.add_argument("--timing-cache", type=A.output_file,
                   help="timing cache file (read if present, then updated)")
    A.add_json(p, "print the export summary as JSON on stdout")
    A.add_quiet(p)
    return p


def export_main(argv: list[str]) -> int:
    """``nasfcos export``: model.py -> ONNX (+ manifest), optionally -> TensorRT engine."""
    from nasfcos.runtime.artifact import FORMS
    from nasfcos.runtime.export import DEFAULT_OPSET, ExportOptions, export_onnx, export_summary

    args = _export_parser().parse_args(argv)
    src = Path(args.model)
    form = FORMS.get(src.suffix.lower())
    if form not in ("model.py", "onnx"):
        raise NasfcosError(f"{src}: expected a model.py (or a .onnx with --trt)")
    prec = _precision_options(args)
    if form == "onnx" and prec.precision == "fp32" and not args.trt:
        raise NasfcosError(f"{src}: already ONNX; pass --trt ENGINE to build an engine "
                           "or --precision fp16|int8 to lower its precision")
    if args.trt:  # a missing or unusable TensorRT stops here, before the ONNX export
        from nasfcos.runtime.doctor import preflight_verb

        preflight_verb(None, ["tensorrt"], "cuda")
    summary: dict[str, Any] = {}
    onnx_path = src
    if form == "onnx" and prec.precision != "fp32":
        from nasfcos.runtime.export import convert_onnx

        onnx_path = Path(args.output) if args.output else src.with_name(
            f"{src.stem}.{prec.precision}.onnx")
        man = convert_onnx(src, onnx_path, prec)
        A.say(args, f"onnx: {onnx_path} ({prec.precision}, {man['artifact']['bytes'] / 1e6:.1f} MB, "
             f"sha256 {man['artifact']['sha256'][:12]})")
        summary = {"onnx": str(onnx_path), "precision": man["precision"]}
    elif form == "model.py":
        out = Path(args.output) if args.output else (
            Path(args.trt).with_suffix(".onnx") if args.trt else src.with_suffix(".onnx"))
        opts = ExportOptions(kind=args.kind, size=args.size, batch=args.batch,
                             dynamic=args.dynamic, opset=args.opset or DEFAULT_OPSET,
                             simplify=not args.no_simplify, seed=args.seed,
                             weights=Path(args.weights) if args.weights else None,
                             precision=prec)
        A.say(args, f"exporting {src} -> {out} ({'dynamic' if opts.dynamic else 'static'} "
             f"{opts.size[0]}x{opts.size[1]}, opset {opts.opset}) ...")
        res = export_onnx(src, out, opts, progress=not args.quiet)
        summary = export_summary(res)
        A.say(args, f"onnx: {res.onnx_path} ({summary['bytes'] / 1e6:.1f} MB, "
              f"{summary['deform_convs']} DeformConv, sha256 {summary['sha256'][:12]})")
        for io in ("inputs", "outputs"):
            names = ", ".join(f"{t['name']}{t['shape']}" for t in summary[io][:4])
            more = f" (+{len(summary[io]) - 4} more)" if len(summary[io]) > 4 else ""
            A.say(args, f"  {io}: {names}{more}")
        A.say(args, f"manifest: {res.manifest_path}")
        onnx_path = res.onnx_path
    if args.trt:
        summary["engine"] = _build_engine(args, onnx_path)
    _emit_json(args, summary)
    return 0


def _build_engine(args: argparse.Namespace, onnx_path: Path) -> dict[str, Any]:
    """``export --trt``: the TensorRT engine of ``onnx_path``; its summary entry."""
    from nasfcos.runtime.manifest import Manifest
    from nasfcos.runtime.trt import TrtBuildOptions, build_engine, profile_shapes

    shapes = None
    sizes = [args.min_size, args.opt_size, args.max_size]
    if any(sizes):
        if not all(sizes):
            raise NasfcosError("give all of --min, --opt and --max (or none)")
        man = Manifest.load(onnx_path)
        shapes = profile_shapes(man.kind, sizes, man.batch, man.in_channels)
    engine = Path(args.trt)
    A.say(args, f"building TensorRT engine {engine} ...")
    man = build_engine(onnx_path, engine, TrtBuildOptions(
        workspace_gb=args.workspace, shapes=shapes,
        timing_cache=Path(args.timing_cache) if args.timing_cache else None))
    A.say(args, f"engine: {engine} ({man['artifact']['bytes'] / 1e6:.1f} MB, "
         f"{man['build']['precision']}, {man['build']['seconds']} s)")
    return {"path": str(engine), "sha256": man["artifact"]["sha256"],
            "precision": man["build"]["precision"]}


# -- check ------------------------------------------------------------------------------------

def check_main(argv: list[str]) -> int:
    """``nasfcos check``: ONNX Runtime / TensorRT vs PyTorch on the same seeded inputs."""
    p = A.Parser(
        prog="nasfcos check",
        description="Run an exported model and its PyTorch source on the same seeded inputs and "
                    "report, per output, the max abs error and the max error relative to the "
                    "output's largest magnitude, against tolerances (pass: |d| <= atol + rtol * "
                    "max|ref|).  The source model.py, its weight seed and kind come from the "
                    "manifest unless --against is given.  Exit status 1 (naming the outputs) "
                    "when they disagree.",
        epilog="examples:\n  nasfcos check model.onnx\n"
               "  nasfcos check model.onnx --against model.py --sizes 800x800,640x512\n"
               "  nasfcos check model.engine -o parity.json")
    p.add_argument("artifact", type=A.input_file, help="model.onnx or model.engine")
    p.add_argument("--against", type=A.input_file,
                   help="reference: model.py (default: from the manifest) or .onnx")
    p.add_argument("--backend", help="BACKEND[:PRECISION] for the artifact: onnxruntime, "
                                     "openvino, openvino:bf16, openvino:int8 (the [openvino] "
                                     "extra), tensorrt; torch, torch:bf16 for a model.py "
                                     "(default: from its suffix)")
    A.add_device(p)
    A.add_run_inputs(p, sizes_help="input sizes HxW,... (default: the export size, plus a "
                                   "second one for dynamic exports)",
                     batch=None, batch_help="batch (default: the export's)", seed_help="input seed (default 0)")
    p.add_argument("--atol", type=A.non_negative_float,
                   help="absolute tolerance (default by precision)")
    p.add_argument("--rtol", type=A.non_negative_float,
                   help="relative tolerance (default by precision)")
    A.add_threads(p)
    _kind_flags(p)
    A.add_output(p, "also write the full report as JSON to FILE")
    A.add_json(p, "print the full report as JSON on stdout")
    args = p.parse_args(argv)
    from nasfcos.runtime.artifact import open_artifact
    from nasfcos.runtime.check import TOLERANCES, check_artifact
    from nasfcos.runtime.doctor import preflight_verb
    from nasfcos.runtime.runners import split_backend

    preflight_verb(args.artifact, [args.backend] if args.backend else None, args.device)
    if str(args.device).startswith("cuda"):  # the PyTorch reference runs there too
        preflight_verb(None, ["torch"], args.device)
    art = open_artifact(args.artifact)  # once: check_artifact takes it as opened
    tol = None
    if args.atol is not None or args.rtol is not None:  # the other keeps its precision's default
        precision = (split_backend(args.backend)[1] if args.backend else None) or (
            art.manifest.precision if art.manifest else "fp32")
        tol = replace(TOLERANCES[precision], **{k: v for k in ("atol", "rtol")
                                                 if (v := getattr(args, k)) is not None})
    report = check_artifact(art, args.against, backend=args.backend, device=args.device,
                            sizes=args.sizes, batch=args.batch, seed=args.seed, tol=tol,
                            kind=args.kind, threads=args.threads)
    A.say(args, f"{report.backend} ({report.artifact}) vs {report.reference_backend} "
         f"({report.reference}), sizes {', '.join('x'.join(map(str, s)) for s in report.sizes)}"
         f", seed {report.seed}, {report.precision} tolerances")
    A.say(args, report.table())
    _emit_json(args, report.to_dict(), args.output)
    if not report.ok:
        bad = report.failures()
        names = ", ".join(f"{o.name} ({o.note})" if o.note and not math.isfinite(o.max_abs)
                          else f"{o.name} (max abs {o.max_abs:.3g}, rel {o.max_rel:.3g})"
                          for o in bad[:5])
        print(f"nasfcos check: FAILED: {len(bad)} output(s) failed: {names}", file=sys.stderr)
        return 1
    A.say(args, "parity: ok")
    return 0


# -- bench ------------------------------------------------------------------------------------

def _bench_parser() -> argparse.ArgumentParser:
    p = A.Parser(
        prog="nasfcos bench",
        description="Latency benchmark: the same seeded inputs for every backend, warm-up "
                    "excluded, per-run wall clock (perf_counter_ns on CPU, CUDA events on GPU); "
                    "median, mean, p90, p99, min, std, FPS; machine, library versions, FLOPs and "
                    "the machine's fp32 matmul peak in the report.  Writes REPORT.json, "
                    "REPORT.md (the table) and REPORT.png (latency vs size per backend).",
        epilog="examples:\n  nasfcos bench model.py --backends torch,onnxruntime "
               "--sizes 600,800,1000 -o report\n"
               "  nasfcos bench model.onnx --runs 20 --warmup 3 --threads 2\n"
               "  nasfcos bench model.engine --device cuda\n"
               "  nasfcos bench model.py --precisions fp32,fp16,int8 --data data/synth "
               "--weights run/final.pt --sizes 128 -o precision")
    p.add_argument("model", type=A.input_file, help="model.py, model.onnx or model.engine")
    p.add_argument("--backends", type=A.name_list, help="comma list of torch, torch-compile, onnxruntime, "
                                      "openvino, tensorrt; a run-time precision as "
                                      "BACKEND:PRECISION (torch:bf16, openvino:bf16, "
                                      "openvino:int8 with --data or --calib) (default on cpu: "
                                      "by file type, the fastest measured CPU engine for its "
                                      "family, see the README)")
    A.add_run_inputs(p, sizes_help="input sizes HxW,... (default 600,800,1000; a static "
                                   "export: its own size)",
                     batch=1, batch_help=None, seed_help="input and weight seed (default 0)")
    A.add_timing(p, warmup=10, warmup_help="untimed runs first (default 10)",
                 runs=100, runs_help="timed runs (default 100)")
    p.add_argument("--max-seconds", type=A.positive_float,
                   help="time budget per backend and size; stops early (>= 3 runs)")
    A.add_threads(p)
    A.add_device(p)
    p.add_argument("--onnx-static", action="store_true",
                   help="for a model.py: one static ONNX export per size instead of a dynamic one")
    p.add_argument("--ort-opt-level", default="all", choices=["none", "basic", "extended", "all"],
                   help="ONNX Runtime graph optimisation level (default all)")
    p.add_argument("--onnx", type=A.input_file,
                   help="for a model.py: use this exported ONNX file for "
                                  "onnxruntime/tensorrt instead of exporting again")
    p.add_argument("--baseline", action="store_true",
                   help="detector model.py: also time the route without nasfcos (reference "
                        "interpreter's detector, plain torch.onnx.export, default ORT options)")
    p.add_argument("--fp16", action="store_true", help="TensorRT: build with FP16")
    p.add_argument("--no-matmul-peak", action="store_true", help="skip the matmul peak")
    g = p.add_argument_group("precision table (--precisions): one row per backend x precision")
    g.add_argument("--precisions", type=A.name_list, help="comma list of fp32, fp16, int8: write the precision "
                                        "table (AP, AP50, agreement with PyTorch fp32, latency, "
                                        "size) for a model.py at the first --sizes entry")
    g.add_argument("--data", type=A.input_dir, help="COCO folder: AP on --split, int8 "
                                                     "calibrated on its train split")
    g.add_argument("--calib", type=A.input_dir, metavar="DIR",
                   help="openvino:int8 in a latency bench: folder of calibration images")
    g.add_argument("--split", default="val", help="split for AP (default val)")
    g.add_argument("--weights", type=A.input_file, help="trained weights (nasfcos train)")
    A.add_calibration(g, images_help="int8 (default 32)", method_help="int8 range estimator (default minmax)")
    g.add_argument("--max-images", type=A.positive_int, help="evaluate the first N images")
    _kind_flags(p)
    A.add_output(p, "report path prefix: writes PREFIX.json/.md/.png (default report)",
                 default="report")
    A.add_json(p, "print the report as JSON on stdout")
    A.add_quiet(p)
    return p


def bench_main(argv: list[str]) -> int:
    """``nasfcos bench``: latency across backends and sizes -> report.json/.md/.png."""
    from nasfcos.runtime.doctor import preflight_verb

    args = _bench_parser().parse_args(argv)
    preflight_verb(args.model, args.backends, args.device)
    if args.precisions:
        return _precision_table(args)
    from nasfcos.runtime.bench import BenchConfig, markdown_table, run_benchmark, write_report

    cfg = BenchConfig(
        backends=args.backends or None, sizes=args.sizes, batch=args.batch, warmup=args.warmup,
        runs=args.runs, threads=args.threads, device=args.device, seed=args.seed, kind=args.kind,
        max_seconds=args.max_seconds, matmul_peak=not args.no_matmul_peak,
        onnx_static=args.onnx_static, ort_opt_level=args.ort_opt_level, trt_fp16=args.fp16,
        onnx_path=Path(args.onnx) if args.onnx else None, baseline=args.baseline, auto_cpu=True)
    if any(b.endswith(":int8") for b in args.backends or ()):
        from nasfcos.runtime.precision import PrecisionOptions

        cfg.calib = PrecisionOptions("int8", calib=args.calib, data=args.data,
                                     calib_images=args.calib_images,
                                     calib_method=args.calib_method)
        cfg.calib.check_inputs(["images"])
    report = run_benchmark(args.model, cfg, progress=not args.quiet,
                           log=None if args.quiet else lambda line: print(line, file=sys.stderr))
    if not report["results"] and report.get("interrupted"):
        raise KeyboardInterrupt
    paths = write_report(report, args.output)
    A.say(args, markdown_table(report))
    for k, v in paths.items():
        A.say(args, f"{k}: {v}")
    _emit_json(args, report)
    skipped = [r for r in report["results"] if r["status"] != "ok"]
    for r in skipped:
        A.say(args, f"note: {r['backend']} {r['size'][0]}x{r['size'][1]} {r['status']}: {r['reason']}")
    if report.get("interrupted"):
        print(f"nasfcos bench: {report['interrupted']}; the report keeps the rows done",
              file=sys.stderr)
        return 130
    return 0 if any(r["status"] == "ok" for r in report["results"]) else 1


def _precision_table(args: argparse.Namespace) -> int:
    """``nasfcos bench --precisions``: the backend x precision table (PREFIX.json/.md)."""
    from nasfcos.runtime.bench import (
        PrecisionTableConfig,
        plot_precision,
        precision_markdown,
        run_precision_table,
    )

    cfg = PrecisionTableConfig(
        precisions=args.precisions, backends=args.backends or ["onnxruntime"], size=tuple(args.sizes[0]), data=args.data, split=args.split,
        weights=args.weights, calib_images=args.calib_images, calib_method=args.calib_method,
        max_images=args.max_images, warmup=args.warmup, runs=args.runs,
        max_seconds=args.max_seconds, threads=args.threads, device=args.device, seed=args.seed)
    out = Path(args.output)
    report = run_precision_table(args.model, cfg, out.with_name(out.name + "_artifacts"),
                                 progress=not args.quiet and sys.stderr.isatty())
    table = precision_markdown(report)
    paths = {ext: out.with_name(f"{out.name}.{ext}") for ext in ("json", "md", "png")}
    atomic_write_json(paths["json"], report)
    atomic_write_text(paths["md"], table)
    atomic_write_bytes(paths["png"], plot_precision(report))
    A.say(args, table)
    A.say(args, "\n".join(f"{k}: {v}" for k, v in paths.items()))
    _emit_json(args, report)
    return 0 if any(r["status"] == "ok" for r in report["rows"]) else 1
