"""Imported release checkpoints against the release's own outputs (``golden_release/``).

The checkpoints are synthetic: every entry is regenerated from its key by the golden data's
weight rule (``golden_tensor``), so the comparison tests the key map, the compiled layers,
preprocessing and post-processing, not trained weights.  Tolerances: float64 raw head outputs
1e-9 relative, P3..P7 to their float32 storage rounding, backbone channel means 1e-12,
detections and the post-processing stress case equal as sets; float32 raw outputs 1e-4.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from nasfcos.cli.main import main as cli_main
from nasfcos.compiler.release import (
    IGNORED_REASONS,
    RELEASE_MODELS,
    convert_release,
    release_key,
    release_target,
)
from nasfcos.compiler.release_sample import golden_tensor
from nasfcos.errors import NasfcosError
from nasfcos.modelfile import load_model_file

GOLDEN = Path(__file__).parent / "golden_release"
#: golden folder -> the config name given to the importer
CONFIGS = {"R_50_NAS_head": "R_50_NAS_head", "R_50_NAS_densebox": "R_50_NAS", "Mobile_NAS_head": "Mobile_NAS_head"}


@functools.cache
def _golden(folder: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, np.ndarray]]:
    keys = json.loads((GOLDEN / folder / "keys.json").read_text())
    config = json.loads((GOLDEN / folder / "config.json").read_text())
    with np.load(GOLDEN / folder / "io.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return keys, config, arrays


@functools.cache
def _weights(folder: str) -> dict[str, torch.Tensor]:
    keys, config, _ = _golden(folder)
    scale = config["weight_rule"]["scale4d"]
    return {e["key"]: _cached_tensor(e["model_key"], tuple(e["shape"]), e["dtype"], scale) for e in keys["entries"]}


@functools.cache
def _cached_tensor(model_key: str, shape: tuple[int, ...], dtype: str, scale: float) -> torch.Tensor:
    """golden_tensor, computed once for the entries two configs share (R-50 backbone, decoder)."""
    return golden_tensor(model_key, list(shape), dtype, scale)


def fake_checkpoint(folder: str) -> dict[str, Any]:
    """A checkpoint as the release's train_net.py saves it, weights from the golden rule
    (a fresh dict each call; the tensors are shared, never modify them in place)."""
    return {"model": dict(_weights(folder)), "optimizer": {"state": {}, "param_groups": []}, "iteration": 90000}


@functools.cache
def _imported(folder: str) -> torch.nn.Module:
    """The imported Detector (float32, eval), converted in memory."""
    conv = convert_release(fake_checkpoint(folder), CONFIGS[folder])
    det = conv.module.build().eval()
    det.load_state_dict(conv.state, strict=True)
    return det


def _as_set(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> list[tuple[int, float, list[float]]]:
    """Detections as a sorted list (label, -score, box); labels as the release's 1..80."""
    found = scores > 0
    rows = zip((labels[found] + 1).tolist(), (-scores[found]).tolist(), boxes[found].tolist(), strict=True)
    return sorted(rows)


def _assert_same_detections(got: list[Any], boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> None:
    want = sorted(zip(labels.tolist(), (-scores).tolist(), boxes.tolist(), strict=True))
    assert len(got) == len(want)
    for (gl, gs, gb), (wl, ws, wb) in zip(got, want, strict=True):
        assert gl == wl
        assert abs(gs - ws) <= 1e-9 * abs(ws)
        np.testing.assert_allclose(gb, wb, rtol=0, atol=1e-4)  # float32 boxes


def _run_float64(det: torch.nn.Module, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    det64 = det.double()
    levels: list[torch.Tensor] = []
    hook = det64.decoder.bridge.register_forward_hook(lambda m, i, o: levels.append(o))  # p3..p7
    try:
        with torch.no_grad():
            feats = det64.backbone(torch.from_numpy(arrays["input"]).double())
            raw = det64.decoder(feats)
    finally:
        hook.remove()
        det.float()
    return {"feats": feats, "levels": levels, "raw": raw}


@pytest.mark.parametrize("folder", list(CONFIGS))
def test_float64_matches_the_release(folder: str) -> None:
    _, config, arrays = _golden(folder)
    det = _imported(folder)
    out = _run_float64(det, arrays)
    for i, f in enumerate(out["feats"]):
        ref = arrays[f"C{i + 2}_chanmean"]
        assert np.abs(f.mean(dim=(0, 2, 3)).numpy() - ref).max() <= 1e-12 * np.abs(ref).max()
    for i, p in enumerate(out["levels"]):  # stored as float32: equal to that rounding
        ref = arrays[f"P{i + 3}"].astype(np.float64)
        np.testing.assert_allclose(p.numpy(), ref, rtol=1.2e-7, atol=1e-7 * np.abs(ref).max())
    cls, reg, ctr = out["raw"]
    for name, outputs in (("cls_logits", cls), ("bbox_reg", reg), ("centerness", ctr)):
        for level, t in enumerate(outputs):
            ref = arrays[f"{name}_p{level + 3}"]
            assert t.dtype == torch.float64 and t.shape == ref.shape
            assert np.abs(t.numpy() - ref).max() <= 1e-9 * np.abs(ref).max(), (name, level)
    h, w = (int(v) for v in arrays["image_size_hw"])
    det64 = det.double()
    try:
        with torch.no_grad():
            got = _as_set(*det64.postprocess(cls, reg, ctr, h, w))
            _assert_same_detections(got, arrays["det_boxes"], arrays["det_scores"], arrays["det_labels"])
            # the stress case: threshold and NMS really cut (about 45% pass, 29% suppressed)
            st = config["pp_stress"]
            cls2 = [c * st["cls_mul"] + st["cls_add"] for c in cls]
            reg2 = [r * st["reg_mul"] for r in reg]
            got = _as_set(*det64.postprocess(cls2, reg2, ctr, h, w))
            _assert_same_detections(got, arrays["pp_det_boxes"], arrays["pp_det_scores"], arrays["pp_det_labels"])
    finally:
        det.float()


@pytest.mark.parametrize("folder", list(CONFIGS))
def test_float32_raw_outputs_and_preprocessing(folder: str) -> None:
    _, _, arrays = _golden(folder)
    det = _imported(folder)
    resized = torch.from_numpy(arrays["resized_rgb_uint8"]).permute(2, 0, 1)[None].float() / 255
    x = det.normalize(resized)  # RGB in [0, 1], 128 x 170 -> BGR x 255 - mean, padded to 128 x 192
    assert torch.equal(x, torch.from_numpy(arrays["input"]))
    with torch.no_grad():
        cls, reg, ctr = det.forward_raw(resized)
    for name, outputs in (("cls_logits", cls), ("bbox_reg", reg), ("centerness", ctr)):
        for level, t in enumerate(outputs):
            ref = arrays[f"{name}_p{level + 3}_f32"]
            assert np.abs(t.numpy() - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max()), (name, level)


def test_import_cli_writes_a_model_that_loads_strictly(tmp_path: Path, mobile_checkpoint: Path) -> None:
    ckpt = mobile_checkpoint
    out = tmp_path / "imported"
    assert cli_main(["import-release", str(ckpt), "--config", "Mobile_NAS_head", "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["import.json", "model.py", "weights.pt"]
    doc = json.loads((out / "import.json").read_text())
    assert doc["config"] == "Mobile_NAS_head" and doc["model"]["backbone"] == "mobilenet_v2"
    assert len(doc["checkpoint"]["sha256"]) == 64 and doc["checkpoint"]["other_entries"] == ["iteration", "optimizer"]
    assert len(doc["labels"]["category_ids"]) == 80 and doc["labels"]["category_ids"][-1] == 90
    assert doc["labels"]["class_names"][0] == "person"
    m = doc["mapping"]
    keys, _, arrays = _golden("Mobile_NAS_head")
    assert m["checkpoint_entries"] == len(keys["entries"]) == m["mapped"] + sum(i["count"] for i in m["ignored"])
    assert m["checkpoint_prefix"] == "module." and len(m["reshaped"]) == 5  # scales (1,) -> ()
    module = load_model_file(out / "model.py")
    assert (module.PREPROCESS, module.BOX_REGRESSION, module.SCORING, module.FPN_CHANNELS) == \
        ("caffe2", "pixels", "product", 256)
    det = module.build().eval()
    det.load_state_dict(torch.load(out / "weights.pt", weights_only=True), strict=True)
    with torch.no_grad():
        cls, _, _ = det.decoder(det.backbone(torch.from_numpy(arrays["input"])))
    assert np.abs(cls[4].numpy() - arrays["cls_logits_p7_f32"]).max() < 1e-4


@pytest.fixture(scope="module")
def mobile_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test checkpoint 'import-release --make-test-checkpoint' writes, which must be the
    golden data's checkpoint entry for entry (the README's way to try the import)."""
    path = tmp_path_factory.mktemp("ckpt") / "mbv2-NAS-head.pth"
    assert cli_main(["import-release", "--make-test-checkpoint", "Mobile_NAS_head", "-o", str(path)]) == 0
    made = torch.load(path, weights_only=True)["model"]
    golden = fake_checkpoint("Mobile_NAS_head")["model"]
    assert list(made) == list(golden) and all(torch.equal(made[k], golden[k]) for k in golden)
    return path


@pytest.mark.parametrize("case", ["wrong_config", "truncated", "not_a_pickle", "unknown_config", "code_in_pickle"])
def test_bad_files_give_one_line_errors_and_write_nothing(
        case: str, tmp_path: Path, mobile_checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, config = tmp_path / "c.pth", "Mobile_NAS_head"
    if case == "wrong_config":
        path, config, expect = mobile_checkpoint, "R_50_NAS_head", "looks like a Mobile_NAS_head checkpoint"
    elif case == "truncated":
        path.write_bytes(mobile_checkpoint.read_bytes()[:100_000])
        expect = "truncated"
    elif case == "not_a_pickle":
        path.write_bytes(b"MODEL: {}\n")
        expect = "not a PyTorch checkpoint"
    elif case == "unknown_config":
        path, config, expect = mobile_checkpoint, "R_18_NAS", "unknown release config"
    else:
        torch.save({"model": {"x": torch.zeros(1)}, "hook": print}, path)  # a function: not plain data
        expect = "refused"
    out = tmp_path / "out"
    assert cli_main(["import-release", str(path), "--config", config, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("nasfcos import-release: error:") and expect in err[-1], err
    assert not out.exists()


@pytest.mark.parametrize("case", ["missing_key", "wrong_shape", "extra_key", "bare_state_dict_wrong_config"])
def test_mapping_errors_name_the_first_key_and_both_shapes(case: str) -> None:
    ckpt, config = fake_checkpoint("Mobile_NAS_head"), "Mobile_NAS_head"
    if case == "missing_key":
        del ckpt["model"]["module.decoder.rpn.head.bbox_pred.weight"]
        expect = "missing entry 'module.decoder.rpn.head.bbox_pred.weight' (for 'decoder.bbox_pred.weight')"
    elif case == "wrong_shape":
        ckpt["model"]["module.decoder.fpn.top_blocks.p6.weight"] = torch.zeros(256, 128, 3, 3)
        expect = "shape (256, 128, 3, 3) but 'decoder.p6.weight' of config Mobile_NAS_head needs (256, 256, 3, 3)"
    elif case == "extra_key":
        ckpt["model"]["module.decoder.extra.weight"] = torch.zeros(3)
        expect = "'module.decoder.extra.weight' has no place in config Mobile_NAS_head"
    else:  # a bare state_dict (no "model", no prefix) given the FCOS-head config
        ckpt, config = {k.removeprefix("module."): v for k, v in ckpt["model"].items()}, "Mobile_NAS"
        expect = "missing entry 'decoder.rpn.head.cls_tower.0.weight'"
    with pytest.raises(NasfcosError) as info:
        convert_release(ckpt, config)
    assert expect in str(info.value) and "\n" not in str(info.value)


def _pattern(key: str) -> str:
    return re.sub(r"\d+", "N", key)


@pytest.mark.parametrize("name", ["Mobile_NAS", "R_101_NAS", "R_101_NAS_head", "R_101_X_32x8d_NAS"])
def test_configs_without_golden_data_have_a_total_map(name: str) -> None:
    """No release outputs exist for these four configs here: their checkpoint key lists are
    synthesised from the compiled model through the map, then held to the golden configs' key
    patterns and to the release's layer shapes."""
    target = release_target(name)
    from nasfcos.compiler import compile_to_module

    module = compile_to_module(target.genotype, target.options)
    with torch.device("meta"):
        det = module.Detector()
    state = det.state_dict()
    kinds = {n: type(m).__name__ for n, m in det.named_modules()}
    share = tuple(target.genotype.share)
    rkeys = {release_key(k, kinds, share, target.genotype.head.kind): k for k in state}
    assert len(rkeys) == len(state)  # one release entry per model entry
    sibling_body = "Mobile_NAS_head" if name.startswith("Mobile") else "R_50_NAS_head"
    sibling_head = "R_50_NAS_head" if name.endswith("_head") else "R_50_NAS_densebox"
    golden_keys = {e["model_key"] for f in (sibling_body, sibling_head) for e in _golden(f)[0]["entries"]}
    expected = {_pattern(k) for k in golden_keys if not k.startswith("decoder.fpn.adapt1")
                and (not k.endswith("num_batches_tracked") or not k.startswith("encoder"))}
    if not name.startswith("Mobile"):
        expected = {p for p in expected if not p.startswith("encoder.body.features")}
    else:
        expected = {p for p in expected if not p.startswith("encoder.body.l") and "stem" not in p}
    if name.endswith("_head"):
        expected = {p for p in expected if "_tower" not in p}
    else:
        expected = {p for p in expected if "_head_global_ops" not in p}
    assert {_pattern(k) for k in rkeys} == expected
    # the release's layer shapes
    if name.startswith("R_101"):
        assert sum(1 for k in rkeys if k.startswith("encoder.body.layer3.") and k.endswith("conv1.weight")) == 23
    if name == "R_101_X_32x8d_NAS":
        assert tuple(state["backbone.body.layer1.0.conv2.weight"].shape) == (256, 8, 3, 3)  # 32 x 8, groups 32
        assert det.backbone.body.layer2[0].conv2.stride == (2, 2)  # stride in the 3x3
    elif name.startswith("R_101"):
        assert det.backbone.body.layer2[0].conv1.stride == (2, 2)  # MSRA: stride in the first 1x1
    assert not any(re.fullmatch(p, k) for p in IGNORED_REASONS for k in rkeys)
    assert RELEASE_MODELS[name].backbone == target.options.backbone


def test_import_refuses_weights_that_become_non_finite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """float64 1e300 is finite in the file and inf as the model's float32 (issue 25)."""
    ckpt = fake_checkpoint("Mobile_NAS_head")
    key = "module.decoder.fpn.top_blocks.p6.weight"
    ckpt["model"][key] = ckpt["model"][key].to(torch.float64).clone()
    ckpt["model"][key][0, 0, 0, 0] = 1e300
    path, out = tmp_path / "c.pth", tmp_path / "out"
    torch.save(ckpt, path)
    assert cli_main(["import-release", str(path), "--config", "Mobile_NAS_head", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "non-finite" in err and "decoder.p6.weight" in err, err
    assert not out.exists()


def test_import_is_all_or_nothing_on_a_full_disk(tmp_path: Path, mobile_checkpoint: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A write that fails after model.py leaves no folder behind, so a retry works (issue 25)."""
    import errno
    import os

    import nasfcos.compiler.release as release

    real = release.atomic_write_bytes

    def full(path: Any, data: bytes) -> Path:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(release, "atomic_write_bytes", full)
    out = tmp_path / "out"
    argv = ["import-release", str(mobile_checkpoint), "--config", "Mobile_NAS_head", "-o", str(out)]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("nasfcos import-release: error:") and "No space left" in err, err
    assert f"{out}/weights.pt" in err, err
    assert sorted(os.listdir(tmp_path)) == [], os.listdir(tmp_path)
    monkeypatch.setattr(release, "atomic_write_bytes", real)
    assert cli_main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["import.json", "model.py", "weights.pt"]
