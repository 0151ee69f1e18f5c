"""One interface over every backend: numpy arrays in, numpy arrays out.

>>> runner = make_runner("model.onnx")                    # doctest: +SKIP
>>> outs = runner(*make_inputs(runner.kind, (800, 800), in_channels=runner.in_channels))
>>> runner.close()

Backends: ``torch`` (eager; ``torch:bf16`` under bf16 autocast), ``torch-compile``
(``torch.compile`` with Inductor, weights frozen), ``onnxruntime``, ``openvino`` (the
``[openvino]`` extra; ``openvino:bf16``, ``openvino:int8``: see
:mod:`nasfcos.runtime.openvino_rt`) and ``tensorrt`` (see :mod:`nasfcos.runtime.trt`).  ``backend=None``
picks one from the file suffix: ``.py`` -> torch, ``.onnx`` -> onnxruntime,
``.engine``/``.plan`` -> tensorrt.  A ``model.py`` given to ``onnxruntime`` or ``tensorrt`` is
exported on the fly (dynamic shapes) into a temporary folder.

Besides ``__call__``, runners split a call into ``bind`` (stage inputs, on the device for GPU
backends), ``run`` (launch on the staged inputs; asynchronous on GPU), ``synchronize`` and
``fetch`` (outputs as numpy), so the benchmark can time the computation alone.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nasfcos.errors import BackendUnavailable, NasfcosError, first_line
from nasfcos.runtime.artifact import FORM_BACKENDS, Artifact, form_of, open_artifact
from nasfcos.runtime.manifest import Manifest
from nasfcos.runtime.models import LoadedModel, load_model
from nasfcos.runtime.runner_base import Runner, kind_from_inputs

BACKENDS: tuple[str, ...] = ("torch", "torch-compile", "onnxruntime", "openvino", "tensorrt")
#: Run-time precisions a backend takes as ``BACKEND:PRECISION`` (its default first); other
#: precisions are built into the file (``nasfcos export --precision``).
RUNTIME_PRECISIONS: dict[str, tuple[str, ...]] = {"torch": ("fp32", "bf16"),
                                                  "openvino": ("fp32", "bf16", "int8")}


def split_backend(spec: str) -> tuple[str, str | None]:
    """``"openvino:bf16"`` -> ``("openvino", "bf16")``; ``"onnxruntime"`` -> ``(.., None)``.

    One-line error for an unknown backend or a precision the backend does not run."""
    backend, _, prec = spec.strip().partition(":")
    if backend not in BACKENDS:
        raise NasfcosError(f"unknown backend {backend!r} (expected {', '.join(BACKENDS)})")
    if not prec:
        return backend, None
    have = RUNTIME_PRECISIONS.get(backend, ())
    if prec not in have:
        raise NasfcosError(f"{backend} takes no run-time precision {prec!r}"
                           + (f" (have {', '.join(have)})" if have else
                              " (build it into the file: nasfcos export --precision)"))
    return backend, prec


#: The torch runner's autocast precisions: (device type, dtype name).  bf16 on the CPU
#: (``torch:bf16``), fp16 on a CUDA GPU (the GPU plan's "PyTorch fp16" row; weights stay fp32).
TORCH_AUTOCAST: dict[str, tuple[str, str]] = {"bf16": ("cpu", "bfloat16"),
                                              "fp16": ("cuda", "float16")}

#: Input size (HxW) of the seeded example on which the eager inference copy is parity-checked
#: (above 128 px, so that p7 is not 1 x 1).
EAGER_CHECK_SIZE = (160, 160)


class TorchRunner(Runner):
    """Eager PyTorch on a compiled ``model.py`` (or a :class:`LoadedModel`).

    ``optimize`` (default): run the inference copy of :func:`nasfcos.runtime.eager.prepare_eager`
    (BatchNorms folded into their convs, channels_last backbone; parity-checked on a seeded
    example, else the model as written runs).  ``optimize=False`` runs the module exactly as
    the file builds it (the reference of ``check``).  When the runner loaded the file itself and
    the copy is used, ``model.net`` is that copy (one set of weights in memory; its state_dict
    differs from the file's): use ``optimize=False`` for the model as written.
    """

    backend = "torch"

    def __init__(self, model: str | Path | LoadedModel, device: str = "cpu", *,
                 kind: str | None = None, seed: int = 0, weights: str | Path | None = None,
                 threads: int | None = None, overrides: dict[str, Any] | None = None,
                 optimize: bool = True, precision: str = "fp32") -> None:
        super().__init__()
        import torch

        t0 = time.perf_counter()
        if precision != "fp32" and precision not in TORCH_AUTOCAST:
            raise NasfcosError(f"{self.backend}: unknown precision {precision!r} (have "
                               f"fp32, {', '.join(TORCH_AUTOCAST)})")
        if precision in TORCH_AUTOCAST and not device.startswith(TORCH_AUTOCAST[precision][0]):
            raise NasfcosError(f"{self.backend}: {precision} autocast is a "
                               f"{TORCH_AUTOCAST[precision][0]} option here")
        #: ``bf16``/``fp16``: convolutions and matmuls under ``torch.autocast`` (the compiled
        #: model keeps DeformConv sampling coordinates and post-processing in float32);
        #: outputs are returned as float32.
        self.precision = precision
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable(f"{self.backend}: no CUDA GPU available "
                                     "(torch.cuda.is_available() is False)")
        if not device.startswith("cuda") and device != "cpu":
            raise NasfcosError(f"unknown device {device!r} (expected cpu or cuda)")
        self.device = device
        if threads:
            torch.set_num_threads(int(threads))
        self.threads = torch.get_num_threads()
        owned = not isinstance(model, LoadedModel)
        self.model = load_model(model, kind, seed=seed, weights=weights,
                                **(overrides or {})) if owned else model
        self.net = self.model.net.to(device)
        #: bytes of the parameters of the model as written (before any folding)
        self.param_bytes = sum(p.numel() * p.element_size() for p in self.net.parameters())
        self.eager: dict[str, Any] = {"applied": False, "reason": "optimize=False"}
        if optimize:
            from nasfcos.runtime.eager import prepare_eager

            example = [torch.from_numpy(a).to(device) for a in self.model.inputs(EAGER_CHECK_SIZE)]
            self.net, report = prepare_eager(self.net, example)
            self.eager = report.to_dict()
            if report.applied and owned:  # one copy of the weights: drop the model as written
                self.model = dataclasses.replace(self.model, net=self.net)
        self.kind = self.model.kind
        self.in_channels = self.model.in_channels
        self.input_names = list(self.model.input_names)
        self.output_names = list(self.model.output_names)
        self._inputs: list[Any] = []
        self._outputs: Sequence[Any] = ()
        self.setup_seconds = time.perf_counter() - t0

    def bind(self, *arrays: np.ndarray) -> None:
        import torch

        self._check_arity(arrays)
        self._inputs = [torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in arrays]

    def _forward(self) -> Sequence[Any]:
        if self.precision in TORCH_AUTOCAST:
            import torch

            device_type, dtype = TORCH_AUTOCAST[self.precision]
            with torch.autocast(device_type, getattr(torch, dtype)):
                return self.net(*self._inputs)
        return self.net(*self._inputs)

    def run(self) -> None:
        import torch

        with torch.inference_mode():
            self._outputs = self._forward()

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize(self.device)

    def fetch(self) -> list[np.ndarray]:
        return [(o.float() if o.is_floating_point() else o).detach().cpu().numpy()
                for o in self._outputs]

    def cuda_stream(self) -> Any:
        if self.device.startswith("cuda"):
            import torch

            return torch.cuda.current_stream(self.device)
        return None

    def close(self) -> None:
        self._inputs, self._outputs = [], ()

    def info(self) -> dict[str, Any]:
        return {**super().info(), "threads": self.threads, "eager": self.eager,
                "precision": self.precision}


class TorchCompileRunner(TorchRunner):
    """``torch.compile`` (Inductor) with frozen weights; compiles on the first run per shape.

    A failed compilation raises :class:`BackendUnavailable` (so a benchmark can skip it).
    """

    backend = "torch-compile"

    def __init__(self, model: str | Path | LoadedModel, device: str = "cpu", *,
                 mode: str | None = None, **kwargs: Any) -> None:
        super().__init__(model, device, **kwargs)
        import torch

        self.mode = mode
        self.compiled = torch.compile(self.net, mode=mode, dynamic=False)
        self.compile_seconds: dict[str, float] = {}

    def _forward(self) -> Sequence[Any]:
        import torch
        from torch._inductor import config as inductor_config

        key = "x".join(str(d) for d in self._inputs[0].shape)
        first = key not in self.compile_seconds
        t0 = time.perf_counter()
        try:
            with inductor_config.patch(freezing=True):
                out = self.compiled(*self._inputs)
        except Exception as exc:
            if not first:
                raise
            line = first_line(exc)
            raise BackendUnavailable(f"torch-compile: compilation failed ({line})") from exc
        if first:
            if self.device.startswith("cuda"):
                torch.cuda.synchronize(self.device)
            self.compile_seconds[key] = time.perf_counter() - t0
        return out

    def info(self) -> dict[str, Any]:
        return {**super().info(), "mode": self.mode or "default", "freezing": True,
                "compile_seconds": {k: round(v, 1) for k, v in self.compile_seconds.items()}}


def ort_session_options(threads: int | None = None, *, opt_level: str = "all",
                        optimized_path: str | Path | None = None) -> Any:
    """ONNX Runtime session options tuned for latency.

    Graph optimisations at ``opt_level`` (``basic``, ``extended``, ``all`` = layout
    optimisations incl. NCHWc convolutions on x86), sequential execution, one inter-op thread,
    ``threads`` intra-op threads (None = ORT's default, one per physical core) that do not
    spin while idle.
    """
    import onnxruntime as ort

    levels = {"none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    if opt_level not in levels:
        raise NasfcosError(f"unknown ORT optimisation level {opt_level!r} ({', '.join(levels)})")
    so = ort.SessionOptions()
    so.graph_optimization_level = levels[opt_level]
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    if threads:
        so.intra_op_num_threads = int(threads)
    so.log_severity_level = 4  # errors surface as exceptions (one line, see run())
    # idle pool threads sleep instead of spinning: they would take a core from the one thread
    # still working (single-threaded kernels such as DeformConv) or from other processes
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    return so


class OrtRunner(Runner):
    """ONNX Runtime session (CPU, or CUDA with ``onnxruntime-gpu``)."""

    backend = "onnxruntime"

    def __init__(self, model: str | Path, device: str = "cpu", *, threads: int | None = None,
                 opt_level: str = "all", optimized_path: str | Path | None = None,
                 export: dict[str, Any] | None = None, manifest: Manifest | None = None
                 ) -> None:
        super().__init__()
        import onnxruntime as ort

        t0 = time.perf_counter()
        path = Path(model)
        if form_of(path) == "model.py":
            path = self._export(path, export).onnx_path
            manifest = Manifest.load(path)
        if not path.is_file():
            raise NasfcosError(f"{path}: no such ONNX file")
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable("onnxruntime: CUDAExecutionProvider not available "
                                         "(install onnxruntime-gpu)")
            dev_id = int(device.split(":")[1]) if ":" in device else 0
            providers: list[Any] = [("CUDAExecutionProvider", {"device_id": dev_id}),
                                    "CPUExecutionProvider"]
        elif device == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            raise NasfcosError(f"unknown device {device!r} (expected cpu or cuda)")
        self.device = device
        self.path = path
        self.threads = threads
        self.opt_level = opt_level
        try:
            self.session = ort.InferenceSession(
                str(path), ort_session_options(threads, opt_level=opt_level,
                                               optimized_path=optimized_path),
                providers=providers)
        except Exception as exc:
            line = first_line(exc, 300)
            raise NasfcosError(f"{path}: ONNX Runtime cannot load it ({line})") from exc
        ins = self.session.get_inputs()
        self._set_io([i.name for i in ins], [o.name for o in self.session.get_outputs()],
                     [[d if isinstance(d, int) else None for d in i.shape] for i in ins], path)
        self._feed: dict[str, Any] = {}
        self._outputs: list[Any] = []
        self._binding: Any = None
        self._ranges = manifest.dynamic_ranges if manifest is not None else {}
        self.setup_seconds = time.perf_counter() - t0

    def bind(self, *arrays: np.ndarray) -> None:
        self._check_arity(arrays)
        self._check_ranges(arrays)
        arrays = tuple(np.ascontiguousarray(a) for a in arrays)
        if self.device.startswith("cuda"):
            import onnxruntime as ort

            dev_id = int(self.device.split(":")[1]) if ":" in self.device else 0
            binding = self.session.io_binding()
            for name, a in zip(self.input_names, arrays, strict=True):
                binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(a, "cuda", dev_id))
            for name in self.output_names:
                binding.bind_output(name, "cuda", dev_id)
            self._binding = binding
        else:
            self._feed = dict(zip(self.input_names, arrays, strict=True))

    def run(self) -> None:
        try:
            if self._binding is not None:
                self.session.run_with_iobinding(self._binding)
            else:
                self._outputs = self.session.run(self.output_names, self._feed)
        except Exception as exc:
            raise NasfcosError(f"onnxruntime: {_ort_message(exc)}") from exc

    def synchronize(self) -> None:
        if self._binding is not None:
            self._binding.synchronize_outputs()

    def fetch(self) -> list[np.ndarray]:
        if self._binding is not None:
            return list(self._binding.copy_outputs_to_cpu())
        return list(self._outputs)

    def close(self) -> None:
        self._feed, self._outputs, self._binding = {}, [], None
        self.session = None
        super().close()

    def info(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {**super().info(), "threads": self.threads, "opt_level": self.opt_level,
                "providers": self.session.get_providers() if self.session else [],
                "onnxruntime": ort.__version__}


def _ort_message(exc: Exception) -> str:
    """The informative part of an ONNX Runtime error, on one line."""
    text = " ".join(str(exc).split())
    if "Status Message:" in text:
        node = text.split("while running ", 1)[-1].split(" Status Message:", 1)[0]
        text = node + ": " + text.split("Status Message:", 1)[1].split(" : ", 2)[-1]
    return text[:300]


_OPTS: dict[str, set[str]] = {
    "torch": {"kind", "seed", "weights", "threads", "overrides", "optimize", "precision"},
    "torch-compile": {"kind", "seed", "weights", "threads", "mode", "overrides", "optimize"},
    "onnxruntime": {"threads", "opt_level", "optimized_path", "export"},
    "openvino": {"threads", "precision", "calib", "keep_float", "export"},
    "tensorrt": {"fp16", "int8_calib", "workspace_gb", "shapes", "timing_cache", "export",
                 "engine_dir"},
}


def make_runner(artifact: str | Path | Artifact, backend: str | None = None,
                device: str = "cpu", **opts: Any) -> Runner:
    """A runner for ``artifact`` (a path, or an opened :class:`Artifact`) on ``backend``
    (None: the form's default) and ``device``.

    ``opts`` by backend: torch/torch-compile ``kind`` (``decoder``/``detector``), ``seed``,
    ``weights``, ``threads`` (torch-compile also ``mode``); onnxruntime ``threads``,
    ``opt_level``, ``optimized_path``, ``export`` (ExportOptions fields for a .py);
    tensorrt ``fp16``, ``int8_calib``, ``workspace_gb``, ``shapes``, ``timing_cache`` (for a
    .onnx or .py source, which is built into an engine first).  Options that a backend
    does not take are ignored only when None, else rejected.  A model.py already opened
    (``artifact.model``) is not imported again.
    """
    art = artifact if isinstance(artifact, Artifact) else None
    path = art.path if art else Path(artifact)
    if not path.exists():
        raise NasfcosError(f"{path}: no such file")
    form = art.form if art else form_of(path)
    if art is None and form != "model.py":
        art = open_artifact(path, strict=False)  # its manifest: dynamic ranges
    backend = backend or FORM_BACKENDS[form]
    if form == "model.py" and split_backend(backend)[0] in ("onnxruntime", "openvino", "tensorrt"):
        # an ONNX engine runs a model.py through an export of it: the model's own options
        # (kind, trained weights, seed) belong to that export, not to the engine
        if opts.get("overrides"):
            raise NasfcosError(f"{path}: {backend} runs an export of the model as compiled; changed "
                               f"widths or classes ({', '.join(sorted(opts['overrides']))}) need the "
                               "torch backend (or a model.py compiled with them)")
        opts.pop("overrides", None)
        moved = {k: opts.pop(k) for k in ("kind", "seed", "weights") if opts.get(k) is not None}
        if moved:
            opts["export"] = {**(opts.get("export") or {}), **moved}
    backend, opts = _backend_options(backend, opts)
    if backend in ("torch", "torch-compile"):
        if form != "model.py":
            raise NasfcosError(f"{path}: the {backend} backend needs a compiled model.py")
        cls = TorchRunner if backend == "torch" else TorchCompileRunner
        fresh = {"kind", "seed", "weights", "overrides"} & set(opts)
        return cls(art.model if art and art.model is not None and not fresh else path, device,
                   **opts)
    if backend == "tensorrt":
        from nasfcos.runtime.trt import TrtRunner  # lazy: tensorrt is an optional extra

        # TensorRT only runs on GPUs; 'cpu' is the generic default
        return TrtRunner(path, "cuda" if device == "cpu" else device, **opts)
    if backend == "openvino":
        from nasfcos.runtime.openvino_rt import OvRunner, require_openvino

        require_openvino(nncf=opts.get("precision") == "int8")  # before any export
    if form == "engine":
        raise NasfcosError(f"{path}: the {backend} backend needs a .onnx (or model.py)")
    manifest = art.manifest if art else None
    if backend == "onnxruntime":
        return OrtRunner(path, device, manifest=manifest, **opts)
    return OvRunner(path, device, manifest=manifest, **opts)  # a model.py: exported by it


def _backend_options(backend: str, opts: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(backend, the options it takes) from ``BACKEND[:PRECISION]`` and the given options;
    raises for a precision that disagrees and for an option the backend does not take."""
    backend, prec = split_backend(backend)
    if prec is not None:
        if opts.get("precision") not in (None, prec):
            raise NasfcosError(f"{backend}:{prec} and precision={opts['precision']!r} disagree")
        opts["precision"] = prec
    extra = {k for k, v in opts.items() if v is not None} - _OPTS[backend]
    if extra:
        raise NasfcosError(f"{backend}: unknown option(s) {', '.join(sorted(extra))}")
    return backend, {k: v for k, v in opts.items() if v is not None}


__all__ = ["BACKENDS", "RUNTIME_PRECISIONS", "OrtRunner", "split_backend", "Runner", "TorchCompileRunner", "TorchRunner",
           "kind_from_inputs", "make_runner", "ort_session_options"]
