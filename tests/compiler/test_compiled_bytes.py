"""The compiler's output, byte for byte: a refactor of the plan or the templates must not
change a compiled file.  The digests were taken before the plan held values and the
latency table read it (after GroupNorm became torch.group_norm); a deliberate change of the
generated code updates them, with the reason in the commit."""

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
                     "75506fe05b061b33f99a5ee434de0a70b60b629e4a9b73ce30cae2189474e142"),
    "nas_fcos_fpn_head": (lambda: compile_genotype(load_paper_genotype("nas_fcos_fpn_head")),
                          "ff87fc64aaf1fef16cd77340007beb4ce832f18b968874c4cb742aff5bdb0c24"),
    "nas_fcos_fpn_head bridged, stride units": (
        lambda: compile_genotype(load_paper_genotype("nas_fcos_fpn_head"), CompileOptions(
            fpn_channels=64, head_channels=32, num_classes=3, box_regression="stride")),
        "c0e1c3a1947b6358fbeb9fe38e837286baddf241df698a95ffdf71f8b639d663"),
    "nas_fcos_fpn detector resnet50_c2": (
        lambda: compile_genotype(load_paper_genotype("nas_fcos_fpn"), CompileOptions(
            detector=True, backbone="resnet50_c2", preprocess="caffe2", scoring="sqrt")),
        "dfddd7493d6c86d0271cfeb653c6a63358e300b7a4e01274b717fccd77c1f765"),
    "dag head (sample 1)": (
        lambda: compile_genotype(sample_genotype(1, "dag", name="s1"), CompileOptions(
            fpn_channels=64, head_channels=64, num_classes=5, backbone="tiny")),
        "48faf667cc0c1de64fad5af11c63f1c08dcb7daa274d3b6a4b8227311dcebfcb"),
    "R_50_NAS_densebox (fcos head)": (
        lambda: compile_genotype(release_target("R_50_NAS_densebox").genotype,
                                 release_target("R_50_NAS_densebox").options),
        "60c79b0d8faeace26929dd74f0abfeaf3fd29f4b9af633433df3d33b7dfbe9a8"),
    "fpn-fcos detector": (
        lambda: compile_baseline(CompileOptions(fpn_channels=64, head_channels=32, detector=True,
                                                backbone="tiny")),
        "0dc260bb7a5d3252046ac57dfb4bb177f3a41130d92f83f2f0007c679c62fabd"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_compiled_source_is_byte_identical(case: str) -> None:
    make, digest = CASES[case]
    assert hashlib.sha256(make().encode()).hexdigest() == digest
