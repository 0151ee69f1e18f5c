"""Executors: same results in-process and in worker processes; failures become results."""

from __future__ import annotations

import sys
from pathlib import Path

from nasfcos.genotypes import sample_genotype
from nasfcos.search.evaluators import ToyEvaluator
from nasfcos.search.executors import InlineExecutor, LocalExecutor, Task, error_text, make_executor

# fault-injecting evaluators must be importable by name in spawned workers
sys.path.insert(0, str(Path(__file__).parent))
from search_helpers import DyingEvaluator, FlakyEvaluator  # noqa: E402


def _tasks(n: int = 4) -> list[Task]:
    return [Task(0, i, 1000 + i, sample_genotype(i, "dag").to_dict(with_meta=False)) for i in range(n)]


def _drain(ex) -> dict:
    out = {}
    while ex.pending():
        r = ex.wait_one()
        out[r.task.key] = r
    return out


def test_local_pool_matches_inline_and_survives_failures(tmp_path: Path) -> None:
    ev = ToyEvaluator(noise=0.1)  # what DyingEvaluator computes when it does not die
    inline = InlineExecutor(ev)
    for t in _tasks():
        inline.submit(t)
    ref = _drain(inline)
    assert all(r.ok for r in ref.values())

    dying = DyingEvaluator(str(tmp_path), die_seed=1001)
    with LocalExecutor(dying, workers=2, threads=1) as pool:
        for t in _tasks():
            pool.submit(t)
        first = _drain(pool)
        # the worker running seed 1001 died: that task (and any other in flight) is reported
        # as lost, nothing raised
        assert not first[(0, 1)].ok and "worker lost" in str(first[(0, 1)].error)
        for key, r in first.items():
            if r.ok:
                assert r.result["reward"] == ref[key].result["reward"]
        # the pool is rebuilt: resubmitting the lost tasks works and gives the same results
        for r in first.values():
            if not r.ok:
                pool.submit(r.task)
        second = _drain(pool)
        assert all(r.ok for r in second.values())
        for key, r in second.items():
            assert r.result["reward"] == ref[key].result["reward"]
            assert r.result["losses"] == ref[key].result["losses"]
            assert r.worker != ""


def test_evaluator_exceptions_become_errors(tmp_path: Path) -> None:
    ev = FlakyEvaluator(str(tmp_path), flaky_seeds=frozenset({1000}), always_fail_op=None)
    ex = make_executor("local", ev, workers=0)
    assert isinstance(ex, InlineExecutor)
    t = _tasks(1)[0]
    ex.submit(t)
    r = ex.wait_one()
    assert not r.ok and r.error.startswith("MemoryError") and "Traceback" in r.detail
    ex.submit(t)
    assert ex.wait_one().ok  # transient: the retry succeeds
    # the recorded error: 'Type: first line', never an IndexError on an empty message
    assert error_text(MemoryError()) == "MemoryError"
    assert error_text(ValueError("  \n bad\nmore")) == "ValueError: bad"
    assert len(error_text(RuntimeError("x" * 900))) == 500
