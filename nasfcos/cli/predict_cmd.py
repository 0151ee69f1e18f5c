"""``nasfcos predict``: run a detector on image files; boxes as JSON and drawn on the images."""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from nasfcos.cli import args as A
from nasfcos.errors import NasfcosError
from nasfcos.io import atomic_write_bytes, atomic_write_json

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _images(inputs: list[str]) -> list[Path]:
    """Image files named on the command line (a folder means its images, sorted)."""
    out: list[Path] = []
    for name in inputs:
        p = Path(name)
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in _IMAGE_SUFFIXES and q.is_file())
        elif p.is_file():
            out.append(p)
        else:
            raise NasfcosError(f"{p}: no such image file or folder")
    if not out:
        raise NasfcosError("no images to predict on")
    return out


def _draw(img: Any, dets: list[dict[str, Any]]) -> bytes:
    """PNG bytes of ``img`` with each detection's box and 'name score' drawn on it."""
    from PIL import ImageDraw

    img = img.convert("RGB")
    draw = ImageDraw.Draw(img)
    palette = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
               (70, 240, 240), (240, 50, 230), (210, 245, 60)]
    for d in dets:
        color = palette[d["label"] % len(palette)]
        x0, y0, x1, y1 = d["box"]
        draw.rectangle((x0, y0, x1, y1), outline=color, width=2)
        draw.text((x0 + 2, y0 + 1), f"{d['class_name']} {d['score']:.2f}", fill=color)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def main(argv: list[str]) -> int:
    """``nasfcos predict MODEL IMAGE... -o DIR``."""
    parser = A.Parser(
        prog="nasfcos predict",
        description="Detect objects in images with a trained model (model.py + --weights, "
                    "model.onnx or model.engine); write DIR/predictions.json (boxes in pixels of "
                    "each original image, x0 y0 x1 y1) and DIR/NAME.png with the boxes drawn.",
        epilog="example:\n  nasfcos predict model.py photo.png more/ --weights runs/synth/final.pt "
               "-o preds",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=A.input_file, help="model.py, model.onnx or model.engine")
    parser.add_argument("images", nargs="+", help="image files or folders of images")
    parser.add_argument("-o", "--output", type=A.output_dir, required=True, help="output folder")
    parser.add_argument("--weights", type=A.input_file, help="final.pt from 'nasfcos train' (model.py only)")
    parser.add_argument("--score-thresh", type=A.float_range(0.0, 1.0), default=0.3,
                        help="keep detections scoring at least this (default 0.3)")
    parser.add_argument("--min-size", type=A.int_range(32, A.MAX_SIDE), help="resize short side to (default: the training run's, else 800)")
    parser.add_argument("--max-size", type=A.int_range(32, A.MAX_SIDE), help="cap long side at (default: the training run's, else 1333)")
    parser.add_argument("--backend", help="runner backend, BACKEND[:PRECISION] (torch, torch:bf16, "
                        "onnxruntime, openvino, openvino:bf16, tensorrt; default on cpu: the "
                        "fastest measured engine within the accuracy budget, see the README)")
    parser.add_argument("--device", type=A.device, default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--no-draw", action="store_true", help="write predictions.json only")
    parser.add_argument("--json", action="store_true", help="print the predictions as JSON")
    args = parser.parse_args(argv)
    out = Path(args.output)
    images = _images(args.images)

    from PIL import Image

    from nasfcos.fcos.data import pad_batch, resize_image
    from nasfcos.runtime.runners import make_runner
    from nasfcos.weights import load_weights_file

    path = Path(args.model)
    meta: dict[str, Any] = {}
    if args.weights is not None:
        if path.suffix != ".py":
            raise NasfcosError("--weights is for model.py; an exported model carries its weights")
        meta = load_weights_file(args.weights)
    min_size = args.min_size or int(meta.get("min_size", 800))
    max_size = args.max_size or int(meta.get("max_size", max(1333, min_size)))
    if max_size < min_size:
        raise NasfcosError(f"--max-size {max_size} is smaller than --min-size {min_size}")
    opts: dict[str, Any] = {"kind": "detector", "weights": args.weights} if path.suffix == ".py" else {}
    backend = args.backend
    if backend is None and args.device == "cpu" and path.suffix in (".py", ".onnx"):
        from nasfcos.runtime.cpu_default import choose_cpu_engine

        choice = choose_cpu_engine(path)
        backend = choice.engine
        print(f"predict: engine {choice.engine} ({choice.reason}; --backend overrides it)",
              file=sys.stderr)
    runner = make_runner(path, backend, args.device, **opts)
    if runner.kind != "detector":
        raise NasfcosError(f"{path}: not a detector; predict needs one (compile and export "
                           "with --detector)")
    names = [str(n) for n in meta.get("class_names", [])]
    cat_ids = [int(c) for c in meta.get("cat_ids", [])]
    input_size = getattr(runner, "input_size", None)
    fixed_batch = getattr(runner, "batch_size", None)
    if input_size is not None:
        min_size = max_size = min(input_size)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for p in images:
        try:
            with Image.open(p) as im:
                img = im.convert("RGB")
        except OSError as exc:
            raise NasfcosError(f"{p}: cannot read image ({str(exc).splitlines()[0]})") from None
        arr, scale = resize_image(img, min_size, max_size)
        import torch

        t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
        batch = [t] + [torch.zeros_like(t)] * ((fixed_batch or 1) - 1)
        boxes, scores, labels = (np.asarray(a) for a in runner(pad_batch(batch, 32, size=input_size).numpy()))
        keep = (scores[0] >= args.score_thresh) & (labels[0] >= 0)
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
        rec: dict[str, Any] = {"image": str(p), "width": w0, "height": h0, "detections": dets}
        if not args.no_draw:
            drawn = out / f"{p.stem}.png"
            atomic_write_bytes(drawn, _draw(img, dets))
            rec["drawn"] = str(drawn)
        results.append(rec)
        if not args.json:
            print(f"{p}: {len(dets)} detections")
    if hasattr(runner, "close"):
        runner.close()
    doc = {"model": str(path), "weights": args.weights, "score_thresh": args.score_thresh,
           "min_size": min_size, "max_size": max_size, "images": results}
    atomic_write_json(out / "predictions.json", doc)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"wrote {out / 'predictions.json'}" + ("" if args.no_draw else f" and {len(results)} drawn images"))
    return 0
