"""``nasfcos data``, ``nasfcos train`` and ``nasfcos eval``."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import replace
from operator import attrgetter
from pathlib import Path
from typing import Any

from nasfcos.cli import args as A
from nasfcos.errors import NasfcosError
from nasfcos.io import atomic_write_json


def _parser(verb: str, description: str, example: str) -> argparse.ArgumentParser:
    return A.Parser(prog=f"nasfcos {verb}", description=description, epilog=f"example:\n  {example}")


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
                       epilog="example:\n  nasfcos data synth -o data/synth --images 300 --size 128")
    s.add_argument("-o", "--output", "--out", dest="out", type=A.output_dir, required=True, help="output folder")
    s.add_argument("--preset", choices=("default", "easy"), default="default",
                   help="option set: default (hard: 4-90%% scales, up to 6 objects, clutter) or "
                        "easy (600 images, 15-60%% scales, 1-3 objects, no clutter: the "
                        "yardstick set); flags given override it")
    s.add_argument("--images", type=A.int_range(1, 10**6), help="number of images (default 200)")
    s.add_argument("--size", type=A.int_range(32, A.MAX_SIDE), help="image side in pixels (default 128)")
    s.add_argument("--seed", type=A.seed, default=0, help="random seed (default 0)")
    s.add_argument("--val-fraction", type=A.float_range(0.0, 1.0), help="share of val images (default 0.2)")
    s.add_argument("--min-objects", type=A.int_range(1, 1000), help="objects per image at least (default 1)")
    s.add_argument("--max-objects", type=A.int_range(1, 1000), help="objects per image at most (default 6)")
    s.add_argument("--min-scale", type=A.float_range(0.0, 1.0, lo_open=True),
                   help="smallest object side / image side (default 0.04)")
    s.add_argument("--max-scale", type=A.float_range(0.0, 1.0, lo_open=True),
                   help="largest object side / image side (default 0.9)")
    s.add_argument("--no-clutter", action="store_true", help="no unannotated lines and specks")
    s.add_argument("--force", action="store_true",
                   help="replace a data set already in the folder (default: refuse)")
    A.add_json(s, "print the manifest as JSON on stdout")
    A.add_quiet(s)
    v = sub.add_parser("voc2coco", help="convert a PASCAL VOC folder to COCO JSON",
                       description="Convert VOCDIR/Annotations/*.xml (optionally only the ids in "
                                   "ImageSets/Main/SPLIT.txt) to COCO JSON; image file names are "
                                   "relative to VOCDIR/JPEGImages.",
                       epilog="example:\n  nasfcos data voc2coco VOCdevkit/VOC2007 --split test -o "
                              "voc07_test.json")
    v.add_argument("voc_dir", type=A.input_dir, help="VOC folder holding Annotations/")
    v.add_argument("-o", "--output", "--out", dest="out", type=A.output_file, required=True, help="output COCO JSON file")
    v.add_argument("--split", default=None, help="ImageSets/Main split name (default: all XML files)")
    v.add_argument("--include-difficult", action="store_true",
                   help="keep difficult objects (as iscrowd=1, ignored by COCO eval)")
    args = parser.parse_args(argv)
    if args.cmd == "synth":
        from nasfcos.fcos.synth import PRESETS as SYNTH_PRESETS
        from nasfcos.fcos.synth import SynthConfig, write_synthetic

        cfg = replace(SynthConfig(seed=args.seed), **SYNTH_PRESETS[args.preset])
        given = {k: getattr(args, k) for k in ("images", "size", "val_fraction", "min_objects",
                                               "max_objects", "min_scale", "max_scale")}
        given["clutter"] = False if args.no_clutter else None
        cfg = replace(cfg, **{k: v for k, v in given.items() if v is not None})
        manifest = write_synthetic(args.out, cfg, progress=not args.quiet,
                                   force=args.force)
        if args.json:
            A.print_json(manifest)
        elif not args.quiet:
            c = manifest["counts"]
            print(f"wrote {args.out}: {c['train']['images']} train / {c['val']['images']} val "
                  f"images, {c['train']['annotations'] + c['val']['annotations']} boxes, "
                  f"{len(manifest['classes'])} classes (manifest.json)")
        return 0
    from nasfcos.fcos.voc import convert_voc

    summary = convert_voc(args.voc_dir, args.out, split=args.split,
                          include_difficult=args.include_difficult)
    print(f"wrote {args.out}: {summary['images']} images, {summary['annotations']} boxes, "
          f"{len(summary['classes'])} classes")
    return 0


# --------------------------------------------------------------------------- train


def _given_dests(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """Destinations of the options actually present on the command line."""
    saved = {a.dest: a.default for a in parser._actions}
    try:
        for a in parser._actions:
            a.default = argparse.SUPPRESS
        ns = parser.parse_args(argv)
    finally:
        for a in parser._actions:
            a.default = saved[a.dest]
    return set(vars(ns))


#: Flags of ``train`` and the TrainConfig fields they set (default: the same name).
_FLAG_FIELDS: dict[str, tuple[str, ...]] = {
    "no_eval": ("eval",), "fpn_channels": ("model_kwargs",), "head_channels": ("model_kwargs",),
    "center_sampling": ("fcos.center_sampling_radius",), "box_loss": ("fcos.box_loss",),
    "cls_norm": ("fcos.cls_norm",),
}
#: Flags that never change what a run computes: free to differ on resume.
_FREE_ON_RESUME = {"model", "out", "resume", "override", "no_progress", "workers", "device"}


def _resumed_config(flags_cfg: Any, given: set[str], args: argparse.Namespace) -> Any:
    """The run's stored config.json with the flags given now: a flag that changes a stored
    setting is an error unless ``--override``."""
    from nasfcos.fcos.train import PRESETS, config_from_json

    path = Path(args.out) / "config.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise NasfcosError(f"{path}: cannot read the run's configuration ({exc})") from None
    if not isinstance(doc, dict):
        raise NasfcosError(f"{path}: not a training configuration")
    stored = config_from_json(doc)
    touched: list[str] = []
    for dest in sorted(given - _FREE_ON_RESUME):
        if dest == "preset":
            touched += [k for k in PRESETS[args.preset]]
        else:
            touched += list(_FLAG_FIELDS.get(dest, (dest,)))
    differ = [f for f in dict.fromkeys(touched) if attrgetter(f)(flags_cfg) != attrgetter(f)(stored)]
    if differ and not args.override:
        shown = ", ".join(f"{f} {attrgetter(f)(stored)!r} -> {attrgetter(f)(flags_cfg)!r}" for f in differ[:3])
        raise NasfcosError(f"--resume: flags differ from {path} ({shown}); drop them, or add "
                           "--override")
    top = {f.split(".")[0] for f in differ if "." not in f}
    cfg = replace(stored, **{f: getattr(flags_cfg, f) for f in top})
    fcos_changes = {f.split(".")[1]: attrgetter(f)(flags_cfg) for f in differ if f.startswith("fcos.")}
    if fcos_changes:
        cfg = replace(cfg, fcos=replace(cfg.fcos, **fcos_changes))
    free = {"workers": flags_cfg.workers, "device": flags_cfg.device}
    return replace(cfg, model=flags_cfg.model, out=flags_cfg.out, resume=True,
                   **{k: v for k, v in free.items() if k in given})


def _train_parser() -> argparse.ArgumentParser:
    from nasfcos.fcos.losses import BOX_LOSSES, CLS_NORMS
    from nasfcos.fcos.train import PRESETS, TrainConfig

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
                             "steps 60k/80k, warm-up 500 from 1/3); synth = the yardstick recipe "
                             "for 'data synth --preset easy' (128 px, shipped tiny trunk frozen, "
                             "AdamW, 2400 iters); synth-trunk = how that trunk was trained; flags "
                             "given override it")
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=A.positive_int, help="train for N epochs")
    g.add_argument("--iters", type=A.positive_int, help="train for N iterations")
    parser.add_argument("--batch", type=A.positive_int, help="total batch size over processes (default 16)")

    def rule(name: str, parse: Any) -> Any:  # the flag keeps TrainConfig's own rule
        return A.rule(TrainConfig.check_field, name, parse)

    parser.add_argument("--lr", type=rule("lr", A.float_range(0.0, 10.0)), help="base learning rate (default 0.01 * batch / 16)")
    parser.add_argument("--momentum", type=rule("momentum", A.finite_float), help="SGD momentum (default 0.9)")
    parser.add_argument("--weight-decay", type=rule("weight_decay", A.finite_float), help="weight decay (default 1e-4)")
    parser.add_argument("--warmup-iters", type=rule("warmup_iters", A.int_range()), help="linear warm-up iterations (default 500)")
    parser.add_argument("--steps", type=A.positive_int, nargs="+",
                        help="iterations where lr drops x0.1 (default: 2/3 and 8/9 of the run)")
    parser.add_argument("--clip-grad", type=A.non_negative_float, help="max gradient norm, 0 = off (default 35)")
    parser.add_argument("--amp", action="store_true", help="mixed precision (fp16 + GradScaler; CUDA only)")
    A.add_resize(parser)
    parser.add_argument("--crop", type=A.size_hw, help="random crop N or HxW after resizing (e.g. 384)")
    parser.add_argument("--hflip", type=rule("hflip", A.finite_float), help="horizontal flip probability (default 0.5)")
    parser.add_argument("--center-sampling", type=A.non_negative_float, default=0.0, metavar="R",
                        help="FCOS center sampling radius in strides, e.g. 1.5 (default 0: off, "
                             "as the release)")
    parser.add_argument("--box-loss", choices=BOX_LOSSES, default="iou",
                        help="iou: -log((I+1)/(U+1)) (default, the release) or giou")
    parser.add_argument("--cls-norm", choices=CLS_NORMS, default="positives+images",
                        help="focal loss divisor (default positives+images, the release)")
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), help="default sgd (FCOS)")
    parser.add_argument("--backbone-weights",
                        help="trunk weights: a torchvision state_dict file, or tiny_synth / tiny_synth_1500 (the "
                             "shipped tiny trunk trained on the synthetic shapes)")
    parser.add_argument("--freeze-backbone", action=argparse.BooleanOptionalAction, default=None,
                        help="train the decoder only (the synth preset does; --no-freeze-backbone "
                             "fine-tunes the trunk too)")
    parser.add_argument("--save-backbone", action="store_true",
                        help="also write the trained trunk to RUN/backbone.pt (+ backbone.json)")
    A.add_widths(parser, fpn_help="override the compiled FPN width", head_help="override the compiled head width")
    parser.add_argument("--workers", type=A.int_range(0, 256), default=2, help="data loader workers (default 2)")
    parser.add_argument("--device", type=A.device, help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--seed", type=A.seed, default=0, help="random seed (default 0)")
    parser.add_argument("--log-every", type=A.positive_int, default=20, help="iterations per metrics record")
    parser.add_argument("--checkpoint-every", type=A.positive_int, help="iterations per checkpoint (default 10%%)")
    parser.add_argument("--val-ann", type=A.input_file,
                        help="validation annotation JSON (with --ann; default: the val split of --data)")
    parser.add_argument("--val-images", type=A.input_dir, help="validation image folder (with --val-ann)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from last.pt with its config.json")
    parser.add_argument("--override", action="store_true",
                        help="with --resume: let flags given now replace the run's settings")
    parser.add_argument("--no-eval", action="store_true", help="skip the final COCO evaluation")
    A.add_json(parser, "print the run summary as JSON on stdout")
    parser.add_argument("-q", "--quiet", "--no-progress", dest="no_progress", action="store_true",
                        help="no progress bar")
    return parser


def train_main(argv: list[str]) -> int:
    """``nasfcos train model.py --data DIR ... --out RUN``."""
    from nasfcos.fcos.losses import FcosConfig
    from nasfcos.fcos.train import TrainConfig, apply_preset, train

    parser = _train_parser()
    args = parser.parse_args(argv)
    cfg = TrainConfig(model=args.model, out=args.out, data=args.data, ann=args.ann, images=args.images,
                      val_ann=args.val_ann, val_images=args.val_images)
    if args.preset:
        cfg = apply_preset(cfg, args.preset)
    given = {k: getattr(args, k) for k in (
        "epochs", "iters", "batch", "lr", "momentum", "weight_decay", "warmup_iters", "min_size",
        "max_size", "crop", "hflip", "backbone_weights", "device", "optimizer", "freeze_backbone")}
    given.update(save_backbone=args.save_backbone or None,
                 steps=tuple(args.steps) if args.steps else None)
    cfg = replace(cfg, **{k: v for k, v in given.items() if v is not None})
    if args.epochs is not None:
        cfg = replace(cfg, iters=None)
    if args.clip_grad is not None:
        cfg = replace(cfg, clip_grad=args.clip_grad or None)
    kwargs = {k: v for k in ("fpn_channels", "head_channels") if (v := getattr(args, k)) is not None}
    cfg = replace(cfg, amp=args.amp, workers=args.workers, seed=args.seed, log_every=args.log_every,
                  checkpoint_every=args.checkpoint_every, resume=args.resume, eval=not args.no_eval,
                  model_kwargs=kwargs, fcos=FcosConfig(center_sampling_radius=args.center_sampling,
                                                      box_loss=args.box_loss, cls_norm=args.cls_norm))
    if args.resume:
        cfg = _resumed_config(cfg, _given_dests(parser, argv), args)
    elif args.override:
        raise NasfcosError("--override only goes with --resume")
    if cfg.epochs is None and cfg.iters is None:
        raise NasfcosError("give --epochs N or --iters N (or --preset coco)")
    summary = train(cfg, progress=not args.no_progress)
    if summary.get("world", 1) > 1:
        import torch.distributed as dist

        if dist.get_rank() != 0:
            return 0
    if args.json:
        A.print_json(summary)
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
    from nasfcos.runtime.artifact import form_of
    from nasfcos.runtime.doctor import preflight_verb
    from nasfcos.runtime.predict import model_meta
    from nasfcos.runtime.runners import make_runner

    parser = _parser(
        "eval",
        "COCO mAP (AP, AP50, AP75, APs/m/l, pycocotools) of a model on a data split, for any "
        "backend: model.py (PyTorch, with --weights), model.onnx, model.engine.",
        "nasfcos eval model.py --weights runs/synth/final.pt --data data/synth -o metrics.json\n"
        "  nasfcos eval model.onnx --data data/synth --min-size 128 --max-size 128")
    A.add_detector_model(parser, weights_help="final.pt / last.pt from 'nasfcos train' (model.py only)",
                         backend_help="runner backend (torch, onnxruntime, openvino, tensorrt; "
                                      "BACKEND:PRECISION for torch:bf16, openvino:bf16; default by file)")
    parser.add_argument("--data", help="data folder (split .json + images/)")
    parser.add_argument("--split", default="val", help="split name in --data (default val)")
    parser.add_argument("--ann", help="explicit annotation JSON (instead of --data)")
    parser.add_argument("--images", help="explicit image folder (with --ann)")
    A.add_num_classes(parser, "classes, when --weights has no metadata", default=None)
    parser.add_argument("--input-size", type=A.size_hw, help="fixed input HxW (default: the model's, if static)")
    parser.add_argument("--batch", type=A.positive_int,
                        help="images per batch (default: the training run's eval batch, else 8)")
    parser.add_argument("--max-images", type=A.positive_int, help="evaluate only the first N images")
    parser.add_argument("-o", "--output", type=A.output_file, help="write the metrics as JSON here")
    A.add_json(parser, "print the metrics as JSON")
    A.add_quiet(parser)
    args = parser.parse_args(argv)
    preflight_verb(args.model, [args.backend] if args.backend else None, args.device)
    if not args.quiet and not sys.stderr.isatty():  # no bar in logs: one line per stage
        print(f"eval: {args.model} on {args.ann or args.data} ...", file=sys.stderr, flush=True)
    model_file = form_of(args.model) == "model.py"
    if model_file and args.weights is None:
        warnings.warn("no --weights: evaluating an untrained model", stacklevel=1)
    meta = model_meta(args.model, args.weights)
    min_size = args.min_size or int(meta.get("min_size", 800))
    max_size = args.max_size or int(meta.get("max_size", max(1333, min_size)))
    if max_size < min_size:
        raise NasfcosError(f"--max-size {max_size} is smaller than --min-size {min_size}")
    batch = args.batch or int(meta.get("eval_batch", 8))
    overrides = {"num_classes": args.num_classes} if args.num_classes is not None else None
    runner = make_runner(args.model, args.backend, args.device,
                         **({"kind": "detector", "weights": args.weights, "overrides": overrides}
                            if model_file else {}))
    if runner.kind != "detector":
        raise NasfcosError(f"{args.model}: not a detector (inputs {', '.join(runner.input_names)}); "
                           "eval needs one: compile and export with --detector")
    model_k = args.num_classes or meta.get("num_classes") or (
        runner.model.info["num_classes"] if model_file else None)
    metrics = evaluate(runner, data=args.data, split=args.split, ann=args.ann, images=args.images,
                       cfg=EvalConfig(min_size=min_size, max_size=max_size, batch_size=batch,
                                      input_size=args.input_size),
                       progress=not args.quiet, max_images=args.max_images,
                       model_cat_ids=meta.get("cat_ids"),
                       model_num_classes=int(model_k) if model_k is not None else None)
    runner.close()
    metrics.update({"model": args.model, "min_size": min_size, "max_size": max_size, "batch": batch})
    if args.output:
        atomic_write_json(args.output, metrics)
    if args.json:
        A.print_json(metrics)
    else:
        print(metrics["summary"])
        print("  ".join(f"{m} {metrics[m]:.4f}" for m in METRIC_NAMES)
              + f"   ({metrics['images']} images, {metrics['detections']} detections)")
    return 0
