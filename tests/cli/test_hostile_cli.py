"""Hostile inputs at the command line: one regression test per class (issue 16).

Every case must end in exit 2 with a one-line ``nasfcos VERB: error: ...`` before any
work starts: no traceback, no hang, nothing written, no code executed.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nasfcos.cli.main import main
from nasfcos.errors import GenotypeError, NasfcosError


def run_no_hang(fn: Callable[[], Any], fifo: Path, seconds: float = 30.0) -> Any:
    """``fn()`` in a thread; if it blocks (reading the FIFO), unblock it and fail."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        with contextlib.suppress(OSError):  # a writer end releases a blocked reader
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        t.join(5)
        pytest.fail(f"blocked on the FIFO {fifo}")
    if errors:
        raise errors[0]
    return result[0]


def one_line_error(capsys: pytest.CaptureFixture[str], verb: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"nasfcos {verb}: error:"), err
    assert "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.json"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("argv", [
    ["compile", "{fifo}", "-o", "{tmp}/m.py"],
    ["draw", "{fifo}", "-o", "{tmp}/a.png"],
    ["profile", "{fifo}"],
    ["export", "{fifo}"],
    ["check", "{fifo}"],
    ["bench", "{fifo}"],
    ["eval", "{fifo}"],
])
def test_special_files_are_refused_without_blocking(argv: list[str], fifo: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.format(fifo=fifo, tmp=tmp_path) for a in argv]
    assert run_no_hang(lambda: main(argv), fifo) == 2
    err = one_line_error(capsys, argv[0])
    assert "regular file" in err or "FIFO" in err or "not a" in err


def test_validate_reports_a_fifo_as_invalid(fifo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_no_hang(lambda: main(["validate", str(fifo)]), fifo) == 1
    assert "regular file" in capsys.readouterr().err


def test_model_file_on_a_fifo_is_refused_before_reading(fifo: Path) -> None:
    from nasfcos.modelfile import load_model_file

    with pytest.raises(NasfcosError, match="regular file"):
        run_no_hang(lambda: load_model_file(fifo), fifo)


@pytest.mark.parametrize("argv", [
    ["compile", "nas_fcos_fpn_head", "-o", "{dir}"],
    ["compile", "nas_fcos_fpn_head", "-o", "{file}/m.py"],
    ["draw", "nas_fcos_fpn_head", "-o", "{file}/a.png"],
    ["profile", "fpn-fcos", "-o", "{dir}"],
    ["export", "{model}", "-o", "{dir}"],
    ["export", "{model}", "-o", "{file}/m.onnx"],
    ["bench", "{model}", "-o", "{file}/report"],
    ["check", "{onnx}", "-o", "{dir}"],
    ["eval", "{model}", "-o", "{file}/x/metrics.json"],
    ["train", "{model}", "-o", "{file}/run", "--iters", "1"],
    ["data", "synth", "-o", "{file}/synth"],
    ["search", "--preset", "toy", "--trials", "8", "-o", "{file}/s"],
    ["demo", "-o", "{file}/demo"],
])
def test_output_paths_are_checked_before_any_work(argv: list[str], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "model.py"
    model.write_text("raise SystemExit('must never run')\n")
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"x")
    a_file = tmp_path / "plain.txt"
    a_file.write_text("x")
    a_dir = tmp_path / "folder"
    a_dir.mkdir()
    before = sorted(p.name for p in tmp_path.rglob("*"))
    argv = [a.format(dir=a_dir, file=a_file, model=model, onnx=onnx) for a in argv]
    verb = argv[0]
    assert main(argv) == 2
    err = one_line_error(capsys, verb)
    assert "-o" in err or "--output" in err or "directory" in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


@pytest.mark.skipif(not Path("/proc/version").is_file(), reason="no /proc")
def test_output_under_a_read_only_or_special_location(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compile", "nas_fcos_fpn_head", "-o", "/proc/version/model.py"]) == 2
    one_line_error(capsys, "compile")
    assert main(["compile", "nas_fcos_fpn_head", "-o", "/dev/null"]) == 2
    one_line_error(capsys, "compile")


@pytest.mark.parametrize("argv,needle", [
    (["compile", "nas_fcos_fpn_head", "--fpn-channels", "7"], "odd"),
    (["compile", "nas_fcos_fpn_head", "--head-channels", "7"], "odd"),
    (["compile", "nas_fcos_fpn_head", "--fpn-channels", "0"], "--fpn-channels"),
    (["export", "{model}", "--opset", "99"], "opset"),
    (["export", "{model}", "--size", "16x16"], "--size"),
    (["check", "{onnx}", "--atol", "-1"], "--atol"),
    (["check", "{onnx}", "--atol", "nan"], "--atol"),
    (["check", "{onnx}", "--device", "bogus"], "unknown device"),
    (["bench", "{model}", "--device", "cpu:0"], "unknown device"),
    (["bench", "{model}", "--sizes", "600,0"], "--sizes"),
    (["eval", "{model}", "--batch", "-1"], "--batch"),
    (["eval", "{model}", "--max-images", "-2"], "--max-images"),
    (["eval", "{model}", "--min-size", "0"], "--min-size"),
    (["train", "{model}", "-o", "{tmp}/r", "--clip-grad", "-1"], "--clip-grad"),
    (["train", "{model}", "-o", "{tmp}/r", "--lr", "0"], "--lr"),
    (["train", "{model}", "-o", "{tmp}/r", "--lr", "1e6"], "--lr"),
    (["train", "{model}", "-o", "{tmp}/r", "--min-size", "0"], "--min-size"),
    (["profile", "fpn-fcos", "--size", "800x"], "--size"),
    (["search", "-o", "{tmp}/s", "--toy-noise", "nan"], "--toy-noise"),
    (["search", "top", "{tmp}", "-k", "0"], "-k"),
])
def test_bad_values_are_one_line_errors(argv: list[str], needle: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "model.py"
    model.write_text("raise SystemExit('must never run')\n")
    (tmp_path / "model.onnx").write_bytes(b"x")
    argv = [a.format(model=model, onnx=tmp_path / "model.onnx", tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    assert needle in one_line_error(capsys, argv[0])


def test_device_cuda_without_a_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    (tmp_path / "m.onnx").write_bytes(b"x")
    assert main(["check", str(tmp_path / "m.onnx"), "--device", "cuda"]) == 2
    assert "no CUDA GPU" in one_line_error(capsys, "check")


def test_search_eval_and_cache_flags_are_one_line_errors(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    for argv, flag in ((["search", "eval", "nas_fcos_fpn", "--cache", str(tmp_path), "--seeds", "5-1"], "--seeds"),
                       (["search", "eval", "nas_fcos_fpn"], "--cache"),
                       (["search", "cache", "--out", str(tmp_path / "c"), "--crop", "0"], "--crop"),
                       (["search", "cache"], "--out")):
        assert main(argv) == 2, argv
        assert flag in one_line_error(capsys, "search"), argv
    assert not (tmp_path / "c").exists()


def test_a_name_with_a_trailing_newline_is_invalid_everywhere(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from nasfcos.genotypes import load_paper_genotype, parse_genotype

    doc = load_paper_genotype().to_dict()
    doc["name"] = "evil\n"
    with pytest.raises(GenotypeError, match="name"):
        parse_genotype(doc)
    path = tmp_path / "g.json"
    path.write_text(json.dumps(doc))
    assert main(["validate", str(path)]) == 1
    assert main(["compile", str(path), "-o", str(tmp_path / "m.py")]) == 2
    assert not (tmp_path / "m.py").exists()


def test_search_top_never_writes_a_file_name_from_a_malformed_hash(tmp_path: Path) -> None:
    from nasfcos.genotypes import load_paper_genotype

    row = {"step": 0, "index": 0, "status": "ok", "reward": 1.0, "hash": "ab\ncd" + "0" * 60,
           "genotype": load_paper_genotype().to_dict(with_meta=False)}
    (tmp_path / "archive.jsonl").write_text(json.dumps(row) + "\n")
    out = tmp_path / "top"
    rc = main(["search", "top", str(tmp_path), "-o", str(out)])
    assert rc == 2
    assert not any("\n" in p.name for p in tmp_path.rglob("*"))


def test_model_code_cannot_exit_the_process(tmp_path: Path) -> None:
    from nasfcos.modelfile import load_model_file

    bad = tmp_path / "exits.py"
    bad.write_text("import sys\nsys.exit(3)\n")
    with pytest.raises(NasfcosError, match=r"sys\.exit\(3\)"):
        load_model_file(bad)
    broken = tmp_path / "raises.py"
    broken.write_text("raise RuntimeError('boom\\nsecond line')\n")
    with pytest.raises(NasfcosError, match=r"RuntimeError: boom\)$"):
        load_model_file(broken)
    assert not [m for m in sys.modules if m.startswith("nasfcos_model_") and
                getattr(sys.modules[m], "__file__", "") in (str(bad), str(broken))]


def test_model_file_must_match_the_expected_hash(tmp_path: Path) -> None:
    from nasfcos.modelfile import load_model_file

    marker = tmp_path / "ran"
    evil = tmp_path / "model.py"
    evil.write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    with pytest.raises(NasfcosError, match="sha256"):
        load_model_file(evil, sha256="0" * 64)
    assert not marker.exists()


def test_progress_is_one_line_per_stage_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    from nasfcos.progress import LineProgress, progress_bar

    bar = progress_bar(4, desc="export", unit="step")
    assert isinstance(bar, LineProgress)  # stderr is captured: not a TTY
    for stage in ("load", "export", "check", "write"):
        bar.update(1)
        bar.set_postfix_str(stage)
    bar.close()
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == "export: 1/4 step (load)" and lines[-1] == "export: 4/4 step (write)"
    assert len(lines) == 5
    assert progress_bar(4, desc="x", enabled=False) is None


def test_python_dash_m_and_help_examples(capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Every verb's --help has examples and fits the terminal: only an example command (kept
    on one line, to be copied) may be wider."""
    from nasfcos.cli.main import VERBS

    monkeypatch.setenv("COLUMNS", "100")
    for verb in VERBS:
        with pytest.raises(SystemExit) as info:
            main([verb, "--help"])
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert "example" in out, verb
        wide = [line for line in out.splitlines()
                if len(line) > 98 and not line.lstrip().startswith("nasfcos ")]
        assert not wide, (verb, wide)


def test_model_constructor_cannot_exit_the_process(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A model file whose constructor calls sys.exit: one-line error in every verb family."""
    from nasfcos.fcos.train import build_detector
    from nasfcos.modelfile import load_model_file
    from nasfcos.runtime.models import load_model

    path = tmp_path / "model.py"
    path.write_text("import sys\n"
                    "class Decoder:\n    def __init__(self, **kw):\n        sys.exit(3)\n"
                    "class Detector(Decoder):\n    pass\n"
                    "def build(**kw):\n    return Detector(**kw)\n")
    with pytest.raises(NasfcosError, match=r"sys\.exit\(3\)"):
        load_model(path)
    with pytest.raises(NasfcosError, match=r"sys\.exit\(3\)"):
        build_detector(load_model_file(path), 3)
    assert main(["profile", str(path), "--backbone", "tiny"]) == 2
    one_line_error(capsys, "profile")
