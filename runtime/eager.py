"""Eager PyTorch inference preparation: what nasfcos's ``torch`` backend runs.

A compiled ``model.py`` is written for reading and training (every BatchNorm a module of its
own, NCHW tensors).  For inference :func:`prepare_eager` makes a copy that computes the same
function faster on CPU, without touching the source or the state_dict layout of the original:

* **BatchNorm folding**: each eval-mode ``BatchNorm2d`` / ``FrozenBatchNorm2d`` registered right
  after a convolution in the same parent (``conv1``/``bn1`` in torchvision's ResNet blocks,
  ``[conv, bn, relu]`` sequences in MobileNet, ``conv``/``bn`` in the compiled adapters,
  a deformable conv and its BatchNorm in the FPN) is folded into that convolution's weight and
  bias (``w * g / sqrt(v + eps)``, ``(b - m) * g / sqrt(v + eps) + beta``) and replaced by
  ``nn.Identity``.  GroupNorm (the head's) depends on the input and is left alone.
* **channels_last backbone**: the backbone (a submodule named ``backbone``) runs in
  ``torch.channels_last`` memory format, MKL-DNN's native layout, so its convolutions skip the
  layout reorders around every call.  Its feature maps go to the decoder as they are (the
  decoder's first layers take them in channels_last), so no level is copied back to NCHW
  (c2, 256 x H/4 x W/4, which most genotypes never read, cost 33 ms at 800 px).  Memory
  format changes strides, not values, and the parity check below covers the decoder.

Pairing by registration order is a heuristic, so the result is verified: the prepared copy
and the original run on one seeded example and every raw output must agree to float32
rounding.  A copy that fails or disagrees is retried with BatchNorms folded only (no
channels_last); if that fails too the original is kept, and the reason is reported
(:class:`EagerReport`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

from nasfcos.errors import first_line

#: Relative tolerance of the parity check (of each output's largest magnitude).
PARITY_RTOL = 1e-4


@dataclass
class EagerReport:
    """What :func:`prepare_eager` did: folded BatchNorms, channels_last modules, parity."""

    applied: bool = False
    folded: int = 0
    channels_last: list[str] = field(default_factory=list)
    max_rel_diff: float | None = None
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"applied": self.applied, "folded_batchnorms": self.folded,
                "channels_last": list(self.channels_last), "max_rel_diff": self.max_rel_diff,
                "reason": self.reason}


def _is_batchnorm(m: nn.Module) -> bool:
    if isinstance(m, torchvision.ops.FrozenBatchNorm2d):
        return True
    return isinstance(m, nn.BatchNorm2d) and not m.training and m.track_running_stats and m.affine \
        and m.running_mean is not None


def _foldable_conv(m: nn.Module) -> bool:
    """A module computing ``conv(x, weight) + bias`` with ``weight`` ``[Cout, ...]``: a Conv2d,
    or a compiled deformable conv (``weight`` and ``bias`` parameters of its own)."""
    if isinstance(m, nn.Conv2d):
        return True
    w, b = getattr(m, "weight", None), getattr(m, "bias", None)
    return isinstance(w, nn.Parameter) and w.dim() == 4 and isinstance(b, nn.Parameter) \
        and b.shape == w.shape[:1] and type(m).__name__.startswith("DeformConv")


@torch.no_grad()
def _fold(conv: nn.Module, bn: nn.Module) -> None:
    eps = float(getattr(bn, "eps", 0.0))
    scale = bn.weight * (bn.running_var + eps).rsqrt()
    conv.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.bias)
    new_bias = (bias - bn.running_mean) * scale + bn.bias
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias, requires_grad=False)
    else:
        conv.bias.copy_(new_bias)


def fold_batchnorms(module: nn.Module) -> int:
    """Fold every BatchNorm registered right after a foldable conv (see the module docstring)
    into it, in place; returns how many were folded."""
    folded = 0
    for parent in list(module.modules()):
        names = list(parent._modules)
        for first, second in zip(names[:-1], names[1:], strict=True):
            conv, bn = parent._modules[first], parent._modules[second]
            if conv is None or bn is None or not _foldable_conv(conv) or not _is_batchnorm(bn):
                continue
            if bn.weight.shape[0] != conv.weight.shape[0]:
                continue
            _fold(conv, bn)
            parent._modules[second] = nn.Identity()
            folded += 1
    return folded


def _to_channels_last(_m: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(a.contiguous(memory_format=torch.channels_last) if isinstance(a, Tensor) and a.dim() == 4
                 else a for a in args)


def _backbones(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The submodules named ``backbone``, with their qualified names."""
    return [(name, m) for name, m in module.named_modules() if name.split(".")[-1] == "backbone"]


def backbone_channels_last(module: nn.Module) -> list[str]:
    """Run every submodule named ``backbone`` in channels_last (in place); returns their names."""
    done = []
    for name, m in _backbones(module):
        m.to(memory_format=torch.channels_last)
        m.register_forward_pre_hook(_to_channels_last)
        done.append(name)
    return done


def _raw(net: nn.Module, inputs: Sequence[Tensor]) -> list[Tensor]:
    """The raw (pre-post-processing) outputs of a runtime net: a detector's ``forward_raw``
    levels, or the net's own (flat, as ``DecoderIO``'s) outputs."""
    inner = getattr(net, "detector", None)
    if inner is not None:
        cls, reg, ctr = inner.forward_raw(*inputs)
        return [*cls, *reg, *ctr]
    out = net(*inputs)
    return [out] if isinstance(out, Tensor) else list(out)


def _failure(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {first_line(exc, 160)}"


def _mismatch(want: list[Tensor], got: list[Tensor]) -> tuple[float, str]:
    """(largest difference relative to each output's magnitude, reason if over tolerance)."""
    if len(want) != len(got) or any(a.shape != b.shape for a, b in zip(want, got, strict=False)):
        return float("inf"), "outputs changed shape"
    worst = 0.0
    for a, b in zip(want, got, strict=True):
        scale = float(a.abs().max()) if a.numel() else 0.0
        diff = float((a - b).abs().max()) if a.numel() else 0.0
        if diff != diff:  # NaN
            return float("inf"), "outputs differ (NaN)"
        worst = max(worst, diff / max(scale, 1e-6))
    if worst > PARITY_RTOL:
        return worst, f"outputs differ by {worst:.2e} of their magnitude (> {PARITY_RTOL:g})"
    return worst, ""


def prepare_eager(net: nn.Module, example: Sequence[Tensor]) -> tuple[nn.Module, EagerReport]:
    """A faster copy of the eval-mode ``net`` for inference, checked on ``example`` (one seeded
    input per model input); returns ``(net to run, report)``.

    The copy with BatchNorms folded and a channels_last backbone is tried first; if it fails or
    disagrees, the copy with BatchNorms folded only (a module that cannot take channels_last
    input, e.g. a ``view`` of a strided map); if that fails too, the original ``net`` is
    returned.  The report says what was applied, or why nothing was.
    """
    report = EagerReport()
    if net.training:
        report.reason = "module in training mode"
        return net, report
    # full float32 for the comparison (CUDA's TF32 convolutions alone differ by ~1e-3)
    with torch.inference_mode(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        try:
            want = _raw(net, example)
        except Exception as exc:  # noqa: BLE001 - nothing to compare against: run as written
            report.reason = f"the model as written failed on the check input ({_failure(exc)})"
            return net, report
        reasons = []
        # with a backbone: channels_last + folding, then folding only; without: folding only
        for channels_last in (True, False) if _backbones(net) else (False,):
            fast = copy.deepcopy(net)
            folded = fold_batchnorms(fast)
            layout = backbone_channels_last(fast) if channels_last else []
            try:
                got = _raw(fast, example)
            except Exception as exc:  # noqa: BLE001 - any failure of the copy: try less, or fall back
                reasons.append(f"the inference copy failed ({_failure(exc)})")
                continue
            worst, reason = _mismatch(want, got)
            report.max_rel_diff = worst
            if reason:
                reasons.append(reason)
                continue
            report.applied, report.folded, report.channels_last = True, folded, layout
            report.reason = f"channels_last skipped: {reasons[0]}" if reasons else ""
            return fast, report
    report.reason = "; ".join(dict.fromkeys(reasons))
    return net, report
