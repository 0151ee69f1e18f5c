"""Reduced precision in the ONNX file: fp16 and int8 Q/DQ exports, their structure, parity
with the fp32 PyTorch model at their tolerances, calibration sources, manifest, bad input."""

from __future__ import annotations

import shutil

import onnx
import pytest

from nasfcos.errors import NasfcosError
from nasfcos.runtime.check import TOLERANCES, check_artifact, detection_agreement
from nasfcos.runtime.export import (
    ExportOptions,
    convert_onnx,
    export_onnx,
    load_manifest,
    verify_manifest,
)
from nasfcos.runtime.precision import (
    FP16_BLOCK_OPS,
    PrecisionOptions,
    file_list_sha256,
    qdq_summary,
)


def _elem_types(model) -> set[int]:
    return {i.data_type for i in model.graph.initializer}


def _assert_fp16_graph(path) -> None:
    model = onnx.load(str(path))
    io = [*model.graph.input, *model.graph.output]
    assert all(v.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16 for v in io)
    assert onnx.TensorProto.FLOAT16 in _elem_types(model)
    half_convs = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    inits = {i.name: i.data_type for i in model.graph.initializer}
    assert all(inits.get(w) == onnx.TensorProto.FLOAT16 for w in half_convs if w in inits)
    # blocked ops read float32 tensors: their inputs come from a Cast to float or fp32 nodes
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in onnx.shape_inference.infer_shapes(model).graph.value_info}
    for n in model.graph.node:
        if n.op_type in ("TopK", "NonMaxSuppression", "Exp"):
            assert types.get(n.input[0], onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT, n.name


@pytest.mark.parametrize("which", ["tiny_detector_onnx", "deform_detector_onnx"])
def test_fp16_and_int8_exports_pass_check(which, request, synth_data, tmp_path) -> None:
    src = request.getfixturevalue(which)
    assert "DeformConv" in load_manifest(src).raw["export"]["ops"]
    fp16 = tmp_path / "m.fp16.onnx"
    man = convert_onnx(src, fp16, PrecisionOptions("fp16"))
    assert man["precision"]["precision"] == "fp16"
    assert man["precision"]["blocked_ops"] == list(FP16_BLOCK_OPS)
    assert verify_manifest(fp16) == []
    _assert_fp16_graph(fp16)
    rep = check_artifact(fp16, src.parent / "model.py")
    assert rep.precision == "fp16" and rep.ok, rep.table()
    assert rep.outputs[0].atol == TOLERANCES["fp16"].atol
    agree = rep.agreement[0]
    assert agree["match_rate"] >= 0.95 and agree["max_score_diff"] < 1e-2, rep.table()

    for target, symmetric in (("tensorrt", True), ("cpu", False)):
        q = tmp_path / f"m.int8.{target}.onnx"
        man = convert_onnx(src, q, PrecisionOptions("int8", data=synth_data, calib_images=4,
                                                    int8_target=target))
        model = onnx.load(str(q))
        s = qdq_summary(model)
        n_deform = sum(n.op_type == "DeformConv" for n in model.graph.node)
        # every conv is quantized except those predicting the deformable offsets/masks
        assert s["quantized_convs"] > 0 and s["float_convs"] == man["precision"]["excluded_convs"]
        assert 0 < s["float_convs"] <= n_deform
        assert s["symmetric"] is symmetric
        assert ("uint8" in s["dtypes"]) is (not symmetric)
        if target == "tensorrt":  # Q/DQ on conv inputs only: no int32 bias, no output Q,
            assert "int32" not in s["dtypes"]  # DeformConv reads float tensors
            dq_out = {o for m in model.graph.node if m.op_type == "DequantizeLinear"
                      for o in m.output}
            assert not any(n.op_type == "DeformConv" and set(n.input) & dq_out
                           for n in model.graph.node)
        rep = check_artifact(q, src.parent / "model.py")
        assert rep.precision == "int8" and rep.ok, rep.table()
        assert rep.agreement[0]["match_rate"] >= 0.8, rep.table()


def test_export_writes_precision_and_calibration_from_a_folder(tiny_detector, synth_data,
                                                               tmp_path) -> None:
    images = tmp_path / "calib"
    shutil.copytree(synth_data / "images", images / "sub")
    opts = PrecisionOptions("int8", calib=images, calib_images=5, calib_method="entropy")
    out = tmp_path / "det.int8.onnx"
    res = export_onnx(tiny_detector, out, ExportOptions(size=(160, 160), simplify=False,
                                                        precision=opts))
    prec = res.manifest["precision"]
    files = sorted((images / "sub").glob("*.png"))[:5]
    assert prec["precision"] == "int8" and prec["method"] == "entropy"
    assert prec["target"] == "tensorrt" and prec["format"] == "QDQ"
    assert prec["calibration"]["count"] == 5 and prec["calibration"]["kind"] == "folder"
    assert prec["calibration"]["files_sha256"] == file_list_sha256(files)
    assert verify_manifest(out) == []
    assert qdq_summary(onnx.load(str(out)))["quantized_convs"] > 0
    rep = check_artifact(out, tiny_detector)
    assert rep.precision == "int8" and rep.ok, rep.table()


def test_bad_precision_inputs(tiny_detector, tiny_detector_onnx, synth_data, tmp_path,
                              paper_decoder_onnx, capsys) -> None:
    from nasfcos.cli.main import main

    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(3):
        (broken / f"{i}.png").write_bytes(b"not a png")
    out = tmp_path / "x.onnx"
    cases = [
        (["--precision", "int8", "--calib", str(empty)], "no calibration images"),
        (["--precision", "int8", "--calib", str(broken), "--calib-images", "2"],
         "cannot read calibration image"),
        (["--precision", "int8", "--calib", str(synth_data / "images"), "--calib-images", "99"],
         "too few for 99 (add images or lower it)"),
        (["--precision", "int8"], "--calib: int8 needs calibration images"),
        (["--precision", "fp16", "--calib", str(empty)], "calibrate int8 only"),
        (["--precision", "int8", "--int8-target", "cpu", "--data", str(synth_data),
          "--trt", str(tmp_path / "x.engine")], "TensorRT cannot build --int8-target cpu"),
    ]
    for src in (tiny_detector, tiny_detector_onnx):
        for flags, msg in cases:
            code = main(["export", str(src), "-o", str(out), *flags])
            err = capsys.readouterr().err.strip().splitlines()
            assert code == 2 and len(err) == 1 and msg in err[0], (src.suffix, flags, err)
            assert not out.exists() and not list(tmp_path.glob("*.onnx.json"))
    # a model without an `images` input cannot be calibrated on images
    code = main(["export", str(paper_decoder_onnx), "-o", str(out), "--precision", "int8",
                 "--data", str(synth_data)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "inputs are c2, c3, c4, c5" in err[0]
    assert not out.exists()
    # already reduced: lower from an fp32 export only
    half = tmp_path / "h.onnx"
    convert_onnx(tiny_detector_onnx, half, PrecisionOptions("fp16"))
    with pytest.raises(NasfcosError, match="already fp16"):
        convert_onnx(half, tmp_path / "h2.onnx", PrecisionOptions("fp16"))


def test_detection_agreement_counts_iou_and_labels() -> None:
    import numpy as np

    boxes = np.array([[[0, 0, 10, 10], [20, 20, 40, 40], [0, 0, 0, 0]]], np.float32)
    scores = np.array([[0.9, 0.8, 0.0]], np.float32)
    labels = np.array([[1, 2, -1]], np.int64)
    moved = boxes.copy()
    moved[0, 1] += 2.0  # IoU 0.82 < 0.95
    relabel = labels.copy()
    relabel[0, 0] = 0
    same = detection_agreement((boxes, scores, labels), (boxes, scores + 0.01, labels))
    assert same.matched == 2 and same.match_rate == 1.0 and abs(same.max_score_diff - 0.01) < 1e-6
    assert detection_agreement((boxes, scores, labels), (moved, scores, labels)).matched == 1
    assert detection_agreement((boxes, scores, labels), (boxes, scores, relabel)).matched == 1
