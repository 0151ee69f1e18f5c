"""Load a compiled ``model.py`` (Contract 2) as a Python module, from any path."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import Tensor, nn

from nasfcos.errors import NasfcosError


def load_model_file(path: str | Path) -> ModuleType:
    """Import the compiled model file at ``path`` under a unique module name.

    Raises :class:`NasfcosError` with a one-line message when the file is missing,
    is not Python, or lacks the Contract 2 interface (``build`` and ``Decoder``).
    """
    path = Path(path)
    if not path.is_file():
        raise NasfcosError(f"{path}: no such model file")
    if path.suffix != ".py":
        raise NasfcosError(f"{path}: expected a compiled model.py (a .py file)")
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    name = f"nasfcos_model_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise NasfcosError(f"{path}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # user file: report, do not crash deep inside
        sys.modules.pop(name, None)
        raise NasfcosError(f"{path}: failed to import ({type(exc).__name__}: {exc})") from exc
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
