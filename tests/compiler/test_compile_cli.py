"""``nasfcos compile``: files, shipped names, JSON summary, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nasfcos.cli.compile_cmd import main
from nasfcos.cli.main import main as cli_main
from nasfcos.compiler import CompileOptions, compile_genotype
from nasfcos.errors import NasfcosError
from nasfcos.genotypes import load_paper_genotype, sample_genotype
from nasfcos.modelfile import load_model_file


def test_compile_shipped_name_writes_loadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sub" / "model.py"
    assert main(["nas_fcos_fpn_head", "-o", str(out), "--fpn-channels", "8", "--head-channels", "32",
                 "--num-classes", "3", "--in-channels", "4,6,8,10"]) == 0
    text = out.read_text()
    g = load_paper_genotype("nas_fcos_fpn_head")
    assert text == compile_genotype(g, CompileOptions(fpn_channels=8, head_channels=32, num_classes=3,
                                                       in_channels=(4, 6, 8, 10)))
    assert "wrote" in capsys.readouterr().out
    mod = load_model_file(out)
    assert mod.NUM_CLASSES == 3 and mod.GENOTYPE_HASH == g.hash()


def test_compile_file_with_json_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    g = sample_genotype(4, "dag", name="my-dag")
    src = tmp_path / "my.json"
    g.save(src)
    out = tmp_path / "m.py"
    assert main(["--genotype", str(src), "-o", str(out), "--fpn-channels", "128", "--head-channels", "256",
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["genotype"] == "my-dag" and summary["genotype_hash"] == g.hash()
    assert summary["options"]["head_channels"] == 256 and summary["options"]["fpn_channels"] == 128
    assert summary["bytes"] == len(out.read_bytes())
    assert "--head-channels 256" in out.read_text().splitlines()[5]


def test_compile_quiet_prints_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for flag in ("-q", "--quiet"):
        out = tmp_path / f"m{flag}.py"
        assert main(["nas_fcos_fpn", "-o", str(out), "--fpn-channels", "32", flag]) == 0
        assert capsys.readouterr() == ("", "") and out.is_file()
    assert main(["nas_fcos_fpn", "-o", str(tmp_path / "j.py"), "--fpn-channels", "32", "-q", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["options"]["fpn_channels"] == 32  # --json still prints


def test_compile_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nas_fcos_fpn", "-o", "-"]) == 0
    assert capsys.readouterr().out == compile_genotype(load_paper_genotype("nas_fcos_fpn"))


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["no_such_genotype.json"],
        ["nas_fcos_fpn", "--genotype", "nas_fcos_fpn"],
        ["nas_fcos_fpn", "--fpn-channels", "0"],
        ["nas_fcos_fpn", "--in-channels", "1,2,3"],
        ["nas_fcos_fpn", "--backbone", "resnet50"],
        ["nas_fcos_fpn", "--fpn-channels", "48"],  # the head's GroupNorm(32, C)
        ["nas_fcos_fpn", "--fpn-channels", "64", "--head-channels", "40"],
        ["nas_fcos_fpn", "--scoring", "sqrt"],  # detector only
    ],
)
def test_bad_input_raises_nasfcos_error(argv: list[str], tmp_path: Path) -> None:
    with pytest.raises(NasfcosError):
        main([*argv, "-o", str(tmp_path / "x.py")])
    assert not (tmp_path / "x.py").exists()


def test_invalid_genotype_file_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    doc = load_paper_genotype().to_dict()
    doc["fpn"][0]["ops"][0] = "rm -rf /"
    bad.write_text(json.dumps(doc))
    assert cli_main(["compile", str(bad), "-o", str(tmp_path / "m.py")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nasfcos compile: error:") and "fpn[0].ops[0]" in err and "\n" not in err
    assert not (tmp_path / "m.py").exists()


def test_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "example:" in capsys.readouterr().out


def test_header_regenerate_line_runs_and_reproduces_the_file(tmp_path: Path, monkeypatch) -> None:
    """The compiled file's 'regenerate with' line is a command that works when copied."""
    import shlex

    opts = CompileOptions(fpn_channels=8, head_channels=64, num_classes=3, detector=True, backbone="tiny")
    src = compile_genotype(load_paper_genotype("nas_fcos_fpn_head"), opts)
    line = src.splitlines()[5].removeprefix("#").strip()
    assert line.startswith("nasfcos compile nas_fcos_fpn_head ")
    monkeypatch.chdir(tmp_path)
    assert cli_main(shlex.split(line)[1:]) == 0
    assert (tmp_path / "model.py").read_text() == src
    # a genotype that is not shipped names a placeholder, not a file that does not exist
    other = compile_genotype(sample_genotype(3))
    assert f"nasfcos compile <genotype JSON of {sample_genotype(3).name}>" in other


def test_misspelt_genotype_suggests_the_shipped_name(capsys) -> None:
    assert cli_main(["compile", "nas_fcos_fpn_hed", "-o", "x.py"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'nas_fcos_fpn_head'?" in err and "nas_fcos_fpn, nas_fcos_fpn_head" in err
