"""Docs that work when copied (issue 26): the README's Python API examples run as written, and
every command the README and the verbs' ``--help`` examples show runs, on tiny models.

Commands are taken from the documents themselves (README ``bash`` blocks and verb table,
each verb's ``--help`` epilog), so a new or edited example is tested without editing this
file.  Each runs with its sizes scaled down (:data:`SHRINK`: tiny backbone, 96-128 px, a few
iterations); the commands that cannot run here are listed in :data:`NOT_HERE` with the
reason, and the test fails on a listed command that no longer appears (the list stays honest).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from nasfcos.cli.main import VERBS
from nasfcos.cli.main import main as cli

README = Path(__file__).resolve().parents[2] / "README.md"

#: Commands (by a unique part of their text) that need what this machine has not, and why.
NOT_HERE: dict[str, str] = {
    "--trt": "TensorRT and an NVIDIA GPU",
    "--device cuda": "an NVIDIA GPU",
    "torch,onnxruntime,tensorrt": "TensorRT",
    "model.engine": "a TensorRT engine",
    "--gpu": "an NVIDIA GPU",
    "openvino": "the [openvino] extra (not installed in the test environment)",
    "nasfcos search": "a search (minutes: tests/search runs it)",
    "nasfcos demo": "the full demo (tests/cli/test_demo.py runs it)",
    "VOCdevkit": "a PASCAL VOC download (tests/fcos covers voc2coco)",
    "R-50-NAS-head.pth": "the authors' real checkpoint (the README's test checkpoint is run)",
    "mbv2/": "exporting the imported width-256 MobileNetV2 model (minutes on a shared CPU; "
             "its import runs here, tests/compiler checks the imported model)",
    "mbv2-NAS.pth": "the authors' real checkpoint",
    "r50_head/": "the authors' real checkpoint",
    "R_50_NAS_head.yaml": "the release's config files",
    "my_search/": "a search's output",
    "--backbone mobilenet_v2": "a MobileNetV2 profile (minutes on CPU)",
    "nas_fcos_fpn nas_fcos_fpn_head --widths": "a multi-line profile sweep",
}

#: Flag values scaled down so that every command runs in seconds on the tiny models.
SHRINK: list[tuple[str, str]] = [
    (r"--backbone \S+", "--backbone tiny"),
    (r"--size \d+x\d+", "--size 128x128"),
    (r"--sizes [\dx,]+", "--sizes 128"),
    (r"--(min|opt|max) \d+x\d+", ""),
    (r"--iters \d+", "--iters 2"),
    (r"--calib-images \d+", "--calib-images 4"),
    (r"--runs \d+", "--runs 2"),
    (r"--warmup \d+", "--warmup 1"),
    (r"--threads \d+", "--threads 1"),
    (r"--fpn-channels \d+", "--fpn-channels 8"),
    (r"--head-channels \d+", "--head-channels 64"),
    (r"--size 128\b", "--size 64"),
]


def readme_commands() -> list[str]:
    text = README.read_text()
    # inline code: whole commands only (an output named, no placeholder such as DIR or ...)
    cmds = [c for c in re.findall(r"`(nasfcos [^`]+)`", text)
            if " -o " in c and "..." not in c and not re.search(r"(^| )[A-Z]{2,}", c)]
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].split(" > ")[0].strip().removeprefix(".venv/bin/")
            if line.startswith("nasfcos "):
                cmds.append(line)
    return cmds


def help_commands(capsys: pytest.CaptureFixture[str]) -> list[str]:
    cmds = []
    for verb in VERBS:
        with pytest.raises(SystemExit) as info:
            cli([verb, "--help"])
        assert info.value.code in (0, None)
        text = capsys.readouterr().out.split("example", 1)[-1]
        for line in text.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].split(" > ")[0].strip()
            if line.startswith("nasfcos "):
                cmds.append(line)
    return cmds


def _shrink(cmd: str) -> str:
    for pattern, repl in SHRINK:
        cmd = re.sub(pattern, repl, cmd)
    if cmd.startswith("nasfcos compile") and "--detector" in cmd and "tiny" not in cmd:
        cmd += " --backbone tiny"
    if cmd.startswith("nasfcos compile") and "--fpn-channels" not in cmd:
        cmd += " --fpn-channels 8 --head-channels 64"
    if cmd.startswith(("nasfcos train", "nasfcos eval", "nasfcos predict")) and "--min-size" not in cmd:
        cmd += " --min-size 64 --max-size 64"
    if cmd.startswith("nasfcos train"):
        cmd = re.sub(r"--batch \d+", "", cmd) + " --batch 2 --workers 0 --no-eval"
        if "--iters" not in cmd:
            cmd += " --iters 2"
    if cmd.startswith("nasfcos data synth"):  # enough train images for int8's 32 calibration
        cmd = re.sub(r"--images \d+", "", cmd) + " --images 48 --force"  # ones; rerun: --force
    if cmd.startswith("nasfcos bench") and "--runs" not in cmd:
        cmd += " --runs 2 --warmup 1"
    if cmd.startswith("nasfcos bench") and "--precisions" not in cmd and "--sizes" not in cmd:
        cmd += " --sizes 128"
    if cmd.startswith("nasfcos export") and "--size" not in cmd:
        cmd += " --size 128x128"
    if cmd.startswith("nasfcos check") and "--sizes" in cmd and "--dynamic" not in cmd:
        cmd = re.sub(r"--sizes \S+", "", cmd)  # a static tiny export runs at its own size
    if cmd.startswith("nasfcos profile") and "--size" not in cmd:
        cmd += " --size 128x128"
    return " ".join(cmd.split())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files the examples name, made the documented way (tiny sizes)."""
    import os

    from nasfcos.compiler import CompileOptions, compile_genotype
    from nasfcos.fcos.synth import SynthConfig, write_synthetic
    from nasfcos.genotypes import load_paper_genotype

    d = tmp_path_factory.mktemp("docs")
    old = os.getcwd()
    os.chdir(d)
    try:
        opts = CompileOptions(fpn_channels=8, head_channels=64, num_classes=5, detector=True,
                              backbone="tiny")
        Path("model.py").write_text(compile_genotype(load_paper_genotype(), opts))
        write_synthetic("data/synth", SynthConfig(images=48, size=64, seed=0))
        Path("my.json").write_text(json.dumps(load_paper_genotype().to_dict()))
        Path("my_genotype.json").write_text(Path("my.json").read_text())
        assert cli(["train", "model.py", "--data", "data/synth", "--iters", "2", "--batch", "2",
                    "--min-size", "64", "--max-size", "64", "--workers", "0", "--no-eval",
                    "--no-progress", "-o", "run0"]) == 0
        for run in ("run", "runs/synth", "runs/r1"):  # the runs the examples read
            Path(run).mkdir(parents=True)
            Path(run, "final.pt").write_bytes(Path("run0/final.pt").read_bytes())
        Path("photos").mkdir()
        Path("more").mkdir()
        src = sorted(Path("data/synth/images").iterdir())[0]
        Path("photos/a.png").write_bytes(src.read_bytes())
        Path("photo.png").write_bytes(src.read_bytes())
        Path("more/b.png").write_bytes(src.read_bytes())
    finally:
        os.chdir(old)
    return d


@pytest.mark.slow
def test_readme_python_api_examples_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text().split("## Python API", 1)[1]
                        .split("\n## ", 1)[0], re.S)
    names = {"compile", "export", "check", "bench", "train", "evaluate", "predict"}
    shown = {n for n in names for b in blocks if f"nasfcos.{n}(" in b}
    assert shown == names, f"no README example for {names - shown}"
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 - the README's own examples
    assert Path("model.onnx").is_file() and Path("preds/predictions.json").is_file()


class _Parsed(Exception):
    """Raised instead of running a verb once its command line parsed."""


def test_every_documented_command_parses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Fast: each documented command line (as written, not shrunk) is accepted by its verb's
    parser and type checks (flags, values, paths; the files it reads exist as placeholders)."""
    import argparse

    todo = list(dict.fromkeys(readme_commands() + help_commands(capsys)))  # GPU ones too
    monkeypatch.chdir(tmp_path)
    for cmd in todo:  # placeholders for the files and folders the commands name
        for tok in shlex.split(cmd)[2:]:
            if tok.startswith("-") or "*" in tok:
                continue
            if tok.endswith("/") or tok in ("easy", "photos", "more") or (
                    "/" in tok and not Path(tok).suffix):
                Path(tok).mkdir(parents=True, exist_ok=True)
            elif Path(tok).suffix in (".py", ".onnx", ".pt", ".pth", ".json", ".png", ".yaml",
                                      ".engine"):
                Path(tok).parent.mkdir(parents=True, exist_ok=True)
                if not Path(tok).exists():
                    Path(tok).write_text("{}")
    original = argparse.ArgumentParser.parse_args

    def parse_only(self, args=None, namespace=None):
        original(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    bad = []
    for cmd in todo:
        try:
            code = cli(shlex.split(cmd)[1:])
        except _Parsed:
            continue
        err = capsys.readouterr().err.strip()
        if "no CUDA GPU on this machine" not in err:  # --device cuda is checked when parsed
            bad.append(f"{cmd}: exit {code}: {err[-200:]}")
    assert not bad, "documented commands their verb refuses:\n" + "\n".join(bad)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_every_documented_command_runs(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    commands = list(dict.fromkeys(readme_commands() + help_commands(capsys)))
    skipped = {c for c in commands if any(k in c for k in NOT_HERE)}
    unused = [k for k in NOT_HERE if not any(k in c for c in commands)]
    assert not unused, f"NOT_HERE names commands no document shows any more: {unused}"
    # producers first: compile, data, import, export, then the verbs that read their outputs
    order = ["compile", "validate", "draw", "profile", "data", "import-release", "train",
             "export", "check", "bench", "eval", "predict"]
    todo = sorted((c for c in commands if c not in skipped),
                  key=lambda c: order.index(c.split()[1]) if c.split()[1] in order else 99)
    monkeypatch.chdir(workdir)
    failed = []
    for cmd in todo:
        run = _shrink(cmd)
        args = shlex.split(run)[1:]
        if "-o" in args:  # the shared tiny detector stays what every later command reads
            i = args.index("-o") + 1
            if args[0] == "compile" and args[i] == "model.py":
                args[i] = "compiled_model.py"
            if args[0] == "export" and "--decoder" in args:
                args[i] = "decoder.onnx"
        code = cli(args)
        err = capsys.readouterr().err
        if code != 0:
            failed.append(f"{cmd}\n    ran: {' '.join(args)}\n    exit {code}: {err.strip()[-300:]}")
    assert not failed, "documented commands that fail:\n" + "\n".join(failed)
    assert len(todo) >= 20
