"""COCO-format detection data: dataset, transforms and a padding collate.

A data folder (``--data DIR``) holds ``images/``, ``train.json`` and ``val.json``
(COCO detection JSON), as written by ``nasfcos data synth``; explicit annotation and
image paths work too (:func:`resolve_split`).

COCO category ids are arbitrary; the dataset maps them to contiguous labels
``0..K-1`` in sorted id order (:attr:`CocoDetection.cat_ids` maps back).

Sample: ``image`` float32 ``[3, H, W]`` RGB in [0, 1] and a target dict with
``boxes`` float32 ``[M, 4]`` (x0, y0, x1, y1 in pixels of the transformed image),
``labels`` int64 ``[M]``, ``image_id`` (COCO id), ``orig_size`` (H, W) and
``scale`` (resized / original pixels), ``size`` (H, W after resizing; crops and flips
happen only at training time, after the resize).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from nasfcos.errors import NasfcosError

Target = dict[str, Any]


@dataclass(frozen=True)
class TransformConfig:
    """Resize the short side to ``min_size`` (long side at most ``max_size``), then at
    training time optionally random-crop to ``crop`` (H, W) and flip with probability
    ``hflip``."""

    min_size: int = 800
    max_size: int = 1333
    hflip: float = 0.0
    crop: tuple[int, int] | None = None
    min_box_size: float = 2.0  # boxes thinner than this after cropping are dropped


def resolve_split(data: str | Path | None, split: str, ann: str | Path | None = None,
                  images: str | Path | None = None) -> tuple[Path, Path]:
    """(annotation JSON, image folder) for ``split`` of a data folder, or the explicit paths."""
    if ann is not None:
        ann_p = Path(ann)
        img_p = Path(images) if images is not None else ann_p.parent / "images"
    elif data is not None:
        ann_p, img_p = Path(data) / f"{split}.json", Path(images or Path(data) / "images")
    else:
        raise NasfcosError("give --data DIR (or --ann FILE.json)")
    if not ann_p.is_file():
        raise NasfcosError(f"{ann_p}: no such annotation file")
    if not img_p.is_dir():
        raise NasfcosError(f"{img_p}: no such image folder")
    return ann_p, img_p


def load_coco(ann_file: str | Path) -> Any:
    """pycocotools COCO object, quietly, with a one-line error for bad files."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(ann_file))
    except Exception as exc:
        raise NasfcosError(f"{ann_file}: not a valid COCO annotation file ({exc})") from exc


def resize_scale(h: int, w: int, min_size: int, max_size: int) -> float:
    """Scale factor so the short side becomes ``min_size`` and the long side <= ``max_size``."""
    return min(min_size / min(h, w), max_size / max(h, w))


def pad_batch(images: list[torch.Tensor], size_divisor: int = 32,
              size: tuple[int, int] | None = None) -> torch.Tensor:
    """Stack ``[3, h_i, w_i]`` images into ``[N, 3, H, W]``, zero-padded bottom/right to a
    multiple of ``size_divisor`` (or exactly to ``size``)."""
    h = max(int(im.shape[1]) for im in images)
    w = max(int(im.shape[2]) for im in images)
    if size is not None:
        if h > size[0] or w > size[1]:
            raise NasfcosError(f"image {h}x{w} does not fit the fixed input {size[0]}x{size[1]}")
        h, w = size
    else:
        h = int(math.ceil(h / size_divisor) * size_divisor)
        w = int(math.ceil(w / size_divisor) * size_divisor)
    out = images[0].new_zeros((len(images), 3, h, w))
    for i, im in enumerate(images):
        out[i, :, : im.shape[1], : im.shape[2]] = im
    return out


def collate(batch: list[tuple[torch.Tensor, Target]]) -> tuple[torch.Tensor, list[Target]]:
    """DataLoader collate: images padded to a multiple of 32, targets kept as a list."""
    images, targets = zip(*batch, strict=True)
    return pad_batch(list(images)), list(targets)


class CocoDetection(Dataset[tuple[torch.Tensor, Target]]):
    """COCO detection JSON + image folder, with FCOS-style resize / crop / flip.

    ``train=False`` only resizes (evaluation).  Random choices come from a generator
    seeded by ``(seed, epoch, index)``: deterministic with any number of workers and
    reproducible on resume (call :meth:`set_epoch` before each epoch).
    """

    def __init__(self, ann_file: str | Path, image_dir: str | Path,
                 transform: TransformConfig | None = None, train: bool = False,
                 seed: int = 0) -> None:
        self.coco = load_coco(ann_file)
        self.image_dir = Path(image_dir)
        self.transform = transform or TransformConfig()
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.ids: list[int] = sorted(self.coco.imgs.keys())
        self.cat_ids: list[int] = sorted(self.coco.cats.keys())
        if not self.cat_ids:
            raise NasfcosError(f"{ann_file}: no categories")
        self.label_of: dict[int, int] = {c: i for i, c in enumerate(self.cat_ids)}
        self.class_names: list[str] = [self.coco.cats[c].get("name", str(c)) for c in self.cat_ids]

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> tuple[Image.Image, np.ndarray, np.ndarray, int]:
        """Original image, boxes ``[M, 4]`` xyxy float32, labels ``[M]`` int64, COCO image id."""
        img_id = self.ids[index]
        info = self.coco.imgs[img_id]
        path = self.image_dir / info["file_name"]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except OSError as exc:
            raise NasfcosError(f"{path}: cannot read image ({exc})") from exc
        anns = [a for a in self.coco.imgToAnns.get(img_id, []) if not a.get("iscrowd", 0)]
        boxes = np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        labels = np.array([self.label_of[a["category_id"]] for a in anns], np.int64)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return img, boxes[keep], labels[keep], img_id

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        img, boxes, labels, img_id = self.load(index)
        t = self.transform
        w0, h0 = img.size
        scale = resize_scale(h0, w0, t.min_size, t.max_size)
        nw, nh = max(1, round(w0 * scale)), max(1, round(h0 * scale))
        if (nw, nh) != (w0, h0):
            img = img.resize((nw, nh), Image.Resampling.BILINEAR)
        boxes = boxes * np.array([nw / w0, nh / h0, nw / w0, nh / h0], np.float32)
        arr = np.asarray(img, np.float32) / 255.0
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            if t.crop is not None:
                ch, cw = min(t.crop[0], nh), min(t.crop[1], nw)
                y0 = int(rng.integers(0, nh - ch + 1))
                x0 = int(rng.integers(0, nw - cw + 1))
                arr = arr[y0 : y0 + ch, x0 : x0 + cw]
                boxes = boxes - np.array([x0, y0, x0, y0], np.float32)
                boxes[:, 0::2] = boxes[:, 0::2].clip(0, cw)
                boxes[:, 1::2] = boxes[:, 1::2].clip(0, ch)
                keep = ((boxes[:, 2] - boxes[:, 0]) >= t.min_box_size) & (
                    (boxes[:, 3] - boxes[:, 1]) >= t.min_box_size)
                boxes, labels = boxes[keep], labels[keep]
            if t.hflip > 0 and rng.random() < t.hflip:
                width = arr.shape[1]
                arr = arr[:, ::-1]
                boxes = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)
        image = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
        target: Target = {
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes, np.float32)).reshape(-1, 4),
            "labels": torch.from_numpy(labels),
            "image_id": img_id,
            "orig_size": (h0, w0),
            "scale": float(scale),
            "size": (nh, nw),
        }
        return image, target
