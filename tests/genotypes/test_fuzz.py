"""Property-based fuzz of the loader: any input gives a Genotype or GenotypeError, never anything else."""

from __future__ import annotations

import json
import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nasfcos.errors import GenotypeError
from nasfcos.genotypes import (
    Genotype,
    load_paper_genotype,
    loads_genotype,
    parse_genotype,
    sample_genotype,
)

FUZZ_EXAMPLES = 2500
json_scalars = st.none() | st.booleans() | st.integers(min_value=-(10**40), max_value=10**40) | st.floats() | st.text(max_size=30)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=8) | st.dictionaries(st.text(max_size=10), children, max_size=8),
    max_leaves=60,
)
SEEDS = [load_paper_genotype().to_dict(), sample_genotype(1, "dag").to_dict(), sample_genotype(2, "fcos").to_dict()]


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    return out


def _mutate(doc: Any, rng: random.Random, replacement: Any) -> Any:
    doc = json.loads(json.dumps(doc))
    paths = [p for p in _paths(doc) if p]
    path = rng.choice(paths)
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    action = rng.randrange(4)
    if action == 0:
        parent[path[-1]] = replacement
    elif action == 1 and isinstance(parent, dict):
        del parent[path[-1]]
    elif action == 1 and isinstance(parent, list):
        parent.pop(path[-1])
    elif action == 2 and isinstance(parent, list):
        parent.append(replacement)
    else:
        parent[path[-1]] = rng.choice([-1, 0, 1, 3, 9, 10**6, True, "skip", "sum", None, [], {}, 2.5])
    return doc


def _outcome(doc_or_text: Any) -> None:
    try:
        if isinstance(doc_or_text, (str, bytes)):
            g = loads_genotype(doc_or_text)
        else:
            g = parse_genotype(doc_or_text)
    except GenotypeError:
        return
    assert isinstance(g, Genotype)
    assert parse_genotype(g.to_dict()) == g  # anything accepted is a valid, reproducible genotype


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), base=st.sampled_from(range(len(SEEDS))), replacement=json_values, n=st.integers(1, 4))
def test_mutated_documents(seed: int, base: int, replacement: Any, n: int) -> None:
    rng = random.Random(seed)
    doc: Any = SEEDS[base]
    for _ in range(n):
        doc = _mutate(doc, rng, replacement)
    _outcome(doc)
    _outcome(json.dumps(doc))


@settings(max_examples=FUZZ_EXAMPLES // 2, deadline=None)
@given(doc=json_values)
def test_random_documents(doc: Any) -> None:
    _outcome(doc)


@settings(max_examples=FUZZ_EXAMPLES // 2, deadline=None)
@given(data=st.binary(max_size=300) | st.text(max_size=300))
def test_random_bytes(data: bytes | str) -> None:
    _outcome(data)


@settings(max_examples=FUZZ_EXAMPLES // 2, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), cut=st.integers(0, 4000))
def test_truncated_and_corrupted_text(seed: int, cut: int) -> None:
    text = json.dumps(SEEDS[seed % len(SEEDS)])
    rng = random.Random(seed)
    _outcome(text[: cut % (len(text) + 1)])
    chars = list(text)
    for _ in range(3):
        chars[rng.randrange(len(chars))] = rng.choice('{}[]",:0123456789-aeE\\\x00\xff')
    _outcome("".join(chars))
