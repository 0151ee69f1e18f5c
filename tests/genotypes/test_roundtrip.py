"""Round trips: JSON files and the release's numeric list form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nasfcos.errors import GenotypeError
from nasfcos.genotypes import (
    choices_from_genotype,
    from_paper_list,
    genotype_from_choices,
    load_genotype,
    load_paper_genotype,
    sample_genotype,
    schema_path,
    to_paper_list,
)

RELEASE = [
    [[3, 3, 4, 4, 1]], [[3, 3, 4, 4, 1]], [[4, 3, 4, 3, 1]], [[1, 3, 4, 3, 1]],
    [[5, 3, 4, 4, 1]], [[4, 7, 4, 4, 1]], [[7, 2, 4, 4, 1]], [0], [5, 1, 5, 0, 4, 4],
]


def test_shipped_genotypes_load_from_the_release_list() -> None:
    head = load_paper_genotype("nas_fcos_fpn_head")
    assert from_paper_list(RELEASE) == head
    assert head.head.layers == ("deform_conv_3x3", "conv_3x3", "deform_conv_3x3", "conv_1x1", "skip", "skip")
    assert head.fpn[0].ops == ("deform_conv_3x3", "deform_conv_3x3") and head.fpn[0].agg == "concat"
    assert head.fpn[2].inputs == (4, 3) and head.fpn[2].ops == ("deform_conv_3x3", "skip")
    fpn_only = load_paper_genotype("nas_fcos_fpn")
    assert from_paper_list(RELEASE[:7]) == fpn_only
    assert to_paper_list(fpn_only) == RELEASE[:7]  # the release's densebox configs: 7 entries
    assert fpn_only.head.kind == "fcos" and fpn_only.fpn == head.fpn
    for g in (head, fpn_only):
        assert "configs/search/R_50_NAS_head.yaml" in g.meta["source"]


def test_paper_list_round_trip_is_lossless() -> None:
    g = load_paper_genotype("nas_fcos_fpn_head")
    assert to_paper_list(g) == RELEASE
    for seed in range(60):
        for kind in ("fcos", "sequential", "dag"):
            r = sample_genotype(seed, kind)
            assert from_paper_list(to_paper_list(r)) == r


def test_paper_list_errors() -> None:
    with pytest.raises(GenotypeError, match=r"list\[2\]\[0\]\[2\]: op id 9 is out of range \(0..4\)"):
        from_paper_list([[[3, 3, 4, 4, 1]]] * 2 + [[[3, 3, 9, 4, 1]]] + [[[3, 3, 4, 4, 1]]] * 4)
    with pytest.raises(GenotypeError, match="expected 7 FPN blocks"):
        from_paper_list([[3, 3, 4, 4, 1]])
    with pytest.raises(GenotypeError, match=r"fpn\[0\].inputs\[0\]: index 5 is not in the pool"):
        from_paper_list([[[5, 3, 4, 4, 1]]] + [[[3, 3, 4, 4, 1]]] * 6)
    with pytest.raises(GenotypeError, match=r"6 head op ids or 26"):
        from_paper_list(RELEASE[:8] + [[1, 2, 3]])


def test_json_file_round_trip(tmp_path: Path) -> None:
    for seed in range(30):
        for kind in ("fcos", "sequential", "dag"):
            g = sample_genotype(seed, kind).replace(meta={"step": seed, "reward": -1.5})
            path = g.save(tmp_path / f"{kind}{seed}.json")
            back = load_genotype(path)
            assert back == g and back.name == g.name and back.meta == g.meta
            assert back.dumps() == g.dumps()


def test_choices_round_trip() -> None:
    for seed in range(50):
        for kind in ("fcos", "sequential", "dag"):
            g = sample_genotype(seed, kind)
            assert genotype_from_choices(choices_from_genotype(g), kind) == g


def test_schema_accepts_shipped_and_rejects_bad() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(schema_path().read_text())
    validator = jsonschema.Draft202012Validator(schema)
    for name in ("nas_fcos_fpn", "nas_fcos_fpn_head"):
        validator.validate(load_paper_genotype(name).to_dict())
    for seed in range(20):
        validator.validate(sample_genotype(seed, "dag").to_dict())
    bad = load_paper_genotype().to_dict()
    bad["fpn"][0]["ops"][0] = "__import__('os')"
    assert not validator.is_valid(bad)
