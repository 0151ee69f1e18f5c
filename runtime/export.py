"""Export a compiled ``model.py`` to ONNX, check the graph, and write a sidecar manifest.

Pipeline (:func:`export_onnx`): build the module (seeded random or given weights) ->
``torch.onnx.export(dynamo=True, opset >= 19)`` (``torchvision::deform_conv2d`` becomes ONNX
``DeformConv``; batch norm in eval mode becomes ``BatchNormalization``, which ONNX Runtime
and TensorRT fold into the preceding convolution) -> optional ``onnxslim`` pass (constant
folding, dead-node removal, Conv+BN fusion) -> ``onnx.checker`` (full check) and strict shape
inference -> atomic write -> manifest ``<file>.json`` (see :func:`manifest_path_for`).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nasfcos.errors import FieldError, NasfcosError, first_line
from nasfcos.io import (
    atomic_write_bytes,
    atomic_write_json,
    sha256_bytes,
    sha256_file,
    writable_path,
)
from nasfcos.modelfile import MAX_CLASSES
from nasfcos.progress import quiet
from nasfcos.runtime.manifest import MANIFEST_FORMAT, Manifest, load_manifest, manifest_path_for
from nasfcos.runtime.models import LoadedModel, load_model
from nasfcos.runtime.optimize import optimize_onnx
from nasfcos.runtime.precision import PrecisionOptions, calibration_files, lower_precision

#: ONNX opset: 19 is the first with ``DeformConv``.
MIN_OPSET = 19
DEFAULT_OPSET = 19
#: Smallest image side a dynamic export is traced at (every FPN level at least 2 cells).
DYNAMIC_MIN_TRACE = 192


@dataclass
class ExportOptions:
    """How to export.  ``size`` is the example (and, when static, the only) image size (H, W).

    ``dynamic``: batch and spatial sizes become symbolic dimensions.
    """

    kind: str | None = None
    size: tuple[int, int] = (800, 800)
    batch: int = 1
    dynamic: bool = False
    opset: int = DEFAULT_OPSET
    simplify: bool = True
    #: nasfcos's graph passes (:mod:`nasfcos.runtime.optimize`) after the simplifier.
    optimize: bool = True
    seed: int = 0
    weights: Path | None = None
    #: Reduced precision built into the graph (:mod:`nasfcos.runtime.precision`).
    precision: PrecisionOptions | None = None


@dataclass
class ExportResult:
    """Paths of the written ONNX file and its manifest, and the manifest itself."""

    onnx_path: Path
    manifest_path: Path
    manifest: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)


def tool_versions() -> dict[str, str | None]:
    """Versions of the libraries an artifact depends on (None where not installed)."""
    import importlib.metadata as md

    from nasfcos import __version__

    out: dict[str, str | None] = {"python": platform.python_version(), "nasfcos": __version__}
    for dist in ("torch", "torchvision", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu",
                 "onnxslim", "numpy", "tensorrt"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out


def _dynamic_shapes(lm: LoadedModel, batch: bool = True) -> tuple[dict[int, Any], ...]:
    """Symbolic dims of every input: height and width, and the batch when ``batch``."""
    dyn = torch.export.Dim.DYNAMIC
    axes = (0, 2, 3) if batch else (2, 3)
    return tuple({a: dyn for a in axes} for _ in lm.input_names)


def _batch_specialised(exc: BaseException) -> bool:
    """Whether torch.export refused a dynamic batch because the model fixes it."""
    text = str(exc)
    return "static shape" in text and ".shape[0]" in text


def _finite_int(v: Any) -> int | None:
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError, AttributeError):
        return None
    return int(f) if f == f and abs(f) != float("inf") else None


def _dynamic_ranges(program: Any, names: tuple[str, ...]) -> dict[str, dict[str, list[Any]]]:
    """Valid ranges of each dynamic input dimension, from torch.export's range constraints.

    The trace specialises on branches of the model (e.g. ``min(top_n, h * w * k)``), so a
    dynamic export is only valid within these ranges: ``{input: {axis: [lo, hi or None]}}``.
    """
    try:
        ep = program.exported_program
        ranges = {str(k): v for k, v in ep.range_constraints.items()}
        placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"
                        and n.name not in ep.graph_signature.inputs_to_parameters
                        and n.name not in ep.graph_signature.inputs_to_buffers
                        and n.name not in ep.graph_signature.inputs_to_lifted_tensor_constants]
    except AttributeError:
        return {}
    out: dict[str, dict[str, list[Any]]] = {}
    for name, node in zip(names, placeholders, strict=False):
        val = node.meta.get("val")
        if val is None:
            continue
        for axis, dim in enumerate(val.shape):
            if isinstance(dim, int):
                continue
            vr = ranges.get(str(dim))
            if vr is None:
                continue
            out.setdefault(name, {})[str(axis)] = [_finite_int(vr.lower), _finite_int(vr.upper)]
    return out


def _value_info(vi: Any) -> dict[str, Any]:
    import onnx

    t = vi.type.tensor_type
    shape: list[int | str] = []
    for d in t.shape.dim:
        shape.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?"))
    return {"name": vi.name, "shape": shape,
            "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}


def graph_io(model: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(inputs, outputs) of an ONNX model as ``{"name", "shape", "dtype"}`` (dims int or str)."""
    inits = {i.name for i in model.graph.initializer}
    ins = [_value_info(v) for v in model.graph.input if v.name not in inits]
    outs = [_value_info(v) for v in model.graph.output]
    return ins, outs


def check_onnx(model: Any) -> None:
    """``onnx.checker`` full check plus strict, type-checked shape inference.

    Raises :class:`NasfcosError` with the checker's first line on failure.
    """
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise NasfcosError(f"ONNX check failed: {first_line(exc, None)}") from exc


def simplify_onnx(model: Any) -> Any:
    """Run ``onnxslim`` (constant folding, dead code, Conv+BN fusion); returns a new model."""
    import onnxslim

    with quiet():
        slim = onnxslim.slim(model)
    # onnxslim drops graph inputs that nothing reads (a decoder whose genotype never reads c2);
    # the contract keeps every input, so put them back in their original order (an unused
    # input is valid ONNX and costs nothing at run time).
    kept = {i.name: i for i in slim.graph.input}
    if [i.name for i in model.graph.input] != list(kept):
        inputs = [kept.get(i.name, i) for i in model.graph.input]
        del slim.graph.input[:]
        slim.graph.input.extend(inputs)
    return slim


def _classes(lm: LoadedModel) -> dict[str, Any] | None:
    """Class names and COCO category ids of the model (``{"names": [K], "category_ids": [K]}``)
    from its weights, see :func:`weights_classes`; None for random weights."""
    return weights_classes(lm.weights) if lm.weights is not None else None


def weights_classes(weights: str | Path) -> dict[str, Any] | None:
    """Class names and category ids recorded with a weights file: a ``nasfcos train``
    checkpoint's metadata, or the ``import.json`` that ``nasfcos import-release`` wrote next to
    its ``weights.pt`` (only when that record's sha256 is this file's); None otherwise."""
    from nasfcos.weights import load_weights_file

    meta = load_weights_file(weights)
    ids, names = meta.get("cat_ids"), meta.get("class_names")
    if ids is None and names is None:
        ids, names = _import_record_classes(Path(weights))
    if ids is None and names is None:
        return None
    ids = [int(i) for i in ids] if ids is not None else None
    names = [str(n) for n in names] if names is not None else None
    return {"names": names, "category_ids": ids}


def _import_record_classes(weights: Path) -> tuple[list[Any] | None, list[Any] | None]:
    """(category ids, class names) from the ``import.json`` next to an imported ``weights.pt``."""
    import json

    from nasfcos.io import sha256_file

    record = weights.parent / "import.json"
    try:
        doc = json.loads(record.read_text(encoding="utf-8"))
        if doc.get("format") != "nasfcos-import/1" or \
                doc["weights"]["sha256"] != sha256_file(weights):
            return None, None
        labels = doc["labels"]
        ids, names = labels.get("category_ids"), labels.get("class_names")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None, None
    ok = (all(isinstance(v, list) and len(v) <= MAX_CLASSES for v in (ids or [], names or []))
          and all(isinstance(i, int) for i in ids or []) and all(isinstance(n, str) for n in names or []))
    return (ids, names) if ok else (None, None)


def _set_metadata(proto: Any, lm: LoadedModel, classes: dict[str, Any] | None) -> None:
    """ONNX ``metadata_props``: genotype, kind, and the classes (JSON lists), so an ONNX file
    handed on without its manifest still says what its labels mean."""
    import json

    props = {"nasfcos.kind": lm.kind,
             "nasfcos.genotype_hash": str(lm.info.get("genotype_hash") or ""),
             "nasfcos.num_classes": str(lm.info.get("num_classes") or "")}
    if classes is not None:
        props["nasfcos.class_names"] = json.dumps(classes["names"])
        props["nasfcos.category_ids"] = json.dumps(classes["category_ids"])
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


@dataclass
class _Trace:
    """The example a model is traced on, and what the trace made dynamic."""

    size: tuple[int, int]
    batch: int
    dynamic_batch: bool
    program: Any = None
    ranges: dict[str, dict[str, list[Any]]] = field(default_factory=dict)


def _trace_example(opts: ExportOptions) -> _Trace:
    """The example size and batch to trace ``opts`` at (dynamic exports avoid shapes the
    trace would specialise: batch 1, sides below ``DYNAMIC_MIN_TRACE``, equal sides)."""
    size, batch = tuple(opts.size), opts.batch
    if opts.dynamic and batch == 1:
        batch = 2  # an example batch of 1 would be specialised to a constant
    if opts.dynamic and min(size) < DYNAMIC_MIN_TRACE:
        # torch.export specialises dimensions of size 1: below ~129 px the stride-128 level
        # is 1 cell high or wide, and the graph would only be valid up to the traced size.
        traced = (max(size[0], DYNAMIC_MIN_TRACE), max(size[1], DYNAMIC_MIN_TRACE))
        warnings.warn(f"dynamic export: traced at {traced[0]}x{traced[1]} instead of "
                      f"{size[0]}x{size[1]} (a trace below {DYNAMIC_MIN_TRACE} px fixes the "
                      "coarsest level's size); the graph stays valid for smaller inputs",
                      stacklevel=3)
        size = traced
    if opts.dynamic and size[0] == size[1]:
        # torch.export gives input dims with equal example values one symbol ("duck
        # sizing"), which would tie height to width: trace a non-square example instead.
        size = (size[0], size[1] + 32)
    return _Trace(size=(int(size[0]), int(size[1])), batch=batch, dynamic_batch=opts.dynamic)


def _torch_export(lm: LoadedModel, opts: ExportOptions, trace: _Trace) -> _Trace:
    """``torch.onnx.export(dynamo=True)`` on the example; a model that fixes its batch keeps
    height and width dynamic only.  Fills ``trace.program`` and ``trace.ranges``."""

    def run(batch: int, dynamic_shapes: Any) -> Any:
        return torch.onnx.export(
            lm.net, tuple(torch.from_numpy(a) for a in lm.inputs(trace.size, batch,
                                                                 seed=opts.seed)),
            dynamo=True, opset_version=opts.opset,
            input_names=list(lm.input_names), output_names=list(lm.output_names),
            dynamic_shapes=dynamic_shapes, optimize=True, external_data=False, verbose=False)

    with quiet():
        try:
            try:
                trace.program = run(trace.batch, _dynamic_shapes(lm) if opts.dynamic else None)
            except Exception as exc:
                if not (opts.dynamic and _batch_specialised(exc)):
                    raise
                trace.dynamic_batch, trace.batch = False, opts.batch
                trace.program = run(trace.batch, _dynamic_shapes(lm, batch=False))
        except Exception as exc:
            detail = next((m for m in str(exc).strip().splitlines() if "Error" in m or "error" in m),
                          first_line(exc, None))
            raise NasfcosError(f"torch.onnx.export failed for {lm.path}: {type(exc).__name__}: "
                               f"{detail[:300]} (set NASFCOS_DEBUG=1 for the traceback)") from exc
    if opts.dynamic and not trace.dynamic_batch:
        warnings.warn(f"{lm.path.name}: the model specialises its batch; exported with a "
                      f"static batch of {trace.batch} (height and width stay dynamic)",
                      stacklevel=3)
    trace.ranges = _dynamic_ranges(trace.program, lm.input_names) if opts.dynamic else {}
    bounded = sorted({f"{name}[{axis}] <= {hi}" for name, axes in trace.ranges.items()
                      for axis, (_, hi) in axes.items() if hi is not None and axis != "0"})
    if bounded:
        warnings.warn(f"{lm.path.name}: the dynamic export is only valid for "
                      f"{', '.join(bounded)} (recorded in the manifest)", stacklevel=3)
    return trace


def _source_record(lm: LoadedModel, base: Path) -> dict[str, Any]:
    """The manifest's ``source`` section: files named relative to the manifest's folder."""
    return {"model": os.path.relpath(lm.path.resolve(), base),
            "model_sha256": lm.info["model_sha256"], "kind": lm.kind, "seed": lm.seed,
            "weights": os.path.relpath(lm.weights.resolve(), base) if lm.weights else None,
            "weights_sha256": sha256_file(lm.weights) if lm.weights else None,
            "state_dict_sha256": lm.info["state_dict_sha256"]}


# -- what TensorRT's ONNX parser takes for DeformConv, checked without TensorRT ---------------
# src: onnx-tensorrt's DeformConv importer and docs/operators.md ("FP32, FP16; 1D or 2D spatial
# dimensions; pads at the beginning and end of each axis the same"); group, offset_group,
# strides and dilations pass unrestricted, a missing mask becomes ones.

#: ONNX element types the parser accepts for DeformConv (TensorProto.FLOAT, FLOAT16).
_TRT_DEFORM_DTYPES = {1: "float32", 10: "float16"}
_DEFORM_INPUTS = ("X", "W", "offset", "B", "mask")


def _value_facts(model: Any) -> tuple[dict[str, int], dict[str, int]]:
    """(element type, rank) of every named value the graph declares: inputs, initializers,
    value_info after shape inference, outputs, Constant nodes."""
    import onnx

    try:
        g = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
    except Exception:  # inference is only a help here: declared types still count
        g = model.graph
    types = {t.name: t.data_type for t in g.initializer}
    ranks = {t.name: len(t.dims) for t in g.initializer}
    for vi in (*g.input, *g.value_info, *g.output):
        tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if tt is not None and tt.elem_type:
            types[vi.name] = tt.elem_type
        if tt is not None and tt.HasField("shape"):
            ranks[vi.name] = len(tt.shape.dim)
    for n in g.node:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value":
                    types[n.output[0]] = a.t.data_type
                    ranks[n.output[0]] = len(a.t.dims)
    return types, ranks


def deformconv_problems(model: Any) -> list[str]:
    """One line per ``DeformConv`` node TensorRT's ONNX parser would refuse, naming the node
    and the rule (empty when every node passes).  ``model``: an ``onnx.ModelProto``."""
    nodes = [n for n in model.graph.node if n.op_type == "DeformConv"]
    if not nodes:
        return []
    types, ranks = _value_facts(model)
    dtype_name = {1: "float32", 10: "float16", 16: "bfloat16", 11: "float64", 3: "int8",
                  2: "uint8", 6: "int32", 7: "int64"}
    problems = []
    for i, n in enumerate(nodes):
        name = f"DeformConv node '{n.name or f'#{i}'}'"
        attrs = {a.name: a for a in n.attribute}
        present = [(slot, v) for slot, v in zip(_DEFORM_INPUTS, n.input, strict=False) if v]
        x_type = types.get(n.input[0]) if n.input else None
        if x_type is not None and x_type not in _TRT_DEFORM_DTYPES:
            problems.append(f"{name}: input X is {dtype_name.get(x_type, x_type)}; TensorRT "
                            "takes float32 or float16")
        elif x_type is not None:
            for slot, value in present[1:]:
                t = types.get(value)
                if t is not None and t != x_type:
                    problems.append(f"{name}: input {slot} is {dtype_name.get(t, t)} but X is "
                                    f"{_TRT_DEFORM_DTYPES[x_type]}; TensorRT needs them all the "
                                    "same (float32 or float16)")
                    break
        rank = ranks.get(n.input[0]) if n.input else None
        if rank is None and len(n.input) > 1:
            rank = ranks.get(n.input[1])  # W has the rank of X
        if rank is not None and rank not in (3, 4):
            problems.append(f"{name}: {rank - 2} spatial dimensions; TensorRT takes 1 or 2")
            continue
        spatial = (rank - 2) if rank is not None else None
        if "kernel_shape" in attrs and spatial is not None and \
                len(attrs["kernel_shape"].ints) != spatial:
            problems.append(f"{name}: kernel_shape {list(attrs['kernel_shape'].ints)} does not "
                            f"match {spatial} spatial dimension(s)")
        if "pads" in attrs:
            pads = list(attrs["pads"].ints)
            half = len(pads) // 2
            if len(pads) % 2 or (spatial is not None and half != spatial):
                problems.append(f"{name}: pads {pads} do not match the spatial dimensions")
            elif pads[:half] != pads[half:]:
                problems.append(f"{name}: pads {pads} differ at the beginning and the end of an "
                                "axis; TensorRT takes symmetric pads only")
    return problems


def tensorrt_parser_record(model: Any) -> dict[str, Any]:
    """The manifest's record of the TensorRT check at export time (``export.tensorrt``);
    warns once, naming the first refused node, when TensorRT could not import the graph."""
    problems = deformconv_problems(model)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        warnings.warn(f"TensorRT's ONNX parser would refuse this graph: {problems[0]}{more}; "
                      "ONNX Runtime runs it", stacklevel=2)
    return {"deformconv": sum(n.op_type == "DeformConv" for n in model.graph.node),
            "parser_ok": not problems, "problems": problems}


def _write(out: Path, proto: Any, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write the ONNX file and then its manifest (with the file's sha256) atomically."""
    data = proto.SerializeToString()
    if len(data) >= 2**31:
        raise NasfcosError("the ONNX model is over 2 GB, which needs external data (unsupported)")
    ins, outs = graph_io(proto)
    ops = Counter(n.op_type for n in proto.graph.node)
    manifest = {**manifest, "format": MANIFEST_FORMAT, "inputs": ins, "outputs": outs,
                "artifact": {"file": out.name, "type": "onnx", "sha256": sha256_bytes(data),
                             "bytes": len(data)},
                "export": {**manifest.get("export", {}), "ir_version": proto.ir_version,
                           "ops": dict(sorted(ops.items())), "nodes": len(proto.graph.node),
                           "tensorrt": tensorrt_parser_record(proto)}}
    atomic_write_bytes(out, data)
    atomic_write_json(manifest_path_for(out), manifest)
    return manifest


class _Steps:
    """Per-step seconds, and a progress bar (a line per step off a TTY) when asked."""

    def __init__(self, progress: bool, names: list[str]) -> None:
        self.seconds: dict[str, float] = {}
        self.bar = None
        if progress:
            from nasfcos.progress import progress_bar
            self.bar = progress_bar(len(names), desc="export", unit="step")
        self._t0 = time.perf_counter()

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self._t0
        self._t0 = now
        if self.bar is not None:
            self.bar.set_postfix_str(name)
            self.bar.update(1)
            if name == "write":
                self.bar.close()


def _graph(program: Any, opts: ExportOptions, steps: _Steps) -> tuple[Any, bool, Any]:
    """The exported graph simplified (unless ``opts.simplify`` is off or onnxslim fails, which
    warns and keeps the graph) and optimised; returns (proto, simplified, passes)."""
    proto, simplified = program.model_proto, False
    if opts.simplify:
        try:
            proto, simplified = simplify_onnx(proto), True
        except Exception as exc:  # a simplifier failure must not lose the export
            warnings.warn(f"onnxslim failed, keeping the unsimplified graph: {exc}", stacklevel=3)
    steps.done("simplify")
    return proto, simplified, optimize_onnx(proto) if opts.optimize else None


def export_onnx(model: str | Path | LoadedModel, out: str | Path,
                opts: ExportOptions | None = None, *, progress: bool = False) -> ExportResult:
    """Export ``model`` (a ``model.py`` path or a :class:`LoadedModel`) to ``out`` (``.onnx``).

    Stages: load -> trace (torch.onnx.export) -> simplify/optimise -> check (and lower the
    precision) -> write the file and its manifest.  Returns the written paths and the
    manifest; raises :class:`NasfcosError` on failure (bad options before any work).
    """
    opts = opts or ExportOptions()
    if opts.opset < MIN_OPSET:
        raise FieldError("opset", f"{opts.opset} is too old: DeformConv needs {MIN_OPSET}+")
    out = Path(out)
    if out.suffix != ".onnx":
        raise NasfcosError(f"{out}: the output file must end in .onnx")
    writable_path(manifest_path_for(out))  # e.g. a folder named like the manifest: before the work
    prec = opts.precision or PrecisionOptions()
    if prec.precision == "int8":
        calibration_files(prec)  # bad calibration input fails before any work
    steps = _Steps(progress, ["load", "export", "simplify", "check", "write"])
    lm = model if isinstance(model, LoadedModel) else load_model(
        model, opts.kind, seed=opts.seed, weights=opts.weights)
    prec.check_inputs(lm.input_names)
    steps.done("load")
    trace = _torch_export(lm, opts, _trace_example(opts))
    steps.done("export")
    proto, simplified, passes = _graph(trace.program, opts, steps)
    check_onnx(proto)
    precision_record: dict[str, Any] = {"precision": "fp32"}
    if prec.precision != "fp32":
        proto, precision_record = lower_precision(proto, prec, trace.size, trace.batch)
        check_onnx(proto)
    steps.done("check")
    classes = _classes(lm)
    _set_metadata(proto, lm, classes)
    ins, outs = graph_io(proto)
    if [i["name"] for i in ins] != list(lm.input_names) or [
            o["name"] for o in outs] != list(lm.output_names):
        raise NasfcosError("exported graph has unexpected input/output names "
                           f"{[i['name'] for i in ins]} -> {[o['name'] for o in outs]}")
    manifest = _write(out, proto, {
        "source": _source_record(lm, out.resolve().parent),
        "genotype": {"name": lm.info["genotype_name"], "hash": lm.info["genotype_hash"]},
        "precision": precision_record, "options": lm.info.get("options", {}),
        "widths": {k: lm.info[k] for k in ("fpn_channels", "head_channels", "num_classes",
                                           "in_channels", "backbone")},
        "classes": classes,
        "export": {"opset": opts.opset, "size": list(trace.size), "batch": trace.batch,
                   "dynamic": opts.dynamic, "dynamic_batch": trace.dynamic_batch,
                   "dynamic_ranges": trace.ranges, "simplified": simplified,
                   "graph_passes": passes, "exporter": "torch.onnx.export(dynamo=True)"},
        "tools": tool_versions(),
        "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")})
    steps.done("write")
    return ExportResult(onnx_path=out, manifest_path=manifest_path_for(out), manifest=manifest,
                        seconds=steps.seconds)


def convert_onnx(src: str | Path, out: str | Path, opts: PrecisionOptions) -> dict[str, Any]:
    """Lower an fp32 ONNX export (with its manifest) to ``opts.precision``; writes ``out``
    and ``out.json`` atomically and returns the new manifest.

    The example size (int8 calibration) and batch come from the source manifest.
    """
    import onnx

    src, out = Path(src), Path(out)
    if out.suffix != ".onnx":
        raise NasfcosError(f"{out}: the output file must end in .onnx")
    if src.resolve() == out.resolve():
        raise NasfcosError(f"{out}: would overwrite the fp32 source; pick another output")
    writable_path(manifest_path_for(out))  # e.g. a folder named like the manifest: before the work
    man = verified_manifest(src)
    if man.precision != "fp32":
        raise NasfcosError(f"{src} is already {man.precision}; lower precision from an fp32 "
                           "export")
    try:
        model = onnx.load(str(src))
    except Exception as exc:
        raise NasfcosError(f"{src}: not a readable ONNX file ({first_line(exc)})") from exc
    ins, _ = graph_io(model)
    opts.check_inputs([i["name"] for i in ins])
    batch_dim = ins[0]["shape"][0] if ins and ins[0]["shape"] else 1
    batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else 1
    model, record = lower_precision(model, opts, man.size or (800, 800), batch)
    check_onnx(model)
    new = {**man.raw, "source": man.rebased_source(out.parent),
           "precision": {**record, "from": {
               "file": os.path.relpath(src.resolve(), out.resolve().parent),
               "sha256": man.sha256}}}
    return _write(out, model, new)


def verify_manifest(path: str | Path, digest: str | None = None) -> list[str]:
    """Problems found comparing an artifact with its manifest ([] when they match).

    Checks the name, sha256 (``digest``: the file's, when already computed) and size, and
    for ONNX files the input/output names and shapes.
    """
    path = Path(path)
    man = load_manifest(path)
    if not path.is_file():
        return [f"{path}: missing"]
    problems = man.mismatch(path, digest or sha256_file(path))
    if man.type == "onnx":
        import onnx

        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:
            return [*problems, f"cannot read ONNX ({type(exc).__name__})"]
        ins, outs = graph_io(model)
        if ins != man.inputs:
            problems.append("inputs differ from the manifest")
        if outs != man.outputs:
            problems.append("outputs differ from the manifest")
        problems += _static_dims_problems(man, ins)
    return problems


def _static_dims_problems(man: Manifest, ins: list[dict[str, Any]]) -> list[str]:
    """Where the manifest's export batch/size disagree with the graph's static input dims
    (compared only where the graph's dims are fixed numbers)."""
    shape = list(ins[0]["shape"]) if ins else []
    if len(shape) != 4:
        return []
    out = []
    if isinstance(shape[0], int) and shape[0] > 0 and man.batch != shape[0]:
        out.append(f"export.batch {man.batch} but the graph's batch is {shape[0]}")
    if (ins[0]["name"] == "images" and man.size is not None
            and all(isinstance(d, int) for d in shape[2:])
            and tuple(man.size) != (shape[2], shape[3])):
        out.append(f"export.size {man.size[0]}x{man.size[1]} but the graph's images are "
                   f"{shape[2]}x{shape[3]}")
    return out


def verified_manifest(path: str | Path) -> Manifest:
    """The artifact's manifest, only if the artifact still matches it (a one-line error
    listing the differences otherwise: nothing the manifest says is trusted then)."""
    problems = verify_manifest(path)
    if problems:
        raise NasfcosError(f"{path}: does not match its manifest: {'; '.join(problems)}")
    return load_manifest(path)


def export_summary(result: ExportResult) -> dict[str, Any]:
    """JSON-friendly summary of an export (for the command line)."""
    m = result.manifest
    return {"onnx": str(result.onnx_path), "manifest": str(result.manifest_path),
            "sha256": m["artifact"]["sha256"], "bytes": m["artifact"]["bytes"],
            "kind": m["source"]["kind"], "opset": m["export"]["opset"],
            "dynamic": m["export"]["dynamic"], "simplified": m["export"]["simplified"],
            "deform_convs": m["export"]["ops"].get("DeformConv", 0),
            "inputs": m["inputs"], "outputs": m["outputs"],
            "seconds": {k: round(v, 2) for k, v in result.seconds.items()}}


__all__ = ["DEFAULT_OPSET", "MIN_OPSET", "ExportOptions", "ExportResult", "check_onnx",
           "convert_onnx", "deformconv_problems", "export_onnx", "export_summary", "graph_io",
           "load_manifest", "manifest_path_for", "simplify_onnx", "tool_versions",
           "verified_manifest", "verify_manifest", "weights_classes"]
