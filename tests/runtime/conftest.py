"""Shared fixtures of the runtime tests: tiny compiled models (real compiler output).

Widths are tiny (FPN 8, head 64: the head's GroupNorm(32) needs 2 values per group on a 1x1 p7) and images 96-128 px, so every export takes a second or two.
The detector uses the compiler's ``tiny`` test backbone.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nasfcos.genotypes import load_paper_genotype, sample_genotype

TINY_IN_CHANNELS = (8, 12, 16, 24)


def _compile(path: Path, genotype, *, detector: bool = False) -> Path:
    from nasfcos.compiler import CompileOptions, compile_genotype

    if detector:
        opts = CompileOptions(fpn_channels=8, head_channels=64, num_classes=3, detector=True, backbone="tiny",
                              in_channels=(16, 24, 32, 48))
    else:
        opts = CompileOptions(fpn_channels=8, head_channels=64, num_classes=3, in_channels=TINY_IN_CHANNELS)
    path.write_text(compile_genotype(genotype, opts))
    return path


def has_deform(genotype) -> bool:
    """Whether a genotype has a live deformable convolution anywhere."""
    d = genotype.to_dict()
    ops = [op for b in d["fpn"] for op in b["ops"]]
    head = d["head"]
    ops += head.get("layers", []) + [head.get("first_op", "")]
    ops += [op for b in head.get("blocks", []) for op in b["ops"]]
    return "deform_conv_3x3" in ops


def deform_genotypes(n: int) -> list:
    """The first ``n`` sampled genotypes (seeds 0, 1, ...) with a deformable conv."""
    out, seed = [], 0
    while len(out) < n:
        g = sample_genotype(seed)
        if has_deform(g):
            out.append(g)
        seed += 1
    return out


@pytest.fixture(scope="session")
def compile_tiny():
    """``compile_tiny(path, genotype, detector=False) -> Path`` (tiny widths)."""
    return _compile


@pytest.fixture(scope="session")
def deform_genotype_list() -> list:
    """Two sampled genotypes with deformable convolutions."""
    return deform_genotypes(2)


@pytest.fixture(scope="session")
def paper_decoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The paper genotype compiled as a Decoder @8 channels, 3 classes."""
    return _compile(tmp_path_factory.mktemp("paper") / "model.py", load_paper_genotype())


@pytest.fixture(scope="session")
def tiny_detector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Detector file (compiled with the tiny backbone, or the stand-in)."""
    return _compile(tmp_path_factory.mktemp("det") / "model.py", load_paper_genotype(),
                    detector=True)


@pytest.fixture(scope="session")
def paper_decoder_onnx(tmp_path_factory: pytest.TempPathFactory, paper_decoder: Path) -> Path:
    """Static ONNX export of ``paper_decoder`` at 160x160 (shared by several tests)."""
    from nasfcos.runtime.export import ExportOptions, export_onnx

    out = paper_decoder.parent / "decoder.onnx"  # beside its model.py: check finds it there
    export_onnx(paper_decoder, out, ExportOptions(size=(160, 160)))
    return out


@pytest.fixture(scope="session")
def tiny_detector_onnx(tmp_path_factory: pytest.TempPathFactory, tiny_detector: Path) -> Path:
    """Static fp32 ONNX export of ``tiny_detector`` at 160x160 (export tests check it, the
    precision tests lower it)."""
    from nasfcos.runtime.export import ExportOptions, export_onnx

    out = tiny_detector.parent / "det.onnx"  # beside its model.py: check finds it there
    export_onnx(tiny_detector, out, ExportOptions(size=(160, 160)))
    return out


@pytest.fixture(scope="session")
def deform_detector_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first sampled genotype with deformable convs, compiled as a tiny Detector; static
    fp32 ONNX export at 160x192 (the head's GroupNorm needs >= 2 values at stride 128)."""
    from nasfcos.runtime.export import ExportOptions, export_onnx

    folder = tmp_path_factory.mktemp("deform_det")
    model = _compile(folder / "model.py", deform_genotypes(1)[0], detector=True)
    out = folder / "det.onnx"
    export_onnx(model, out, ExportOptions(size=(160, 192)))
    return out


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic COCO folder (12 images, 96 px): calibration images."""
    from nasfcos.fcos.synth import SynthConfig, write_synthetic

    out = tmp_path_factory.mktemp("synth")
    write_synthetic(out, SynthConfig(images=12, size=96, seed=0))
    return out
