"""A 32-wide head (GroupNorm(32, 32)) runs at any size, batch 1 included: at 64x64 and 128x128
the p7 map is 1x1, one value per group, which ``F.group_norm`` refuses even in eval mode and
the op itself (``torch.group_norm``) computes.  Compiled file, reference interpreter and the
FPN-FCOS baseline, eager and through ``torch.export``."""

from __future__ import annotations

import pytest
import torch

from nasfcos.compiler import CompileOptions, build_reference, compile_to_module
from nasfcos.compiler.baseline import baseline_module
from nasfcos.genotypes import load_paper_genotype

OPTS = CompileOptions(fpn_channels=32, num_classes=3, detector=True, backbone="tiny")


@pytest.fixture(scope="module")
def modules() -> dict[str, object]:
    return {"nas_fcos_fpn_head": compile_to_module(load_paper_genotype("nas_fcos_fpn_head"), OPTS),
            "fpn-fcos": baseline_module(OPTS)}


@pytest.mark.parametrize("side", [64, 128])
@pytest.mark.parametrize("name", ["nas_fcos_fpn_head", "fpn-fcos"])
def test_32_wide_head_at_batch_1(modules: dict[str, object], name: str, side: int) -> None:
    torch.manual_seed(0)
    det = modules[name].build().eval()
    images = torch.rand(1, 3, side, side)
    with torch.no_grad():
        cls, reg, ctr = det.forward_raw(images)
        boxes, scores, labels = det(images)
    assert cls[-1].shape[-2:] == (1, 1) and all(torch.isfinite(t).all() for t in cls + reg + ctr)
    assert boxes.shape[0] == 1 and torch.isfinite(scores).all()
    with torch.no_grad():
        features = det.backbone(det.normalize(images))
    exported = torch.export.export(det.decoder, (features,))
    torch.testing.assert_close(exported.module()(features)[0][-1], cls[-1])


def test_reference_interpreter_at_1x1() -> None:
    ref = build_reference(load_paper_genotype("nas_fcos_fpn_head"), fpn_channels=32, num_classes=3,
                          in_channels=(16, 24, 32, 48)).eval()
    feats = [torch.randn(1, c, 64 // s, 64 // s) for c, s in zip((16, 24, 32, 48), (4, 8, 16, 32), strict=True)]
    with torch.no_grad():
        cls, _, _ = ref(feats)
    assert cls[-1].shape[-2:] == (1, 1) and torch.isfinite(cls[-1]).all()
