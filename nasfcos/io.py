"""Small file helpers: atomic writes, output checks, folder locks, content hashes and a
figure's bytes.

Writes go to a temporary file in the destination folder, are flushed and
fsync'ed, then renamed over the target, so a crash never leaves a half-written
file behind; the file gets the mode an ordinary ``open()`` would give it (0666 less the
umask).  Output paths are checked by a real probe write (``os.access`` says yes to /proc and
/sys as root).  An output folder is owned by one run at a time (:func:`folder_lock`), and a
folder that must appear whole is built in a temporary sibling and renamed into place
(:func:`staged_folder`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import socket
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nasfcos.errors import NasfcosError

#: Name of the lock file that marks a folder as owned by a running command.
LOCK_SUFFIX = ".nasfcos-lock"


def regular_file(path: str | os.PathLike[str], what: str = "file") -> Path:
    """``path`` as a :class:`Path` if it names an existing regular file (checked without
    opening it, so a FIFO or device never blocks); else a one-line :class:`NasfcosError`."""
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
    path = Path(path)
    if str(path) in ("", "."):
        if not directory:
            raise NasfcosError("empty output path")
    _check_name_lengths(path)
    if path.exists() or path.is_symlink():
        if directory:
            if not path.is_dir():
                raise NasfcosError(f"{path}: exists and is not a directory")
            _probe_write(path, path)
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
    _probe_write(parent, path)
    return path


def _check_name_lengths(path: Path) -> None:
    """One-line error when a component of ``path`` (or the whole path) is longer than the
    file system allows (ENAMETOOLONG), before any work starts."""
    try:
        name_max = os.pathconf(".", "PC_NAME_MAX")
        path_max = os.pathconf(".", "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    for part in path.absolute().parts:
        if len(os.fsencode(part)) > name_max:
            raise NasfcosError(f"{str(path)[:80]}...: file name too long (a component has "
                               f"{len(os.fsencode(part))} bytes, at most {name_max})")
    if len(os.fsencode(str(path.absolute()))) >= path_max:
        raise NasfcosError(f"{str(path)[:80]}...: path too long (at most {path_max} bytes)")


def _probe_write(folder: Path, path: Path) -> None:
    """One-line error unless a probe file can be created (and removed) in ``folder``: the one
    test of writability that the kernel answers truthfully (root, read-only mounts, /proc,
    /sys, quotas)."""
    exc = _probe(folder)
    if exc is not None:
        raise NasfcosError(f"{path}: cannot create files in {folder} ({exc.strerror or exc})")


def _probe(folder: Path) -> OSError | None:
    """Create and remove a probe file in ``folder``; the error if it cannot be created."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".nasfcos-probe-", dir=folder)
    except OSError as exc:
        return exc
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return None


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
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


def _umask() -> int:
    """The process's umask (read by setting and restoring it; there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON (sorted keys, trailing newline) to ``path`` atomically."""
    text = json.dumps(obj, indent=indent, sort_keys=True, ensure_ascii=False, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def figure_bytes(fig: Any, fmt: str = "png", **savefig: Any) -> bytes:
    """A matplotlib figure rendered as ``fmt`` (png, svg, pdf) bytes; write them with
    :func:`atomic_write_bytes`.  Build the figure as ``matplotlib.figure.Figure(...)``: off
    pyplot it needs no GUI backend and leaves nothing open to close."""
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, **savefig)
    return buf.getvalue()


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


# -- one run per output folder -----------------------------------------------------------------

def _lock_path(folder: Path) -> Path:
    """Where the lock of ``folder`` lives: a hidden sibling (``PARENT/.NAME.nasfcos-lock``), so
    that a folder can be created, replaced or renamed into place while it is locked and an
    'empty folder' check never sees the lock; inside the folder when only it is writable."""
    folder = folder.absolute().resolve()
    sibling = folder.parent / f".{folder.name}{LOCK_SUFFIX}"
    if folder.is_dir() and _probe(folder.parent) is not None:
        return folder / LOCK_SUFFIX
    return sibling


def _read_owner(fd: int) -> dict[str, Any]:
    try:
        raw = os.pread(fd, 4096, 0)
        doc = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _owner_text(owner: dict[str, Any]) -> str:
    if not owner:
        return "another nasfcos run"
    return (f"'nasfcos {owner.get('verb', '?')}' (pid {owner.get('pid', '?')} on host "
            f"{owner.get('host', '?')}, since {owner.get('since', '?')})")


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str], verb: str) -> Iterator[Path]:
    """Own ``folder`` for the duration of the ``with`` block: one exclusive lock per output
    folder, so two runs never write into the same one.

    The lock is a file holding the owner's pid, host and verb, held with ``fcntl.flock`` (the
    kernel drops it when the owner dies, even by kill -9).  A second run fails at once with a
    one-line :class:`NasfcosError` naming the owner.  A lock file left by a process that died
    is taken over with a message on stderr.  The folder itself is neither created nor
    changed; the lock file is removed on exit.  Distributed workers (``RANK`` > 0) share the
    lock of rank 0."""
    folder = Path(folder)
    key = folder.absolute().resolve()
    if os.environ.get("RANK", "0") != "0" or key in _HELD:  # rank > 0, or held by this run
        yield folder
        return
    made = _make_parents(key.parent)
    try:
        with _held_lock(folder, _lock_path(folder), verb):
            _HELD.add(key)
            try:
                yield folder
            finally:
                _HELD.discard(key)
    finally:
        for d in made:  # folders made only for the lock go again when nothing else went in
            with contextlib.suppress(OSError):
                d.rmdir()


#: Folders this process holds the lock of (a nested folder_lock of one of them is a no-op).
_HELD: set[Path] = set()
#: The command whose output folders :func:`claim_folder` locks (see :func:`output_claims`).
_CLAIMS: list[tuple[str, contextlib.ExitStack]] = []


@contextlib.contextmanager
def output_claims(verb: str) -> Iterator[None]:
    """Run a command so that every output folder it names is owned by it: within the block,
    :func:`claim_folder` (called by the command line's ``-o DIR`` check while the arguments
    are parsed, before any work) takes :func:`folder_lock` of the folder until the block
    ends."""
    with contextlib.ExitStack() as stack:
        _CLAIMS.append((verb, stack))
        try:
            yield
        finally:
            _CLAIMS.pop()


def claim_folder(folder: str | os.PathLike[str]) -> None:
    """Lock ``folder`` for the running command (a no-op outside :func:`output_claims`)."""
    if _CLAIMS:
        verb, stack = _CLAIMS[-1]
        stack.enter_context(folder_lock(folder, verb))


def _make_parents(parent: Path) -> list[Path]:
    """Create ``parent`` and its missing ancestors; the ones made, deepest first."""
    made: list[Path] = []
    p = parent
    while not p.exists():
        made.append(p)
        p = p.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NasfcosError(f"{parent}: cannot create the folder ({exc.strerror or exc})") from None
    return made


@contextlib.contextmanager
def _held_lock(folder: Path, lock: Path, verb: str) -> Iterator[None]:
    import fcntl
    import time

    host = socket.gethostname()
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
                         | getattr(os, "O_CLOEXEC", 0), 0o666 & ~_umask())
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # never write through a link planted at the lock path
                raise NasfcosError(f"{folder}: the lock file {lock} is a symbolic link, not one "
                                   "of ours: remove it") from None
            raise NasfcosError(f"{folder}: cannot create the lock file {lock} "
                               f"({exc.strerror or exc})") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise NasfcosError(f"{folder}: the lock file {lock} is not a regular file: "
                               "remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            owner = _read_owner(fd)
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise NasfcosError(f"{folder}: in use by {_owner_text(owner)}; wait for it to "
                                   f"finish or use another output folder") from None
            raise NasfcosError(f"{folder}: cannot lock {lock} ({exc.strerror or exc})") from None
        try:  # the lock file may have been removed (and recreated) between open and flock
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except OSError:
            same = False
        if same:
            break
        os.close(fd)
    owner = _read_owner(fd)
    if owner:  # flock is free, so its writer is gone (a live pid now is a reused one)
        print(f"nasfcos: taking over the stale lock of {folder} left by {_owner_text(owner)}, "
              "which is no longer running", file=sys.stderr, flush=True)
    doc = {"pid": os.getpid(), "host": host, "verb": verb,
           "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(doc) + "\n").encode("utf-8"), 0)
    except OSError as exc:
        os.close(fd)
        raise NasfcosError(f"{folder}: cannot write the lock file {lock} ({exc.strerror or exc})") from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


@contextlib.contextmanager
def staged_folder(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """All-or-nothing output folder: yields a new temporary sibling of ``folder`` to write
    into; when the block succeeds the sibling is renamed to ``folder`` (which must be absent or
    an empty folder), when it fails the sibling is removed and ``folder`` is left as it was.
    Hold :func:`folder_lock` around it so no other run races for ``folder``."""
    folder = Path(folder)
    if folder.is_symlink():  # a link to a folder: the result goes where it points
        folder = folder.resolve()
        if folder.exists() and not folder.is_dir():
            raise NasfcosError(f"{folder}: exists and is not a folder")
    parent = folder.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        if folder.is_dir() and not folder.is_symlink():
            try:
                folder.rmdir()
            except OSError:
                raise NasfcosError(f"{folder}: is not empty (another run wrote into it)") from None
        os.replace(tmp, folder)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and isinstance(exc.filename, str):  # name the real folder
            exc.filename = exc.filename.replace(str(tmp), str(folder))
        raise
