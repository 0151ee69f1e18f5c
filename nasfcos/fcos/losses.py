"""FCOS target assignment and losses (Tian et al., 2019), as used by NAS-FCOS.

Layout conventions (Contract 2): the decoder returns lists over levels p3..p7 of
``cls [N, K, H, W]`` raw logits, ``reg [N, 4, H, W]`` non-negative (l, t, r, b)
distances in pixels of the input image (the release's ``exp(scale * x)``) or, for
models compiled with stride-normalised regression, in units of the level's stride
(``FcosConfig.reg_units``, a :class:`~nasfcos.modelfile.BoxUnits` name: a model file's
``ModelInfo.box_units``), and
``ctr [N, 1, H, W]`` logits.  Locations are flattened level by level, row-major, into
one axis of length ``L``.

Defaults follow the authors' release (maskrcnn-benchmark FCOS, as NAS-FCOS trained):
a location is a positive of a ground-truth box when it lies strictly inside the box and
the largest of its four distances falls within the level's size range; a location
claimed by several boxes takes the smallest-area box (ties: the first box).  Losses:
sigmoid focal loss (alpha 0.25, gamma 2) summed and divided by (positives + images); IoU
loss ``-log((I + 1) / (U + 1))`` weighted by the centerness targets and divided by their
sum; centerness BCE averaged over the positives.

FCOS's later improvements are named options of :class:`FcosConfig`: center sampling
(``center_sampling_radius`` > 0: inside ``radius * stride`` of the box centre, clipped to
the box), GIoU (``box_loss="giou"``), focal loss over positives only
(``cls_norm="positives"``), stride-normalised regression (``reg_units="stride"``).
Under ``torch.distributed`` the normalisers are averaged over ranks, as in FCOS.

The target step is separate (:func:`compute_targets`) so the search's proxy task can
precompute targets once and cache them (:class:`FcosTargets` is a tensor bundle with
``to_dict``/``from_dict``, ``cat`` and indexing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from nasfcos.genotypes.space import OUTPUT_STRIDES
from nasfcos.modelfile import BOX_UNITS, DEFAULT_BOX_UNITS, BoxUnits

STRIDES: tuple[int, ...] = OUTPUT_STRIDES  # p3..p7, defined once in the search space
INF = math.inf


def default_size_ranges(num_levels: int) -> tuple[tuple[float, float], ...]:
    """FCOS's ranges of the largest regression distance per level, in pixels:
    0/64/128/256/512/inf for five levels (doubling from 64 for other counts)."""
    edges = [0.0] + [64.0 * 2**i for i in range(num_levels - 1)] + [INF]
    return tuple((edges[i], edges[i + 1]) for i in range(num_levels))


BOX_LOSSES: tuple[str, ...] = ("iou", "giou")
CLS_NORMS: tuple[str, ...] = ("positives+images", "positives")


@dataclass(frozen=True)
class FcosConfig:
    """Assignment and loss options; the defaults are the release's (module docstring)."""

    strides: tuple[int, ...] = STRIDES
    size_ranges: tuple[tuple[float, float], ...] | None = None  # None: default_size_ranges
    center_sampling_radius: float = 0.0  # 0: off (release); FCOS's improvement uses 1.5
    box_loss: str = "iou"  # "iou": -log((I+1)/(U+1)) (release); "giou": 1 - GIoU
    cls_norm: str = "positives+images"  # focal loss divisor; or "positives"
    reg_units: str = DEFAULT_BOX_UNITS  # units of the model's box regression (BOX_UNITS)
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0

    def __post_init__(self) -> None:
        for name, value, allowed in (("box_loss", self.box_loss, BOX_LOSSES),
                                     ("cls_norm", self.cls_norm, CLS_NORMS),
                                     ("reg_units", self.reg_units, BOX_UNITS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
        if not (math.isfinite(self.center_sampling_radius) and self.center_sampling_radius >= 0):
            raise ValueError(f"center_sampling_radius must be >= 0, not {self.center_sampling_radius}")


@dataclass
class FcosTargets:
    """Per-location training targets for a batch.

    labels  int64 ``[N, L]``: class 0..K-1, or -1 for background.
    reg     float32 ``[N, L, 4]``: (l, t, r, b) to the assigned box in pixels (0 at background).
    ctr     float32 ``[N, L]``: centerness target in [0, 1] (0 at background).
    strides float32 ``[L]``: stride of each location's level.
    level_sizes: (H, W) of each level, in order; sum(H * W) == L.
    """

    labels: Tensor
    reg: Tensor
    ctr: Tensor
    strides: Tensor
    level_sizes: tuple[tuple[int, int], ...]

    @property
    def num_positive(self) -> int:
        return int((self.labels >= 0).sum())

    def to(self, device: torch.device | str) -> FcosTargets:
        return FcosTargets(self.labels.to(device), self.reg.to(device), self.ctr.to(device),
                           self.strides.to(device), self.level_sizes)

    def __getitem__(self, index: int | slice | Tensor | list[int]) -> FcosTargets:
        """Select images (batch rows); an integer keeps the batch dimension."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return FcosTargets(self.labels[index], self.reg[index], self.ctr[index],
                           self.strides, self.level_sizes)

    @staticmethod
    def cat(items: Sequence[FcosTargets]) -> FcosTargets:
        """Concatenate along the batch dimension (same level sizes required)."""
        if not items:
            raise ValueError("nothing to concatenate")
        if any(t.level_sizes != items[0].level_sizes for t in items):
            raise ValueError("targets computed for different feature sizes")
        return FcosTargets(torch.cat([t.labels for t in items]), torch.cat([t.reg for t in items]),
                           torch.cat([t.ctr for t in items]), items[0].strides, items[0].level_sizes)

    def to_dict(self) -> dict[str, object]:
        return {"labels": self.labels, "reg": self.reg, "ctr": self.ctr, "strides": self.strides,
                "level_sizes": [list(s) for s in self.level_sizes]}

    @staticmethod
    def from_dict(d: dict[str, object]) -> FcosTargets:
        sizes = tuple((int(h), int(w)) for h, w in d["level_sizes"])  # type: ignore[union-attr]
        return FcosTargets(d["labels"], d["reg"], d["ctr"], d["strides"], sizes)  # type: ignore[arg-type]


def compute_locations(feature_sizes: Sequence[tuple[int, int]], strides: Sequence[int],
                      device: torch.device | str | None = None) -> list[Tensor]:
    """Image-plane centres of every feature cell: per level ``[H*W, 2]`` (x, y) pixels,
    ``x = j * s + s // 2`` (FCOS convention), row-major."""
    out = []
    for (h, w), s in zip(feature_sizes, strides, strict=True):
        ys = torch.arange(h, dtype=torch.float32, device=device) * s + s // 2
        xs = torch.arange(w, dtype=torch.float32, device=device) * s + s // 2
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        out.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1))
    return out


def centerness_target(reg: Tensor) -> Tensor:
    """sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) of ``[..., 4]`` distances."""
    lr, tb = reg[..., 0::2], reg[..., 1::2]
    ratio = (lr.min(-1).values / lr.max(-1).values.clamp(min=1e-12)) * (
        tb.min(-1).values / tb.max(-1).values.clamp(min=1e-12))
    return ratio.clamp(min=0).sqrt()


def _assign_one(locs: Tensor, loc_strides: Tensor, lo: Tensor, hi: Tensor, boxes: Tensor,
                labels: Tensor, radius: float) -> tuple[Tensor, Tensor]:
    """Labels ``[L]`` and (l, t, r, b) ``[L, 4]`` of one image (see module docstring)."""
    n_loc = locs.shape[0]
    if boxes.numel() == 0:
        return (torch.full((n_loc,), -1, dtype=torch.int64, device=locs.device),
                torch.zeros((n_loc, 4), dtype=torch.float32, device=locs.device))
    x, y = locs[:, 0:1], locs[:, 1:2]  # [L, 1]
    x0, y0, x1, y1 = (boxes[:, i][None] for i in range(4))  # [1, M]
    ltrb = torch.stack([x - x0, y - y0, x1 - x, y1 - y], dim=2)  # [L, M, 4]
    if radius > 0:
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        r = loc_strides[:, None] * radius  # [L, 1]
        cb = torch.stack([x - torch.maximum(cx - r, x0), y - torch.maximum(cy - r, y0),
                          torch.minimum(cx + r, x1) - x, torch.minimum(cy + r, y1) - y], dim=2)
        inside = cb.min(dim=2).values > 0
    else:
        inside = ltrb.min(dim=2).values > 0
    max_reg = ltrb.max(dim=2).values
    in_range = (max_reg >= lo[:, None]) & (max_reg <= hi[:, None])
    area = ((x1 - x0) * (y1 - y0)).expand(n_loc, -1).clone()
    area[~(inside & in_range)] = INF
    min_area, idx = area.min(dim=1)  # ties -> lowest box index
    lab = labels[idx].clone()
    lab[min_area == INF] = -1
    reg = ltrb[torch.arange(n_loc, device=locs.device), idx]
    reg[lab < 0] = 0
    return lab, reg


def compute_targets(boxes_list: Sequence[Tensor], labels_list: Sequence[Tensor],
                    feature_sizes: Sequence[tuple[int, int]],
                    strides: Sequence[int] = STRIDES,
                    size_ranges: Sequence[tuple[float, float]] | None = None,
                    center_sampling_radius: float = 0.0,
                    device: torch.device | str | None = None) -> FcosTargets:
    """FCOS targets for a batch.

    boxes_list[i]: ``[M_i, 4]`` (x0, y0, x1, y1) pixels of the (padded) input image;
    labels_list[i]: ``[M_i]`` int64 in 0..K-1; feature_sizes: (H, W) per level.
    """
    sizes = tuple((int(h), int(w)) for h, w in feature_sizes)
    if len(sizes) != len(strides):
        raise ValueError(f"{len(sizes)} feature levels but {len(strides)} strides")
    ranges = tuple(size_ranges) if size_ranges is not None else default_size_ranges(len(sizes))
    if device is None:
        device = boxes_list[0].device if len(boxes_list) else "cpu"
    locs_lvl = compute_locations(sizes, strides, device)
    counts = [loc.shape[0] for loc in locs_lvl]
    locs = torch.cat(locs_lvl)

    def per_loc(values: Sequence[float]) -> Tensor:
        return torch.cat([torch.full((c,), float(v), device=device) for c, v in zip(counts, values, strict=True)])

    loc_strides = per_loc(strides)
    lo, hi = per_loc([r[0] for r in ranges]), per_loc([r[1] for r in ranges])
    labels, regs = [], []
    for boxes, labs in zip(boxes_list, labels_list, strict=True):
        lab, reg = _assign_one(locs, loc_strides, lo, hi, boxes.to(device, torch.float32).reshape(-1, 4),
                               labs.to(device, torch.int64).reshape(-1), center_sampling_radius)
        labels.append(lab)
        regs.append(reg)
    if labels:
        lab_t, reg_t = torch.stack(labels), torch.stack(regs)
    else:
        lab_t = torch.zeros((0, locs.shape[0]), dtype=torch.int64, device=device)
        reg_t = torch.zeros((0, locs.shape[0], 4), device=device)
    ctr = torch.where(lab_t >= 0, centerness_target(reg_t), torch.zeros((), device=device))
    return FcosTargets(lab_t, reg_t, ctr, loc_strides, sizes)


def flatten_outputs(cls: Sequence[Tensor], reg: Sequence[Tensor], ctr: Sequence[Tensor]
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """Level lists -> ``[N, L, K]``, ``[N, L, 4]``, ``[N, L]`` (float32), FCOS location order."""
    def flat(xs: Sequence[Tensor]) -> Tensor:
        return torch.cat([x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1]) for x in xs], 1).float()

    return flat(cls), flat(reg), flat(ctr).squeeze(2)


def _world_mean(x: Tensor) -> Tensor:
    """Average a scalar over torch.distributed ranks (identity when not distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
        if world > 1:
            x = x.clone()
            torch.distributed.all_reduce(x)
            x = x / world
    return x


def _ltrb_to_boxes(d: Tensor) -> Tensor:
    """(l, t, r, b) distances -> boxes (-l, -t, r, b) around the location (origin)."""
    return torch.stack([-d[:, 0], -d[:, 1], d[:, 2], d[:, 3]], dim=1)


def iou_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Element-wise ``-log((I + 1) / (U + 1))`` (the release's IOULoss) of ``[P, 4]``
    (l, t, r, b) pixel distances from the same points."""
    area_p = (pred[:, 0] + pred[:, 2]) * (pred[:, 1] + pred[:, 3])
    area_t = (target[:, 0] + target[:, 2]) * (target[:, 1] + target[:, 3])
    w = torch.minimum(pred[:, 0], target[:, 0]) + torch.minimum(pred[:, 2], target[:, 2])
    h = torch.minimum(pred[:, 1], target[:, 1]) + torch.minimum(pred[:, 3], target[:, 3])
    inter = w * h
    union = area_p + area_t - inter
    return -torch.log((inter + 1.0) / (union + 1.0))


def losses_from_targets(cls: Sequence[Tensor], reg: Sequence[Tensor], ctr: Sequence[Tensor],
                        targets: FcosTargets, cfg: FcosConfig | None = None) -> dict[str, Tensor]:
    """The three FCOS loss terms ``{"cls", "box", "ctr"}`` (scalars; the total is their sum).

    ``reg`` is in ``cfg.reg_units``; it is decoded to pixels with ``targets.strides``
    (:meth:`BoxUnits.decode`) before the box loss.
    """
    cfg = cfg or FcosConfig()
    cls_f, reg_f, ctr_f = flatten_outputs(cls, reg, ctr)
    n, n_loc, k = cls_f.shape
    if targets.labels.shape != (n, n_loc):
        raise ValueError(f"targets {tuple(targets.labels.shape)} do not match outputs {(n, n_loc)}")
    labels = targets.labels.to(cls_f.device)
    pos = labels >= 0
    n_pos = pos.sum().float()
    num_pos = _world_mean(n_pos).clamp(min=1.0)
    cls_den = _world_mean(n_pos + n) if cfg.cls_norm == "positives+images" else num_pos

    gt = torch.zeros_like(cls_f)
    gt[pos, labels[pos]] = 1.0
    cls_loss = sigmoid_focal_loss(cls_f, gt, alpha=cfg.focal_alpha, gamma=cfg.focal_gamma,
                                  reduction="sum") / cls_den

    if not bool(pos.any()):  # keep the graph connected, no positives to learn from
        _world_mean(torch.zeros((), device=cls_f.device))  # the box normaliser's collective
        return {"cls": cls_loss, "box": reg_f.sum() * 0.0, "ctr": ctr_f.sum() * 0.0}

    reg_px = BoxUnits(cfg.reg_units).decode(reg_f, targets.strides.to(cls_f.device)[None, :, None])[pos]
    reg_t = targets.reg.to(cls_f.device)[pos]
    ctr_t = targets.ctr.to(cls_f.device)[pos]
    ctr_norm = _world_mean(ctr_t.sum()).clamp(min=1e-6)
    if cfg.box_loss == "giou":
        per_box = generalized_box_iou_loss(_ltrb_to_boxes(reg_px), _ltrb_to_boxes(reg_t), reduction="none")
    else:
        per_box = iou_loss(reg_px, reg_t)
    box_loss = (per_box * ctr_t).sum() / ctr_norm
    ctr_loss = F.binary_cross_entropy_with_logits(ctr_f[pos], ctr_t, reduction="sum") / num_pos
    return {"cls": cls_loss, "box": box_loss, "ctr": ctr_loss}


def fcos_losses(cls: Sequence[Tensor], reg: Sequence[Tensor], ctr: Sequence[Tensor],
                boxes_list: Sequence[Tensor], labels_list: Sequence[Tensor],
                cfg: FcosConfig | None = None) -> dict[str, Tensor]:
    """Targets from the output sizes + :func:`losses_from_targets` in one call."""
    cfg = cfg or FcosConfig()
    sizes = [(int(c.shape[2]), int(c.shape[3])) for c in cls]
    targets = compute_targets(boxes_list, labels_list, sizes, cfg.strides, cfg.size_ranges,
                              cfg.center_sampling_radius, device=cls[0].device)
    return losses_from_targets(cls, reg, ctr, targets, cfg)
