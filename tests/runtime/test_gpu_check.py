"""``make gpu-check`` = ``nasfcos demo --gpu``: the pipeline's GPU plan, run here with stand-ins
for the machine (an H100 with TensorRT), the build steps and the runners; the GPU steps
themselves run only on a GPU machine."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from nasfcos.errors import BackendUnavailable
from nasfcos.runtime import doctor as D
from nasfcos.runtime import gpu_check as G
from nasfcos.runtime import pipeline as P


class FakeRunner:
    """Times nothing on no device: enough for the pipeline's cell loop."""

    kind, in_channels = "detector", None
    input_names = ["images"]

    def __init__(self, *args, **kwargs) -> None:
        self.closed = False

    def bind(self, *arrays: np.ndarray) -> None:
        self.arrays = arrays

    def run(self) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def cuda_stream(self):
        return None

    def close(self) -> None:
        self.closed = True


def _h100() -> D.Facts:
    return D.Facts(cpu="stand-in", gpus=[D.Gpu(0, "NVIDIA H100 80GB HBM3", (9, 0), 79.6)],
                   driver_cuda="13.2", torch="2.14.1+cu132", torch_cuda="13.2",
                   arch_list=["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"],
                   tensorrt="10.8.0", onnxruntime="1.32.0",
                   ort_providers=["CUDAExecutionProvider", "CPUExecutionProvider"])


@pytest.fixture
def stand_ins(monkeypatch, tmp_path):
    """The machine, the build steps and the runners replaced; returns the out folder."""
    import nasfcos.runtime.runners as runners

    monkeypatch.setattr(D, "probe", _h100)

    def fake_compile(cfg, say):
        (cfg.out / "model.py").write_text("# stand-in\n")
        say("compiled (stand-in)")
        return cfg.out / "model.py"

    def fake_export(cfg, model_py, say, weights=None):
        (cfg.out / "model.onnx").write_bytes(b"onnx")
        return SimpleNamespace(onnx_path=cfg.out / "model.onnx", manifest={})

    monkeypatch.setattr(P, "compile_step", fake_compile)
    monkeypatch.setattr(P, "detection_weights", lambda model_py, out: out)
    monkeypatch.setattr(P, "export_step", fake_export)
    monkeypatch.setattr(P, "_lower", lambda cfg, fp32, say: {
        "fp32": fp32, "fp16": cfg.out / "model.fp16.onnx", "int8": cfg.out / "model.int8.onnx"})
    monkeypatch.setattr(P, "_engines", lambda cfg, onnx, say: {
        "fp32": cfg.out / "model.fp32.engine", "fp16": cfg.out / "model.fp16.engine",
        "int8": "TensorRT failed to build an engine from model.int8.onnx"})
    monkeypatch.setattr(P, "_parity", lambda art, model, backend, device: {
        "status": "ok", "precision": "fp32", "max_abs": 1e-5, "max_rel": 1e-6,
        "output": "boxes", "failures": []})

    def fake_make_runner(path, backend=None, device="cpu", **kw):
        if backend == "onnxruntime":
            raise BackendUnavailable("onnxruntime: CUDAExecutionProvider not available")
        return FakeRunner()

    monkeypatch.setattr(runners, "make_runner", fake_make_runner)
    return tmp_path / "gpu_check"


def _cfg(out: Path) -> P.PipelineConfig:
    return P.PipelineConfig(out=out, fpn_channels=128, sizes=[(600, 600), (800, 800)], runs=3,
                            warmup=1, gpu=True)


def test_gpu_plan_prints_one_line_per_cell_and_writes_the_paper_table(stand_ins) -> None:
    lines: list[str] = []
    state = P.run_pipeline(_cfg(stand_ins), lines.append)
    cells = [ln for ln in lines if " @600x600: " in ln or " @800x800: " in ln]
    assert len(cells) == len(state["cells"]) == 2 * len(P.GPU_ROWS)
    assert cells[0].startswith("[gpu] PyTorch eager fp32 @600x600: ")
    assert "ms median" in cells[0] and cells[0].endswith("paper V100: 37 ms")
    assert "ONNX Runtime CUDA fp32 @600x600: skipped (onnxruntime: CUDAExecutionProvider" in \
        "\n".join(cells)
    assert "TensorRT int8 @800x800: skipped (no engine: TensorRT failed" in "\n".join(cells)
    assert state["ok"] is False  # two rows were not measured
    md = (stand_ins / "gpu_check.md").read_text()
    assert "| PyTorch eager | fp32 | " in md and "| TensorRT | fp16 | " in md
    assert "| paper, V100 (Wang et al. 2020) | fp32 | 37 | 39 |" in md
    assert "| ONNX Runtime CUDA | fp32 | skipped | skipped |" in md
    assert "| tensorrt/fp16 | ok (fp32 tolerances; worst boxes" in md
    saved = json.loads((stand_ins / "gpu_check.json").read_text())
    assert saved["cells"] == state["cells"] and saved["doctor"]["ok"] is True
    assert json.loads((stand_ins / "doctor.json").read_text())["facts"]["gpus"][0]["name"] \
        == "NVIDIA H100 80GB HBM3"


def test_a_cut_run_keeps_the_cells_measured_so_far(stand_ins, monkeypatch) -> None:
    calls = {"n": 0}

    class Cut(FakeRunner):
        def run(self) -> None:
            calls["n"] += 1
            if calls["n"] > 1 + 3:  # the first cell (1 warm-up + 3 runs) finishes, then Ctrl-C
                raise KeyboardInterrupt

    import nasfcos.runtime.runners as runners

    monkeypatch.setattr(runners, "make_runner", lambda *a, precision=None, **kw:
                        Cut() if precision == "fp16" else FakeRunner())
    with pytest.raises(KeyboardInterrupt):
        P.run_pipeline(_cfg(stand_ins), lambda s: None)
    saved = json.loads((stand_ins / "gpu_check.json").read_text())
    assert [(c["backend"], c["size"]) for c in saved["cells"]] == [
        ("torch", [600, 600]), ("torch", [800, 800]), ("torch-fp16", [600, 600])]
    assert "| PyTorch eager | fp16 | " in (stand_ins / "gpu_check.md").read_text()


def test_gpu_plan_stops_in_one_line_before_any_work(stand_ins, monkeypatch) -> None:
    v100 = _h100()
    v100.gpus = [D.Gpu(0, "Tesla V100-SXM2-16GB", (7, 0), 15.8)]
    monkeypatch.setattr(D, "probe", lambda: v100)
    with pytest.raises(BackendUnavailable, match=r"^V100-SXM2-16GB \(sm_70\): this torch build "
                                                 r"\(2.14.1\+cu132\) has no sm_70 kernels"):
        P.run_pipeline(_cfg(stand_ins), lambda s: None)
    assert not stand_ins.exists()  # review finding: no doctor.json (nor model) left behind


def test_demo_gpu_on_this_machine_fails_in_one_line(tmp_path, capsys, monkeypatch) -> None:
    """No GPU and no TensorRT here: ``make gpu-check``'s command stops with one line that
    names the missing GPU first, and leaves nothing behind."""
    import sys

    from nasfcos.cli.main import main

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert main(["demo", "--gpu", "-o", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["nasfcos demo: error: no CUDA GPU found: torch-cuda, tensorrt need one "
                   "(nasfcos doctor says more)"]
    assert not (tmp_path / "g").exists()


def test_markdown_of_a_partial_state() -> None:
    state = {"config": {"genotype": "g", "fpn_channels": 128, "backbone": "resnet50",
                        "sizes": [[600, 600], [1000, 1000]], "warmup": 2, "runs": 5},
             "created_utc": "now", "parity": {},
             "doctor": {"facts": _h100().__dict__ | {"gpus": [{"name": "H100", "capability":
                                                              [9, 0]}]},
                        "findings": []},
             "cells": [{"row": "TensorRT", "backend": "tensorrt", "precision": "int8",
                        "size": [1000, 1000], "status": "ok", "median_ms": 2.5, "p90_ms": 2.75,
                        "runs": 5}]}
    md = G.markdown(state)
    assert "| TensorRT | int8 |  | 2.50 (2.75) |" in md
    assert "| paper, V100 (Wang et al. 2020) | fp32 | 37 | 50 |" in md
    assert G.cell_text(state["cells"][0]) == ("TensorRT int8 @1000x1000: 2.50 ms median "
                                              "(p90 2.75, 5 runs); paper V100: 50 ms")


def test_detection_weights_give_a_random_detector_detections(tiny_detector, tmp_path) -> None:
    """Parity of an engine needs detections: cls biases at 0, every other weight the seed's."""
    import torch

    from nasfcos.runtime.models import load_model, make_inputs

    w = P.detection_weights(tiny_detector, tmp_path / "w.pt")
    plain = load_model(tiny_detector, "detector", seed=0)
    loaded = load_model(tiny_detector, "detector", weights=w)
    a, b = plain.net.detector.state_dict(), loaded.net.detector.state_dict()
    changed = [k for k in a if not torch.equal(a[k], b[k])]
    assert changed and all(k.endswith("cls_logits.bias") for k in changed)
    assert all(float(b[k].abs().max()) == 0.0 for k in changed)
    x = [torch.from_numpy(v) for v in make_inputs("detector", (160, 160))]
    with torch.inference_mode():
        scores_plain = plain.net(*x)[1]
        scores = loaded.net(*x)[1]
    assert int((scores_plain > 0).sum()) == 0 and int((scores > 0).sum()) > 0
