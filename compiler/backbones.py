"""Detector backbones, from the one place they are defined: :mod:`~nasfcos.compiler.pasted_backbone`.

The compiled ``model.py`` carries its backbone code (it must run without nasfcos): the
compiler pastes that ordinary module's code into the file (:func:`pasted`, also the
template environment's ``paste``); this module exposes it to the toolkit (profile, tests,
the compiler's choice of ``in_channels``).

Names (``BACKBONE_NAMES``), the widths of ``[c2, c3, c4, c5]`` (strides 4, 8, 16, 32) and what
each trunk is: the one table, ``BACKBONE_CHANNELS`` and its comment in that module.
Weights are random unless a torchvision-format state_dict file is given; nothing is ever
downloaded.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import jinja2
from torch import nn

import nasfcos.compiler.pasted_backbone as pasted_backbone
from nasfcos.errors import NasfcosError

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
#: The line of a ``pasted_*`` module below which its code goes into compiled files.
PASTE_MARKER = "# --- pasted into model.py below this line ---\n"
#: A name in pasted code that stands for a compiled option: a compiled file has the option's
#: Python literal in its place (:func:`paste`); the ordinary module defines it above the marker.
FILL_IN = re.compile(r"\bCOMPILED_[A-Z_]+\b")


@functools.cache
def pasted(name: str) -> str:
    """The code compiled files carry of module ``nasfcos.compiler.pasted_<name>`` (what
    follows its :data:`PASTE_MARKER`; its imports stay behind)."""
    text = (Path(__file__).resolve().parent / f"pasted_{name}.py").read_text(encoding="utf-8")
    return text.split(PASTE_MARKER, 1)[1]


def paste(name: str, **values: str) -> str:
    """:func:`pasted` code of ``name`` with each :data:`FILL_IN` name in it replaced by its value
    in ``values`` (Python literal text).  Raises when a name is left without a value or a value
    names nothing: the compiled file would not run or would ignore an option."""
    code = pasted(name)
    names = set(FILL_IN.findall(code))
    if names != set(values):
        raise NasfcosError(f"pasted_{name}: fill-ins {sorted(names)} but values for {sorted(values)}")
    return FILL_IN.sub(lambda m: values[m.group(0)], code)


@functools.cache
def template_environment() -> jinja2.Environment:
    """The Jinja2 environment of ``compiler/templates`` (strict: undefined names raise);
    ``{{ paste("name", **values) }}`` on a line of its own puts :func:`paste` code there."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.globals["paste"] = lambda name, **values: paste(name, **values).removesuffix("\n")  # the line's own newline ends it
    return env


def backbone_channels(name: str) -> tuple[int, int, int, int]:
    """Widths of ``[c2, c3, c4, c5]`` of backbone ``name`` (the Decoder's ``in_channels``)."""
    table = pasted_backbone.BACKBONE_CHANNELS
    if name not in table:
        raise NasfcosError(f"unknown backbone {name!r} (expected one of: {', '.join(table)})")
    return tuple(table[name])


def build_backbone(name: str, weights: str | Path | None = None) -> nn.Module:
    """Backbone ``name`` (``forward(images) -> [c2, c3, c4, c5]``, images already normalised),
    random weights unless ``weights`` names a torchvision state_dict file."""
    backbone_channels(name)  # validates the name
    net: nn.Module = pasted_backbone.build_backbone(name)
    if weights is not None:
        if not Path(weights).is_file():
            raise NasfcosError(f"{weights}: no such weights file")
        try:
            pasted_backbone.load_backbone_weights(net, name, str(weights))
        except ValueError as exc:
            raise NasfcosError(str(exc)) from None
    return net


def image_normalization() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per RGB channel that a detector subtracts / divides images in [0, 1] by
    before its backbone (``IMAGE_MEAN``, ``IMAGE_STD`` of the backbone code)."""
    return tuple(pasted_backbone.IMAGE_MEAN), tuple(pasted_backbone.IMAGE_STD)


#: Every backbone name a detector accepts, in table order.
BACKBONE_NAMES: tuple[str, ...] = tuple(pasted_backbone.BACKBONE_CHANNELS)
