"""Feature cache: round trip, checksums / corruption / mismatch detection, resume."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from nasfcos.errors import CacheError, NasfcosError
from nasfcos.fcos.data import CocoDetection, TransformConfig, pad_batch
from nasfcos.fcos.losses import STRIDES, compute_targets
from nasfcos.search.cache import (
    MANIFEST,
    PROGRESS,
    build_backbone,
    output_level_sizes,
    scaled_size_ranges,
    split_indices,
)
from nasfcos.search.proxy import PRESETS, ProxySettings, build_cache, open_cache

# 30 images of 64 px -> 24 in train.json -> meta-train 17 / meta-val 7; chunks of 5 rows
SETTINGS = PRESETS["tiny"].replace(name="test", short_side=64, max_size=64, crop=64, chunk_size=5)


@pytest.fixture(scope="module")
def data_dir(synth_set: Callable[..., Path]) -> Path:
    return synth_set(images=30, size=64, seed=3)  # shared with test_proxy.py


@pytest.fixture(scope="module")
def built(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_cache(data_dir, tmp_path_factory.mktemp("cache") / "c", SETTINGS, progress=False)


def _manifest(path: Path) -> dict:
    return json.loads((path / MANIFEST).read_text())


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_round_trip_features_and_targets(built: Path, data_dir: Path) -> None:
    cache = open_cache(built, SETTINGS)
    assert (len(cache.train), len(cache.val)) == (17, 7)
    assert cache.num_classes == 5 and cache.in_channels == (16, 24, 32, 48)
    assert cache.level_sizes == ((8, 8), (4, 4), (2, 2), (1, 1), (1, 1))
    assert all(f.dtype == np.float16 for f in cache.train.features)
    assert [tuple(f.shape[1:]) for f in cache.val.features] == [(16, 16, 16), (24, 8, 8), (32, 4, 4), (48, 2, 2)]
    assert isinstance(open_cache(built, in_memory=False).train.features[0], np.memmap)

    # recompute two meta-val rows by hand: same crop, same backbone, same targets
    ds = CocoDetection(data_dir / "train.json", data_dir / "images",
                       TransformConfig(min_size=64, max_size=64, crop=(64, 64)), train=True, seed=0)
    split = split_indices(len(ds), SETTINGS)
    assert cache.manifest["splits"]["val"]["image_ids"] == [ds.ids[i] for i in split["val"]]
    rows = [0, 5]
    samples = [ds[split["val"][r]] for r in rows]
    feats_ref = build_backbone("tiny", SETTINGS.backbone_weights)(pad_batch([s[0] for s in samples], size=(64, 64)))
    feats, targets = cache.val.batch(rows)
    for got, ref in zip(feats, feats_ref, strict=True):
        torch.testing.assert_close(got, ref.half().float())
    ref_t = compute_targets([s[1]["boxes"] for s in samples], [s[1]["labels"] for s in samples],
                            output_level_sizes([(16, 16), (8, 8), (4, 4), (2, 2)]), STRIDES,
                            scaled_size_ranges(SETTINGS.size_range_scale), SETTINGS.center_sampling_radius)
    assert torch.equal(targets.labels, ref_t.labels)
    torch.testing.assert_close(targets.reg, ref_t.reg)
    torch.testing.assert_close(targets.ctr, ref_t.ctr)
    assert targets.level_sizes == ref_t.level_sizes and targets.num_positive > 0
    # batch() keeps the requested order
    f_rev, t_rev = cache.val.batch([5, 0])
    assert torch.equal(f_rev[1][0], feats[1][1]) and torch.equal(t_rev.labels[0], targets.labels[1])


def test_manifest_records_provenance(built: Path) -> None:
    m = _manifest(built)
    from nasfcos.fcos.weights import provenance

    # the tiny preset's trunk: the shipped tiny_synth_1500 weights, named by their sha256
    assert m["backbone"] == "tiny" and m["backbone_weights"] == f"sha256:{provenance('tiny_synth_1500')['sha256']}"
    assert m["cache_key"] == SETTINGS.cache_key() and len(m["dataset_sha256"]) == 64
    assert m["feature_dtype"] == "float16"
    assert set(m["splits"]) == {"train", "val"}
    assert all(len(f["sha256"]) == 64 for f in m["files"].values())
    assert not set(m["splits"]["train"]["image_ids"]) & set(m["splits"]["val"]["image_ids"])
    assert not (built / PROGRESS).exists()


def test_split_is_seeded() -> None:
    a, b = split_indices(100, SETTINGS), split_indices(100, SETTINGS)
    c = split_indices(100, SETTINGS.replace(split_seed=1))
    assert a == b and a != c
    assert (len(a["train"]), len(a["val"])) == (70, 30)
    capped = split_indices(5715, PRESETS["paper"])
    assert (len(capped["train"]), len(capped["val"])) == (4000, 1715)


def test_rebuild_of_complete_cache_is_a_no_op(built: Path, data_dir: Path) -> None:
    calls: list[tuple[str, int, int]] = []
    build_cache(data_dir, built, SETTINGS, progress=False, on_chunk=lambda *a: calls.append(a))
    assert calls == []


def test_mismatched_settings_are_refused(built: Path, data_dir: Path, tmp_path: Path) -> None:
    other = SETTINGS.replace(crop=32)
    with pytest.raises(CacheError, match="crop") as err:
        open_cache(built, other)
    assert "\n" not in str(err.value)
    # training-only fields do not matter
    open_cache(built, SETTINGS.replace(epochs=9, lr=1e-3), verify="size")
    path = _copy(built, tmp_path / "c")
    with pytest.raises(CacheError, match="overwrite"):
        build_cache(data_dir, path, other, progress=False)
    build_cache(data_dir, path, other, progress=False, overwrite=True)
    assert open_cache(path, other).level_sizes[0] == (4, 4)


def test_changed_dataset_is_refused(built: Path, synth_set: Callable[..., Path], tmp_path: Path) -> None:
    data2 = synth_set(images=30, size=64, seed=4)
    with pytest.raises(CacheError, match="dataset changed"):
        build_cache(data2, _copy(built, tmp_path / "c"), SETTINGS, progress=False)


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "manifest"])
def test_corruption_is_detected_then_rebuilt(built: Path, data_dir: Path, tmp_path: Path, damage: str) -> None:
    path = _copy(built, tmp_path / "c")
    target = path / "arrays" / "train_c3.npy"
    if damage == "flip":
        raw = bytearray(target.read_bytes())
        raw[-7] ^= 0x40
        target.write_bytes(bytes(raw))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:-64])
    elif damage == "delete":
        target.unlink()
    else:
        (path / MANIFEST).write_text('{"format": "nasfcos-feature-cache/1", "cache_key": ')
    with pytest.raises(CacheError) as err:
        open_cache(path)
    assert "\n" not in str(err.value) and "rebuild" in str(err.value)
    logs: list[str] = []
    build_cache(data_dir, path, SETTINGS, progress=False, log=logs.append)
    assert _manifest(path)["files"] == _manifest(built)["files"]
    open_cache(path, SETTINGS)


def test_resume_of_half_built_cache(built: Path, data_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "c"

    class Stop(Exception):
        pass

    def stop_after_two(split: str, start: int, stop: int) -> None:
        if (split, start) == ("train", 5):
            raise Stop

    with pytest.raises(Stop):
        build_cache(data_dir, path, SETTINGS, progress=False, on_chunk=stop_after_two)
    assert (path / PROGRESS).exists() and not (path / MANIFEST).exists()
    with pytest.raises(CacheError, match="partly built"):
        open_cache(path)

    done: list[tuple[str, int, int]] = []
    logs: list[str] = []
    build_cache(data_dir, path, SETTINGS, progress=False, on_chunk=lambda *a: done.append(a), log=logs.append)
    # 17 train rows in chunks of 5: 0-5 and 5-10 were done, 10-15 and 15-17 remain; val 0-5, 5-7
    assert done == [("train", 10, 15, ), ("train", 15, 17), ("val", 0, 5), ("val", 5, 7)]
    assert any("resuming" in line for line in logs)
    assert _manifest(path)["files"] == _manifest(built)["files"]  # byte-identical to one clean build

    # resume=False starts over (every chunk recomputed)
    (path / MANIFEST).unlink()
    redo: list[tuple[str, int, int]] = []
    build_cache(data_dir, path, SETTINGS, progress=False, resume=False, on_chunk=lambda *a: redo.append(a))
    assert len(redo) == 6


def test_non_cache_folder_is_refused(data_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CacheError, match="not a feature cache"):
        build_cache(data_dir, tmp_path, SETTINGS, progress=False)
    with pytest.raises(CacheError, match="not a feature cache"):
        open_cache(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_backbone_weights_file_changes_identity(data_dir: Path, tmp_path: Path) -> None:
    bb = build_backbone("tiny", None)
    state = {k: v * 0.5 for k, v in bb.module.body.state_dict().items()}  # torchvision format
    wpath = tmp_path / "w.pth"
    torch.save(state, wpath)
    bb2 = build_backbone("tiny", wpath)
    assert bb2.weights_id.startswith("sha256:") and bb2.weights_id != bb.weights_id
    torch.save({"nope": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(NasfcosError, match="missing"):
        build_backbone("tiny", tmp_path / "bad.pth")
    with pytest.raises(NasfcosError, match="no such weights"):
        build_backbone("tiny", tmp_path / "absent.pth")


def test_settings_validation() -> None:
    with pytest.raises(NasfcosError, match="multiple of 32"):
        ProxySettings(crop=100).validate()
    with pytest.raises(NasfcosError, match="backbone"):
        ProxySettings(backbone="vgg").validate()
    PRESETS["paper"].validate()


def test_machine_verification_hashes_once_per_cache_state(built: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """verify="machine": the first open on this machine hashes every array, later opens (other
    workers) check sizes only, until a file changes."""
    import shutil

    import nasfcos.search.cache as cache_mod

    copy = tmp_path / "c"
    shutil.copytree(built, copy)
    hashed: list[str] = []
    real = cache_mod.sha256_file
    monkeypatch.setattr(cache_mod, "sha256_file", lambda p: hashed.append(str(p)) or real(p))
    open_cache(copy, verify="machine")
    first = len(hashed)
    assert first > 0
    open_cache(copy, verify="machine")
    assert len(hashed) == first  # stamped: no hashing
    arr = next((copy / "arrays").glob("train_c5.npy"))
    data = bytearray(arr.read_bytes())
    data[-1] ^= 0xFF
    arr.write_bytes(bytes(data))  # changed: verified again, and the corruption is found
    with pytest.raises(CacheError, match="sha256|checksum|corrupt"):
        open_cache(copy, verify="machine")
