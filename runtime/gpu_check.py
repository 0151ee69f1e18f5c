"""``make gpu-check``'s report: the paper's table beside the measured one.

The measuring is :func:`nasfcos.runtime.pipeline.run_pipeline` (GPU plan, ``nasfcos demo
--gpu``); this module only shapes its state into ``gpu_check.json`` and ``gpu_check.md``:
NAS-FCOS@128 with ResNet-50 at 600/800/1000 px, PyTorch eager fp32/fp16, ONNX Runtime CUDA,
TensorRT fp32/fp16/int8 (median ms, p90), the paper's V100 figures beside them, each engine's
parity against PyTorch, and the doctor's report.  Written after every cell, so a cut run
leaves the numbers measured so far.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import asdict
from pathlib import Path
from typing import Any

#: The paper's NAS-FCOS@128-R50 latency on a V100 (Wang et al., CVPR 2020), ms per size.
PAPER_V100_MS = {600: 37.0, 800: 39.0, 1000: 50.0}
REPORT_FORMAT = "nasfcos-gpu-check/2"


def new_report(cfg: Any, doctor_report: dict[str, Any]) -> dict[str, Any]:
    """An empty report for the pipeline config ``cfg`` (a PipelineConfig)."""
    conf = asdict(cfg)
    conf["out"] = str(conf["out"])
    conf["sizes"] = [list(s) for s in cfg.sizes]
    return {"format": REPORT_FORMAT, "config": conf, "doctor": doctor_report,
            "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "build": {}, "parity": {}, "cells": [], "ok": False}


def describe_machine(doctor_report: dict[str, Any]) -> str:
    f = doctor_report["facts"]
    gpus = ", ".join(f"{g['name']} (sm_{g['capability'][0]}{g['capability'][1]})"
                     for g in f["gpus"]) or "no GPU"
    return (f"{gpus}; driver CUDA {f['driver_cuda'] or '-'}; torch {f['torch']}; TensorRT "
            f"{f['tensorrt'] or '-'}; ONNX Runtime {f['onnxruntime'] or '-'} "
            f"({', '.join(p.replace('ExecutionProvider', '') for p in f['ort_providers'])})")


def parity_text(p: dict[str, Any]) -> str:
    if p.get("status") != "ok" and "max_abs" not in p:
        return f"{p.get('status')} ({p.get('reason', '')})"
    text = (f"{p['status']} ({p.get('precision')} tolerances; worst {p.get('output')}: max abs "
            f"{p.get('max_abs', 0):.3g}, rel {p.get('max_rel', 0):.3g})")
    return text + (f"; disagree: {', '.join(p['failures'])}" if p.get("failures") else "")


def cell_text(c: dict[str, Any]) -> str:
    """One line per measured cell, printed as it comes."""
    size = f"{c['size'][0]}x{c['size'][1]}"
    head = f"{c['row']} {c['precision']} @{size}: "
    if c["status"] != "ok":
        return head + f"{c['status']} ({c.get('reason', '')})"
    paper = PAPER_V100_MS.get(c["size"][0]) if c["size"][0] == c["size"][1] else None
    return head + (f"{c['median_ms']:.2f} ms median (p90 {c['p90_ms']:.2f}, {c['runs']} runs)"
                   + (f"; paper V100: {paper:.0f} ms" if paper else ""))


def all_ok(state: dict[str, Any]) -> bool:
    cells_ok = bool(state["cells"]) and all(c["status"] == "ok" for c in state["cells"])
    return cells_ok and all(p.get("status") == "ok" for p in state["parity"].values())


def markdown(state: dict[str, Any]) -> str:
    """The report as Markdown: machine, the latency table beside the paper's, parity."""
    c = state["config"]
    sizes = [tuple(s) for s in c["sizes"]]
    lines = [f"# GPU check: {c['genotype']} @{c['fpn_channels']} with {c['backbone']}", "",
             f"Created {state['created_utc']}. Machine: {describe_machine(state['doctor'])}.",
             "", "Latency, ms: median (p90), batch 1, CUDA events, "
             f"{c['warmup']} warm-up + {c['runs']} timed runs per cell:", "",
             "| engine | precision | " + " | ".join(f"{h}x{w}" for h, w in sizes) + " |",
             "|---|---|" + "---:|" * len(sizes)]
    rows: dict[tuple[str, str], dict[tuple[int, int], str]] = {}
    for cell in state["cells"]:
        val = (f"{cell['median_ms']:.2f} ({cell['p90_ms']:.2f})" if cell["status"] == "ok"
               else cell["status"])
        rows.setdefault((cell["row"], cell["precision"]), {})[tuple(cell["size"])] = val
    for (row, prec), vals in rows.items():
        lines.append(f"| {row} | {prec} | " + " | ".join(vals.get(s, "") for s in sizes) + " |")
    lines.append("| paper, V100 (Wang et al. 2020) | fp32 | " + " | ".join(
        f"{PAPER_V100_MS[h]:.0f}" if h == w and h in PAPER_V100_MS else "" for h, w in sizes)
        + " |")
    reasons = [f"- {x['row']} {x['precision']} {x['size'][0]}x{x['size'][1]}: {x['reason']}"
               for x in state["cells"] if x["status"] != "ok"]
    if reasons:
        lines += ["", "Cells not measured:", "", *reasons]
    if state["parity"]:
        lines += ["", "Parity against PyTorch fp32 at 800x800 (that precision's tolerances):",
                  "", "| artifact | result |", "|---|---|"]
        lines += [f"| {k} | {parity_text(v)} |" for k, v in state["parity"].items()]
    bad = [x for x in state["doctor"]["findings"] if x["found"] and not x["ok"]]
    lines += ["", f"Doctor: {'every backend found can run' if not bad else ''}"
              + "; ".join(f"{x['message']}: {x['fix']}" for x in bad)]
    return "\n".join(lines) + "\n"


def write(state: dict[str, Any], out: Path) -> dict[str, Path]:
    """``out/gpu_check.json`` and ``out/gpu_check.md`` (atomic: a cut run keeps the last)."""
    from nasfcos.io import atomic_write_json, atomic_write_text

    paths = {"json": Path(out) / "gpu_check.json", "md": Path(out) / "gpu_check.md"}
    atomic_write_json(paths["json"], state)
    atomic_write_text(paths["md"], markdown(state))
    return paths


__all__ = ["PAPER_V100_MS", "all_ok", "cell_text", "describe_machine", "markdown",
           "new_report", "parity_text", "write"]
