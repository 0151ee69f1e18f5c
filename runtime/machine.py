"""What machine a measurement was taken on: CPU, memory, GPU, threads, library versions."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Any

from nasfcos.limits import usable_cpus


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    m = re.search(r"^flags\s*:\s*(.*)$", text, re.MULTILINE)
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile",
              "amx_bf16", "amx_int8")
    have = set(m.group(1).split()) if m else set()
    return [f for f in wanted if f in have]


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def machine_info() -> dict[str, Any]:
    """A JSON-friendly description of this machine and the libraries in use."""
    import torch

    from nasfcos.runtime.export import tool_versions

    info: dict[str, Any] = {
        "os": f"{platform.system()} {platform.release()}",
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "memory_gb": _memory_gb(),
        "torch_threads": torch.get_num_threads(),
        "torch_mkldnn": bool(torch.backends.mkldnn.is_available()),
        "gpu": None,
        "libraries": tool_versions(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": props.name, "memory_gb": round(props.total_memory / 1024**3, 1),
                       "capability": f"{props.major}.{props.minor}",
                       "cuda": torch.version.cuda}
    return info


def describe(info: dict[str, Any]) -> str:
    """One line: CPU (usable cores), memory, GPU."""
    gpu = info.get("gpu") or {}
    return (f"{info['cpu']} ({info['usable_cpus']} usable cores, {info.get('memory_gb')} GB)"
            + (f", GPU {gpu.get('name')}" if gpu else ", no GPU"))
