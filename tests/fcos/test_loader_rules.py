"""One set of rules for loaders (issue 25): types checked, nesting bounded; one line each,
before any work (COCO duplicate ids and an evaluation with nothing to score: test_fcos_hostile)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from nasfcos.cli.main import main as cli


def _err(capsys: pytest.CaptureFixture[str], verb: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith(f"nasfcos {verb}: error:"), err
    assert not any("Traceback" in ln for ln in err), err
    return err[-1]


@pytest.mark.parametrize(("meta", "message"), [
    ({"min_size": "abc"}, "'min_size' must be an integer in 32..8192, got 'abc'"),
    ({"min_size": 10**9}, "'min_size' must be an integer"),
    ({"eval_batch": True}, "'eval_batch' must be an integer"),
    ({"cat_ids": ["x"]}, "'cat_ids' must be a list of integers"),
    ({"class_names": [1, 2]}, "'class_names' must be a list of names"),
    ({"model_kwargs": "fpn_channels=8"}, "'model_kwargs' must be a mapping"),
    ({"num_classes": 5, "cat_ids": [1, 2]}, "'cat_ids' has 2 ids for 5 classes"),
])
@pytest.mark.parametrize("verb", ["eval", "predict"])
def test_weights_metadata_types_are_checked(meta: dict[str, Any], message: str, verb: str, tiny_model: Path,
                                            synth64: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from nasfcos.modelfile import load_model_file

    state = load_model_file(tiny_model).build().state_dict()
    torch.save({"model": state, **meta}, tmp_path / "w.pt")
    img = sorted((synth64 / "images").iterdir())[0]
    argv = (["eval", str(tiny_model), "--data", str(synth64)] if verb == "eval" else
            ["predict", str(tiny_model), str(img), "-o", str(tmp_path / "p")])
    assert cli([*argv, "--weights", str(tmp_path / "w.pt")]) == 2
    assert message in _err(capsys, verb)


def test_deep_search_settings_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s"
    out.mkdir()
    (out / "search.json").write_text("[" * 100_000 + "]" * 100_000)
    assert cli(["search", "--out", str(out), "--resume"]) == 2
    assert "unreadable search settings" in _err(capsys, "search")


@pytest.mark.parametrize(("state", "message"), [
    ({"step": "two"}, "'step' must be an integer"),
    ({"step": -1}, "'step' must be an integer"),
    ({"step": 3, "wall_s": float("nan")}, "'wall_s' must be a finite number"),
    ({"step": 1, "hook": print}, "unreadable checkpoint (UnpicklingError: Weights only load failed"),
])
def test_search_checkpoint_fields_are_checked(state: dict[str, Any], message: str, tmp_path: Path) -> None:
    from nasfcos.errors import CacheError
    from nasfcos.search.archive import load_checkpoint, save_checkpoint

    save_checkpoint(tmp_path / "checkpoint.pt", state)
    with pytest.raises(CacheError) as info:
        load_checkpoint(tmp_path / "checkpoint.pt")
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_nan_backbone_weights_are_named_not_blamed_on_the_learning_rate(
        tiny_model: Path, synth64: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nasfcos.fcos.train import backbone_state_dict
    from nasfcos.modelfile import load_model_file

    state = backbone_state_dict(load_model_file(tiny_model).build(num_classes=5))
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = torch.full_like(state[key], float("nan"))
    torch.save(state, tmp_path / "trunk.pt")
    assert cli(["train", str(tiny_model), "--data", str(synth64), "--out", str(tmp_path / "r"), "--iters", "1",
                "--backbone-weights", str(tmp_path / "trunk.pt"), "--no-progress", "--no-eval"]) == 2
    err = _err(capsys, "train")
    assert "trunk.pt" in err and "non-finite" in err and "--lr" not in err, err
