"""DeformConv as TensorRT's ONNX parser takes it (onnx-tensorrt's DeformConv importer): small
graphs that pass and ones that must fail, named by node; every export records the check."""

from __future__ import annotations

import json

import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h

from nasfcos.errors import NasfcosError
from nasfcos.runtime.export import deformconv_problems
from nasfcos.runtime.trt import _refuse_unparsable


def _graph(*, x=T.FLOAT, w=None, off=None, b=None, mask=None, rank=4, pads=(1, 1, 1, 1),
           kernel=None, name="dc0", **attrs) -> onnx.ModelProto:
    """One DeformConv node; each input's element type can be set (default: X's)."""
    sp = rank - 2
    types = {"X": x, "W": w or x, "offset": off or x, "B": b or x, "mask": mask or x}
    shapes = {"X": [1, 4, *[8] * sp], "W": [4, 2, *[3] * sp], "offset": [1, 2 * 2 * 9, *[8] * sp],
              "B": [4], "mask": [1, 2 * 9, *[8] * sp]}
    vis = [h.make_tensor_value_info(k, types[k], shapes[k]) for k in types]
    a = {"pads": list(pads), "group": 2, "offset_group": 2, "dilations": [2] * sp,
         "strides": [1] * sp, **attrs}
    if kernel is not None:
        a["kernel_shape"] = list(kernel)
    node = h.make_node("DeformConv", list(types), ["Y"], name=name, **a)
    g = h.make_graph([node], "g", vis, [h.make_tensor_value_info("Y", x, None)])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 19)])


@pytest.mark.parametrize("kwargs", [
    {},                                              # fp32, groups, offset groups, mask, dilations
    {"x": T.FLOAT16},                                # fp16 throughout
    {"rank": 3, "pads": (1, 1)},                     # 1-D spatial
    {"pads": (0, 2, 0, 2)},                          # symmetric per axis
    {"kernel": (3, 3)},
])
def test_graphs_the_parser_takes(kwargs) -> None:
    assert deformconv_problems(_graph(**kwargs)) == []


@pytest.mark.parametrize(("kwargs", "msg"), [
    ({"x": T.BFLOAT16}, "input X is bfloat16; TensorRT takes float32 or float16"),
    ({"x": T.DOUBLE}, "input X is float64"),
    ({"w": T.FLOAT16}, "input W is float16 but X is float32"),
    ({"off": T.FLOAT16}, "input offset is float16 but X is float32"),
    ({"mask": T.FLOAT16}, "input mask is float16 but X is float32"),
    ({"x": T.FLOAT16, "b": T.FLOAT}, "input B is float32 but X is float16"),
    ({"rank": 5, "pads": (1,) * 6}, "3 spatial dimensions; TensorRT takes 1 or 2"),
    ({"pads": (1, 0, 1, 1)}, "differ at the beginning and the end"),
    ({"pads": (1, 1)}, "do not match the spatial dimensions"),
    ({"kernel": (3,)}, "kernel_shape [3] does not match 2 spatial"),
])
def test_graphs_the_parser_refuses_name_the_node(kwargs, msg) -> None:
    (problem,) = deformconv_problems(_graph(name="head.dcn3", **kwargs))
    assert problem.startswith("DeformConv node 'head.dcn3': ") and msg in problem


def test_build_refuses_before_parsing(tmp_path) -> None:
    bad = tmp_path / "bad.onnx"
    onnx.save(_graph(name="fpn.dcn", pads=(1, 0, 1, 1)), str(bad))
    with pytest.raises(NasfcosError, match=r"^TensorRT cannot import bad.onnx: DeformConv node "
                                           r"'fpn.dcn': pads \[1, 0, 1, 1\] differ"):
        _refuse_unparsable(bad)
    good = tmp_path / "good.onnx"
    onnx.save(_graph(), str(good))
    _refuse_unparsable(good)


def test_exports_record_the_check(deform_detector_onnx) -> None:
    """A real export with deformable convs passes and says so in its manifest."""
    man = json.loads(deform_detector_onnx.with_name(deform_detector_onnx.name + ".json")
                     .read_text())
    rec = man["export"]["tensorrt"]
    assert rec["deformconv"] == man["export"]["ops"]["DeformConv"] > 0
    assert rec == {"deformconv": rec["deformconv"], "parser_ok": True, "problems": []}
    assert deformconv_problems(onnx.load(str(deform_detector_onnx))) == []
