"""Genotype data model, strict validation, JSON I/O and the release's numeric list form.

A genotype is data, never code, and valid by type: the constructors of :class:`Head` and
:class:`Genotype` check every string against a whitelist and every integer against its
exact range (plain ``str``/``int`` only, no subclasses), so a :class:`Genotype` that exists
is valid however it was made.  :func:`parse_genotype` checks a JSON document's shape and
hands its values to the constructors.  All problems are reported as :class:`GenotypeError`
with the JSON path of the offending field, e.g.
``fpn[3].inputs[1]: index 11 is not in the pool (0..6 available at block 4)``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasfcos.errors import GenotypeError, NasfcosError
from nasfcos.genotypes.analysis import canonicalize, content_hash
from nasfcos.genotypes.space import (
    AGGS,
    FORMAT,
    FPN_OPS,
    HEAD_KINDS,
    HEAD_OPS,
    NUM_FPN_BLOCKS,
    NUM_HEAD_BLOCKS,
    NUM_LEVELS,
    SEQUENTIAL_HEAD_LAYERS,
    fpn_pool_size,
    head_num_layers,
    head_pool_size,
)
from nasfcos.io import atomic_write_text, regular_file

#: Genotype files larger than this are refused before parsing.
MAX_FILE_BYTES = 1 << 20
#: Deepest nesting accepted anywhere in a document (``meta`` included).
MAX_DEPTH = 32
#: Names are printed into generated code headers, so they are whitelisted.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}\Z")  # \Z: no trailing newline
DEFAULT_NAME = "genotype"

_TOP_KEYS = ("format", "name", "fpn", "head", "share", "meta")
_BLOCK_KEYS = ("inputs", "ops", "agg")


@dataclass(frozen=True)
class Block:
    """One FPN block or DAG head block: two pool inputs, an op on each, an aggregation."""

    inputs: tuple[int, int]
    ops: tuple[str, str]
    agg: str

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": list(self.inputs), "ops": list(self.ops), "agg": self.agg}


@dataclass(frozen=True)
class Head:
    """The prediction head.

    ``kind`` is ``fcos`` (standard 4-conv tower), ``sequential`` (``layers``: six head ops, the
    released form) or ``dag`` (``first_op`` + five ``blocks``, the space of the paper).
    """

    kind: str
    layers: tuple[str, ...] = ()
    first_op: str | None = None
    blocks: tuple[Block, ...] = ()

    def __post_init__(self) -> None:
        kind = _name(self.kind, "head.kind", HEAD_KINDS, "head kind")
        layers = _tuple(self.layers, "head.layers", SEQUENTIAL_HEAD_LAYERS if kind == "sequential" else 0)
        for i, op in enumerate(layers):
            _name(op, f"head.layers[{i}]", HEAD_OPS, "head op")
        if kind == "dag":
            _name(self.first_op, "head.first_op", HEAD_OPS, "head op")
        elif self.first_op is not None:
            raise GenotypeError(f"head: a '{kind}' head has no first_op")
        blocks = _tuple(self.blocks, "head.blocks", NUM_HEAD_BLOCKS if kind == "dag" else 0)
        for i, b in enumerate(blocks):
            _check_block(b, f"head.blocks[{i}]", head_pool_size(i), f"head block {i + 1}", HEAD_OPS, "head op")

    @property
    def num_layers(self) -> int:
        """Number of layers the sharing index counts."""
        return head_num_layers(self.kind)

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "fcos":
            return {"kind": "fcos"}
        if self.kind == "sequential":
            return {"kind": "sequential", "layers": list(self.layers)}
        return {
            "kind": "dag",
            "first_op": self.first_op,
            "blocks": [b.to_dict() for b in self.blocks],
        }


@dataclass(frozen=True)
class Genotype:
    """A NAS-FCOS decoder architecture (Contract 1).

    Equality and hashing consider the architecture only (``fpn``, ``head``, ``share``);
    ``name`` and ``meta`` are provenance.
    """

    fpn: tuple[Block, ...]
    head: Head
    share: tuple[int, ...]
    name: str = field(default=DEFAULT_NAME, compare=False)
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        if type(self.name) is not str or not NAME_RE.fullmatch(self.name):
            raise GenotypeError(f"name: {_describe(self.name)} is not a valid name "
                                "(1-64 characters: letters, digits, '.', '_', '+', '-')")
        for k, b in enumerate(_tuple(self.fpn, "fpn", NUM_FPN_BLOCKS)):
            _check_block(b, f"fpn[{k}]", fpn_pool_size(k), f"block {k + 1}", FPN_OPS, "op")
        if not isinstance(self.head, Head):
            raise GenotypeError(f"head: expected a Head, got {_type_name(self.head)}")
        for i, v in enumerate(_tuple(self.share, "share", NUM_LEVELS)):
            _check_share(v, f"share[{i}]", self.head)
        if not isinstance(self.meta, dict):
            raise GenotypeError(f"meta: expected an object, got {_type_name(self.meta)}")

    # --- serialisation -------------------------------------------------------------------
    def to_dict(self, *, with_meta: bool = True) -> dict[str, Any]:
        """The JSON document (Contract 1 field names)."""
        doc: dict[str, Any] = {
            "format": FORMAT,
            "name": self.name,
            "fpn": [b.to_dict() for b in self.fpn],
            "head": self.head.to_dict(),
            "share": list(self.share),
        }
        if with_meta and self.meta:
            doc["meta"] = json.loads(json.dumps(self.meta))
        return doc

    def dumps(self) -> str:
        """Readable JSON text of :meth:`to_dict` (stable field order, short lists on one line)."""
        return _pretty(self.to_dict()) + "\n"

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the genotype as JSON, atomically."""
        return atomic_write_text(path, self.dumps())

    def replace(self, **changes: Any) -> Genotype:
        """A copy with fields replaced (checked by the constructor)."""
        return dataclasses.replace(self, **changes)

    # --- derived forms (implemented in analysis.py; the list form: paper.to_paper_list) ---
    def canonical(self) -> Genotype:
        """Canonical form: unused paths removed, symmetric choices ordered."""
        return canonicalize(self)

    def hash(self) -> str:
        """Stable content hash: sha256 (hex) of the canonical architecture JSON."""
        return content_hash(self)

    def short_hash(self) -> str:
        """First 12 hex digits of :meth:`hash`."""
        return self.hash()[:12]


def _pretty(value: Any, indent: int = 0) -> str:
    """JSON with objects indented and lists of scalars (or of short lists) kept on one line."""
    pad = "  " * (indent + 1)
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{pad}{json.dumps(k, ensure_ascii=False)}: {_pretty(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + "  " * indent + "}"
    if isinstance(value, list):
        flat = json.dumps(value, ensure_ascii=False, allow_nan=False)
        if not any(isinstance(v, dict) for v in value) and len(flat) <= 80:
            return flat
        items = [f"{pad}{_pretty(v, indent + 1)}" for v in value]
        return "[\n" + ",\n".join(items) + "\n" + "  " * indent + "]"
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


# ------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------
def _describe(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True, default=repr) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


#: How an error names the type of a JSON value (any other type: its class name).
_JSON_TYPE_NAMES = {bool: "a boolean", type(None): "null", int: "an integer", float: "a number",
                    str: "a string", list: "a list", dict: "an object"}


def _type_name(value: Any) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _int(value: Any, path: str) -> int:
    if type(value) is not int:  # not bool, not a subclass with its own formatting
        raise GenotypeError(f"{path}: expected an integer, got {_type_name(value)} {_describe(value)}")
    return value


def _index(value: Any, path: str, pool: int, where: str) -> int:
    v = _int(value, path)
    if v < 0:
        raise GenotypeError(f"{path}: index {_short_int(v)} is negative (0..{pool - 1} available at {where})")
    if v >= pool:
        raise GenotypeError(
            f"{path}: index {_short_int(v)} is not in the pool (0..{pool - 1} available at {where})"
        )
    return v


def _short_int(v: int) -> str:
    return str(v) if abs(v) < 10**30 else f"{'-' if v < 0 else ''}<{len(str(abs(v)))}-digit number>"


def _name(value: Any, path: str, table: tuple[str, ...], what: str) -> str:
    if type(value) is not str:
        raise GenotypeError(f"{path}: expected {what} name (a string), got {_type_name(value)} {_describe(value)}")
    if value not in table:
        raise GenotypeError(f"{path}: unknown {what} {_describe(value)} (expected one of: {', '.join(table)})")
    return value


def _list(value: Any, path: str, length: int | None = None) -> list[Any]:
    if not isinstance(value, list):
        raise GenotypeError(f"{path}: expected a list, got {_type_name(value)} {_describe(value)}")
    if length is not None and len(value) != length:
        raise GenotypeError(f"{path}: expected {length} entries, got {len(value)}")
    return value


def _object(value: Any, path: str, allowed: tuple[str, ...], required: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise GenotypeError(f"{path}: expected an object, got {_type_name(value)} {_describe(value)}")
    for key in value:
        if key not in allowed:
            raise GenotypeError(f"{path}: unknown field {_describe(key)} (allowed: {', '.join(allowed)})")
    for key in required:
        if key not in value:
            raise GenotypeError(f"{path}: missing field '{key}'")
    return value


def _tuple(value: Any, path: str, length: int) -> tuple[Any, ...]:
    if not isinstance(value, tuple):
        raise GenotypeError(f"{path}: expected a tuple, got {_type_name(value)}")
    if len(value) != length:
        raise GenotypeError(f"{path}: expected {length} entries, got {len(value)}")
    return value


def _check_block(b: Any, path: str, pool: int, where: str, ops: tuple[str, ...], op_what: str) -> None:
    if not isinstance(b, Block):
        raise GenotypeError(f"{path}: expected a block, got {_type_name(b)} {_describe(b)}")
    inputs, ops_ = _tuple(b.inputs, f"{path}.inputs", 2), _tuple(b.ops, f"{path}.ops", 2)
    for j in (0, 1):
        _index(inputs[j], f"{path}.inputs[{j}]", pool, where)
    for j in (0, 1):
        _name(ops_[j], f"{path}.ops[{j}]", ops, op_what)
    _name(b.agg, f"{path}.agg", AGGS, "aggregation")


def _plain(value: Any) -> Any:
    """A JSON leaf as a plain ``str``/``int`` (a subclass with its own ``__str__`` or
    ``__format__`` is reduced to its value; anything else is left for the checks)."""
    if isinstance(value, str) and type(value) is not str:
        return str.__str__(value)
    if isinstance(value, int) and type(value) not in (int, bool):
        return int.__int__(value)
    return value


def _block(value: Any, path: str) -> Block:
    obj = _object(value, path, _BLOCK_KEYS, _BLOCK_KEYS)
    inputs = _list(obj["inputs"], f"{path}.inputs", 2)
    ops = _list(obj["ops"], f"{path}.ops", 2)
    return Block((_plain(inputs[0]), _plain(inputs[1])), (_plain(ops[0]), _plain(ops[1])), _plain(obj["agg"]))


def _head(value: Any) -> Head:
    if not isinstance(value, dict):
        raise GenotypeError(f"head: expected an object, got {_type_name(value)} {_describe(value)}")
    if "kind" not in value:
        raise GenotypeError("head: missing field 'kind'")
    kind = _name(_plain(value["kind"]), "head.kind", HEAD_KINDS, "head kind")
    if kind == "fcos":
        _object(value, "head", ("kind",), ("kind",))
        return Head("fcos")
    if kind == "sequential":
        obj = _object(value, "head", ("kind", "layers"), ("kind", "layers"))
        layers = _list(obj["layers"], "head.layers", SEQUENTIAL_HEAD_LAYERS)
        return Head("sequential", layers=tuple(_plain(v) for v in layers))
    obj = _object(value, "head", ("kind", "first_op", "blocks"), ("kind", "first_op", "blocks"))
    blocks = _list(obj["blocks"], "head.blocks", NUM_HEAD_BLOCKS)
    return Head("dag", first_op=_plain(obj["first_op"]),
                blocks=tuple(_block(b, f"head.blocks[{i}]") for i, b in enumerate(blocks)))


def _check_share(value: Any, path: str, head: Head) -> None:
    n = head.num_layers
    if not 0 <= _int(value, path) <= n:
        raise GenotypeError(f"{path}: sharing index {_short_int(value)} is out of range "
                            f"(0..{n} for a '{head.kind}' head of {n} layers)")


def _share(value: Any, head: Head) -> tuple[Any, ...]:
    if isinstance(value, int) and not isinstance(value, bool):  # one index for every level
        _check_share(_plain(value), "share", head)
        return (_plain(value),) * NUM_LEVELS
    return tuple(_plain(v) for v in _list(value, "share", NUM_LEVELS))


def _check_depth(value: Any, path: str, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise GenotypeError(f"{path}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_depth(v, f"{path}.{k}" if len(path) < 200 else path, depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_depth(v, f"{path}[{i}]" if len(path) < 200 else path, depth + 1)
    elif isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        raise GenotypeError(f"{path}: NaN and Infinity are not valid JSON")


def parse_genotype(doc: Any) -> Genotype:
    """Check a decoded JSON document's shape and build a :class:`Genotype` (whose constructor
    checks the values).  Raises :class:`GenotypeError` naming the first offending field.
    """
    obj = _object(doc, "genotype", _TOP_KEYS, ("format", "fpn", "head", "share"))
    _check_depth(obj, "genotype")
    fmt = obj["format"]
    if fmt != FORMAT:
        raise GenotypeError(f"format: expected {FORMAT!r}, got {_describe(fmt)}")
    name = _plain(obj.get("name", DEFAULT_NAME))
    fpn = tuple(_block(b, f"fpn[{k}]") for k, b in enumerate(_list(obj["fpn"], "fpn", NUM_FPN_BLOCKS)))
    head = _head(obj["head"])
    share = _share(obj["share"], head)
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        raise GenotypeError(f"meta: expected an object, got {_type_name(meta)}")
    return Genotype(fpn=fpn, head=head, share=share, name=name, meta=meta)


# ------------------------------------------------------------------------------------------
# JSON text and files
# ------------------------------------------------------------------------------------------
def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise GenotypeError(f"duplicate key {_describe(key)} in a JSON object")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise GenotypeError(f"{name} is not valid JSON")


def loads_genotype(data: str | bytes, *, source: str = "<string>") -> Genotype:
    """Parse genotype JSON text (bytes must be UTF-8). Raises :class:`GenotypeError`."""
    return parse_at(source, parse_genotype, decode_json(data, source=source))


def parse_at(source: str, parse: Callable[[Any], Genotype], doc: Any) -> Genotype:
    """``parse(doc)``, its errors prefixed with ``source``. Raises :class:`GenotypeError`."""
    try:
        return parse(doc)
    except GenotypeError as exc:
        raise GenotypeError(f"{source}: {exc}") from None
    except RecursionError:
        raise GenotypeError(f"{source}: JSON nested too deeply") from None


def decode_json(data: str | bytes, *, source: str = "<string>") -> Any:
    """Strict JSON text (UTF-8, size-limited, no duplicate keys or NaN) -> its value.
    Raises :class:`GenotypeError` naming ``source``."""
    if isinstance(data, bytes):
        if len(data) > MAX_FILE_BYTES:
            raise GenotypeError(f"{source}: file is {len(data)} bytes, over the {MAX_FILE_BYTES}-byte limit")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise GenotypeError(f"{source}: not UTF-8 text (byte {exc.start})") from None
    else:
        text = data
        if len(text) > MAX_FILE_BYTES:
            raise GenotypeError(f"{source}: document is over the {MAX_FILE_BYTES}-byte limit")
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except GenotypeError as exc:
        raise GenotypeError(f"{source}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise GenotypeError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise GenotypeError(f"{source}: JSON nested too deeply") from None
    except ValueError as exc:  # e.g. integers with too many digits
        raise GenotypeError(f"{source}: not valid JSON ({exc})") from None
    return doc


def load_genotype(path: str | os.PathLike[str]) -> Genotype:
    """Read and validate a genotype JSON file. Raises :class:`GenotypeError`."""
    p = Path(path)
    return loads_genotype(read_limited(p), source=str(p))


def read_limited(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a small text file (at most ``MAX_FILE_BYTES``). Raises :class:`GenotypeError`.

    The file is checked with :func:`nasfcos.io.regular_file` first, so a directory, FIFO,
    socket or device is refused without opening it (reading one could block forever).
    """
    try:
        p = regular_file(path)
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise GenotypeError(f"{p}: file is {size} bytes, over the {MAX_FILE_BYTES}-byte limit")
        with open(p, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except GenotypeError:
        raise
    except NasfcosError as exc:
        raise GenotypeError(str(exc)) from None
    except FileNotFoundError:
        raise GenotypeError(f"{path}: no such file") from None
    except OSError as exc:
        raise GenotypeError(f"{path}: cannot read ({exc.strerror})") from None
    if len(data) > MAX_FILE_BYTES:  # grew after the size check
        raise GenotypeError(f"{p}: file is over the {MAX_FILE_BYTES}-byte limit")
    return data
