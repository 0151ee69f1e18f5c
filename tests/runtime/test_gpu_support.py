"""The GPU support matrix, the extras held against it, and ``nasfcos doctor``'s verdicts on
stand-in machines (no GPU here: the facts are built by hand for each generation)."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from nasfcos import gpu_matrix as M
from nasfcos.errors import BackendUnavailable
from nasfcos.runtime import doctor as D

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CU126 = M.build_arch_list(M.TORCH_BUILDS[0])
CU132 = M.build_arch_list(next(b for b in M.TORCH_BUILDS if b.default))
NAMES = {(7, 0): "Tesla V100-SXM2-16GB", (7, 5): "Tesla T4", (8, 0): "NVIDIA A100-SXM4-40GB",
         (9, 0): "NVIDIA H100 80GB HBM3", (12, 0): "NVIDIA GeForce RTX 5090"}


def _extra(name: str) -> Requirement:
    (req,) = PYPROJECT["project"]["optional-dependencies"][name]
    return Requirement(req)


def _versions() -> list[Version]:
    """Every TensorRT minor version 9.0 ... 12.15."""
    return [Version(f"{a}.{b}") for a in (9, 10, 11, 12) for b in range(0, 16)]


# -- the matrix -------------------------------------------------------------------------------

def test_readme_gpu_table_is_the_generated_one() -> None:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- gpu-table:start -->\n(.*?)<!-- gpu-table:end -->", text, re.S)
    assert m, "README has no generated GPU table"
    assert m.group(1) == M.markdown_table(), "regenerate: python -m nasfcos.gpu_matrix"


def test_every_entry_cites_a_source() -> None:
    src = (ROOT / "nasfcos" / "gpu_matrix.py").read_text()
    for tag in ("[PT]", "[CUDA]", "[TRT]", "[TRTHW]", "[ORT]"):
        assert src.count(tag) >= 2, f"{tag} is defined but cited nowhere"  # defined + used


@pytest.mark.parametrize(("arch", "cap", "runs"), [
    (CU132, (7, 0), False), (CU126, (7, 0), True), (CU132, (8, 9), True),  # sm_86 on Ada
    (CU126, (12, 0), False), (CU132, (12, 0), True), (CU132, (12, 1), True),
    (["compute_90"], (10, 0), True), (["sm_90"], (10, 0), False), ([], (9, 0), False)])
def test_arch_runs_follows_cuda_binary_compatibility(arch, cap, runs) -> None:
    assert M.arch_runs(arch, cap) is runs


def test_torch_builds_per_generation() -> None:
    assert [b.tag for b in M.torch_builds_for((7, 0))] == ["cu126"]
    assert [b.tag for b in M.torch_builds_for((12, 0))] == ["cu130", "cu132"]
    assert len(M.torch_builds_for((9, 0))) == 3
    assert sum(b.default for b in M.TORCH_BUILDS) == 1


# -- extras held against the matrix -----------------------------------------------------------

def test_trt_extras_install_what_the_matrix_allows() -> None:
    for gen in M.GENERATIONS:
        req = _extra(gen.extra)
        assert req.name == "tensorrt"
        lo, hi = gen.trt
        for v in _versions():
            allowed = req.specifier.contains(v)
            # every version the extra allows runs on this generation ...
            if allowed:
                assert M.trt_supports((v.major, v.minor), gen.caps[0]) is None or \
                    (v.major, v.minor) < lo, f"[{gen.extra}] allows {v} on {gen.name}"
        # ... and the newest version the matrix allows is installable
        newest = Version(f"{hi[0]}.{hi[1] - 1}") if hi[1] else Version(f"{hi[0] - 1}.15")
        assert req.specifier.contains(newest)
    volta = _extra("trt-volta").specifier
    assert [str(v) for v in _versions() if volta.contains(v)] == [
        "10.1", "10.2", "10.3", "10.4"]
    trt = _extra("trt").specifier
    assert trt.contains(Version("10.1")) and not trt.contains(Version("10.0"))
    assert trt.contains(Version("11.9")) and not trt.contains(Version("12.0"))


def test_gpu_extras_and_torch_pins() -> None:
    for gen in M.GENERATIONS:
        gpu = _extra(gen.ort_extra)
        assert gpu.name == "onnxruntime-gpu" and {"cuda", "cudnn"} <= gpu.extras
        assert gpu.specifier.contains(Version(".".join(map(str, M.ORT_GPU_MIN))))
        assert not gpu.specifier.contains(Version("1.20"))
        for minor in range(21, 40):  # every version the extra allows has kernels there
            v = Version(f"1.{minor}")
            if gpu.specifier.contains(v):
                assert M.ort_supports((1, minor), gen.caps[0]) is None, (gen.name, v)
    volta = _extra("gpu-volta").specifier
    assert volta.contains(Version("1.26.0")) and not volta.contains(Version("1.27.0"))
    assert _extra("gpu").specifier.contains(Version("1.31.1"))
    deps = {Requirement(d).name: Requirement(d) for d in PYPROJECT["project"]["dependencies"]}
    pins = {Requirement(line).name: Requirement(line) for line in
            (ROOT / "constraints.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")}
    assert str(pins["torch"].specifier) == f"=={M.TORCH_VERSION}"
    assert str(pins["torchvision"].specifier) == f"=={M.TORCHVISION_VERSION}"
    for name, exact in (("torch", M.TORCH_VERSION), ("torchvision", M.TORCHVISION_VERSION)):
        spec = deps[name].specifier
        assert spec.contains(Version(exact)) and not str(spec).startswith("==")
        # the +cpu / +cu126 builds of the pinned release satisfy both
        assert spec.contains(Version(exact + "+cu126")) and pins[name].specifier.contains(
            Version(exact + "+cpu"))


def test_makefile_installs_with_the_constraints() -> None:
    text = (ROOT / "Makefile").read_text()
    stamp = re.search(r"^\$\(STAMP\):.*?(?=^\S|\Z)", text, re.S | re.M).group(0)
    assert "$(CONSTRAINTS)" in stamp.splitlines()[0]  # a new pin reinstalls
    assert "$(PIP) -e '.[$(EXTRAS)]'" in stamp and "-c $(CONSTRAINTS)" in text
    assert re.search(r"^CONSTRAINTS := constraints.txt$", text, re.M)
    gpu = re.search(r"^gpu-check:.*?(?=^\S|\Z)", text, re.S | re.M).group(0)
    assert "nasfcos doctor --extras" in gpu and "nasfcos demo --gpu" in gpu
    assert "-m nasfcos.runtime.gpu_check" not in gpu  # no runner of its own


# -- doctor on stand-in machines --------------------------------------------------------------

def _facts(cap, arch, trt, *, torch_cuda="13.2", driver="13.2", ort_cuda=True) -> D.Facts:
    return D.Facts(cpu="stand-in", cpu_flags=["avx2", "avx512f", "avx512_vnni"],
                   gpus=[D.Gpu(0, NAMES[cap], cap, 16.0)], driver_cuda=driver,
                   torch="2.14.1+cu" + torch_cuda.replace(".", "") if torch_cuda else "2.14.1+cpu",
                   torch_cuda=torch_cuda, arch_list=list(arch) if torch_cuda else [],
                   tensorrt=trt, onnxruntime="1.32.0",
                   ort_providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
                   if ort_cuda else ["CPUExecutionProvider"])


def _by(findings):
    return {f.backend: f for f in findings}


CAPS = [(7, 0), (7, 5), (8, 0), (9, 0), (12, 0)]
# TensorRT version -> capabilities it must refuse (10.3: Blackwell predates 10.8;
# 10.8 and 11.1: Volta, removed in 10.5)
TRT_REFUSES = {"10.3.0": {(12, 0)}, "10.8.0": {(7, 0)}, "11.1.0": {(7, 0)}}


@pytest.mark.parametrize("cap", CAPS)
@pytest.mark.parametrize("arch_name", ["cu126", "cu132"])
@pytest.mark.parametrize("trt", sorted(TRT_REFUSES))
def test_doctor_verdict_for_every_combination(cap, arch_name, trt) -> None:
    arch, cuda = (CU126, "12.6") if arch_name == "cu126" else (CU132, "13.2")
    found = _by(D.diagnose(_facts(cap, arch, trt, torch_cuda=cuda)))
    torch_ok = (arch_name == "cu126" and cap != (12, 0)) or (arch_name == "cu132" and cap != (7, 0))
    assert found["torch-cuda"].ok is torch_ok
    trt_ok = torch_ok and cap not in TRT_REFUSES[trt]
    assert found["tensorrt"].ok is trt_ok
    ort_ok = cap != (7, 0)  # the stand-in's onnxruntime-gpu 1.32 is a CUDA 13 build
    assert found["onnxruntime-cuda"].ok is ort_ok and found["torch-cpu"].ok
    assert D.verdict(list(found.values())) is (torch_ok and trt_ok and ort_ok)
    sm = f"sm_{cap[0]}{cap[1]}"
    for f in found.values():
        assert "\n" not in f.line()
        if not f.ok and f.device != "cpu":  # a CPU note (the OpenVINO extra) names no GPU
            assert f.fix and sm in f.message
    if not torch_ok:
        assert f"has no {sm} kernels" in found["torch-cuda"].message
        want = "CUDA 12.6 build" if cap == (7, 0) else "CUDA 13.2 build"
        assert want in found["torch-cuda"].fix
    if torch_ok and not trt_ok:
        msg, fix = found["tensorrt"].message, found["tensorrt"].fix
        if cap == (7, 0):
            assert f"TensorRT {trt[:-2]} does not support Volta" in msg
            assert fix == "pip install -e '.[trt-volta]'"
        else:
            assert "predates Blackwell support (from 10.8)" in msg
            assert fix == "pip install -e '.[trt]'"


def test_doctor_messages_for_the_v100_issue_examples() -> None:
    f = _by(D.diagnose(_facts((7, 0), CU132, "11.1.0")))
    assert f["torch-cuda"].line() == (
        "FAIL  V100-SXM2-16GB (sm_70): this torch build (2.14.1+cu132) has no sm_70 kernels: "
        "install torch 2.14.1's CUDA 12.6 build (make venv TORCH_INDEX=<PyTorch's cu126 wheel "
        "index>)")
    f = _by(D.diagnose(_facts((7, 0), CU126, "11.1.0", torch_cuda="12.6")))
    assert f["tensorrt"].line() == ("FAIL  V100-SXM2-16GB (sm_70): TensorRT 11.1 does not "
                                    "support Volta: pip install -e '.[trt-volta]'")


def test_doctor_cpu_build_old_driver_missing_packages() -> None:
    f = _by(D.diagnose(_facts((8, 0), [], None, torch_cuda=None, ort_cuda=False)))
    assert not f["torch-cuda"].ok and "CPU-only build" in f["torch-cuda"].message
    assert not f["tensorrt"].found and not f["onnxruntime-cuda"].found  # notes, not failures
    assert f["onnxruntime-cuda"].fix == D.ort_gpu_fix((8, 0)) == (
        "make ort-gpu (installs onnxruntime-gpu in place of onnxruntime)")
    f = _by(D.diagnose(_facts((9, 0), CU132, "10.8.0", driver="12.4")))
    assert not f["torch-cuda"].ok and "driver runs CUDA 12.4" in f["torch-cuda"].message
    assert "CUDA 12.6 build" in f["torch-cuda"].fix and not f["onnxruntime-cuda"].ok
    f = _by(D.diagnose(_facts((9, 0), CU132, "10.0.1")))
    assert "cannot import DeformConv" in f["tensorrt"].message
    broken = _facts((9, 0), CU132, "10.8.0")
    broken.tensorrt_error = "libnvinfer.so.10: cannot open shared object file"
    assert "cannot be imported" in _by(D.diagnose(broken))["tensorrt"].message


def test_onnxruntime_cuda_13_build_on_a_v100() -> None:
    f = _by(D.diagnose(_facts((7, 0), CU126, "10.3.0", torch_cuda="12.6")))
    assert f["onnxruntime-cuda"].line() == (
        "FAIL  V100-SXM2-16GB (sm_70): ONNX Runtime 1.32 is a CUDA 13 build, without Volta "
        "kernels: make ort-gpu ORT_EXTRA=gpu-volta (installs onnxruntime-gpu in place of "
        "onnxruntime)")
    v100 = _facts((7, 0), CU126, "10.3.0", torch_cuda="12.6", driver="12.4")
    v100.onnxruntime = "1.26.0"
    assert D.verdict(D.diagnose(v100))  # torch cu126, TensorRT 10.3, ORT 1.26: all run
    assert D.extras(v100) == ("trt-volta", "gpu-volta")
    assert D.extras(_facts((9, 0), CU132, None)) == ("trt", "gpu")
    old_driver = _facts((9, 0), CU132, "10.8.0", driver="12.8")
    assert "needs CUDA 13" in _by(D.diagnose(old_driver))["onnxruntime-cuda"].message


def test_tensorrt_without_a_gpu_cannot_run() -> None:
    f = D.diagnose(D.Facts(torch="2.14.1+cpu", tensorrt="10.8.0", onnxruntime="1.32.0"))
    assert not D.verdict(f)
    assert _by(f)["tensorrt"].line() == (
        "FAIL  TensorRT 10.8.0 is installed but there is no NVIDIA GPU: run TensorRT on a "
        "machine with one (pip uninstall tensorrt here if it is not needed)")
    assert D.verdict(D.diagnose(D.Facts(torch="2.14.1+cpu", onnxruntime="1.32.0")))


def test_preflight_stops_in_one_line_before_any_work() -> None:
    with pytest.raises(BackendUnavailable, match=r"^V100-SXM2-16GB \(sm_70\): TensorRT 10.8 "
                       r"does not support Volta: pip install -e '.\[trt-volta\]'$"):
        D.preflight(["tensorrt"], "cuda", _facts((7, 0), CU126, "10.8.0", torch_cuda="12.6"))
    with pytest.raises(BackendUnavailable, match=r"^tensorrt: the TensorRT Python package is not "
                       r"installed \(pip install -e '.\[trt\]', '.\[trt-volta\]' on a V100"):
        D.preflight(["torch-cuda", "tensorrt"], "cuda:0", _facts((9, 0), CU132, None))
    with pytest.raises(BackendUnavailable, match=r"cuda:1: no such NVIDIA GPU \(found: cuda:0\)"):
        D.preflight(["torch-cuda"], "cuda:1", _facts((9, 0), CU132, None))
    ok = _facts((9, 0), CU132, "11.1.0")
    assert D.preflight(["torch-cuda", "onnxruntime-cuda", "tensorrt"], "cuda", ok) is ok
    assert D.preflight(["onnxruntime"], "cpu", D.Facts()) == D.Facts()  # CPU: nothing to check
    with pytest.raises(BackendUnavailable, match="^no CUDA GPU found: torch-cuda need one"):
        D.preflight(["torch-cuda"], "cuda", D.Facts(gpus=[]))


def test_doctor_on_this_machine(capsys) -> None:
    """No GPU here: the CPU backends run, exit 0, the CPU's extensions are named."""
    from nasfcos.cli.main import main

    assert main(["doctor", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["ok"] is True and rep["facts"]["gpus"] == []
    flags = set(rep["facts"]["cpu_flags"])
    ext = rep["facts"]["cpu_extensions"]
    assert ext["AVX-512"] is ("avx512f" in flags) and ext["VNNI"] is ("avx512_vnni" in flags)
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "verdict: every backend found can run" in out and "no NVIDIA GPU found" in out
    # issue 24: the OpenVINO extra and the engine the CPU default picks here, with its reason
    ov = rep["facts"]["openvino"]
    assert f"OpenVINO      {ov or 'not installed'} (NNCF " in out
    assert set(rep["cpu_default"]) == {"fp32 .onnx", "model.py"}
    for label, choice in rep["cpu_default"].items():
        assert f"CPU default   {label}: {choice['engine']} (" in out and choice["reason"]
    assert rep["cpu_default"]["model.py"]["engine"].startswith("torch")
    assert _by(D.diagnose(D.Facts(openvino="2026.4.1")))["openvino-cpu"].line() == (
        "ok    CPU: OpenVINO 2026.4.1 runs (no int8: nncf is not installed)")
    assert not _by(D.diagnose(D.Facts()))["openvino-cpu"].found  # a note, not a failure
    if "avx512_vnni" in flags and "avx512_bf16" in flags:
        assert "AVX-512, VNNI, BF16" in out
    assert main(["doctor", "--extras"]) == 0 and capsys.readouterr().out == "trt gpu\n"


@pytest.mark.parametrize("argv", [
    ["export", "{py}", "--trt", "{d}/m.engine"],
    ["bench", "{engine}", "-o", "{d}/report"],
    ["check", "{engine}"],
    ["eval", "{py}", "--backend", "tensorrt", "--data", "{d}"],
])
def test_gpu_verbs_stop_in_one_line_before_any_work(argv, tmp_path, capsys, monkeypatch) -> None:
    """No TensorRT here: every GPU verb stops before exporting, benchmarking or evaluating;
    on a machine with no GPU at all, that is the problem named first (review finding)."""
    import sys

    from nasfcos.cli.main import main

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    gpu = _facts((9, 0), CU132, None).gpus
    monkeypatch.setattr(D, "probe", lambda: D.Facts(gpus=list(gpu)))
    py, engine = tmp_path / "model.py", tmp_path / "model.engine"
    py.write_text("raise SystemExit('imported: work started')\n")
    engine.write_bytes(b"not an engine")
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main([a.format(py=py, engine=engine, d=tmp_path) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "tensorrt: the TensorRT Python package is not installed" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    gpu.clear()
    assert main([a.format(py=py, engine=engine, d=tmp_path) for a in argv]) == 2
    assert capsys.readouterr().err.strip().endswith("error: no CUDA GPU found: torch-cuda, "
                                                    "tensorrt need one (nasfcos doctor says more)")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def _make_n(*args: str) -> list[str]:
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    out = subprocess.run(["make", "-n", "-W", "pyproject.toml", "venv", *args], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [ln for ln in out.splitlines() if "pip install" in ln]


def test_cpu_only_install_path() -> None:
    """``make venv TORCH_INDEX=...`` installs torch/torchvision from that index first (same
    pins), then the project as usual; without it, one install with the constraints."""
    plain = _make_n()
    assert len(plain) == 1 and "-c constraints.txt -e '.[dev,dist,openvino]'" in plain[0]
    cpu = _make_n("TORCH_INDEX=INDEX")
    assert len(cpu) == 2 and cpu[1] == plain[0]
    assert cpu[0].endswith("-c constraints.txt --index-url 'INDEX' torch torchvision")
    readme = (ROOT / "README.md").read_text()
    assert "make venv TORCH_INDEX=<PyTorch's CPU wheel index URL>" in readme
    assert "make test` runs everything, slow end-to-end tests included: about 12 minutes" in readme
    for name in ("README.md", "Makefile", "pyproject.toml", "constraints.txt"):
        text = (ROOT / name).read_text()
        assert "://" not in text, f"{name} names a host"  # no registry host (URL) anywhere
