"""The paper's proxy preset: its numbers, its split on a set smaller than VOC, and a run of it
(sizes reduced) on a small COCO-format set."""

from __future__ import annotations

from pathlib import Path

import pytest

from nasfcos.errors import NasfcosError
from nasfcos.search.cache import split_indices
from nasfcos.search.proxy import PRESETS, ProxySettings, build_cache, evaluate, open_cache


def test_paper_numbers() -> None:
    p = PRESETS["paper"].validate()
    assert (p.backbone, p.short_side, p.crop) == ("resnet50", 384, 384)
    assert (p.meta_train_images, p.meta_val_images) == (4000, 1715)
    assert (p.fpn_channels, p.head_channels) == (64, 64)
    assert (p.lr, p.batch_size, p.polyak_decay, p.epochs) == (8e-4, 200, 0.9, 15)
    assert p.device == "auto" and p.torch_device().type in ("cpu", "cuda")


def test_paper_split_on_smaller_sets_keeps_the_proportion() -> None:
    full = split_indices(5715, PRESETS["paper"])
    assert (len(full["train"]), len(full["val"])) == (4000, 1715)
    big = split_indices(9000, PRESETS["paper"])  # larger than VOC: capped at the paper's counts
    assert (len(big["train"]), len(big["val"])) == (4000, 1715)
    small = split_indices(100, PRESETS["paper"])  # was 1 / 99 before: all but one to meta-val
    assert (len(small["train"]), len(small["val"])) == (70, 30)
    assert not set(small["train"]) & set(small["val"])


def test_device_rule() -> None:
    with pytest.raises(NasfcosError, match="device"):
        ProxySettings(device="gpu").validate()
    assert ProxySettings(device="cuda:1").validate().device == "cuda:1"


def test_paper_preset_runs_on_a_small_coco_set(tmp_path: Path) -> None:
    """Everything of the paper preset but the sizes: ResNet-50 features cached, decoders 64 wide,
    Adam 8e-4 + Polyak 0.9, batch capped by the set."""
    from nasfcos.fcos.synth import SynthConfig, write_synthetic
    from nasfcos.genotypes import load_paper_genotype

    small = PRESETS["paper"].replace(name="paper-small", short_side=64, max_size=64, crop=64, epochs=2,
                                     eval_batch_size=4, num_threads=1)
    write_synthetic(tmp_path / "coco", SynthConfig(images=12, size=96, seed=0))
    cache = open_cache(build_cache(tmp_path / "coco", tmp_path / "cache", small, progress=False), small)
    assert (len(cache.train), len(cache.val)) == (7, 3)  # 9 train images split 1715:4000
    assert cache.in_channels == (256, 512, 1024, 2048)
    res = evaluate(load_paper_genotype("nas_fcos_fpn_head"), cache, small, seed=0)
    assert res.status == "ok" and res.steps == 2 and res.reward < 0


@pytest.mark.parametrize(("changes", "field"), [
    ({"fpn_channels": 33}, "fpn_channels"), ({"head_channels": 20}, "head_channels"),
    ({"lr": float("nan")}, "lr"), ({"epochs": True}, "epochs"), ({"weight_decay": -1.0}, "weight_decay"),
    ({"failure_reward": float("inf")}, "failure_reward"), ({"grad_clip": 0.0}, "grad_clip"),
    ({"meta_train_images": 0}, "meta_train_images"), ({"name": 3}, "name"), ({"crop": 100}, "crop"),
    ({"size_range_scale": float("nan")}, "size_range_scale"), ({"max_steps": "5"}, "max_steps"),
    ({"reward": "ctr+ctr"}, "reward"), ({"reward": "iou"}, "reward"), ({"reward": ""}, "reward"), ({"reward_scale": 0.0}, "reward_scale"),
])
def test_settings_rules_name_the_field(changes: dict, field: str) -> None:
    with pytest.raises(NasfcosError, match=f"proxy setting {field} must be"):
        PRESETS["tiny"].replace(**changes).validate()
