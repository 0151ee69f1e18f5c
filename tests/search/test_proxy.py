"""Proxy evaluator: Polyak averaging, determinism, the reward, the picklable evaluator, the CLI."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nasfcos.cli.proxy_cmds import cache_main, eval_main
from nasfcos.errors import CacheError, NasfcosError
from nasfcos.fcos.losses import FcosConfig, losses_from_targets
from nasfcos.genotypes import load_paper_genotype, paper_genotype_path
from nasfcos.search.proxy import (
    PRESETS,
    EvalResult,
    PolyakAverage,
    ProxyEvaluator,
    build_cache,
    compiled_decoder,
    deterministic,
    evaluate,
    make_evaluator,
    meta_val_losses,
    open_cache,
    settings_from_cache,
    train_decoder,
)

# 30 synthetic images of 64 px -> meta-train 17 / meta-val 7; 8-wide decoders, 4 steps of 8.
SMALL = PRESETS["tiny"].replace(
    name="small", short_side=64, max_size=64, crop=64, fpn_channels=8,
    head_channels=64, batch_size=8, epochs=2, eval_batch_size=3, num_threads=1,
)


@pytest.fixture(scope="module")
def data_dir(synth_set: Callable[..., Path]) -> Path:
    return synth_set(images=30, size=64, seed=3)  # shared with test_cache.py


@pytest.fixture(scope="module")
def cache_dir(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_cache(data_dir, tmp_path_factory.mktemp("cache") / "c", SMALL, progress=False)


@pytest.fixture(scope="module")
def cache(cache_dir: Path):  # noqa: ANN201
    return open_cache(cache_dir, SMALL)


def test_polyak_hand_computation() -> None:
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    avg = PolyakAverage(model, 0.9)
    expected = 1.0
    for w in (2.0, 3.0, 4.0):
        with torch.no_grad():
            model[0].weight.fill_(w)
            model[1].running_mean.fill_(w * 10)
        avg.update(model)
        expected = 0.9 * expected + 0.1 * w
    assert expected == pytest.approx(1.561)
    assert float(avg.model[0].weight) == pytest.approx(1.561, abs=1e-6)
    assert float(avg.model[1].running_mean) == 40.0  # buffers are copied, not averaged
    assert not any(p.requires_grad for p in avg.model.parameters())
    with pytest.raises(ValueError):
        PolyakAverage(model, 1.0)


def test_training_averages_every_step(cache) -> None:  # noqa: ANN001
    """The averaged model equals the EMA (decay 0.9) of the weights after each Adam step."""
    snapshots: list[list[torch.Tensor]] = []

    class Recorder(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, feats):  # noqa: ANN001, ANN202
            snapshots.append([p.detach().clone() for p in self.inner.parameters()])
            return self.inner(feats)

    g = load_paper_genotype()
    with deterministic(0, 1):
        model = Recorder(compiled_decoder(g, 8, 64, cache.num_classes, cache.in_channels))
        out = train_decoder(model, cache, SMALL, seed=0)
    assert out.steps == 4 == len(snapshots)  # 2 epochs x (17 // 8) full batches
    weights = snapshots[1:] + [[p.detach() for p in model.inner.parameters()]]
    ema = [w.clone() for w in snapshots[0]]
    for step in weights:
        ema = [0.9 * a + 0.1 * w for a, w in zip(ema, step, strict=True)]
    for a, p in zip(ema, out.averaged.inner.parameters(), strict=True):
        torch.testing.assert_close(p, a, rtol=1e-5, atol=1e-6)
    assert not torch.equal(weights[-1][0], list(out.averaged.inner.parameters())[0])


def test_evaluate_is_deterministic_per_seed(cache) -> None:  # noqa: ANN001
    g = load_paper_genotype()
    settings = SMALL.replace(max_steps=2)
    threads = torch.get_num_threads()
    rng = torch.get_rng_state()
    a = evaluate(g, cache, settings, seed=0)
    b = evaluate(g, cache, settings, seed=0)
    c = evaluate(g, cache, settings, seed=1)
    assert a.reward == b.reward and a.losses == b.losses and a.train_loss == b.train_loss
    assert c.reward != a.reward
    assert torch.get_num_threads() == threads and torch.equal(torch.get_rng_state(), rng)
    assert a.genotype_hash == g.hash() and a.steps == 2 and a.status == "ok"
    assert a.params == sum(p.numel() for p in compiled_decoder(g, 8, 64, cache.num_classes,
                                                                cache.in_channels).parameters())
    # the seed may also come from the settings
    assert evaluate(g, cache, settings.replace(seed=1)).reward == c.reward


def test_reward_is_minus_meta_val_loss_sum_of_averaged_model(cache) -> None:  # noqa: ANN001
    g = load_paper_genotype("nas_fcos_fpn")
    settings = SMALL.replace(max_steps=3, reward="cls+box+ctr", reward_scale=1.0)
    result = evaluate(g, cache, settings, seed=2)
    # redo the same training, then score the averaged weights on meta-val in ONE batch
    with deterministic(2, settings.num_threads):
        decoder = compiled_decoder(g, 8, 64, cache.num_classes, cache.in_channels)
        out = train_decoder(decoder, cache, settings, seed=2)
        feats, targets = cache.val.batch(np.arange(len(cache.val)))
        cfg = FcosConfig(box_loss="iou")
        with torch.no_grad():
            avg_losses = losses_from_targets(*out.averaged.eval()(feats), targets, cfg)
            online = losses_from_targets(*decoder.eval()(feats), targets, cfg)
    expected = -sum(float(v) for v in avg_losses.values())
    assert result.reward == pytest.approx(expected, rel=1e-5)
    for k in ("cls", "box", "ctr"):
        assert result.losses[k] == pytest.approx(float(avg_losses[k]), rel=1e-5)
    assert abs(-sum(float(v) for v in online.values()) - expected) > 1e-4  # averaging matters
    # another reward form sums only its losses, of the same training, times its scale
    other = evaluate(g, cache, settings.replace(reward="box+ctr", reward_scale=2.0), seed=2)
    assert other.losses == result.losses
    assert other.reward == pytest.approx(-2.0 * (result.losses["box"] + result.losses["ctr"]), rel=1e-6)


def test_batched_meta_val_losses_equal_one_batch(cache) -> None:  # noqa: ANN001
    g = load_paper_genotype()
    torch.manual_seed(0)
    model = compiled_decoder(g, 8, 64, cache.num_classes, cache.in_channels).eval()
    feats, targets = cache.val.batch(np.arange(len(cache.val)))
    with torch.no_grad():
        ref = losses_from_targets(*model(feats), targets, FcosConfig(box_loss="iou"))
    for bs in (1, 2, 7, len(cache.val) - 1, 100):  # len - 1: a last batch of one image (1x1 p7)
        got = meta_val_losses(model, cache, SMALL.replace(eval_batch_size=bs))
        assert got == pytest.approx({k: float(v) for k, v in ref.items()}, rel=1e-5)


def test_result_dict_is_json(cache) -> None:  # noqa: ANN001
    r = evaluate(load_paper_genotype(), cache, SMALL.replace(max_steps=1))
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert set(d) >= {"reward", "losses", "time_s", "params", "genotype_hash", "steps"}
    assert set(d["losses"]) == {"cls", "box", "ctr"}
    assert EvalResult(float("nan"), {"cls": float("inf")}, 0.0, 1, "h", 1).to_dict()["reward"] is None


def test_settings_must_match_cache(cache) -> None:  # noqa: ANN001
    with pytest.raises(CacheError, match="crop"):
        evaluate(load_paper_genotype(), cache, SMALL.replace(crop=32))


def test_evaluator_is_picklable(cache_dir: Path, cache) -> None:  # noqa: ANN001
    g = load_paper_genotype()
    ev = make_evaluator(cache_dir, SMALL, max_steps=1)
    clone = pickle.loads(pickle.dumps(ev))
    assert isinstance(clone, ProxyEvaluator)
    got = clone(g, 3)
    assert got["reward"] == evaluate(g, cache, SMALL.replace(max_steps=1), seed=3).reward
    assert got["genotype_hash"] == g.hash()
    # no preset: the cache's own settings; a dict genotype works too
    own = make_evaluator(cache_dir, None, max_steps=1)
    assert own(g.to_dict(), 3)["reward"] == got["reward"]
    with pytest.raises(NasfcosError, match="cache setting"):
        make_evaluator(cache_dir, SMALL, crop=32)
    with pytest.raises(CacheError):  # the tiny preset's cache key differs from this cache's
        make_evaluator(cache_dir, "tiny", max_steps=1)(g, 0)


def test_cli_cache_and_eval(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli_cache"
    assert cache_main(["--data", str(data_dir), "--out", str(out), "--short-side", "64", "--crop", "64",
                       "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["meta_train"] == 17 and summary["meta_val"] == 7
    res_file = tmp_path / "r.json"
    assert eval_main([str(paper_genotype_path("nas_fcos_fpn")), "--cache", str(out), "--steps", "1",
                      "--seeds", "0,1", "--out", str(res_file)]) == 0
    text = capsys.readouterr().out
    assert "seed 0: reward" in text and "mean reward over 2 seeds" in text
    doc = json.loads(res_file.read_text())
    assert doc["seeds"] == [0, 1] and len(doc["results"]) == 2
    assert doc["mean_reward"] == pytest.approx(sum(r["reward"] for r in doc["results"]) / 2)
    with pytest.raises(CacheError, match="built differently .*; use --overwrite or another --out$"):
        cache_main(["--data", str(data_dir), "--out", str(out), "--short-side", "64", "--crop", "32", "--quiet"])
    with pytest.raises(NasfcosError, match="no such file, and not a shipped genotype"):
        eval_main([str(tmp_path / "absent.json"), "--cache", str(out)])
    with pytest.raises(CacheError):
        eval_main(["nas_fcos_fpn", "--cache", str(tmp_path)])
    for bad, message in ((["--seeds", "5-1"], "--seeds: seed range '5-1' runs backwards"),
                         (["--device", "bogus"], "--device: unknown device 'bogus'"),
                         (["--steps", "0"], "--steps: expected an integer >= 1")):
        with pytest.raises(NasfcosError, match=message):
            eval_main(["nas_fcos_fpn", "--cache", str(out), *bad])


def test_settings_of_a_cache_built_before_a_setting_existed() -> None:
    """A setting added since the cache was built takes its preset's current value (a tiny cache
    built before the reward changed scores with the tiny preset's reward); the rest as recorded."""
    import types

    recorded = {k: v for k, v in PRESETS["tiny"].to_dict().items() if k not in ("reward", "reward_scale")}
    got = settings_from_cache(types.SimpleNamespace(manifest={"settings": recorded | {"epochs": 3}}))
    assert (got.reward, got.reward_scale, got.epochs) == (PRESETS["tiny"].reward, PRESETS["tiny"].reward_scale, 3)
    custom = settings_from_cache(types.SimpleNamespace(manifest={"settings": recorded | {"name": "custom"}}))
    assert (custom.reward, custom.reward_scale) == ("cls+box+ctr", 1.0)  # no preset: the class defaults
