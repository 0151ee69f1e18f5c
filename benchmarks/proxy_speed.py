"""Seconds per evaluated architecture: cached backbone features vs. the backbone every step.

    .venv/bin/python benchmarks/proxy_speed.py [--part tiny|r50|all] [--genotype NAME]
        [--seeds 2] [--r50-seeds 1] [--r50-steps 2] [--r50-batch 2] [--r50-width 256]
        [--work DIR] [--json FILE]

Both arms run the same evaluation (``nasfcos.search.proxy.evaluate``: compile the
paper's genotype, train with Adam + Polyak averaging, score meta-val) at the same
settings; only the source of the meta-train batches differs:

* ``cached``: features and FCOS targets read from the feature cache (the search's way);
* ``backbone``: the frozen backbone runs on every batch, and targets are assigned every
  batch (images decoded and cropped once up front, so image I/O is *not* counted: the
  ratio is a lower bound on what caching saves).

Parts: ``tiny`` is the embedded ``tiny`` preset (synthetic data, small CNN); ``r50`` is a
random-weight ResNet-50 at the paper's short side / crop (384) with the paper's widths,
on a small synthetic set at 384 px, with few steps and a small batch (CPU-friendly).
Prints a table and one JSON document (also to ``--json FILE``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nasfcos.fcos.data import CocoDetection, TransformConfig, pad_batch, resolve_split
from nasfcos.fcos.losses import STRIDES, FcosTargets, compute_targets
from nasfcos.fcos.synth import SynthConfig, write_synthetic
from nasfcos.genotypes import load_genotype, load_paper_genotype
from nasfcos.search.cache import FeatureCache, build_backbone, scaled_size_ranges
from nasfcos.search.proxy import (
    PRESETS,
    ProxySettings,
    build_cache,
    compiled_decoder,
    evaluate,
    open_cache,
)


def backbone_source(data_dir: Path, cache: FeatureCache, settings: ProxySettings):  # noqa: ANN201
    """A batch source that runs the frozen backbone (and target assignment) on every batch.

    The crops are exactly the cached ones (same dataset, transform, seed and views)."""
    ann, images = resolve_split(data_dir, settings.source_split)
    ds = CocoDetection(ann, images, TransformConfig(min_size=settings.short_side, max_size=settings.max_size,
                                                    crop=(settings.crop, settings.crop)),
                       train=True, seed=settings.crop_seed)
    pos = {img_id: i for i, img_id in enumerate(ds.ids)}
    crops = []
    for img_id, view in cache.train.source:
        ds.set_epoch(int(view))
        crops.append(ds[pos[int(img_id)]])
    backbone = build_backbone(settings.backbone, None)
    ranges = scaled_size_ranges(settings.size_range_scale)

    def get(idx: np.ndarray) -> tuple[list[torch.Tensor], FcosTargets]:
        batch = [crops[int(i)] for i in idx]
        feats = backbone(pad_batch([b[0] for b in batch], size=(settings.crop, settings.crop)))
        targets = compute_targets([b[1]["boxes"] for b in batch], [b[1]["labels"] for b in batch],
                                  cache.level_sizes, STRIDES, ranges, settings.center_sampling_radius)
        return [f.half().float() for f in feats], targets  # same precision as the cache

    return get


def measure(name: str, data_dir: Path, cache_dir: Path, settings: ProxySettings, seeds: int,
            genotype: str) -> dict[str, Any]:
    """Build (time) the cache, then time evaluations with cached features and with the backbone.

    Wall-clock and process CPU time are both recorded; on a shared machine the CPU time
    is the steadier of the two."""
    t0 = time.perf_counter()
    build_cache(data_dir, cache_dir, settings, progress=False, overwrite=True, resume=False)
    build_s = time.perf_counter() - t0
    cache = open_cache(cache_dir, settings)
    source = backbone_source(data_dir, cache, settings)
    g = load_genotype(genotype) if Path(genotype).is_file() else load_paper_genotype(genotype)
    # warm-up: imports, the first compile, one backbone batch
    compiled_decoder(g, settings.fpn_channels, settings.head_channels, cache.num_classes, cache.in_channels)
    source(np.arange(min(2, len(cache.train))))
    wall: dict[str, list[float]] = {"cached": [], "backbone": []}
    cpu: dict[str, list[float]] = {"cached": [], "backbone": []}
    rewards: dict[str, list[float]] = {"cached": [], "backbone": []}
    for seed in range(seeds):
        for arm in ("cached", "backbone"):
            c0 = time.process_time()
            r = evaluate(g, cache, settings, seed, source=source if arm == "backbone" else None)
            cpu[arm].append(time.process_time() - c0)
            wall[arm].append(r.time_s)
            rewards[arm].append(r.reward)
            print(f"  {name} seed {seed} {arm:8s}: {r.time_s:7.2f} s/eval wall, {cpu[arm][-1]:7.2f} s CPU "
                  f"({r.steps} steps, reward {r.reward:.4f})", file=sys.stderr, flush=True)
    med = {k: {arm: statistics.median(v[arm]) for arm in v} for k, v in (("wall", wall), ("cpu", cpu))}
    _, steps = settings.steps_for(len(cache.train))
    return {
        "part": name, "genotype": g.name, "backbone": settings.backbone, "crop": settings.crop,
        "batch_size": min(settings.batch_size, len(cache.train)), "steps": steps,
        "fpn_channels": settings.fpn_channels, "head_channels": settings.head_channels,
        "num_threads": settings.num_threads or torch.get_num_threads(),
        "meta_train": len(cache.train), "meta_val": len(cache.val), "cache_build_s": build_s,
        "s_per_eval_cached": med["wall"]["cached"], "s_per_eval_backbone": med["wall"]["backbone"],
        "speedup": med["wall"]["backbone"] / med["wall"]["cached"],
        "cpu_s_per_eval_cached": med["cpu"]["cached"], "cpu_s_per_eval_backbone": med["cpu"]["backbone"],
        "cpu_speedup": med["cpu"]["backbone"] / med["cpu"]["cached"],
        "max_reward_difference": max(abs(a - b) for a, b in zip(rewards["cached"], rewards["backbone"],
                                                                strict=True)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("tiny", "r50", "all"), default="all")
    ap.add_argument("--seeds", type=int, default=2, help="evaluations per arm of the tiny part (median)")
    ap.add_argument("--genotype", default="nas_fcos_fpn_head", help="shipped genotype name or genotype file")
    ap.add_argument("--r50-seeds", type=int, default=1, help="evaluations per arm of the ResNet-50 part")
    ap.add_argument("--r50-steps", type=int, default=2, help="training steps of the ResNet-50 part")
    ap.add_argument("--r50-batch", type=int, default=2, help="batch size of the ResNet-50 part")
    ap.add_argument("--r50-width", type=int, default=256, help="FPN and head width of the ResNet-50 part")
    ap.add_argument("--r50-images", type=int, default=12, help="synthetic 384-px images for the ResNet-50 part")
    ap.add_argument("--threads", type=int, default=0, help="torch threads of the ResNet-50 part (0: default)")
    ap.add_argument("--work", help="working folder (default: a temporary one)")
    ap.add_argument("--json", metavar="FILE", help="also write the results here")
    args = ap.parse_args()
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="proxy_speed_")
    work = Path(args.work or tmp.name)  # type: ignore[union-attr]
    results = []
    if args.part in ("tiny", "all"):
        s = PRESETS["tiny"]
        data = work / "tiny_data"
        if not (data / "manifest.json").exists():
            write_synthetic(data, SynthConfig(images=s.synth_images, size=s.synth_size, seed=s.synth_seed))
        results.append(measure("tiny", data, work / "tiny_cache", s, args.seeds, args.genotype))
    if args.part in ("r50", "all"):
        s = PRESETS["paper"].replace(
            name="paper-r50-cpu", meta_train_images=None, meta_val_images=None, meta_val_fraction=0.25,
            batch_size=args.r50_batch, max_steps=args.r50_steps, fpn_channels=args.r50_width,
            head_channels=args.r50_width, eval_batch_size=args.r50_batch, chunk_size=4,
            num_threads=args.threads,
        )
        data = work / "r50_data"
        if not (data / "manifest.json").exists():
            write_synthetic(data, SynthConfig(images=args.r50_images, size=384, seed=0))
        results.append(measure("r50", data, work / "r50_cache", s, args.r50_seeds, args.genotype))
    doc = {"benchmark": "proxy_speed", "machine": platform.machine(), "cpus": os.cpu_count(),
           "torch": torch.__version__, "results": results}
    print(f"{'part':6s} {'backbone':9s} {'crop':>4s} {'batch':>5s} {'steps':>5s} "
          f"{'cached s/eval':>13s} {'backbone s/eval':>15s} {'speedup':>7s}  (CPU s: cached, backbone, "
          f"speedup)  {'build s':>7s}")
    for r in results:
        print(f"{r['part']:6s} {r['backbone']:9s} {r['crop']:4d} {r['batch_size']:5d} {r['steps']:5d} "
              f"{r['s_per_eval_cached']:13.2f} {r['s_per_eval_backbone']:15.2f} {r['speedup']:7.2f}  "
              f"({r['cpu_s_per_eval_cached']:.2f}, {r['cpu_s_per_eval_backbone']:.2f}, {r['cpu_speedup']:.2f})"
              f"  {r['cache_build_s']:7.1f}")
    print(json.dumps(doc, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
