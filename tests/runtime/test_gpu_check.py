"""``make gpu-check``: its CPU-side logic (step order and dependencies, the report), run here
without a GPU; the GPU steps themselves run only on a GPU machine."""

from __future__ import annotations

import json
from pathlib import Path

from nasfcos.runtime.gpu_check import GpuCheckConfig, Runner, markdown, run_gpu_check

ROOT = Path(__file__).resolve().parents[2]


def test_without_a_gpu_every_step_is_skipped_with_the_reason(tmp_path, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu_check"
    report = run_gpu_check(GpuCheckConfig(out=out))
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == ["environment", "pytest-gpu", "model", "engine-fp32", "engine-fp16",
                           "engine-int8", "parity-fp32", "parity-fp16", "parity-int8", "bench"]
    assert steps["environment"]["status"] == "failed"
    assert "no CUDA GPU" in steps["environment"]["reason"]
    assert all(s["status"] == "skipped" for n, s in steps.items() if n != "environment")
    assert steps["parity-int8"]["reason"] == "needs engine-int8"
    assert report["ok"] is False
    assert json.loads(out.with_name("gpu_check.json").read_text())["ok"] is False
    md = out.with_name("gpu_check.md").read_text()
    assert "| environment | failed |" in md and "needs environment" in md
    assert not out.with_name("gpu_check_work").exists()  # nothing built


def test_failures_skip_dependants_and_the_latency_table() -> None:
    r = Runner()
    r.step("a", lambda: {"x": 1})
    r.step("b", lambda: (_ for _ in ()).throw(RuntimeError("boom\nsecond line")), needs=("a",))
    r.step("c", lambda: {}, needs=("b",))
    r.step("d", lambda: {}, needs=("a",))
    assert [s.status for s in r.steps] == ["ok", "failed", "skipped", "ok"]
    assert r.get("b").reason == "RuntimeError: boom" and r.get("c").reason == "needs b"

    rows = [{"backend": "torch", "precision": "fp32", "size": [600, 600], "status": "ok",
             "median_ms": 12.345, "p90_ms": 13.0},
            {"backend": "tensorrt", "precision": "int8", "size": [600, 600], "status": "ok",
             "median_ms": 2.5, "p90_ms": 2.75},
            {"backend": "onnxruntime", "precision": "fp32", "size": [600, 600],
             "status": "skipped", "reason": "no CUDA provider"}]
    report = {"config": {"genotype": "g", "width": 128, "backbone": "resnet50", "sizes": [600]},
              "created_utc": "now",
              "steps": [{"name": "bench", "status": "ok", "seconds": 1.0, "reason": "",
                         "result": {"rows": rows}}]}
    md = markdown(report)
    assert "| torch | fp32 | 12.35 (13.00) |" in md
    assert "| tensorrt | int8 | 2.50 (2.75) |" in md
    assert "| onnxruntime | fp32 | skipped |" in md
