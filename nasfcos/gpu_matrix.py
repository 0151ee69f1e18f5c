"""What runs on which NVIDIA GPU: the support matrix, as data, read by ``nasfcos doctor``, by
every GPU verb's pre-flight check, by the tests and by the README's GPU table.

Each fact cites the vendor document it comes from (``# src:``).  Facts not yet confirmed on a
real GPU by this project are marked ``# unverified``.  Sources:

[PT]    PyTorch RFC pytorch/pytorch#190355 "CUDA support matrix for Release 2.14" and
        RELEASE.md's "PyTorch CUDA Support Matrix" (PR #197555: 2.14 = 2.13 = 2.12 rows):
        2.14 ships CUDA 12.6 (legacy), 13.0 and 13.2 (default, the one on PyPI);
        12.6.3: Maxwell 5.0, Pascal 6.0, Volta 7.0, Turing 7.5, Ampere 8.0/8.6, Hopper 9.0;
        13.x:   Turing 7.5, Ampere 8.0/8.6, Hopper 9.0, Blackwell 10.0/12.0 (+PTX on Linux).
        Volta left the 12.8 build in 2.11 (RFC #172352); CUDA 13 has no sm_70 target.
[CUDA]  CUDA C Programming Guide, "Binary Compatibility": a cubin for sm_XY runs on sm_XZ
        with Z >= Y (same major); PTX is JIT-compiled for any newer capability.
[TRT]   TensorRT release notes: 10.0.1 - 10.4.0 "Volta support is deprecated"; 10.5.0 "NVIDIA
        Volta support (compute capability 7.0) has been removed"; 10.8.0 "supports NVIDIA
        Blackwell GPUs"; 11.0.0 "Weak typing is no longer supported".
        TensorRT OSS v10.1.0 release: "Parser: Added support for DeformConv operation".
[TRTHW] TensorRT 10.x Support Matrix, "Hardware and Precision" (FP16 / INT8 tensor cores,
        BF16, FP8, FP4 per compute capability).
[ORT]   ONNX Runtime "CUDA Execution Provider" requirements: from 1.19 the onnxruntime-gpu
        wheels on PyPI are built with CUDA 12.x and cuDNN 9.x (any 12.x runtime works, minor
        version compatibility); onnxruntime PR #23659 (1.21): extras ``[cuda,cudnn]`` pull the
        CUDA and cuDNN runtime wheels.
[ORTPY] measured here (pip's dependency resolution of ``onnxruntime-gpu[cuda,cudnn]==V``, no
        install): 1.23.2 and 1.26.0 pull nvidia-cuda-runtime-cu12 12.9 + nvidia-cudnn-cu12 9;
        1.28.0 and 1.31.1 pull nvidia-cuda-runtime 13.5 + nvidia-cudnn-cu13 9.  So the PyPI
        wheels became CUDA 13 builds at 1.27 or 1.28 (1.27.0 did not resolve here), and a CUDA
        13 build has no sm_70 target [PT]: a V100 needs onnxruntime-gpu < 1.27.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: The exact torch / torchvision this project is tested with (constraints.txt pins the same).
TORCH_VERSION = "2.14.1"
TORCHVISION_VERSION = "0.29.1"


@dataclass(frozen=True)
class TorchBuild:
    """One CUDA build of :data:`TORCH_VERSION` and the GPU targets it carries."""

    cuda: str                         # CUDA toolkit of the build, "12.6"
    tag: str                          # wheel local version / index name, "cu126"
    sm: tuple[str, ...]               # cubin targets, "70" = sm_70
    ptx: tuple[str, ...] = ()         # PTX targets (JIT for newer GPUs)
    default: bool = False             # the build a plain pip install of torch gets


#: src: [PT] (x86-64 Linux and Windows rows)
TORCH_BUILDS: tuple[TorchBuild, ...] = (
    TorchBuild("12.6", "cu126", ("50", "60", "70", "75", "80", "86", "90")),
    TorchBuild("13.0", "cu130", ("75", "80", "86", "90", "100", "120"), ptx=("120",)),
    TorchBuild("13.2", "cu132", ("75", "80", "86", "90", "100", "120"), ptx=("120",),
               default=True),
)

#: TensorRT releases whose ONNX parser imports DeformConv natively.  src: [TRT] OSS v10.1.0
TRT_DEFORMCONV_FROM = (10, 1)
#: TensorRT releases without Volta.  src: [TRT] 10.5.0 release notes
TRT_VOLTA_REMOVED = (10, 5)
#: First TensorRT major this project has not been written against.
TRT_MAX_MAJOR = 12
#: onnxruntime-gpu on PyPI: CUDA 12.x + cuDNN 9 from 1.19; [cuda,cudnn] extras from 1.21.
ORT_GPU_MIN = (1, 21)  # src: [ORT]
#: First onnxruntime-gpu release on PyPI that is a CUDA 13 build (1.27 unresolved: counted as
#: CUDA 13 to be safe).  src: [ORTPY]
ORT_GPU_CUDA13_FROM = (1, 27)


def ort_cuda_major(version: tuple[int, ...]) -> int:
    """The CUDA major an onnxruntime-gpu wheel of ``version`` from PyPI is built with."""
    return 13 if tuple(version[:2]) >= ORT_GPU_CUDA13_FROM else 12  # src: [ORT], [ORTPY]


@dataclass(frozen=True)
class Generation:
    """One GPU generation: capability range, example parts and what runs there."""

    name: str
    caps: tuple[tuple[int, int], ...]     # compute capabilities, (7, 0)
    examples: str
    trt: tuple[tuple[int, int], tuple[int, int]] | None  # [from, until) TensorRT versions
    extra: str                             # the nasfcos extra that installs that TensorRT
    fast: tuple[str, ...]                  # precisions with fast kernels (TensorRT)
    ort_extra: str = "gpu"                 # the extra that installs onnxruntime-gpu for it
    ort_below: tuple[int, int] | None = None  # onnxruntime-gpu versions below this only

    @property
    def sm(self) -> tuple[str, ...]:
        return tuple(f"{a}{b}" for a, b in self.caps)


#: The TensorRT versions this project supports, [from, until).
_TRT_ALL = (TRT_DEFORMCONV_FROM, (TRT_MAX_MAJOR, 0))
#: One row per generation.  trt: src [TRT] (+ TRT_DEFORMCONV_FROM: this project needs the
#: native DeformConv import, so nothing below 10.1); fast: src [TRTHW].
GENERATIONS: tuple[Generation, ...] = (
    # Volta: 10.0-10.4 deprecated it, 10.5 removed it -> 10.1 <= v < 10.5.  V100 INT8 runs
    # (dp4a) without INT8 tensor cores [TRTHW].
    Generation("Volta", ((7, 0),), "V100, Titan V", (TRT_DEFORMCONV_FROM, TRT_VOLTA_REMOVED),
               "trt-volta", ("fp16", "int8"), ort_extra="gpu-volta", ort_below=ORT_GPU_CUDA13_FROM),
    Generation("Turing", ((7, 5),), "T4, RTX 20xx", _TRT_ALL, "trt", ("fp16", "int8")),
    Generation("Ampere", ((8, 0), (8, 6)), "A100, A10, RTX 30xx",
               _TRT_ALL, "trt", ("fp16", "int8", "bf16", "tf32")),
    Generation("Ada", ((8, 9),), "L4, L40S, RTX 40xx", _TRT_ALL, "trt",
               ("fp16", "int8", "bf16", "tf32", "fp8")),
    Generation("Hopper", ((9, 0),), "H100, H200, GH200", _TRT_ALL, "trt",
               ("fp16", "int8", "bf16", "tf32", "fp8")),
    # Blackwell: TensorRT 10.8 first supports it [TRT]; FP4 from 10.8 [TRT].
    Generation("Blackwell", ((10, 0), (12, 0)), "B200, GB200, RTX 50xx",
               ((10, 8), (TRT_MAX_MAJOR, 0)), "trt",
               ("fp16", "int8", "bf16", "tf32", "fp8", "fp4")),
)


def parse_version(text: str | None, parts: int = 2) -> tuple[int, ...] | None:
    """``"10.3.0.26"`` -> (10, 3); None when it has fewer than ``parts`` numbers."""
    nums = [int(n) for n in re.findall(r"\d+", str(text or ""))[:parts]]
    return tuple(nums) if len(nums) == parts else None


def generation(cap: tuple[int, int]) -> Generation | None:
    """The generation of a compute capability; None for one older than Volta or unknown."""
    for g in GENERATIONS:
        if tuple(cap) in g.caps:
            return g
    for g in reversed(GENERATIONS):  # a newer minor of a known major: the same family
        if any(cap[0] == c[0] and cap[1] >= c[1] for c in g.caps):
            return g
    return None


def gpu_label(name: str | None, cap: tuple[int, int]) -> str:
    """``"V100 (sm_70)"`` from a device name and capability."""
    short = (name or "GPU").replace("NVIDIA ", "").replace("Tesla ", "").strip()
    return f"{short} (sm_{cap[0]}{cap[1]})"


def arch_runs(arch_list: Iterable[str], cap: tuple[int, int]) -> bool:
    """Whether a torch build with this ``torch.cuda.get_arch_list()`` has kernels for ``cap``.

    A cubin ``sm_XY`` runs on capability X.Z with Z >= Y; ``compute_XY`` (PTX) JIT-compiles
    for any capability >= X.Y.  src: [CUDA]
    """
    for arch in arch_list:
        m = re.fullmatch(r"(sm|compute)_(\d+)(\d)[a-z]?", arch.strip())
        if not m:
            continue
        major, minor = int(m.group(2)), int(m.group(3))
        if m.group(1) == "sm" and major == cap[0] and minor <= cap[1]:
            return True
        if m.group(1) == "compute" and (major, minor) <= tuple(cap):
            return True
    return False


def build_arch_list(build: TorchBuild) -> list[str]:
    """``torch.cuda.get_arch_list()`` as that build reports it."""
    return [f"sm_{s}" for s in build.sm] + [f"compute_{s}" for s in build.ptx]


def torch_builds_for(cap: tuple[int, int]) -> list[TorchBuild]:
    """The CUDA builds of :data:`TORCH_VERSION` that carry kernels for ``cap``."""
    return [b for b in TORCH_BUILDS if arch_runs(build_arch_list(b), cap)]


def trt_supports(version: tuple[int, int], cap: tuple[int, int]) -> str | None:
    """None when TensorRT ``version`` builds this project's engines on ``cap``; else why not."""
    gen = generation(cap)
    v = ".".join(map(str, version))
    if version < TRT_DEFORMCONV_FROM:
        return (f"TensorRT {v}'s ONNX parser cannot import DeformConv (native from "
                f"{'.'.join(map(str, TRT_DEFORMCONV_FROM))})")
    if version[0] >= TRT_MAX_MAJOR:
        return f"TensorRT {v} is newer than this nasfcos supports (< {TRT_MAX_MAJOR})"
    if gen is None:
        return f"TensorRT {v} does not support compute capability {cap[0]}.{cap[1]}"
    assert gen.trt is not None
    lo, hi = gen.trt
    if version >= hi:
        return f"TensorRT {v} does not support {gen.name}"
    if version < lo:
        return f"TensorRT {v} predates {gen.name} support (from {'.'.join(map(str, lo))})"
    return None


def ort_extra_for(cap: tuple[int, int]) -> str:
    """The extra that installs an onnxruntime-gpu for ``cap`` (``gpu-volta`` on Volta)."""
    gen = generation(cap)
    return gen.ort_extra if gen is not None else "gpu"


def ort_supports(version: tuple[int, ...], cap: tuple[int, int]) -> str | None:
    """None when onnxruntime-gpu ``version`` (a PyPI wheel) has kernels for ``cap``."""
    gen = generation(cap)
    v = ".".join(map(str, version[:2]))
    if gen is not None and gen.ort_below is not None and tuple(version[:2]) >= gen.ort_below:
        return (f"ONNX Runtime {v} is a CUDA {ort_cuda_major(version)} build, without "
                f"{gen.name} kernels")
    return None


def trt_extra_for(cap: tuple[int, int]) -> str:
    """The extra that installs a TensorRT for ``cap`` (``trt-volta`` on Volta)."""
    gen = generation(cap)
    return gen.extra if gen is not None else "trt"


def torch_fix(cap: tuple[int, int], max_cuda_major: int | None = None) -> str:
    """One line: which torch build to install for ``cap`` (with a CUDA major the driver runs,
    when ``max_cuda_major`` is given)."""
    builds = [b for b in torch_builds_for(cap)
              if max_cuda_major is None or int(b.cuda.split(".")[0]) <= max_cuda_major]
    if not builds:
        return f"no CUDA build of torch {TORCH_VERSION} carries kernels for this GPU"
    b = next((x for x in builds if x.default), builds[-1])
    how = ("pip install -c constraints.txt torch torchvision" if b.default else
           f"make venv TORCH_INDEX=<PyTorch's {b.tag} wheel index>")
    return f"install torch {TORCH_VERSION}'s CUDA {b.cuda} build ({how})"


def _range(lo: tuple[int, int], hi: tuple[int, int]) -> str:
    lo_s = ".".join(map(str, lo))
    top = f"{hi[0] - 1}.x" if hi[0] >= TRT_MAX_MAJOR else f"{hi[0]}.{hi[1] - 1}"
    return f"{lo_s} - {top}"


def markdown_table(rows: Sequence[Generation] = GENERATIONS) -> str:
    """The README's GPU table, generated from the matrix."""
    lines = [f"| GPU generation (compute capability) | e.g. | torch {TORCH_VERSION} build with kernels "
             "| TensorRT (extra) | onnxruntime-gpu (extra) | DeformConv | fast precisions |",
             "|---|---|---|---|---|---|---|"]
    for g in rows:
        caps = ", ".join(f"{a}.{b}" for a, b in g.caps)
        builds = sorted({b.cuda for cap in g.caps for b in torch_builds_for(cap)},
                        key=lambda s: tuple(map(int, s.split("."))))
        default = next(b for b in TORCH_BUILDS if b.default)
        torch_cell = ", ".join(f"CUDA {c}" + (" (default)" if c == default.cuda else "")
                               for c in builds) or "none"
        assert g.trt is not None
        trt_cell = f"{_range(*g.trt)} (`[{g.extra}]`)"
        lo = ".".join(map(str, ORT_GPU_MIN))
        ort_cell = (f"{lo} - {g.ort_below[0]}.{g.ort_below[1] - 1} (CUDA 12, `[{g.ort_extra}]`)"
                    if g.ort_below else f">= {lo} (CUDA 13 from 1.27, `[{g.ort_extra}]`)")
        lines.append(f"| {g.name} ({caps}) | {g.examples} | {torch_cell} | {trt_cell} | "
                     f"{ort_cell} | TensorRT parser, native | {', '.join(g.fast)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """``python -m nasfcos.gpu_matrix``: print the README's GPU table."""
    print(markdown_table(), end="")


if __name__ == "__main__":  # pragma: no cover
    main()

__all__ = ["GENERATIONS", "ORT_GPU_CUDA13_FROM", "ORT_GPU_MIN", "TORCHVISION_VERSION",
           "TORCH_BUILDS", "TORCH_VERSION", "TRT_DEFORMCONV_FROM", "TRT_MAX_MAJOR",
           "TRT_VOLTA_REMOVED", "Generation", "TorchBuild", "arch_runs", "build_arch_list",
           "generation", "gpu_label", "markdown_table", "ort_cuda_major", "ort_extra_for",
           "ort_supports", "parse_version", "torch_builds_for",
           "torch_fix", "trt_extra_for", "trt_supports"]
