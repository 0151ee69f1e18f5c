"""Reduced precision built into the ONNX file: FP16 casts and INT8 Q/DQ pairs.

TensorRT 11 builds only strongly typed networks (10.x does too with the ``STRONGLY_TYPED``
creation flag): the precision of every tensor is the one the ONNX file gives it, so FP16
and INT8 are decided here, at export time, and the same file runs in ONNX Runtime (where
``check`` and ``bench`` measure it on CPU) and in TensorRT.

* **fp16** (:func:`convert_fp16`): a float16 pass over the graph, graph inputs and
  outputs kept float32 (Cast nodes at the boundary).  Ops in :data:`FP16_BLOCK_OPS` stay
  float32: the post-processing (``TopK``, ``NonMaxSuppression``: score ties and
  thresholds must rank as in float32), the box decoding (``Exp`` of the regression,
  overflowing half at ~11 and coarse at the box sizes it produces), the normalisation
  (``InstanceNormalization``, which is GroupNorm in the exported head: a variance over
  many elements, where half loses the small group variances) and ``Resize``.  The list
  was measured on the compiled detectors (see the README, "Precision").
* **int8** (:func:`quantize_int8`): explicit QuantizeLinear/DequantizeLinear pairs with
  ``onnxruntime.quantization.quantize_static``, calibrated on real images.  Only
  ``Conv`` is quantized.  ``DeformConv`` stays float32 and so do the convolutions that
  predict its offsets and mask: a sampling offset rounded to 1/127 of its range moves the
  taps by a sizeable fraction of a pixel, and neither ONNX Runtime nor TensorRT has an
  INT8 deformable convolution kernel, so Q/DQ around it would only add casts.

  Two targets: ``tensorrt`` (symmetric int8 activations, per-channel symmetric int8
  weights, no output or bias quantization: Q/DQ only on the inputs of each convolution,
  where TensorRT fuses them into the int8 kernel; a ``DeformConv`` reading a tensor that a
  quantized conv also reads gets the float tensor, not its Q/DQ copy) and ``cpu`` (uint8 activations with
  int8 per-channel weights, U8S8, the fast path of ONNX Runtime's x86 kernels; TensorRT
  cannot build it because its INT8 is symmetric-only).

Calibration images come from a folder (``--calib DIR``, every image file below it) or a
COCO data folder (``--data DIR``, its ``train`` split, else ``val``); the first
``calib_images`` files in sorted order are used, letterboxed like ``nasfcos eval`` does
(short side to the input size, long side capped, zero padding), RGB in [0, 1].
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nasfcos.errors import FieldError, NasfcosError, first_line
from nasfcos.images import IMAGE_SUFFIXES, read_image
from nasfcos.runtime.manifest import PRECISIONS

CALIB_METHODS: tuple[str, ...] = ("minmax", "entropy", "percentile")
INT8_TARGETS: tuple[str, ...] = ("tensorrt", "cpu")
#: Ops kept in float32 by the fp16 pass (see the module docstring and the README).
FP16_BLOCK_OPS: tuple[str, ...] = ("TopK", "NonMaxSuppression", "Exp", "InstanceNormalization",
                                   "Resize", "RoiAlign", "Range", "CumSum")
#: Op types quantized by the int8 pass.
INT8_OPS: tuple[str, ...] = ("Conv",)


@dataclass
class PrecisionOptions:
    """How to lower the precision of an fp32 ONNX graph.

    ``calib``: folder of calibration images; ``data``: COCO data folder (images of its
    train split, else val) - one of the two for int8.  ``calib_images``: how many images
    (the first N in sorted order; fewer available is an error).
    """

    precision: str = "fp32"
    calib: Path | None = None
    data: Path | None = None
    calib_images: int = 32
    calib_method: str = "minmax"
    int8_target: str = "tensorrt"

    def __post_init__(self) -> None:
        """The options' rules, checked once when they are made (errors name the field)."""
        if self.precision not in PRECISIONS:
            raise FieldError("precision", f"unknown precision {self.precision!r} (have "
                             f"{', '.join(PRECISIONS)})")
        if self.precision != "int8":
            if self.calib is not None or self.data is not None:
                raise FieldError("calib", "calibration images calibrate int8 only (precision "
                                 f"is {self.precision})")
            return
        if self.calib_method not in CALIB_METHODS:
            raise FieldError("calib_method", f"unknown calibration method "
                             f"{self.calib_method!r} (have {', '.join(CALIB_METHODS)})")
        if self.int8_target not in INT8_TARGETS:
            raise FieldError("int8_target", f"unknown int8 target {self.int8_target!r} (have "
                             f"{', '.join(INT8_TARGETS)})")
        if isinstance(self.calib_images, bool) or not isinstance(self.calib_images, int) \
                or self.calib_images < 1:
            raise FieldError("calib_images", f"must be an integer >= 1, got {self.calib_images!r}")
        if (self.calib is None) == (self.data is None):
            raise FieldError("calib", "int8 needs calibration images: a folder of images "
                             "(calib) or a COCO data folder (data), one of the two")

    def check_inputs(self, input_names: Sequence[str]) -> None:
        """The rule that needs the model: int8 calibration feeds images to a detector."""
        if self.precision == "int8" and list(input_names) != ["images"]:
            raise NasfcosError(f"int8 calibration feeds images, but the model's inputs are "
                               f"{', '.join(input_names)} (export the detector)")


def calibration_files(opts: PrecisionOptions) -> list[Path]:
    """The calibration image files (sorted, the first ``calib_images``); checks that there
    are enough and that each one decodes."""
    if opts.data is not None:
        from nasfcos.fcos.data import load_coco

        data = Path(opts.data)
        split = next((s for s in ("train", "val") if (data / f"{s}.json").is_file()), None)
        if split is None:
            raise NasfcosError(f"{data}: no train.json or val.json (not a COCO data folder)")
        coco = load_coco(data / f"{split}.json")
        files = [data / "images" / coco.imgs[i]["file_name"] for i in sorted(coco.imgs)]
        source = f"{data} ({split} split)"
    else:
        root = Path(opts.calib)  # type: ignore[arg-type]
        if not root.is_dir():
            raise NasfcosError(f"{root}: no such calibration folder")
        files = sorted(p for p in root.rglob("*") if p.is_file()
                       and p.suffix.lower() in IMAGE_SUFFIXES)
        source = str(root)
    if not files:
        raise NasfcosError(f"{source}: no calibration images ({', '.join(IMAGE_SUFFIXES)})")
    if len(files) < opts.calib_images:
        raise FieldError("calib_images", f"{source}: {len(files)} image(s), too few for "
                         f"{opts.calib_images} (add images or lower it)")
    files = files[:opts.calib_images]
    for f in files:
        read_image(f, what="calibration image")
    return files


def file_list_sha256(files: Sequence[Path]) -> str:
    """sha256 of the calibration file list: one ``name<TAB>sha256-of-content`` line each."""
    from nasfcos.io import sha256_file

    h = hashlib.sha256()
    for f in files:
        h.update(f"{Path(f).name}\t{sha256_file(f)}\n".encode())
    return h.hexdigest()


def load_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    """``[3, H, W]`` float32 RGB in [0, 1]: letterboxed into ``size`` like ``nasfcos eval``."""
    import torch
    from PIL import Image

    from nasfcos.fcos.data import pad_batch, resize_scale

    img = read_image(path, what="calibration image")
    w0, h0 = img.size
    side = min(size)
    scale = resize_scale(h0, w0, side, max(size))
    nw, nh = max(1, round(w0 * scale)), max(1, round(h0 * scale))
    nw, nh = min(nw, size[1]), min(nh, size[0])
    if (nw, nh) != (w0, h0):
        img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    arr = torch.from_numpy(np.asarray(img, np.float32).transpose(2, 0, 1) / 255.0)
    return pad_batch([arr], 1, size=size)[0].numpy()


def _node_outputs_feeding(model: Any, op_type: str, input_slots: Sequence[int]) -> set[str]:
    """Names of the nodes whose outputs reach ``op_type``'s inputs at ``input_slots``,
    walking back through shape/elementwise glue (Slice, Split, Sigmoid, ...) to the first
    Conv on each path."""
    producer = {o: n for n in model.graph.node for o in n.output}
    found: set[str] = set()
    for node in model.graph.node:
        if node.op_type != op_type:
            continue
        stack = [node.input[i] for i in input_slots if i < len(node.input) and node.input[i]]
        seen: set[str] = set()
        while stack:
            t = stack.pop()
            if t in seen or t not in producer:
                continue
            seen.add(t)
            p = producer[t]
            if p.op_type == "Conv":
                found.add(p.name)
            else:
                stack.extend(i for i in p.input if i)
    return found


#: Ops whose float inputs or attributes have a fixed type (never converted).
_FP32_ONLY_OPS = frozenset({"Cast", "CastLike", "ConstantOfShape", "Constant", "Shape", "Size",
                            "RandomNormal", "RandomUniform", "RandomNormalLike",
                            "RandomUniformLike", "EyeLike", "Range", "Resize", "Upsample"})


def _unquantize_inputs(model: Any, op_type: str) -> int:
    """Rewire ``op_type`` nodes that read ``DQ(Q(x))`` to read the float ``x`` (the
    quantizer shares one Q/DQ pair among all readers of a tensor); drops Q/DQ left unused.
    Returns the number of inputs rewired."""
    producer = {o: n for n in model.graph.node for o in n.output}
    rewired = 0
    for node in model.graph.node:
        if node.op_type != op_type:
            continue
        for i, t in enumerate(node.input):
            dq = producer.get(t)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == \
                "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[i] = q.input[0]
                rewired += 1
    used = {t for n in model.graph.node for t in n.input} | {o.name for o in model.graph.output}
    changed = True
    while changed:
        keep = [n for n in model.graph.node
                if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
                or any(o in used for o in n.output)]
        changed = len(keep) != len(model.graph.node)
        if changed:
            del model.graph.node[:]
            model.graph.node.extend(keep)
            used = {t for n in model.graph.node for t in n.input} | {
                o.name for o in model.graph.output}
    return rewired


def convert_fp16(model: Any, block_ops: Sequence[str] = FP16_BLOCK_OPS) -> Any:
    """fp32 ONNX -> mixed fp16: graph inputs/outputs stay float32, ``block_ops`` stay float32.

    A node runs in half precision when its op is not blocked and it reads or writes a
    float tensor; a Cast is inserted wherever a tensor crosses between the float32 and the
    float16 parts (one per tensor and direction), float initializers read by half nodes are
    stored as float16 (clipped to +-65504), and each float output gets a Cast back to
    float32.  (onnxconverter-common's float16 pass was tried first: on these graphs it
    leaves outputs of blocked multi-output nodes such as ``TopK`` dangling or mistyped.)
    """
    import onnx
    from onnx import TensorProto, helper

    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for n in model.graph.node for a in n.attribute):
        raise NasfcosError("fp16: graphs with control flow (If/Loop/Scan) are not supported")
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    g = model.graph
    FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
    types: dict[str, int] = {}
    for vi in [*g.input, *g.output, *g.value_info]:
        types[vi.name] = vi.type.tensor_type.elem_type
    inits = {i.name: i for i in g.initializer}
    for name, init in inits.items():
        types[name] = init.data_type
    blocked = set(block_ops) | _FP32_ONLY_OPS

    def is_float(t: str) -> bool:
        return bool(t) and types.get(t) == FLOAT

    half_nodes = [n.op_type not in blocked and any(is_float(t) for t in [*n.input, *n.output])
                  for n in g.node]
    home: dict[str, int] = {}  # precision each float tensor is produced in
    for n, half in zip(g.node, half_nodes, strict=True):
        for t in n.output:
            if is_float(t):
                home[t] = HALF if half else FLOAT
    for vi in g.input:
        if is_float(vi.name):
            home[vi.name] = FLOAT
    half_inits = _half_initializers(g, inits, types, half_nodes, home)
    casts: dict[tuple[str, int], str] = {}
    nodes: list[Any] = []

    def cast(t: str, to: int) -> str:
        key = (t, to)
        if key not in casts:
            casts[key] = f"{t}__to_{'fp16' if to == HALF else 'fp32'}"
            nodes.append(helper.make_node("Cast", [t], [casts[key]], to=to,
                                          name=f"cast_{casts[key]}"))
        return casts[key]

    for n, half in zip(list(g.node), half_nodes, strict=True):
        want = HALF if half else FLOAT
        new_inputs = []
        for t in n.input:
            if half and t in half_inits:
                t = half_inits[t]
            elif is_float(t) and t in home and home[t] != want:
                t = cast(t, want)
            new_inputs.append(t)
        n.input[:] = new_inputs
        nodes.append(n)
    _replace_nodes(g, nodes, home)
    return onnx.shape_inference.infer_shapes(model, data_prop=True)


def _half_initializers(g: Any, inits: dict[str, Any], types: dict[str, int],
                       half_nodes: list[bool], home: dict[str, int]) -> dict[str, str]:
    """float16 copies (clipped to +-65504) of the float initializers half nodes read:
    ``{name: copy's name}``."""
    from onnx import TensorProto, numpy_helper

    half_inits: dict[str, str] = {}
    for n, half in zip(g.node, half_nodes, strict=True):
        for t in n.input if half else ():
            if t in inits and types.get(t) == TensorProto.FLOAT and t not in half_inits:
                arr = numpy_helper.to_array(inits[t]).astype(np.float32)
                arr = np.clip(arr, -65504.0, 65504.0).astype(np.float16)
                half_inits[t] = t + "__fp16"
                g.initializer.append(numpy_helper.from_array(arr, half_inits[t]))
                home[half_inits[t]] = TensorProto.FLOAT16
    return half_inits


def _replace_nodes(g: Any, nodes: list[Any], home: dict[str, int]) -> None:
    """The graph's nodes become ``nodes``; graph outputs produced in half get their
    producer's tensor renamed and a Cast back to float32; unused initializers go."""
    from onnx import TensorProto, helper

    for vi in g.output:
        if home.get(vi.name) == TensorProto.FLOAT16:
            low = vi.name + "__fp16"
            for n in nodes:
                n.output[:] = [low if x == vi.name else x for x in n.output]
                n.input[:] = [low if x == vi.name else x for x in n.input]
            nodes.append(helper.make_node("Cast", [low], [vi.name], to=TensorProto.FLOAT,
                                          name=f"cast_{vi.name}__to_fp32"))
    del g.node[:]
    g.node.extend(nodes)
    used = {t for n in g.node for t in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    del g.value_info[:]


class _ImageReader:
    """``CalibrationDataReader``: one letterboxed image per call, batch ``batch``."""

    def __init__(self, files: Sequence[Path], size: tuple[int, int], batch: int) -> None:
        self.files, self.size, self.batch = list(files), size, batch
        self.i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.files):
            return None
        chunk = self.files[self.i:self.i + self.batch]
        self.i += len(chunk)
        arrs = [load_image(f, self.size) for f in chunk]
        arrs += [arrs[-1]] * (self.batch - len(arrs))  # a static batch must stay full
        return {"images": np.stack(arrs)}

    def rewind(self) -> None:
        self.i = 0


def quantize_int8(model: Any, files: Sequence[Path], opts: PrecisionOptions,
                  size: tuple[int, int], batch: int = 1) -> tuple[Any, dict[str, Any]]:
    """fp32 ONNX detector -> Q/DQ int8 (see the module docstring); returns (model, info)."""
    from onnxruntime.quantization import CalibrationMethod

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    # Conv nodes need names to be excluded by name.
    for i, n in enumerate(model.graph.node):
        if not n.name:
            n.name = f"{n.op_type}_{i}"
    offset_convs = sorted(_node_outputs_feeding(model, "DeformConv", (1, 4)))
    trt = opts.int8_target == "tensorrt"
    extra: dict[str, Any] = {"WeightSymmetric": True, "ActivationSymmetric": trt}
    if trt:
        extra.update({"QuantizeBias": False, "OpTypesToExcludeOutputQuantization": ["Conv"],
                      "DedicatedQDQPair": True})
    if opts.calib_method == "percentile":
        extra["CalibPercentile"] = 99.999
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_static logs "consider pre-processing" warnings
    try:
        return _quantize(model, files, opts, size, batch, offset_convs, extra, methods)
    finally:
        root.setLevel(level)


def _quantize(model: Any, files: Sequence[Path], opts: PrecisionOptions, size: tuple[int, int],
              batch: int, offset_convs: list[str], extra: dict[str, Any],
              methods: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from nasfcos.progress import quiet

    trt = opts.int8_target == "tensorrt"
    with tempfile.TemporaryDirectory(prefix="nasfcos-int8-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(src))
        try:
            with quiet():
                quantize_static(
                    str(src), str(dst), _ImageReader(files, size, batch),
                    quant_format=QuantFormat.QDQ, op_types_to_quantize=list(INT8_OPS),
                    per_channel=True, reduce_range=False,
                    activation_type=QuantType.QInt8 if trt else QuantType.QUInt8,
                    weight_type=QuantType.QInt8, nodes_to_exclude=offset_convs,
                    calibrate_method=methods[opts.calib_method], extra_options=extra)
        except NasfcosError:
            raise
        except Exception as exc:
            raise NasfcosError(f"int8 calibration failed: {type(exc).__name__}: "
                               f"{first_line(exc, 300)}") from exc
        out = onnx.load(str(dst))
    if trt:
        _unquantize_inputs(out, "DeformConv")
    info = {"excluded_convs": len(offset_convs), "quantized_ops": list(INT8_OPS),
            "activations": "int8 symmetric" if trt else "uint8 asymmetric",
            "weights": "int8 symmetric per-channel", "bias": "float32" if trt else "int32",
            "deform_conv": "float32 (and the convs predicting its offsets and mask)"}
    return out, info


def lower_precision(model: Any, opts: PrecisionOptions, size: tuple[int, int],
                    batch: int = 1) -> tuple[Any, dict[str, Any]]:
    """Apply ``opts`` to an fp32 ONNX model; returns (model, manifest ``precision`` block).

    ``opts`` were validated when made (:class:`PrecisionOptions`).
    """
    record: dict[str, Any] = {"precision": opts.precision}
    if opts.precision == "fp16":
        record.update({"method": "nasfcos fp16 pass, io float32",
                       "blocked_ops": list(FP16_BLOCK_OPS)})
        return convert_fp16(model), record
    if opts.precision == "int8":
        files = calibration_files(opts)
        model, info = quantize_int8(model, files, opts, size, batch)
        record.update({"method": opts.calib_method, "target": opts.int8_target,
                       "format": "QDQ", **info,
                       "calibration": {"source": str(opts.data or opts.calib),
                                       "kind": "coco" if opts.data else "folder",
                                       "count": len(files), "size": list(size),
                                       "files_sha256": file_list_sha256(files)}})
        return model, record
    return model, record


def qdq_summary(model: Any) -> dict[str, Any]:
    """What the Q/DQ structure of a model is: quantized conv count, float convs, zero points
    (all zero = symmetric) and the dtypes of the quantized tensors."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    q_convs, f_convs = 0, 0
    for n in model.graph.node:
        if n.op_type != "Conv":
            continue
        srcs = [producer.get(i) for i in n.input[:2]]
        if all(s is not None and s.op_type == "DequantizeLinear" for s in srcs):
            q_convs += 1
        else:
            f_convs += 1
    zps: list[np.ndarray] = []
    dtypes: set[str] = set()
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2:
            zp = inits.get(n.input[2])
            if zp is not None:
                a = numpy_helper.to_array(zp)
                zps.append(a.ravel())
                dtypes.add(a.dtype.name)
    allzp = np.concatenate(zps) if zps else np.zeros(0)
    return {"quantized_convs": q_convs, "float_convs": f_convs,
            "symmetric": bool(zps) and not np.any(allzp != 0), "dtypes": sorted(dtypes),
            "qdq_nodes": sum(n.op_type in ("QuantizeLinear", "DequantizeLinear")
                             for n in model.graph.node)}


__all__ = ["CALIB_METHODS", "FP16_BLOCK_OPS", "INT8_OPS", "INT8_TARGETS", "PRECISIONS",
           "PrecisionOptions", "calibration_files", "convert_fp16", "file_list_sha256",
           "load_image", "lower_precision", "qdq_summary",
           "quantize_int8"]
