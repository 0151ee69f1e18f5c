"""Graph passes of the export (runtime/optimize.py): each one against PyTorch on random
genotypes with deformable convs (static and dynamic), and on hand-made graphs for the cases
a pass must leave alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from nasfcos.runtime.export import ExportOptions, export_onnx
from nasfcos.runtime.models import load_model
from nasfcos.runtime.optimize import (
    fold_batchnorm_into_deformconv,
    merge_offset_split,
    optimize_onnx,
)


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def _randomise(net: torch.nn.Module, seed: int) -> None:
    """Non-trivial BN statistics and affine, GN affine and offset convs (the default weights
    make every BN an identity and every offset zero, which would hide a wrong fold)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in net.named_modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.5, generator=g)
                m.running_var.uniform_(0.3, 2.0, generator=g)
            if isinstance(m, torch.nn.BatchNorm2d | torch.nn.GroupNorm):
                m.weight.normal_(1.0, 0.3, generator=g)
                m.bias.normal_(0.0, 0.3, generator=g)
            if name.endswith("conv_offset_mask"):
                m.weight.normal_(0.0, 0.05, generator=g)
                m.bias.normal_(0.0, 0.5, generator=g)


def _deformconv_feeds_bn(model: onnx.ModelProto) -> int:
    made_by = {o: n.op_type for n in model.graph.node for o in n.output}
    return sum(1 for n in model.graph.node
               if n.op_type == "BatchNormalization" and made_by.get(n.input[0]) == "DeformConv")


@pytest.mark.parametrize("index,dynamic", [(0, False), (1, True)])
def test_passes_match_pytorch_on_random_deform_genotypes(tmp_path, index, dynamic, compile_tiny,
                                                         deform_genotype_list) -> None:
    src = compile_tiny(tmp_path / "model.py", deform_genotype_list[index])
    lm = load_model(src, "decoder", seed=index)
    _randomise(lm.net, seed=index)
    plain = export_onnx(lm, tmp_path / "plain.onnx",
                        ExportOptions(size=(160, 192), dynamic=dynamic, optimize=False))
    assert plain.manifest["export"]["graph_passes"] is None
    before = onnx.load(str(plain.onnx_path))
    after = onnx.load(str(plain.onnx_path))  # what export_onnx's hook does, on a copy
    passes = optimize_onnx(after)
    assert passes["offset_split"] == plain.manifest["export"]["ops"]["DeformConv"] >= 1
    assert passes["bn_into_deformconv"] == _deformconv_feeds_bn(before) >= 1
    assert _deformconv_feeds_bn(after) == 0
    assert len(after.graph.node) < len(before.graph.node)
    onnx.checker.check_model(after, full_check=True)
    # > 128 px: p7 larger than 1 x 1 for GroupNorm(32); a dynamic graph runs at another size
    size = (192, 160) if dynamic else (160, 192)
    arrays = lm.inputs(size, 1, seed=5)
    with torch.no_grad():
        want = [t.numpy() for t in lm.net(*(torch.from_numpy(a) for a in arrays))]
    got = _run(after, dict(zip(lm.input_names, arrays, strict=True)))
    for w, o in zip(want, got, strict=True):
        np.testing.assert_allclose(o, w, rtol=1e-3, atol=2e-4)


def _dcn_graph(bias: bool, extra_use: bool, output: bool) -> tuple[onnx.ModelProto, dict]:
    """x -> DeformConv(W[, B]) -> BN -> y, offsets and mask as inputs (4 channels, 2 groups)."""
    rng = np.random.default_rng(0)
    c, h, w = 4, 5, 6
    inits = [numpy_helper.from_array(rng.standard_normal((c, c, 3, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), "B")]
    for name, v in (("g", rng.uniform(0.5, 1.5, c)), ("b", rng.standard_normal(c)),
                    ("m", rng.standard_normal(c)), ("v", rng.uniform(0.3, 2.0, c))):
        inits.append(numpy_helper.from_array(v.astype(np.float32), name))
    dcn_in = ["x", "W", "off", "B" if bias else "", "mask"]
    nodes = [helper.make_node("DeformConv", dcn_in, ["d"], kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1], offset_group=2),
             helper.make_node("BatchNormalization", ["d", "g", "b", "m", "v"], ["y"],
                              epsilon=1e-3)]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, h, w])]
    if extra_use:
        nodes.append(helper.make_node("Relu", ["d"], ["r"]))
        outs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, c, h, w]))
    if output:
        outs.append(helper.make_tensor_value_info("d", TensorProto.FLOAT, [1, c, h, w]))
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, w]),
           helper.make_tensor_value_info("off", TensorProto.FLOAT, [1, 36, h, w]),
           helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 18, h, w])]
    model = helper.make_model(helper.make_graph(nodes, "g", ins, outs, inits),
                              opset_imports=[helper.make_opsetid("", 19)])
    feed = {"x": rng.standard_normal((1, c, h, w)).astype(np.float32),
            "off": rng.standard_normal((1, 36, h, w)).astype(np.float32),
            "mask": rng.uniform(0, 1, (1, 18, h, w)).astype(np.float32)}
    return model, feed


@pytest.mark.parametrize("bias", [True, False])
def test_fold_with_and_without_bias(bias) -> None:
    model, feed = _dcn_graph(bias=bias, extra_use=False, output=False)
    want = _run(model, feed)
    assert fold_batchnorm_into_deformconv(model) == 1
    assert [n.op_type for n in model.graph.node] == ["DeformConv"]
    assert {i.name for i in model.graph.initializer} == {
        n for n in model.graph.node[0].input[1::2] if n}  # the old W, B and BN stats are gone
    onnx.checker.check_model(model)
    np.testing.assert_allclose(_run(model, feed)[0], want[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("extra_use,output", [(True, False), (False, True)])
def test_fold_leaves_a_shared_deformconv_output_alone(extra_use, output) -> None:
    model, _ = _dcn_graph(bias=True, extra_use=extra_use, output=output)
    before = model.SerializeToString()
    assert fold_batchnorm_into_deformconv(model) == 0
    assert model.SerializeToString() == before


@pytest.mark.parametrize("explicit_sizes", [True, False])
def test_merge_offset_split(explicit_sizes) -> None:
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal((54, 4, 3, 3)).astype(np.float32), "W")]
    split_in = ["c"]
    kw = {"axis": 1}
    if explicit_sizes:
        inits.append(numpy_helper.from_array(np.array([18, 18, 18], dtype=np.int64), "s"))
        split_in.append("s")
    else:
        kw["num_outputs"] = 3
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Split", split_in, ["a", "b", "m"], **kw),
             helper.make_node("Concat", ["a", "b"], ["off"], axis=1),
             helper.make_node("Sigmoid", ["m"], ["mask"])]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, k, 5, 5])
            for n, k in (("off", 36), ("mask", 18))]
    model = helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])],
        outs, inits), opset_imports=[helper.make_opsetid("", 19)])
    feed = {"x": rng.standard_normal((1, 4, 5, 5)).astype(np.float32)}
    want = _run(model, feed)
    assert optimize_onnx(model) == {"bn_into_deformconv": 0, "offset_split": 1}
    assert [n.op_type for n in model.graph.node] == ["Conv", "Split", "Sigmoid"]
    onnx.checker.check_model(model)
    for w, g in zip(want, _run(model, feed), strict=True):
        np.testing.assert_array_equal(g, w)
    # a Split whose first outputs are read elsewhere too is left alone
    model.graph.node[1].CopyFrom(helper.make_node("Split", split_in, ["a", "b", "m"], **kw))
    model.graph.node.insert(2, helper.make_node("Concat", ["a", "b"], ["off"], axis=1))
    model.graph.node.append(helper.make_node("Relu", ["a"], ["r"]))
    model.graph.output.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 18, 5, 5]))
    if explicit_sizes:
        model.graph.initializer.append(
            numpy_helper.from_array(np.array([18, 18, 18], dtype=np.int64), "s"))
    assert merge_offset_split(model) == 0


def test_bench_baseline_row_and_ratio(tiny_detector) -> None:
    """``nasfcos bench --baseline``: the route without nasfcos is timed next to onnxruntime
    (256 px: the reference interpreter's GroupNorm(32) needs p7 larger than 1 x 1)."""
    from nasfcos.runtime.bench import BASELINE_BACKEND, BenchConfig, markdown_table, run_benchmark

    cfg = BenchConfig(backends=["onnxruntime"], sizes=[(256, 256)], runs=2, warmup=0, threads=1,
                      onnx_static=True, baseline=True, matmul_peak=False, flops=False)
    report = run_benchmark(tiny_detector, cfg)
    rows = {r["backend"]: r for r in report["results"]}
    assert set(rows) == {"onnxruntime", BASELINE_BACKEND}
    assert all(r["status"] == "ok" for r in rows.values()), rows
    assert rows[BASELINE_BACKEND]["info"]["opt_level"] == "default options"
    ratio = report["baseline_ratio"]["256x256"]
    assert ratio == pytest.approx(rows["onnxruntime"]["median_ms"]
                                  / rows[BASELINE_BACKEND]["median_ms"], abs=1e-3)
    lo, hi = report["baseline_ratio_95ci"]["256x256"]
    assert lo <= ratio <= hi
    assert "onnxruntime-baseline" in markdown_table(report)
