"""TensorRT (>= 10.1) engines: build from ONNX, and run (optional extra ``[trt]``).

Building (:func:`build_engine`): ``trt.Builder`` -> ``create_network(0)`` (explicit batch is
the only mode in 10.x) -> ``trt.OnnxParser.parse_from_file`` (every parser error reported
with its node name and operator; ``DeformConv`` is imported natively by the 10.x parser) ->
builder config: workspace pool limit, ``FP16`` / ``INT8`` flags (INT8 with an entropy
calibrator fed from an image folder), one optimisation profile (min/opt/max per input) for
dynamic shapes, a persistent timing cache -> ``build_serialized_network`` -> engine file and
manifest ``<engine>.json``.

Running (:class:`TrtRunner`): ``Runtime.deserialize_cuda_engine`` -> execution context;
per call ``set_input_shape`` and ``set_tensor_address`` for each I/O tensor, then
``execute_async_v3`` on a ``torch.cuda`` stream.  Device buffers are torch CUDA tensors, so
no pycuda is needed.  Outputs whose shape depends on data are served by an
``IOutputAllocator``.

Without the ``tensorrt`` package or without a CUDA GPU every entry point raises
:class:`~nasfcos.errors.BackendUnavailable` with a one-line message.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from nasfcos.errors import BackendUnavailable, NasfcosError
from nasfcos.io import atomic_write_bytes, atomic_write_json, sha256_bytes, sha256_file
from nasfcos.runtime.runners import Runner, kind_from_inputs

MIN_TRT_VERSION = (10, 1)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def require_tensorrt(*, need_gpu: bool = True) -> ModuleType:
    """Import ``tensorrt`` (>= 10.1) and check for a CUDA GPU; else BackendUnavailable."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable("tensorrt: the TensorRT Python package is not installed "
                                 "(pip install 'nasfcos[trt]' on a machine with an NVIDIA "
                                 "GPU)") from exc
    version = tuple(int(v) for v in re.findall(r"\d+", trt.__version__)[:2])
    if version < MIN_TRT_VERSION:
        raise BackendUnavailable(f"tensorrt: version {trt.__version__} is too old "
                                 f"(need >= {'.'.join(map(str, MIN_TRT_VERSION))})")
    if need_gpu:
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailable("tensorrt: no CUDA GPU available "
                                     "(torch.cuda.is_available() is False)")
    return trt


def tensorrt_status() -> str | None:
    """None when TensorRT can be used here, else the one-line reason."""
    try:
        require_tensorrt()
    except BackendUnavailable as exc:
        return str(exc)
    return None


ShapeTriple = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


@dataclass
class TrtBuildOptions:
    """Engine build settings.

    ``shapes``: per input name, the (min, opt, max) shapes of the optimisation profile;
    needed when the ONNX model has dynamic dimensions (see :func:`profile_shapes`).
    ``int8_calib``: folder of calibration images (detector models only); the calibration
    cache is written next to the engine.  ``workspace_gb``: builder workspace pool limit.
    """

    fp16: bool = False
    int8_calib: Path | None = None
    calib_batches: int = 32
    workspace_gb: float = 4.0
    shapes: dict[str, ShapeTriple] | None = None
    timing_cache: Path | None = None
    optimization_level: int | None = None


def profile_shapes(kind: str, sizes: Sequence[tuple[int, int]], batch: int = 1,
                   in_channels: Sequence[int] | None = None) -> dict[str, ShapeTriple]:
    """Per-input (min, opt, max) shapes from three image sizes ``[(H, W) min, opt, max]``."""
    from nasfcos.runtime.models import input_shapes, io_names

    if len(sizes) != 3:
        raise NasfcosError("an optimisation profile needs three sizes: min, opt, max")
    per_size = [input_shapes(kind, s, batch, in_channels) for s in sizes]
    names = io_names(kind)[0]
    return {name: (per_size[0][i], per_size[1][i], per_size[2][i])
            for i, name in enumerate(names)}


def _parser_errors(parser: Any) -> list[str]:
    """One line per ONNX parser error: node index, name, operator and description."""
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        parts = []
        node = err.node()
        if node >= 0:
            parts.append(f"node {node}")
        name = getattr(err, "node_name", None)
        op = getattr(err, "node_operator", None)
        name = name() if callable(name) else name
        op = op() if callable(op) else op
        if name:
            parts.append(f"'{name}'")
        if op:
            parts.append(f"({op})")
        parts.append(f"{err.code()}: {err.desc()}")
        lines.append(" ".join(str(p) for p in parts))
    return lines


def _image_calibrator(trt: ModuleType, files: list[Path], input_name: str,
                      shape: tuple[int, ...], cache_path: Path, max_batches: int) -> Any:
    """An ``IInt8EntropyCalibrator2`` feeding resized RGB images in [0, 1] (NCHW float32)."""
    import torch
    from PIL import Image

    n, _, h, w = shape

    class ImageFolderCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.files = files
            self.index = 0
            self.batches = 0
            self.device_buffer = torch.empty(shape, dtype=torch.float32, device="cuda")

        def get_batch_size(self) -> int:
            return n

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.batches >= max_batches or self.index + n > len(self.files):
                return None
            batch = np.empty(shape, dtype=np.float32)
            for j in range(n):
                with Image.open(self.files[self.index + j]) as im:
                    im = im.convert("RGB").resize((w, h), Image.BILINEAR)
                    batch[j] = np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0
            self.index += n
            self.batches += 1
            self.device_buffer.copy_(torch.from_numpy(batch))
            torch.cuda.synchronize()
            assert input_name in names
            return [int(self.device_buffer.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            atomic_write_bytes(cache_path, bytes(cache))

    return ImageFolderCalibrator()


def build_engine(onnx_path: str | Path, engine_path: str | Path,
                 opts: TrtBuildOptions | None = None) -> dict[str, Any]:
    """Build a serialized TensorRT engine from an ONNX file; returns the written manifest."""
    trt = require_tensorrt()
    import torch

    opts = opts or TrtBuildOptions()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise NasfcosError(f"{onnx_path}: no such ONNX file")
    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # 10.x: explicit batch always, flags deprecated
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = _parser_errors(parser)
        raise NasfcosError(f"TensorRT cannot import {onnx_path.name}: "
                           + ("; ".join(errors[:5]) or "unknown parser error")
                           + (f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_gb * (1 << 30)))
    if opts.optimization_level is not None:
        config.builder_optimization_level = int(opts.optimization_level)
    precision = ["fp32"]
    if opts.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        precision.append("fp16")

    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    input_names = [t.name for t in inputs]
    dynamic = any(d < 0 for t in inputs for d in tuple(t.shape))
    profile = None
    profile_desc: dict[str, list[list[int]]] = {}
    if dynamic or opts.shapes:
        if not opts.shapes:
            raise NasfcosError(f"{onnx_path.name} has dynamic dimensions: give min/opt/max "
                               "shapes for the optimisation profile")
        missing = [n for n in input_names if n not in opts.shapes]
        if missing:
            raise NasfcosError(f"no profile shapes for input(s) {', '.join(missing)}")
        profile = builder.create_optimization_profile()
        for t in inputs:
            mn, op, mx = opts.shapes[t.name]
            declared = tuple(t.shape)
            for shp in (mn, op, mx):
                if len(shp) != len(declared) or any(d >= 0 and d != s
                                                    for d, s in zip(declared, shp, strict=True)):
                    raise NasfcosError(f"profile shape {shp} does not fit input {t.name} "
                                       f"{declared}")
            profile.set_shape(t.name, tuple(mn), tuple(op), tuple(mx))
            profile_desc[t.name] = [list(mn), list(op), list(mx)]
        config.add_optimization_profile(profile)

    calibrator = None
    if opts.int8_calib is not None:
        calib_dir = Path(opts.int8_calib)
        files = sorted(p for p in calib_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise NasfcosError(f"{calib_dir}: no calibration images ({', '.join(IMAGE_SUFFIXES)})")
        if kind_from_inputs(input_names) != "detector":
            raise NasfcosError("INT8 calibration from images needs a detector model "
                               "(input 'images'); export with --detector")
        shape = tuple(opts.shapes["images"][1]) if opts.shapes else tuple(inputs[0].shape)
        if any(d < 0 for d in shape):
            raise NasfcosError("INT8 calibration needs a static or profiled input shape")
        config.set_flag(trt.BuilderFlag.INT8)
        calibrator = _image_calibrator(trt, files, "images", shape,
                                       engine_path.with_name(engine_path.name + ".calib"),
                                       opts.calib_batches)
        config.int8_calibrator = calibrator  # implicit quantisation (deprecated, still in 10.x)
        if profile is not None:
            config.set_calibration_profile(profile)
        precision.append("int8")

    cache_bytes = b""
    if opts.timing_cache is not None and Path(opts.timing_cache).is_file():
        cache_bytes = Path(opts.timing_cache).read_bytes()
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise NasfcosError(f"TensorRT failed to build an engine from {onnx_path.name} "
                           "(see the TensorRT log above)")
    data = bytes(serialized)
    atomic_write_bytes(engine_path, data)
    if opts.timing_cache is not None:
        atomic_write_bytes(opts.timing_cache, bytes(config.get_timing_cache().serialize()))
    build_seconds = time.perf_counter() - t0

    from nasfcos.runtime.export import manifest_path_for, tool_versions

    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(data)
    io = _engine_io(trt, engine)
    manifest: dict[str, Any] = {
        "format": "nasfcos-export/1",
        "artifact": {"file": engine_path.name, "type": "tensorrt", "sha256": sha256_bytes(data),
                     "bytes": len(data)},
        "source": {"onnx": os.path.relpath(Path(onnx_path).resolve(), Path(engine_path).resolve().parent),
                   "onnx_sha256": sha256_file(onnx_path)},
        "inputs": [{"name": n, "shape": list(s), "dtype": d} for n, s, d, is_in in io if is_in],
        "outputs": [{"name": n, "shape": list(s), "dtype": d} for n, s, d, is_in in io
                    if not is_in],
        "build": {"precision": precision, "workspace_gb": opts.workspace_gb,
                  "profile": profile_desc, "timing_cache": str(opts.timing_cache)
                  if opts.timing_cache else None, "seconds": round(build_seconds, 1),
                  "int8_calib": str(opts.int8_calib) if opts.int8_calib else None},
        "device": {"gpu": torch.cuda.get_device_name(0),
                   "capability": list(torch.cuda.get_device_capability(0))},
        "tools": {**tool_versions(), "tensorrt": trt.__version__},
        "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    onnx_manifest = manifest_path_for(onnx_path)
    if onnx_manifest.is_file():
        import json

        parent = json.loads(onnx_manifest.read_text())
        for key in ("genotype", "widths"):
            if key in parent:
                manifest[key] = parent[key]
        manifest["source"]["model"] = parent.get("source", {})
    atomic_write_json(manifest_path_for(engine_path), manifest)
    del calibrator
    return manifest


def _engine_io(trt: ModuleType, engine: Any) -> list[tuple[str, tuple[int, ...], str, bool]]:
    """(name, declared shape, numpy dtype name, is_input) for every I/O tensor of an engine."""
    out = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name
        out.append((name, tuple(engine.get_tensor_shape(name)), dtype, is_input))
    return out


def _output_allocator(trt: ModuleType, device: str) -> Any:
    """An ``IOutputAllocator`` backed by torch CUDA byte buffers (data-dependent outputs)."""
    import torch

    class TorchOutputAllocator(trt.IOutputAllocator):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.IOutputAllocator.__init__(self)
            self.buffers: dict[str, torch.Tensor] = {}
            self.shapes: dict[str, tuple[int, ...]] = {}

        def _alloc(self, name: str, size: int) -> int:
            buf = self.buffers.get(name)
            if buf is None or buf.numel() < size:
                buf = torch.empty(max(int(size), 1), dtype=torch.uint8, device=device)
                self.buffers[name] = buf
            return buf.data_ptr()

        def reallocate_output(self, tensor_name: str, memory: int, size: int,
                              alignment: int) -> int:
            return self._alloc(tensor_name, size)

        def reallocate_output_async(self, tensor_name: str, memory: int, size: int,
                                    alignment: int, stream: int) -> int:
            return self._alloc(tensor_name, size)

        def notify_shape(self, tensor_name: str, shape: Any) -> None:
            self.shapes[tensor_name] = tuple(shape)

    return TorchOutputAllocator()


class TrtRunner(Runner):
    """Runs a serialized engine; a ``.onnx`` (or ``model.py``) source is built first.

    ``shapes`` (per input min/opt/max) is needed to build from a dynamic ONNX file; for a
    ``model.py`` the profile defaults to 320..1344 px with 800 px optimal.
    """

    backend = "tensorrt"

    def __init__(self, model: str | Path, device: str = "cuda", *, fp16: bool = False,
                 int8_calib: str | Path | None = None, workspace_gb: float = 4.0,
                 shapes: dict[str, ShapeTriple] | None = None,
                 timing_cache: str | Path | None = None, export: dict[str, Any] | None = None,
                 engine_dir: str | Path | None = None) -> None:
        super().__init__()
        trt = require_tensorrt()
        import torch

        t0 = time.perf_counter()
        if not device.startswith("cuda"):
            raise NasfcosError(f"tensorrt runs on a CUDA device, not {device!r}")
        self.device = device
        path = Path(model)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if path.suffix in (".py", ".onnx"):
            self._tmp = tempfile.TemporaryDirectory(prefix="nasfcos-trt-")
            work = Path(engine_dir) if engine_dir else Path(self._tmp.name)
            if path.suffix == ".py":
                from nasfcos.runtime.export import ExportOptions, export_onnx

                eopts = ExportOptions(**{"dynamic": True, "size": (800, 800), **(export or {})})
                res = export_onnx(path, work / (path.stem + ".onnx"), eopts)
                path = res.onnx_path
                if shapes is None and eopts.dynamic:
                    lm_kind = res.manifest["source"]["kind"]
                    chans = res.manifest["widths"].get("in_channels")
                    shapes = profile_shapes(lm_kind, [(320, 320), (800, 800), (1344, 1344)],
                                            eopts.batch if lm_kind == "detector" else 1, chans)
            engine_path = work / (path.stem + (".fp16" if fp16 else "") + ".engine")
            build_engine(path, engine_path, TrtBuildOptions(
                fp16=fp16, int8_calib=Path(int8_calib) if int8_calib else None,
                workspace_gb=workspace_gb, shapes=shapes,
                timing_cache=Path(timing_cache) if timing_cache else None))
            path = engine_path
        if not path.is_file():
            raise NasfcosError(f"{path}: no such engine file")
        self.path = path
        self.fp16 = fp16
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise NasfcosError(f"{path}: TensorRT cannot deserialize it (built with another "
                               "TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        self._trt = trt
        io = _engine_io(trt, self.engine)
        self.input_names = [n for n, _, _, is_in in io if is_in]
        self.output_names = [n for n, _, _, is_in in io if not is_in]
        self._dtypes = {n: getattr(torch, d) if d != "bool" else torch.bool for n, _, d, _ in io}
        self.kind = kind_from_inputs(self.input_names)
        if self.kind == "decoder":
            chans = [s[1] for n, s, _, is_in in io if is_in]
            if all(c > 0 for c in chans):
                self.in_channels = tuple(chans)
        self.stream = torch.cuda.Stream(device=device)
        self._inputs: list[Any] = []
        self._outputs: dict[str, Any] = {}
        self._allocator: Any = None
        self.setup_seconds = time.perf_counter() - t0

    def bind(self, *arrays: np.ndarray) -> None:
        import torch

        self._check_arity(arrays)
        ctx = self.context
        self._inputs = []
        with torch.cuda.stream(self.stream):
            for name, a in zip(self.input_names, arrays, strict=True):
                t = torch.from_numpy(np.ascontiguousarray(a)).to(
                    self.device, dtype=self._dtypes[name])
                if not ctx.set_input_shape(name, tuple(t.shape)):
                    raise NasfcosError(f"tensorrt: input {name} shape {tuple(t.shape)} is outside "
                                       "the engine's optimisation profile")
                ctx.set_tensor_address(name, t.data_ptr())
                self._inputs.append(t)
            self._outputs = {}
            for name in self.output_names:
                shape = tuple(ctx.get_tensor_shape(name))
                if any(d < 0 for d in shape):  # data-dependent: allocated during execution
                    if self._allocator is None:
                        self._allocator = _output_allocator(self._trt, self.device)
                    ctx.set_output_allocator(name, self._allocator)
                    self._outputs[name] = None
                else:
                    buf = torch.empty(shape, dtype=self._dtypes[name], device=self.device)
                    ctx.set_tensor_address(name, buf.data_ptr())
                    self._outputs[name] = buf

    def run(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise NasfcosError("tensorrt: execute_async_v3 failed (see the TensorRT log)")

    def synchronize(self) -> None:
        self.stream.synchronize()

    def cuda_stream(self) -> Any:
        """The torch CUDA stream the engine runs on (for CUDA-event timing)."""
        return self.stream

    def fetch(self) -> list[np.ndarray]:
        import torch

        out = []
        for name in self.output_names:
            buf = self._outputs[name]
            if buf is None:
                shape = self._allocator.shapes[name]
                dtype = self._dtypes[name]
                n = int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()
                raw = self._allocator.buffers[name][:n]
                buf = raw.view(dtype).reshape(shape)
            out.append(buf.cpu().numpy())
        return out

    def close(self) -> None:
        self._inputs, self._outputs = [], {}
        self.context = None
        self.engine = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def info(self) -> dict[str, Any]:
        import torch

        return {**super().info(), "tensorrt": self._trt.__version__, "fp16": self.fp16,
                "gpu": torch.cuda.get_device_name(self.device)}


__all__ = ["TrtBuildOptions", "TrtRunner", "build_engine", "profile_shapes", "require_tensorrt",
           "tensorrt_status"]
