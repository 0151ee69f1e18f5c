"""How many genotypes per second the compiler turns into source (and into live modules).

The search compiles every sampled genotype, so this must stay fast (target: >= 200/s for
``compile_genotype``).  Run by hand: ``.venv/bin/python benchmarks/compile_speed.py [--n 600]``.
Prints a human-readable table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

from nasfcos.compiler import compile_genotype, compile_to_module
from nasfcos.compiler.codegen import validated_genotype
from nasfcos.compiler.options import CompileOptions
from nasfcos.compiler.plan import build_plan
from nasfcos.genotypes import sample_genotype

KINDS = ("fcos", "sequential", "dag")


def _rate(fn, items, repeats: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(median genotypes/s over ``repeats`` passes, median ms per genotype)."""
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for g in items:
            fn(g)
        dt = time.perf_counter() - t0
        rates.append(len(items) / dt)
    med = statistics.median(rates)
    return med, 1000.0 / med


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=300, help="genotypes per pass (default 300)")
    p.add_argument("--repeats", type=int, default=5, help="passes; the median is reported (default 5)")
    args = p.parse_args()
    genotypes = [sample_genotype(i, KINDS[i % 3]) for i in range(args.n)]
    opts = CompileOptions()
    compile_genotype(genotypes[0])  # warm up: template compilation, imports
    compile_to_module(genotypes[0])
    results = {
        "plan_only": _rate(lambda g: build_plan(validated_genotype(g), opts), genotypes, args.repeats),
        "compile_genotype": _rate(lambda g: compile_genotype(g, opts), genotypes, args.repeats),
        "compile_to_module": _rate(lambda g: compile_to_module(g, opts), genotypes, args.repeats),
    }
    print(f"compile speed, {args.n} random genotypes (fcos/sequential/dag heads), median of {args.repeats}")
    for name, (rate, ms) in results.items():
        print(f"  {name:18s} {rate:8.1f} genotypes/s  ({ms:.2f} ms each)")
    print(json.dumps({
        "benchmark": "compile_speed", "n": args.n, "repeats": args.repeats,
        "python": platform.python_version(), "machine": platform.machine(),
        **{f"{k}_per_s": round(v[0], 1) for k, v in results.items()},
    }))


if __name__ == "__main__":
    main()
