"""``nasfcos demo``: the main job on the shipped paper genotype, end to end.

compile (NAS-FCOS @256 or --fpn-channels, ResNet-50 detector, random weights) -> export ONNX (dynamic batch,
height/width) -> parity check (ONNX Runtime vs PyTorch) -> latency benchmark (torch vs
ONNX Runtime on CPU at 600/800/1000 px, TensorRT too where a GPU and TensorRT exist) ->
the table and the report paths.  Defaults are sized to finish in a few minutes on a
2-core machine (1 warm-up and 3 timed runs per cell); the flags give the full protocol.
With --gpu (make gpu-check): the paper's table on an NVIDIA GPU (NAS-FCOS@128-R50 at
600/800/1000 px; PyTorch eager fp32/fp16, ONNX Runtime CUDA, TensorRT fp32/fp16/int8, parity
of each against PyTorch, beside the paper's V100 figures) after the doctor's check.
Both plans are one library pipeline (nasfcos.runtime.pipeline).
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from nasfcos.cli import args as A
from nasfcos.errors import NasfcosError
from nasfcos.io import atomic_write_json
from nasfcos.limits import usable_cpus


def _parser() -> argparse.ArgumentParser:
    from nasfcos.compiler.options import CompileOptions

    p = A.Parser(
        prog="nasfcos demo",
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
    A.add_threads(p, default=usable_cpus())
    p.add_argument("--backends", type=A.name_list, default="torch,onnxruntime",
                   help="CPU backends (default torch,onnxruntime; add torch-compile to try it)")
    p.add_argument("--fpn-channels", type=A.width, default=None,
                   help="decoder width (default 256, the released models'; make demo and "
                        "--gpu use 128)")
    A.add_backbone(p, "detector backbone: {names} (default resnet50)",
                   default=CompileOptions.backbone)
    p.add_argument("--genotype", type=A.genotype_arg, default="nas_fcos_fpn_head",
                   help="shipped genotype name or a genotype .json (default nas_fcos_fpn_head)")
    p.add_argument("--static", action="store_true",
                   help="a static ONNX export at the one --sizes entry instead of a dynamic one "
                        "(several times faster to export; parity at that size only)")
    p.add_argument("--gpu", action="store_true",
                   help="the GPU plan (make gpu-check): the paper's table on an NVIDIA GPU; "
                        "defaults then: --fpn-channels 128, 20 warm-up + 100 timed runs")
    A.add_json(p, "print the summary (demo.json) as JSON on stdout")
    A.add_quiet(p)
    return p


def _config(args: argparse.Namespace) -> Any:
    """The pipeline's configuration: the flags, with the defaults of --quick and --gpu."""
    from nasfcos.runtime.pipeline import PipelineConfig

    if args.static and len(args.sizes or ()) != 1:
        raise NasfcosError("--static needs exactly one --sizes entry (a static graph runs at one size)")
    if args.gpu and args.static:
        raise NasfcosError("--gpu builds engines over several sizes: drop --static")
    quick = args.quick
    sizes = args.sizes or A.size_list("320,416,512" if quick else "600,800,1000")
    runs = args.runs if args.runs is not None else (1 if quick else 100 if args.gpu else 3)
    warmup = args.warmup if args.warmup is not None else (0 if quick else 20 if args.gpu else 1)
    ordered = sorted(sizes, key=lambda s: s[0] * s[1])
    check_sizes = ([ordered[0]] if quick or args.static else
                   [ordered[0], (ordered[0][0], ordered[0][1] + 64)])
    return PipelineConfig(
        out=Path(args.out), genotype=args.genotype, backbone=args.backbone, sizes=sizes,
        fpn_channels=args.fpn_channels or (128 if args.gpu else 256), static=args.static,
        check_sizes=check_sizes, backends=args.backends, runs=runs, warmup=warmup,
        threads=args.threads, progress=not args.quiet, gpu=args.gpu)


def main(argv: list[str]) -> int:
    """Entry point of ``nasfcos demo``."""
    from nasfcos.runtime.bench import markdown_table
    from nasfcos.runtime.pipeline import run_pipeline

    args = _parser().parse_args(argv)
    cfg = _config(args)
    out = cfg.out
    say = partial(A.say, args)  # --json: stdout holds only the JSON
    t_all = time.perf_counter()
    summary = run_pipeline(cfg, say)
    if args.gpu:
        from nasfcos.runtime.gpu_check import markdown

        say()
        say(markdown(summary))
        say(f"report:   {out / 'gpu_check.md'}, {out / 'gpu_check.json'}, doctor "
            f"{out / 'doctor.json'} (total {summary.get('seconds')} s)")
        if args.json:
            A.print_json(summary)
        return 0 if summary["ok"] else 1

    report, paths = summary.pop("_report"), summary.pop("_paths")
    if not summary["parity"]["ok"]:
        print(f"nasfcos demo: parity FAILED for {', '.join(summary['parity']['failures'])}",
              file=sys.stderr)
    summary["seconds"] = round(time.perf_counter() - t_all, 1)
    atomic_write_json(out / "demo.json", summary)
    say()
    say(markdown_table(report))
    if "report_gpu" in summary:
        say(Path(summary["report_gpu"]["md"]).read_text())
    else:
        say(f"TensorRT: {summary['tensorrt']}")
    say(f"model:    {paths['model']}\nonnx:     {paths['onnx']}\nparity:   {out / 'parity.json'} "
        f"({'ok' if summary['parity']['ok'] else 'FAILED'})")
    for v in summary["report"].values():
        say(f"report:   {v}")
    say(f"summary:  {out / 'demo.json'}  (total {summary['seconds']} s)")
    if args.json:
        A.print_json(summary)
    return 0 if summary["parity"]["ok"] else 1
