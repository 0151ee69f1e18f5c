"""The tiny preset ranks decoders: the paper's genotype beats a crippled one over seeds.

Runs the ``tiny`` preset exactly as shipped (its synthetic set, the shipped trunk, the real
compiler), so it checks the embedded default rather than a test-only setting.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nasfcos.genotypes import load_paper_genotype, parse_genotype
from nasfcos.search.proxy import PRESETS, build_cache, evaluate, open_cache

SEEDS = (0, 1)

#: Every FPN block reads only c5 through skip ops and sums; the head is all skips.
CRIPPLED = {
    "format": "nasfcos-genotype/1",
    "name": "crippled",
    "fpn": [{"inputs": [3, 3], "ops": ["skip", "skip"], "agg": "sum"}] * 7,
    "head": {"kind": "sequential", "layers": ["skip"] * 6},
    "share": [0, 0, 0, 0, 0],
}


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    path: Path = tmp_path_factory.mktemp("tiny") / "cache"
    return open_cache(build_cache(None, path, PRESETS["tiny"], progress=False), PRESETS["tiny"])


@pytest.mark.slow
def test_paper_genotype_outscores_crippled_one(tiny_cache) -> None:  # noqa: ANN001
    settings = PRESETS["tiny"]
    paper = [evaluate(load_paper_genotype(), tiny_cache, settings, s) for s in SEEDS]
    crippled = [evaluate(parse_genotype(CRIPPLED), tiny_cache, settings, s) for s in SEEDS]
    mean_paper = sum(r.reward for r in paper) / len(SEEDS)
    mean_crippled = sum(r.reward for r in crippled) / len(SEEDS)
    # 600 images: 480 in train.json, meta-train 336 -> 21 batches of 16, 6 epochs
    assert all(r.status == "ok" and r.steps == 126 for r in paper + crippled)
    assert mean_paper > mean_crippled, (mean_paper, mean_crippled)
