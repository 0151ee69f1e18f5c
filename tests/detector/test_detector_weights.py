"""Backbones of the detector template: widths, strides, frozen BN, weights and checkpoints."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
import torch
import torchvision
from torchvision.ops import FrozenBatchNorm2d

from nasfcos.compiler.backbones import BACKBONE_NAMES, backbone_channels, build_backbone
from nasfcos.errors import NasfcosError


def _param_count(module: torch.nn.Module) -> int:
    frozen = sum(m.weight.numel() + m.bias.numel() for m in module.modules() if isinstance(m, FrozenBatchNorm2d))
    return sum(p.numel() for p in module.parameters()) + frozen


def test_compiled_table_matches_the_toolkit_table(baseline_detector_module: ModuleType) -> None:
    table = baseline_detector_module.BACKBONE_CHANNELS
    assert tuple(table) == BACKBONE_NAMES
    assert {"resnet50", "resnet101", "resnext101_32x4d", "mobilenet_v2", "tiny"} <= set(table)
    for name in BACKBONE_NAMES:
        assert tuple(table[name]) == backbone_channels(name)


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2", "tiny"])
def test_backbone_levels_have_the_documented_widths_and_strides(name: str) -> None:
    torch.manual_seed(0)
    net = build_backbone(name).eval()
    with torch.no_grad():
        feats = net(torch.zeros(1, 3, 64, 96))
    assert tuple(f.shape[1] for f in feats) == backbone_channels(name)
    assert [(f.shape[2], f.shape[3]) for f in feats] == [(64 // s, 96 // s) for s in (4, 8, 16, 32)]
    if name != "tiny":  # torchvision trunks use frozen batch norm, as FCOS
        assert any(isinstance(m, FrozenBatchNorm2d) for m in net.modules())
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())


def test_big_backbones_have_the_known_sizes() -> None:
    # built on the meta device: no memory, no init cost.  Reference: torchvision's classifiers
    # minus their fc (2048 * 1000 + 1000); ResNeXt-101 32x4d is 44.18M with its fc.
    fc = 2048 * 1000 + 1000
    with torch.device("meta"):
        assert _param_count(build_backbone("resnet101")) == 44_549_160 - fc
        assert _param_count(build_backbone("resnext101_32x4d")) == 44_177_704 - fc
        x101 = build_backbone("resnext101_32x4d")
    conv2 = x101.body.layer1[0].conv2
    assert conv2.groups == 32 and conv2.in_channels == 128  # 32 groups x 4 channels


def test_torchvision_state_dict_loads_into_the_backbone(tmp_path: Path,
                                                        baseline_detector_module: ModuleType) -> None:
    torch.manual_seed(3)
    reference = torchvision.models.mobilenet_v2(weights=None)  # plain BN, classifier, features.18
    with torch.no_grad():
        for m in reference.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    path = tmp_path / "mnv2.pth"
    torch.save(reference.state_dict(), path)
    det = baseline_detector_module.build(backbone="mobilenet_v2", backbone_weights=str(path)).eval()
    for key, value in det.backbone.body.state_dict().items():
        torch.testing.assert_close(value, reference.state_dict()[key])
    # same features as torchvision's own model in eval mode
    reference.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        want = reference.features[:18](x)
        got = det.backbone(x)[3]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_mismatched_backbone_weights_give_a_one_line_error(tmp_path: Path,
                                                           baseline_detector_module: ModuleType) -> None:
    tiny = build_backbone("tiny")
    state = tiny.body.state_dict()
    del state["layer4.1.0.weight"]
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(ValueError, match=r"not a torchvision tiny state_dict \(1 missing") as info:
        baseline_detector_module.build(backbone="tiny", backbone_weights=str(bad))
    assert "\n" not in str(info.value)
    with pytest.raises(NasfcosError, match="not a torchvision tiny state_dict"):
        build_backbone("tiny", weights=bad)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="cannot read backbone weights"):
        baseline_detector_module.build(backbone="tiny", backbone_weights=str(garbage))


def test_backbone_weights_of_the_right_kind_load(tmp_path: Path, baseline_detector_module: ModuleType) -> None:
    torch.manual_seed(5)
    source = build_backbone("tiny")
    path = tmp_path / "tiny.pth"
    torch.save({"state_dict": source.body.state_dict()}, path)  # nested form is accepted too
    det = baseline_detector_module.build(backbone="tiny", backbone_weights=str(path))
    for key, value in source.body.state_dict().items():
        assert torch.equal(det.backbone.body.state_dict()[key], value)


def test_full_checkpoint_round_trip(tmp_path: Path, detector_module: ModuleType, tiny) -> None:
    det = tiny.detector(detector_module, seed=7)
    path = tmp_path / "ckpt.pth"
    torch.save({"model": det.state_dict(), "step": 10}, path)
    again = detector_module.build(backbone="tiny", checkpoint=str(path)).eval()
    x = tiny.images(1)
    with torch.no_grad():
        for got, want in zip(again(x), det(x), strict=True):
            assert torch.equal(got, want)
    other = tmp_path / "other.pth"
    torch.save(tiny.detector(detector_module, fpn_channels=8).state_dict(), other)
    with pytest.raises(ValueError, match="checkpoint does not fit this Detector"):
        detector_module.build(backbone="tiny", checkpoint=str(other))
