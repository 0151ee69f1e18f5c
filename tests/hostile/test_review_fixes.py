"""Cases an adversarial review of the merged round-3 work found: a link planted at a lock
path, an output folder that is a link, a deeply nested top index, a pickle's refusal."""

from __future__ import annotations

import pickle

import pytest

from nasfcos.errors import NasfcosError
from nasfcos.io import folder_lock, staged_folder


def test_a_link_at_the_lock_path_is_refused_and_its_target_kept(tmp_path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious data\n")
    (tmp_path / ".out.nasfcos-lock").symlink_to(victim)
    with pytest.raises(NasfcosError, match="symbolic link"):
        with folder_lock(tmp_path / "out", "data"):
            pass
    assert victim.read_text() == "precious data\n"


def test_a_staged_folder_through_a_link_lands_where_it_points(tmp_path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with staged_folder(tmp_path / "link") as tmp:
        (tmp / "a.txt").write_text("x")
    assert (real / "a.txt").read_text() == "x" and (tmp_path / "link").is_symlink()


def test_a_deeply_nested_top_index_is_one_line(tmp_path) -> None:
    from nasfcos.search.loop import _indexed_files

    (tmp_path / "top.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(NasfcosError, match="not a nasfcos top index"):
        _indexed_files(tmp_path)


class _Payload:
    def __reduce__(self):
        return (print, ("never",))


def test_a_refused_pickle_gives_no_unsafe_advice(tmp_path) -> None:
    from nasfcos.weights import load_weights_file

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"model": _Payload()}))
    with pytest.raises(NasfcosError) as info:
        load_weights_file(evil)
    text = str(info.value)
    assert "\n" not in text and "weights_only set to False" not in text and "Re-running" not in text


def test_a_check_that_compared_nothing_writes_valid_json_and_says_so() -> None:
    import json
    import math

    from nasfcos.runtime.check import RAW_UNREAD, CheckReport, OutputCheck

    report = CheckReport(artifact="m.onnx", reference="model.py", backend="openvino",
                         reference_backend="torch", kind="detector", sizes=[[96, 96]], seed=0)
    report.outputs.append(OutputCheck(RAW_UNREAD, [], math.inf, math.inf, 1e-4, 1e-4, False,
                                      "nothing was compared"))
    report.agreement.append({"size": [96, 96], "raw_heads_compared": True})
    doc = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert doc["ok"] is False and doc["outputs"][0]["max_abs"] is None
    table = report.table()
    assert "compared nothing" in table and "were compared instead" not in table
