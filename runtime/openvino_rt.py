"""OpenVINO on CPU: the project's ONNX export read by OpenVINO, in fp32, bf16 or int8.

OpenVINO's ONNX reader has no rule for ``DeformConv`` (opset 19); :func:`deform_conv_rule`
is the project's own: ONNX ``DeformConv(X, W, offset, B, mask)`` becomes OpenVINO's
``DeformableConvolution`` (opset 8) plus a bias ``Add``.  Both take offsets as
``[N, offset_group * kH * kW * 2, oH, oW]`` with (y, x) pairs per tap and a mask of
``[N, offset_group * kH * kW, oH, oW]``; ``bilinear_interpolation_pad=True`` makes a tap
that falls up to one pixel outside the map interpolate with zeros beyond the border, as
ONNX (and torchvision) do, instead of reading nothing.

Precisions (:class:`OvRunner` ``precision``):

* ``fp32``: ``INFERENCE_PRECISION_HINT f32``.
* ``bf16``: ``INFERENCE_PRECISION_HINT bf16``, only where the CPU reports ``BF16`` in its
  optimisation capabilities (AVX512_BF16 or AMX); :func:`runtime_precisions` reads the
  compiled model's runtime graph, so the report says how many convolutions really ran bf16.
* ``int8``: NNCF post-training quantization of the fp32 model, calibrated on the same
  images as ``nasfcos export --precision int8`` (``--calib DIR`` or ``--data DIR``,
  ``--calib-images N``, letterboxed by :func:`nasfcos.runtime.precision.load_image`);
  ``DeformableConvolution`` and the convolutions predicting its offsets and mask stay in
  float (as in the ONNX int8 pass), plus any node named in ``keep_float``.  A Q/DQ int8
  ONNX file (``export --precision int8``) is also read as it is and runs in int8.

``openvino`` and ``nncf`` are the optional extra ``[openvino]``; they are imported lazily.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nasfcos.errors import BackendUnavailable, FieldError, NasfcosError, first_line
from nasfcos.runtime.artifact import form_of
from nasfcos.runtime.manifest import Manifest
from nasfcos.runtime.runner_base import Runner

OV_PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "int8")
INSTALL_HINT = "pip install 'nasfcos[openvino]'"


def require_openvino(nncf: bool = False) -> Any:
    """The ``openvino`` module, or :class:`BackendUnavailable` naming the extra to install."""
    try:
        import openvino as ov
    except ImportError as exc:
        raise BackendUnavailable(f"openvino backend: the openvino package is not installed "
                                 f"({INSTALL_HINT})") from exc
    if nncf:
        try:
            import nncf as _nncf  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailable(f"openvino int8 needs nncf, which is not installed "
                                     f"({INSTALL_HINT})") from exc
    return ov


def openvino_status(nncf: bool = False) -> str | None:
    """None when the OpenVINO backend (and NNCF when ``nncf``) can be used, else the reason."""
    try:
        require_openvino(nncf)
    except BackendUnavailable as exc:
        return str(exc)
    return None


def _ints(ctx: Any, name: str, default: list[int]) -> list[int]:
    return [int(v) for v in ctx.get_attribute(name)] if ctx.has_attribute(name) else default


def deform_conv_rule(ctx: Any) -> list[Any]:
    """ONNX ``DeformConv`` -> OpenVINO ``DeformableConvolution`` (+ bias ``Add``)."""
    import openvino.opset8 as ops

    n_in = ctx.get_input_size()
    x, w, offset = ctx.get_input(0), ctx.get_input(1), ctx.get_input(2)
    k = w.get_partial_shape()
    nd = 2
    if k.rank.is_static and k.rank.get_length() >= 3:
        nd = k.rank.get_length() - 2
    pads = _ints(ctx, "pads", [0] * 2 * nd)
    mask = ctx.get_input(4) if n_in > 4 else None
    if mask is not None and mask.get_node().get_type_name() == "Constant" and \
            mask.get_partial_shape().rank.is_static and mask.get_partial_shape().rank.get_length() == 0:
        mask = None  # an omitted optional input
    y = ops.deformable_convolution(
        x, offset, w, strides=_ints(ctx, "strides", [1] * nd), pads_begin=pads[:nd],
        pads_end=pads[nd:], dilations=_ints(ctx, "dilations", [1] * nd), mask=mask,
        group=int(ctx.get_attribute("group")) if ctx.has_attribute("group") else 1,
        deformable_group=int(ctx.get_attribute("offset_group"))
        if ctx.has_attribute("offset_group") else 1,
        bilinear_interpolation_pad=True)
    if n_in > 3:
        bias = ops.reshape(ctx.get_input(3), ops.constant(np.array([1, -1] + [1] * nd, np.int64)),
                           special_zero=False)
        y = ops.add(y, bias)
    return [y.output(0)]


def read_onnx(path: str | Path) -> tuple[Any, Any]:
    """(core, model): ``path`` (ONNX) read by OpenVINO with :func:`deform_conv_rule`."""
    ov = require_openvino()
    from openvino.frontend import ConversionExtension

    core = ov.Core()
    core.add_extension(ConversionExtension("DeformConv", deform_conv_rule))
    try:
        model = core.read_model(str(path))
    except Exception as exc:
        raise NasfcosError(f"{path}: OpenVINO cannot read it ({first_line(exc, 300)})") from exc
    return core, model


def cpu_supports_bf16(core: Any) -> bool:
    """Whether the CPU plugin reports native bf16 (AVX512_BF16 / AMX)."""
    try:
        return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # an old plugin without the property: not known to support it
        return False


def runtime_precisions(compiled: Any, op_types: Sequence[str] = ("Convolution",)) -> dict[str, int]:
    """How many nodes of ``op_types`` the compiled model runs in each precision
    (the ``runtimePrecision`` of its runtime graph), e.g. ``{"bf16": 131, "f32": 1}``."""
    def text(rt: Any, key: str) -> str:
        v = rt[key] if key in rt else "?"
        return v.astype(str) if hasattr(v, "astype") else str(v)

    counts: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        if text(rt, "layerType") not in op_types:
            continue
        prec = text(rt, "runtimePrecision")
        counts[prec] = counts.get(prec, 0) + 1
    return dict(sorted(counts.items()))


def deform_side_convs(model: Any) -> list[str]:
    """Friendly names of the ``Convolution`` nodes (and their bias adds) that feed a
    ``DeformableConvolution``'s offsets or mask, walking back through glue ops."""
    found: set[str] = set()
    for op in model.get_ordered_ops():
        if op.get_type_name() != "DeformableConvolution":
            continue
        stack = [op.input_value(i).get_node() for i in (1, 3) if i < op.get_input_size()]
        seen: set[str] = set()
        while stack:
            node = stack.pop()
            name = node.get_friendly_name()
            if name in seen or node.get_type_name() in ("Constant", "Parameter"):
                continue
            seen.add(name)
            if node.get_type_name() == "Convolution":
                found.add(name)
                continue
            if node.get_type_name() == "Add":  # a conv's bias add: keep it float too
                found.add(name)
            stack.extend(node.input_value(i).get_node() for i in range(node.get_input_size()))
    return sorted(found)


def quantize_nncf(model: Any, files: Sequence[Path], size: tuple[int, int], batch: int = 1,
                  keep_float: Sequence[str] = ()) -> tuple[Any, dict[str, Any]]:
    """NNCF post-training int8 of an OpenVINO detector model calibrated on ``files``."""
    require_openvino(nncf=True)
    import logging

    import nncf

    from nasfcos.runtime.precision import load_image

    def items() -> list[np.ndarray]:
        out = []
        for i in range(0, len(files), batch):
            arrs = [load_image(f, size) for f in files[i:i + batch]]
            arrs += [arrs[-1]] * (batch - len(arrs))
            out.append(np.stack(arrs))
        return out

    side = deform_side_convs(model)
    names = sorted(set(side) | set(keep_float))
    scope = nncf.IgnoredScope(names=names, types=["DeformableConvolution"], validate=False)
    logging.getLogger("nncf").setLevel(logging.ERROR)
    try:
        q = nncf.quantize(model, nncf.Dataset(items()), subset_size=len(files),
                          ignored_scope=scope, preset=nncf.QuantizationPreset.PERFORMANCE)
    except Exception as exc:
        raise NasfcosError(f"openvino int8 (NNCF) failed: {first_line(exc, 300)}") from exc
    return q, {"method": "nncf post-training (min-max)", "kept_float": names,
               "deform_conv": "float (and the convs predicting its offsets and mask)",
               "nncf": getattr(nncf, "__version__", "?")}


def sensitivity_groups(model: Any) -> dict[str, list[str]]:
    """Candidate layer groups to keep in float for int8 (friendly names): the first
    convolution (the stem, reading raw pixels) and the predictors (convolutions with no
    convolution after them: class, box and centerness outputs)."""
    convs = [op for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"]
    consumers: dict[str, list[Any]] = {}
    for op in model.get_ordered_ops():
        for i in range(op.get_input_size()):
            src = op.input_value(i).get_node().get_friendly_name()
            consumers.setdefault(src, []).append(op)

    def feeds_conv(op: Any) -> bool:
        stack, seen = list(consumers.get(op.get_friendly_name(), [])), set()
        while stack:
            nxt = stack.pop()
            if nxt.get_friendly_name() in seen:
                continue
            seen.add(nxt.get_friendly_name())
            if nxt.get_type_name() in ("Convolution", "DeformableConvolution",
                                       "GroupConvolution"):
                return True
            stack.extend(consumers.get(nxt.get_friendly_name(), []))
        return False

    groups = {"stem": [convs[0].get_friendly_name()] if convs else [],
              "predictors": [c.get_friendly_name() for c in convs if not feeds_conv(c)]}
    return {k: v for k, v in groups.items() if v}


class OvRunner(Runner):
    """OpenVINO CPU runner on an ONNX file (a ``model.py`` is exported on the fly).

    ``precision``: ``fp32``, ``bf16`` (refused where the CPU has no native bf16) or ``int8``
    (NNCF with ``calib``, a :class:`~nasfcos.runtime.precision.PrecisionOptions`; an int8
    Q/DQ ONNX file runs as it is with ``fp32``).  ``threads``: inference threads (None:
    OpenVINO's default); one stream, latency hint.
    """

    backend = "openvino"

    def __init__(self, model: str | Path, device: str = "cpu", *, threads: int | None = None,
                 precision: str = "fp32", calib: Any = None, keep_float: Sequence[str] = (),
                 export: dict[str, Any] | None = None, manifest: Any = None) -> None:
        super().__init__()
        require_openvino(nncf=precision == "int8")
        if device != "cpu":
            raise BackendUnavailable(f"openvino: runs on the cpu device here, not {device!r}")
        if precision not in OV_PRECISIONS:
            raise NasfcosError(f"openvino: unknown precision {precision!r} (have "
                               f"{', '.join(OV_PRECISIONS)})")
        if precision == "int8":
            if calib is None:
                raise FieldError("calib", "openvino int8 needs calibration images: a folder of "
                                 "images (calib) or a COCO data folder (data)")
            calib.check_inputs(["images"])
        t0 = time.perf_counter()
        path = Path(model)
        if form_of(path) == "model.py":
            path = self._export(path, export).onnx_path
            manifest = Manifest.load(path)
        if not path.is_file():
            raise NasfcosError(f"{path}: no such ONNX file")
        core, ov_model = read_onnx(path)
        if precision == "bf16" and not cpu_supports_bf16(core):
            raise BackendUnavailable("openvino bf16: this CPU reports no native bf16 "
                                     "(AVX512_BF16 or AMX)")
        self.path, self.threads, self.precision = path, threads, precision
        shapes = [i.get_partial_shape() for i in ov_model.inputs]
        self._set_io([i.get_any_name() for i in ov_model.inputs],
                     [o.get_any_name() for o in ov_model.outputs],
                     [[d.get_length() if d.is_static else None for d in s]
                      if s.rank.is_static else None for s in shapes], path)
        self.quant: dict[str, Any] = {}
        if precision == "int8":
            ov_model = self._quantize(ov_model, calib, keep_float)
        self.ov_model = ov_model
        config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1",
                  "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = str(int(threads))
        try:
            self.compiled = core.compile_model(ov_model, "CPU", config)
        except Exception as exc:
            raise NasfcosError(f"{path}: OpenVINO cannot compile it ({first_line(exc, 300)})"
                               ) from exc
        self.request = self.compiled.create_infer_request()
        self._ranges = manifest.dynamic_ranges if manifest is not None else {}
        self._feed: list[np.ndarray] = []
        self.setup_seconds = time.perf_counter() - t0

    def _quantize(self, ov_model: Any, calib: Any, keep_float: Sequence[str]) -> Any:
        """``ov_model`` quantized to int8 by NNCF on ``calib``'s images (recorded in ``quant``)."""
        from nasfcos.runtime.precision import calibration_files

        files = calibration_files(calib)
        if self.input_size is None:
            raise NasfcosError("openvino int8 calibrates a static export: export with "
                               "--size HxW (not --dynamic)")
        ov_model, self.quant = quantize_nncf(ov_model, files, self.input_size,
                                             self.batch_size or 1, keep_float)
        self.quant["calibration"] = {"count": len(files), "source": str(calib.data or calib.calib)}
        return ov_model

    def bind(self, *arrays: np.ndarray) -> None:
        self._check_arity(arrays)
        self._check_ranges(arrays)
        self._feed = [np.ascontiguousarray(a) for a in arrays]

    def run(self) -> None:
        try:
            self.request.infer(self._feed, share_inputs=True)
        except Exception as exc:
            raise NasfcosError(f"openvino: {first_line(exc, 300)}") from exc

    def fetch(self) -> list[np.ndarray]:
        return [np.array(self.request.get_output_tensor(i).data)
                for i in range(len(self.output_names))]

    def save(self, xml: str | Path) -> Path:
        """Write the (possibly quantized) model as OpenVINO IR (``.xml`` + ``.bin``), weights
        as they are (no fp16 compression)."""
        ov = require_openvino()
        ov.save_model(self.ov_model, str(xml), compress_to_fp16=False)
        return Path(xml)

    def close(self) -> None:
        self._feed = []
        self.request = self.compiled = None
        super().close()

    def info(self) -> dict[str, Any]:
        ov = require_openvino()
        out: dict[str, Any] = {**super().info(), "threads": self.threads,
                               "precision": self.precision, "openvino": ov.__version__}
        if self.compiled is not None:
            hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
            out["inference_precision"] = getattr(hint, "get_type_name", hint.__str__)()
            out["conv_runtime_precision"] = runtime_precisions(self.compiled)
            out["deform_runtime_precision"] = runtime_precisions(self.compiled,
                                                                 ("DeformableConvolution",))
        if self.quant:
            out["int8"] = {k: v for k, v in self.quant.items() if k != "kept_float"}
            out["int8"]["kept_float"] = len(self.quant.get("kept_float", []))
        return out


__all__ = ["INSTALL_HINT", "OV_PRECISIONS", "OvRunner", "cpu_supports_bf16", "deform_conv_rule",
           "deform_side_convs", "openvino_status", "sensitivity_groups", "quantize_nncf", "read_onnx",
           "require_openvino", "runtime_precisions"]
