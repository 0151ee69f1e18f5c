"""Output for logs and people (issue 26): no carriage-return bars off a TTY, warnings on one
line, drawn predictions that can be read, a report plot at one size, a precision plot."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from nasfcos.cli.main import _one_line_warning


def test_progress_off_a_tty_is_lines_not_bars(tmp_path: Path, capsys) -> None:
    from nasfcos.fcos.synth import SynthConfig, write_synthetic
    from nasfcos.progress import LineProgress, progress_bar, progress_iter

    write_synthetic(tmp_path / "s", SynthConfig(images=4, size=32, seed=0), progress=True)
    assert list(progress_iter(range(3), desc="eval", unit="batch")) == [0, 1, 2]
    err = capsys.readouterr().err
    assert "\r" not in err and "synth: 4/4 img" in err and "eval: 3/3 batch" in err
    assert isinstance(progress_bar(10, desc="feature cache", unit="img"), LineProgress)  # the cache's


def test_warnings_are_one_line_without_source() -> None:
    line = _one_line_warning("eval")(UserWarning("no --weights\nsecond line"), UserWarning,
                                     "/x/fcos_cmds.py", 12, "warnings.warn(...)")
    assert line == "nasfcos eval: warning: no --weights\n"
    assert _one_line_warning("bench")("old", DeprecationWarning, "f.py", 1).endswith(
        "(DeprecationWarning)\n")


def _pixels(png: bytes, color: tuple[int, int, int]) -> int:
    arr = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    return int((arr == np.array(color, np.uint8)).all(-1).sum())


def test_drawn_boxes_are_thick_and_labels_do_not_cover_each_other() -> None:
    from nasfcos.runtime.predict import draw_detections

    img = Image.new("RGB", (600, 400), (255, 255, 255))
    dets = [{"box": [100, 150, 300, 350], "score": s, "label": k, "class_name": f"class{k}"}
            for k, s in ((0, 0.9), (1, 0.8), (2, 0.7))]
    png = draw_detections(img, dets)
    arr = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    red = (230, 25, 75)  # label 0, drawn on top
    assert (arr[250, 100:103] == red).all()  # the outline is at least 3 px wide here
    # the two lower-scored labels are still visible (their tags were moved, not covered)
    assert _pixels(png, (60, 180, 75)) > 150 and _pixels(png, (0, 130, 200)) > 150


def _bench_report(sizes: list[list[int]]) -> dict:
    rows = [{"backend": b, "size": s, "status": "ok", "median_ms": m, "min_ms": m * 0.9,
             "p90_ms": m * 1.2} for s in sizes for b, m in (("torch", 30.0), ("onnxruntime", 20.0))]
    return {"results": rows, "model": {"path": "model.py"}, "config": {"batch": 1, "device": "cpu"}}


def test_report_plot_at_one_size_draws_bars() -> None:
    from nasfcos.runtime.bench import plot_report

    one = plot_report(_bench_report([[128, 128]]))
    blue = (31, 119, 180)  # matplotlib's C0
    assert _pixels(one, blue) > 5000  # a bar, not a lone dot
    several = plot_report(_bench_report([[128, 128], [256, 256]]))
    assert _pixels(several, blue) < 5000  # lines and markers over sizes, as before


def test_precision_table_has_a_plot() -> None:
    from nasfcos.runtime.bench import plot_precision

    rows = [{"backend": "onnxruntime", "precision": p, "status": "ok", "AP": ap, "median_ms": ms,
             "bytes": 2e6, "agreement": {"match_rate": mr}}
            for p, ap, ms, mr in (("fp32", 0.40, 30, 1.0), ("fp16", 0.40, 25, 0.99),
                                  ("int8", 0.37, 12, 0.85))]
    rows.append({"backend": "tensorrt", "precision": "fp16", "status": "skipped"})
    png = plot_precision({"rows": rows, "model": "model.py", "config": {"size": [128, 128]}})
    assert Image.open(io.BytesIO(png)).size == (1000, 420)
    assert _pixels(png, (31, 119, 180)) > 1000
