"""Parameters and FLOPs of a detector, split into backbone, FPN and head (paper Table 2).

Conventions (the paper's):

* **FLOPs are multiply-adds (MACs)** of one forward pass at 1088 x 800 (width x height),
  batch 1, backbone + decoder (``Detector.forward_raw``; normalisation and post-processing
  are not counted).  ``torch.utils.flop_counter.FlopCounterMode`` counts a conv as
  2 x MACs (a multiply and an add), so every figure here is its count / 2.
* Only convolutions and matrix products count (as FlopCounterMode does): norms,
  activations, element-wise sums and resizes are free.  Deformable convolutions
  (``torchvision::deform_conv2d``, unknown to FlopCounterMode) get a registered formula
  that counts their convolution MACs, ``N * Cout * Hout * Wout * Cin/groups * kh * kw``,
  like a plain conv of the same shape; the bilinear sampling of the offsets and the mask
  multiply are *not* counted (the conv that predicts offsets and masks is an ordinary conv
  and is counted).
* **Parameters** are ``parameters()`` plus the affine ``weight``/``bias`` of frozen batch
  norms (a frozen BN keeps them as buffers; a trained BN would show them as parameters);
  running statistics are not counted.
* The split: ``backbone`` = everything under ``detector.backbone``; in the decoder, the
  top-level children whose name starts with one of :data:`HEAD_PREFIXES` (towers,
  predictors, scales, the width bridge) are the **head**, those matching
  :data:`FPN_PREFIXES` (backbone adapters, FPN blocks or laterals, p6/p7) the **FPN**;
  anything else is reported as ``other`` (zero for compiled genotypes and the baseline).

Counting runs on the ``meta`` device by default: no memory, no arithmetic, milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torchvision  # noqa: F401  (registers torch.ops.torchvision.*)
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula

from nasfcos.compiler.backbones import backbone_channels, build_backbone
from nasfcos.compiler.baseline import BASELINE_CHANNELS, baseline_module
from nasfcos.compiler.codegen import compile_to_module
from nasfcos.compiler.options import CompileOptions
from nasfcos.errors import NasfcosError, first_line
from nasfcos.genotypes import PAPER_GENOTYPES, resolve_genotype
from nasfcos.modelfile import ModelInfo, RawForward, load_model_file

#: Paper's input size for FLOPs, (height, width) like every size in nasfcos.
PAPER_SIZE: tuple[int, int] = (800, 1088)
#: Decoder children (first name component) that belong to the head.
HEAD_PREFIXES: tuple[str, ...] = ("cls_", "reg_", "bbox_", "centerness", "ctr", "scales", "bridge", "head")
#: Decoder children (first name component) that belong to the FPN.
FPN_PREFIXES: tuple[str, ...] = ("adapt", "fpn", "p6", "p7", "lateral")
COMPONENTS: tuple[str, ...] = ("backbone", "fpn", "head", "other")


def deform_conv2d_flop(
    input_shape: Sequence[int],
    weight_shape: Sequence[int],
    offset_shape: Sequence[int] | None,
    mask_shape: Sequence[int] | None,
    bias_shape: Sequence[int] | None,
    stride_h: int,
    stride_w: int,
    pad_h: int,
    pad_w: int,
    dilation_h: int,
    dilation_w: int,
    groups: int,
    offset_groups: int,
    use_mask: bool,
    *,
    out_shape: Sequence[int],
    **kwargs: Any,
) -> int:
    """FLOPs (2 x MACs, FlopCounterMode's unit) of ``torchvision::deform_conv2d``.

    The convolution part only: ``2 * N * Cout * Hout * Wout * (Cin / groups) * kh * kw``
    (``weight_shape`` is ``[Cout, Cin / groups, kh, kw]``); bilinear sampling is not counted.
    """
    n, c_out, h_out, w_out = (int(v) for v in out_shape)
    _, c_in_per_group, kh, kw = (int(v) for v in weight_shape)
    return 2 * n * c_out * h_out * w_out * c_in_per_group * kh * kw


if torch.ops.torchvision.deform_conv2d not in flop_registry:  # once per process
    register_flop_formula(torch.ops.torchvision.deform_conv2d)(deform_conv2d_flop)


def component_of(decoder_child: str) -> str:
    """``"fpn"``, ``"head"`` or ``"other"`` for a top-level child name of a Decoder."""
    if decoder_child.startswith(HEAD_PREFIXES):
        return "head"
    if decoder_child.startswith(FPN_PREFIXES):
        return "fpn"
    return "other"


@dataclass(frozen=True)
class Profile:
    """Size of one detector configuration.  ``params`` and ``macs`` map ``total``,
    ``backbone``, ``fpn``, ``head`` (and ``other`` when non-zero) to counts; ``macs`` are
    multiply-adds at ``size`` = (height, width)."""

    model: str
    backbone: str
    fpn_channels: int
    head_channels: int
    num_classes: int
    size: tuple[int, int]
    params: dict[str, int]
    macs: dict[str, int]
    source: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def widths(self) -> str:
        """``@128``, or ``@128-256`` when the head is wider than the FPN (the paper's notation)."""
        if self.head_channels == self.fpn_channels:
            return f"@{self.fpn_channels}"
        return f"@{self.fpn_channels}-{self.head_channels}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size)
        d["widths"] = self.widths
        d["flops_convention"] = "multiply-adds (MACs) = torch FlopCounterMode count / 2"
        return d


def _param_split(detector: nn.Module) -> dict[str, int]:
    counts = dict.fromkeys(COMPONENTS, 0)

    def bucket(name: str) -> str:
        top, _, rest = name.partition(".")
        if top == "backbone":
            return "backbone"
        if top == "decoder":
            return component_of(rest.split(".", 1)[0])
        return "other"

    for name, p in detector.named_parameters():
        counts[bucket(name)] += p.numel()
    for mod_name, mod in detector.named_modules():
        if isinstance(mod, torchvision.ops.FrozenBatchNorm2d):
            counts[bucket(mod_name)] += mod.weight.numel() + mod.bias.numel()
    counts["total"] = sum(counts[c] for c in COMPONENTS)
    return counts


def count_macs(fn: Any, *inputs: torch.Tensor) -> int:
    """Multiply-adds of one call ``fn(*inputs)`` (any device, ``meta`` is fastest): the
    convolutions, matrix products and deformable convolutions FlopCounterMode counts."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*inputs)
    return int(counter.get_total_flops()) // 2


def _mac_split(detector: nn.Module, width: int, height: int, device: torch.device) -> dict[str, int]:
    images = torch.zeros(1, 3, height, width, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        RawForward(detector)(images)
    totals = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    root = f"{RawForward.__name__}.detector"
    counts = dict.fromkeys(COMPONENTS, 0)
    counts["backbone"] = totals.get(f"{root}.backbone", 0)
    # a module's count includes its submodules'; containers that are never called themselves
    # (e.g. a Block holding op0/op1/agg) have no entry, so sum the outermost entries only
    decoder_prefix = f"{root}.decoder."
    inside = sorted(name[len(decoder_prefix):] for name in totals if name.startswith(decoder_prefix))
    outermost = [n for n in inside if not any(n.startswith(other + ".") for other in inside)]
    for name in outermost:
        counts[component_of(name)] += totals[decoder_prefix + name]
    # anything counted outside the backbone and the decoder's children (e.g. a matmul
    # written directly in Decoder.forward) is "other"
    counts["other"] += counter.get_total_flops() - sum(counts[c] for c in COMPONENTS)
    counts = {k: v // 2 for k, v in counts.items()}  # FLOPs -> multiply-adds
    counts["total"] = sum(counts[c] for c in COMPONENTS)
    return counts


def profile_detector(
    detector: nn.Module,
    *,
    model: str,
    backbone: str,
    fpn_channels: int,
    head_channels: int,
    num_classes: int,
    size: tuple[int, int] = PAPER_SIZE,
    source: str = "",
) -> Profile:
    """Count parameters and MACs of ``detector`` (anything with ``backbone``, ``decoder`` and
    ``forward_raw(images)``), on whatever device its weights live (``meta`` is fastest)."""
    height, width = size
    first = next(iter(detector.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    was_training = detector.training
    detector.eval()
    try:
        params = _param_split(detector)
        macs = _mac_split(detector, width, height, device)
    finally:
        detector.train(was_training)
    notes = []
    if params["other"] or macs["other"]:
        notes.append("'other': parameters or MACs outside backbone/FPN/head prefixes")
    return Profile(model=model, backbone=backbone, fpn_channels=fpn_channels,
                   head_channels=head_channels, num_classes=num_classes, size=(height, width),
                   params=params, macs=macs, source=source, notes=notes)


@dataclass(frozen=True)
class ProfileRequest:
    """What to profile.

    ``model``: a compiled ``model.py``, a genotype ``.json`` (or list-form JSON, or a release
    config ``.yaml``), a shipped genotype name
    (``nas_fcos_fpn``, ``nas_fcos_fpn_head``) or ``fpn-fcos`` (the FPN-FCOS baseline).
    ``backbone=None``: a model file's compiled ``BACKBONE``, else ``CompileOptions``' default.  Widths left
    ``None`` keep the model file's compiled values; genotypes and the baseline default to 256.
    ``head_channels=None`` means the FPN width (for a model file:
    its compiled head width).  ``size`` is (height, width) in pixels.
    """

    model: str
    backbone: str | None = None
    fpn_channels: int | None = None
    head_channels: int | None = None
    num_classes: int = CompileOptions.num_classes
    size: tuple[int, int] = PAPER_SIZE
    device: str = "meta"


class _Composite(nn.Module):
    """Backbone + a Decoder-only model file's Decoder, profiled like a Detector."""

    def __init__(self, backbone: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder

    def forward_raw(self, images: torch.Tensor) -> Any:
        return self.decoder(self.backbone(images))


def _is_genotype_spec(spec: str) -> bool:
    """Whether ``spec`` names a genotype (a .json / release .yaml file or a shipped name)."""
    if spec.lower().endswith((".json", ".yaml", ".yml")):
        return True
    return spec.removesuffix(".json") in PAPER_GENOTYPES and not Path(spec).exists()


def _load_source(req: ProfileRequest) -> tuple[ModuleType, str, dict[str, Any]]:
    """(model module with ``build``, label, build overrides) for ``req.model``."""
    spec = req.model
    widths: dict[str, Any] = {"num_classes": req.num_classes}
    if req.fpn_channels is not None:
        widths["fpn_channels"] = req.fpn_channels
    if req.head_channels is not None:
        widths["head_channels"] = req.head_channels
    if spec == "fpn-fcos":
        opts = CompileOptions(fpn_channels=req.fpn_channels or BASELINE_CHANNELS,
                              head_channels=req.head_channels, num_classes=req.num_classes,
                              detector=True)
        return baseline_module(opts), "fpn-fcos", {}
    if _is_genotype_spec(spec):
        g = resolve_genotype(spec)
        opts = CompileOptions(fpn_channels=req.fpn_channels or CompileOptions.fpn_channels,
                              head_channels=req.head_channels, num_classes=req.num_classes,
                              detector=True)
        return compile_to_module(g, opts), g.name, {}
    if spec.endswith(".py"):
        module = load_model_file(spec)
        label = ModelInfo.from_module(module).name or Path(spec).stem
        return module, label, widths
    raise NasfcosError(f"{spec}: expected a model.py, a genotype .json, a release config .yaml, a shipped "
                       "genotype name (nas_fcos_fpn, nas_fcos_fpn_head) or fpn-fcos")


def build_for_profile(req: ProfileRequest) -> tuple[nn.Module, str, tuple[int, int], str]:
    """The detector (or backbone + Decoder) that ``req`` describes, on ``req.device``: the
    module, its label, its (FPN, head) widths and its backbone name."""
    if req.backbone is not None:
        backbone_channels(req.backbone)  # validates the name before any compiling
    module, label, overrides = _load_source(req)
    info = ModelInfo.from_module(module)
    backbone = req.backbone or info.backbone or CompileOptions.backbone
    widths = backbone_channels(backbone)
    try:
        with torch.device(req.device):
            if info.kind == "detector":
                net = module.Detector(backbone=backbone, **overrides)
            else:
                net = _Composite(build_backbone(backbone),
                                 module.Decoder(in_channels=widths, **overrides))
    except (TypeError, ValueError, RuntimeError, SystemExit) as exc:  # SystemExit: model code
        raise NasfcosError(f"{req.model}: cannot build it for profiling ({type(exc).__name__}: {first_line(exc)})") from None
    return net, label, info.widths(req.fpn_channels, req.head_channels), backbone


def profile(req: ProfileRequest) -> Profile:
    """Build what ``req`` names and count its parameters and multiply-adds."""
    height, width = req.size
    if width < 32 or height < 32:
        raise NasfcosError(f"size {height}x{width}: both sides must be at least 32 pixels")
    net, label, (fpn, head), backbone = build_for_profile(req)
    try:
        return profile_detector(net, model=label, backbone=backbone, fpn_channels=fpn,
                                head_channels=head, num_classes=req.num_classes, size=(height, width),
                                source=req.model)
    except (ValueError, RuntimeError) as exc:
        raise NasfcosError(f"{req.model}: forward pass failed at {height}x{width} "
                           f"({type(exc).__name__}: {first_line(exc)})") from None


def _m(n: int) -> str:
    return f"{n / 1e6:.2f}"


def _g(n: int) -> str:
    return f"{n / 1e9:.1f}"


def format_table(profiles: Iterable[Profile]) -> str:
    """The profiles as an aligned text table (params in millions, MACs in billions)."""
    profiles = list(profiles)
    show_other = any(p.params["other"] or p.macs["other"] for p in profiles)
    parts = ["backbone", "fpn", "head"] + (["other"] if show_other else [])
    header = ["model", "backbone", "widths", "params(M)"] + [f"{c}" for c in parts] + \
             ["GMACs"] + [f"{c}" for c in parts]
    rows = [header]
    for p in profiles:
        rows.append([p.model, p.backbone, p.widths, _m(p.params["total"])]
                    + [_m(p.params[c]) for c in parts]
                    + [_g(p.macs["total"])] + [_g(p.macs[c]) for c in parts])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for j, r in enumerate(rows):
        cells = [r[i].ljust(widths[i]) if i < 3 else r[i].rjust(widths[i]) for i in range(len(r))]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    if profiles:
        h, w = profiles[0].size
        lines.append("")
        lines.append(f"params: millions (split: backbone / FPN / head); GMACs: 10^9 multiply-adds at "
                     f"{h}x{w} (HxW), batch 1, backbone + decoder; deformable convs counted as convs")
    return "\n".join(lines)


__all__ = [
    "COMPONENTS", "FPN_PREFIXES", "HEAD_PREFIXES", "PAPER_SIZE", "Profile", "component_of",
    "count_macs", "deform_conv2d_flop", "format_table", "profile_detector",
]
