"""predict uses what eval knows (training size, class names from the checkpoint, the export
manifest or import.json), says why nothing passed the threshold, skips unreadable images,
never writes over its inputs, and gives every drawn image its own file (issues 25, 26)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from nasfcos.cli.main import main as cli
from nasfcos.io import sha256_file
from nasfcos.modelfile import load_model_file
from nasfcos.runtime.predict import model_meta

NAMES = ["rectangle", "ellipse", "triangle", "cross", "ring"]


@pytest.fixture(scope="module")
def trained(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint laid out like 'nasfcos train' writes it (64 px run, class names), with the
    class biases raised so that the random detector keeps detections."""
    state = load_model_file(tiny_model).build().state_dict()
    state["decoder.cls_logits.bias"] = torch.full_like(state["decoder.cls_logits.bias"], 4.0)
    path = tmp_path_factory.mktemp("run") / "final.pt"
    torch.save({"model": state, "num_classes": 5, "min_size": 64, "max_size": 64,
                "class_names": NAMES, "cat_ids": [1, 2, 3, 4, 5]}, path)
    return path


def _predict(*args: str) -> int:
    return cli(["predict", *map(str, args)])


def test_predict_uses_the_runs_size_and_names_for_py_and_onnx(
        tiny_model: Path, trained: Path, synth64: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    img = sorted((synth64 / "images").iterdir())[0]
    assert _predict(tiny_model, img, "--weights", trained, "-o", tmp_path / "p") == 0
    doc = json.loads((tmp_path / "p" / "predictions.json").read_text())
    assert (doc["min_size"], doc["max_size"]) == (64, 64)
    dets = doc["images"][0]["detections"]
    assert dets and {d["class_name"] for d in dets} <= set(NAMES)
    # the export carries them: its manifest's classes and the run it was exported with
    onnx = tmp_path / "m.onnx"
    assert cli(["export", str(tiny_model), "--weights", str(trained), "--size", "96x96",
                "-o", str(onnx), "-q"]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "m.onnx.json").read_text())["classes"]["names"] == NAMES
    meta = model_meta(onnx)
    assert (meta["min_size"], meta["max_size"], meta["class_names"]) == (64, 64, NAMES)
    assert _predict(onnx, img, "-o", tmp_path / "q", "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["class_names"] == NAMES
    assert {d["class_name"] for d in doc["images"][0]["detections"]} <= set(NAMES)


def test_nothing_above_threshold_says_top_score_and_bad_images_are_skipped(
        tiny_model: Path, trained: Path, synth64: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    imgs = tmp_path / "in"
    imgs.mkdir()
    shutil.copy(sorted((synth64 / "images").iterdir())[0], imgs / "good.png")
    (imgs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    assert _predict(tiny_model, imgs, "-o", tmp_path / "o", "--score-thresh", "0.99",
                    "--weights", trained) == 0
    out, err = capsys.readouterr()
    assert "good.png: 0 detections (top score 0." in out and "< score threshold 0.99" in out
    (warning,) = [ln for ln in err.splitlines() if "broken.png" in ln]
    assert warning.startswith("warning: skipped") and "Traceback" not in err
    doc = json.loads((tmp_path / "o" / "predictions.json").read_text())
    assert doc["skipped"] == [str(imgs / "broken.png")] and len(doc["images"]) == 1


def test_output_folder_never_holds_an_input(tiny_model: Path, synth64: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    imgs = tmp_path / "photos"
    imgs.mkdir()
    shutil.copy(sorted((synth64 / "images").iterdir())[0], imgs / "a.png")
    before = (imgs / "a.png").read_bytes()
    assert _predict(tiny_model, imgs, "-o", imgs) == 2
    assert "is the input" in capsys.readouterr().err
    assert _predict(tiny_model, imgs / "a.png", "-o", tmp_path) == 2
    assert "contains the input" in capsys.readouterr().err
    assert (imgs / "a.png").read_bytes() == before and sorted(imgs.iterdir()) == [imgs / "a.png"]


def test_drawn_names_never_collide(tiny_model: Path, synth64: Path, tmp_path: Path) -> None:
    from PIL import Image

    src = sorted((synth64 / "images").iterdir())[0]
    (tmp_path / "d1").mkdir()
    (tmp_path / "d2").mkdir()
    shutil.copy(src, tmp_path / "d1" / "x.png")
    shutil.copy(src, tmp_path / "d2" / "x.png")
    shutil.copy(src, tmp_path / "d1" / "a.png")
    Image.open(src).convert("RGB").save(tmp_path / "d1" / "a.jpg")
    assert _predict(tiny_model, tmp_path / "d1", tmp_path / "d2", "-o", tmp_path / "o",
                    "--min-size", "64", "--max-size", "64") == 0
    doc = json.loads((tmp_path / "o" / "predictions.json").read_text())
    drawn = [r["drawn"] for r in doc["images"]]
    assert len(drawn) == 4 and len(set(drawn)) == 4 and all(Path(d).is_file() for d in drawn)


def test_import_json_names_reach_the_export_manifest(tmp_path: Path) -> None:
    from nasfcos.runtime.export import weights_classes

    w = tmp_path / "weights.pt"
    torch.save({"a": torch.zeros(2)}, w)
    assert weights_classes(w) is None
    record = {"format": "nasfcos-import/1", "weights": {"file": "weights.pt", "sha256": sha256_file(w)},
              "labels": {"class_names": ["person", "bicycle"], "category_ids": [1, 2]}}
    (tmp_path / "import.json").write_text(json.dumps(record))
    assert weights_classes(w) == {"names": ["person", "bicycle"], "category_ids": [1, 2]}
    record["weights"]["sha256"] = "0" * 64  # a record of other weights is not believed
    (tmp_path / "import.json").write_text(json.dumps(record))
    assert weights_classes(w) is None
