"""The accuracy yardstick of issue 13: decoders trained on the easy synthetic set (run by hand).

    .venv/bin/python benchmarks/synth_yardstick.py --out runs/yardstick [--random 3] [--threads 2]
        [--iters N] [--parallel 1]

Writes the easy set once (``nasfcos data synth --preset easy --seed 0``), compiles each
architecture (the two shipped genotypes and ``--random`` samples, seeds 0..) as a detector
with the ``tiny`` trunk (FPN 32 wide, head 64: GroupNorm(32, C) on the 1 x 1 p7 map), trains it with ``nasfcos train --preset synth`` (the
shipped ``tiny_synth`` trunk, frozen) and prints, per architecture, val AP / AP50, the wall
time and the CPU time of the training process.  The machine may be shared: the CPU time
divided by the threads is what the run costs on an idle machine with that many cores, the
wall time is what it took here.  One JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from nasfcos.compiler import CompileOptions, compile_genotype
from nasfcos.genotypes import load_paper_genotype
from nasfcos.genotypes.sample import sample_genotype


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/yardstick")
    ap.add_argument("--random", type=int, default=3, help="random genotypes (seeds 0..N-1)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per training run")
    ap.add_argument("--iters", type=int, help="override the preset's iterations")
    ap.add_argument("--parallel", type=int, default=1, help="training runs at a time")
    ap.add_argument("--only", nargs="*", help="architecture names to run (default: all)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    exe = [sys.executable, "-m", "nasfcos"]
    data = out / "easy"
    if not (data / "manifest.json").is_file():
        subprocess.run([*exe, "data", "synth", "-o", str(data), "--preset", "easy", "--seed", "0"], check=True)
    archs = {"nas_fcos_fpn": load_paper_genotype("nas_fcos_fpn"),
             "nas_fcos_fpn_head": load_paper_genotype("nas_fcos_fpn_head")}
    for seed in range(args.random):
        archs[f"random{seed}"] = sample_genotype(seed)
    if args.only:
        archs = {k: v for k, v in archs.items() if k in args.only}
    jobs = []
    for name, g in archs.items():
        model = out / f"{name}.py"
        model.write_text(compile_genotype(g, CompileOptions(fpn_channels=32, head_channels=64, num_classes=5, detector=True,
                                                            backbone="tiny")))
        run = out / f"run_{name}"
        cmd = [*exe, "train", str(model), "--data", str(data), "--preset", "synth", "--out", str(run),
               "--workers", "0", "--no-progress"]
        if args.iters:
            cmd += ["--iters", str(args.iters)]
        jobs.append((name, cmd, run))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    rows = []
    pending = list(jobs)
    running: list[tuple[str, subprocess.Popen[bytes], Path, float]] = []
    while pending or running:
        while pending and len(running) < args.parallel:
            name, cmd, run = pending.pop(0)
            log = open(out / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
            running.append((name, subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT),
                            run, time.time()))
        time.sleep(2)
        for item in list(running):
            name, proc, run, t0 = item
            if proc.poll() is None:
                continue
            running.remove(item)
            wall = time.time() - t0
            summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
            ev = summary.get("eval", {})
            # per-process CPU time: user+sys of the finished child, from /proc would be gone;
            # the run's own record of its train loop time is in summary.json
            rows.append({"arch": name, "rc": proc.returncode, "AP": ev.get("AP"), "AP50": ev.get("AP50"),
                         "wall_s": round(wall, 1), "train_loop_s": summary.get("time_s"),
                         "cpu_s": summary.get("cpu_s")})
            print(f"{name:20s} rc {proc.returncode}  AP {ev.get('AP', float('nan')):.3f}  "
                  f"AP50 {ev.get('AP50', float('nan')):.3f}  wall {wall:6.1f} s  "
                  f"cpu {summary.get('cpu_s')} s", flush=True)
    print(json.dumps({"yardstick": rows, "threads": args.threads, "parallel": args.parallel,
                      "children_cpu_s": round(_cpu_children(), 1)}))


if __name__ == "__main__":
    main()
