"""Hostile inputs, round 3 (issue 25): runs that share a folder, file modes, output checks by a
probe write, and errors of the machine (full disk or stdout, closed pipe, long names) as one
line."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from nasfcos.cli.main import main
from nasfcos.errors import NasfcosError
from nasfcos.io import atomic_write_text, folder_lock, staged_folder

NASFCOS = [sys.executable, "-m", "nasfcos"]
HOLD = ("import sys, time\nfrom nasfcos.io import folder_lock\n"
        "with folder_lock(sys.argv[1], 'train'):\n    print('held', flush=True)\n    time.sleep(60)\n")


def _holder(folder: Path) -> subprocess.Popen[str]:
    """A second process that owns ``folder`` until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _one_line(err: str, verb: str) -> str:
    err = err.strip()
    assert err.startswith(f"nasfcos {verb}: error:") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("argv", [
    ["data", "synth", "-o", "{out}", "--images", "2", "--size", "32"],
    ["import-release", "{ckpt}", "--config", "Mobile_NAS_head", "-o", "{out}"],
    ["search", "--preset", "toy", "--trials", "2", "--out", "{out}"],
])
def test_a_folder_owned_by_another_process_is_refused_naming_the_owner(
        argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, ckpt = tmp_path / "out", tmp_path / "c.pth"
    ckpt.write_bytes(b"PK")
    proc = _holder(out)
    try:
        rc = main([a.format(out=out, ckpt=ckpt) for a in argv])
        err = _one_line(capsys.readouterr().err, argv[0])
    finally:
        proc.kill()
        proc.wait()
    assert rc == 2 and f"pid {proc.pid}" in err and "'nasfcos train'" in err, err
    assert not out.exists()


def test_the_lock_is_released_and_a_dead_owner_is_taken_over(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    proc = _holder(out)
    proc.send_signal(signal.SIGKILL)  # kill -9 leaves the lock file, not the lock
    proc.wait()
    assert [p.name for p in tmp_path.iterdir()] == [".run.nasfcos-lock"]
    assert main(["data", "synth", "-o", str(out), "--images", "2", "--size", "32", "-q"]) == 0
    err = capsys.readouterr().err
    assert f"taking over the stale lock of {out}" in err and f"pid {proc.pid}" in err, err
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # the lock went with the run
    with folder_lock(out, "a"), folder_lock(out, "a"):  # nested in one process: one lock
        pass
    with folder_lock(tmp_path / "new" / "deeper" / "x", "a"):
        pass
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # folders made for the lock removed


def test_two_concurrent_data_runs_one_wins(tmp_path: Path) -> None:
    """Two real processes race for one folder: exactly one writes, the other fails in one line."""
    out = tmp_path / "d"
    argv = NASFCOS + ["data", "synth", "-o", str(out), "--images", "40", "--size", "64", "-q"]
    procs = [subprocess.Popen(argv, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(60), p.stderr.read() if p.stderr else "") for p in procs]
    codes = sorted(rc for rc, _ in results)
    if codes == [0, 0]:  # the first finished before the second started: still one writer at a time
        pytest.skip("the runs did not overlap on this machine")
    assert codes == [0, 2], results
    err = next(e for rc, e in results if rc == 2)
    assert "in use by 'nasfcos data'" in _one_line(err, "data")
    assert json.loads((out / "manifest.json").read_text())["counts"]["train"]["images"] > 0


def test_staged_folder_is_all_or_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), staged_folder(tmp_path / "a") as tmp:
        (tmp / "f").write_text("x")
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "b").mkdir()
    with staged_folder(tmp_path / "b") as tmp:
        (tmp / "f").write_text("x")
    assert [p.name for p in tmp_path.iterdir()] == ["b"] and (tmp_path / "b" / "f").read_text() == "x"


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_writes_honour_the_umask(mask: int, tmp_path: Path) -> None:
    old = os.umask(mask)
    try:
        atomic_write_text(tmp_path / "f.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o666 & ~mask


@pytest.mark.parametrize("argv", [
    ["compile", "nas_fcos_fpn", "-o", "/proc/m.py"],
    ["compile", "nas_fcos_fpn", "-o", "/sys/kernel/m.py"],
    ["data", "synth", "-o", "/proc/x", "--images", "1"],
    ["data", "synth", "-o", "/sys", "--images", "1"],
    ["compile", "nas_fcos_fpn", "-o", "{tmp}/" + "n" * 300 + ".py"],
    ["data", "synth", "-o", "{tmp}/" + "d" * 300 + "/sub"],
])
def test_outputs_are_checked_by_a_probe_write(argv: list[str], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """As root ``os.access`` calls /proc and /sys writable; a probe file tells the truth."""
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = _one_line(capsys.readouterr().err, argv[0])
    assert "cannot create files in" in err or "too long" in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [["validate", "nas_fcos_fpn"], ["export", "--help"]])
def test_a_full_stdout_is_one_line(argv: list[str]) -> None:
    """A result or a --help (argparse drops a failed write of its own) lost to a full stdout."""
    with open("/dev/full", "w") as full:
        r = subprocess.run(NASFCOS + argv, stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert r.returncode == 2 and "stdout: No space left on device" in _one_line(r.stderr, argv[0])


def test_a_closed_pipe_is_one_line() -> None:
    proc = subprocess.Popen(NASFCOS + ["validate", "nas_fcos_fpn"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # like `nasfcos ... | head -0`: the reader is gone before the first line
    err = proc.stderr.read()
    assert proc.wait(120) == 141, err
    assert "broken pipe" in _one_line(err, "validate")


def test_environment_errors_during_work_are_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import errno

    for code in (errno.ENOSPC, errno.EROFS, errno.ENOTDIR, errno.ENAMETOOLONG):
        def fail(*args: object, code: int = code, **kw: object) -> None:
            raise OSError(code, os.strerror(code), str(tmp_path / "x.png"))

        monkeypatch.setattr("nasfcos.genotypes.draw.draw_genotype", fail)
        rc = main(["draw", "nas_fcos_fpn", "-o", str(tmp_path / "x.png")])
        err = _one_line(capsys.readouterr().err, "draw")
        assert rc == 2 and os.strerror(code) in err and "x.png" in err, err


def test_lock_errors_are_nasfcos_errors(tmp_path: Path) -> None:
    (tmp_path / "ro").mkdir()
    proc = _holder(tmp_path / "ro" / "x")
    try:
        with pytest.raises(NasfcosError, match="in use by"), folder_lock(tmp_path / "ro" / "x", "b"):
            pass
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("verb", [["bench"], ["check"], ["search", "latency-table"], ["demo"]])
def test_threads_are_bounded_by_the_cpu_count(verb: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from nasfcos.limits import usable_cpus as cpu_count

    assert main([*verb, "--threads", "10000", "m.py"]) == 2
    err = _one_line(capsys.readouterr().err, verb[0])
    assert f"expected 1..{cpu_count()} threads" in err, err


def test_a_folder_named_like_the_manifest_is_refused_before_the_export(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.py"
    assert main(["compile", "nas_fcos_fpn", "-o", str(model), "--fpn-channels", "32"]) == 0
    (tmp_path / "m.onnx.json").mkdir()
    capsys.readouterr()
    assert main(["export", str(model), "-o", str(tmp_path / "m.onnx"), "--size", "64", "-q"]) == 2
    assert "m.onnx.json: is a directory" in _one_line(capsys.readouterr().err, "export")
    assert not (tmp_path / "m.onnx").exists()


def test_resume_of_a_missing_search_folder_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", "--out", str(tmp_path / "nope"), "--resume"]) == 2
    assert "nope: no such search folder to resume" in _one_line(capsys.readouterr().err, "search")
    assert list(tmp_path.iterdir()) == []


def test_a_latency_unit_that_cannot_run_fails_before_the_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 32-wide head at 64 px ran 3 minutes of ONNX exports, then failed with a traceback."""
    import torch

    import nasfcos.search.latency as lat

    class Broken(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.group_norm(x, 32)

    monkeypatch.setattr(lat, "unit_modules", lambda spec: {"ok": (torch.nn.Identity(), [(1, 4, 2, 2)]),
                                                           "head_op/gn/s64": (Broken(), [(1, 32, 1, 1)])})
    monkeypatch.setattr(lat, "_onnx_timer", lambda *a: pytest.fail("timed before the preflight"))
    with pytest.raises(NasfcosError, match=r"latency unit head_op/gn/s64 cannot run at 64x64") as info:
        lat.build_table(lat.TableSpec(size=(64, 64), head_channels=32))
    assert "\n" not in str(info.value)


def test_data_synth_on_a_full_disk_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import errno

    import nasfcos.fcos.synth as synth

    def full(path: object, *a: object, **k: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(synth, "atomic_write_json", full)  # images written, then the disk fills
    assert main(["data", "synth", "-o", str(tmp_path / "d"), "--images", "3", "--size", "32", "-q"]) == 2
    err = _one_line(capsys.readouterr().err, "data")
    assert "No space left" in err and f"{tmp_path / 'd'}/" in err, err
    assert list(tmp_path.iterdir()) == []  # so a retry is not refused as "holds a set"
