"""Fixtures of the detector tests: tiny detectors compiled from the baseline and a paper genotype.

Everything uses the test-only ``tiny`` backbone, 16-channel decoders and 3 classes, so a
forward pass on a 96 x 160 image takes milliseconds on one CPU core.  Helpers come as the
``tiny`` fixture (pytest's importlib mode: test modules do not import each other).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import pytest
import torch
from torch import nn

from nasfcos.compiler import CompileOptions, compile_to_module
from nasfcos.compiler.baseline import baseline_module
from nasfcos.genotypes import load_paper_genotype


@dataclass(frozen=True)
class Tiny:
    """Test widths and helpers."""

    width: int = 16
    #: head width: GroupNorm(32, C) needs a multiple of 32
    head_width: int = 32
    num_classes: int = 3
    #: (height, width) of test images: every level, p7 included, has at least 2 locations,
    #: which GroupNorm with one channel per group (32 groups of 32 channels) needs at batch 1.
    image_hw: tuple[int, int] = (96, 160)

    def options(self, **kw: object) -> CompileOptions:
        """Detector compile options at the test widths (the backbone is chosen at build time)."""
        kw.setdefault("head_channels", self.head_width)
        return CompileOptions(fpn_channels=self.width, num_classes=self.num_classes, detector=True, **kw)

    def detector(self, module: ModuleType, seed: int = 0, **overrides: object) -> nn.Module:
        """A tiny-backbone detector in eval mode whose scores are spread out.

        With FCOS's initialisation every score is about sqrt(0.01 * 0.5); wider predictor
        weights make scores distinct, so orderings (top-k, NMS) are unambiguous in comparisons.
        """
        torch.manual_seed(seed)
        det = module.build(backbone="tiny", **overrides).eval()
        with torch.no_grad():
            nn.init.normal_(det.decoder.cls_logits.weight, std=0.2)
            nn.init.normal_(det.decoder.centerness.weight, std=0.2)
        return det

    def images(self, n: int = 1, hw: tuple[int, int] | None = None, seed: int = 1) -> torch.Tensor:
        """``[n, 3, H, W]`` random RGB in [0, 1]."""
        g = torch.Generator().manual_seed(seed)
        return torch.rand(n, 3, *(hw or self.image_hw), generator=g)


@pytest.fixture(scope="session")
def tiny() -> Tiny:
    return Tiny()


@pytest.fixture(scope="session")
def baseline_detector_module(tiny: Tiny) -> ModuleType:
    """The FPN-FCOS baseline compiled with a Detector at the test widths."""
    return baseline_module(tiny.options())


@pytest.fixture(scope="session")
def genotype_detector_module(tiny: Tiny) -> ModuleType:
    """The paper genotype (searched FPN + head) compiled with a Detector at the test widths."""
    return compile_to_module(load_paper_genotype("nas_fcos_fpn_head"), tiny.options())


@pytest.fixture(scope="session", params=["fpn-fcos", "nas_fcos_fpn_head"])
def detector_module(request: pytest.FixtureRequest, baseline_detector_module: ModuleType,
                    genotype_detector_module: ModuleType) -> ModuleType:
    """Both kinds of compiled file: the same Detector code over two different Decoders."""
    return baseline_detector_module if request.param == "fpn-fcos" else genotype_detector_module
