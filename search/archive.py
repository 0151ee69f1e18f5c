"""The search's durable state: ``archive.jsonl`` (every evaluation) and the checkpoint.

``archive.jsonl`` holds one JSON object per sampled architecture (see :data:`ROW_KEYS`).
Each line is appended with a single ``os.write`` on an ``O_APPEND`` descriptor and
``fsync``'ed before the search goes on, so a crash (``kill -9``, power loss) loses at
most the line being written; :meth:`Archive.open` drops such a torn last line (no trailing
newline, or not JSON) and truncates the file to the last complete line.  Rows are appended
as evaluations finish and, at the end of every step, the file is rewritten atomically in
sample order ``(step, index)`` so that its bytes do not depend on the executor.

The checkpoint (``checkpoint.pt``: controller, optimiser, baseline, replay buffer, RNG
states, the number of completed steps) is written atomically (temp file + fsync + rename)
after every step, with the sha256 of its payload in its first line, and read back with
``torch.load(weights_only=True)`` only when the checksum matches.  A resume checks the
archive against it (:func:`check_progress`) before writing anything.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasfcos.errors import CacheError, first_line, short_repr
from nasfcos.io import atomic_write_bytes, sha256_bytes

ARCHIVE_NAME = "archive.jsonl"
CHECKPOINT_NAME = "checkpoint.pt"
CONFIG_NAME = "search.json"
ROW_FORMAT = "nasfcos-search-row/1"

#: Fields of an archive row.  ``status`` is ``ok`` (evaluated), ``reused`` (genotype seen
#: before: reward copied from ``reused_from`` = [step, index]) or ``failed`` (``reward`` null,
#: ``errors`` says why).  ``seed`` is the evaluation seed, ``choices`` / ``log_prob`` the
#: controller's decision sequence and its log-probability (nats) when sampled.
ROW_KEYS: tuple[str, ...] = (
    "format", "step", "index", "trial", "seed", "hash", "genotype", "choices", "log_prob",
    "status", "reward", "losses", "time_s", "params", "worker", "attempts", "errors",
    "reused_from", "extra", "recorded_at",
)
#: Row fields that depend on where and when an evaluation ran (not on the search itself).
VOLATILE_KEYS: tuple[str, ...] = ("time_s", "worker", "recorded_at")


def encode_row(row: dict[str, Any]) -> bytes:
    """One archive line: compact, key-sorted JSON + newline (NaN refused)."""
    return (json.dumps(row, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")


STATUSES: tuple[str, ...] = ("ok", "reused", "failed")
_HASH_RE = re.compile(r"[0-9a-f]{64}")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


#: Optional fields: (test of a present, non-null value; what it must be; value when absent or null).
_OPTIONAL: dict[str, tuple[Callable[[Any], bool], str, Any]] = {
    "genotype": (lambda v: isinstance(v, dict), "an object", None),
    "losses": (lambda v: isinstance(v, dict) and all(x is None or _number(x) for x in v.values()),
               "an object of finite numbers or nulls", {}),
    "extra": (lambda v: isinstance(v, dict) and all(_number(v[k]) for k in ("latency_ms", "proxy_reward") if k in v),
              "an object (latency_ms, proxy_reward finite numbers)", {}),
    "errors": (lambda v: isinstance(v, list) and all(isinstance(e, str) for e in v), "a list of strings", []),
    "time_s": (lambda v: _number(v) and v >= 0, "a finite number >= 0", 0.0),
    "params": (lambda v: _count(v) or (_number(v) and v >= 0 and float(v).is_integer()),
               "a non-negative integer", None),
    "trial": (_count, "a non-negative integer", None),
    "choices": (lambda v: isinstance(v, list) and all(_count(c) for c in v), "a list of non-negative integers", None),
    "log_prob": (_number, "a finite number", None),
}


@dataclass(frozen=True)
class ArchiveRow:
    """One line of ``archive.jsonl`` (:data:`ROW_KEYS`), checked once by :meth:`from_json`, the
    only reader of those lines.  ``data`` is the JSON object itself, written back unchanged
    (:meth:`to_json`), so the file's bytes are what the search wrote.  Fields that older
    versions did not write may be absent (see ``_OPTIONAL`` for their values then)."""

    step: int
    index: int
    hash: str
    status: str  # one of STATUSES
    reward: float | None  # finite for ok / reused, None for failed
    genotype: dict[str, Any] | None
    losses: dict[str, float | None]
    extra: dict[str, Any]
    errors: list[str]
    time_s: float
    params: int | None
    trial: int | None
    choices: list[int] | None
    log_prob: float | None
    data: dict[str, Any] = field(repr=False, compare=False)

    @property
    def key(self) -> tuple[int, int]:
        return self.step, self.index

    def to_json(self) -> dict[str, Any]:
        return dict(self.data)

    @classmethod
    def from_json(cls, row: Any, where: str) -> ArchiveRow:
        """Refuse a row that the search could not have written (one line naming the row and
        the field): ``step`` / ``index`` non-negative integers, ``hash`` a sha256 hex digest,
        ``status`` one of :data:`STATUSES`, ``reward`` a finite number for ``ok`` / ``reused``
        and null for ``failed``, the optional fields of their types."""
        if not isinstance(row, dict):
            raise CacheError(f"{where}: not a JSON object")
        for key in ("step", "index"):
            if not _count(row.get(key)):
                what = "missing" if key not in row else f"{row[key]!r:.40} is not a non-negative integer"
                raise CacheError(f"{where}: '{key}' {what}")
        if "format" in row and row["format"] != ROW_FORMAT:
            raise CacheError(f"{where}: row format {row['format']!r:.40} is not {ROW_FORMAT} "
                             "(an archive of another nasfcos version)")
        h = row.get("hash")
        if not isinstance(h, str) or not _HASH_RE.fullmatch(h):
            raise CacheError(f"{where}: 'hash' is not a sha256 hex digest")
        status = row.get("status")
        if status not in STATUSES:
            raise CacheError(f"{where}: 'status' {status!r:.40} is not one of {', '.join(STATUSES)}")
        r = row.get("reward")
        if status == "failed" and r is not None:
            raise CacheError(f"{where}: a failed row has reward {r!r:.40}")
        if status != "failed" and not _number(r):
            raise CacheError(f"{where}: 'reward' {r!r:.40} is not a finite number")
        opt = {}
        for key, (test, what, default) in _OPTIONAL.items():
            v = row.get(key)
            if v is not None and not test(v):
                raise CacheError(f"{where}: '{key}' {short_repr(v, 40)} is not {what}")
            opt[key] = copy.copy(default) if v is None else v
        return cls(row["step"], row["index"], h, status, None if r is None else float(r), data=row, **opt)


def _parse_lines(data: bytes, path: Path) -> tuple[list[ArchiveRow], int]:
    """Rows of an archive and the byte length of its valid prefix (torn tail excluded)."""
    rows: list[ArchiveRow] = []
    end = data.rfind(b"\n") + 1  # bytes after the last newline are a torn write
    pos = 0
    lines = data[:end].split(b"\n")[:-1]
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not an object")
        except ValueError:
            if n == len(lines):  # a last line made of garbage (e.g. zero-filled block): torn
                return rows, pos
            raise CacheError(f"{path}: line {n} is not a valid archive row") from None
        rows.append(ArchiveRow.from_json(row, f"{path}: line {n}"))
        pos += len(line) + 1
    return rows, end


def _read_bytes(p: Path, what: str) -> bytes:
    """A state file's bytes (``what``: archive, checkpoint); one-line :class:`CacheError` if unreadable."""
    if p.exists() and not p.is_file():
        raise CacheError(f"{p}: is not a regular file")
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise CacheError(f"{p}: no such {what}") from None
    except OSError as exc:
        raise CacheError(f"{p}: cannot read the {what} ({exc.strerror or type(exc).__name__})") from None


def check_progress(rows: list[ArchiveRow], steps_done: int, batch_size: int, path: Path) -> None:
    """Check an archive against the checkpoint before a resume touches anything.

    ``steps_done`` steps are complete (checkpointed): each has exactly ``batch_size`` rows;
    the step after them may be partial; no other step may appear, no (step, index) twice,
    no index outside ``0..batch_size - 1``.
    """
    seen: set[tuple[int, int]] = set()
    for r in rows:
        key = r.key
        if key in seen:
            raise CacheError(f"{path}: row (step {key[0]}, index {key[1]}) appears twice")
        seen.add(key)
        if key[1] >= batch_size:
            raise CacheError(f"{path}: row (step {key[0]}, index {key[1]}) is outside the batch of {batch_size}")
        if key[0] > steps_done:
            raise CacheError(f"{path}: row from step {key[0]}, but the checkpoint has {steps_done} completed "
                             f"step(s); the archive does not belong to this checkpoint")
    for step in range(steps_done):
        missing = [i for i in range(batch_size) if (step, i) not in seen]
        if missing:
            raise CacheError(f"{path}: completed step {step} lacks {len(missing)} row(s) (e.g. index "
                             f"{missing[0]}); the archive lost data -- restore it from a copy")


def read_rows(path: str | os.PathLike[str]) -> list[ArchiveRow]:
    """Read an archive without modifying it (torn tail ignored), sorted by (step, index)."""
    p = Path(path)
    rows, _ = _parse_lines(_read_bytes(p, "archive"), p)
    return sort_rows(rows)


def sort_rows(rows: Iterable[ArchiveRow]) -> list[ArchiveRow]:
    return sorted(rows, key=lambda r: r.key)


class Archive:
    """Append-only archive file of one search (single writer: the search driver)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.rows: list[ArchiveRow] = []
        self.repaired_bytes = 0
        self._fd: int | None = None
        self._sorted = True

    @classmethod
    def open(cls, path: str | os.PathLike[str],
             check: Callable[[list[ArchiveRow]], None] | None = None) -> Archive:
        """Open (creating it if needed), read existing rows, repair a torn last line.

        ``check(rows)`` runs on the rows read before anything is written: when it raises,
        the file is left exactly as it was (a torn tail is not truncated)."""
        a = cls(path)
        a.path.parent.mkdir(parents=True, exist_ok=True)
        if a.path.exists() or a.path.is_symlink():
            data = _read_bytes(a.path, "archive")
            rows, valid = _parse_lines(data, a.path)
            if check is not None:
                check(rows)
            if valid < len(data):
                with open(a.path, "r+b") as fh:
                    fh.truncate(valid)
                    fh.flush()
                    os.fsync(fh.fileno())
                a.repaired_bytes = len(data) - valid
            a.rows = rows
            a._sorted = rows == sort_rows(rows)
        elif check is not None:
            check([])
        a._fd = os.open(a.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return a

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[ArchiveRow]:
        return iter(self.rows)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def append(self, row: dict[str, Any]) -> ArchiveRow:
        """Append one row durably (single write on an O_APPEND descriptor, then fsync); the
        row as read back (checked: nothing is written that a resume would refuse)."""
        if self._fd is None:
            raise CacheError(f"{self.path}: archive is closed")
        rec = ArchiveRow.from_json(row, f"{self.path}: new row")
        data = encode_row(row)
        view = memoryview(data)
        while view:  # a regular-file write is whole unless interrupted; finish it if not
            n = os.write(self._fd, view)
            view = view[n:]
        os.fsync(self._fd)
        if self.rows and rec.key < self.rows[-1].key:
            self._sorted = False
        self.rows.append(rec)
        return rec

    def sort(self) -> bool:
        """Rewrite the file atomically in (step, index) order if it is not; True if rewritten."""
        if self._sorted:
            return False
        self.rows = sort_rows(self.rows)
        atomic_write_bytes(self.path, b"".join(encode_row(r.data) for r in self.rows))
        self.close()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._sorted = True
        return True

    def drop(self, keys: set[tuple[int, int]]) -> int:
        """Remove the rows with these (step, index) keys (atomic rewrite); how many went."""
        keep = [r for r in self.rows if r.key not in keys]
        gone = len(self.rows) - len(keep)
        if gone:
            self.rows = keep
            self._sorted = False
            self.sort()
        return gone

    def keyed(self) -> dict[tuple[int, int], ArchiveRow]:
        """Rows by (step, index)."""
        return {r.key: r for r in self.rows}

    def rewarded(self) -> dict[str, ArchiveRow]:
        """First evaluated (``ok``) row per genotype hash: the reward cache."""
        out: dict[str, ArchiveRow] = {}
        for r in sort_rows(self.rows):
            if r.status == "ok" and r.hash not in out:
                out[r.hash] = r
        return out


def best_rows(rows: Iterable[ArchiveRow], k: int) -> list[ArchiveRow]:
    """The ``k`` best distinct genotypes (by hash): highest reward, earliest on ties."""
    rewarded = [r for r in sort_rows(rows) if r.reward is not None]  # ok or reused (failed rows have none)
    first: dict[str, ArchiveRow] = {}
    for r in sorted(rewarded, key=lambda r: -float(r.reward or 0.0)):  # stable: earliest first among equals
        first.setdefault(r.hash, r)
    return list(first.values())[:k]


def strip_volatile(row: ArchiveRow) -> dict[str, Any]:
    """A row without the fields that depend on where/when it ran (for comparisons)."""
    return {k: v for k, v in row.data.items() if k not in VOLATILE_KEYS}


# ------------------------------------------------------------------------------------------
# checkpoint
# ------------------------------------------------------------------------------------------
#: First line of a checkpoint file: this magic, a space, the sha256 of the rest, a newline.
CHECKPOINT_MAGIC = b"nasfcos-search-checkpoint/2"


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write a checkpoint atomically: one header line (magic + sha256 of the payload), then
    the ``torch.save`` payload; temp file + fsync + rename."""
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    header = CHECKPOINT_MAGIC + b" " + sha256_bytes(payload).encode("ascii") + b"\n"
    return atomic_write_bytes(path, header + payload)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; :class:`CacheError` if unreadable."""
    import torch

    data = _read_bytes(Path(path), "checkpoint")
    head, sep, payload = data.partition(b"\n")
    magic, _, digest = head.partition(b" ")
    if magic != CHECKPOINT_MAGIC or not sep:
        raise CacheError(f"{path}: unreadable checkpoint (not a {CHECKPOINT_MAGIC.decode()} file; "
                         "written by another nasfcos version?)")
    if sha256_bytes(payload).encode("ascii") != digest:
        raise CacheError(f"{path}: unreadable checkpoint (fails its sha256 checksum: corrupt)")
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file: unpickling errors of many kinds
        raise CacheError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {first_line(exc)})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CacheError(f"{path}: not a search checkpoint")
    step, wall = state["step"], state.get("wall_s", 0.0)
    if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step <= 10**9:
        raise CacheError(f"{path}: checkpoint 'step' must be an integer in 0..10**9, got {short_repr(step)}")
    if not isinstance(wall, int | float) or isinstance(wall, bool) or not math.isfinite(wall) or wall < 0:
        raise CacheError(f"{path}: checkpoint 'wall_s' must be a finite number >= 0, got {short_repr(wall)}")
    return state
