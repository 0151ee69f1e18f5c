"""Ctrl-C during training saves last.pt at that iteration and says how to resume (issue 26)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

import nasfcos.fcos.train as train_mod
from nasfcos.fcos.train import TrainConfig, load_checkpoint, train


def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(
        tiny_model: Path, synth64: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    real, calls = train_mod.fcos_losses, []

    def losses(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # Ctrl-C in the middle of iteration 3 (index 2)
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "fcos_losses", losses)
    out = tmp_path / "run"
    cfg = TrainConfig(model=str(tiny_model), out=str(out), data=str(synth64), iters=8, batch=2,
                      min_size=64, max_size=64, workers=0, log_every=1, eval=False,
                      checkpoint_every=100)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back
    err = capsys.readouterr().err
    assert "interrupted after iteration 3 of 8" in err
    assert f"resume with: nasfcos train {tiny_model} --out {out} --resume" in err
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["iter"] == 3 and isinstance(ckpt["model"], dict)
    assert not (out / "final.pt").exists()
    monkeypatch.setattr(train_mod, "fcos_losses", real)
    summary = train(TrainConfig(**{**cfg.__dict__, "resume": True}), progress=False)
    assert summary["start_iter"] == 3 and (out / "final.pt").is_file()
    assert torch.isfinite(torch.tensor(summary["final"]["loss"]))
