"""``nasfcos predict``: run a detector on image files; boxes as JSON and drawn on the images."""

from __future__ import annotations

import sys
from pathlib import Path

from nasfcos.cli import args as A


def main(argv: list[str]) -> int:
    """``nasfcos predict MODEL IMAGE... -o DIR``."""
    parser = A.Parser(
        prog="nasfcos predict",
        description="Detect objects in images with a trained model (model.py + --weights, "
                    "model.onnx or model.engine); write DIR/predictions.json (boxes in pixels of "
                    "each original image as displayed, x0 y0 x1 y1) and DIR/NAME.png with the "
                    "boxes drawn (NAME.EXT.png where two inputs share a name).  Image size and "
                    "class names default to what the model was trained with (its checkpoint, "
                    "export manifest or import.json); an unreadable image is skipped with a "
                    "warning.  DIR may not be, or contain, an input.",
        epilog="example:\n  nasfcos predict model.py photo.png more/ --weights runs/synth/final.pt "
               "-o preds")
    A.add_detector_model(parser, weights_help="final.pt from 'nasfcos train' (model.py only)",
                         backend_help="runner backend, BACKEND[:PRECISION] (torch, torch:bf16, "
                         "onnxruntime, openvino, openvino:bf16, tensorrt; default on cpu: the "
                         "fastest measured engine within the accuracy budget, see the README)")
    parser.add_argument("images", nargs="+", help="image files or folders of images")
    parser.add_argument("-o", "--output", type=A.output_dir, required=True, help="output folder")
    parser.add_argument("--score-thresh", type=A.float_range(0.0, 1.0), default=0.3,
                        help="keep detections scoring at least this (default 0.3)")
    parser.add_argument("--no-draw", action="store_true", help="write predictions.json only")
    A.add_json(parser, "print the predictions as JSON")
    args = parser.parse_args(argv)
    from nasfcos.runtime.artifact import form_of
    from nasfcos.runtime.predict import predict

    out = Path(args.output)
    backend = args.backend
    if backend is None and args.device == "cpu" and form_of(args.model) != "engine":
        from nasfcos.runtime.cpu_default import choose_cpu_engine

        choice = choose_cpu_engine(args.model)
        backend = choice.engine
        print(f"predict: engine {choice.engine} ({choice.reason}; --backend overrides it)",
              file=sys.stderr)
    doc = predict(args.model, args.images, out, weights=args.weights,
                  score_thresh=args.score_thresh, min_size=args.min_size, max_size=args.max_size,
                  backend=backend, device=args.device, draw=not args.no_draw,
                  log=(lambda _line: None) if args.json else None)
    if args.json:
        A.print_json(doc)
    else:
        n = len(doc["images"])
        print(f"wrote {out / 'predictions.json'}" + ("" if args.no_draw else f" and {n} drawn images")
              + (f"; skipped {len(doc['skipped'])} unreadable image(s)" if doc["skipped"] else ""))
    return 0
