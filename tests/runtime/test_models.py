"""Model loading, tensor names, sizes and seeded inputs."""

from __future__ import annotations

import numpy as np
import pytest

from nasfcos.errors import NasfcosError
from nasfcos.runtime.models import (
    DECODER_OUTPUTS,
    feature_sizes,
    input_shapes,
    load_model,
    make_inputs,
)


def test_one_size_parser() -> None:
    """Sizes are parsed by the command line's type function only (no second parser)."""
    import argparse

    from nasfcos.cli.args import size_hw, size_list
    from nasfcos.runtime import models

    assert size_hw("800") == (800, 800) and size_hw("800x608") == (800, 608)
    assert size_list("600,800x1000") == [(600, 600), (800, 1000)]
    for bad in ("", "abc", "800x", "16", "8x800"):
        with pytest.raises(argparse.ArgumentTypeError):
            size_hw(bad)
    assert not hasattr(models, "parse_size") and not hasattr(models, "parse_sizes")


def test_feature_sizes_follow_resnet_rounding() -> None:
    # ResNet-50 at 600 px: 150, 75, 38, 19 (ceil at every stride-2 step)
    assert [h for h, _ in feature_sizes((600, 600))] == [150, 75, 38, 19]
    assert input_shapes("decoder", (800, 608), 2, (1, 2, 3, 4)) == [
        (2, 1, 200, 152), (2, 2, 100, 76), (2, 3, 50, 38), (2, 4, 25, 19)]
    assert input_shapes("detector", (64, 96), 1) == [(1, 3, 64, 96)]


def test_make_inputs_seeded() -> None:
    a = make_inputs("decoder", (64, 64), 1, 3, (4, 4, 4, 4))
    b = make_inputs("decoder", (64, 64), 1, 3, (4, 4, 4, 4))
    c = make_inputs("decoder", (64, 64), 1, 4, (4, 4, 4, 4))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])
    assert all(x.dtype == np.float32 and (x >= 0).all() for x in a)
    img = make_inputs("detector", (32, 48), 2, 0)[0]
    assert img.shape == (2, 3, 32, 48) and 0 <= img.min() and img.max() < 1


def test_load_model_kinds(paper_decoder, tiny_detector) -> None:
    dec = load_model(paper_decoder)
    assert dec.kind == "decoder" and dec.output_names == DECODER_OUTPUTS
    assert len(dec.in_channels) == 4
    det = load_model(tiny_detector)
    assert det.kind == "detector" and det.input_names == ("images",)
    # the Decoder inside a detector file can be exported alone
    assert load_model(tiny_detector, "decoder").kind == "decoder"
    with pytest.raises(NasfcosError, match="no Detector"):
        load_model(paper_decoder, "detector")


def test_seeded_weights_are_reproducible(paper_decoder) -> None:
    a = load_model(paper_decoder, seed=1).info["state_dict_sha256"]
    b = load_model(paper_decoder, seed=1).info["state_dict_sha256"]
    c = load_model(paper_decoder, seed=2).info["state_dict_sha256"]
    assert a == b != c


def test_weights_file_roundtrip(paper_decoder, tmp_path) -> None:
    import torch

    lm = load_model(paper_decoder, seed=5)
    path = tmp_path / "w.pt"
    torch.save(lm.net.decoder.state_dict(), path)
    again = load_model(paper_decoder, seed=0, weights=path)
    assert again.info["state_dict_sha256"] == lm.info["state_dict_sha256"]
    torch.save({"nope": torch.zeros(1)}, path)
    with pytest.raises(NasfcosError, match="do not fit"):
        load_model(paper_decoder, weights=path)
