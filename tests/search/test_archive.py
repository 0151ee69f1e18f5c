"""archive.jsonl: durable appends, torn-line repair, sample order, best rows; checkpoints."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from nasfcos.errors import CacheError
from nasfcos.search.archive import (
    Archive,
    ArchiveRow,
    best_rows,
    encode_row,
    load_checkpoint,
    read_rows,
    save_checkpoint,
    strip_volatile,
)


def _hash(name: str) -> str:
    """A sha256 digest standing for genotype ``name``."""
    return hashlib.sha256(name.encode()).hexdigest()


def _row(step: int, index: int, reward: float | None = 1.0, h: str | None = None, status: str = "ok") -> dict:
    return {"step": step, "index": index, "hash": _hash(h or f"h{step}-{index}"), "reward": reward,
            "status": status, "worker": f"w{index}", "time_s": 0.5, "recorded_at": 1.0}


def test_rows_round_trip_and_each_is_one_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "archive.jsonl"
    writes: list[bytes] = []
    real_write = os.write

    def spy(fd: int, data: bytes) -> int:
        writes.append(bytes(data))
        return real_write(fd, data)

    with Archive.open(path) as a:
        monkeypatch.setattr(os, "write", spy)
        a.append(_row(0, 0))
        a.append(_row(0, 1, reward=2.5))
        monkeypatch.undo()
    assert len(writes) == 2 and all(w.endswith(b"\n") and w.count(b"\n") == 1 for w in writes)
    assert path.read_bytes() == b"".join(writes)
    assert [r.to_json() for r in read_rows(path)] == [_row(0, 0), _row(0, 1, reward=2.5)]
    with Archive.open(path) as b:
        assert len(b) == 2 and b.repaired_bytes == 0
        b.append(_row(1, 0))
    assert [r.step for r in read_rows(path)] == [0, 0, 1]


@pytest.mark.parametrize("tail", [b'{"step": 1, "ind', b"\x00\x00\x00\x00", b'{"step": 1}\x00\x00\n'])
def test_a_torn_last_line_is_dropped_and_truncated(tmp_path: Path, tail: bytes) -> None:
    path = tmp_path / "archive.jsonl"
    good = encode_row(_row(0, 0)) + encode_row(_row(0, 1))
    path.write_bytes(good + tail)
    assert len(read_rows(path)) == 2  # read-only view ignores it too
    with Archive.open(path) as a:
        assert len(a) == 2 and a.repaired_bytes == len(tail)
        a.append(_row(0, 2))
    assert path.read_bytes() == good + encode_row(_row(0, 2))


def test_a_corrupt_middle_line_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "archive.jsonl"
    path.write_bytes(encode_row(_row(0, 0)) + b"not json\n" + encode_row(_row(0, 1)))
    with pytest.raises(CacheError, match="line 2"):
        Archive.open(path)


def test_sort_rewrites_in_sample_order(tmp_path: Path) -> None:
    path = tmp_path / "archive.jsonl"
    with Archive.open(path) as a:
        for i in (2, 0, 3, 1):  # completion order of parallel workers
            a.append(_row(0, i))
        assert a.sort() is True
        assert a.sort() is False
        a.append(_row(1, 0))  # still appendable after the rewrite
    assert [(r["step"], r["index"]) for r in map(json.loads, path.read_text().splitlines())] == [
        (0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]
    assert not list(tmp_path.glob(".*tmp"))


def test_best_rows_are_distinct_and_skip_failures() -> None:
    rows = [_row(0, 0, 1.0, "a"), _row(0, 1, 3.0, "b"), _row(0, 2, None, "c", "failed"),
            _row(1, 0, 3.0, "b", "reused"), _row(1, 1, 2.0, "d"), _row(1, 2, 3.0, "e")]
    top = best_rows([ArchiveRow.from_json(r, "test") for r in rows], 3)
    assert [r.hash for r in top] == [_hash("b"), _hash("e"), _hash("d")]  # ties: earliest first
    assert top[0].step == 0
    assert "worker" not in strip_volatile(top[0]) and "reward" in strip_volatile(top[0])


def test_checkpoint_round_trip_and_corruption(tmp_path: Path) -> None:
    state = {"step": 3, "w": torch.arange(4.0), "baseline": None, "gen": torch.Generator().get_state()}
    p = save_checkpoint(tmp_path / "checkpoint.pt", state)
    back = load_checkpoint(p)
    assert back["step"] == 3 and torch.equal(back["w"], state["w"]) and back["baseline"] is None
    p.write_bytes(p.read_bytes()[:20])
    with pytest.raises(CacheError, match="unreadable"):
        load_checkpoint(p)
    with pytest.raises(CacheError, match="no such"):
        load_checkpoint(tmp_path / "missing.pt")
