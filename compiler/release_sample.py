"""A test checkpoint of the authors' release, made from the golden data's weight rule, so that
``nasfcos import-release`` can be tried before downloading the real checkpoints.

The keys, shapes and dtypes of every state_dict entry come from the release's own model
(``release_keys/<config>.json``, from the golden data of commit d586b28 of
Lausannen/NAS-FCOS); each tensor is a pure function of its key, shape and dtype
(:func:`golden_tensor`: seeded by ``zlib.crc32(key)``, He-scaled convolutions with
``scale4d``), so every machine makes the same bytes.  The weights are not trained: the model
detects nothing useful, but the import, export, check and bench paths run on it exactly as on
a real checkpoint.
"""

from __future__ import annotations

import io
import json
import math
import zlib
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from nasfcos.errors import NasfcosError
from nasfcos.io import atomic_write_bytes

#: Release configs with a shipped key list (their checkpoints' layouts).
SAMPLE_CONFIGS: tuple[str, ...] = ("Mobile_NAS_head", "R_50_NAS_head", "R_50_NAS_densebox")


def golden_tensor(model_key: str, shape: list[int], dtype: str = "float32", scale4d: float = 0.5) -> torch.Tensor:
    """The golden data's weight rule (its README): a pure function of key, shape and dtype."""
    s = tuple(shape)
    kw: dict[str, Any] = {"generator": torch.Generator().manual_seed(zlib.crc32(model_key.encode())),
                          "dtype": torch.float64}
    if model_key.endswith("num_batches_tracked"):
        return torch.zeros(s, dtype=torch.int64)
    if model_key.endswith("running_var"):
        t = torch.rand(s, **kw) + 0.5
    elif model_key.endswith("running_mean"):
        t = 0.1 * torch.randn(s, **kw)
    elif len(s) == 4:
        t = torch.randn(s, **kw) * (scale4d * math.sqrt(2.0 / (s[1] * s[2] * s[3])))
    elif len(s) == 1 and model_key.endswith(".weight"):
        t = 1 + 0.1 * torch.randn(s, **kw)
    else:
        t = 0.1 * torch.randn(s, **kw)
    return t.to(getattr(torch, dtype))


def sample_checkpoint(config: str) -> dict[str, Any]:
    """A checkpoint laid out as the release's ``tools/train_net.py`` saves one for ``config``
    (``{"model": {"module.<key>": tensor}, "optimizer": ..., "iteration": ...}``)."""
    if config not in SAMPLE_CONFIGS:
        raise NasfcosError(f"no key list for release config {config!r} (have: {', '.join(SAMPLE_CONFIGS)})")
    doc = json.loads(resources.files("nasfcos.compiler").joinpath("release_keys", f"{config}.json")
                     .read_text(encoding="utf-8"))
    prefix, scale = doc["checkpoint_prefix"], float(doc["scale4d"])
    model = {prefix + key: golden_tensor(key, shape, dtype, scale) for key, shape, dtype in doc["entries"]}
    return {"model": model, "optimizer": {"state": {}, "param_groups": []}, "iteration": 90000}


def write_sample_checkpoint(config: str, path: str | Path) -> Path:
    """:func:`sample_checkpoint` saved (``torch.save``, atomically) to ``path``."""
    buf = io.BytesIO()
    torch.save(sample_checkpoint(config), buf)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


__all__ = ["SAMPLE_CONFIGS", "golden_tensor", "sample_checkpoint", "write_sample_checkpoint"]
