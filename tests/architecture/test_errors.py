"""The base error helpers (nasfcos.errors)."""

from __future__ import annotations

from nasfcos.errors import first_line


def test_first_line_of_an_exception() -> None:
    assert first_line(ValueError("  bad value\nsecond line")) == "bad value"
    assert first_line(RuntimeError()) == "RuntimeError"  # empty message: the type name
    assert len(first_line(ValueError("x" * 500))) == 200
    assert len(first_line(ValueError("x" * 500), 160)) == 160
    assert len(first_line(ValueError("x" * 500), None)) == 500
