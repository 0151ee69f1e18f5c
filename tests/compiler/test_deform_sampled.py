"""The compiled file's eager DCNv2 formulation (grid_sample + one matmul) against
``torchvision.ops.deform_conv2d``: values and gradients, odd and degenerate map sizes, offsets
far outside the map; and the export path still emits ``deform_conv2d``."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torchvision

from nasfcos.compiler import CompileOptions, compile_to_module
from nasfcos.genotypes import load_paper_genotype


@pytest.fixture(scope="module")
def compiled() -> Any:
    return compile_to_module(load_paper_genotype(), CompileOptions(fpn_channels=8, head_channels=64, num_classes=3,
                                                                  in_channels=(4, 6, 8, 10)))


def _case(n: int, c: int, cout: int, h: int, w: int, scale: float, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    offset = torch.randn(n, 36, h, w, generator=g, dtype=torch.float64) * scale
    mask = torch.rand(n, 18, h, w, generator=g, dtype=torch.float64)
    weight = torch.randn(cout, c, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(cout, generator=g, dtype=torch.float64)
    return [t.requires_grad_() for t in (x, offset, mask, weight, bias)]


@pytest.mark.parametrize(("n", "c", "cout", "h", "w", "scale"), [
    (1, 4, 4, 1, 1, 0.7),     # 1x1 map: every tap but the centre is padding
    (2, 6, 5, 7, 5, 1.5),     # batch, odd sizes, Cout != Cin
    (1, 8, 8, 1, 9, 3.0),     # one row
    (1, 4, 6, 6, 6, 20.0),    # offsets mostly far outside the map (zeros)
])
def test_matches_deform_conv2d_values_and_gradients(compiled: Any, n: int, c: int, cout: int,
                                                     h: int, w: int, scale: float) -> None:
    x, offset, mask, weight, bias = _case(n, c, cout, h, w, scale, seed=h * 31 + w)
    want = torchvision.ops.deform_conv2d(x, offset, weight, bias, padding=(1, 1), mask=mask)
    got = compiled.deform_conv_sampled(x, offset, mask, weight, bias, 2)
    assert got.shape == want.shape == (n, cout, h, w)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    g = torch.Generator().manual_seed(1)
    upstream = torch.randn(want.shape, generator=g, dtype=torch.float64)
    grads_want = torch.autograd.grad(want, (x, offset, mask, weight, bias), upstream)
    grads_got = torch.autograd.grad(got, (x, offset, mask, weight, bias), upstream)
    for name, a, b in zip(("x", "offset", "mask", "weight", "bias"), grads_got, grads_want,
                          strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8, msg=f"gradient of {name}")


@pytest.mark.parametrize(("h", "w", "sampled"), [(5, 6, False), (16, 20, True)])
def test_layer_uses_sampled_path_eagerly_and_deform_conv2d_when_exported(
        compiled: Any, monkeypatch: pytest.MonkeyPatch, h: int, w: int, sampled: bool) -> None:
    layer = compiled.DeformConv3x3(4, 4).double().eval()
    torch.nn.init.normal_(layer.conv_offset_mask.weight, std=0.3)
    x = torch.randn(1, 4, h, w, dtype=torch.float64)
    assert (x[0].numel() >= compiled.DCN_SMALL_MAP) == sampled
    calls = []
    original = compiled.deform_conv_sampled

    def spy(*args: Any) -> torch.Tensor:
        calls.append(args[0].shape)
        return original(*args)

    monkeypatch.setattr(compiled, "deform_conv_sampled", spy)
    with torch.no_grad():
        o1, o2, m = torch.chunk(layer.conv_offset_mask(x), 3, dim=1)
        want = torchvision.ops.deform_conv2d(x, torch.cat((o1, o2), 1), layer.weight, layer.bias,
                                             padding=(1, 1), mask=torch.sigmoid(m))
        torch.testing.assert_close(layer(x), want, rtol=1e-10, atol=1e-10)
    assert len(calls) == int(sampled)
    calls.clear()
    program = torch.export.export(layer.float(), (x.float(),))
    targets = {str(node.target) for node in program.graph.nodes}
    assert any("deform_conv2d" in t for t in targets), targets
    assert not any("grid_sampler" in t for t in targets), targets
    assert not calls
