"""Compiled model.py vs the reference interpreter: same keys, same init, same outputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from nasfcos.compiler import build_reference, compile_to_module
from nasfcos.genotypes import PAPER_GENOTYPES, Genotype, load_paper_genotype, sample_genotype

KINDS = ("fcos", "sequential", "dag")
NUM_RANDOM = 200


def _outputs_match(a: Any, b: Any, atol: float) -> float:
    worst = 0.0
    for la, lb in zip(a, b, strict=True):
        assert len(la) == len(lb) == 5
        for x, y in zip(la, lb, strict=True):
            assert x.shape == y.shape and x.dtype == y.dtype
            worst = max(worst, (x - y).abs().max().item())
    assert worst <= atol, f"max |compiled - reference| = {worst}"
    return worst


def check_parity(g: Genotype, opts: dict[str, Any], features: Callable[..., list[torch.Tensor]],
                 randomize: Callable[..., nn.Module], dtype: torch.dtype = torch.float64,
                 atol: float = 1e-10, seed: int = 0) -> None:
    torch.manual_seed(seed)
    ref = build_reference(g, **opts)
    module = compile_to_module(g, **opts)
    torch.manual_seed(seed)
    dec = module.build()
    ref_sd, dec_sd = ref.state_dict(), dec.state_dict()
    assert list(dec_sd) == list(ref_sd)  # same names, same registration order
    for key, value in ref_sd.items():  # same constructor semantics: same seed, same weights
        assert torch.equal(dec_sd[key], value), key
    randomize(ref, seed)
    ref.to(dtype).eval()
    dec.to(dtype).eval()
    dec.load_state_dict(ref.state_dict(), strict=True)
    feats = features(opts["in_channels"], dtype=dtype, seed=seed)
    with torch.no_grad():
        _outputs_match(dec(feats), ref(feats), atol)


@pytest.mark.parametrize("name", PAPER_GENOTYPES)
def test_shipped_genotypes_match_reference(name: str, tiny: dict[str, Any], features: Any, randomize: Any) -> None:
    check_parity(load_paper_genotype(name), tiny, features, randomize)


@pytest.mark.parametrize("name", PAPER_GENOTYPES)
def test_shipped_genotypes_match_in_float32_with_bridge(name: str, features: Any, randomize: Any) -> None:
    opts = {"fpn_channels": 16, "head_channels": 64, "num_classes": 5, "in_channels": (8, 16, 24, 32)}
    check_parity(load_paper_genotype(name), opts, features, randomize, dtype=torch.float32, atol=1e-4)


@pytest.mark.parametrize("seed", range(NUM_RANDOM))
def test_random_genotypes_match_reference(seed: int, features: Any, randomize: Any) -> None:
    g = sample_genotype(seed, KINDS[seed % 3])
    # vary the widths too: the FPN 8 or 32 wide, bridged to a head of 64 (GroupNorm(32, C))
    opts: dict[str, Any] = {"fpn_channels": 8, "head_channels": 64, "num_classes": 1 + seed % 4,
                            "in_channels": (3, 5, 7, 9)}
    if seed % 4 == 1:
        opts.update(fpn_channels=32)
    check_parity(g, opts, features, randomize, seed=seed)


def test_parity_with_batch_and_train_mode_shapes(tiny: dict[str, Any], features: Any) -> None:
    """Batch of 2 in training mode (BN batch statistics): both run and agree."""
    g = sample_genotype(7, "dag")
    torch.manual_seed(0)
    ref = build_reference(g, **tiny).double().train()
    dec = compile_to_module(g, **tiny).build().double().train()
    dec.load_state_dict(ref.state_dict(), strict=True)
    feats = features(tiny["in_channels"], batch=2)
    _outputs_match(dec(feats), ref(feats), 1e-10)
    # the BN running statistics moved identically
    for key, value in ref.state_dict().items():
        assert torch.allclose(dec.state_dict()[key], value, atol=1e-12), key
