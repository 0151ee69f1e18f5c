"""Manifests are data: ``check`` never runs a file a manifest names unless its sha256
matches, resolves names relative to the manifest, and refuses a manifest that no longer
matches its artifact or is malformed (issue 16, item 1)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest

from nasfcos.cli.main import main
from nasfcos.errors import NasfcosError
from nasfcos.runtime.check import check_artifact
from nasfcos.runtime.export import manifest_path_for


def _copy(onnx_path: Path, model: Path, where: Path) -> Path:
    """The artifact, its manifest (model named relative to it) and the model in ``where``."""
    where.mkdir(parents=True, exist_ok=True)
    dst = where / onnx_path.name
    shutil.copy(onnx_path, dst)
    shutil.copy(model, where / "model.py")
    man = json.loads(manifest_path_for(onnx_path).read_text())
    man["source"]["model"] = "model.py"
    manifest_path_for(dst).write_text(json.dumps(man))
    return dst


def _edit(path: Path, **source: object) -> None:
    mpath = manifest_path_for(path)
    man = json.loads(mpath.read_text())
    man["source"].update(source)
    mpath.write_text(json.dumps(man))


def _evil(path: Path, marker: Path) -> Path:
    path.write_text(f"open({str(marker)!r}, 'w').write('pwned')\nbuild = Decoder = None\n")
    return path


def test_a_tampered_manifest_never_runs_the_file_it_names(
        paper_decoder_onnx: Path, paper_decoder: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    art = _copy(paper_decoder_onnx, paper_decoder, tmp_path / "a")
    marker = tmp_path / "ran"
    _evil(art.parent / "evil.py", marker)
    _edit(art, model="evil.py")  # inside the folder, old hash
    assert main(["check", str(art)]) == 2
    err = capsys.readouterr().err.strip()
    assert "sha256" in err and "\n" not in err
    assert not marker.exists()
    _edit(art, model="evil.py", model_sha256=None)  # no hash recorded: refused too
    with pytest.raises(NasfcosError, match="model_sha256"):
        check_artifact(art)
    assert not marker.exists()


def test_names_are_relative_to_the_manifest_not_the_cwd(
        paper_decoder_onnx: Path, paper_decoder: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    art = _copy(paper_decoder_onnx, paper_decoder, tmp_path / "a")
    elsewhere = tmp_path / "b"
    elsewhere.mkdir()
    marker = tmp_path / "ran"
    _evil(elsewhere / "model.py", marker)
    monkeypatch.chdir(elsewhere)
    report = check_artifact(art, sizes=[(160, 160)])
    assert report.ok and Path(report.reference) == art.parent / "model.py"
    assert not marker.exists()


def test_an_artifact_that_no_longer_matches_its_manifest(
        paper_decoder_onnx: Path, paper_decoder: Path, tmp_path: Path) -> None:
    art = _copy(paper_decoder_onnx, paper_decoder, tmp_path / "a")
    model = onnx.load(str(art))
    model.doc_string = "changed"
    onnx.save(model, str(art))
    with pytest.raises(NasfcosError, match="does not match its manifest: sha256"):
        check_artifact(art)


@pytest.mark.parametrize("content", [
    b"\x89PNG\r\n\x1a\n\x00\xff\xfe",
    b'{"format": "nasfcos-export/1", "artifact": {"file": 3}}',
    b'{"format": "nasfcos-export/1", "artifact": [], "source": {}}',
    b'{"format": "nasfcos-export/1", "artifact": {"file": "m.onnx", "bytes": "9"}, "source": {}}',
    b'{"format": "nasfcos-export/1", "artifact": {}, "source": {"seed": true}}',
    b'{"format": "nasfcos-export/1", "artifact": {}, "source": {}, "export": {"size": [1]}}',
    b"[" * 100_000,
])
def test_malformed_manifests_are_one_line_errors(
        paper_decoder_onnx: Path, paper_decoder: Path, tmp_path: Path, content: bytes,
        capsys: pytest.CaptureFixture[str]) -> None:
    art = _copy(paper_decoder_onnx, paper_decoder, tmp_path / "a")
    manifest_path_for(art).write_bytes(content)
    assert main(["check", str(art)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nasfcos check: error:") and "\n" not in err


def test_classes_go_into_the_manifest_and_the_onnx_metadata(paper_decoder: Path,
                                                             tmp_path: Path) -> None:
    import torch

    from nasfcos.runtime.export import _classes, _set_metadata
    from nasfcos.runtime.models import load_model

    lm = load_model(paper_decoder)
    weights = tmp_path / "final.pt"
    torch.save({"model": lm.net.decoder.state_dict(), "cat_ids": [1, 7, 9],
                "class_names": ["cat", "dog", "bird"]}, weights)
    lm = load_model(paper_decoder, weights=weights)
    classes = _classes(lm)  # what export_onnx writes into the manifest's "classes"
    assert classes == {"names": ["cat", "dog", "bird"], "category_ids": [1, 7, 9]}
    proto = onnx.ModelProto()
    _set_metadata(proto, lm, classes)
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["nasfcos.class_names"]) == ["cat", "dog", "bird"]
    assert json.loads(props["nasfcos.category_ids"]) == [1, 7, 9]
    assert props["nasfcos.kind"] == "decoder" and props["nasfcos.num_classes"] == "3"
    assert _classes(load_model(paper_decoder)) is None  # random weights: no classes


def test_a_copied_source_section_is_rebased(tmp_path: Path) -> None:
    from nasfcos.runtime.manifest import Manifest

    raw = {"format": "nasfcos-export/1", "source": {"model": "model.py", "seed": 0,
                                                     "weights": "../w/final.pt", "kind": "decoder"},
           "artifact": {"file": "m.onnx", "type": "onnx", "sha256": "0" * 64, "bytes": 1}}
    man = Manifest.from_json(raw, tmp_path / "a" / "m.onnx.json")
    out = man.rebased_source(tmp_path / "b" / "c")
    assert out["model"] == "../../a/model.py" and out["weights"] == "../../w/final.pt"
    assert out["seed"] == 0 and raw["source"]["model"] == "model.py"


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink"])
def test_a_manifest_never_names_code_outside_its_folder(
        paper_decoder_onnx: Path, paper_decoder: Path, tmp_path: Path, how: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 25: a model file outside the manifest's folder is refused before it is read,
    even when its sha256 matches (a hash proves integrity, not that the user chose it)."""
    art = _copy(paper_decoder_onnx, paper_decoder, tmp_path / "a")
    marker = tmp_path / "ran"
    evil = _evil(tmp_path / "evil.py", marker)
    name = {"absolute": str(evil), "dotdot": "../evil.py", "symlink": "link.py"}[how]
    if how == "symlink":
        (art.parent / "link.py").symlink_to(evil)
    _edit(art, model=name, model_sha256=_sha(evil))
    assert main(["check", str(art)]) == 2
    err = capsys.readouterr().err.strip()
    assert "refusing the model file" in err and "\n" not in err
    assert not marker.exists()


@pytest.mark.parametrize("section,key,value,word", [
    ("export", "size", [1000000, 1000000], "export.size"),
    ("export", "batch", 1000000000, "export.batch"),
    ("export", "batch", -2, "export.batch"),
    ("export", "batch", "2", "export.batch"),
    ("widths", "in_channels", [1, 2, 3, "x"], "widths.in_channels"),
    ("source", "seed", -1, "source.seed"),
    ("source", "kind", "backbone", "source.kind"),
    ("artifact", "file", "../m.onnx", "artifact.file"),
    ("precision", "precision", "int4", "precision.precision"),
    ("classes", "names", [1, 2], "classes.names"),
])
def test_hostile_manifest_fields_are_refused_in_one_line(
        paper_decoder_onnx: Path, paper_decoder: Path, tmp_path: Path, section: str, key: str,
        value: object, word: str) -> None:
    """Types and bounds are checked when the manifest is read, before anything is built from
    it (a declared size of 1e6 or batch of 1e9 never reaches an allocation)."""
    from nasfcos.runtime.manifest import Manifest

    art = _copy(paper_decoder_onnx, paper_decoder, tmp_path / "a")
    mpath = manifest_path_for(art)
    man = json.loads(mpath.read_text())
    man[section] = {**(man.get(section) or {}), key: value}
    with pytest.raises(NasfcosError, match=f"field {word} ") as err:
        Manifest.from_json(man, mpath)
    assert "\n" not in str(err.value)


def test_deep_manifest_refused(tmp_path: Path) -> None:
    from nasfcos.runtime.manifest import Manifest

    deep: object = 1
    for _ in range(200):
        deep = [deep]
    raw = {"format": "nasfcos-export/1", "tools": deep}
    with pytest.raises(NasfcosError, match="nested deeper"):
        Manifest.from_json(raw, tmp_path / "m.onnx.json")
