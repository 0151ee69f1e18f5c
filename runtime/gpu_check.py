"""``make gpu-check``: everything that needs an NVIDIA GPU, in one command and one report.

``python -m nasfcos.runtime.gpu_check --out gpu_check`` (the Makefile target installs the
``[trt]`` extra first) runs these steps and writes ``gpu_check.json`` and ``gpu_check.md``:

1. ``environment``: CUDA GPU (torch), TensorRT version (10.1 <= v < 12), ONNX Runtime's CUDA
   provider;
2. ``pytest-gpu``: ``pytest -m gpu`` (its summary line);
3. ``model``: the paper genotype @128 with ResNet-50 compiled as a Detector (random weights;
   nothing is downloaded), exported to a dynamic fp32 ONNX file, lowered to fp16 and to
   int8 Q/DQ (``tensorrt`` target, calibrated on a small synthetic set made on the spot);
4. ``engine-fp32/fp16/int8``: strongly typed TensorRT engines, one optimisation profile
   spanning the benchmark sizes, a shared timing cache;
5. ``parity-*``: each engine against the PyTorch fp32 model at 800x800 (``check``);
6. ``bench``: PyTorch eager vs ONNX Runtime CUDA vs TensorRT fp32/fp16/int8 at 600, 800 and
   1000 px, CUDA events, median (p90).

A step that fails is recorded with its one-line reason and the steps that do not depend on
it still run; the exit status is 0 only when every step passed.  Without a GPU the report
says so and every later step is ``skipped``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nasfcos.errors import NasfcosError

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class GpuCheckConfig:
    """What the GPU check builds and measures (defaults: the issue's figures)."""

    out: Path = Path("gpu_check")
    genotype: str = "nas_fcos_fpn_head"
    backbone: str = "resnet50"
    width: int = 128
    sizes: list[int] = field(default_factory=lambda: [600, 800, 1000])
    runs: int = 50
    warmup: int = 10
    calib_images: int = 16
    pytest: bool = True


@dataclass
class Step:
    """One step of the check: ``ok``, ``failed`` or ``skipped`` with a one-line reason."""

    name: str
    status: str = "skipped"
    reason: str = ""
    seconds: float = 0.0
    result: dict[str, Any] = field(default_factory=dict)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


class Runner:
    """Runs steps in order; a step whose dependencies did not pass is skipped."""

    def __init__(self) -> None:
        self.steps: list[Step] = []

    def step(self, name: str, fn: Callable[[], dict[str, Any] | None],
             needs: tuple[str, ...] = ()) -> Step:
        st = Step(name)
        done = {s.name: s.status for s in self.steps}
        missing = [n for n in needs if done.get(n) != "ok"]
        if missing:
            st.reason = f"needs {', '.join(missing)}"
        else:
            t0 = time.perf_counter()
            try:
                st.result = fn() or {}
                st.status = "ok"
            except Exception as exc:  # every failure becomes one line in the report
                st.status, st.reason = "failed", _one_line(exc)
            st.seconds = round(time.perf_counter() - t0, 1)
        self.steps.append(st)
        print(f"[gpu-check] {name}: {st.status}" + (f" ({st.reason})" if st.reason else ""),
              flush=True)
        return st

    def get(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)


def environment() -> dict[str, Any]:
    """GPU, TensorRT and ONNX Runtime CUDA availability; raises when there is no GPU."""
    import onnxruntime as ort
    import torch

    from nasfcos.runtime.trt import tensorrt_status

    if not torch.cuda.is_available():
        raise NasfcosError("no CUDA GPU (torch.cuda.is_available() is False)")
    return {"gpu": torch.cuda.get_device_name(0),
            "capability": list(torch.cuda.get_device_capability(0)),
            "cuda": torch.version.cuda, "tensorrt": tensorrt_status() or "ok",
            "ort_cuda": "CUDAExecutionProvider" in ort.get_available_providers()}


def run_pytest_gpu(root: Path) -> dict[str, Any]:
    """``pytest -m gpu``; raises with the summary line when it fails."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"],
                          cwd=root, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
    summary = lines[-1] if lines else "(no output)"
    if proc.returncode not in (0, 5):  # 5: no test selected
        raise NasfcosError(f"pytest -m gpu: {summary}")
    return {"summary": summary, "returncode": proc.returncode}


def build_model(cfg: GpuCheckConfig, work: Path) -> dict[str, Any]:
    """Compile, export (dynamic fp32), lower to fp16 and int8; returns the ONNX paths."""
    from nasfcos.compiler import CompileOptions, compile_genotype
    from nasfcos.fcos.synth import SynthConfig, write_synthetic
    from nasfcos.genotypes import load_paper_genotype
    from nasfcos.runtime.export import ExportOptions, convert_onnx, export_onnx
    from nasfcos.runtime.precision import PrecisionOptions

    work.mkdir(parents=True, exist_ok=True)
    model = work / "model.py"
    model.write_text(compile_genotype(load_paper_genotype(cfg.genotype), CompileOptions(
        fpn_channels=cfg.width, head_channels=cfg.width, detector=True,
        backbone=cfg.backbone)))
    mid = sorted(cfg.sizes)[len(cfg.sizes) // 2]
    fp32 = work / "model.fp32.onnx"
    export_onnx(model, fp32, ExportOptions(size=(mid, mid), dynamic=True))
    data = work / "calib"
    write_synthetic(data, SynthConfig(images=cfg.calib_images + 4, size=256, seed=0))
    onnx = {"fp32": fp32}
    onnx["fp16"] = work / "model.fp16.onnx"
    convert_onnx(fp32, onnx["fp16"], PrecisionOptions("fp16"))
    onnx["int8"] = work / "model.int8.onnx"
    convert_onnx(fp32, onnx["int8"], PrecisionOptions(
        "int8", data=data, calib_images=cfg.calib_images, int8_target="tensorrt"))
    return {"model": str(model), "onnx": {k: str(v) for k, v in onnx.items()}}


def build_engines(cfg: GpuCheckConfig, onnx: dict[str, str], work: Path, precision: str
                  ) -> dict[str, Any]:
    """One strongly typed engine for ``precision`` with a profile over ``cfg.sizes``."""
    from nasfcos.runtime.manifest import load_manifest
    from nasfcos.runtime.trt import TrtBuildOptions, build_engine, profile_shapes

    src = Path(onnx[precision])
    batch = load_manifest(src).batch
    sizes = sorted(cfg.sizes)
    shapes = profile_shapes("detector", [(s, s) for s in (sizes[0], sizes[len(sizes) // 2],
                                                          sizes[-1])], batch)
    engine = work / f"model.{precision}.engine"
    man = build_engine(src, engine, TrtBuildOptions(shapes=shapes,
                                                    timing_cache=work / "timing.cache"))
    return {"engine": str(engine), "seconds": man["build"]["seconds"],
            "bytes": man["artifact"]["bytes"], "precision": man["build"]["precision"]}


def parity(engine: str, model: str) -> dict[str, Any]:
    """The engine against the PyTorch fp32 model at 800x800, at its precision's tolerances."""
    from nasfcos.runtime.check import check_artifact

    rep = check_artifact(engine, model, device="cuda", sizes=[(800, 800)], batch=1)
    if not rep.ok:
        bad = ", ".join(f"{o.name} {o.max_abs:.3g}" for o in rep.failures()[:3])
        raise NasfcosError(f"{Path(engine).name}: outputs disagree ({bad})")
    return {"agreement": rep.agreement, "precision": rep.precision}


def benchmark(cfg: GpuCheckConfig, model: str, fp32_onnx: str,
              engines: dict[str, str]) -> dict[str, Any]:
    """Latency rows: torch eager, ORT CUDA (fp32 ONNX) and TensorRT per precision."""
    from nasfcos.runtime.bench import BenchConfig, run_benchmark

    sizes = [(s, s) for s in cfg.sizes]
    rows: list[dict[str, Any]] = []
    base = run_benchmark(model, BenchConfig(
        backends=["torch", "onnxruntime"], sizes=sizes, runs=cfg.runs, warmup=cfg.warmup,
        device="cuda", kind="detector", onnx_path=Path(fp32_onnx), matmul_peak=False))
    rows += [{**r, "precision": "fp32"} for r in base["results"]]
    for prec, engine in engines.items():
        rep = run_benchmark(engine, BenchConfig(backends=["tensorrt"], sizes=sizes,
                                                runs=cfg.runs, warmup=cfg.warmup,
                                                device="cuda", matmul_peak=False, flops=False))
        rows += [{**r, "precision": prec} for r in rep["results"]]
    for r in rows:
        r.pop("times_ms", None)
    return {"rows": rows}


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: steps, then the latency table (median ms, p90)."""
    c = report["config"]
    lines = [f"# GPU check: {c['genotype']} @{c['width']} with {c['backbone']}", "",
             f"Created {report['created_utc']}.", "", "| step | status | seconds | note |",
             "|---|---|---:|---|"]
    for s in report["steps"]:
        note = s["reason"]
        if not note and s["name"] == "environment":
            note = ", ".join(f"{k} {v}" for k, v in s["result"].items())
        if not note and s["name"] == "pytest-gpu":
            note = s["result"].get("summary", "")
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']} | {note} |")
    bench = next((s for s in report["steps"] if s["name"] == "bench" and s["status"] == "ok"),
                 None)
    if bench is not None:
        sizes = [f"{s}x{s}" for s in c["sizes"]]
        lines += ["", "Latency, ms: median (p90), CUDA events, batch 1, warm-up excluded:", "",
                  "| backend | precision | " + " | ".join(sizes) + " |",
                  "|---|---|" + "---:|" * len(sizes)]
        cells: dict[tuple[str, str], dict[str, str]] = {}
        for r in bench["result"]["rows"]:
            key = (r["backend"], r["precision"])
            val = (f"{r['median_ms']:.2f} ({r['p90_ms']:.2f})" if r["status"] == "ok"
                   else r["status"])
            cells.setdefault(key, {})[f"{r['size'][0]}x{r['size'][1]}"] = val
        for (backend, prec), vals in cells.items():
            lines.append(f"| {backend} | {prec} | "
                         + " | ".join(vals.get(s, "") for s in sizes) + " |")
    return "\n".join(lines) + "\n"


def run_gpu_check(cfg: GpuCheckConfig, root: Path | None = None) -> dict[str, Any]:
    """Run every step (see the module docstring); writes ``<out>.json`` and ``<out>.md``."""
    from nasfcos.io import atomic_write_json, atomic_write_text

    out = Path(cfg.out)
    work = out.with_name(out.name + "_work")
    root = root or Path.cwd()
    r = Runner()
    r.step("environment", environment)
    if cfg.pytest:
        r.step("pytest-gpu", lambda: run_pytest_gpu(root), needs=("environment",))
    r.step("model", lambda: build_model(cfg, work), needs=("environment",))
    onnx = r.get("model").result.get("onnx", {})
    engines: dict[str, str] = {}
    for prec in PRECISIONS:
        st = r.step(f"engine-{prec}", lambda p=prec: build_engines(cfg, onnx, work, p),
                    needs=("model",))
        if st.status == "ok":
            engines[prec] = st.result["engine"]
    model = r.get("model").result.get("model", "")
    for prec in PRECISIONS:
        r.step(f"parity-{prec}", lambda p=prec: parity(engines[p], model),
               needs=(f"engine-{prec}",))
    r.step("bench", lambda: benchmark(cfg, model, onnx.get("fp32", ""), engines),
           needs=("model",))
    report = {"format": "nasfcos-gpu-check/1", "config": {**asdict(cfg), "out": str(cfg.out)},
              "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
              "ok": all(s.status == "ok" for s in r.steps),
              "steps": [asdict(s) for s in r.steps]}
    atomic_write_json(out.with_name(out.name + ".json"), report)
    atomic_write_text(out.with_name(out.name + ".md"), markdown(report))
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nasfcos.runtime.gpu_check",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="gpu_check", help="report prefix (default gpu_check)")
    p.add_argument("--runs", type=int, default=50, help="timed runs per cell (default 50)")
    p.add_argument("--no-pytest", action="store_true", help="skip pytest -m gpu")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be >= 1")
    report = run_gpu_check(GpuCheckConfig(out=Path(args.out), runs=args.runs,
                                          pytest=not args.no_pytest))
    print(f"[gpu-check] report: {args.out}.md / {args.out}.json "
          f"({'all steps ok' if report['ok'] else 'some steps did not pass'})")
    return 0 if report["ok"] else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
