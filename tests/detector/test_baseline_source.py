"""The FPN-FCOS baseline: a standalone model.py with the Contract 2 interface."""

from __future__ import annotations

import ast
from pathlib import Path

import torch

from nasfcos.compiler import CompileOptions
from nasfcos.compiler.baseline import BASELINE_NAME, baseline_hash, compile_baseline
from nasfcos.compiler.profile import component_of
from nasfcos.modelfile import load_model_file


def _imports(source: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add((node.module or "").split(".")[0])
    return names


def test_source_is_deterministic_and_standalone() -> None:
    opts = CompileOptions(fpn_channels=256, detector=True, backbone="mobilenet_v2")
    src = compile_baseline(opts)
    assert src == compile_baseline(CompileOptions(fpn_channels=256, detector=True, backbone="mobilenet_v2"))
    assert src != compile_baseline(CompileOptions(fpn_channels=128, detector=True, backbone="mobilenet_v2"))
    assert _imports(src) <= {"__future__", "math", "torch", "torchvision"}
    assert "class Decoder" in src and "class Detector" in src
    assert "IN_CHANNELS = (24, 32, 96, 320)" in src  # a detector's Decoder gets its backbone's widths
    assert "class Detector" not in compile_baseline(CompileOptions(fpn_channels=256))


def test_model_file_interface(tmp_path: Path) -> None:
    path = tmp_path / "model.py"
    path.write_text(compile_baseline(CompileOptions(fpn_channels=32, num_classes=3,
                                                    in_channels=(8, 16, 24, 32))))
    module = load_model_file(path)
    assert module.GENOTYPE_NAME == BASELINE_NAME and module.GENOTYPE is None
    assert module.GENOTYPE_HASH == baseline_hash() and len(module.GENOTYPE_HASH) == 64
    assert (module.FPN_CHANNELS, module.HEAD_CHANNELS, module.NUM_CLASSES) == (32, 32, 3)
    assert tuple(module.IN_CHANNELS) == (8, 16, 24, 32)
    torch.manual_seed(0)
    decoder = module.build().eval()
    assert type(decoder).__name__ == "Decoder"
    feats = [torch.rand(2, c, 64 // s, 96 // s) for c, s in zip((8, 16, 24, 32), (4, 8, 16, 32), strict=True)]
    with torch.no_grad():
        cls, reg, ctr = decoder(feats)
    sizes = [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]
    assert [tuple(t.shape) for t in cls] == [(2, 3, *s) for s in sizes]
    assert [tuple(t.shape) for t in reg] == [(2, 4, *s) for s in sizes]
    assert [tuple(t.shape) for t in ctr] == [(2, 1, *s) for s in sizes]
    assert all(torch.all(r > 0) for r in reg)


def test_parameter_names_split_into_fpn_and_head_with_hand_counts() -> None:
    c, k, ins = 32, 3, (8, 16, 24, 32)
    source = compile_baseline(CompileOptions(fpn_channels=c, num_classes=k, in_channels=ins))
    namespace: dict[str, object] = {}
    exec(compile(source, "<baseline>", "exec"), namespace)
    decoder = namespace["Decoder"]()
    counts = {"fpn": 0, "head": 0, "other": 0}
    for name, p in decoder.named_parameters():
        counts[component_of(name.split(".")[0])] += p.numel()
    conv3 = 9 * c * c + c
    fpn = sum(cin * c + c for cin in ins[1:]) + 3 * conv3 + 2 * conv3  # laterals, outputs, p6/p7
    head = 2 * 4 * (conv3 + 2 * c) + (9 * c * k + k) + (9 * c * 4 + 4) + (9 * c + 1) + 5
    assert counts == {"fpn": fpn, "head": head, "other": 0}


def test_head_width_bridge() -> None:
    source = compile_baseline(CompileOptions(fpn_channels=8, head_channels=32, num_classes=2,
                                             in_channels=(8, 8, 8, 8)))
    namespace: dict[str, object] = {}
    exec(compile(source, "<baseline>", "exec"), namespace)
    decoder = namespace["Decoder"]().eval()
    assert isinstance(decoder.bridge, torch.nn.Conv2d) and decoder.bridge.out_channels == 32
    same = namespace["Decoder"](fpn_channels=32, head_channels=None)  # None: the FPN width, no bridge
    assert isinstance(same.bridge, torch.nn.Identity)
    with torch.no_grad():
        cls, _, _ = decoder([torch.rand(2, 8, 64 // s, 64 // s) for s in (4, 8, 16, 32)])
    assert cls[0].shape == (2, 2, 8, 8)
