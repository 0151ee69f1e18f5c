"""The public Python API: one function per main verb, the same work as the command line.

``import nasfcos`` stays light: ``nasfcos.compile`` and the others are served from this
module on first use (the package's ``__getattr__``), and each function imports the library
it needs (torch, ONNX, ...) only when it is called.  Errors are :class:`nasfcos.NasfcosError`
with the same one-line messages as the CLI.

    import nasfcos
    nasfcos.compile("nas_fcos_fpn_head", "model.py", detector=True, backbone="tiny",
                    fpn_channels=8, head_channels=64, num_classes=3)
    nasfcos.export("model.py", "model.onnx", size=128)
    print(nasfcos.check("model.onnx").table())

The functions take paths (str or Path) and keyword options named like the CLI flags.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nasfcos.io import folder_lock


def _size(size: int | str | Sequence[int]) -> tuple[int, int]:
    """``800``, ``"800x1088"`` or ``(h, w)`` -> ``(h, w)``, by the command line's size rule."""
    import argparse

    from nasfcos.cli.args import size_hw
    from nasfcos.errors import NasfcosError

    text = size if isinstance(size, int | str) else "x".join(str(int(v)) for v in size)
    try:
        return size_hw(str(text))
    except argparse.ArgumentTypeError as exc:
        raise NasfcosError(str(exc)) from None


def compile(genotype: Any, out: str | Path | None = None, **options: Any) -> str:  # noqa: A001
    """Compile ``genotype`` (a shipped name such as ``"nas_fcos_fpn_head"``, a genotype file,
    or a :class:`~nasfcos.genotypes.Genotype`) into model.py source; written atomically to
    ``out`` when given.  ``options``: :class:`~nasfcos.compiler.CompileOptions` fields
    (``detector``, ``backbone``, ``fpn_channels``, ``head_channels``, ``num_classes``,
    ``in_channels``, ...)."""
    from nasfcos.compiler import compile_genotype, resolve_options
    from nasfcos.genotypes import Genotype, resolve_genotype
    from nasfcos.io import atomic_write_text

    g = genotype if isinstance(genotype, Genotype) else resolve_genotype(genotype)
    source = compile_genotype(g, resolve_options(**options))  # unknown names: one line naming them
    if out is not None:
        atomic_write_text(Path(out), source)
    return source


def export(model: str | Path, out: str | Path, *, size: int | str | Sequence[int] = 800,
           dynamic: bool = False, kind: str | None = None, weights: str | Path | None = None,
           precision: str = "fp32", calib: str | Path | None = None, data: str | Path | None = None,
           calib_images: int = 32, int8_target: str = "tensorrt", **options: Any) -> Any:
    """Export a compiled model.py to ONNX at ``size`` (``800``, ``"800x1088"`` or ``(h, w)``)
    with its manifest; ``precision`` ``fp16``/``int8`` builds reduced precision into the file
    (int8 calibrates on ``calib`` images or the ``data`` folder).  Returns the
    :class:`~nasfcos.runtime.export.ExportResult` (``onnx_path``, ``manifest``).  ``options``:
    other :class:`~nasfcos.runtime.export.ExportOptions` fields (``batch``, ``seed``, ...)."""
    from nasfcos.runtime.export import ExportOptions, export_onnx
    from nasfcos.runtime.precision import PrecisionOptions

    prec = None
    if precision != "fp32" or calib is not None or data is not None:
        prec = PrecisionOptions(precision=precision, calib=Path(calib) if calib else None,
                                data=Path(data) if data else None, calib_images=calib_images,
                                int8_target=int8_target)
    opts = ExportOptions(kind=kind, size=_size(size), dynamic=dynamic,
                         weights=Path(weights) if weights else None, precision=prec, **options)
    return export_onnx(model, out, opts)


def check(artifact: str | Path, against: str | Path | None = None, **options: Any) -> Any:
    """Compare an exported model with its PyTorch source on seeded inputs; returns the
    :class:`~nasfcos.runtime.check.CheckReport` (``.ok``, ``.table()``, ``.to_dict()``).
    ``options``: ``sizes``, ``batch``, ``seed``, ``tol``, ``kind``, ``backend``, ``threads``."""
    from nasfcos.runtime.check import check_artifact

    if "sizes" in options and options["sizes"] is not None:
        options["sizes"] = [_size(s) for s in options["sizes"]]
    return check_artifact(artifact, against, **options)


def bench(model: str | Path, out: str | Path | None = None, *,
          sizes: Sequence[int | str | Sequence[int]] | None = None, **options: Any) -> dict[str, Any]:
    """Latency benchmark of model.py / .onnx / .engine across backends; returns the report
    (``rows`` with medians and intervals); ``out`` writes report.json/.md/.png there.
    ``options``: :class:`~nasfcos.runtime.bench.BenchConfig` fields (``backends``,
    ``runs``, ``warmup``, ``threads``, ``device``, ...)."""
    from nasfcos.runtime.bench import BenchConfig, run_benchmark, write_report

    if sizes is not None:
        options["sizes"] = [_size(s) for s in sizes]
    report = run_benchmark(model, BenchConfig(**options))
    if out is not None:
        write_report(report, out)
    return report


def train(model: str | Path, out: str | Path, *, data: str | Path | None = None,
          progress: bool = False, **options: Any) -> dict[str, Any]:
    """Train a compiled detector with FCOS losses into the run folder ``out`` (checkpoints,
    metrics.jsonl, final.pt); returns the run summary.  ``options``:
    :class:`~nasfcos.fcos.train.TrainConfig` fields (``iters``, ``batch``, ``lr``,
    ``min_size``, ``max_size``, ``eval``, ``resume``, ...)."""
    from nasfcos.fcos.train import TrainConfig
    from nasfcos.fcos.train import train as run_training

    cfg = TrainConfig(model=str(model), out=str(out), data=str(data) if data else None, **options)
    with folder_lock(out, "train"):  # the run folder is this call's (as the command line's)
        return run_training(cfg.validate(), progress=progress)


def evaluate(model: str | Path, data: str | Path, *, weights: str | Path | None = None,
             split: str = "val", min_size: int | None = None, max_size: int | None = None,
             batch: int | None = None, backend: str | None = None, device: str = "cpu",
             max_images: int | None = None) -> dict[str, Any]:
    """COCO mAP of a detector (model.py + ``weights``, .onnx, .engine) on a data folder's
    ``split``; sizes and batch default to what the model was trained with.  Returns the
    metrics (``AP``, ``AP50``, ..., ``summary``)."""
    from nasfcos.fcos.evaluate import EvalConfig
    from nasfcos.fcos.evaluate import evaluate as run_eval
    from nasfcos.runtime.predict import DEFAULT_MAX_SIZE, DEFAULT_MIN_SIZE, model_meta
    from nasfcos.runtime.runners import make_runner

    path = Path(model)
    meta = model_meta(path, weights)
    min_size = min_size or int(meta.get("min_size", DEFAULT_MIN_SIZE))
    max_size = max_size or int(meta.get("max_size", max(DEFAULT_MAX_SIZE, min_size)))
    opts: dict[str, Any] = {"kind": "detector", "weights": weights} if path.suffix == ".py" else {}
    runner = make_runner(path, backend, device, **opts)
    try:
        cfg = EvalConfig(min_size=min_size, max_size=max_size,
                         batch_size=batch or int(meta.get("eval_batch", 8)))
        k = meta.get("num_classes")
        return run_eval(runner, data=str(data), split=split, cfg=cfg, progress=False,
                        max_images=max_images, model_cat_ids=meta.get("cat_ids"),
                        model_num_classes=int(k) if k is not None else None)
    finally:
        runner.close()


def predict(model: str | Path, images: str | Path | Sequence[str | Path],
            out: str | Path | None = None, **options: Any) -> dict[str, Any]:
    """Detect objects in image files or folders; returns the predictions (per image: boxes
    in original pixels, scores, labels, class names); ``out`` also writes predictions.json and
    the drawn images.  ``options``: ``weights``, ``score_thresh``, ``min_size``,
    ``max_size``, ``backend``, ``device``, ``draw``."""
    from nasfcos.runtime.predict import predict as run_predict

    if isinstance(images, (str, Path)):
        images = [images]
    with folder_lock(out, "predict") if out is not None else contextlib.nullcontext():
        return run_predict(model, images, out, log=options.pop("log", lambda _line: None), **options)


__all__ = ["bench", "check", "compile", "evaluate", "export", "predict", "train"]
