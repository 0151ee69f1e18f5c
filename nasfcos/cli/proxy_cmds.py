"""``nasfcos search cache`` and ``nasfcos search eval``: build a feature cache, score one genotype.

The search verb's dispatcher (``nasfcos.cli.search_cmds``) calls :func:`cache_main`
and :func:`eval_main` with the arguments after the sub-verb.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nasfcos.cli import args as A
from nasfcos.errors import CacheError
from nasfcos.io import atomic_write_json


def _parser(prog: str, description: str, example: str) -> argparse.ArgumentParser:
    return A.Parser(prog=prog, description=description, epilog=f"example:\n  {example}")


def cache_main(argv: list[str]) -> int:
    """``nasfcos search cache``: run the frozen backbone once and store features + targets."""
    from nasfcos.search.cache import CacheConflict
    from nasfcos.search.proxy import PRESETS, build_cache, get_preset, open_cache

    p = _parser("nasfcos search cache",
                "Split a COCO-format dataset into meta-train / meta-val, run the frozen backbone once\n"
                "on random crops and store C2..C5 (float16, memory-mapped) with FCOS targets, a\n"
                "manifest and checksums.  An interrupted build resumes; a corrupt one is rebuilt.",
                "nasfcos search cache --out cache_tiny            (tiny preset, synthetic data)\n"
                "  nasfcos search cache --data voc/ --out cache_voc --preset paper --backbone-weights r50.pth")
    p.add_argument("--data", type=A.input_dir, metavar="DIR", help="data folder (images/, train.json, "
                   "val.json); default: the preset's synthetic set, written to OUT/synth")
    p.add_argument("--out", type=A.output_dir, metavar="CACHE", required=True, help="cache folder to build")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="proxy preset (default: tiny)")
    p.add_argument("--backbone-weights", metavar="FILE", help="backbone state dict (.pth); never downloaded")
    p.add_argument("--split", metavar="NAME", help="annotation file to split (default: train)")
    p.add_argument("--short-side", type=A.int_range(A.MIN_SIDE, A.MAX_SIDE), metavar="PX",
                   help="override the preset's resize short side")
    p.add_argument("--crop", type=A.int_range(A.MIN_SIDE, A.MAX_SIDE), metavar="PX",
                   help="override the preset's crop size")
    p.add_argument("--images", type=A.positive_int, metavar="N", help="synthetic images when --data is not given")
    p.add_argument("--no-resume", action="store_true", help="start over instead of resuming a partial build")
    p.add_argument("--overwrite", action="store_true", help="replace a cache built with other settings")
    p.add_argument("--threads", type=A.threads, metavar="N", help="torch threads for the backbone")
    A.add_quiet(p)
    A.add_json(p, "print the summary as JSON")
    a = p.parse_args(argv)
    changes = {name: v for v, name in ((a.split, "source_split"), (a.short_side, "short_side"), (a.crop, "crop"),
                                       (a.images, "synth_images"), (a.backbone_weights, "backbone_weights"))
               if v not in (None, "")}
    settings = get_preset(a.preset).replace(**changes).validate()
    if a.threads is not None:
        import torch

        torch.set_num_threads(a.threads)
    log = (lambda msg: None) if a.json else (lambda msg: print(msg, file=sys.stderr))
    try:
        path = build_cache(a.data, a.out, settings, resume=not a.no_resume,
                           overwrite=a.overwrite, progress=not a.quiet, log=log)
    except CacheConflict as exc:
        raise CacheError(f"{exc.problem}; use --overwrite or another --out") from None
    cache = open_cache(path, settings, verify="size")
    m = cache.manifest
    summary = {
        "cache": str(path), "preset": settings.name, "backbone": m["backbone"],
        "backbone_weights": m["backbone_weights"], "dataset_sha256": m["dataset_sha256"],
        "meta_train": len(cache.train), "meta_val": len(cache.val), "num_classes": cache.num_classes,
        "in_channels": list(cache.in_channels), "level_sizes": m["level_sizes"],
        "bytes": sum(int(f["bytes"]) for f in m["files"].values()),
    }
    if a.json:
        A.print_json(summary)
    else:
        print(f"cache {path}: {summary['meta_train']} meta-train + {summary['meta_val']} meta-val crops, "
              f"{settings.backbone} features {summary['in_channels']}, {summary['bytes'] / 2**20:.1f} MiB")
        print(f"manifest: {Path(path) / 'manifest.json'}")
    return 0


def eval_main(argv: list[str]) -> int:
    """``nasfcos search eval``: score one genotype on the proxy task."""
    from nasfcos.genotypes import resolve_genotype
    from nasfcos.search.proxy import PRESETS, evaluate, get_preset, open_cache, settings_from_cache

    p = _parser("nasfcos search eval",
                "Compile a genotype, train its decoder on the cached features (Adam, Polyak averaging)\n"
                "and print the reward: minus the meta-val FCOS losses the preset names (tiny: centerness).",
                "nasfcos search eval genotypes/nas_fcos_fpn_head.json --cache cache_tiny --seeds 0,1,2")
    p.add_argument("genotype", metavar="GENOTYPE.json", help="genotype file (or a shipped name)")
    p.add_argument("--cache", metavar="CACHE", required=True, help="feature cache (nasfcos search cache)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="training preset (default: the cache's own)")
    p.add_argument("--seed", type=A.seed, default=None, help="evaluation seed (default: the preset's)")
    p.add_argument("--seeds", type=A.seed_range, metavar="LIST",
                   help="several seeds, e.g. 0,1,2 or 0-4 (reports the mean)")
    p.add_argument("--steps", type=A.positive_int, metavar="N", help="cap the number of training steps")
    p.add_argument("--epochs", type=A.positive_int, metavar="N", help="override the preset's epochs")
    p.add_argument("--batch-size", type=A.positive_int, metavar="N", help="override the preset's batch size")
    p.add_argument("--threads", type=A.threads, metavar="N", help="torch threads (default: the preset's)")
    A.add_device(p, default=None, help="torch device: cpu or cuda[:N] (default: cpu)")
    p.add_argument("--out", type=A.output_file, metavar="FILE.json", help="also write the results as JSON")
    A.add_json(p, "print JSON instead of text")
    a = p.parse_args(argv)
    genotype = resolve_genotype(a.genotype)
    cache = open_cache(a.cache)
    changes = {name: v for v, name in ((a.steps, "max_steps"), (a.epochs, "epochs"), (a.batch_size, "batch_size"),
                                       (a.threads, "num_threads"), (a.device, "device")) if v is not None}
    settings = (get_preset(a.preset) if a.preset else settings_from_cache(cache)).replace(**changes).validate()
    seeds = a.seeds or [settings.seed if a.seed is None else a.seed]
    results = []
    for s in seeds:
        r = evaluate(genotype, cache, settings, s)
        results.append(r.to_dict())
        if not a.json:
            loss = ", ".join(f"{k} {v:.4f}" for k, v in r.losses.items())
            print(f"seed {s}: reward {r.reward:.4f} = -{settings.reward_scale:g} x ({settings.reward}) ({loss}) "
                  f"[{r.status}] {r.steps} steps, {r.params} params, {r.time_s:.1f} s")
    rewards = [float(r["reward"]) for r in results]
    doc = {"genotype": genotype.name, "genotype_hash": genotype.hash(), "cache": str(a.cache),
           "preset": settings.name, "settings": settings.to_dict(), "seeds": seeds,
           "mean_reward": sum(rewards) / len(rewards), "results": results}
    if len(seeds) > 1 and not a.json:
        print(f"mean reward over {len(seeds)} seeds: {doc['mean_reward']:.4f}")
    if a.out:
        atomic_write_json(a.out, doc)
    if a.json:
        A.print_json(doc)
    return 0
