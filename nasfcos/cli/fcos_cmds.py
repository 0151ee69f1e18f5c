"""``nasfcos data``, ``nasfcos train`` and ``nasfcos eval``."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

from nasfcos.cli import args as A
from nasfcos.errors import NasfcosError
from nasfcos.io import atomic_write_json

_FMT = argparse.RawDescriptionHelpFormatter


def _parser(verb: str, description: str, example: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f"nasfcos {verb}", description=description,
                                   epilog=f"example:\n  {example}", formatter_class=_FMT)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


# --------------------------------------------------------------------------- data


def data_main(argv: list[str]) -> int:
    """``nasfcos data synth`` and ``nasfcos data voc2coco``."""
    parser = _parser("data", "Datasets: write the synthetic set, convert PASCAL VOC to COCO JSON.",
                     "nasfcos data synth -o data/synth --images 300 --size 128 --seed 0\n"
                     "  nasfcos data voc2coco VOCdevkit/VOC2007 --split trainval -o voc07.json")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="{synth,voc2coco}")
    s = sub.add_parser("synth", help="write a deterministic synthetic detection set",
                       description="Write DIR/images/*.png, DIR/train.json, DIR/val.json (COCO) and "
                                   "DIR/manifest.json.  Same seed, same set.",
                       epilog="example:\n  nasfcos data synth -o data/synth --images 300 --size 128",
                       formatter_class=_FMT)
    s.add_argument("-o", "--output", "--out", dest="out", type=A.output_dir, required=True, help="output folder")
    s.add_argument("--images", type=A.int_range(1, 10**6), default=200, help="number of images (default 200)")
    s.add_argument("--size", type=A.int_range(32, A.MAX_SIDE), default=128, help="image side in pixels (default 128)")
    s.add_argument("--seed", type=A.seed, default=0, help="random seed (default 0)")
    s.add_argument("--val-fraction", type=A.float_range(0.0, 1.0), default=0.2, help="share of val images (default 0.2)")
    s.add_argument("--max-objects", type=A.int_range(1, 1000), default=6, help="objects per image at most (default 6)")
    v = sub.add_parser("voc2coco", help="convert a PASCAL VOC folder to COCO JSON",
                       description="Convert VOCDIR/Annotations/*.xml (optionally only the ids in "
                                   "ImageSets/Main/SPLIT.txt) to COCO JSON; image file names are "
                                   "relative to VOCDIR/JPEGImages.",
                       epilog="example:\n  nasfcos data voc2coco VOCdevkit/VOC2007 --split test -o "
                              "voc07_test.json", formatter_class=_FMT)
    v.add_argument("voc_dir", type=A.input_dir, help="VOC folder holding Annotations/")
    v.add_argument("-o", "--output", "--out", dest="out", type=A.output_file, required=True, help="output COCO JSON file")
    v.add_argument("--split", default=None, help="ImageSets/Main split name (default: all XML files)")
    v.add_argument("--include-difficult", action="store_true",
                   help="keep difficult objects (as iscrowd=1, ignored by COCO eval)")
    args = parser.parse_args(argv)
    if args.cmd == "synth":
        from nasfcos.fcos.synth import SynthConfig, write_synthetic

        cfg = SynthConfig(images=args.images, size=args.size, seed=args.seed,
                          val_fraction=args.val_fraction, max_objects=args.max_objects)
        manifest = write_synthetic(args.out, cfg, progress=sys.stderr.isatty())  # seconds
        c = manifest["counts"]
        print(f"wrote {args.out}: {c['train']['images']} train / {c['val']['images']} val images, "
              f"{c['train']['annotations'] + c['val']['annotations']} boxes, "
              f"{len(manifest['classes'])} classes (manifest.json)")
        return 0
    from nasfcos.fcos.voc import convert_voc

    summary = convert_voc(args.voc_dir, args.out, split=args.split,
                          include_difficult=args.include_difficult)
    print(f"wrote {args.out}: {summary['images']} images, {summary['annotations']} boxes, "
          f"{len(summary['classes'])} classes")
    return 0


# --------------------------------------------------------------------------- train


def train_main(argv: list[str]) -> int:
    """``nasfcos train model.py --data DIR ... --out RUN``."""
    from nasfcos.fcos.train import PRESETS, TrainConfig, apply_preset, train

    parser = _parser(
        "train",
        "Train a compiled detector (model.py with Detector) with FCOS losses: SGD + momentum, "
        "warm-up, step decay, gradient clipping, atomic resumable checkpoints, metrics.jsonl, "
        "loss.png, COCO mAP on the val split at the end.  Multi-GPU: launch with torchrun.",
        "nasfcos train model.py --data data/synth --iters 2000 --batch 8 --lr 0.01 "
        "--min-size 128 --max-size 128 --out runs/synth\n"
        "  torchrun --nproc-per-node 8 -m nasfcos train model.py --data coco --preset coco "
        "--out runs/coco")
    parser.add_argument("model", type=A.input_file, help="compiled model.py (with --detector)")
    parser.add_argument("--data", help="data folder (train.json, val.json, images/)")
    parser.add_argument("--ann", help="explicit training annotation JSON (instead of --data)")
    parser.add_argument("--images", help="explicit image folder (with --ann)")
    parser.add_argument("-o", "--output", "--out", dest="out", type=A.output_dir, required=True,
                        help="run folder (checkpoints, logs, plots)")
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="schedule preset: coco = the paper's (90k iters at batch 16, lr 0.01, "
                             "steps 60k/80k, warm-up 500 from 1/3); flags given override it")
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=A.positive_int, help="train for N epochs")
    g.add_argument("--iters", type=A.positive_int, help="train for N iterations")
    parser.add_argument("--batch", type=A.positive_int, help="total batch size over processes (default 16)")
    parser.add_argument("--lr", type=A.float_range(0.0, 10.0, lo_open=True), help="base learning rate (default 0.01 * batch / 16)")
    parser.add_argument("--momentum", type=A.float_range(0.0, 1.0), help="SGD momentum (default 0.9)")
    parser.add_argument("--weight-decay", type=A.non_negative_float, help="weight decay (default 1e-4)")
    parser.add_argument("--warmup-iters", type=A.non_negative_int, help="linear warm-up iterations (default 500)")
    parser.add_argument("--steps", type=A.positive_int, nargs="+",
                        help="iterations where lr drops x0.1 (default: 2/3 and 8/9 of the run)")
    parser.add_argument("--clip-grad", type=A.non_negative_float, help="max gradient norm, 0 = off (default 35)")
    parser.add_argument("--amp", action="store_true", help="mixed precision (fp16 + GradScaler; CUDA only)")
    parser.add_argument("--min-size", type=A.int_range(32, A.MAX_SIDE), help="resize short side to (default 800)")
    parser.add_argument("--max-size", type=A.int_range(32, A.MAX_SIDE), help="cap long side at (default 1333)")
    parser.add_argument("--crop", type=A.size_hw, help="random crop N or HxW after resizing (e.g. 384)")
    parser.add_argument("--hflip", type=A.float_range(0.0, 1.0), help="horizontal flip probability (default 0.5)")
    parser.add_argument("--no-center-sampling", action="store_true", help="FCOS without center sampling")
    parser.add_argument("--box-loss", choices=("giou", "iou"), default="giou", help="default giou")
    parser.add_argument("--backbone-weights", type=A.input_file, help="state_dict file for Detector.backbone")
    parser.add_argument("--fpn-channels", type=A.width, help="override the compiled FPN width")
    parser.add_argument("--head-channels", type=A.width, help="override the compiled head width")
    parser.add_argument("--workers", type=A.int_range(0, 256), default=2, help="data loader workers (default 2)")
    parser.add_argument("--device", type=A.device, help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--seed", type=A.seed, default=0, help="random seed (default 0)")
    parser.add_argument("--log-every", type=A.positive_int, default=20, help="iterations per metrics record")
    parser.add_argument("--checkpoint-every", type=A.positive_int, help="iterations per checkpoint (default 10%%)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    parser.add_argument("--no-eval", action="store_true", help="skip the final COCO evaluation")
    parser.add_argument("-q", "--quiet", "--no-progress", dest="no_progress", action="store_true",
                        help="no progress bar")
    args = parser.parse_args(argv)

    from nasfcos.fcos.losses import FcosConfig

    cfg = TrainConfig(model=args.model, out=args.out, data=args.data, ann=args.ann, images=args.images)
    if args.preset:
        cfg = apply_preset(cfg, args.preset)
    overrides: dict[str, Any] = {
        "epochs": args.epochs, "iters": args.iters, "batch": args.batch, "lr": args.lr,
        "momentum": args.momentum, "weight_decay": args.weight_decay,
        "warmup_iters": args.warmup_iters, "min_size": args.min_size, "max_size": args.max_size,
        "crop": args.crop, "hflip": args.hflip, "backbone_weights": args.backbone_weights,
        "device": args.device,
        "steps": tuple(args.steps) if args.steps else None,
    }
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    if args.epochs is not None:
        cfg = replace(cfg, iters=None)
    if args.clip_grad is not None:
        cfg = replace(cfg, clip_grad=args.clip_grad or None)
    kwargs = {k: v for k, v in (("fpn_channels", args.fpn_channels),
                                ("head_channels", args.head_channels)) if v is not None}
    cfg = replace(cfg, amp=args.amp, workers=args.workers, seed=args.seed, log_every=args.log_every,
                  checkpoint_every=args.checkpoint_every, resume=args.resume, eval=not args.no_eval,
                  model_kwargs=kwargs,
                  fcos=FcosConfig(center_sampling_radius=0.0 if args.no_center_sampling else 1.5,
                                  box_loss=args.box_loss))
    if cfg.epochs is None and cfg.iters is None:
        raise NasfcosError("give --epochs N or --iters N (or --preset coco)")
    summary = train(cfg, progress=not args.no_progress)
    if summary.get("world", 1) > 1:
        import torch.distributed as dist

        if dist.get_rank() != 0:
            return 0
    f = summary["final"]
    print(f"trained {summary['iters']} iterations in {summary['time_s']:.1f} s: loss {f.get('loss', 0):.4f} "
          f"(cls {f.get('cls', 0):.4f}, box {f.get('box', 0):.4f}, ctr {f.get('ctr', 0):.4f})")
    if "eval" in summary:
        e = summary["eval"]
        print(f"val: AP {e['AP']:.4f}  AP50 {e['AP50']:.4f}  AP75 {e['AP75']:.4f}  "
              f"APs {e['APs']:.4f}  APm {e['APm']:.4f}  APl {e['APl']:.4f}")
    print(f"run folder: {args.out} (final.pt, last.pt, metrics.jsonl, loss.png, summary.json)")
    return 0


# --------------------------------------------------------------------------- eval


def eval_main(argv: list[str]) -> int:
    """``nasfcos eval model.py|model.onnx|model.engine --data DIR [-o metrics.json]``."""
    from nasfcos.fcos.evaluate import METRIC_NAMES, EvalConfig, evaluate
    from nasfcos.runtime.runners import make_runner
    from nasfcos.weights import load_weights_file

    parser = _parser(
        "eval",
        "COCO mAP (AP, AP50, AP75, APs/m/l, pycocotools) of a model on a data split, for any "
        "backend: model.py (PyTorch, with --weights), model.onnx, model.engine.",
        "nasfcos eval model.py --weights runs/synth/final.pt --data data/synth -o metrics.json\n"
        "  nasfcos eval model.onnx --data data/synth --min-size 128 --max-size 128")
    parser.add_argument("model", type=A.input_file, help="model.py, model.onnx or model.engine")
    parser.add_argument("--data", help="data folder (split .json + images/)")
    parser.add_argument("--split", default="val", help="split name in --data (default val)")
    parser.add_argument("--ann", help="explicit annotation JSON (instead of --data)")
    parser.add_argument("--images", help="explicit image folder (with --ann)")
    parser.add_argument("--weights", type=A.input_file, help="final.pt / last.pt from 'nasfcos train' (model.py only)")
    parser.add_argument("--num-classes", type=A.int_range(1, 100_000), help="classes, when --weights has no metadata")
    parser.add_argument("--backend", help="runner backend (torch, onnxruntime, tensorrt; default by file)")
    parser.add_argument("--device", type=A.device, default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--min-size", type=A.int_range(32, A.MAX_SIDE), default=800, help="resize short side to (default 800)")
    parser.add_argument("--max-size", type=A.int_range(32, A.MAX_SIDE), default=1333, help="cap long side at (default 1333)")
    parser.add_argument("--input-size", type=A.size_hw, help="fixed input HxW (default: the model's, if static)")
    parser.add_argument("--batch", type=A.positive_int, default=8, help="images per batch (default 8)")
    parser.add_argument("--max-images", type=A.positive_int, help="evaluate only the first N images")
    parser.add_argument("-o", "--output", type=A.output_file, help="write the metrics as JSON here")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    A.add_quiet(parser)
    args = parser.parse_args(argv)
    path = Path(args.model)
    if not args.quiet and not sys.stderr.isatty():  # no bar in logs: one line per stage
        print(f"eval: {path} on {args.ann or args.data} ...", file=sys.stderr, flush=True)
    ckpt = None
    if path.suffix == ".py":
        if args.weights is None:
            warnings.warn("no --weights: evaluating an untrained model", stacklevel=1)
        else:
            ckpt = load_weights_file(args.weights)
    opts: dict[str, Any] = {}
    if path.suffix == ".py":
        opts = {"kind": "detector", "weights": args.weights}
        if args.num_classes is not None:
            opts["overrides"] = {"num_classes": args.num_classes}
    runner = make_runner(path, args.backend, args.device, **opts)
    if runner.kind != "detector":
        raise NasfcosError(f"{path}: not a detector (inputs {', '.join(runner.input_names)}); "
                           "eval needs one: compile and export with --detector")
    cfg = EvalConfig(min_size=args.min_size, max_size=args.max_size, batch_size=args.batch,
                     input_size=args.input_size)
    metrics = evaluate(runner, data=args.data, split=args.split, ann=args.ann, images=args.images,
                       cfg=cfg, progress=sys.stderr.isatty() and not args.quiet, max_images=args.max_images,
                       model_cat_ids=ckpt.get("cat_ids") if ckpt else None)
    if hasattr(runner, "close"):
        runner.close()
    metrics["model"] = str(path)
    if args.output:
        atomic_write_json(args.output, metrics)
    if args.json:
        _print_json(metrics)
    else:
        print(metrics["summary"])
        print("  ".join(f"{m} {metrics[m]:.4f}" for m in METRIC_NAMES)
              + f"   ({metrics['images']} images, {metrics['detections']} detections)")
    return 0
