"""``GroupNorm`` through ``torch.group_norm`` (runs a 1x1 map at batch 1): an ordinary module whose code below the marker the
compiler pastes into model files (:func:`nasfcos.compiler.backbones.pasted`)."""

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
