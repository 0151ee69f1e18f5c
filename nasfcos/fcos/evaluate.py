"""COCO mAP of any backend through one runner interface.

A *runner* is a callable ``runner(images) -> (boxes, scores, labels)`` taking a float32
numpy batch ``[N, 3, H, W]`` RGB in [0, 1] and returning numpy ``[N, D, 4]`` (x0, y0,
x1, y1 pixels of the input), ``[N, D]`` and ``[N, D]`` (labels 0..K-1; padded entries
have score 0 and label -1).  A runner may carry ``input_size = (H, W)`` (a fixed input
shape: images are resized to fit and padded to it) and ``batch_size`` (a fixed batch:
the last batch is padded with blank images).

:func:`make_runner` builds one for a compiled ``model.py`` (PyTorch) here; for
``.onnx`` / ``.engine`` it uses ``nasfcos.runtime.runners.make_runner`` when that module
exists and otherwise a local ONNX Runtime fallback.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nasfcos.errors import BackendUnavailable, NasfcosError
from nasfcos.fcos.data import CocoDetection, TransformConfig, pad_batch, resolve_split

Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]
METRIC_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl")


# --------------------------------------------------------------------------- models


def build_detector(module: Any, num_classes: int, **overrides: Any) -> nn.Module:
    """The ``Detector`` of a loaded model file with ``num_classes`` outputs."""
    if not hasattr(module, "Detector"):
        raise NasfcosError("the model file has no Detector: compile it with --detector")
    model = module.build(num_classes=num_classes, **overrides)
    if not hasattr(model, "forward_raw"):
        model = module.Detector(num_classes=num_classes, **overrides)
    return model


def load_weights_file(path: str | Path) -> dict[str, Any]:
    """A checkpoint / weights file written by ``nasfcos train`` (or a bare state_dict),
    as ``{"model": state_dict, ...meta}``."""
    path = Path(path)
    if not path.is_file():
        raise NasfcosError(f"{path}: no such weights file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise NasfcosError(f"{path}: not a readable PyTorch weights file ({exc})") from exc
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        out = obj
    elif isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        out = {"model": obj}
    else:
        raise NasfcosError(f"{path}: unrecognised weights file layout")
    check_finite_state(out["model"], str(path))
    return out


def check_finite_state(state: dict[str, Any], what: str) -> None:
    """One-line error when a floating tensor of ``state`` holds NaN or inf: refused at load,
    because non-finite deformable offsets crash torchvision's deform_conv2d."""
    for k, v in state.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise NasfcosError(f"{what}: {k} holds non-finite values (NaN or inf)")


class TorchRunner:
    """Runs a Detector (``forward(images) -> boxes, scores, labels``) on ``device``."""

    def __init__(self, model: nn.Module, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        boxes, scores, labels = self.model(torch.from_numpy(images).to(self.device))
        return boxes.float().cpu().numpy(), scores.float().cpu().numpy(), labels.cpu().numpy()


class OnnxRunner:
    """Local ONNX Runtime fallback (used until ``nasfcos.runtime`` provides runners)."""

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - a core dependency
            raise BackendUnavailable("onnxruntime is not installed") from exc
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as exc:
            raise NasfcosError(f"{path}: cannot load ONNX model ({exc})") from exc
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = list(inp.shape)
        self.batch_size: int | None = shape[0] if isinstance(shape[0], int) else None
        hw = shape[2:4]
        self.input_size: tuple[int, int] | None = (
            (hw[0], hw[1]) if all(isinstance(v, int) for v in hw) else None)

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        boxes, scores, labels = self.session.run(None, {self.input_name: images})[:3]
        return boxes, scores, labels


def _runtime_factory() -> Callable[..., Runner] | None:
    """``nasfcos.runtime.runners.make_runner`` when the runtime package provides it."""
    try:
        from nasfcos.runtime.runners import make_runner as runtime_make_runner
    except ImportError:
        return None
    return runtime_make_runner


def make_runner(path: str | Path, backend: str | None = None, device: str = "cpu",
                weights: str | Path | None = None, num_classes: int | None = None,
                model_kwargs: dict[str, Any] | None = None) -> Runner:
    """A runner for ``model.py`` (PyTorch, with ``weights`` from ``nasfcos train``),
    ``model.onnx`` or ``model.engine``.  ``num_classes`` is read from the weights file
    when not given."""
    path = Path(path)
    if path.suffix == ".py":
        from nasfcos.modelfile import load_model_file

        module = load_model_file(path)
        ckpt = load_weights_file(weights) if weights is not None else None
        k = num_classes or (int(ckpt["num_classes"]) if ckpt and "num_classes" in ckpt else None)
        k = k or getattr(module, "NUM_CLASSES", None)  # the compiled class count
        if k is None:
            raise NasfcosError("give --num-classes (or --weights from 'nasfcos train')")
        kwargs = dict(ckpt.get("model_kwargs", {})) if ckpt else {}
        kwargs.update(model_kwargs or {})
        model = build_detector(module, k, **kwargs)
        if ckpt is not None:
            try:
                model.load_state_dict(ckpt["model"])
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[0]
                raise NasfcosError(f"{weights}: weights do not fit {path.name} ({first})") from exc
        return TorchRunner(model, device)
    if path.suffix not in (".onnx", ".engine"):
        raise NasfcosError(f"{path}: expected model.py, .onnx or .engine")
    if not path.is_file():
        raise NasfcosError(f"{path}: no such model file")
    factory = _runtime_factory()
    if factory is not None:
        runner = factory(path, backend, device)
        if getattr(runner, "kind", "detector") == "decoder":
            raise NasfcosError(f"{path}: a decoder-only model; eval needs a detector "
                               "(compile and export with --detector)")
        return runner
    if path.suffix == ".engine" or backend == "tensorrt":
        raise BackendUnavailable("TensorRT engines need nasfcos.runtime (not available in this build)")
    return OnnxRunner(path, device)


# --------------------------------------------------------------------------- COCO metrics


@dataclass(frozen=True)
class EvalConfig:
    """Pre-processing for evaluation: resize like training (short side / max side)."""

    min_size: int = 800
    max_size: int = 1333
    batch_size: int = 8
    input_size: tuple[int, int] | None = None  # fixed (H, W); default: the runner's, if any


def coco_metrics(coco_gt: Any, detections: list[dict[str, Any]],
                 img_ids: list[int] | None = None) -> dict[str, Any]:
    """pycocotools bbox evaluation -> ``{AP, AP50, AP75, APs, APm, APl, summary}``.

    A metric is -1 where the set has no ground truth of that size (pycocotools'
    convention); with no detections every AP is 0.
    """
    from pycocotools.cocoeval import COCOeval

    ids = img_ids if img_ids is not None else sorted(coco_gt.getImgIds())
    if not detections:
        return {**{m: 0.0 for m in METRIC_NAMES}, "summary": "no detections"}
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        coco_dt = coco_gt.loadRes(detections)
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.params.imgIds = ids
        ev.evaluate()
        ev.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        ev.summarize()
    stats = [float(s) for s in ev.stats[:6]]
    return {**dict(zip(METRIC_NAMES, stats, strict=True)), "summary": summary.getvalue().rstrip()}


def detections_to_coco(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, image_id: int,
                       scale_xy: tuple[float, float], orig_size: tuple[int, int],
                       cat_ids: list[int]) -> list[dict[str, Any]]:
    """One image's runner output ``[D, 4] / [D] / [D]`` -> COCO result dicts in original pixels."""
    valid = (scores > 0) & (labels >= 0)
    boxes, scores, labels = boxes[valid].astype(np.float64), scores[valid], labels[valid].astype(np.int64)
    if len(labels) and int(labels.max()) >= len(cat_ids):
        raise NasfcosError(f"model predicted class {int(labels.max())} but the data set has "
                           f"{len(cat_ids)} classes")
    sx, sy = scale_xy
    h0, w0 = orig_size
    boxes = boxes / np.array([sx, sy, sx, sy])
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, w0)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, h0)
    out = []
    for (x0, y0, x1, y1), s, lab in zip(boxes, scores, labels, strict=True):
        out.append({"image_id": int(image_id), "category_id": int(cat_ids[lab]),
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "score": float(s)})
    return out


def evaluate(runner: Runner, data: str | Path | None = None, split: str = "val",
             ann: str | Path | None = None, images: str | Path | None = None,
             cfg: EvalConfig | None = None, progress: bool = False,
             max_images: int | None = None, model_cat_ids: list[int] | None = None,
             model_num_classes: int | None = None) -> dict[str, Any]:
    """Run ``runner`` over a COCO split and return COCO metrics plus counts.

    ``model_cat_ids``: the category ids the model was trained with (from its weights
    file); a warning is issued when they differ from the split's.
    """
    cfg = cfg or EvalConfig()
    ann_p, img_p = resolve_split(data, split, ann, images)
    input_size = cfg.input_size or getattr(runner, "input_size", None)
    tcfg = TransformConfig(min_size=cfg.min_size, max_size=cfg.max_size)
    if input_size is not None:  # fit the long side into the fixed input's short side
        side = min(input_size)
        tcfg = TransformConfig(min_size=side, max_size=side)
    ds = CocoDetection(ann_p, img_p, tcfg, train=False)
    if model_cat_ids is not None and list(model_cat_ids) != ds.cat_ids:
        warnings.warn(f"the model was trained on category ids {list(model_cat_ids)}, "
                      f"the evaluation set has {ds.cat_ids}", stacklevel=2)
    if model_num_classes is not None and model_num_classes != ds.num_classes:
        warnings.warn(f"the model predicts {model_num_classes} classes, the evaluation set has "
                      f"{ds.num_classes}", stacklevel=2)
    n = len(ds) if max_images is None else min(len(ds), max_images)
    fixed_batch = getattr(runner, "batch_size", None)
    bs = fixed_batch or cfg.batch_size
    batches = range(0, n, bs)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, total=math.ceil(n / bs), desc="eval", unit="batch")
    dets: list[dict[str, Any]] = []
    img_ids: list[int] = []
    for start in batches:
        items = [ds[i] for i in range(start, min(start + bs, n))]
        imgs = [im for im, _ in items]
        if fixed_batch:
            imgs += [torch.zeros_like(imgs[0])] * (fixed_batch - len(imgs))
        batch = pad_batch(imgs, 32, size=input_size).numpy()
        boxes, scores, labels = (np.asarray(a) for a in runner(batch))
        for j, (_, t) in enumerate(items):
            (h0, w0), (h, w) = t["orig_size"], t["size"]
            dets += detections_to_coco(boxes[j], scores[j], labels[j], t["image_id"],
                                       (w / w0, h / h0), (h0, w0), ds.cat_ids)
            img_ids.append(t["image_id"])
    metrics = coco_metrics(ds.coco, dets, img_ids)
    metrics.update({"images": n, "detections": len(dets), "annotations": str(ann_p)})
    return metrics

