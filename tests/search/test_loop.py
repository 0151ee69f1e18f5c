"""The search driver: learning on the toy reward, dedup, failures, outputs, resume, kill -9."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from nasfcos.cli.search_cmds import main as search_main
from nasfcos.errors import NasfcosError
from nasfcos.genotypes import Genotype, load_genotype
from nasfcos.search.archive import read_rows, strip_volatile
from nasfcos.search.evaluators import ToyEvaluator
from nasfcos.search.loop import Search, SearchConfig, eval_seed, write_top
from nasfcos.search.ppo import PPOConfig

sys.path.insert(0, str(Path(__file__).parent))
from search_helpers import FlakyEvaluator  # noqa: E402

FAST_PPO = PPOConfig(lr=1e-3, minibatch_size=8, epochs=2)


def _cfg(**kw: Any) -> SearchConfig:
    base = {"preset": "toy", "trials": 24, "batch_size": 8, "seed": 3, "ppo": FAST_PPO}
    base.update(kw)
    return SearchConfig(**base)


def _archive(d: Path) -> list[dict[str, Any]]:
    return [strip_volatile(r) for r in read_rows(d / "archive.jsonl")]


class Counting:
    """In-process toy evaluator that records what it evaluated."""

    def __init__(self, inner: Any = None) -> None:
        self.inner = inner or ToyEvaluator(noise=0.2)
        self.calls: list[tuple[str, int]] = []

    def __call__(self, g: Genotype, seed: int) -> dict[str, Any]:
        self.calls.append((g.hash(), seed))
        return self.inner(g, seed)


@pytest.mark.slow
def test_toy_search_clearly_improves(tmp_path: Path) -> None:
    cfg = _cfg(trials=96, batch_size=8, seed=0, ppo=PPOConfig(lr=1e-3, minibatch_size=8, epochs=3))
    s = Search(tmp_path, cfg, workers=0, progress=False, plot_every_s=1e9)  # plot once, at the end
    summary = s.run()
    first = [r for log in s.history[:2] for r in log.rewards]
    last = [r for log in s.history[-2:] for r in log.rewards]
    mean_first, mean_last = sum(first) / len(first), sum(last) / len(last)
    # uniform sampling averages ~4 deformable ops; the trained controller far more
    assert mean_last > mean_first + 3.0, (mean_first, mean_last)
    assert summary["trials"] == 96 and summary["best"]["reward"] >= max(last)
    # outputs: plot, top genotypes that load, summary, best drawing when drawing exists
    assert (tmp_path / "search.png").stat().st_size > 1000
    tops = sorted((tmp_path / "top").glob("rank*.json"))
    assert len(tops) == 5
    rewards = [load_genotype(p).meta["reward"] for p in tops]
    assert rewards == sorted(rewards, reverse=True) and rewards[0] == summary["best"]["reward"]
    assert json.loads((tmp_path / "summary.json").read_text())["trials"] == 96


def test_rows_carry_seeds_choices_and_matching_log_probs(tmp_path: Path) -> None:
    s = Search(tmp_path, _cfg(trials=8), workers=0, progress=False, plot_every_s=None)
    s.run()
    rows = [r.to_json() for r in read_rows(tmp_path / "archive.jsonl")]
    assert [(r["step"], r["index"], r["trial"]) for r in rows] == [(0, i, i) for i in range(8)]
    for r in rows:
        assert r["seed"] == eval_seed(3, r["step"], r["index"])
        assert r["status"] == "ok" and r["reward"] == -sum(r["losses"].values())
        assert s.controller.genotype(r["choices"]).hash() == r["hash"]
    # the log-probs recorded at sampling time are those of the initial controller
    fresh = Search(tmp_path / "again", _cfg(trials=8), workers=0, progress=False)
    lp, _ = fresh.controller.evaluate(torch.tensor([r["choices"] for r in rows]))
    torch.testing.assert_close(lp.detach(), torch.tensor([r["log_prob"] for r in rows]), atol=1e-4, rtol=0)


def test_a_genotype_seen_before_is_not_retrained(tmp_path: Path) -> None:
    ev = Counting()
    s = Search(tmp_path, _cfg(trials=16, ppo=PPOConfig(lr=0.0)), evaluator=ev, workers=0, progress=False,
               plot_every_s=None)
    with torch.no_grad():  # a collapsed policy: always choice 0 -> the same genotype every time
        for lin in s.controller.classify.values():
            lin.weight.zero_()
            lin.bias.fill_(-30.0)
            lin.bias[0] = 30.0
    s.run()
    rows = [r.to_json() for r in read_rows(tmp_path / "archive.jsonl")]
    assert len(ev.calls) == 1
    assert [r["status"] for r in rows] == ["ok"] + ["reused"] * 15
    assert all(r["reward"] == rows[0]["reward"] and r["reused_from"] == [0, 0] for r in rows[1:])


def test_failed_evaluations_are_retried_once_or_skipped(tmp_path: Path) -> None:
    seeds = frozenset(eval_seed(3, 0, i) for i in (1, 4))
    ev = FlakyEvaluator(str(tmp_path), flaky_seeds=seeds, always_fail_op="skip")
    s = Search(tmp_path / "s", _cfg(trials=24), evaluator=ev, workers=0, progress=False, plot_every_s=None)
    s.run()
    rows = [r.to_json() for r in read_rows(tmp_path / "s" / "archive.jsonl")]
    assert len(rows) == 24 and s.step == 3
    by = {(r["step"], r["index"]): r for r in rows}
    for i in (1, 4):
        r = by[(0, i)]
        if r["genotype"]["fpn"][0]["ops"][0] != "skip":
            assert r["status"] == "ok" and r["attempts"] == 2 and r["errors"][0].startswith("MemoryError")
    failed = [r for r in rows if r["status"] == "failed"]
    assert failed, "some sample should start with a skip op"
    for r in failed:
        assert r["reward"] is None and r["genotype"]["fpn"][0]["ops"][0] == "skip"
        assert r["attempts"] in (0, 2) and (r["attempts"] == 0 or "out of memory" in r["errors"][-1])
    ok = [r for r in rows if r["status"] in ("ok", "reused")]
    assert sum(len(log.rewards) for log in s.history) == len(ok)


class Crash(BaseException):
    """Not an Exception: escapes run_task like a KeyboardInterrupt would."""


class CrashAfter:
    def __init__(self, n: int) -> None:
        self.n = n
        self.calls = 0

    def __call__(self, g: Genotype, seed: int) -> dict[str, Any]:
        self.calls += 1
        if self.calls > self.n:
            raise Crash()
        return ToyEvaluator(noise=0.2)(g, seed)


@pytest.mark.parametrize("crash_after", [13, 16])  # mid-step, and right at a step boundary
def test_resume_continues_at_the_right_step(tmp_path: Path, crash_after: int) -> None:
    cfg = _cfg(trials=32)
    Search(tmp_path / "ref", cfg, evaluator=ToyEvaluator(noise=0.2), workers=0, progress=False,
           plot_every_s=None).run()
    crashing = Search(tmp_path / "run", cfg, evaluator=CrashAfter(crash_after), workers=0, progress=False,
                      plot_every_s=None)
    with pytest.raises(Crash):
        crashing.run()
    assert len(read_rows(tmp_path / "run" / "archive.jsonl")) == crash_after
    again = Counting()
    resumed = Search(tmp_path / "run", cfg, resume=True, evaluator=again, workers=0, progress=False,
                     plot_every_s=None)
    resumed.run()
    assert len(again.calls) == 32 - crash_after  # nothing evaluated twice
    assert resumed.step == 4
    assert _archive(tmp_path / "run") == _archive(tmp_path / "ref")


def test_resume_checks_settings_and_new_search_refuses_old_dir(tmp_path: Path) -> None:
    Search(tmp_path, _cfg(trials=8), workers=0, progress=False, plot_every_s=None).run()
    with pytest.raises(NasfcosError, match="already holds a search") as err:
        Search(tmp_path, _cfg(trials=8), workers=0, progress=False)
    from nasfcos.cli.main import flag_message

    assert flag_message(err.value).startswith("--resume: ")  # the library names the field, the CLI its flag
    with pytest.raises(NasfcosError, match="seed"):
        Search(tmp_path, _cfg(trials=8, seed=4), resume=True, workers=0, progress=False)
    # more trials on resume is allowed and continues from step 1
    s = Search(tmp_path, _cfg(trials=16), resume=True, workers=0, progress=False, plot_every_s=None)
    s.run()
    assert [log.step for log in s.history] == [1]
    assert len(read_rows(tmp_path / "archive.jsonl")) == 16


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "nasfcos", "search", *args]


@pytest.mark.slow
def test_kill_9_then_resume_loses_and_repeats_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    common = ["--preset", "toy", "--trials", "48", "--batch-size", "8", "--seed", "5", "--toy-noise", "0.2",
              "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(_cli(*common, "--toy-delay", "0.15", "--out", str(out)), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    archive = out / "archive.jsonl"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if archive.exists() and archive.read_bytes().count(b"\n") >= 12:
                break
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    before = read_rows(archive)
    assert 12 <= len(before) < 48
    # resume in a fresh interpreter; also checks that Ray is never imported by a local search
    code = (
        "import sys\nfrom nasfcos.cli.main import main\n"
        f"rc = main({['search', '--out', str(out), '--resume', '--quiet']!r})\n"
        "print('RAY' if 'ray' in sys.modules else 'NO-RAY', rc)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "NO-RAY 0"
    after = read_rows(archive)
    keys = [r.key for r in after]
    assert keys == [(s, i) for s in range(6) for i in range(8)]  # none lost, none repeated
    assert [strip_volatile(r) for r in after[:len(before)]] == [strip_volatile(r) for r in before]
    # identical to an uninterrupted run of the same search
    ref = tmp_path / "ref"
    cfg = dataclasses.replace(_cfg(), trials=48, batch_size=8, seed=5, toy_noise=0.2, ppo=PPOConfig())
    Search(ref, cfg, workers=0, progress=False, plot_every_s=None).run()
    assert _archive(out) == _archive(ref)


def test_top_verb_exports_the_k_best(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Search(tmp_path / "s", _cfg(trials=16), workers=0, progress=False, plot_every_s=None).run()
    assert search_main(["top", str(tmp_path / "s"), "-k", "3", "-o", str(tmp_path / "best")]) == 0
    files = sorted((tmp_path / "best").glob("rank*.json"))
    assert len(files) == 3
    gs = [load_genotype(f) for f in files]
    assert [g.meta["rank"] for g in gs] == [1, 2, 3]
    assert gs[0].meta["reward"] >= gs[1].meta["reward"] >= gs[2].meta["reward"]
    assert len({g.hash() for g in gs}) == 3 and gs[0].hash() == gs[0].meta["hash"]
    listing = json.loads((tmp_path / "best" / "top.json").read_text())
    assert [e["rank"] for e in listing["top"]] == [1, 2, 3]
    assert "rank" in capsys.readouterr().out
    with pytest.raises(NasfcosError):
        search_main(["top", str(tmp_path / "nope")])


def test_proxy_sub_verbs_are_forwarded(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    fake = types.ModuleType("nasfcos.cli.proxy_cmds")
    seen: list[tuple[str, list[str]]] = []
    fake.cache_main = lambda argv: seen.append(("cache", argv)) or 0  # type: ignore[attr-defined]
    fake.eval_main = lambda argv: seen.append(("eval", argv)) or 3  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "nasfcos.cli.proxy_cmds", fake)
    assert search_main(["cache", "--data", "d"]) == 0
    assert search_main(["eval", "g.json"]) == 3
    assert seen == [("cache", ["--data", "d"]), ("eval", ["g.json"])]


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(NasfcosError, match="--trials"):
        search_main(["--preset", "toy", "--out", str(tmp_path / "x")])
    with pytest.raises(NasfcosError, match="--preset"):
        search_main(["--preset", "nope", "--trials", "8", "--out", str(tmp_path / "y")])


def test_fewer_trials_than_a_batch_run_as_one_step(tmp_path: Path) -> None:
    """review finding: '--trials 2' ran 8 trials (one default batch); now one step of 2."""
    from nasfcos.cli.search_cmds import _config, _parser

    cfg = _config(_parser().parse_args(["--preset", "toy", "--trials", "2", "--out", str(tmp_path / "a")]))
    assert (cfg.trials, cfg.batch_size, cfg.steps) == (2, 2, 1)
    cfg = _config(_parser().parse_args(["--trials", "10", "--out", str(tmp_path / "a")]))
    assert (cfg.batch_size, cfg.steps) == (8, 2)  # more than a batch: whole batches (and a note)
    Search(tmp_path / "a", _cfg(trials=2, batch_size=2), workers=0, progress=False, plot_every_s=None).run()
    assert len(read_rows(tmp_path / "a" / "archive.jsonl")) == 2


def test_top_writes_and_removes_only_its_own_files(tmp_path: Path) -> None:
    """issue 25: `search top -o DIR` removed every rank*-*.json in DIR, the user's too."""
    Search(tmp_path / "s", _cfg(trials=16), workers=0, progress=False, plot_every_s=None).run()
    best = tmp_path / "best"
    best.mkdir()
    mine = best / "rank01-0123456789ab.json"  # the user's own file, named like ours
    mine.write_text("{}")
    assert search_main(["top", str(tmp_path / "s"), "-k", "3", "-o", str(best), "--compile",
                        "--fpn-channels", "32", "--num-classes", "3"]) == 0
    index = json.loads((best / "top.json").read_text())
    ours = index["files"]
    assert len(ours) == 6 and mine.name not in ours and mine.read_text() == "{}"
    assert sorted(p.name for p in best.iterdir()) == sorted(ours + [mine.name, "top.json"])
    model = best / index["top"][0]["model"].rsplit("/", 1)[1]
    assert "class Decoder" in model.read_text() and "FPN_CHANNELS = 32" in model.read_text()
    # fewer, no models: our stale files go, the user's stays
    assert search_main(["top", str(tmp_path / "s"), "-k", "1", "-o", str(best)]) == 0
    assert sorted(p.name for p in best.iterdir()) == sorted([index["files"][0], mine.name, "top.json"])
    # a file we would write but did not: refused before anything changes
    rank1 = best / index["files"][0]
    (best / "top.json").write_text(json.dumps({"format": "nasfcos-top/1", "files": [], "top": []}))
    with pytest.raises(NasfcosError, match="not written by nasfcos"):
        search_main(["top", str(tmp_path / "s"), "-k", "1", "-o", str(best)])
    assert rank1.exists() and mine.exists()
    # another program's top.json is not overwritten
    other = tmp_path / "other"
    other.mkdir()
    (other / "top.json").write_text('{"mine": 1}')
    with pytest.raises(NasfcosError, match="not a nasfcos top index"):
        search_main(["top", str(tmp_path / "s"), "-o", str(other)])
    assert (other / "top.json").read_text() == '{"mine": 1}'
    with pytest.raises(NasfcosError, match="--detector needs --compile"):
        search_main(["top", str(tmp_path / "s"), "-o", str(other), "--detector"])


def test_top_export_runs_the_one_pipeline_per_genotype(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """issue 23 item 5: 'search top --export' hands each rankNN-HASH.json to runtime.pipeline.run_pipeline
    (a stand-in here: the real pipeline is tested in tests/runtime and by 'demo'; an export takes minutes)."""
    import nasfcos.runtime.pipeline as pipeline

    Search(tmp_path / "s", _cfg(trials=16), workers=0, progress=False, plot_every_s=None).run()
    seen: list[pipeline.PipelineConfig] = []

    def fake(cfg: pipeline.PipelineConfig, say: Any) -> dict[str, Any]:
        seen.append(cfg)
        say("[1/4] compiled ...")
        ok = len(seen) == 1  # the second genotype "disagrees"
        return {"out": str(cfg.out), "steps": {}, "parity": {"ok": ok, "failures": [] if ok else ["boxes"]},
                "results": [{"backend": "onnxruntime", "size": [64, 64], "status": "ok", "median_ms": 1.5}],
                "_report": object(), "_paths": {"model": cfg.out / "model.py", "onnx": cfg.out / "model.onnx"}}

    monkeypatch.setattr(pipeline, "run_pipeline", fake)
    best = tmp_path / "best"
    argv = ["top", str(tmp_path / "s"), "-k", "2", "-o", str(best), "--export", "--fpn-channels", "32",
            "--head-channels", "64", "--num-classes", "3", "--backbone", "tiny", "--sizes", "64", "--runs", "1",
            "--warmup", "0", "--threads", "1"]
    assert search_main(argv) == 1  # a parity failure is the exit status
    out, err = capsys.readouterr()
    index = json.loads((best / "top.json").read_text())
    assert [c.genotype for c in seen] == [e["path"] for e in index["top"]]
    assert [c.out for c in seen] == [best / Path(e["path"]).stem for e in index["top"]]
    assert {c.out.name for c in seen} < set(index["files"])  # the export folders are ours
    c = seen[0]
    assert (c.fpn_channels, c.head_channels, c.num_classes, c.backbone, c.sizes, c.runs, c.warmup, c.threads,
            c.gpu) == (32, 64, 3, "tiny", [(64, 64)], 1, 0, 1, False)
    assert "onnxruntime 1.5 ms" in out and "parity ok" in out and "[1/4] compiled" in err
    assert "parity FAILED for rank 2" in err
    assert json.loads((c.out / "summary.json").read_text())["parity"]["ok"] is True
    # once more with fewer: our stale export folder goes; a folder of that name we did not write is refused
    search_main(["top", str(tmp_path / "s"), "-k", "1", "-o", str(best), "--export", "--sizes", "64"])
    assert not seen[1].out.exists() and seen[0].out.is_dir()
    # a run that does not export (top without --export, the search's own per-step top) keeps the
    # export folders and the user's files in them, still listed as ours
    (seen[0].out / "my_notes.txt").write_text("keep")
    search_main(["top", str(tmp_path / "s"), "-k", "2", "-o", str(best)])
    write_top([], best, owned=True)
    assert (seen[0].out / "my_notes.txt").read_text() == "keep"
    assert seen[0].out.name in json.loads((best / "top.json").read_text())["files"]
    (best / "top.json").write_text(json.dumps({"format": "nasfcos-top/1", "files": [], "top": []}))
    with pytest.raises(NasfcosError, match="rank01-.*not written by nasfcos"):
        search_main(["top", str(tmp_path / "s"), "-k", "1", "-o", str(best), "--export"])
    with pytest.raises(NasfcosError, match="need --export"):
        search_main(["top", str(tmp_path / "s"), "-o", str(best), "--runs", "2"])
    with pytest.raises(NasfcosError, match="need --compile or --export"):
        search_main(["top", str(tmp_path / "s"), "-o", str(best), "--num-classes", "3"])
    for bad, word in ((["--backbone", "foo"], "unknown backbone"), (["--fpn-channels", "48"], "multiple of 32")):
        fresh = tmp_path / "fresh"  # refused before top.json or any export folder is written
        with pytest.raises(NasfcosError, match=word):
            search_main(["top", str(tmp_path / "s"), "-o", str(fresh), "--export", *bad])
        assert not fresh.exists()


@pytest.mark.parametrize(("changes", "field"), [({"trials": "two"}, "trials"), ({"batch_size": 2.0}, "batch_size"),
                                                ({"seed": True}, "seed"), ({"toy_delay": "1"}, "toy_delay"),
                                                ({"cache": 3}, "cache"), ({"proxy": [1]}, "proxy"),
                                                ({"proxy": "tiny"}, "proxy")])
def test_search_config_rules_name_the_field(changes: dict, field: str) -> None:
    """A hand-edited search.json (or API call) gets a one-line error naming the field, not a TypeError."""
    with pytest.raises(NasfcosError, match=f"search setting {field} must be"):
        dataclasses.replace(_cfg(), **changes).validate()
