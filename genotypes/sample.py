"""Encode genotypes as decision sequences (the controller's view) and sample them uniformly."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from nasfcos.errors import GenotypeError
from nasfcos.genotypes.genotype import DEFAULT_NAME, Genotype, parse_genotype
from nasfcos.genotypes.space import (
    AGGS,
    FORMAT,
    FPN_OPS,
    HEAD_OPS,
    NUM_FPN_BLOCKS,
    NUM_HEAD_BLOCKS,
    NUM_LEVELS,
    SEQUENTIAL_HEAD_LAYERS,
    decisions,
)


def genotype_from_choices(
    choices: Sequence[int], head_kind: str = "dag", *, name: str = DEFAULT_NAME
) -> Genotype:
    """Build a genotype from one choice per :func:`~nasfcos.genotypes.space.decisions` entry."""
    seq = decisions(head_kind)
    if len(choices) != len(seq):
        raise GenotypeError(f"expected {len(seq)} choices for a '{head_kind}' head, got {len(choices)}")
    for d, c in zip(seq, choices, strict=True):
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < d.num_choices:
            raise GenotypeError(f"{d.name}: choice {c!r} out of range (0..{d.num_choices - 1})")
    it = iter(choices)

    def block(ops: tuple[str, ...]) -> dict[str, Any]:
        i0, i1, o0, o1, a = (next(it) for _ in range(5))
        return {"inputs": [i0, i1], "ops": [ops[o0], ops[o1]], "agg": AGGS[a]}

    fpn = [block(FPN_OPS) for _ in range(NUM_FPN_BLOCKS)]
    head: dict[str, Any]
    if head_kind == "dag":
        first = HEAD_OPS[next(it)]
        head = {"kind": "dag", "first_op": first, "blocks": [block(HEAD_OPS) for _ in range(NUM_HEAD_BLOCKS)]}
    elif head_kind == "sequential":
        head = {"kind": "sequential", "layers": [HEAD_OPS[next(it)] for _ in range(SEQUENTIAL_HEAD_LAYERS)]}
    else:
        head = {"kind": "fcos"}
    share = [next(it) for _ in range(NUM_LEVELS)]
    return parse_genotype({"format": FORMAT, "name": name, "fpn": fpn, "head": head, "share": share})


def choices_from_genotype(g: Genotype) -> list[int]:
    """Inverse of :func:`genotype_from_choices` (for the genotype's own head kind)."""
    out: list[int] = []

    def block(b: Any, ops: tuple[str, ...]) -> None:
        out.extend([b.inputs[0], b.inputs[1], ops.index(b.ops[0]), ops.index(b.ops[1]), AGGS.index(b.agg)])

    for b in g.fpn:
        block(b, FPN_OPS)
    if g.head.kind == "dag":
        out.append(HEAD_OPS.index(g.head.first_op or "skip"))
        for b in g.head.blocks:
            block(b, HEAD_OPS)
    elif g.head.kind == "sequential":
        out.extend(HEAD_OPS.index(op) for op in g.head.layers)
    out.extend(g.share)
    return out


def sample_genotype(
    seed: int | random.Random | None = None, head_kind: str = "sequential", *, name: str | None = None
) -> Genotype:
    """A uniformly random valid genotype (each decision uniform over its valid choices)."""
    rng = seed if isinstance(seed, random.Random) else random.Random(seed)
    choices = [rng.randrange(d.num_choices) for d in decisions(head_kind)]
    return genotype_from_choices(choices, head_kind, name=name or f"random-{head_kind}")
