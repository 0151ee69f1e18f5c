"""The authors' released NAS-FCOS models: their 7 configs and the checkpoint -> model.py key map.

The release (GitHub ``Lausannen/NAS-FCOS``, maskrcnn-benchmark) trains seven detectors
(:data:`RELEASE_MODELS`); each is one of the two shipped genotypes compiled at width 256 with
the release's backbone variant (``*_c2`` ResNets, ``mobilenet_v2``), the release's Caffe2
input normalisation, pixel-unit box regression and post-processing (the compiler's defaults).

:func:`map_checkpoint` turns a release checkpoint (``{"model": state_dict, "optimizer", ...}``,
keys with or without ``module.``; or a bare state_dict) into a state_dict of the compiled
``Detector``.  The map is total and explicit: every entry of the compiled model gets exactly one
checkpoint entry (:func:`release_key` names it), every checkpoint entry is used or listed as
deliberately ignored (:data:`IGNORED_REASONS`), and any mismatch is a one-line
:class:`~nasfcos.errors.NasfcosError` naming the first key and both shapes.
"""

from __future__ import annotations

import io
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nasfcos.compiler.codegen import compile_to_module
from nasfcos.compiler.options import CompileOptions
from nasfcos.errors import NasfcosError, first_line
from nasfcos.genotypes import Genotype, load_paper_genotype, read_release_config
from nasfcos.genotypes.resolve import YAML_SUFFIXES
from nasfcos.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    folder_lock,
    sha256_bytes,
    sha256_file,
    staged_folder,
)
from nasfcos.weights import check_finite_state

#: Width of every released model (``SEARCH.DECODER.AGG_SIZE``).
RELEASE_WIDTH = 256
#: Number of foreground classes (COCO).
RELEASE_CLASSES = 80


@dataclass(frozen=True)
class ReleaseModel:
    """One released detector: config name, its yaml in the release, the shipped genotype it
    is, the compiled backbone, and the COCO AP (minival) the release reports."""

    name: str
    config_file: str
    genotype: str
    backbone: str
    coco_ap: float


RELEASE_MODELS: dict[str, ReleaseModel] = {m.name: m for m in (
    ReleaseModel("Mobile_NAS", "configs/search/Mobile_NAS_densebox.yaml", "nas_fcos_fpn", "mobilenet_v2", 32.6),
    ReleaseModel("Mobile_NAS_head", "configs/search/Mobile_NAS_head.yaml", "nas_fcos_fpn_head", "mobilenet_v2", 34.4),
    ReleaseModel("R_50_NAS", "configs/search/R_50_NAS_densebox.yaml", "nas_fcos_fpn", "resnet50_c2", 38.5),
    ReleaseModel("R_50_NAS_head", "configs/search/R_50_NAS_head.yaml", "nas_fcos_fpn_head", "resnet50_c2", 39.5),
    ReleaseModel("R_101_NAS", "configs/search/R_101_NAS_densebox.yaml", "nas_fcos_fpn", "resnet101_c2", 42.1),
    ReleaseModel("R_101_NAS_head", "configs/search/R_101_NAS_head.yaml", "nas_fcos_fpn_head", "resnet101_c2", 42.8),
    ReleaseModel("R_101_X_32x8d_NAS", "configs/search/R_101_X_32x8d_NAS_densebox.yaml", "nas_fcos_fpn",
                 "resnext101_32x8d_c2", 43.4),
)}
#: The yaml names of the FCOS-head ("densebox") configs, accepted for the model names.
RELEASE_ALIASES: dict[str, str] = {
    Path(m.config_file).stem: name for name, m in RELEASE_MODELS.items() if Path(m.config_file).stem != name
}

#: COCO's 80 categories in the release's contiguous order (model label i -> release label i + 1).
COCO_CLASSES: tuple[tuple[int, str], ...] = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"),
    (7, "train"), (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"),
    (13, "stop sign"), (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"),
    (19, "horse"), (20, "sheep"), (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"),
    (25, "giraffe"), (27, "backpack"), (28, "umbrella"), (31, "handbag"), (32, "tie"),
    (33, "suitcase"), (34, "frisbee"), (35, "skis"), (36, "snowboard"), (37, "sports ball"),
    (38, "kite"), (39, "baseball bat"), (40, "baseball glove"), (41, "skateboard"), (42, "surfboard"),
    (43, "tennis racket"), (44, "bottle"), (46, "wine glass"), (47, "cup"), (48, "fork"),
    (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"), (54, "sandwich"),
    (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"),
    (61, "cake"), (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"),
    (67, "dining table"), (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"),
    (76, "keyboard"), (77, "cell phone"), (78, "microwave"), (79, "oven"), (80, "toaster"),
    (81, "sink"), (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"),
    (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
)

#: Checkpoint entries the compiled model does not use, by reason (regular expressions on the
#: key without ``module.``).
IGNORED_REASONS: dict[str, str] = {
    r"decoder\.fpn\.adapt1\..*": "adapter of C2: built by the release but never read by the genotype",
    r"encoder\.body\..*num_batches_tracked": "BN step counter of the backbone (the compiled trunk "
                                             "uses frozen BN, which has none; not used at inference)",
}


@dataclass(frozen=True)
class ReleaseTarget:
    """What to compile for an import: the config's name, genotype, backbone and options."""

    name: str
    config_file: str
    genotype: Genotype
    options: CompileOptions
    coco_ap: float | None


def _backbone_of(conv_body: str, stride_in_1x1: bool, groups: int, width: int, where: str) -> str:
    if conv_body == "MobileNetV2":
        return "mobilenet_v2"
    table = {("R-50-NAS", True, 1, 64): "resnet50_c2", ("R-101-NAS", True, 1, 64): "resnet101_c2",
             ("R-101-NAS", False, 32, 8): "resnext101_32x8d_c2"}
    key = (conv_body, stride_in_1x1, groups, width)
    if key not in table:
        raise NasfcosError(f"{where}: backbone {conv_body} (STRIDE_IN_1X1 {stride_in_1x1}, {groups} groups x "
                           f"{width}) is not one of the release's (R-50-NAS, R-101-NAS, X-101 32x8d, MobileNetV2)")
    return table[key]


def release_target(config: str) -> ReleaseTarget:
    """The compile target of a release config: one of :data:`RELEASE_MODELS` (or its yaml name),
    or a release config file ``*.yaml``."""
    if Path(config).suffix.lower() in YAML_SUFFIXES:
        cfg = read_release_config(config)
        backbone = _backbone_of(cfg.conv_body, cfg.stride_in_1x1, cfg.num_groups, cfg.width_per_group, config)
        opts = CompileOptions(fpn_channels=cfg.agg_size, num_classes=cfg.num_classes, detector=True,
                              backbone=backbone, preprocess="caffe2")
        name = Path(config).stem
        known = RELEASE_MODELS.get(RELEASE_ALIASES.get(name, name))
        return ReleaseTarget(name, str(config), cfg.genotype, opts, known.coco_ap if known else None)
    name = RELEASE_ALIASES.get(config, config)
    if name not in RELEASE_MODELS:
        raise NasfcosError(f"config: unknown release config {config!r} (expected one of: "
                           f"{', '.join(RELEASE_MODELS)}, a *_densebox name, or a release .yaml file)")
    m = RELEASE_MODELS[name]
    opts = CompileOptions(fpn_channels=RELEASE_WIDTH, num_classes=RELEASE_CLASSES, detector=True,
                          backbone=m.backbone, preprocess="caffe2")
    return ReleaseTarget(m.name, m.config_file, load_paper_genotype(m.genotype), opts, m.coco_ap)


# --- compiled key -> release key ----------------------------------------------------------
#: MobileNetV2 inverted-residual blocks: torchvision's ``conv`` indices -> the release's.
_MBV2_T1 = {"0.0": "0", "0.1": "1", "1": "3", "2": "4"}  # expansion 1 (features.1)
_MBV2_T6 = {"0.0": "0", "0.1": "1", "1.0": "3", "1.1": "4", "2": "6", "3": "7"}


def _op_key(rest: str, prefix: str, kind: str) -> str:
    """A searched op's entry ``rest`` (compiled class ``kind``) -> the release's key under ``prefix``."""
    sub, _, leaf = rest.partition(".")
    if kind == "DeformConvNormReLU":  # DefConv / GN_DefConv: dcn = Sequential(DCN, norm, ReLU)
        return f"{prefix}.dcn.{0 if sub == 'conv' else 1}.{leaf}"
    if kind == "ConvNormReLU":  # head conv1x1 / conv3x3: Sequential(conv, GN, ReLU)
        return f"{prefix}.{0 if sub == 'conv' else 1}.{leaf}"
    if kind == "SepConv":  # SepConv / GN_SepConv with repeats=1: op.sep_0 = (dw, pw, norm, ReLU)
        return f"{prefix}.op.sep_0.{ {'depthwise': 0, 'pointwise': 1, 'norm': 2}[sub] }.{leaf}"
    raise KeyError(rest)


def release_key(key: str, module_kinds: dict[str, str], share: tuple[int, ...], head_kind: str) -> str:
    """The release's state_dict key (without ``module.``) of compiled Detector entry ``key``.

    ``module_kinds`` maps a compiled op module path (``decoder.fpn_block0.op0``) to its class
    name, which decides the release's layout (DCN ``.dcn.0/1``, conv ``.0/1``, sep conv
    ``.op.sep_0.0/1/2``).  Raises ``KeyError`` for an entry the release has no name for.
    """
    if key.startswith("backbone.body."):
        rest = key[len("backbone.body."):]
        if rest.startswith("features."):  # MobileNetV2
            m = re.fullmatch(r"features\.(\d+)\.conv\.(\d+(?:\.\d+)?)\.(\w+)", rest)
            if m:
                block, idx, leaf = int(m.group(1)), m.group(2), m.group(3)
                table = _MBV2_T1 if block == 1 else _MBV2_T6
                return f"encoder.body.features.{block}.conv.{table[idx]}.{leaf}"
            return f"encoder.body.{rest}"
        if rest.startswith(("conv1.", "bn1.")):
            return f"encoder.body.stem.{rest}"
        if rest.startswith("layer"):
            return f"encoder.body.{rest}"
        raise KeyError(key)
    if not key.startswith("decoder."):
        raise KeyError(key)
    rest = key[len("decoder."):]
    m = re.fullmatch(r"adapt_c(\d)\.(conv|bn)\.(.+)", rest)
    if m:
        return f"decoder.fpn.adapt{int(m.group(1)) - 1}.{0 if m.group(2) == 'conv' else 1}.{m.group(3)}"
    m = re.fullmatch(r"fpn_block(\d)\.(op[01]|agg)\.(.+)", rest)
    if m:
        k, part, tail = m.group(1), m.group(2), m.group(3)
        if part == "agg":
            if tail in ("a", "b"):
                return f"decoder.fpn._ops.{k}.2.{tail}"
            sub, _, leaf = tail.partition(".")
            return f"decoder.fpn._ops.{k}.2.conv1x1.{0 if sub == 'norm' else 2}.{leaf}"
        return _op_key(tail, f"decoder.fpn._ops.{k}.{part[-1]}", module_kinds.get(f"decoder.fpn_block{k}.{part}", ""))
    if re.fullmatch(r"(p6|p7)\.(weight|bias)", rest):
        return f"decoder.fpn.top_blocks.{rest}"
    if re.fullmatch(r"(cls_logits|bbox_pred|centerness)\.(weight|bias)|scales\.\d\.scale", rest):
        return f"decoder.rpn.head.{rest}"
    m = re.fullmatch(r"(cls|reg)_tower_(shared|p[3-7])_(\d)\.(.+)", rest)
    if m:
        branch, where, j, tail = m.group(1), m.group(2), int(m.group(3)), m.group(4)
        if head_kind == "fcos":
            tower = "cls_tower" if branch == "cls" else "bbox_tower"
            sub, _, leaf = tail.partition(".")
            return f"decoder.rpn.head.{tower}.{3 * j + (0 if sub == 'conv' else 1)}.{leaf}"
        if head_kind != "sequential":
            raise KeyError(key)
        if where == "shared":
            prefix = f"decoder.rpn.head._{branch}_head_global_ops.{j - share[0]}"
        else:
            prefix = f"decoder.rpn.head._{branch}_head_split_ops.{'34567'.index(where[1])}.{j}"
        return _op_key(tail, prefix, module_kinds.get(f"decoder.{branch}_tower_{where}_{j}", ""))
    raise KeyError(key)


def _ignored_reason(key: str) -> str | None:
    for pattern, reason in IGNORED_REASONS.items():
        if re.fullmatch(pattern, key):
            return reason
    return None


def unwrap_checkpoint(obj: Any, source: str) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """(state_dict without ``module.``, the prefix stripped, other top-level entries) of a
    loaded release checkpoint."""
    if not isinstance(obj, dict):
        raise NasfcosError(f"{source}: not a checkpoint (a {type(obj).__name__}, expected a dict)")
    other: list[str] = []
    if isinstance(obj.get("model"), dict):
        other = sorted(str(k) for k in obj if k != "model")
        state = obj["model"]
    else:
        state = obj
    bad = next((k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if bad is not None or not state:
        what = f"entry {str(bad)[:60]!r} is not a tensor" if bad is not None else "no entries"
        raise NasfcosError(f"{source}: not a model state_dict ({what})")
    prefix = "module." if all(k.startswith("module.") for k in state) else ""
    return {k[len(prefix):]: v for k, v in state.items()}, prefix, other


@dataclass
class MappingResult:
    """The compiled state_dict and a summary of how each checkpoint entry was used."""

    state: dict[str, torch.Tensor]
    summary: dict[str, Any]


def map_checkpoint(ckpt: dict[str, torch.Tensor], target_state: dict[str, torch.Tensor],
                   module_kinds: dict[str, str], genotype: Genotype, *, prefix: str = "",
                   config: str = "", source: str = "checkpoint") -> MappingResult:
    """Fill every entry of ``target_state`` (the compiled Detector's state_dict: names, shapes,
    dtypes; tensors may be on the meta device) from ``ckpt`` (release keys without ``module.``).

    Raises :class:`NasfcosError` at the first model entry without a checkpoint entry, the first
    shape mismatch, or the first checkpoint entry that is neither used nor deliberately ignored.
    """
    out: dict[str, torch.Tensor] = {}
    used: dict[str, str] = {}
    reshaped: list[str] = []
    for key, want in target_state.items():
        try:
            rkey = release_key(key, module_kinds, genotype.share, genotype.head.kind)
        except KeyError:
            raise NasfcosError(f"model entry {key!r} has no counterpart in the release's layout") from None
        if rkey not in ckpt:
            hint = guess_config(ckpt)
            extra = f"; it looks like a {hint} checkpoint" if hint and hint != config else ""
            raise NasfcosError(f"{source}: missing entry {prefix + rkey!r} (for {key!r}) of config "
                               f"{config}{extra}")
        got = ckpt[rkey]
        if tuple(got.shape) != tuple(want.shape):
            if rkey.endswith(".scale") and got.numel() == 1 and want.numel() == 1:
                got = got.reshape(want.shape)  # the release's Scale holds shape (1,), ours ()
                reshaped.append(rkey)
            else:
                hint = guess_config(ckpt)
                extra = f"; it looks like a {hint} checkpoint" if hint and hint != config else ""
                raise NasfcosError(f"{source}: entry {prefix + rkey!r} has shape {tuple(got.shape)} but "
                                   f"{key!r} of config {config} needs {tuple(want.shape)}{extra}")
        if got.dtype != want.dtype:
            if got.dtype.is_floating_point != want.dtype.is_floating_point:
                raise NasfcosError(f"{source}: entry {prefix + rkey!r} is {got.dtype}, {key!r} needs {want.dtype}")
            got = got.to(want.dtype)
        out[key] = got.detach().clone().contiguous()
        used[rkey] = key
    ignored: dict[str, list[str]] = {}
    for rkey in ckpt:
        if rkey in used:
            continue
        reason = _ignored_reason(rkey)
        if reason is None:
            raise NasfcosError(f"{source}: entry {prefix + rkey!r} has no place in config {config} "
                               f"(neither used nor a known unused entry)")
        ignored.setdefault(reason, []).append(prefix + rkey)
    summary = {
        "checkpoint_prefix": prefix,
        "checkpoint_entries": len(ckpt),
        "model_entries": len(target_state),
        "mapped": len(used),
        "reshaped": [prefix + k for k in reshaped],
        "ignored": [{"reason": r, "count": len(ks), "keys": ks} for r, ks in ignored.items()],
        "rules": "backbone.body.{conv1,bn1} <- encoder.body.stem.*; backbone.body.layer* <- encoder.body.layer*; "
                 "MobileNetV2 conv indices renumbered (torchvision -> release); adapt_cN <- decoder.fpn.adapt{N-1}.{0,1}; "
                 "fpn_block{k}.op{j} <- decoder.fpn._ops.{k}.{j}.dcn.{0,1} / .op.sep_0.{0,1,2}; "
                 "fpn_block{k}.agg <- decoder.fpn._ops.{k}.2.conv1x1.{0,2} / .a .b; p6/p7 <- decoder.fpn.top_blocks; "
                 "{cls,reg}_tower_shared_{j} <- decoder.rpn.head._{cls,reg}_head_global_ops.{j} (NAS head) or "
                 "cls_tower/bbox_tower.{3j,3j+1} (FCOS head); predictors and scales <- decoder.rpn.head.*",
    }
    return MappingResult(out, summary)


def guess_config(ckpt: dict[str, torch.Tensor]) -> str | None:
    """Which release config a checkpoint (keys without ``module.``) looks like, or None."""
    keys = set(ckpt)
    if "encoder.body.features.0.0.weight" in keys:
        body = "Mobile"
    elif "encoder.body.layer3.22.conv1.weight" in keys:
        w = ckpt.get("encoder.body.layer1.0.conv2.weight")
        body = "R_101_X_32x8d" if w is not None and w.ndim == 4 and w.shape[1] * 32 == w.shape[0] else "R_101"
    elif "encoder.body.layer3.5.conv1.weight" in keys:
        body = "R_50"
    else:
        return None
    head = "_head" if any(k.startswith("decoder.rpn.head._cls_head_") for k in keys) else ""
    name = f"{body}_NAS{head}"
    return name if name in RELEASE_MODELS else None


def _load_checkpoint(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` with every failure as one line."""
    if not path.is_file():
        raise NasfcosError(f"{path}: no such checkpoint file")
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"PK":
        what = "a damaged or truncated torch.save archive"
    elif magic[:1] == b"\x80":
        what = "a damaged or truncated pickle"
    else:
        raise NasfcosError(f"{path}: not a PyTorch checkpoint (neither torch.save's zip format nor a pickle)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. pickle protocol notes of the weights-only reader
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():
            raise NasfcosError(f"{path}: refused: it holds objects other than tensors and plain data "
                               "(read with torch.load(weights_only=True))") from None
        raise NasfcosError(f"{path}: {what} ({type(exc).__name__})") from None
    except Exception as exc:  # truncated zip, broken pickle, ...
        raise NasfcosError(f"{path}: {what} ({type(exc).__name__}: {first_line(exc, 100)})") from None


@dataclass
class ConvertedRelease:
    """A release checkpoint converted in memory: the compiled source and module, the
    Detector state_dict (loads strictly into ``module.build()``) and the mapping summary."""

    target: ReleaseTarget
    source: str
    module: Any
    state: dict[str, torch.Tensor]
    summary: dict[str, Any]
    other_entries: list[str]


def convert_release(obj: Any, config: str, source: str = "checkpoint") -> ConvertedRelease:
    """Convert a loaded release checkpoint ``obj`` for ``config`` (see :func:`release_target`)."""
    target = release_target(config)
    state, prefix, other = unwrap_checkpoint(obj, source)
    module = compile_to_module(target.genotype, target.options)
    code = module.__source__  # the source it was compiled from (rendered once)
    with torch.device("meta"):
        det = module.Detector()
    kinds = {name: type(m).__name__ for name, m in det.named_modules()}
    result = map_checkpoint(state, det.state_dict(), kinds, target.genotype, prefix=prefix,
                            config=target.name, source=source)
    return ConvertedRelease(target, code, module, result.state, result.summary, other)


def import_release(checkpoint: str | Path, config: str, out_dir: str | Path) -> dict[str, Any]:
    """Import a release checkpoint: write ``out_dir/model.py``, ``weights.pt`` and
    ``import.json``; returns the import.json document.  Everything is checked (config,
    checkpoint, the total key map) before the first byte is written."""
    release_target(config)  # an unknown config fails before the checkpoint is read
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise NasfcosError(f"{out}: already exists and is not an empty folder (give a new output folder)")
    ckpt_path = Path(checkpoint)
    conv = convert_release(_load_checkpoint(ckpt_path), config, str(ckpt_path))
    check_finite_state(conv.state, f"{ckpt_path} (converted to the model's dtypes)")
    target, opts = conv.target, conv.target.options
    buf = io.BytesIO()
    torch.save(conv.state, buf)
    weights = buf.getvalue()
    model_bytes = conv.source.encode("utf-8")
    coco = opts.num_classes == len(COCO_CLASSES)
    doc: dict[str, Any] = {
        "format": "nasfcos-import/1",
        "config": target.name,
        "config_file": target.config_file,
        "release": {"repository": "Lausannen/NAS-FCOS", "coco_ap_minival": target.coco_ap},
        "checkpoint": {"path": str(ckpt_path), "bytes": ckpt_path.stat().st_size,
                       "sha256": sha256_file(ckpt_path), "other_entries": conv.other_entries},
        "model": {"file": "model.py", "sha256": sha256_bytes(model_bytes), "genotype": target.genotype.name,
                  "genotype_hash": target.genotype.hash(), "backbone": opts.backbone,
                  "fpn_channels": opts.fpn_channels, "head_channels": opts.resolved_head_channels,
                  "num_classes": opts.num_classes, "box_regression": opts.box_regression,
                  "scoring": opts.scoring, "preprocess": opts.resolved_preprocess},
        "weights": {"file": "weights.pt", "sha256": sha256_bytes(weights), "entries": len(conv.state),
                    "loads_into": "build() (strict)"},
        "labels": {
            "convention": "Detector labels are 0-based contiguous class ids: label i is the release's "
                          "label i + 1 and COCO category category_ids[i]",
            "class_names": [n for _, n in COCO_CLASSES] if coco else None,
            "category_ids": [c for c, _ in COCO_CLASSES] if coco else None,
        },
        "input": "RGB float in [0, 1], any size; the Detector normalises (BGR x 255 - mean) and pads to "
                 "a multiple of 32 itself; resizing (shorter side 800, longer <= 1333) is the caller's",
        "mapping": conv.summary,
    }
    with folder_lock(out, "import-release"):  # one run per folder; all files or none
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise NasfcosError(f"{out}: already exists and is not an empty folder (give a new output folder)")
        with staged_folder(out) as tmp:
            atomic_write_text(tmp / "model.py", conv.source)
            atomic_write_bytes(tmp / "weights.pt", weights)
            atomic_write_json(tmp / "import.json", doc)
    return doc
