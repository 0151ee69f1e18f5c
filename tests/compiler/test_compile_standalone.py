"""The emitted file on its own: runs with nasfcos unimportable, exports, scripts."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from nasfcos.compiler import compile_genotype, compile_to_module
from nasfcos.genotypes import load_paper_genotype, sample_genotype

TINY = {"fpn_channels": 8, "head_channels": 64, "num_classes": 3, "in_channels": (4, 6, 8, 10)}

RUNNER = r"""
import importlib.util, json, sys
sys.modules["nasfcos"] = None  # the toolkit must not be needed
try:
    import nasfcos  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("nasfcos is importable")
import torch
spec = importlib.util.spec_from_file_location("model", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
dec = mod.build().eval()
torch.manual_seed(0)
feats = [torch.randn(1, c, s, s) for c, s in zip(mod.IN_CHANNELS, (16, 8, 4, 2))]
with torch.no_grad():
    cls, reg, ctr = dec(feats)
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "nasfcos" and sys.modules[m] is not None)
print(json.dumps({"cls": [list(t.shape) for t in cls], "reg": [list(t.shape) for t in reg],
                  "ctr": [list(t.shape) for t in ctr], "nasfcos_modules": loaded}))
"""


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # TorchScript looks classes up by module
    spec.loader.exec_module(module)
    return module


def test_emitted_file_runs_isolated_without_nasfcos(tmp_path: Path) -> None:
    path = tmp_path / "model.py"
    path.write_text(compile_genotype(load_paper_genotype("nas_fcos_fpn_head"), **TINY))
    out = subprocess.run([sys.executable, "-I", "-c", RUNNER, str(path)], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["nasfcos_modules"] == []
    assert res["cls"] == [[1, 3, 8, 8], [1, 3, 4, 4], [1, 3, 2, 2], [1, 3, 1, 1], [1, 3, 1, 1]]
    assert res["reg"][0] == [1, 4, 8, 8] and res["ctr"][0] == [1, 1, 8, 8]


def _feats(sizes: tuple[int, ...], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, c, s, s + 2, generator=g) for c, s in zip(TINY["in_channels"], sizes, strict=True)]


def _close(a: Any, b: Any) -> None:
    for la, lb in zip(a, b, strict=True):
        for x, y in zip(la, lb, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("which", ["nas_fcos_fpn_head", "random_dag"])
def test_torch_export_and_jit_script(which: str, tmp_path: Path) -> None:
    g = load_paper_genotype(which) if which != "random_dag" else sample_genotype(5, "dag")
    path = tmp_path / f"model_{which}.py"
    path.write_text(compile_genotype(g, **TINY))
    mod = _load(path, f"nasfcos_test_export_{which}")
    try:
        torch.manual_seed(0)
        dec = mod.build().eval()
        feats = _feats((16, 8, 4, 2))
        with torch.no_grad():
            eager = dec(feats)
            exported = torch.export.export(dec, (feats,))
            _close(exported.module()(feats), eager)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in torch 2.x
                scripted = torch.jit.script(dec)
            _close(scripted(feats), eager)
            # script keeps the resize sizes symbolic: another input size works too
            other = _feats((24, 12, 6, 3), seed=1)
            _close(scripted(other), dec(other))
    finally:
        sys.modules.pop(f"nasfcos_test_export_{which}", None)


def test_export_works_on_the_in_memory_module() -> None:
    dec = compile_to_module(sample_genotype(2, "sequential"), **TINY).build().eval()
    feats = _feats((16, 8, 4, 2))
    with torch.no_grad():
        _close(torch.export.export(dec, (feats,)).module()(feats), dec(feats))
