"""Reviewer findings F2-F7 and doctor: hostile or odd input gets a one-line error (or a
note), never a traceback or a huge allocation."""

from __future__ import annotations

from pathlib import Path

import pytest

from nasfcos.errors import NasfcosError


def _raw(**export: object) -> dict:
    return {"format": "nasfcos-export/1", "source": {"model": "model.py"},
            "artifact": {"file": "m.onnx", "type": "onnx", "sha256": "0" * 64, "bytes": 1},
            "export": export}


@pytest.mark.parametrize("ranges,word", [
    ({"images": {"h": [0, 1]}}, "axis"),
    ({"images": {"8": [0, 1]}}, "axis"),
    ({"images": {"-1": [0, 1]}}, "axis"),
    ({"images": {"2": [64, 32]}}, "low 64 > high 32"),
])
def test_dynamic_range_axes_are_checked(tmp_path: Path, ranges: dict, word: str) -> None:
    """F3: an axis key must be a decimal axis 0..7 and low <= high (was a ValueError in
    the runner's range check)."""
    from nasfcos.runtime.manifest import Manifest

    with pytest.raises(NasfcosError, match="field export.dynamic_ranges ") as err:
        Manifest.from_json(_raw(dynamic_ranges=ranges), tmp_path / "m.onnx.json")
    assert word in str(err.value) and "\n" not in str(err.value)
    ok = Manifest.from_json(_raw(dynamic_ranges={"images": {"2": [32, None]}}),
                            tmp_path / "m.onnx.json")
    assert ok.dynamic_ranges == {"images": {"2": [32, None]}}


def _identity_images(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["out"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_images_input_must_be_rank_4(tmp_path: Path, backend: str) -> None:
    """F4: an 'images' input of rank 2 was an IndexError in the runner's constructor."""
    path = _identity_images(tmp_path / "id.onnx")
    if backend == "openvino":
        pytest.importorskip("openvino")
        from nasfcos.runtime.openvino_rt import OvRunner as Cls
    else:
        from nasfcos.runtime.runners import OrtRunner as Cls
    with pytest.raises(NasfcosError, match=r"input images has shape \[1, 3\].*rank 4") as err:
        Cls(path)
    assert "\n" not in str(err.value)


def test_refused_model_file_names_the_fix_not_a_flag(tmp_path: Path) -> None:
    """F6: the refusal no longer starts with '--against:' (never passed); it names the
    manifest and the refused file and ends with the exact fix, the resolved path (which
    is never read)."""
    from types import SimpleNamespace

    from nasfcos.runtime.check import _reference
    from nasfcos.runtime.manifest import Manifest

    raw = _raw()
    raw["source"] = {"model": "../evil.py", "model_sha256": "0" * 64}
    mpath = tmp_path / "a" / "m.onnx.json"
    man = Manifest.from_json(raw, mpath)
    art = SimpleNamespace(manifest=man, path=tmp_path / "a" / "m.onnx")
    with pytest.raises(NasfcosError) as err:
        _reference(art, None, None, 1)  # type: ignore[arg-type]
    msg = str(err.value)
    assert "\n" not in msg and not msg.startswith("--against")
    assert str(mpath) in msg and "'../evil.py'" in msg
    assert msg.endswith(f"pass --against {(tmp_path / 'evil.py').resolve()}")


def _copied(onnx_path: Path, where: Path, **export: object) -> Path:
    import json
    import shutil

    from nasfcos.runtime.export import manifest_path_for

    where.mkdir(parents=True, exist_ok=True)
    dst = where / onnx_path.name
    shutil.copy(onnx_path, dst)
    shutil.copy(onnx_path.parent / "model.py", where / "model.py")
    man = json.loads(manifest_path_for(onnx_path).read_text())
    man["export"].update(export)
    manifest_path_for(dst).write_text(json.dumps(man))
    return dst


def test_input_budget_is_checked_before_allocation() -> None:
    """F2(c): 4096 x 3 x 8192 x 8192 (3 TiB) is refused in one line, nothing allocated."""
    from nasfcos.limits import MAX_INPUT_ELEMENTS
    from nasfcos.runtime.models import check_input_budget, make_inputs

    with pytest.raises(NasfcosError, match="MAX_INPUT_ELEMENTS") as err:
        make_inputs("detector", (8192, 8192), 4096)
    assert "\n" not in str(err.value)
    check_input_budget("detector", [(8192, 8192)], 1)  # 2e8 values: within the bound
    assert 3 * 8192 * 8192 <= MAX_INPUT_ELEMENTS < 2 * 3 * 8192 * 8192


def test_check_refuses_manifest_or_flags_at_odds_with_a_static_graph(
        tiny_detector_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """F2(a, b): a manifest whose batch/size differ from the static graph is refused as
    changed; flags asking a static graph for another batch/size are one-line errors."""
    from nasfcos.cli.main import main

    art = _copied(tiny_detector_onnx, tmp_path / "a", batch=4096, size=[8192, 8192])
    assert main(["check", str(art)]) == 2
    err = capsys.readouterr().err.strip()
    assert "export.batch 4096" in err and "export.size 8192x8192" in err and "\n" not in err
    art = _copied(tiny_detector_onnx, tmp_path / "b")
    for flags, word in ((["--batch", "4096", "--sizes", "8192x8192"], "batch 1, not 4096"),
                        (["--sizes", "8192x8192"], "160x160, not 8192x8192")):
        assert main(["check", str(art), *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert word in err and "\n" not in err


@pytest.mark.parametrize("content,word", [
    ("fifo", "not a regular file"),
    ("big", "too large"),
    ("[" * 100000 + "]" * 100000, "cannot read"),
    ('{"engines": {"onnxruntime": {"x_ort_fp32": 1, "dAP_points": 0.1}}}', "go together"),
    ('{"engines": {"onnxruntime": {"x_ort_fp32": 1, "dAP_points": NaN, "agree50": 1}}}',
     "finite"),
    ('{"engines": {"onnxruntime": {"x_ort_fp32": "1"}}}', "x_ort_fp32"),
    ('{"engines": {"openvino": {"x_ort_fp32": 1, "x_ort_fp32_95ci": [1]}}}', "95ci"),
])
def test_cpu_engine_table_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     content: str, word: str) -> None:
    """F7: NASFCOS_CPU_ENGINES names a regular JSON file of bounded size with well-formed
    rows; anything else is a one-line error naming the file (a FIFO never hangs)."""
    import os

    from nasfcos.runtime.cpu_default import MAX_TABLE_BYTES, load_table

    path = tmp_path / "engines.json"
    if content == "fifo":
        os.mkfifo(path)
    else:
        path.write_text(" " * (MAX_TABLE_BYTES + 1) if content == "big" else content)
    monkeypatch.setenv("NASFCOS_CPU_ENGINES", str(path))
    with pytest.raises(NasfcosError, match=word) as err:
        load_table()
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_doctor_skips_odd_nvidia_smi_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Doctor: '[N/A]' fields and non-UTF-8 bytes from nvidia-smi were ValueError /
    UnicodeDecodeError tracebacks; such rows are skipped with a note line."""
    from nasfcos.runtime import doctor as D

    fake = tmp_path / "nvidia-smi"
    fake.write_bytes(b"#!/bin/sh\nprintf '[N/A], H100, 9.0, 81920\\n0, H\\377\\376, 9.0, 81920\\n"
                     b"1, H100, 9.0, 81920\\n\\200\\201\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{__import__('os').environ['PATH']}")
    gpus, notes = D._gpus_from_nvidia_smi()
    assert [(g.index, g.name, g.capability) for g in gpus] == [(0, "H\ufffd\ufffd", (9, 0)),
                                                          (1, "H100", (9, 0))]
    assert len(notes) == 2 and all("nvidia-smi row skipped" in n for n in notes)
    lines = [x.line() for x in D.diagnose(D.Facts(torch="2", notes=notes))]
    assert sum(ln.startswith("note  nvidia-smi row skipped") for ln in lines) == 2


def test_onnx_engine_on_a_model_py_exports_its_trained_weights(
        tiny_detector_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``eval model.py --weights W --backend onnxruntime`` stopped with 'unknown option(s)
    kind, weights'; the model's own options now go to the export the engine runs (the export
    itself is stood in: what reaches it is the point; ``eval`` then gives the torch backend's
    AP on the trained yardstick)."""
    from nasfcos.runtime import export, runners

    class Exported(Exception):
        pass

    seen: dict[str, object] = {}

    def export_onnx(path: Path, out: Path, opts: export.ExportOptions) -> None:
        seen.update(kind=opts.kind, weights=opts.weights, seed=opts.seed)
        raise Exported

    monkeypatch.setattr(export, "export_onnx", export_onnx)
    weights = tmp_path / "w.pt"
    import importlib.util

    for backend in ("onnxruntime", "openvino")[:2 if importlib.util.find_spec("openvino") else 1]:
        seen.clear()
        with pytest.raises(Exported):
            runners.make_runner(tiny_detector_file, backend, kind="detector", weights=weights, seed=3)
        assert seen == {"kind": "detector", "weights": weights, "seed": 3}


def test_onnx_engine_on_a_model_py_refuses_changed_classes_up_front(tiny_detector_file: Path) -> None:
    """``eval model.py --num-classes N --backend onnxruntime``: the export runs the model as
    compiled, so the override is refused in one line naming the way out (was 'unknown
    option(s) overrides')."""
    from nasfcos.runtime.runners import make_runner

    with pytest.raises(NasfcosError, match=r"changed widths or classes \(num_classes\) need the torch"):
        make_runner(tiny_detector_file, "onnxruntime", kind="detector",
                    overrides={"num_classes": 3})
