"""The export manifest (``model.onnx.json`` beside ``model.onnx``): the one reader.

:meth:`Manifest.load` reads a manifest and :meth:`Manifest.from_json` validates every field
a tool uses before anything is built from it: types (a bool is not an int), bounds (an
image side in ``MIN_SIDE..MAX_SIDE``, a batch in ``1..MAX_BATCH``: a declared size never
reaches an allocation unchecked), nesting depth, and file names.  A bad field is a one-line
:class:`NasfcosError` naming it (``field export.batch: ...``).

Files a manifest names (``source.model``, ``source.weights``, an engine's ``source.onnx``)
are relative to the manifest's folder.  :meth:`Manifest.model_file` returns the model file
only when it lies inside that folder, named relatively (no absolute path, no ``..``, no
symlink leading out): a manifest never chooses code to run elsewhere on the machine.

This module imports nothing heavy (no torch, no onnx).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasfcos.errors import NasfcosError, first_line
from nasfcos.io import regular_file, sha256_file
from nasfcos.limits import MAX_BATCH, MAX_SIDE, MIN_SIDE

MANIFEST_FORMAT = "nasfcos-export/1"
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
MODEL_KINDS: tuple[str, ...] = ("decoder", "detector")
ARTIFACT_TYPES: tuple[str, ...] = ("onnx", "tensorrt")
#: A manifest is a few kB; anything far larger is not one (read no further).
MAX_MANIFEST_BYTES = 8 << 20
#: Deepest nesting of a manifest's JSON (a real one is 5 deep).
MAX_DEPTH = 12
#: Most channels / classes a manifest may declare.
MAX_CHANNELS = 65536

_HEX64 = re.compile(r"[0-9a-f]{64}")


def manifest_path_for(path: str | Path) -> Path:
    """Sidecar manifest of an artifact: ``model.onnx`` -> ``model.onnx.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


class _Fields:
    """Typed access to one section of the manifest; errors name ``section.key``."""

    def __init__(self, where: Path, name: str, data: Any, required: bool = False) -> None:
        self.where, self.name = where, name
        if data is None and not required:
            data = {}
        if not isinstance(data, dict):
            self.fail("", "must be an object")
        self.data: dict[str, Any] = data

    def fail(self, key: str, why: str) -> None:
        name = f"{self.name}.{key}" if key else self.name
        raise NasfcosError(f"{self.where}: field {name} {why}")

    def get(self, key: str, check: Callable[[Any], str | None], *, required: bool = False,
            default: Any = None) -> Any:
        if key not in self.data or (self.data[key] is None and not required):
            if required:
                self.fail(key, "is missing")
            return default
        why = check(self.data[key])
        if why:
            self.fail(key, f"{why} (got {first_line(ValueError(repr(self.data[key])), 60)})")
        return self.data[key]


def _int(lo: int, hi: int) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            return f"must be an integer in {lo}..{hi}"
        return None
    return check


def _str(v: Any) -> str | None:
    return None if isinstance(v, str) and len(v) <= 4096 else "must be a string"


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def _sha(v: Any) -> str | None:
    return None if isinstance(v, str) and _HEX64.fullmatch(v) else "must be a sha256 (64 hex)"


def _list_of(check: Callable[[Any], str | None], n: int | None = None,
             most: int = 1 << 20) -> Callable[[Any], str | None]:
    def run(v: Any) -> str | None:
        if not isinstance(v, list) or (n is not None and len(v) != n) or len(v) > most:
            return f"must be a list of {n or f'at most {most}'} values"
        return next((why for x in v if (why := check(x))), None)
    return run


def _size(v: Any) -> str | None:
    if _list_of(_int(MIN_SIDE, MAX_SIDE), 2)(v):
        return f"must be [height, width] in {MIN_SIDE}..{MAX_SIDE} pixels"
    return None


def _ranges(v: Any) -> str | None:
    bound = _int(0, 1 << 31)
    shape = "must map inputs to {axis: [low, high]}"
    if not isinstance(v, dict):
        return shape
    for name, axes in v.items():
        if not isinstance(axes, dict):
            return shape
        for axis, r in axes.items():
            if not (isinstance(axis, str) and axis.isdecimal() and axis.isascii()
                    and len(axis) == 1 and int(axis) <= 7):
                return f"input {name!s:.40}: axis {axis!r:.40} must be a decimal axis 0..7"
            if not (isinstance(r, list) and len(r) == 2
                    and all(x is None or not bound(x) for x in r)):
                return shape
            if r[0] is not None and r[1] is not None and r[0] > r[1]:
                return f"input {name!s:.40} axis {axis}: low {r[0]} > high {r[1]}"
    return None


def _tensors(v: Any) -> str | None:
    dim = _int(-1, 1 << 31)
    ok = isinstance(v, list) and len(v) <= 64 and all(
        isinstance(t, dict) and not _str(t.get("name")) and isinstance(t.get("shape"), list)
        and all(isinstance(d, str) or not dim(d) for d in t["shape"]) for t in v)
    return None if ok else "must be a list of {name, shape, dtype} objects"


def _depth(obj: Any, limit: int) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    stack, deepest = [(obj, 1)], 0
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            break
        if isinstance(node, dict):
            stack.extend((x, d + 1) for x in node.values())
        elif isinstance(node, list):
            stack.extend((x, d + 1) for x in node)
    return deepest


def safe_relative(base: Path, name: str, what: str, where: Path) -> Path:
    """``base / name`` for a file name a manifest gives, only if it is relative, has no ``..``
    and, symlinks resolved, lies inside ``base``; else a one-line error.  Nothing is read."""
    p = Path(name)
    if p.is_absolute() or ".." in p.parts or not name:
        raise NasfcosError(f"{where}: refusing the {what} {name!r}: a manifest may only name "
                           "a file inside its own folder, relatively")
    full = base / p
    root = base.resolve()
    if root != full.resolve() and root not in full.resolve().parents:
        raise NasfcosError(f"{where}: refusing the {what} {name!r}: it leads out of the "
                           f"manifest's folder (symlink to {full.resolve()})")
    return full


@dataclass(frozen=True)
class Source:
    """What an ONNX export was made from (``source`` of its manifest)."""

    model: str | None = None
    model_sha256: str | None = None
    kind: str | None = None
    seed: int = 0
    weights: str | None = None
    weights_sha256: str | None = None
    state_dict_sha256: str | None = None

    @classmethod
    def from_json(cls, where: Path, name: str, data: Any) -> Source:
        f = _Fields(where, name, data)
        return cls(model=f.get("model", _str), model_sha256=f.get("model_sha256", _sha),
                   kind=f.get("kind", _one_of(MODEL_KINDS)),
                   seed=f.get("seed", _int(0, 2**63), default=0),
                   weights=f.get("weights", _str), weights_sha256=f.get("weights_sha256", _sha),
                   state_dict_sha256=f.get("state_dict_sha256", _sha))


@dataclass(frozen=True)
class Manifest:
    """A validated export manifest.  ``raw`` is the JSON as read (for tools that write a
    derived manifest); every other reader uses the typed fields."""

    path: Path
    raw: dict[str, Any]
    file: str
    type: str
    sha256: str
    bytes: int
    source: Source
    #: folder the source's file names are relative to (an engine's: its ONNX file's folder)
    source_dir: Path
    #: an engine's ONNX file (relative to the engine's folder) and its sha256
    onnx: str | None = None
    onnx_sha256: str | None = None
    precision: str = "fp32"
    size: tuple[int, int] | None = None
    batch: int = 1
    dynamic: bool = False
    dynamic_ranges: dict[str, dict[str, list[int | None]]] = field(default_factory=dict)
    in_channels: tuple[int, ...] | None = None
    num_classes: int | None = None
    class_names: list[str] | None = None
    category_ids: list[int] | None = None
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def kind(self) -> str | None:
        return self.source.kind

    @property
    def folder(self) -> Path:
        return self.path.parent

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """The manifest of an artifact (``path``: the artifact or the manifest itself)."""
        path = Path(path)
        mpath = path if path.name.endswith(".json") else manifest_path_for(path)
        if not mpath.exists():
            raise NasfcosError(f"{mpath}: no manifest next to {path.name}")
        regular_file(mpath, "manifest")
        try:
            if mpath.stat().st_size > MAX_MANIFEST_BYTES:
                raise NasfcosError(f"{mpath}: {mpath.stat().st_size} bytes is too large for "
                                   "a manifest")
            data = json.loads(mpath.read_bytes().decode("utf-8"))
        except UnicodeDecodeError:
            raise NasfcosError(f"{mpath}: not a text (UTF-8) manifest") from None
        except (json.JSONDecodeError, RecursionError) as exc:
            raise NasfcosError(f"{mpath}: not valid JSON ({first_line(exc, 120)})") from None
        except OSError as exc:
            raise NasfcosError(f"{mpath}: cannot read ({exc.strerror})") from None
        return cls.from_json(data, mpath)

    @classmethod
    def find(cls, path: str | Path) -> Manifest | None:
        """The artifact's manifest, or None when there is none beside it."""
        return cls.load(path) if manifest_path_for(path).exists() else None

    @classmethod
    def from_json(cls, data: Any, path: str | Path) -> Manifest:
        """Validate parsed JSON ``data`` (read from ``path``); one-line error naming the field."""
        where = Path(path)
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise NasfcosError(f"{where}: not a nasfcos export manifest")
        if _depth(data, MAX_DEPTH) > MAX_DEPTH:
            raise NasfcosError(f"{where}: nested deeper than {MAX_DEPTH} levels")
        art = _Fields(where, "artifact", data.get("artifact"), required=True)
        kind = art.get("type", _one_of(ARTIFACT_TYPES), required=True)
        src = _Fields(where, "source", data.get("source"))
        source_dir, onnx = where.parent, None
        if kind == "tensorrt":  # an engine's manifest carries its ONNX file's source
            onnx = src.get("onnx", _str)
            if onnx is not None:
                source_dir = (where.parent / onnx).parent
            source = Source.from_json(where, "source.model", src.data.get("model"))
        else:
            source = Source.from_json(where, "source", src.data)
        exp = _Fields(where, "export", data.get("export"))
        widths = _Fields(where, "widths", data.get("widths"))
        classes = _Fields(where, "classes", data.get("classes"))
        chans = widths.get("in_channels", _list_of(_int(1, MAX_CHANNELS), 4))
        return cls(
            path=where, raw=data, file=art.get("file", _name, required=True), type=kind,
            sha256=art.get("sha256", _sha, required=True),
            bytes=art.get("bytes", _int(0, 1 << 62), required=True),
            source=source, source_dir=source_dir, onnx=onnx,
            onnx_sha256=src.get("onnx_sha256", _sha) if kind == "tensorrt" else None,
            precision=_precision(where, data),
            size=tuple(exp.get("size", _size)) if exp.data.get("size") is not None else None,
            batch=exp.get("batch", _int(1, MAX_BATCH), default=1),
            dynamic=exp.get("dynamic", _bool, default=False),
            dynamic_ranges=exp.get("dynamic_ranges", _ranges, default={}),
            in_channels=tuple(chans) if chans is not None else None,
            num_classes=widths.get("num_classes", _int(1, MAX_CHANNELS)),
            class_names=classes.get("names", _list_of(_str, most=MAX_CHANNELS)),
            category_ids=classes.get("category_ids", _list_of(_int(0, 2**63), most=MAX_CHANNELS)),
            inputs=_Fields(where, "", {"inputs": data.get("inputs", [])}).get("inputs", _tensors,
                                                                              default=[]),
            outputs=_Fields(where, "", {"outputs": data.get("outputs", [])}).get(
                "outputs", _tensors, default=[]))

    # -- files the manifest names -----------------------------------------------------------
    def model_file(self) -> Path:
        """The source ``model.py``: inside the manifest's folder and named relatively, else
        a one-line error (checked before the file is read).  Its sha256 is checked by the
        importer against :attr:`Source.model_sha256`."""
        if not self.source.model:
            raise NasfcosError(f"{self.path}: names no source model file")
        if not self.source.model_sha256:
            raise NasfcosError(f"{self.path}: records no model_sha256 for {self.source.model}")
        return safe_relative(self.folder, self._from_source_dir(self.source.model),
                             "model file", self.path)

    def weights_file(self) -> Path | None:
        """The source weights (relative to the manifest; data loaded ``weights_only``), its
        sha256 checked when recorded; None when the export used random weights."""
        if not self.source.weights:
            return None
        p = Path(self.source.weights)
        path = regular_file(p if p.is_absolute() else self.source_dir / p, "weights file")
        if self.source.weights_sha256 and sha256_file(path) != self.source.weights_sha256:
            raise NasfcosError(f"{path}: sha256 differs from the manifest {self.path.name}")
        return path

    def _from_source_dir(self, name: str) -> str:
        """A source file name, re-expressed relative to the manifest's own folder."""
        if self.source_dir == self.folder or Path(name).is_absolute():
            return name
        return os.path.relpath(self.source_dir / name, self.folder)

    def rebased_source(self, to_dir: str | Path) -> dict[str, Any]:
        """The raw ``source`` section for a manifest written in ``to_dir``: relative file
        names (``model``, ``weights``) rewritten relative to ``to_dir``."""
        out = dict(self.raw.get("source") or {})
        for key in ("model", "weights"):
            if isinstance(out.get(key), str) and not Path(out[key]).is_absolute():
                out[key] = os.path.relpath((self.source_dir / out[key]).resolve(),
                                           Path(to_dir).resolve())
        return out

    def mismatch(self, artifact: Path, digest: str) -> list[str]:
        """How ``artifact`` (whose sha256 is ``digest``) differs from what this manifest
        records: name, sha256, size ([] when they match)."""
        problems = []
        if self.file != artifact.name:
            problems.append(f"manifest names {self.file!r}, not {artifact.name!r}")
        if self.sha256 != digest:
            problems.append(f"sha256 differs (file {digest[:12]}, manifest {self.sha256[:12]})")
        size = artifact.stat().st_size
        if self.bytes != size:
            problems.append(f"size differs (file {size}, manifest {self.bytes})")
        return problems


def _name(v: Any) -> str | None:
    if _str(v) or not v or Path(v).name != v or v in (".", ".."):
        return "must be a plain file name"
    return None


def _precision(where: Path, data: dict[str, Any]) -> str:
    prec = _Fields(where, "precision", data.get("precision")).get("precision",
                                                                   _one_of(PRECISIONS))
    if prec is None:
        build = _Fields(where, "build", data.get("build")).data.get("precision")
        if isinstance(build, list):  # engine manifests before strong typing
            build = next((p for p in ("int8", "fp16") if p in build), "fp32")
        prec = build if build in PRECISIONS else "fp32"
    return str(prec)


def load_manifest(path: str | Path) -> Manifest:
    """:meth:`Manifest.load` (the manifest of an artifact, validated)."""
    return Manifest.load(path)


__all__ = ["MANIFEST_FORMAT", "MAX_DEPTH", "PRECISIONS", "Manifest", "Source", "load_manifest",
           "manifest_path_for", "safe_relative"]
