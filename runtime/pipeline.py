"""The main job as one library pipeline: compile -> export -> check -> bench.

``nasfcos demo`` (CPU plan, ``make demo``) and ``nasfcos demo --gpu`` (GPU plan, ``make
gpu-check``) both call :func:`run_pipeline`; neither has a runner of its own.

CPU plan: compile the genotype as a Detector (random weights) -> one ONNX export (dynamic
batch/H/W, or static at one size) -> parity of ONNX Runtime against PyTorch -> latency of the
CPU backends at every size (TensorRT too where a GPU and TensorRT exist).

GPU plan (the paper's table, :mod:`nasfcos.runtime.gpu_check` formats it): the doctor's check
first (stops in one line, with the fix, before any work) -> compile -> dynamic fp32 export ->
fp16 and int8 (Q/DQ, ``tensorrt`` target, calibrated on a small synthetic set) ONNX files, with random
weights whose classification biases are 0 (:func:`detection_weights`: detections to compare) ->
strongly typed TensorRT engines with one optimisation profile over the sizes -> parity of
ONNX Runtime CUDA and of each engine against PyTorch -> one latency cell at a time (PyTorch
eager fp32 and fp16, ONNX Runtime CUDA, TensorRT fp32/fp16/int8 at each size), each printed
and written to the report as soon as it is measured, so a cut run keeps what it measured.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasfcos.errors import BackendUnavailable, NasfcosError, first_line

Say = Callable[[str], None]


@dataclass
class PipelineConfig:
    """What the pipeline builds and measures.  ``gpu`` picks the GPU plan."""

    out: Path
    genotype: str = "nas_fcos_fpn_head"
    fpn_channels: int = 256
    head_channels: int | None = None  # None: the FPN width
    num_classes: int = 80
    backbone: str = "resnet50"
    sizes: list[tuple[int, int]] = field(default_factory=lambda: [(600, 600), (800, 800),
                                                                  (1000, 1000)])
    static: bool = False
    check_sizes: list[tuple[int, int]] | None = None
    backends: list[str] = field(default_factory=lambda: ["torch", "onnxruntime"])
    runs: int = 3
    warmup: int = 1
    threads: int | None = None
    progress: bool = True
    gpu: bool = False
    device: str = "cuda"             # GPU plan: the GPU
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8")
    calib_images: int = 16
    workspace_gb: float = 4.0


# -- steps shared by both plans -----------------------------------------------------------------

def compile_step(cfg: PipelineConfig, say: Say) -> Path:
    """The genotype compiled as a Detector into ``out/model.py``."""
    from nasfcos.compiler import CompileOptions, compile_genotype
    from nasfcos.genotypes import resolve_genotype
    from nasfcos.io import atomic_write_text

    genotype = resolve_genotype(cfg.genotype)
    opts = CompileOptions(fpn_channels=cfg.fpn_channels, head_channels=cfg.head_channels,
                          num_classes=cfg.num_classes, detector=True, backbone=cfg.backbone)
    model_py = cfg.out / "model.py"
    atomic_write_text(model_py, compile_genotype(genotype, opts))
    say(f"compiled {genotype.name} @{cfg.fpn_channels} with {cfg.backbone} -> {model_py}")
    return model_py


def detection_weights(model_py: Path, out: Path, *, seed: int = 0) -> Path:
    """Random weights (``seed``) whose classification biases are 0, written to ``out``.

    A randomly initialised detector (bias prior 0.01) scores every location below the 0.05
    threshold: no detection on either side, so a parity check of an engine, whose
    intermediate tensors cannot be read, would compare nothing.  With the biases at 0 every
    location scores sigmoid(0) = 0.5 and the detections (top 100 after NMS) are compared.
    """
    import torch

    from nasfcos.io import atomic_write_bytes
    from nasfcos.runtime.models import load_model

    lm = load_model(model_py, "detector", seed=seed)
    state = {k: v.detach().clone() for k, v in lm.net.detector.state_dict().items()}
    biases = [k for k in state if k.endswith("cls_logits.bias")]
    if not biases:
        raise NasfcosError(f"{model_py}: no cls_logits.bias to set (not a compiled detector?)")
    for k in biases:
        state[k].zero_()
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(out, buf.getvalue())
    return out


def export_step(cfg: PipelineConfig, model_py: Path, say: Say,
                weights: Path | None = None) -> Any:
    """One ONNX export (dynamic batch/H/W, or static at the one size), traced at the middle
    size, with random or ``weights``; returns the
    :class:`~nasfcos.runtime.export.ExportResult`."""
    from nasfcos.runtime.export import ExportOptions, export_onnx

    ordered = sorted(cfg.sizes, key=lambda s: s[0] * s[1])
    mid = ordered[len(ordered) // 2]
    say(f"exporting to ONNX ({'static' if cfg.static else 'dynamic batch/H/W'}, traced at "
        f"{mid[0]}x{mid[1]}; takes a while for ResNet-50) ...")
    res = export_onnx(model_py, cfg.out / "model.onnx",
                      ExportOptions(size=mid, dynamic=not cfg.static, weights=weights),
                      progress=cfg.progress)
    m = res.manifest
    say(f"      {res.onnx_path} ({m['artifact']['bytes'] / 1e6:.0f} MB, "
        f"{m['export']['ops'].get('DeformConv', 0)} DeformConv, TensorRT parser "
        f"{'ok' if m['export'].get('tensorrt', {}).get('parser_ok', True) else 'would refuse it'}"
        f"), manifest {res.manifest_path}")
    return res


# -- CPU plan -----------------------------------------------------------------------------------

def _cpu_plan(cfg: PipelineConfig, say: Say) -> dict[str, Any]:
    from nasfcos.io import atomic_write_json
    from nasfcos.runtime.bench import BenchConfig, run_benchmark, write_report
    from nasfcos.runtime.check import check_artifact
    from nasfcos.runtime.trt import tensorrt_status

    summary: dict[str, Any] = {"out": str(cfg.out), "steps": {}}

    def timed(name: str, t0: float) -> None:
        summary["steps"][name] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    model_py = compile_step(cfg, lambda s: say(f"[1/4] {s}"))
    timed("compile", t0)

    t0 = time.perf_counter()
    res = export_step(cfg, model_py, lambda s: say(s if s.startswith(" ") else f"[2/4] {s}"))
    timed("export", t0)
    summary["onnx"] = {"path": str(res.onnx_path), "manifest": str(res.manifest_path),
                       "bytes": res.manifest["artifact"]["bytes"],
                       "deform_convs": res.manifest["export"]["ops"].get("DeformConv", 0)}

    t0 = time.perf_counter()
    check_sizes = cfg.check_sizes or [sorted(cfg.sizes, key=lambda s: s[0] * s[1])[0]]
    say(f"[3/4] parity: ONNX Runtime vs PyTorch at "
        f"{', '.join(f'{h}x{w}' for h, w in check_sizes)} ...")
    check = check_artifact(res.onnx_path, model_py, sizes=check_sizes, threads=cfg.threads)
    timed("check", t0)
    atomic_write_json(cfg.out / "parity.json", check.to_dict())
    say(check.table())
    summary["parity"] = {"ok": check.ok, "json": str(cfg.out / "parity.json"),
                         "max_abs": {o.name: o.max_abs for o in check.outputs},
                         "failures": [o.name for o in check.failures()]}

    t0 = time.perf_counter()
    say(f"[4/4] benchmark {', '.join(cfg.backends)} on CPU ({cfg.threads} threads) at "
        f"{', '.join(f'{h}x{w}' for h, w in cfg.sizes)}: {cfg.warmup} warm-up + {cfg.runs} "
        "timed runs each ...")
    bcfg = BenchConfig(backends=cfg.backends, sizes=cfg.sizes, warmup=cfg.warmup, runs=cfg.runs,
                       threads=cfg.threads, device="cpu", onnx_path=res.onnx_path)
    report = run_benchmark(model_py, bcfg, progress=cfg.progress)
    summary["report"] = {k: str(v) for k, v in write_report(report, cfg.out / "report").items()}
    trt_reason = tensorrt_status()
    if trt_reason is None:
        gcfg = BenchConfig(backends=["torch", "tensorrt"], sizes=cfg.sizes,
                           warmup=max(cfg.warmup, 3), runs=max(cfg.runs, 10), device="cuda",
                           onnx_path=res.onnx_path)
        greport = run_benchmark(model_py, gcfg, progress=cfg.progress)
        summary["report_gpu"] = {k: str(v) for k, v in
                                 write_report(greport, cfg.out / "report_gpu").items()}
    else:
        summary["tensorrt"] = f"not run: {trt_reason}"
    timed("bench", t0)
    summary["results"] = [{k: r.get(k) for k in ("backend", "size", "status", "median_ms",
                                                  "p90_ms", "gflops_per_s", "peak_fraction")}
                          for r in report["results"]]
    summary["_report"] = report
    summary["_paths"] = {"model": model_py, "onnx": res.onnx_path}
    return summary


# -- GPU plan -----------------------------------------------------------------------------------

def _lower(cfg: PipelineConfig, fp32: Path, say: Say) -> dict[str, Path]:
    """The fp32 ONNX file and its fp16 / int8 (tensorrt target) versions."""
    from nasfcos.fcos.synth import SynthConfig, write_synthetic
    from nasfcos.runtime.export import convert_onnx
    from nasfcos.runtime.precision import PrecisionOptions

    onnx = {"fp32": fp32}
    for prec in cfg.precisions:
        if prec == "fp32":
            continue
        out = cfg.out / f"model.{prec}.onnx"
        popts = PrecisionOptions(prec)
        if prec == "int8":
            data = cfg.out / "calib"
            if not (data / "train.json").is_file():
                write_synthetic(data, SynthConfig(images=cfg.calib_images + 4, size=256, seed=0))
            popts = PrecisionOptions("int8", data=data, calib_images=cfg.calib_images,
                                     int8_target="tensorrt")
        t0 = time.perf_counter()
        convert_onnx(fp32, out, popts)
        say(f"{prec} ONNX: {out} ({time.perf_counter() - t0:.0f} s)")
        onnx[prec] = out
    return onnx


def _engines(cfg: PipelineConfig, onnx: dict[str, Path], say: Say) -> dict[str, Path | str]:
    """One engine per precision (profile min/opt/max over the sizes); a failed build is
    recorded as its one-line reason and the others go on."""
    from nasfcos.runtime.manifest import load_manifest
    from nasfcos.runtime.trt import TrtBuildOptions, build_engine, profile_shapes

    ordered = sorted(cfg.sizes, key=lambda s: s[0] * s[1])
    out: dict[str, Path | str] = {}
    for prec, src in onnx.items():
        man = load_manifest(src)
        shapes = profile_shapes("detector", [ordered[0], ordered[len(ordered) // 2],
                                             ordered[-1]], man.batch)
        engine = cfg.out / f"model.{prec}.engine"
        t0 = time.perf_counter()
        try:
            build_engine(src, engine, TrtBuildOptions(
                shapes=shapes, workspace_gb=cfg.workspace_gb,
                timing_cache=cfg.out / "timing.cache"))
            out[prec] = engine
            say(f"TensorRT {prec} engine: {engine} ({time.perf_counter() - t0:.0f} s)")
        except NasfcosError as exc:
            out[prec] = first_line(exc, 300)
            say(f"TensorRT {prec} engine: FAILED ({out[prec]})")
    return out


def _parity(artifact: Path, model_py: Path, backend: str, device: str) -> dict[str, Any]:
    from nasfcos.runtime.check import check_artifact

    try:
        rep = check_artifact(artifact, model_py, backend=backend, device=device,
                             sizes=[(800, 800)], batch=1)
    except (BackendUnavailable, NasfcosError) as exc:
        return {"status": "skipped" if isinstance(exc, BackendUnavailable) else "failed",
                "reason": first_line(exc, 300)}
    worst = max(rep.outputs, key=lambda o: o.max_rel) if rep.outputs else None
    return {"status": "ok" if rep.ok else "disagrees", "precision": rep.precision,
            "max_abs": worst.max_abs if worst else None,
            "max_rel": worst.max_rel if worst else None,
            "output": worst.name if worst else None,
            "failures": [o.name for o in rep.failures()]}


def measure_cell(make: Callable[[], Any], size: tuple[int, int], cfg: PipelineConfig,
                 runner_cache: dict[str, Any], key: str) -> dict[str, Any]:
    """One latency cell: the runner (built once per key), CUDA-event timing, median/p90."""
    from nasfcos.runtime.bench import BenchConfig, _time_cell, latency_stats
    from nasfcos.runtime.models import make_inputs

    try:
        runner = runner_cache.get(key)
        if runner is None:
            runner = runner_cache[key] = make()
        inputs = make_inputs("detector", size, 1, 0)
        bcfg = BenchConfig(sizes=[size], warmup=cfg.warmup, runs=cfg.runs, device=cfg.device)
        times, notes = _time_cell(runner, inputs, bcfg)
    except BackendUnavailable as exc:
        return {"status": "skipped", "reason": first_line(exc, 300)}
    except (NasfcosError, RuntimeError) as exc:  # a CUDA error in one cell: the rest go on
        return {"status": "failed", "reason": first_line(exc, 300)}
    stats = latency_stats(times)
    return {"status": "ok", "runs": len(times), **notes,
            **{k: round(v, 3) for k, v in stats.items() if k in ("median_ms", "p90_ms",
                                                                  "mean_ms", "min_ms")}}


#: The GPU plan's cells in the paper table's order: (row label, backend, precision).
GPU_ROWS = (("PyTorch eager", "torch", "fp32"), ("PyTorch eager", "torch-fp16", "fp16"),
            ("ONNX Runtime CUDA", "onnxruntime", "fp32"), ("TensorRT", "tensorrt", "fp32"),
            ("TensorRT", "tensorrt", "fp16"), ("TensorRT", "tensorrt", "int8"))


def _gpu_plan(cfg: PipelineConfig, say: Say) -> dict[str, Any]:
    from nasfcos.io import atomic_write_json
    from nasfcos.runtime import doctor
    from nasfcos.runtime import gpu_check as G
    from nasfcos.runtime.runners import make_runner

    facts = doctor.probe()
    doctor.preflight(["torch-cuda", "tensorrt"], cfg.device, facts)  # one line, before any file
    rep = doctor.report(facts)
    cfg.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cfg.out / "doctor.json", rep)
    state = G.new_report(cfg, rep)
    say(f"[gpu] {G.describe_machine(rep)}")

    def save() -> None:
        G.write(state, cfg.out)

    t0 = time.perf_counter()
    model_py = compile_step(cfg, lambda s: say(f"[gpu] {s}"))
    weights = detection_weights(model_py, cfg.out / "weights.pt")
    res = export_step(cfg, model_py, lambda s: say(f"[gpu] {s.strip()}"), weights)
    onnx = _lower(cfg, res.onnx_path, lambda s: say(f"[gpu] {s}"))
    engines = _engines(cfg, {p: onnx[p] for p in cfg.precisions if p in onnx},
                       lambda s: say(f"[gpu] {s}"))
    state["build"] = {"seconds": round(time.perf_counter() - t0, 1),
                      "onnx": {k: str(v) for k, v in onnx.items()},
                      "engines": {k: str(v) for k, v in engines.items()}}
    save()

    state["parity"]["onnxruntime/fp32"] = _parity(onnx["fp32"], model_py, "onnxruntime",
                                                  cfg.device)
    say(f"[gpu] parity ONNX Runtime CUDA fp32: {G.parity_text(state['parity']['onnxruntime/fp32'])}")
    for prec, eng in engines.items():
        key = f"tensorrt/{prec}"
        state["parity"][key] = (_parity(eng, model_py, "tensorrt", cfg.device)
                                if isinstance(eng, Path) else
                                {"status": "skipped", "reason": f"no engine: {eng}"})
        say(f"[gpu] parity TensorRT {prec}: {G.parity_text(state['parity'][key])}")
    save()

    makers: dict[str, Callable[[], Any]] = {
        "torch/fp32": lambda: make_runner(model_py, "torch", cfg.device, kind="detector",
                                          weights=weights),
        "torch-fp16/fp16": lambda: make_runner(model_py, "torch", cfg.device, kind="detector",
                                               weights=weights, precision="fp16"),
        "onnxruntime/fp32": lambda: make_runner(onnx["fp32"], "onnxruntime", cfg.device),
    }
    for prec, eng in engines.items():
        makers[f"tensorrt/{prec}"] = (
            (lambda e=eng: make_runner(e, "tensorrt", cfg.device)) if isinstance(eng, Path)
            else (lambda e=eng: (_ for _ in ()).throw(BackendUnavailable(f"no engine: {e}"))))
    cache: dict[str, Any] = {}
    for label, backend, prec in GPU_ROWS:
        key = f"{backend}/{prec}"
        if key not in makers:
            continue
        for size in cfg.sizes:
            cell = measure_cell(makers[key], size, cfg, cache, key)
            cell.update({"row": label, "backend": backend, "precision": prec,
                         "size": list(size)})
            state["cells"].append(cell)
            say(f"[gpu] {G.cell_text(cell)}")
            save()
        runner = cache.pop(key, None)
        if runner is not None:
            runner.close()
    state["seconds"] = round(time.perf_counter() - t0, 1)
    state["ok"] = G.all_ok(state)
    save()
    return state


def run_pipeline(cfg: PipelineConfig, say: Say = print) -> dict[str, Any]:
    """Run the CPU or the GPU plan (see the module docstring); returns its summary."""
    cfg.out = Path(cfg.out)
    if cfg.gpu:
        return _gpu_plan(cfg, say)
    cfg.out.mkdir(parents=True, exist_ok=True)
    return _cpu_plan(cfg, say)


__all__ = ["GPU_ROWS", "PipelineConfig", "compile_step", "detection_weights", "export_step",
           "measure_cell", "run_pipeline"]
