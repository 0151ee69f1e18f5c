"""Latency-aware search: unit counts and predictor sums against hand-computed tables, the
latency-table verb, the reward's sign, Pareto extraction, and the search's use of them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from nasfcos.cli.main import main as _main
from nasfcos.errors import NasfcosError
from nasfcos.genotypes import load_paper_genotype, parse_genotype, sample_genotype
from nasfcos.search.archive import read_rows
from nasfcos.search.latency import (
    LatencyTable,
    TableSpec,
    decoder_units,
    latency_reward,
    load_table,
    pareto_front,
    predict_ms,
)
from nasfcos.search.loop import Search, SearchConfig
from nasfcos.search.metrics import kendall_tau, mape
from nasfcos.search.ppo import PPOConfig


def cli_main(argv: list[str]) -> int:
    """The CLI's exit status (argparse's own errors exit 2 through SystemExit)."""
    try:
        return _main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


#: Every FPN block reads c5 through skips and sums; the head is all skips.
SKIPS = parse_genotype({
    "format": "nasfcos-genotype/1", "name": "skips",
    "fpn": [{"inputs": [3, 3], "ops": ["skip", "skip"], "agg": "sum"}] * 7,
    "head": {"kind": "sequential", "layers": ["skip"] * 6}, "share": [0, 0, 0, 0, 0],
})


def test_units_and_sums_by_hand() -> None:
    # 7 blocks on c5 -> all collected: p5, p4, p3 = blocks 4, 5, 6; blocks 0-3 dangle (4 adds per
    # level, all at stride 32); p4 and p3 are then resized to strides 16 and 8.
    assert decoder_units(SKIPS) == {
        "adapter/c5": 1, "fpn_agg/sum/s32": 7, "add/s32": 12, "resize/s32/s8": 1, "resize/s32/s16": 1,
        "p6p7": 1, "predict/s8": 1, "predict/s16": 1, "predict/s32": 1, "predict/s64": 1, "predict/s128": 1,
    }
    entries = {"adapter/c5": 1.0, "fpn_agg/sum/s32": 10.0, "add/s32": 100.0, "resize/s32/s8": 1000.0,
               "resize/s32/s16": 1e4, "p6p7": 1e5, "predict/s8": 1e6, "predict/s16": 2e6, "predict/s32": 3e6,
               "predict/s64": 4e6, "predict/s128": 5e6, "unused": 7.0}
    table = LatencyTable(TableSpec(fpn_channels=16, head_channels=16), entries, 0.5, {})
    assert predict_ms(SKIPS, table) == 0.5 + 1 + 70 + 1200 + 1000 + 1e4 + 1e5 + 15e6
    # the paper's genotype (the compiled file, checked by eye): 8 deformable ops at stride 32, 3 at 8,
    # 1 at 16; sequential head with 2 deformable, 1 conv3x3, 1 conv1x1 per branch and level
    u = decoder_units(load_paper_genotype("nas_fcos_fpn_head"))
    assert (u["fpn_op/deform_conv_3x3/s32"], u["fpn_op/deform_conv_3x3/s8"], u["fpn_op/deform_conv_3x3/s16"]) == (8, 3, 1)
    assert (u["fpn_agg/concat/s32"], u["fpn_agg/concat/s8"], u["resize/s32/s8"], u["add/s8"]) == (4, 3, 4, 2)
    assert all(u[f"head_op/deform_conv_3x3/s{s}"] == 4 and u[f"head_op/conv_1x1/s{s}"] == 2
               for s in (8, 16, 32, 64, 128))
    assert "bridge/s8" not in u and decoder_units(SKIPS, bridge=True)["bridge/s8"] == 1
    with pytest.raises(NasfcosError, match="no entry"):
        predict_ms(load_paper_genotype("nas_fcos_fpn_head"), table)


def test_reward_sign_pareto_and_statistics() -> None:
    r = -2.0
    assert latency_reward(r, 20.0, 10.0) < r < latency_reward(r, 5.0, 10.0)  # slower loses, faster gains
    assert latency_reward(r, 10.0, 10.0) == r
    assert latency_reward(r, 20.0, 10.0, 0.07) == pytest.approx(r - 0.07 * math.log(2))
    assert latency_reward(-5.0, 40.0, 10.0) < latency_reward(-5.0, 20.0, 10.0)  # direction kept below 0
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(NasfcosError, match="positive"):
            latency_reward(r, 5.0, bad)
    pts = [{"id": k, "proxy_reward": pr, "latency_ms": lat}
           for k, (pr, lat) in enumerate([(-2.0, 10), (-1.0, 20), (-1.5, 15), (-1.8, 25), (-0.5, 40), (-1.0, 30)])]
    assert [p["id"] for p in pareto_front(pts)] == [0, 2, 1, 4]
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0 and kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    assert mape([11.0, 9.0], [10.0, 10.0]) == pytest.approx(10.0)


@pytest.fixture(scope="module")
def small_table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lat") / "table.json"
    rc = cli_main(["search", "latency-table", "--backend", "torch", "--size", "64", "--fpn-channels", "8",
                   "--head-channels", "64", "--num-classes", "3", "--backbone", "tiny", "--runs", "1",
                   "--warmup", "0", "--clock", "cpu", "--quiet", "-o", str(path)])
    assert rc == 0
    return path


def test_latency_table_verb_covers_every_genotype(small_table: Path) -> None:
    table = load_table(small_table)
    assert table.spec.size == (64, 64) and table.spec.backend == "torch" and "CPU time" in table.meta["clock"]
    doc = json.loads(small_table.read_text())
    assert doc["format"] == "nasfcos-latency-table/1" and len(doc["entries"]) >= 80
    for seed in range(6):
        for kind in ("sequential", "dag", "fcos"):
            ms = predict_ms(sample_genotype(seed, kind), table)
            assert math.isfinite(ms) and ms > table.overhead_ms
    with pytest.raises(NasfcosError, match="not 800x800"):
        table.check_for(size=(800, 800))
    with pytest.raises(NasfcosError, match="backend torch, not onnxruntime"):
        table.check_for(backend="onnxruntime")


def test_latency_aware_toy_search(small_table: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = SearchConfig(preset="toy", trials=16, batch_size=8, seed=0, toy_noise=0.1,
                       latency_table=str(small_table), latency_target=1.0, latency_weight=0.5,
                       ppo=PPOConfig(minibatch_size=8, epochs=1))
    summary = Search(tmp_path / "s", cfg, workers=0, progress=False, plot_every_s=1e9).run()
    table = load_table(small_table)
    for row in read_rows(tmp_path / "s" / "archive.jsonl"):
        if row.status != "ok":
            continue
        lat = predict_ms(parse_genotype(row.genotype), table)
        assert row.extra["latency_ms"] == pytest.approx(lat, abs=1e-4)
        assert row.reward == pytest.approx(row.extra["proxy_reward"] - 0.5 * math.log(lat / 1.0), abs=1e-4)
    front = summary["pareto"]["front"]
    assert front and all(a["latency_ms"] <= b["latency_ms"] and a["proxy_reward"] < b["proxy_reward"]
                         for a, b in zip(front, front[1:], strict=False))
    assert (tmp_path / "s" / "pareto.png").is_file()
    assert json.loads((tmp_path / "s" / "summary.json").read_text())["pareto"]["front"] == front
    # another size or backend than asked for; bad targets; a different table on resume
    out = str(tmp_path / "x")
    for args in (["--latency-size", "800x800"], ["--latency-backend", "onnxruntime"], ["--latency-target", "0"],
                 ["--latency-target", "-3"], ["--latency-target", "nan"]):
        assert cli_main(["search", "--preset", "toy", "--trials", "8", "--out", out, "--quiet",
                         "--latency-table", str(small_table), *args]) == 2, args
        assert "error:" in capsys.readouterr().err
    assert cli_main(["search", "--preset", "toy", "--trials", "8", "--out", out, "--quiet",
                     "--latency-target", "5"]) == 2
    assert "--latency-table: is needed with a latency target" in capsys.readouterr().err
    other = tmp_path / "other.json"
    other.write_text(json.dumps(dict(json.loads(small_table.read_text()), size=[128, 128])))
    assert cli_main(["search", "--out", str(tmp_path / "s"), "--resume", "--trials", "24", "--quiet",
                     "--latency-table", str(other)]) == 2
    assert "measured for size [128, 128], this search for [64, 64]" in capsys.readouterr().err
