"""Genotypes: the schema, validation, canonical form, hashing and search space of NAS-FCOS.

>>> from nasfcos.genotypes import load_paper_genotype
>>> g = load_paper_genotype("nas_fcos_fpn_head")
>>> g.head.kind, len(g.fpn), g.short_hash() == g.canonical().short_hash()
('sequential', 7, True)
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from nasfcos.genotypes.analysis import (
    FPNGraph,
    canonical_json,
    canonicalize,
    content_hash,
    fpn_graph,
    head_live,
    head_pool_names,
)
from nasfcos.genotypes.genotype import (
    MAX_FILE_BYTES,
    Block,
    Genotype,
    Head,
    load_genotype,
    loads_genotype,
    parse_genotype,
)
from nasfcos.genotypes.paper import from_paper_list, to_paper_list
from nasfcos.genotypes.resolve import (
    DEFAULT_GENOTYPE,
    PAPER_GENOTYPES,
    ReleaseConfig,
    load_paper_genotype,
    paper_genotype_path,
    read_release_config,
    resolve_genotype,
)
from nasfcos.genotypes.sample import choices_from_genotype, genotype_from_choices, sample_genotype
from nasfcos.genotypes.space import (
    AGGS,
    BACKBONE_LEVELS,
    BACKBONE_STRIDES,
    FORMAT,
    FPN_OPS,
    HEAD_KINDS,
    HEAD_OPS,
    NUM_FPN_BLOCKS,
    NUM_HEAD_BLOCKS,
    NUM_LEVELS,
    OUTPUT_LEVELS,
    OUTPUT_STRIDES,
    Decision,
    decisions,
    fpn_pool_size,
    head_num_layers,
    head_pool_size,
    max_choices,
)


def schema_path() -> Path:
    """Path of the published JSON Schema (``genotypes/schema.json``)."""
    return Path(str(resources.files(__name__).joinpath("schema.json")))


__all__ = [
    "AGGS", "BACKBONE_LEVELS", "BACKBONE_STRIDES", "FORMAT", "FPN_OPS", "HEAD_KINDS", "HEAD_OPS",
    "MAX_FILE_BYTES", "NUM_FPN_BLOCKS", "NUM_HEAD_BLOCKS", "NUM_LEVELS", "OUTPUT_LEVELS",
    "OUTPUT_STRIDES", "PAPER_GENOTYPES", "DEFAULT_GENOTYPE", "Block", "Decision", "FPNGraph",
    "Genotype", "Head", "canonical_json", "canonicalize", "choices_from_genotype", "content_hash",
    "decisions", "fpn_graph", "fpn_pool_size", "from_paper_list", "genotype_from_choices",
    "head_live", "head_num_layers", "head_pool_names", "head_pool_size", "load_genotype",
    "load_paper_genotype", "loads_genotype", "max_choices", "paper_genotype_path",
    "parse_genotype", "sample_genotype", "schema_path", "to_paper_list", "ReleaseConfig",
    "read_release_config", "resolve_genotype",
]
