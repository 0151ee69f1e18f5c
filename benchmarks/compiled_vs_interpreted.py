"""Forward latency of the compiled decoder vs the reference interpreter, on CPU, same process.

Both hold the same weights (the compiled module loads the interpreter's state_dict).  Each
timing is the median of repeated forward passes, alternating the two models so that machine
noise hits both alike; the reported ratio (compiled / interpreted) is the median of the
per-pair ratios, which should be <= 1 (never slower).
Run by hand: ``.venv/bin/python benchmarks/compiled_vs_interpreted.py [--threads 1]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from nasfcos.compiler import build_reference, compile_to_module
from nasfcos.genotypes import load_paper_genotype, sample_genotype

SETTINGS = {
    # name: (fpn/head width, image side) -> backbone features of ResNet-50 widths at strides 4..32
    "tiny (8 ch, 64 px)": (8, 64),
    "small (64 ch, 256 px)": (64, 256),
}


def _time(model: torch.nn.Module, feats: list[torch.Tensor]) -> float:
    t0 = time.perf_counter()
    model(feats)
    return time.perf_counter() - t0


def measure(genotype_name: str, width: int, side: int, repeats: int) -> dict[str, float]:
    g = load_paper_genotype(genotype_name) if not genotype_name.startswith("random") else sample_genotype(
        int(genotype_name.split("-")[-1]), "dag")
    in_ch = (256, 512, 1024, 2048)
    torch.manual_seed(0)
    ref = build_reference(g, fpn_channels=width, num_classes=80, in_channels=in_ch).eval()
    dec = compile_to_module(g, fpn_channels=width, num_classes=80, in_channels=in_ch).build().eval()
    dec.load_state_dict(ref.state_dict(), strict=True)
    feats = [torch.randn(1, c, side // s, side // s) for c, s in zip(in_ch, (4, 8, 16, 32), strict=True)]
    t_ref, t_dec = [], []
    with torch.inference_mode():
        for _ in range(3):  # warm-up
            ref(feats)
            dec(feats)
        for _ in range(repeats):
            t_ref.append(_time(ref, feats))
            t_dec.append(_time(dec, feats))
    r, c = statistics.median(t_ref) * 1e3, statistics.median(t_dec) * 1e3
    # adjacent runs see the same machine load: the median of per-pair ratios is robust to the
    # noise of a shared machine; the best-of ratio is the noise-free lower envelope
    paired = statistics.median(d / i for d, i in zip(t_dec, t_ref, strict=True))
    return {"interpreted_ms": round(r, 3), "compiled_ms": round(c, 3), "ratio": round(paired, 3),
            "ratio_of_medians": round(c / r, 3), "ratio_of_best": round(min(t_dec) / min(t_ref), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=30, help="timed forwards per model (default 30)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for gname in ("nas_fcos_fpn_head", "nas_fcos_fpn", "random-dag-5"):
        for setting, (width, side) in SETTINGS.items():
            res = measure(gname, width, side, args.repeats)
            rows.append({"genotype": gname, "setting": setting, **res})
            print(f"{gname:18s} {setting:22s} interpreted {res['interpreted_ms']:9.2f} ms  "
                  f"compiled {res['compiled_ms']:9.2f} ms  ratio {res['ratio']:.3f} "
                  f"(of medians {res['ratio_of_medians']:.3f}, of best {res['ratio_of_best']:.3f})")
    worst = max(r["ratio"] for r in rows)
    print(f"worst compiled/interpreted ratio: {worst:.3f} (median of {args.repeats} paired runs, "
          f"{args.threads} thread(s))")
    print(json.dumps({"benchmark": "compiled_vs_interpreted", "threads": args.threads, "repeats": args.repeats,
                      "worst_ratio": worst, "rows": rows}))


if __name__ == "__main__":
    main()
