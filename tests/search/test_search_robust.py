"""The search out of the box, its exit codes, resume after a failure, archive tampering,
workers dying with the driver, and the proxy's own evaluator under local workers."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from nasfcos.cli.main import main as _main
from nasfcos.errors import CacheError, NasfcosError
from nasfcos.fcos.synth import SynthConfig, write_synthetic
from nasfcos.genotypes import Genotype
from nasfcos.search import proxy
from nasfcos.search.archive import CHECKPOINT_NAME, encode_row, read_rows
from nasfcos.search.evaluators import ToyEvaluator
from nasfcos.search.loop import Search, SearchConfig, SearchFailed
from nasfcos.search.ppo import PPOConfig


def cli_main(argv: list[str]) -> int:
    """The CLI's exit status (argparse's own errors exit 2 through SystemExit)."""
    try:
        return _main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


FAST_PPO = PPOConfig(lr=1e-3, minibatch_size=4, epochs=1)
#: The tiny preset shrunk for tests: 40 synthetic images of 64 px, one training step.
SMALL_TINY = proxy.PRESETS["tiny"].replace(synth_images=40, synth_size=64, short_side=64, max_size=64,
                                           crop=64, max_steps=1, chunk_size=16)


def _toy(**kw: Any) -> SearchConfig:
    base: dict[str, Any] = {"preset": "toy", "trials": 16, "batch_size": 8, "seed": 1, "ppo": FAST_PPO}
    base.update(kw)
    return SearchConfig(**base)


def test_out_of_the_box_builds_data_and_cache_then_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(proxy.PRESETS, "tiny", SMALL_TINY)  # workers 0: this process sees it
    out = tmp_path / "run"
    rc = cli_main(["search", "--trials", "2", "--batch-size", "2", "--workers", "0", "--out", str(out)])
    assert rc == 0
    err = capsys.readouterr().err
    assert "feature cache" in err and "ready" in err
    assert (out / "cache" / "manifest.json").is_file() and (out / "cache" / "synth" / "train.json").is_file()
    rows = [r.to_json() for r in read_rows(out / "archive.jsonl")]
    assert [r["status"] for r in rows] == ["ok", "ok"] or {r["status"] for r in rows} <= {"ok", "reused"}
    assert all(r["extra"]["cache_verifications"] == 1 for r in rows if r["status"] == "ok")
    assert json.loads((out / "search.json").read_text())["cache"] is None  # the folder can move
    # reuses data and cache on resume (no rebuild: the manifest is not rewritten)
    mtime = (out / "cache" / "manifest.json").stat().st_mtime_ns
    assert cli_main(["search", "--trials", "4", "--out", str(out), "--resume", "--workers", "0",
                     "--quiet"]) == 0
    assert (out / "cache" / "manifest.json").stat().st_mtime_ns == mtime
    assert len(read_rows(out / "archive.jsonl")) == 4


def test_resume_after_the_proxy_preset_changed_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A search records its proxy preset's values; a resume under other values (a new version of
    the preset) is a one-line error naming the changed fields, and nothing is evaluated.  A setting
    added since the search began counts at its default (the behaviour from before it existed)."""
    old = SMALL_TINY.replace(reward=proxy.ProxySettings().reward)  # the reward before the setting existed
    monkeypatch.setitem(proxy.PRESETS, "tiny", old)
    out = tmp_path / "run"
    to_dict = proxy.ProxySettings.to_dict
    with monkeypatch.context() as old_version:  # a version without the reward setting
        old_version.setattr(proxy.ProxySettings, "to_dict", lambda s: {k: v for k, v in to_dict(s).items()
                                                                       if k != "reward"})
        assert cli_main(["search", "--trials", "2", "--batch-size", "2", "--workers", "0", "--out", str(out),
                         "--quiet"]) == 0
    assert "reward" not in json.loads((out / "search.json").read_text())["proxy"]
    assert json.loads((out / "search.json").read_text())["proxy"]["epochs"] == SMALL_TINY.epochs
    rows = (out / "archive.jsonl").read_bytes()
    monkeypatch.setitem(proxy.PRESETS, "tiny", old.replace(epochs=old.epochs + 1))
    assert cli_main(["search", "--trials", "4", "--out", str(out), "--resume", "--workers", "0", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tiny proxy preset changed (epochs)" in err[0]
    assert (out / "archive.jsonl").read_bytes() == rows
    monkeypatch.setitem(proxy.PRESETS, "tiny", old.replace(reward="ctr"))
    assert cli_main(["search", "--trials", "4", "--out", str(out), "--resume", "--workers", "0", "--quiet"]) == 2
    assert "tiny proxy preset changed (reward)" in capsys.readouterr().err
    monkeypatch.setitem(proxy.PRESETS, "tiny", old)
    assert cli_main(["search", "--trials", "4", "--out", str(out), "--resume", "--workers", "0", "--quiet"]) == 0
    assert len(read_rows(out / "archive.jsonl")) == 4
    # the Python API's resume (a config without the recorded proxy values) is not refused either
    cfg = dataclasses.replace(SearchConfig.read(out / "search.json"), proxy=None)
    assert "reward" not in SearchConfig.read(out / "search.json").proxy
    assert Search(out, cfg, resume=True, workers=0, progress=False, plot_every_s=None).cfg.proxy is not None


def test_configuration_errors_stop_before_the_first_trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(proxy.PRESETS, "tiny", SMALL_TINY)
    cases = [
        ["--trials", "2", "--data", str(tmp_path / "absent")],
        ["--trials", "0"],
        ["--trials", "2", "--batch-size", "0"],
        ["--trials", "2", "--preset", "toy", "--toy-noise", "nan"],
        ["--trials", "2", "--workers", "-1"],
    ]
    for k, args in enumerate(cases):
        out = tmp_path / f"o{k}"
        assert cli_main(["search", *args, "--out", str(out), "--quiet"]) == 2, args
        err = capsys.readouterr().err
        assert "Traceback" not in err and "error:" in err.strip().splitlines()[-1], (args, err)
        assert not (out / "archive.jsonl").exists() or (out / "archive.jsonl").stat().st_size == 0
    # a cache built with other settings is refused before any evaluation
    other = tmp_path / "other"
    write_synthetic(other / "synth", SynthConfig(images=20, size=64, seed=0))
    proxy.build_cache(other / "synth", other / "cache", SMALL_TINY.replace(crop=32), progress=False)
    assert cli_main(["search", "--trials", "2", "--cache", str(other / "cache"), "--out", str(tmp_path / "x"),
                     "--workers", "0", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "built differently (crop" in err
    # a cache on the preset's own synthetic set: refused before that set is touched
    own = tmp_path / "own"
    proxy.build_cache(None, own, SMALL_TINY.replace(crop=32), progress=False)
    synth_manifest = (own / "synth" / "manifest.json").read_bytes()
    with pytest.raises(CacheError, match="built differently"):
        proxy.build_cache(None, own, SMALL_TINY.replace(synth_images=30), progress=False)
    assert (own / "synth" / "manifest.json").read_bytes() == synth_manifest
    # the hint names what 'nasfcos search' offers ('search cache' has --overwrite, search does not)
    assert "another --cache DIR" in err and "--overwrite" not in err and "--out" not in err
    assert not (tmp_path / "x" / "archive.jsonl").exists() or not read_rows(tmp_path / "x" / "archive.jsonl")


class Broken:
    """An evaluator whose every call fails (e.g. a cache that disappeared)."""

    def __call__(self, g: Genotype, seed: int) -> dict[str, Any]:
        raise CacheError("cache/arrays/train_c2.npy: missing cache file (injected)")


class OddFields:
    """A toy evaluator whose results carry a float parameter count, and every other one an
    unusable ``latency_ms`` (null)."""

    def __init__(self) -> None:
        self.inner, self.calls = ToyEvaluator(), 0

    def __call__(self, g: Genotype, seed: int) -> dict[str, Any]:
        self.calls += 1
        res = {**self.inner(g, seed), "params": 1.5e6}
        return {**res, "latency_ms": None} if self.calls % 2 else res


def test_an_unusable_result_field_fails_that_trial_not_the_search(tmp_path: Path) -> None:
    """Rows are checked as they are appended; a result field the archive cannot hold made the
    whole search (and its resume) stop.  It is a failed trial, named in its errors."""
    Search(tmp_path, _toy(trials=8), evaluator=OddFields(), workers=0, progress=False,
           plot_every_s=None).run()
    rows = read_rows(tmp_path / "archive.jsonl")
    assert {r.status for r in rows} == {"ok", "failed"}
    assert all("'extra'" in r.errors[-1] for r in rows if r.status == "failed")
    assert {r.params for r in rows if r.status == "ok"} == {1.5e6}  # integral float: kept


def test_all_failed_exits_non_zero_with_the_reason_and_resumes_after_the_fix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SearchFailed, match=f"every trial of step 0 failed.*missing cache file.*-- fix the cause, "
                                           f"then resume the search in {tmp_path}$"):
        Search(tmp_path, _toy(), evaluator=Broken(), workers=0, progress=False, plot_every_s=None).run()
    # the command names its flags (the library names none)
    monkeypatch.setattr("nasfcos.search.loop.make_evaluator", lambda cfg, cache_dir: Broken())
    cli_out = tmp_path / "cli"
    assert cli_main(["search", "--preset", "toy", "--trials", "8", "--out", str(cli_out), "--quiet"]) == 2
    assert capsys.readouterr().err.rstrip().endswith(f"then 'nasfcos search --out {cli_out} --resume'")
    assert {r.status for r in read_rows(tmp_path / "archive.jsonl")} == {"failed"}
    assert not (tmp_path / CHECKPOINT_NAME).exists()
    s = Search(tmp_path, _toy(), resume=True, evaluator=ToyEvaluator(), workers=0, progress=False,
               plot_every_s=None)
    s.run()
    rows = [r.to_json() for r in read_rows(tmp_path / "archive.jsonl")]
    assert [(r["step"], r["index"]) for r in rows] == [(s, i) for s in range(2) for i in range(8)]
    assert "failed" not in {r["status"] for r in rows}
    # same archive as a search that never failed
    ref = tmp_path / "ref"
    Search(ref, _toy(), evaluator=ToyEvaluator(), workers=0, progress=False, plot_every_s=None).run()
    strip = ("time_s", "worker", "recorded_at", "attempts", "errors")
    assert [{k: v for k, v in r.items() if k not in strip} for r in rows] == [
        {k: v for k, v in r.data.items() if k not in strip} for r in read_rows(ref / "archive.jsonl")]


def _tamper_cases(lines: list[bytes]) -> dict[str, bytes]:
    row = json.loads(lines[3])
    no_step = dict(row)
    del no_step["step"]
    return {
        "appears twice": b"".join(lines + [lines[3]]),
        "row from step 99": b"".join(lines + [encode_row(dict(row, step=99))]),
        "completed step 0 lacks": b"".join(lines[:3] + lines[4:]),
        "'step' missing": b"".join(lines[:3] + [encode_row(no_step)] + lines[4:]),
        "not a finite number": b"".join(lines[:3] + [lines[3].replace(
            f'"reward":{json.dumps(row["reward"])}'.encode(), b'"reward":NaN')] + lines[4:]),
        "'reward' 'x'": b"".join(lines[:3] + [encode_row(dict(row, reward="x"))] + lines[4:]),
        "'hash' is not a sha256": b"".join(lines[:3] + [encode_row(dict(row, hash="ab\ncd"))] + lines[4:]),
        "another nasfcos version": b"".join(lines[:3] + [encode_row(dict(row, format="x/9"))] + lines[4:]),
        "line 4: 'genotype' \\[1\\] is not an object": b"".join(lines[:3] + [encode_row(dict(row, genotype=[1]))]
                                                               + lines[4:]),
        "line 4: 'losses'": b"".join(lines[:3] + [encode_row(dict(row, losses={"cls": "x"}))] + lines[4:]),
        "line 4: 'extra'": b"".join(lines[:3] + [encode_row(dict(row, extra={"latency_ms": "1"}))] + lines[4:]),
        "lacks 8 row": b"\0" * 4096,  # all zero: nothing dropped, the checkpoint says step 0 is done
    }


def test_resume_verifies_archive_and_checkpoint(tmp_path: Path) -> None:
    base = tmp_path / "base"
    Search(base, _toy(trials=8), workers=0, progress=False, plot_every_s=None).run()
    lines = (base / "archive.jsonl").read_bytes().splitlines(keepends=True)
    for k, (message, data) in enumerate(_tamper_cases(lines).items()):
        d = tmp_path / f"t{k}"
        shutil.copytree(base, d)
        (d / "archive.jsonl").write_bytes(data)
        with pytest.raises(CacheError, match=message):
            Search(d, _toy(), resume=True, workers=0, progress=False, plot_every_s=None).run()
        assert (d / "archive.jsonl").read_bytes() == data  # nothing rewritten, nothing lost
    # a bit-flipped checkpoint, an archive that is a folder
    d = tmp_path / "flip"
    shutil.copytree(base, d)
    blob = bytearray((d / CHECKPOINT_NAME).read_bytes())
    blob[len(blob) // 2] ^= 0x10
    (d / CHECKPOINT_NAME).write_bytes(bytes(blob))
    with pytest.raises(CacheError, match="checksum"):
        Search(d, _toy(), resume=True, workers=0, progress=False, plot_every_s=None).run()
    d = tmp_path / "dir"
    shutil.copytree(base, d)
    (d / "archive.jsonl").unlink()
    (d / "archive.jsonl").mkdir()
    with pytest.raises(CacheError, match="not a regular file"):
        Search(d, _toy(), resume=True, workers=0, progress=False, plot_every_s=None).run()
    with pytest.raises(NasfcosError, match="not a regular file"):
        read_rows(d / "archive.jsonl")
    (d / "search.json").unlink()
    (d / "search.json").mkdir()
    with pytest.raises(CacheError, match="search.json: is not a regular file"):
        Search(d, _toy(), resume=True, workers=0, progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NasfcosError, match="not a folder"):
        Search(tmp_path / "file", _toy(), workers=0, progress=False)


def _children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (Linux /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_workers_die_with_the_driver(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [sys.executable, "-m", "nasfcos", "search", "--preset", "toy", "--trials", "64", "--toy-delay", "0.5",
            "--workers", "1", "--quiet", "--out", str(out)]
    proc = subprocess.Popen(args, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    children: list[int] = []
    try:
        deadline = time.time() + 90
        archive = out / "archive.jsonl"
        while time.time() < deadline and not (archive.is_file() and archive.read_bytes().count(b"\n") >= 1):
            assert proc.poll() is None
            time.sleep(0.1)
        children = _children(proc.pid)
        assert len(children) >= 2  # the worker and the resource tracker
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.time() + 15
        while time.time() < deadline and any(_alive(c) for c in children):
            time.sleep(0.1)
        assert not [c for c in children if _alive(c)]
    finally:
        if proc.poll() is None:
            proc.kill()
        for c in children:  # only what this test started
            if _alive(c):
                os.kill(c, signal.SIGKILL)


def test_the_search_defines_no_layers_of_its_own() -> None:
    """Decoders (and the cache's backbone) come from the compiler: nothing in search/ builds
    a convolution or a norm layer, so the search ranks exactly the ops that are deployed."""
    import ast

    root = Path(__file__).resolve().parents[2] / "search"
    layers = {"Conv2d", "BatchNorm2d", "GroupNorm", "ConvTranspose2d", "conv2d", "deform_conv2d", "DeformConv2d"}
    found = []
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in layers:
                found.append(f"{path.name}:{node.lineno} {node.attr}")
    assert not found, found
