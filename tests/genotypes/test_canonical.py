"""Canonical form and content hash."""

from __future__ import annotations

import random

from nasfcos.genotypes import (
    Block,
    canonical_json,
    fpn_graph,
    head_live,
    load_paper_genotype,
    parse_genotype,
    sample_genotype,
)


def test_hash_is_stable_and_ignores_provenance() -> None:
    g = load_paper_genotype("nas_fcos_fpn_head")
    # pinned: changing the canonical encoding would silently break every search archive
    assert g.hash() == "88333961f0009c0757b21017d49eb262b5937c9235726ccbeb02f9d558aa1cbf"
    assert g.replace(name="other", meta={"x": 1}).hash() == g.hash()
    assert len(g.hash()) == 64 and g.short_hash() == g.hash()[:12]


def test_different_architectures_hash_differently() -> None:
    seen = {}
    for seed in range(300):
        g = sample_genotype(seed, "sequential")
        seen.setdefault(g.hash(), set()).add(canonical_json(g))
    assert all(len(v) == 1 for v in seen.values())
    assert len(seen) > 290


def test_sum_inputs_are_symmetric_concat_is_not() -> None:
    g = load_paper_genotype("nas_fcos_fpn_head")
    doc = g.to_dict()
    doc["fpn"][2] = {"inputs": [4, 3], "ops": ["deform_conv_3x3", "skip"], "agg": "sum"}
    a = parse_genotype(doc)
    doc["fpn"][2] = {"inputs": [3, 4], "ops": ["skip", "deform_conv_3x3"], "agg": "sum"}
    b = parse_genotype(doc)
    assert a != b and a.hash() == b.hash() and a.canonical() == b.canonical()
    doc["fpn"][2]["agg"] = "concat"
    c = parse_genotype(doc)
    doc["fpn"][2] = {"inputs": [4, 3], "ops": ["deform_conv_3x3", "skip"], "agg": "concat"}
    d = parse_genotype(doc)
    assert c.hash() != d.hash()


def test_dead_dag_head_paths_do_not_change_the_hash() -> None:
    rng = random.Random(0)
    changed = 0
    for seed in range(200):
        g = sample_genotype(seed, "dag")
        live = head_live(g.head)
        doc = g.to_dict()
        # mutate every dead op slot and every fully dead block: the hash must not move
        for b, blk in enumerate(doc["head"]["blocks"]):
            for j in (0, 1):
                if 2 + 3 * b + j not in live:
                    blk["ops"][j] = rng.choice(["conv_1x1", "conv_3x3", "deform_conv_3x3"])
                    blk["inputs"][j] = rng.randrange(2 + 3 * b)
                    changed += 1
            if 4 + 3 * b not in live:
                blk["agg"] = rng.choice(["sum", "concat"])
        if 1 not in live:
            doc["head"]["first_op"] = "conv_3x3"
        mutated = parse_genotype(doc)
        assert mutated.hash() == g.hash()
        # and a live op does change it
        out = g.head.blocks[-1]
        doc = g.to_dict()
        doc["head"]["blocks"][-1]["ops"][0] = "deform_conv_3x3" if out.ops[0] != "deform_conv_3x3" else "conv_1x1"
        assert parse_genotype(doc).hash() != g.hash()
    assert changed > 50


def test_canonical_is_idempotent_and_valid() -> None:
    for seed in range(100):
        for kind in ("sequential", "dag"):
            c = sample_genotype(seed, kind).canonical()
            assert c.canonical() == c
            assert parse_genotype(c.to_dict()) == c


def test_fpn_graph_of_paper_genotype() -> None:
    g = load_paper_genotype("nas_fcos_fpn_head")
    graph = fpn_graph(g.fpn)
    assert graph.strides == (4, 8, 16, 32, 32, 32, 32, 8, 32, 8, 8)
    assert graph.backbone_used == (1, 2, 3)  # c2 is never read
    assert graph.collected == (6, 8, 9, 10)
    assert (graph.p5, graph.p4, graph.p3) == (8, 9, 10)
    assert graph.dangling == (6,)


def test_fpn_graph_fallback_when_fewer_than_three_collected() -> None:
    chain = tuple(Block((3 + k, 3 + k), ("skip", "skip"), "sum") for k in range(7))
    graph = fpn_graph(chain)  # every block reads the previous one: only 10 is collected
    assert graph.collected == (10,)
    assert (graph.p5, graph.p4, graph.p3) == (8, 9, 10)
    assert graph.dangling == ()
