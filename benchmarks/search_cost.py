"""What the paper-scale proxy costs: the paper preset's feature cache and one decoder's training,
measured here, then projected to one V100 / one H100 and to a 2,800-architecture search.

    .venv/bin/python benchmarks/search_cost.py --work DIR [--images 96] [--sizes 16,32,64]
        [--batch 8] [--genotype nas_fcos_fpn_head] [--json FILE]

1. Writes a synthetic COCO-format set of ``--images`` 384 px images (``nasfcos data synth``) and
   builds the ``paper`` preset's cache on it (ResNet-50, short side 384, 384x384 crops; random
   trunk weights: the cost does not depend on them).  Reports build throughput, bytes per image
   per level (c2..c5 float16 + FCOS targets), open time with full sha256 verification and with
   the size check that workers use after the first verification.
2. Trains one decoder (``--genotype``, the paper's 64 channels, Adam + Polyak) for one epoch over
   the first n meta-train images for each n of ``--sizes`` at batch ``--batch`` (200 does not
   fit a 2-core CPU in useful time; the cost per image is what is extrapolated), and scores
   meta-val once: epoch seconds against n, and the peak resident memory of the process.
3. Counts the FLOPs of one training step (forward + backward) and of one meta-val forward per
   image (``torch.utils.flop_counter``) and the bytes each step reads from the cache, and
   projects the time per architecture (15 epochs over 4,000 images + meta-val 1,715) on one
   V100 and one H100: compute at an assumed share of fp32 peak (``--efficiency``, default 0.25:
   small 64-channel convolutions and deformable convolutions are far from peak) and feature
   reads from host memory over PCIe or from disk, whichever bounds it; then 2,800 architectures
   in GPU-days beside the paper's 30.

Everything of step 1 is reused from ``--work`` when present (the cache build is resumable).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from nasfcos.cli.args import seed_range
from nasfcos.fcos.losses import losses_from_targets
from nasfcos.fcos.synth import SynthConfig, write_synthetic
from nasfcos.genotypes import load_paper_genotype
from nasfcos.io import atomic_write_text
from nasfcos.search.cache import LEVELS
from nasfcos.search.proxy import (
    PRESETS,
    _fcos_config,
    build_cache,
    compiled_decoder,
    meta_val_losses,
    open_cache,
    train_decoder,
)

#: The paper's search: VOC split, epochs, architectures, GPU-days (NAS-FCOS 4.1).
PAPER = {"train_images": 4000, "val_images": 1715, "epochs": 15, "architectures": 2800, "gpu_days": 30}
#: Datasheet figures (fp32 TFLOPS without tensor cores, HBM GB/s, host link GB/s one way,
#: practical): V100 SXM2 (PCIe 3 x16), H100 SXM5 (PCIe 5 x16).
GPUS = {"V100": {"fp32_tflops": 15.7, "hbm_gbs": 900, "pcie_gbs": 12.0, "memory_gib": 16},
        "H100": {"fp32_tflops": 67.0, "hbm_gbs": 3350, "pcie_gbs": 50.0, "memory_gib": 80}}
DISK_GBS = 3.0  # one local NVMe drive, sequential reads


class _Subset:
    """The first ``n`` rows of a cache split (what train_decoder reads: len and batch)."""

    def __init__(self, split: Any, n: int) -> None:
        self.split, self.n = split, n

    def __len__(self) -> int:
        return self.n

    def batch(self, idx: np.ndarray, device: Any = "cpu") -> Any:
        return self.split.batch(idx, device)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def step_flops(decoder: torch.nn.Module, cache: Any, settings: Any, batch: int) -> tuple[float, float]:
    """FLOPs per image of one training step (forward + backward) and of one eval forward."""
    from torch.utils.flop_counter import FlopCounterMode

    feats, targets = cache.train.batch(np.arange(batch))
    with FlopCounterMode(display=False) as fc:
        cls, reg, ctr = decoder(feats)
        losses = losses_from_targets(cls, reg, ctr, targets, _fcos_config(settings))
        (losses["cls"] + losses["box"] + losses["ctr"]).backward()
    train = fc.get_total_flops() / batch
    decoder.zero_grad(set_to_none=True)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        decoder.eval()
        decoder(feats)
        decoder.train()
    return train, fc.get_total_flops() / batch


def project(bytes_per_image: float, train_flops: float, val_flops: float, efficiency: float,
            host_memory_gib: float) -> dict[str, Any]:
    """Seconds per architecture on each GPU of :data:`GPUS` and GPU-days for the paper's search."""
    n_tr, n_val, ep = PAPER["train_images"], PAPER["val_images"], PAPER["epochs"]
    cache_gb = (n_tr + n_val) * bytes_per_image / 1e9
    in_ram = cache_gb < 0.75 * host_memory_gib * 1.073741824
    read_gb = (ep * n_tr + n_val) * bytes_per_image / 1e9
    out: dict[str, Any] = {"cache_gb": round(cache_gb, 1), "read_gb_per_arch": round(read_gb, 1),
                           "cache_fits_host_memory": in_ram, "host_memory_gib": host_memory_gib}
    for name, g in GPUS.items():
        flops = ep * n_tr * train_flops + n_val * val_flops
        compute_s = flops / (g["fp32_tflops"] * 1e12 * efficiency)
        link = g["pcie_gbs"] if in_ram else min(g["pcie_gbs"], DISK_GBS)
        io_s = read_gb / link
        per_arch = max(compute_s, io_s)  # reads overlap compute (prefetch)
        out[name] = {"compute_s": round(compute_s, 1), "read_s": round(io_s, 1), "s_per_arch": round(per_arch, 1),
                     "bound": "GPU compute" if compute_s >= io_s else ("host->GPU link" if in_ram else "disk reads"),
                     "gpu_days_2800": round(PAPER["architectures"] * per_arch / 86400, 1)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="work folder (data and cache are reused)")
    ap.add_argument("--images", type=int, default=96, help="synthetic 384 px images (default 96)")
    ap.add_argument("--sizes", type=seed_range, default=None, metavar="N,N",
                    help="meta-train images per timed epoch (default: 1/4, 1/2 and all of meta-train)")
    ap.add_argument("--batch", type=int, default=8, help="training batch (default 8; the paper's is 200)")
    ap.add_argument("--genotype", default="nas_fcos_fpn_head")
    ap.add_argument("--efficiency", type=float, default=0.25, help="share of fp32 peak a GPU reaches (0.25)")
    ap.add_argument("--host-memory-gib", type=float, default=256.0,
                    help="host memory of a GPU server in the projection (default 256)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0")) or None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.images < 8 or a.batch < 2 or not 0 < a.efficiency <= 1:
        sys.exit("error: want --images >= 8, --batch >= 2, 0 < --efficiency <= 1")
    if a.threads:
        torch.set_num_threads(a.threads)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"coco384-{a.images}"
    if not (data / "manifest.json").is_file():
        write_synthetic(data, SynthConfig(images=a.images, size=384, seed=0, val_fraction=0.01))
    settings = dataclasses.replace(PRESETS["paper"], chunk_size=8, num_threads=0, batch_size=a.batch,
                                   eval_batch_size=a.batch, epochs=1, device="cpu")
    cache_dir = work / f"cache-{a.images}"
    built_here = not (cache_dir / "manifest.json").is_file()
    t0 = time.perf_counter()
    build_cache(data, cache_dir, settings, progress=sys.stderr.isatty())
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    open_cache(cache_dir, settings, verify="full")
    open_full_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cache = open_cache(cache_dir, settings, verify="size")
    open_size_s = time.perf_counter() - t0
    manifest = cache.manifest
    n_imgs = len(cache.train) + len(cache.val)
    per_level = {}
    for lvl in (*LEVELS, "targets"):
        names = [f for f in manifest["files"] if any(f.endswith(f"_{x}.npy") for x in
                                                     ((lvl,) if lvl != "targets" else ("labels", "reg", "ctr", "source")))]
        per_level[lvl] = round(sum(manifest["files"][f]["bytes"] for f in names) / n_imgs)
    bytes_img = sum(per_level.values())
    total_bytes = sum(v["bytes"] for v in manifest["files"].values())
    print(f"cache: {len(cache.train)} meta-train + {len(cache.val)} meta-val images, {total_bytes / 2**20:.0f} MiB, "
          f"{bytes_img / 2**20:.2f} MiB/image {per_level}; build {build_s:.1f} s"
          f"{'' if built_here else ' (reused: not timed)'}, open full-verify {open_full_s:.2f} s, "
          f"size-check {open_size_s:.3f} s", file=sys.stderr, flush=True)

    g = load_paper_genotype(a.genotype)
    n_train = len(cache.train)
    sizes = a.sizes or sorted({max(a.batch, n_train // 4), max(a.batch, n_train // 2), n_train})
    epochs = []
    for n in sizes:
        if n > n_train or n < a.batch:
            sys.exit(f"error: --sizes {n}: want {a.batch}..{n_train} (meta-train images)")
        torch.manual_seed(0)
        dec = compiled_decoder(g, settings.fpn_channels, settings.head_channels, cache.num_classes, cache.in_channels)
        view = SimpleNamespace(train=_Subset(cache.train, n), val=cache.val)
        t0 = time.perf_counter()
        out = train_decoder(dec, view, settings, seed=0)  # type: ignore[arg-type]
        ep_s = time.perf_counter() - t0
        epochs.append({"images": n, "steps": out.steps, "epoch_s": round(ep_s, 2),
                       "s_per_image": round(ep_s / (out.steps * a.batch), 4), "peak_rss_mib": round(_rss_mib())})
        print(f"epoch over {n} images at batch {a.batch}: {ep_s:.1f} s ({epochs[-1]['s_per_image']} s/image), "
              f"peak RSS {epochs[-1]['peak_rss_mib']} MiB", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    meta_val_losses(out.averaged, cache, settings)
    val_s = time.perf_counter() - t0
    train_flops, val_flops = step_flops(dec, cache, settings, a.batch)
    s_img = statistics.median(e["s_per_image"] for e in epochs)
    cpu_arch_s = PAPER["epochs"] * PAPER["train_images"] * s_img + PAPER["val_images"] * val_s / len(cache.val)
    proj = project(bytes_img, train_flops, val_flops, a.efficiency, a.host_memory_gib)
    result = {
        "benchmark": "search_cost", "threads": torch.get_num_threads(), "images": n_imgs,
        "meta_train": n_train, "meta_val": len(cache.val), "batch": a.batch, "genotype": a.genotype,
        "cache": {"bytes_per_image": bytes_img, "bytes_per_image_per_level": per_level,
                  "total_mib": round(total_bytes / 2**20, 1), "build_s": round(build_s, 1) if built_here else None,
                  "build_img_per_s": round(n_imgs / build_s, 3) if built_here else None,
                  "open_full_verify_s": round(open_full_s, 3), "open_size_check_s": round(open_size_s, 4),
                  "verify_mb_per_s": round(total_bytes / 1e6 / max(open_full_s, 1e-9), 1)},
        "epochs": epochs, "val_s_per_image": round(val_s / len(cache.val), 4),
        "gflops_per_image": {"train_step": round(train_flops / 1e9, 2), "val_forward": round(val_flops / 1e9, 2)},
        "peak_rss_mib": round(_rss_mib()),
        "projection": {"paper": PAPER, "efficiency": a.efficiency,
                       "this_cpu_s_per_arch": round(cpu_arch_s), **proj},
    }
    print(f"\n{'':<10} {'s/arch':>8} {'compute s':>10} {'read s':>8} {'bound':<16} {'GPU-days, 2800 archs':>21}")
    for name in GPUS:
        p = proj[name]
        print(f"{name:<10} {p['s_per_arch']:>8.0f} {p['compute_s']:>10.0f} {p['read_s']:>8.0f} {p['bound']:<16} "
              f"{p['gpu_days_2800']:>21.1f}")
    print(f"{'this CPU':<10} {cpu_arch_s:>8.0f}   (measured s/image x 15 x 4000; {torch.get_num_threads()} threads)")
    print(f"{'paper':<10} {PAPER['gpu_days'] * 86400 / PAPER['architectures']:>8.0f}   (30 GPU-days / 2800, V100)")
    if a.json:  # the machine-readable record first, then the same line on stdout
        atomic_write_text(a.json, json.dumps(result) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
