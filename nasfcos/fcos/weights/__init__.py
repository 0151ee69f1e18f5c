"""Weights shipped as package data, each ``NAME.pt`` (a state_dict) with ``NAME.json``
(provenance: the commands that made it, data seed, sha256 of the ``.pt``).

``tiny_synth``: the ``tiny`` trunk (``[c2, c3, c4, c5]`` = 16, 24, 32, 48 channels) trained
on the synthetic shapes; the keys of ``Detector.backbone.body``, so a compiled tiny
detector loads it with ``build(backbone_weights=shipped_weights("tiny_synth"))``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nasfcos.errors import NasfcosError
from nasfcos.io import sha256_file

WEIGHTS_DIR = Path(__file__).resolve().parent


def shipped_names() -> tuple[str, ...]:
    """Names of the shipped weights (files ``NAME.pt`` with a ``NAME.json``)."""
    return tuple(sorted(p.stem for p in WEIGHTS_DIR.glob("*.pt") if p.with_suffix(".json").is_file()))


def provenance(name: str) -> dict[str, Any]:
    """The ``NAME.json`` record of shipped weights ``name``."""
    path = WEIGHTS_DIR / f"{name}.json"
    if not path.is_file():
        raise NasfcosError(f"no shipped weights named {name!r} ({', '.join(shipped_names()) or 'none'})")
    return json.loads(path.read_text())


def shipped_weights(name: str) -> Path | None:
    """Path of shipped weights ``name`` after checking their sha256 against the provenance
    record; ``None`` when ``name`` is not a shipped name (e.g. a path)."""
    if name not in shipped_names():
        return None
    path = WEIGHTS_DIR / f"{name}.pt"
    want = provenance(name).get("sha256")
    if sha256_file(path) != want:
        raise NasfcosError(f"{path}: sha256 does not match {name}.json (damaged installation)")
    return path
