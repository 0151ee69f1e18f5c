"""Hostile genotypes and bad options never reach a template; errors are one-line NasfcosErrors."""

from __future__ import annotations

from typing import Any

import pytest

import nasfcos.compiler.codegen as codegen
from nasfcos.compiler import CompileOptions, build_reference, compile_genotype, compile_to_module
from nasfcos.errors import GenotypeError, NasfcosError
from nasfcos.genotypes import Block, Genotype, Head, load_paper_genotype

PAPER = load_paper_genotype("nas_fcos_fpn_head")
PAYLOAD = "__import__('os').system('echo pwned')"


@pytest.fixture
def no_render(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any use of the template engine fail the test."""

    def boom() -> Any:
        raise AssertionError("a hostile genotype reached the template engine")

    monkeypatch.setattr(codegen, "template_environment", boom)


def _doc(**changes: Any) -> dict[str, Any]:
    doc = PAPER.to_dict(with_meta=False)
    doc.update(changes)
    return doc


def _fpn_with(**block: Any) -> list[dict[str, Any]]:
    fpn = [dict(b) for b in PAPER.to_dict()["fpn"]]
    fpn[0].update(block)
    return fpn


HOSTILE_DOCS = {
    "op is python source": _doc(fpn=_fpn_with(ops=[PAYLOAD, "skip"])),
    "agg is python source": _doc(fpn=_fpn_with(agg="sum)\nimport os\n(")),
    "input is a string": _doc(fpn=_fpn_with(inputs=["3", 3])),
    "input is a bool": _doc(fpn=_fpn_with(inputs=[True, 3])),
    "input is a float": _doc(fpn=_fpn_with(inputs=[3.0, 3])),
    "input out of the pool": _doc(fpn=_fpn_with(inputs=[4, 3])),
    "huge input": _doc(fpn=_fpn_with(inputs=[10**400, 3])),
    "name with newline": _doc(name="nas\nimport os"),
    "name with trailing newline": _doc(name="nas-fcos\n"),
    "name with quotes": _doc(name='a"; import os; "'),
    "name with triple quotes": _doc(name='x"""'),
    "head op is source": _doc(head={"kind": "sequential", "layers": [PAYLOAD] + ["skip"] * 5}),
    "dag first op is source": _doc(head={"kind": "dag", "first_op": PAYLOAD, "blocks": []}),
    "share is source": _doc(share=[PAYLOAD] * 5),
    "head kind is source": _doc(head={"kind": PAYLOAD}),
    "extra field": {**_doc(), "code": PAYLOAD},
}


@pytest.mark.parametrize("case", sorted(HOSTILE_DOCS))
def test_hostile_documents_raise_before_rendering(case: str, no_render: None) -> None:
    with pytest.raises(GenotypeError) as info:
        compile_genotype(HOSTILE_DOCS[case])
    assert "\n" not in str(info.value)
    with pytest.raises(GenotypeError):
        compile_to_module(HOSTILE_DOCS[case])
    with pytest.raises(GenotypeError):
        build_reference(HOSTILE_DOCS[case])


def _hand_built(**changes: Any) -> Genotype:
    fields = {"fpn": PAPER.fpn, "head": PAPER.head, "share": PAPER.share, "name": PAPER.name}
    fields.update(changes)
    return Genotype(**fields)


HOSTILE_OBJECTS = {
    "op is python source": lambda: _hand_built(fpn=(Block((3, 3), (PAYLOAD, "skip"), "sum"),) + PAPER.fpn[1:]),
    "input is a float": lambda: _hand_built(fpn=(Block((3.5, 3), ("skip", "skip"), "sum"),) + PAPER.fpn[1:]),
    "name with newline": lambda: _hand_built(name="x\nimport os"),
    "head layer is source": lambda: _hand_built(head=Head("sequential", layers=(PAYLOAD,) * 6)),
    "share is an object": lambda: _hand_built(share=(object(),) * 5),
    "fpn is not blocks": lambda: _hand_built(fpn=("not a block",) * 7),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_OBJECTS))
def test_hand_built_genotype_objects_are_revalidated(case: str, no_render: None) -> None:
    with pytest.raises(GenotypeError):
        compile_genotype(HOSTILE_OBJECTS[case]())


@pytest.mark.parametrize("value", ["model.json", ["a"], 42, None])
def test_non_genotypes_are_rejected(value: Any, no_render: None) -> None:
    with pytest.raises(GenotypeError):
        compile_genotype(value)


class _Sneaky(str):
    """Equal to a valid op name, but formats and prints as code."""

    def __format__(self, spec: str) -> str:
        return "skip\nimport os  # injected"

    def __str__(self) -> str:
        return "skip\nimport os  # injected"

    __hash__ = str.__hash__


def test_str_subclasses_are_reduced_to_plain_data() -> None:
    doc = PAPER.to_dict(with_meta=False)
    doc["fpn"][2]["ops"][1] = _Sneaky("skip")
    doc["head"]["layers"][4] = _Sneaky("skip")
    src = compile_genotype(doc)
    assert "injected" not in src
    assert src == compile_genotype(PAPER)


class _SneakyInt(int):
    def __str__(self) -> str:
        return "64\nimport os  # injected"

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return str(self)


def test_option_subclasses_are_stored_as_plain_values() -> None:
    """CompileOptions keeps the plain int / whitelisted str its checks return, so an int or
    str subclass's own __str__ / __format__ never reaches a model file or its header."""
    sneaky = CompileOptions(fpn_channels=_SneakyInt(64), head_channels=_SneakyInt(64),
                            num_classes=_SneakyInt(3), detector=True, backbone=_Sneaky("tiny"),
                            scoring=_Sneaky("sqrt"), preprocess=_Sneaky("caffe2"))
    plain = CompileOptions(fpn_channels=64, head_channels=64, num_classes=3, detector=True,
                           backbone="tiny", scoring="sqrt", preprocess="caffe2")
    assert all(type(getattr(sneaky, f)) is type(getattr(plain, f)) for f in ("fpn_channels", "backbone"))
    assert compile_genotype(PAPER, sneaky) == compile_genotype(PAPER, plain)


@pytest.mark.parametrize(
    "kw",
    [
        {"fpn_channels": 0},
        {"fpn_channels": 1},
        {"fpn_channels": 10**6},
        {"fpn_channels": True},
        {"fpn_channels": 8.0},
        {"fpn_channels": "128"},
        {"head_channels": -1},
        {"num_classes": 0},
        {"num_classes": "80); import os; ("},
        {"in_channels": (1, 2, 3)},
        {"in_channels": (1, 2, 3, 0)},
        {"in_channels": "1,2,x,4"},
        {"backbone": "resnet50; import os"},
        {"backbone": "not_a_backbone"},
        {"detector": "yes"},
        {"unknown_option": 1},
        {"fpn_channels": 48},  # head width = FPN width: not a multiple of GroupNorm's 32 groups
        {"fpn_channels": 64, "head_channels": 80},
        {"box_regression": "pixels\"; import os; \""},
        {"scoring": "sqrt "},
        {"preprocess": "bgr"},
    ],
)
def test_bad_options_raise_nasfcos_error(kw: dict[str, Any], no_render: None) -> None:
    with pytest.raises(NasfcosError) as info:
        compile_genotype(PAPER, **kw)
    assert "\n" not in str(info.value)


def test_options_normalise_and_override() -> None:
    opts = CompileOptions(in_channels=[64, 128, 256, 512])
    assert opts.in_channels == (64, 128, 256, 512)
    assert CompileOptions(in_channels="1, 2,3,4").in_channels == (1, 2, 3, 4)
    assert opts.resolved_head_channels == 256  # the released models' width
    a = compile_genotype(PAPER, opts, fpn_channels=64)
    b = compile_genotype(PAPER, CompileOptions(fpn_channels=64, in_channels=(64, 128, 256, 512)))
    assert a == b
    with pytest.raises(NasfcosError):
        compile_genotype(PAPER, options={"fpn_channels": 8})  # type: ignore[arg-type]
