"""Synthetic data, VOC conversion, COCO dataset transforms and collate."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nasfcos.cli.main import main as cli
from nasfcos.errors import NasfcosError
from nasfcos.fcos.data import (
    CocoDetection,
    TransformConfig,
    collate,
    load_coco,
    pad_batch,
    resolve_split,
)
from nasfcos.fcos.synth import CLASSES, SynthConfig, write_synthetic
from nasfcos.fcos.voc import parse_voc_xml, voc_to_coco, write_voc_xml


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    write_synthetic(out, SynthConfig(images=10, size=64, seed=5))
    return out


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synth_is_deterministic_per_seed(tmp_path: Path, synth: Path) -> None:
    write_synthetic(tmp_path / "a", SynthConfig(images=10, size=64, seed=5))
    assert _tree_bytes(tmp_path / "a") == _tree_bytes(synth)
    write_synthetic(tmp_path / "b", SynthConfig(images=10, size=64, seed=6))
    assert _tree_bytes(tmp_path / "b")["train.json"] != _tree_bytes(synth)["train.json"]


def test_synth_is_valid_coco(synth: Path) -> None:
    manifest = json.loads((synth / "manifest.json").read_text())
    assert manifest["counts"]["train"]["images"] == 8 and manifest["counts"]["val"]["images"] == 2
    ids = set()
    for split in ("train", "val"):
        coco = load_coco(synth / f"{split}.json")
        assert len(coco.cats) == len(CLASSES)
        assert coco.getAnnIds()  # has objects
        for ann in coco.loadAnns(coco.getAnnIds()):
            x, y, w, h = ann["bbox"]
            assert w >= 2 and h >= 2 and x >= 0 and y >= 0 and x + w <= 64 and y + h <= 64
        for img in coco.loadImgs(coco.getImgIds()):
            assert (synth / "images" / img["file_name"]).is_file()
        ids |= set(coco.getImgIds())
    assert len(ids) == 10  # splits are disjoint


def test_synth_varies_scale_and_classes(tmp_path: Path) -> None:
    write_synthetic(tmp_path, SynthConfig(images=40, size=64, seed=0))
    anns = json.loads((tmp_path / "train.json").read_text())["annotations"]
    sides = [max(a["bbox"][2], a["bbox"][3]) for a in anns]
    assert min(sides) < 10 and max(sides) > 40
    assert {a["category_id"] for a in anns} == set(range(1, len(CLASSES) + 1))


def test_cli_data_synth_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["data", "synth", "-o", str(tmp_path / "s"), "--images", "4", "--size", "32"]) == 0
    assert (tmp_path / "s" / "val.json").is_file()
    assert cli(["data", "synth", "-o", str(tmp_path / "t"), "--images", "1"]) == 2
    assert "error" in capsys.readouterr().err
    assert cli(["data", "voc2coco", str(tmp_path / "missing"), "-o", str(tmp_path / "x.json")]) == 2


def test_cli_data_synth_quiet(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a terminal: the bar would show
    capsys.readouterr()
    assert cli(["data", "synth", "-o", str(tmp_path / "loud"), "--images", "3", "--size", "32"]) == 0
    loud = capsys.readouterr()
    assert "wrote" in loud.out and "synth" in loud.err
    for flag in ("-q", "--quiet"):
        assert cli(["data", "synth", "-o", str(tmp_path / flag), "--images", "3", "--size", "32", flag]) == 0
        assert capsys.readouterr() == ("", "")
        assert (tmp_path / flag / "manifest.json").is_file()


def _voc_set(root: Path) -> list[tuple[str, list[tuple[str, list[float], bool]]]]:
    items = [
        ("a.jpg", [("dog", [0.0, 4.0, 10.0, 20.0], False), ("person", [5.0, 5.0, 3.0, 7.0], True)]),
        ("b.jpg", [("car", [11.0, 12.0, 30.0, 40.0], False)]),
        ("c.jpg", []),
    ]
    for name, objs in items:
        write_voc_xml(root / "Annotations" / (Path(name).stem + ".xml"), name, 64, 48, objs)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\nc\n")
    return items


def test_voc_round_trip(tmp_path: Path) -> None:
    items = _voc_set(tmp_path)
    coco = voc_to_coco(tmp_path, include_difficult=True)
    names = [c["name"] for c in coco["categories"]]
    assert len(names) == 20  # standard VOC class list
    by_img = {im["id"]: im["file_name"] for im in coco["images"]}
    got = {}
    for a in coco["annotations"]:
        got.setdefault(by_img[a["image_id"]], []).append(
            (names[a["category_id"] - 1], a["bbox"], bool(a["iscrowd"])))
    assert got == {name: objs for name, objs in items if objs}
    assert [im["width"] for im in coco["images"]] == [64, 64, 64]
    # and back: COCO -> XML -> COCO is the identity
    for im in coco["images"]:
        objs = [(o[0], o[1], o[2]) for o in got.get(im["file_name"], [])]
        write_voc_xml(tmp_path / "again" / "Annotations" / f"{im['id']}.xml", im["file_name"], 64, 48, objs)
    again = voc_to_coco(tmp_path / "again", include_difficult=True)
    assert again["annotations"] == coco["annotations"]


def test_voc_conventions(tmp_path: Path) -> None:
    _voc_set(tmp_path)
    no_diff = voc_to_coco(tmp_path)
    assert len(no_diff["annotations"]) == 2  # the difficult person is dropped
    split = voc_to_coco(tmp_path, split="train")
    assert [im["file_name"] for im in split["images"]] == ["a.jpg", "c.jpg"]
    # 1-based inclusive VOC corners: xmin=1..xmax=10 is 10 pixels starting at x=0
    xml = tmp_path / "h.xml"
    xml.write_text("<annotation><filename>h.jpg</filename><size><width>20</width><height>30</height>"
                   "<depth>3</depth></size><object><name>cat</name><difficult>0</difficult><bndbox>"
                   "<xmin>1</xmin><ymin>2</ymin><xmax>10</xmax><ymax>20</ymax></bndbox></object>"
                   "</annotation>")
    rec = parse_voc_xml(xml)
    assert rec["objects"][0]["bbox_xyxy"] == [1, 2, 10, 20]
    (tmp_path / "h" / "Annotations").mkdir(parents=True)
    xml.rename(tmp_path / "h" / "Annotations" / "h.xml")
    assert voc_to_coco(tmp_path / "h")["annotations"][0]["bbox"] == [0, 1, 10, 19]
    with pytest.raises(NasfcosError):
        voc_to_coco(tmp_path / "h", classes=["dog"])


def test_dataset_maps_category_ids_and_resizes(tmp_path: Path, synth: Path) -> None:
    coco = json.loads((synth / "train.json").read_text())
    for c in coco["categories"]:
        c["id"] *= 10
    for a in coco["annotations"]:
        a["category_id"] *= 10
    (tmp_path / "train.json").write_text(json.dumps(coco))
    ds = CocoDetection(tmp_path / "train.json", synth / "images", TransformConfig(96, 200))
    assert ds.cat_ids == [10, 20, 30, 40, 50] and ds.num_classes == 5
    img, t = ds[0]
    assert img.shape == (3, 96, 96) and img.dtype == torch.float32 and 0 <= img.min() <= img.max() <= 1
    raw = [a for a in coco["annotations"] if a["image_id"] == ds.ids[0]]
    want = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                         for a in raw], dtype=torch.float32) * 1.5
    assert torch.allclose(t["boxes"], want)
    assert t["labels"].tolist() == [a["category_id"] // 10 - 1 for a in raw]
    assert t["scale"] == 1.5 and t["size"] == (96, 96) and t["orig_size"] == (64, 64)


def test_flip_and_crop(synth: Path) -> None:
    ann, images = resolve_split(synth, "train")
    plain = CocoDetection(ann, images, TransformConfig(64, 64), train=True)
    flip = CocoDetection(ann, images, TransformConfig(64, 64, hflip=1.0), train=True)
    (a, ta), (b, tb) = plain[1], flip[1]
    assert torch.equal(b, a.flip(-1))
    assert torch.allclose(tb["boxes"][:, [2, 0]], 64 - ta["boxes"][:, [0, 2]])
    crop = CocoDetection(ann, images, TransformConfig(64, 64, crop=(40, 48)), train=True, seed=1)
    for i in range(len(crop)):
        img, t = crop[i]
        assert img.shape == (3, 40, 48)
        bx = t["boxes"]
        assert ((bx[:, 0] >= 0) & (bx[:, 2] <= 48) & (bx[:, 1] >= 0) & (bx[:, 3] <= 40)).all()
        assert ((bx[:, 2] - bx[:, 0] >= 2) & (bx[:, 3] - bx[:, 1] >= 2)).all()
        assert len(t["labels"]) == len(bx)
    # deterministic per (seed, epoch, index); a new epoch draws a new crop
    epoch0 = [crop[i][0] for i in range(len(crop))]
    assert all(torch.equal(x, crop[i][0]) for i, x in enumerate(epoch0))
    crop.set_epoch(1)
    assert any(not torch.equal(x, crop[i][0]) for i, x in enumerate(epoch0))


def test_collate_pads_to_multiple_of_32() -> None:
    batch = [(torch.ones(3, 40, 50), {"i": 0}), (torch.ones(3, 33, 20), {"i": 1})]
    images, targets = collate(batch)
    assert images.shape == (2, 3, 64, 64)
    assert images[1, :, :33, :20].eq(1).all() and images[1, :, 33:].eq(0).all()
    assert [t["i"] for t in targets] == [0, 1]
    assert pad_batch([torch.ones(3, 10, 10)], size=(32, 48)).shape == (1, 3, 32, 48)
    with pytest.raises(NasfcosError):
        pad_batch([torch.ones(3, 40, 10)], size=(32, 32))
    assert np.array_equal(pad_batch([torch.zeros(3, 64, 64)]).shape, (1, 3, 64, 64))
