"""``nasfcos doctor``: what this machine can run, checked against the support matrix
(:mod:`nasfcos.gpu_matrix`), with one exact fix per mismatch.

:func:`probe` reads the facts (CPU vector extensions, NVIDIA GPUs, the driver's CUDA version,
the torch build and its compiled arch list, TensorRT and ONNX Runtime); :func:`diagnose` is a
pure function of those facts (the tests feed it stand-ins for every GPU generation);
:func:`preflight` is the check every GPU verb runs before any work: it raises
:class:`~nasfcos.errors.BackendUnavailable` with the one-line reason and fix.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata as md
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nasfcos import gpu_matrix as M
from nasfcos.errors import BackendUnavailable, NasfcosError, first_line

#: Backends a GPU verb can ask :func:`preflight` for.
GPU_BACKENDS = ("torch-cuda", "onnxruntime-cuda", "tensorrt")


def ort_gpu_fix(cap: tuple[int, int] | None = None) -> str:
    """The one command that gives ONNX Runtime its CUDA provider for ``cap`` (Makefile)."""
    extra = M.ort_extra_for(cap) if cap else "gpu"
    return ("make ort-gpu" + (f" ORT_EXTRA={extra}" if extra != "gpu" else "")
            + " (installs onnxruntime-gpu in place of onnxruntime)")


@dataclass
class Gpu:
    """One NVIDIA GPU."""

    index: int
    name: str
    capability: tuple[int, int]
    memory_gb: float | None = None

    @property
    def label(self) -> str:
        return M.gpu_label(self.name, self.capability)


@dataclass
class Facts:
    """What :func:`probe` found (or a test's stand-in)."""

    cpu: str = ""
    cpu_flags: list[str] = field(default_factory=list)
    gpus: list[Gpu] = field(default_factory=list)
    driver_cuda: str | None = None        # "12.4": the newest CUDA the driver runs
    torch: str | None = None              # "2.14.1+cu130"
    torch_cuda: str | None = None         # torch.version.cuda; None for a CPU-only build
    arch_list: list[str] = field(default_factory=list)
    tensorrt: str | None = None           # version, None when not installed
    tensorrt_error: str | None = None     # why ``import tensorrt`` failed, if it is installed
    onnxruntime: str | None = None
    ort_providers: list[str] = field(default_factory=list)
    openvino: str | None = None           # version of the [openvino] extra's packages, None
    nncf: str | None = None               # when not installed
    notes: list[str] = field(default_factory=list)  # what the probe could not read


@dataclass
class Finding:
    """One backend on one device: ``found`` (installed and relevant here), whether it can
    ``run``, the one-line ``message`` and the exact ``fix``."""

    backend: str
    device: str
    found: bool
    ok: bool
    message: str
    fix: str = ""

    def line(self) -> str:
        tag = "ok  " if self.ok else "FAIL" if self.found else "note"
        return f"{tag}  {self.message}" + (f": {self.fix}" if self.fix and not self.ok else "")


# -- facts ------------------------------------------------------------------------------------

def cpu_extensions(flags: list[str]) -> dict[str, bool]:
    """AVX-512 / VNNI / BF16 / AMX from /proc/cpuinfo flag names."""
    have = set(flags)
    return {"AVX2": "avx2" in have, "AVX-512": "avx512f" in have,
            "VNNI": bool({"avx512_vnni", "avx_vnni"} & have), "BF16": "avx512_bf16" in have,
            "AMX": bool({"amx_tile", "amx_bf16", "amx_int8"} & have)}


def _driver_cuda() -> str | None:
    """The driver's CUDA version from libcuda's cuDriverGetVersion; None without a driver."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
        v = ctypes.c_int(0)
        if lib.cuDriverGetVersion(ctypes.byref(v)) != 0 or v.value <= 0:
            return None
        return f"{v.value // 1000}.{(v.value % 1000) // 10}"
    except (OSError, AttributeError):
        return None


def _gpus_from_torch(torch: Any) -> list[Gpu]:
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append(Gpu(i, p.name, (int(p.major), int(p.minor)),
                       round(p.total_memory / 1024**3, 1)))
    return out


def parse_nvidia_smi(out: bytes | str) -> tuple[list[Gpu], list[str]]:
    """GPUs from ``nvidia-smi --query-gpu=index,name,compute_cap,memory.total`` CSV output
    (bytes decoded with replacement), and a note for each row that does not parse
    (``[N/A]`` fields, odd bytes): such rows are skipped, never a traceback."""
    text = out.decode("utf-8", errors="replace") if isinstance(out, bytes) else out
    gpus, notes = [], []
    for row in text.strip().splitlines():
        parts = [p.strip() for p in row.split(",")]
        cap = M.parse_version(parts[2] if len(parts) > 2 else "")
        if len(parts) < 4 or cap is None or not parts[0].isdecimal() or not parts[0].isascii():
            notes.append(f"nvidia-smi row skipped, not index,name,compute_cap,memory: "
                         f"{row.strip()[:80]!r}")
            continue
        mem = M.parse_version(parts[3], 1)
        gpus.append(Gpu(int(parts[0]), parts[1], (cap[0], cap[1]),
                        round(mem[0] / 1024, 1) if mem else None))
    return gpus, notes


def _gpus_from_nvidia_smi() -> tuple[list[Gpu], list[str]]:
    """GPUs as nvidia-smi lists them (a CPU-only torch build cannot see them), and notes on
    rows it could not read."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return [], []
    try:
        out = subprocess.run([exe, "--query-gpu=index,name,compute_cap,memory.total",
                              "--format=csv,noheader,nounits"], capture_output=True,
                             timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return [], []
    return parse_nvidia_smi(out)


def probe() -> Facts:
    """The facts of this machine.  Imports torch, tensorrt and onnxruntime lazily."""
    import torch

    from nasfcos.runtime.machine import _cpu_flags, _cpu_model

    f = Facts(cpu=_cpu_model(), cpu_flags=_cpu_flags(), driver_cuda=_driver_cuda(),
              torch=torch.__version__, torch_cuda=torch.version.cuda)
    if f.torch_cuda:
        f.arch_list = list(torch.cuda.get_arch_list())
        try:
            f.gpus = _gpus_from_torch(torch)
        except Exception:  # a driver problem: fall back to nvidia-smi below
            f.gpus = []
    if not f.gpus:
        f.gpus, f.notes = _gpus_from_nvidia_smi()
    try:
        import tensorrt

        f.tensorrt = str(getattr(tensorrt, "__version__", "unknown"))
    except ImportError:
        pass
    except Exception as exc:  # installed but broken (missing CUDA libraries, ...)
        f.tensorrt, f.tensorrt_error = "unknown", first_line(exc)
    try:
        import onnxruntime

        f.onnxruntime = onnxruntime.__version__
        f.ort_providers = list(onnxruntime.get_available_providers())
    except ImportError:
        pass
    for dist in ("openvino", "nncf"):
        with contextlib.suppress(md.PackageNotFoundError):
            setattr(f, dist, md.version(dist))
    return f


# -- verdicts ---------------------------------------------------------------------------------

def _cuda_major(text: str | None) -> int | None:
    v = M.parse_version(text, 1)
    return v[0] if v else None


def _torch_cuda(f: Facts, g: Gpu) -> Finding:
    dev = f"cuda:{g.index}"
    if not f.torch_cuda:
        return Finding("torch-cuda", dev, True, False,
                       f"{g.label}: torch {f.torch} is a CPU-only build", M.torch_fix(g.capability))
    sm = f"sm_{g.capability[0]}{g.capability[1]}"
    if not M.arch_runs(f.arch_list, g.capability):
        return Finding("torch-cuda", dev, True, False,
                       f"{g.label}: this torch build ({f.torch}) has no {sm} kernels",
                       M.torch_fix(g.capability))
    need, have = _cuda_major(f.torch_cuda), _cuda_major(f.driver_cuda)
    if need is not None and have is not None and have < need:
        return Finding("torch-cuda", dev, True, False,
                       f"{g.label}: the driver runs CUDA {f.driver_cuda}, torch {f.torch} needs "
                       f"CUDA {need}", f"update the NVIDIA driver to one for CUDA {f.torch_cuda}"
                       + (f", or {M.torch_fix(g.capability, have)}"
                          if M.torch_builds_for(g.capability) and any(
                              int(b.cuda.split(".")[0]) <= have
                              for b in M.torch_builds_for(g.capability)) else ""))
    return Finding("torch-cuda", dev, True, True, f"{g.label}: torch {f.torch} runs ({sm})")


def _tensorrt(f: Facts, g: Gpu, torch_ok: bool) -> Finding:
    dev = f"cuda:{g.index}"
    extra = M.trt_extra_for(g.capability)
    fix = f"pip install -e '.[{extra}]'"
    if f.tensorrt is None:
        return Finding("tensorrt", dev, False, False, "TensorRT: not installed", fix)
    if f.tensorrt_error:
        return Finding("tensorrt", dev, True, False,
                       f"TensorRT {f.tensorrt}: cannot be imported ({f.tensorrt_error})", fix)
    version = M.parse_version(f.tensorrt)
    if version is None:
        return Finding("tensorrt", dev, True, False,
                       f"TensorRT: cannot read its version {f.tensorrt!r}", fix)
    why = M.trt_supports((version[0], version[1]), g.capability)
    if why is not None:
        return Finding("tensorrt", dev, True, False, f"{g.label}: {why}", fix)
    if not torch_ok:  # the runner's device buffers are torch CUDA tensors
        return Finding("tensorrt", dev, True, False,
                       f"{g.label}: TensorRT {f.tensorrt} needs torch CUDA on this GPU "
                       "(see torch-cuda)", M.torch_fix(g.capability))
    return Finding("tensorrt", dev, True, True, f"{g.label}: TensorRT {f.tensorrt} runs")


def _ort_cuda(f: Facts, g: Gpu) -> Finding:
    dev = f"cuda:{g.index}"
    fix = ort_gpu_fix(g.capability)
    if "CUDAExecutionProvider" not in f.ort_providers:
        return Finding("onnxruntime-cuda", dev, False, False,
                       f"ONNX Runtime {f.onnxruntime or '-'}: no CUDA provider", fix)
    version = M.parse_version(f.onnxruntime) or (0, 0)
    why = M.ort_supports(version, g.capability)
    if why is not None:
        return Finding("onnxruntime-cuda", dev, True, False, f"{g.label}: {why}", fix)
    need, have = M.ort_cuda_major(version), _cuda_major(f.driver_cuda)
    if have is not None and have < need:
        return Finding("onnxruntime-cuda", dev, True, False,
                       f"{g.label}: the driver runs CUDA {f.driver_cuda}, ONNX Runtime "
                       f"{f.onnxruntime} needs CUDA {need}",
                       f"update the NVIDIA driver to one for CUDA {need}.x or newer")
    return Finding("onnxruntime-cuda", dev, True, True,
                   f"{g.label}: ONNX Runtime {f.onnxruntime} CUDA provider")


def diagnose(f: Facts) -> list[Finding]:
    """One finding per backend and device, from the facts alone."""
    out = [Finding("torch-cpu", "cpu", True, True, f"CPU: torch {f.torch} runs")]
    out += [Finding("gpu", "cuda", False, False, note) for note in f.notes]
    if f.onnxruntime is None:
        out.append(Finding("onnxruntime-cpu", "cpu", True, False, "ONNX Runtime: not installed",
                           "pip install -e ."))
    else:
        out.append(Finding("onnxruntime-cpu", "cpu", True, True,
                           f"CPU: ONNX Runtime {f.onnxruntime} runs"))
    out.append(Finding("openvino-cpu", "cpu", True, True, f"CPU: OpenVINO {f.openvino} runs ("
                       + (f"int8 through NNCF {f.nncf})" if f.nncf else "no int8: nncf is not "
                          "installed)")) if f.openvino else
               Finding("openvino-cpu", "cpu", False, False, "OpenVINO: not installed (an optional "
                       "CPU engine)", "pip install -e '.[openvino]'"))
    if not f.gpus:
        out.append(Finding("gpu", "cuda", False, False, "no NVIDIA GPU found",
                           "the GPU backends (torch CUDA, ONNX Runtime CUDA, TensorRT) need one"))
        if f.tensorrt is not None:  # installed, so found, and it cannot run here
            out.append(Finding("tensorrt", "cuda", True, False,
                               f"TensorRT {f.tensorrt} is installed but there is no NVIDIA GPU",
                               "run TensorRT on a machine with one (pip uninstall tensorrt "
                               "here if it is not needed)"))
        return out
    for g in f.gpus:
        t = _torch_cuda(f, g)
        out += [t, _ort_cuda(f, g), _tensorrt(f, g, t.ok)]
    return out


def verdict(findings: list[Finding]) -> bool:
    """True when every backend found can run."""
    return all(x.ok for x in findings if x.found)


def report(f: Facts | None = None) -> dict[str, Any]:
    """The doctor's report as a JSON-friendly dict (facts, findings, verdict)."""
    f = f or probe()
    findings = diagnose(f)
    facts = asdict(f)
    facts["cpu_extensions"] = cpu_extensions(f.cpu_flags)
    return {"facts": facts, "findings": [asdict(x) for x in findings],
            "cpu_default": cpu_default(), "ok": verdict(findings)}


def cpu_default() -> dict[str, dict[str, str]]:
    """The CPU engine (``BACKEND[:PRECISION]``) that ``bench`` and ``predict`` would pick here
    for an fp32 ``.onnx`` and for a ``model.py``, and why (:mod:`nasfcos.runtime.cpu_default`)."""
    from nasfcos.runtime.cpu_default import choose_cpu_engine

    out = {}
    for label, name, precision in (("fp32 .onnx", "m.onnx", "fp32"), ("model.py", "m.py", None)):
        try:
            out[label] = asdict(choose_cpu_engine(name, precision=precision))
        except NasfcosError as exc:  # an unreadable NASFCOS_CPU_ENGINES table
            out[label] = {"engine": "?", "reason": str(exc)}
    return out


def text(rep: dict[str, Any]) -> str:
    """The report for people: facts, then one line per finding, then the verdict."""
    f = rep["facts"]
    ext = f["cpu_extensions"]
    lines = [f"CPU           {f['cpu'] or '?'}: "
             + ", ".join(k for k, v in ext.items() if v)
             + (f" (no {', '.join(k for k, v in ext.items() if not v)})"
                if not all(ext.values()) else "")]
    for g in f["gpus"]:
        mem = f", {g['memory_gb']} GB" if g.get("memory_gb") else ""
        lines.append(f"GPU {g['index']}         {g['name']} (compute capability "
                     f"{g['capability'][0]}.{g['capability'][1]}{mem})")
    if not f["gpus"]:
        lines.append("GPU           none found")
    lines.append(f"driver        CUDA {f['driver_cuda'] or '- (no NVIDIA driver)'}")
    arch = " ".join(f["arch_list"]) if f["arch_list"] else "-"
    lines.append(f"torch         {f['torch']} (CUDA {f['torch_cuda'] or '- (CPU-only build)'}; "
                 f"arch list: {arch})")
    lines.append(f"TensorRT      {f['tensorrt'] or 'not installed'}")
    lines.append(f"ONNX Runtime  {f['onnxruntime'] or 'not installed'} "
                 f"({', '.join(f['ort_providers']) or 'no providers'})")
    lines.append(f"OpenVINO      {f.get('openvino') or 'not installed'} (NNCF "
                 f"{f.get('nncf') or 'not installed'})")
    for label, c in rep.get("cpu_default", {}).items():
        lines.append(f"CPU default   {label}: {c['engine']} ({c['reason']})")
    lines.append("")
    lines += [Finding(**x).line() for x in rep["findings"]]
    bad = [x for x in rep["findings"] if x["found"] and not x["ok"]]
    lines.append("")
    lines.append("verdict: every backend found can run" if not bad else
                 f"verdict: {len(bad)} backend(s) found cannot run (fixes above)")
    return "\n".join(lines)


def preflight(backends: list[str] | tuple[str, ...], device: str = "cuda",
              facts: Facts | None = None) -> Facts:
    """Stop before any work, in one line with the fix, unless every GPU backend in
    ``backends`` (of :data:`GPU_BACKENDS`; others are ignored) can run on ``device``."""
    want = [b for b in backends if b in GPU_BACKENDS]
    if not want:
        return facts or Facts()
    f = facts or probe()
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    if not f.gpus:  # the first problem to name: no GPU at all, whatever is installed
        raise BackendUnavailable(f"no CUDA GPU found: {', '.join(want)} need one (nasfcos "
                                 "doctor says more)")
    if not any(g.index == index for g in f.gpus):
        found = ", ".join(f"cuda:{g.index}" for g in f.gpus)
        raise BackendUnavailable(f"{device}: no such NVIDIA GPU (found: {found}); "
                                 f"{', '.join(want)} need one (nasfcos doctor says more)")
    if "tensorrt" in want:
        from nasfcos.runtime.trt import TRT_MISSING, require_tensorrt

        if facts is None:  # installed, and a version in [10.1, 12): trt's one-line reasons
            require_tensorrt(need_gpu=False)
        elif f.tensorrt is None:
            raise BackendUnavailable(TRT_MISSING)
    for x in diagnose(f):
        if x.backend in want and x.device == f"cuda:{index}" and not x.ok:
            raise BackendUnavailable(f"{x.message}: {x.fix}")
    return f


def gpu_needs(backends: Iterable[str | None], device: str) -> list[str]:
    """The :data:`GPU_BACKENDS` that running ``backends`` on ``device`` needs (TensorRT runs on
    a CUDA GPU whatever ``device`` says, with torch CUDA for its buffers)."""
    cuda = str(device).startswith("cuda")
    needs: list[str] = []
    for b in backends:
        if b == "tensorrt":
            needs += ["torch-cuda", "tensorrt"]
        elif cuda and b in ("torch", "torch-compile"):
            needs.append("torch-cuda")
        elif cuda and b == "onnxruntime":
            needs.append("onnxruntime-cuda")
    return list(dict.fromkeys(needs))


def preflight_verb(path: str | Path | None, backends: Iterable[str | None] | None,
                   device: str | None) -> None:
    """The GPU verbs' check: ``backends`` (None or empty: the file's own backend by suffix)
    on ``device``; stops in one line before any work when one of them cannot run."""
    names = [b for b in (backends or []) if b]
    if not names and path is not None:
        from nasfcos.runtime.artifact import FORM_BACKENDS, FORMS

        names = [FORM_BACKENDS.get(FORMS.get(Path(path).suffix.lower(), ""), "")]
    device = device or "cpu"
    needs = gpu_needs(names, device)
    if needs:
        preflight(needs, device if device.startswith("cuda") else "cuda")


def extras(f: Facts | None = None) -> tuple[str, str]:
    """The extras that install TensorRT and onnxruntime-gpu for this machine's first GPU."""
    f = f or probe()
    if not f.gpus:
        return "trt", "gpu"
    cap = f.gpus[0].capability
    return M.trt_extra_for(cap), M.ort_extra_for(cap)


__all__ = ["GPU_BACKENDS", "Facts", "Finding", "Gpu", "cpu_extensions", "extras",
           "diagnose", "gpu_needs", "preflight", "ort_gpu_fix", "preflight_verb", "probe", "report", "text", "verdict"]
