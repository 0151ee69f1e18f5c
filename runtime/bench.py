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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nasfcos.errors import BackendUnavailable, NasfcosError
from nasfcos.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from nasfcos.modelfile import ModelInfo
from nasfcos.runtime.machine import describe, machine_info
from nasfcos.runtime.models import make_inputs
from nasfcos.runtime.runners import BACKENDS, Runner, make_runner

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
    sizes: list[tuple[int, int]] = field(default_factory=lambda: list(DEFAULT_SIZES))
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
                       seconds: float = 1.5) -> dict[str, float]:
    """fp32 matmul throughput of this machine (torch, ``threads`` threads): median GFLOP/s."""
    import torch

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        a = torch.randn(n, n)
        b = torch.randn(n, n)
        c = torch.empty(n, n)
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
               tick: Callable[[], None] | None = None) -> tuple[list[float], dict[str, Any]]:
    """Warm up, then time runs; returns per-run milliseconds and notes."""
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
            tick()
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

    from nasfcos.runtime.export import _quiet

    net = baseline_detector(lm)
    image = torch.from_numpy(lm.inputs(size, 1, seed=seed)[0])
    dyn = torch.export.Dim.DYNAMIC
    with _quiet(), torch.no_grad():
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


def baseline_runner(path: Path, size: tuple[int, int], cfg: BenchConfig) -> Runner:
    """ONNX Runtime runner on :func:`export_baseline` of the detector ``path`` at ``size``
    (static, or dynamic unless ``cfg.onnx_static``) with a :func:`plain_session`."""
    import tempfile

    from nasfcos.runtime.models import load_model
    from nasfcos.runtime.runners import OrtRunner

    t0 = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="nasfcos-baseline-")
    onnx_path = export_baseline(load_model(path, "detector", seed=cfg.seed),
                                Path(tmp.name) / "baseline.onnx", size,
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


def default_backends(path: Path, device: str = "cpu") -> list[str]:
    """Backends that make sense for an artifact: .py -> torch + onnxruntime (+ tensorrt on a
    GPU machine with TensorRT), .onnx -> onnxruntime (+ tensorrt), .engine -> tensorrt."""
    from nasfcos.runtime.trt import tensorrt_status

    trt_ok = device.startswith("cuda") and tensorrt_status() is None
    if path.suffix == ".py":
        return ["torch", "onnxruntime"] + (["tensorrt"] if trt_ok else [])
    if path.suffix == ".onnx":
        return ["onnxruntime"] + (["tensorrt"] if trt_ok else [])
    return ["tensorrt"]


def _make(path: Path, backend: str, cfg: BenchConfig, size: tuple[int, int] | None,
          kind: str | None, in_channels: Sequence[int] | None) -> Runner:
    """Build one runner (for a per-size static ONNX export when ``size`` is given)."""
    device = cfg.device
    if backend in ("torch", "torch-compile"):
        return make_runner(path, backend, device, kind=cfg.kind, seed=cfg.seed,
                           threads=cfg.threads)
    if backend == BASELINE_BACKEND:
        return baseline_runner(path, size or cfg.sizes[0], cfg)
    if cfg.onnx_path is not None and path.suffix == ".py" and backend in ("onnxruntime",
                                                                          "tensorrt"):
        path = Path(cfg.onnx_path)
    if backend == "onnxruntime":
        export = None
        if path.suffix == ".py":
            export = {"kind": cfg.kind, "seed": cfg.seed}
            # dynamic: trace at the largest size (small traces specialise, e.g. 1x1 levels)
            largest = max(cfg.sizes, key=lambda s: s[0] * s[1])
            export.update({"dynamic": False, "size": size, "batch": cfg.batch} if size else
                          {"dynamic": True, "size": tuple(largest), "batch": cfg.batch})
        return make_runner(path, backend, device, threads=cfg.threads,
                           opt_level=cfg.ort_opt_level, export=export)
    # tensorrt: profile spanning the benchmark sizes
    from nasfcos.runtime.trt import profile_shapes

    shapes = None
    export = None
    if path.suffix in (".py", ".onnx"):
        sizes = sorted(cfg.sizes, key=lambda s: s[0] * s[1])
        if path.suffix == ".py":
            export = {"kind": cfg.kind, "seed": cfg.seed, "dynamic": True,
                      "size": tuple(sizes[len(sizes) // 2]),
                      "batch": cfg.batch}
        if kind is not None and (kind == "detector" or in_channels is not None):
            shapes = profile_shapes(kind, [sizes[0], sizes[len(sizes) // 2], sizes[-1]],
                                    cfg.batch, in_channels)
    return make_runner(path, "tensorrt", device, fp16=cfg.trt_fp16 or None, shapes=shapes,
                       export=export)


def run_benchmark(model: str | Path, cfg: BenchConfig | None = None, *,
                  progress: bool = False) -> dict[str, Any]:
    """Benchmark ``model`` (model.py / .onnx / .engine) per ``cfg``; returns the report dict.

    A backend that is unavailable (no TensorRT, no GPU, compile failure) is recorded as
    ``skipped`` with its one-line reason; other backends still run.
    """
    import torch

    cfg = cfg or BenchConfig()
    path = Path(model)
    if not path.is_file():
        raise NasfcosError(f"{path}: no such file")
    backends = cfg.backends or default_backends(path, cfg.device)
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise NasfcosError(f"unknown backend(s) {', '.join(unknown)} (have {', '.join(BACKENDS)})")
    if cfg.runs < 1 or cfg.warmup < 0 or cfg.batch < 1:
        raise NasfcosError("runs must be >= 1, warmup >= 0 and batch >= 1")
    if cfg.baseline:
        if path.suffix != ".py" or cfg.device != "cpu":
            raise NasfcosError("--baseline needs a detector model.py on the cpu device")
        backends = [*backends, BASELINE_BACKEND]
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))

    # What the model is: kind, channels, FLOPs (from the PyTorch source when we have it).
    kind, in_channels, model_info = cfg.kind, None, {"path": str(path), "suffix": path.suffix}
    flops: dict[str, float] = {}
    if path.suffix == ".py":
        from nasfcos.runtime.models import load_model

        lm = load_model(path, cfg.kind, seed=cfg.seed)
        kind, in_channels = lm.kind, lm.in_channels
        model_info.update({"kind": kind, **{k: v for k, v in lm.info.items()
                                            if k != "state_dict_sha256"}})
        if cfg.flops:
            for size in cfg.sizes:
                try:
                    flops[f"{size[0]}x{size[1]}"] = count_flops(lm, size, cfg.batch)
                except Exception as exc:  # FLOPs are informative only: never fail the bench
                    model_info["flops_error"] = f"{type(exc).__name__}: {exc}"[:200]
                    break
        del lm
    else:
        from nasfcos.runtime.export import load_manifest

        try:
            man = load_manifest(path)
            model_info.update({"genotype": man.get("genotype"), "widths": man.get("widths"),
                               "sha256": man["artifact"]["sha256"]})
            kind = kind or (man.get("source", {}) or {}).get("kind")
            in_channels = (man.get("widths") or {}).get("in_channels")
        except NasfcosError:
            pass

    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "model": model_info,
        "config": {**asdict(cfg), "backends": backends,
                   "onnx_path": str(cfg.onnx_path) if cfg.onnx_path else None,
                   "sizes": [list(s) for s in cfg.sizes]},
        "machine": machine_info(),
        "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "results": [],
    }
    if cfg.matmul_peak and cfg.device == "cpu":
        report["matmul_peak"] = matmul_peak_gflops(cfg.threads)

    total = len(backends) * len(cfg.sizes) * cfg.runs
    bar = None
    if progress:
        from nasfcos.progress import progress_bar
        bar = progress_bar(total, desc="bench", unit="run")

    def tick() -> None:
        if bar is not None:
            bar.update(1)

    peak = (report.get("matmul_peak") or {}).get("gflops")
    for backend in backends:
        runner: Runner | None = None
        per_size = backend == BASELINE_BACKEND or (
            backend == "onnxruntime" and cfg.onnx_static and path.suffix == ".py"
            and cfg.onnx_path is None)
        skip_reason: str | None = None
        for size in cfg.sizes:
            key = f"{size[0]}x{size[1]}"
            row: dict[str, Any] = {"backend": backend, "size": list(size), "batch": cfg.batch}
            if bar is not None:
                bar.set_postfix_str(f"{backend} {key}")
            if skip_reason is not None:
                report["results"].append({**row, "status": "skipped", "reason": skip_reason})
                if bar is not None:
                    bar.update(cfg.runs)
                continue
            try:
                if runner is None or per_size:
                    if runner is not None:
                        runner.close()
                    runner = _make(path, backend, cfg, size if per_size else None, kind,
                                   in_channels)
                    row["setup_seconds"] = round(runner.setup_seconds, 2)
                k = kind or runner.kind
                if k is None:
                    raise NasfcosError("cannot tell the model kind (decoder/detector)")
                chans = in_channels or runner.in_channels
                inputs = make_inputs(k, size, cfg.batch, cfg.seed, chans)
                times, notes = _time_cell(runner, inputs, cfg, tick)
            except BackendUnavailable as exc:
                skip_reason = str(exc)
                report["results"].append({**row, "status": "skipped", "reason": skip_reason})
                if bar is not None:
                    bar.update(cfg.runs)
                continue
            except NasfcosError as exc:
                report["results"].append({**row, "status": "failed", "reason": str(exc)})
                if bar is not None:
                    bar.update(cfg.runs)
                continue
            if bar is not None and len(times) < cfg.runs:
                bar.update(cfg.runs - len(times))
            stats = latency_stats(times, cfg.batch)
            row.update({"status": "ok", "runs": len(times), "warmup": cfg.warmup, **notes,
                        **{k2: round(v, 3) for k2, v in stats.items()},
                        "info": runner.info()})
            if key in flops:
                gflop = flops[key] / 1e9
                row["gflop"] = round(gflop, 2)
                row["gflops_per_s"] = round(gflop / (stats["median_ms"] / 1000), 1)
                if peak:
                    row["peak_fraction"] = round(row["gflops_per_s"] / peak, 3)
            row["times_ms"] = [round(t, 3) for t in times]
            report["results"].append(row)
        if runner is not None:
            runner.close()
    if bar is not None:
        bar.close()
    report["flops"] = flops
    if cfg.baseline:  # nasfcos / baseline median time per size, with a 95% interval
        rows = {(r["backend"], tuple(r["size"])): r for r in report["results"]
                if r["status"] == "ok"}
        report["baseline_ratio"], report["baseline_ratio_95ci"] = {}, {}
        for h, w in cfg.sizes:
            ours, base = rows.get(("onnxruntime", (h, w))), rows.get((BASELINE_BACKEND, (h, w)))
            # timed one after the other, not interleaved: unpaired, and machine drift between
            # the two cells is not in the interval (benchmarks/runtime_speed.py alternates)
            if ours and base:
                key = f"{h}x{w}"
                report["baseline_ratio"][key] = round(ours["median_ms"] / base["median_ms"], 3)
                report["baseline_ratio_95ci"][key] = [round(v, 3) for v in median_ratio_interval(
                    ours["times_ms"], base["times_ms"], paired=False)]
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


def _agreement(ref: list[list[np.ndarray]], got: list[list[np.ndarray]]) -> dict[str, Any]:
    """Detection agreement over all evaluated images (see check.detection_agreement)."""
    from nasfcos.runtime.check import detection_agreement

    cat = [np.concatenate([b[k] for b in ref]) for k in range(3)]
    gat = [np.concatenate([b[k] for b in got]) for k in range(3)]
    a = detection_agreement(cat, gat)
    return {"match_rate": round(a.match_rate, 4), "matched": a.matched,
            "reference": a.reference, "mean_iou": round(a.mean_iou, 4),
            "mean_score_diff": round(a.mean_score_diff, 5),
            "max_score_diff": round(a.max_score_diff, 5)}


def run_precision_table(model: str | Path, cfg: PrecisionTableConfig, out_dir: str | Path, *,
                        progress: bool = False) -> dict[str, Any]:
    """Export ``model`` (a Detector model.py) once at fp32, lower it per precision into
    ``out_dir``, then per backend x precision: COCO AP / AP50 on ``cfg.data``, detection
    agreement with PyTorch fp32 on the same images, latency (median, p90) on one image,
    and the artifact's size.  Unavailable backends are recorded as skipped with a reason.
    """
    import torch

    from nasfcos.fcos.evaluate import EvalConfig, evaluate
    from nasfcos.runtime.export import ExportOptions, export_onnx
    from nasfcos.runtime.precision import PRECISIONS, PrecisionOptions, convert_onnx

    path, out_dir = Path(model), Path(out_dir)
    if path.suffix != ".py" or not path.is_file():
        raise NasfcosError(f"{path}: the precision table needs a compiled model.py")
    if cfg.data is None:
        raise NasfcosError("the precision table needs --data DIR (COCO folder: AP, calibration)")
    bad = [p for p in cfg.precisions if p not in PRECISIONS]
    if bad or not cfg.precisions:
        raise NasfcosError(f"unknown precision(s) {', '.join(bad) or '(none)'} (have "
                           f"{', '.join(PRECISIONS)})")
    unknown = [b for b in cfg.backends if b not in ("onnxruntime", "tensorrt")]
    if unknown:
        raise NasfcosError(f"precision table backends are onnxruntime and tensorrt, not "
                           f"{', '.join(unknown)}")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = Path(cfg.weights) if cfg.weights else None
    fp32 = out_dir / f"{path.stem}.fp32.onnx"
    if cfg.onnx is not None:
        from nasfcos.runtime.export import load_manifest

        man = load_manifest(cfg.onnx)
        if man.get("export", {}).get("dynamic") or list(man["export"]["size"]) != list(cfg.size):
            raise NasfcosError(f"{cfg.onnx}: not a static {cfg.size[0]}x{cfg.size[1]} export")
        fp32 = Path(cfg.onnx)
    else:
        export_onnx(path, fp32, ExportOptions(kind="detector", size=tuple(cfg.size),
                                              seed=cfg.seed, weights=weights))
    variants: list[tuple[str, str | None, Path]] = []  # (precision, int8 target, onnx)
    for prec in cfg.precisions:
        if prec == "fp32":
            variants.append(("fp32", None, fp32))
        elif prec == "fp16":
            convert_onnx(fp32, out_dir / f"{path.stem}.fp16.onnx", PrecisionOptions("fp16"))
            variants.append(("fp16", None, out_dir / f"{path.stem}.fp16.onnx"))
        else:
            for target in ("cpu", "tensorrt"):
                f = out_dir / f"{path.stem}.int8-{target}.onnx"
                convert_onnx(fp32, f, PrecisionOptions(
                    "int8", data=Path(cfg.data), calib_images=cfg.calib_images,
                    calib_method=cfg.calib_method, int8_target=target))
                variants.append(("int8", target, f))
    bcfg = BenchConfig(warmup=cfg.warmup, runs=cfg.runs, max_seconds=cfg.max_seconds,
                       threads=cfg.threads, device=cfg.device, seed=cfg.seed, kind="detector")
    ecfg = EvalConfig(batch_size=1, input_size=tuple(cfg.size))
    image = make_inputs("detector", tuple(cfg.size), 1, cfg.seed)

    def measure(runner: Runner) -> tuple[dict[str, Any], list[list[np.ndarray]]]:
        rec = _Recorder(runner)
        metrics = evaluate(rec, data=cfg.data, split=cfg.split, cfg=ecfg,
                           max_images=cfg.max_images, progress=progress)
        times, notes = _time_cell(runner, image, bcfg)
        stats = latency_stats(times)
        return ({"AP": round(metrics["AP"], 4), "AP50": round(metrics["AP50"], 4),
                 "images": metrics["images"], "runs": len(times),
                 "median_ms": round(stats["median_ms"], 3), "p90_ms": round(stats["p90_ms"], 3),
                 "timer": notes["timer"]}, rec.outputs)

    rows: list[dict[str, Any]] = []
    ref_runner = make_runner(path, "torch", cfg.device, kind="detector", seed=cfg.seed,
                             weights=weights, threads=cfg.threads)
    try:
        row, ref_out = measure(ref_runner)
        n_bytes = ref_runner.param_bytes  # the model as written, not the folded copy
        rows.append({"backend": "torch", "precision": "fp32", "target": None,
                     "status": "ok", "file": str(path), "bytes": int(n_bytes), **row,
                     "agreement": _agreement(ref_out, ref_out)})
    finally:
        ref_runner.close()
    for backend in cfg.backends:
        for prec, target, onnx_path in variants:
            base = {"backend": backend, "precision": prec, "target": target}
            if backend == "tensorrt" and target == "cpu":
                continue  # TensorRT builds the symmetric (tensorrt-target) file only
            try:
                if backend == "tensorrt":
                    from nasfcos.runtime.trt import TrtBuildOptions, build_engine

                    artifact = onnx_path.with_suffix(".engine")
                    build_engine(onnx_path, artifact, TrtBuildOptions())
                    runner = make_runner(artifact, "tensorrt", cfg.device)
                else:
                    artifact = onnx_path
                    runner = make_runner(artifact, "onnxruntime", cfg.device,
                                         threads=cfg.threads)
            except BackendUnavailable as exc:
                rows.append({**base, "status": "skipped", "reason": str(exc)})
                continue
            try:
                row, out = measure(runner)
            finally:
                runner.close()
            rows.append({**base, "status": "ok", "file": str(artifact),
                         "bytes": artifact.stat().st_size, **row,
                         "agreement": _agreement(ref_out, out)})
    fp32_ap = {r["backend"]: r["AP"] for r in rows if r["status"] == "ok"
               and r["precision"] == "fp32"}
    fp32_ms = {r["backend"]: r["median_ms"] for r in rows if r["status"] == "ok"
               and r["precision"] == "fp32"}
    for r in rows:
        if r["status"] == "ok" and r["backend"] in fp32_ap:
            r["dAP"] = round(r["AP"] - fp32_ap[r["backend"]], 4)
            r["latency_vs_fp32"] = round(r["median_ms"] / fp32_ms[r["backend"]], 3)
    return {"format": PRECISION_REPORT_FORMAT, "model": str(path),
            "weights": str(weights) if weights else None, "data": str(cfg.data),
            "config": {**asdict(cfg), "data": str(cfg.data), "weights": str(weights)
                       if weights else None, "size": list(cfg.size),
                       "onnx": str(cfg.onnx) if cfg.onnx else None},
            "machine": machine_info(),
            "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "rows": rows}


def precision_markdown(report: dict[str, Any]) -> str:
    """The precision table as Markdown (one row per backend x precision)."""
    c = report["config"]
    lines = [f"# Precision: {Path(report['model']).name} @ {c['size'][0]}x{c['size'][1]}", "",
             f"Data: {report['data']} ({c['split']}); weights: {report['weights'] or 'random'};"
             f" machine: {describe(report['machine'])}; threads {c['threads'] or 'default'}.",
             "AP on the split; agreement: reference detections (top 100 per image, PyTorch "
             "fp32) matched at IoU >= 0.95 with the same label; latency: one image, warm-up "
             "excluded, median (p90).", "",
             "| backend | precision | AP | AP50 | dAP | agree@0.95 | score diff mean/max | "
             "median ms (p90) | x fp32 | size MB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        name = r["precision"] + (f" ({r['target']})" if r.get("target") else "")
        if r["status"] != "ok":
            lines.append(f"| {r['backend']} | {name} | {r['status']}: {r.get('reason', '')} |"
                         + " |" * 7)
            continue
        a = r["agreement"]
        lines.append(
            f"| {r['backend']} | {name} | {100 * r['AP']:.2f} | {100 * r['AP50']:.2f} | "
            f"{100 * r.get('dAP', 0.0):+.2f} | {100 * a['match_rate']:.1f}% "
            f"({a['matched']}/{a['reference']}) | "
            f"{a['mean_score_diff']:.4f}/{a['max_score_diff']:.4f} | "
            f"{r['median_ms']:.1f} ({r['p90_ms']:.1f}) | {r.get('latency_vs_fp32', '')} | "
            f"{r['bytes'] / 1e6:.2f} |")
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
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
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
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


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
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if r["status"] == "ok"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=100)
    labels = [f"{r['backend']} {r['precision']}" for r in rows]
    for i, (r, name) in enumerate(zip(rows, labels, strict=True)):
        ax.scatter(r["median_ms"], 100 * r["AP"], s=30 + 10 * r["bytes"] / 1e6, color=f"C{i}")
        ax.annotate(name, (r["median_ms"], 100 * r["AP"]), textcoords="offset points",
                    xytext=(5, 5))
    ax.set_xlabel("latency, ms (median, one image)")
    ax.set_ylabel("AP (%)")
    ax.grid(True, alpha=0.3)
    bx.bar(labels, [100 * r["agreement"]["match_rate"] for r in rows],
           color=[f"C{i}" for i in range(len(rows))])
    bx.set_ylabel("detections matching PyTorch fp32 (IoU >= 0.95, %)")
    bx.set_ylim(0, 105)
    bx.tick_params(axis="x", labelrotation=30)
    c = report["config"]
    fig.suptitle(f"{Path(report['model']).name} @ {c['size'][0]}x{c['size'][1]}: precision")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


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


__all__ = ["DEFAULT_SIZES", "PrecisionTableConfig", "precision_markdown", "run_precision_table",
           "BenchConfig", "count_flops", "default_backends", "latency_stats",
           "markdown_table", "matmul_peak_gflops", "median_ratio_interval", "plot_precision",
           "plot_report",
           "run_benchmark", "write_report"]
