"""The search-space definition and sampling."""

from __future__ import annotations

from nasfcos.genotypes import (
    AGGS,
    FPN_OPS,
    HEAD_OPS,
    decisions,
    fpn_pool_size,
    genotype_from_choices,
    head_num_layers,
    max_choices,
    sample_genotype,
)


def test_tables_follow_the_paper() -> None:
    assert FPN_OPS == ("sep_conv_3x3", "sep_conv_3x3_dil3", "sep_conv_5x5_dil6", "skip", "deform_conv_3x3")
    assert AGGS == ("sum", "concat")
    assert HEAD_OPS == ("conv_1x1", "conv_3x3", "sep_conv_3x3", "sep_conv_3x3_dil3", "skip", "deform_conv_3x3")


def test_decision_sequence() -> None:
    dag = decisions("dag")
    assert len(dag) == 7 * 5 + 1 + 5 * 5 + 5
    assert [d.num_choices for d in dag[:5]] == [4, 4, 5, 5, 2]
    assert [d.num_choices for d in dag[30:35]] == [10, 10, 5, 5, 2]
    assert dag[35].name == "head.first_op" and dag[35].num_choices == 6
    assert [d.num_choices for d in dag[36:41]] == [2, 2, 6, 6, 2]
    assert [d.num_choices for d in dag[56:61]] == [14, 14, 6, 6, 2]
    assert [d.num_choices for d in dag[-5:]] == [7] * 5
    assert max_choices("dag") == 14
    assert len(decisions("sequential")) == 35 + 6 + 5
    assert len(decisions("fcos")) == 35 + 5
    assert fpn_pool_size(6) == 10 and head_num_layers("fcos") == 4


def test_sampling_is_seeded_and_covers_the_space() -> None:
    assert sample_genotype(5, "dag") == sample_genotype(5, "dag")
    gs = [sample_genotype(s, "dag") for s in range(400)]
    assert len({g.hash() for g in gs}) == 400
    ops = {op for g in gs for b in g.fpn for op in b.ops}
    assert ops == set(FPN_OPS)
    assert {b.inputs[0] for g in gs for b in g.fpn[6:]} == set(range(10))
    assert {s for g in gs for s in g.share} == set(range(7))


def test_max_choices_reach_every_valid_choice() -> None:
    for kind in ("fcos", "sequential", "dag"):
        seq = decisions(kind)
        g = genotype_from_choices([d.num_choices - 1 for d in seq], kind)
        assert g.fpn[6].inputs == (9, 9)
