"""TensorRT 10.1 - 11.x engines: build from ONNX, and run (optional extra ``[trt]``).

Strong typing only (TensorRT 11 removed weak typing: ``BuilderFlag.FP16/INT8/BF16/FP8/INT4/
FP4``, ``IBuilderConfig.int8_calibrator``, ``set_calibration_profile``, the ``IInt8*Calibrator``
classes, ``platform_has_fast_fp16/int8``; see NVIDIA's "Migrating from TensorRT 10.x to
11.x").  The precision of every tensor is the one the ONNX file gives it
(:mod:`nasfcos.runtime.precision`: FP16 casts, INT8 Q/DQ pairs), the same on 10.x and 11.x.

Building (:func:`build_engine`): ``trt.Builder`` -> ``create_network(flags)`` with
``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` on 10.x and the default (0) on 11.x, where
strong typing is the only mode -> ``OnnxParser.parse_from_file`` (every parser error with its
node name and operator; ``DeformConv`` is imported natively) -> builder config: workspace pool
limit, optimisation level, one optimisation profile (min/opt/max per input) for dynamic
shapes, a persistent timing cache; no precision flag -> ``build_serialized_network`` -> engine
file and manifest ``<engine>.json`` (precision read from the ONNX manifest).  The legacy
``fp16`` / ``int8_calib`` options lower the ONNX first (fp16 pass; int8 Q/DQ for the
``tensorrt`` target calibrated on the folder) and build that.

Running (:class:`TrtRunner`): ``Runtime.deserialize_cuda_engine`` -> execution context;
per call ``set_input_shape`` and ``set_tensor_address`` for each I/O tensor, then
``execute_async_v3`` on a ``torch.cuda`` stream.  Device buffers are torch CUDA tensors (no
pycuda).  Outputs whose shape depends on data are served by an ``IOutputAllocator``
(``reallocate_output_async`` + ``notify_shape``); device memory is read from
``device_memory_size_v2`` (the unsuffixed queries are gone in 11.x).

Without the ``tensorrt`` package, with a version outside [10.1, 12), or without a CUDA GPU,
every entry point raises :class:`~nasfcos.errors.BackendUnavailable` with a one-line message.
:data:`TRT_API` lists every TensorRT name this module touches (the API-conformance tests hold
it to the 10.x and 11.x Python APIs).
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
from nasfcos.runtime.artifact import FORMS
from nasfcos.runtime.manifest import Manifest, manifest_path_for
from nasfcos.runtime.runner_base import Runner

MIN_TRT_VERSION = (10, 1)
#: First major version not supported (its API is unknown today).
MAX_TRT_MAJOR = 12

#: Every TensorRT Python name this module uses (module attributes, then ``Class.member``).
TRT_API: tuple[str, ...] = (
    "__version__", "Logger", "Logger.WARNING", "Builder", "Builder.create_network",
    "Builder.create_builder_config", "Builder.create_optimization_profile",
    "Builder.build_serialized_network", "NetworkDefinitionCreationFlag",
    "NetworkDefinitionCreationFlag.STRONGLY_TYPED", "MemoryPoolType", "TensorIOMode",
    "INetworkDefinition.num_inputs", "INetworkDefinition.get_input", "ITensor.name",
    "ITensor.shape", "OnnxParser", "OnnxParser.parse_from_file", "OnnxParser.num_errors",
    "OnnxParser.get_error", "ParserError.node", "ParserError.node_name",
    "ParserError.node_operator", "ParserError.code", "ParserError.desc",
    "IBuilderConfig.set_memory_pool_limit", "MemoryPoolType.WORKSPACE",
    "IBuilderConfig.builder_optimization_level", "IBuilderConfig.add_optimization_profile",
    "IOptimizationProfile.set_shape", "IBuilderConfig.create_timing_cache",
    "IBuilderConfig.set_timing_cache", "IBuilderConfig.get_timing_cache",
    "ITimingCache.serialize", "Runtime", "Runtime.deserialize_cuda_engine",
    "ICudaEngine.num_io_tensors", "ICudaEngine.get_tensor_name", "ICudaEngine.get_tensor_mode",
    "ICudaEngine.get_tensor_shape", "ICudaEngine.get_tensor_dtype",
    "ICudaEngine.create_execution_context", "ICudaEngine.device_memory_size_v2",
    "TensorIOMode.INPUT", "nptype", "IExecutionContext.set_input_shape",
    "IExecutionContext.set_tensor_address", "IExecutionContext.get_tensor_shape",
    "IExecutionContext.set_output_allocator", "IExecutionContext.execute_async_v3",
    "IOutputAllocator", "IOutputAllocator.reallocate_output_async",
    "IOutputAllocator.notify_shape")


#: The one-line reason when the ``tensorrt`` package is missing.
TRT_MISSING = ("tensorrt: the TensorRT Python package is not installed (pip install -e '.[trt]', "
               "'.[trt-volta]' on a V100, on a machine with an NVIDIA GPU; nasfcos doctor says "
               "which)")


def trt_version(trt: ModuleType) -> tuple[int, int]:
    """(major, minor) of an imported ``tensorrt`` module."""
    nums = [int(v) for v in re.findall(r"\d+", str(getattr(trt, "__version__", "")))[:2]]
    if len(nums) < 2:
        raise BackendUnavailable(f"tensorrt: cannot read its version "
                                 f"{getattr(trt, '__version__', None)!r}")
    return nums[0], nums[1]


def check_version(trt: ModuleType) -> tuple[int, int]:
    """The version, or a one-line BackendUnavailable outside [10.1, 12)."""
    version = trt_version(trt)
    lo = ".".join(map(str, MIN_TRT_VERSION))
    if version < MIN_TRT_VERSION:
        raise BackendUnavailable(f"tensorrt: version {trt.__version__} is too old (need >= {lo},"
                                 f" < {MAX_TRT_MAJOR}: pip install -e '.[trt]')")
    if version[0] >= MAX_TRT_MAJOR:
        raise BackendUnavailable(f"tensorrt: version {trt.__version__} is newer than this "
                                 f"nasfcos supports (>= {lo}, < {MAX_TRT_MAJOR})")
    return version


def network_flags(trt: ModuleType) -> int:
    """``create_network`` flags: STRONGLY_TYPED on 10.x; 0 on 11.x (strong typing is the only
    mode there and the flag is deprecated)."""
    if check_version(trt)[0] >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


class _TorchCuda:
    """The CUDA side of the runner and builder (torch): one place, so the API-conformance
    tests can run the TensorRT calls without a GPU."""

    @staticmethod
    def available() -> bool:
        import torch

        return bool(torch.cuda.is_available())

    @staticmethod
    def device_info(device: str = "cuda") -> dict[str, Any]:
        import torch

        return {"gpu": torch.cuda.get_device_name(device),
                "capability": list(torch.cuda.get_device_capability(device))}

    @staticmethod
    def stream(device: str) -> Any:
        import torch

        return torch.cuda.Stream(device=device)

    @staticmethod
    def stream_handle(stream: Any) -> int:
        return int(stream.cuda_stream)

    @staticmethod
    def upload(array: np.ndarray, dtype: Any, device: str, stream: Any) -> Any:
        import torch

        with torch.cuda.stream(stream):
            return torch.from_numpy(np.ascontiguousarray(array)).to(device, dtype=dtype)

    @staticmethod
    def empty(shape: Sequence[int], dtype: Any, device: str) -> Any:
        import torch

        return torch.empty(tuple(shape), dtype=dtype, device=device)

    @staticmethod
    def dtype(name: str) -> Any:
        import torch

        return getattr(torch, name) if name != "bool" else torch.bool


#: Swapped for a CPU stand-in by the API-conformance tests.
cuda: Any = _TorchCuda


def require_tensorrt(*, need_gpu: bool = True) -> ModuleType:
    """Check for a CUDA GPU and import ``tensorrt`` (10.1 <= version < 12), in the order of
    the CLI's preflight; else BackendUnavailable with a one-line reason."""
    if need_gpu and not cuda.available():
        raise BackendUnavailable("tensorrt: no CUDA GPU available "
                                 "(torch.cuda.is_available() is False)")
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable(TRT_MISSING) from exc
    check_version(trt)
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
    ``workspace_gb``: builder workspace pool limit.  ``fp16`` / ``int8_calib`` (legacy): lower
    an fp32 ONNX file to fp16, or to int8 Q/DQ calibrated on that image folder (``tensorrt``
    target, ``calib_images`` images), before building; a reduced-precision ONNX file needs
    neither.
    """

    fp16: bool = False
    int8_calib: Path | None = None
    calib_images: int = 32
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


def _onnx_precision(path: Path, unknown: str = "fp32") -> tuple[str, dict[str, Any] | None]:
    """(precision, manifest or None) of an ONNX file or engine, from its manifest
    (``unknown`` without one)."""
    try:
        man = Manifest.load(path)
    except NasfcosError:
        return unknown, None
    return man.precision, man.raw


def lower_for_trt(onnx_path: Path, opts: TrtBuildOptions, workdir: Path) -> Path:
    """The ONNX file to build: ``onnx_path`` itself, or (legacy ``fp16`` / ``int8_calib``)
    its fp16 or int8-Q/DQ (tensorrt target) version written into ``workdir``.

    Raises for combinations TensorRT cannot build (an int8 ``cpu``-target file).
    """
    from nasfcos.runtime.export import convert_onnx
    from nasfcos.runtime.precision import PrecisionOptions

    have, man = _onnx_precision(onnx_path)
    if have == "int8" and (man or {}).get("precision", {}).get("target") == "cpu":
        raise NasfcosError(f"{onnx_path.name} is int8 for the cpu target (uint8 activations); "
                           "TensorRT's INT8 is symmetric: export with --int8-target tensorrt")
    if opts.fp16 and opts.int8_calib is not None:
        raise NasfcosError("give one of fp16 and int8_calib")
    want = "fp16" if opts.fp16 else "int8" if opts.int8_calib is not None else None
    if want is None or want == have:
        return onnx_path
    if have != "fp32":
        raise NasfcosError(f"{onnx_path.name} is already {have}; cannot build it as {want}")
    if man is None:
        raise NasfcosError(f"{onnx_path.name}: no manifest; lower its precision with nasfcos "
                           "export --precision first")
    popts = PrecisionOptions(precision=want, calib=opts.int8_calib,
                             calib_images=opts.calib_images, int8_target="tensorrt")
    out = workdir / f"{onnx_path.stem}.{want}.onnx"
    convert_onnx(onnx_path, out, popts)
    return out


def build_engine(onnx_path: str | Path, engine_path: str | Path,
                 opts: TrtBuildOptions | None = None) -> dict[str, Any]:
    """Build a serialized, strongly typed TensorRT engine from an ONNX file; returns the
    written manifest.  Nothing is written when the build fails."""
    trt = require_tensorrt()
    opts = opts or TrtBuildOptions()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise NasfcosError(f"{onnx_path}: no such ONNX file")
    with tempfile.TemporaryDirectory(prefix="nasfcos-trt-") as tmp:
        source = lower_for_trt(onnx_path, opts, Path(tmp))
        _refuse_unparsable(source)
        return _build(trt, source, engine_path, opts, origin=onnx_path)


def _first_few(items: Sequence[str], n: int) -> str:
    """The first ``n`` items joined by "; ", and how many more there are."""
    return "; ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def _refuse_unparsable(onnx_path: Path) -> None:
    """Raise, naming the nodes, for a graph TensorRT's parser would refuse (DeformConv rules)."""
    import onnx

    from nasfcos.runtime.export import deformconv_problems

    problems = deformconv_problems(onnx.load(str(onnx_path), load_external_data=False))
    if problems:
        raise NasfcosError(f"TensorRT cannot import {onnx_path.name}: "
                           + _first_few(problems, 3))


def _profile(builder: Any, config: Any, network: Any, opts: TrtBuildOptions,
             name: str) -> dict[str, list[list[int]]]:
    """Add the optimisation profile of ``opts.shapes`` to ``config``; returns it per input
    (empty for a static network built without shapes)."""
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    if not opts.shapes:
        if any(d < 0 for t in inputs for d in tuple(t.shape)):
            raise NasfcosError(f"{name} has dynamic dimensions: give min/opt/max "
                               "shapes for the optimisation profile")
        return {}
    missing = [t.name for t in inputs if t.name not in opts.shapes]
    if missing:
        raise NasfcosError(f"no profile shapes for input(s) {', '.join(missing)}")
    profile = builder.create_optimization_profile()
    desc: dict[str, list[list[int]]] = {}
    for t in inputs:
        triple, declared = opts.shapes[t.name], tuple(t.shape)
        for shp in triple:
            if len(shp) != len(declared) or any(d >= 0 and d != s
                                                for d, s in zip(declared, shp, strict=True)):
                raise NasfcosError(f"profile shape {shp} does not fit input {t.name} "
                                   f"{declared}")
        profile.set_shape(t.name, *(tuple(s) for s in triple))
        desc[t.name] = [list(s) for s in triple]
    config.add_optimization_profile(profile)
    return desc


def _build(trt: ModuleType, onnx_path: Path, engine_path: Path,
           opts: TrtBuildOptions, origin: Path) -> dict[str, Any]:
    """Build ``onnx_path`` (``origin`` itself, or its lowered copy in a temporary folder);
    the manifest names ``origin`` and carries its source, precision from ``onnx_path``."""
    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = network_flags(trt)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise NasfcosError(f"TensorRT cannot import {onnx_path.name}: "
                           + (_first_few(_parser_errors(parser), 5) or "unknown parser error"))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_gb * (1 << 30)))
    if opts.optimization_level is not None:
        config.builder_optimization_level = int(opts.optimization_level)
    profile = _profile(builder, config, network, opts, onnx_path.name)
    cache = opts.timing_cache
    config.set_timing_cache(config.create_timing_cache(
        Path(cache).read_bytes() if cache is not None and Path(cache).is_file() else b""),
        ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise NasfcosError(f"TensorRT failed to build an engine from {onnx_path.name} "
                           "(see the TensorRT log above)")
    data = bytes(serialized)
    build = {"strongly_typed": True, "network_flags": flags, "workspace_gb": opts.workspace_gb,
             "profile": profile, "timing_cache": str(cache) if cache else None,
             "seconds": round(time.perf_counter() - t0, 1)}
    engine = trt.Runtime(logger).deserialize_cuda_engine(data)
    if engine is None:
        raise NasfcosError(f"TensorRT cannot deserialize the engine it built from {onnx_path.name}")
    manifest = _engine_manifest(trt, engine, data, build, onnx_path, origin, engine_path)
    atomic_write_bytes(engine_path, data)
    if cache is not None:
        atomic_write_bytes(cache, bytes(config.get_timing_cache().serialize()))
    atomic_write_json(manifest_path_for(engine_path), manifest)
    return manifest


def _engine_manifest(trt: ModuleType, engine: Any, data: bytes, build: dict[str, Any],
                     onnx_path: Path, origin: Path, engine_path: Path) -> dict[str, Any]:
    """The engine's manifest: its I/O and build record, the source ``origin`` (genotype,
    widths, classes, export from its manifest) and the precision of the built ``onnx_path``."""
    from nasfcos.runtime.export import tool_versions

    precision, lowered_manifest = _onnx_precision(onnx_path)
    _, onnx_manifest = _onnx_precision(origin)
    io = _engine_io(trt, engine)
    manifest: dict[str, Any] = {
        "format": "nasfcos-export/1",
        "artifact": {"file": engine_path.name, "type": "tensorrt", "sha256": sha256_bytes(data),
                     "bytes": len(data)},
        "source": {"onnx": os.path.relpath(origin.resolve(), engine_path.resolve().parent),
                   "onnx_sha256": sha256_file(origin)},
        "inputs": [{"name": n, "shape": list(s), "dtype": d} for n, s, d, is_in in io if is_in],
        "outputs": [{"name": n, "shape": list(s), "dtype": d} for n, s, d, is_in in io
                    if not is_in],
        "build": {"precision": precision, **build,
                  "device_memory_bytes": int(engine.device_memory_size_v2)},
        "device": cuda.device_info(),
        "tools": {**tool_versions(), "tensorrt": trt.__version__},
        "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    if onnx_manifest is not None:
        for key in ("genotype", "widths", "classes", "export"):
            if key in onnx_manifest:
                manifest[key] = onnx_manifest[key]
        manifest["source"]["model"] = onnx_manifest.get("source", {})
    if lowered_manifest is not None and "precision" in lowered_manifest:
        manifest["precision"] = lowered_manifest["precision"]
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
    """An ``IOutputAllocator`` backed by torch CUDA byte buffers (data-dependent outputs).

    Implements ``reallocate_output_async`` and ``notify_shape`` (10.x and 11.x);
    ``reallocate_output`` delegates to it for callers that still use the synchronous form.
    """

    class TorchOutputAllocator(trt.IOutputAllocator):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.IOutputAllocator.__init__(self)
            self.buffers: dict[str, Any] = {}
            self.shapes: dict[str, tuple[int, ...]] = {}

        def reallocate_output_async(self, tensor_name: str, memory: int, size: int,
                                    alignment: int, stream: int) -> int:
            buf = self.buffers.get(tensor_name)
            if buf is None or buf.numel() < size:
                buf = cuda.empty((max(int(size), 1),), cuda.dtype("uint8"), device)
                self.buffers[tensor_name] = buf
            return int(buf.data_ptr())

        def reallocate_output(self, tensor_name: str, memory: int, size: int,
                              alignment: int) -> int:
            return self.reallocate_output_async(tensor_name, memory, size, alignment, 0)

        def notify_shape(self, tensor_name: str, shape: Any) -> None:
            self.shapes[tensor_name] = tuple(shape)

    return TorchOutputAllocator()


class TrtRunner(Runner):
    """Runs a serialized engine; a ``.onnx`` (or ``model.py``) source is built first.

    ``shapes`` (per input min/opt/max) is needed to build from a dynamic ONNX file; for a
    ``model.py`` the profile defaults to 320..1344 px with 800 px optimal.  The engine runs
    at the precision its ONNX file has; ``fp16`` / ``int8_calib`` (legacy) lower an fp32
    source first (see :class:`TrtBuildOptions`), and ``export={"precision": ...}`` does it
    for a ``model.py``.
    """

    backend = "tensorrt"

    def __init__(self, model: str | Path, device: str = "cuda", *, fp16: bool = False,
                 int8_calib: str | Path | None = None, workspace_gb: float = 4.0,
                 shapes: dict[str, ShapeTriple] | None = None,
                 timing_cache: str | Path | None = None, export: dict[str, Any] | None = None,
                 engine_dir: str | Path | None = None) -> None:
        super().__init__()
        trt = require_tensorrt()
        t0 = time.perf_counter()
        if not device.startswith("cuda"):
            raise NasfcosError(f"tensorrt runs on a CUDA device, not {device!r}")
        self.device = device
        path = Path(model)
        if FORMS.get(path.suffix.lower()) == "model.py":
            res = self._export(path, export, size=(800, 800))
            path, man = res.onnx_path, res.manifest
            if shapes is None and man["export"]["dynamic"]:
                kind = man["source"]["kind"]
                shapes = profile_shapes(kind, [(320, 320), (800, 800), (1344, 1344)],
                                        (export or {}).get("batch", 1) if kind == "detector"
                                        else 1, man["widths"].get("in_channels"))
        if FORMS.get(path.suffix.lower()) == "onnx":
            self._tmp = self._tmp or tempfile.TemporaryDirectory(prefix="nasfcos-trt-")
            tag = ".fp16" if fp16 else ".int8" if int8_calib else ""
            engine_path = Path(engine_dir or self._tmp.name) / (path.stem + tag + ".engine")
            build_engine(path, engine_path, TrtBuildOptions(
                fp16=fp16, int8_calib=Path(int8_calib) if int8_calib else None,
                workspace_gb=workspace_gb, shapes=shapes,
                timing_cache=Path(timing_cache) if timing_cache else None))
            path = engine_path
        if not path.is_file():
            raise NasfcosError(f"{path}: no such engine file")
        self.path = path
        self.precision = _onnx_precision(path, "unknown")[0]
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise NasfcosError(f"{path}: TensorRT cannot deserialize it (built with another "
                               "TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        self._trt = trt
        io = _engine_io(trt, self.engine)
        self._set_io([n for n, _, _, is_in in io if is_in], [n for n, _, _, is_in in io if not is_in],
                     [[d if d >= 0 else None for d in s] for _, s, _, is_in in io if is_in], path)
        self._dtypes = {n: cuda.dtype(d) for n, _, d, _ in io}
        self.stream = cuda.stream(device)
        self._inputs: list[Any] = []
        self._outputs: dict[str, Any] = {}
        self._allocator: Any = None
        self.setup_seconds = time.perf_counter() - t0

    def bind(self, *arrays: np.ndarray) -> None:
        self._check_arity(arrays)
        ctx = self.context
        self._inputs = []
        for name, a in zip(self.input_names, arrays, strict=True):
            t = cuda.upload(a, self._dtypes[name], self.device, self.stream)
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
                buf = cuda.empty(shape, self._dtypes[name], self.device)
                ctx.set_tensor_address(name, buf.data_ptr())
                self._outputs[name] = buf

    def run(self) -> None:
        if not self.context.execute_async_v3(cuda.stream_handle(self.stream)):
            raise NasfcosError("tensorrt: execute_async_v3 failed (see the TensorRT log)")

    def synchronize(self) -> None:
        self.stream.synchronize()

    def cuda_stream(self) -> Any:
        """The torch CUDA stream the engine runs on (for CUDA-event timing)."""
        return self.stream

    def fetch(self) -> list[np.ndarray]:
        out = []
        for name in self.output_names:
            buf = self._outputs[name]
            if buf is None:
                shape = self._allocator.shapes[name]
                dtype = self._dtypes[name]
                n = int(np.prod(shape)) * dtype.itemsize
                raw = self._allocator.buffers[name][:n]
                buf = raw.view(dtype).reshape(shape)
            out.append(buf.cpu().numpy())
        return out

    def close(self) -> None:
        self._inputs, self._outputs = [], {}
        self.context = None
        self.engine = None
        super().close()

    def info(self) -> dict[str, Any]:
        mem = int(self.engine.device_memory_size_v2) if self.engine is not None else None
        return {**super().info(), "tensorrt": self._trt.__version__,
                "precision": self.precision, "device_memory_bytes": mem,
                **cuda.device_info(self.device)}


__all__ = ["MAX_TRT_MAJOR", "MIN_TRT_VERSION", "TRT_API", "TRT_MISSING", "TrtBuildOptions",
           "TrtRunner", "build_engine", "check_version", "lower_for_trt", "network_flags",
           "profile_shapes", "require_tensorrt", "tensorrt_status", "trt_version"]
