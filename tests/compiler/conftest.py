"""Shared fixtures of the compiler tests: one CPU thread, tiny widths, random weights."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

#: Tiny widths for parity checks: FPN 8 bridged to a head of 64 (GroupNorm(32, 64): 2 channels a
#: group, so the 1x1 p7 of these sizes still has 2 values per group).
TINY = {"fpn_channels": 8, "head_channels": 64, "num_classes": 3, "in_channels": (4, 6, 8, 10)}
#: c2..c5 sizes with odd dimensions (as ceil(H / stride) gives for odd image sizes).
SIZES = ((15, 17), (8, 9), (4, 5), (2, 3))




def make_features(in_channels: tuple[int, ...], dtype: torch.dtype = torch.float64, seed: int = 0,
                  sizes: tuple[tuple[int, int], ...] = SIZES, batch: int = 1) -> list[torch.Tensor]:
    """Random [c2, c3, c4, c5] backbone features [N, C_i, H_i, W_i]."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, h, w, generator=g, dtype=dtype) for c, (h, w) in zip(in_channels, sizes, strict=True)]


def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Fill every float parameter and buffer with random values (offset convs and BN stats too),
    so parity checks exercise every weight, deformable offsets and running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.dtype.is_floating_point:
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) + 0.5)
            elif "conv_offset_mask" in name:
                t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype) * 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype) * 0.3)
    return module


@pytest.fixture
def tiny() -> dict[str, object]:
    return dict(TINY)


@pytest.fixture
def features() -> Callable[..., list[torch.Tensor]]:
    return make_features


@pytest.fixture
def randomize() -> Callable[..., nn.Module]:
    return randomize_
