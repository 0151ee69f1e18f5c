"""Eager inference preparation (nasfcos.runtime.eager): BatchNorm folding and the channels_last
backbone keep the function (parity on random genotypes with deformable convs and a real ResNet
trunk with non-trivial statistics), a wrong fold is caught and the original kept, and the
torch runner uses it unless told not to."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from nasfcos.compiler import CompileOptions, compile_genotype
from nasfcos.genotypes import load_paper_genotype, sample_genotype
from nasfcos.runtime.eager import fold_batchnorms, prepare_eager
from nasfcos.runtime.models import load_model
from nasfcos.runtime.runners import EAGER_CHECK_SIZE, TorchRunner


def _randomise_norms(net: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm statistics and affine terms far from the identity, so that a fold
    that ignored any of them would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm2d, torchvision.ops.FrozenBatchNorm2d)):
                c = m.running_mean.shape[0]
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.2)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.2)


def _deformable_genotype():
    for seed in range(50):
        g = sample_genotype(seed, "dag")
        if any("deform" in op for node in g.fpn for op in node.ops):
            return g
    raise AssertionError("no sampled genotype with a deformable FPN op")


def _raw(net: nn.Module, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    det = getattr(net, "detector", None)
    out = det.forward_raw(*inputs) if det is not None else net(*inputs)
    return [t for level in out for t in level]


@pytest.mark.parametrize("kind, backbone", [("decoder", "resnet18"), ("detector", "resnet18")])
def test_prepared_copy_matches_original(tmp_path: Path, kind: str, backbone: str) -> None:
    path = tmp_path / "model.py"
    path.write_text(compile_genotype(_deformable_genotype(), CompileOptions(
        fpn_channels=16, head_channels=64, num_classes=3, detector=kind == "detector", backbone=backbone)))
    lm = load_model(path, kind, seed=0)
    _randomise_norms(lm.net)
    example = [torch.from_numpy(a) for a in lm.inputs(EAGER_CHECK_SIZE)]
    fast, report = prepare_eager(lm.net, example)
    assert report.applied, report.reason
    assert fast is not lm.net
    # the decoder's adapters and deformable convs; the trunk's 20 conv/BN pairs on top
    assert report.folded >= (21 if kind == "detector" else 1)
    assert report.channels_last == (["detector.backbone"] if kind == "detector" else [])
    # the original is untouched (its BatchNorms are still there), the copy has none left
    assert any(isinstance(m, (nn.BatchNorm2d, torchvision.ops.FrozenBatchNorm2d)) for m in lm.net.modules())
    left = [m for m in fast.modules() if isinstance(m, torchvision.ops.FrozenBatchNorm2d)]
    assert not left
    other = [torch.from_numpy(a) for a in lm.inputs((192, 224), seed=3)]  # not the checked example
    with torch.inference_mode():
        for a, b in zip(_raw(lm.net, other), _raw(fast, other), strict=True):
            assert a.shape == b.shape
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * float(a.abs().max()))
    if kind == "detector":
        with torch.inference_mode():
            for a, b in zip(lm.net(*other), fast(*other), strict=True):
                torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-3)


class _Misleading(nn.Module):
    """A conv registered right before a BatchNorm that normalises something else."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.other = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.bn(self.other(x))


def test_wrong_fold_is_caught_and_original_kept() -> None:
    net = _Misleading().eval()
    _randomise_norms(net)
    fast, report = prepare_eager(net, [torch.rand(1, 3, 16, 16)])
    assert fast is net
    assert not report.applied and "differ" in report.reason
    assert report.folded == 0


def test_training_module_is_not_prepared() -> None:
    net = _Misleading().train()
    fast, report = prepare_eager(net, [torch.rand(1, 3, 16, 16)])
    assert fast is net and report.reason == "module in training mode"


def test_fold_skips_training_batchnorm_and_group_norm() -> None:
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 32, 1), nn.GroupNorm(8, 32))
    assert fold_batchnorms(seq) == 0  # BatchNorm in training mode: batch statistics, not foldable
    seq.eval()
    assert fold_batchnorms(seq) == 1
    assert isinstance(seq[1], nn.Identity) and isinstance(seq[3], nn.GroupNorm)


def test_torch_runner_prepares_unless_told_not_to(tiny_detector_file: Path) -> None:
    lm = load_model(tiny_detector_file, "detector", seed=0)
    fast = TorchRunner(lm)
    assert fast.eager["applied"] and fast.info()["eager"]["folded_batchnorms"] > 0
    plain = TorchRunner(load_model(tiny_detector_file, "detector", seed=0), optimize=False)
    assert not plain.eager["applied"] and plain.net is plain.model.net
    feed = lm.inputs((160, 192), seed=1)
    for r in (fast, plain):
        r.bind(*feed)
        r.run()
    for a, b in zip(fast.fetch(), plain.fetch(), strict=True):
        assert a.shape == b.shape
        assert abs(a.astype("float64") - b.astype("float64")).max() < 1e-3


def test_torch_runner_keeps_one_copy_of_the_weights(tiny_detector_file: Path) -> None:
    """A runner that loaded the file itself drops the model as written once the folded copy
    passed its check; a LoadedModel handed in is left as it is (the caller owns it)."""
    own = TorchRunner(tiny_detector_file, kind="detector")
    assert own.eager["applied"] and own.model.net is own.net
    written = load_model(tiny_detector_file, "detector", seed=0)
    assert own.param_bytes == sum(p.numel() * p.element_size() for p in written.net.parameters())
    assert own.param_bytes > sum(p.numel() * p.element_size() for p in own.net.parameters())
    handed = TorchRunner(written)
    assert handed.eager["applied"] and written.net is not handed.net
    assert handed.model is written


def test_paper_genotype_detector_backbone_folds_all_frozen_batchnorms(tmp_path: Path) -> None:
    """Every FrozenBatchNorm of torchvision's ResNet follows its conv in registration order."""
    path = tmp_path / "model.py"
    path.write_text(compile_genotype(load_paper_genotype("nas_fcos_fpn"), CompileOptions(
        fpn_channels=16, head_channels=64, num_classes=3, detector=True, backbone="resnet18")))
    lm = load_model(path, "detector", seed=0)
    frozen = sum(isinstance(m, torchvision.ops.FrozenBatchNorm2d) for m in lm.net.modules())
    fast, report = prepare_eager(lm.net, [torch.from_numpy(a) for a in lm.inputs(EAGER_CHECK_SIZE)])
    assert report.applied and frozen == 20
    assert not any(isinstance(m, torchvision.ops.FrozenBatchNorm2d) for m in fast.modules())


class _BreaksInChannelsLast(nn.Module):
    """A backbone whose forward fails on a channels_last input (``view`` needs contiguity)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y.view(y.shape[0], -1)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = _BreaksInChannelsLast()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x.transpose(2, 3).transpose(2, 3))


def test_a_backbone_that_cannot_take_channels_last_keeps_the_folding() -> None:
    net = _Net().eval()
    x = torch.rand(1, 3, 8, 8)
    fast, report = prepare_eager(net, [x])
    assert fast is not net and report.applied and report.channels_last == []
    assert report.reason.startswith("channels_last skipped: the inference copy failed")
    with torch.inference_mode():
        assert torch.equal(fast(x), net(x))


class _NeedsItsBatchNorm(nn.Module):
    """Fails once its BatchNorm is folded away (so every prepared copy fails)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(self.bn, nn.BatchNorm2d):
            raise RuntimeError("folded")
        return self.bn(self.conv(x))


def test_failing_copy_falls_back_to_the_model_as_written() -> None:
    net = nn.Sequential()
    net.add_module("backbone", _NeedsItsBatchNorm())
    net.eval()
    fast, report = prepare_eager(net, [torch.rand(1, 3, 8, 8)])
    assert fast is net and not report.applied
    assert report.reason == "the inference copy failed (RuntimeError: folded)"
    assert report.channels_last == [] and report.folded == 0


def test_a_model_that_fails_on_the_check_input_runs_as_written() -> None:
    net = _Net().eval()
    fast, report = prepare_eager(net, [torch.rand(1, 3, 8)])  # 3-d: the conv rejects it
    assert fast is net and not report.applied
    assert report.reason.startswith("the model as written failed on the check input")


def test_batchnorm_without_affine_terms_is_not_folded() -> None:
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False)).eval()
    assert fold_batchnorms(seq) == 0
