"""``nasfcos profile``: table, JSON, several models x backbones x widths, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nasfcos.cli.main import main as cli_main
from nasfcos.cli.profile_cmd import main
from nasfcos.errors import NasfcosError


def test_json_output_has_one_row_per_model_backbone_width(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "profile.json"
    rc = main(["nas_fcos_fpn_head", "--backbone", "tiny", "--widths", "32", "32-64", "--num-classes", "3",
               "--size", "128x160", "--baseline", "--json", "-o", str(out)])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == doc
    rows = doc["profiles"]
    assert [(r["model"], r["widths"]) for r in rows] == [
        ("fpn-fcos", "@256"), ("nas-fcos-r50-fpn-head", "@32"), ("nas-fcos-r50-fpn-head", "@32-64")]
    for r in rows:
        assert r["size"] == [128, 160] and r["backbone"] == "tiny"
        for key in ("params", "macs"):
            assert r[key]["total"] == sum(r[key][c] for c in ("backbone", "fpn", "head", "other"))
    assert rows[2]["params"]["head"] > rows[1]["params"]["head"]
    assert rows[1]["params"]["backbone"] == rows[2]["params"]["backbone"]


def test_table_output_through_the_dispatcher(capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli_main(["profile", "fpn-fcos", "--backbone", "tiny", "--fpn-channels", "32", "--size", "160x160"])
    assert rc == 0
    text = capsys.readouterr().out
    header = text.splitlines()[0].split()
    assert header[:4] == ["model", "backbone", "widths", "params(M)"] and "GMACs" in header
    assert "fpn-fcos" in text and "@32" in text and "160x160" in text


def test_bad_input_exits_with_a_one_line_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["profile", "no_such_model.py", "--backbone", "tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nasfcos profile: error:") and "\n" not in err
    with pytest.raises(NasfcosError, match="--size"):
        main(["fpn-fcos", "--size", "big"])
    with pytest.raises(NasfcosError, match="--backbone"):
        main(["fpn-fcos", "--backbone", "vgg16"])
