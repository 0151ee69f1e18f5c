"""The Ray executor on a local Ray instance (2 CPUs) writes the same archive as the local one."""

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


def _cfg() -> SearchConfig:
    # noisy toy reward: every row depends on its evaluation seed
    return SearchConfig(preset="toy", trials=12, batch_size=4, seed=11, toy_noise=0.5,
                        ppo=PPOConfig(lr=1e-3, minibatch_size=4, epochs=2))


def test_ray_and_local_give_the_same_archive(ray_local, tmp_path: Path) -> None:
    Search(tmp_path / "local", _cfg(), executor_kind="local", workers=2, progress=False).run()
    summary = Search(tmp_path / "ray", _cfg(), executor_kind="ray", progress=False).run()
    local = [strip_volatile(r) for r in read_rows(tmp_path / "local" / "archive.jsonl")]
    remote_rows = read_rows(tmp_path / "ray" / "archive.jsonl")
    assert [strip_volatile(r) for r in remote_rows] == local
    assert len(local) == 12 and summary["trials"] == 12
    assert any(r["status"] == "ok" for r in remote_rows)
    # the file itself is in sample order
    assert [(r["step"], r["index"]) for r in remote_rows] == sorted((r["step"], r["index"]) for r in remote_rows)
