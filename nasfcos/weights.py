"""The one loader of weight files (base module: imports only torch and nasfcos.errors).

Every weight or checkpoint file the toolkit reads goes through :func:`load_weights_file`:
``torch.load(..., weights_only=True)`` (a pickle in the file cannot run code), special files
refused, one-line errors.  A file is either ``{"model": state_dict, ...metadata}`` (what
``nasfcos train`` writes; metadata such as ``num_classes``, ``model_kwargs``, ``cat_ids``) or a
bare ``state_dict``; both come back as the first form.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from nasfcos.errors import NasfcosError, first_line, short_repr
from nasfcos.io import regular_file
from nasfcos.modelfile import MAX_CLASSES


def load_weights_file(path: str | Path) -> dict[str, Any]:
    """``{"model": state_dict, ...metadata}`` from a checkpoint or a bare state_dict file."""
    path = regular_file(path, "weights file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if "weights only" in str(exc).lower():  # not torch's advice to load it unsafely
            raise NasfcosError(f"{path}: refused: it holds objects other than tensors and plain "
                               "data (read with torch.load(weights_only=True))") from None
        line = first_line(exc)
        raise NasfcosError(f"{path}: not a readable PyTorch weights file ({line})") from exc
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        state = obj["model"]
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state, obj = obj, {"model": obj}
    else:
        raise NasfcosError(f"{path}: unrecognised weights file layout "
                           "(expected a state_dict or {'model': state_dict, ...})")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise NasfcosError(f"{path}: entry {bad[0]!r} of the state_dict is not a tensor")
    check_finite_state(state, str(path))
    check_metadata(obj, str(path))
    return obj


#: Metadata of a weights file that the toolkit reads: name -> (kind, low, high).  Sizes are
#: bounded like the command line's (``--min-size`` ...), so a forged file cannot ask for a
#: huge allocation; lists (one entry per class) have at most ``MAX_CLASSES`` entries.
METADATA_RULES: dict[str, tuple[str, int, int]] = {
    "num_classes": ("int", 1, MAX_CLASSES),
    "min_size": ("int", 32, 8192),
    "max_size": ("int", 32, 8192),
    "eval_batch": ("int", 1, 4096),
    "cat_ids": ("int list", 0, 2**31 - 1),
    "class_names": ("str list", 0, 1000),
    "model_kwargs": ("dict", 0, 0),
    "model_sha256": ("str", 0, 128),
}


def check_metadata(doc: dict[str, Any], source: str) -> None:
    """One-line error when a metadata entry of a weights file has the wrong type or is out of
    range (``min_size: 'abc'``, ``cat_ids: ['x']``), before anything uses it."""
    for key, (kind, lo, hi) in METADATA_RULES.items():
        if key not in doc or doc[key] is None:
            continue
        v = doc[key]
        if kind == "int":
            ok = isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi
            want = f"an integer in {lo}..{hi}"
        elif kind == "int list":
            ok = isinstance(v, list | tuple) and len(v) <= MAX_CLASSES and all(
                isinstance(x, int) and not isinstance(x, bool) and lo <= x <= hi for x in v)
            want = f"a list of integers in {lo}..{hi}"
        elif kind == "str list":
            ok = isinstance(v, list | tuple) and len(v) <= MAX_CLASSES and all(
                isinstance(x, str) and len(x) <= hi for x in v)
            want = f"a list of names of at most {hi} characters"
        elif kind == "dict":
            ok = isinstance(v, dict) and all(isinstance(k, str) for k in v)
            want = "a mapping of names"
        else:
            ok = isinstance(v, str) and len(v) <= hi
            want = f"a string of at most {hi} characters"
        if not ok:
            raise NasfcosError(f"{source}: metadata {key!r} must be {want}, got {short_repr(v)}")
    k, ids = doc.get("num_classes"), doc.get("cat_ids")
    if isinstance(k, int) and isinstance(ids, list | tuple) and ids and len(ids) != k:
        raise NasfcosError(f"{source}: metadata 'cat_ids' has {len(ids)} ids for {k} classes")


def check_finite_state(state: dict[str, Any], source: str) -> None:
    """One-line error when a floating tensor of ``state`` holds NaN or inf: refused at load,
    because non-finite deformable offsets crash torchvision's deform_conv2d (a segfault)."""
    for k, v in state.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise NasfcosError(f"{source}: {k} holds non-finite values (NaN or inf)")


def load_state_dict_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``module.load_state_dict(state, strict=True)`` with a one-line error naming ``source``,
    the first offending key and, for a shape mismatch, both shapes; non-finite values refused."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing:
        raise NasfcosError(f"{source}: weights do not fit the model: missing key {missing[0]!r} "
                           f"({len(missing)} missing, {len(unexpected)} unexpected)")
    if unexpected:
        raise NasfcosError(f"{source}: weights do not fit the model: unexpected key "
                           f"{unexpected[0]!r} ({len(unexpected)} unexpected)")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise NasfcosError(f"{source}: weights do not fit the model: {k} has shape "
                               f"{tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model")
    check_finite_state(state, source)
    module.load_state_dict(state, strict=True)
