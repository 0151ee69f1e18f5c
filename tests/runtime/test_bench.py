"""The latency benchmark: statistics, a complete report on a tiny model, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nasfcos.errors import NasfcosError
from nasfcos.runtime.bench import (
    BenchConfig,
    latency_stats,
    median_ratio_interval,
    run_benchmark,
    write_report,
)

STAT_KEYS = ("median_ms", "mean_ms", "p90_ms", "p99_ms", "min_ms", "max_ms", "std_ms", "fps")


def test_latency_stats() -> None:
    s = latency_stats([1.0, 2.0, 3.0, 4.0, 100.0], batch=2)
    assert s["median_ms"] == 3.0 and s["min_ms"] == 1.0 and s["max_ms"] == 100.0
    assert s["mean_ms"] == 22.0
    assert s["p90_ms"] == pytest.approx(np.percentile([1, 2, 3, 4, 100], 90))
    assert s["fps"] == pytest.approx(2 * 1000 / 3.0)
    with pytest.raises(ValueError):
        latency_stats([])


def test_median_ratio_interval() -> None:
    rng = np.random.default_rng(1)
    base = 100 + rng.normal(0, 10, 21)  # noisy blocks
    # paired: a run 0.8x its partner in every block -> the shared noise cancels exactly
    lo, hi = median_ratio_interval(0.8 * base, base, paired=True)
    assert lo == pytest.approx(0.8) and hi == pytest.approx(0.8)
    # unpaired: the same data spreads, and the interval holds the point estimate
    lo, hi = median_ratio_interval(0.8 * base, base, paired=False)
    assert lo < 0.8 < hi and hi - lo > 0.05
    point = np.median(0.9 * base[:7]) / np.median(base)
    lo, hi = median_ratio_interval(0.9 * base[:7], base, paired=False)
    assert lo <= point <= hi
    assert median_ratio_interval(base, base, paired=False, seed=3) == median_ratio_interval(
        base, base, paired=False, seed=3)  # repeatable
    # blocks share a slow or fast phase, each run adds a little noise of its own: pairing keeps
    # the phases together, so its interval is the narrower one and both hold the estimate
    phase = 100 * np.exp(rng.normal(0, 0.1, 15))
    ours, theirs = 0.85 * phase * (1 + rng.normal(0, 0.01, 15)), phase * (1 + rng.normal(0, 0.01, 15))
    point = np.median(ours) / np.median(theirs)
    plo, phi = median_ratio_interval(ours, theirs, paired=True)
    ulo, uhi = median_ratio_interval(ours, theirs, paired=False)
    assert plo <= point <= phi and ulo <= point <= uhi
    assert phi - plo < (uhi - ulo) / 2
    for bad in (dict(num_ms=[], den_ms=[1.0], paired=False),
                dict(num_ms=[1.0, float("nan")], den_ms=[1.0, 1.0], paired=True),
                dict(num_ms=[1.0, 2.0], den_ms=[1.0], paired=True),
                dict(num_ms=[1.0], den_ms=[1.0], paired=True, level=1.0)):
        with pytest.raises(ValueError):
            median_ratio_interval(**bad)


@pytest.mark.slow
def test_bench_complete_report(paper_decoder, tmp_path) -> None:
    cfg = BenchConfig(backends=["torch", "onnxruntime", "tensorrt"], sizes=[(96, 160), (160, 160)],
                      warmup=1, runs=3, threads=1)
    report = run_benchmark(paper_decoder, cfg)
    rows = {(r["backend"], tuple(r["size"])): r for r in report["results"]}
    assert len(rows) == 6
    for backend in ("torch", "onnxruntime"):
        for size in ((96, 160), (160, 160)):
            r = rows[(backend, size)]
            assert r["status"] == "ok", r
            assert r["runs"] == 3 and len(r["times_ms"]) == 3
            assert all(k in r for k in STAT_KEYS)
            assert r["min_ms"] <= r["median_ms"] <= r["max_ms"]
            assert r["gflop"] > 0 and r["gflops_per_s"] > 0
    trt = rows[("tensorrt", (96, 160))]
    if trt["status"] == "skipped":  # no TensorRT / GPU here: a one-line reason
        assert trt["reason"].startswith("tensorrt:") and "\n" not in trt["reason"]
    assert report["matmul_peak"]["gflops"] > 0
    assert report["machine"]["cpu"] and report["machine"]["libraries"]["torch"]
    assert set(report["flops"]) == {"96x160", "160x160"}

    paths = write_report(report, tmp_path / "report")
    data = json.loads(paths["json"].read_text())
    assert data["format"] == "nasfcos-bench/1" and len(data["results"]) == 6
    md = paths["md"].read_text()
    assert "| torch |" in md and "| onnxruntime |" in md and "96x160" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_rejects_bad_config(paper_decoder) -> None:
    with pytest.raises(NasfcosError, match="unknown backend"):
        run_benchmark(paper_decoder, BenchConfig(backends=["tvm"], sizes=[(64, 64)]))
    with pytest.raises(NasfcosError):
        run_benchmark(paper_decoder, BenchConfig(backends=["torch"], runs=0))


def test_bench_cli_on_onnx(paper_decoder_onnx, tmp_path, capsys) -> None:
    from nasfcos.cli.main import main

    out = tmp_path / "r"
    code = main(["bench", str(paper_decoder_onnx), "--sizes", "160", "--runs", "2",
                 "--warmup", "1", "--threads", "1", "--no-matmul-peak", "-o", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    assert "| onnxruntime |" in text
    assert (tmp_path / "r.json").is_file() and (tmp_path / "r.png").is_file()


def test_precision_table_rows(tiny_detector, synth_data, tmp_path) -> None:
    import torch

    from nasfcos.modelfile import load_model_file
    from nasfcos.runtime.bench import PrecisionTableConfig, precision_markdown, run_precision_table

    torch.manual_seed(0)
    state = load_model_file(tiny_detector).build().state_dict()
    for key in state:  # class prior 0: the reference detects, so agreement is measured
        state[key] = torch.zeros_like(state[key]) if key.endswith("cls_logits.bias") else state[key]
    torch.save(state, tmp_path / "weights.pt")
    cfg = PrecisionTableConfig(backends=["onnxruntime", "tensorrt"], size=(160, 160),
                               data=synth_data, calib_images=3, warmup=1, runs=2, threads=1,
                               weights=tmp_path / "weights.pt")
    report = run_precision_table(tiny_detector, cfg, tmp_path / "art")
    rows = [(r["backend"], r["precision"], r["target"], r["status"]) for r in report["rows"]]
    assert rows[:5] == [("torch", "fp32", None, "ok"), ("onnxruntime", "fp32", None, "ok"),
                        ("onnxruntime", "fp16", None, "ok"),
                        ("onnxruntime", "int8", "cpu", "ok"),
                        ("onnxruntime", "int8", "tensorrt", "ok")]
    trt_rows = report["rows"][5:]
    assert [r["precision"] for r in trt_rows] == ["fp32", "fp16", "int8"]
    assert all(r["status"] == "skipped" and r["reason"].startswith("tensorrt:") for r in trt_rows)
    ok = [r for r in report["rows"] if r["status"] == "ok"]
    for r in ok:
        assert 0.0 <= r["AP"] <= 1.0 and r["images"] >= 1 and r["bytes"] > 0
        assert r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"] and r["runs"] == 2
        assert 0.0 <= r["agreement"]["match_rate"] <= 1.0
    assert ok[0]["agreement"]["reference"] > 0
    assert ok[0]["agreement"]["match_rate"] == 1.0  # the reference agrees with itself
    assert ok[2]["agreement50"]["match_rate"] >= 0.95  # fp16 keeps the detections
    assert ok[2]["bytes"] < 0.7 * ok[1]["bytes"]  # fp16 weights: half the file
    md = precision_markdown(report)
    assert "| onnxruntime | int8 (cpu) |" in md and "| tensorrt | fp16 | skipped" in md



def test_precision_table_says_na_without_reference_detections() -> None:
    """Review finding: with no reference detection nothing is compared, so agreement is not
    measured (JSON null, 'n/a' in the table, no accuracy for the CPU default), not 100%."""
    from nasfcos.runtime.bench import _agreement, precision_markdown
    from nasfcos.runtime.cpu_default import table_from_reports

    empty = [[np.zeros((1, 2, 4), np.float32), np.zeros((1, 2), np.float32),
              np.full((1, 2), -1, np.int64)]]
    a = _agreement(empty, empty)
    assert a["match_rate"] is None and a["reference"] == 0
    row = {"backend": "openvino", "precision": "bf16", "target": None, "status": "ok",
           "AP": 0.0, "AP50": 0.0, "dAP": 0.0, "agreement": a, "agreement50": a,
           "median_ms": 1.0, "p90_ms": 1.0, "bytes": 1}
    report = {"model": "m.py", "data": "d", "weights": None, "rows": [row],
              "machine": {"cpu": "cpu", "usable_cpus": 2},
              "config": {"size": [64, 64], "split": "val", "threads": 1}}
    assert "| n/a | n/a (0/0) |" in precision_markdown(report)
    speed = {"engines": {"openvino:bf16": {"x_ort_fp32": 0.5, "x_ort_fp32_95ci": [0.4, 0.6]}}}
    assert "agree50" not in table_from_reports(speed, report)["engines"]["openvino:bf16"]

def _quick(**kw) -> BenchConfig:
    return BenchConfig(**{"warmup": 0, "runs": 2, "threads": 1, "matmul_peak": False, **kw})


def test_bench_on_a_static_export_uses_its_size(paper_decoder_onnx, tmp_path, capsys) -> None:
    """Issue 26 item 3: a static export runs at its own size; other sizes are refused in one
    line before any work; the time estimate is said after the first run."""
    from nasfcos.cli.main import main

    lines: list[str] = []
    report = run_benchmark(paper_decoder_onnx, _quick(), log=lines.append)
    assert [r["size"] for r in report["results"]] == [[160, 160]]  # not 600,800,1000
    assert report["results"][0]["status"] == "ok" and report["estimate_s"] > 0
    assert any("about" in line and "first run" in line for line in lines)
    code = main(["bench", str(paper_decoder_onnx), "--sizes", "160,200", "--runs", "1",
                 "--no-matmul-peak", "-o", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("nasfcos bench: error: --sizes:") and "\n" not in err
    assert "static export at 160x160" in err and not (tmp_path / "r.json").exists()


def test_bench_on_a_changed_onnx_says_so(paper_decoder_onnx, tmp_path) -> None:
    """Issue 25: an ONNX changed after export is benchmarked with a warning, and the report
    records the file's own sha256 (not the manifest's) and the differences."""
    import hashlib
    import shutil

    import onnx

    from nasfcos.runtime.manifest import load_manifest, manifest_path_for

    art = tmp_path / "m.onnx"
    shutil.copy(paper_decoder_onnx, art)
    shutil.copy(manifest_path_for(paper_decoder_onnx), manifest_path_for(art))
    recorded = load_manifest(art).sha256
    model = onnx.load(str(art))
    model.doc_string = "edited after export"
    onnx.save(model, str(art))
    with pytest.warns(UserWarning, match="changed since its export"):
        report = run_benchmark(art, _quick(sizes=[(160, 160)]))
    actual = hashlib.sha256(art.read_bytes()).hexdigest()
    assert report["model"]["sha256"] == actual != recorded
    assert any("sha256 differs" in p for p in report["model"]["changed_since_export"])


def test_bench_ctrl_c_keeps_the_rows_done(paper_decoder_onnx, tmp_path, monkeypatch,
                                         capsys) -> None:
    """Issue 26 item 3: Ctrl-C writes a partial report with the rows done so far (exit 130)."""
    from nasfcos.cli.main import main
    from nasfcos.runtime import bench

    real, calls = bench._time_cell, []

    def interrupt_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(bench, "_time_cell", interrupt_second)
    code = main(["bench", str(paper_decoder_onnx), "--backends", "onnxruntime,onnxruntime",
                 "--runs", "1", "--warmup", "0", "--no-matmul-peak", "-q", "-o",
                 str(tmp_path / "r")])
    assert code == 130 and "report keeps the rows done" in capsys.readouterr().err
    data = json.loads((tmp_path / "r.json").read_text())
    assert len(data["results"]) == 1 and data["results"][0]["status"] == "ok"
    assert data["interrupted"].startswith("interrupted after 1 of 2")


def test_bench_model_py_loads_and_exports_once(paper_decoder, monkeypatch) -> None:
    """Issue 22: bench model.py imports the file once and exports it once, up front."""
    from nasfcos.runtime import export, models

    loads, exports = [], []
    real_load, real_export = models.load_model_file, export.export_onnx
    monkeypatch.setattr(models, "load_model_file",
                        lambda *a, **k: loads.append(1) or real_load(*a, **k))
    monkeypatch.setattr(export, "export_onnx",
                        lambda *a, **k: exports.append(1) or real_export(*a, **k))
    lines: list[str] = []
    report = run_benchmark(paper_decoder, _quick(backends=["torch", "onnxruntime"],
                                                 sizes=[(96, 96), (128, 128)]), log=lines.append)
    assert [r["status"] for r in report["results"]] == ["ok"] * 4
    assert len(loads) == 1 and len(exports) == 1
    assert any(line.startswith("bench: exporting model.py to ONNX") for line in lines)
