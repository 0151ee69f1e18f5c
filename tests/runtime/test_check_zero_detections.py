"""A check with no detection on either side compares the raw head outputs, or fails: it never
says "ok" having compared nothing (issue 26 item 1)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from nasfcos.runtime.check import TOLERANCES, check_artifact, compare_raw_heads
from nasfcos.runtime.models import make_inputs
from nasfcos.runtime.runners import OrtRunner, TorchRunner


def test_zero_detections_compare_raw_heads(tiny_detector_onnx):
    report = check_artifact(tiny_detector_onnx)  # random weights: no score passes 0.05
    assert report.agreement[0]["reference"] == 0 and report.agreement[0]["raw_heads_compared"]
    raw = [o for o in report.outputs if o.name.startswith("raw ")]
    assert len(raw) == 15 and all(o.ok for o in raw)
    assert "raw head outputs" in report.table() and report.ok


@pytest.fixture(scope="module")
def runners(tiny_detector, tiny_detector_onnx):
    art = OrtRunner(tiny_detector_onnx)
    same = TorchRunner(tiny_detector, kind="detector", seed=0, optimize=False)
    other = TorchRunner(tiny_detector, kind="detector", seed=1, optimize=False)
    yield art, same, other
    for r in (art, same, other):
        r.close()


def test_raw_heads_catch_changed_weights(runners):
    art, same, other = runners
    images = make_inputs("detector", (160, 160), 1, 0)[0]
    assert all(c.ok for c in compare_raw_heads(art, same, images, TOLERANCES["fp32"]))
    bad = compare_raw_heads(art, other, images, TOLERANCES["fp32"])
    assert not all(c.ok for c in bad)


def test_unreadable_intermediates_fail_not_pass(runners):
    art, same, _ = runners
    engine = SimpleNamespace(backend="tensorrt", session=None, path=None)
    images = make_inputs("detector", (160, 160), 1, 0)[0]
    (row,) = compare_raw_heads(engine, same, images, TOLERANCES["int8"])
    assert not row.ok and "nothing was compared" in row.note
    (row,) = compare_raw_heads(art, SimpleNamespace(), images, TOLERANCES["fp32"])
    assert not row.ok


def test_wrong_kind_flag_names_the_model_kind(tiny_detector_onnx):
    from nasfcos.errors import NasfcosError

    with pytest.raises(NasfcosError, match="a detector export .*not a decoder: drop --decoder"):
        check_artifact(tiny_detector_onnx, kind="decoder")
