"""ONNX graph passes that make an export cheaper to run without changing its results beyond
float32 rounding (called by :func:`nasfcos.runtime.export.export_onnx` after ``onnxslim``).

ONNX Runtime already folds ``BatchNormalization`` into a preceding ``Conv`` and fuses
``Conv`` + activation in its blocked (NCHWc) layout; what it leaves is done here:

* :func:`fold_batchnorm_into_deformconv`: ``DeformConv -> BatchNormalization`` (every
  deformable conv of a genotype's FPN) becomes one ``DeformConv`` with scaled weights and a
  shifted bias: ``W' = W * s``, ``B' = B * s + t`` with ``s = gamma / sqrt(var + eps)`` and
  ``t = beta - mean * s`` per output channel (ORT and onnxslim fold BN into ``Conv`` only).
* :func:`merge_offset_split`: the DCN's ``Split(3) -> Concat(o1, o2)`` that rebuilds the
  offsets from the offset-mask conv becomes one ``Split([2k, k])`` (no copy of the offsets).

GroupNorm is left as the exporter writes it (``Reshape -> InstanceNormalization -> Reshape``,
then ``Mul``/``Add`` for the affine part unless it is the identity): opset 19 has no
per-channel GroupNorm op, ONNX Runtime's CPU provider has no fused kernel for the pattern,
and it is already the fewest nodes the opset allows.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np


def _graph_maps(graph: Any) -> tuple[dict[str, Any], dict[str, list[Any]], set[str]]:
    """(initializers by name, consumer nodes by tensor name, graph output names)."""
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            if name:
                consumers[name].append(node)
    return inits, consumers, {o.name for o in graph.output}


def _attr(node: Any, name: str, default: Any) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _drop_unused_initializers(graph: Any) -> None:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _remove_nodes(graph: Any, nodes: list[Any]) -> int:
    """Remove ``nodes`` (the ones a pass made redundant) and then-unused initializers; returns
    how many were removed (the pass's count)."""
    for node in nodes:
        graph.node.remove(node)
    if nodes:
        _drop_unused_initializers(graph)
    return len(nodes)


def fold_batchnorm_into_deformconv(model: Any) -> int:
    """Fold inference ``BatchNormalization`` nodes into the ``DeformConv`` feeding them, in place.

    Only where the DCN's output feeds that BN alone and every weight, bias and BN statistic is
    an initializer.  Returns the number of folds.
    """
    from onnx import numpy_helper

    graph = model.graph
    inits, consumers, outputs = _graph_maps(graph)
    remove: list[Any] = []  # one BN per fold
    for dcn in graph.node:
        if dcn.op_type != "DeformConv" or dcn.output[0] in outputs:
            continue
        users = consumers.get(dcn.output[0], [])
        if len(users) != 1 or users[0].op_type != "BatchNormalization":
            continue
        bn = users[0]
        if _attr(bn, "training_mode", 0) or len(bn.output) != 1:
            continue
        if dcn.input[1] not in inits or any(n not in inits for n in bn.input[1:5]):
            continue
        has_bias = len(dcn.input) > 3 and dcn.input[3] != ""
        if has_bias and dcn.input[3] not in inits:
            continue
        w = numpy_helper.to_array(inits[dcn.input[1]]).astype(np.float64)
        gamma, beta, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64)
                                  for n in bn.input[1:5])
        bias = (numpy_helper.to_array(inits[dcn.input[3]]).astype(np.float64) if has_bias
                else np.zeros(w.shape[0]))
        scale = gamma / np.sqrt(var + float(_attr(bn, "epsilon", 1e-5)))
        dtype = numpy_helper.to_array(inits[dcn.input[1]]).dtype
        base = dcn.output[0]
        w_name, b_name = f"{base}_bnfold_weight", f"{base}_bnfold_bias"
        graph.initializer.extend([
            numpy_helper.from_array((w * scale[:, None, None, None]).astype(dtype), w_name),
            numpy_helper.from_array((bias * scale + beta - mean * scale).astype(dtype), b_name)])
        inputs = list(dcn.input) + [""] * (4 - len(dcn.input))
        inputs[1], inputs[3] = w_name, b_name
        del dcn.input[:]
        dcn.input.extend(inputs)
        dcn.output[0] = bn.output[0]  # the DCN now produces the BN's tensor
        remove.append(bn)
    return _remove_nodes(graph, remove)


def _split_sizes(split: Any, inits: dict[str, Any], producers: dict[str, Any],
                 axis: int) -> list[int] | None:
    """The three part sizes of a Split: from its ``split`` input, or for ``num_outputs=3``
    from the channel count of the Conv producing its input (axis 1, divisible by 3)."""
    from onnx import numpy_helper

    if len(split.input) > 1 and split.input[1]:
        if split.input[1] not in inits:
            return None
        return [int(v) for v in numpy_helper.to_array(inits[split.input[1]])]
    conv = producers.get(split.input[0])
    if (axis != 1 or _attr(split, "num_outputs", None) != 3 or conv is None
            or conv.op_type != "Conv" or conv.input[1] not in inits):
        return None
    channels = int(inits[conv.input[1]].dims[0])
    return [channels // 3] * 3 if channels % 3 == 0 else None


def merge_offset_split(model: Any) -> int:
    """``Split(x) -> (a, b, c)``, ``Concat(a, b)`` on the same axis, ``a`` and ``b`` read by
    that Concat alone -> ``Split(x) -> (ab, c)``, in place.  Returns the number of merges."""
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    inits, consumers, outputs = _graph_maps(graph)
    producers = {o: n for n in graph.node for o in n.output}
    remove: list[Any] = []  # one Concat per merge
    for split in graph.node:
        if split.op_type != "Split" or len(split.output) != 3:
            continue
        a, b, _ = split.output
        users_a, users_b = consumers.get(a, []), consumers.get(b, [])
        if len(users_a) != 1 or users_a != users_b or a in outputs or b in outputs:
            continue
        cat = users_a[0]
        axis = _attr(split, "axis", 0)
        if cat.op_type != "Concat" or list(cat.input) != [a, b] or _attr(cat, "axis", None) != axis:
            continue
        sizes = _split_sizes(split, inits, producers, axis)
        if sizes is None:
            continue
        name = f"{split.output[0]}_merged_sizes"
        graph.initializer.append(numpy_helper.from_array(
            np.array([sizes[0] + sizes[1], sizes[2]], dtype=np.int64), name))
        new = onnx.helper.make_node("Split", [split.input[0], name], [cat.output[0], split.output[2]],
                                    name=split.name, axis=axis)
        split.CopyFrom(new)
        remove.append(cat)
    return _remove_nodes(graph, remove)


def optimize_onnx(model: Any) -> dict[str, int]:
    """Run every pass on ``model`` (an ``onnx.ModelProto``) in place; counts per pass."""
    return {"bn_into_deformconv": fold_batchnorm_into_deformconv(model),
            "offset_split": merge_offset_split(model)}


__all__ = ["fold_batchnorm_into_deformconv", "merge_offset_split", "optimize_onnx"]
