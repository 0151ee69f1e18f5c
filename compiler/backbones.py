"""Detector backbones, from the one place they are defined: ``templates/backbone.py.j2``.

The compiled ``model.py`` carries its backbone code (it must run without nasfcos), so the
template is the single source of truth; this module renders that template on its own and
exposes it to the toolkit (profile, tests, the compiler's choice of ``in_channels``).

Names (``BACKBONE_NAMES``) and the widths of ``[c2, c3, c4, c5]`` (strides 4, 8, 16, 32):

==================  ======================  =================================================
name                widths                  notes
==================  ======================  =================================================
resnet18, resnet34  64, 128, 256, 512       torchvision, frozen BN
resnet50, resnet101 256, 512, 1024, 2048    torchvision, frozen BN
resnext101_32x4d    256, 512, 1024, 2048    ``ResNet(Bottleneck, [3,4,23,3], groups=32, width_per_group=4)``
resnext101_32x8d    256, 512, 1024, 2048    torchvision's X-101 32x8d, frozen BN
resnet50_c2         256, 512, 1024, 2048    the release's R-50: stride in the first 1x1, frozen BN
resnet101_c2                                without eps, Caffe2 BGR input (``preprocess=caffe2``)
resnext101_32x8d_c2 256, 512, 1024, 2048    the release's X-101 32x8d: stride in the 3x3, no eps
mobilenet_v2        24, 32, 96, 320         ``features`` blocks 3, 6, 13, 17 (FCOS's MNV2 taps)
mobilenet_v3_large  24, 40, 112, 160        ``features`` blocks 3, 6, 12, 15
tiny                16, 24, 32, 48          test-only: ten 3x3 convs + ReLU, random weights
==================  ======================  =================================================

Weights are random unless a torchvision-format state_dict file is given; nothing is ever
downloaded.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import jinja2

from nasfcos.errors import NasfcosError
from nasfcos.modelfile import module_from_source

if TYPE_CHECKING:
    from torch import nn

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"

_PREAMBLE = '''"""Backbones of nasfcos detectors (rendered from backbone.py.j2)."""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor, nn
'''


def template_environment() -> jinja2.Environment:
    """The Jinja2 environment of ``compiler/templates`` (strict: undefined names raise)."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


@functools.cache
def backbone_source() -> str:
    """Python source of the backbone library alone (imports + ``backbone.py.j2``)."""
    return _PREAMBLE + template_environment().get_template("backbone.py.j2").render()


@functools.cache
def _module() -> ModuleType:
    return module_from_source(backbone_source(), "nasfcos_backbones",
                              filename=str(TEMPLATES_DIR / "backbone.py.j2"))  # our own template


@functools.cache
def _channel_table() -> dict[str, tuple[int, int, int, int]]:
    """``BACKBONE_CHANNELS`` read from the rendered source (no torch import needed)."""
    for node in ast.parse(backbone_source()).body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "BACKBONE_CHANNELS":
            return {k: tuple(v) for k, v in ast.literal_eval(node.value).items()}
    raise RuntimeError("backbone.py.j2 defines no BACKBONE_CHANNELS")  # a bug, not a user error


def backbone_names() -> tuple[str, ...]:
    """Every backbone name a detector accepts, in table order."""
    return tuple(_channel_table())


def backbone_channels(name: str) -> tuple[int, int, int, int]:
    """Widths of ``[c2, c3, c4, c5]`` of backbone ``name`` (the Decoder's ``in_channels``)."""
    table = _channel_table()
    if name not in table:
        raise NasfcosError(f"unknown backbone {name!r} (expected one of: {', '.join(table)})")
    return tuple(table[name])


def build_backbone(name: str, weights: str | Path | None = None) -> nn.Module:
    """Backbone ``name`` (``forward(images) -> [c2, c3, c4, c5]``, images already normalised),
    random weights unless ``weights`` names a torchvision state_dict file."""
    backbone_channels(name)  # validates the name
    module = _module()
    net: nn.Module = module.build_backbone(name)
    if weights is not None:
        if not Path(weights).is_file():
            raise NasfcosError(f"{weights}: no such weights file")
        try:
            module.load_backbone_weights(net, name, str(weights))
        except ValueError as exc:
            raise NasfcosError(str(exc)) from None
    return net


def image_normalization() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per RGB channel that a detector subtracts / divides images in [0, 1] by
    before its backbone (``IMAGE_MEAN``, ``IMAGE_STD`` of the template)."""
    module = _module()
    return tuple(module.IMAGE_MEAN), tuple(module.IMAGE_STD)


BACKBONE_NAMES: tuple[str, ...] = backbone_names()
