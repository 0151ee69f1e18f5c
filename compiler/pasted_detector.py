"""The FCOS ``Detector`` (backbone + Decoder + the release's post-processing): an ordinary module
whose code below the marker the compiler pastes into detector model files, after the backbone
code (:func:`nasfcos.compiler.backbones.paste`).

Above the marker stand what a compiled file defines before this code: the backbone code, the
``Decoder`` and its constants (stand-ins here, so that this module imports and linters check
it), and the ``COMPILED_*`` names, which the compiled file replaces with the Python literals of
its options (:data:`nasfcos.compiler.backbones.FILL_IN`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from nasfcos.compiler.options import CompileOptions
from nasfcos.compiler.pasted_backbone import (
    BACKBONE_CHANNELS,
    CAFFE2_MEAN,
    IMAGE_MEAN,
    IMAGE_STD,
    build_backbone,
    load_backbone_weights,
    load_state_file,
)
from nasfcos.genotypes import OUTPUT_STRIDES
from nasfcos.modelfile import DEFAULT_BOX_UNITS

# the compiled file's Decoder and constants (its own, above this code)
Decoder: type[nn.Module] = nn.Module
FPN_CHANNELS, NUM_CLASSES = CompileOptions().fpn_channels, CompileOptions().num_classes
STRIDES, BOX_REGRESSION = OUTPUT_STRIDES, DEFAULT_BOX_UNITS
# the compiled options, printed as literals in their place (their defaults here)
COMPILED_BACKBONE, COMPILED_SCORING = CompileOptions().backbone, CompileOptions().scoring
COMPILED_PREPROCESS = CompileOptions().resolved_preprocess
COMPILED_HEAD_CHANNELS = CompileOptions().head_channels

# --- pasted into model.py below this line ---


# ---------------------------------------------------------------------------
# Detector: backbone + Decoder + FCOS post-processing
# ---------------------------------------------------------------------------

#: The backbone compiled in as the default (any key of BACKBONE_CHANNELS may be passed).
BACKBONE = COMPILED_BACKBONE
#: Input normalisation inside the Detector: "caffe2" (BGR x 255 minus CAFFE2_MEAN, std 1: the
#: release's) or "imagenet" (RGB minus IMAGE_MEAN over IMAGE_STD: torchvision's weights).
PREPROCESS = COMPILED_PREPROCESS
#: Detection score: "product" sigmoid(cls) * sigmoid(ctr) (the release's) or "sqrt" of it.
SCORING = COMPILED_SCORING
#: Images are zero-padded (after normalisation) at the bottom and right to a multiple of this.
SIZE_DIVISIBILITY = 32


class Detector(nn.Module):
    """NAS-FCOS detector: images -> (boxes, scores, labels), the release's FCOS inference.

    ``forward(images)``: ``images`` ``[N, 3, H, W]`` float RGB in [0, 1] of any size (batch and
    size are dynamic).  Inside: normalisation (``PREPROCESS``), zero padding to a multiple of 32,
    backbone, Decoder, post-processing.  Returns ``boxes`` ``[N, D, 4]`` float32 (x1, y1, x2, y2
    in input pixels, clipped to [0, W - 1] x [0, H - 1]), ``scores`` ``[N, D]``, ``labels``
    ``[N, D]`` int64, 0-based class ids (the release's label minus 1), ``D = max_detections``;
    unused slots have score 0, label -1 and box 0.  Sorted by decreasing score.

    ``forward_raw(images)``: the Decoder's raw ``(cls_logits, bbox_reg, centerness)`` lists
    over p3..p7 (for training, and for exporters that post-process outside the graph).

    Post-processing, per image, as the release (``postprocess``): candidates are the (location,
    class) pairs with sigmoid(cls) > ``score_thresh``, scored sigmoid(cls) * sigmoid(ctr)
    (``SCORING`` "sqrt": its square root); per level the ``pre_nms_top_n`` best are decoded
    (box = location -/+ distances; locations (x * s + s // 2, y * s + s // 2)) and clipped;
    class-wise NMS at ``nms_thresh`` with the release's +1 box widths; the ``max_detections``
    best survive (the release keeps ties with the last one too; a fixed-size output cannot).
    All sizes are fixed per input size, so it exports.

    Weights: random unless ``backbone_weights`` (a torchvision state_dict file for the trunk)
    or ``checkpoint`` (a full ``Detector`` state_dict, optionally under ``"model"`` or
    ``"state_dict"``) is given; nothing is ever downloaded.  ``in_channels`` defaults to the
    backbone's widths (``BACKBONE_CHANNELS[backbone]``); the Decoder is built with them.
    ``head_channels=None`` means the FPN width, as for the Decoder.

    Export: with ``torch.onnx.export(..., dynamo=True)``, trace with an example image larger
    than 128 px on both sides, so that no level (p7 = stride 128) is 1 x 1: the tracer
    specialises size-1 dimensions and the graph would then only accept small images.
    """

    def __init__(
        self,
        fpn_channels: int = FPN_CHANNELS,
        head_channels: int | None = COMPILED_HEAD_CHANNELS,
        num_classes: int = NUM_CLASSES,
        in_channels: tuple[int, ...] | list[int] | None = None,
        backbone: str = BACKBONE,
        backbone_weights: str | None = None,
        checkpoint: str | None = None,
        score_thresh: float = 0.05,
        pre_nms_top_n: int = 1000,
        nms_thresh: float = 0.6,
        max_detections: int = 100,
        preprocess: str = PREPROCESS,
        scoring: str = SCORING,
    ) -> None:
        super().__init__()
        if backbone not in BACKBONE_CHANNELS:
            raise ValueError(f"unknown backbone {backbone!r} (expected one of: {', '.join(BACKBONE_CHANNELS)})")
        widths = BACKBONE_CHANNELS[backbone]
        if in_channels is not None and tuple(in_channels) != widths:
            raise ValueError(f"in_channels {tuple(in_channels)} do not match backbone {backbone!r} {widths}")
        if pre_nms_top_n < 1 or max_detections < 1:
            raise ValueError("pre_nms_top_n and max_detections must be at least 1")
        if preprocess not in ("caffe2", "imagenet") or scoring not in ("product", "sqrt"):
            raise ValueError(f"preprocess {preprocess!r} / scoring {scoring!r}: "
                             "expected caffe2 or imagenet / product or sqrt")
        self.backbone_name = backbone
        self.num_classes = num_classes
        self.score_thresh = float(score_thresh)
        self.pre_nms_top_n = int(pre_nms_top_n)
        self.nms_thresh = float(nms_thresh)
        self.max_detections = int(max_detections)
        self.strides = tuple(STRIDES)
        self.preprocess = preprocess
        self.scoring = scoring
        self.box_in_pixels = BOX_REGRESSION == "pixels"
        mean, std = (CAFFE2_MEAN, (1.0, 1.0, 1.0)) if preprocess == "caffe2" else (IMAGE_MEAN, IMAGE_STD)
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.backbone = build_backbone(backbone)
        self.decoder = Decoder(fpn_channels=fpn_channels, head_channels=head_channels,
                               num_classes=num_classes, in_channels=widths)
        if backbone_weights is not None:
            load_backbone_weights(self.backbone, backbone, backbone_weights)
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)

    def load_checkpoint(self, path: str) -> None:
        """Load a full Detector state_dict file (plain, or under ``"model"``/``"state_dict"``)."""
        load_state_file(self, path, "checkpoint", "checkpoint does not fit this Detector")

    def normalize(self, images: Tensor) -> Tensor:
        """``[N, 3, H, W]`` RGB in [0, 1] -> the backbone's input ``[N, 3, H', W']``: normalised
        (``PREPROCESS``), then zero-padded at the bottom and right to multiples of 32."""
        if self.preprocess == "caffe2":
            x = images.flip(1) * 255.0 - self.pixel_mean  # RGB -> BGR x 255, minus the BGR mean
        else:
            x = (images - self.pixel_mean) / self.pixel_std
        pad_h = (SIZE_DIVISIBILITY - x.shape[-2] % SIZE_DIVISIBILITY) % SIZE_DIVISIBILITY
        pad_w = (SIZE_DIVISIBILITY - x.shape[-1] % SIZE_DIVISIBILITY) % SIZE_DIVISIBILITY
        return F.pad(x, (0, pad_w, 0, pad_h))

    def forward_raw(self, images: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """``[N, 3, H, W]`` RGB in [0, 1] -> the Decoder's (cls_logits, bbox_reg, centerness)."""
        return self.decoder(self.backbone(self.normalize(images)))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``[N, 3, H, W]`` RGB in [0, 1] -> (boxes ``[N, D, 4]``, scores ``[N, D]``, labels ``[N, D]``)."""
        cls_logits, bbox_reg, centerness = self.forward_raw(images)
        if cls_logits[0].dtype != torch.float32:  # post-processing in float32 under autocast
            cls_logits, bbox_reg, centerness = ([t.float() for t in ts]
                                                for ts in (cls_logits, bbox_reg, centerness))
        return self.postprocess(cls_logits, bbox_reg, centerness, images.shape[-2], images.shape[-1])

    def postprocess(
        self,
        cls_logits: list[Tensor],
        bbox_reg: list[Tensor],
        centerness: list[Tensor],
        height: int,
        width: int,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The release's FCOS inference on raw outputs of a batch of ``height`` x ``width`` images
        (the size before padding: boxes are clipped to it).

        Returns (boxes ``[N, D, 4]`` float32, scores ``[N, D]``, labels ``[N, D]`` int64) as ``forward``.
        """
        n = cls_logits[0].shape[0]
        k = cls_logits[0].shape[1]
        top_n = self.pre_nms_top_n
        level_scores, level_boxes, level_labels = [], [], []
        for cls, reg, ctr, stride in zip(cls_logits, bbox_reg, centerness, self.strides, strict=True):
            h, w = cls.shape[-2], cls.shape[-1]
            prob = torch.sigmoid(cls)  # [N, K, H, W]
            score = prob * torch.sigmoid(ctr)
            if self.scoring == "sqrt":
                score = torch.sqrt(score)
            # candidates: sigmoid(cls) > score_thresh; the others score -1 and are never kept
            score = torch.where(prob > self.score_thresh, score, -1.0)
            # [N, H*W*K]: index = location * K + class (K is static, so // and % export)
            score = score.permute(0, 2, 3, 1).flatten(1)
            # padding keeps top-k's size fixed (top_n) however small the level is
            score = torch.cat([score, score.new_full((n, top_n), -1.0)], dim=1)
            score, index = score.topk(top_n, dim=1)
            index = index.clamp(max=h * w * k - 1)
            location = index // k
            # box of every location: (x * stride + stride // 2, ...) -/+ distances
            ys = torch.arange(h, device=cls.device, dtype=reg.dtype) * stride + stride // 2
            xs = torch.arange(w, device=cls.device, dtype=reg.dtype) * stride + stride // 2
            cy = ys.unsqueeze(1).expand(h, w).reshape(-1)
            cx = xs.unsqueeze(0).expand(h, w).reshape(-1)
            dist = torch.gather(reg.flatten(2).transpose(1, 2), 1, location.unsqueeze(2).expand(-1, -1, 4))
            if not self.box_in_pixels:
                dist = dist * stride
            px, py = cx[location], cy[location]  # [N, top_n]
            level_boxes.append(torch.stack([px - dist[..., 0], py - dist[..., 1],
                                            px + dist[..., 2], py + dist[..., 3]], dim=2))
            level_scores.append(score)
            level_labels.append(index % k)
        scores = torch.cat(level_scores, dim=1)  # [N, M], M = 5 * top_n; -1: no candidate
        boxes = torch.cat(level_boxes, dim=1).float()  # [N, M, 4], float32 like the release's
        labels = torch.cat(level_labels, dim=1)  # [N, M]
        m = scores.shape[1]
        boxes = torch.stack([boxes[..., 0].clamp(0, width - 1), boxes[..., 1].clamp(0, height - 1),
                             boxes[..., 2].clamp(0, width - 1), boxes[..., 3].clamp(0, height - 1)], dim=2)

        # class-wise NMS over the whole batch in one call: one group per (image, class), moved
        # apart by coordinate offsets; x2 + 1, y2 + 1 give the release's +1 widths and areas.
        # float64 keeps the offset coordinates exact (ONNX's NMS takes float32 only).
        image = torch.arange(n, device=scores.device).unsqueeze(1).expand(n, m)
        groups = (image * k + labels).reshape(-1)
        flat_scores = scores.reshape(-1)
        candidates = (flat_scores >= 0).nonzero().squeeze(1)
        dtype = torch.float32 if torch.compiler.is_exporting() else torch.float64
        plus_one = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=dtype, device=boxes.device)
        offsets = (groups[candidates] * (max(height, width) + 1)).to(dtype).unsqueeze(1)
        nms_boxes = boxes.reshape(-1, 4)[candidates].to(dtype) + plus_one + offsets
        kept = candidates[torchvision.ops.nms(nms_boxes, flat_scores[candidates].to(dtype), self.nms_thresh)]

        # the best max_detections survivors per image, padded to a fixed size
        final = torch.full_like(flat_scores, -1.0).scatter(0, kept, flat_scores[kept]).reshape(n, m)
        final = torch.cat([final, final.new_full((n, self.max_detections), -1.0)], dim=1)
        out_scores, index = final.topk(self.max_detections, dim=1)
        index = index.clamp(max=m - 1)
        found = out_scores >= 0
        out_scores = torch.where(found, out_scores, 0.0)
        out_boxes = torch.gather(boxes, 1, index.unsqueeze(2).expand(-1, -1, 4)) * found.unsqueeze(2)
        out_labels = torch.where(found, torch.gather(labels, 1, index), torch.full_like(index, -1))
        return out_boxes, out_scores, out_labels
