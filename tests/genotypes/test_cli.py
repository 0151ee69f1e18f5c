"""``nasfcos validate`` / ``draw`` / ``--version`` through the real entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from nasfcos.cli.main import main
from nasfcos.genotypes import load_paper_genotype


def test_validate_ok_and_bad(tmp_path: Path, capsys) -> None:
    good = load_paper_genotype().save(tmp_path / "good.json")
    bad = tmp_path / "bad.json"
    doc = load_paper_genotype().to_dict()
    doc["fpn"][3]["inputs"][1] = 11
    bad.write_text(json.dumps(doc))
    assert main(["validate", str(good)]) == 0
    assert main(["validate", str(good), str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{bad}: invalid: fpn[3].inputs[1]: index 11 is not in the pool (0..6 available at block 4)"]
    assert main(["validate", "--json", str(good), str(bad)]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["valid"] is False
    assert [f["valid"] for f in out["files"]] == [True, False]
    assert out["files"][0]["hash"] == load_paper_genotype().hash()


def test_draw_writes_an_image(tmp_path: Path, capsys) -> None:
    out = tmp_path / "arch.png"
    assert main(["draw", "nas_fcos_fpn_head", "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 20_000
    assert main(["draw", "nas_fcos_fpn_head", "-o", str(tmp_path / "arch.txt")]) == 2
    assert "must end in .png" in capsys.readouterr().err


def test_entry_point_version_and_errors(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("nasfcos")
    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and r.stdout.startswith("nasfcos ")
    r = subprocess.run([str(exe), "frobnicate"], capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "unknown verb 'frobnicate'" in r.stderr
    r = subprocess.run([str(exe), "draw", str(tmp_path / "nope.json")], capture_output=True, text=True, check=False)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "no such file" in r.stderr
