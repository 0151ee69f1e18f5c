"""The CPU engine that picks itself: fastest backend x precision within the accuracy budget.

The choice is made from measured data, never a guess: ``cpu_engines.json`` (shipped next to
this module) holds, per engine (``BACKEND[:PRECISION]``), its time relative to ONNX Runtime
fp32 from ``benchmarks/cpu_engines.py`` (same-run ratio at 800 px) and its accuracy from the
precision table on the trained synthetic yardstick (``nasfcos bench --precisions``): dAP
against PyTorch fp32 and detection agreement with it.  ``NASFCOS_CPU_ENGINES=FILE`` (or
``choose_cpu_engine(table=...)``) reads a table measured on your own machine and model
instead (:func:`table_from_reports` builds one from those two reports).

An engine is eligible when (1) it passed the budget: dAP >= -0.3 AP points and agreement at
IoU 0.5 >= 0.95; (2) it runs here: its extra is installed, bf16 only where the CPU has native
bf16 (AVX512_BF16 / AMX); (3) it runs the artifact as it is, without extra inputs: a
``model.py`` runs on ``torch`` engines (no export on the fly), an fp32 ``.onnx`` on
``onnxruntime`` and ``openvino`` engines, except int8 ones that need calibration images;
a reduced-precision ``.onnx`` runs on ONNX Runtime as built.  Among the eligible engines the
fastest (lowest ratio) wins; ties and an empty table fall back to the suffix default.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasfcos.errors import NasfcosError

TABLE_FILE = Path(__file__).with_name("cpu_engines.json")
#: Accuracy budget of the automatic choice (AP points; share of reference detections).
MAX_AP_DROP = 0.3
MIN_AGREEMENT50 = 0.95


@dataclass(frozen=True)
class EngineChoice:
    """The engine chosen (``BACKEND[:PRECISION]``) and why, in one line."""

    engine: str
    reason: str


def cpu_has_bf16() -> bool:
    """Whether this CPU reports native bf16 (``avx512_bf16`` or ``amx_bf16`` in its flags)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines()
                  if ln.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def load_table(path: str | Path | None = None) -> dict[str, Any]:
    """The engine table (``{"engines": {engine: {...}}, ...}``); one-line error if malformed."""
    path = Path(path or os.environ.get("NASFCOS_CPU_ENGINES") or TABLE_FILE)
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise NasfcosError(f"{path}: cannot read the CPU engine table ({exc})") from exc
    engines = table.get("engines") if isinstance(table, dict) else None
    if not isinstance(engines, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("x_ort_fp32"), int | float)
            for v in engines.values()):
        raise NasfcosError(f"{path}: not a CPU engine table (engines with x_ort_fp32)")
    return table


def _runs_here(engine: str) -> str | None:
    """None when ``engine`` can run on this machine, else why not."""
    backend, _, prec = engine.partition(":")
    if backend == "openvino":
        from nasfcos.runtime.openvino_rt import openvino_status

        why = openvino_status(nncf=prec == "int8")
        if why:
            return why
    if prec == "bf16" and not cpu_has_bf16():
        return "no native bf16 on this CPU"
    return None


def _fits(engine: str, path: Path, file_precision: str) -> bool:
    """Whether ``engine`` runs ``path`` as it is (no export on the fly, no calibration)."""
    backend, _, prec = engine.partition(":")
    if path.suffix == ".py":
        return backend == "torch"
    if path.suffix != ".onnx" or prec == "int8":
        return False
    if file_precision != "fp32":
        return engine == "onnxruntime"
    return backend in ("onnxruntime", "openvino")


def choose_cpu_engine(path: str | Path, *, table: str | Path | None = None) -> EngineChoice:
    """The fastest eligible engine for ``path`` on this CPU (see the module docstring)."""
    from nasfcos.runtime.artifact import FORM_BACKENDS, form_of
    from nasfcos.runtime.manifest import Manifest

    path = Path(path)
    fallback = FORM_BACKENDS.get(form_of(path), "onnxruntime")
    file_precision = "fp32"
    if path.suffix == ".onnx":
        try:
            man = Manifest.load(path)
            file_precision = man.precision
        except NasfcosError:
            file_precision = "unknown"
    data = load_table(table)
    best: tuple[float, str] | None = None
    for engine, row in data["engines"].items():
        if not _fits(engine, path, file_precision):
            continue
        dap, agree = row.get("dAP_points"), row.get("agree50")
        measured = isinstance(dap, int | float) and isinstance(agree, int | float)
        if measured and not (dap >= -MAX_AP_DROP and agree >= MIN_AGREEMENT50):
            continue  # measured outside the accuracy budget
        if not measured and engine.partition(":")[2] in ("bf16", "int8"):
            continue  # a reduced precision needs measured accuracy
        if _runs_here(engine) is not None:
            continue
        if best is None or row["x_ort_fp32"] < best[0]:
            best = (float(row["x_ort_fp32"]), engine)
    if best is None:
        return EngineChoice(fallback, f"no measured engine fits {path.name} here; "
                                      f"{fallback} by suffix")
    engine = best[1]
    row = data["engines"][engine]
    acc = (f", dAP {row['dAP_points']:+.2f} AP points, agreement@0.5 {row['agree50']:.2f}"
           if isinstance(row.get("dAP_points"), int | float) else "")
    return EngineChoice(engine, f"fastest measured engine for a {path.suffix} here: "
                                f"{row['x_ort_fp32']:.2f}x ONNX Runtime fp32{acc} "
                                f"({data.get('source', 'cpu_engines.json')})")


def table_from_reports(speed: dict[str, Any], precision: dict[str, Any]) -> dict[str, Any]:
    """An engine table from a ``benchmarks/cpu_engines.py`` result (speed) and a
    ``nasfcos bench --precisions`` report on the yardstick (accuracy)."""
    acc: dict[str, dict[str, Any]] = {}
    for r in precision.get("rows", []):
        if r.get("status") != "ok":
            continue
        eng = r["backend"] + ("" if r["precision"] == "fp32" else f":{r['precision']}")
        if r.get("target") == "tensorrt":
            continue  # the cpu target is what ONNX Runtime runs fast
        acc[eng] = {"dAP_points": round(100 * r.get("dAP", 0.0), 2),
                    "agree50": (r.get("agreement50") or r["agreement"])["match_rate"],
                    "agree95": r["agreement"]["match_rate"]}
    engines = {}
    for eng, s in speed.get("engines", {}).items():
        engines[eng] = {"x_ort_fp32": s["x_ort_fp32"], "x_ort_fp32_95ci": s["x_ort_fp32_95ci"],
                        **acc.get(eng, {})}
    return {"format": "nasfcos-cpu-engines/1", "engines": engines}


__all__ = ["MAX_AP_DROP", "MIN_AGREEMENT50", "TABLE_FILE", "EngineChoice", "choose_cpu_engine",
           "cpu_has_bf16", "load_table", "table_from_reports"]
