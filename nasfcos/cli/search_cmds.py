"""``nasfcos search``: run or resume an architecture search; ``search top`` exports the best.

``nasfcos search cache`` and ``nasfcos search eval`` belong to the proxy task and are
forwarded to ``nasfcos.cli.proxy_cmds``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from pathlib import Path
from typing import Any

from nasfcos.cli import args as A
from nasfcos.errors import CacheError, NasfcosError

SEARCH_EPILOG = """\
examples:
  nasfcos search --trials 16 --out runs/tiny       # tiny proxy preset: synthetic data + cache in runs/tiny
  nasfcos search --preset toy --trials 64 --out runs/toy            # seconds, no training
  nasfcos search --preset tiny --trials 50 --out runs/t2 --cache cache/tiny --workers 2
  nasfcos search --out runs/tiny --resume                           # after a crash or kill -9
  nasfcos search --preset paper --trials 2000 --out runs/paper --cache /shared/cache \\
      --executor ray --address auto
  nasfcos search top runs/tiny --top-k 5 -o best/                  # export the 5 best genotypes

a proxy search without --cache builds its feature cache (and, without --data, the preset's
synthetic data set) in --out/cache first, or reuses the one there.  A search whose every
trial of a step fails stops with exit status 2 and the reason; fix it and add --resume.
--trials is rounded up to whole batches of --batch-size (8; a note says so), except that
fewer trials than one batch run as one step of that many (--trials 2: two evaluations).

outputs in --out: archive.jsonl (one row per sampled architecture), top/rankNN-HASH.json
(genotypes 'nasfcos compile' takes), search.png (reward curve), best.png (best genotype),
summary.json (machine-readable results), checkpoint.pt and search.json (for --resume).

latency-aware: 'nasfcos search latency-table --backend onnxruntime --size 800x800 -o t.json'
measures each decoder unit once; '--latency-table t.json --latency-target 20' then searches
with reward = proxy reward - 0.07 * log(predicted latency / 20 ms) and reports the Pareto front
(proxy reward vs predicted latency) in summary.json and pareto.png.

sub-verbs: 'nasfcos search cache ...' (build the feature cache), 'nasfcos search eval ...'
(evaluate one genotype on the proxy task), 'nasfcos search top ...' (see 'top --help'),
'nasfcos search latency-table ...' (see its --help)."""

TOP_EPILOG = """\
example:
  nasfcos search top runs/tiny --top-k 5 -o best/
  nasfcos search top runs/tiny --top-k 3 -o best/ --compile --detector --num-classes 20
  nasfcos search top runs/tiny --top-k 2 -o best/ --export --fpn-channels 128 --sizes 512,800
writes best/rank01-HASH.json ... (the K best distinct genotypes, reward and provenance in
"meta"), with --compile best/rank01-HASH.py ... (compiled models: 'nasfcos export', 'check',
'bench' take them), with --export best/rank01-HASH/ (model.py, model.onnx, parity.json,
report.md, summary.json: the pipeline of 'nasfcos demo'; exit status 1 if a parity check
fails), and best/top.json (machine-readable list and the index of the files written: a later
run replaces or removes only those, never other files in the folder)."""


def _parser() -> argparse.ArgumentParser:
    p = A.Parser(prog="nasfcos search", epilog=SEARCH_EPILOG,
                 description="Search FCOS decoders (FPN + head) with an LSTM controller trained by PPO.")
    p.add_argument("--preset", choices=("toy", "tiny", "paper"), default=None,
                   help="evaluation: 'toy' (no training, reward = deformable ops), or the proxy "
                        "task presets 'tiny' / 'paper' (default: tiny)")
    p.add_argument("--trials", type=A.positive_int, default=None,
                   help="architectures to sample in total, rounded up to whole batches; fewer than "
                        "one batch: one step of that many (required for a new search; on --resume "
                        "defaults to the stored target)")
    p.add_argument("-o", "--output", "--out", dest="out", type=A.output_dir, required=True,
                   metavar="DIR", help="search folder")
    p.add_argument("--resume", action="store_true", help="continue the search in --out")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local worker processes (default) or Ray tasks")
    p.add_argument("--address", default=None, metavar="A",
                   help="Ray cluster: 'auto' or HOST:PORT (default: start a local Ray instance)")
    p.add_argument("--cpus-per-trial", type=A.positive_float, default=1.0, metavar="C",
                   help="ray: CPUs each evaluation asks for (default 1)")
    p.add_argument("--gpus-per-trial", type=A.non_negative_float, default=0.0, metavar="G",
                   help="ray: GPUs each evaluation asks for (default 0; e.g. 1, or 0.5 for two per GPU); "
                        "the paper preset then trains on the task's GPU")
    p.add_argument("--workers", type=A.non_negative_int, default=None, metavar="N",
                   help="local: worker processes, 0 = evaluate in this process (default: 0 for "
                        "toy, 1 otherwise); ray: concurrent tasks hint")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="dataset folder (proxy presets; default: the preset's synthetic set)")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="feature cache folder, built there if absent (proxy presets; default: OUT/cache; "
                        "on shared storage for Ray)")
    p.add_argument("--backbone-weights", default=None, metavar="FILE",
                   help="state_dict of the frozen backbone the feature cache is built with "
                        "(torchvision format; default: the preset's)")
    p.add_argument("--seed", type=A.seed, default=None, metavar="S", help="search seed (default 0)")
    p.add_argument("--batch-size", type=A.positive_int, default=None, metavar="B",
                   help="architectures per controller update (default 8, or --trials when smaller)")
    p.add_argument("--head", choices=("dag", "sequential", "fcos"), default=None,
                   help="head search space (default dag: the paper's)")
    p.add_argument("-k", "--top-k", type=A.positive_int, default=5, metavar="K",
                   help="genotypes kept in DIR/top (default 5)")
    p.add_argument("--toy-noise", type=A.non_negative_float, default=None, metavar="STD",
                   help="toy preset: reward noise drawn from the evaluation seed (default 0)")
    p.add_argument("--toy-delay", type=A.non_negative_float, default=None, metavar="S",
                   help="toy preset: seconds each evaluation pretends to take (default 0)")
    g = p.add_argument_group("latency-aware search (MnasNet-style soft constraint)")
    g.add_argument("--latency-table", default=None, metavar="FILE",
                   help="per-unit latency table ('nasfcos search latency-table'); every row then "
                        "records the predicted decoder latency, and the summary the Pareto front")
    g.add_argument("--latency-target", type=A.positive_float, default=None, metavar="MS",
                   help="target latency (ms, > 0): reward = proxy reward - W * log(latency / MS)")
    g.add_argument("--latency-weight", type=A.non_negative_float, default=None, metavar="W",
                   help="W above (default 0.07, MnasNet's |w|)")
    g.add_argument("--latency-size", type=A.size_hw, default=None, metavar="HxW",
                   help="refuse a table measured at another image size")
    g.add_argument("--latency-backend", choices=("onnxruntime", "torch", "tensorrt"), default=None,
                   help="refuse a table measured on another backend")
    A.add_json(p, "print the summary as JSON on stdout")
    A.add_quiet(p)
    return p


def _config(args: argparse.Namespace) -> Any:
    from nasfcos.search.archive import CONFIG_NAME
    from nasfcos.search.loop import SearchConfig

    stored = Path(args.out) / CONFIG_NAME
    if args.resume and not Path(args.out).is_dir():
        raise NasfcosError(f"{args.out}: no such search folder to resume")
    stored_used = args.resume and stored.exists()
    if stored_used:
        base = SearchConfig.read(stored)
    else:
        if args.trials is None:
            raise NasfcosError("--trials is required for a new search")
        base = SearchConfig(preset="tiny")
    changes: dict[str, Any] = {name: getattr(args, name) for name in (
        "preset", "trials", "seed", "batch_size", "data", "cache", "toy_noise", "toy_delay", "latency_table",
        "latency_target", "latency_weight", "backbone_weights") if getattr(args, name) is not None}
    if args.head is not None:
        changes["controller"] = dataclasses.replace(base.controller, head_kind=args.head)
    if not stored_used and args.batch_size is None and args.trials < base.batch_size:
        changes["batch_size"] = args.trials  # a short run is honoured: one step of --trials samples
    cfg = dataclasses.replace(base, **changes)
    for name in ("data", "cache", "latency_table", "backbone_weights"):
        v = getattr(cfg, name)
        if v is not None and v == getattr(args, name):
            cfg = dataclasses.replace(cfg, **{name: str(Path(v).resolve())})
    return cfg


def search_main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from nasfcos.search.cache import CacheConflict
    from nasfcos.search.loop import Search, SearchFailed

    cfg = _config(args)
    workers = args.workers
    if workers is None and args.executor == "local":
        workers = 0 if cfg.preset == "toy" else 1
    check = {k: v for k, v in (("size", args.latency_size), ("backend", args.latency_backend)) if v is not None}
    if check and cfg.latency_table is None:
        raise NasfcosError("--latency-size/--latency-backend need --latency-table FILE")
    search = Search(args.out, cfg, resume=args.resume, executor_kind=args.executor, workers=workers,
                    address=args.address, cpus_per_trial=args.cpus_per_trial,
                    gpus_per_trial=args.gpus_per_trial, top_k=args.top_k, progress=not args.quiet, latency_check=check)
    if cfg.trials % cfg.batch_size:  # (checked by Search: both at least 1)
        print(f"nasfcos search: note: --trials {cfg.trials} rounded up to {cfg.steps * cfg.batch_size} "
              f"(whole batches of {cfg.batch_size})", file=sys.stderr)
    try:
        summary = search.run()
    except CacheConflict as exc:  # 'search' has no --overwrite: another cache folder, or none
        raise CacheError(f"{exc.problem}; give another --cache DIR, or delete this folder to rebuild it") from None
    except SearchFailed as exc:
        raise NasfcosError(f"{exc.problem} -- fix the cause, then 'nasfcos search --out {search.out} --resume'") from None
    if args.json:
        A.print_json(summary)
    else:
        _print_summary(summary, Path(args.out))
    return 0


def _print_summary(s: dict[str, Any], out: Path) -> None:
    print(f"search: {s['trials']} architectures ({s['evaluated']} evaluated, {s['reused']} reused, "
          f"{s['failed']} failed; {s['unique_genotypes']} distinct) in {s['steps']} steps, "
          f"wall {s.get('wall_s', 0):.1f} s, {s.get('evaluations_per_hour', 0):.0f} evaluations/h this session")
    b = s.get("best")
    if b:
        print(f"best: reward {b['reward']:.6g}  hash {b['hash'][:12]}  (step {b['step']}, sample {b['index']})")
    pareto = s.get("pareto")
    if pareto:
        front = ", ".join(f"{p['latency_ms']:.3g} ms -> {p['proxy_reward']:.4g}" for p in pareto["front"][:6])
        print(f"Pareto front (predicted latency -> proxy reward), {len(pareto['front'])} of "
              f"{pareto['points']} genotypes: {front}{' ...' if len(pareto['front']) > 6 else ''}")
        if "plot" in pareto:
            print(f"Pareto plot: {pareto['plot']}")
    print(f"top genotypes: {out / 'top'}/   plot: {out / 'search.png'}   summary: {out / 'summary.json'}")
    if "best_drawing" in s:
        print(f"best drawn: {s['best_drawing']}")


def _top_parser() -> argparse.ArgumentParser:
    p = A.Parser(prog="nasfcos search top", epilog=TOP_EPILOG,
                 description="Export the K best distinct genotypes of a search as genotype JSON files.")
    p.add_argument("dir", metavar="DIR", help="search folder (holds archive.jsonl)")
    p.add_argument("-k", "--top-k", dest="k", type=A.positive_int, default=5, metavar="K",
                   help="how many (default 5)")
    p.add_argument("-o", "--output", "--out", dest="out", type=A.output_dir, default=None,
                   metavar="OUTDIR", help="where to write (default DIR/top)")
    g = p.add_argument_group("search to deployment: a compiled model.py beside each genotype")
    g.add_argument("--compile", action="store_true",
                   help="also write rankNN-HASH.py, the genotype compiled by 'nasfcos compile' (then "
                        "'nasfcos export rankNN-HASH.py' ...)")
    A.add_widths(g, fpn_help="FPN width (default 256, the released models')",
                 head_help="head width (default: the FPN width)")
    A.add_num_classes(g, "classes (default 80)")
    g.add_argument("--detector", action="store_true", help="emit class Detector too (backbone + post-processing)")
    g.add_argument("--backbone", default=None, help="detector backbone (with --detector or --export; default resnet50)")
    e = p.add_argument_group("search to deployment: ONNX export, parity check and benchmark of each")
    e.add_argument("--export", action="store_true",
                   help="run the pipeline of 'nasfcos demo' for each genotype in OUTDIR/rankNN-HASH/: a "
                        "Detector of the widths and classes above with --backbone (random weights) -> "
                        "model.onnx -> parity against PyTorch -> CPU benchmark (report.md, summary.json)")
    e.add_argument("--sizes", type=A.size_list, default=None, metavar="HxW,...",
                   help="benchmark sizes (default 800x800; the export is traced at the middle one)")
    A.add_timing(e, runs=None, runs_help="timed runs per backend and size (default 3)",
                 warmup=None, warmup_help="untimed runs first (default 1)")
    A.add_threads(e)
    A.add_json(p, "print the machine-readable list on stdout instead of a table")
    return p


def top_main(argv: list[str]) -> int:
    args = _top_parser().parse_args(argv)
    from nasfcos.search.archive import ARCHIVE_NAME, best_rows, read_rows
    from nasfcos.search.loop import write_top

    if args.detector and not args.compile:
        raise NasfcosError("--detector needs --compile")
    if not (args.compile or args.export) and (args.fpn_channels, args.head_channels, args.num_classes,
                                              args.backbone) != (None, None, 80, None):
        raise NasfcosError("--fpn-channels/--head-channels/--num-classes/--backbone need --compile or --export")
    if args.backbone is not None and not args.detector and not args.export:
        raise NasfcosError("--backbone only applies with --detector or --export")
    if not args.export and (args.sizes, args.runs, args.warmup, args.threads) != (None,) * 4:
        raise NasfcosError("--sizes/--runs/--warmup/--threads need --export")
    from nasfcos.compiler import CompileOptions

    # what --compile writes, and the Detector each export compiles: refused here, before anything is written
    options = CompileOptions(fpn_channels=args.fpn_channels or CompileOptions.fpn_channels,
                             head_channels=args.head_channels, num_classes=args.num_classes,
                             detector=args.detector, backbone=args.backbone or CompileOptions.backbone)
    detector = dataclasses.replace(options, detector=True) if args.export else None
    src = Path(args.dir)
    if not src.is_dir():
        raise NasfcosError(f"{src}: no such search folder")
    rows = read_rows(src / ARCHIVE_NAME)
    top = best_rows(rows, args.k)
    if not top:
        raise NasfcosError(f"{src / ARCHIVE_NAME}: no evaluated architecture yet")
    out = Path(args.out) if args.out else src / "top"
    listing = write_top(top, out, compile_options=options if args.compile else None, folders=args.export,
                        listing={"archive": str(src / ARCHIVE_NAME), "rows": len(rows)},
                        owned=args.out is None)  # DIR/top is the search's own folder
    failed = _export_top(listing, out, args, detector) if detector is not None else []
    if args.json:
        A.print_json(listing)
    else:
        print(f"{'rank':>4}  {'reward':>12}  {'hash':<12}  {'step':>5}  file")
        for e in listing:
            print(f"{e['rank']:>4}  {e['reward']:>12.6g}  {e['hash'][:12]:<12}  {e['step']:>5}  {e['path']}"
                  + (f"  {e['model']}" if "model" in e else "") + _export_text(e.get("export")))
        if len(top) < args.k:
            print(f"(only {len(top)} distinct evaluated genotypes in the archive)")
        print(f"list: {out / 'top.json'}")
    if failed:
        print(f"nasfcos search top: parity FAILED for {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _export_text(export: dict[str, Any] | None) -> str:
    """The table's note on an export: parity and each measured latency."""
    if export is None:
        return ""
    times = ", ".join(f"{r['backend']} {r['median_ms']:.3g} ms" for r in export["results"] if r.get("median_ms"))
    return f"  onnx {export['onnx']} (parity {'ok' if export['parity_ok'] else 'FAILED'}; {times})"


def _export_top(listing: list[dict[str, Any]], out: Path, args: argparse.Namespace,
                detector: Any) -> list[str]:
    """Export, check and benchmark each listed genotype with the one library pipeline
    (:func:`nasfcos.runtime.pipeline.run_pipeline`, as 'nasfcos demo'); each entry gains
    ``export`` (its folder, ONNX file, parity and latencies).  Returns the ranks whose
    parity check failed.  ``detector``: the checked CompileOptions (widths, classes, backbone)
    each export compiles.  Progress goes to stderr (stdout holds the table or the JSON)."""
    from nasfcos.io import atomic_write_json
    from nasfcos.runtime.pipeline import PipelineConfig, run_pipeline

    failed = []
    for e in listing:
        folder = out / Path(e["path"]).stem
        print(f"nasfcos search top: rank {e['rank']}: export, check and benchmark in {folder}", file=sys.stderr)
        summary = run_pipeline(PipelineConfig(
            out=folder, genotype=e["path"], fpn_channels=detector.fpn_channels,
            head_channels=detector.head_channels, num_classes=detector.num_classes,
            backbone=detector.backbone, sizes=args.sizes or [(800, 800)],
            runs=3 if args.runs is None else args.runs, warmup=1 if args.warmup is None else args.warmup,
            threads=args.threads), lambda msg: print(msg, file=sys.stderr, flush=True))
        summary.pop("_report", None)
        paths = summary.pop("_paths", {})
        atomic_write_json(folder / "summary.json", summary)
        e["export"] = {"folder": str(folder), "onnx": str(paths.get("onnx", "")), "parity_ok": summary["parity"]["ok"],
                       "summary": str(folder / "summary.json"), "results": summary["results"]}
        if not summary["parity"]["ok"]:
            failed.append(f"rank {e['rank']}")
    return failed


LATENCY_EPILOG = """\
examples:
  nasfcos search latency-table --backend onnxruntime --size 800x800 -o table.json
  nasfcos search latency-table --backend torch --size 256 --fpn-channels 64 --head-channels 64 -o t.json
  nasfcos search --trials 64 --out runs/fast --latency-table table.json --latency-target 25

Times every unit of a compiled decoder (each FPN op and aggregation at strides 4..32, each head
op and aggregation at strides 8..128, resizes, adapters, p6/p7, predictors) at the given size
and widths, median of --runs after --warmup, minus the per-call overhead (stored once)."""


def latency_table_main(argv: list[str]) -> int:
    """``nasfcos search latency-table``: measure the per-unit latency table."""
    p = A.Parser(prog="nasfcos search latency-table", epilog=LATENCY_EPILOG,
                 description="Measure a per-unit decoder latency table for latency-aware search.")
    p.add_argument("--backend", choices=("onnxruntime", "torch", "tensorrt"), default="onnxruntime")
    p.add_argument("--size", type=A.size_hw, default="800x800", metavar="HxW", help="image size (default 800x800)")
    p.add_argument("-o", "--output", type=A.output_file, required=True, metavar="FILE",
                   help="table JSON to write")
    A.add_widths(p, fpn_help="FPN width (default 128)", head_help="head width (default 128)", default=128,
                 metavar="C")
    A.add_num_classes(p, "classes (default 80)", metavar="K")
    p.add_argument("--backbone", default="resnet50", help="sets the adapters' input widths (default resnet50)")
    p.add_argument("--threads", type=A.threads, default=1, metavar="N", help="intra-op threads (default 1)")
    p.add_argument("--device", type=A.device, default=None, help="cpu (default; tensorrt: cuda)")
    A.add_timing(p, runs=30, runs_help="timed runs per unit (default 30)",
                 warmup=5, warmup_help="warm-up runs per unit (default 5)")
    p.add_argument("--statistic", choices=("median", "min"), default="median",
                   help="per-unit summary of the runs: median (quiet machine, default) or min "
                        "(a shared machine: the uncontended time)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall time (default), or the CPU time of the calling thread (with --threads 1: "
                        "immune to other processes on a shared machine)")
    A.add_quiet(p)
    A.add_json(p, "print the table as JSON on stdout")
    a = p.parse_args(argv)
    from nasfcos.search.latency import TableSpec, build_table

    out = Path(a.output)  # checked by its type: a writable file path, not a folder
    device = a.device or ("cuda" if a.backend == "tensorrt" else "cpu")
    spec = TableSpec(backend=a.backend, size=a.size, fpn_channels=a.fpn_channels,
                     head_channels=a.head_channels, num_classes=a.num_classes, backbone=a.backbone,
                     threads=a.threads, device=device)
    table = build_table(spec, warmup=a.warmup, runs=a.runs, progress=not a.quiet, statistic=a.statistic,
                        clock=a.clock)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.save(out)
    if a.json:
        A.print_json(table.to_dict())
    else:
        print(f"latency table {out}: {len(table.entries)} units, {spec.backend} {spec.size[0]}x{spec.size[1]}, "
              f"fpn {spec.fpn_channels} / head {spec.head_channels}, {spec.threads} thread(s); "
              f"overhead {table.overhead_ms:.4f} ms; measured in {table.meta['seconds']:.0f} s")
    return 0


def main(argv: list[str]) -> int:
    """``nasfcos search ...``: dispatch the sub-verbs, otherwise run a search."""
    if argv and argv[0] in ("cache", "eval"):
        proxy_cmds = importlib.import_module("nasfcos.cli.proxy_cmds")
        return int((proxy_cmds.cache_main if argv[0] == "cache" else proxy_cmds.eval_main)(argv[1:]) or 0)
    if argv and argv[0] == "top":
        return top_main(argv[1:])
    if argv and argv[0] == "latency-table":
        return latency_table_main(argv[1:])
    return search_main(argv)
