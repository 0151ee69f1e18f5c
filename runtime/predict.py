"""Detect objects in image files with any detector backend (``nasfcos predict``).

What a model was trained with travels with it, so predict uses what eval uses
(:func:`model_meta`): the training run's resize (``min_size``/``max_size``), class names and
category ids, from the ``nasfcos train`` checkpoint, from an export's manifest (and the
weights it names), or from the ``import.json`` of an imported release model.  Images are
read through :func:`nasfcos.images.read_image`; an unreadable one is skipped with a one-line
warning.  Outputs never touch inputs: the output folder may not be, or contain, an input,
and every drawn file has its own name.
"""

from __future__ import annotations

import io
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nasfcos.errors import FieldError, NasfcosError
from nasfcos.images import IMAGE_SUFFIXES, read_image

#: Resize when neither the caller nor the model's records say (the release's test sizes).
DEFAULT_MIN_SIZE, DEFAULT_MAX_SIZE = 800, 1333


def _class_fields(meta: dict[str, Any], names: Any, ids: Any) -> None:
    if isinstance(names, list) and all(isinstance(n, str) for n in names):
        meta.setdefault("class_names", names)
    if isinstance(ids, list) and all(isinstance(i, int) for i in ids):
        meta.setdefault("cat_ids", ids)


def model_meta(path: str | Path, weights: str | Path | None = None) -> dict[str, Any]:
    """What a detector was trained with: ``min_size``, ``max_size``, ``eval_batch``,
    ``num_classes``, ``class_names``, ``cat_ids`` (those known).

    ``model.py``: from ``weights`` (a ``nasfcos train`` checkpoint, or an imported release's
    ``weights.pt`` with its ``import.json``).  An export (.onnx/.engine): from its manifest
    (class count and classes) and the training checkpoint it was exported with.
    """
    from nasfcos.runtime.artifact import form_of
    from nasfcos.runtime.export import weights_classes
    from nasfcos.runtime.manifest import Manifest
    from nasfcos.weights import load_weights_file

    path = Path(path)
    meta: dict[str, Any] = {}
    if form_of(path) != "model.py":
        if weights is not None:
            raise FieldError("weights", "for model.py only; an exported model carries its weights")
        try:
            manifest = Manifest.find(path)
        except NasfcosError:  # not a nasfcos export: nothing to read
            return meta
        if manifest is None:
            return meta
        if manifest.num_classes is not None:
            meta["num_classes"] = manifest.num_classes
        _class_fields(meta, manifest.class_names, manifest.category_ids)
        try:
            weights = manifest.weights_file()
        except NasfcosError:  # not where the export found them (or changed since)
            return meta
        if weights is None:
            return meta
    elif weights is None:
        return meta
    full = load_weights_file(weights)
    meta.update({k: full[k] for k in ("min_size", "max_size", "eval_batch", "num_classes")
                 if k in full and k not in meta})
    classes = weights_classes(weights)
    if classes:
        _class_fields(meta, classes.get("names"), classes.get("category_ids"))
    return meta


def list_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named by ``inputs`` (a folder means its images, sorted, not recursive)."""
    out: list[Path] = []
    for name in inputs:
        p = Path(name)
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file())
        elif p.is_file():
            out.append(p)
        else:
            raise NasfcosError(f"{p}: no such image file or folder")
    if not out:
        raise NasfcosError("no images to predict on")
    return out


def refuse_output_over_inputs(out: Path, inputs: Sequence[str | Path], images: Sequence[Path]) -> None:
    """One-line error when the output folder is an input folder, or contains an input."""
    o = out.resolve()
    for p in [*map(Path, inputs), *images]:
        r = p.resolve()
        if r == o or o in r.parents:
            raise NasfcosError(f"output folder {out} {'is' if r == o else 'contains'} the input "
                               f"{p}: drawn images would replace inputs (give another -o)")


def drawn_names(images: Sequence[Path]) -> list[str]:
    """A distinct ``.png`` file name for each image: ``stem.png``; where stems collide the
    full name (``a.jpg.png``), then the parent folder too (``dir_a.jpg.png``), then a number."""
    def key(p: Path, level: int) -> str:
        if level == 0:
            return f"{p.stem}.png"
        if level == 1:
            return f"{p.name}.png"
        return f"{p.resolve().parent.name}_{p.name}.png"

    level = [0] * len(images)
    for _ in range(3):
        names = [key(p, lv) for p, lv in zip(images, level, strict=True)]
        counts = Counter(names)
        if all(counts[n] == 1 for n in names):
            return names
        level = [min(lv + 1, 2) if counts[n] > 1 else lv for n, lv in zip(names, level, strict=True)]
    used: set[str] = set()
    out = []
    for n in [key(p, lv) for p, lv in zip(images, level, strict=True)]:
        stem, i, cand = n[:-4], 1, n
        while cand in used:
            i += 1
            cand = f"{stem}-{i}.png"
        used.add(cand)
        out.append(cand)
    return out


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def draw_detections(img: Any, dets: Sequence[dict[str, Any]]) -> bytes:
    """PNG bytes of ``img`` with each detection drawn: a box whose line width grows with the
    image, and a 'name score' label on a filled tag above the box (inside it at the top edge),
    moved down where it would cover an earlier label."""
    from PIL import ImageDraw

    img = img.convert("RGB")
    draw = ImageDraw.Draw(img)
    w, h = img.size
    width = max(3, round(min(w, h) / 200))
    font = _font(max(11, round(min(w, h) / 45)))
    palette = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
               (70, 240, 240), (240, 50, 230), (210, 245, 60)]
    placed: list[tuple[float, float, float, float]] = []
    # lowest score first, so the best boxes are drawn on top
    for d in sorted(dets, key=lambda d: d["score"]):
        color = palette[d["label"] % len(palette)]
        x0, y0, x1, y1 = d["box"]
        draw.rectangle((x0, y0, x1, y1), outline=color, width=width)
    for d in sorted(dets, key=lambda d: -d["score"]):
        color = palette[d["label"] % len(palette)]
        x0, y0, _, _ = d["box"]
        text = f"{d['class_name']} {d['score']:.2f}"
        left, t, r, b = draw.textbbox((0, 0), text, font=font)
        tw, th = r - left + 4, b - t + 4
        tx = min(max(0.0, x0), max(0.0, w - tw))
        ty = y0 - th if y0 - th >= 0 else y0
        for _ in range(len(placed) + 1):  # step down past labels already placed
            hit = next((p for p in placed if tx < p[2] and tx + tw > p[0]
                        and ty < p[3] and ty + th > p[1]), None)
            if hit is None:
                break
            ty = hit[3]
        if ty + th > h:
            ty = max(0.0, h - th)
        placed.append((tx, ty, tx + tw, ty + th))
        draw.rectangle((tx, ty, tx + tw, ty + th), fill=color)
        lum = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
        draw.text((tx + 2 - left, ty + 2 - t), text, fill=(0, 0, 0) if lum > 140 else (255, 255, 255),
                  font=font)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _detect(runner: Any, img: Any, sizes: tuple[int, int], score_thresh: float,
            names: Sequence[str], cat_ids: Sequence[int]) -> tuple[list[dict[str, Any]], float]:
    """(detections at or above ``score_thresh`` in image pixels, top score) of one image,
    resized to ``sizes`` (min, max) and padded as the runner takes it."""
    import torch

    from nasfcos.fcos.data import pad_batch, resize_image

    arr, scale = resize_image(img, *sizes)
    t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    batch = [t] + [torch.zeros_like(t)] * ((getattr(runner, "batch_size", None) or 1) - 1)
    size = getattr(runner, "input_size", None)
    boxes, scores, labels = (np.asarray(a) for a in runner(pad_batch(batch, 32, size=size).numpy()))
    valid = labels[0] >= 0
    keep = (scores[0] >= score_thresh) & valid
    top = float(scores[0][valid].max()) if valid.any() else 0.0
    w0, h0 = img.size
    dets = []
    for box, score, label in zip(boxes[0][keep], scores[0][keep], labels[0][keep], strict=True):
        x0, y0, x1, y1 = (float(v) / scale for v in box)
        lab = int(label)
        dets.append({"box": [round(min(max(x0, 0), w0), 2), round(min(max(y0, 0), h0), 2),
                             round(min(max(x1, 0), w0), 2), round(min(max(y1, 0), h0), 2)],
                     "score": round(float(score), 4), "label": lab,
                     "class_name": names[lab] if lab < len(names) else str(lab),
                     **({"category_id": cat_ids[lab]} if lab < len(cat_ids) else {})})
    return dets, top


def predict(model: str | Path, images: Sequence[str | Path], out: str | Path | None = None, *,
            weights: str | Path | None = None, score_thresh: float = 0.3,
            min_size: int | None = None, max_size: int | None = None,
            backend: str | None = None, device: str = "cpu", draw: bool = True,
            log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the detector ``model`` (model.py + ``weights``, .onnx or .engine) on ``images``
    (files or folders); returns the predictions document (what ``predictions.json`` holds).

    With ``out``, writes ``out/predictions.json`` and (``draw``) one drawn PNG per image.
    ``log`` gets one line per image (default: stdout); an unreadable image is skipped with
    a one-line warning (on stderr) and listed under ``skipped``.
    """
    from nasfcos.io import atomic_write_bytes, atomic_write_json
    from nasfcos.runtime.artifact import form_of
    from nasfcos.runtime.runners import make_runner

    say = log or print
    path = Path(model)
    files = list_images(images)
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        refuse_output_over_inputs(out_dir, images, files)
    meta = model_meta(path, weights)
    min_size = min_size or int(meta.get("min_size", DEFAULT_MIN_SIZE))
    max_size = max_size or int(meta.get("max_size", max(DEFAULT_MAX_SIZE, min_size)))
    if max_size < min_size:
        raise NasfcosError(f"max size {max_size} is smaller than min size {min_size}")
    opts: dict[str, Any] = ({"kind": "detector", "weights": weights}
                            if form_of(path) == "model.py" else {})
    runner = make_runner(path, backend, device, **opts)
    try:
        if runner.kind != "detector":
            raise NasfcosError(f"{path}: not a detector; predict needs one (compile and export "
                               "with --detector)")
        names = [str(n) for n in meta.get("class_names") or []]
        cat_ids = [int(c) for c in meta.get("cat_ids") or []]
        if getattr(runner, "input_size", None) is not None:
            min_size = max_size = min(runner.input_size)
        drawn_as = drawn_names(files)
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
        results, skipped = [], []
        for p, drawn_name in zip(files, drawn_as, strict=True):
            try:
                img = read_image(p)
            except NasfcosError as exc:
                print(f"warning: skipped {exc}", file=sys.stderr, flush=True)
                skipped.append(str(p))
                continue
            dets, top = _detect(runner, img, (min_size, max_size), score_thresh, names, cat_ids)
            w0, h0 = img.size
            rec: dict[str, Any] = {"image": str(p), "width": w0, "height": h0,
                                   "top_score": round(top, 4), "detections": dets}
            if out_dir is not None and draw:
                drawn = out_dir / drawn_name
                atomic_write_bytes(drawn, draw_detections(img, dets))
                rec["drawn"] = str(drawn)
            results.append(rec)
            line = f"{p}: {len(dets)} detections"
            if not dets:
                line += (f" (top score {top:.3f} < score threshold {score_thresh:g})" if top > 0
                         else " (no candidate above the model's own candidate threshold)")
            say(line)
    finally:
        runner.close()
    if not results:
        raise NasfcosError(f"no image could be read ({len(skipped)} skipped)")
    doc = {"model": str(path), "weights": str(weights) if weights is not None else None,
           "score_thresh": score_thresh, "min_size": min_size, "max_size": max_size,
           "class_names": names or None, "images": results, "skipped": skipped}
    if out_dir is not None:
        atomic_write_json(out_dir / "predictions.json", doc)
    return doc


__all__ = ["draw_detections", "drawn_names", "list_images", "model_meta", "predict",
           "refuse_output_over_inputs"]
