"""Parity checks: does an exported artifact compute what the PyTorch model computes?

Both sides get the same seeded inputs (:func:`~nasfcos.runtime.models.make_inputs`).  Per
output we report ``max_abs = max |got - ref|`` and ``max_rel = max_abs / max |ref|`` (error
relative to the output's largest magnitude, which is stable where ``ref`` is near zero), and
pass when ``max_abs <= atol + rtol * max |ref|``.

Detector outputs go through NMS and a top-k, whose order can legitimately swap between
near-equal scores; when the element-wise comparison fails, detections are matched per
image (same label, closest box) and boxes/scores are compared on matched pairs; a
detection without a partner fails the check unless it is among the lowest-scored ones at
the tail of the list (where a 1e-6 score change moves it past the cut-off).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nasfcos.errors import FieldError, NasfcosError
from nasfcos.io import regular_file
from nasfcos.runtime.artifact import Artifact, form_of, open_artifact
from nasfcos.runtime.models import DETECTOR_OUTPUTS, check_input_budget, make_inputs


@dataclass(frozen=True)
class Tolerance:
    """``|got - ref| <= atol + rtol * max|ref|`` per output tensor."""

    atol: float
    rtol: float


#: Defaults by precision of the artifact under test.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-3),
    "fp16": Tolerance(atol=1e-2, rtol=2e-2),
    "int8": Tolerance(atol=1e-1, rtol=1e-1),
    #: run-time bf16 (openvino:bf16, torch:bf16): 8-bit mantissa, 3 significant digits
    "bf16": Tolerance(atol=5e-2, rtol=5e-2),
}


@dataclass
class OutputCheck:
    """Comparison of one output tensor."""

    name: str
    shape: list[int]
    max_abs: float
    max_rel: float
    atol: float
    rtol: float
    ok: bool
    note: str = ""


#: The row of a check whose raw head outputs could not be read (nothing was compared).
RAW_UNREAD = "raw head outputs"


@dataclass
class CheckReport:
    """Result of :func:`check_artifact`; ``ok`` is True when every output passed."""

    artifact: str
    reference: str
    backend: str
    reference_backend: str
    kind: str | None
    sizes: list[list[int]]
    seed: int
    precision: str = "fp32"
    outputs: list[OutputCheck] = field(default_factory=list)
    #: Detection-level agreement per size (detectors only), see :func:`detection_agreement`.
    agreement: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs)

    def failures(self) -> list[OutputCheck]:
        return [o for o in self.outputs if not o.ok]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: a difference that could not be measured (a shape mismatch, nothing to
        compare) is ``null`` with its note, never a non-JSON ``Infinity``."""
        d = asdict(self)
        for o in d["outputs"]:
            for key in ("max_abs", "max_rel"):
                if not math.isfinite(o[key]):
                    o[key] = None
        d["ok"] = self.ok
        return d

    def table(self) -> str:
        """Plain-text table, one row per output (and size)."""
        rows = [f"{'output':<22} {'shape':<20} {'max abs':>10} {'max rel':>10} {'tol':>16}  ok"]
        for o in self.outputs:
            tol = f"{o.atol:.0e}+{o.rtol:.0e}*|r|"
            rows.append(f"{o.name:<22} {'x'.join(map(str, o.shape)):<20} {o.max_abs:>10.3g} "
                        f"{o.max_rel:>10.3g} {tol:>16}  {'yes' if o.ok else 'NO'}"
                        + (f"  ({o.note})" if o.note else ""))
        for a in self.agreement:
            where = f"detections @{a['size'][0]}x{a['size'][1]}"
            if a.get("raw_heads_compared"):
                unread = any(o.name.startswith(RAW_UNREAD) for o in self.outputs)
                rows.append(f"{where}: none on either side (no score above the model's threshold):"
                            " the boxes, scores and labels compare nothing, "
                            + ("and the raw head outputs could not be read either (see the row "
                               "above): this check compared nothing" if unread else
                               "so the raw head outputs (cls/reg/ctr logits) were compared "
                               "instead (rows 'raw ...')"))
                continue
            rows.append(f"{where}: {a['matched']}/{a['reference']}"
                        f" matched (IoU >= {a['iou_threshold']}: {100 * a['match_rate']:.1f}%), "
                        f"mean IoU {a['mean_iou']:.4f}, score diff max {a['max_score_diff']:.3g}"
                        f" mean {a['mean_score_diff']:.3g}")
        return "\n".join(rows)


def compare_tensor(name: str, ref: np.ndarray, got: np.ndarray, tol: Tolerance) -> OutputCheck:
    """Element-wise comparison of one output (shape, NaN and tolerance checks)."""
    shape = list(ref.shape)
    if ref.shape != got.shape:
        return OutputCheck(name, shape, math.inf, math.inf, tol.atol, tol.rtol, False,
                           f"shape {list(got.shape)} != {shape}")
    if ref.size == 0:
        return OutputCheck(name, shape, 0.0, 0.0, tol.atol, tol.rtol, True)
    r = ref.astype(np.float64)
    g = got.astype(np.float64)
    if not np.isfinite(g).all() and not np.array_equal(np.isfinite(g), np.isfinite(r)):
        return OutputCheck(name, shape, math.inf, math.inf, tol.atol, tol.rtol, False,
                           "non-finite values")
    finite = np.isfinite(r) & np.isfinite(g)
    diff = np.abs(g - r)[finite]
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(r[finite]).max()) if diff.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    ok = max_abs <= tol.atol + tol.rtol * scale
    return OutputCheck(name, shape, max_abs, max_rel, tol.atol, tol.rtol, bool(ok))


def _match_detections(ref: Sequence[np.ndarray], got: Sequence[np.ndarray],
                      tol: Tolerance) -> list[OutputCheck]:
    """Order-insensitive comparison of (boxes [N,D,4], scores [N,D], labels [N,D])."""
    rb, rs, rl = ref
    gb, gs, gl = got
    box_scale = max(float(np.abs(rb).max()) if rb.size else 0.0, 1.0)
    score_tol = tol.atol + tol.rtol * max(float(np.abs(rs).max()) if rs.size else 0.0, 1e-12)
    box_tol = tol.atol + tol.rtol * box_scale
    box_err = score_err = 0.0
    unmatched = bad_unmatched = 0
    for i in range(rb.shape[0]):
        r_idx = np.flatnonzero(rs[i] > 0)
        g_idx = list(np.flatnonzero(gs[i] > 0))
        tail_r = float(rs[i][r_idx].min()) if r_idx.size else 0.0
        tail_g = float(gs[i][g_idx].min()) if g_idx else 0.0
        for j in r_idx:
            best, best_err = None, math.inf
            for k in g_idx:
                if gl[i, k] != rl[i, j] or abs(float(gs[i, k]) - float(rs[i, j])) > score_tol:
                    continue
                err = float(np.abs(gb[i, k].astype(np.float64) - rb[i, j]).max())
                if err < best_err:
                    best, best_err = k, err
            if best is None or best_err > box_tol:
                unmatched += 1
                if float(rs[i, j]) > tail_r + 10 * score_tol:
                    bad_unmatched += 1
                continue
            g_idx.remove(best)
            box_err = max(box_err, best_err)
            score_err = max(score_err, abs(float(gs[i, best]) - float(rs[i, j])))
        for k in g_idx:  # detections only the artifact produced
            unmatched += 1
            if float(gs[i, k]) > tail_g + 10 * score_tol:
                bad_unmatched += 1
    note = f"matched by label and box; {unmatched} unmatched at the tail" if unmatched else \
        "matched by label and box (order differs)"
    ok = bad_unmatched == 0
    if bad_unmatched:
        note = f"{bad_unmatched} detection(s) without a partner above the tail"
    return [
        OutputCheck("boxes", list(rb.shape), box_err, box_err / box_scale, tol.atol, tol.rtol,
                    ok and box_err <= box_tol, note),
        OutputCheck("scores", list(rs.shape), score_err, score_err / max(float(rs.max()), 1e-12),
                    tol.atol, tol.rtol, ok and score_err <= score_tol, note),
        OutputCheck("labels", list(rl.shape), 0.0 if ok else float(bad_unmatched), 0.0, 0.0, 0.0,
                    ok, note),
    ]


@dataclass
class Agreement:
    """How well two detectors' outputs agree: reference detections (the ``top`` best per
    image) matched one-to-one to the artifact's by greedy IoU (same label, best IoU first)."""

    reference: int
    matched: int
    match_rate: float
    iou_threshold: float
    mean_iou: float
    min_iou: float
    max_score_diff: float
    mean_score_diff: float


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes ``a [N, 4]`` against ``b [M, 4]`` (x0, y0, x1, y1) -> ``[N, M]``."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), (union == 0) * 1.0)


def detection_agreement(ref: Sequence[np.ndarray], got: Sequence[np.ndarray], *,
                        iou_threshold: float = 0.95, top: int = 100) -> Agreement:
    """Detection-level agreement of (boxes [N,D,4], scores [N,D], labels [N,D]) outputs.

    Per image the ``top`` highest-scored valid reference detections (score > 0, label >= 0)
    are matched greedily, highest IoU first, to the artifact's detections of the same
    label; a match counts when IoU >= ``iou_threshold``.  Score differences are over the
    matched pairs.
    """
    rb, rs, rl = ref
    gb, gs, gl = got
    total = matched = 0
    ious: list[float] = []
    sdiff: list[float] = []
    for i in range(rb.shape[0]):
        r_idx = np.flatnonzero((rs[i] > 0) & (rl[i] >= 0))
        r_idx = r_idx[np.argsort(-rs[i][r_idx], kind="stable")][:top]
        g_idx = np.flatnonzero((gs[i] > 0) & (gl[i] >= 0))
        total += len(r_idx)
        if not len(r_idx) or not len(g_idx):
            continue
        iou = _iou_matrix(rb[i][r_idx], gb[i][g_idx])
        iou[rl[i][r_idx][:, None] != gl[i][g_idx][None, :]] = -1.0
        used_r: set[int] = set()
        used_g: set[int] = set()
        for flat in np.argsort(-iou, axis=None, kind="stable"):
            a, b = divmod(int(flat), iou.shape[1])
            if iou[a, b] < iou_threshold:
                break
            if a in used_r or b in used_g:
                continue
            used_r.add(a)
            used_g.add(b)
            ious.append(float(iou[a, b]))
            sdiff.append(abs(float(rs[i][r_idx[a]]) - float(gs[i][g_idx[b]])))
        matched += len(used_r)
    return Agreement(reference=total, matched=matched,
                     match_rate=matched / total if total else 1.0, iou_threshold=iou_threshold,
                     mean_iou=float(np.mean(ious)) if ious else (1.0 if not total else 0.0),
                     min_iou=float(np.min(ious)) if ious else (1.0 if not total else 0.0),
                     max_score_diff=float(np.max(sdiff)) if sdiff else 0.0,
                     mean_score_diff=float(np.mean(sdiff)) if sdiff else 0.0)


def compare_outputs(names: Sequence[str], ref: Sequence[np.ndarray], got: Sequence[np.ndarray],
                    tol: Tolerance) -> list[OutputCheck]:
    """Compare two lists of outputs; detector triples fall back to detection matching."""
    if len(ref) != len(got):
        raise NasfcosError(f"output count differs: reference {len(ref)}, artifact {len(got)}")
    checks = [compare_tensor(n, r, g, tol) for n, r, g in zip(names, ref, got, strict=True)]
    if tuple(names) == DETECTOR_OUTPUTS and not all(c.ok for c in checks) and all(
            r.shape == g.shape for r, g in zip(ref, got, strict=True)):
        checks = _match_detections(ref, got, tol)
    return checks


def _raw_names(levels: int) -> list[str]:
    """Row names of the detector's raw head outputs, in ``Detector.forward_raw`` order."""
    from nasfcos.runtime.models import LEVELS

    return [f"raw {head}_{lvl}" for head in ("cls", "reg", "ctr") for lvl in LEVELS[:levels]]


def _torch_raw_outputs(ref: Any, images: np.ndarray) -> list[np.ndarray] | None:
    """The PyTorch reference detector's raw head outputs (cls, reg, ctr over p3..p7) on
    ``images``; None when the reference is not a PyTorch detector."""
    import torch

    detector = getattr(getattr(getattr(ref, "model", None), "net", None), "detector", None)
    if detector is None or not hasattr(detector, "forward_raw"):
        return None
    device = next(detector.parameters()).device
    with torch.no_grad():
        cls, reg, ctr = detector.forward_raw(torch.from_numpy(images).to(device))
    return [t.float().cpu().numpy() for t in (*cls, *reg, *ctr)]


def _ort_raw_candidates(runner: Any, images: np.ndarray,
                        shapes: Sequence[tuple[int, ...]]) -> dict[str, np.ndarray] | None:
    """Every intermediate 4-d tensor of an ONNX Runtime artifact whose shape is one of
    ``shapes`` (the raw head outputs are among them), by name; None when the artifact is not
    an ONNX graph run by ONNX Runtime."""
    path = getattr(runner, "path", None)
    session = getattr(runner, "session", None)
    if runner.backend != "onnxruntime" or session is None or path is None:
        return None
    import onnx
    import onnxruntime as ort

    from nasfcos.runtime.runners import ort_session_options

    model = onnx.load(str(path))
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - an uninferable graph simply offers no candidates
        return None
    wanted = {tuple(s[1:]) for s in shapes}
    outs = {o.name for o in model.graph.output}
    produced = {o for node in model.graph.node for o in node.output}  # not initializers
    extra = []
    for vi in inferred.graph.value_info:
        t = vi.type.tensor_type
        if t.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if len(dims) != 4 or vi.name in outs or vi.name not in produced:
            continue
        if tuple(dims[1:]) in wanted or (dims[1] in {s[1] for s in shapes} and None in dims[2:]):
            extra.append(vi)
    if not extra:
        return {}
    model.graph.output.extend(extra)
    sess = ort.InferenceSession(model.SerializeToString(),
                                ort_session_options(getattr(runner, "threads", None),
                                                    opt_level=getattr(runner, "opt_level", "all")),
                                providers=session.get_providers())
    names = [vi.name for vi in extra]
    values = sess.run(names, {session.get_inputs()[0].name: images})
    return {n: np.asarray(v, dtype=np.float32) for n, v in zip(names, values, strict=True)}


def compare_raw_heads(runner: Any, ref: Any, images: np.ndarray, tol: Tolerance) -> list[OutputCheck]:
    """Compare a detector artifact's raw head outputs (cls/reg/ctr logits, p3..p7) with the
    PyTorch reference's, for inputs on which neither side keeps a detection (so the boxes,
    scores and labels compare nothing).

    The artifact's tensors are the graph's intermediate values exposed as extra outputs; each
    reference tensor is compared with the same-shaped intermediate closest to it (a broken
    graph has no close one).  Artifacts whose intermediates cannot be read (engines, a
    non-PyTorch reference) give one failing row saying so: a check never passes on nothing.
    """
    want = _torch_raw_outputs(ref, images)
    got = _ort_raw_candidates(runner, images, [w.shape for w in want]) if want else None
    if want is None or got is None:
        why = ("the reference is not a PyTorch detector" if want is None
               else f"the {runner.backend} artifact's intermediate tensors cannot be read")
        return [OutputCheck(RAW_UNREAD, [], math.inf, math.inf, tol.atol, tol.rtol, False,
                            "no detection on either side and " + why + ": nothing was compared "
                            "(check with trained weights, or the decoder export)")]
    checks = []
    for name, w in zip(_raw_names(len(want) // 3), want, strict=True):
        same = [compare_tensor(name, w, g, tol) for g in got.values() if g.shape == w.shape]
        if not same:
            checks.append(OutputCheck(name, list(w.shape), math.inf, math.inf, tol.atol, tol.rtol,
                                      False, "no tensor of this shape in the artifact's graph"))
            continue
        checks.append(min(same, key=lambda c: c.max_abs))
    return checks


def _shown_model_path(man: Any) -> str:
    """The model file a manifest names, resolved relative to its folder, quoted for a shell
    (shown in an error only; never read or imported)."""
    import shlex

    name = man._from_source_dir(man.source.model)
    try:
        full = str((man.folder / name).resolve())
    except (OSError, RuntimeError):
        full = os.path.abspath(man.folder / name)
    return shlex.quote(full)


def _reference(art: Artifact, against: str | Path | None, kind: str | None,
               threads: int | None) -> tuple[Any, Path]:
    """The reference runner and its file: ``against`` when given, else the model.py the
    manifest names, imported only when it lies inside the manifest's folder, named
    relatively, and its sha256 (and the weights') match what the manifest recorded."""
    from nasfcos.runtime.models import load_model
    from nasfcos.runtime.runners import TorchRunner, make_runner

    man = art.manifest
    if against is None:
        if man is None or not man.source.model:
            raise NasfcosError(f"{art.path}: no manifest naming its model.py; name the "
                               "reference model yourself")
        try:
            model = regular_file(man.model_file(), "model file")
        except NasfcosError as exc:
            raise NasfcosError(f"{exc}; if you trust that file, pass --against "
                               f"{_shown_model_path(man)}") from None
        lm = load_model(model, kind, seed=man.source.seed, weights=man.weights_file(),
                        sha256=man.source.model_sha256)
        return TorchRunner(lm, "cpu", threads=threads, optimize=False), model
    against = regular_file(against, "reference model")
    if form_of(against) != "model.py":
        return make_runner(against, None, "cpu", threads=threads), against
    return make_runner(against, "torch", "cpu", kind=kind,
                       seed=man.source.seed if man else 0,
                       weights=man.weights_file() if man else None, threads=threads,
                       optimize=False), against


def _same_model(art: Artifact, runner: Any, ref: Any, reference: Path, kind: str) -> None:
    """One-line errors when the reference is not the model the artifact was exported from."""
    from nasfcos.runtime.models import state_dict_hash

    recorded = art.manifest.source.state_dict_sha256 if art.manifest else None
    if form_of(reference) == "model.py" and recorded:
        actual = state_dict_hash(ref.model.net.detector if ref.model.kind == "detector"
                                 else ref.model.net.decoder)
        if actual != recorded:
            raise NasfcosError(f"{reference}: its weights differ from those exported into "
                               f"{art.path.name} (changed model file, seed or weights?)")
    if runner.input_names != ref.input_names:
        raise NasfcosError(f"input names differ: {runner.input_names} vs {ref.input_names}")
    if runner.output_names != ref.output_names:
        raise NasfcosError(f"output names differ: {runner.output_names} vs {ref.output_names}")


def _default_sizes(art: Artifact) -> list[tuple[int, int]]:
    """The export size (plus a second one for a dynamic export)."""
    base = (art.manifest.size if art.manifest else None) or art.size or (256, 256)
    sizes = [tuple(base)]
    if art.manifest is not None and art.manifest.dynamic:
        sizes.append((max(64, base[0] - 64), max(64, base[1] + 32)))
    return sizes


def _check_shapes(art: Artifact, sizes: Sequence[tuple[int, int]], batch: int,
                  kind: str | None) -> None:
    """One-line errors, before any work: a static graph runs only its own batch and size,
    and no run allocates more than ``MAX_INPUT_ELEMENTS`` input values."""
    if art.batch is not None and batch != art.batch:
        raise FieldError("batch", f"{art.path}: a static export for batch {art.batch}, not "
                         f"{batch}: give {art.batch}, or export it dynamic")
    if art.size is not None and not (art.manifest is not None and art.manifest.dynamic):
        other = [s for s in sizes if tuple(s) != tuple(art.size)]
        if other:
            h, w = art.size
            raise FieldError("sizes", f"{art.path}: a static export for {h}x{w}, not "
                             f"{other[0][0]}x{other[0][1]}: give {h}x{w}, or export it dynamic")
    check_input_budget(kind or art.kind or "detector", sizes, batch, art.in_channels)


def _compare(report: CheckReport, runner: Any, ref: Any, sizes: Sequence[tuple[int, int]],
             batch: int, in_channels: Sequence[int] | None, tol: Tolerance) -> None:
    """Both sides on the same seeded inputs per size; the checks go into ``report``."""
    for size in sizes:
        inputs = make_inputs(report.kind, size, batch, report.seed, in_channels)
        got = runner(*inputs)
        want = ref(*inputs)
        checks = compare_outputs(runner.output_names, want, got, tol)
        if tuple(runner.output_names) == DETECTOR_OUTPUTS:
            agreement = asdict(detection_agreement(want, got))
            if agreement["reference"] == 0 and not (got[1] > 0).any():
                # 0/0 detections: the boxes/scores/labels compared nothing
                checks += compare_raw_heads(runner, ref, inputs[0], tol)
                agreement["raw_heads_compared"] = True
            report.agreement.append({"size": list(size), **agreement})
        if len(sizes) > 1:
            for c in checks:
                c.name = f"{c.name}@{size[0]}x{size[1]}"
        report.outputs.extend(checks)


def check_artifact(artifact: str | Path | Artifact, against: str | Path | None = None, *,
                   backend: str | None = None, device: str = "cpu",
                   sizes: Sequence[tuple[int, int]] | None = None, batch: int | None = None,
                   seed: int = 0, tol: Tolerance | None = None, kind: str | None = None,
                   threads: int | None = None) -> CheckReport:
    """Run ``artifact`` (.onnx / .engine, or an opened :class:`Artifact`) and its PyTorch
    source on the same inputs.

    ``against`` defaults to the ``model.py`` recorded in the artifact's manifest (inside the
    manifest's folder, hash-checked); the PyTorch side is rebuilt with the manifest's kind,
    weight seed and weights file, and its weights are verified against the manifest's
    ``state_dict_sha256``.  ``sizes`` defaults to the export size (plus a second size for
    dynamic exports).  An artifact that no longer matches its manifest is refused.
    """
    from nasfcos.runtime.runners import make_runner

    art = artifact if isinstance(artifact, Artifact) else open_artifact(artifact)
    if art.changed:
        raise NasfcosError(f"{art.path}: does not match its manifest: {'; '.join(art.changed)}")
    precision = art.manifest.precision if art.manifest else "fp32"
    if backend:  # a run-time precision (openvino:bf16, openvino:int8) sets the tolerances
        from nasfcos.runtime.runners import split_backend

        precision = split_backend(backend)[1] or precision
    sizes = list(sizes or _default_sizes(art))
    batch = batch or (art.manifest.batch if art.manifest else 1)
    _check_shapes(art, sizes, batch, kind)
    runner = make_runner(art, backend, device, threads=threads)
    try:
        actual = runner.kind or art.kind
        if kind is not None and actual is not None and kind != actual:
            raise NasfcosError(f"{art.path}: a {actual} export (inputs "
                               f"{', '.join(runner.input_names)}), not a {kind}: drop --{kind}"
                               f"{' or give --detector' if actual == 'detector' else ''}")
        kind = kind or actual
        ref, reference = _reference(art, against, kind, threads)
        try:
            _same_model(art, runner, ref, reference, kind or ref.kind)
            kind = kind or ref.kind
            if kind is None:
                raise NasfcosError("cannot tell the model kind from the tensor names")
            report = CheckReport(artifact=str(art.path), reference=str(reference),
                                 backend=runner.backend, reference_backend=ref.backend,
                                 kind=kind, sizes=[list(s) for s in sizes], seed=seed,
                                 precision=precision)
            _compare(report, runner, ref, sizes, batch, ref.in_channels or runner.in_channels,
                     tol or TOLERANCES[precision])
            return report
        finally:
            ref.close()
    finally:
        runner.close()


__all__ = ["TOLERANCES", "Agreement", "CheckReport", "OutputCheck", "Tolerance", "check_artifact",
           "compare_outputs", "compare_raw_heads", "compare_tensor", "detection_agreement"]
