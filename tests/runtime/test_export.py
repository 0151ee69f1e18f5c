"""ONNX export: graph content, manifest, parity with PyTorch, dynamic shapes, failures."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from nasfcos.errors import NasfcosError
from nasfcos.runtime.check import check_artifact
from nasfcos.runtime.export import (
    ExportOptions,
    export_onnx,
    load_manifest,
    manifest_path_for,
    verify_manifest,
)
from nasfcos.runtime.models import DECODER_INPUTS, DECODER_OUTPUTS, DETECTOR_OUTPUTS


def test_paper_decoder_export_and_parity(paper_decoder_onnx) -> None:
    model = onnx.load(str(paper_decoder_onnx))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("DeformConv") >= 10  # the paper genotype is mostly deformable convs
    assert [i.name for i in model.graph.input] == list(DECODER_INPUTS)
    assert [o.name for o in model.graph.output] == list(DECODER_OUTPUTS)
    assert model.opset_import[0].version >= 19
    report = check_artifact(paper_decoder_onnx)
    assert report.ok, report.table()
    assert [o.name for o in report.outputs] == list(DECODER_OUTPUTS)
    assert max(o.max_abs for o in report.outputs) < 1e-4


def test_manifest_matches_file(paper_decoder_onnx, paper_decoder) -> None:
    man = load_manifest(paper_decoder_onnx).raw
    assert verify_manifest(paper_decoder_onnx) == []
    assert not man["source"]["model"].startswith("/")  # relative to the manifest
    assert (paper_decoder_onnx.parent / man["source"]["model"]).resolve() == paper_decoder.resolve()
    assert man["export"]["opset"] == 19 and man["export"]["dynamic"] is False
    assert man["genotype"]["hash"] and len(man["genotype"]["hash"]) == 64
    assert man["widths"]["fpn_channels"] == 8 and man["widths"]["num_classes"] == 3
    assert [o["name"] for o in man["outputs"]] == list(DECODER_OUTPUTS)
    assert man["outputs"][0]["shape"] == [1, 3, 20, 20]  # cls_p3 at 160 px, 3 classes
    assert man["tools"]["torch"] and man["tools"]["onnx"] and man["tools"]["onnxruntime"]
    assert man["export"]["ops"]["DeformConv"] >= 10


def test_manifest_detects_a_changed_file(paper_decoder_onnx, tmp_path) -> None:
    copy = tmp_path / "decoder.onnx"
    copy.write_bytes(paper_decoder_onnx.read_bytes())
    manifest_path_for(copy).write_text(manifest_path_for(paper_decoder_onnx).read_text())
    assert verify_manifest(copy) == []
    data = bytearray(copy.read_bytes())
    data[-10] ^= 0xFF
    copy.write_bytes(bytes(data))
    problems = verify_manifest(copy)
    assert any("sha256" in p for p in problems)


def test_random_genotypes_with_deform_convs(tmp_path, compile_tiny, deform_genotype_list,
                                            deform_detector_onnx) -> None:
    # the first genotype as a Detector (session export, shared with the precision tests),
    # the second as a Decoder
    assert load_manifest(deform_detector_onnx).raw["export"]["ops"].get("DeformConv", 0) >= 1
    report = check_artifact(deform_detector_onnx)
    assert report.ok, report.table()
    src = compile_tiny(tmp_path / "model.py", deform_genotype_list[1])
    res = export_onnx(src, tmp_path / "m.onnx", ExportOptions(size=(96, 160)))
    assert res.manifest["export"]["ops"].get("DeformConv", 0) >= 1
    report = check_artifact(res.onnx_path)
    assert report.ok, report.table()


def test_dynamic_decoder_two_sizes(paper_decoder, tmp_path) -> None:
    with pytest.warns(UserWarning, match="traced at 192x192"):  # issue 16: <= 128 px
        res = export_onnx(paper_decoder, tmp_path / "dyn.onnx",
                          ExportOptions(size=(128, 128), dynamic=True))
    shape = res.manifest["inputs"][0]["shape"]
    assert isinstance(shape[0], str) and isinstance(shape[2], str)  # batch and height symbolic
    ranges = res.manifest["export"]["dynamic_ranges"]["c2"]
    assert ranges["2"][1] is None and ranges["3"][1] is None  # no upper bound on H, W
    report = check_artifact(res.onnx_path, paper_decoder, sizes=[(128, 128), (96, 160), (256, 256)],
                            batch=1)
    assert report.ok, report.table()
    assert {tuple(s) for s in report.sizes} == {(128, 128), (96, 160), (256, 256)}


@pytest.mark.slow
def test_detector_static_and_dynamic(tiny_detector, tiny_detector_onnx, tmp_path) -> None:
    static = load_manifest(tiny_detector_onnx).raw  # static 160x160 export (session fixture)
    assert [o["name"] for o in static["outputs"]] == list(DETECTOR_OUTPUTS)
    assert static["outputs"][2]["dtype"] == "int64"
    assert static["export"]["ops"].get("DeformConv", 0) >= 1
    assert check_artifact(tiny_detector_onnx).ok
    dyn = export_onnx(tiny_detector, tmp_path / "det_dyn.onnx",
                      ExportOptions(size=(160, 160), dynamic=True))
    assert isinstance(dyn.manifest["inputs"][0]["shape"][0], str)  # batch is dynamic too
    report = check_artifact(dyn.onnx_path, tiny_detector, sizes=[(160, 160), (192, 224)])
    assert report.ok, report.table()
    for batch in (1, 3):
        report = check_artifact(dyn.onnx_path, tiny_detector, sizes=[(192, 160)], batch=batch)
        assert report.ok, report.table()


def _perturb(src, dst, node_prefix: str = "") -> str:
    """Copy an ONNX file with one conv weight feeding the classifier changed; returns its name."""
    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    target = next(n for n in reversed(model.graph.node)
                  if n.op_type == "Conv" and n.input[1] in inits and "cls" in n.input[1])
    init = inits[target.input[1]]
    arr = onnx.numpy_helper.to_array(init).copy()
    arr += 0.05 * np.sign(arr + 1e-12)
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    onnx.save(model, str(dst))
    return init.name


def test_check_fails_loudly_on_perturbed_model(paper_decoder_onnx, paper_decoder, tmp_path,
                                               capsys) -> None:
    bad = tmp_path / "bad.onnx"
    _perturb(paper_decoder_onnx, bad)
    report = check_artifact(bad, paper_decoder)
    assert not report.ok
    failed = {o.name for o in report.failures()}
    assert failed and all(n.startswith("cls_") for n in failed)
    assert not any(n.startswith(("reg_", "ctr_")) for n in failed)

    from nasfcos.cli.main import main

    code = main(["check", str(bad), "--against", str(paper_decoder)])
    err = capsys.readouterr().err
    assert code == 1
    assert "FAILED" in err and "cls_p3" in err


def test_export_rejects_bad_options(paper_decoder, tmp_path) -> None:
    with pytest.raises(NasfcosError, match="opset"):
        export_onnx(paper_decoder, tmp_path / "a.onnx", ExportOptions(opset=17))
    with pytest.raises(NasfcosError, match=".onnx"):
        export_onnx(paper_decoder, tmp_path / "a.txt", ExportOptions())
    with pytest.raises(NasfcosError, match="no such"):
        export_onnx(tmp_path / "missing.py", tmp_path / "a.onnx", ExportOptions())


@pytest.mark.slow
def test_dynamic_ranges_reject_out_of_range_inputs(tmp_path, tiny_detector) -> None:
    with pytest.warns(UserWarning, match="traced at 192x192"):
        res = export_onnx(tiny_detector, tmp_path / "small.onnx",
                          ExportOptions(kind="detector", size=(64, 64), dynamic=True))
    ranges = res.manifest["export"]["dynamic_ranges"]["images"]
    assert ranges["2"][1] is None  # a small size no longer bounds the export (issue 16)
    man = json.loads(res.manifest_path.read_text())
    man["export"]["dynamic_ranges"]["images"]["2"] = [0, 128]  # a bounded export
    res.manifest_path.write_text(json.dumps(man))
    with pytest.raises(NasfcosError, match="outside the range"):
        check_artifact(res.onnx_path, tiny_detector, sizes=[(256, 256)])
    json.dumps(res.manifest)  # manifest is plain JSON
