"""The proxy-fidelity protocol: held-out sets and what a Kendall tau is worth on few points."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

from nasfcos.search.metrics import kendall_tau, kendall_tau_stats

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("proxy_fidelity", ROOT / "benchmarks" / "proxy_fidelity.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["proxy_fidelity"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_tau_stats_matches_tau_and_is_honest_about_few_points() -> None:
    a, b = [1, 2, 3, 4], [1, 3, 2, 4]
    st = kendall_tau_stats(a, b)
    assert st["tau"] == round(kendall_tau(a, b), 3) == 0.667 and st["n"] == 4
    # 4 points: a perfect-looking ranking is consistent with chance (issue 23: p = 0.17)
    assert 0.1 < st["p"] < 0.25 and st["lo"] <= 0 < st["hi"]
    strong = kendall_tau_stats(list(range(20)), [x + (3 if x % 4 == 0 else 0) for x in range(20)])
    assert strong["tau"] > 0.8 and 0 < strong["p"] < 0.01 and 0.5 < strong["lo"] <= strong["tau"] <= strong["hi"]
    # ties in both (duplicated architectures in a resample) do not break it; constant input: no tau
    ties = kendall_tau_stats([1, 1, 2, 2, 3], [1, 2, 2, 3, 3])
    assert -1 <= ties["lo"] <= ties["tau"] <= ties["hi"] <= 1
    assert kendall_tau_stats([1, 1, 1], [1, 2, 3])["tau"] is None
    assert kendall_tau_stats([1, 2], [2, 1])["lo"] is None  # too few for an interval
    assert kendall_tau_stats(a, b) == st  # repeatable (fixed seed)
    with pytest.raises(ValueError):
        kendall_tau_stats([1, 2], [1])
    assert math.isnan(kendall_tau([1, 1], [1, 2]))


def test_test_set_is_held_out() -> None:
    bench = _bench()
    sets = bench.architecture_sets([0, 1], [100, 101, 102])
    assert [g.name for g in sets["test"]] == ["random-100", "random-101", "random-102"]
    assert len(sets["tuning"]) == 2 + 2 + 4  # shipped + random + weak
    assert not {g.hash() for g in sets["tuning"]} & {g.hash() for g in sets["test"]}
    with pytest.raises(ValueError, match="seed 1 is in both"):
        bench.architecture_sets([0, 1], [1, 2])


def test_reward_forms_and_the_preregistered_choice() -> None:
    bench = _bench()
    row = {"losses": [{"cls": 0.3, "box": 0.8, "ctr": 0.6}, {"cls": 0.5, "box": 1.0, "ctr": 0.6}]}
    assert bench.form_score(row, "box+ctr", -100.0) == pytest.approx(-1.5)
    assert bench.form_score(row, "cls+box+ctr", -100.0) == pytest.approx(-1.9)
    diverged = {"losses": [{"cls": math.nan, "box": 0.8, "ctr": 0.6}, {"cls": 0.5, "box": 1.0, "ctr": 0.6}]}
    assert bench.form_score(diverged, "ctr", -100.0) == pytest.approx((-100.0 - 0.6) / 2)  # like the search
    assert set(bench.FORMS) == {"cls+box+ctr", "cls+box", "cls+ctr", "box+ctr", "cls", "box", "ctr"}
    taus = {f: {"tau": 0.5} for f in bench.FORMS}
    assert bench.choose_form(taus, "cls+box+ctr") == "cls+box+ctr"  # a tie keeps the longer form
    taus["ctr"] = {"tau": 0.6}
    assert bench.choose_form(taus, "cls+box+ctr") == "ctr"
    taus["box"] = {"tau": 0.6}
    assert bench.choose_form(taus, "box") == "box"  # a tie between equals keeps the current form
