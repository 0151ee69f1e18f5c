"""The compiler's borders: one reader of a model file's constants (ModelInfo), one meaning of
box units, the option rules living in CompileOptions (the CLI calls them), one class limit."""

from __future__ import annotations

import argparse

import pytest
import torch

from nasfcos.cli import args as A
from nasfcos.compiler import CompileOptions, compile_to_module
from nasfcos.compiler.options import MAX_CHANNELS, MAX_CLASSES
from nasfcos.errors import NasfcosError
from nasfcos.fcos.losses import FcosConfig, losses_from_targets
from nasfcos.genotypes import load_paper_genotype
from nasfcos.modelfile import DEFAULT_BOX_UNITS, BoxUnits, ModelInfo, module_from_source


def test_box_units_default_is_one_and_the_releases() -> None:
    # the release regresses distances in input pixels (golden README, "Box regression units")
    assert DEFAULT_BOX_UNITS == "pixels"
    assert CompileOptions().box_regression == FcosConfig().reg_units == BoxUnits().name == DEFAULT_BOX_UNITS
    # a file that does not declare its units has the default too (it was "stride" in the losses)
    bare = module_from_source("class Decoder: pass\ndef build(): pass\n", "bare_model")
    assert ModelInfo.from_module(bare).box_units == BoxUnits(DEFAULT_BOX_UNITS)


def test_box_units_encode_decode_and_losses_agree() -> None:
    strides = torch.tensor([8.0, 16.0])[None, :, None]
    pixels = torch.rand(1, 2, 4) * 50 + 1
    for name in ("pixels", "stride"):
        units = BoxUnits(name)
        torch.testing.assert_close(units.decode(units.encode(pixels, strides), strides), pixels)
    assert torch.equal(BoxUnits("stride").encode(pixels, strides), pixels / strides)
    with pytest.raises(NasfcosError, match="box units: 'px' is not one of"):
        BoxUnits("px")
    # the losses of a stride-unit output equal those of the same boxes in pixels
    from nasfcos.fcos.losses import compute_targets

    boxes, labels = [torch.tensor([[2.0, 3.0, 30.0, 28.0]])], [torch.tensor([1])]
    t = compute_targets(boxes, labels, [(4, 4)], (8,), None, 0.0)
    reg_px = torch.rand(1, 4, 4, 4) * 20 + 1
    cls, ctr = [torch.randn(1, 3, 4, 4)], [torch.randn(1, 1, 4, 4)]
    a = losses_from_targets(cls, [reg_px], ctr, t, FcosConfig(strides=(8,)))
    b = losses_from_targets(cls, [reg_px / 8], ctr, t, FcosConfig(strides=(8,), reg_units="stride"))
    torch.testing.assert_close(a["box"], b["box"])


def test_model_info_reads_a_compiled_file() -> None:
    g = load_paper_genotype("nas_fcos_fpn_head")
    opts = CompileOptions(fpn_channels=64, num_classes=3, detector=True, backbone="tiny",
                          box_regression="stride", scoring="sqrt")
    info = ModelInfo.from_module(compile_to_module(g, opts))
    assert (info.kind, info.name, info.genotype_hash, info.num_classes) == ("detector", g.name, g.hash(), 3)
    assert (info.fpn_channels, info.head_channels, info.head_follows_fpn) == (64, 64, True)
    assert info.box_units.name == "stride" and info.strides == (8, 16, 32, 64, 128)
    assert (info.scoring, info.preprocess, info.backbone) == ("sqrt", "imagenet", "tiny")
    assert info.widths(fpn_channels=128) == (128, 128)
    bridged = ModelInfo.from_module(compile_to_module(g, CompileOptions(fpn_channels=64, head_channels=32,
                                                                        in_channels=(4, 6, 8, 10))))
    assert (bridged.kind, bridged.head_follows_fpn, bridged.widths(fpn_channels=128)) == ("decoder", False, (128, 32))
    assert bridged.in_channels == (4, 6, 8, 10) and bridged.box_units.name == "pixels"


def test_model_info_refuses_malformed_constants() -> None:
    bad = module_from_source("class Decoder: pass\nFPN_CHANNELS = '64'\n", "bad_model")
    with pytest.raises(NasfcosError, match="FPN_CHANNELS = '64' is not int"):
        ModelInfo.from_module(bad)
    units = module_from_source("class Decoder: pass\nBOX_REGRESSION = 'furlongs'\n", "bad_units")
    with pytest.raises(NasfcosError, match="box units: 'furlongs'"):
        ModelInfo.from_module(units)


@pytest.mark.parametrize(("field", "value", "match"), [
    ("fpn_channels", 33, "fpn_channels: 33 is odd"),
    ("head_channels", 65, "head_channels: 65 is odd"),
    ("fpn_channels", MAX_CHANNELS + 2, "fpn_channels: 4098 is out of range"),
    ("num_classes", MAX_CLASSES + 1, "num_classes: 10001 is out of range"),
])
def test_compile_options_own_their_rules(field: str, value: int, match: str) -> None:
    kw = {"fpn_channels": 64, field: value} if field != "fpn_channels" else {field: value, "head_channels": 64}
    with pytest.raises(NasfcosError, match=match):
        CompileOptions(**kw)


def test_cli_width_and_class_flags_call_the_same_rules() -> None:
    from nasfcos.weights import METADATA_RULES

    assert METADATA_RULES["num_classes"][2] == MAX_CLASSES  # a weights file's classes: the same limit
    from nasfcos.weights import check_metadata

    with pytest.raises(NasfcosError, match="metadata 'cat_ids' must be"):  # one id per class
        check_metadata({"cat_ids": list(range(MAX_CLASSES + 1))}, "w.pt")
    assert A.num_classes(str(MAX_CLASSES)) == MAX_CLASSES and A.width(str(MAX_CHANNELS)) == MAX_CHANNELS
    with pytest.raises(argparse.ArgumentTypeError, match=r"^10001 is out of range \(1..10000\)$"):
        A.num_classes(str(MAX_CLASSES + 1))
    with pytest.raises(argparse.ArgumentTypeError, match=r"^33 is odd"):
        A.width("33")


def test_a_genotype_is_valid_by_type() -> None:
    from nasfcos.errors import GenotypeError
    from nasfcos.genotypes import Block, Genotype, Head

    g = load_paper_genotype("nas_fcos_fpn_head")
    bad_fpn = (Block((3, 11), ("skip", "skip"), "sum"),) + g.fpn[1:]
    with pytest.raises(GenotypeError, match=r"^fpn\[0\]\.inputs\[1\]: index 11 is not in the pool"):
        Genotype(fpn=bad_fpn, head=g.head, share=g.share)
    with pytest.raises(GenotypeError, match=r"^head\.layers\[0\]: unknown head op"):
        Head("sequential", layers=("import os",) * 6)
    with pytest.raises(GenotypeError, match=r"^share\[0\]: sharing index 7 is out of range"):
        Genotype(fpn=g.fpn, head=g.head, share=(7, 0, 0, 0, 0))
    with pytest.raises(GenotypeError, match=r"^fpn\[0\]\.inputs\[0\]: expected an integer"):
        Genotype(fpn=(Block((True, 3), ("skip", "skip"), "sum"),) + g.fpn[1:], head=g.head, share=g.share)


def test_compile_reads_a_release_yaml_once(tmp_path, monkeypatch) -> None:
    import nasfcos.compiler.release as release
    import nasfcos.genotypes.resolve as resolve
    from nasfcos.cli.main import main

    calls = []
    real = resolve.read_release_config

    def counted(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(resolve, "read_release_config", counted)
    monkeypatch.setattr(release, "read_release_config", counted)
    yaml_file = tmp_path / "R_50_NAS_head.yaml"
    yaml_file.write_text(
        "MODEL:\n  DENSEBOX_ON: True\n  BACKBONE:\n    CONV_BODY: \"R-50-NAS\"\n  RETINANET:\n"
        "    NUM_CLASSES: 81\nSEARCH:\n  NAS_HEAD_ON: True\n  NAS_DECODER_ON: True\n  DECODER:\n"
        "    CONFIG: [[[3, 3, 4, 4, 1]], [[3, 3, 4, 4, 1]], [[4, 3, 4, 3, 1]], [[1, 3, 4, 3, 1]], "
        "[[5, 3, 4, 4, 1]], [[4, 7, 4, 4, 1]], [[7, 2, 4, 4, 1]], [0], [5, 1, 5, 0, 4, 4]]\n"
        "    AGG_SIZE: 64\n")
    assert main(["compile", str(yaml_file), "-o", str(tmp_path / "m.py"), "-q"]) == 0
    assert len(calls) == 1


def test_plan_records_hold_values() -> None:
    from nasfcos.compiler.plan import (
        FCOS_TOWER_EMITTER,
        HEAD_AGG_EMITTERS,
        HEAD_OP_EMITTERS,
        build_plan,
    )

    call = HEAD_OP_EMITTERS["sep_conv_3x3_dil3"]
    assert (call.cls, call.kwargs) == ("SepConv", (("dilation", 3), ("norm", "gn")))
    assert str(call) == 'SepConv(h, 3, dilation=3, norm="gn")'
    assert str(FCOS_TOWER_EMITTER) == 'ConvNormReLU(h, h, 3, norm="gn", bias=True)'
    module = compile_to_module(load_paper_genotype("nas_fcos_fpn_head"), CompileOptions(fpn_channels=32))
    layer = HEAD_AGG_EMITTERS["concat"].build(module, {"c": 32, "h": 64})
    assert layer.conv.in_channels == 128 and type(layer).__name__ == "ConcatReduce"
    plan = build_plan(load_paper_genotype("nas_fcos_fpn_head"), CompileOptions(fpn_channels=32))
    assert plan.units()["head_op/deform_conv_3x3/s8"] == 4  # two per branch, as the file runs them


def test_pasted_code_fills_in_every_compiled_option_and_nothing_else() -> None:
    from nasfcos.compiler.backbones import paste
    from nasfcos.compiler.options import options_context

    values = options_context(CompileOptions(backbone="tiny", head_channels=64, scoring="sqrt"))["detector_values"]
    code = paste("detector", **values)
    assert "COMPILED_" not in code and 'BACKBONE = "tiny"' in code and 'SCORING = "sqrt"' in code
    assert "head_channels: int | None = 64," in code and 'PREPROCESS = "imagenet"' in code
    with pytest.raises(NasfcosError, match=r"pasted_detector: fill-ins \['COMPILED_BACKBONE'"):
        paste("detector")  # a value left out would leave a name the compiled file lacks
    with pytest.raises(NasfcosError, match="pasted_deform: fill-ins"):
        paste("deform", COMPILED_BACKBONE='"tiny"')  # a value that names nothing
