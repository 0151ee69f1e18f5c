"""Compile options: the widths and flags a genotype is compiled with, validated once.

Every value here is printed into generated code, so each is checked to be a plain ``int``
within sane bounds (or a name from :data:`BACKBONES`) before any template sees it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from nasfcos.compiler.backbones import BACKBONE_NAMES
from nasfcos.errors import FieldError, NasfcosError
from nasfcos.modelfile import BOX_UNITS, DEFAULT_BOX_UNITS, MAX_CLASSES

#: Backbones a ``--detector`` build may name: every trunk of :mod:`~nasfcos.compiler.pasted_backbone`
#: (``tiny`` is a small random-weight trunk for tests and smoke runs).
BACKBONES = BACKBONE_NAMES
#: Bounds (inclusive) of the width options (also every CLI width flag's, through
#: :func:`check_width`).
MIN_CHANNELS = 2
MAX_CHANNELS = 4096
MAX_IN_CHANNELS = 16384
#: Every head norm is ``GroupNorm(GN_GROUPS, C)`` (as the release), so head widths are multiples.
GN_GROUPS = 32
#: Units of ``bbox_reg = exp(scale_l * x)`` (:class:`~nasfcos.modelfile.BoxUnits`): ``pixels`` of
#: the input image (the release's, default) or ``stride`` units of each level.
BOX_REGRESSION = BOX_UNITS
#: Detection score: ``product`` sigmoid(cls) * sigmoid(ctr) (the release's, default) or ``sqrt``
#: of it (torchvision's FCOS).  Both threshold sigmoid(cls) > score_thresh first.
SCORING = ("product", "sqrt")
#: Input normalisation inside the Detector (its input is always RGB in [0, 1]): ``caffe2`` =
#: BGR x 255 minus (102.9801, 115.9465, 122.7717), std 1 (the release's MSRA/Caffe2 weights);
#: ``imagenet`` = RGB minus ImageNet mean over std (torchvision weights).
PREPROCESS = ("caffe2", "imagenet")


def _check_int(value: Any, what: str, upper: int, lower: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(what, f"expected an integer, got {type(value).__name__} {str(value)[:40]!r}")
    value = int.__int__(value)  # a plain int: a subclass's own __str__ never reaches a template
    if not lower <= value <= upper:
        raise FieldError(what, f"{value} is out of range ({lower}..{upper})")
    return value


def _check_choice(value: Any, what: str, choices: tuple[str, ...]) -> str:
    """``value`` as the table's own (plain) string."""
    if not isinstance(value, str) or value not in choices:
        raise NasfcosError(f"{what}: {str(value)[:40]!r} is not one of: {', '.join(choices)}")
    return choices[choices.index(value)]


def check_width(what: str, value: Any) -> int:
    """A decoder width (FPN or head channels): an int in MIN..MAX_CHANNELS and even (the
    deformable convolutions use two offset groups, which split the channels in halves)."""
    width = _check_int(value, what, MAX_CHANNELS, MIN_CHANNELS)
    if width % 2:
        raise FieldError(what, f"{width} is odd: widths must be even (deformable convolutions use "
                               "two offset groups)")
    return width


def check_num_classes(what: str, value: Any) -> int:
    """A class count K: an int in 1..MAX_CLASSES."""
    return _check_int(value, what, MAX_CLASSES)


def parse_in_channels(value: str | Sequence[int]) -> tuple[int, int, int, int]:
    """Four backbone widths (c2, c3, c4, c5) from ``"256,512,1024,2048"`` or a sequence of ints."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        try:
            items: list[Any] = [int(p) for p in parts]
        except ValueError:
            raise NasfcosError(
                f"in_channels: expected four comma-separated integers (c2,c3,c4,c5), got {value!r:.60}"
            ) from None
    elif isinstance(value, Sequence):
        items = list(value)
    else:
        raise NasfcosError(f"in_channels: expected four integers, got {type(value).__name__}")
    if len(items) != 4:
        raise NasfcosError(f"in_channels: expected four widths (c2,c3,c4,c5), got {len(items)}")
    c2, c3, c4, c5 = (_check_int(v, f"in_channels[{i}]", MAX_IN_CHANNELS) for i, v in enumerate(items))
    return (c2, c3, c4, c5)


@dataclass(frozen=True)
class CompileOptions:
    """What a genotype is compiled with (Contract 2's compiled defaults).

    ``fpn_channels``: FPN width C (256, the released models'); ``head_channels``: head width
    (``None`` = same as the FPN; when they differ a 1x1 conv bridges them; a multiple of 32, the
    head's GroupNorm groups); ``num_classes``: K logits; ``in_channels``: widths of the backbone
    levels c2..c5; ``detector``/``backbone``: also emit ``class Detector``.
    ``box_regression`` (:data:`BOX_REGRESSION`), ``scoring`` (:data:`SCORING`) and
    ``preprocess`` (:data:`PREPROCESS`; ``None`` = the backbone's own: ``caffe2`` for the
    release's ``*_c2`` trunks, ``imagenet`` otherwise) are printed into the file as constants.
    """

    fpn_channels: int = 256
    head_channels: int | None = None
    num_classes: int = 80
    in_channels: tuple[int, int, int, int] = (256, 512, 1024, 2048)
    detector: bool = False
    backbone: str = "resnet50"
    box_regression: str = DEFAULT_BOX_UNITS
    scoring: str = "product"
    preprocess: str | None = None

    def __post_init__(self) -> None:
        # every field is stored as the plain value its check returns: all of them are printed
        # into generated code
        def plain(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        plain("fpn_channels", check_width("fpn_channels", self.fpn_channels))
        if self.head_channels is not None:
            plain("head_channels", check_width("head_channels", self.head_channels))
        plain("num_classes", check_num_classes("num_classes", self.num_classes))
        plain("in_channels", parse_in_channels(self.in_channels))
        if not isinstance(self.detector, bool):
            raise NasfcosError(f"detector: expected a boolean, got {type(self.detector).__name__}")
        if not isinstance(self.backbone, str) or self.backbone not in BACKBONES:
            raise NasfcosError(
                f"backbone: unknown backbone {self.backbone!r:.40} (expected one of: {', '.join(BACKBONES)})"
            )
        plain("backbone", BACKBONES[BACKBONES.index(self.backbone)])
        head = self.resolved_head_channels
        if head % GN_GROUPS:
            what = "head_channels" if self.head_channels is not None else "fpn_channels (= the head width)"
            raise NasfcosError(f"{what}: {head} is not a multiple of {GN_GROUPS} (the head's GroupNorm "
                               f"has {GN_GROUPS} groups, as the release; e.g. 32, 64, 128, 256)")
        plain("box_regression", _check_choice(self.box_regression, "box_regression", BOX_REGRESSION))
        plain("scoring", _check_choice(self.scoring, "scoring", SCORING))
        if self.preprocess is not None:
            plain("preprocess", _check_choice(self.preprocess, "preprocess", PREPROCESS))

    @property
    def resolved_preprocess(self) -> str:
        """The Detector's input normalisation: ``preprocess``, else the backbone's own."""
        if self.preprocess is not None:
            return self.preprocess
        return "caffe2" if self.backbone.endswith("_c2") else "imagenet"

    @property
    def resolved_head_channels(self) -> int:
        """The head width as an int (``head_channels`` or, when ``None``, ``fpn_channels``)."""
        return self.fpn_channels if self.head_channels is None else self.head_channels


def options_context(options: CompileOptions) -> dict[str, Any]:
    """Template values of the behaviour options (validated names only), for every template."""
    preprocess = options.resolved_preprocess
    head_default = "None" if options.head_channels is None else str(options.head_channels)
    line = f"box regression in {options.box_regression}"
    if options.detector:
        line += f", scoring {options.scoring}, preprocess {preprocess}"
    return {
        "head_default": head_default,
        "box_regression": options.box_regression,
        "box_units_text": ("in pixels of the input image" if options.box_regression == DEFAULT_BOX_UNITS
                           else "in units of the level's stride"),
        "scoring": options.scoring,
        "preprocess": preprocess,
        "options_line": line,
        # the compiled options in the Detector's code (pasted_detector's COMPILED_* names)
        "detector_values": {
            "COMPILED_BACKBONE": json.dumps(options.backbone),
            "COMPILED_PREPROCESS": json.dumps(preprocess),
            "COMPILED_SCORING": json.dumps(options.scoring),
            "COMPILED_HEAD_CHANNELS": head_default,
        },
    }


def option_flags(options: CompileOptions) -> list[str]:
    """``nasfcos compile`` flags of the behaviour options that differ from the defaults."""
    flags = []
    if options.box_regression != DEFAULT_BOX_UNITS:
        flags.append(f"--box-regression {options.box_regression}")
    if options.detector and options.scoring != CompileOptions.scoring:
        flags.append(f"--scoring {options.scoring}")
    if options.detector and options.preprocess is not None:
        flags.append(f"--preprocess {options.preprocess}")
    return flags


def resolve_options(options: CompileOptions | None = None, **kw: Any) -> CompileOptions:
    """``options`` with keyword overrides applied (``CompileOptions(**kw)`` when ``options`` is None)."""
    names = {f.name for f in fields(CompileOptions)}
    unknown = sorted(set(kw) - names)
    if unknown:
        raise NasfcosError(f"unknown compile option(s): {', '.join(unknown)} (known: {', '.join(sorted(names))})")
    if options is None:
        return CompileOptions(**kw)
    if not isinstance(options, CompileOptions):
        raise NasfcosError(f"options: expected CompileOptions, got {type(options).__name__}")
    return replace(options, **kw) if kw else options
