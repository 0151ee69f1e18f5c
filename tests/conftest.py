"""Fixtures shared by every test package (pytest's importlib mode: test modules never import
each other; shared helpers live here or in a package's own conftest)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny ops on a shared 2-core machine: one thread is much faster than two fighting."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def synth_set(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``synth_set(images=20, size=64, seed=2) -> Path``: a synthetic COCO-format set (the five
    shape classes), written once per session for each set of parameters.  Tests only read it."""
    from nasfcos.fcos.synth import SynthConfig, write_synthetic

    made: dict[tuple[int, int, int], Path] = {}

    def make(images: int = 20, size: int = 64, seed: int = 2) -> Path:
        key = (images, size, seed)
        if key not in made:
            out = tmp_path_factory.mktemp(f"synth{images}_{size}px_seed{seed}")
            write_synthetic(out, SynthConfig(images=images, size=size, seed=seed))
            made[key] = out
        return made[key]

    return make


@pytest.fixture(scope="session")
def synth_data(synth_set: Callable[..., Path]) -> Path:
    """A small synthetic COCO-format set (20 images of 64 px, seed 2)."""
    return synth_set()


@pytest.fixture(scope="session")
def tiny_detector_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The paper genotype compiled as a whole detector with the ``tiny`` backbone, 3 classes,
    at the smallest widths the compiler accepts (the real compiler output, not a stand-in)."""
    from nasfcos.compiler import CompileOptions, compile_genotype
    from nasfcos.genotypes import load_paper_genotype

    path = tmp_path_factory.mktemp("tiny_detector") / "model.py"
    opts = CompileOptions(fpn_channels=8, head_channels=64, num_classes=3, detector=True,
                          backbone="tiny")
    path.write_text(compile_genotype(load_paper_genotype(), opts))
    return path
