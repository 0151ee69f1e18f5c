"""TensorRT: one-line messages without it; real build/run/parity/timing tests on a GPU."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from nasfcos.errors import BackendUnavailable


def _trt_available() -> str | None:
    from nasfcos.runtime.trt import tensorrt_status

    return tensorrt_status()


needs_trt = pytest.mark.skipif(_trt_available() is not None,
                               reason=f"TensorRT not usable here: {_trt_available()}")


def test_missing_tensorrt_one_line(monkeypatch, tmp_path) -> None:
    """A missing GPU is named first (as the CLI's preflight does), then a missing package."""
    import nasfcos.runtime.trt as trt_mod
    from nasfcos.runtime.runners import make_runner
    from nasfcos.runtime.trt import require_tensorrt, tensorrt_status

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not an engine")
    monkeypatch.setattr(trt_mod.cuda, "available", staticmethod(lambda: False))
    with pytest.raises(BackendUnavailable, match=r"^tensorrt: no CUDA GPU available"):
        make_runner(engine)
    monkeypatch.setattr(trt_mod.cuda, "available", staticmethod(lambda: True))
    with pytest.raises(BackendUnavailable) as info:
        require_tensorrt()
    msg = str(info.value)
    assert msg.startswith("tensorrt:") and "\n" not in msg and "not installed" in msg
    assert tensorrt_status() == msg
    with pytest.raises(BackendUnavailable, match="not installed"):
        make_runner(engine)


def test_missing_tensorrt_cli(monkeypatch, paper_decoder_onnx, tmp_path, capsys) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    from nasfcos.cli.main import main
    from nasfcos.runtime import doctor

    gpu = doctor.Gpu(index=0, name="H100", capability=(9, 0), memory_gb=80.0)
    monkeypatch.setattr(doctor, "probe", lambda: doctor.Facts(gpus=[gpu]))

    code = main(["export", str(paper_decoder_onnx), "--trt", str(tmp_path / "m.engine")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "tensorrt" in err[0] and "not installed" in err[0]


@pytest.mark.gpu
@needs_trt
def test_trt_build_run_parity(tiny_detector, paper_decoder, tmp_path) -> None:
    from nasfcos.runtime.check import TOLERANCES, check_artifact
    from nasfcos.runtime.export import ExportOptions, export_onnx, load_manifest
    from nasfcos.runtime.trt import TrtBuildOptions, build_engine, profile_shapes

    res = export_onnx(paper_decoder, tmp_path / "dec.onnx",
                      ExportOptions(size=(160, 160), dynamic=True))
    chans = res.manifest["widths"]["in_channels"]
    shapes = profile_shapes("decoder", [(96, 160), (160, 160), (192, 192)], 1, chans)
    cache = tmp_path / "timing.cache"
    engine = tmp_path / "dec.engine"
    man = build_engine(res.onnx_path, engine, TrtBuildOptions(shapes=shapes, timing_cache=cache))
    assert engine.is_file() and cache.is_file() and man["build"]["precision"] == "fp32"
    assert man["build"]["strongly_typed"] is True
    assert load_manifest(engine).raw["artifact"]["sha256"] == man["artifact"]["sha256"]
    report = check_artifact(engine, paper_decoder, sizes=[(160, 160), (96, 160)], batch=1,
                            device="cuda", tol=TOLERANCES["fp32"])
    assert report.ok, report.table()

    fp16 = tmp_path / "dec16.engine"
    build_engine(res.onnx_path, fp16, TrtBuildOptions(fp16=True, shapes=shapes,
                                                      timing_cache=cache))
    report16 = check_artifact(fp16, paper_decoder, sizes=[(160, 160)], batch=1, device="cuda")
    assert report16.ok, report16.table()  # fp16 tolerances from the manifest's precision


@pytest.mark.gpu
@needs_trt
def test_trt_detector_and_cuda_event_timing(tiny_detector, tmp_path) -> None:
    from nasfcos.runtime.bench import BenchConfig, run_benchmark
    from nasfcos.runtime.models import make_inputs
    from nasfcos.runtime.runners import make_runner

    runner = make_runner(tiny_detector, "tensorrt", "cuda",
                         export={"size": (160, 160), "dynamic": False})
    boxes, scores, labels = runner(*make_inputs("detector", (160, 160)))
    assert boxes.shape[-1] == 4 and labels.dtype == np.int64 and scores.ndim == 2
    runner.close()
    report = run_benchmark(tiny_detector, BenchConfig(
        backends=["torch", "tensorrt"], sizes=[(160, 160)], warmup=2, runs=5, device="cuda"))
    rows = {r["backend"]: r for r in report["results"]}
    assert rows["tensorrt"]["status"] == "ok", rows["tensorrt"]
    assert rows["tensorrt"]["timer"] == "cuda-events"
    assert rows["torch"]["timer"] == "cuda-events"
