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
* the proxy task's own evaluator, :class:`nasfcos.search.proxy.ProxyEvaluator` (decoder
  training on cached backbone features; opens and verifies its cache once per process).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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


def check_result(res: Any) -> dict[str, Any]:
    """Validate an evaluator's return value; raise ``ValueError`` when it is unusable."""
    if not isinstance(res, dict) or "reward" not in res:
        raise ValueError(f"evaluator returned {type(res).__name__}, expected a dict with 'reward'")
    r = res["reward"]
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(float(r)):
        raise ValueError(f"evaluator returned a non-finite reward {r!r}")
    return res
