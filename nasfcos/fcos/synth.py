"""Deterministic synthetic detection data set: shapes on cluttered backgrounds.

``write_synthetic(out_dir, SynthConfig(...))`` writes::

    out_dir/images/000000.png ...   RGB PNGs, size x size pixels
    out_dir/train.json              COCO detection JSON (first ~80 % of the images)
    out_dir/val.json                COCO detection JSON (the rest)
    out_dir/manifest.json           seed, size, counts, file hashes

Every image is drawn from its own generator seeded by ``(seed, index)``, so a set
is identical for the same seed whatever the machine, and image ``i`` does not depend
on how many images are written.  Objects: several shape classes (rectangle, ellipse,
triangle, cross, ring) at widely varying scales (4 % .. 90 % of the image side) and
aspect ratios (1:3 .. 3:1), partly occluding each other; clutter (lines, specks)
that is not annotated; backgrounds that are flat, gradients or noise.

``PRESETS["easy"]`` is the yardstick set (issue 13): larger objects (15 % .. 60 % of the
side), 1-3 per image, no clutter; a small detector learns it in minutes on 2 cores, so
decoders can be told apart by a short training run.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from nasfcos.errors import FieldError, NasfcosError
from nasfcos.io import atomic_write_bytes, atomic_write_json, sha256_bytes, staged_folder

CLASSES: tuple[str, ...] = ("rectangle", "ellipse", "triangle", "cross", "ring")
FORMAT = "nasfcos-synth/1"


@dataclass(frozen=True)
class SynthConfig:
    """Options of the synthetic set. ``size`` is the square image side in pixels."""

    images: int = 200
    size: int = 128
    seed: int = 0
    val_fraction: float = 0.2
    min_objects: int = 1
    max_objects: int = 6
    min_scale: float = 0.04
    max_scale: float = 0.9
    min_visible: float = 0.35
    clutter: bool = True  # unannotated lines and specks

    def validate(self) -> None:
        if self.images < 2:
            raise FieldError("images", "must be at least 2 (one train, one val)")
        if not 32 <= self.size <= 4096:
            raise FieldError("size", "must be between 32 and 4096 pixels")
        if not 0.0 < self.val_fraction < 1.0:
            raise FieldError("val_fraction", "must be in (0, 1)")
        if not 1 <= self.min_objects <= self.max_objects:
            raise FieldError("min_objects", "need 1 <= min objects <= max objects")
        if not (0.0 < self.min_scale <= self.max_scale <= 1.0):
            raise FieldError("min_scale", "need 0 < min scale <= max scale <= 1")
        if not 0.0 <= self.min_visible <= 1.0:
            raise FieldError("min_visible", "must be in [0, 1]")


#: Named option sets of ``nasfcos data synth --preset`` (other flags given override them).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "easy": {"images": 600, "size": 128, "min_objects": 1, "max_objects": 3, "min_scale": 0.15,
             "max_scale": 0.6, "min_visible": 0.5, "clutter": False},
}


def _color(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, size=3))  # type: ignore[return-value]


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    kind = int(rng.integers(0, 3))
    if kind == 0:  # flat
        arr = np.empty((size, size, 3), np.float32)
        arr[:] = np.array(_color(rng), np.float32)
    elif kind == 1:  # linear gradient between two colours
        a, b = np.array(_color(rng), np.float32), np.array(_color(rng), np.float32)
        angle = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
        t = (xx * math.cos(angle) + yy * math.sin(angle))
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        arr = a + (b - a) * t[..., None]
    else:  # smooth noise: coarse random grid upsampled
        cells = int(rng.integers(2, 9))
        coarse = rng.integers(0, 256, size=(cells, cells, 3)).astype(np.uint8)
        img = Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR)
        arr = np.asarray(img, np.float32)
    arr = arr + rng.normal(0.0, rng.uniform(0, 12), size=arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _draw_shape(targets: list[tuple[ImageDraw.ImageDraw, Any]], cls: int,
                box: tuple[float, float, float, float], rng: np.random.Generator) -> None:
    """Draw class ``cls`` filling ``box`` (x0, y0, x1, y1) on each (draw, fill) target."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    apex = x0 + w * float(rng.uniform(0, 1))  # triangle apex position
    ring = max(1, int(min(w, h) * float(rng.uniform(0.15, 0.35))))  # ring thickness
    for d, fill in targets:
        if cls == 0:
            d.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
        elif cls == 1:
            d.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
        elif cls == 2:
            d.polygon([(apex, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=fill)
        elif cls == 3:
            tw, th = max(w / 3, 1), max(h / 3, 1)
            cx, cy = x0 + w / 2, y0 + h / 2
            d.rectangle((cx - tw / 2, y0, cx + tw / 2 - 1, y1 - 1), fill=fill)
            d.rectangle((x0, cy - th / 2, x1 - 1, cy + th / 2 - 1), fill=fill)
        else:
            d.ellipse((x0, y0, x1 - 1, y1 - 1), outline=fill, width=ring)


def _render(rng: np.random.Generator, cfg: SynthConfig) -> tuple[Image.Image, list[dict[str, Any]]]:
    """One image and its annotations (COCO boxes xywh in pixels, category index 0..C-1)."""
    size = cfg.size
    img = _background(rng, size)
    draw = ImageDraw.Draw(img)
    # clutter behind the objects
    for _ in range(int(rng.integers(0, 6)) if cfg.clutter else 0):
        pts = [tuple(float(v) for v in rng.uniform(0, size, 2)) for _ in range(2)]
        draw.line(pts, fill=_color(rng), width=int(rng.integers(1, 3)))
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    objects: list[tuple[int, np.ndarray, tuple[float, float, float, float]]] = []
    for _ in range(n):
        cls = int(rng.integers(0, len(CLASSES)))
        scale = math.exp(rng.uniform(math.log(cfg.min_scale), math.log(cfg.max_scale)))
        aspect = math.exp(rng.uniform(math.log(1 / 3), math.log(3)))  # w / h
        w = max(4.0, min(size * scale * math.sqrt(aspect), size))
        h = max(4.0, min(size * scale / math.sqrt(aspect), size))
        x0 = float(rng.uniform(0, size - w + 1))
        y0 = float(rng.uniform(0, size - h + 1))
        box = (round(x0), round(y0), round(x0 + w), round(y0 + h))
        if box[2] - box[0] < 3 or box[3] - box[1] < 3:
            continue
        mask_img = Image.new("L", (size, size), 0)
        _draw_shape([(draw, _color(rng)), (ImageDraw.Draw(mask_img), 255)], cls, box, rng)
        mask = np.asarray(mask_img) > 0
        # occlusion: this object hides earlier ones
        objects = [(c, m & ~mask, b) for c, m, b in objects]
        objects.append((cls, mask, box))
    # clutter in front: small specks that are not objects
    for _ in range(int(rng.integers(0, 8)) if cfg.clutter else 0):
        cx, cy = rng.uniform(0, size, 2)
        r = float(rng.uniform(0.5, 1.5))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=_color(rng))
    anns = []
    for cls, mask, _box in objects:
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            continue
        full = _box[2] - _box[0], _box[3] - _box[1]
        # keep an object only when enough of it is visible; its box is the visible extent
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        if (x1 - x0) * (y1 - y0) < cfg.min_visible * full[0] * full[1] or min(x1 - x0, y1 - y0) < 2:
            continue
        anns.append({"category": cls, "bbox": [x0, y0, x1 - x0, y1 - y0], "area": int(mask.sum())})
    return img, anns


def _coco(images: list[dict[str, Any]], anns: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "info": {"description": "nasfcos synthetic shapes", "format": FORMAT},
        "licenses": [],
        "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)],
        "images": images,
        "annotations": anns,
    }


_OUTPUTS = ("train.json", "val.json", "manifest.json")


def _prepare_folder(out: Path, force: bool) -> None:
    """Refuse to write into a folder that holds a data set unless ``force``; with ``force``
    remove the old set's files first (no stale images survive)."""
    if out.exists() and not out.is_dir():
        raise NasfcosError(f"{out}: exists and is not a folder")
    found = [n for n in _OUTPUTS if (out / n).exists()]
    images = out / "images"
    if images.exists() and not images.is_dir():
        raise NasfcosError(f"{images}: exists and is not a folder")
    pngs = sorted(images.glob("*.png")) if images.is_dir() else []
    if (found or pngs) and not force:
        what = ", ".join(found + ([f"{len(pngs)} images"] if pngs else []))
        raise NasfcosError(f"{out}: holds a data set already ({what}); use --force to replace it")
    for n in found:
        (out / n).unlink()
    for p in pngs:
        p.unlink()


def write_synthetic(out_dir: str | Path, cfg: SynthConfig, progress: bool = False,
                    force: bool = False) -> dict[str, Any]:
    """Write the synthetic set to ``out_dir``; returns the manifest (also written).

    A folder that already holds a set (its JSON files or images) is an error unless
    ``force``, which replaces the whole set.  A new (or empty) folder is written all or
    nothing: into a temporary sibling renamed into place at the end."""
    cfg.validate()
    out = Path(out_dir)
    _prepare_folder(out, force)
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        with staged_folder(out) as tmp:
            return _write_set(tmp, cfg, progress)
    return _write_set(out, cfg, progress)


def _write_set(out: Path, cfg: SynthConfig, progress: bool) -> dict[str, Any]:
    (out / "images").mkdir(parents=True, exist_ok=True)
    n_val = max(1, int(round(cfg.images * cfg.val_fraction)))
    n_train = cfg.images - n_val
    splits: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {"train": ([], []), "val": ([], [])}
    hashes = []
    from nasfcos.progress import progress_iter

    it = progress_iter(range(cfg.images), desc="synth", unit="img", enabled=progress)
    ann_id = 1
    for i in it:
        rng = np.random.default_rng([cfg.seed, i])
        img, anns = _render(rng, cfg)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        data = buf.getvalue()
        name = f"{i:06d}.png"
        atomic_write_bytes(out / "images" / name, data)
        hashes.append(sha256_bytes(data))
        split = "train" if i < n_train else "val"
        imgs, coco_anns = splits[split]
        imgs.append({"id": i + 1, "file_name": name, "width": cfg.size, "height": cfg.size})
        for a in anns:
            coco_anns.append({"id": ann_id, "image_id": i + 1, "category_id": a["category"] + 1,
                              "bbox": a["bbox"], "area": a["area"], "iscrowd": 0})
            ann_id += 1
    for split, (imgs, coco_anns) in splits.items():
        atomic_write_json(out / f"{split}.json", _coco(imgs, coco_anns), indent=None)
    manifest = {
        "format": FORMAT,
        "config": asdict(cfg),
        "classes": list(CLASSES),
        "counts": {s: {"images": len(v[0]), "annotations": len(v[1])} for s, v in splits.items()},
        "images_sha256": sha256_bytes("".join(hashes).encode()),
    }
    atomic_write_json(out / "manifest.json", manifest)
    return manifest
