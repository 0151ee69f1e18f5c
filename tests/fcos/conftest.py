"""Shared fixtures of the FCOS library tests: the real compiled tiny detector and small
synthetic sets (64 px), so every test trains and evaluates what users compile."""

from __future__ import annotations

from pathlib import Path

import pytest

from nasfcos.compiler import CompileOptions, compile_genotype
from nasfcos.fcos.synth import SynthConfig, write_synthetic
from nasfcos.genotypes import load_paper_genotype


def compile_tiny(path: Path, num_classes: int = 5, backbone: str = "tiny", width: int = 32) -> Path:
    """Write the paper genotype compiled as a detector (``backbone``, ``width``) to ``path``."""
    # head width 64: the release's GroupNorm(32) needs two values per group on a 1x1 p7
    opts = CompileOptions(fpn_channels=width, head_channels=max(width, 64), num_classes=num_classes,
                          detector=True, backbone=backbone)
    path.write_text(compile_genotype(load_paper_genotype("nas_fcos_fpn"), opts))
    return path


@pytest.fixture(scope="session")
def compile_model() -> object:
    """:func:`compile_tiny`, for tests that need another class count or backbone."""
    return compile_tiny


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """nas_fcos_fpn + tiny trunk, FPN 32 / head 64 wide, 5 classes (the synthetic set's)."""
    return compile_tiny(tmp_path_factory.mktemp("model") / "model.py")


@pytest.fixture(scope="session")
def synth64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth64")
    write_synthetic(out, SynthConfig(images=12, size=64, seed=3))
    return out
