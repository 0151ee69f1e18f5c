"""The one place Python source becomes a module: compiled model files and generated source.

* :func:`load_model_file` imports a compiled ``model.py`` (Contract 2) from any path.  The
  file is checked before a byte is read (a regular file, not a FIFO or device; a ``.py``),
  optionally against an expected sha256 (a manifest's ``model_sha256``), and its top-level
  code runs under :func:`model_code_guard`.
* :func:`module_from_source` executes source the toolkit generated itself (the compiler's
  output, the backbone library, the baseline) into a fresh module.
* :func:`model_code_guard` wraps any call into user model code (import, constructor,
  forward): ``SystemExit`` and exceptions become a one-line :class:`NasfcosError`.

``sys.modules`` policy: a module is registered under its (content-derived, unique) name
only when ``register=True`` -- model files always are (TorchScript and pickling look
classes up by module), in-memory compilations are not unless asked (the search compiles
thousands of genotypes and must not keep them all alive).
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import CodeType, ModuleType
from typing import Any

from torch import Tensor, nn

from nasfcos.errors import NasfcosError
from nasfcos.io import regular_file


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


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
        detail = _first_line(exc)
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
            raise NasfcosError(f"{path}: not valid Python ({_first_line(exc)})") from None
        module = module_from_source(code, f"nasfcos_model_{key}", filename=str(path),
                                    register=True)
    for attr in ("build", "Decoder"):
        if not hasattr(module, attr):
            raise NasfcosError(f"{path}: not a nasfcos model file (no '{attr}')")
    return module


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


__all__ = ["RawForward", "load_model_file", "model_code_guard", "module_from_source"]
