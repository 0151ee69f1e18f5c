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
    _edit(art, model=str(_evil(tmp_path / "evil.py", marker)))  # absolute path, old hash
    assert main(["check", str(art)]) == 2
    err = capsys.readouterr().err.strip()
    assert "sha256" in err and "\n" not in err
    assert not marker.exists()
    _edit(art, model="evil.py", model_sha256=None)  # no hash recorded: refused too
    shutil.copy(tmp_path / "evil.py", art.parent / "evil.py")
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
    from nasfcos.runtime.export import manifest_file, rebase_source

    src = {"model": "model.py", "weights": "../w/final.pt", "seed": 0, "kind": "decoder"}
    out = rebase_source(src, tmp_path / "a", tmp_path / "b" / "c")
    assert out["model"] == "../../a/model.py" and out["weights"] == "../../w/final.pt"
    assert manifest_file(tmp_path / "b" / "c", out["model"]).resolve() == (tmp_path / "a" / "model.py")
    assert out["seed"] == 0 and src["model"] == "model.py"
