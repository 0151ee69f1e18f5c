"""The comparison rules of the parity check (no models needed)."""

from __future__ import annotations

import math

import numpy as np

from nasfcos.runtime.check import Tolerance, compare_outputs, compare_tensor

TOL = Tolerance(atol=1e-4, rtol=1e-3)


def test_compare_tensor_scale_relative() -> None:
    ref = np.array([1000.0, 0.0, -2.0], dtype=np.float32)
    ok = compare_tensor("x", ref, ref + np.array([0.5, 0.0, 0.0], dtype=np.float32), TOL)
    assert ok.ok and math.isclose(ok.max_abs, 0.5) and math.isclose(ok.max_rel, 5e-4)
    bad = compare_tensor("x", ref, ref + np.array([0.0, 2.0, 0.0], dtype=np.float32), TOL)
    assert not bad.ok and bad.max_abs == 2.0


def test_compare_tensor_shape_and_nan() -> None:
    ref = np.zeros((2, 3), dtype=np.float32)
    assert not compare_tensor("x", ref, np.zeros((3, 2), np.float32), TOL).ok
    got = ref.copy()
    got[0, 0] = np.nan
    res = compare_tensor("x", ref, got, TOL)
    assert not res.ok and "non-finite" in res.note


def _dets() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    boxes = np.array([[[0, 0, 10, 10], [5, 5, 20, 20], [30, 30, 40, 40], [0, 0, 0, 0]]],
                     dtype=np.float32)
    scores = np.array([[0.9, 0.5, 0.5, 0.0]], dtype=np.float32)
    labels = np.array([[1, 2, 3, -1]], dtype=np.int64)
    return boxes, scores, labels


def test_detections_order_insensitive() -> None:
    names = ("boxes", "scores", "labels")
    b, s, lab = _dets()
    perm = [0, 2, 1, 3]  # the two equal scores swap places
    got = (b[:, perm], s[:, perm], lab[:, perm])
    checks = compare_outputs(names, (b, s, lab), got, TOL)
    assert all(c.ok for c in checks), checks
    assert "order" in checks[0].note


def test_detections_moved_box_fails() -> None:
    names = ("boxes", "scores", "labels")
    b, s, lab = _dets()
    moved = b.copy()
    moved[0, 0] += 3.0
    checks = compare_outputs(names, (b, s, lab), (moved, s, lab), TOL)
    assert not all(c.ok for c in checks)
