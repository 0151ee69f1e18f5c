"""Evaluators: what the search calls to score one genotype.

An evaluator is a plain picklable callable (it travels to worker processes and Ray tasks)::

    Evaluator = Callable[[Genotype, int], dict]   # (genotype, seed) -> result

returning ``{"reward": float, "losses": {name: float}, "time_s": float, "params": int | None,
...}``; ``reward`` must be finite, and for the proxy task it is ``-(sum of losses)``.
Extra keys are kept in the archive under ``"extra"``.  The seed is derived by the search
from (search seed, step, sample index), so every executor gives the same results.

* :class:`ToyEvaluator` -- no training: reward = number of deformable convolutions on the
  genotype's live paths plus small structure terms; deterministic (optional seeded noise).
  Used by the tests and for trying the search machinery in seconds.
* :class:`ProxyEvaluator` -- adapter to the proxy task of ``nasfcos.search.proxy`` (decoder
  training on cached backbone features); imported lazily inside the worker.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nasfcos.errors import BackendUnavailable
from nasfcos.genotypes import BACKBONE_LEVELS, Genotype, fpn_graph

Evaluator = Callable[[Genotype, int], dict[str, Any]]

DEFORM = "deform_conv_3x3"


def toy_reward(g: Genotype) -> float:
    """Deterministic reward of the toy task, higher is better.

    ``count of deform_conv_3x3`` over the FPN ops and the head's live ops (canonical form:
    dead DAG-head ops do not count) ``+ 0.1 x fraction of FPN blocks using concat``
    ``+ 0.05 x fraction of backbone levels the FPN reads``.  Maximum for the DAG head:
    14 + 11 + 0.15.
    """
    c = g.canonical()
    ops = [op for b in c.fpn for op in b.ops]
    if c.head.kind == "sequential":
        ops += list(c.head.layers)
    elif c.head.kind == "dag":
        ops += [c.head.first_op or "skip"] + [op for b in c.head.blocks for op in b.ops]
    n_deform = sum(op == DEFORM for op in ops)
    concat = sum(b.agg == "concat" for b in c.fpn) / len(c.fpn)
    levels = len(fpn_graph(c.fpn).backbone_used) / len(BACKBONE_LEVELS)
    return float(n_deform) + 0.1 * concat + 0.05 * levels


@dataclass(frozen=True)
class ToyEvaluator:
    """Toy task (no training).  ``noise`` adds ``noise x N(0, 1)`` drawn from the seed;
    ``delay_s`` sleeps to imitate a slow evaluation (for demos and kill tests)."""

    noise: float = 0.0
    delay_s: float = 0.0

    def __call__(self, genotype: Genotype, seed: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        reward = toy_reward(genotype)
        if self.noise:
            reward += self.noise * random.Random(seed).gauss(0.0, 1.0)
        if self.delay_s > 0:
            time.sleep(self.delay_s)
        return {
            "reward": reward,
            "losses": {"toy": -reward},
            "time_s": time.perf_counter() - t0,
            "params": None,
        }


@dataclass
class ProxyEvaluator:
    """The proxy task (``nasfcos.search.proxy``): train the compiled decoder on cached
    backbone features and return ``-(sum of FCOS losses)``.

    ``preset`` is a proxy preset (``tiny`` or ``paper``); ``cache_dir`` the feature cache
    built by ``nasfcos search cache`` -- on shared storage when evaluations run on Ray
    workers, which open it by path.  ``data_dir`` is passed on for presets that need it.
    The opened cache is kept per process and never pickled.
    """

    preset: str = "tiny"
    cache_dir: str | None = None
    data_dir: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    _state: Any = field(default=None, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["_state"] = None
        return d

    def __setstate__(self, d: dict[str, Any]) -> None:
        self.__dict__.update(d)

    def _open(self) -> tuple[Any, Any, Any]:
        if self._state is None:
            try:
                from nasfcos.search import proxy
            except ImportError as exc:  # pragma: no cover - depends on issue 7
                raise BackendUnavailable(
                    f"the proxy evaluator (nasfcos.search.proxy) is not available: {exc}"
                ) from exc
            settings = _proxy_settings(proxy, self.preset, self.overrides)
            cache = _open_cache(self.cache_dir, settings)
            self._state = (proxy, settings, cache)
        return self._state

    def __call__(self, genotype: Genotype, seed: int) -> dict[str, Any]:
        proxy, settings, cache = self._open()
        settings = _with_seed(settings, seed)
        res = proxy.evaluate(genotype, cache, settings)
        return _result_dict(res)


def _proxy_settings(proxy: Any, preset: str, overrides: dict[str, Any]) -> Any:
    """Settings object of a proxy preset, via whichever helper ``proxy`` offers."""
    if hasattr(proxy, "preset_settings"):
        settings = proxy.preset_settings(preset)
    elif hasattr(proxy, "PRESETS"):
        settings = proxy.PRESETS[preset]
    elif hasattr(proxy, "ProxySettings") and hasattr(proxy.ProxySettings, "preset"):
        settings = proxy.ProxySettings.preset(preset)
    else:  # pragma: no cover - depends on issue 7
        raise BackendUnavailable("nasfcos.search.proxy offers no preset settings")
    if overrides:
        import dataclasses

        settings = dataclasses.replace(settings, **overrides)
    return settings


def _with_seed(settings: Any, seed: int) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(settings) and any(f.name == "seed" for f in dataclasses.fields(settings)):
        return dataclasses.replace(settings, seed=int(seed))
    return settings


def _open_cache(cache_dir: str | None, settings: Any) -> Any:
    from nasfcos.search import cache as cache_mod

    if cache_dir is None:
        raise BackendUnavailable("the proxy presets need a feature cache: pass --cache DIR "
                                 "(build one with 'nasfcos search cache')")
    for name in ("open_cache", "load_cache"):
        if hasattr(cache_mod, name):
            return getattr(cache_mod, name)(cache_dir)
    if hasattr(cache_mod, "FeatureCache"):
        fc = cache_mod.FeatureCache
        return fc.open(cache_dir) if hasattr(fc, "open") else fc(cache_dir)
    raise BackendUnavailable("nasfcos.search.cache offers no way to open a cache")  # pragma: no cover


def _result_dict(res: Any) -> dict[str, Any]:
    """Normalise an ``EvalResult`` (dataclass, object or dict) to the evaluator dict."""
    if isinstance(res, dict):
        d = dict(res)
    elif hasattr(res, "to_dict"):
        d = dict(res.to_dict())
    else:
        import dataclasses

        d = dataclasses.asdict(res) if dataclasses.is_dataclass(res) else dict(vars(res))
    out: dict[str, Any] = {
        "reward": float(d.pop("reward")),
        "losses": {k: float(v) for k, v in dict(d.pop("losses", None) or d.pop("loss_terms", None) or {}).items()},
        "time_s": float(d.pop("time_s", d.pop("time", 0.0)) or 0.0),
        "params": d.pop("params", None),
    }
    d.pop("genotype_hash", None)
    d.pop("hash", None)
    extra = {k: v for k, v in d.items() if isinstance(v, (int, float, str, bool)) or v is None}
    if extra:
        out["extra"] = extra
    return out


def check_result(res: Any) -> dict[str, Any]:
    """Validate an evaluator's return value; raise ``ValueError`` when it is unusable."""
    if not isinstance(res, dict) or "reward" not in res:
        raise ValueError(f"evaluator returned {type(res).__name__}, expected a dict with 'reward'")
    r = res["reward"]
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(float(r)):
        raise ValueError(f"evaluator returned a non-finite reward {r!r}")
    return res
