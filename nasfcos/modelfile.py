"""The one place Python source becomes a module: compiled model files and generated source.

* :func:`load_model_file` imports a compiled ``model.py`` (Contract 2) from any path.  The
  file is checked before a byte is read (a regular file, not a FIFO or device; a ``.py``),
  optionally against an expected sha256 (a manifest's ``model_sha256``), and its top-level
  code runs under :func:`model_code_guard`.
* :func:`module_from_source` executes source the toolkit generated itself (the compiler's
  output, the backbone library, the baseline) into a fresh module.
* :func:`model_code_guard` wraps any call into user model code (import, constructor,
  forward): ``SystemExit`` and exceptions become a one-line :class:`NasfcosError`.
* :class:`ModelInfo` (``ModelInfo.from_module``) is the one reader of a model file's
  constants (kind, widths, classes, box units, strides, preprocessing, backbone), and
  :class:`BoxUnits` the one meaning of its box-regression units.

``sys.modules`` policy: a module is registered under its (content-derived, unique) name
only when ``register=True`` -- model files always are (TorchScript and pickling look
classes up by module), in-memory compilations are not unless asked (the search compiles
thousands of genotypes and must not keep them all alive).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import CodeType, ModuleType
from typing import Any

from torch import Tensor, nn

from nasfcos.errors import NasfcosError, first_line
from nasfcos.io import regular_file


@contextlib.contextmanager
def model_code_guard(what: str | Path) -> Iterator[None]:
    """Run user model code: ``SystemExit``/exceptions -> one-line :class:`NasfcosError`.

    ``what`` names the code in the message (usually the model file).  A
    :class:`NasfcosError` raised inside passes through unchanged; ``KeyboardInterrupt``
    is not caught.
    """
    try:
        yield
    except NasfcosError:
        raise
    except SystemExit as exc:
        raise NasfcosError(f"{what}: the model code called sys.exit({exc.code!r})") from None
    except Exception as exc:
        detail = first_line(exc, 300) if str(exc).strip() else ""
        raise NasfcosError(f"{what}: the model code failed ({type(exc).__name__}"
                           f"{': ' + detail if detail else ''})") from exc


def module_from_source(source: str | CodeType, name: str, *, filename: str | None = None,
                       register: bool = False, doc: str | None = None) -> ModuleType:
    """Execute ``source`` (text, or code compiled from it) into a fresh module ``name``.

    ``filename`` becomes ``__file__`` (default ``<name>``).  With ``register`` the module
    is put in ``sys.modules[name]`` before its code runs (dataclasses and pickling look it
    up there) and removed again if the code fails.  Errors are not translated here; wrap
    the call in :func:`model_code_guard` when the source is not the toolkit's own.
    """
    module = ModuleType(name, doc)
    module.__file__ = filename or f"<{name}>"
    code = source if isinstance(source, CodeType) else compile(source, module.__file__, "exec")
    if register:
        sys.modules[name] = module
    try:
        exec(code, module.__dict__)  # noqa: S102 - the single exec of the toolkit; see module doc
    except BaseException:
        if register:
            sys.modules.pop(name, None)
        raise
    return module


def load_model_file(path: str | Path, *, sha256: str | None = None) -> ModuleType:
    """Import the compiled model file at ``path`` under a unique module name.

    ``sha256``: when given, the file's content must hash to it (else nothing is executed).
    Raises :class:`NasfcosError` with a one-line message when the file is missing, special
    (FIFO, device), not Python, does not match ``sha256``, fails while importing (including
    ``sys.exit``), or lacks the Contract 2 interface (``build`` and ``Decoder``).
    """
    path = regular_file(path, "model file")
    if path.suffix != ".py":
        raise NasfcosError(f"{path}: expected a compiled model.py (a .py file)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise NasfcosError(f"{path}: cannot read ({exc.strerror})") from None
    digest = hashlib.sha256(data).hexdigest()
    if sha256 is not None and digest != sha256:
        raise NasfcosError(f"{path}: sha256 {digest[:12]} differs from the manifest's "
                           f"{str(sha256)[:12]}; refusing to import it")
    try:
        source = data.decode("utf-8")
    except UnicodeDecodeError:
        raise NasfcosError(f"{path}: not a text (UTF-8) Python file") from None
    key = hashlib.sha256(str(path.resolve()).encode() + digest.encode()).hexdigest()[:12]
    with model_code_guard(path):
        try:
            code = compile(source, str(path), "exec")
        except (SyntaxError, ValueError) as exc:
            raise NasfcosError(f"{path}: not valid Python ({first_line(exc, 300)})") from None
        module = module_from_source(code, f"nasfcos_model_{key}", filename=str(path),
                                    register=True)
    for attr in ("build", "Decoder"):
        if not hasattr(module, attr):
            raise NasfcosError(f"{path}: not a nasfcos model file (no '{attr}')")
    return module


#: Most classes a model has: the one limit of compile options, ``--num-classes`` flags and
#: weights files' ``num_classes`` (LVIS has 1203, Objects365 365).
MAX_CLASSES = 10000
#: Units of a model's box regression ``bbox_reg = exp(scale_l * x)`` (Contract 2's
#: ``BOX_REGRESSION``): ``pixels`` of the input image (the release's, the default) or
#: ``stride`` units of each level (FCOS's later stride-normalised regression).
DEFAULT_BOX_UNITS = "pixels"
BOX_UNITS: tuple[str, ...] = (DEFAULT_BOX_UNITS, "stride")


@dataclass(frozen=True)
class BoxUnits:
    """The units of (l, t, r, b) box distances a model regresses, as one small coder (like
    torchvision's ``BoxLinearCoder`` with ``normalize_by_size``): :meth:`encode` maps pixel
    distances to the model's units, :meth:`decode` maps the model's outputs back to pixels.
    ``strides`` broadcast against the distances (one stride per location or level)."""

    name: str = DEFAULT_BOX_UNITS

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or self.name not in BOX_UNITS:
            raise NasfcosError(f"box units: {str(self.name)[:40]!r} is not one of: {', '.join(BOX_UNITS)}")

    def encode(self, distances: Tensor, strides: Tensor | float) -> Tensor:
        """Pixel distances -> the model's units."""
        return distances if self.name == "pixels" else distances / strides

    def decode(self, regression: Tensor, strides: Tensor | float) -> Tensor:
        """The model's regression -> pixel distances."""
        return regression if self.name == "pixels" else regression * strides


def _const(module: ModuleType, name: str, kind: type) -> Any:
    """Constant ``name`` of a model file (``None`` if absent); ``tuple``: of ints, from a tuple or list."""
    value = module.__dict__.get(name)
    ok = value is None or (type(value) is kind if kind is not tuple else (
        isinstance(value, tuple | list) and all(type(v) is int for v in value)))
    if not ok:
        where = getattr(module, "__file__", None) or "model file"
        raise NasfcosError(f"{where}: {name} = {str(value)[:40]!r} is not {kind.__name__}"
                           + (" of integers" if kind is tuple else ""))
    return tuple(value) if isinstance(value, list) else value


@dataclass(frozen=True)
class ModelInfo:
    """What a compiled model file (Contract 2) declares about itself: the only reader of
    its constants.  ``None`` where a (hand-written or older) file leaves one out.

    ``kind``: ``detector`` when the file has ``Detector``, else ``decoder``;
    ``head_channels``: the compiled head width; ``head_follows_fpn``: the ``Decoder``'s
    ``head_channels`` default is ``None`` (a changed FPN width changes the head's too).
    """

    kind: str
    name: str | None = None
    genotype: dict[str, Any] | None = None
    genotype_hash: str | None = None
    fpn_channels: int | None = None
    head_channels: int | None = None
    head_follows_fpn: bool = True
    num_classes: int | None = None
    in_channels: tuple[int, ...] | None = None
    box_units: BoxUnits = BoxUnits()
    strides: tuple[int, ...] | None = None
    scoring: str | None = None
    preprocess: str | None = None
    backbone: str | None = None

    @classmethod
    def from_module(cls, module: ModuleType) -> ModelInfo:
        """Read the constants of a loaded model file (see :func:`load_model_file`)."""
        genotype = module.__dict__.get("GENOTYPE")
        name = _const(module, "GENOTYPE_NAME", str)
        if name is None and isinstance(genotype, dict) and isinstance(genotype.get("name"), str):
            name = genotype["name"]
        units = _const(module, "BOX_REGRESSION", str)
        try:
            box_units = BoxUnits(units if units is not None else DEFAULT_BOX_UNITS)
        except NasfcosError as exc:
            raise NasfcosError(f"{getattr(module, '__file__', None) or 'model file'}: {exc}") from None
        return cls(
            kind="detector" if hasattr(module, "Detector") else "decoder",
            name=name,
            genotype=genotype if isinstance(genotype, dict) else None,
            genotype_hash=_const(module, "GENOTYPE_HASH", str),
            fpn_channels=_const(module, "FPN_CHANNELS", int),
            head_channels=_const(module, "HEAD_CHANNELS", int),
            head_follows_fpn=_head_default(module) is None,
            num_classes=_const(module, "NUM_CLASSES", int),
            in_channels=_const(module, "IN_CHANNELS", tuple),
            box_units=box_units,
            strides=_const(module, "STRIDES", tuple),
            scoring=_const(module, "SCORING", str),
            preprocess=_const(module, "PREPROCESS", str),
            backbone=_const(module, "BACKBONE", str),
        )

    def widths(self, fpn_channels: int | None = None, head_channels: int | None = None) -> tuple[int, int]:
        """(FPN, head) widths a build with these overrides has (``None``: the compiled ones)."""
        fpn = int(fpn_channels or self.fpn_channels or 0)
        if head_channels is not None:
            return fpn, int(head_channels)
        return fpn, fpn if self.head_follows_fpn or self.head_channels is None else self.head_channels

    def options(self) -> dict[str, str]:
        """The compiled behaviour options present in the file (manifest ``options``)."""
        values = {"box_regression": self.box_units.name, "scoring": self.scoring,
                  "preprocess": self.preprocess}
        return {k: v for k, v in values.items() if v is not None}


def _head_default(module: ModuleType) -> Any:
    """The ``Decoder``'s ``head_channels`` default (``None``: the head follows the FPN width)."""
    try:
        return inspect.signature(module.Decoder).parameters["head_channels"].default
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


class RawForward(nn.Module):
    """A Detector's training path as a module: ``forward(images) = detector.forward_raw(images)``
    (backbone + decoder, no post-processing).  Used where the call must go through
    ``nn.Module.__call__``: DDP's gradient hooks, FlopCounterMode's module names, meta-device
    FLOP counts."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: Tensor) -> Any:
        return self.detector.forward_raw(images)


__all__ = ["BOX_UNITS", "DEFAULT_BOX_UNITS", "MAX_CLASSES", "BoxUnits", "ModelInfo", "RawForward", "load_model_file", "model_code_guard",
           "module_from_source"]
