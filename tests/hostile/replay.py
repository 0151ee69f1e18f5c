"""Replay of the recorded hostile-input cases (issue 25's round, and issue 16's where they are
reproducible here): every case is run against the installed nasfcos and judged.

    python tests/hostile/replay.py            # all cases  -> "N cases, 0 mishandled"
    python tests/hostile/replay.py --fast     # the quick subset (the pytest wrapper's)
    python tests/hostile/replay.py -k lock -v # cases whose name contains "lock", with details
    python tests/hostile/replay.py --isolate --limit 60   # each case in a process (an old build)

A case is *mishandled* when the command prints a traceback, exits with another code than the
case expects, runs past its time limit (a hang), prints more than one error line, misses the
expected words, or leaves a wrong result behind (files lost, written or half-written, wrong
modes).  Most cases run in this process (``nasfcos.cli.main.main``); the ones about the
process itself (stdout on /dev/full, a closed pipe, a second process owning a folder) run
``python -m nasfcos`` in a subprocess.  The summary counts cases per class.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PY = [sys.executable, "-m", "nasfcos"]
HOLD = ("import sys, time\nfrom nasfcos.io import folder_lock\n"
        "with folder_lock(sys.argv[1], 'train'):\n    print('held', flush=True)\n    time.sleep(120)\n")


@dataclass
class Case:
    """One recorded bad case: ``setup(tmp)`` builds its files and returns the argv (``{tmp}``
    is replaced), ``expect`` the exit codes that are right, ``words`` what the error must say,
    ``after(tmp)`` a problem left behind (or None)."""

    name: str
    cls: str  # data loss | silent wrong result | hang/exhaustion | traceback | misleading error
    argv: list[str]
    expect: tuple[int, ...] = (2,)
    words: str | None = None
    setup: Callable[[Path], None] | None = None
    after: Callable[[Path], str | None] | None = None
    subprocess: bool = False
    stdout: str | None = None  # subprocess stdout: "full" (/dev/full) or "closed"
    patch: Callable[[], contextlib.AbstractContextManager[Any]] | None = None
    fast: bool = False
    limit_s: float = 300.0
    slow_success: bool = False  # the limit binds a failure only: success may take longer
    round: int = 25
    notes: list[str] = field(default_factory=list)


# -- shared fixtures (built once per replay) -----------------------------------------------------

_CACHE: dict[str, Path] = {}


def _shared() -> Path:
    if "root" not in _CACHE:
        import atexit
        import shutil

        _CACHE["root"] = Path(tempfile.mkdtemp(prefix="nasfcos-replay-"))
        atexit.register(shutil.rmtree, _CACHE["root"], True)
    return _CACHE["root"]


def tiny_model() -> Path:
    """nas_fcos_fpn on the tiny trunk, 32/64 wide, 5 classes, as a detector."""
    path = _shared() / "model.py"
    if not path.exists():
        from nasfcos.compiler import CompileOptions, compile_genotype
        from nasfcos.genotypes import load_paper_genotype

        opts = CompileOptions(fpn_channels=32, head_channels=64, num_classes=5, detector=True, backbone="tiny")
        path.write_text(compile_genotype(load_paper_genotype("nas_fcos_fpn"), opts))
    return path


def synth() -> Path:
    path = _shared() / "synth"
    if not path.exists():
        from nasfcos.fcos.synth import SynthConfig, write_synthetic

        write_synthetic(path, SynthConfig(images=6, size=64, seed=3))
    return path


def release_checkpoint(edit: Callable[[dict[str, Any]], None] | None = None, name: str = "c.pth") -> Path:
    """A synthetic Mobile_NAS_head release checkpoint (the golden tests' weight rule)."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location(
        "_golden", ROOT / "tests" / "compiler" / "test_release_golden.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    ckpt = mod.fake_checkpoint("Mobile_NAS_head")
    if edit is not None:
        edit(ckpt)
    path = _shared() / name
    torch.save(ckpt, path)
    return path


def _coco_copy(tmp: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    import shutil

    shutil.copytree(synth(), tmp / "d")
    doc = json.loads((tmp / "d" / "val.json").read_text())
    edit(doc)
    (tmp / "d" / "val.json").write_text(json.dumps(doc))


def _weights_with(meta: dict[str, Any]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        import torch

        from nasfcos.modelfile import load_model_file

        state = load_model_file(tiny_model()).build(num_classes=5).state_dict()
        torch.save({"model": state, **meta}, tmp / "w.pt")
    return setup


def _nothing_in(*names: str) -> Callable[[Path], str | None]:
    def after(tmp: Path) -> str | None:
        for n in names:
            if (tmp / n).exists():
                return f"{n} was written"
        return None
    return after


# -- this round's cases (issue 25) -------------------------------------------------------------

def _dup_ids(doc: dict[str, Any]) -> None:
    doc["annotations"].append(dict(doc["annotations"][0], bbox=[0, 0, 5, 5]))


def _no_usable(doc: dict[str, Any]) -> None:
    for a in doc["annotations"]:
        a["bbox"] = [1, 1, 0, 3]


def _inf_weight(ckpt: dict[str, Any]) -> None:
    import torch

    key = "module.decoder.fpn.top_blocks.p6.weight"
    t = ckpt["model"][key].to(torch.float64).clone()
    t[0, 0, 0, 0] = 1e300
    ckpt["model"][key] = t


@contextlib.contextmanager
def _full_disk_after_model_py() -> Iterator[None]:
    import nasfcos.compiler.release as release

    real = release.atomic_write_bytes

    def full(path: Any, data: bytes) -> Path:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    release.atomic_write_bytes = full
    try:
        yield
    finally:
        release.atomic_write_bytes = real


def _hold(folder: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the installed nasfcos owns it
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp / folder)], stdout=subprocess.PIPE, text=True,
                                env=env)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        _HOLDERS.append(proc)
    return setup


_HOLDERS: list[subprocess.Popen[str]] = []


def _stale_lock(tmp: Path) -> None:
    (tmp / ".d.nasfcos-lock").write_text(json.dumps({"pid": 2**22 + 7, "host": "h", "verb": "search"}))


def _modes(tmp: Path) -> str | None:
    mask = os.umask(0o022)
    os.umask(mask)
    for p in (tmp / "d").rglob("*"):
        if p.is_file() and stat.S_IMODE(p.stat().st_mode) != 0o666 & ~mask:
            return f"{p.name} has mode {oct(stat.S_IMODE(p.stat().st_mode))}"
    return None if not (tmp / ".d.nasfcos-lock").exists() else "the lock file was left behind"


def _search_ckpt(state: dict[str, Any]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        from nasfcos.cli.main import main

        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert main(["search", "--preset", "toy", "--trials", "2", "--batch-size", "2",
                         "--out", str(tmp / "s"), "-q"]) == 0
        from nasfcos.search.archive import save_checkpoint

        save_checkpoint(tmp / "s" / "checkpoint.pt", state)
    return setup


def _nan_trunk(tmp: Path) -> None:
    import torch

    from nasfcos.fcos.train import backbone_state_dict
    from nasfcos.modelfile import load_model_file

    state = backbone_state_dict(load_model_file(tiny_model()).build(num_classes=5))
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = torch.full_like(state[key], float("nan"))
    torch.save(state, tmp / "trunk.pt")


def _deep(name: str, depth: int) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_text("[" * depth + "]" * depth)
    return setup


def _mkdir(name: str) -> Callable[[Path], None]:
    return lambda tmp: (tmp / name).mkdir(parents=True)


M, D = "{model}", "{synth}"
PROC_OUTPUTS = [
    ["draw", "nas_fcos_fpn", "-o", "/proc/x.png"], ["profile", M, "-o", "/proc/x.json"],
    ["eval", M, "--data", D, "-o", "/proc/m.json"], ["export", M, "-o", "/proc/m.onnx"],
    ["check", M, "-o", "/proc/c.json"], ["bench", M, "-o", "/proc/b"],
    ["train", M, "--data", D, "--iters", "1", "--out", "/proc/r"], ["data", "synth", "-o", "/proc/d"],
    ["demo", "-o", "/proc/demo"], ["search", "--preset", "toy", "--trials", "2", "--out", "/proc/s"],
    ["search", "top", "{tmp}", "-o", "/proc/top"], ["data", "voc2coco", "{tmp}", "-o", "/proc/v.json"],
    ["import-release", "{tmp}/x.pth", "--config", "Mobile_NAS_head", "-o", "/sys/imp"],
    ["predict", M, "{tmp}/x.png", "-o", "/sys/kernel/p"],
]


def round25() -> list[Case]:
    cases = [
        Case("lock: data synth into a folder another run owns", "data loss",
             ["data", "synth", "-o", "{tmp}/d", "--images", "2", "--size", "32"], words="in use by 'nasfcos train'",
             setup=_hold("d"), after=_nothing_in("d")),
        Case("lock: search into a folder another run owns", "data loss",
             ["search", "--preset", "toy", "--trials", "2", "--out", "{tmp}/s"], words="in use by",
             setup=_hold("s"), after=_nothing_in("s")),
        Case("lock: train into a folder another run owns", "data loss",
             ["train", M, "--data", D, "--iters", "1", "--out", "{tmp}/r"], words="in use by",
             setup=_hold("r"), after=_nothing_in("r")),
        Case("lock: import-release into a folder another run owns", "data loss",
             ["import-release", "{ckpt}", "--config", "Mobile_NAS_head", "-o", "{tmp}/i"], words="in use by",
             setup=_hold("i"), after=_nothing_in("i")),
        Case("lock: a dead owner's lock is taken over", "data loss",
             ["data", "synth", "-o", "{tmp}/d", "--images", "2", "--size", "32"], expect=(0,),
             words="taking over the stale lock", setup=_stale_lock, after=_modes, fast=True),
        Case("import-release on a full disk leaves nothing", "data loss",
             ["import-release", "{ckpt}", "--config", "Mobile_NAS_head", "-o", "{tmp}/i"], words="No space left",
             patch=_full_disk_after_model_py, after=lambda t: None if not any(t.iterdir()) else
             f"left {sorted(p.name for p in t.iterdir())}"),
        Case("import-release float64 1e300 -> inf weights", "silent wrong result",
             ["import-release", "{ckpt_inf}", "--config", "Mobile_NAS_head", "-o", "{tmp}/i"],
             words="non-finite", after=_nothing_in("i")),
        Case("duplicate COCO annotation ids", "silent wrong result",
             ["eval", M, "--data", "{tmp}/d", "--min-size", "64", "--max-size", "64", "-q"],
             words="share an id", setup=lambda t: _coco_copy(t, _dup_ids), fast=True),
        Case("eval on a set whose every box is invalid", "silent wrong result",
             ["eval", M, "--data", "{tmp}/d", "--min-size", "64", "--max-size", "64", "-q"],
             words="no usable box", setup=lambda t: _coco_copy(t, _no_usable)),
        Case("atomic writes honour the umask", "silent wrong result",
             ["data", "synth", "-o", "{tmp}/d", "--images", "2", "--size", "32", "-q"], expect=(0,), after=_modes),
        Case("--threads 10000", "hang/exhaustion", ["bench", M, "--threads", "10000"], words="threads"),
        Case("5,000-deep YAML", "hang/exhaustion", ["compile", "{tmp}/deep.yaml", "-o", "{tmp}/m.py"],
             words="nested too deeply", setup=_deep("deep.yaml", 5000)),
        Case("100,000-deep COCO JSON", "hang/exhaustion", ["eval", M, "--data", "{tmp}/d", "-q"],
             words="not a valid COCO", setup=lambda t: (_deep("d/val.json", 100_000)(t), (t / "d" / "images").mkdir())),
        Case("100,000-deep search settings", "hang/exhaustion", ["search", "--out", "{tmp}/s", "--resume"],
             words="unreadable search settings", setup=_deep("s/search.json", 100_000)),
        Case("ENAMETOOLONG output", "traceback", ["compile", "nas_fcos_fpn", "-o", "{tmp}/" + "n" * 300 + ".py"],
             words="too long", fast=True),
        Case("stdout on /dev/full", "traceback", ["validate", "nas_fcos_fpn"], words="stdout: No space left",
             subprocess=True, stdout="full"),
        Case("stdout a closed pipe", "traceback", ["validate", "nas_fcos_fpn"], expect=(141,), words="broken pipe",
             subprocess=True, stdout="closed"),
        Case("a folder named like the manifest path", "traceback", ["export", M, "-o", "{tmp}/m.onnx", "-q"],
             words="m.onnx.json: is a directory", setup=_mkdir("m.onnx.json"), after=_nothing_in("m.onnx")),
        Case("weights metadata min_size 'abc'", "traceback", ["eval", M, "--weights", "{tmp}/w.pt", "--data", D],
             words="'min_size' must be", setup=_weights_with({"min_size": "abc"}), fast=True),
        Case("weights metadata cat_ids ['x']", "traceback",
             ["predict", M, "{synth}/images/000000.png", "--weights", "{tmp}/w.pt", "-o", "{tmp}/p"],
             words="'cat_ids' must be", setup=_weights_with({"cat_ids": ["x"]})),
        Case("search checkpoint step 'two'", "traceback", ["search", "--out", "{tmp}/s", "--resume", "-q"],
             words="'step' must be an integer", setup=_search_ckpt({"step": "two"})),
        Case("a refused pickle in a search checkpoint", "traceback", ["search", "--out", "{tmp}/s", "--resume", "-q"],
             words="unreadable checkpoint", setup=_search_ckpt({"step": 1, "hook": print})),
        Case("search latency-table with a 32-wide head (fails at once or works)", "traceback",
             ["search", "latency-table", "--size", "64", "--head-channels", "32", "--runs", "1", "--warmup", "0",
              "-o", "{tmp}/t.json", "-q"], expect=(0, 2), limit_s=180, slow_success=True),
        Case("search --resume on a missing folder", "misleading error", ["search", "--out", "{tmp}/nope", "--resume"],
             words="no such search folder to resume", fast=True),
        Case("NaN in --backbone-weights", "misleading error",
             ["train", M, "--data", D, "--out", "{tmp}/r", "--iters", "1", "--backbone-weights", "{tmp}/trunk.pt",
              "--no-progress", "--no-eval"], words="non-finite", setup=_nan_trunk),
    ]
    for argv in PROC_OUTPUTS:
        cases.append(Case(f"as root, {argv[0]}{' ' + argv[1] if argv[0] in ('data', 'search') else ''} "
                          f"writing under {argv[argv.index('-o') + 1] if '-o' in argv else argv[-1]}",
                          "traceback", argv, words="cannot create files in",
                          setup=lambda t: ((t / "x.pth").write_bytes(b"PK"), (t / "x.png").write_bytes(b"")),
                          fast=argv[0] in ("draw", "data")))
    return cases


# -- the last round's cases (issue 16, tests/cli/test_hostile_cli.py) ------------------------

def _fifo(tmp: Path) -> None:
    os.mkfifo(tmp / "pipe.json")


def round16() -> list[Case]:
    cases = []
    for verb in ("compile", "draw", "profile", "export", "check", "bench", "eval"):
        argv = [verb, "{tmp}/pipe.json"] + (["-o", "{tmp}/o.py"] if verb in ("compile", "draw") else [])
        cases.append(Case(f"{verb} on a FIFO", "hang/exhaustion", argv, words="FIFO", setup=_fifo, round=16,
                          limit_s=60, fast=verb == "compile"))
    for argv in (["compile", "nas_fcos_fpn_head", "-o", "{tmp}/f/m.py"], ["data", "synth", "-o", "{tmp}/f/s"],
                 ["search", "--preset", "toy", "--trials", "8", "-o", "{tmp}/f/s"],
                 ["train", M, "-o", "{tmp}/f/run", "--iters", "1"]):
        cases.append(Case(f"{argv[0]} output under a file", "traceback", argv, words="not a directory",
                          setup=lambda t: (t / "f").write_text("x"), round=16))
    for argv, words in ((["compile", "nas_fcos_fpn_head", "--fpn-channels", "7"], "odd"),
                        (["check", M, "--atol", "nan"], "--atol"), (["bench", M, "--sizes", "600,0"], "--sizes"),
                        (["train", M, "-o", "{tmp}/r", "--lr", "0"], "--lr"),
                        (["search", "-o", "{tmp}/s", "--toy-noise", "nan"], "--toy-noise"),
                        (["compile", "nas_fcos_fpn_head", "-o", "/dev/null"], "not a regular file")):
        cases.append(Case(f"{' '.join(argv[:1] + argv[-2:])}", "misleading error", argv, words=words, round=16,
                          fast=argv[0] == "compile"))
    return cases


def all_cases() -> list[Case]:
    return round25() + round16()


# -- running and judging ------------------------------------------------------------------

def _fill(argv: list[str], tmp: Path) -> list[str]:
    subst = {"{tmp}": str(tmp), "{model}": str(tiny_model()), "{synth}": str(synth())}
    if any("{ckpt}" in a for a in argv):
        subst["{ckpt}"] = str(_CACHE.setdefault("ckpt", release_checkpoint()))
    if any("{ckpt_inf}" in a for a in argv):
        subst["{ckpt_inf}"] = str(_CACHE.setdefault("ckpt_inf", release_checkpoint(_inf_weight, "inf.pth")))
    out = []
    for a in argv:
        for k, v in subst.items():
            a = a.replace(k, v)
        out.append(a)
    return out


def _run_inproc(case: Case, argv: list[str]) -> tuple[int, str]:
    import warnings

    from nasfcos.cli.main import main

    err, out = io.StringIO(), io.StringIO()
    patch = case.patch() if case.patch else contextlib.nullcontext()
    with patch, contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 2
        except BaseException as exc:  # noqa: BLE001 - a traceback is what the replay looks for
            import traceback

            rc = -1
            err.write("Traceback (most recent call last):\n" + "".join(traceback.format_exception(exc)))
    return rc, err.getvalue()


def _run_subprocess(case: Case, argv: list[str]) -> tuple[int, str]:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    if case.stdout == "full":
        with open("/dev/full", "w") as full:
            r = subprocess.run(PY + argv, stdout=full, stderr=subprocess.PIPE, text=True, timeout=case.limit_s,
                               env=env)
        return r.returncode, r.stderr
    proc = subprocess.Popen(PY + argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    if case.stdout == "closed":
        proc.stdout.close()
    err = proc.stderr.read()
    return proc.wait(case.limit_s), err


def judge(case: Case, rc: int, err: str, seconds: float, tmp: Path) -> str | None:
    """Why ``case`` was mishandled, or None."""
    if "Traceback" in err:
        return "traceback: " + err.strip().splitlines()[-1][:160]
    if rc not in case.expect:
        return f"exit {rc}, expected {case.expect}: {err.strip()[-200:]}"
    if seconds > case.limit_s and not (rc == 0 and case.slow_success):
        return f"took {seconds:.0f} s (limit {case.limit_s:.0f} s)"
    lines = err.strip().splitlines()
    errors = [ln for ln in lines if ": error:" in ln]
    if rc != 0 and (len(errors) != 1 or ": error:" not in lines[-1]):  # one line, nothing after it
        return f"{len(errors)} error lines, the error not last: {err.strip()[-200:]}"
    if case.words and case.words not in err:
        return f"the message does not say {case.words!r}: {err.strip()[-200:]}"
    if case.after is not None:
        return case.after(tmp)
    return None


def replay(cases: list[Case], verbose: bool = False) -> tuple[int, list[tuple[Case, str]]]:
    bad: list[tuple[Case, str]] = []
    for case in cases:
        with tempfile.TemporaryDirectory(prefix="case-", dir=_shared()) as d:
            tmp = Path(d)
            problem: str | None
            try:
                if case.setup is not None:
                    case.setup(tmp)
                argv = _fill(case.argv, tmp)
                t0 = time.perf_counter()
                if case.subprocess:
                    rc, err = _run_subprocess(case, argv)
                else:
                    rc, err = _run_inproc(case, argv)
                problem = judge(case, rc, err, time.perf_counter() - t0, tmp)
            except subprocess.TimeoutExpired:
                problem = f"hang: still running after {case.limit_s:.0f} s"
            except Exception as exc:  # noqa: BLE001 - a case that cannot be set up is reported
                problem = f"setup failed: {type(exc).__name__}: {str(exc)[:120]}"
            finally:
                while _HOLDERS:
                    p = _HOLDERS.pop()
                    p.send_signal(signal.SIGKILL)
                    p.wait()
        _record(bad, case, problem, verbose)
    return len(cases), bad


def _record(bad: list[tuple[Case, str]], case: Case, problem: str | None, verbose: bool) -> None:
    """Note one case's outcome (a mishandled case joins ``bad``), printing it with -v."""
    if problem is not None:
        bad.append((case, problem))
    if verbose:
        print(f"{'MISHANDLED' if problem else 'ok        '} [{case.round}] {case.cls}: {case.name}"
              + (f"\n    {problem}" if problem else ""), flush=True)


def replay_isolated(cases: list[Case], limit_s: float | None, verbose: bool) -> tuple[int, list[tuple[Case, str]]]:
    """:func:`replay` with each case in its own process, killed after its limit (a hang)."""
    bad: list[tuple[Case, str]] = []
    for case in cases:
        limit = limit_s or case.limit_s
        try:
            r = subprocess.run([sys.executable, __file__, "--one", case.name], capture_output=True, text=True,
                               timeout=limit + 120)  # + the shared fixtures' set-up
            problem = None if r.returncode == 0 else (r.stdout.strip().splitlines() or [r.stderr[-200:]])[-1]
        except subprocess.TimeoutExpired:
            problem = f"hang: still running after {limit:.0f} s"
        _record(bad, case, problem, verbose)
    return len(cases), bad


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--fast", action="store_true", help="only the quick subset")
    p.add_argument("-k", default=None, help="only cases whose name contains this")
    p.add_argument("--skip", default=None, help="leave out cases whose name contains this")
    p.add_argument("-v", "--verbose", action="store_true", help="one line per case")
    p.add_argument("--isolate", action="store_true",
                   help="each case in its own process, killed at its time limit (for a build that may hang)")
    p.add_argument("--limit", type=float, default=None, help="with --isolate: seconds per case")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one is not None:
        (case,) = [c for c in all_cases() if c.name == args.one]
        _, bad = replay([case])
        print(bad[0][1] if bad else "ok")
        return 1 if bad else 0
    cases = [c for c in all_cases() if (not args.fast or c.fast) and (args.k is None or args.k in c.name)
             and (args.skip is None or args.skip not in c.name)]
    n, bad = replay_isolated(cases, args.limit, args.verbose) if args.isolate else replay(cases, args.verbose)
    by_class = Counter(c.cls for c in cases)
    bad_class = Counter(c.cls for c, _ in bad)
    for cls in sorted(by_class):
        print(f"  {cls}: {by_class[cls]} cases, {bad_class[cls]} mishandled")
    for case, problem in bad:
        print(f"MISHANDLED [{case.round}] {case.name}: {problem}")
    print(f"{n} cases, {len(bad)} mishandled")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
