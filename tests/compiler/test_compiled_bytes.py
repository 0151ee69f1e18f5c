"""The compiler's output, byte for byte: a refactor of the plan or the templates must not
change a compiled file.  The digests were taken before the plan held values and the
latency table read it (after GroupNorm became torch.group_norm; the 'regenerate with' line
as main has it since; DeformConv sampling and post-processing in float32 under
autocast since issue 24; the Detector's checkpoint loading through the backbone code's
load_state_file and BACKBONE_UNUSED_KEYS with one ResNet rule since issue 22); a deliberate
change of the generated code updates them, with the reason in the commit."""

from __future__ import annotations

import hashlib

import pytest

from nasfcos.compiler import CompileOptions, compile_genotype
from nasfcos.compiler.baseline import compile_baseline
from nasfcos.compiler.release import release_target
from nasfcos.genotypes import load_paper_genotype, sample_genotype

#: name -> (source factory, sha256 of the source)
CASES = {
    "nas_fcos_fpn": (lambda: compile_genotype(load_paper_genotype("nas_fcos_fpn")),
                     "34bb69840a274023156e0df07a8ea128632306483b146e98af24e37803eaecfb"),
    "nas_fcos_fpn_head": (lambda: compile_genotype(load_paper_genotype("nas_fcos_fpn_head")),
                          "250cc67704ae42355328addb5368fb7d270dc4dd79b7ee1c05c736087b85ee1e"),
    "nas_fcos_fpn_head bridged, stride units": (
        lambda: compile_genotype(load_paper_genotype("nas_fcos_fpn_head"), CompileOptions(
            fpn_channels=64, head_channels=32, num_classes=3, box_regression="stride")),
        "89fe3e0383a1d69a498a460b3603c457de6a0a4d485037e252bdfc8c09c4b569"),
    "nas_fcos_fpn detector resnet50_c2": (
        lambda: compile_genotype(load_paper_genotype("nas_fcos_fpn"), CompileOptions(
            detector=True, backbone="resnet50_c2", preprocess="caffe2", scoring="sqrt")),
        "46750fdf569a0678113bd722b59f7d2f887123ab1b7bbee8b2fc6d5d44165e23"),
    "dag head (sample 1)": (
        lambda: compile_genotype(sample_genotype(1, "dag", name="s1"), CompileOptions(
            fpn_channels=64, head_channels=64, num_classes=5, backbone="tiny")),
        "1a337b5fd94e9b9d8622468f2d3d0706dab0a8593da2a3724574bb3ef7348e8e"),
    "R_50_NAS_densebox (fcos head)": (
        lambda: compile_genotype(release_target("R_50_NAS_densebox").genotype,
                                 release_target("R_50_NAS_densebox").options),
        "48c0212fb6c08afd3ba8b76801559c7df8f181f8b89bc0ab3504a57d7b8fac8d"),
    "fpn-fcos detector": (
        lambda: compile_baseline(CompileOptions(fpn_channels=64, head_channels=32, detector=True,
                                                backbone="tiny")),
        "f35da695e972a257d51f6b3062554bdb96b2a7f77947d7085574b2770acd1c33"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_compiled_source_is_byte_identical(case: str) -> None:
    make, digest = CASES[case]
    assert hashlib.sha256(make().encode()).hexdigest() == digest
