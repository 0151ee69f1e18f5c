"""Frozen backbones for the search's feature cache.

A backbone maps normalised-inside images ``[N, 3, H, W]`` (RGB in [0, 1]) to the four
levels ``[c2, c3, c4, c5]`` at strides 4, 8, 16, 32.  It is run once per cached crop,
in eval mode and without gradients; the proxy task never trains it (paper 3.3).

* ``tiny``: a small CNN of strided 3x3 convolutions, random weights from a fixed seed
  (deterministic everywhere) unless a weights file is given.
* ``resnet50``: torchvision's ResNet-50 (layer1..layer4).  Weights come only from a
  file the user gives (a torchvision-format state dict); nothing is ever downloaded.
  Without a file the weights are random (useful for speed measurements only).

The weights' identity (``weights_id``) goes into the cache manifest, so features made
with other weights are never mixed up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from nasfcos.errors import NasfcosError
from nasfcos.io import sha256_file

BACKBONES: tuple[str, ...] = ("tiny", "resnet50")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Seed of the random initialisation when no weights file is given.
RANDOM_INIT_SEED = 0


class _Normalize(nn.Module):
    """RGB in [0, 1] -> ImageNet-normalised, ``[N, 3, H, W]``."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def _conv_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.ReLU(inplace=True))


class TinyBackbone(nn.Module):
    """Five stride-2 stages of conv3x3 + ReLU: images -> ``[c2, c3, c4, c5]``
    (``channels[i]`` channels at stride ``4 * 2**i``; spatial size ``ceil(H / stride)``)."""

    def __init__(self, channels: tuple[int, int, int, int] = (16, 24, 32, 48)) -> None:
        super().__init__()
        c2, c3, c4, c5 = channels
        self.norm = _Normalize()
        self.stem = nn.Sequential(_conv_relu(3, c2, 2), _conv_relu(c2, c2, 1))
        self.layer1 = nn.Sequential(_conv_relu(c2, c2, 2), _conv_relu(c2, c2, 1))
        self.layer2 = nn.Sequential(_conv_relu(c2, c3, 2), _conv_relu(c3, c3, 1))
        self.layer3 = nn.Sequential(_conv_relu(c3, c4, 2), _conv_relu(c4, c4, 1))
        self.layer4 = nn.Sequential(_conv_relu(c4, c5, 2), _conv_relu(c5, c5, 1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, images: Tensor) -> list[Tensor]:
        c2 = self.layer1(self.stem(self.norm(images)))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]


class ResNet50Backbone(nn.Module):
    """torchvision ResNet-50 trunk: images -> ``[c2, c3, c4, c5]`` with 256, 512, 1024,
    2048 channels (frozen batch norm: always used in eval mode)."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet50

        self.norm = _Normalize()
        self.body = resnet50(weights=None)
        self.body.fc = nn.Identity()  # unused; keeps state-dict keys of the trunk only

    def forward(self, images: Tensor) -> list[Tensor]:
        b = self.body
        x = b.maxpool(b.relu(b.bn1(b.conv1(self.norm(images)))))
        c2 = b.layer1(x)
        c3 = b.layer2(c2)
        c4 = b.layer3(c3)
        c5 = b.layer4(c4)
        return [c2, c3, c4, c5]


@dataclass(frozen=True)
class FrozenBackbone:
    """A frozen backbone and the identity of its weights (for the cache manifest)."""

    name: str
    module: nn.Module
    weights_id: str  # "sha256:<hex>" of the weights file, or "random:<seed>"

    @torch.no_grad()
    def __call__(self, images: Tensor) -> list[Tensor]:
        """``[N, 3, H, W]`` RGB in [0, 1] -> ``[c2, c3, c4, c5]`` float tensors."""
        return [f.float() for f in self.module(images)]

    def out_channels(self) -> tuple[int, ...]:
        return tuple(int(f.shape[1]) for f in self(torch.zeros(1, 3, 64, 64)))


def _load_weights(module: nn.Module, path: Path, name: str) -> None:
    """Load a state dict (optionally nested under ``state_dict``/``model``) into ``module``'s trunk."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # user file
        raise NasfcosError(f"{path}: cannot read backbone weights ({type(exc).__name__})") from exc
    if isinstance(obj, dict) and not any(isinstance(v, Tensor) for v in obj.values()):
        obj = obj.get("state_dict", obj.get("model", obj))
    if not isinstance(obj, dict):
        raise NasfcosError(f"{path}: not a state dict")
    target = module.body if isinstance(module, ResNet50Backbone) else module
    own = target.state_dict()
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise NasfcosError(f"{path}: not {name} weights ({len(missing)} missing keys, e.g. {missing[0]})")
    bad = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        raise NasfcosError(f"{path}: not {name} weights (shape mismatch at {bad[0]})")
    target.load_state_dict({k: state[k] for k in own if k in state}, strict=False)


def build_backbone(name: str, weights: str | Path | None = None,
                   tiny_channels: tuple[int, int, int, int] = (16, 24, 32, 48)) -> FrozenBackbone:
    """The frozen backbone ``name`` (``tiny`` or ``resnet50``), in eval mode, float32, CPU."""
    if name not in BACKBONES:
        raise NasfcosError(f"unknown backbone {name!r} (expected one of: {', '.join(BACKBONES)})")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        module: nn.Module = TinyBackbone(tiny_channels) if name == "tiny" else ResNet50Backbone()
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise NasfcosError(f"{path}: no such weights file")
        _load_weights(module, path, name)
        weights_id = f"sha256:{sha256_file(path)}"
    else:
        weights_id = f"random:{RANDOM_INIT_SEED}"
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return FrozenBackbone(name, module, weights_id)
