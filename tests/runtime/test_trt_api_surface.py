"""TensorRT API surface: nasfcos's builder and runner against stand-in ``tensorrt`` modules
(10.x and 11.x) that expose only the documented names and fail on any name TensorRT 11
removed.  These tests check the API surface; they do not run TensorRT."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from nasfcos.errors import BackendUnavailable, NasfcosError

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent / "fixtures"))
from trt_standin import API_10X, API_11X, REMOVED_11X, RemovedAPI, make_tensorrt  # noqa: E402


class CpuCuda:
    """CPU stand-in for :class:`nasfcos.runtime.trt._TorchCuda` (torch CPU tensors)."""

    class Stream:
        cuda_stream = 0

        def synchronize(self) -> None:
            pass

    @staticmethod
    def available() -> bool:
        return True

    @staticmethod
    def device_info(device: str = "cuda") -> dict:
        return {"gpu": "stand-in", "capability": [0, 0]}

    @classmethod
    def stream(cls, device: str):
        return cls.Stream()

    @staticmethod
    def stream_handle(stream) -> int:
        return 0

    @staticmethod
    def upload(array, dtype, device, stream):
        import torch

        return torch.from_numpy(np.ascontiguousarray(array)).to(dtype=dtype).contiguous()

    @staticmethod
    def empty(shape, dtype, device):
        import torch

        return torch.empty(tuple(shape), dtype=dtype)

    @staticmethod
    def dtype(name: str):
        import torch

        return getattr(torch, name) if name != "bool" else torch.bool


@pytest.fixture(params=["10.1.0", "11.1.0"])
def standin_trt(request, monkeypatch):
    import nasfcos.runtime.trt as trt_mod

    mod = make_tensorrt(request.param)
    monkeypatch.setitem(sys.modules, "tensorrt", mod)
    monkeypatch.setattr(trt_mod, "cuda", CpuCuda)
    return mod


def test_declared_api_is_documented_for_both_versions() -> None:
    from nasfcos.runtime.trt import TRT_API

    assert not set(TRT_API) & REMOVED_11X
    assert set(TRT_API) <= API_10X, set(TRT_API) - API_10X
    # STRONGLY_TYPED is used on 10.x only (deprecated, always on, in 11.x)
    assert set(TRT_API) - API_11X == {"NetworkDefinitionCreationFlag.STRONGLY_TYPED"}


def test_build_and_run_on_the_api_surface(standin_trt, tiny_detector_onnx, synth_data,
                                          tmp_path) -> None:
    from nasfcos.runtime.check import check_artifact
    from nasfcos.runtime.export import load_manifest, verify_manifest
    from nasfcos.runtime.models import make_inputs
    from nasfcos.runtime.runners import make_runner
    from nasfcos.runtime.trt import TRT_API, TrtBuildOptions, build_engine

    major = int(standin_trt.__version__.split(".")[0])
    cache = tmp_path / "timing.cache"
    engine = tmp_path / "det.fp16.engine"
    # legacy --fp16 maps onto the strongly typed flow: lower the ONNX, build it
    man = build_engine(tiny_detector_onnx, engine, TrtBuildOptions(fp16=True,
                                                                   timing_cache=cache))
    assert engine.is_file() and cache.is_file() and verify_manifest(engine) == []
    assert man["build"]["precision"] == "fp16" and man["build"]["strongly_typed"] is True
    assert man["build"]["network_flags"] == (0 if major >= 11 else 1 << 5)
    assert man["precision"]["precision"] == "fp16"
    assert man["build"]["device_memory_bytes"] == 1 << 20
    assert load_manifest(engine).raw["genotype"] == load_manifest(tiny_detector_onnx).raw["genotype"]

    runner = make_runner(engine)
    x = make_inputs("detector", (160, 160))
    got = runner(*x)
    ref = make_runner(tiny_detector_onnx)(*x)
    assert [g.shape for g in got] == [r.shape for r in ref]
    assert runner.info()["precision"] == "fp16"
    runner.close()
    report = check_artifact(engine, tiny_detector_onnx.parent / "model.py")  # engine precision
    # random weights: no detection on either side, and an engine's intermediate tensors
    # cannot be read, so the check says it compared nothing (the GPU pipeline exports with
    # pipeline.detection_weights to have detections to compare)
    assert report.precision == "fp16", report.table()
    assert [o.name for o in report.failures()] == ["raw head outputs"], report.table()
    assert "intermediate tensors cannot be read" in report.table()

    # legacy --int8-calib: Q/DQ export for the tensorrt target, then build
    man8 = build_engine(tiny_detector_onnx, tmp_path / "det.int8.engine",
                        TrtBuildOptions(int8_calib=synth_data / "images", calib_images=4))
    assert man8["build"]["precision"] == "int8" and man8["precision"]["target"] == "tensorrt"
    used = standin_trt._surface.used
    assert used <= set(TRT_API), used - set(TRT_API)
    assert not used & REMOVED_11X


def test_dynamic_outputs_use_the_output_allocator(standin_trt, tiny_detector_onnx,
                                                  tmp_path) -> None:
    import onnx

    from nasfcos.runtime.models import make_inputs
    from nasfcos.runtime.runners import make_runner
    from nasfcos.runtime.trt import TrtRunner

    model = onnx.load(str(tiny_detector_onnx))
    for out in model.graph.output:  # make the number of detections data-dependent
        out.type.tensor_type.shape.dim[1].dim_param = "detections"
    dyn = tmp_path / "dyn.onnx"
    onnx.save(model, str(dyn))
    runner = TrtRunner(dyn, "cuda")
    x = make_inputs("detector", (160, 160))
    got = runner(*x)
    assert runner._allocator is not None and set(runner._allocator.shapes) == {
        "boxes", "scores", "labels"}
    ref = make_runner(tiny_detector_onnx)(*x)
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_array_equal(g, r)
    runner.close()
    assert "IExecutionContext.set_output_allocator" in standin_trt._surface.used


def test_removed_names_fail_and_cpu_int8_is_refused(standin_trt, tiny_detector_onnx,
                                                    synth_data, tmp_path) -> None:
    from nasfcos.runtime.export import convert_onnx
    from nasfcos.runtime.precision import PrecisionOptions
    from nasfcos.runtime.trt import build_engine

    with pytest.raises(RemovedAPI):
        standin_trt.BuilderFlag.FP16  # noqa: B018 - the stand-in must refuse it
    with pytest.raises(RemovedAPI):
        standin_trt.IInt8EntropyCalibrator2  # noqa: B018
    cpu = tmp_path / "cpu.onnx"
    convert_onnx(tiny_detector_onnx, cpu, PrecisionOptions("int8", data=synth_data,
                                                          calib_images=2, int8_target="cpu"))
    with pytest.raises(NasfcosError, match="int8 for the cpu target"):
        build_engine(cpu, tmp_path / "cpu.engine")
    assert not (tmp_path / "cpu.engine").exists()


@pytest.mark.parametrize("version,msg", [("10.0.1", "too old"), ("8.6.1", "too old"),
                                         ("12.0.0", "newer than this nasfcos supports")])
def test_version_outside_the_supported_range(monkeypatch, version, msg, capsys,
                                             paper_decoder_onnx, tmp_path) -> None:
    import nasfcos.runtime.trt as trt_mod
    from nasfcos.cli.main import main
    from nasfcos.runtime import doctor

    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt(version))
    monkeypatch.setattr(trt_mod, "cuda", CpuCuda)
    gpu = doctor.Gpu(0, "H100", (9, 0), 80.0)  # the CLI's preflight names a missing GPU first
    monkeypatch.setattr(doctor, "probe", lambda: doctor.Facts(gpus=[gpu]))
    with pytest.raises(BackendUnavailable, match=msg):
        trt_mod.require_tensorrt()
    code = main(["export", str(paper_decoder_onnx), "--trt", str(tmp_path / "m.engine")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and msg in err[0]
    assert not (tmp_path / "m.engine").exists()
