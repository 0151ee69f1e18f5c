"""PASCAL VOC XML annotations -> COCO detection JSON (the paper searches on VOC).

VOC boxes are 1-based inclusive pixel corners ``(xmin, ymin, xmax, ymax)``; COCO
boxes are 0-based ``[x, y, w, h]``.  The conversion follows detectron2's VOC loader:
``x = xmin - 1``, ``y = ymin - 1``, ``w = xmax - x``, ``h = ymax - y``, and
:func:`write_voc_xml` is its exact inverse (used by the round-trip test).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nasfcos.errors import NasfcosError
from nasfcos.io import atomic_write_json, atomic_write_text

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


def _text(node: ET.Element, tag: str, path: Path) -> str:
    child = node.find(tag)
    if child is None or child.text is None:
        raise NasfcosError(f"{path}: missing <{tag}>")
    return child.text.strip()


def _number(node: ET.Element, tag: str, path: Path) -> float:
    text = _text(node, tag, path)
    try:
        value = float(text)
    except ValueError:
        raise NasfcosError(f"{path}: <{tag}> is not a number ({text[:40]!r})") from None
    if not math.isfinite(value):
        raise NasfcosError(f"{path}: <{tag}> is not a finite number ({text[:40]!r})")
    return value


def parse_voc_xml(path: str | Path) -> dict[str, Any]:
    """One VOC XML file -> ``{file_name, width, height, objects: [{name, bbox_xyxy, difficult}]}``.

    ``bbox_xyxy`` holds the raw 1-based VOC corners as floats.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise NasfcosError(f"{path}: not a readable VOC XML file ({exc})") from exc
    size = root.find("size")
    if size is None:
        raise NasfcosError(f"{path}: missing <size>")
    objects = []
    for obj in root.findall("object"):
        bnd = obj.find("bndbox")
        if bnd is None:
            raise NasfcosError(f"{path}: <object> without <bndbox>")
        diff = obj.find("difficult")
        objects.append({
            "name": _text(obj, "name", path),
            "bbox_xyxy": [_number(bnd, t, path) for t in ("xmin", "ymin", "xmax", "ymax")],
            "difficult": bool(_number(obj, "difficult", path)) if diff is not None and diff.text else False,
        })
    return {
        "file_name": _text(root, "filename", path),
        "width": int(_number(size, "width", path)),
        "height": int(_number(size, "height", path)),
        "objects": objects,
    }


def voc_to_coco(voc_dir: str | Path, split: str | None = None,
                classes: Sequence[str] | None = None,
                include_difficult: bool = False) -> dict[str, Any]:
    """Convert a VOC folder (``Annotations/*.xml``, optional ``ImageSets/Main/SPLIT.txt``).

    ``classes``: category names in id order (ids 1..C); default: the 20 VOC classes when
    every name is one of them, else the sorted names found.  Difficult objects are
    dropped unless ``include_difficult``, in which case they are marked ``iscrowd=1``
    (ignored by COCO evaluation).  Image ``file_name`` is relative to ``JPEGImages/``.
    """
    voc_dir = Path(voc_dir)
    ann_dir = voc_dir / "Annotations"
    if not ann_dir.is_dir():
        raise NasfcosError(f"{voc_dir}: no Annotations/ folder (not a VOC directory)")
    if split is not None:
        list_file = voc_dir / "ImageSets" / "Main" / f"{split}.txt"
        if not list_file.is_file():
            raise NasfcosError(f"{list_file}: no such split list")
        stems = [ln.split()[0] for ln in list_file.read_text().splitlines() if ln.strip()]
        xml_files = [ann_dir / f"{s}.xml" for s in stems]
    else:
        xml_files = sorted(ann_dir.glob("*.xml"))
    if not xml_files:
        raise NasfcosError(f"{ann_dir}: no XML annotation files")
    records = [parse_voc_xml(p) for p in xml_files]
    names = sorted({o["name"] for r in records for o in r["objects"]})
    if classes is None:
        classes = VOC_CLASSES if set(names) <= set(VOC_CLASSES) else names
    cat_id = {n: i + 1 for i, n in enumerate(classes)}
    unknown = sorted(set(names) - set(cat_id))
    if unknown:
        raise NasfcosError(f"{voc_dir}: classes not in the class list: {', '.join(unknown)}")
    images, anns = [], []
    for img_id, rec in enumerate(records, start=1):
        images.append({"id": img_id, "file_name": rec["file_name"],
                       "width": rec["width"], "height": rec["height"]})
        for obj in rec["objects"]:
            if obj["difficult"] and not include_difficult:
                continue
            x0, y0, x1, y1 = obj["bbox_xyxy"]
            x, y, w, h = x0 - 1.0, y0 - 1.0, x1 - (x0 - 1.0), y1 - (y0 - 1.0)
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": cat_id[obj["name"]],
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": int(obj["difficult"])})
    return {
        "info": {"description": f"converted from PASCAL VOC {voc_dir.name}"},
        "licenses": [],
        "images": images,
        "annotations": anns,
        "categories": [{"id": i + 1, "name": n, "supercategory": "voc"} for i, n in enumerate(classes)],
    }


def write_voc_xml(path: str | Path, file_name: str, width: int, height: int,
                  objects: Sequence[tuple[str, Sequence[float], bool]]) -> None:
    """Write one VOC XML file; ``objects`` = (name, COCO bbox [x, y, w, h], difficult)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC"
    ET.SubElement(root, "filename").text = file_name
    size = ET.SubElement(root, "size")
    for tag, v in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(v)
    for name, (x, y, w, h), difficult in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "difficult").text = str(int(difficult))
        bnd = ET.SubElement(obj, "bndbox")
        for tag, v in (("xmin", x + 1), ("ymin", y + 1), ("xmax", x + w), ("ymax", y + h)):
            ET.SubElement(bnd, tag).text = f"{v:g}"
    ET.indent(root)
    atomic_write_text(path, ET.tostring(root, encoding="unicode") + "\n")


def convert_voc(voc_dir: str | Path, out_json: str | Path, split: str | None = None,
                include_difficult: bool = False) -> dict[str, Any]:
    """Convert and write atomically; returns a summary (counts, classes, output path)."""
    coco = voc_to_coco(voc_dir, split=split, include_difficult=include_difficult)
    atomic_write_json(out_json, coco, indent=None)
    return {"output": str(out_json), "images": len(coco["images"]),
            "annotations": len(coco["annotations"]),
            "classes": [c["name"] for c in coco["categories"]]}
