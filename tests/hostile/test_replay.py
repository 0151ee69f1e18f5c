"""The quick subset of the hostile-input replay (tests/hostile/replay.py): one case per class
of the recorded bad cases must be handled (run the whole replay with
``python tests/hostile/replay.py``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


def _replay() -> object:
    spec = importlib.util.spec_from_file_location("nasfcos_replay", Path(__file__).with_name("replay.py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


REPLAY = _replay()
FAST = [c for c in REPLAY.all_cases() if c.fast]  # type: ignore[attr-defined]


def test_the_fast_subset_covers_every_class() -> None:
    assert {c.cls for c in FAST} == {c.cls for c in REPLAY.all_cases()}  # type: ignore[attr-defined]
    assert len(REPLAY.all_cases()) >= 50  # type: ignore[attr-defined]


@pytest.mark.parametrize("case", FAST, ids=[c.name for c in FAST])
def test_recorded_case_is_handled(case: object) -> None:
    n, bad = REPLAY.replay([case])  # type: ignore[attr-defined]
    assert n == 1 and not bad, bad


def test_the_judge_catches_a_mishandled_case(tmp_path: Path) -> None:
    """The replay is not a test that cannot fail: a traceback, a wrong exit code, two error
    lines and missing words each count as mishandled."""
    case = REPLAY.Case("x", "traceback", ["validate"], words="needle")  # type: ignore[attr-defined]
    judge = REPLAY.judge  # type: ignore[attr-defined]
    assert judge(case, 2, "Traceback (most recent call last):\n  boom\nValueError: x", 1, tmp_path)
    assert judge(case, 0, "", 1, tmp_path)
    assert judge(case, 2, "nasfcos a: error: one\nnasfcos a: error: two needle", 1, tmp_path)
    assert judge(case, 2, "nasfcos a: error: no", 1, tmp_path)
    assert judge(case, 2, "nasfcos a: error: needle", 1, tmp_path) is None
