"""What TensorRT's ONNX parser takes for DeformConv, checked without TensorRT (at export and
before a build).  src: onnx-tensorrt's DeformConv importer and docs/operators.md ("FP32, FP16;
1D or 2D spatial dimensions; pads at the beginning and end of each axis the same"); group,
offset_group, strides and dilations pass unrestricted, a missing mask becomes ones."""

from __future__ import annotations

import warnings
from typing import Any

#: ONNX element types the parser accepts for DeformConv (TensorProto.FLOAT, FLOAT16).
_TRT_DEFORM_DTYPES = {1: "float32", 10: "float16"}
_DEFORM_INPUTS = ("X", "W", "offset", "B", "mask")


def _value_facts(model: Any) -> tuple[dict[str, int], dict[str, int]]:
    """(element type, rank) of every named value the graph declares: inputs, initializers,
    value_info after shape inference, outputs, Constant nodes."""
    import onnx

    try:
        g = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
    except Exception:  # inference is only a help here: declared types still count
        g = model.graph
    types = {t.name: t.data_type for t in g.initializer}
    ranks = {t.name: len(t.dims) for t in g.initializer}
    for vi in (*g.input, *g.value_info, *g.output):
        tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if tt is not None and tt.elem_type:
            types[vi.name] = tt.elem_type
        if tt is not None and tt.HasField("shape"):
            ranks[vi.name] = len(tt.shape.dim)
    for n in g.node:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value":
                    types[n.output[0]] = a.t.data_type
                    ranks[n.output[0]] = len(a.t.dims)
    return types, ranks


def deformconv_problems(model: Any) -> list[str]:
    """One line per ``DeformConv`` node TensorRT's ONNX parser would refuse, naming the node
    and the rule (empty when every node passes).  ``model``: an ``onnx.ModelProto``."""
    nodes = [n for n in model.graph.node if n.op_type == "DeformConv"]
    if not nodes:
        return []
    types, ranks = _value_facts(model)
    dtype_name = {1: "float32", 10: "float16", 16: "bfloat16", 11: "float64", 3: "int8",
                  2: "uint8", 6: "int32", 7: "int64"}
    problems = []
    for i, n in enumerate(nodes):
        name = f"DeformConv node '{n.name or f'#{i}'}'"
        attrs = {a.name: a for a in n.attribute}
        present = [(slot, v) for slot, v in zip(_DEFORM_INPUTS, n.input, strict=False) if v]
        x_type = types.get(n.input[0]) if n.input else None
        if x_type is not None and x_type not in _TRT_DEFORM_DTYPES:
            problems.append(f"{name}: input X is {dtype_name.get(x_type, x_type)}; TensorRT "
                            "takes float32 or float16")
        elif x_type is not None:
            for slot, value in present[1:]:
                t = types.get(value)
                if t is not None and t != x_type:
                    problems.append(f"{name}: input {slot} is {dtype_name.get(t, t)} but X is "
                                    f"{_TRT_DEFORM_DTYPES[x_type]}; TensorRT needs them all the "
                                    "same (float32 or float16)")
                    break
        rank = ranks.get(n.input[0]) if n.input else None
        if rank is None and len(n.input) > 1:
            rank = ranks.get(n.input[1])  # W has the rank of X
        if rank is not None and rank not in (3, 4):
            problems.append(f"{name}: {rank - 2} spatial dimensions; TensorRT takes 1 or 2")
            continue
        spatial = (rank - 2) if rank is not None else None
        if "kernel_shape" in attrs and spatial is not None and \
                len(attrs["kernel_shape"].ints) != spatial:
            problems.append(f"{name}: kernel_shape {list(attrs['kernel_shape'].ints)} does not "
                            f"match {spatial} spatial dimension(s)")
        if "pads" in attrs:
            pads = list(attrs["pads"].ints)
            half = len(pads) // 2
            if len(pads) % 2 or (spatial is not None and half != spatial):
                problems.append(f"{name}: pads {pads} do not match the spatial dimensions")
            elif pads[:half] != pads[half:]:
                problems.append(f"{name}: pads {pads} differ at the beginning and the end of an "
                                "axis; TensorRT takes symmetric pads only")
    return problems


def tensorrt_parser_record(model: Any) -> dict[str, Any]:
    """The manifest's record of the TensorRT check at export time (``export.tensorrt``);
    warns once, naming the first refused node, when TensorRT could not import the graph."""
    problems = deformconv_problems(model)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        warnings.warn(f"TensorRT's ONNX parser would refuse this graph: {problems[0]}{more}; "
                      "ONNX Runtime runs it", stacklevel=2)
    return {"deformconv": sum(n.op_type == "DeformConv" for n in model.graph.node),
            "parser_ok": not problems, "problems": problems}


__all__ = ["deformconv_problems", "tensorrt_parser_record"]
