"""Progress reporting with one rule for every verb: a tqdm bar on a TTY, otherwise one
line per stage (and at most one line every ``every_s`` seconds within a stage), so logs
and CI output show that a long run is alive without filling up with bar redraws.
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
import warnings
from collections.abc import Iterator
from typing import Any, TextIO


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """Capture a library's stdout chatter and silence its warnings; yields the captured log."""
    buf = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
        warnings.simplefilter("ignore")
        yield buf


class LineProgress:
    """The subset of tqdm's interface the toolkit uses, printing plain lines.

    A line is printed when the stage (the postfix string) changes, at the end, and at most
    every ``every_s`` seconds in between: ``desc: done/total unit (stage)``.
    """

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it",
                 initial: int = 0, file: TextIO | None = None, every_s: float = 30.0) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.file = file or sys.stderr
        self.every_s = every_s
        self.postfix = ""
        self._last = time.monotonic()
        self._closed = False

    def _line(self) -> None:
        of = f"/{self.total}" if self.total is not None else ""
        stage = f" ({self.postfix})" if self.postfix else ""
        print(f"{self.desc}: {self.n}{of} {self.unit}{stage}", file=self.file, flush=True)
        self._last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self._last >= self.every_s:
            self._line()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        if s != self.postfix:
            self.postfix = s
            self._line()

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kw: Any) -> None:
        items = dict(ordered_dict or {}, **kw)
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())  # no line: per-step noise

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._line()


def progress_bar(total: int | None = None, *, desc: str, unit: str = "it", initial: int = 0,
                 enabled: bool = True, leave: bool = False) -> Any:
    """A tqdm bar on a TTY (stderr), a :class:`LineProgress` otherwise; None when disabled."""
    if not enabled:
        return None
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=leave,
                    dynamic_ncols=True, file=sys.stderr)
    return LineProgress(total=total, desc=desc, unit=unit, initial=initial)


def progress_iter(items: Any, total: int | None = None, *, desc: str, unit: str = "it",
                  enabled: bool = True) -> Any:
    """``items`` with :func:`progress_bar` reporting (a bar on a TTY, lines in a log)."""
    bar = progress_bar(total if total is not None else len(items), desc=desc, unit=unit,
                       enabled=enabled)
    if bar is None:
        yield from items
        return
    try:
        for item in items:
            yield item
            bar.update(1)
    finally:
        bar.close()


__all__ = ["LineProgress", "progress_bar", "progress_iter"]
