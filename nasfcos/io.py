"""Small file helpers: atomic writes and content hashes.

Writes go to a temporary file in the destination folder, are flushed and
fsync'ed, then renamed over the target, so a crash never leaves a half-written
file behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def regular_file(path: str | os.PathLike[str], what: str = "file") -> Path:
    """``path`` as a :class:`Path` if it names an existing regular file (checked without
    opening it, so a FIFO or device never blocks); else a one-line :class:`NasfcosError`."""
    import stat

    from nasfcos.errors import NasfcosError

    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise NasfcosError(f"{path}: no such {what}") from None
    except OSError as exc:
        raise NasfcosError(f"{path}: cannot access ({exc.strerror})") from None
    if stat.S_ISDIR(mode):
        raise NasfcosError(f"{path}: is a directory, expected a {what}")
    if not stat.S_ISREG(mode):
        raise NasfcosError(f"{path}: not a regular file (FIFO, socket or device); expected a {what}")
    return path


def writable_path(path: str | os.PathLike[str], *, directory: bool = False) -> Path:
    """Check, before any work starts, that ``path`` can be written: an output file (or, with
    ``directory``, an output folder) whose nearest existing ancestor is a writable folder.
    Raises a one-line :class:`NasfcosError` naming the problem; creates nothing."""
    from nasfcos.errors import NasfcosError

    path = Path(path)
    if str(path) in ("", "."):
        if not directory:
            raise NasfcosError("empty output path")
    if path.exists() or path.is_symlink():
        if directory:
            if not path.is_dir():
                raise NasfcosError(f"{path}: exists and is not a directory")
            if not os.access(path, os.W_OK | os.X_OK):
                raise NasfcosError(f"{path}: directory is not writable")
            return path
        if path.is_dir():
            raise NasfcosError(f"{path}: is a directory (give a file name inside it)")
        if not path.is_file():
            raise NasfcosError(f"{path}: not a regular file (FIFO, socket or device)")
    parent = path.absolute().parent
    while not parent.exists():
        if parent.is_symlink():
            raise NasfcosError(f"{path}: {parent} is a dangling symlink")
        parent = parent.parent
    if not parent.is_dir():
        raise NasfcosError(f"{path}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise NasfcosError(f"{path}: {parent} is not writable")
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON (sorted keys, trailing newline) to ``path`` atomically."""
    text = json.dumps(obj, indent=indent, sort_keys=True, ensure_ascii=False, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str], *, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's content, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
