"""The compiler's output, byte for byte: a refactor of the plan or the templates must not
change a compiled file.  The digests were taken before the plan held values and the
latency table read it (after GroupNorm became torch.group_norm; the 'regenerate with' line
as main has it since); a deliberate change of the generated code updates them, with the
reason in the commit."""

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
                     "2da354dd2ca27b104ba3d9d70412e7f5ee4863b525e0b68452c8fe3f23def5d2"),
    "nas_fcos_fpn_head": (lambda: compile_genotype(load_paper_genotype("nas_fcos_fpn_head")),
                          "932cf533534cb49275adcd689d063d8acaa66e15b6198f5f181409d8a36a2c5a"),
    "nas_fcos_fpn_head bridged, stride units": (
        lambda: compile_genotype(load_paper_genotype("nas_fcos_fpn_head"), CompileOptions(
            fpn_channels=64, head_channels=32, num_classes=3, box_regression="stride")),
        "98574b5e6125584a4ba536f247c8812dc16146ff1cb03eaa1e5b7cec8206e261"),
    "nas_fcos_fpn detector resnet50_c2": (
        lambda: compile_genotype(load_paper_genotype("nas_fcos_fpn"), CompileOptions(
            detector=True, backbone="resnet50_c2", preprocess="caffe2", scoring="sqrt")),
        "10e35e8061ea9197283b5e85567ca2dde5416e0fced202b09fcadf68b0425f6f"),
    "dag head (sample 1)": (
        lambda: compile_genotype(sample_genotype(1, "dag", name="s1"), CompileOptions(
            fpn_channels=64, head_channels=64, num_classes=5, backbone="tiny")),
        "3a18cd5c2762c91391df842109e6d38be46394d4d0634c5bc65f7946924398ba"),
    "R_50_NAS_densebox (fcos head)": (
        lambda: compile_genotype(release_target("R_50_NAS_densebox").genotype,
                                 release_target("R_50_NAS_densebox").options),
        "f97899c8ab821d8a69dc65978a6b00a9e94f3fd82df3b975663d1f5be9b4e43f"),
    "fpn-fcos detector": (
        lambda: compile_baseline(CompileOptions(fpn_channels=64, head_channels=32, detector=True,
                                                backbone="tiny")),
        "0dc260bb7a5d3252046ac57dfb4bb177f3a41130d92f83f2f0007c679c62fabd"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_compiled_source_is_byte_identical(case: str) -> None:
    make, digest = CASES[case]
    assert hashlib.sha256(make().encode()).hexdigest() == digest
