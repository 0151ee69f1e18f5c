"""The one genotype resolver: file (genotype JSON, list-form JSON, release yaml) or shipped name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nasfcos.cli.main import main as cli_main
from nasfcos.errors import GenotypeError
from nasfcos.genotypes import (
    load_paper_genotype,
    read_release_config,
    resolve_genotype,
    to_paper_list,
)

#: configs/search/R_50_NAS_head.yaml of the release (d586b28), the parts the reader uses
R50_HEAD_YAML = """\
MODEL:
  META_ARCHITECTURE: "SingleStageDetector"
  WEIGHT: "models/R-50-NAS-head.pth"
  RPN_ONLY: True
  DENSEBOX_ON: True
  BACKBONE:
    CONV_BODY: "R-50-NAS"
    OUT_CHANNELS: 256
    ENCODER_OUT_CHANNELS: (256, 512, 1024, 2048)
  RETINANET:
    NUM_CLASSES: 81
    NMS_TH: 0.6
SEARCH:
  NAS_HEAD_ON: True
  NAS_DECODER_ON: True
  DECODER:
    VERSION: 2
    CONFIG: [[[3, 3, 4, 4, 1]], [[3, 3, 4, 4, 1]], [[4, 3, 4, 3, 1]], [[1, 3, 4, 3, 1]], [[5, 3, 4, 4, 1]], [[4, 7, 4, 4, 1]], [[7, 2, 4, 4, 1]], [0], [5, 1, 5, 0, 4, 4]]
    AGG_SIZE: 256
    NUM_CELLS: 7
  HEAD:
    NUM_HEAD_LAYERS: 6
"""
#: configs/search/R_101_X_32x8d_NAS_densebox.yaml: FCOS head, X-101 32x8d
X101_YAML = """\
MODEL:
  BACKBONE:
    CONV_BODY: "R-101-NAS"
  RESNETS:
    STRIDE_IN_1X1: False
    NUM_GROUPS: 32
    WIDTH_PER_GROUP: 8
  RETINANET:
    NUM_CLASSES: 81
SEARCH:
  NAS_DECODER_ON: True
  DECODER:
    CONFIG: [[[3, 3, 4, 4, 1]], [[3, 3, 4, 4, 1]], [[4, 3, 4, 3, 1]], [[1, 3, 4, 3, 1]], [[5, 3, 4, 4, 1]], [[4, 7, 4, 4, 1]], [[7, 2, 4, 4, 1]]]
    AGG_SIZE: 128
"""


def test_release_yaml_reads_genotype_width_backbone_and_head(tmp_path: Path) -> None:
    (tmp_path / "R_50_NAS_head.yaml").write_text(R50_HEAD_YAML)
    cfg = read_release_config(tmp_path / "R_50_NAS_head.yaml")
    assert cfg.genotype == load_paper_genotype("nas_fcos_fpn_head") and cfg.genotype.name == "R_50_NAS_head"
    assert (cfg.agg_size, cfg.conv_body, cfg.stride_in_1x1, cfg.nas_head, cfg.num_classes) == \
        (256, "R-50-NAS", True, True, 80)
    (tmp_path / "x.yml").write_text(X101_YAML)
    cfg = read_release_config(tmp_path / "x.yml")
    assert cfg.genotype == load_paper_genotype("nas_fcos_fpn") and cfg.agg_size == 128
    assert (cfg.stride_in_1x1, cfg.num_groups, cfg.width_per_group, cfg.nas_head) == (False, 32, 8, False)
    # NAS_HEAD_ON off: the release builds the FCOS head whatever the list holds
    (tmp_path / "off.yaml").write_text(R50_HEAD_YAML.replace("NAS_HEAD_ON: True", "NAS_HEAD_ON: False"))
    assert resolve_genotype(tmp_path / "off.yaml").head.kind == "fcos"


def test_list_form_json_and_precedence(tmp_path: Path) -> None:
    head = load_paper_genotype("nas_fcos_fpn_head")
    (tmp_path / "list.json").write_text(json.dumps(to_paper_list(head)))
    assert resolve_genotype(str(tmp_path / "list.json")) == head
    assert resolve_genotype("nas_fcos_fpn") == load_paper_genotype("nas_fcos_fpn")
    # a file wins over the shipped name of the same spelling
    shadow = tmp_path / "nas_fcos_fpn.json"
    shadow.write_text(json.dumps(to_paper_list(head)))
    assert resolve_genotype(shadow) == head


@pytest.mark.parametrize(("name", "text", "match"), [
    ("missing", None, "no such file, and not a shipped genotype"),
    ("bad.json", "[[[3, 3, 9, 4, 1]]]", "expected 7 FPN blocks"),
    ("bad.yaml", "MODEL: [unclosed", "not valid YAML"),
    ("retina.yaml", "MODEL: {RETINANET_ON: True}\nSEARCH: {NAS_DECODER_ON: True}\n", "only NAS-FCOS configs"),
    ("nolist.yaml", "SEARCH: {NAS_DECODER_ON: True, DECODER: {AGG_SIZE: 256}}\n", "CONFIG: missing"),
    ("head.yaml", R50_HEAD_YAML.replace(", [0], [5, 1, 5, 0, 4, 4]", ""), "NAS_HEAD_ON needs"),
    ("code.yaml", "!!python/object/apply:os.system ['true']\n", "not valid YAML"),
])
def test_bad_arguments_give_one_line_errors(tmp_path: Path, name: str, text: str | None, match: str) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(GenotypeError, match=match) as info:
        resolve_genotype(str(path))
    assert "\n" not in str(info.value)


def test_every_verb_takes_the_release_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    yaml_file = tmp_path / "R_50_NAS_head.yaml"
    yaml_file.write_text(R50_HEAD_YAML)
    assert cli_main(["validate", str(yaml_file)]) == 0
    assert ": ok  name=R_50_NAS_head head=sequential" in capsys.readouterr().out
    out = tmp_path / "m.py"
    assert cli_main(["compile", str(yaml_file), "-o", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["options"]["fpn_channels"] == 256  # AGG_SIZE
    (tmp_path / "x101.yaml").write_text(X101_YAML)
    assert cli_main(["compile", str(tmp_path / "x101.yaml"), "-o", str(out), "--detector", "--json"]) == 0
    opts = json.loads(capsys.readouterr().out)["options"]
    assert (opts["fpn_channels"], opts["backbone"], opts["preprocess"]) == (128, "resnext101_32x8d_c2", "caffe2")
    assert summary["genotype_hash"] == load_paper_genotype("nas_fcos_fpn_head").hash()
