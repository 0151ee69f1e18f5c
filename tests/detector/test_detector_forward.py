"""Detector.forward / forward_raw / postprocess on tiny compiled detectors."""

from __future__ import annotations

import math
from types import ModuleType

import pytest
import torch

STRIDES = (8, 16, 32, 64, 128)
NUM_CLASSES = 3  # conftest.Tiny.num_classes


def _check_well_formed(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                       hw: tuple[int, int], max_det: int = 100) -> None:
    n = boxes.shape[0]
    assert boxes.shape == (n, max_det, 4) and scores.shape == (n, max_det) and labels.shape == (n, max_det)
    assert boxes.dtype == torch.float32 and scores.dtype == torch.float32 and labels.dtype == torch.int64
    h, w = hw
    found = scores > 0
    # real detections: boxes inside [0, w - 1] x [0, h - 1] (the release keeps boxes clipped to
    # zero width), scores sigmoid(cls) * sigmoid(ctr) in (0, 1], valid classes
    b = boxes[found]
    assert torch.all(b[:, 0] <= b[:, 2]) and torch.all(b[:, 1] <= b[:, 3])
    assert torch.all(b[:, 0] >= 0) and torch.all(b[:, 1] >= 0)
    assert torch.all(b[:, 2] <= w - 1) and torch.all(b[:, 3] <= h - 1)
    assert torch.all(scores[found] <= 1)
    assert torch.all((labels[found] >= 0) & (labels[found] < NUM_CLASSES))
    # padding: score 0, label -1, box 0
    assert torch.all(labels[~found] == -1)
    assert torch.all(boxes[~found] == 0)
    # sorted by decreasing score, padding last
    assert torch.all(scores[:, :-1] >= scores[:, 1:])


def test_forward_gives_well_formed_detections(detector_module: ModuleType, tiny) -> None:
    det = tiny.detector(detector_module)
    with torch.no_grad():
        boxes, scores, labels = det(tiny.images(1))
    _check_well_formed(boxes, scores, labels, tiny.image_hw)
    assert (scores > 0).sum() > 0  # spread-out random scores: some pass 0.05


def test_empty_detections(detector_module: ModuleType, tiny) -> None:
    # candidates need sigmoid(cls) > score_thresh: nothing passes a threshold of 1
    det = tiny.detector(detector_module, score_thresh=1.0)
    with torch.no_grad():
        boxes, scores, labels = det(tiny.images(2))
    assert boxes.shape == (2, 100, 4)
    assert torch.all(scores == 0) and torch.all(labels == -1) and torch.all(boxes == 0)


def test_batch_equals_single_images(detector_module: ModuleType, tiny) -> None:
    det = tiny.detector(detector_module, max_detections=20)
    x = tiny.images(2)
    with torch.no_grad():
        batch = det(x)
        singles = [det(x[i : i + 1]) for i in range(2)]
    _check_well_formed(*batch, tiny.image_hw, max_det=20)
    for i, single in enumerate(singles):
        for got, want in zip(batch, single, strict=True):
            torch.testing.assert_close(got[i], want[0], atol=1e-4, rtol=1e-4)
    assert not torch.equal(batch[1][0], batch[1][1])  # the two images differ


def test_raw_outputs_have_the_fcos_layout(detector_module: ModuleType, tiny) -> None:
    det = tiny.detector(detector_module)
    n, (h, w) = 2, tiny.image_hw
    with torch.no_grad():
        cls, reg, ctr = det.forward_raw(tiny.images(n))
    assert tuple(detector_module.STRIDES) == STRIDES
    assert len(cls) == len(reg) == len(ctr) == 5
    fh, fw = h, w
    for level, stride in enumerate(STRIDES):
        if stride <= 32:  # p3..p5 follow the backbone: ceil(size / stride) for the tiny trunk
            fh, fw = math.ceil(h / stride), math.ceil(w / stride)
        else:  # p6, p7: stride-2 3x3 convs
            fh, fw = (fh + 1) // 2, (fw + 1) // 2
        assert cls[level].shape == (n, NUM_CLASSES, fh, fw)
        assert reg[level].shape == (n, 4, fh, fw)
        assert ctr[level].shape == (n, 1, fh, fw)
        assert torch.all(reg[level] >= 0)


def _raw(h: int, w: int, k: int) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Raw outputs with nothing detected (logits -20) for an h x w image."""
    cls, reg, ctr = [], [], []
    for stride in STRIDES:
        fh, fw = math.ceil(h / stride), math.ceil(w / stride)
        cls.append(torch.full((1, k, fh, fw), -20.0))
        reg.append(torch.ones(1, 4, fh, fw))
        ctr.append(torch.full((1, 1, fh, fw), -20.0))
    return cls, reg, ctr


def test_postprocess_decodes_boxes_and_applies_class_aware_nms(baseline_detector_module: ModuleType, tiny) -> None:
    det = tiny.detector(baseline_detector_module)
    h, w = 128, 256
    cls, reg, ctr = _raw(h, w, NUM_CLASSES)
    # p4 (stride 16), location (y=3, x=5): centre (88, 56); distances (16, 32, 48, 64) pixels
    cls[1][0, 2, 3, 5] = 3.0
    ctr[1][0, 0, 3, 5] = 3.0
    reg[1][0, :, 3, 5] = torch.tensor([16.0, 32.0, 48.0, 64.0])
    # p3 (stride 8), centre (92, 60), nearly the same box, same class, lower score: suppressed
    cls[0][0, 2, 7, 11] = 2.0
    ctr[0][0, 0, 7, 11] = 2.0
    reg[0][0, :, 7, 11] = torch.tensor([20.0, 36.0, 44.0, 68.0])
    # the same box in another class: kept (class-aware NMS)
    cls[0][0, 0, 7, 11] = 1.0
    ctr[0][0, 0, 7, 11] = 2.0
    # p5 (stride 32) box crossing the image's right edge: clipped to x2 = w - 1 = 255
    cls[2][0, 1, 1, 7] = 0.5
    ctr[2][0, 0, 1, 7] = 0.5
    reg[2][0, :, 1, 7] = torch.tensor([32.0, 32.0, 64.0, 32.0])
    # sigmoid(cls) <= 0.05: never a candidate, however high its centerness
    cls[3][0, 0, 0, 0] = -3.0
    ctr[3][0, 0, 0, 0] = 20.0
    boxes, scores, labels = det.postprocess(cls, reg, ctr, h, w)
    _check_well_formed(boxes, scores, labels, (h, w))
    s = torch.sigmoid
    assert int((scores > 0).sum()) == 3
    torch.testing.assert_close(boxes[0, 0], torch.tensor([88.0 - 16, 56.0 - 32, 88.0 + 48, 56.0 + 64]))
    torch.testing.assert_close(scores[0, 0], s(torch.tensor(3.0)) ** 2)  # the product, no sqrt
    assert labels[0, 0] == 2
    torch.testing.assert_close(boxes[0, 1], torch.tensor([92.0 - 20, 60.0 - 36, 92.0 + 44, 127.0]))  # y2 clipped to h - 1
    torch.testing.assert_close(scores[0, 1], s(torch.tensor(1.0)) * s(torch.tensor(2.0)))
    assert labels[0, 1] == 0
    torch.testing.assert_close(boxes[0, 2], torch.tensor([240.0 - 32, 48.0 - 32, 255.0, 48.0 + 32]))
    assert labels[0, 2] == 1


def test_named_options_sqrt_scoring_and_stride_units(tiny) -> None:
    from nasfcos.compiler.baseline import baseline_module

    module = baseline_module(tiny.options(scoring="sqrt", box_regression="stride"))
    assert (module.SCORING, module.BOX_REGRESSION) == ("sqrt", "stride")
    det = tiny.detector(module)
    h, w = 128, 256
    cls, reg, ctr = _raw(h, w, NUM_CLASSES)
    cls[1][0, 2, 3, 5] = 3.0
    ctr[1][0, 0, 3, 5] = 1.0
    reg[1][0, :, 3, 5] = torch.tensor([1.0, 2.0, 3.0, 4.0])  # strides of p4: x 16 pixels
    boxes, scores, labels = det.postprocess(cls, reg, ctr, h, w)
    torch.testing.assert_close(boxes[0, 0], torch.tensor([88.0 - 16, 56.0 - 32, 88.0 + 48, 56.0 + 64]))
    torch.testing.assert_close(scores[0, 0], torch.sqrt(torch.sigmoid(torch.tensor(3.0)) * torch.sigmoid(torch.tensor(1.0))))


def test_postprocess_limits_detections_and_pre_nms_top_n(baseline_detector_module: ModuleType, tiny) -> None:
    det = tiny.detector(baseline_detector_module, max_detections=5, pre_nms_top_n=2)
    h, w = 64, 64
    cls, reg, ctr = _raw(h, w, NUM_CLASSES)
    # 8 far-apart confident boxes on p3 (no overlap): only the 2 best pass pre_nms_top_n there
    for i in range(8):
        cls[0][0, 0, i, i] = 5.0 - 0.1 * i
        ctr[0][0, 0, i, i] = 5.0
        reg[0][0, :, i, i] = 0.25
    # p4: 4 more, lower scores, far apart
    for i in range(4):
        cls[1][0, 1, i, i] = 1.0 - 0.1 * i
        ctr[1][0, 0, i, i] = 5.0
        reg[1][0, :, i, i] = 0.25
    boxes, scores, labels = det.postprocess(cls, reg, ctr, h, w)
    assert scores.shape == (1, 5)
    assert labels[0].tolist() == [0, 0, 1, 1, -1]  # 2 from p3 + 2 from p4 (top-2 each), padded


def test_constructor_rejects_mismatched_in_channels(baseline_detector_module: ModuleType) -> None:
    with pytest.raises(ValueError, match="do not match backbone"):
        baseline_detector_module.build(backbone="tiny", in_channels=(1, 2, 3, 4))
    with pytest.raises(ValueError, match="unknown backbone"):
        baseline_detector_module.build(backbone="vgg16")
