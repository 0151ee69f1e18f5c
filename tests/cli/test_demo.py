"""``nasfcos demo`` end to end on the smallest configuration its flags allow: tiny backbone,
64-wide decoder, one 64 px size, one timed run, a static export (a dynamic export of the
detector alone takes 30-40 s on 2 shared cores; ``make demo`` runs that path)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nasfcos.cli.main import main


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    # head width 64: GroupNorm(32) needs two values per group on the 1x1 p7 of a 64 px image
    argv = ["demo", "-o", str(out), "--quick", "--backbone", "tiny", "--fpn-channels", "64",
            "--sizes", "64", "--runs", "1", "--warmup", "0", "--threads", "1",
            "--backends", "torch,onnxruntime", "--static", "--json", "-q"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)  # --json: stdout holds only the JSON
    assert "[4/4] benchmark" in captured.err and "summary:" in captured.err
    assert summary == json.loads((out / "demo.json").read_text())
    assert summary["parity"]["ok"] is True and json.loads((out / "parity.json").read_text())["ok"] is True
    assert set(summary["steps"]) == {"compile", "export", "check", "bench"}
    assert [(r["backend"], r["size"], r["status"]) for r in summary["results"]] == [
        ("torch", [64, 64], "ok"), ("onnxruntime", [64, 64], "ok")]
    assert all(r["median_ms"] > 0 for r in summary["results"])
    for path in (out / "model.py", out / "model.onnx", *map(Path, summary["report"].values())):
        assert path.is_file() and path.stat().st_size > 0
    manifest = json.loads((out / "model.onnx.json").read_text())
    assert manifest["export"]["dynamic"] is False


def test_demo_static_needs_one_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "-o", str(tmp_path / "d"), "--static", "--sizes", "64,96"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nasfcos demo: error:") and "--static needs exactly one --sizes" in err
    assert "\n" not in err and not (tmp_path / "d").exists()
