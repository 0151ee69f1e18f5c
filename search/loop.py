"""The search driver: sample a batch, evaluate it, archive it, update the controller, repeat.

One *step* samples ``batch_size`` architectures from the controller, evaluates those whose
canonical hash was never evaluated (a genotype seen before reuses its archived reward),
appends one archive row per sample, runs one PPO update on the batch and checkpoints.
Everything random is derived from the search seed: the controller's initial weights, the
sampling and minibatch generators (saved in the checkpoint) and each evaluation's seed
(:func:`eval_seed` of (seed, step, index)) -- so the local and Ray executors, and a search
resumed after ``kill -9``, write the same archive.

Resume: the checkpoint says how many steps are complete; the archive may also hold rows of
the step that was running.  The controller re-samples that step exactly (same state, same
generator), keeps the archived rows and evaluates only the missing samples.

Before the first trial a proxy search builds (or checks) its feature cache -- in ``out/cache``
unless ``cache`` names one, from the preset's synthetic set unless ``data`` names a folder --
and opens it here, so a configuration error stops it before any evaluation.  A step whose
every trial failed raises :class:`SearchFailed` (no checkpoint for that step); a resume
evaluates its failed trials again.  A resume checks the archive against the checkpoint
first (:func:`~nasfcos.search.archive.check_progress`) and rewrites nothing if they differ.
With a latency table every row records the predicted latency (``extra.latency_ms``) and
its proxy reward (``extra.proxy_reward``); with a target the reward is
:func:`~nasfcos.search.latency.latency_reward`.

Outputs in ``out``: ``archive.jsonl``, ``checkpoint.pt``, ``search.json`` (the settings a
resume must match), ``summary.json``, ``top/rankNN-<hash>.json`` (genotypes ``nasfcos
compile`` takes), ``search.png`` (reward per step + moving average), ``best.png``,
``pareto.png`` (with a latency table), ``cache/`` (unless ``cache`` is given).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from nasfcos.errors import CacheError, FieldError, NasfcosError, first_line
from nasfcos.genotypes import Genotype, parse_genotype
from nasfcos.io import atomic_write_json, atomic_write_text
from nasfcos.search.archive import (
    ARCHIVE_NAME,
    CHECKPOINT_NAME,
    CONFIG_NAME,
    ROW_FORMAT,
    Archive,
    ArchiveRow,
    best_rows,
    check_progress,
    load_checkpoint,
    save_checkpoint,
    sort_rows,
)
from nasfcos.search.controller import Controller, ControllerConfig, torch_threads
from nasfcos.search.evaluators import Evaluator, ToyEvaluator
from nasfcos.search.executors import Executor, Task, TaskResult, make_executor
from nasfcos.search.latency import (
    DEFAULT_LATENCY_WEIGHT,
    LatencyTable,
    latency_reward,
    load_table,
    pareto_front,
    predict_ms,
)
from nasfcos.search.ppo import PPO, PPOConfig

PRESETS: tuple[str, ...] = ("toy", "tiny", "paper")
SUMMARY_NAME = "summary.json"
TOP_DIR = "top"
PLOT_NAME = "search.png"
PARETO_PLOT = "pareto.png"
BEST_DRAWING = "best.png"
#: Feature cache of a proxy search that names none (``--cache``): built inside the search folder.
CACHE_DIR = "cache"
#: Keys of an evaluator's result that have their own archive field (the rest go to "extra").
_RESULT_FIELDS = frozenset({"reward", "losses", "time_s", "params", "extra", "genotype_hash"})


class SearchFailed(NasfcosError):
    """Every trial of a step failed: a cause that will not go away by itself (data, cache,
    code).  The folder stays resumable: fix the cause and run again with ``resume=True``.
    ``problem`` says what failed, without advice (a command names its own way on)."""

    def __init__(self, problem: str, out: Path) -> None:
        self.problem, self.out = problem, out
        super().__init__(f"{problem} -- fix the cause, then resume the search in {out}")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (a process pool or Ray task re-raises it)
        return (type(self), (self.problem, self.out))


@dataclass(frozen=True)
class SearchConfig:
    """What defines a search (stored in ``search.json``; a resume must match it).

    ``trials`` is a target, not part of the identity: a resumed search may raise it.  It is
    rounded up to whole steps of ``batch_size`` samples.
    """

    preset: str = "toy"
    trials: int = 64
    batch_size: int = 8
    seed: int = 0
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    retries: int = 1  # extra attempts of a failed evaluation before it is skipped
    data: str | None = None  # dataset folder (proxy presets; None: the preset's synthetic set)
    cache: str | None = None  # feature cache folder (proxy presets; None: OUT/cache, built on first use)
    backbone_weights: str | None = None  # frozen backbone's state_dict for the cache (None: the preset's)
    toy_noise: float = 0.0  # toy preset: reward noise (std), drawn from the evaluation seed
    toy_delay: float = 0.0  # toy preset: seconds each evaluation pretends to take
    latency_table: str | None = None  # per-unit latency table (nasfcos search latency-table)
    latency_target: float | None = None  # ms; folds predicted latency into the reward (needs a table)
    latency_weight: float = DEFAULT_LATENCY_WEIGHT  # w of reward - w * log(latency / target)
    latency_spec: dict[str, Any] | None = None  # what the table was measured for (set at the start)
    proxy: dict[str, Any] | None = None  # proxy presets: the preset's values (set at the start), so a
    # resume under a version whose preset changed is refused instead of mixing two proxies' rewards

    @property
    def steps(self) -> int:
        return math.ceil(self.trials / self.batch_size)

    def identity(self) -> dict[str, Any]:
        """The fields a resume must not change (``proxy`` with the settings added since it was
        recorded at their defaults, :func:`filled_proxy`)."""
        d = {k: v for k, v in asdict(self).items() if k not in ("trials", "retries")}
        return d | {"proxy": filled_proxy(self.proxy)}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchConfig:
        d = dict(d)
        d["controller"] = ControllerConfig(**d.get("controller", {}))
        d["ppo"] = PPOConfig(**d.get("ppo", {}))
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise CacheError(f"{CONFIG_NAME}: unknown settings {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def read(cls, path: Path) -> SearchConfig:
        """The settings stored in ``search.json``; :class:`CacheError` (one line) if unreadable."""
        if path.exists() and not path.is_file():
            raise CacheError(f"{path}: is not a regular file")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError, AttributeError, RecursionError) as exc:
            raise CacheError(f"{path}: unreadable search settings ({type(exc).__name__}: {exc})"[:300]) from None

    def validate(self) -> None:
        """One-line :class:`NasfcosError` naming the field on a wrong type or value (the one place
        these rules live: CLI flags, ``search.json`` read on ``--resume``, the Python API)."""
        for name, kinds in (("preset", (str,)), ("trials", (int,)), ("batch_size", (int,)), ("seed", (int,)),
                            ("retries", (int,)), ("toy_noise", (int, float)), ("toy_delay", (int, float)),
                            ("latency_weight", (int, float))):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, kinds):
                raise NasfcosError(f"search setting {name} must be {'a number' if float in kinds else kinds[0].__name__}"
                                   f", got {v!r}")
        if self.proxy is not None and not (isinstance(self.proxy, dict) and all(isinstance(k, str) for k in self.proxy)):
            raise NasfcosError(f"search setting proxy must be an object of proxy settings or null, got {self.proxy!r}"[:200])
        for name in ("data", "cache", "backbone_weights", "latency_table"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise NasfcosError(f"search setting {name} must be a path or null, got {getattr(self, name)!r}")
        if self.preset not in PRESETS:
            raise NasfcosError(f"unknown preset {self.preset!r} (expected one of: {', '.join(PRESETS)})")
        for name, low in (("trials", 1), ("batch_size", 1), ("retries", 0)):
            if getattr(self, name) < low:
                raise FieldError(name, f"must be at least {low}, got {getattr(self, name)}")
        for name in ("toy_noise", "toy_delay", "latency_weight"):  # numbers (checked above)
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise FieldError(name, f"must be a finite number >= 0, got {getattr(self, name)}")
        t = self.latency_target
        if t is not None:
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not (math.isfinite(t) and t > 0):
                raise FieldError("latency_target", f"must be a positive number of milliseconds, got {t}")
            if self.latency_table is None:
                raise FieldError("latency_table", "is needed with a latency target (a per-unit latency table)")


def eval_seed(seed: int, step: int, index: int) -> int:
    """Evaluation seed of sample ``index`` of ``step`` (31-bit, stable across platforms)."""
    h = hashlib.sha256(f"nasfcos-search:{seed}:{step}:{index}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def filled_proxy(proxy: dict[str, Any] | None) -> dict[str, Any] | None:
    """Recorded proxy settings with any setting added since at its default (a new setting's
    default is the behaviour from before it existed)."""
    if proxy is None:
        return None
    from nasfcos.search.proxy import ProxySettings

    return ProxySettings().to_dict() | proxy


def proxy_settings(cfg: SearchConfig) -> Any:
    """The proxy settings of a proxy search: its preset, with ``backbone_weights`` if given."""
    from nasfcos.search.proxy import get_preset

    settings = get_preset(cfg.preset)
    if cfg.backbone_weights is not None:
        settings = settings.replace(backbone_weights=cfg.backbone_weights)
    return settings


def make_evaluator(cfg: SearchConfig, cache_dir: str | Path) -> Evaluator:
    """The evaluator of a preset: the toy task, or the proxy task's own evaluator
    (:func:`nasfcos.search.proxy.make_evaluator`: opens and verifies ``cache_dir`` once
    per process)."""
    if cfg.preset == "toy":
        return ToyEvaluator(noise=cfg.toy_noise, delay_s=cfg.toy_delay)
    from nasfcos.search.proxy import make_evaluator as proxy_evaluator

    return proxy_evaluator(cache_dir, proxy_settings(cfg))


@dataclass
class StepLog:
    """What happened in one step (returned by :meth:`Search.run` via ``Search.history``)."""

    step: int
    rewards: list[float]
    evaluated: int
    reused: int
    failed: int
    ppo: dict[str, Any]


class Search:
    """A search in folder ``out`` (see the module docstring).

    ``evaluator`` and ``executor`` default to the preset's evaluator and a local executor of
    ``workers`` processes (0: in this process).  ``search.png`` and ``best.png`` are redrawn
    at most every ``plot_every_s`` seconds and at the end (``None``: never).  ``on_step`` is
    called after each completed step.
    """

    def __init__(self, out: str | Path, cfg: SearchConfig, *, resume: bool = False,
                 evaluator: Evaluator | None = None, executor: Executor | None = None,
                 executor_kind: str = "local", workers: int | None = None, address: str | None = None,
                 cpus_per_trial: float = 1, gpus_per_trial: float = 0,
                 top_k: int = 5, progress: bool = True, plot_every_s: float | None = 60.0,
                 on_step: Callable[[StepLog], None] | None = None,
                 latency_check: dict[str, Any] | None = None) -> None:
        cfg.validate()
        self.latency: LatencyTable | None = None
        if cfg.latency_table is not None:
            self.latency = load_table(cfg.latency_table)
            self.latency.check_for(**(latency_check or {}), where=f"latency table {cfg.latency_table}")
            have = self.latency.spec.key()
            if cfg.latency_spec is None:
                cfg = dataclasses.replace(cfg, latency_spec=have)
            elif cfg.latency_spec != have:
                diff = next(k for k in have if have[k] != cfg.latency_spec.get(k))
                raise NasfcosError(f"latency table {cfg.latency_table} was measured for {diff} "
                                   f"{have[diff]}, this search for {cfg.latency_spec.get(diff)}")
        if cfg.preset != "toy":
            current = proxy_settings(cfg).to_dict()
            if cfg.proxy is None:
                cfg = dataclasses.replace(cfg, proxy=current)
            elif (stored := filled_proxy(cfg.proxy)) != current:
                fields = sorted(k for k in current if stored.get(k) != current[k]) or ["proxy"]
                raise NasfcosError(f"the {cfg.preset} proxy preset changed ({', '.join(fields[:4])}) since this "
                                   "search began (its rewards would mix two proxies); start a new search folder")
        self.out = Path(out)
        self.resume = resume
        self.top_k = top_k
        self.progress = progress
        self.plot_every_s = plot_every_s
        self.on_step = on_step
        self.history: list[StepLog] = []
        self.cfg = self._settle_config(cfg)
        self.cache_dir = Path(self.cfg.cache) if self.cfg.cache else self.out / CACHE_DIR
        self._own_evaluator = evaluator is None
        self.evaluator = evaluator or make_evaluator(self.cfg, self.cache_dir)
        self._executor = executor
        if executor_kind != "ray" and (cpus_per_trial != 1 or gpus_per_trial):
            raise FieldError("executor", "CPUs and GPUs per trial are Ray task resources: use the ray executor")
        self._new_executor = functools.partial(make_executor, executor_kind, workers=workers, address=address,
                                               cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial)
        self.controller = Controller(self.cfg.controller, seed=self.cfg.seed)
        self.ppo = PPO(self.controller, self.cfg.ppo, seed=self.cfg.seed + 1)
        self.sample_gen = torch.Generator().manual_seed(self.cfg.seed)
        self.step = 0
        self.wall_before = 0.0  # wall seconds of earlier sessions (from the checkpoint)

    # ------------------------------------------------------------------------------------
    def _settle_config(self, cfg: SearchConfig) -> SearchConfig:
        path = self.out / CONFIG_NAME
        if self.out.exists() and not self.out.is_dir():
            raise FieldError("out", f"{self.out}: exists and is not a folder")
        if path.exists() and not path.is_file():
            raise CacheError(f"{path}: is not a regular file")
        has_state = (self.out / ARCHIVE_NAME).exists() and (self.out / ARCHIVE_NAME).stat().st_size > 0
        has_state = has_state or (self.out / CHECKPOINT_NAME).exists()
        if has_state and not self.resume:
            raise FieldError("resume", f"{self.out} already holds a search: resume it, or choose another folder")
        if not self.resume or not path.exists():
            if has_state:
                raise CacheError(f"{path}: missing; cannot resume this search")
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, cfg.to_dict())
            return cfg
        stored = SearchConfig.read(path)
        a, b = stored.identity(), cfg.identity()
        if a != b:
            diff = sorted(k for k in a if a[k] != b.get(k))
            raise FieldError("resume", f"settings differ from the stored search ({', '.join(diff)}); see {path}")
        merged = dataclasses.replace(stored, trials=cfg.trials, retries=cfg.retries)
        atomic_write_json(path, merged.to_dict())
        return merged

    def _load_checkpoint(self) -> None:
        path = self.out / CHECKPOINT_NAME
        if not path.exists():
            return
        state = load_checkpoint(path)
        try:
            stored = SearchConfig.from_dict(json.loads(state["config"])).identity()
        except (KeyError, TypeError, ValueError, NasfcosError):
            raise CacheError(f"{path}: checkpoint without readable search settings") from None
        if stored != self.cfg.identity():
            raise CacheError(f"{path}: checkpoint of another search (settings differ from {CONFIG_NAME})")
        self.ppo.load_state_dict(state["ppo"])
        self.sample_gen.set_state(state["sample_generator"])
        self.step = int(state["step"])
        self.wall_before = float(state.get("wall_s", 0.0))

    def _save_checkpoint(self, wall_s: float) -> None:
        save_checkpoint(self.out / CHECKPOINT_NAME, {
            "step": self.step,
            "ppo": self.ppo.state_dict(),
            "sample_generator": self.sample_gen.get_state(),
            "wall_s": wall_s,
            "config": json.dumps(self.cfg.to_dict(), sort_keys=True),
        })

    # ------------------------------------------------------------------------------------
    def _row(self, step: int, index: int, g: Genotype, h: str, choices: list[int], log_prob: float,
             **fields: Any) -> dict[str, Any]:
        row: dict[str, Any] = {
            "format": ROW_FORMAT, "step": step, "index": index,
            "trial": step * self.cfg.batch_size + index, "seed": eval_seed(self.cfg.seed, step, index),
            "hash": h, "genotype": g.to_dict(with_meta=False), "choices": choices,
            "log_prob": log_prob, "status": "ok", "reward": None, "losses": {}, "time_s": 0.0,
            "params": None, "worker": "", "attempts": 0, "errors": [], "reused_from": None,
            "extra": {}, "recorded_at": round(time.time(), 3),
        }
        row.update(fields)
        return row

    def _say(self, msg: str) -> None:
        if self.progress:
            print(f"nasfcos search: {msg}", file=sys.stderr)

    def prepare(self) -> None:
        """Before the first trial: for a proxy preset, generate the synthetic set and build
        the feature cache (or check the ones there), then open and verify it in this process,
        so a configuration error stops the search before any evaluation."""
        if self.cfg.preset == "toy" or not self._own_evaluator:
            return
        from nasfcos.search.proxy import build_cache, open_verified

        settings = proxy_settings(self.cfg)
        if self.cfg.data is not None and not Path(self.cfg.data).is_dir():
            raise FieldError("data", f"{self.cfg.data}: no such folder")
        self._say(f"feature cache {self.cache_dir} ({self.cfg.preset} preset"
                  f"{', synthetic data' if self.cfg.data is None else ', data ' + self.cfg.data})")
        build_cache(self.cfg.data, self.cache_dir, settings, progress=self.progress, log=self._say)
        cache = open_verified(self.cache_dir, settings, checked=True)
        self._say(f"feature cache ready: {len(cache.train)} meta-train, {len(cache.val)} meta-val crops")

    def _open_archive(self) -> Archive:
        """Open the archive; on resume, check it against the checkpoint first (nothing is
        written when it does not match) and drop the failed rows of the unfinished step,
        which are evaluated again."""
        path = self.out / ARCHIVE_NAME
        archive = Archive.open(path, check=lambda rows: check_progress(rows, self.step, self.cfg.batch_size, path))
        if archive.repaired_bytes:
            print(f"nasfcos search: dropped a torn last archive line ({archive.repaired_bytes} bytes)",
                  file=sys.stderr)
        retry = {r.key for r in archive if r.step >= self.step and r.status == "failed"}
        if retry and archive.drop(retry):
            self._say(f"evaluating {len(retry)} failed trial(s) of step {self.step} again")
        return archive

    def run(self) -> dict[str, Any]:
        """Run (or continue) the search to ``cfg.steps`` steps; return the summary dict."""
        if self.resume:
            self._load_checkpoint()
        archive = self._open_archive()
        executor = self._executor
        own_executor = executor is None
        t_start = time.time()
        self._evals_session = 0
        self._last_plot = t_start
        self._best_drawn: str | None = None
        bar = None
        try:
            self.prepare()
            if executor is None:
                executor = self._new_executor(self.evaluator)
            bar = self._progress_bar(len(archive))
            while self.step < self.cfg.steps:
                log = self._run_step(archive, executor, bar, t_start)
                self.history.append(log)
                self.step += 1
                self._save_checkpoint(self.wall_before + time.time() - t_start)
                self._outputs(archive, t_start, final=False)
                if self.on_step is not None:
                    self.on_step(log)
            return self._outputs(archive, t_start, final=True)
        finally:
            if bar is not None:
                bar.close()
            if own_executor and executor is not None:
                executor.close()
            archive.close()

    def _progress_bar(self, done: int) -> Any:
        from tqdm import tqdm

        from nasfcos.progress import progress_bar

        total = self.cfg.steps * self.cfg.batch_size
        if not self.progress:
            return tqdm(total=total, disable=True)
        return progress_bar(total, initial=min(done, total), unit="arch", desc="search")

    def _run_step(self, archive: Archive, executor: Executor, bar: Any, t_start: float) -> StepLog:
        step, n = self.step, self.cfg.batch_size
        with torch_threads(1):
            samples = self.controller.sample(n, self.sample_gen)
        cache = archive.rewarded()
        choices = [list(map(int, c)) for c in samples.choices.tolist()]
        log_probs = [float(x) for x in samples.log_probs.tolist()]
        rows, genos = self._recorded_or_new(archive, step, choices, log_probs)
        first_of: dict[str, int] = {}  # evaluate each new hash once; later samples of it reuse the reward
        for i, (g, h) in sorted(genos.items()):
            if h in cache:
                rows[i] = archive.append(self._reused_row(step, i, g, h, choices[i], log_probs[i], cache[h]))
                bar.update(1)
            elif first_of.setdefault(h, i) == i:
                executor.submit(Task(step, i, eval_seed(self.cfg.seed, step, i), g.to_dict(with_meta=False)))
        errors: dict[int, list[str]] = {}
        while executor.pending():
            res = executor.wait_one()
            i = res.task.index
            if not res.ok:
                errors.setdefault(i, []).append(str(res.error))
                if res.task.attempt <= self.cfg.retries:
                    executor.submit(dataclasses.replace(res.task, attempt=res.task.attempt + 1))
                    continue
            g, h = genos[i]
            rows[i] = archive.append(self._evaluated_row(step, i, g, h, choices[i], log_probs[i], res,
                                                         errors.get(i, [])))
            if rows[i].status == "ok":
                cache[h] = rows[i]
                self._evals_session += 1
            bar.update(1)
            self._postfix(bar, archive, t_start)
        for i, (g, h) in sorted(genos.items()):
            if i in rows:
                continue
            src = rows[first_of[h]]
            if src.status == "ok":
                row = self._reused_row(step, i, g, h, choices[i], log_probs[i], src)
            else:
                row = self._row(step, i, g, h, choices[i], log_probs[i], status="failed",
                                errors=[f"same genotype as failed sample {first_of[h]}"], worker="driver")
            rows[i] = archive.append(row)
            bar.update(1)
        archive.sort()
        use = [i for i in range(n) if rows[i].reward is not None]  # ok or reused
        if not use:
            raise SearchFailed(_all_failed_problem(step, [rows[i] for i in range(n)]), self.out)
        rewards = [float(rows[i].reward) for i in use]  # type: ignore[arg-type]
        with torch_threads(1):
            stats = self.ppo.update([choices[i] for i in use], [log_probs[i] for i in use], rewards)
        self._postfix(bar, archive, t_start)
        status = [rows[i].status for i in range(n)]
        return StepLog(step=step, rewards=rewards, evaluated=status.count("ok"), reused=status.count("reused"),
                       failed=status.count("failed"), ppo=stats.to_dict())

    def _recorded_or_new(self, archive: Archive, step: int, choices: list[list[int]], log_probs: list[float]
                         ) -> tuple[dict[int, ArchiveRow], dict[int, tuple[Genotype, str]]]:
        """The rows of this step already recorded (a resume: their samples replace the fresh
        ones in ``choices`` / ``log_probs``), and the genotype and hash of every other sample."""
        existing = archive.keyed()
        rows: dict[int, ArchiveRow] = {}
        genos: dict[int, tuple[Genotype, str]] = {}
        for i in range(len(choices)):
            old = existing.get((step, i))
            if old is None:
                g = self.controller.genotype(choices[i], name=f"search-s{step}-i{i}")
                genos[i] = (g, g.hash())
            elif old.choices is None or old.log_prob is None:
                raise CacheError(f"{archive.path}: row (step {step}, index {i}) lacks its sample "
                                 "('choices', 'log_prob'); it cannot be resumed")
            else:
                rows[i] = old
                choices[i], log_probs[i] = list(old.choices), old.log_prob
        return rows, genos

    def _reused_row(self, step: int, i: int, g: Genotype, h: str, choices: list[int], log_prob: float,
                    src: ArchiveRow) -> dict[str, Any]:
        return self._row(step, i, g, h, choices, log_prob, status="reused", reward=src.reward,
                         losses=src.losses, params=src.params, extra=src.extra, worker="driver",
                         reused_from=list(src.key))

    def _evaluated_row(self, step: int, i: int, g: Genotype, h: str, choices: list[int], log_prob: float,
                       res: TaskResult, errors: list[str]) -> dict[str, Any]:
        if res.ok and res.result is not None:
            r = res.result
            extra = dict(r.get("extra") or {})
            extra.update({k: v for k, v in r.items() if k not in _RESULT_FIELDS
                          and (v is None or isinstance(v, (int, float, str, bool)))})
            reward = float(r["reward"])
            if self.latency is not None:
                lat = predict_ms(g, self.latency)
                extra.update(latency_ms=round(lat, 5), proxy_reward=reward)
                if self.cfg.latency_target is not None:
                    reward = latency_reward(reward, lat, self.cfg.latency_target, self.cfg.latency_weight)
            row = self._row(step, i, g, h, choices, log_prob, status="ok", reward=reward,
                            losses={k: None if v is None else float(v)
                                    for k, v in dict(r.get("losses") or {}).items()},
                            time_s=float(r.get("time_s") or res.wall_s), params=r.get("params"),
                            extra=extra, worker=res.worker,
                            attempts=res.task.attempt, errors=errors)
            try:  # an unusable field fails this trial, not the search (nor its resume)
                ArchiveRow.from_json(row, "evaluator result")
                return row
            except CacheError as exc:
                errors = [*errors, first_line(exc)]
        return self._row(step, i, g, h, choices, log_prob, status="failed", time_s=res.wall_s,
                         worker=res.worker, attempts=res.task.attempt, errors=errors)

    def _postfix(self, bar: Any, archive: Archive, t_start: float) -> None:
        best = max((r.reward for r in archive if r.reward is not None), default=None)
        hours = max(time.time() - t_start, 1e-9) / 3600.0
        bar.set_postfix(step=self.step, best=None if best is None else f"{best:.4g}",
                        evals_h=f"{self._evals_session / hours:.0f}", refresh=False)

    # ------------------------------------------------------------------------------------
    def _outputs(self, archive: Archive, t_start: float, *, final: bool) -> dict[str, Any]:
        rows = archive.rows
        top = best_rows(rows, self.top_k)
        write_top(top, self.out / TOP_DIR, owned=True)
        session_s = time.time() - t_start
        summary = summarize(rows, self.cfg, wall_s=self.wall_before + session_s,
                            session_s=session_s, session_evals=self._evals_session, out=self.out)
        now = time.time()
        every = self.plot_every_s
        if every is not None and (final or now - self._last_plot >= every):
            self._last_plot = now
            from nasfcos.genotypes.draw import draw_genotype
            from nasfcos.search.plots import plot_pareto, plot_rewards

            if _convenience("plot", lambda: plot_rewards(rows, self.out / PLOT_NAME)):
                summary["plot"] = str(self.out / PLOT_NAME)
            if "pareto" in summary and _convenience("plot the Pareto front", lambda: plot_pareto(
                    pareto_points(rows), summary["pareto"]["front"], self.out / PARETO_PLOT,
                    target_ms=self.cfg.latency_target)):
                summary["pareto"]["plot"] = str(self.out / PARETO_PLOT)
            if top and top[0].hash != self._best_drawn and _convenience(
                    "draw the best genotype", lambda: draw_genotype(genotype_of_row(top[0]), self.out / BEST_DRAWING)):
                self._best_drawn = top[0].hash
        if (self.out / BEST_DRAWING).exists():
            summary["best_drawing"] = str(self.out / BEST_DRAWING)
        atomic_write_json(self.out / SUMMARY_NAME, summary)
        return summary


def _all_failed_problem(step: int, rows: list[ArchiveRow]) -> str:
    """One line: which step failed entirely and its most frequent error."""
    errors = [e for r in rows for e in r.errors]
    common = max(set(errors), key=errors.count) if errors else "no error recorded"
    return (f"every trial of step {step} failed ({len(rows)} of {len(rows)}); most frequent error: "
            f"{first_line(NasfcosError(common), 300)}")


# ------------------------------------------------------------------------------------------
# outputs shared by the driver and `nasfcos search top`
# ------------------------------------------------------------------------------------------
def genotype_of_row(row: ArchiveRow, rank: int | None = None) -> Genotype:
    """The genotype of an archive row, named ``search-<hash12>``, with provenance in ``meta``."""
    if row.genotype is None:
        raise CacheError(f"archive row (step {row.step}, index {row.index}) has no genotype")
    doc = dict(row.genotype)
    doc["name"] = f"search-{row.hash[:12]}"
    meta: dict[str, Any] = {
        "source": "nasfcos search", "reward": row.reward, "step": row.step,
        "index": row.index, "hash": row.hash, "losses": row.losses,
    }
    if rank is not None:
        meta["rank"] = rank
    doc["meta"] = meta
    return parse_genotype(doc)


#: The index of a top folder: the files (and export folders) ``write_top`` wrote there (the only
#: ones it replaces or removes; a user's own ``rank*-*.json`` beside them is left alone).
TOP_INDEX = "top.json"
TOP_FORMAT = "nasfcos-top/1"
_TOP_FILE = re.compile(r"rank\d{2,}-[0-9a-f]{12}(\.json|\.py)?")


def _indexed_files(out_dir: Path) -> set[str]:
    """Names recorded in ``out_dir/top.json`` (none when absent); a ``top.json`` that is not a
    top index (another program's, or unreadable) is refused rather than overwritten."""
    index = out_dir / TOP_INDEX
    if not index.exists() and not index.is_symlink():
        return set()
    try:
        if index.is_symlink() or not index.is_file():
            raise ValueError("not a regular file")
        doc = json.loads(index.read_text())
        if doc.get("format") == TOP_FORMAT:
            names = doc["files"]
        else:  # written before the index recorded its files: the listing's paths
            names = [Path(str(e["path"])).name for e in doc["top"]]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("files is not a list of names")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise NasfcosError(f"{index}: exists and is not a nasfcos top index ({first_line(exc)}); "
                           "choose another output folder") from None
    return {n for n in names if _TOP_FILE.fullmatch(n)}


def write_top(top: list[ArchiveRow], out_dir: Path, *, compile_options: Any = None,
              listing: dict[str, Any] | None = None, owned: bool = False,
              folders: bool = False) -> list[dict[str, Any]]:
    """Write ``rankNN-<hash12>.json`` for each row (and ``rankNN-<hash12>.py``, its compiled
    model, with ``compile_options``: :class:`nasfcos.compiler.CompileOptions`) and the index
    ``top.json`` (the files, the ranking, ``listing``'s entries).  ``folders``: the index also
    records a folder ``rankNN-<hash12>/`` per row, which the caller fills (an export).  Only files
    and folders of the previous index are replaced or removed; one of that name that the index
    does not record is refused before anything is written.  ``owned``: the folder is the search's
    own (``OUT/top``): its ``rank*-*`` files are this program's even without an index (older
    versions wrote none).  Returns the index's ranking (``top``)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise NasfcosError(f"{out_dir}: exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    ours = _indexed_files(out_dir)
    # export folders are replaced or removed only by a run that writes them (``folders``); any
    # other run keeps them, listed; an unlisted folder is never taken as ours
    kept = set() if folders else {n for n in ours if not Path(n).suffix}
    ours -= kept
    if owned:
        ours |= {p.name for p in out_dir.iterdir() if _TOP_FILE.fullmatch(p.name) and p.suffix}
    genos = [(k, row, genotype_of_row(row, rank=k)) for k, row in enumerate(top, 1)]
    names = {k: f"rank{k:02d}-{row.hash[:12]}" for k, row, _ in genos}
    exts = [".json"] + [".py"] * (compile_options is not None) + [""] * folders  # "": the export folder
    want = [f"{names[k]}{ext}" for ext in exts for k in names]
    for name in want:
        p = out_dir / name
        if (p.exists() or p.is_symlink()) and name not in ours:
            raise NasfcosError(f"{p}: exists and was not written by nasfcos search (not in {TOP_INDEX}); "
                               "move it or choose another output folder")
    sources = {}
    if compile_options is not None:
        from nasfcos.compiler import compile_genotype

        sources = {k: compile_genotype(g, compile_options) for k, _, g in genos}
    for k, _, g in genos:
        g.save(out_dir / f"{names[k]}.json")
        if k in sources:
            atomic_write_text(out_dir / f"{names[k]}.py", sources[k])
    entries = [{"rank": k, "reward": row.reward, "hash": row.hash, "step": row.step, "index": row.index,
                "losses": row.losses, "path": str(out_dir / f"{names[k]}.json"),
                **({"model": str(out_dir / f"{names[k]}.py")} if k in sources else {})} for k, row, _ in genos]
    stale = sorted(ours - set(want))
    doc = {"format": TOP_FORMAT, **(listing or {}), "top": entries}
    want += sorted(kept)
    atomic_write_json(out_dir / TOP_INDEX, {**doc, "files": want + stale})  # a crash below leaves them listed
    for name in stale:
        p = out_dir / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
    atomic_write_json(out_dir / TOP_INDEX, {**doc, "files": want})
    return entries


def _convenience(what: str, make: Callable[[], Path]) -> Path | None:
    """``make()`` (a plot or a drawing), or ``None`` after a one-line warning: a convenience
    must not stop the search."""
    try:
        return make()
    except Exception as exc:  # noqa: BLE001 - any failure of a plot is only a warning
        print(f"nasfcos search: warning: could not {what} ({exc})", file=sys.stderr)
        return None


def pareto_points(rows: list[ArchiveRow]) -> list[dict[str, Any]]:
    """One point per distinct evaluated genotype that has a predicted latency: hash, step,
    index, proxy reward, predicted latency (ms) and the search's reward."""
    seen: dict[str, dict[str, Any]] = {}
    for r in sort_rows(rows):
        if r.status != "ok" or "latency_ms" not in r.extra or r.hash in seen:
            continue
        seen[r.hash] = {"hash": r.hash, "step": r.step, "index": r.index,
                        "proxy_reward": float(r.extra.get("proxy_reward", r.reward)),
                        "latency_ms": float(r.extra["latency_ms"]), "reward": float(r.reward or 0.0)}
    return list(seen.values())


def summarize(rows: list[ArchiveRow], cfg: SearchConfig, *, wall_s: float, session_s: float, session_evals: int,
              out: Path) -> dict[str, Any]:
    """Machine-readable summary of a search (``summary.json``)."""
    ok = [r for r in rows if r.status == "ok"]
    d: dict[str, Any] = {
        "trials": len(rows),
        "evaluated": len(ok),
        "reused": sum(r.status == "reused" for r in rows),
        "failed": sum(r.status == "failed" for r in rows),
        "unique_genotypes": len({r.hash for r in rows}),
        "steps": len({r.step for r in rows}),
        "eval_time_s": round(sum(r.time_s for r in ok), 3),
        "best": next(({"reward": b.reward, "hash": b.hash, "step": b.step, "index": b.index, "losses": b.losses}
                      for b in best_rows(rows, 1)), None),
    }
    points = pareto_points(rows)
    if points:
        d["pareto"] = {"axes": ["proxy_reward (higher is better)", "latency_ms (predicted, lower is better)"],
                       "points": len(points), "front": pareto_front(points), "target_ms": cfg.latency_target}
    d.update(config=cfg.to_dict(), wall_s=round(wall_s, 3), session_wall_s=round(session_s, 3),
             session_evaluations=session_evals,
             evaluations_per_hour=round(session_evals / max(session_s, 1e-9) * 3600.0, 1),
             out=str(out), top_dir=str(out / TOP_DIR))
    return d
