"""Latency-aware search: a per-unit latency table, a predictor that sums it, the reward term.

A compiled decoder (:mod:`nasfcos.compiler`) is a sequence of *units*, each one layer of
the generated ``model.py`` at one resolution and width:

==============================  =======================================================
key                             what (widths: ``c`` FPN, ``h`` head; strides in px)
==============================  =======================================================
``adapter/c{2..5}``             backbone level -> ``c`` (1x1 conv + BN + ReLU)
``fpn_op/{op}/s{s}``            FPN op at its input's stride ``s`` (4..32)
``fpn_agg/{sum|concat}/s{s}``   FPN aggregation at the block's output stride
``resize/s{a}/s{b}``            bilinear resize of a ``c``-wide map from stride a to b
``add/s{s}``                    sum of two ``c``-wide maps (dangling outputs, paper eq. 1)
``p6p7``                        p6 = conv3x3/2(p5), p7 = conv3x3/2(relu(p6))
``bridge/s{s}``                 1x1 conv ``c`` -> ``h`` per output level (only if c != h)
``head_op/{op}/s{s}``           one head op, one branch, one output level (8..128)
``head_agg/{sum|concat}/s{s}``  one DAG-head aggregation, one branch, one level
``predict/s{s}``                cls / box (exp(scale x)) / centerness convs at one level
==============================  =======================================================

:func:`decoder_units` reads the units of a genotype's decoder from the compiler's plan
(each generated statement records the units it runs: :meth:`nasfcos.compiler.plan.Plan.units`);
:func:`build_table` times every unit on a backend, each unit module built from the classes
of a compiled ``model.py`` by the compiler's emitter calls (no op is implemented here); :func:`predict_ms` is the table's
``overhead_ms`` (one call of the runtime) plus the sum of count x latency.

The reward with a latency target ``T`` (ms) is MnasNet's soft constraint
``ACC x (LAT / T) ** w`` taken in log space, because the search's reward is a negative
loss (a product with a factor < 1 would *raise* a negative reward):

    reward = proxy_reward - weight x log(LAT / T)

so a decoder slower than the target loses ``weight x log(LAT / T) > 0`` and a faster one
gains; doubling the latency costs ``weight x ln 2`` (0.049 at the default weight 0.07,
MnasNet's ``|w|``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import itertools
import json
import math
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nasfcos.errors import BackendUnavailable, NasfcosError, first_line
from nasfcos.genotypes import (
    BACKBONE_LEVELS,
    BACKBONE_STRIDES,
    OUTPUT_STRIDES,
    Genotype,
)
from nasfcos.io import atomic_write_json, sha256_bytes
from nasfcos.progress import progress_bar, quiet

FORMAT = "nasfcos-latency-table/1"
BACKENDS: tuple[str, ...] = ("onnxruntime", "torch", "tensorrt")
#: MnasNet's |w| for the soft latency constraint.
DEFAULT_LATENCY_WEIGHT = 0.07


# ------------------------------------------------------------------------------------------
# the reward
# ------------------------------------------------------------------------------------------
def latency_reward(proxy_reward: float, latency_ms: float, target_ms: float,
                   weight: float = DEFAULT_LATENCY_WEIGHT) -> float:
    """``proxy_reward - weight * log(latency / target)``: lower when slower than the target,
    higher when faster, never changes sign convention (higher is better)."""
    if not (target_ms > 0 and math.isfinite(target_ms)):
        raise NasfcosError(f"latency target: must be a positive number of ms, got {target_ms}")
    if not (latency_ms > 0 and math.isfinite(latency_ms)):
        raise NasfcosError(f"predicted latency {latency_ms} ms is not a positive number")
    return float(proxy_reward) - float(weight) * math.log(latency_ms / target_ms)


def pareto_front(points: Iterable[dict[str, Any]], *, reward: str = "proxy_reward",
                 latency: str = "latency_ms") -> list[dict[str, Any]]:
    """The points no other point beats on both axes (higher ``reward``, lower ``latency``),
    sorted by latency; among equal points the first is kept."""
    pts = sorted(points, key=lambda p: (float(p[latency]), -float(p[reward])))
    front: list[dict[str, Any]] = []
    best = -math.inf
    for p in pts:
        if float(p[reward]) > best:
            front.append(p)
            best = float(p[reward])
    return front


# ------------------------------------------------------------------------------------------
# the units of a decoder
# ------------------------------------------------------------------------------------------
def decoder_units(g: Genotype, *, bridge: bool = False) -> Counter[str]:
    """How many times each unit (module docstring) runs in the decoder compiled from ``g``
    for one image, read from the compiler's plan; ``bridge``: the FPN and head widths differ."""
    from nasfcos.compiler import CompileOptions
    from nasfcos.compiler.plan import build_plan

    return build_plan(g, CompileOptions(fpn_channels=64, head_channels=32 if bridge else None)).units()


# ------------------------------------------------------------------------------------------
# the table
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TableSpec:
    """What a latency table is measured for: backend, image size (H, W) px, widths, threads."""

    backend: str = "onnxruntime"
    size: tuple[int, int] = (800, 800)
    fpn_channels: int = 128
    head_channels: int = 128
    num_classes: int = 80
    backbone: str = "resnet50"  # sets the adapters' input widths
    threads: int = 1
    device: str = "cpu"

    def validate(self) -> TableSpec:
        """One-line error naming the field; the widths, classes and backbone by CompileOptions' rules."""
        from nasfcos.compiler import CompileOptions

        if self.backend not in BACKENDS:
            raise NasfcosError(f"unknown backend {self.backend!r} (expected one of: {', '.join(BACKENDS)})")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise NasfcosError(f"threads: must be a positive integer, got {self.threads!r}")
        CompileOptions(fpn_channels=self.fpn_channels, head_channels=self.head_channels,
                       num_classes=self.num_classes, backbone=self.backbone)
        if min(self.size) < 32:
            raise NasfcosError(f"size {self.size[0]}x{self.size[1]} too small (at least 32x32)")
        return self

    def key(self) -> dict[str, Any]:
        return {**asdict(self), "size": list(self.size)}


@dataclass(frozen=True)
class LatencyTable:
    """A measured table: its spec, per-unit median latencies (ms) and the per-call overhead."""

    spec: TableSpec
    entries: dict[str, float]
    overhead_ms: float
    meta: dict[str, Any]
    sha256: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **self.spec.key(), "overhead_ms": self.overhead_ms,
                "entries": dict(sorted(self.entries.items())), "meta": self.meta}

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    def check_for(self, *, size: tuple[int, int] | None = None, backend: str | None = None,
                  where: str = "latency table") -> None:
        """One-line error when the table was measured for another size or backend."""
        if size is not None and tuple(size) != tuple(self.spec.size):
            raise NasfcosError(f"{where} is for {self.spec.size[0]}x{self.spec.size[1]}, not "
                               f"{size[0]}x{size[1]}; measure a table at size {size[0]}x{size[1]}")
        if backend is not None and backend != self.spec.backend:
            raise NasfcosError(f"{where} is for backend {self.spec.backend}, not {backend}")


def load_table(path: str | Path) -> LatencyTable:
    """Read and check a table written by :func:`build_table` (one-line errors)."""
    p = Path(path)
    if not p.is_file():
        raise NasfcosError(f"{p}: no such latency table" + (" (it is a folder)" if p.is_dir() else ""))
    try:
        raw = p.read_bytes()
        doc = json.loads(raw)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise NasfcosError(f"{p}: not a latency table ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise NasfcosError(f"{p}: not a {FORMAT} file")
    try:
        spec = TableSpec(backend=str(doc["backend"]), size=(int(doc["size"][0]), int(doc["size"][1])),
                         fpn_channels=int(doc["fpn_channels"]), head_channels=int(doc["head_channels"]),
                         num_classes=int(doc["num_classes"]), backbone=str(doc["backbone"]),
                         threads=int(doc["threads"]), device=str(doc.get("device", "cpu"))).validate()
        entries = {str(k): float(v) for k, v in dict(doc["entries"]).items()}
        overhead = float(doc.get("overhead_ms", 0.0))
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise NasfcosError(f"{p}: malformed latency table ({type(exc).__name__}: {exc})") from None
    bad = [k for k, v in entries.items() if not (math.isfinite(v) and v >= 0)]
    if bad or not (math.isfinite(overhead) and overhead >= 0):
        raise NasfcosError(f"{p}: latency table entry {bad[0] if bad else 'overhead_ms'} is not a "
                           "non-negative number")
    return LatencyTable(spec, entries, overhead, dict(doc.get("meta") or {}), sha256_bytes(raw))


def predict_ms(g: Genotype, table: LatencyTable) -> float:
    """Predicted decoder latency (ms) of ``g``: overhead + sum of count x unit latency."""
    units = decoder_units(g, bridge=table.spec.fpn_channels != table.spec.head_channels)
    missing = sorted(k for k in units if k not in table.entries)
    if missing:
        raise NasfcosError(f"latency table has no entry {missing[0]!r} (measured by an older "
                           "nasfcos? rebuild it)")
    return table.overhead_ms + sum(n * table.entries[k] for k, n in units.items())


# ------------------------------------------------------------------------------------------
# measuring
# ------------------------------------------------------------------------------------------
#: A genotype whose compiled file defines every layer class a decoder can use.
_CATALOG: dict[str, Any] = {
    "format": "nasfcos-genotype/1",
    "name": "latency-catalog",
    "fpn": [
        {"inputs": [0, 1], "ops": ["sep_conv_3x3", "sep_conv_3x3_dil3"], "agg": "sum"},
        {"inputs": [2, 3], "ops": ["sep_conv_5x5_dil6", "deform_conv_3x3"], "agg": "concat"},
    ] + [{"inputs": [4, 5], "ops": ["skip", "skip"], "agg": "sum"}] * 5,
    "head": {"kind": "sequential", "layers": ["conv_1x1", "conv_3x3", "sep_conv_3x3", "sep_conv_3x3_dil3",
                                              "skip", "deform_conv_3x3"]},
    "share": [0, 0, 0, 0, 0],
}


def _glue(mod: Any, dec: Any) -> dict[str, Any]:
    """The units that are not a layer class of the file: resize, add, p6/p7, predictors
    (module classes; torch is imported only when a table is measured)."""
    import torch
    from torch import nn

    class Resize(nn.Module):
        def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
            return mod.resize(x, like=like)

    class Add(nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return x + y

    class P6P7(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p6, self.p7 = dec.p6, dec.p7

        def forward(self, p5: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            p6 = self.p6(p5)
            return p6, self.p7(torch.nn.functional.relu(p6))

    class Predict(nn.Module):
        def __init__(self, level: int) -> None:
            super().__init__()
            self.cls_logits, self.bbox_pred, self.centerness = dec.cls_logits, dec.bbox_pred, dec.centerness
            self.scale = dec.scales[level]

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            return self.cls_logits(x), torch.exp(self.scale(self.bbox_pred(x))), self.centerness(x)

    return {"resize": Resize, "add": Add, "p6p7": P6P7, "predict": Predict}


def unit_modules(spec: TableSpec) -> dict[str, tuple[Any, list[tuple[int, ...]]]]:
    """Every unit of the table: key -> (module, input shapes), built from a compiled file's
    classes by the compiler's emitter calls, at ``spec``'s size and widths."""
    from nasfcos.compiler import CompileOptions, compile_to_module
    from nasfcos.compiler.backbones import backbone_channels
    from nasfcos.compiler.plan import (
        FCOS_TOWER_EMITTER,
        FPN_AGG_EMITTERS,
        FPN_OP_EMITTERS,
        HEAD_AGG_EMITTERS,
        HEAD_OP_EMITTERS,
    )
    from nasfcos.genotypes import parse_genotype
    from nasfcos.runtime.models import feature_sizes
    from nasfcos.search.cache import output_level_sizes

    c, h = spec.fpn_channels, spec.head_channels
    widths = {"c": c, "h": h}
    in_ch = backbone_channels(spec.backbone)
    opts = CompileOptions(fpn_channels=c, head_channels=h, num_classes=spec.num_classes, in_channels=in_ch)
    mod = compile_to_module(parse_genotype(_CATALOG), opts)
    dec = mod.Decoder(fpn_channels=c, head_channels=h, num_classes=spec.num_classes, in_channels=in_ch)
    glue = _glue(mod, dec)
    c_sizes = feature_sizes(spec.size)
    sizes = {**dict(zip(BACKBONE_STRIDES, c_sizes, strict=True)),
             **dict(zip(OUTPUT_STRIDES, output_level_sizes(c_sizes), strict=True))}

    def shape(s: int, width: int) -> tuple[int, ...]:
        return (1, width, *sizes[s])

    units: dict[str, tuple[Any, list[tuple[int, ...]]]] = {}
    for lvl, s in enumerate(BACKBONE_STRIDES):
        units[f"adapter/{BACKBONE_LEVELS[lvl]}"] = (mod.Adapter(in_ch[lvl], c), [shape(s, in_ch[lvl])])
        for op, em in FPN_OP_EMITTERS.items():
            if em is not None:
                units[f"fpn_op/{op}/s{s}"] = (em.build(mod, widths), [shape(s, c)])
        for agg, em in FPN_AGG_EMITTERS.items():
            units[f"fpn_agg/{agg}/s{s}"] = (em.build(mod, widths), [shape(s, c)] * 2)
        units[f"add/s{s}"] = (glue["add"](), [shape(s, c)] * 2)
        for t in BACKBONE_STRIDES:
            if t != s:
                units[f"resize/s{s}/s{t}"] = (glue["resize"](), [shape(s, c), shape(t, 1)])
    units["p6p7"] = (glue["p6p7"](), [shape(32, c)])
    for i, s in enumerate(OUTPUT_STRIDES):
        if c != h:
            units[f"bridge/s{s}"] = (dec.bridge, [shape(s, c)])
        units[f"predict/s{s}"] = (glue["predict"](i), [shape(s, h)])
        for op, em in HEAD_OP_EMITTERS.items():
            if em is not None:
                units[f"head_op/{op}/s{s}"] = (em.build(mod, widths), [shape(s, h)])
        units[f"head_op/fcos_conv_3x3/s{s}"] = (FCOS_TOWER_EMITTER.build(mod, widths), [shape(s, h)])
        for agg, em in HEAD_AGG_EMITTERS.items():
            units[f"head_agg/{agg}/s{s}"] = (em.build(mod, widths), [shape(s, h)] * 2)
    for m, _ in units.values():
        m.eval()
    return units


#: A timer: (module, input arrays) -> per-run milliseconds.
Timer = Callable[[Any, list[Any]], list[float]]


#: Clocks a table may be measured with: wall time, or the CPU time of the calling thread
#: (one intra-op thread runs on the caller; immune to other processes on a shared machine).
CLOCKS: dict[str, Callable[[], int]] = {"wall": time.perf_counter_ns, "cpu": time.thread_time_ns}


def _repeat(run: Callable[[], Any], warmup: int, runs: int, clock: Callable[[], int]) -> list[float]:
    """Milliseconds of each of ``runs`` calls of ``run`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run()
    out = []
    for _ in range(runs):
        t = clock()
        run()
        out.append((clock() - t) / 1e6)
    return out


def _torch_timer(spec: TableSpec, warmup: int, runs: int, clock: Callable[[], int]) -> Timer:
    import torch

    def timer(module: Any, arrays: list[Any]) -> list[float]:
        xs = [torch.from_numpy(a) for a in arrays]
        with torch.inference_mode():
            return _repeat(lambda: module(*xs), warmup, runs, clock)

    return timer


def _preflight(units: dict[str, Any], keys: list[str], spec: TableSpec) -> None:
    """Run every unit once in PyTorch (seconds) so that one that cannot run at this size and
    width fails with one line before minutes of export and timing."""
    import torch

    for key in keys:
        module, shapes = units[key]
        try:
            with torch.no_grad():
                module(*(torch.zeros(s) for s in shapes))
        except Exception as exc:  # noqa: BLE001 - any failure of a unit is the table's error
            raise NasfcosError(f"latency unit {key} cannot run at {spec.size[0]}x{spec.size[1]} with "
                               f"widths {spec.fpn_channels}/{spec.head_channels}: {first_line(exc)}") from None


def _onnx_timer(spec: TableSpec, warmup: int, runs: int, work: Path, clock: Callable[[], int]) -> Timer:
    import torch

    from nasfcos.runtime.export import DEFAULT_OPSET
    from nasfcos.runtime.runners import OrtRunner

    if spec.backend == "tensorrt":
        from nasfcos.runtime.trt import TrtRunner, require_tensorrt

        require_tensorrt()
    ids = itertools.count(1)

    def timer(module: Any, arrays: list[Any]) -> list[float]:
        path = work / f"unit{next(ids)}.onnx"
        names = [f"x{i}" for i in range(len(arrays))]
        with torch.inference_mode(False), quiet(), contextlib.redirect_stderr(io.StringIO()):  # exporter chatter
            prog = torch.onnx.export(module, tuple(torch.from_numpy(a) for a in arrays), dynamo=True,
                                     opset_version=DEFAULT_OPSET, input_names=names, optimize=True,
                                     external_data=False, verbose=False)
        path.write_bytes(prog.model_proto.SerializeToString())
        if spec.backend == "tensorrt":
            runner: Any = TrtRunner(path, spec.device if spec.device.startswith("cuda") else "cuda")
        else:
            runner = OrtRunner(path, spec.device, threads=spec.threads)
        try:
            runner.bind(*arrays)
            return _repeat(lambda: (runner.run(), runner.synchronize()), warmup, runs, clock)
        finally:
            runner.close()
            path.unlink(missing_ok=True)

    return timer


#: Statistics a table may summarise the runs of a unit with.
STATISTICS: tuple[str, ...] = ("median", "min")


def build_table(spec: TableSpec, *, warmup: int = 5, runs: int = 30, progress: bool = True,
                only: Iterable[str] | None = None, statistic: str = "median",
                clock: str = "wall") -> LatencyTable:
    """Time every unit on ``spec.backend`` (``statistic`` of ``runs`` after ``warmup``: the
    median on a quiet machine, the minimum on a shared one, where it estimates the
    uncontended time) and the per-call overhead (a unit adding two 1-element tensors);
    ``clock``: ``wall`` (default) or ``cpu``, the calling thread's CPU time (needs
    ``threads == 1`` and a CPU backend: then the work runs on the caller); ``only``: a
    subset of keys."""
    import numpy as np
    import torch

    spec.validate()
    if statistic not in STATISTICS:
        raise NasfcosError(f"unknown statistic {statistic!r} (expected one of: {', '.join(STATISTICS)})")
    summarise = np.median if statistic == "median" else np.min
    if clock not in CLOCKS:
        raise NasfcosError(f"unknown clock {clock!r} (expected one of: {', '.join(CLOCKS)})")
    if clock == "cpu" and (spec.threads != 1 or spec.backend == "tensorrt"):
        raise NasfcosError("clock cpu measures the calling thread: it needs 1 thread and a CPU backend")
    if spec.backend == "torch" and spec.device != "cpu":
        raise NasfcosError("the torch latency table is measured on the CPU only")
    old_threads = torch.get_num_threads()
    torch.set_num_threads(spec.threads)
    t0 = time.perf_counter()
    try:
        units = unit_modules(spec)
        keys = list(units) if only is None else [k for k in units if k in set(only)]
        _preflight(units, keys, spec)
        rng = np.random.default_rng(0)
        with tempfile.TemporaryDirectory(prefix="nasfcos-latency-") as tmp:
            tick = CLOCKS[clock]
            timer = (_torch_timer(spec, warmup, runs, tick) if spec.backend == "torch"
                     else _onnx_timer(spec, warmup, runs, Path(tmp), tick))
            add = units[f"add/s{BACKBONE_STRIDES[0]}"][0]  # x + y: on two 1-element tensors, the call's overhead
            overhead = float(summarise(timer(add, [np.zeros((1,), np.float32)] * 2)))
            bar = progress_bar(len(keys), desc=f"latency table ({spec.backend})", unit="unit", enabled=progress)
            entries: dict[str, float] = {}
            for key in keys:
                module, shapes = units[key]
                arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
                entries[key] = round(max(0.0, float(summarise(timer(module, arrays))) - overhead), 5)
                if bar is not None:
                    bar.update(1)
            if bar is not None:
                bar.close()
    except ImportError as exc:
        raise BackendUnavailable(f"{spec.backend}: {exc}") from None
    finally:
        torch.set_num_threads(old_threads)
    meta = {"warmup": warmup, "runs": runs, "seconds": round(time.perf_counter() - t0, 1),
            "torch": torch.__version__, "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "statistic": f"{statistic} ms per unit over the runs, minus the per-call overhead",
            "clock": "wall time" if clock == "wall" else "CPU time of the calling thread"}
    try:
        from nasfcos.runtime.machine import machine_info

        meta["machine"] = machine_info()
    except Exception:  # noqa: BLE001 - provenance only
        pass
    if spec.backend != "torch":
        import onnxruntime

        meta["onnxruntime"] = onnxruntime.__version__
    return LatencyTable(spec, entries, round(overhead, 5), meta)
