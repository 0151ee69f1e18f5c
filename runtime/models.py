"""Load a compiled ``model.py`` for deployment, name its tensors, and make seeded inputs.

Two model kinds share every runtime tool:

* ``decoder``: inputs ``c2, c3, c4, c5`` (backbone features ``[N, C_i, H/4.., W/4..]`` for
  strides 4, 8, 16, 32, float32); 15 outputs, flattened in the order
  ``cls_p3..cls_p7`` (``[N, K, h, w]`` logits), ``reg_p3..reg_p7`` (``[N, 4, h, w]``,
  distances in the file's ``BOX_REGRESSION`` units, pixels by default), ``ctr_p3..ctr_p7`` (``[N, 1, h, w]`` logits).
* ``detector``: input ``images`` (``[N, 3, H, W]`` float32 RGB in [0, 1]); outputs
  ``boxes`` (``[N, D, 4]`` xyxy pixels), ``scores`` (``[N, D]``), ``labels`` (``[N, D]`` int64),
  with ``D`` fixed (padded entries: score 0, label -1, box 0).

The same names are used for ONNX graphs, TensorRT engines and every runner, so the
outputs of all backends line up one to one.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from nasfcos.errors import NasfcosError
from nasfcos.io import sha256_file
from nasfcos.limits import MAX_INPUT_ELEMENTS
from nasfcos.modelfile import ModelInfo, load_model_file, model_code_guard
from nasfcos.weights import load_state_dict_strict, load_weights_file

MODEL_KINDS: tuple[str, ...] = ("decoder", "detector")

LEVELS: tuple[str, ...] = ("p3", "p4", "p5", "p6", "p7")
DECODER_INPUTS: tuple[str, ...] = ("c2", "c3", "c4", "c5")
DECODER_OUTPUTS: tuple[str, ...] = tuple(
    f"{head}_{level}" for head in ("cls", "reg", "ctr") for level in LEVELS
)
DETECTOR_INPUTS: tuple[str, ...] = ("images",)
DETECTOR_OUTPUTS: tuple[str, ...] = ("boxes", "scores", "labels")


def io_names(kind: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(input names, output names) of a model kind."""
    if kind == "decoder":
        return DECODER_INPUTS, DECODER_OUTPUTS
    if kind == "detector":
        return DETECTOR_INPUTS, DETECTOR_OUTPUTS
    raise NasfcosError(f"unknown model kind {kind!r} (expected decoder or detector)")


def feature_sizes(size: tuple[int, int]) -> list[tuple[int, int]]:
    """Spatial sizes of c2..c5 for an image of ``size`` (ResNet-style ceil halving)."""
    h, w = math.ceil(size[0] / 4), math.ceil(size[1] / 4)
    out = [(h, w)]
    for _ in range(3):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        out.append((h, w))
    return out


def input_shapes(kind: str, size: tuple[int, int], batch: int = 1,
                 in_channels: Sequence[int] | None = None) -> list[tuple[int, ...]]:
    """Input shapes of a model kind at image ``size`` (``in_channels`` needed for decoders)."""
    if kind == "detector":
        return [(batch, 3, size[0], size[1])]
    if kind == "decoder":
        if in_channels is None or len(in_channels) != 4:
            raise NasfcosError("a decoder needs in_channels for c2..c5")
        return [(batch, int(c), h, w) for c, (h, w) in zip(in_channels, feature_sizes(size),
                                                            strict=True)]
    raise NasfcosError(f"unknown model kind {kind!r}")


def check_input_budget(model_kind: str, sizes: Sequence[tuple[int, int]], batch: int = 1,
                       in_channels: Sequence[int] | None = None) -> None:
    """One-line error, before anything is allocated, when the inputs for any of ``sizes``
    at ``batch`` would exceed :data:`nasfcos.limits.MAX_INPUT_ELEMENTS`."""
    for size in sizes:
        if model_kind == "decoder" and in_channels is None:
            shapes = input_shapes("detector", size, batch)  # a lower bound's stand-in
        else:
            shapes = input_shapes(model_kind, size, batch, in_channels)
        total = sum(math.prod(s) for s in shapes)
        if total > MAX_INPUT_ELEMENTS:
            raise NasfcosError(
                f"batch {batch} at {size[0]}x{size[1]} needs {total} input values, over the "
                f"limit of {MAX_INPUT_ELEMENTS} (nasfcos.limits.MAX_INPUT_ELEMENTS); use a "
                "smaller --batch or --size")


def make_inputs(model_kind: str, size: tuple[int, int], batch: int = 1, seed: int = 0,
                in_channels: Sequence[int] | None = None) -> list[np.ndarray]:
    """Seeded float32 inputs for a model kind; every backend is fed exactly these arrays.

    Detector: images uniform in [0, 1).  Decoder: features ``relu(N(0, 1))`` (backbone
    features are post-ReLU), one array per level c2..c5.  Inputs over
    :data:`nasfcos.limits.MAX_INPUT_ELEMENTS` are refused before anything is allocated.
    """
    check_input_budget(model_kind, [size], batch, in_channels)
    rng = np.random.default_rng(seed)
    arrays = []
    for shape in input_shapes(model_kind, size, batch, in_channels):
        if model_kind == "detector":
            arrays.append(rng.random(shape, dtype=np.float32))
        else:
            arrays.append(np.maximum(rng.standard_normal(shape, dtype=np.float32), 0.0))
    return arrays


class DecoderIO(nn.Module):
    """Decoder with flat tensors: ``forward(c2, c3, c4, c5)`` -> 15 outputs (see module doc)."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, c2: Tensor, c3: Tensor, c4: Tensor, c5: Tensor) -> tuple[Tensor, ...]:
        cls, reg, ctr = self.decoder([c2, c3, c4, c5])
        return (*cls, *reg, *ctr)


class DetectorIO(nn.Module):
    """Detector with a flat signature: ``forward(images)`` -> ``(boxes, scores, labels)``."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        boxes, scores, labels = self.detector(images)
        return boxes, scores, labels


@dataclass
class LoadedModel:
    """A compiled model ready to run or export.

    ``net`` is the flat-signature module (``DecoderIO`` / ``DetectorIO``) in eval mode.
    """

    path: Path
    module: ModuleType
    kind: str
    net: nn.Module
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    in_channels: tuple[int, ...] | None
    seed: int
    weights: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def inputs(self, size: tuple[int, int], batch: int = 1, seed: int = 0) -> list[np.ndarray]:
        """Seeded inputs for this model (see :func:`make_inputs`)."""
        return make_inputs(self.kind, size, batch, seed, self.in_channels)


def detect_kind(own: str, requested: str | None = None) -> str:
    """The model kind to use: ``requested`` if given (checked against the file's ``own``)."""
    if requested is not None:
        if requested not in MODEL_KINDS:
            raise NasfcosError(f"unknown model kind {requested!r} (expected decoder or detector)")
        if requested == "detector" and own != "detector":
            raise NasfcosError("the model file has no Detector (compile it with --detector)")
        return requested
    return own


def state_dict_hash(net: nn.Module) -> str:
    """sha256 over the names, shapes and bytes of every parameter and buffer (order-stable)."""
    h = hashlib.sha256()
    for name, t in sorted(net.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes()
                 if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def load_model(path: str | Path, kind: str | None = None, *, seed: int = 0,
               weights: str | Path | None = None, sha256: str | None = None,
               **overrides: Any) -> LoadedModel:
    """Import a compiled ``model.py`` and build the chosen module in eval mode.

    Weights: random, seeded with ``torch.manual_seed(seed)`` before construction (so the
    same seed rebuilds the same weights), or a ``state_dict`` file (``torch.save``) in
    ``weights``, loaded strictly.  ``overrides`` go to the constructor.  ``sha256``: the
    file must hash to it before it is imported (a manifest's ``model_sha256``).
    """
    path = Path(path)
    module = load_model_file(path, sha256=sha256)
    mi = ModelInfo.from_module(module)
    kind = detect_kind(mi.kind, kind)
    weights_path = Path(weights) if weights is not None else None
    ckpt = load_weights_file(weights_path) if weights_path is not None else None
    if ckpt is not None and kind == "detector":
        # what 'nasfcos train' recorded: the class count and constructor options it trained
        for key, value in dict(ckpt.get("model_kwargs") or {}).items():
            overrides.setdefault(key, value)
        if "num_classes" in ckpt:
            overrides.setdefault("num_classes", int(ckpt["num_classes"]))
    torch.manual_seed(seed)
    try:
        with model_code_guard(path):
            inner = module.Detector(**overrides) if kind == "detector" else module.Decoder(**overrides)
    except NasfcosError as exc:
        if not isinstance(exc.__cause__, TypeError):
            raise
        raise NasfcosError(f"{path}: cannot build the {kind} ({exc.__cause__})") from exc
    if ckpt is not None:
        load_state_dict_strict(inner, ckpt["model"], str(weights_path))
    inner.eval()
    net = (DetectorIO(inner) if kind == "detector" else DecoderIO(inner)).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    in_channels = overrides.get("in_channels", mi.in_channels)
    in_names, out_names = io_names(kind)
    info = {
        "genotype_hash": mi.genotype_hash,
        "genotype_name": mi.name,
        "fpn_channels": overrides.get("fpn_channels", mi.fpn_channels),
        "head_channels": overrides.get("head_channels", mi.head_channels),
        "num_classes": overrides.get("num_classes", mi.num_classes),
        "in_channels": list(in_channels) if in_channels is not None else None,
        "backbone": mi.backbone,
        "model_sha256": sha256_file(path),
        "state_dict_sha256": state_dict_hash(inner),
        "options": mi.options(),  # the compiled behaviour options
    }
    return LoadedModel(path=path, module=module, kind=kind, net=net, input_names=in_names,
                       output_names=out_names,
                       in_channels=tuple(int(c) for c in in_channels) if in_channels else None,
                       seed=seed, weights=weights_path, info=info)
