"""Every validation rule of the genotype loader, with the exact field it names."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest

from nasfcos.errors import GenotypeError
from nasfcos.genotypes import (
    MAX_FILE_BYTES,
    load_genotype,
    load_paper_genotype,
    loads_genotype,
    parse_genotype,
    sample_genotype,
)


@pytest.fixture
def doc() -> dict[str, Any]:
    return load_paper_genotype("nas_fcos_fpn_head").to_dict()


@pytest.fixture
def dag_doc() -> dict[str, Any]:
    return sample_genotype(7, "dag").to_dict()


def err(doc: Any) -> str:
    with pytest.raises(GenotypeError) as info:
        parse_genotype(doc)
    return str(info.value)


def test_shipped_documents_are_valid(doc: dict[str, Any]) -> None:
    assert parse_genotype(doc).name == "nas-fcos-r50-fpn-head"


def test_forward_pointing_index_message(doc: dict[str, Any]) -> None:
    doc["fpn"][3]["inputs"][1] = 11
    assert err(doc) == "fpn[3].inputs[1]: index 11 is not in the pool (0..6 available at block 4)"


def test_index_pointing_at_own_block(doc: dict[str, Any]) -> None:
    doc["fpn"][0]["inputs"][0] = 4  # block 0 creates index 4; it cannot read itself
    assert "fpn[0].inputs[0]: index 4 is not in the pool (0..3" in err(doc)


def test_negative_index(doc: dict[str, Any]) -> None:
    doc["fpn"][2]["inputs"][0] = -1
    assert err(doc).startswith("fpn[2].inputs[0]: index -1 is negative")


def test_huge_index(doc: dict[str, Any]) -> None:
    doc["fpn"][6]["inputs"][0] = 10**400
    msg = err(doc)
    assert msg.startswith("fpn[6].inputs[0]: index <401-digit number> is not in the pool")
    assert len(msg) < 200


@pytest.mark.parametrize("value,kind", [(True, "a boolean"), (3.0, "a number"), ("3", "a string"), (None, "null"), ([3], "a list")])
def test_non_integer_index(doc: dict[str, Any], value: Any, kind: str) -> None:
    doc["fpn"][1]["inputs"][0] = value
    assert err(doc).startswith(f"fpn[1].inputs[0]: expected an integer, got {kind}")


def test_unknown_op(doc: dict[str, Any]) -> None:
    doc["fpn"][4]["ops"][1] = "conv_7x7"
    assert err(doc).startswith("fpn[4].ops[1]: unknown op 'conv_7x7' (expected one of: sep_conv_3x3,")


def test_head_op_not_allowed_in_fpn(doc: dict[str, Any]) -> None:
    doc["fpn"][0]["ops"][0] = "conv_1x1"  # a head op, not an FPN op
    assert "fpn[0].ops[0]: unknown op 'conv_1x1'" in err(doc)


def test_unknown_aggregation(doc: dict[str, Any]) -> None:
    doc["fpn"][5]["agg"] = "max"
    assert err(doc).startswith("fpn[5].agg: unknown aggregation 'max'")


@pytest.mark.parametrize(
    "payload",
    [
        "__import__('os').system('rm -rf /')",
        "skip\nimport os",
        "deform_conv_3x3'); import os; ('",
        "{{ config }}",
        "{% include '/etc/passwd' %}",
        "skip ",
        "SKIP",
    ],
)
def test_code_in_op_fields_is_rejected(doc: dict[str, Any], payload: str) -> None:
    doc["fpn"][0]["ops"][0] = payload
    assert err(doc).startswith("fpn[0].ops[0]: unknown op")
    doc2 = load_paper_genotype("nas_fcos_fpn_head").to_dict()
    doc2["head"]["layers"][2] = payload
    assert err(doc2).startswith("head.layers[2]: unknown head op")
    doc3 = load_paper_genotype("nas_fcos_fpn_head").to_dict()
    doc3["fpn"][0]["agg"] = payload
    assert err(doc3).startswith("fpn[0].agg: unknown aggregation")


@pytest.mark.parametrize("name", ["a\nimport os", "x'\"", "", "a" * 65, "-lead", "with space", 3, None])
def test_names_are_whitelisted(doc: dict[str, Any], name: Any) -> None:
    doc["name"] = name
    assert err(doc).startswith("name: ")


def test_wrong_block_count(doc: dict[str, Any]) -> None:
    doc["fpn"].pop()
    assert err(doc) == "fpn: expected 7 entries, got 6"


def test_wrong_input_count(doc: dict[str, Any]) -> None:
    doc["fpn"][0]["inputs"] = [3, 3, 3]
    assert err(doc) == "fpn[0].inputs: expected 2 entries, got 3"


def test_wrong_head_layer_count(doc: dict[str, Any]) -> None:
    doc["head"]["layers"] = doc["head"]["layers"][:5]
    assert err(doc) == "head.layers: expected 6 entries, got 5"


def test_dag_head_index_rules(dag_doc: dict[str, Any]) -> None:
    d = copy.deepcopy(dag_doc)
    d["head"]["blocks"][0]["inputs"][1] = 2
    assert err(d) == "head.blocks[0].inputs[1]: index 2 is not in the pool (0..1 available at head block 1)"
    d = copy.deepcopy(dag_doc)
    d["head"]["blocks"][4]["inputs"][0] = 14
    assert err(d) == "head.blocks[4].inputs[0]: index 14 is not in the pool (0..13 available at head block 5)"
    d = copy.deepcopy(dag_doc)
    d["head"]["blocks"].append(d["head"]["blocks"][0])
    assert err(d) == "head.blocks: expected 5 entries, got 6"
    d = copy.deepcopy(dag_doc)
    del d["head"]["first_op"]
    assert err(d) == "head: missing field 'first_op'"


def test_head_kind_fields(doc: dict[str, Any]) -> None:
    doc["head"] = {"kind": "fcos", "layers": ["skip"] * 6}
    assert err(doc).startswith("head: unknown field 'layers'")
    doc["head"] = {"kind": "transformer"}
    assert err(doc).startswith("head.kind: unknown head kind 'transformer'")


@pytest.mark.parametrize("kind,limit", [("fcos", 4), ("sequential", 6), ("dag", 6)])
def test_share_range_depends_on_head(doc: dict[str, Any], dag_doc: dict[str, Any], kind: str, limit: int) -> None:
    d = dag_doc if kind == "dag" else doc
    if kind == "fcos":
        d["head"] = {"kind": "fcos"}
    d["share"] = [0, 0, limit, 0, 0]
    parse_genotype(d)
    d["share"] = [0, 0, limit + 1, 0, 0]
    assert err(d) == f"share[2]: sharing index {limit + 1} is out of range (0..{limit} for a '{kind}' head of {limit} layers)"


def test_share_shapes(doc: dict[str, Any]) -> None:
    doc["share"] = 2  # the release's single integer: same index for every level
    assert parse_genotype(doc).share == (2, 2, 2, 2, 2)
    doc["share"] = [0, 0, 0]
    assert err(doc) == "share: expected 5 entries, got 3"
    doc["share"] = [0, 0, 0, 0, False]
    assert err(doc).startswith("share[4]: expected an integer, got a boolean")
    doc["share"] = -1
    assert err(doc).startswith("share: sharing index -1 is out of range")


def test_structure_errors(doc: dict[str, Any]) -> None:
    assert err([]).startswith("genotype: expected an object, got a list")
    assert err("x").startswith("genotype: expected an object")
    d = dict(doc, extra=1)
    assert err(d).startswith("genotype: unknown field 'extra'")
    d = dict(doc)
    del d["share"]
    assert err(d) == "genotype: missing field 'share'"
    d = dict(doc, format="nasfcos-genotype/2")
    assert err(d).startswith("format: expected 'nasfcos-genotype/1'")
    d = copy.deepcopy(doc)
    d["fpn"][0] = [3, 3, 4, 4, 1]
    assert err(d).startswith("fpn[0]: expected an object, got a list")
    d = copy.deepcopy(doc)
    d["fpn"][0]["weights"] = "x"
    assert err(d).startswith("fpn[0]: unknown field 'weights'")
    d = dict(doc, meta=[1])
    assert err(d) == "meta: expected an object, got a list"
    nested: list = [1]
    for _ in range(40):
        nested = [nested]
    d = dict(doc, meta={"a": nested})
    assert "nested deeper than" in err(d)


# --- text and file level ----------------------------------------------------------------
def text_err(data: str | bytes) -> str:
    with pytest.raises(GenotypeError) as info:
        loads_genotype(data, source="g.json")
    return str(info.value)


def test_duplicate_keys(doc: dict[str, Any]) -> None:
    text = json.dumps(doc)
    text = text.replace('"format": ', '"format": "nasfcos-genotype/1", "format": ', 1)
    assert text_err(text) == "g.json: duplicate key 'format' in a JSON object"


def test_not_json() -> None:
    assert text_err("{not json").startswith("g.json: not valid JSON (")
    assert text_err("").startswith("g.json: not valid JSON (")
    assert text_err('{"a": NaN}') == "g.json: NaN is not valid JSON"
    assert text_err("[" * 100000 + "]" * 100000).startswith("g.json: ")


def test_not_utf8() -> None:
    assert text_err(b'{"name": "\xff\xfe"}') == "g.json: not UTF-8 text (byte 10)"


def test_size_limit(tmp_path: Path, doc: dict[str, Any]) -> None:
    doc["meta"] = {"pad": "x" * MAX_FILE_BYTES}
    p = tmp_path / "big.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(GenotypeError, match=r"over the 1048576-byte limit"):
        load_genotype(p)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(GenotypeError, match="no such file"):
        load_genotype(tmp_path / "missing.json")
    with pytest.raises(GenotypeError, match="is a directory"):
        load_genotype(tmp_path)
    with pytest.raises(GenotypeError, match="not a regular file"):  # checked without opening it
        load_genotype(os.devnull)


def test_bom_is_accepted(doc: dict[str, Any]) -> None:
    assert loads_genotype(("\ufeff" + json.dumps(doc)).encode("utf-8")).name == doc["name"]
