"""The Ray executor on a local Ray instance (2 CPUs) writes the same archive as local workers,
with the search's one evaluator (the proxy's own)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nasfcos.search.archive import read_rows, strip_volatile
from nasfcos.search.loop import Search, SearchConfig
from nasfcos.search.ppo import PPOConfig

pytestmark = pytest.mark.ray
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_local():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


def test_the_proxy_evaluator_under_local_workers_and_ray(ray_local, tmp_path: Path) -> None:
    """The search's one evaluator (the proxy's own) in worker processes: each verifies the
    cache once, and local workers and Ray tasks write the same rows."""
    from nasfcos.fcos.synth import SynthConfig, write_synthetic
    from nasfcos.search.proxy import PRESETS, build_cache, make_evaluator

    small = PRESETS["tiny"].replace(name="small", short_side=64, max_size=64, crop=64, fpn_channels=8,
                                    head_channels=32, batch_size=8, eval_batch_size=8, num_threads=1)
    write_synthetic(tmp_path / "synth", SynthConfig(images=20, size=64, seed=1))
    cache = build_cache(tmp_path / "synth", tmp_path / "cache", small, progress=False)
    evaluator = make_evaluator(cache, small, max_steps=1)
    cfg = SearchConfig(preset="tiny", trials=4, batch_size=4, seed=2, cache=str(cache),
                       ppo=PPOConfig(minibatch_size=4, epochs=1))
    Search(tmp_path / "local", cfg, evaluator=evaluator, workers=1, progress=False, plot_every_s=None).run()
    Search(tmp_path / "ray", cfg, evaluator=evaluator, executor_kind="ray", progress=False,
           plot_every_s=None).run()
    local = read_rows(tmp_path / "local" / "archive.jsonl")
    remote = read_rows(tmp_path / "ray" / "archive.jsonl")
    assert {r.status for r in local} <= {"ok", "reused"} and any(r.status == "ok" for r in local)
    for rows in (local, remote):
        assert all(r.extra["cache_verifications"] == 1 for r in rows if r.status == "ok")
    volatile = ("extra", "time_s")
    assert [{k: v for k, v in strip_volatile(r).items() if k not in volatile} for r in remote] == [
        {k: v for k, v in strip_volatile(r).items() if k not in volatile} for r in local]
    # the file itself is in sample order
    assert [r.key for r in remote] == sorted(r.key for r in remote)
