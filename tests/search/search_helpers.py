"""Evaluators with injected faults, importable by spawned worker processes and Ray tasks."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasfcos.genotypes import Genotype
from nasfcos.search.evaluators import ToyEvaluator


def _first_time(marker_dir: str, key: str) -> bool:
    """True the first time ``key`` is seen (a marker file, so it works across processes)."""
    p = Path(marker_dir) / key
    try:
        fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


@dataclass(frozen=True)
class FlakyEvaluator:
    """Toy evaluator that raises on the first attempt of every seed in ``flaky_seeds``, and
    always raises for genotypes whose first FPN op is ``always_fail_op``."""

    marker_dir: str
    flaky_seeds: frozenset[int] = frozenset()
    always_fail_op: str | None = None

    def __call__(self, g: Genotype, seed: int) -> dict[str, Any]:
        if self.always_fail_op is not None and g.fpn[0].ops[0] == self.always_fail_op:
            raise RuntimeError("CUDA out of memory (injected)")
        if seed in self.flaky_seeds and _first_time(self.marker_dir, f"flaky-{seed}"):
            raise MemoryError("injected transient failure")
        return ToyEvaluator(noise=0.1)(g, seed)


@dataclass(frozen=True)
class DyingEvaluator:
    """Toy evaluator whose process dies (``os._exit``) the first time it sees ``die_seed``."""

    marker_dir: str
    die_seed: int

    def __call__(self, g: Genotype, seed: int) -> dict[str, Any]:
        if seed == self.die_seed and _first_time(self.marker_dir, f"die-{seed}"):
            os._exit(3)
        return ToyEvaluator(noise=0.1)(g, seed)
