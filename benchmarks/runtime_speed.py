"""CPU speed of nasfcos against the route a user would take without it, measured in one run.

    .venv/bin/python benchmarks/runtime_speed.py [--sizes 800] [--threads 2] [--blocks 5]
        [--genotypes nas_fcos_fpn,nas_fcos_fpn_head] [--fpn-channels 128]
        [--backbone resnet50] [--eager nas_fcos_fpn_head] [--profile] [--split-options]
        [--modes static,dynamic] [--work DIR] [--json FILE]

Per genotype, compiled as a whole detector (random weights, seed 0, batch 1, the same seeded
image for everything):

* ``baseline``: without nasfcos, i.e. the same detector (backbone, weights, post-processing)
  whose decoder is the reference interpreter (``compiler/reference.py``), exported with a plain
  ``torch.onnx.export(dynamo=True, opset_version=19)`` (no simplification, no graph passes) and
  run by ONNX Runtime with default ``SessionOptions`` and the same thread count;
* ``nasfcos``: ``nasfcos export`` of the compiled ``model.py`` (graph passes, onnxslim) run by
  nasfcos's ONNX Runtime runner;

each as a static export per size and as a dynamic one (nasfcos: one export traced at the
largest size; the baseline: traced per size, since its dynamic graph only runs at the size
it was traced at).
The two sessions of a cell alternate in blocks (order swapped every block), so machine noise
hits them alike; a figure is the median over blocks, and the ratio nasfcos / baseline is
the target (<= 0.85), printed with a 95% bootstrap interval over the paired blocks (noise
on this kind of machine moves single blocks by 10% or more: read the interval, not just the
median).  ``--split-options`` adds the baseline graph run with nasfcos's session
options, which separates what the export brings from what the session options bring.
PyTorch eager (for the ``--eager`` genotypes): the reference interpreter's detector vs the
compiled detector as written and as nasfcos's ``torch`` backend runs it
(``nasfcos.runtime.eager.prepare_eager``: BatchNorms folded, channels_last backbone), with
post-processing (target >= 1.6x) and without, alternating too, and the compiled detector's
post-processing alone.  ``--profile`` adds ONNX Runtime's per op
type share of kernel time at the first size for the static exports: baseline, nasfcos
without its graph passes, nasfcos.  Prints tables and one JSON document.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _blocks(fns: dict[str, Callable[[], Any]], blocks: int, warmup: int = 1,
            label: str = "") -> dict[str, list[float]]:
    """Alternate the callables in ``blocks`` blocks (order reversed every other block);
    milliseconds per call, after ``warmup`` untimed calls each."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for b in range(blocks):
        for name in names if b % 2 == 0 else names[::-1]:
            t0 = time.perf_counter_ns()
            fns[name]()
            times[name].append((time.perf_counter_ns() - t0) / 1e6)
        print(f"  {label} block {b + 1}/{blocks}: " + ", ".join(
            f"{k} {v[-1]:.0f} ms" for k, v in times.items()), file=sys.stderr)
    return times


def _med(ts: list[float]) -> float:
    return round(statistics.median(ts), 1)


def _interval(num: list[float], den: list[float]) -> list[float]:
    """95% bootstrap interval of median(num) / median(den) over the paired blocks."""
    from nasfcos.runtime.bench import median_ratio_interval

    return [round(v, 3) for v in median_ratio_interval(num, den, paired=True)]


def _eager(lm: Any, base: Any, image: torch.Tensor, blocks: int) -> dict[str, Any]:
    from nasfcos.runtime.eager import prepare_eager
    from nasfcos.runtime.runners import EAGER_CHECK_SIZE

    det, ref = lm.net.detector, base.detector
    example = [torch.from_numpy(a) for a in lm.inputs(EAGER_CHECK_SIZE)]
    fast_net, report = prepare_eager(lm.net, example)
    fast = fast_net.detector
    with torch.inference_mode():
        raw = det.forward_raw(image)
        h, w = image.shape[-2:]
        fns = {"reference": lambda: ref(image), "compiled": lambda: det(image),
               "nasfcos": lambda: fast(image),
               "reference raw": lambda: ref.forward_raw(image),
               "compiled raw": lambda: det.forward_raw(image),
               "nasfcos raw": lambda: fast.forward_raw(image),
               "postprocess": lambda: det.postprocess(*raw, h, w)}
        t = _blocks(fns, blocks, label="eager")
    med = {k: _med(v) for k, v in t.items()}
    return {"median_ms": med, "eager_preparation": report.to_dict(),
            "speedup": round(med["reference"] / med["nasfcos"], 3),
            "speedup_95ci": _interval(t["reference"], t["nasfcos"]),
            "speedup_raw": round(med["reference raw"] / med["nasfcos raw"], 3),
            "speedup_compiled_as_written": round(med["reference"] / med["compiled"], 3)}


def _ort_cell(nasfcos_path: Path, base_path: Path, feed: np.ndarray, threads: int,
              blocks: int, label: str, split: bool = False) -> dict[str, Any]:
    from nasfcos.runtime.bench import plain_session
    from nasfcos.runtime.runners import OrtRunner

    ours = OrtRunner(nasfcos_path, threads=threads)
    base = plain_session(base_path, threads)
    fns = {"nasfcos": ours.run, "baseline": lambda: base.run(None, {"images": feed})}
    tuned = None
    if split:  # the baseline graph with nasfcos's session options: graph vs options
        tuned = OrtRunner(base_path, threads=threads)
        tuned.bind(feed)
        fns["baseline, nasfcos options"] = tuned.run
    got = ours(feed)
    want = base.run(None, {"images": feed})
    t = _blocks(fns, blocks, warmup=0, label=label)
    for r in (ours, tuned):
        if r is not None:
            r.close()
    med = {k: _med(v) for k, v in t.items()}
    out = {"nasfcos_ms": med["nasfcos"], "baseline_ms": med["baseline"],
           "ratio": round(med["nasfcos"] / med["baseline"], 3),
           "ratio_95ci": _interval(t["nasfcos"], t["baseline"]),
           "scores_max_abs_diff": float(np.abs(got[1] - want[1]).max()),
           "times_ms": {k: [round(x, 1) for x in v] for k, v in t.items()}}
    if tuned is not None:
        out["baseline_nasfcos_options_ms"] = med["baseline, nasfcos options"]
        out["ratio_same_options"] = round(med["nasfcos"] / med["baseline, nasfcos options"], 3)
    return out


def _genotype(name: str, args: argparse.Namespace, sizes: list[tuple[int, int]],
              work: Path) -> dict[str, Any]:
    """Every measurement of one shipped genotype (see the module docstring)."""
    from nasfcos.compiler import CompileOptions, compile_genotype
    from nasfcos.genotypes import load_paper_genotype
    from nasfcos.runtime.bench import baseline_detector, export_baseline, ort_op_profile
    from nasfcos.runtime.export import ExportOptions, export_onnx
    from nasfcos.runtime.models import load_model

    opts = CompileOptions(fpn_channels=args.fpn_channels, detector=True, backbone=args.backbone)
    model_py = work / f"{name}.py"
    model_py.write_text(compile_genotype(load_paper_genotype(name), opts))
    lm = load_model(model_py, "detector", seed=0)
    res: dict[str, Any] = {"ort": {}}
    if name in args.eager.split(","):
        image = torch.from_numpy(lm.inputs(sizes[0], 1, seed=0)[0])
        print(f"{name}: eager at {sizes[0][0]}", file=sys.stderr)
        res["eager"] = _eager(lm, baseline_detector(lm), image, args.blocks)
    largest = max(sizes)

    def export(mode: str, size: tuple[int, int]) -> tuple[Path, Path]:
        dyn = mode == "dynamic"
        ours = work / f"{name}_{'dynamic' if dyn else size[0]}.onnx"
        if not ours.exists():  # nasfcos: one dynamic export, traced at the largest size
            print(f"{name}: nasfcos {mode} export", file=sys.stderr)
            export_onnx(lm, ours, ExportOptions(kind="detector", size=largest if dyn else size,
                                                dynamic=dyn))
        base = work / f"{name}_{mode}_{size[0]}_baseline.onnx"
        if not base.exists():  # the baseline's dynamic graph runs at its traced size only
            print(f"{name}: baseline {mode} export at {size[0]}", file=sys.stderr)
            export_baseline(lm, base, size, dynamic=dyn)
        return ours, base

    for size in sizes:
        feed = lm.inputs(size, 1, seed=0)[0]
        for mode in filter(None, args.modes.split(",")):
            ours, base_path = export(mode, size)
            res["ort"][f"{mode} {size[0]}"] = _ort_cell(
                ours, base_path, feed, args.threads, args.blocks, f"{name} {mode} {size[0]}",
                split=args.split_options)
    if args.profile:
        size = sizes[0]
        prof_feed = {"images": lm.inputs(size, 1, seed=0)[0]}
        ours, base_path = export("static", size)
        plain = work / f"{name}_{size[0]}_unoptimised.onnx"
        export_onnx(lm, plain, ExportOptions(kind="detector", size=size, optimize=False))
        res["profile"] = {k: ort_op_profile(p, prof_feed, threads=args.threads) for k, p in
                          (("baseline", base_path), ("nasfcos without graph passes", plain),
                           ("nasfcos", ours))}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="800", help="square sizes, comma list (default 800)")
    ap.add_argument("--genotypes", default="nas_fcos_fpn,nas_fcos_fpn_head")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--blocks", type=int, default=5)
    ap.add_argument("--fpn-channels", type=int, default=128)
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--eager", default="nas_fcos_fpn_head",
                    help="genotypes to compare in PyTorch eager too (default nas_fcos_fpn_head)")
    ap.add_argument("--profile", action="store_true", help="ORT per-op profiles (first size)")
    ap.add_argument("--split-options", action="store_true",
                    help="also time the baseline graph with nasfcos's session options")
    ap.add_argument("--modes", default="static,dynamic", help="exports to time")
    ap.add_argument("--work", help="folder for the model files and exports (reused when they "
                                   "exist; default: a new temporary folder)")
    ap.add_argument("--json", help="also write the JSON document here")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    sizes = [(int(s), int(s)) for s in args.sizes.split(",")]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="nasfcos-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"sizes": [s[0] for s in sizes], "threads": args.threads,
                              "blocks": args.blocks, "fpn_channels": args.fpn_channels,
                              "backbone": args.backbone, "torch": torch.__version__,
                              "genotypes": {}}
    print(f"{args.backbone}, fpn {args.fpn_channels}, batch 1, {args.threads} threads, "
          f"medians of {args.blocks} alternating blocks")
    for name in args.genotypes.split(","):
        res = result["genotypes"][name] = _genotype(name, args, sizes, work)
        _print_genotype(name, res, sizes[0][0])  # as soon as it is measured
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


def _print_genotype(name: str, res: dict[str, Any], first_size: int) -> None:
    print(f"\n{name}")
    if "eager" in res:
        e = res["eager"]
        lo, hi = e["speedup_95ci"]
        print(f"  eager {first_size}: reference {e['median_ms']['reference']} ms, nasfcos "
              f"{e['median_ms']['nasfcos']} ms -> {e['speedup']:.2f}x "
              f"(95% interval {lo:.2f}-{hi:.2f}; target >= 1.6; compiled as written "
              f"{e['median_ms']['compiled']} ms, {e['speedup_compiled_as_written']:.2f}x); "
              f"without post-processing {e['speedup_raw']:.2f}x; post-processing "
              f"{e['median_ms']['postprocess']} ms")
    print(f"  {'ORT cell':<14} {'nasfcos ms':>10} {'baseline ms':>11} {'ratio':>6} "
          f"{'95% interval':>13}   (same session options: baseline ms, ratio)")
    for cell, r in res["ort"].items():
        same = (f"   {r['baseline_nasfcos_options_ms']:.1f}, {r['ratio_same_options']:.3f}"
                if "ratio_same_options" in r else "")
        ci = "{:.3f}-{:.3f}".format(*r["ratio_95ci"])
        print(f"  {cell:<14} {r['nasfcos_ms']:>10.1f} {r['baseline_ms']:>11.1f} "
              f"{r['ratio']:>6.3f} {ci:>13}{same}")
    for label, prof in res.get("profile", {}).items():
        top = ", ".join(f"{op} {v['share']:.1%}" for op, v in list(prof.items())[:10])
        print(f"  profile {label}: {top}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
