"""Validate the search's latency predictor: predicted vs measured decoder latency.

    .venv/bin/python benchmarks/latency_predictor.py [--size 256] [--channels 64] [--genotypes 30]
        [--head dag] [--threads 1] [--runs 20] [--backend onnxruntime] [--table FILE] [--json FILE]

Builds (or reads, ``--table``) a per-unit latency table (``nasfcos.search.latency``) on the
backend, samples ``--genotypes`` random genotypes (seeds 0..N-1), and for each compiles the
decoder (``nasfcos.compiler``), exports it to a static ONNX file (``nasfcos.runtime``) and
times it with the runtime's runner (median of ``--runs`` after 5 warm-up runs, same thread
count).  Reports MAPE and Kendall tau of predicted vs measured, a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

from nasfcos.cli.args import size_hw
from nasfcos.compiler import CompileOptions, compile_genotype
from nasfcos.compiler.backbones import backbone_channels
from nasfcos.genotypes import sample_genotype
from nasfcos.runtime.export import ExportOptions, export_onnx
from nasfcos.runtime.models import make_inputs
from nasfcos.runtime.runners import OrtRunner
from nasfcos.search.latency import CLOCKS, TableSpec, build_table, load_table, predict_ms
from nasfcos.search.metrics import kendall_tau, mape


def measure_decoder(source: str, work: Path, size: tuple[int, int], in_ch: tuple[int, ...], threads: int,
                    runs: int, statistic: str, clock: str) -> float:
    """Median (or min) ms of one decoder (model.py source) on ONNX Runtime CPU at ``size``."""
    model = work / "model.py"
    model.write_text(source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = export_onnx(model, work / "model.onnx", ExportOptions(kind="decoder", size=size, dynamic=False))
    runner = OrtRunner(res.onnx_path, "cpu", threads=threads)
    try:
        runner.bind(*make_inputs("decoder", size, in_channels=in_ch))
        for _ in range(5):
            runner.run()
        tick = CLOCKS[clock]
        times = []
        for _ in range(runs):
            t = tick()
            runner.run()
            times.append((tick() - t) / 1e6)
        return statistics.median(times) if statistic == "median" else min(times)
    finally:
        runner.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=size_hw, default="256")
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--num-classes", type=int, default=80)
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--genotypes", type=int, default=30)
    ap.add_argument("--head", default="dag", choices=("dag", "sequential", "fcos"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--statistic", default="median", choices=("median", "min"),
                    help="for the table's units and the decoders alike (min on a shared machine)")
    ap.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                    help="for both: wall time, or the calling thread's CPU time (a shared machine)")
    ap.add_argument("--table", default=None, help="reuse a table (must match size/widths/backend)")
    ap.add_argument("--save-table", default=None, help="write the table built here")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    size = a.size
    spec = TableSpec(backend="onnxruntime", size=size, fpn_channels=a.channels, head_channels=a.channels,
                     num_classes=a.num_classes, backbone=a.backbone, threads=a.threads).validate()
    t0 = time.perf_counter()
    if a.table:
        table = load_table(a.table)
        if table.spec != spec:
            raise SystemExit(f"{a.table}: measured for {table.spec}, not {spec}")
    else:
        table = build_table(spec, progress=True, statistic=a.statistic, clock=a.clock)
        if a.save_table:
            table.save(a.save_table)
    table_s = time.perf_counter() - t0
    in_ch = backbone_channels(a.backbone)
    opts = CompileOptions(fpn_channels=a.channels, head_channels=a.channels, num_classes=a.num_classes,
                          in_channels=in_ch)
    rows = []
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nasfcos-latval-") as tmp:
        for seed in range(a.genotypes):
            g = sample_genotype(seed, a.head, name=f"random-{seed}")
            pred = predict_ms(g, table)
            meas = measure_decoder(compile_genotype(g, opts), Path(tmp), size, in_ch, a.threads, a.runs,
                                   a.statistic, a.clock)
            rows.append({"seed": seed, "hash": g.hash()[:12], "predicted_ms": round(pred, 3),
                         "measured_ms": round(meas, 3), "error_pct": round(100 * (pred - meas) / meas, 1)})
            print(f"{seed:>3}  {g.hash()[:12]}  predicted {pred:8.3f} ms  measured {meas:8.3f} ms  "
                  f"{rows[-1]['error_pct']:+6.1f} %", file=sys.stderr, flush=True)
    pred = [r["predicted_ms"] for r in rows]
    meas = [r["measured_ms"] for r in rows]
    result = {
        "benchmark": "latency_predictor", "backend": "onnxruntime (CPU)", "size": list(size),
        "channels": a.channels, "num_classes": a.num_classes, "backbone": a.backbone, "head": a.head,
        "threads": a.threads, "statistic": a.statistic, "clock": a.clock, "genotypes": len(rows), "mape_pct": round(mape(pred, meas), 2),
        "kendall_tau": round(kendall_tau(pred, meas), 3),
        "mean_signed_error_pct": round(statistics.mean(r["error_pct"] for r in rows), 2),
        "measured_ms_range": [min(meas), max(meas)], "table_units": len(table.entries),
        "table_overhead_ms": table.overhead_ms, "table_seconds": round(table_s, 1),
        "validation_seconds": round(time.perf_counter() - t1, 1), "rows": rows,
    }
    print(f"\n{len(rows)} random {a.head}-head genotypes, {size[0]}x{size[1]}, width {a.channels}, "
          f"ORT CPU {a.threads} thread(s): MAPE {result['mape_pct']} %, Kendall tau {result['kendall_tau']}, "
          f"mean signed error {result['mean_signed_error_pct']} %, measured {min(meas):.2f}-{max(meas):.2f} ms")
    line = json.dumps(result)
    print(line)
    if a.json:
        Path(a.json).write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
