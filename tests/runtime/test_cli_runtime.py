"""The export / check verbs end to end, and the runner interface."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nasfcos.cli.main import main
from nasfcos.errors import NasfcosError
from nasfcos.runtime.models import make_inputs
from nasfcos.runtime.runners import make_runner


def test_export_then_check_cli(paper_decoder, tmp_path, capsys) -> None:
    onnx_path = tmp_path / "m.onnx"
    code = main(["export", str(paper_decoder), "-o", str(onnx_path), "--size", "96x128",
                 "--dynamic", "--json"])
    captured = capsys.readouterr()
    assert code == 0 and onnx_path.is_file() and (tmp_path / "m.onnx.json").is_file()
    assert "DeformConv" in captured.err and "manifest:" in captured.err  # stdout: JSON only
    summary = json.loads(captured.out)
    assert summary["dynamic"] is True and summary["deform_convs"] >= 1

    code = main(["check", str(onnx_path), "--sizes", "96x128,128x96"])
    err = capsys.readouterr().err  # its model.py is elsewhere: the fix is named, not a flag
    assert code == 2 and not err.startswith("--against") and "pass --against " in err
    code = main(["check", str(onnx_path), "--sizes", "96x128,128x96", "--against",
                 str(paper_decoder), "-o", str(tmp_path / "parity.json")])
    out = capsys.readouterr().out
    assert code == 0 and "parity: ok" in out and "cls_p3@96x128" in out
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["ok"] is True and len(report["outputs"]) == 30


def test_cli_errors_are_one_line(tmp_path, capsys) -> None:
    code = main(["export", str(tmp_path / "nope.py")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no such file" in err[0]
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"garbage")
    code = main(["check", str(bad), "--against", str(tmp_path / "nope.py")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1


def test_runner_interface(paper_decoder, paper_decoder_onnx) -> None:
    torch_runner = make_runner(paper_decoder)
    ort_runner = make_runner(paper_decoder_onnx, threads=1)
    assert torch_runner.backend == "torch" and ort_runner.backend == "onnxruntime"
    assert torch_runner.input_names == ort_runner.input_names == ["c2", "c3", "c4", "c5"]
    assert ort_runner.output_names[0] == "cls_p3" and len(ort_runner.output_names) == 15
    assert ort_runner.kind == "decoder" and ort_runner.in_channels == torch_runner.in_channels
    inputs = make_inputs("decoder", (160, 160), 1, 0, ort_runner.in_channels)
    a, b = torch_runner(*inputs), ort_runner(*inputs)
    assert all(isinstance(x, np.ndarray) for x in a + b)
    assert all(np.allclose(x, y, atol=1e-4, rtol=1e-3) for x, y in zip(a, b, strict=True))
    with pytest.raises(NasfcosError, match="expected 4 inputs"):
        ort_runner(inputs[0])
    torch_runner.close()
    ort_runner.close()
    with pytest.raises(NasfcosError, match="unknown backend"):
        make_runner(paper_decoder, "tvm")
    with pytest.raises(NasfcosError, match="needs a compiled model.py"):
        make_runner(paper_decoder_onnx, "torch")
    with pytest.raises(NasfcosError, match="unknown option"):
        make_runner(paper_decoder_onnx, bogus=1)


def test_group_norm_with_one_value_per_group_runs(tmp_path, capsys) -> None:
    """A 32-wide head at batch 1 on a 64 px image: GroupNorm(32, 32) sees one value per group
    on the 1x1 p7 map.  The compiled file calls ``torch.group_norm`` (F.group_norm refuses that
    case even in eval mode), so bench measures the cell instead of failing it."""
    from nasfcos.compiler import CompileOptions, compile_genotype
    from nasfcos.genotypes import load_paper_genotype

    model = tmp_path / "model.py"
    model.write_text(compile_genotype(load_paper_genotype(), CompileOptions(
        fpn_channels=8, head_channels=32, num_classes=3, detector=True, backbone="tiny")))
    code = main(["bench", str(model), "--backends", "torch", "--sizes", "64", "--runs", "1",
                 "--warmup", "0", "-o", str(tmp_path / "report")])
    captured = capsys.readouterr()
    assert code == 0 and "Traceback" not in captured.err, captured.err
    report = json.loads((tmp_path / "report.json").read_text())
    assert "one value per group" not in json.dumps(report)
