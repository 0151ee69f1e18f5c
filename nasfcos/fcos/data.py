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
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from nasfcos.errors import NasfcosError, first_line
from nasfcos.images import read_image

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


def _coco_layout(data: Path, split: str) -> tuple[Path, Path] | None:
    """The standard COCO layout: ``annotations/instances_{split}2017.json`` (or
    ``instances_{split}.json``) with images in ``{split}2017/`` (or ``{split}/``)."""
    names = [split] if split[-4:].isdigit() else [f"{split}2017", split]
    for name in names:
        ann = data / "annotations" / f"instances_{name}.json"
        if ann.is_file():
            for folder in (data / name, data / "images" / name, data / "images"):
                if folder.is_dir():
                    return ann, folder
            return ann, data / name
    return None


def resolve_split(data: str | Path | None, split: str, ann: str | Path | None = None,
                  images: str | Path | None = None) -> tuple[Path, Path]:
    """(annotation JSON, image folder) for ``split`` of a data folder, or the explicit paths.

    A data folder is either nasfcos's (``SPLIT.json`` + ``images/``) or the standard COCO
    layout (``annotations/instances_SPLIT2017.json`` + ``SPLIT2017/``)."""
    if ann is not None:
        ann_p = Path(ann)
        img_p = Path(images) if images is not None else ann_p.parent / "images"
    elif data is not None:
        ann_p, img_p = Path(data) / f"{split}.json", Path(images or Path(data) / "images")
        if not ann_p.is_file():
            found = _coco_layout(Path(data), split)
            if found is not None:
                ann_p, img_p = found[0], Path(images) if images else found[1]
    else:
        raise NasfcosError("give --data DIR (or --ann FILE.json)")
    if not ann_p.is_file():
        raise NasfcosError(f"{ann_p}: no such annotation file")
    if not img_p.is_dir():
        raise NasfcosError(f"{img_p}: no such image folder")
    return ann_p, img_p


def has_split(data: str | Path | None, split: str) -> bool:
    """Whether a data folder has ``split`` (either layout)."""
    if data is None:
        return False
    return (Path(data) / f"{split}.json").is_file() or _coco_layout(Path(data), split) is not None


def load_coco(ann_file: str | Path) -> Any:
    """pycocotools COCO object, quietly, with a one-line error for bad files."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(ann_file))
    except Exception as exc:
        raise NasfcosError(f"{ann_file}: not a valid COCO annotation file ({first_line(exc, None)})") from None
    check_coco(coco, ann_file)
    return coco


def check_coco(coco: Any, ann_file: str | Path) -> None:
    """One-line errors for annotations the rest of the code cannot use: an annotation, image
    or category id given twice (pycocotools would keep one silently), a ``category_id``
    not in ``categories``, a ``bbox`` that is not four finite numbers, an ``image_id``
    without an image, an image without a usable ``file_name``."""
    cats = coco.cats
    for what, table in (("annotation", coco.anns), ("image", coco.imgs), ("category", cats)):
        listed = coco.dataset.get(f"{what}s" if what != "category" else "categories") or []
        if isinstance(listed, list) and len(listed) != len(table):
            seen: set[Any] = set()
            dup = next((e.get("id") for e in listed if isinstance(e, dict)
                        and (e.get("id") in seen or seen.add(e.get("id")))), None)
            raise NasfcosError(f"{ann_file}: {len(listed) - len(table)} {what}s share an id with "
                               f"another (first: id {dup!r}); ids must be unique")
    for cid in cats:
        if not isinstance(cid, int) or isinstance(cid, bool):
            raise NasfcosError(f"{ann_file}: category id {cid!r} is not an integer")
    for img_id, info in coco.imgs.items():
        if not isinstance(info.get("file_name"), str) or not info["file_name"]:
            raise NasfcosError(f"{ann_file}: image {img_id!r} has no file_name")
    for ann_id, a in coco.anns.items():
        cid = a.get("category_id")
        if cid not in cats:
            raise NasfcosError(f"{ann_file}: annotation {ann_id!r}: category_id {cid!r} is not in "
                               f"categories ({', '.join(map(str, sorted(cats))) or 'none'})")
        box = a.get("bbox")
        if (not isinstance(box, list) or len(box) != 4
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in box)
                or not all(math.isfinite(v) for v in box)):
            raise NasfcosError(f"{ann_file}: annotation {ann_id!r}: bbox {str(box)[:60]} is not "
                               "[x, y, width, height] (four finite numbers)")
        if a.get("image_id") not in coco.imgs:
            raise NasfcosError(f"{ann_file}: annotation {ann_id!r}: image_id {a.get('image_id')!r} "
                               "is not in images")


def resize_scale(h: int, w: int, min_size: int, max_size: int) -> float:
    """Scale factor so the short side becomes ``min_size`` and the long side <= ``max_size``."""
    return min(min_size / min(h, w), max_size / max(h, w))


def resize_image(img: Image.Image, min_size: int, max_size: int) -> tuple[np.ndarray, float]:
    """RGB PIL image -> float32 ``[H, W, 3]`` in [0, 1] resized by :func:`resize_scale`
    (bilinear), and the scale."""
    w0, h0 = img.size
    scale = resize_scale(h0, w0, min_size, max_size)
    nw, nh = max(1, round(w0 * scale)), max(1, round(h0 * scale))
    if (nw, nh) != (w0, h0):
        img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    return np.asarray(img.convert("RGB"), np.float32) / 255.0, scale


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
        self.class_names: list[str] = [str(self.coco.cats[c].get("name", c)) for c in self.cat_ids]
        if not self.ids:
            raise NasfcosError(f"{ann_file}: the split has no images")
        missing = [i for i in self.ids if not (self.image_dir / self.coco.imgs[i]["file_name"]).is_file()]
        if missing:
            first = self.image_dir / self.coco.imgs[missing[0]]["file_name"]
            raise NasfcosError(f"{ann_file}: {len(missing)} of {len(self.ids)} images are missing "
                               f"from {self.image_dir} (first: {first.name})")
        self.box_report = self._audit_boxes()
        bad, outside, usable = (self.box_report[k] for k in ("degenerate", "outside", "usable"))
        if bad or outside:
            warnings.warn(f"{ann_file}: {bad} boxes with zero or negative width/height are ignored, "
                          f"{outside} boxes reaching outside their image are clipped to it "
                          f"({usable} usable boxes)", stacklevel=2)
        if train and usable == 0:
            raise NasfcosError(f"{ann_file}: no usable box to train on (box loss would be 0)")

    def _audit_boxes(self) -> dict[str, int]:
        """Counts of non-crowd boxes: ``degenerate`` (width or height <= 0, or nothing left
        inside the image), ``outside`` (reaching outside the image, clipped), ``usable``."""
        degenerate = outside = usable = 0
        for a in self.coco.anns.values():
            if a.get("iscrowd", 0):
                continue
            info = self.coco.imgs[a["image_id"]]
            x, y, w, h = (float(v) for v in a["bbox"])
            width, height = info.get("width"), info.get("height")
            if w <= 0 or h <= 0:
                degenerate += 1
                continue
            if isinstance(width, int | float) and isinstance(height, int | float):
                if x < 0 or y < 0 or x + w > width or y + h > height:
                    outside += 1
                    if min(x + w, width) <= max(x, 0) or min(y + h, height) <= max(y, 0):
                        degenerate += 1
                        continue
            usable += 1
        return {"degenerate": degenerate, "outside": outside, "usable": usable}

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
        # stored orientation: the annotations' boxes are in the file's pixel grid
        img = read_image(path, orient=False)
        anns = [a for a in self.coco.imgToAnns.get(img_id, []) if not a.get("iscrowd", 0)]
        boxes = np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, img.size[0])  # counted in box_report
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, img.size[1])
        labels = np.array([self.label_of[a["category_id"]] for a in anns], np.int64)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return img, boxes[keep], labels[keep], img_id

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        img, boxes, labels, img_id = self.load(index)
        t = self.transform
        w0, h0 = img.size
        arr, scale = resize_image(img, t.min_size, t.max_size)
        nh, nw = arr.shape[:2]
        boxes = boxes * np.array([nw / w0, nh / h0, nw / w0, nh / h0], np.float32)
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
