"""Open a model artifact once: what it is, what it takes, and whether it is what was exported.

:func:`open_artifact` is the one place a path becomes a model artifact: its form (a compiled
``model.py``, an ONNX file or a TensorRT engine, from the file name), its manifest (validated,
:class:`~nasfcos.runtime.manifest.Manifest`), the model kind, input names, and the image size
and batch a static export fixes.  A ``model.py`` is imported once here (its
:class:`~nasfcos.runtime.models.LoadedModel` travels with the artifact).  An exported file is
hashed and compared with its manifest: ``strict`` refuses a file changed since export, else
:attr:`Artifact.changed` says how it differs and :attr:`Artifact.sha256` is the file's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasfcos.errors import NasfcosError
from nasfcos.io import regular_file, sha256_file
from nasfcos.runtime.manifest import Manifest
from nasfcos.runtime.runner_base import kind_from_inputs

#: File name ending -> form.
FORMS: dict[str, str] = {".py": "model.py", ".onnx": "onnx", ".engine": "engine",
                         ".plan": "engine"}
#: Backend that runs each form by default.
FORM_BACKENDS: dict[str, str] = {"model.py": "torch", "onnx": "onnxruntime",
                                 "engine": "tensorrt"}


@dataclass
class Artifact:
    """A model artifact opened by :func:`open_artifact`."""

    path: Path
    form: str
    manifest: Manifest | None = None
    kind: str | None = None
    input_names: tuple[str, ...] = ()
    #: (H, W) a static export fixes; None for a model.py or a dynamic export
    size: tuple[int, int] | None = None
    #: batch a static export fixes; None when free
    batch: int | None = None
    in_channels: tuple[int, ...] | None = None
    #: sha256 of the file itself (None for a model.py)
    sha256: str | None = None
    #: how the file differs from its manifest ([] when it matches or has none)
    changed: list[str] = field(default_factory=list)
    #: the imported model (model.py only)
    model: Any = None

    @property
    def backend(self) -> str:
        """The backend that runs this form by default."""
        return FORM_BACKENDS[self.form]

    @property
    def is_model_file(self) -> bool:
        return self.form == "model.py"

    def summary(self) -> dict[str, Any]:
        """What a report records about the artifact."""
        out: dict[str, Any] = {"path": str(self.path), "form": self.form, "kind": self.kind}
        if self.sha256 is not None:
            out["sha256"] = self.sha256
        if self.changed:
            out["changed_since_export"] = self.changed
        if self.manifest is not None:
            out["genotype"] = self.manifest.raw.get("genotype")
            out["widths"] = self.manifest.raw.get("widths")
        if self.model is not None:
            out.update({k: v for k, v in self.model.info.items() if k != "state_dict_sha256"})
        return out


def form_of(path: str | Path) -> str:
    """The form of an artifact from its file name; a one-line error for anything else."""
    path = Path(path)
    form = FORMS.get(path.suffix.lower())
    if form is None:
        raise NasfcosError(f"{path}: not a model artifact (expected {', '.join(FORMS)})")
    return form


def _from_graph(art: Artifact) -> None:
    """Input names, kind, fixed size/batch and channels from the ONNX graph (or the
    manifest's record of it)."""
    if art.manifest is not None and art.manifest.inputs:
        inputs = art.manifest.inputs
    elif art.form == "onnx":
        import onnx

        from nasfcos.runtime.export import graph_io

        try:
            inputs = graph_io(onnx.load(str(art.path), load_external_data=False))[0]
        except Exception as exc:
            raise NasfcosError(f"{art.path}: not a readable ONNX file ({type(exc).__name__})"
                               ) from exc
    else:
        return
    art.input_names = tuple(str(t["name"]) for t in inputs)
    art.kind = art.kind or kind_from_inputs(art.input_names)
    shape = list(inputs[0]["shape"]) if inputs else []
    if len(shape) == 4 and isinstance(shape[0], int) and shape[0] > 0:
        art.batch = shape[0]
    if len(shape) == 4 and all(isinstance(d, int) for d in shape[2:]):
        scale = 4 if art.kind == "decoder" else 1
        art.size = (shape[2] * scale, shape[3] * scale)
    if art.manifest is not None and art.manifest.size and not art.manifest.dynamic:
        art.size = art.manifest.size  # exact (a decoder's c2 is the size / 4, rounded up)
    if art.kind == "decoder" and all(len(t["shape"]) == 4 and isinstance(t["shape"][1], int)
                                     for t in inputs):
        art.in_channels = tuple(int(t["shape"][1]) for t in inputs)


def open_artifact(path: str | Path, *, kind: str | None = None, seed: int = 0,
                  weights: str | Path | None = None, strict: bool = True) -> Artifact:
    """Open ``path`` (model.py / .onnx / .engine) once; see the module docstring.

    ``kind``, ``seed``, ``weights``: how to build a model.py.  ``strict``: refuse an
    exported file that no longer matches its manifest (else record it in ``changed``).
    """
    path = regular_file(path, "model artifact")
    art = Artifact(path=path, form=form_of(path))
    if art.is_model_file:
        from nasfcos.runtime.models import load_model

        art.model = load_model(path, kind, seed=seed, weights=weights)
        art.kind, art.input_names = art.model.kind, tuple(art.model.input_names)
        art.in_channels = art.model.in_channels
        return art
    art.manifest = Manifest.find(path)
    art.sha256 = sha256_file(path)
    if art.manifest is not None:
        from nasfcos.runtime.export import verify_manifest

        art.changed = verify_manifest(path, art.sha256)
        if art.changed and strict:
            raise NasfcosError(f"{path}: does not match its manifest: {'; '.join(art.changed)}")
        if art.changed:
            art.manifest = None  # nothing it says about the file is trusted
    if art.manifest is not None:
        art.kind = art.manifest.kind
        art.in_channels = art.manifest.in_channels
    art.kind = kind or art.kind
    _from_graph(art)
    return art


__all__ = ["FORMS", "FORM_BACKENDS", "Artifact", "form_of", "open_artifact"]
