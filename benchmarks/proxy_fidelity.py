"""Does the proxy reward rank decoders the way a longer, real training does?

    .venv/bin/python benchmarks/proxy_fidelity.py [--random 10] [--seeds 0,1] [--iters 300]
        [--batch 8] [--lr 0.01] [--images 400] [--size 128] [--backbone-weights FILE]
        [--work DIR] [--json FILE]

Architectures: the two shipped genotypes, ``--random`` samples of the search space (DAG head,
seeds 0..N-1) and four deliberately weak ones (all-skip FPN + FCOS head, all-skip everything,
the paper genotype without deformable ops, an FPN that reads only c5).  Each is

* scored by the proxy task exactly as the search scores it (``tiny`` preset: feature cache
  of the tiny trunk on the synthetic set, ``nasfcos.search.proxy.evaluate``), once per seed;
* compiled as a whole detector (``--detector --backbone tiny``) and trained by
  ``nasfcos.fcos.train`` for ``--iters`` iterations on the same synthetic set, then
  evaluated on its val split with pycocotools (COCO AP, AP50).

Reports, per architecture, the proxy reward per seed, AP/AP50 and the seconds of each,
then Kendall tau between mean proxy reward and AP (and AP50), and between the two proxy
seeds.  ``--backbone-weights`` (a torchvision-format state_dict of the tiny trunk) is used
by both the cache and the training; without it the trunk has random weights (the ground
truth is then weak: see the closing notes).  Results are appended to ``WORK/rows.jsonl``
as they come, so a killed run continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from nasfcos.compiler import CompileOptions, compile_genotype
from nasfcos.fcos.synth import SynthConfig, write_synthetic
from nasfcos.fcos.train import TrainConfig, train
from nasfcos.genotypes import Genotype, load_paper_genotype, parse_genotype, sample_genotype
from nasfcos.search.metrics import kendall_tau
from nasfcos.search.proxy import PRESETS, build_cache, evaluate, open_cache


def weak_genotypes() -> list[Genotype]:
    """Deliberately weak decoders (they should rank last)."""
    skip_fpn = [{"inputs": [3, 3], "ops": ["skip", "skip"], "agg": "sum"}] * 7
    paper = load_paper_genotype("nas_fcos_fpn_head").to_dict(with_meta=False)
    no_deform = json.loads(json.dumps(paper).replace("deform_conv_3x3", "sep_conv_3x3"))
    c5_only = [{"inputs": [3, 3], "ops": ["sep_conv_3x3", "sep_conv_3x3_dil3"], "agg": "concat"}] + [
        {"inputs": [4 + k, 3], "ops": ["sep_conv_3x3", "skip"], "agg": "sum"} for k in range(6)]
    docs = [
        {"name": "weak-skip-fpn-fcos-head", "fpn": skip_fpn, "head": {"kind": "fcos"}},
        {"name": "weak-all-skip", "fpn": skip_fpn, "head": {"kind": "sequential", "layers": ["skip"] * 6}},
        dict(no_deform, name="weak-paper-no-deform"),
        {"name": "weak-c5-only", "fpn": c5_only, "head": {"kind": "sequential",
                                                          "layers": ["conv_1x1", "skip", "skip", "skip", "skip",
                                                                     "skip"]}},
    ]
    out = []
    for d in docs:
        d = dict(d)
        d.setdefault("share", [0, 0, 0, 0, 0])
        d["format"] = "nasfcos-genotype/1"
        out.append(parse_genotype(d))
    return out


def architectures(n_random: int) -> list[Genotype]:
    shipped = [load_paper_genotype("nas_fcos_fpn"), load_paper_genotype("nas_fcos_fpn_head")]
    rand = [sample_genotype(s, "dag", name=f"random-{s}") for s in range(n_random)]
    return shipped + rand + weak_genotypes()


def real_training(g: Genotype, data: Path, work: Path, a: argparse.Namespace) -> dict[str, Any]:
    """Compile ``g`` as a tiny-trunk detector, train it, COCO-evaluate it on val."""
    model = work / f"{g.short_hash()}.py"
    model.write_text(compile_genotype(g, CompileOptions(fpn_channels=a.width, head_channels=a.width,
                                                        num_classes=a.num_classes, detector=True,
                                                        backbone="tiny")))
    cfg = TrainConfig(model=str(model), out=str(work / f"run-{g.short_hash()}"), data=str(data), iters=a.iters,
                      batch=a.batch, lr=a.lr, warmup_iters=min(100, a.iters // 5), min_size=a.size,
                      max_size=a.size, workers=0, seed=0, log_every=max(1, a.iters // 10),
                      backbone_weights=a.backbone_weights, eval_batch=16)
    t0 = time.perf_counter()
    summary = train(cfg, progress=False)
    ev = summary.get("eval") or {}
    return {"AP": ev.get("AP"), "AP50": ev.get("AP50"), "train_s": round(time.perf_counter() - t0, 1),
            "final_loss": (summary.get("final") or {}).get("loss")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--random", type=int, default=10, help="random architectures (default 10)")
    ap.add_argument("--seeds", default="0,1", help="proxy seeds (default 0,1)")
    ap.add_argument("--iters", type=int, default=300, help="real-training iterations (default 300)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--width", type=int, default=32, help="detector FPN/head width (default 32)")
    ap.add_argument("--images", type=int, default=400, help="synthetic images (default: the tiny preset's)")
    ap.add_argument("--size", type=int, default=128, help="synthetic image size (default 128)")
    ap.add_argument("--backbone-weights", default=None, help="tiny trunk state_dict for cache and training")
    ap.add_argument("--skip-training", action="store_true", help="proxy scores only")
    ap.add_argument("--limit", type=int, default=None, help="only the first N architectures")
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    seeds = [int(s) for s in a.seeds.split(",")]
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="nasfcos-fidelity-"))
    work.mkdir(parents=True, exist_ok=True)
    settings = PRESETS["tiny"]
    data = work / "synth"
    if not (data / "val.json").is_file():
        write_synthetic(data, SynthConfig(images=a.images, size=a.size, seed=settings.synth_seed))
    a.num_classes = len(json.loads((data / "train.json").read_text())["categories"])
    t0 = time.perf_counter()
    cache_dir = build_cache(data, work / "cache", settings, backbone_weights=a.backbone_weights, progress=False)
    cache = open_cache(cache_dir, settings)
    cache_s = time.perf_counter() - t0
    done = {}
    rows_path = work / "rows.jsonl"
    if rows_path.is_file():
        for line in rows_path.read_text().splitlines():
            r = json.loads(line)
            done[r["hash"]] = r
    archs = architectures(a.random)
    print(f"{len(archs)} architectures; proxy seeds {seeds}; real training {a.iters} iters x batch {a.batch} "
          f"@{a.size}px; work {work}", file=sys.stderr)
    rows = []
    if a.limit is not None:
        archs = archs[:a.limit]
    for g in archs:
        h = g.hash()
        if h in done and (a.skip_training or done[h].get("AP") is not None):
            rows.append(done[h])
            continue
        row: dict[str, Any] = {"name": g.name, "hash": h, "head": g.head.kind}
        if h in done and done[h].get("seeds") == seeds:  # proxy part of an earlier (--skip-training) pass
            row.update({k: done[h][k] for k in ("seeds", "proxy", "proxy_mean", "proxy_s_per_seed")})
        else:
            t = time.perf_counter()
            rewards = [evaluate(g, cache, settings, s).reward for s in seeds]
            row["seeds"] = seeds
            row["proxy"] = [round(r, 5) for r in rewards]
            row["proxy_mean"] = round(statistics.mean(rewards), 5)
            row["proxy_s_per_seed"] = round((time.perf_counter() - t) / len(seeds), 2)
        if not a.skip_training:
            row.update(real_training(g, data, work, a))
        rows.append(row)
        done[h] = row
        with rows_path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(f"{g.name:<28} proxy {row['proxy']}  AP {row.get('AP')}  AP50 {row.get('AP50')}  "
              f"({row['proxy_s_per_seed']} s/seed, {row.get('train_s')} s training)", file=sys.stderr, flush=True)
    prox = [r["proxy_mean"] for r in rows]
    result: dict[str, Any] = {
        "benchmark": "proxy_fidelity", "architectures": len(rows), "seeds": seeds, "iters": a.iters,
        "batch": a.batch, "size": a.size, "images": a.images, "width": a.width,
        "backbone_weights": a.backbone_weights or "random (seed 0)", "cache_s": round(cache_s, 1),
        "tau_seed_to_seed": round(kendall_tau([r["proxy"][0] for r in rows], [r["proxy"][1] for r in rows]), 3)
        if len(seeds) > 1 else None,
        "proxy_s_per_arch": round(statistics.mean(r["proxy_s_per_seed"] * len(seeds) for r in rows), 2),
        "rows": rows,
    }
    if not a.skip_training:
        result["tau_proxy_AP"] = round(kendall_tau(prox, [r["AP"] for r in rows]), 3)
        result["tau_proxy_AP50"] = round(kendall_tau(prox, [r["AP50"] for r in rows]), 3)
        result["train_s_per_arch"] = round(statistics.mean(r["train_s"] for r in rows), 1)
    print(f"\n{'architecture':<28} {'proxy per seed':<24} {'AP':>7} {'AP50':>7} {'proxy s':>8} {'train s':>8}")
    for r in rows:
        ap_ = "-" if r.get("AP") is None else f"{r['AP']:.4f}"
        ap50 = "-" if r.get("AP50") is None else f"{r['AP50']:.4f}"
        print(f"{r['name']:<28} {', '.join(f'{v:.4f}' for v in r['proxy']):<24} {ap_:>7} {ap50:>7} "
              f"{r['proxy_s_per_seed'] * len(seeds):>8.1f} {r.get('train_s', 0) or 0:>8.1f}")
    print(f"Kendall tau: proxy vs AP {result.get('tau_proxy_AP')}, proxy vs AP50 {result.get('tau_proxy_AP50')}, "
          f"seed-to-seed {result['tau_seed_to_seed']}")
    line = json.dumps(result)
    print(line)
    if a.json:
        Path(a.json).write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
