"""Does the proxy reward rank decoders the way a longer, real training does?

    .venv/bin/python benchmarks/proxy_fidelity.py --work DIR [--tuning-seeds 0-9] [--test-seeds 100-115]
        [--sets tuning,test] [--seeds 0,1] [--iters 1200] [--skip-training | --skip-proxy]
        [--shard K/N] [--proxy-set FIELD=VALUE ...] [--json FILE]

Architectures come in two named sets:

* **tuning** (the set the shipped ``tiny`` preset was chosen on): the two shipped genotypes,
  random samples of the search space (DAG head) from ``--tuning-seeds`` (default ``0-9``;
  ``--random N`` is ``--tuning-seeds 0-(N-1)``) and four deliberately weak ones (all-skip FPN
  + FCOS head, all-skip everything, the paper genotype without deformable ops, an FPN that
  reads only c5);
* **test** (held out): random samples from ``--test-seeds`` (e.g. ``100-115``), seeds the
  tuning never saw (a seed in both sets, or a test genotype equal to a tuning one, is refused).

Choose proxy settings (``--proxy-set``) with ``--sets tuning`` only; then run ``--sets test``
once with the chosen settings.  All architectures see one data set, the yardstick
(``nasfcos data synth --preset easy``), and each is

* scored by the proxy task exactly as the search scores it (``tiny`` preset, with any
  ``--proxy-set`` changes: feature cache of the tiny trunk, ``nasfcos.search.proxy.evaluate``),
  once per seed; the three meta-val losses are kept, so other rewards (``-(cls+box)``, ...)
  are ranked too without re-running;
* compiled as a whole detector (``--detector --backbone tiny``, FPN 32 / head 64) and trained
  by ``nasfcos.fcos.train`` with the yardstick recipe (``--preset synth``: the shipped
  ``tiny_synth_1500`` trunk, frozen; AdamW; 128 px) for ``--iters`` iterations (the preset's
  2400 take 7 min on 2 idle cores for the paper genotype), then COCO-evaluated on val.

Reports, per architecture, its set, proxy reward per seed, AP/AP50 and the seconds of each;
Kendall tau between mean proxy reward and AP (and AP50) for each reward form, on the test set,
the tuning set and both, each with a 95% bootstrap interval over architectures and a one-sided
permutation p-value (``nasfcos.search.metrics.kendall_tau_stats``), and between the two proxy
seeds.  Only architectures with both a proxy row and a training row count (the report says how
many of each set are done).  Training rows go to ``WORK/train*.jsonl`` (one file per
``--shard``, so two 1-thread processes can share 2 cores), proxy rows to
``WORK/proxy-<settings hash>.jsonl``; rows are keyed by genotype hash, so both sets share one
work folder; processes of one ``--shard K/N`` set claim architectures as they go
(``WORK/claims``); a killed run continues where it stopped, and rows made with another recipe
or other proxy settings are refused, not mixed in.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from nasfcos.cli.args import seed_range
from nasfcos.compiler import CompileOptions, compile_genotype
from nasfcos.fcos.synth import PRESETS as SYNTH_PRESETS
from nasfcos.fcos.synth import SynthConfig, write_synthetic
from nasfcos.fcos.train import TrainConfig, apply_preset, train
from nasfcos.genotypes import Genotype, load_paper_genotype, parse_genotype, sample_genotype
from nasfcos.io import atomic_write_text
from nasfcos.search.metrics import kendall_tau, kendall_tau_stats
from nasfcos.search.proxy import PRESETS, ProxySettings, build_cache, evaluate, open_cache

#: Reward forms ranked from the kept meta-val losses: every non-empty subset of the three
#: (ProxySettings.reward takes any of them).  Pre-registered choice rule: the shipped preset uses
#: the form with the highest tau against AP on the tuning set (ties: the longer form, then the
#: preset's current one); the test set is reported after that choice, not used for it.
FORMS: tuple[str, ...] = ("cls+box+ctr", "cls+box", "cls+ctr", "box+ctr", "cls", "box", "ctr")


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


#: The sets, in report order.
SETS: tuple[str, ...] = ("tuning", "test")


def architecture_sets(tuning_seeds: list[int], test_seeds: list[int]) -> dict[str, list[Genotype]]:
    """``{"tuning": shipped + random(tuning_seeds) + weak, "test": random(test_seeds)}``.

    Raises ``ValueError`` when the test set is not held out: a seed in both lists, or a test
    seed whose genotype equals one of the tuning set (same canonical hash)."""
    both = sorted(set(tuning_seeds) & set(test_seeds))
    if both:
        raise ValueError(f"seed {both[0]} is in both the tuning and the test set")
    shipped = [load_paper_genotype("nas_fcos_fpn"), load_paper_genotype("nas_fcos_fpn_head")]
    tuning = shipped + [sample_genotype(s, "dag", name=f"random-{s}") for s in tuning_seeds] + weak_genotypes()
    seen = {g.hash(): g.name for g in tuning}
    test = []
    for s in test_seeds:
        g = sample_genotype(s, "dag", name=f"random-{s}")
        if g.hash() in seen:
            raise ValueError(f"test seed {s} samples the tuning set's {seen[g.hash()]} (same genotype)")
        seen[g.hash()] = g.name
        test.append(g)
    return {"tuning": tuning, "test": test}


def recipe(a: argparse.Namespace) -> dict[str, Any]:
    """What decides a training row (rows made otherwise are not mixed in)."""
    return {"iters": a.iters, "fpn_channels": a.fpn_width, "head_channels": a.head_width, "preset": "synth",
            "data": "easy", "seed": 0}


def read_rows(paths: list[Path], key: dict[str, Any], what: str) -> dict[str, dict[str, Any]]:
    """hash -> row from JSON-lines files; refuses rows made with another ``key``."""
    rows: dict[str, dict[str, Any]] = {}
    for path in paths:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                sys.exit(f"error: {path}:{n}: not a JSON line (fix or delete it)")
            if r.get("key") != key:
                sys.exit(f"error: {path}:{n}: {what} row made with other settings ({r.get('key')}); "
                         f"use another --work")
            rows[r["hash"]] = r
    return rows


def append_row(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def claim(work: Path, g: Genotype, n: int) -> bool:
    """Whether this process trains ``g``: with one shard always; with several, the first live
    process to create ``WORK/claims/<hash>`` (made whole with its pid by a hard link; a dead
    owner's claim is taken over)."""
    if n == 1:
        return True
    path = work / "claims" / g.short_hash()
    path.parent.mkdir(exist_ok=True)
    mine = path.with_name(f"{path.name}.{os.getpid()}")
    mine.write_text(str(os.getpid()))
    try:
        for _ in range(2):
            try:
                os.link(mine, path)
                return True
            except FileExistsError:
                try:
                    owner = int(path.read_text())
                    os.kill(owner, 0)
                    return owner == os.getpid()
                except PermissionError:
                    return False  # alive, another user's
                except (ValueError, ProcessLookupError, FileNotFoundError):
                    path.unlink(missing_ok=True)  # its owner died: take it over
        return False
    finally:
        mine.unlink(missing_ok=True)


def real_training(g: Genotype, data: Path, work: Path, a: argparse.Namespace) -> dict[str, Any]:
    """Compile ``g`` as a tiny-trunk detector, train it with the yardstick recipe, COCO-evaluate on val."""
    model = work / "models" / f"{g.short_hash()}.py"
    model.parent.mkdir(exist_ok=True)
    model.write_text(compile_genotype(g, CompileOptions(fpn_channels=a.fpn_width, head_channels=a.head_width,
                                                        num_classes=a.num_classes, detector=True,
                                                        backbone="tiny")))
    cfg = apply_preset(TrainConfig(model=str(model), out=str(work / "runs" / g.short_hash()), data=str(data)),
                       "synth")
    if Path(cfg.out).is_dir():  # a killed run (it has no row): start it again, so every row is one run
        shutil.rmtree(cfg.out)
    cfg = dataclasses.replace(cfg, iters=a.iters, workers=0, seed=0, log_every=max(1, a.iters // 10))
    t0 = time.perf_counter()
    c0 = time.process_time()
    summary = train(cfg, progress=False)
    ev = summary.get("eval") or {}
    return {"AP": ev.get("AP"), "AP50": ev.get("AP50"), "train_s": round(time.perf_counter() - t0, 1),
            "train_cpu_s": round(time.process_time() - c0, 1), "final_loss": (summary.get("final") or {}).get("loss")}


def proxy_settings(a: argparse.Namespace) -> ProxySettings:
    settings = PRESETS["tiny"]
    types = {f.name: f.type for f in dataclasses.fields(ProxySettings)}
    changes: dict[str, Any] = {}
    for item in a.proxy_set:
        name, sep, value = item.partition("=")
        if not sep or name not in types:
            sys.exit(f"error: --proxy-set {item!r}: want FIELD=VALUE with a ProxySettings field")
        old = getattr(settings, name)
        try:
            changes[name] = None if value == "none" else type(old)(value) if old is not None else json.loads(value)
        except ValueError:
            sys.exit(f"error: --proxy-set {item!r}: {value!r} is not a valid value of {name}")
    return settings.replace(**changes).validate() if changes else settings


def form_score(row: dict[str, Any], form: str, failure_reward: float) -> float:
    """Mean over seeds of minus the sum of ``form``'s meta-val losses (a seed whose losses are
    not all finite scores ``failure_reward``, as in the search)."""
    per_seed = [-sum(lo[t] for t in form.split("+")) if all(math.isfinite(v) for v in lo.values())
                else failure_reward for lo in row["losses"]]
    return statistics.mean(per_seed)


def taus(rows: list[dict[str, Any]], target: str, failure_reward: float) -> dict[str, dict[str, Any]]:
    """Per reward form: Kendall tau of the proxy's score against ``target`` with its bootstrap
    interval and permutation p-value (:func:`kendall_tau_stats`)."""
    return {form: kendall_tau_stats([form_score(r, form, failure_reward) for r in rows], [r[target] for r in rows])
            for form in FORMS}


def choose_form(tuning: dict[str, dict[str, Any]], current: str) -> str:
    """The pre-registered rule (see :data:`FORMS`) applied to the tuning set's taus against AP."""
    return max(FORMS, key=lambda f: (tuning[f]["tau"], len(f.split("+")), f == current))


def _tau_text(st: dict[str, Any]) -> str:
    if st["tau"] is None:
        return "-"
    ci = f" [{st['lo']:.2f}, {st['hi']:.2f}]" if st["lo"] is not None else ""
    return f"{st['tau']:.3f}{ci} (p {st['p']})" if st["p"] is not None else f"{st['tau']:.3f}{ci}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="work folder (data, cache, rows; reused)")
    ap.add_argument("--tuning-seeds", type=seed_range, default=None, metavar="SEEDS",
                    help="sampler seeds of the tuning set's random architectures, e.g. 0-9 (the default) or 0,3,7")
    ap.add_argument("--random", type=int, default=None, metavar="N",
                    help="same as --tuning-seeds 0-(N-1) (default 10: 16 tuning architectures in all)")
    ap.add_argument("--test-seeds", type=seed_range, default=[], metavar="SEEDS",
                    help="sampler seeds of the held-out test set, e.g. 100-115 (none by default)")
    ap.add_argument("--sets", default=None, metavar="tuning,test",
                    help="sets to run and report (default: tuning, and test when --test-seeds is given); "
                         "choose --proxy-set values with --sets tuning only")
    ap.add_argument("--seeds", type=seed_range, default=[0, 1], help="proxy seeds (default 0,1)")
    ap.add_argument("--iters", type=int, default=1200, help="real-training iterations (default 1200)")
    ap.add_argument("--fpn-width", type=int, default=32)
    ap.add_argument("--head-width", type=int, default=64)
    ap.add_argument("--proxy-set", action="append", default=[], metavar="FIELD=VALUE",
                    help="change a field of the tiny proxy preset (repeatable), e.g. backbone_weights=tiny_synth_1500")
    ap.add_argument("--skip-training", action="store_true", help="proxy scores only")
    ap.add_argument("--skip-proxy", action="store_true", help="real training only")
    ap.add_argument("--shard", default="0/1",
                    help="K/N: this is process K of N sharing the work folder (they claim architectures)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    seeds = a.seeds
    if a.random is not None and a.tuning_seeds is not None:
        sys.exit("error: give --random N or --tuning-seeds, not both")
    if a.random is not None and a.random < 0:
        sys.exit(f"error: --random {a.random}: want N >= 0")
    tuning_seeds = a.tuning_seeds if a.tuning_seeds is not None else list(range(10 if a.random is None else a.random))
    sets = [x.strip() for x in (a.sets or ("tuning,test" if a.test_seeds else "tuning")).split(",") if x.strip()]
    bad = [x for x in sets if x not in SETS]
    if bad or not sets:
        sys.exit(f"error: --sets {a.sets!r}: want a comma list of {', '.join(SETS)}")
    if "test" in sets and not a.test_seeds:
        sys.exit("error: --sets test needs --test-seeds (e.g. 100-115)")
    try:
        by_set = architecture_sets(tuning_seeds, a.test_seeds)
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    try:
        k, n = (int(v) for v in a.shard.split("/"))
    except ValueError:
        sys.exit(f"error: --shard {a.shard!r}: want K/N")
    if not 0 <= k < n:
        sys.exit(f"error: --shard {a.shard!r}: want 0 <= K < N")
    if n > 1 and not a.skip_proxy:
        sys.exit("error: with --shard K/N (N > 1) pass --skip-proxy: run the proxy part in one process "
                 "(--skip-training) so the data, the cache and the proxy rows are written once")
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    settings = proxy_settings(a)
    data = work / "easy"
    if not (data / "val.json").is_file():
        write_synthetic(data, SynthConfig(**SYNTH_PRESETS["easy"], seed=settings.synth_seed))
    a.num_classes = len(json.loads((data / "train.json").read_text())["categories"])
    archs = [g for name in SETS if name in sets for g in by_set[name]]
    set_of = {g.hash(): name for name in SETS for g in by_set[name]}
    t_key = recipe(a)
    # the reward form and scale only combine the kept losses: rows of every form share one key
    p_key = {"settings": {k: v for k, v in settings.to_dict().items() if k not in ("reward", "reward_scale")},
             "seeds": seeds}
    p_tag = hashlib.sha256(json.dumps(p_key, sort_keys=True).encode()).hexdigest()[:10]
    p_path = work / f"proxy-{p_tag}.jsonl"
    t_path = work / f"train-{k}of{n}.jsonl"
    trained = read_rows(sorted(work.glob("train-*.jsonl")), t_key, "training")
    scored = read_rows([p_path] if p_path.is_file() else [], p_key, "proxy")
    changed = {f: v for f, v in settings.to_dict().items() if v != PRESETS["tiny"].to_dict()[f]}
    print(f"{len(archs)} architectures ({', '.join(f'{x} {len(by_set[x])}' for x in sets)}); proxy tiny preset{' with ' + json.dumps(changed) if changed else ''}, "
          f"seeds {seeds} -> {p_path.name}; training {a.iters} iters (shard {k}/{n}); work {work}",
          file=sys.stderr, flush=True)
    if not a.skip_proxy:
        t0 = time.perf_counter()
        cache = open_cache(build_cache(data, work / f"cache-{p_tag}", settings, progress=False), settings)
        print(f"cache ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        for g in archs:
            if g.hash() in scored:
                continue
            t = time.perf_counter()
            results = [evaluate(g, cache, settings, s) for s in seeds]
            row = {"name": g.name, "hash": g.hash(), "key": p_key, "proxy": [round(r.reward, 5) for r in results],
                   "losses": [{p: round(v, 5) for p, v in r.losses.items()} for r in results],
                   "proxy_s_per_seed": round((time.perf_counter() - t) / len(seeds), 2)}
            append_row(p_path, row)
            scored[row["hash"]] = row
            print(f"proxy {g.name:<28} {row['proxy']}  ({row['proxy_s_per_seed']} s/seed)", file=sys.stderr,
                  flush=True)
    if not a.skip_training:
        for g in archs:
            # re-read first: a process of the same set may have finished it since we started
            trained = read_rows(sorted(work.glob("train-*.jsonl")), t_key, "training")
            if g.hash() in trained or not claim(work, g, n):
                continue
            row = {"name": g.name, "hash": g.hash(), "key": t_key, **real_training(g, data, work, a)}
            append_row(t_path, row)
            trained[row["hash"]] = row
            print(f"train {g.name:<28} AP {_num(row, 'AP')}  AP50 {_num(row, 'AP50')}  ({row['train_s']} s)",
                  file=sys.stderr, flush=True)
    return report(archs, set_of, scored, trained, seeds, a, changed, settings)


def _num(row: dict[str, Any], key: str) -> str:
    return "-" if row.get(key) is None else f"{row[key]:.4f}"


def report(archs: list[Genotype], set_of: dict[str, str], scored: dict[str, dict[str, Any]],
           trained: dict[str, dict[str, Any]], seeds: list[int], a: argparse.Namespace,
           changed: dict[str, Any], settings: ProxySettings) -> int:
    rows = [{k: v for k, v in {**scored.get(g.hash(), {}), **trained.get(g.hash(), {})}.items() if k != "key"}
            | {"name": g.name, "set": set_of[g.hash()]} for g in archs]
    prox = [r for r in rows if "proxy" in r]
    groups = [x for x in SETS if any(r["set"] == x for r in rows)]
    if len(groups) > 1:
        groups.append("both")
    result: dict[str, Any] = {
        "benchmark": "proxy_fidelity", "architectures": len(archs), "scored": len(prox), "trained":
        sum(r.get("AP") is not None for r in rows), "seeds": seeds, "iters": a.iters, "proxy_changes": changed,
        "tau_seed_to_seed": round(kendall_tau(*([form_score({"losses": r["losses"][i:i + 1]}, settings.reward,
                                                              settings.failure_reward) for r in prox]
                                                for i in (0, 1))), 3)
        if len(seeds) > 1 and len(prox) > 1 else None,
        "proxy_s_per_arch": round(statistics.mean(r["proxy_s_per_seed"] * len(seeds) for r in prox), 2)
        if prox else None,
        "train_s_per_arch": round(statistics.mean(r["train_s"] for r in rows if "train_s" in r), 1)
        if any("train_s" in r for r in rows) else None,
        "reward": settings.reward, "sets": {},
    }
    for name in groups:
        members = [r for r in rows if name in ("both", r["set"])]
        done = [r for r in members if "proxy" in r and r.get("AP") is not None]
        entry: dict[str, Any] = {"architectures": len(members), "done": len(done),
                                 "remaining": [r["name"] for r in members if r not in done]}
        if len(done) > 1:
            entry["tau_proxy_AP"] = taus(done, "AP", settings.failure_reward)
            entry["tau_proxy_AP50"] = taus(done, "AP50", settings.failure_reward)
        result["sets"][name] = entry
    result["rows"] = rows
    print(f"\n{'architecture':<28} {'set':<7} {'proxy per seed':<20} {'cls':>6} {'box':>6} {'ctr':>6} {'AP':>7} "
          f"{'AP50':>7} {'proxy s':>8} {'train s':>8}")
    for r in rows:
        mean_l = {p: statistics.mean(lo[p] for lo in r["losses"]) for p in ("cls", "box", "ctr")} if "losses" in r \
            else {}
        print(f"{r['name']:<28} {r['set']:<7} {', '.join(f'{v:.3f}' for v in r.get('proxy', [])):<20} "
              + " ".join(f"{mean_l[p]:>6.3f}" if mean_l else f"{'-':>6}" for p in ("cls", "box", "ctr"))
              + f" {_num(r, 'AP'):>7} {_num(r, 'AP50'):>7} {r.get('proxy_s_per_seed', 0) * len(seeds):>8.1f} "
              f"{r.get('train_s', 0):>8.1f}")
    form = settings.reward
    print(f"\nKendall tau of the search's reward -({form}) vs AP / AP50, 95% bootstrap interval, one-sided "
          "permutation p:")
    for name, entry in result["sets"].items():
        st = entry.get("tau_proxy_AP")
        print(f"  {name:<7} {entry['done']:>2}/{entry['architectures']:<2} done: "
              + (f"AP {_tau_text(st[form])};  AP50 {_tau_text(entry['tau_proxy_AP50'][form])}" if st
                 else "too few architectures done"))
    tuning = result["sets"].get("tuning", {})
    if tuning.get("tau_proxy_AP") and not tuning["remaining"]:
        result["chosen_on_tuning"] = choose_form(tuning["tau_proxy_AP"], form)
        print("  tau vs AP per reward form (tuning | test): " + "; ".join(
            f"{f} {tuning['tau_proxy_AP'][f]['tau']:.3f} | "
            + (f"{result['sets']['test']['tau_proxy_AP'][f]['tau']:.3f}"
               if result["sets"].get("test", {}).get("tau_proxy_AP") else "-") for f in FORMS))
        print(f"  chosen on the tuning set (highest tau vs AP): -({result['chosen_on_tuning']})"
              + ("" if result["chosen_on_tuning"] == form else f"; the search's reward is -({form})"))
    print(f"  seed-to-seed (proxy, -({form})) {result['tau_seed_to_seed']}")
    line = json.dumps(result)
    print(line)
    if a.json:
        atomic_write_text(a.json, line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
