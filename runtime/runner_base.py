"""The runner interface every backend implements (numpy arrays in, numpy arrays out); see
:mod:`nasfcos.runtime.runners` for the backends.  Kept apart so that optional backends
(:mod:`nasfcos.runtime.trt`) build on it without importing the other backends."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nasfcos.errors import NasfcosError
from nasfcos.runtime.models import DECODER_INPUTS, DETECTOR_INPUTS


def kind_from_inputs(names: Sequence[str]) -> str | None:
    """Model kind from tensor names: ``images`` -> detector, ``c2..c5`` -> decoder, else None."""
    if tuple(names) == DETECTOR_INPUTS:
        return "detector"
    if tuple(names) == DECODER_INPUTS:
        return "decoder"
    return None


def image_dims(dims: Sequence[Any], where: object) -> list[Any]:
    """The 'images' input's dims, refused in one line unless it is rank 4 (N, 3, H, W)."""
    dims = list(dims)
    if len(dims) != 4:
        shown = ", ".join("?" if d is None else str(d) for d in dims)
        raise NasfcosError(f"{where}: input images has shape [{shown}]; a detector's images "
                           "input must be rank 4 (batch, 3, height, width)")
    return dims


class Runner:
    """Base class: see the module docstring.  Subclasses implement bind/run/fetch."""

    backend: str = ""

    def __init__(self) -> None:
        self.device = "cpu"
        self.input_names: list[str] = []
        self.output_names: list[str] = []
        #: a fixed input (H, W) / batch of a static export, else None (see nasfcos.fcos.evaluate)
        self.input_size: tuple[int, int] | None = None
        self.batch_size: int | None = None
        #: ``decoder`` / ``detector`` when the tensor names say so, else None.
        self.kind: str | None = None
        #: Channels of c2..c5 for decoders, when known.
        self.in_channels: tuple[int, ...] | None = None
        #: Seconds spent preparing (export, session or engine creation).
        self.setup_seconds = 0.0
        #: A temporary folder the runner owns until :meth:`close` (see :meth:`_export`).
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    # -- the simple interface -------------------------------------------------------------
    def __call__(self, *arrays: np.ndarray) -> list[np.ndarray]:
        """Run once on ``arrays`` (one per input, in ``input_names`` order); outputs as numpy."""
        self.bind(*arrays)
        self.run()
        self.synchronize()
        return self.fetch()

    # -- the split interface used by the benchmark ----------------------------------------
    def bind(self, *arrays: np.ndarray) -> None:
        raise NotImplementedError

    def run(self) -> None:
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait for the device (no-op on CPU)."""

    def fetch(self) -> list[np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        """Release sessions, engines and device memory (subclasses call this last)."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _export(self, model: Path, export: dict[str, Any] | None,
                size: tuple[int, int] = (256, 256)) -> Any:
        """A model.py given to an ONNX engine, exported into a temporary folder this runner
        owns: dynamic shapes traced at ``size`` unless ``export`` (ExportOptions fields) says
        otherwise; the :class:`~nasfcos.runtime.export.ExportResult`."""
        from nasfcos.runtime.export import ExportOptions, export_onnx

        self._tmp = tempfile.TemporaryDirectory(prefix="nasfcos-onnx-")
        opts = ExportOptions(**{"dynamic": True, "size": size, **(export or {})})
        return export_onnx(model, Path(self._tmp.name) / (model.stem + ".onnx"), opts)

    def cuda_stream(self) -> Any:
        """The torch CUDA stream the work runs on (CUDA-event timing), or None (wall clock)."""
        return None

    def info(self) -> dict[str, Any]:
        """Backend details for reports (provider, threads, precision, ...)."""
        return {"backend": self.backend, "device": self.device}

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _set_io(self, inputs: Sequence[str], outputs: Sequence[str],
                dims: Sequence[Sequence[int | None] | None], where: object) -> None:
        """Names and kind, and what static dims fix: a detector's batch and (H, W), a decoder's
        c2..c5 widths (``dims``: per input, None for a dynamic dim or an unknown rank)."""
        self.input_names, self.output_names = list(inputs), list(outputs)
        self.kind = kind_from_inputs(self.input_names)
        if self.kind == "detector" and dims[0] is not None:
            shape = image_dims(dims[0], where)
            if isinstance(shape[0], int):
                self.batch_size = shape[0]
            if isinstance(shape[2], int) and isinstance(shape[3], int):
                self.input_size = (shape[2], shape[3])
        elif self.kind == "decoder":
            chans = [d[1] if d is not None else None for d in dims]
            if all(isinstance(c, int) for c in chans):
                self.in_channels = tuple(chans)  # type: ignore[arg-type]

    def _check_arity(self, arrays: Sequence[np.ndarray]) -> None:
        if len(arrays) != len(self.input_names):
            raise NasfcosError(f"{self.backend}: expected {len(self.input_names)} inputs "
                               f"({', '.join(self.input_names)}), got {len(arrays)}")

    def _check_ranges(self, arrays: Sequence[np.ndarray]) -> None:
        """Reject inputs outside the ranges a dynamic export is valid for (its manifest)."""
        ranges: dict[str, Any] = getattr(self, "_ranges", {})
        for name, a in zip(self.input_names, arrays, strict=True):
            for axis, (lo, hi) in ranges.get(name, {}).items():
                d = a.shape[int(axis)] if int(axis) < a.ndim else None
                if d is None:
                    continue
                if (lo is not None and d < lo) or (hi is not None and d > hi):
                    raise NasfcosError(
                        f"{self.backend}: input {name} dim {axis} = {d} is outside the range "
                        f"[{lo}, {hi if hi is not None else 'inf'}] this dynamic export is "
                        "valid for; re-export with --size near the sizes you run")


__all__ = ["Runner", "kind_from_inputs"]
