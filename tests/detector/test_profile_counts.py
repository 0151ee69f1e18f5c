"""Parameter and multiply-add counts: formula for deformable convs, split, stability."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from nasfcos.compiler import CompileOptions
from nasfcos.compiler.baseline import compile_baseline
from nasfcos.compiler.profile import ProfileRequest, format_table, profile
from nasfcos.errors import NasfcosError


def test_deform_conv_formula_matches_a_hand_computation() -> None:
    # N=2, Cin=6 -> Cout=10, 3x3, stride 2, padding 1, 2 weight groups, on 9 x 11:
    # Hout = (9 + 2 - 3) // 2 + 1 = 5, Wout = (11 + 2 - 3) // 2 + 1 = 6
    # MACs = N * Cout * Hout * Wout * (Cin / groups) * 3 * 3 = 2 * 10 * 5 * 6 * 3 * 9 = 16200
    x = torch.rand(2, 6, 9, 11)
    weight = torch.rand(10, 3, 3, 3)
    offset = torch.rand(2, 2 * 9, 5, 6)  # one offset group
    mask = torch.rand(2, 9, 5, 6)
    with FlopCounterMode(display=False) as counter:
        out = torchvision.ops.deform_conv2d(x, offset, weight, torch.zeros(10), stride=2, padding=1, mask=mask)
    assert out.shape == (2, 10, 5, 6)
    counts = counter.get_flop_counts()["Global"]
    assert counts[torch.ops.torchvision.deform_conv2d] == 2 * 16200  # FlopCounterMode counts 2 per MAC
    # same as torch's own formula for a plain conv of the same shape
    conv = torch.nn.Conv2d(6, 10, 3, stride=2, padding=1, groups=2)
    with FlopCounterMode(display=False) as plain:
        conv(x)
    assert plain.get_total_flops() == 2 * 16200


def _tiny_baseline(**kw: object) -> ProfileRequest:
    return ProfileRequest("fpn-fcos", backbone="tiny", fpn_channels=32, num_classes=3, size=(128, 160), **kw)


def test_split_matches_hand_counts_for_the_baseline() -> None:
    c, k = 32, 3
    result = profile(_tiny_baseline())
    # parameters: tiny trunk = 10 convs 3x3 with bias
    tiny_convs = [(3, 16), (16, 16), (16, 16), (16, 16), (16, 24), (24, 24), (24, 32), (32, 32), (32, 48), (48, 48)]
    backbone = sum(9 * a * b + b for a, b in tiny_convs)
    conv3 = 9 * c * c + c
    fpn = sum(cin * c + c for cin in (24, 32, 48)) + 5 * conv3
    head = 2 * 4 * (conv3 + 2 * c) + (9 * c * k + k) + (9 * c * 4 + 4) + (9 * c + 1) + 5
    assert result.params == {"backbone": backbone, "fpn": fpn, "head": head, "other": 0,
                             "total": backbone + fpn + head}
    # multiply-adds at 128 x 160 (H x W)
    h, w = 128, 160
    strides = [2, 2, 4, 4, 8, 8, 16, 16, 32, 32]
    backbone_macs = sum(9 * a * b * (h // s) * (w // s) for (a, b), s in zip(tiny_convs, strides, strict=True))
    sizes = [(h // 8, w // 8), (h // 16, w // 16), (h // 32, w // 32)]
    sizes += [(math.ceil(sizes[-1][0] / 2), math.ceil(sizes[-1][1] / 2))]
    sizes += [(math.ceil(sizes[-1][0] / 2), math.ceil(sizes[-1][1] / 2))]
    hw = [a * b for a, b in sizes]
    fpn_macs = sum(n * cin * c for n, cin in zip(hw[:3], (24, 32, 48), strict=True)) + 9 * c * c * sum(hw)
    head_macs = sum(hw) * (8 * 9 * c * c + 9 * c * k + 9 * c * 4 + 9 * c)
    assert result.macs == {"backbone": backbone_macs, "fpn": fpn_macs, "head": head_macs, "other": 0,
                           "total": backbone_macs + fpn_macs + head_macs}


def test_counts_are_stable_and_meta_equals_a_real_run() -> None:
    first = profile(_tiny_baseline())
    assert profile(_tiny_baseline()) == first
    assert profile(_tiny_baseline(device="cpu")) == first


def test_genotype_profile_counts_deformable_convs() -> None:
    result = profile(ProfileRequest("nas_fcos_fpn_head", backbone="tiny", fpn_channels=32,
                                    num_classes=3, size=(128, 160)))
    assert result.model == "nas-fcos-r50-fpn-head"
    assert result.params["other"] == 0 and result.macs["other"] == 0
    assert all(result.params[c] > 0 and result.macs[c] > 0 for c in ("backbone", "fpn", "head"))
    # the searched FPN is all deformable 3x3 convs: without the registered formula it would
    # only count adapters, offset convs and 1x1 reductions; check deform convs are in the FPN
    from nasfcos.compiler.profile import build_for_profile

    net, _, _, _ = build_for_profile(ProfileRequest("nas_fcos_fpn_head", backbone="tiny", fpn_channels=32,
                                                 num_classes=3, size=(128, 160)))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net.eval().forward_raw(torch.zeros(1, 3, 128, 160, device="meta"))
    assert counter.get_flop_counts()["Global"][torch.ops.torchvision.deform_conv2d] > 0


def test_decoder_only_model_file_profiles_like_the_detector(tmp_path: Path) -> None:
    path = tmp_path / "model.py"
    path.write_text(compile_baseline(CompileOptions(fpn_channels=32, num_classes=3)))
    from_file = profile(ProfileRequest(str(path), backbone="tiny", num_classes=3, size=(128, 160)))
    assert from_file.model == "fpn-fcos"
    baseline = profile(_tiny_baseline())
    assert (from_file.params, from_file.macs) == (baseline.params, baseline.macs)


def test_widths_and_table() -> None:
    wide = profile(_tiny_baseline(head_channels=64))
    assert wide.widths == "@32-64" and wide.head_channels == 64
    table = format_table([profile(_tiny_baseline()), wide])
    assert "fpn-fcos" in table and "@32-64" in table and "GMACs" in table
    assert wide.to_dict()["params"]["total"] == wide.params["total"]


def test_bad_requests_raise_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(NasfcosError, match="expected a model.py"):
        profile(ProfileRequest("nothing-here"))
    with pytest.raises(NasfcosError, match="unknown backbone"):
        profile(ProfileRequest("fpn-fcos", backbone="vgg16"))
    with pytest.raises(NasfcosError, match="at least 32"):
        profile(ProfileRequest("fpn-fcos", size=(16, 16)))


def test_detector_model_file_defaults_to_its_compiled_backbone(tmp_path: Path) -> None:
    path = tmp_path / "detector.py"
    path.write_text(compile_baseline(CompileOptions(fpn_channels=32, num_classes=3, detector=True,
                                                    backbone="mobilenet_v2")))
    result = profile(ProfileRequest(str(path), num_classes=3, size=(128, 160)))
    assert result.backbone == "mobilenet_v2"
    # torchvision's MobileNetV2 (3,504,872) minus classifier (1,281,000) and features.18 (412,160)
    assert result.params["backbone"] == 3_504_872 - 1_281_000 - 412_160
    assert result.fpn_channels == result.head_channels == 32
