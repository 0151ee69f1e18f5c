"""The reference interpreter: a dynamic ``nn.Module`` built from a genotype, used as the oracle.

It walks the genotype at run time (loops, dicts, ``getattr``) instead of printing code, and
implements every layer itself, so a test that compares it with a compiled model.py checks the
compiler's planning and templates against an independent reading of Contract 1.  It builds
modules in the same order and with the same names as the compiled ``Decoder``, so with the same
``torch.manual_seed`` both start from identical weights and their state_dicts load into each
other strictly.  Not used for training or export: the search trains the compiled code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from nasfcos.compiler.codegen import validated_genotype
from nasfcos.compiler.options import CompileOptions, resolve_options
from nasfcos.compiler.pasted_group_norm import GroupNorm
from nasfcos.genotypes import (
    BACKBONE_LEVELS,
    BACKBONE_STRIDES,
    OUTPUT_LEVELS,
    Genotype,
    fpn_graph,
    head_live,
)

PRIOR_PROB = 0.01


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    return F.interpolate(x, size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=False)


def _norm(kind: str, channels: int) -> nn.Module:
    """BN in the FPN, GroupNorm(32, C) in the head (the release's ``nn.GroupNorm(32, C)``)."""
    return nn.BatchNorm2d(channels) if kind == "bn" else GroupNorm(32, channels)


class _Adapter(nn.Module):
    def __init__(self, cin: int, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, c, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.bn(self.conv(x)))


class _SepConv(nn.Module):
    """The release's ``SepConv(..., repeats=1)``: one depthwise -> pointwise -> norm -> ReLU unit."""

    def __init__(self, c: int, k: int, dilation: int, norm: str) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(c, c, k, padding=dilation * (k // 2), dilation=dilation, groups=c, bias=False)
        self.pointwise = nn.Conv2d(c, c, 1, bias=False)
        self.norm = _norm(norm, c)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.norm(self.pointwise(self.depthwise(x))))


class _ConvNormReLU(nn.Module):
    def __init__(self, c: int, k: int, norm: str, bias: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, k, padding=(k - 1) // 2, bias=bias)
        self.norm = _norm(norm, c)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.norm(self.conv(x)))


class _DCNv2(nn.Module):
    """DCNv2 as the release's ``DCN``: offsets/masks from a zero-initialised 3x3 conv, 2 groups."""

    groups = 2

    def __init__(self, c: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(c, c, 3, 3))
        self.bias = nn.Parameter(torch.zeros(c))
        self.conv_offset_mask = nn.Conv2d(c, self.groups * 3 * 9, 3, padding=1)
        stdv = 1.0 / math.sqrt(c * 3 * 3)
        with torch.no_grad():
            self.weight.uniform_(-stdv, stdv)
            self.conv_offset_mask.weight.zero_()
            self.conv_offset_mask.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv_offset_mask(x)
        n = self.groups * 9
        offset = out[:, : 2 * n]
        mask = out[:, 2 * n :].sigmoid()
        return torchvision.ops.deform_conv2d(x, offset, self.weight, self.bias, stride=1, padding=1,
                                             dilation=1, mask=mask)


class _DeformConvNormReLU(nn.Module):
    def __init__(self, c: int, norm: str) -> None:
        super().__init__()
        self.conv = _DCNv2(c)
        self.norm = _norm(norm, c)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.norm(self.conv(x)))


class _WeightedSum(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.ones(c))
        self.b = nn.Parameter(torch.ones(c))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.a[None, :, None, None] * x + self.b[None, :, None, None] * y


class _ConcatReduce(nn.Module):
    def __init__(self, c: int, norm: str) -> None:
        super().__init__()
        self.norm = _norm(norm, 2 * c)
        self.conv = nn.Conv2d(2 * c, c, 1, groups=c, bias=False)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.conv(torch.relu(self.norm(torch.cat((x, y), 1))))


class _Scale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * x


def _op(name: str, c: int, norm: str) -> nn.Module | None:
    """A searched op (FPN with BN, head with GN); ``None`` for ``skip``."""
    if name == "skip":
        return None
    if name.startswith("sep_conv_"):
        k, dilation = {"sep_conv_3x3": (3, 1), "sep_conv_3x3_dil3": (3, 3), "sep_conv_5x5_dil6": (5, 6)}[name]
        return _SepConv(c, k, dilation, norm)
    if name == "deform_conv_3x3":
        return _DeformConvNormReLU(c, norm)
    if name in ("conv_1x1", "conv_3x3"):
        return _ConvNormReLU(c, 1 if name == "conv_1x1" else 3, norm)
    raise KeyError(name)


def _agg(name: str, c: int, norm: str) -> nn.Module:
    return _WeightedSum(c) if name == "sum" else _ConcatReduce(c, norm)


class ReferenceDecoder(nn.Module):
    """Dynamic decoder for ``genotype``: same constructor semantics and state_dict keys as the
    compiled ``Decoder`` (features [c2..c5] -> (cls_logits, bbox_reg, centerness) over p3..p7)."""

    def __init__(self, genotype: Genotype, fpn_channels: int = CompileOptions.fpn_channels,
                 head_channels: int | None = None, num_classes: int = CompileOptions.num_classes,
                 in_channels: Sequence[int] = CompileOptions.in_channels) -> None:
        super().__init__()
        g = validated_genotype(genotype)
        self.genotype = g
        self.graph = fpn_graph(g.fpn)
        c = fpn_channels
        h = fpn_channels if head_channels is None else head_channels
        for lvl in self.graph.backbone_used:
            self.add_module(f"adapt_{BACKBONE_LEVELS[lvl]}", _Adapter(in_channels[lvl], c))
        for k, blk in enumerate(g.fpn):
            block = nn.Module()
            for j in (0, 1):
                op = _op(blk.ops[j], c, "bn")
                if op is not None:
                    block.add_module(f"op{j}", op)
            block.add_module("agg", _agg(blk.agg, c, "bn"))
            self.add_module(f"fpn_block{k}", block)

        # head: one entry per sharing position; each builds a fresh module (or None)
        kind = g.head.kind
        self.head_live: frozenset[int] = head_live(g.head) if kind == "dag" else frozenset()
        self.fcos_convs: list[nn.Conv2d] = []
        makers = self._head_makers(h)
        for branch in ("cls", "reg"):
            for j, make in enumerate(makers):
                if make is None:
                    continue
                for lvl, s in zip(OUTPUT_LEVELS, g.share, strict=True):
                    if j < s:
                        self.add_module(f"{branch}_tower_{lvl}_{j}", make())
                if any(j >= s for s in g.share):
                    self.add_module(f"{branch}_tower_shared_{j}", make())
        if kind == "fcos":
            self.fcos_convs = [m.conv for name, m in self.named_children() if "_tower_" in name]

        self.p6 = nn.Conv2d(c, c, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(c, c, 3, stride=2, padding=1)
        self.bridge = nn.Conv2d(c, h, 1) if h != c else nn.Identity()
        self.cls_logits = nn.Conv2d(h, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(h, 4, 3, padding=1)
        self.centerness = nn.Conv2d(h, 1, 3, padding=1)
        self.scales = nn.ModuleList(_Scale() for _ in OUTPUT_LEVELS)
        with torch.no_grad():
            for conv in (self.p6, self.p7):
                nn.init.kaiming_uniform_(conv.weight, a=1)
                conv.bias.zero_()
            for conv in [*self.fcos_convs, self.cls_logits, self.bbox_pred, self.centerness]:
                conv.weight.normal_(0.0, 0.01)
                conv.bias.zero_()
            self.cls_logits.bias.fill_(-math.log((1 - PRIOR_PROB) / PRIOR_PROB))

    def _head_makers(self, h: int) -> list[Any]:
        """Per head layer (sharing position): a zero-argument module factory, or None."""
        head = self.genotype.head
        if head.kind == "fcos":
            return [lambda: _ConvNormReLU(h, 3, "gn", bias=True)] * 4
        if head.kind == "sequential":
            return [None if op == "skip" else (lambda op=op: _op(op, h, "gn")) for op in head.layers]
        live = self.head_live
        makers: list[Any] = [
            (lambda: _op(head.first_op or "", h, "gn")) if 1 in live and head.first_op != "skip" else None
        ]
        for b, blk in enumerate(head.blocks):
            keys = [j for j in (0, 1) if 2 + 3 * b + j in live and blk.ops[j] != "skip"]
            has_agg = 4 + 3 * b in live
            if not keys and not has_agg:
                makers.append(None)
                continue

            def make(blk: Any = blk, keys: list[int] = keys, has_agg: bool = has_agg) -> nn.Module:
                m = nn.Module()
                for j in keys:
                    m.add_module(f"op{j}", _op(blk.ops[j], h, "gn"))
                if has_agg:
                    m.add_module("agg", _agg(blk.agg, h, "gn"))
                return m

            makers.append(make)
        return makers

    def _layer(self, branch: str, level: int, j: int) -> nn.Module:
        s = self.genotype.share[level]
        name = f"{branch}_tower_{OUTPUT_LEVELS[level]}_{j}" if j < s else f"{branch}_tower_shared_{j}"
        return getattr(self, name)

    def _tower(self, branch: str, level: int, x: Tensor) -> Tensor:
        head = self.genotype.head
        if head.kind == "fcos":
            for j in range(4):
                x = self._layer(branch, level, j)(x)
            return x
        if head.kind == "sequential":
            for j, op in enumerate(head.layers):
                if op != "skip":
                    x = self._layer(branch, level, j)(x)
            return x
        live = self.head_live
        vals: dict[int, Tensor] = {0: x}
        if 1 in live:
            vals[1] = x if head.first_op == "skip" else self._layer(branch, level, 0)(x)
        for b, blk in enumerate(head.blocks):
            for j in (0, 1):
                slot = 2 + 3 * b + j
                if slot in live:
                    src = vals[blk.inputs[j]]
                    vals[slot] = src if blk.ops[j] == "skip" else getattr(self._layer(branch, level, 1 + b), f"op{j}")(src)
            if 4 + 3 * b in live:
                vals[4 + 3 * b] = self._layer(branch, level, 1 + b).agg(vals[2 + 3 * b], vals[3 + 3 * b])
        return vals[4 + 3 * (len(head.blocks) - 1)]

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        g, graph = self.genotype, self.graph
        strides = graph.strides
        pool: dict[int, Tensor] = {}
        for lvl in graph.backbone_used:
            pool[lvl] = getattr(self, f"adapt_{BACKBONE_LEVELS[lvl]}")(features[lvl])
        for k, blk in enumerate(g.fpn):
            block = getattr(self, f"fpn_block{k}")
            target = min(strides[i] for i in blk.inputs)
            ref = pool[blk.inputs[0] if strides[blk.inputs[0]] == target else blk.inputs[1]]
            outs = []
            for j, i in enumerate(blk.inputs):
                y = pool[i] if blk.ops[j] == "skip" else getattr(block, f"op{j}")(pool[i])
                if strides[i] != target:
                    y = _resize(y, ref.shape[-2:])
                outs.append(y)
            pool[4 + k] = block.agg(outs[0], outs[1])
        levels: list[Tensor] = []
        for idx, lvl in ((graph.p3, 1), (graph.p4, 2), (graph.p5, 3)):
            mid = pool[idx]
            for d in graph.dangling:
                extra = pool[d]
                if strides[d] != strides[idx]:
                    extra = _resize(extra, mid.shape[-2:])
                mid = mid + extra
            if strides[idx] != BACKBONE_STRIDES[lvl]:
                mid = _resize(mid, features[lvl].shape[-2:])
            levels.append(mid)
        p6 = self.p6(levels[2])
        levels += [p6, self.p7(torch.relu(p6))]
        cls_logits, bbox_reg, centerness = [], [], []
        for li, p in enumerate(levels):
            f = self.bridge(p)
            cls = self._tower("cls", li, f)
            reg = self._tower("reg", li, f)
            cls_logits.append(self.cls_logits(cls))
            bbox_reg.append(torch.exp(self.scales[li](self.bbox_pred(reg))))
            centerness.append(self.centerness(cls))
        return cls_logits, bbox_reg, centerness


def build_reference(genotype: Genotype | dict[str, Any], options: CompileOptions | None = None,
                    **kw: Any) -> ReferenceDecoder:
    """The reference interpreter for ``genotype`` with the widths of ``options`` / ``kw``."""
    opts = resolve_options(options, **kw)
    return ReferenceDecoder(validated_genotype(genotype), fpn_channels=opts.fpn_channels,
                            head_channels=opts.head_channels, num_classes=opts.num_classes,
                            in_channels=opts.in_channels)
