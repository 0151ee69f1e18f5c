"""The generated file: determinism, header, constants, imports, structure, dead-path elimination."""

from __future__ import annotations

import ast
import json
import os
import py_compile
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from nasfcos.compiler import (
    GENERATOR_VERSION,
    CompileOptions,
    compile_genotype,
    compile_to_module,
)
from nasfcos.genotypes import load_paper_genotype, parse_genotype, sample_genotype

REPO = Path(__file__).resolve().parents[2]
PAPER = load_paper_genotype("nas_fcos_fpn_head")


def _dag(blocks: list[dict[str, Any]], first_op: str = "conv_3x3", share: Any = 0,
         fpn: list[dict[str, Any]] | None = None, name: str = "dead-path-test") -> Any:
    doc = PAPER.to_dict(with_meta=False)
    doc["name"] = name
    if fpn is not None:
        doc["fpn"] = fpn
    doc["head"] = {"kind": "dag", "first_op": first_op, "blocks": blocks}
    doc["share"] = share
    return parse_genotype(doc)


def _code_part(source: str) -> str:
    """The source without the header comments and the GENOTYPE constant (provenance only)."""
    start = source.index("GENOTYPE = {")
    end = source.index("\n}\n", start) + 3
    return source[source.index('"""', 0):start] + source[end:]


def test_same_input_gives_byte_identical_output() -> None:
    g = sample_genotype(3, "dag")
    a = compile_genotype(g, fpn_channels=64, head_channels=128)
    b = compile_genotype(parse_genotype(g.to_dict()), CompileOptions(fpn_channels=64, head_channels=128))
    assert a == b
    # a fresh interpreter with another hash seed gives the same bytes
    code = (
        "import sys; from nasfcos.compiler import compile_genotype; "
        "from nasfcos.genotypes import sample_genotype; "
        "sys.stdout.write(compile_genotype(sample_genotype(3, 'dag'), fpn_channels=64, head_channels=128))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout == a


def test_meta_and_name_do_not_change_code_but_name_is_recorded() -> None:
    doc = PAPER.to_dict()
    doc["meta"] = {"note": "import os; os.system('x')", "reward": 1.5}
    src = compile_genotype(parse_genotype(doc))
    assert "os.system" not in src and "reward" not in src
    assert src == compile_genotype(PAPER)


def test_header_and_constants() -> None:
    opts = CompileOptions(fpn_channels=96, head_channels=160, num_classes=21, in_channels=(64, 128, 256, 512))
    src = compile_genotype(PAPER, opts)
    header = src.split('"""', 1)[0]
    assert f"generator {GENERATOR_VERSION}" in header
    assert PAPER.name in header and PAPER.hash() in header
    # the shipped genotype by the name 'compile' takes (a command that runs when copied)
    assert ("nasfcos compile nas_fcos_fpn_head -o model.py --fpn-channels 96 --head-channels 160 "
            "--num-classes 21 --in-channels 64,128,256,512") in header
    assert str(REPO) not in src and "/tmp" not in src  # nothing machine-specific
    mod = compile_to_module(PAPER, opts)
    assert mod.GENOTYPE == PAPER.to_dict(with_meta=False)
    assert mod.GENOTYPE_HASH == PAPER.hash() and mod.GENOTYPE_NAME == PAPER.name
    assert mod.GENERATOR_VERSION == GENERATOR_VERSION
    assert (mod.FPN_CHANNELS, mod.HEAD_CHANNELS, mod.NUM_CLASSES) == (96, 160, 21)
    assert mod.IN_CHANNELS == (64, 128, 256, 512)
    assert mod.STRIDES == (8, 16, 32, 64, 128)
    assert parse_genotype(mod.GENOTYPE) == PAPER


@pytest.mark.parametrize("kind", ["fcos", "sequential", "dag"])
def test_imports_only_stdlib_torch_torchvision_and_compiles(kind: str, tmp_path: Path) -> None:
    src = compile_genotype(sample_genotype(11, kind))
    path = tmp_path / "model.py"
    path.write_text(src)
    py_compile.compile(str(path), doraise=True)
    tree = ast.parse(src)
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0
            roots.add((node.module or "").split(".")[0])
    assert roots, "no imports found"
    assert all(r in ("torch", "torchvision") or r in sys.stdlib_module_names for r in roots), roots
    assert "nasfcos" not in roots


def _ruff() -> str | None:
    local = Path(sys.executable).with_name("ruff")
    return str(local) if local.exists() else shutil.which("ruff")


@pytest.mark.skipif(_ruff() is None, reason="ruff is not installed (pip install -e '.[dev]')")
def test_generated_files_pass_ruff(tmp_path: Path) -> None:
    paths = []
    for i, kind in enumerate(("fcos", "sequential", "dag", "dag")):
        p = tmp_path / f"model_{i}.py"
        p.write_text(compile_genotype(sample_genotype(100 + i, kind), head_channels=64 if i == 3 else None))
        paths.append(str(p))
    for name in ("nas_fcos_fpn", "nas_fcos_fpn_head"):
        p = tmp_path / f"{name}.py"
        p.write_text(compile_genotype(load_paper_genotype(name)))
        paths.append(str(p))
    ruff = _ruff()
    assert ruff is not None
    for config in (["--isolated"], ["--config", str(REPO / "pyproject.toml")]):
        out = subprocess.run([ruff, "check", "--no-cache", *config, *paths], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr


def test_forward_has_no_loops_and_names_pool_entries() -> None:
    src = compile_genotype(PAPER)
    tree = ast.parse(src)
    decoder = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Decoder")
    skip = ("__init__", "reset_parameters")  # the 5 per-level scales are built in a loop
    methods = [n for n in decoder.body if isinstance(n, ast.FunctionDef) and n.name not in skip]
    assert {"forward", "cls_tower", "reg_tower"} <= {m.name for m in methods}
    for m in methods:
        loops = [n for n in ast.walk(m) if isinstance(n, (ast.For, ast.While, ast.ListComp, ast.GeneratorExp))]
        assert not loops, f"{m.name} loops"
    # one statement per edge, named after pool indices (paper genotype: block 3 reads c3 = pool 1)
    assert "x1 = self.adapt_c3(features[1])" in src
    assert "x7_0 = self.fpn_block3.op0(x1)" in src
    assert "x7_1 = resize(x3, like=x1)" in src
    assert "x7 = self.fpn_block3.agg(x7_0, x7_1)" in src


def test_unused_backbone_level_and_skip_ops_leave_no_trace() -> None:
    # the paper genotype never reads c2 (pool 0); block 2 and 3 have a skip op1
    src = _code_part(compile_genotype(PAPER))
    assert "adapt_c2" not in src and "features[0]" not in src
    assert "fpn_block2.op1" not in src and "fpn_block3.op1" not in src
    # p3 takes c3's size only through features[1]; no dilated sep convs in this genotype
    assert "SepConv" not in src and "WeightedSum" not in src


def test_dead_dag_blocks_leave_no_trace() -> None:
    blocks = [
        {"inputs": [0, 1], "ops": ["conv_1x1", "skip"], "agg": "sum"},               # b0 -> 4, live
        {"inputs": [0, 0], "ops": ["sep_conv_3x3_dil3", "sep_conv_3x3_dil3"], "agg": "concat"},  # b1: dead
        {"inputs": [4, 1], "ops": ["conv_3x3", "skip"], "agg": "sum"},               # b2 -> 10
        {"inputs": [2, 0], "ops": ["deform_conv_3x3", "skip"], "agg": "sum"},        # b3: reads b0 op0; agg dead
        {"inputs": [10, 11], "ops": ["skip", "skip"], "agg": "sum"},                 # b4 reads b2 agg, b3 op0
    ]
    fpn = [{"inputs": [3, 2], "ops": ["skip", "skip"], "agg": "sum"}] * 7
    g = _dag(blocks, fpn=fpn, share=[2, 0, 0, 0, 0])
    src = _code_part(compile_genotype(g))
    # block 1 (layer 2) is dead: no module, no statement, no ConcatReduce / dilated conv at all
    assert "_tower_shared_2" not in src and "_tower_p3_2" not in src
    assert "b1_" not in src and "ConcatReduce" not in src and "dilation=3" not in src
    # block 3: only op0 is live (read by block 4); its aggregate is dead
    assert "b3_op0 = self.cls_tower_shared_4.op0(b0_op0)" in src
    assert "b3_agg" not in src
    # backbone levels never read: c2, c3 (pool 0, 1)
    assert "adapt_c2" not in src and "adapt_c3" not in src
    mod = compile_to_module(g, fpn_channels=8, head_channels=32, in_channels=(2, 3, 4, 5))
    keys = set(mod.build().state_dict())
    assert not any(k.startswith(("cls_tower_shared_2", "reg_tower_shared_2")) for k in keys)
    assert any(k.startswith("cls_tower_p3_0.") for k in keys) and any(k.startswith("cls_tower_shared_0.") for k in keys)
    assert not any(k.startswith("cls_tower_shared_4.agg") for k in keys)


def test_genotype_that_never_reads_c3_still_sizes_p3_from_c3() -> None:
    fpn = [{"inputs": [3, 2], "ops": ["sep_conv_3x3", "skip"], "agg": "sum"}] * 7  # reads c4, c5 only
    doc = PAPER.to_dict(with_meta=False)
    doc["fpn"] = fpn
    g = parse_genotype(doc)
    src = compile_genotype(g)
    assert "adapt_c3" not in src and "features[1]" not in src.split("p3 = resize(")[0]
    assert "p3 = resize(p3, like=features[1])  # stride 16 -> 8" in src
    dec = compile_to_module(g, fpn_channels=32, in_channels=(2, 3, 4, 5), num_classes=2).build().eval()
    feats = [torch.randn(1, c, h, w) for c, (h, w) in zip((2, 3, 4, 5), ((33, 41), (17, 21), (9, 11), (5, 6)), strict=True)]
    cls, reg, ctr = dec(feats)
    assert [tuple(t.shape[-2:]) for t in cls[:3]] == [(17, 21), (9, 11), (5, 6)]
    assert [tuple(t.shape[-2:]) for t in cls[3:]] == [(3, 3), (2, 2)]


def test_build_overrides_and_bridge() -> None:
    mod = compile_to_module(PAPER, fpn_channels=32, num_classes=3, in_channels=(4, 8, 12, 16))
    dec = mod.build()
    assert "bridge.weight" not in dec.state_dict()
    wide = mod.build(head_channels=64, num_classes=7)
    assert tuple(wide.state_dict()["bridge.weight"].shape) == (64, 32, 1, 1)
    assert wide.cls_logits.out_channels == 7
    feats = [torch.randn(2, c, s, s) for c, s in zip((4, 8, 12, 16), (32, 16, 8, 4), strict=True)]
    cls, reg, ctr = wide.eval()(feats)
    assert [tuple(t.shape) for t in cls] == [(2, 7, 16, 16), (2, 7, 8, 8), (2, 7, 4, 4), (2, 7, 2, 2), (2, 7, 1, 1)]
    assert all(t.shape[1] == 4 and bool((t >= 0).all()) for t in reg)  # exp(): non-negative distances
    assert all(t.shape[1] == 1 for t in ctr)
    # the classification prior: sigmoid(bias) = 0.01 at initialisation
    assert torch.allclose(torch.sigmoid(wide.cls_logits.bias), torch.full((7,), 0.01))


def test_head_group_norm_always_has_32_groups() -> None:
    mod = compile_to_module(PAPER)
    for c in (32, 64, 128, 256, 512):
        gn = mod.make_norm("gn", c)
        assert (gn.num_groups, gn.num_channels, gn.eps) == (32, c, 1e-5)
    dec = mod.build(fpn_channels=32, head_channels=64)
    assert {m.num_groups for m in dec.modules() if isinstance(m, torch.nn.GroupNorm)} == {32}


def test_in_memory_module_is_not_registered_anywhere(tmp_path: Path, monkeypatch) -> None:
    """Compiling in memory registers no module and writes no file (the cwd is an empty folder)."""
    monkeypatch.chdir(tmp_path)
    before = set(sys.modules)
    cwd_files = set(os.listdir("."))
    mod = compile_to_module(sample_genotype(1, "sequential"))
    assert mod.__name__ not in sys.modules and set(sys.modules) - before == set()
    assert set(os.listdir(".")) == cwd_files == set()
    assert mod.__source__ == compile_genotype(sample_genotype(1, "sequential"))
    assert json.loads(json.dumps(mod.GENOTYPE)) == mod.GENOTYPE


def test_sep_conv_ops_have_the_release_parameter_count() -> None:
    """One depthwise -> pointwise -> norm unit per op (the release's repeats=1), counted by hand."""
    doc = PAPER.to_dict(with_meta=False)
    doc["fpn"][0] = {"inputs": [3, 2], "ops": ["sep_conv_3x3", "sep_conv_5x5_dil6"], "agg": "sum"}
    doc["head"] = {"kind": "sequential", "layers": ["sep_conv_3x3_dil3", "skip", "sep_conv_3x3", "skip", "skip", "skip"]}
    c = 32
    dec = compile_to_module(parse_genotype(doc), fpn_channels=c, in_channels=(2, 3, 4, 5)).build()

    def count(m: torch.nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    # depthwise k x k (C k^2) + pointwise (C^2) + BN / GN affine (2C); no biases
    assert count(dec.fpn_block0.op0) == c * 9 + c * c + 2 * c
    assert count(dec.fpn_block0.op1) == c * 25 + c * c + 2 * c
    assert dec.fpn_block0.op1.depthwise.dilation == (6, 6) and dec.fpn_block0.op1.depthwise.padding == (12, 12)
    assert count(dec.cls_tower_shared_0) == count(dec.reg_tower_shared_2) == c * 9 + c * c + 2 * c
    assert isinstance(dec.cls_tower_shared_0.norm, torch.nn.GroupNorm) and dec.cls_tower_shared_0.norm.num_groups == 32
    assert sorted(dec.fpn_block0.op0.state_dict()) == [
        "depthwise.weight", "norm.bias", "norm.num_batches_tracked", "norm.running_mean", "norm.running_var",
        "norm.weight", "pointwise.weight"]
