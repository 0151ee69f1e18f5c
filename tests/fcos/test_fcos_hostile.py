"""Bad input to data / train / eval / predict: one-line errors before work starts, never a
traceback, a crash, a silent wrong result or lost data (issue 16; one test per class)."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from nasfcos.cli.main import main as cli
from nasfcos.errors import NasfcosError
from nasfcos.fcos.data import CocoDetection, TransformConfig, resolve_split
from nasfcos.fcos.train import (
    _one_line_errors,
    load_checkpoint,
    read_metrics,
    save_checkpoint,
)
from nasfcos.fcos.voc import parse_voc_xml


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert lines, err
    assert "Traceback" not in err
    return lines[-1]


def _train_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", str(model), "--data", str(data), "--out", str(out), "--iters", "2", "--batch", "2",
            "--min-size", "64", "--max-size", "64", "--workers", "0", "--no-progress", "--no-eval",
            "--log-every", "1", *extra]


# ------------------------------------------------------------------------------- data


def test_synth_refuses_to_overwrite_and_force_leaves_no_stale_images(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "set"
    assert cli(["data", "synth", "-o", str(out), "--images", "6", "--size", "32"]) == 0
    before = (out / "train.json").read_bytes()
    assert cli(["data", "synth", "-o", str(out), "--images", "4", "--size", "32", "--seed", "1"]) == 2
    assert "--force" in _err(capsys)
    assert (out / "train.json").read_bytes() == before  # nothing lost
    assert cli(["data", "synth", "-o", str(out), "--images", "4", "--size", "32", "--force"]) == 0
    assert len(list((out / "images").glob("*.png"))) == 4  # images 4 and 5 of the old set are gone
    assert cli(["data", "synth", "-o", str(tmp_path / "e"), "--preset", "easy", "--images", "3",
                "--size", "32", "--min-scale", "nan"]) == 2
    assert cli(["data", "synth", "-o", str(tmp_path / "e"), "--images", "3", "--min-scale", "0.5",
                "--max-scale", "0.2"]) == 2


def _coco(tmp_path: Path, synth64: Path, edit) -> Path:
    doc = json.loads((synth64 / "val.json").read_text())
    edit(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d["annotations"][0].update(category_id=99), "category_id 99 is not in categories"),
    (lambda d: d["annotations"][0].update(bbox="1,2,3,4"), "bbox"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2]), "bbox"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, float("nan"), 4]), "bbox"),
    (lambda d: d.update(images=[], annotations=[]), "no images"),
])
def test_bad_coco_annotations_are_one_line_errors(tmp_path: Path, synth64: Path, edit, message: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    ann = _coco(tmp_path, synth64, edit)
    with pytest.raises(NasfcosError, match=message):
        CocoDetection(ann, synth64 / "images")
    assert cli(["eval", "m.onnx", "--ann", str(ann), "--images", str(synth64 / "images")]) == 2
    capsys.readouterr()


@pytest.mark.parametrize(("what", "edit"), [
    ("annotation", lambda d: d["annotations"].append(dict(d["annotations"][0], bbox=[0, 0, 5, 5]))),
    ("image", lambda d: d["images"].append(dict(d["images"][0]))),
    ("category", lambda d: d["categories"].append(dict(d["categories"][0], name="dup"))),
])
def test_duplicate_coco_ids_are_refused(what: str, edit: Any, tmp_path: Path, synth64: Path) -> None:
    """pycocotools keeps one of two annotations with one id: a perfect detector scored AP 0.03."""
    with pytest.raises(NasfcosError, match=f"1 {what}s share an id"):
        CocoDetection(_coco(tmp_path, synth64, edit), synth64 / "images")


def test_eval_on_a_set_without_a_usable_box_is_refused(tiny_model: Path, synth64: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    def none_usable(d: dict[str, Any]) -> None:
        for a in d["annotations"]:
            a["bbox"] = [1, 1, 0, 3]

    ann = _coco(tmp_path, synth64, none_usable)
    with pytest.warns(UserWarning):
        rc = cli(["eval", str(tiny_model), "--ann", str(ann), "--images", str(synth64 / "images"),
                  "--min-size", "64", "--max-size", "64", "-q"])
    assert rc == 2 and "no usable box to evaluate against" in _err(capsys)


def test_degenerate_and_outside_boxes_are_reported(tmp_path: Path, synth64: Path) -> None:
    def edit(d):
        d["annotations"][0]["bbox"] = [10, 10, -5, 8]  # negative width
        d["annotations"][1]["bbox"] = [50, 50, 40, 40]  # reaches outside the 64 px image

    ann = _coco(tmp_path, synth64, edit)
    with pytest.warns(UserWarning, match="1 boxes with zero or negative .* 1 boxes reaching outside"):
        ds = CocoDetection(ann, synth64 / "images", TransformConfig(64, 64))
    boxes = torch.cat([ds[i][1]["boxes"] for i in range(len(ds))])
    assert float(boxes.max()) <= 64  # clipped, not dropped

    def none_usable(d):
        for a in d["annotations"]:
            a["bbox"] = [1, 1, 0, 3]

    with pytest.raises(NasfcosError, match="no usable box"), pytest.warns(UserWarning):
        CocoDetection(_coco(tmp_path, synth64, none_usable), synth64 / "images", train=True)


def test_voc_non_numeric_coordinate(tmp_path: Path) -> None:
    xml = tmp_path / "a.xml"
    xml.write_text("<annotation><filename>a.jpg</filename><size><width>20</width><height>30</height>"
                   "</size><object><name>cat</name><bndbox><xmin>abc</xmin><ymin>2</ymin><xmax>10</xmax>"
                   "<ymax>20</ymax></bndbox></object></annotation>")
    with pytest.raises(NasfcosError, match=r"<xmin> is not a number"):
        parse_voc_xml(xml)


def test_missing_images_found_before_training_and_in_workers(tmp_path: Path, synth64: Path) -> None:
    data = tmp_path / "d"
    shutil.copytree(synth64, data)
    first = sorted((data / "images").iterdir())[0]
    first.unlink()
    with pytest.raises(NasfcosError, match=r"1 of \d+ images are missing"):
        CocoDetection(*resolve_split(data, "train"))

    # an image that disappears after the check fails inside a worker: one line, no traceback
    ds = CocoDetection(*resolve_split(synth64, "val"))
    ds.image_dir = tmp_path / "gone"
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=1, collate_fn=lambda b: b)
    with pytest.raises(NasfcosError) as info:
        list(_one_line_errors(loader))
    assert "\n" not in str(info.value) and "cannot read image" in str(info.value)


def test_standard_coco_layout(tmp_path: Path, synth64: Path) -> None:
    (tmp_path / "annotations").mkdir()
    shutil.copy(synth64 / "val.json", tmp_path / "annotations" / "instances_val2017.json")
    shutil.copytree(synth64 / "images", tmp_path / "val2017")
    ann, images = resolve_split(tmp_path, "val")
    assert ann.name == "instances_val2017.json" and images == tmp_path / "val2017"


# ------------------------------------------------------------------------------- train


@pytest.mark.parametrize("flags", [
    ["--clip-grad", "-1"], ["--clip-grad", "nan"], ["--min-size", "0"], ["--batch", "0"],
    ["--batch", "-3"], ["--lr", "nan"], ["--lr", "-1"], ["--lr", "0"], ["--workers", "-1"],
    ["--log-every", "0"], ["--center-sampling", "-1"], ["--iters", "0"],
])
def test_train_numeric_flags(tiny_model: Path, synth64: Path, tmp_path: Path, flags: list[str],
                             capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(_train_args(tiny_model, synth64, tmp_path / "r", *flags)) == 2
    assert flags[0] in _err(capsys)
    assert not (tmp_path / "r").exists()  # refused before any work


def test_train_refuses_a_class_count_the_model_was_not_compiled_for(
        tmp_path: Path, synth64: Path, compile_model, capsys: pytest.CaptureFixture[str]) -> None:
    model = compile_model(tmp_path / "m3.py", num_classes=3)
    assert cli(_train_args(model, synth64, tmp_path / "r")) == 2
    msg = _err(capsys)
    assert "3 classes" in msg and "5" in msg


def test_checkpoint_checksum_and_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}, "iter": 1})
    assert load_checkpoint(path)["iter"] == 1
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(NasfcosError, match="checksum mismatch"):
        load_checkpoint(path)
    path.write_bytes(bytes(data[: len(data) // 3]))
    with pytest.raises(NasfcosError, match="checksum mismatch"):
        load_checkpoint(path)

    # a pickle that would run code: even with a matching checksum record it is refused
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"model": {}, "x": Evil()}))
    from nasfcos.io import atomic_write_json, sha256_file

    atomic_write_json(tmp_path / "evil.pt.sha256", {"sha256": [sha256_file(evil)]})
    with pytest.raises(NasfcosError, match="not a readable checkpoint"):
        load_checkpoint(evil)
    assert not (tmp_path / "pwned").exists()


def test_torn_metrics_line_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iter": 1, "loss": 2.0}\n{"iter": 2, "loss": 1.5}\n{"iter": 3, "lo')
    assert [r["iter"] for r in read_metrics(path)] == [1, 2]
    path.write_text('{"iter": 1}\nnot json\n{"iter": 3}\n')
    with pytest.raises(NasfcosError, match="line 2"):
        read_metrics(path)


def test_resume_reuses_config_and_verifies_the_checkpoint(
        tiny_model: Path, synth64: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "r"
    assert cli(_train_args(tiny_model, synth64, run, "--checkpoint-every", "1")) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["fcos"]["box_loss"] == "iou" and cfg["fcos"]["center_sampling_radius"] == 0.0
    assert cfg["fcos"]["reg_units"] in ("pixels", "stride")
    # --resume needs no other flag: config.json has them (2 of 2 done -> "already at")
    assert cli(["train", str(tiny_model), "--out", str(run), "--resume", "--no-progress"]) == 2
    assert "already at iteration 2 of 2" in _err(capsys)
    # a flag that changes the run is an error unless --override
    args = ["train", str(tiny_model), "--out", str(run), "--resume", "--no-progress", "--iters", "3"]
    assert cli([*args, "--lr", "0.5"]) == 2
    assert "--override" in _err(capsys)
    assert cli([*args, "--override"]) == 0
    assert json.loads((run / "summary.json").read_text())["start_iter"] == 2
    # a bit-flipped checkpoint is refused
    data = bytearray((run / "last.pt").read_bytes())
    data[-100] ^= 0x10
    (run / "last.pt").write_bytes(bytes(data))
    assert cli([*args[:-1], "4", "--override"]) == 2
    assert "checksum mismatch" in _err(capsys)


def test_divergence_stops_before_deform_conv_sees_nan(
        tiny_model: Path, synth64: Path, tmp_path: Path) -> None:
    # lr 1e6 blows the weights up after one step; deform_conv2d would segfault on NaN offsets.
    # (The CLI refuses --lr above 10; the library's guard is what keeps other callers safe.)
    from nasfcos.fcos.train import TrainConfig, train

    cfg = TrainConfig(model=str(tiny_model), data=str(synth64), out=str(tmp_path / "r"), iters=3,
                      batch=2, lr=1e6, clip_grad=None, optimizer="sgd", min_size=64, max_size=64,
                      workers=0, eval=False, log_every=1, checkpoint_every=3)
    with pytest.raises(NasfcosError, match="non-finite|loss became"):
        train(cfg, progress=False)
    assert not (tmp_path / "r").exists()  # failed before its first checkpoint: nothing left
    kept = tmp_path / "kept"  # a folder that existed is put back as it was
    kept.mkdir()
    (kept / "config.json").write_text("{}")
    with pytest.raises(NasfcosError, match="non-finite|loss became"):
        train(dataclasses.replace(cfg, out=str(kept)), progress=False)
    assert {p.name: p.read_text() for p in kept.iterdir()} == {"config.json": "{}"}


def test_ann_without_val_split_warns(tiny_model: Path, synth64: Path, tmp_path: Path) -> None:
    def args(out: str, *extra: str) -> list[str]:
        return ["train", str(tiny_model), "--ann", str(synth64 / "train.json"), "--images",
                str(synth64 / "images"), "--out", str(tmp_path / out), "--iters", "1", "--batch", "2",
                "--min-size", "64", "--max-size", "64", "--workers", "0", "--no-progress", *extra]

    with pytest.warns(UserWarning, match="final evaluation is skipped"):
        assert cli(args("r")) == 0
    assert cli(args("v", "--val-ann", str(synth64 / "val.json"))) == 0
    assert (tmp_path / "v" / "eval.json").is_file()


# ------------------------------------------------------------------------------- eval, predict


@pytest.mark.parametrize("flags", [["--batch", "-1"], ["--max-images", "-2"], ["--min-size", "0"]])
def test_eval_numeric_flags(tiny_model: Path, synth64: Path, flags: list[str],
                            capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["eval", str(tiny_model), "--data", str(synth64), *flags]) == 2
    assert flags[0] in _err(capsys)


def test_nan_weights_refused_at_load(tiny_model: Path, synth64: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    from nasfcos.modelfile import load_model_file

    state = load_model_file(tiny_model).build().state_dict()
    key = next(k for k, v in state.items() if v.is_floating_point() and "offset" in k) if any(
        "offset" in k for k in state) else next(iter(state))
    state[key] = torch.full_like(state[key], float("nan"))
    torch.save({"model": state, "num_classes": 5}, tmp_path / "nan.pt")
    assert cli(["eval", str(tiny_model), "--weights", str(tmp_path / "nan.pt"), "--data", str(synth64),
                "--min-size", "64", "--max-size", "64"]) == 2
    assert "non-finite" in _err(capsys)


def test_eval_reads_the_run_and_predict_writes_boxes(
        tiny_model: Path, synth64: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "r"
    assert cli(_train_args(tiny_model, synth64, run)) == 0
    capsys.readouterr()
    # no --min-size: the training size (64) is read from final.pt
    assert cli(["eval", str(tiny_model), "--weights", str(run / "final.pt"), "--data", str(synth64),
                "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["images"] == 2 and (metrics["min_size"], metrics["max_size"], metrics["batch"]) == (64, 64, 8)
    # predict: boxes in original pixels as JSON, and drawn
    img = sorted((synth64 / "images").iterdir())[0]
    assert cli(["predict", str(tiny_model), str(img), "--weights", str(run / "final.pt"), "-o",
                str(tmp_path / "p"), "--score-thresh", "0"]) == 0
    doc = json.loads((tmp_path / "p" / "predictions.json").read_text())
    (rec,) = doc["images"]
    assert rec["width"] == 64 and (tmp_path / "p" / f"{img.stem}.png").is_file()
    # after 2 iterations few or no scores pass the release's 0.05 candidate threshold
    assert all(0 <= d["box"][0] <= d["box"][2] <= 64 for d in rec["detections"])
    assert {d["class_name"] for d in rec["detections"]} <= {"rectangle", "ellipse", "triangle", "cross", "ring"}
    assert cli(["predict", str(tiny_model), str(tmp_path / "none.png"), "-o", str(tmp_path / "q")]) == 2
    assert cli(["predict", str(tiny_model), str(img), "-o", str(tmp_path / "q"), "--score-thresh", "2"]) == 2


# ------------------------------------------------------------------------------- weights


def test_backbone_weights_torchvision_state_dict(compile_model, synth64: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import torchvision

    model = compile_model(tmp_path / "r18.py", backbone="resnet18")
    sd = torchvision.models.resnet18().state_dict()
    torch.save(sd, tmp_path / "r18.pth")
    run = tmp_path / "r"
    assert cli(_train_args(model, synth64, run, "--iters", "1", "--backbone-weights",
                           str(tmp_path / "r18.pth"), "--freeze-backbone")) == 0
    final = torch.load(run / "final.pt", weights_only=True)["model"]
    assert torch.equal(final["backbone.body.conv1.weight"], sd["conv1.weight"])  # loaded, frozen
    # a state_dict of another network is a one-line error naming the file
    torch.save({"foo.weight": torch.ones(2)}, tmp_path / "other.pth")
    assert cli(_train_args(model, synth64, tmp_path / "s", "--backbone-weights",
                           str(tmp_path / "other.pth"))) == 2
    assert "other.pth" in _err(capsys)


def test_shipped_tiny_trunk_loads_through_build(tiny_model: Path) -> None:
    from nasfcos.fcos.train import resolve_backbone_weights
    from nasfcos.fcos.weights import provenance, shipped_weights
    from nasfcos.modelfile import load_model_file

    path = shipped_weights("tiny_synth")
    assert path is not None and path.stat().st_size < 4_000_000
    record = provenance("tiny_synth")
    assert record["data_seed"] == 1 and any("nasfcos train" in c for c in record["commands"])
    assert resolve_backbone_weights("tiny_synth") == path
    model = load_model_file(tiny_model).build(backbone_weights=str(path))
    state = torch.load(path, weights_only=True)
    for k, v in state.items():
        assert torch.equal(model.backbone.body.state_dict()[k], v), k
    with pytest.raises(NasfcosError, match="no such backbone weights"):
        resolve_backbone_weights("tiny_synth_missing")
