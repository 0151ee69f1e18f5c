"""Training loop (loss goes down, exact resume) and COCO evaluation wiring."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from nasfcos.cli.main import main as cli
from nasfcos.errors import NasfcosError
from nasfcos.fcos.data import CocoDetection, TransformConfig
from nasfcos.fcos.evaluate import EvalConfig, evaluate
from nasfcos.fcos.train import PRESETS, RunSampler, TrainConfig, apply_preset, lr_multiplier, train


@pytest.fixture(scope="module")
def synth(synth_data: Path) -> Path:
    return synth_data  # 20 images of 64 px, seed 2 (tests/conftest.py)


def _cfg(data: Path, out: Path, model: Path, **kw) -> TrainConfig:
    base = TrainConfig(model=str(model), out=str(out), data=str(data), iters=25, batch=4,
                       lr=0.01, warmup_iters=5, min_size=64, max_size=64, workers=0, log_every=5,
                       eval=False)
    return replace(base, **kw)


def test_lr_schedule_and_preset() -> None:
    cfg = TrainConfig(model="m.py", out="o", warmup_iters=500, steps=(60_000, 80_000))
    assert lr_multiplier(0, 90_000, cfg) == pytest.approx(1 / 3)
    assert lr_multiplier(250, 90_000, cfg) == pytest.approx(2 / 3)
    assert lr_multiplier(500, 90_000, cfg) == 1.0
    assert lr_multiplier(60_000, 90_000, cfg) == pytest.approx(0.1)
    assert lr_multiplier(85_000, 90_000, cfg) == pytest.approx(0.01)
    coco = apply_preset(TrainConfig(model="m.py", out="o"), "coco")
    assert (coco.iters, coco.steps, coco.batch, coco.warmup_iters) == (90_000, (60_000, 80_000), 16, 500)
    assert PRESETS["coco"]["momentum"] == 0.9 and PRESETS["coco"]["weight_decay"] == 1e-4
    default_steps = replace(coco, steps=None)
    assert lr_multiplier(59_999, 90_000, default_steps) == 1.0
    assert lr_multiplier(60_000, 90_000, default_steps) == pytest.approx(0.1)
    # a short run: the warm-up ends halfway to the first step (240 // 2), not after 500
    short = TrainConfig(model="m.py", out="o", warmup_iters=500)
    assert lr_multiplier(60, 360, short) == pytest.approx(2 / 3)
    assert lr_multiplier(120, 360, short) == 1.0
    assert lr_multiplier(240, 360, short) == pytest.approx(0.1)


def test_run_sampler_resumes_and_splits_ranks() -> None:
    full = list(RunSampler(10, 3, total=7, seed=4))
    assert list(RunSampler(10, 3, total=7, start=4, seed=4)) == full[4:]
    assert all(len(b) == 3 for b in full) and full[3][0][1] == 1  # 3 batches per epoch
    r0 = [i for b in RunSampler(10, 2, total=2, rank=0, world=2) for i, _ in b]
    r1 = [i for b in RunSampler(10, 2, total=2, rank=1, world=2) for i, _ in b]
    assert not set(r0) & set(r1)
    with pytest.raises(NasfcosError):
        RunSampler(3, 4, total=1)


def test_short_training_lowers_the_loss(synth: Path, tmp_path: Path, tiny_model: Path) -> None:
    summary = train(_cfg(synth, tmp_path / "run", tiny_model, eval=True, eval_batch=4), progress=False)
    recs = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in recs] == list(range(5, 26, 5))
    assert recs[-1]["loss"] < 0.8 * recs[0]["loss"]
    assert set(recs[0]) >= {"loss", "cls", "box", "ctr", "lr", "grad_norm"}
    for name in ("last.pt", "final.pt", "loss.png", "eval.json", "summary.json", "config.json"):
        assert (tmp_path / "run" / name).is_file(), name
    assert not list((tmp_path / "run").glob("*.tmp"))  # atomic writes left nothing behind
    assert set(summary["eval"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    # the trained weights evaluate through the CLI (model.py backend)
    out = tmp_path / "metrics.json"
    rc = cli(["eval", str(tiny_model), "--weights", str(tmp_path / "run" / "final.pt"), "--data", str(synth),
              "--min-size", "64", "--max-size", "64", "-o", str(out)])
    assert rc == 0
    assert json.loads(out.read_text())["AP"] == pytest.approx(summary["eval"]["AP"], abs=1e-6)


def test_resume_continues_from_the_same_step(synth: Path, tmp_path: Path, tiny_model: Path) -> None:
    kw = {"iters": 6, "steps": (4,), "log_every": 1, "checkpoint_every": 3, "hflip": 0.5}
    train(_cfg(synth, tmp_path / "a", tiny_model, **kw), progress=False)
    train(_cfg(synth, tmp_path / "b", tiny_model, **{**kw, "iters": 3}), progress=False)
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["iter"] == 3
    with pytest.raises(NasfcosError, match="--resume"):
        train(_cfg(synth, tmp_path / "b", tiny_model, **kw), progress=False)
    summary = train(_cfg(synth, tmp_path / "b", tiny_model, resume=True, **kw), progress=False)
    assert summary["start_iter"] == 3
    a = torch.load(tmp_path / "a" / "final.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "final.pt", weights_only=True)["model"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k
    ra = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rb] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in rb] == pytest.approx([r["loss"] for r in ra], rel=1e-4)
    with pytest.raises(NasfcosError):
        train(_cfg(synth, tmp_path / "c", tiny_model, resume=True), progress=False)


def _gt_runner(ds: CocoDetection, shift: float = 0.0, num_det: int = 100):
    """A runner that returns each image's ground truth (in input pixels) as detections."""
    state = {"next": 0}

    def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = images.shape[0]
        boxes = np.zeros((n, num_det, 4), np.float32)
        scores = np.zeros((n, num_det), np.float32)
        labels = np.full((n, num_det), -1, np.int64)
        for j in range(n):
            _, t = ds[state["next"]]
            state["next"] += 1
            m = len(t["labels"])
            boxes[j, :m] = t["boxes"].numpy() + shift
            scores[j, :m] = 1.0
            labels[j, :m] = t["labels"].numpy()
        return boxes, scores, labels

    return run


def test_ground_truth_as_predictions_gives_ap_one(synth: Path, tmp_path: Path) -> None:
    # arbitrary, non-contiguous category ids exercise the label <-> id mapping both ways
    coco = json.loads((synth / "val.json").read_text())
    for c in coco["categories"]:
        c["id"] = 100 - 7 * c["id"]
    for a in coco["annotations"]:
        a["category_id"] = 100 - 7 * a["category_id"]
    ann = tmp_path / "val.json"
    ann.write_text(json.dumps(coco))
    cfg = EvalConfig(min_size=96, max_size=96, batch_size=3)  # 64 px images run at 96 px
    ds = CocoDetection(ann, synth / "images", TransformConfig(96, 96))
    m = evaluate(_gt_runner(ds), ann=ann, images=synth / "images", cfg=cfg)
    assert m["AP"] == pytest.approx(1.0) and m["AP50"] == pytest.approx(1.0)
    assert m["images"] == len(coco["images"]) and m["detections"] == len(coco["annotations"])
    for key in ("APs", "APm", "APl"):
        assert m[key] in (pytest.approx(1.0), -1.0)
    # shifted boxes score lower: the check can fail
    shifted = evaluate(_gt_runner(ds, shift=6.0), ann=ann, images=synth / "images", cfg=cfg)
    assert shifted["AP"] < 0.9


def test_eval_runner_errors(tmp_path: Path, tiny_detector_file: Path) -> None:
    """eval runs through the runtime's runners: bad paths fail with one line; a compiled
    detector's class count comes from the file (no --num-classes needed)."""
    from nasfcos.runtime.runners import make_runner

    (tmp_path / "model.txt").write_text("x")
    with pytest.raises(NasfcosError):
        make_runner(tmp_path / "model.txt")
    with pytest.raises(NasfcosError):
        make_runner(tmp_path / "missing.onnx")
    runner = make_runner(tiny_detector_file, kind="detector")
    boxes, scores, labels = runner(np.zeros((2, 3, 64, 64), np.float32))
    assert boxes.shape[:1] == (2,) and boxes.shape[2] == 4
    assert scores.shape == labels.shape == boxes.shape[:2]
    four = make_runner(tiny_detector_file, kind="detector", overrides={"num_classes": 4})
    assert four.model.info["num_classes"] == 4
