"""Latency benchmark across backends and input sizes, the way a deployment engineer measures.

Protocol (:func:`run_benchmark`): one runner per backend; per input size the same seeded
inputs for every backend (staged once, outside the timed region); ``warmup`` runs
excluded; then ``runs`` timed runs, each one forward pass with outputs ready:
``time.perf_counter_ns`` around run + synchronize on CPU, CUDA events recorded on the
runner's stream on GPU.  Statistics: median, mean, p90, p99, min, max, std (ms) and FPS
(``batch / median``).  The report also holds the machine, library versions, the model's
FLOPs per size and a fp32 matmul peak measured in the same run, so achieved GFLOP/s can be
read against what this machine can do.
"""

from __future__ import annotations

import datetime as _dt
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nasfcos.errors import BackendUnavailable, FieldError, NasfcosError
from nasfcos.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    figure_bytes,
    regular_file,
)
from nasfcos.modelfile import ModelInfo
from nasfcos.progress import quiet
from nasfcos.runtime.artifact import Artifact, form_of, open_artifact
from nasfcos.runtime.machine import describe, machine_info
from nasfcos.runtime.models import make_inputs
from nasfcos.runtime.runners import Runner, make_runner, split_backend

REPORT_FORMAT = "nasfcos-bench/1"
DEFAULT_SIZES: tuple[tuple[int, int], ...] = ((600, 600), (800, 800), (1000, 1000))


@dataclass
class BenchConfig:
    """Benchmark settings (see the module docstring for the protocol).

    ``max_seconds``: optional time budget per (backend, size) cell for the timed runs; the
    cell stops early once it is spent, after at least ``min_runs`` runs (the report says
    how many runs were made).  ``onnx_static``: export one static-shape ONNX per size for
    a ``model.py`` (instead of one dynamic-shape file).
    """

    backends: list[str] | None = None
    #: None: :data:`DEFAULT_SIZES`, or a static export's own size
    sizes: list[tuple[int, int]] | None = None
    batch: int = 1
    warmup: int = 10
    runs: int = 100
    threads: int | None = None
    device: str = "cpu"
    seed: int = 0
    kind: str | None = None
    max_seconds: float | None = None
    min_runs: int = 3
    matmul_peak: bool = True
    flops: bool = True
    onnx_static: bool = False
    ort_opt_level: str = "all"
    trt_fp16: bool = False
    #: For a model.py: an already exported ONNX file for onnxruntime/tensorrt (no re-export).
    onnx_path: Path | None = None
    #: For a detector model.py: add the route without nasfcos (:func:`baseline_runner`).
    baseline: bool = False
    #: Calibration of ``openvino:int8`` (a :class:`~nasfcos.runtime.precision.PrecisionOptions`).
    calib: Any = None
    #: With no ``backends`` on cpu: also time the engine :func:`nasfcos.runtime.cpu_default.
    #: choose_cpu_engine` picks for this file (``nasfcos bench`` sets it); the choice lands in
    #: ``cpu_default``.
    auto_cpu: bool = False
    cpu_default: Any = None


def latency_stats(times_ms: Sequence[float], batch: int = 1) -> dict[str, float]:
    """median, mean, p90, p99, min, max, std (ms) and fps of per-run latencies."""
    a = np.asarray(times_ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no timings")
    median = float(np.median(a))
    return {"median_ms": median, "mean_ms": float(a.mean()),
            "p90_ms": float(np.percentile(a, 90)), "p99_ms": float(np.percentile(a, 99)),
            "min_ms": float(a.min()), "max_ms": float(a.max()), "std_ms": float(a.std()),
            "fps": batch * 1000.0 / median if median > 0 else math.inf}


def median_ratio_interval(num_ms: Sequence[float], den_ms: Sequence[float], *,
                          paired: bool, level: float = 0.95, resamples: int = 2000,
                          seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of ``median(num) / median(den)`` at confidence ``level``.

    ``paired``: the i-th runs of both were timed together (alternating blocks), so runs are
    resampled as pairs (a slow phase of the machine enters both medians of a resample
    together); otherwise each side is resampled on its own, and the interval only reflects
    the spread within each series, not drift between two series timed at different times.
    Percentile bootstrap with a fixed ``seed`` (repeatable).
    """
    a = np.asarray(num_ms, dtype=np.float64)
    b = np.asarray(den_ms, dtype=np.float64)
    if a.size == 0 or b.size == 0 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("need finite timings on both sides")
    if paired and a.size != b.size:
        raise ValueError(f"paired timings differ in length ({a.size} vs {b.size})")
    if not 0 < level < 1 or resamples < 1:
        raise ValueError("level must lie in (0, 1) and resamples be positive")
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, a.size, size=(resamples, a.size))
    ib = ia if paired else rng.integers(0, b.size, size=(resamples, b.size))
    ratios = np.median(a[ia], axis=1) / np.median(b[ib], axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(ratios, [tail, 100 - tail])
    return float(lo), float(hi)


def matmul_peak_gflops(threads: int | None = None, n: int = 2048,
                       seconds: float = 1.5, dtype: str = "float32") -> dict[str, float]:
    """Matmul throughput of this machine (torch, ``threads`` threads) in ``dtype``
    (``float32``, or ``bfloat16``: oneDNN's bf16 kernels where the CPU has them): median
    GFLOP/s."""
    import torch

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        dt = getattr(torch, dtype)
        a = torch.randn(n, n).to(dt)
        b = torch.randn(n, n).to(dt)
        c = torch.empty(n, n, dtype=dt)
        for _ in range(2):
            torch.mm(a, b, out=c)
        times = []
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end or len(times) < 5:
            t0 = time.perf_counter_ns()
            torch.mm(a, b, out=c)
            times.append((time.perf_counter_ns() - t0) / 1e9)
        flop = 2.0 * n**3
        return {"gflops": flop / float(np.median(times)) / 1e9,
                "best_gflops": flop / min(times) / 1e9, "n": n, "runs": len(times),
                "threads": torch.get_num_threads()}
    finally:
        torch.set_num_threads(old)


def count_flops(lm: Any, size: tuple[int, int], batch: int = 1) -> float:
    """FLOPs (2 x multiply-accumulates) of one forward pass of a :class:`LoadedModel`.

    Counted by ``torch.utils.flop_counter`` on the ``meta`` device (no arithmetic):
    convolutions, matmuls and deformable convolutions (their convolution MACs, as
    ``nasfcos profile`` does); element-wise ops, resizes and a detector's post-processing
    are not counted.  Divide by 2 for the MACs that ``nasfcos profile`` reports.
    """
    import copy

    import torch

    from nasfcos.compiler.profile import count_macs
    from nasfcos.modelfile import RawForward
    from nasfcos.runtime.models import input_shapes

    net = copy.deepcopy(lm.net).to("meta")
    fn = RawForward(net.detector) if lm.kind == "detector" else net
    tensors = [torch.empty(s, device="meta")
               for s in input_shapes(lm.kind, size, batch, lm.in_channels)]
    return 2.0 * count_macs(fn, *tensors)


def _time_cell(runner: Runner, inputs: list[np.ndarray], cfg: BenchConfig,
               tick: Callable[[float], None] | None = None) -> tuple[list[float], dict[str, Any]]:
    """Warm up, then time runs; returns per-run milliseconds and notes (``tick`` gets each
    run's milliseconds)."""
    runner.bind(*inputs)
    notes: dict[str, Any] = {}
    t0 = time.perf_counter()
    runner.run()  # first run: compilation / allocation happen here
    runner.synchronize()
    notes["first_run_ms"] = (time.perf_counter() - t0) * 1000
    for _ in range(max(cfg.warmup - 1, 0)):
        runner.run()
        runner.synchronize()
    stream = runner.cuda_stream()
    times: list[float] = []
    budget_end = time.perf_counter() + cfg.max_seconds if cfg.max_seconds else math.inf
    if stream is not None:
        import torch

        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        notes["timer"] = "cuda-events"
    else:
        notes["timer"] = "perf_counter_ns"
    for i in range(cfg.runs):
        if stream is not None:
            start.record(stream)
            runner.run()
            end.record(stream)
            end.synchronize()
            times.append(float(start.elapsed_time(end)))
        else:
            t = time.perf_counter_ns()
            runner.run()
            runner.synchronize()
            times.append((time.perf_counter_ns() - t) / 1e6)
        if tick is not None:
            tick(times[-1])
        if i + 1 >= cfg.min_runs and time.perf_counter() > budget_end:
            notes["stopped_early"] = f"time budget {cfg.max_seconds}s after {i + 1} runs"
            break
    return times, notes


#: Name of the ``--baseline`` row: the route a user would take without nasfcos.
BASELINE_BACKEND = "onnxruntime-baseline"


def baseline_detector(lm: Any) -> Any:
    """The same detector without nasfcos's compiler: a flat ``images -> (boxes, scores, labels)``
    module with the same backbone, weights and post-processing as ``lm`` (a detector
    :class:`~nasfcos.runtime.models.LoadedModel`) whose decoder is the reference interpreter
    (``compiler/reference.py``, ``deform_conv2d`` everywhere), in eval mode."""
    import copy

    from nasfcos.compiler import build_reference
    from nasfcos.compiler.backbones import backbone_channels

    if lm.kind != "detector":
        raise NasfcosError("the baseline needs a detector model.py (compile it with --detector)")
    det = copy.deepcopy(lm.net.detector)
    ref = build_reference(ModelInfo.from_module(lm.module).genotype, fpn_channels=lm.info["fpn_channels"],
                          head_channels=lm.info["head_channels"],
                          num_classes=lm.info["num_classes"],
                          in_channels=backbone_channels(det.backbone_name))
    ref.load_state_dict(det.decoder.state_dict(), strict=True)
    det.decoder = ref.eval()
    return type(lm.net)(det).eval()


def export_baseline(lm: Any, out: str | Path, size: tuple[int, int], *, dynamic: bool = False,
                    seed: int = 0) -> Path:
    """Export :func:`baseline_detector` the plain way: ``torch.onnx.export(dynamo=True,
    opset_version=19)`` with the exporter's defaults, no simplification, no graph passes.

    Dynamic: batch, height and width declared ``Dim.DYNAMIC`` on a batch-1 example of
    ``size``.  The interpreter's ``int()`` resize sizes are baked into such a graph, so it
    runs at its traced spatial size only (nasfcos's dynamic export runs at any size in its
    ranges).  Returns ``out``.
    """
    import torch

    net = baseline_detector(lm)
    image = torch.from_numpy(lm.inputs(size, 1, seed=seed)[0])
    dyn = torch.export.Dim.DYNAMIC
    with quiet(), torch.no_grad():
        torch.onnx.export(net, (image,), str(out), dynamo=True, opset_version=19,
                          input_names=list(lm.input_names), output_names=list(lm.output_names),
                          dynamic_shapes=({0: dyn, 2: dyn, 3: dyn},) if dynamic else None)
    return Path(out)


def plain_session(path: str | Path, threads: int | None = None) -> Any:
    """ONNX Runtime CPU session with default ``SessionOptions`` and ``threads`` intra-op threads."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def baseline_runner(lm: Any, size: tuple[int, int], cfg: BenchConfig) -> Runner:
    """ONNX Runtime runner on :func:`export_baseline` of the detector ``lm`` (a
    :class:`~nasfcos.runtime.models.LoadedModel`) at ``size`` (static, or dynamic unless
    ``cfg.onnx_static``) with a :func:`plain_session`."""
    import tempfile

    from nasfcos.runtime.runners import OrtRunner

    t0 = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="nasfcos-baseline-")
    onnx_path = export_baseline(lm, Path(tmp.name) / "baseline.onnx", size,
                                dynamic=not cfg.onnx_static, seed=cfg.seed)
    runner = OrtRunner(onnx_path, threads=cfg.threads)
    runner.session = plain_session(onnx_path, cfg.threads)
    runner.backend, runner.opt_level, runner._tmp = BASELINE_BACKEND, "default options", tmp
    runner.setup_seconds = time.perf_counter() - t0
    return runner


def ort_op_profile(session_or_path: Any, feed: dict[str, np.ndarray], runs: int = 3,
                   threads: int | None = None) -> dict[str, dict[str, float]]:
    """Per op type share of ONNX Runtime CPU kernel time: ``{op: {"share", "ms", "nodes"}}``.

    A profiling session is made from the model file (``session_or_path``: a path or a
    session whose ``_model_path`` is read) with the runner's options; ``ms`` is per run,
    after one untimed run.  Sorted by share.
    """
    import json
    import tempfile
    from collections import Counter

    import onnxruntime as ort

    from nasfcos.runtime.runners import ort_session_options

    path = getattr(session_or_path, "_model_path", session_or_path)
    so = ort_session_options(threads)
    with tempfile.TemporaryDirectory(prefix="nasfcos-prof-") as tmp:
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "ort")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        for _ in range(runs + 1):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    dur: Counter[str] = Counter()
    nodes: Counter[str] = Counter()
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            dur[e["args"]["op_name"]] += e["dur"]
            nodes[e["args"]["op_name"]] += 1
    total = sum(dur.values()) or 1
    return {op: {"share": round(d / total, 4), "ms": round(d / 1e3 / (runs + 1), 2),
                 "nodes": nodes[op] // (runs + 1)} for op, d in dur.most_common()}


def default_backends(art: Artifact, device: str = "cpu") -> list[str]:
    """Backends that make sense for an artifact: model.py -> torch + onnxruntime (+ tensorrt
    on a GPU machine with TensorRT), ONNX -> onnxruntime (+ tensorrt), engine -> tensorrt."""
    from nasfcos.runtime.trt import tensorrt_status

    trt = ["tensorrt"] if device.startswith("cuda") and tensorrt_status() is None else []
    if art.form == "model.py":
        return ["torch", "onnxruntime", *trt]
    return ["onnxruntime", *trt] if art.form == "onnx" else ["tensorrt"]


def _bench_sizes(art: Artifact, cfg: BenchConfig) -> list[tuple[int, int]]:
    """The sizes to time: ``cfg.sizes`` (default :data:`DEFAULT_SIZES`), except that a static
    export runs at its own size only (other sizes are refused before any work)."""
    if art.size is None:
        return list(cfg.sizes or DEFAULT_SIZES)
    if cfg.sizes and any(tuple(s) != art.size for s in cfg.sizes):
        asked = ",".join(f"{h}x{w}" for h, w in cfg.sizes)
        raise FieldError("sizes", f"{art.path.name} is a static export at {art.size[0]}x"
                         f"{art.size[1]} and cannot run {asked} (leave the sizes out, or "
                         "export it dynamic)")
    if art.batch is not None and cfg.batch != art.batch:
        raise FieldError("batch", f"{art.path.name} is a static export with batch "
                         f"{art.batch}, not {cfg.batch}")
    return [art.size]


def _validate(art: Artifact, cfg: BenchConfig) -> list[str]:
    """The backends to run; one-line errors for a bad configuration, before any work."""
    backends = cfg.backends or default_backends(art, cfg.device)
    for b in backends:
        split_backend(b)  # one-line error for an unknown backend or run-time precision
    if cfg.auto_cpu and not cfg.backends and cfg.device == "cpu" and art.form in (
            "model.py", "onnx"):
        from nasfcos.runtime.cpu_default import choose_cpu_engine

        cfg.cpu_default = choose_cpu_engine(art.path)  # timed beside the suffix default
        if cfg.cpu_default.engine not in backends:
            backends = [*backends, cfg.cpu_default.engine]
    if cfg.runs < 1 or cfg.warmup < 0 or cfg.batch < 1:
        raise NasfcosError("runs must be >= 1, warmup >= 0 and batch >= 1")
    if cfg.baseline:
        if not art.is_model_file or cfg.device != "cpu":
            raise NasfcosError("the baseline needs a detector model.py on the cpu device")
        backends = [*backends, BASELINE_BACKEND]
    return backends


class _Exports:
    """ONNX files a model.py is benchmarked through, made once, visibly, up front: one
    dynamic export (traced at the largest size) shared by onnxruntime and tensorrt, or with
    ``onnx_static`` one static export per size; ``cfg.onnx_path`` instead when given."""

    def __init__(self, art: Artifact, cfg: BenchConfig, sizes: list[tuple[int, int]],
                 backends: list[str], log: Callable[[str], None]) -> None:
        import tempfile

        self.files: dict[tuple[int, int] | None, Artifact] = {}
        self.sizes, self._tmp = sizes, None
        wanted = {"onnxruntime", "openvino", "tensorrt"} & {
            split_backend(b)[0] for b in backends if b != BASELINE_BACKEND}
        if not art.is_model_file or not wanted:
            return
        if cfg.onnx_path is not None:
            self.files[None] = open_artifact(cfg.onnx_path)
            return
        from nasfcos.runtime.export import ExportOptions, export_onnx

        self._tmp = tempfile.TemporaryDirectory(prefix="nasfcos-bench-")
        static = cfg.onnx_static and wanted <= {"onnxruntime", "openvino"}
        largest = max(sizes, key=lambda s: s[0] * s[1])
        for size in sizes if static else [largest]:
            log(f"bench: exporting {art.path.name} to ONNX ({'static' if static else 'dynamic'}"
                f", traced at {size[0]}x{size[1]}) for {', '.join(sorted(wanted))} ...")
            out = Path(self._tmp.name) / f"{art.path.stem}-{size[0]}x{size[1]}.onnx"
            export_onnx(art.model, out, ExportOptions(kind=art.kind, size=size, batch=cfg.batch,
                                                      dynamic=not static, seed=cfg.seed))
            self.files[size if static else None] = open_artifact(out)

    def get(self, size: tuple[int, int]) -> Artifact | None:
        return self.files.get(size, self.files.get(None))

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def _make(art: Artifact, backend: str, cfg: BenchConfig, size: tuple[int, int],
          exports: _Exports) -> Runner:
    """One runner for ``backend`` on ``art`` (through its ONNX export for a model.py)."""
    engine = split_backend(backend)[0] if backend != BASELINE_BACKEND else backend
    if engine in ("torch", "torch-compile"):
        return make_runner(art, backend, cfg.device, threads=cfg.threads)
    if backend == BASELINE_BACKEND:
        return baseline_runner(art.model, size, cfg)
    src = exports.get(size) if art.is_model_file else art
    if engine == "openvino":
        return make_runner(src, backend, cfg.device, threads=cfg.threads,
                           calib=cfg.calib if backend.endswith(":int8") else None)
    if backend == "onnxruntime":
        return make_runner(src, backend, cfg.device, threads=cfg.threads,
                           opt_level=cfg.ort_opt_level)
    from nasfcos.runtime.trt import profile_shapes  # tensorrt: a profile over the sizes

    shapes = None
    sizes = sorted(exports.sizes, key=lambda s: s[0] * s[1])
    if src.form == "onnx" and (src.kind == "detector" or src.in_channels is not None):
        shapes = profile_shapes(src.kind, [sizes[0], sizes[len(sizes) // 2], sizes[-1]],
                                cfg.batch, src.in_channels)
    return make_runner(src, "tensorrt", cfg.device, fp16=cfg.trt_fp16 or None, shapes=shapes)


def _flops(art: Artifact, sizes: list[tuple[int, int]], cfg: BenchConfig,
           model_info: dict[str, Any]) -> dict[str, float]:
    """FLOPs per size of a model.py (informative only: a failure is noted, never fatal)."""
    flops: dict[str, float] = {}
    if not (art.is_model_file and cfg.flops):
        return flops
    for size in sizes:
        try:
            flops[f"{size[0]}x{size[1]}"] = count_flops(art.model, size, cfg.batch)
        except Exception as exc:  # FLOPs are informative only: never fail the bench
            model_info["flops_error"] = f"{type(exc).__name__}: {exc}"[:200]
            break
    return flops


class _Estimate:
    """Says, after the first timed run, about how long the whole benchmark will take
    (per-run time scaled by pixels per size, warm-up included, capped by ``max_seconds``)."""

    def __init__(self, cfg: BenchConfig, cells: list[tuple[str, tuple[int, int]]],
                 log: Callable[[str], None], report: dict[str, Any]) -> None:
        self.cfg, self.cells, self.log, self.report = cfg, cells, log, report

    def first_run(self, ms: float, size: tuple[int, int]) -> None:
        if "estimate_s" in self.report:
            return
        area = size[0] * size[1]
        total = 0.0
        for _, (h, w) in self.cells:
            cell = ms / 1000 * h * w / area
            timed = min(cell * self.cfg.runs, self.cfg.max_seconds or math.inf)
            total += cell * self.cfg.warmup + timed
        self.report["estimate_s"] = round(total, 3)
        self.log(f"bench: first run {ms:.0f} ms at {size[0]}x{size[1]}; about "
                 f"{_duration(total)} for {len(self.cells)} backend x size cell(s) of "
                 f"{self.cfg.warmup} + {self.cfg.runs} runs (Ctrl-C keeps the rows done)")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _row(runner: Runner, times: list[float], notes: dict[str, Any], row: dict[str, Any],
         cfg: BenchConfig, flop: float | None, peak: float | None) -> dict[str, Any]:
    """A finished cell: statistics, runner info, achieved GFLOP/s and the raw times."""
    stats = latency_stats(times, cfg.batch)
    row.update({"status": "ok", "runs": len(times), "warmup": cfg.warmup, **notes,
                **{k: round(v, 3) for k, v in stats.items()}, "info": runner.info()})
    if flop is not None:
        row["gflop"] = round(flop / 1e9, 2)
        row["gflops_per_s"] = round(flop / 1e9 / (stats["median_ms"] / 1000), 1)
        if peak:
            row["peak_fraction"] = round(row["gflops_per_s"] / peak, 3)
    row["times_ms"] = [round(t, 3) for t in times]
    return row


class _Cells:
    """Runs every (backend, size) cell of a benchmark into ``report["results"]``."""

    def __init__(self, art: Artifact, cfg: BenchConfig, report: dict[str, Any],
                 exports: _Exports, bar: Any, estimate: _Estimate) -> None:
        self.art, self.cfg, self.report, self.exports = art, cfg, report, exports
        self.bar, self.estimate = bar, estimate
        self.peak = (report.get("matmul_peak") or {}).get("gflops")

    def _progress(self, n: int) -> None:
        if self.bar is not None and n > 0:
            self.bar.update(n)

    def backend(self, backend: str, sizes: list[tuple[int, int]]) -> None:
        cfg, runner, skip = self.cfg, None, None
        per_size = backend == BASELINE_BACKEND or (backend.partition(":")[0] in (
            "onnxruntime", "openvino") and len(
            {id(self.exports.get(s)) for s in sizes}) > 1)
        try:
            for size in sizes:
                row: dict[str, Any] = {"backend": backend, "size": list(size), "batch": cfg.batch}
                if self.bar is not None:
                    self.bar.set_postfix_str(f"{backend} {size[0]}x{size[1]}")
                if skip is not None:
                    self.report["results"].append({**row, "status": "skipped", "reason": skip})
                    self._progress(cfg.runs)
                    continue
                try:
                    if runner is None or per_size:
                        if runner is not None:
                            runner.close()
                        runner = _make(self.art, backend, cfg, size, self.exports)
                        row["setup_seconds"] = round(runner.setup_seconds, 2)
                    self._cell(runner, size, row)
                except (BackendUnavailable, NasfcosError) as exc:
                    status = "skipped" if isinstance(exc, BackendUnavailable) else "failed"
                    skip = str(exc) if status == "skipped" else None
                    self.report["results"].append({**row, "status": status, "reason": str(exc)})
                    self._progress(cfg.runs)
        finally:
            if runner is not None:
                runner.close()

    def _cell(self, runner: Runner, size: tuple[int, int], row: dict[str, Any]) -> None:
        cfg = self.cfg
        kind = self.art.kind or runner.kind
        if kind is None:
            raise NasfcosError("cannot tell the model kind (decoder/detector)")
        inputs = make_inputs(kind, size, cfg.batch, cfg.seed,
                             self.art.in_channels or runner.in_channels)
        done = [0]

        def tick(ms: float) -> None:
            if not done[0]:
                self.estimate.first_run(ms, size)
            done[0] += 1
            self._progress(1)

        times, notes = _time_cell(runner, inputs, cfg, tick)
        self._progress(cfg.runs - len(times))
        flop = self.report["flops"].get(f"{size[0]}x{size[1]}")
        self.report["results"].append(_row(runner, times, notes, row, cfg, flop, self.peak))


def _baseline_ratio(report: dict[str, Any], sizes: list[tuple[int, int]]) -> None:
    """nasfcos / baseline median time per size, with a 95% interval.  Timed one after the
    other, not interleaved: unpaired, and machine drift between the two cells is not in the
    interval (benchmarks/runtime_speed.py alternates)."""
    rows = {(r["backend"], tuple(r["size"])): r for r in report["results"] if r["status"] == "ok"}
    report["baseline_ratio"], report["baseline_ratio_95ci"] = {}, {}
    for h, w in sizes:
        ours, base = rows.get(("onnxruntime", (h, w))), rows.get((BASELINE_BACKEND, (h, w)))
        if ours and base:
            key = f"{h}x{w}"
            report["baseline_ratio"][key] = round(ours["median_ms"] / base["median_ms"], 3)
            report["baseline_ratio_95ci"][key] = [round(v, 3) for v in median_ratio_interval(
                ours["times_ms"], base["times_ms"], paired=False)]


def run_benchmark(model: str | Path | Artifact, cfg: BenchConfig | None = None, *,
                  progress: bool = False, log: Callable[[str], None] | None = None
                  ) -> dict[str, Any]:
    """Benchmark ``model`` (model.py / .onnx / .engine, or an opened :class:`Artifact`) per
    ``cfg``; returns the report dict.

    A model.py is loaded once and exported to ONNX once, up front, when an ONNX backend
    runs.  A static export runs at its own size.  A file changed since its export is timed
    as it is, with a warning, and the report records its own sha256 and the differences.
    After the first timed run ``log`` gets an estimate of the total time.  A backend that is
    unavailable is recorded as ``skipped`` with its one-line reason; other backends still
    run.  Ctrl-C stops the run: the report keeps the rows done so far (``interrupted``).
    """
    import torch

    cfg = cfg or BenchConfig()
    say = log or (lambda line: None)
    art = model if isinstance(model, Artifact) else open_artifact(
        model, kind=cfg.kind, seed=cfg.seed, strict=False)
    if art.changed:
        warnings.warn(f"{art.path}: changed since its export ({'; '.join(art.changed)}); "
                      "benchmarking the file as it is (its own sha256 is recorded)", stacklevel=2)
    backends, sizes = _validate(art, cfg), _bench_sizes(art, cfg)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    model_info = art.summary()
    report: dict[str, Any] = {
        "format": REPORT_FORMAT, "model": model_info,
        "config": {**asdict(cfg), "backends": backends, "sizes": [list(s) for s in sizes],
                   "calib": None if cfg.calib is None else {
                       k: str(v) for k, v in asdict(cfg.calib).items()},
                   "onnx_path": str(cfg.onnx_path) if cfg.onnx_path else None},
        "machine": machine_info(),
        "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "results": [], "flops": _flops(art, sizes, cfg, model_info)}
    if cfg.cpu_default is not None:
        report["cpu_default"] = asdict(cfg.cpu_default)
    if cfg.matmul_peak and cfg.device == "cpu":
        report["matmul_peak"] = matmul_peak_gflops(cfg.threads)
    bar = None
    exports = None
    try:
        exports = _Exports(art, cfg, sizes, backends, say)
        if progress:
            from nasfcos.progress import progress_bar
            bar = progress_bar(len(backends) * len(sizes) * cfg.runs, desc="bench", unit="run")
        cells = _Cells(art, cfg, report, exports, bar,
                       _Estimate(cfg, [(b, s) for b in backends for s in sizes], say, report))
        for backend in backends:
            cells.backend(backend, sizes)
    except KeyboardInterrupt:
        report["interrupted"] = (f"interrupted after {len(report['results'])} of "
                                 f"{len(backends) * len(sizes)} cells")
    finally:
        if bar is not None:
            bar.close()
        if exports is not None:
            exports.close()
    if cfg.baseline:
        _baseline_ratio(report, sizes)
    return report


PRECISION_REPORT_FORMAT = "nasfcos-precision-table/1"


@dataclass
class PrecisionTableConfig:
    """One table of backend x precision: COCO AP / AP50, agreement with PyTorch fp32,
    latency, model size (:func:`run_precision_table`).

    ``data``: COCO folder; AP on its ``split`` (val), int8 calibrated on its train split
    (``calib_images`` images, ``calib_method``).  ``int8`` rows: ONNX Runtime runs both the
    ``cpu`` (U8S8) and the ``tensorrt`` (symmetric, what TensorRT will build) targets,
    TensorRT the ``tensorrt`` target.  ``size``: the static export size (H, W).
    """

    precisions: list[str] = field(default_factory=lambda: ["fp32", "fp16", "int8"])
    backends: list[str] = field(default_factory=lambda: ["onnxruntime"])
    size: tuple[int, int] = (800, 800)
    data: Path | None = None
    split: str = "val"
    weights: Path | None = None
    calib_images: int = 32
    calib_method: str = "minmax"
    max_images: int | None = None
    warmup: int = 5
    runs: int = 30
    max_seconds: float | None = None
    threads: int | None = None
    device: str = "cpu"
    seed: int = 0
    #: An existing static fp32 export of the model (with its manifest) instead of exporting.
    onnx: Path | None = None


class _Recorder:
    """Wraps a runner for :func:`nasfcos.fcos.evaluate.evaluate`: keeps every output batch."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.batch_size = 1
        self.outputs: list[list[np.ndarray]] = []

    def __call__(self, images: np.ndarray) -> list[np.ndarray]:
        out = self.runner(images)
        self.outputs.append([np.asarray(o) for o in out])
        return out


def _rate(a: Any) -> float | None:
    """The match rate of an Agreement, None where the reference had nothing to match."""
    return round(a.match_rate, 4) if a.reference else None


def _agreement(ref: list[list[np.ndarray]], got: list[list[np.ndarray]],
               iou: float = 0.95) -> dict[str, Any]:
    """Detection agreement over all evaluated images (see check.detection_agreement);
    ``match_rate`` is None (not measured) when the reference has no detection."""
    from nasfcos.runtime.check import detection_agreement

    cat = [np.concatenate([b[k] for b in ref]) for k in range(3)]
    gat = [np.concatenate([b[k] for b in got]) for k in range(3)]
    a = detection_agreement(cat, gat, iou_threshold=iou)
    return {"match_rate": _rate(a), "matched": a.matched,
            "reference": a.reference, "mean_iou": round(a.mean_iou, 4),
            "mean_score_diff": round(a.mean_score_diff, 5),
            "max_score_diff": round(a.max_score_diff, 5)}


def _precision_variants(path: Path, cfg: PrecisionTableConfig, out_dir: Path,
                        weights: Path | None) -> list[tuple[str, str | None, Path]]:
    """The fp32 export (made, or ``cfg.onnx``) and its lowered copies in ``out_dir``:
    ``(precision, int8 target, onnx file)`` per row."""
    from nasfcos.runtime.export import ExportOptions, convert_onnx, export_onnx
    from nasfcos.runtime.precision import PrecisionOptions

    fp32 = out_dir / f"{path.stem}.fp32.onnx"
    if cfg.onnx is not None:
        onnx = open_artifact(cfg.onnx)
        if onnx.size != tuple(cfg.size) or onnx.manifest is None:
            raise NasfcosError(f"{cfg.onnx}: not a static {cfg.size[0]}x{cfg.size[1]} export")
        fp32 = Path(cfg.onnx)
    else:
        export_onnx(path, fp32, ExportOptions(kind="detector", size=tuple(cfg.size),
                                              seed=cfg.seed, weights=weights))
    variants: list[tuple[str, str | None, Path]] = []
    for prec in cfg.precisions:
        if prec in ("fp32", "bf16"):  # bf16 is a run-time precision of the fp32 file
            variants.append((prec, None, fp32))
        elif prec == "fp16":
            convert_onnx(fp32, out_dir / f"{path.stem}.fp16.onnx", PrecisionOptions("fp16"))
            variants.append(("fp16", None, out_dir / f"{path.stem}.fp16.onnx"))
        elif set(cfg.backends) & {"onnxruntime", "tensorrt"}:
            for target in ("cpu", "tensorrt"):
                f = out_dir / f"{path.stem}.int8-{target}.onnx"
                convert_onnx(fp32, f, PrecisionOptions(
                    "int8", data=Path(cfg.data), calib_images=cfg.calib_images,
                    calib_method=cfg.calib_method, int8_target=target))
                variants.append(("int8", target, f))
        if prec == "int8" and set(cfg.backends) & {"openvino", "torch"}:
            variants.append(("int8", None, fp32))  # quantized by the engine itself (NNCF)
    return variants


def _precision_check(path: Path, cfg: PrecisionTableConfig) -> None:
    """One-line errors for a bad precision-table configuration, before any work."""
    from nasfcos.runtime.manifest import PRECISIONS

    if form_of(path) != "model.py":
        raise NasfcosError(f"{path}: the precision table needs a compiled model.py")
    if cfg.data is None:
        raise FieldError("data", "the precision table needs a COCO folder (AP, calibration)")
    have = (*PRECISIONS, "bf16")
    bad = [p for p in cfg.precisions if p not in have]
    if bad or not cfg.precisions:
        raise FieldError("precisions", f"unknown precision(s) {', '.join(bad) or '(none)'} "
                         f"(have {', '.join(have)})")
    unknown = [b for b in cfg.backends if b not in TABLE_PRECISIONS]
    if unknown:
        raise FieldError("backends", f"precision table backends are "
                         f"{', '.join(TABLE_PRECISIONS)}, not {', '.join(unknown)}")


def _variant_runner(backend: str, onnx_path: Path, cfg: PrecisionTableConfig) -> tuple[Path, Runner]:
    """(artifact, runner) of one precision variant: its ONNX file, or an engine built from it."""
    if backend == "tensorrt":
        from nasfcos.runtime.trt import TrtBuildOptions, build_engine

        artifact = onnx_path.with_suffix(".engine")
        build_engine(onnx_path, artifact, TrtBuildOptions())
        return artifact, make_runner(artifact, "tensorrt", cfg.device)
    return onnx_path, make_runner(onnx_path, "onnxruntime", cfg.device, threads=cfg.threads)


def _table_cells(backends: Sequence[str], variants: Sequence[tuple[str, str | None, Path]]
                 ) -> Iterator[tuple[str, str, str | None, Path]]:
    """(backend, precision, int8 target, ONNX file) of every cell of the precision table."""
    for backend in backends:
        for prec, target, onnx_path in variants:
            if backend == "tensorrt" and target == "cpu":
                continue  # TensorRT builds the symmetric (tensorrt-target) file only
            if prec == "int8" and (backend in ("openvino", "torch")) == (target is not None):
                continue  # ORT/TensorRT run the lowered files, openvino quantizes itself
            yield backend, prec, target, onnx_path


def int8_sensitivity(fp32: str | Path, calib: Any, images: Sequence[np.ndarray],
                     threads: int | None = None) -> list[dict[str, Any]]:
    """Per-layer-group int8 sensitivity: NNCF int8 with nothing extra kept in float, then
    with each group of :func:`sensitivity_groups` kept in float, then all of them; each
    scored by detection agreement (IoU >= 0.5 and 0.95) with OpenVINO fp32 on ``images``
    (``[1, 3, H, W]`` arrays).  Returns one row per variant, ``keep_float`` names included."""
    from nasfcos.runtime.check import detection_agreement
    from nasfcos.runtime.openvino_rt import OvRunner, sensitivity_groups

    def outputs(runner: Any) -> list[np.ndarray]:
        outs = [runner(x) for x in images]
        return [np.concatenate([o[k] for o in outs]) for k in range(3)]

    with OvRunner(fp32, threads=threads) as ref_runner:
        ref = outputs(ref_runner)
        groups = sensitivity_groups(ref_runner.ov_model)
    variants = {"none": [], **groups, "all": sorted({n for g in groups.values() for n in g})}
    rows = []
    for name, keep in variants.items():
        with OvRunner(fp32, threads=threads, precision="int8", calib=calib,
                      keep_float=keep) as q:
            got = outputs(q)
        rows.append({"kept_float": name, "layers": keep,
                     "agree50": _rate(detection_agreement(ref, got, iou_threshold=0.5)),
                     "agree95": _rate(detection_agreement(ref, got))})
    return rows


#: Backends of the precision table, and the precisions each runs (int8/fp16 rows of
#: onnxruntime and tensorrt are files lowered by ``runtime/precision.py``; openvino's int8
#: is NNCF's own quantization of the fp32 file; bf16 is a run-time precision).
TABLE_PRECISIONS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("fp32", "fp16", "int8"), "openvino": ("fp32", "bf16", "int8"),
    "torch": ("bf16",), "tensorrt": ("fp32", "fp16", "int8")}
_TABLE_SKIPS: dict[tuple[str, str], str] = {
    ("onnxruntime", "bf16"): "ONNX Runtime's CPU provider has no bf16 convolution kernels",
    ("openvino", "fp16"): "OpenVINO's CPU plugin runs an fp16 file in f32/bf16: see the bf16 row",
    ("torch", "fp32"): "the reference row above",
    ("torch", "fp16"): "CPU autocast in fp16 is not a fast path: see the bf16 row",
    ("torch", "int8"): "no PyTorch int8 route here: see the onnxruntime and openvino rows",
    ("tensorrt", "bf16"): "the precision table builds TensorRT fp32/fp16/int8 only"}


def _engine_skip(backend: str, prec: str) -> str | None:
    """Why ``backend`` has no ``prec`` row (None: it has one)."""
    if prec in TABLE_PRECISIONS.get(backend, ()):
        if backend == "openvino":
            from nasfcos.runtime.openvino_rt import openvino_status

            return openvino_status(nncf=prec == "int8")
        return None
    return _TABLE_SKIPS.get((backend, prec), f"{backend} has no {prec} route")


def _engine_runner(backend: str, prec: str, model: Path, fp32: Path, cfg: Any,
                   weights: Path | None) -> tuple[Path, Runner]:
    """(artifact, runner) of the run-time-precision rows: torch bf16 autocast on the
    model.py; OpenVINO on the fp32 export (int8: NNCF, saved as IR next to it)."""
    from nasfcos.runtime.precision import PrecisionOptions

    if backend == "torch":
        return model, make_runner(model, f"torch:{prec}", cfg.device, kind="detector",
                                  seed=cfg.seed, weights=weights, threads=cfg.threads)
    calib = PrecisionOptions("int8", data=Path(cfg.data), calib_images=cfg.calib_images,
                             calib_method=cfg.calib_method) if prec == "int8" else None
    runner = make_runner(fp32, f"openvino:{prec}", cfg.device, threads=cfg.threads, calib=calib)
    if prec != "int8":
        return fp32, runner
    xml = fp32.with_name(fp32.name.replace(".fp32.onnx", "") + ".openvino-int8.xml")
    return runner.save(xml), runner  # type: ignore[attr-defined]


def _relative_columns(rows: list[dict[str, Any]]) -> None:
    """dAP against PyTorch fp32 (the reference row), time against the backend's own fp32
    row (``latency_vs_fp32``) and against ONNX Runtime fp32 (``latency_vs_ort_fp32``)."""
    ok = [r for r in rows if r["status"] == "ok"]
    ref_ap = next((r["AP"] for r in ok if r["backend"] == "torch" and r["precision"] == "fp32"),
                  None)
    fp32_ms = {r["backend"]: r["median_ms"] for r in ok if r["precision"] == "fp32"}
    for r in ok:
        if ref_ap is not None:
            r["dAP"] = round(r["AP"] - ref_ap, 4)
        own = fp32_ms.get(r["backend"]) or (fp32_ms.get("torch") if r["backend"] == "torch"
                                            else None)
        if own:
            r["latency_vs_fp32"] = round(r["median_ms"] / own, 3)
        if fp32_ms.get("onnxruntime"):
            r["latency_vs_ort_fp32"] = round(r["median_ms"] / fp32_ms["onnxruntime"], 3)


def run_precision_table(model: str | Path, cfg: PrecisionTableConfig, out_dir: str | Path, *,
                        progress: bool = False) -> dict[str, Any]:
    """Export ``model`` (a Detector model.py) once at fp32, lower it per precision into
    ``out_dir``, then per backend x precision: COCO AP / AP50 on ``cfg.data``, detection
    agreement with PyTorch fp32 on the same images, latency (median, p90) on one image,
    and the artifact's size.  Unavailable backends are recorded as skipped with a reason.
    """
    import torch

    from nasfcos.fcos.evaluate import EvalConfig, evaluate

    path, out_dir = regular_file(model, "model file"), Path(out_dir)
    _precision_check(path, cfg)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = Path(cfg.weights) if cfg.weights else None
    variants = _precision_variants(path, cfg, out_dir, weights)
    bcfg = BenchConfig(warmup=cfg.warmup, runs=cfg.runs, max_seconds=cfg.max_seconds,
                       threads=cfg.threads, device=cfg.device, seed=cfg.seed, kind="detector")
    ecfg = EvalConfig(batch_size=1, input_size=tuple(cfg.size))
    image = make_inputs("detector", tuple(cfg.size), 1, cfg.seed)
    rows: list[dict[str, Any]] = []

    def measure(runner: Runner, base: dict[str, Any], file: Path, n_bytes: int,
                ref: list[list[np.ndarray]] | None = None) -> list[list[np.ndarray]]:
        """Add the row of ``runner`` (agreement with ``ref``, or itself); its outputs."""
        rec = _Recorder(runner)
        try:
            metrics = evaluate(rec, data=cfg.data, split=cfg.split, cfg=ecfg,
                               max_images=cfg.max_images, progress=progress)
            times, notes = _time_cell(runner, image, bcfg)
        finally:
            runner.close()
        stats, ref = latency_stats(times), rec.outputs if ref is None else ref
        rows.append({**base, "status": "ok", "file": str(file), "bytes": int(n_bytes),
                     "AP": round(metrics["AP"], 4), "AP50": round(metrics["AP50"], 4),
                     "images": metrics["images"], "runs": len(times),
                     "median_ms": round(stats["median_ms"], 3),
                     "p90_ms": round(stats["p90_ms"], 3), "timer": notes["timer"],
                     "agreement": _agreement(ref, rec.outputs),
                     "agreement50": _agreement(ref, rec.outputs, 0.5)})
        return rec.outputs

    ref_runner = make_runner(path, "torch", cfg.device, kind="detector", seed=cfg.seed,
                             weights=weights, threads=cfg.threads)
    ref_bytes = ref_runner.param_bytes  # the model as written, not the folded copy
    ref_out = measure(ref_runner, {"backend": "torch", "precision": "fp32", "target": None},
                      path, ref_bytes)
    for backend, prec, target, onnx_path in _table_cells(cfg.backends, variants):
        base = {"backend": backend, "precision": prec, "target": target}
        reason = _engine_skip(backend, prec)
        try:
            if reason is None and backend in ("openvino", "torch"):
                artifact, runner = _engine_runner(backend, prec, path, onnx_path, cfg, weights)
            elif reason is None:
                artifact, runner = _variant_runner(backend, onnx_path, cfg)
        except BackendUnavailable as exc:
            reason = str(exc)
        if reason:
            rows.append({**base, "status": "skipped", "reason": reason})
            continue
        n_bytes = (artifact.stat().st_size + artifact.with_suffix(".bin").stat().st_size
                   if artifact.suffix == ".xml" else
                   ref_bytes if artifact.suffix == ".py" else artifact.stat().st_size)
        measure(runner, base, artifact, n_bytes, ref_out)
    _relative_columns(rows)
    return {"format": PRECISION_REPORT_FORMAT, "model": str(path),
            "weights": str(weights) if weights else None, "data": str(cfg.data),
            "config": {**asdict(cfg), "data": str(cfg.data), "weights": str(weights)
                       if weights else None, "size": list(cfg.size),
                       "onnx": str(cfg.onnx) if cfg.onnx else None},
            "machine": machine_info(),
            "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "rows": rows}


def _percent(rate: float | None) -> str:
    """A match rate in the table: n/a where it was not measured (no reference detection)."""
    return "n/a" if rate is None else f"{100 * rate:.1f}%"


def precision_markdown(report: dict[str, Any]) -> str:
    """The precision table as Markdown (one row per backend x precision)."""
    c = report["config"]
    lines = [f"# Precision: {Path(report['model']).name} @ {c['size'][0]}x{c['size'][1]}", "",
             f"Data: {report['data']} ({c['split']}); weights: {report['weights'] or 'random'};"
             f" machine: {describe(report['machine'])}; threads {c['threads'] or 'default'}.",
             "AP on the split (points); dAP against PyTorch fp32 (the first row); agreement: "
             "reference detections (top 100 per image, PyTorch fp32) matched at IoU >= 0.5 / "
             ">= 0.95 with the same label; latency: one image, warm-up excluded, median (p90), "
             "x fp32 against the engine's own fp32 row, x ORT against ONNX Runtime fp32 (cells "
             "timed one after the other: benchmarks/cpu_engines.py gives same-run ratios).", "",
             "| engine | precision | AP | AP50 | dAP | agree@0.5 | agree@0.95 | "
             "score diff mean/max | median ms (p90) | x fp32 | x ORT | size MB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        name = r["precision"] + (f" ({r['target']})" if r.get("target") else "")
        if r["status"] != "ok":
            lines.append(f"| {r['backend']} | {name} | {r['status']}: {r.get('reason', '')} |"
                         + " |" * 9)
            continue
        a, a50 = r["agreement"], r.get("agreement50") or r["agreement"]
        lines.append(
            f"| {r['backend']} | {name} | {100 * r['AP']:.2f} | {100 * r['AP50']:.2f} | "
            f"{100 * r.get('dAP', 0.0):+.2f} | {_percent(a50['match_rate'])} | "
            f"{_percent(a['match_rate'])} ({a['matched']}/{a['reference']}) | "
            f"{a['mean_score_diff']:.4f}/{a['max_score_diff']:.4f} | "
            f"{r['median_ms']:.1f} ({r['p90_ms']:.1f}) | {r.get('latency_vs_fp32', '')} | "
            f"{r.get('latency_vs_ort_fp32', '')} | {r['bytes'] / 1e6:.2f} |")
    return "\n".join(lines) + "\n"


def markdown_table(report: dict[str, Any]) -> str:
    """The report as Markdown: a median-latency table (backend x size) and a details table."""
    sizes = [f"{h}x{w}" for h, w in report["config"]["sizes"]]
    backends = list(dict.fromkeys(r["backend"] for r in report["results"]))
    cell: dict[tuple[str, str], dict[str, Any]] = {
        (r["backend"], f"{r['size'][0]}x{r['size'][1]}"): r for r in report["results"]}
    m = report["machine"]
    lines = [f"# Latency: {Path(report['model']['path']).name}", "",
             f"Machine: {describe(m)}; threads {report['config']['threads'] or 'default'}; "
             f"batch {report['config']['batch']}; device {report['config']['device']}.",
             ""]
    if report.get("matmul_peak"):
        lines += [f"fp32 matmul peak (same run): {report['matmul_peak']['gflops']:.0f} GFLOP/s.",
                  ""]
    if report.get("cpu_default"):
        lines += [f"CPU engine chosen: {report['cpu_default']['engine']} "
                  f"({report['cpu_default']['reason']}; --backends overrides it).", ""]
    lines += ["Median latency in ms (p90 in brackets):", "",
              "| backend | " + " | ".join(sizes) + " |",
              "|---|" + "---:|" * len(sizes)]
    for b in backends:
        vals = []
        for s in sizes:
            r = cell.get((b, s))
            if r is None:
                vals.append("")
            elif r["status"] != "ok":
                vals.append(r["status"])
            else:
                vals.append(f"{r['median_ms']:.1f} ({r['p90_ms']:.1f})")
        lines.append(f"| {b} | " + " | ".join(vals) + " |")
    if report.get("baseline_ratio"):
        lines += ["", "onnxruntime / onnxruntime-baseline (the reference interpreter's detector, "
                  "plain export, default session options), median time: "
                  + ", ".join(f"{k} {v:.2f}x" + (
                      " (95% interval of the spread within each cell {:.2f}-{:.2f})".format(
                          *report["baseline_ratio_95ci"][k])
                      if k in report.get("baseline_ratio_95ci", {}) else "")
                      for k, v in report["baseline_ratio"].items())]
    lines += ["", "| backend | size | runs | median | mean | p90 | p99 | min | std | FPS | "
              "GFLOP | GFLOP/s | of peak |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        s = f"{r['size'][0]}x{r['size'][1]}"
        if r["status"] != "ok":
            lines.append(f"| {r['backend']} | {s} | {r['status']}: {r.get('reason', '')} |"
                         + " |" * 10)
            continue
        frac = f"{100 * r['peak_fraction']:.0f}%" if "peak_fraction" in r else ""
        lines.append(f"| {r['backend']} | {s} | {r['runs']} | {r['median_ms']:.1f} | "
                     f"{r['mean_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | "
                     f"{r['min_ms']:.1f} | {r['std_ms']:.1f} | {r['fps']:.2f} | "
                     f"{r.get('gflop', '')} | {r.get('gflops_per_s', '')} | {frac} |")
    lines += ["", "Times are per forward pass with inputs already staged, warm-up excluded "
              "(CPU: perf_counter_ns; GPU: CUDA events).", ""]
    libs = m.get("libraries", {})
    lines.append("Libraries: " + ", ".join(f"{k} {v}" for k, v in libs.items() if v) + ".")
    return "\n".join(lines) + "\n"


def plot_report(report: dict[str, Any]) -> bytes:
    """PNG bytes: median latency vs input size per backend (bars: min..p90)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=100)
    ax = fig.subplots()
    backends = list(dict.fromkeys(r["backend"] for r in report["results"]))
    ok = [r for r in report["results"] if r["status"] == "ok"]
    if ok and len({tuple(r["size"]) for r in ok}) == 1:  # one size: bars, not lone dots
        _latency_bars(ax, ok)
        backends = []
    for b in backends:
        rows = [r for r in report["results"] if r["backend"] == b and r["status"] == "ok"]
        if not rows:
            continue
        x = [math.sqrt(r["size"][0] * r["size"][1]) for r in rows]
        y = [r["median_ms"] for r in rows]
        lo = [r["median_ms"] - r["min_ms"] for r in rows]
        hi = [r["p90_ms"] - r["median_ms"] for r in rows]
        ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, label=b)
    ax.set_xlabel("input size (px, sqrt(H*W))")
    ax.set_ylabel("latency, ms (median; bars min..p90)")
    ax.set_title(f"{Path(report['model']['path']).name} - batch {report['config']['batch']}, "
                 f"{report['config']['device']}")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # nothing to label when every cell failed
        ax.legend()
    fig.tight_layout()
    return figure_bytes(fig)


def _latency_bars(ax: Any, rows: list[dict[str, Any]]) -> None:
    """One bar per backend (median; whiskers min..p90) for a report at a single size."""
    names = [r["backend"] for r in rows]
    med = [r["median_ms"] for r in rows]
    ax.bar(names, med, yerr=[[m - r["min_ms"] for m, r in zip(med, rows, strict=True)],
                             [r["p90_ms"] - m for m, r in zip(med, rows, strict=True)]],
           capsize=4, color=[f"C{i}" for i in range(len(rows))])
    for i, m in enumerate(med):
        ax.annotate(f"{m:.1f} ms", (i, m), textcoords="offset points", xytext=(0, 4),
                    ha="center", va="bottom")
    h, w = rows[0]["size"]
    ax.set_xlabel(f"backend (input {h}x{w})")
    ax.set_ylabel("latency, ms (median; bars min..p90)")


def plot_precision(report: dict[str, Any]) -> bytes:
    """PNG bytes of the precision table: AP against median latency, one labelled point per
    backend x precision (marker size: artifact size), and agreement with PyTorch fp32 as bars."""
    from matplotlib.figure import Figure

    rows = [r for r in report["rows"] if r["status"] == "ok"]
    fig = Figure(figsize=(10, 4.2), dpi=100)
    ax, bx = fig.subplots(1, 2)
    labels = [f"{r['backend']} {r['precision']}" for r in rows]
    for i, (r, name) in enumerate(zip(rows, labels, strict=True)):
        ax.scatter(r["median_ms"], 100 * r["AP"], s=30 + 10 * r["bytes"] / 1e6, color=f"C{i}")
        ax.annotate(name, (r["median_ms"], 100 * r["AP"]), textcoords="offset points",
                    xytext=(5, 5))
    ax.set_xlabel("latency, ms (median, one image)")
    ax.set_ylabel("AP (%)")
    ax.grid(True, alpha=0.3)
    bx.bar(labels, [100 * (r["agreement"]["match_rate"] or 0) for r in rows],
           color=[f"C{i}" for i in range(len(rows))])
    bx.set_ylabel("detections matching PyTorch fp32 (IoU >= 0.95, %)")
    bx.set_ylim(0, 105)
    bx.tick_params(axis="x", labelrotation=30)
    c = report["config"]
    fig.suptitle(f"{Path(report['model']).name} @ {c['size'][0]}x{c['size'][1]}: precision")
    fig.tight_layout()
    return figure_bytes(fig)


def write_report(report: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """Write ``<out>.json``, ``<out>.md`` and ``<out>.png`` (``out`` without suffix)."""
    out = Path(out)
    if out.suffix in (".json", ".md", ".png"):
        out = out.with_suffix("")
    paths = {"json": out.with_name(out.name + ".json"), "md": out.with_name(out.name + ".md"),
             "png": out.with_name(out.name + ".png")}
    atomic_write_json(paths["json"], report)
    atomic_write_text(paths["md"], markdown_table(report))
    atomic_write_bytes(paths["png"], plot_report(report))
    return paths


__all__ = ["BenchConfig", "DEFAULT_SIZES", "PrecisionTableConfig", "count_flops",
           "default_backends", "int8_sensitivity", "latency_stats", "markdown_table",
           "matmul_peak_gflops", "median_ratio_interval", "plot_precision", "plot_report",
           "precision_markdown", "run_benchmark", "run_precision_table", "write_report"]
