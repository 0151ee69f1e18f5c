"""The detector, post-processing included, exports with the dynamo exporter and runs in ONNX Runtime."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")


def _compare(session: object, det: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        want = [t.numpy() for t in det(x)]
    got = session.run(None, {"images": x.numpy()})
    assert [g.shape for g in got] == [w.shape for w in want]
    assert got[2].dtype == np.int64
    np.testing.assert_allclose(got[1], want[1], atol=1e-5)
    np.testing.assert_array_equal(got[2], want[2])
    np.testing.assert_allclose(got[0], want[0], atol=1e-3)
    assert (want[1] > 0).any()


@pytest.mark.slow
def test_dynamo_export_runs_in_onnxruntime_with_dynamic_batch_and_size(
    tmp_path: Path, baseline_detector_module: ModuleType, tiny
) -> None:
    # the baseline's Decoder keeps the export small; the post-processing is the part under test
    det = tiny.detector(baseline_detector_module, fpn_channels=8, pre_nms_top_n=50, max_detections=10)
    # example larger than 128 px on both sides, so no level is 1 x 1 (see Detector's docstring)
    example = tiny.images(2, (160, 192))
    path = tmp_path / "detector.onnx"
    dynamic = {0: torch.export.Dim("batch", min=1, max=16), 2: torch.export.Dim.DYNAMIC,
               3: torch.export.Dim.DYNAMIC}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(det, (example,), str(path), dynamo=True, opset_version=19,
                          input_names=["images"], output_names=["boxes", "scores", "labels"],
                          dynamic_shapes=({0: dynamic[0], 2: dynamic[2], 3: dynamic[3]},), verbose=False)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    _compare(session, det, example)
    _compare(session, det, tiny.images(1, (96, 224), seed=4))  # other batch and size
