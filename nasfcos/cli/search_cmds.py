"""``nasfcos search``: run or resume an architecture search; ``search top`` exports the best.

``nasfcos search cache`` and ``nasfcos search eval`` belong to the proxy task and are
forwarded to ``nasfcos.search.cli_proxy``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import re
import sys
from pathlib import Path
from typing import Any

from nasfcos.cli import args as A
from nasfcos.errors import NasfcosError

SEARCH_EPILOG = """\
examples:
  nasfcos search --preset toy --trials 64 --out runs/toy            # seconds, no training
  nasfcos search --preset tiny --trials 50 --out runs/tiny --cache cache/tiny --workers 2
  nasfcos search --out runs/tiny --resume                           # after a crash or kill -9
  nasfcos search --preset paper --trials 2000 --out runs/paper --cache /shared/cache \\
      --executor ray --address auto
  nasfcos search top runs/tiny --top-k 5 -o best/                  # export the 5 best genotypes

outputs in --out: archive.jsonl (one row per sampled architecture), top/rankNN-HASH.json
(genotypes 'nasfcos compile' takes), search.png (reward curve), best.png (best genotype),
summary.json (machine-readable results), checkpoint.pt and search.json (for --resume).

sub-verbs: 'nasfcos search cache ...' (build the feature cache), 'nasfcos search eval ...'
(evaluate one genotype on the proxy task), 'nasfcos search top ...' (see 'top --help')."""

TOP_EPILOG = """\
example:
  nasfcos search top runs/tiny --top-k 5 -o best/
writes best/rank01-HASH.json ... (the K best distinct genotypes, reward and provenance in
"meta") and best/top.json (machine-readable list)."""


def _parser() -> argparse.ArgumentParser:
    p = A.Parser(
        prog="nasfcos search",
        description="Search FCOS decoders (FPN + head) with an LSTM controller trained by PPO.",
        epilog=SEARCH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", choices=("toy", "tiny", "paper"), default=None,
                   help="evaluation: 'toy' (no training, reward = deformable ops), or the proxy "
                        "task presets 'tiny' / 'paper' (default: tiny)")
    p.add_argument("--trials", type=A.positive_int, default=None,
                   help="architectures to sample in total, rounded up to whole batches "
                        "(required for a new search; on --resume defaults to the stored target)")
    p.add_argument("-o", "--output", "--out", dest="out", type=A.output_dir, required=True,
                   metavar="DIR", help="search folder")
    p.add_argument("--resume", action="store_true", help="continue the search in --out")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local worker processes (default) or Ray tasks")
    p.add_argument("--address", default=None, metavar="A",
                   help="Ray cluster: 'auto' or HOST:PORT (default: start a local Ray instance)")
    p.add_argument("--workers", type=A.non_negative_int, default=None, metavar="N",
                   help="local: worker processes, 0 = evaluate in this process (default: 0 for "
                        "toy, 1 otherwise); ray: concurrent tasks hint")
    p.add_argument("--data", default=None, metavar="DIR", help="dataset folder (proxy presets)")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="feature cache from 'nasfcos search cache' (proxy presets; shared storage for Ray)")
    p.add_argument("--seed", type=A.seed, default=None, metavar="S", help="search seed (default 0)")
    p.add_argument("--batch-size", type=A.positive_int, default=None, metavar="B",
                   help="architectures per controller update (default 8)")
    p.add_argument("--head", choices=("dag", "sequential", "fcos"), default=None,
                   help="head search space (default dag: the paper's)")
    p.add_argument("-k", "--top-k", type=A.positive_int, default=5, metavar="K",
                   help="genotypes kept in DIR/top (default 5)")
    p.add_argument("--toy-noise", type=A.non_negative_float, default=None, metavar="STD",
                   help="toy preset: reward noise drawn from the evaluation seed (default 0)")
    p.add_argument("--toy-delay", type=A.non_negative_float, default=None, metavar="S",
                   help="toy preset: seconds each evaluation pretends to take (default 0)")
    A.add_json(p, "print the summary as JSON on stdout")
    A.add_quiet(p)
    return p


def _config(args: argparse.Namespace) -> Any:
    from nasfcos.search.archive import CONFIG_NAME
    from nasfcos.search.controller import ControllerConfig
    from nasfcos.search.loop import SearchConfig

    stored = Path(args.out) / CONFIG_NAME
    if args.resume and stored.exists():
        try:
            base = SearchConfig.from_dict(json.loads(stored.read_text()))
        except (ValueError, TypeError) as exc:
            raise NasfcosError(f"{stored}: unreadable search settings ({exc})") from None
    else:
        if args.trials is None:
            raise NasfcosError("--trials is required for a new search")
        base = SearchConfig(preset="tiny")
    changes: dict[str, Any] = {}
    for flag, name in (("preset", "preset"), ("trials", "trials"), ("seed", "seed"),
                       ("batch_size", "batch_size"), ("data", "data"), ("cache", "cache"),
                       ("toy_noise", "toy_noise"), ("toy_delay", "toy_delay")):
        v = getattr(args, flag)
        if v is not None:
            changes[name] = v
    if args.head is not None:
        changes["controller"] = dataclasses.replace(base.controller or ControllerConfig(), head_kind=args.head)
    cfg = dataclasses.replace(base, **changes)
    for name in ("data", "cache"):
        v = getattr(cfg, name)
        if v is not None and v == getattr(args, name):
            cfg = dataclasses.replace(cfg, **{name: str(Path(v).resolve())})
    return cfg


def search_main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from nasfcos.search.loop import Search

    cfg = _config(args)
    workers = args.workers
    if workers is None and args.executor == "local":
        workers = 0 if cfg.preset == "toy" else 1
    if cfg.trials % cfg.batch_size:
        print(f"nasfcos search: note: --trials {cfg.trials} rounded up to {cfg.steps * cfg.batch_size} "
              f"(whole batches of {cfg.batch_size})", file=sys.stderr)
    search = Search(args.out, cfg, resume=args.resume, executor_kind=args.executor, workers=workers,
                    address=args.address, top_k=args.top_k, progress=not args.quiet)
    summary = search.run()
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True, default=str))
        return 0
    _print_summary(summary, Path(args.out))
    return 0


def _print_summary(s: dict[str, Any], out: Path) -> None:
    print(f"search: {s['trials']} architectures ({s['evaluated']} evaluated, {s['reused']} reused, "
          f"{s['failed']} failed; {s['unique_genotypes']} distinct) in {s['steps']} steps, "
          f"wall {s.get('wall_s', 0):.1f} s, {s.get('evaluations_per_hour', 0):.0f} evaluations/h this session")
    b = s.get("best")
    if b:
        print(f"best: reward {b['reward']:.6g}  hash {b['hash'][:12]}  (step {b['step']}, sample {b['index']})")
    print(f"top genotypes: {out / 'top'}/   plot: {out / 'search.png'}   summary: {out / 'summary.json'}")
    if "best_drawing" in s:
        print(f"best drawn: {s['best_drawing']}")


def _top_parser() -> argparse.ArgumentParser:
    p = A.Parser(
        prog="nasfcos search top",
        description="Export the K best distinct genotypes of a search as genotype JSON files.",
        epilog=TOP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dir", metavar="DIR", help="search folder (holds archive.jsonl)")
    p.add_argument("-k", "--top-k", dest="k", type=A.positive_int, default=5, metavar="K",
                   help="how many (default 5)")
    p.add_argument("-o", "--output", "--out", dest="out", type=A.output_dir, default=None,
                   metavar="OUTDIR", help="where to write (default DIR/top)")
    A.add_json(p, "print the machine-readable list on stdout instead of a table")
    return p


def top_main(argv: list[str]) -> int:
    args = _top_parser().parse_args(argv)
    from nasfcos.io import atomic_write_json
    from nasfcos.search.archive import ARCHIVE_NAME, best_rows, read_rows
    from nasfcos.search.loop import write_top

    src = Path(args.dir)
    if not src.is_dir():
        raise NasfcosError(f"{src}: no such search folder")
    rows = read_rows(src / ARCHIVE_NAME)
    top = best_rows(rows, args.k)
    if not top:
        raise NasfcosError(f"{src / ARCHIVE_NAME}: no evaluated architecture yet")
    for r in top:  # the hash names a file: only 64 hex digits may reach it
        if not isinstance(r.get("hash"), str) or not re.fullmatch(r"[0-9a-f]{64}", r["hash"]):
            raise NasfcosError(f"{src / ARCHIVE_NAME}: row {r.get('index')!r} of step "
                               f"{r.get('step')!r} has a malformed hash")
    out = Path(args.out) if args.out else src / "top"
    paths = write_top(top, out)
    listing = [{"rank": k, "reward": r["reward"], "hash": r["hash"], "step": r["step"], "index": r["index"],
                "losses": r.get("losses", {}), "path": str(p)}
               for k, (r, p) in enumerate(zip(top, paths, strict=True), 1)]
    atomic_write_json(out / "top.json", {"archive": str(src / ARCHIVE_NAME), "rows": len(rows), "top": listing})
    if args.json:
        print(json.dumps(listing, indent=2))
    else:
        print(f"{'rank':>4}  {'reward':>12}  {'hash':<12}  {'step':>5}  file")
        for e in listing:
            print(f"{e['rank']:>4}  {e['reward']:>12.6g}  {e['hash'][:12]:<12}  {e['step']:>5}  {e['path']}")
        if len(top) < args.k:
            print(f"(only {len(top)} distinct evaluated genotypes in the archive)")
        print(f"list: {out / 'top.json'}")
    return 0


def _proxy_verb(func: str, argv: list[str]) -> int:
    mod = importlib.import_module("nasfcos.search.cli_proxy")
    return int(getattr(mod, func)(argv) or 0)


def main(argv: list[str]) -> int:
    """``nasfcos search ...``: dispatch the sub-verbs, otherwise run a search."""
    if argv and argv[0] == "cache":
        return _proxy_verb("cache_main", argv[1:])
    if argv and argv[0] == "eval":
        return _proxy_verb("eval_main", argv[1:])
    if argv and argv[0] == "top":
        return top_main(argv[1:])
    return search_main(argv)
