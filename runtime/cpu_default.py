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
fastest (lowest ratio) wins, except that a reduced precision whose 95% interval reaches the
best fp32 engine's ratio is not measurably faster and loses to it; an empty table falls back
to the suffix default.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasfcos.errors import NasfcosError, first_line
from nasfcos.io import regular_file

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


#: Largest engine table read (bytes); a real one is a few KiB.
MAX_TABLE_BYTES = 1 << 20


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _row_problem(row: Any) -> str | None:
    """Why an engine row is malformed, or None."""
    if not isinstance(row, dict):
        return "is not an object"
    if not (_num(row.get("x_ort_fp32")) and row["x_ort_fp32"] > 0):
        return "x_ort_fp32 must be a positive finite number"
    if ("dAP_points" in row) != ("agree50" in row):
        return "dAP_points and agree50 go together"
    if "dAP_points" in row and not (_num(row["dAP_points"]) and _num(row["agree50"])):
        return "dAP_points and agree50 must be finite numbers"
    ci = row.get("x_ort_fp32_95ci")
    if ci is not None and not (isinstance(ci, list) and len(ci) == 2 and all(map(_num, ci))):
        return "x_ort_fp32_95ci must be [low, high] finite numbers"
    return None


def load_table(path: str | Path | None = None) -> dict[str, Any]:
    """The engine table (``{"engines": {engine: {...}}, ...}``); one-line error naming the
    file if it is not a regular file, too large, or malformed (rows checked)."""
    path = Path(path or os.environ.get("NASFCOS_CPU_ENGINES") or TABLE_FILE)
    what = "CPU engine table"
    regular_file(path, what)  # a FIFO or device is refused without opening it
    size = path.stat().st_size
    if size > MAX_TABLE_BYTES:
        raise NasfcosError(f"{path}: {size} bytes is too large for a {what} "
                           f"(at most {MAX_TABLE_BYTES})")
    try:
        table = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else first_line(exc, 120)
        raise NasfcosError(f"{path}: cannot read the {what} ({why})") from None
    engines = table.get("engines") if isinstance(table, dict) else None
    if not isinstance(engines, dict):
        raise NasfcosError(f"{path}: not a {what} (engines with x_ort_fp32)")
    for engine, row in engines.items():
        why = _row_problem(row)
        if why:
            raise NasfcosError(f"{path}: not a {what}: engine {str(engine)[:40]!r}: {why}")
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


def _fits(engine: str, form: str, file_precision: str) -> bool:
    """Whether ``engine`` runs a file of ``form`` as it is (no export on the fly, no
    calibration)."""
    backend, _, prec = engine.partition(":")
    if form == "model.py":
        return backend == "torch"
    if form != "onnx" or prec == "int8":
        return False
    if file_precision != "fp32":
        return engine == "onnxruntime"
    return backend in ("onnxruntime", "openvino")


def choose_cpu_engine(path: str | Path, *, table: str | Path | None = None,
                      precision: str | None = None) -> EngineChoice:
    """The fastest eligible engine for ``path`` on this CPU (see the module docstring);
    ``precision``: the file's, instead of reading its manifest (``nasfcos doctor``)."""
    from nasfcos.runtime.artifact import FORM_BACKENDS, form_of
    from nasfcos.runtime.manifest import Manifest

    path = Path(path)
    form = form_of(path)
    fallback = FORM_BACKENDS[form]
    file_precision = precision or "fp32"
    if form == "onnx" and precision is None:
        try:
            man = Manifest.load(path)
            file_precision = man.precision
        except NasfcosError:
            file_precision = "unknown"
    data = load_table(table)
    best: tuple[float, str] | None = None
    best_fp32: tuple[float, str] | None = None
    for engine, row in data["engines"].items():
        if not _fits(engine, form, file_precision):
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
        if engine.partition(":")[2] in ("", "fp32") and (
                best_fp32 is None or row["x_ort_fp32"] < best_fp32[0]):
            best_fp32 = (float(row["x_ort_fp32"]), engine)
    if best is not None and best_fp32 is not None and best != best_fp32:
        ci = data["engines"][best[1]].get("x_ort_fp32_95ci")
        if isinstance(ci, list) and len(ci) == 2 and ci[1] >= best_fp32[0]:
            best = best_fp32  # not measurably faster than full precision: keep fp32
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
        agree50 = (r.get("agreement50") or r["agreement"])["match_rate"]
        if r.get("target") == "tensorrt" or agree50 is None:
            continue  # the cpu target is what ONNX Runtime runs fast; no detection: not measured
        acc[eng] = {"dAP_points": round(100 * r.get("dAP", 0.0), 2), "agree50": agree50,
                    "agree95": r["agreement"]["match_rate"]}
    engines = {}
    for eng, s in speed.get("engines", {}).items():
        engines[eng] = {"x_ort_fp32": s["x_ort_fp32"], "x_ort_fp32_95ci": s["x_ort_fp32_95ci"],
                        **acc.get(eng, {})}
    return {"format": "nasfcos-cpu-engines/1", "engines": engines}


__all__ = ["MAX_AP_DROP", "MIN_AGREEMENT50", "TABLE_FILE", "EngineChoice", "choose_cpu_engine",
           "cpu_has_bf16", "load_table", "table_from_reports"]
