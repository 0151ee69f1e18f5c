"""FCOS target assignment and losses against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from nasfcos.fcos.losses import (
    FcosConfig,
    FcosTargets,
    compute_locations,
    compute_targets,
    default_size_ranges,
    fcos_losses,
    losses_from_targets,
)

STRIDES = (8, 16, 32, 64, 128)
SIZES_256 = [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]  # a 256 x 256 input


def _offsets(sizes: list[tuple[int, int]]) -> list[int]:
    out, acc = [], 0
    for h, w in sizes:
        out.append(acc)
        acc += h * w
    return out


def _loc_index(level: int, x: float, y: float, sizes: list[tuple[int, int]] = SIZES_256) -> int:
    """Flat location index of the cell whose centre is (x, y) on ``level``."""
    s = STRIDES[level]
    j, i = int((x - s // 2) / s), int((y - s // 2) / s)
    assert (j * s + s // 2, i * s + s // 2) == (x, y)
    return _offsets(sizes)[level] + i * sizes[level][1] + j


def _targets(boxes: list[list[float]], labels: list[int], radius: float = 0.0,
             sizes: list[tuple[int, int]] = SIZES_256) -> FcosTargets:
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    lab = torch.tensor(labels, dtype=torch.int64)
    return compute_targets([b], [lab], sizes, STRIDES, center_sampling_radius=radius)


def test_default_ranges_are_fcos() -> None:
    assert default_size_ranges(5) == ((0, 64), (64, 128), (128, 256), (256, 512), (512, math.inf))


def test_locations_are_cell_centres() -> None:
    locs = compute_locations([(2, 3)], [8])[0]
    assert locs.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]


def test_level_choice_by_largest_distance() -> None:
    # small box: (4, 4) on P3 has ltrb (4, 4, 36, 36): max 36 in [0, 64] -> positive
    t = _targets([[0, 0, 40, 40]], [2])
    i = _loc_index(0, 4, 4)
    assert t.labels[0, i] == 2
    assert t.reg[0, i].tolist() == [4, 4, 36, 36]
    assert t.ctr[0, i].item() == pytest.approx(4 / 36)
    # the same box is never assigned on P4 (max distance < 64)
    off = _offsets(SIZES_256)
    assert (t.labels[0, off[1]:] == -1).all()
    # wide box: (16, 16) on P5 sees max distance 184 in [128, 256]; P3 cell (4, 4) sees 196 > 64
    t = _targets([[0, 0, 200, 100]], [1])
    assert t.labels[0, _loc_index(2, 16, 16)] == 1
    assert t.reg[0, _loc_index(2, 16, 16)].tolist() == [16, 16, 184, 84]
    assert t.labels[0, _loc_index(0, 4, 4)] == -1
    assert t.labels[0, _loc_index(1, 8, 8)] == -1  # 192 > 128


def test_ambiguous_location_takes_smallest_box() -> None:
    i = _loc_index(0, 12, 12)
    for boxes, labels in (([[0, 0, 60, 60], [0, 0, 30, 30]], [0, 1]),
                          ([[0, 0, 30, 30], [0, 0, 60, 60]], [1, 0])):
        t = _targets(boxes, labels)
        assert t.labels[0, i] == 1
        assert t.reg[0, i].tolist() == [12, 12, 18, 18]
    # a location only inside the big box still belongs to it
    t = _targets([[0, 0, 60, 60], [0, 0, 30, 30]], [0, 1])
    assert t.labels[0, _loc_index(0, 44, 44)] == 0


def test_center_sampling_radius() -> None:
    # 64 x 64 box centred at (32, 32); radius 1.5 * 8 = 12 -> only P3 cells 28 and 36 qualify
    with_cs = _targets([[0, 0, 64, 64]], [0], radius=1.5)
    pos = (with_cs.labels[0] >= 0).nonzero().flatten().tolist()
    expected = sorted(_loc_index(0, x, y) for x in (28, 36) for y in (28, 36))
    assert pos == expected
    without = _targets([[0, 0, 64, 64]], [0], radius=0.0)
    assert int((without.labels[0] >= 0).sum()) == 64  # all 8 x 8 P3 cells, none on P4
    assert with_cs.num_positive == 4


def test_center_region_clipped_to_box() -> None:
    # a thin box: the centre region (radius 12) is wider than the box and must be clipped
    t = _targets([[20, 0, 30, 64]], [0], radius=1.5)
    pos = (t.labels[0] >= 0).nonzero().flatten()
    locs = torch.cat(compute_locations(SIZES_256, STRIDES))[pos]
    assert len(pos) > 0
    assert ((locs[:, 0] > 20) & (locs[:, 0] < 30)).all()


def test_empty_images_and_batch() -> None:
    boxes = [torch.zeros((0, 4)), torch.tensor([[0.0, 0, 40, 40]])]
    labels = [torch.zeros((0,), dtype=torch.int64), torch.tensor([3])]
    t = compute_targets(boxes, labels, SIZES_256, STRIDES)
    assert t.labels.shape == (2, sum(h * w for h, w in SIZES_256))
    assert (t.labels[0] == -1).all() and (t.reg[0] == 0).all() and (t.ctr[0] == 0).all()
    assert (t.labels[1] == 3).any()
    # FcosTargets helpers: indexing, concatenation, dict round trip
    assert torch.equal(FcosTargets.cat([t[0], t[1]]).labels, t.labels)
    back = FcosTargets.from_dict(t.to_dict())
    assert back.level_sizes == t.level_sizes and torch.equal(back.reg, t.reg)


def _outputs(n: int, k: int, sizes: list[tuple[int, int]], seed: int = 0, requires_grad: bool = False):
    g = torch.Generator().manual_seed(seed)
    cls = [torch.randn(n, k, h, w, generator=g) for h, w in sizes]
    reg = [torch.rand(n, 4, h, w, generator=g) * 3 + 0.1 for h, w in sizes]
    ctr = [torch.randn(n, 1, h, w, generator=g) for h, w in sizes]
    if requires_grad:
        for x in cls + reg + ctr:
            x.requires_grad_(True)
    return cls, reg, ctr


def test_empty_image_losses() -> None:
    cls, reg, ctr = _outputs(1, 3, SIZES_256, requires_grad=True)
    out = fcos_losses(cls, reg, ctr, [torch.zeros((0, 4))], [torch.zeros((0,), dtype=torch.int64)])
    assert set(out) == {"cls", "box", "ctr"}
    assert out["box"].item() == 0 and out["ctr"].item() == 0 and out["cls"].item() > 0
    sum(out.values()).backward()
    assert reg[0].grad is not None and ctr[0].grad is not None


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _hand_losses(cls, reg, ctr, t: FcosTargets, stride: int, box_loss: str,
                 cls_norm: str = "positives+images") -> dict[str, float]:
    """Straight-line Python implementation of the FCOS loss terms (one level); ``stride``
    converts ``reg`` to pixels (1 when it is in pixels already)."""
    n, k, h, w = cls.shape
    num_pos = max(int((t.labels >= 0).sum()), 1)
    cls_den = int((t.labels >= 0).sum()) + n if cls_norm == "positives+images" else num_pos
    focal = 0.0
    box_sum, ctr_sum, bce = 0.0, 0.0, 0.0
    for b in range(n):
        for i in range(h):
            for j in range(w):
                loc = i * w + j
                lab = int(t.labels[b, loc])
                for c in range(k):
                    x = float(cls[b, c, i, j])
                    y = 1.0 if c == lab else 0.0
                    p = _sigmoid(x)
                    ce = -(y * math.log(p) + (1 - y) * math.log(1 - p))
                    pt = p * y + (1 - p) * (1 - y)
                    focal += (0.25 * y + 0.75 * (1 - y)) * ce * (1 - pt) ** 2
                if lab < 0:
                    continue
                pl, pt_, pr, pb = (float(reg[b, q, i, j]) * stride for q in range(4))
                tl, tt, tr, tb = (float(v) for v in t.reg[b, loc])
                iw = min(pl, tl) + min(pr, tr)
                ih = min(pt_, tt) + min(pb, tb)
                inter = iw * ih
                union = (pl + pr) * (pt_ + pb) + (tl + tr) * (tt + tb) - inter
                iou = inter / union
                enclose = (max(pl, tl) + max(pr, tr)) * (max(pt_, tt) + max(pb, tb))
                giou = iou - (enclose - union) / enclose
                cen = math.sqrt(min(tl, tr) / max(tl, tr) * min(tt, tb) / max(tt, tb))
                assert float(t.ctr[b, loc]) == pytest.approx(cen, rel=1e-5)
                per = (1 - giou) if box_loss == "giou" else -math.log((inter + 1) / (union + 1))
                box_sum += per * cen
                ctr_sum += cen
                z = float(ctr[b, 0, i, j])
                bce += -(cen * math.log(_sigmoid(z)) + (1 - cen) * math.log(1 - _sigmoid(z)))
    return {"cls": focal / cls_den, "box": box_sum / ctr_sum, "ctr": bce / num_pos}


def test_defaults_are_the_release() -> None:
    cfg = FcosConfig()
    assert (cfg.center_sampling_radius, cfg.box_loss, cfg.cls_norm, cfg.reg_units) == (
        0.0, "iou", "positives+images", "pixels")
    with pytest.raises(ValueError, match="box_loss"):
        FcosConfig(box_loss="l1")


def test_assignment_count_small_case() -> None:
    # 64 x 64 input, P3 8 x 8 cells at x, y in 4, 12, ..., 60; box (6, 6)-(38, 30):
    # strictly inside: x in {12, 20, 28, 36} (4), y in {12, 20, 28} (3) -> 12 positives on P3
    # (max distance <= 32 < 64 everywhere); center sampling 1.5 keeps |x - 22| < 12 and
    # |y - 18| < 12: x in {12, 20, 28}, y in {12, 20, 28} -> 9
    sizes = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    box = [[6.0, 6.0, 38.0, 30.0]]
    assert _targets(box, [0], sizes=sizes).num_positive == 12
    assert _targets(box, [0], radius=1.5, sizes=sizes).num_positive == 9


@pytest.mark.parametrize(("box_loss", "cls_norm", "reg_units"), [
    ("iou", "positives+images", "pixels"),  # the release
    ("giou", "positives", "stride"),  # FCOS's later options
    ("iou", "positives", "stride"),
])
def test_losses_match_hand_computation(box_loss: str, cls_norm: str, reg_units: str) -> None:
    sizes = [(4, 5)]
    cfg = FcosConfig(strides=(8,), size_ranges=((0, math.inf),), center_sampling_radius=0.0,
                     box_loss=box_loss, cls_norm=cls_norm, reg_units=reg_units)
    boxes = [torch.tensor([[1.0, 2.0, 30.0, 25.0], [10.0, 8.0, 38.0, 31.0]]), torch.tensor([[0.0, 0.0, 17.0, 9.0]])]
    labels = [torch.tensor([0, 2]), torch.tensor([1])]
    t = compute_targets(boxes, labels, sizes, (8,), cfg.size_ranges, 0.0)
    assert t.num_positive > 3
    cls, reg, ctr = _outputs(2, 3, sizes, seed=3)
    stride = 8
    if reg_units == "pixels":
        reg, stride = [r * 8 for r in reg], 1
    got = losses_from_targets(cls, reg, ctr, t, cfg)
    want = _hand_losses(cls[0], reg[0], ctr[0], t, stride, box_loss, cls_norm)
    for key in ("cls", "box", "ctr"):
        assert got[key].item() == pytest.approx(want[key], rel=1e-4), key
    # the one-call form computes the same targets
    again = fcos_losses(cls, reg, ctr, boxes, labels, cfg)
    for key in ("cls", "box", "ctr"):
        assert again[key].item() == pytest.approx(got[key].item(), rel=1e-6)


def test_perfect_box_prediction_has_zero_box_loss() -> None:
    sizes = [(4, 4)]
    cfg = FcosConfig(strides=(8,), size_ranges=((0, math.inf),), center_sampling_radius=0.0,
                     box_loss="giou", reg_units="stride")
    t = compute_targets([torch.tensor([[3.0, 5.0, 29.0, 27.0]])], [torch.tensor([0])], sizes, (8,),
                        cfg.size_ranges, 0.0)
    cls, _, ctr = _outputs(1, 2, sizes)
    reg = [t.reg[0].reshape(4, 4, 4).permute(2, 0, 1)[None] / 8]  # exact distances, stride units
    out = losses_from_targets(cls, reg, ctr, t, cfg)
    assert out["box"].item() == pytest.approx(0.0, abs=1e-6)
    pixels = losses_from_targets(cls, [reg[0] * 8], ctr, t, FcosConfig(strides=(8,), reg_units="pixels"))
    assert pixels["box"].item() == pytest.approx(0.0, abs=1e-6)  # the same boxes given in pixels
