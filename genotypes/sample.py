"""Encode genotypes as decision sequences (the controller's view) and sample them uniformly."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from nasfcos.errors import GenotypeError
from nasfcos.genotypes.genotype import DEFAULT_NAME, Genotype
from nasfcos.genotypes.paper import block_ids, from_paper_list, head_ids
from nasfcos.genotypes.space import FPN_OPS, NUM_FPN_BLOCKS, NUM_LEVELS, decisions


def genotype_from_choices(
    choices: Sequence[int], head_kind: str = "dag", *, name: str = DEFAULT_NAME
) -> Genotype:
    """Build a genotype from one choice per :func:`~nasfcos.genotypes.space.decisions` entry:
    the release's list form (:mod:`~nasfcos.genotypes.paper`) flattened, the sharing indices
    last."""
    seq = decisions(head_kind)
    if len(choices) != len(seq):
        raise GenotypeError(f"expected {len(seq)} choices for a '{head_kind}' head, got {len(choices)}")
    for d, c in zip(seq, choices, strict=True):
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < d.num_choices:
            raise GenotypeError(f"{d.name}: choice {c!r} out of range (0..{d.num_choices - 1})")
    ids = list(choices)
    fpn_end, head_end = 5 * NUM_FPN_BLOCKS, len(ids) - NUM_LEVELS
    lst: list[Any] = [ids[k : k + 5] for k in range(0, fpn_end, 5)] + [ids[head_end:]]
    if head_kind != "fcos":
        lst.append(ids[fpn_end:head_end])
    return from_paper_list(lst, name=name)


def choices_from_genotype(g: Genotype) -> list[int]:
    """Inverse of :func:`genotype_from_choices` (for the genotype's own head kind)."""
    fpn = [i for b in g.fpn for i in block_ids(b, FPN_OPS)]
    return fpn + head_ids(g.head) + list(g.share)


def sample_genotype(
    seed: int | random.Random | None = None, head_kind: str = "sequential", *, name: str | None = None
) -> Genotype:
    """A uniformly random valid genotype (each decision uniform over its valid choices)."""
    rng = seed if isinstance(seed, random.Random) else random.Random(seed)
    choices = [rng.randrange(d.num_choices) for d in decisions(head_kind)]
    return genotype_from_choices(choices, head_kind, name=name or f"random-{head_kind}")
