"""``GroupNorm`` through ``torch.group_norm``, pasted into model files with a GroupNorm head.

An ordinary module of the toolkit (imported, linted, tested as is) whose code below the
marker is pasted into compiled model files by :func:`nasfcos.compiler.backbones.pasted`:
it must use only what a model.py imports (torch, torchvision, ``Tensor``, ``nn``, ``F``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


# --- pasted into model.py below this line ---
class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` computed by the op itself (``torch.group_norm``): same parameters and
    results, but it also runs a map with one value per group (a 32-wide head's 1x1 p7 at
    batch 1), which ``F.group_norm`` refuses even in eval mode."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
