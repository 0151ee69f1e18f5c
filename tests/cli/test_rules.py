"""Rules live with the values (issue 22): an object refuses a bad field by name, and the
command line's type function calls that same rule, so a bad flag fails while parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from nasfcos.cli.main import main
from nasfcos.errors import FieldError


def test_momentum_is_refused_at_parse_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from nasfcos.fcos import train

    monkeypatch.setattr(train, "train", lambda *a, **k: pytest.fail("train() was reached"))
    model = tmp_path / "model.py"
    model.write_text("build = Decoder = None\n")
    for value in ("1.0", "-0.1", "nan"):
        code = main(["train", str(model), "--data", str(tmp_path), "--out", str(tmp_path / "r"),
                     "--momentum", value])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "--momentum" in err and "\n" not in err, err
    assert not (tmp_path / "r").exists()


def test_train_config_names_the_field() -> None:
    from nasfcos.fcos.train import TrainConfig

    with pytest.raises(FieldError) as err:
        TrainConfig(model="m.py", out="r", momentum=1.0).validate()
    assert err.value.field == "momentum" and "[0, 1)" in str(err.value)
    assert "--" not in str(err.value)  # library errors name fields, the CLI names flags
    with pytest.raises(FieldError, match="max_size"):
        TrainConfig(model="m.py", out="r", min_size=256, max_size=128).validate()


def test_precision_options_are_valid_once_made(tmp_path: Path) -> None:
    from nasfcos.runtime.precision import PrecisionOptions

    with pytest.raises(FieldError) as err:
        PrecisionOptions("int8", calib=tmp_path, calib_images=0)
    assert err.value.field == "calib_images" and "--" not in str(err.value)
    with pytest.raises(FieldError, match="precision"):
        PrecisionOptions("int4")
    assert PrecisionOptions("int8", data=tmp_path).calib_images == 32


@pytest.mark.parametrize(("argv", "expected"), [
    (["--rtol", "0.5"], (1e-2, 0.5)),                                # the file's fp16 atol
    (["--atol", "0.3", "--backend", "openvino:bf16"], (0.3, 5e-2)),  # the run's bf16 rtol
])
def test_check_keeps_the_other_tolerance_of_the_checked_precision(
        argv: list[str], expected: tuple[float, float], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One flag of --atol/--rtol: the other is the default of the precision the check runs at."""
    from types import SimpleNamespace

    from nasfcos.runtime import artifact, check, doctor

    seen = {}

    def fake_check(art: object, *a: object, tol: check.Tolerance, **k: object) -> None:
        seen["tol"] = (tol.atol, tol.rtol)
        raise FieldError("stop", "reached")

    monkeypatch.setattr(artifact, "open_artifact",
                        lambda p: SimpleNamespace(manifest=SimpleNamespace(precision="fp16")))
    monkeypatch.setattr(check, "check_artifact", fake_check)
    monkeypatch.setattr(doctor, "preflight_verb", lambda *a: None)
    (tmp_path / "m.onnx").write_bytes(b"x")
    assert main(["check", str(tmp_path / "m.onnx"), *argv]) == 2
    assert seen["tol"] == expected


@pytest.mark.parametrize(("argv", "shown"), [
    (["bench", "MODEL"], "--batch: "),          # bench has --batch: the error names it
    (["demo", "-o", "OUT", "--quick"], "batch: "),  # demo has none: the field, not a foreign flag
])
def test_a_field_error_names_the_flag_of_the_command_run(
        argv: list[str], shown: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from nasfcos.runtime import bench, doctor, pipeline

    def static(*a: object, **k: object) -> None:
        raise FieldError("batch", "m.onnx is a static export with batch 1, not 2")

    monkeypatch.setattr(bench, "run_benchmark", static)
    monkeypatch.setattr(pipeline, "run_pipeline", static)
    monkeypatch.setattr(doctor, "preflight_verb", lambda *a: None)
    (tmp_path / "m.onnx").write_bytes(b"x")
    argv = [{"MODEL": str(tmp_path / "m.onnx"), "OUT": str(tmp_path / "out")}.get(a, a) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"nasfcos {argv[0]}: error: {shown}m.onnx is a static export with batch 1, not 2"


def test_a_subcommand_field_error_names_the_subcommand_flag(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "synth", "-o", str(tmp_path / "d"), "--images", "1", "-q"]) == 2
    assert capsys.readouterr().err.strip() == (
        "nasfcos data: error: --images: must be at least 2 (one train, one val)")


def test_the_current_parser_is_per_thread() -> None:
    """Two commands run in threads of one process name the flags of their own command."""
    import threading

    from nasfcos.cli.args import Parser

    mine, other = Parser(prog="mine"), Parser(prog="other")
    mine.add_argument("--batch-size", dest="batch")
    mine.parse_known_args([])
    t = threading.Thread(target=lambda: other.parse_known_args([]))
    t.start()
    t.join()
    assert Parser.current.get() is mine and mine.flag("batch") == "--batch-size"
