"""Detector backbones (torchvision trunks and the release's): an ordinary module whose code below the marker the
compiler pastes into model files (:func:`nasfcos.compiler.backbones.pasted`)."""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor, nn

# --- pasted into model.py below this line ---


# ---------------------------------------------------------------------------
# Backbones: torchvision trunks (frozen batch norm, as FCOS), images -> [c2, c3, c4, c5]
# ---------------------------------------------------------------------------

#: Widths of [c2, c3, c4, c5] (strides 4, 8, 16, 32) for each backbone name.
#: MobileNets tap torchvision's ``features`` at the last block of each stride (v2: blocks
#: 3, 6, 13, 17, as FCOS's MobileNetV2 body and the NAS-FCOS release; v3-large: 3, 6, 12, 15);
#: their final 1x1 conv (to 1280 / 960) is not used.  ``tiny`` is a test-only trunk of strided
#: 3x3 convs.  The ``*_c2`` trunks are the NAS-FCOS release's (maskrcnn-benchmark, MSRA/Caffe2
#: weights): frozen BN without epsilon; ResNets with the stride in the first 1x1 conv of a block,
#: the ResNeXt with it in the 3x3 conv (as torchvision); their input is Caffe2-normalised BGR.
BACKBONE_CHANNELS: dict[str, tuple[int, int, int, int]] = {
    "resnet18": (64, 128, 256, 512),
    "resnet34": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
    "resnet101": (256, 512, 1024, 2048),
    "resnext101_32x4d": (256, 512, 1024, 2048),
    "resnext101_32x8d": (256, 512, 1024, 2048),
    "resnet50_c2": (256, 512, 1024, 2048),
    "resnet101_c2": (256, 512, 1024, 2048),
    "resnext101_32x8d_c2": (256, 512, 1024, 2048),
    "mobilenet_v2": (24, 32, 96, 320),
    "mobilenet_v3_large": (24, 40, 112, 160),
    "tiny": (16, 24, 32, 48),
}
#: Keys of a torchvision state_dict that the trunk does not use (classifier, last conv).
BACKBONE_UNUSED_KEYS: dict[str, tuple[str, ...]] = {
    **{name: ("fc.",) for name in BACKBONE_CHANNELS if name.startswith("res")},  # ResNets, ResNeXts
    "mobilenet_v2": ("classifier.", "features.18."),
    "mobilenet_v3_large": ("classifier.", "features.16."),
    "tiny": ("norm.",),
}
#: ResNet / ResNeXt trunks: (blocks per stage, groups, width per group, stride in the first 1x1
#: conv of a block (MSRA/Caffe2) rather than the 3x3 (torchvision), frozen-BN epsilon).
RESNET_SPECS: dict[str, tuple[tuple[int, int, int, int], int, int, bool, float]] = {
    "resnet50": ((3, 4, 6, 3), 1, 64, False, 1e-5),
    "resnet101": ((3, 4, 23, 3), 1, 64, False, 1e-5),
    "resnext101_32x4d": ((3, 4, 23, 3), 32, 4, False, 1e-5),
    "resnext101_32x8d": ((3, 4, 23, 3), 32, 8, False, 1e-5),
    "resnet50_c2": ((3, 4, 6, 3), 1, 64, True, 0.0),
    "resnet101_c2": ((3, 4, 23, 3), 1, 64, True, 0.0),
    "resnext101_32x8d_c2": ((3, 4, 23, 3), 32, 8, False, 0.0),
}
#: ImageNet statistics used to normalise RGB images in [0, 1] inside the model (``imagenet``).
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
#: The release's (Caffe2) normalisation (``caffe2``): BGR x 255 minus this mean (B, G, R), std 1.
CAFFE2_MEAN = (102.9801, 115.9465, 122.7717)


class FrozenBatchNorm2d(torchvision.ops.FrozenBatchNorm2d):
    """torchvision's frozen batch norm (same buffers and state_dict), computed as one fused
    multiply-add ``x * scale + shift``: one pass over the map instead of two.
    [N, C, H, W] -> same."""

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return torch.addcmul(shift.view(1, -1, 1, 1), x, scale.view(1, -1, 1, 1))


class FrozenBatchNorm2dNoEps(FrozenBatchNorm2d):
    """The release's frozen batch norm: ``x * w / sqrt(var) + (b - mean * w / sqrt(var))``, no
    epsilon (maskrcnn-benchmark's FrozenBatchNorm2d). [N, C, H, W] -> same."""

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features, eps=0.0)


class ResNetBackbone(nn.Module):
    """ResNet / ResNeXt trunk (``RESNET_SPECS[name]``): ``[N, 3, H, W]`` -> ``[c2, c3, c4, c5]`` at
    strides 4, 8, 16, 32 (``BACKBONE_CHANNELS[name]`` channels).

    ``self.body`` keeps torchvision's module names (``conv1``, ``bn1``, ``layerK.B.convJ``,
    ``.downsample.0/1``), so a torchvision state_dict loads as is.  For the ``*_c2`` trunks the
    first block of stages 2..4 strides in ``conv1`` (1x1) instead of ``conv2`` (3x3).
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        resnet = torchvision.models.resnet
        if name in ("resnet18", "resnet34"):
            body = getattr(resnet, name)(weights=None, norm_layer=FrozenBatchNorm2d)
        elif name in RESNET_SPECS:
            blocks, groups, width, stride_in_1x1, eps = RESNET_SPECS[name]
            norm = FrozenBatchNorm2dNoEps if eps == 0.0 else FrozenBatchNorm2d
            body = resnet.ResNet(resnet.Bottleneck, list(blocks), groups=groups,
                                 width_per_group=width, norm_layer=norm)
            if stride_in_1x1:
                for stage in (body.layer2, body.layer3, body.layer4):
                    stage[0].conv1.stride = (2, 2)
                    stage[0].conv2.stride = (1, 1)
        else:
            raise ValueError(f"not a ResNet backbone: {name!r}")
        body.fc = nn.Identity()
        self.body = body

    def forward(self, images: Tensor) -> list[Tensor]:
        b = self.body
        x = b.maxpool(b.relu(b.bn1(b.conv1(images))))
        c2 = b.layer1(x)
        c3 = b.layer2(c2)
        c4 = b.layer3(c3)
        c5 = b.layer4(c4)
        return [c2, c3, c4, c5]


class MobileNetBackbone(nn.Module):
    """torchvision MobileNet trunk: ``[N, 3, H, W]`` -> ``[c2, c3, c4, c5]`` at strides 4, 8, 16, 32
    (the outputs of ``features`` blocks ``taps``; ``BACKBONE_CHANNELS[name]`` channels)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        if name == "mobilenet_v2":
            self.taps = (3, 6, 13, 17)
        elif name == "mobilenet_v3_large":
            self.taps = (3, 6, 12, 15)
        else:
            raise ValueError(f"not a MobileNet backbone: {name!r}")
        body = getattr(torchvision.models, name)(weights=None, norm_layer=FrozenBatchNorm2d)
        body.features = body.features[: self.taps[-1] + 1]  # drop the final 1x1 conv
        body.classifier = nn.Identity()
        self.body = body

    def forward(self, images: Tensor) -> list[Tensor]:
        x = images
        out: list[Tensor] = []
        for i, block in enumerate(self.body.features):
            x = block(x)
            if i in self.taps:
                out.append(x)
        return out


class TinyBackbone(nn.Module):
    """Test-only trunk: ten 3x3 convs + ReLU, one stride 2 per stage:
    ``[N, 3, H, W]`` -> ``[c2, c3, c4, c5]`` (16, 24, 32, 48 channels, size ``ceil(H / stride)``).

    Its layer names match the search's tiny feature-cache backbone, so those weights load here.
    """

    def __init__(self) -> None:
        super().__init__()
        c2, c3, c4, c5 = BACKBONE_CHANNELS["tiny"]

        def stage(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.ReLU(inplace=True)),
                nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1), nn.ReLU(inplace=True)),
            )

        self.body = nn.Module()
        self.body.stem = stage(3, c2, 2)
        self.body.layer1 = stage(c2, c2, 2)
        self.body.layer2 = stage(c2, c3, 2)
        self.body.layer3 = stage(c3, c4, 2)
        self.body.layer4 = stage(c4, c5, 2)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, images: Tensor) -> list[Tensor]:
        b = self.body
        c2 = b.layer1(b.stem(images))
        c3 = b.layer2(c2)
        c4 = b.layer3(c3)
        c5 = b.layer4(c4)
        return [c2, c3, c4, c5]


def build_backbone(name: str) -> nn.Module:
    """The backbone ``name`` (a key of ``BACKBONE_CHANNELS``) with random weights; never downloads."""
    if name not in BACKBONE_CHANNELS:
        raise ValueError(f"unknown backbone {name!r} (expected one of: {', '.join(BACKBONE_CHANNELS)})")
    if name.startswith("mobilenet"):
        return MobileNetBackbone(name)
    if name == "tiny":
        return TinyBackbone()
    return ResNetBackbone(name)


def load_state_file(module: nn.Module, path: str, what: str, misfit: str,
                    wrappers: tuple[str, str] = ("model", "state_dict"),
                    ignored: tuple[str, ...] = ()) -> None:
    """Load the state_dict file ``path`` (plain, or under the key ``wrappers[0]``, else
    ``wrappers[1]``) into ``module``; keys that start or end with an entry of ``ignored`` are left
    out on both sides.  A file that cannot be read (``what``) or does not fit (``misfit``) raises
    a ``ValueError`` with a one-line message."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a user file: one line, not a traceback
        raise ValueError(f"{path}: cannot read {what} ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and not any(isinstance(v, Tensor) for v in state.values()):
        state = state.get(wrappers[0], state.get(wrappers[1], state))
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state_dict")
    state, own = ({k: v for k, v in d.items() if not (k.startswith(ignored) or k.endswith(ignored))}
                  for d in (state, module.state_dict()))
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        example = (missing or unexpected)[0]
        raise ValueError(f"{path}: {misfit} ({len(missing)} missing, {len(unexpected)} unexpected keys, "
                         f"e.g. {example!r})")
    bad = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError(f"{path}: {misfit} (shape mismatch at {bad[0]!r}: "
                         f"{tuple(state[bad[0]].shape)} vs {tuple(own[bad[0]].shape)})")
    module.load_state_dict(state)


def load_backbone_weights(backbone: nn.Module, name: str, path: str) -> None:
    """Load a torchvision-format state_dict file into ``backbone.body``.

    Keys the trunk does not use (classifier, ...) are ignored; any other mismatch raises a
    ``ValueError`` with a one-line message.
    """
    load_state_file(backbone.body, path, "backbone weights", f"not a torchvision {name} state_dict",
                    ("state_dict", "model"), (*BACKBONE_UNUSED_KEYS[name], "num_batches_tracked"))
