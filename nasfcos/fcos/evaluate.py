"""COCO mAP of anything that detects, through one callable interface (:class:`Detections`).

The callable takes a float32 numpy batch ``[N, 3, H, W]`` RGB in [0, 1] and returns numpy
``[N, D, 4]`` (x0, y0, x1, y1 pixels of the input), ``[N, D]`` and ``[N, D]`` (labels
0..K-1; padded entries have score 0 and label -1).  It may carry ``input_size = (H, W)`` (a
fixed input shape: images are resized to fit and padded to it) and ``batch_size`` (a fixed
batch: the last batch is padded with blank images).  The runners of
:mod:`nasfcos.runtime.runners` are such callables (the ``eval`` verb uses them); training
validates its ``nn.Module`` through :func:`module_detections`.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from nasfcos.errors import NasfcosError
from nasfcos.fcos.data import CocoDetection, TransformConfig, pad_batch, resolve_split


class Detections(Protocol):
    """What :func:`evaluate` runs: ``images [N, 3, H, W]`` float32 RGB in [0, 1] ->
    ``(boxes [N, D, 4], scores [N, D], labels [N, D])`` numpy arrays.  It may carry
    ``input_size = (H, W)`` (a fixed input shape) and ``batch_size`` (a fixed batch).
    ``nasfcos.runtime.runners`` runners of detectors satisfy it."""

    def __call__(self, images: np.ndarray) -> Sequence[np.ndarray]: ...


def module_detections(model: nn.Module) -> Detections:
    """An in-memory ``Detector`` (``forward(images) -> boxes, scores, labels``) as
    :class:`Detections`, run without gradients on the module's own device."""

    @torch.no_grad()
    def run(images: np.ndarray) -> Sequence[np.ndarray]:
        device = next(model.parameters()).device
        boxes, scores, labels = model(torch.from_numpy(images).to(device))
        return boxes.float().cpu().numpy(), scores.float().cpu().numpy(), labels.cpu().numpy()

    return run


METRIC_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl")


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


def evaluate(runner: Detections, data: str | Path | None = None, split: str = "val",
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
    if ds.box_report["usable"] == 0:  # AP would be 0 whatever the model: refused, as train does
        raise NasfcosError(f"{ann_p}: no usable box to evaluate against ({ds.box_report['degenerate']} "
                           "boxes with zero or negative width/height or outside their image)")
    if model_cat_ids is not None and list(model_cat_ids) != ds.cat_ids:
        warnings.warn(f"the model was trained on category ids {list(model_cat_ids)}, "
                      f"the evaluation set has {ds.cat_ids}", stacklevel=2)
    if model_num_classes is not None and model_num_classes != ds.num_classes:
        warnings.warn(f"the model predicts {model_num_classes} classes, the evaluation set has "
                      f"{ds.num_classes}", stacklevel=2)
    n = len(ds) if max_images is None else min(len(ds), max_images)
    fixed_batch = getattr(runner, "batch_size", None)
    bs = fixed_batch or cfg.batch_size
    from nasfcos.progress import progress_iter

    batches = progress_iter(range(0, n, bs), math.ceil(n / bs), desc="eval", unit="batch",
                            enabled=progress)
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

