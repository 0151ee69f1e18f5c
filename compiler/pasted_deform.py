"""The DCNv2 layer ``DeformConv3x3`` (``torchvision.ops.deform_conv2d``): an ordinary module whose code below the marker the
compiler pastes into model files (:func:`nasfcos.compiler.backbones.pasted`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

# --- pasted into model.py below this line ---
#: Below this many input elements per image (C * H * W) the fixed cost of the sampled DCN
#: formulation's small ops outweighs its gain: ``deform_conv2d`` runs instead.
DCN_SMALL_MAP = 1024


class DeformConv3x3(nn.Module):
    """Modulated deformable 3x3 convolution (DCNv2), stride 1, padding 1, 2 offset groups.

    A 3x3 conv with bias (``conv_offset_mask``, initialised to zero) predicts, for each offset
    group and kernel tap, an offset (dy, dx) and a mask logit; masks go through a sigmoid, so at
    initialisation the layer is a plain 3x3 conv with every tap weighted 0.5.
    Parameters: ``weight`` [Cout, Cin, 3, 3], ``bias`` [Cout], ``conv_offset_mask.weight``
    [54, Cin, 3, 3] and ``.bias`` [54] (channels: 18 dy/dx for group 0, 18 for group 1, 18 masks).
    x [N, Cin, H, W] -> [N, Cout, H, W].

    Two formulations of the same function:

    * export (``torch.onnx.export`` / ``torch.export``), TorchScript and the meta device
      (shape and FLOP tracing): ``torchvision.ops.deform_conv2d``, which becomes ONNX
      ``DeformConv`` (ONNX Runtime and TensorRT run it natively);
    * eager, on maps of at least ``DCN_SMALL_MAP`` elements per image: ``deform_conv_sampled``
      below, bilinear sampling of the 9 taps with ``F.grid_sample`` followed by one matrix
      multiply (multi-threaded BLAS), several times faster on CPU than the reference kernel,
      forward and backward; it matches ``deform_conv2d`` to float rounding.
    """

    offset_groups: int = 2

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.conv_offset_mask = nn.Conv2d(in_channels, 3 * 2 * 9, 3, padding=1, bias=True)
        bound = 1.0 / math.sqrt(in_channels * 9)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.conv_offset_mask.weight)
        nn.init.zeros_(self.conv_offset_mask.bias)

    def forward(self, x: Tensor) -> Tensor:
        o1, o2, mask = torch.chunk(self.conv_offset_mask(x), 3, dim=1)
        offset = torch.cat((o1, o2), dim=1)
        mask = torch.sigmoid(mask)
        if torch.jit.is_scripting() or not use_sampled(x):
            if x.dtype in (torch.float16, torch.bfloat16):  # autocast: the CPU kernel is float
                x, offset, mask = x.float(), offset.float(), mask.float()
            return torchvision.ops.deform_conv2d(
                x, offset, self.weight, self.bias, padding=(1, 1), mask=mask
            )
        return deform_conv_sampled(x, offset, mask, self.weight, self.bias, self.offset_groups)


@torch.jit.unused
def use_sampled(x: Tensor) -> bool:
    """Whether ``DeformConv3x3`` takes ``deform_conv_sampled``: eager PyTorch (not torch.export /
    torch.onnx.export tracing, not the meta device) on at least ``DCN_SMALL_MAP`` elements per
    image."""
    if torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export() or x.is_meta:
        return False
    return x[0].numel() >= DCN_SMALL_MAP


def deform_conv_sampled(x: Tensor, offset: Tensor, mask: Tensor, weight: Tensor, bias: Tensor,
                        groups: int) -> Tensor:
    """``deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)`` for a 3x3 kernel.

    x [N, C, H, W], offset [N, 2 * groups * 9, H, W] ((dy, dx) per group and tap, taps in
    row-major order), mask [N, groups * 9, H, W], weight [Cout, C, 3, 3] -> [N, Cout, H, W].
    Tap k of output pixel (i, j) reads x at (i + k // 3 - 1 + dy, j + k % 3 - 1 + dx),
    bilinearly, with zeros outside the map (as ``deform_conv2d``).
    """
    n, c, h, w = x.shape
    ng = n * groups
    # sampling coordinates in float32 at least, whatever the autocast dtype: bf16 has a
    # resolution of 0.5 px near 100 px (the map is sampled in that dtype too)
    dt = torch.promote_types(x.dtype, torch.float32)
    rows = torch.arange(h, dtype=dt, device=x.device).view(1, 1, h, 1)
    cols = torch.arange(w, dtype=dt, device=x.device).view(1, 1, 1, w)
    taps = torch.arange(9, dtype=dt, device=x.device)
    tap_y = (torch.div(taps, 3, rounding_mode="floor") - 1.0).view(1, 9, 1, 1)
    tap_x = (torch.remainder(taps, 3) - 1.0).view(1, 9, 1, 1)
    off = offset.to(dt).reshape(ng, 9, 2, h, w)
    # sample positions -> grid_sample's normalised coordinates (align_corners=False)
    gy = (rows + tap_y + off[:, :, 0]) * (2.0 / h) + (1.0 / h - 1.0)
    gx = (cols + tap_x + off[:, :, 1]) * (2.0 / w) + (1.0 / w - 1.0)
    grid = torch.stack((gx, gy), dim=-1).reshape(ng, 9 * h, w, 2)
    sampled = F.grid_sample(x.to(dt).reshape(ng, c // groups, h, w), grid, mode="bilinear",
                            padding_mode="zeros", align_corners=False)
    sampled = sampled.reshape(ng, c // groups, 9, h * w)
    mask = mask.reshape(ng, 1, 9, h * w)
    # without autograd (inference) the mask is applied in place: one map-sized temporary less
    sampled = sampled * mask if torch.is_grad_enabled() else sampled.mul_(mask)
    cout = weight.shape[0]
    out = torch.baddbmm(bias.view(1, cout, 1), weight.reshape(1, cout, c * 9).expand(n, -1, -1),
                        sampled.reshape(n, c * 9, h * w))
    return out.reshape(n, cout, h, w)
