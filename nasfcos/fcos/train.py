"""Training loop for a compiled detector with FCOS losses.

SGD with momentum, linear warm-up and step decay (``LambdaLR``), gradient clipping,
optional AMP, DistributedDataParallel when launched by ``torchrun`` (one process per
device, ``--batch`` is the total over processes).  The run folder holds::

    last.pt        checkpoint (model, optimizer, scheduler, scaler, iteration), atomic
    final.pt       weights + metadata for eval/export (num_classes, category ids)
    metrics.jsonl  one JSON record per logged iteration
    loss.png       loss curves
    eval.json      COCO metrics on the val split (when the data has one)
    summary.json   the run's figures

Resuming (``resume=True``) continues from ``last.pt`` at the same iteration with the
same data order: batches are drawn from a permutation seeded by ``(seed, epoch)`` and
augmentation is seeded by ``(seed, epoch, index)``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from nasfcos.errors import CacheError, FieldError, NasfcosError, first_line
from nasfcos.fcos.data import CocoDetection, TransformConfig, collate, has_split, resolve_split
from nasfcos.fcos.evaluate import EvalConfig, evaluate, module_detections
from nasfcos.fcos.losses import FcosConfig, fcos_losses
from nasfcos.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    figure_bytes,
    sha256_bytes,
    sha256_file,
)
from nasfcos.modelfile import ModelInfo, RawForward, load_model_file, model_code_guard
from nasfcos.weights import check_finite_state

LOSS_KEYS = ("cls", "box", "ctr")


@dataclass
class TrainConfig:
    """Options of one training run.  ``lr=None`` means 0.01 * batch / 16 (FCOS's rule);
    ``steps=None`` means decay at 2/3 and 8/9 of the run (60k/80k of 90k)."""

    model: str
    out: str
    data: str | None = None
    ann: str | None = None
    images: str | None = None
    epochs: int | None = None
    iters: int | None = None
    batch: int = 16
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    warmup_factor: float = 1.0 / 3.0
    steps: tuple[int, ...] | None = None
    gamma: float = 0.1
    clip_grad: float | None = 35.0
    amp: bool = False
    min_size: int = 800
    max_size: int = 1333
    crop: tuple[int, int] | None = None
    hflip: float = 0.5
    workers: int = 2
    seed: int = 0
    log_every: int = 20
    checkpoint_every: int | None = None  # None: every 10 % of the run
    backbone_weights: str | None = None
    device: str | None = None
    resume: bool = False
    eval: bool = True
    eval_batch: int = 8
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    fcos: FcosConfig = field(default_factory=FcosConfig)
    optimizer: str = "sgd"  # "sgd" (FCOS) or "adamw" (short runs on small sets)
    freeze_backbone: bool = False  # train the decoder only (a pretrained trunk stays as is)
    save_backbone: bool = False  # also write backbone.pt (+ backbone.json) to the run folder
    val_ann: str | None = None  # validation split with --ann (default: DATA's val split)
    val_images: str | None = None

    @staticmethod
    def check_field(name: str, value: Any) -> Any:
        """``value`` if it keeps the rule of field ``name`` (see :data:`TRAIN_RULES`), else a
        :class:`FieldError` naming the field.  The command line's type functions call this."""
        rule = TRAIN_RULES.get(name)
        if rule is not None and value is not None and not rule[0](value):
            raise FieldError(name, f"must be {rule[1]}, not {value!r}")
        return value

    def validate(self) -> TrainConfig:
        """One-line :class:`FieldError` for a value no run can use; returns self."""
        for name in TRAIN_RULES:
            self.check_field(name, getattr(self, name))
        if self.max_size < self.min_size:
            raise FieldError("max_size", f"must be at least min_size ({self.min_size}), "
                                         f"not {self.max_size}")
        return self


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _count(lo: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _in(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False
        ) -> Callable[[Any], bool]:
    return lambda v: _finite(v) and (v > lo if lo_open else v >= lo) and (
        v < hi if hi_open else v <= hi)


#: The rule of each checked :class:`TrainConfig` field: (test, what the value must be).
TRAIN_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{name: (_count(1), "a positive integer") for name in (
        "iters", "epochs", "checkpoint_every", "batch", "log_every", "eval_batch")},
    "workers": (_count(0), "0 or more"),
    "warmup_iters": (_count(0), "0 or more"),
    "lr": (_in(0, math.inf, lo_open=True), "a positive finite number"),
    "momentum": (_in(0, 1, hi_open=True), "in [0, 1)"),
    "weight_decay": (_in(0, math.inf), "finite and >= 0"),
    "warmup_factor": (_in(0, 1, lo_open=True), "in (0, 1]"),
    "gamma": (_in(0, 1, lo_open=True), "in (0, 1]"),
    "clip_grad": (_in(0, math.inf, lo_open=True), "a positive finite norm (0 turns clipping off)"),
    "min_size": (_count(32), "at least 32 pixels"),
    "max_size": (_count(32), "at least 32 pixels"),
    "hflip": (_in(0, 1), "a probability in [0, 1]"),
    "crop": (lambda v: min(v) >= 32, "at least 32 pixels"),
    "steps": (lambda v: all(_count(1)(x) for x in v), "positive iterations"),
    "optimizer": (lambda v: v in ("sgd", "adamw"), "sgd or adamw"),
}


def config_to_json(cfg: TrainConfig) -> dict[str, Any]:
    """The run's ``config.json`` record of ``cfg`` (JSON types only)."""
    return json.loads(json.dumps(asdict(cfg)))


def config_from_json(doc: dict[str, Any]) -> TrainConfig:
    """Inverse of :func:`config_to_json` (extra keys such as ``total_iters`` ignored)."""
    names = {f.name for f in fields(TrainConfig)}
    kw = {k: v for k, v in doc.items() if k in names}
    try:
        fcos = dict(kw.pop("fcos", {}) or {})
        for key in ("strides",):
            if fcos.get(key) is not None:
                fcos[key] = tuple(fcos[key])
        if fcos.get("size_ranges") is not None:
            fcos["size_ranges"] = tuple(tuple(r) for r in fcos["size_ranges"])
        for key in ("steps", "crop"):
            if kw.get(key) is not None:
                kw[key] = tuple(kw[key])
        return TrainConfig(**kw, fcos=FcosConfig(**fcos))
    except (TypeError, ValueError) as exc:
        raise NasfcosError(f"config.json: not a training configuration ({exc})") from None


# The paper's COCO schedule (FCOS 1x): lr 0.01 at batch 16, 90k iterations.
# ``synth``: the yardstick recipe of issue 13 on ``nasfcos data synth --preset easy`` with
# the shipped pretrained tiny trunk (frozen), 128 px, AdamW.  Measured cost of nas_fcos_fpn
# (FPN 32, head 64): 0.24 CPU-s per iteration, so 2400 iterations are ~580 CPU-s, within
# 10 minutes on 2 idle cores; its AP50 at 2400 iterations is not measured yet (300: 0.11).
# ``synth-trunk``: how that trunk was trained (see nasfcos/fcos/weights/tiny_synth.json).
PRESETS: dict[str, dict[str, Any]] = {
    "coco": {"iters": 90_000, "steps": (60_000, 80_000), "warmup_iters": 500,
             "warmup_factor": 1.0 / 3.0, "momentum": 0.9, "weight_decay": 1e-4, "batch": 16,
             "min_size": 800, "max_size": 1333, "hflip": 0.5},
    "synth": {"iters": 2400, "batch": 8, "optimizer": "adamw", "lr": 2e-3, "weight_decay": 1e-4,
              "warmup_iters": 50, "warmup_factor": 0.1, "min_size": 128, "max_size": 128,
              "hflip": 0.5, "freeze_backbone": True, "backbone_weights": "tiny_synth_1500",
              "eval_batch": 16},
    "synth-trunk": {"iters": 1500, "batch": 8, "optimizer": "adamw", "lr": 2e-3,
                    "weight_decay": 1e-4, "warmup_iters": 100, "warmup_factor": 0.1,
                    "min_size": 128, "max_size": 128, "hflip": 0.5, "save_backbone": True,
                    "eval_batch": 16},
}


def apply_preset(cfg: TrainConfig, name: str) -> TrainConfig:
    if name not in PRESETS:
        raise NasfcosError(f"unknown preset '{name}' (choose from {', '.join(PRESETS)})")
    return replace(cfg, **PRESETS[name])


def base_lr(cfg: TrainConfig) -> float:
    return cfg.lr if cfg.lr is not None else 0.01 * cfg.batch / 16


def lr_multiplier(it: int, total: int, cfg: TrainConfig) -> float:
    """Learning-rate factor at iteration ``it`` (0-based): linear warm-up from
    ``warmup_factor`` over ``warmup_iters``, times ``gamma`` per passed step.

    The warm-up is capped at half the iterations before the first step, so a short run
    still reaches its base learning rate (500 warm-up iterations of the COCO schedule would
    outlast a 360-iteration run)."""
    steps = cfg.steps if cfg.steps is not None else (int(total * 2 / 3), int(total * 8 / 9))
    factor = cfg.gamma ** sum(it >= s for s in steps)
    warmup = min(cfg.warmup_iters, min(steps, default=total) // 2)
    if it < warmup:
        alpha = it / warmup
        factor *= cfg.warmup_factor * (1 - alpha) + alpha
    return factor


class RunSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(index, epoch)`` for iterations ``start..total-1`` of one rank.

    Epoch ``e`` is a permutation seeded by ``seed + e``, split round-robin over ranks
    and cut into ``batch``-sized pieces (remainder dropped).  Reproducible from any
    iteration, which is what makes resume exact.
    """

    def __init__(self, n: int, batch: int, total: int, start: int = 0, seed: int = 0,
                 rank: int = 0, world: int = 1) -> None:
        self.n, self.batch, self.total, self.start = n, batch, total, start
        self.seed, self.rank, self.world = seed, rank, world
        self.per_epoch = (n // world) // batch
        if self.per_epoch == 0:
            raise NasfcosError(f"data set of {n} images is smaller than one batch "
                               f"({batch} x {world} processes)")

    def __len__(self) -> int:
        return self.total - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, order = -1, torch.empty(0, dtype=torch.int64)
        for it in range(self.start, self.total):
            e, pos = divmod(it, self.per_epoch)
            if e != epoch:
                g = torch.Generator().manual_seed(self.seed + e)
                perm = torch.randperm(self.n, generator=g)
                order = perm[: (self.n // self.world) * self.world][self.rank :: self.world]
                epoch = e
            chunk = order[pos * self.batch : (pos + 1) * self.batch]
            yield [(int(i), e) for i in chunk]


class _EpochAwareDataset(torch.utils.data.Dataset[Any]):
    """Adapts :class:`CocoDetection` to ``(index, epoch)`` keys."""

    def __init__(self, ds: CocoDetection) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, epoch = key
        self.ds.set_epoch(epoch)
        return self.ds[index]


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: str | None) -> tuple[_Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch.distributed as dist

        local = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        d = _Dist(dist.get_rank(), dist.get_world_size(), local)
        if use_cuda:
            torch.cuda.set_device(local)
            return d, torch.device("cuda", local)
        return d, torch.device("cpu")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return _Dist(), torch.device(device)


def _mean_over_ranks(values: torch.Tensor, d: _Dist) -> torch.Tensor:
    if d.world > 1:
        import torch.distributed as dist

        values = values.clone()
        dist.all_reduce(values)
        values /= d.world
    return values


def build_detector(module: Any, num_classes: int, **overrides: Any) -> nn.Module:
    """The ``Detector`` of a loaded model file with ``num_classes`` outputs (through the
    file's ``build`` factory; Contract 2)."""
    if ModelInfo.from_module(module).kind != "detector":
        raise NasfcosError("the model file has no Detector: compile it with --detector")
    with model_code_guard(getattr(module, "__file__", None) or "model file"):
        return module.build(num_classes=num_classes, **overrides)


def resolve_backbone_weights(name_or_path: str) -> Path:
    """A backbone weights file: a path, or the name of a shipped trunk (``tiny_synth``),
    checked by the one weights loader (tensors only, all finite: NaN in a trunk would surface
    later as a diverged training blamed on the learning rate)."""
    from nasfcos.fcos.weights import shipped_weights
    from nasfcos.weights import load_weights_file

    shipped = shipped_weights(name_or_path)
    path = shipped if shipped is not None else Path(name_or_path)
    if not path.is_file():
        raise NasfcosError(f"{name_or_path}: no such backbone weights file")
    load_weights_file(path)
    return path


def backbone_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trunk's weights in the format ``build(backbone_weights=FILE)`` loads: the keys of
    ``model.backbone.body`` (torchvision's names for torchvision trunks)."""
    body = model.backbone.body  # type: ignore[union-attr]
    return {k: v.detach().clone() for k, v in body.state_dict().items()}


class NonFiniteError(NasfcosError):
    """Non-finite values met in the forward pass (training diverged)."""


def guard_deformable_convs(model: nn.Module) -> int:
    """Hooks that stop a forward pass before NaN or inf reach a deformable convolution
    (torchvision's ``deform_conv2d`` segfaults on non-finite offsets): the input of every
    ``DeformConv*`` module and the output of its offset conv are checked.  Returns the number
    of modules guarded."""
    def check(name: str, t: torch.Tensor) -> None:
        if not bool(torch.isfinite(t).all()):
            raise NonFiniteError(f"non-finite values reached the deformable conv {name} "
                                 "(training diverged: lower --lr, or set --clip-grad)")

    count = 0
    for name, mod in model.named_modules():
        if type(mod).__name__.startswith("DeformConv"):
            mod.register_forward_pre_hook(lambda _m, args, name=name: check(name, args[0]))
            for child_name, child in mod.named_children():
                if "offset" in child_name:
                    child.register_forward_hook(
                        lambda _m, _a, out, name=name: check(name + " offsets", out))
            count += 1
    return count


def _one_line_errors(loader: DataLoader[Any]) -> Iterator[Any]:
    """Iterate ``loader``; an error raised in a worker process comes back as the worker's
    own one-line message, not the traceback DataLoader wraps around it."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except NasfcosError as exc:
            lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
            last = lines[-1] if lines else type(exc).__name__
            prefix = f"{type(exc).__module__}.{type(exc).__name__}: "
            raise NasfcosError(last.split(prefix, 1)[-1].split("NasfcosError: ", 1)[-1]) from None
        yield batch


def _data_manifest(data: str | None) -> dict[str, Any] | None:
    """``manifest.json`` of a synthetic data folder (its seed and options), if any."""
    if data is None or not (Path(data) / "manifest.json").is_file():
        return None
    try:
        return json.loads((Path(data) / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def _torch_bytes(obj: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Records of ``metrics.jsonl``; a torn last line (a kill during a write) is skipped."""
    if not path.is_file():
        return []
    out = []
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    for n, ln in enumerate(lines):
        try:
            rec = json.loads(ln)
        except ValueError:
            if n == len(lines) - 1:
                break  # torn last line
            raise NasfcosError(f"{path}: line {n + 1} is not JSON") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("iter"), int):
            raise NasfcosError(f"{path}: line {n + 1} is not a metrics record")
        out.append(rec)
    return out


def _checksums_path(ckpt: Path) -> Path:
    return ckpt.with_name(ckpt.name + ".sha256")


def save_checkpoint(path: Path, obj: dict[str, Any]) -> None:
    """Write ``obj`` atomically with its sha256 in ``PATH.sha256`` (written first, keeping the
    previous hash too, so a kill between the two writes still resumes)."""
    data = _torch_bytes(obj)
    side = _checksums_path(path)
    previous = sha256_file(path) if path.is_file() else None
    hashes = [sha256_bytes(data)] + ([previous] if previous else [])
    atomic_write_json(side, {"sha256": hashes})
    atomic_write_bytes(path, data)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint`, after checking its sha256; loaded with
    ``weights_only=True`` (no code runs from the file)."""
    side = _checksums_path(path)
    if not path.is_file():
        raise CacheError(f"{path}: no checkpoint to resume from")
    try:
        hashes = json.loads(side.read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CacheError(f"{path}: no readable checksum record {side.name}; cannot verify the "
                         "checkpoint") from None
    if sha256_file(path) not in hashes:
        raise CacheError(f"{path}: checksum mismatch (the file is damaged, truncated or altered)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = first_line(exc, None)
        raise CacheError(f"{path}: not a readable checkpoint ({first[:160]})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise CacheError(f"{path}: not a nasfcos training checkpoint")
    return ckpt


def plot_losses(records: list[dict[str, Any]], path: Path) -> None:
    """Loss terms and total against iteration, written atomically as PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.subplots()
    its = [r["iter"] for r in records]
    for key in ("loss",) + LOSS_KEYS:
        ax.plot(its, [r[key] for r in records], label=key, lw=2 if key == "loss" else 1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write_bytes(path, figure_bytes(fig))


class _StopOnInterrupt:
    """While active, the first SIGINT only sets ``requested`` (the loop stops at the end of
    the iteration, a consistent point to save); the second one interrupts at once."""

    def __init__(self, enabled: bool = True) -> None:
        self.requested = False
        self._previous: Any = None
        if enabled and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ntrain: Ctrl-C: stopping after this iteration to save a checkpoint "
              "(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def watch(self, batches: Iterator[Any]) -> Iterator[Any]:
        """``batches``, restoring the previous handler when the loop ends in any way."""
        try:
            yield from batches
        finally:
            self.restore()

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


class _Trainer:
    """One training run in stages: setup (data, model, schedule, optimiser) -> resume ->
    step per iteration -> log -> finish (final weights, evaluation, summary)."""

    def __init__(self, cfg: TrainConfig, progress: bool) -> None:
        self.progress = progress
        self.d, self.device = _init_distributed(cfg.device)
        self.out = Path(cfg.out)
        torch.manual_seed(cfg.seed)
        self.module = load_model_file(cfg.model)
        self.cfg = self._data(cfg)
        self.model = self._model()
        self._schedule()
        self._optimiser()
        self.model_sha = sha256_file(self.cfg.model)
        self.ckpt_path = self.out / "last.pt"
        self.start = self._resume()
        self.metrics_path = self.out / "metrics.jsonl"
        self.records: list[dict[str, Any]] = []
        #: what the folder held before this run wrote to it, put back by undo()
        self.before = {n: (self.out / n).read_bytes() if (self.out / n).is_file() else None
                       for n in ("config.json", "metrics.jsonl", _checksums_path(self.ckpt_path).name)}
        self.made_out, self.checkpointed = not self.out.exists(), False
        if self.d.main:
            self.out.mkdir(parents=True, exist_ok=True)
            self.records = ([r for r in read_metrics(self.metrics_path) if r["iter"] <= self.start]
                            if self.cfg.resume else [])
            atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in self.records))
            atomic_write_json(self.out / "config.json", {**config_to_json(self.cfg),
                                                         "total_iters": self.total,
                                                         "world": self.d.world})

    # -- setup ----------------------------------------------------------------------------
    def _data(self, cfg: TrainConfig) -> TrainConfig:
        ann, img_dir = resolve_split(cfg.data, "train", cfg.ann, cfg.images)
        tcfg = TransformConfig(min_size=cfg.min_size, max_size=cfg.max_size, hflip=cfg.hflip,
                               crop=cfg.crop)
        self.ds = CocoDetection(ann, img_dir, tcfg, train=True, seed=cfg.seed)
        self.info = ModelInfo.from_module(self.module)
        compiled_k = self.info.num_classes
        if compiled_k is not None and compiled_k != self.ds.num_classes:
            raise NasfcosError(f"{cfg.model} is compiled for {compiled_k} classes but {ann.name} "
                               f"has {self.ds.num_classes}: compile it with --num-classes "
                               f"{self.ds.num_classes}")
        return replace(cfg, fcos=replace(cfg.fcos, reg_units=self.info.box_units.name))

    def _model(self) -> nn.Module:
        cfg = self.cfg
        kwargs = dict(cfg.model_kwargs)
        self.backbone_info = None
        if cfg.backbone_weights:
            weights_path = resolve_backbone_weights(cfg.backbone_weights)
            kwargs["backbone_weights"] = str(weights_path)
            self.backbone_info = {"file": str(weights_path), "sha256": sha256_file(weights_path)}
        try:
            model = build_detector(self.module, self.ds.num_classes, **kwargs)
        except (ValueError, TypeError) as exc:
            raise NasfcosError(f"{cfg.model}: cannot build the detector "
                               f"({first_line(exc, None)})") from None
        if cfg.freeze_backbone:
            for p in model.backbone.parameters():  # type: ignore[union-attr]
                p.requires_grad_(False)
        return model.to(self.device)

    def _schedule(self) -> None:
        cfg, d = self.cfg, self.d
        if cfg.batch % d.world:
            raise FieldError("batch", f"{cfg.batch} is not divisible by {d.world} processes")
        self.per_rank = cfg.batch // d.world
        self.per_epoch = (len(self.ds) // d.world) // self.per_rank
        self.total = cfg.iters if cfg.iters is not None else cfg.epochs * self.per_epoch  # type: ignore[operator]
        if self.total <= 0:
            raise NasfcosError("nothing to train: the run has 0 iterations")

    def _optimiser(self) -> None:
        cfg = self.cfg
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if cfg.optimizer == "adamw":
            self.optimizer: torch.optim.Optimizer = torch.optim.AdamW(
                self.params, lr=base_lr(cfg), weight_decay=cfg.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(self.params, lr=base_lr(cfg), momentum=cfg.momentum,
                                             weight_decay=cfg.weight_decay)
        total = self.total
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda it: lr_multiplier(it, total, cfg))
        if cfg.amp and self.device.type != "cuda":
            # CPU bf16 autocast gives non-finite GroupNorm gradients on tiny maps: not worth it
            warnings.warn("--amp needs CUDA; training in float32 on this device", stacklevel=5)
            self.cfg = replace(cfg, amp=False)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.cfg.amp)

    def _resume(self) -> int:
        """The iteration to start at: 0, or where ``last.pt`` stopped (``--resume``)."""
        path = self.ckpt_path
        if not self.cfg.resume:
            if path.exists():
                raise NasfcosError(f"{self.out}: holds a run already (use --resume, or another "
                                   "--out)")
            return 0
        ckpt = load_checkpoint(path)
        if ckpt.get("model_sha256") != self.model_sha or ckpt.get("num_classes") != self.ds.num_classes:
            raise CacheError(f"{path}: checkpoint is for a different model file or data set")
        check_finite_state(ckpt["model"], str(path))
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.scaler.load_state_dict(ckpt["scaler"])
            torch.set_rng_state(ckpt["rng"])
            start = int(ckpt["iter"])
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            first = first_line(exc, None)
            raise CacheError(f"{path}: checkpoint does not fit this run ({first[:160]})") from None
        if start >= self.total:
            raise NasfcosError(f"{path}: already at iteration {start} of {self.total}")
        return start

    def _loader(self) -> DataLoader[Any]:
        d, device = self.d, self.device
        guard_deformable_convs(self.model)
        self.raw: nn.Module = RawForward(self.model)
        if d.world > 1:
            self.raw = nn.parallel.DistributedDataParallel(
                self.raw, device_ids=[device.index] if device.type == "cuda" else None)
        sampler = RunSampler(len(self.ds), self.per_rank, self.total, self.start, self.cfg.seed,
                             d.rank, d.world)
        return DataLoader(_EpochAwareDataset(self.ds), batch_sampler=sampler, collate_fn=collate,
                          num_workers=self.cfg.workers, pin_memory=device.type == "cuda")

    # -- the loop -------------------------------------------------------------------------
    def snapshot(self, done: int) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "rng": torch.get_rng_state(), "iter": done, "total": self.total,
                "num_classes": self.ds.num_classes, "cat_ids": self.ds.cat_ids,
                "model_sha256": self.model_sha, "model_kwargs": self.cfg.model_kwargs}

    def step(self, it: int, images: torch.Tensor, targets: list[dict[str, Any]]
             ) -> tuple[torch.Tensor, float, torch.Tensor]:
        """One optimisation step; returns (losses stacked, lr used, gradient norm)."""
        cfg, device = self.cfg, self.device
        images = images.to(device, non_blocking=True)
        boxes = [t["boxes"].to(device) for t in targets]
        labels = [t["labels"].to(device) for t in targets]
        with torch.autocast(device.type, dtype=torch.float16, enabled=cfg.amp):
            cls, reg, ctr = self.raw(images)
        losses = fcos_losses(cls, reg, ctr, boxes, labels, cfg.fcos)
        loss = losses["cls"] + losses["box"] + losses["ctr"]
        if not torch.isfinite(loss):
            raise NasfcosError(f"loss became {float(loss)} at iteration {it} (lower --lr?)")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        max_norm = cfg.clip_grad if cfg.clip_grad is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        if cfg.amp or bool(torch.isfinite(grad_norm)):
            self.scaler.step(self.optimizer)  # the scaler itself skips steps with inf/nan grads
            self.skipped_run = 0
        else:  # non-finite gradients without a scaler (fp32, bf16): skip this step
            self.skipped += 1
            self.skipped_run += 1
            if self.skipped_run > 20:
                raise NasfcosError(f"gradients non-finite for 20 iterations in a row at {it} "
                                   "(lower --lr?)")
        self.scaler.update()
        if not all(bool(torch.isfinite(p).all()) for p in self.params):
            raise NasfcosError(f"weights became non-finite at iteration {it} (lower --lr, or "
                               "set --clip-grad)")
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        return torch.stack([loss.detach(), *(losses[k].detach() for k in LOSS_KEYS)]), lr, grad_norm

    def log(self, it: int, done: int, lr: float, grad_norm: torch.Tensor) -> None:
        """Every ``log_every`` iterations: the window's mean losses into metrics.jsonl."""
        vals = _mean_over_ranks(torch.stack(self.window).mean(0), self.d).tolist()
        self.window = []
        self.last = dict(zip(("loss",) + LOSS_KEYS, vals, strict=True))
        rec = {"iter": done, "epoch": it // self.per_epoch, "lr": lr, **self.last,
               "grad_norm": float(grad_norm) if bool(torch.isfinite(grad_norm)) else None,
               "skipped": self.skipped, "time": round(time.time() - self.t0, 3)}
        if self.d.main:  # the whole file, atomically: a kill never leaves a torn line
            self.records.append(rec)
            atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in self.records))

    def run(self) -> int:
        """The iterations from ``start``; returns the last one done.  Ctrl-C finishes the
        running iteration, saves last.pt there and says how to resume (a second Ctrl-C stops
        at once; single-process runs in the main thread only)."""
        cfg, loader = self.cfg, self._loader()
        ckpt_every = cfg.checkpoint_every or max(1, self.total // 10)
        bar = None
        if self.progress and self.d.main:
            from nasfcos.progress import progress_bar

            bar = progress_bar(self.total, initial=self.start, desc="train", unit="it")
        self.model.train()
        self.t0, self.c0 = time.time(), time.process_time()
        self.last: dict[str, float] = {}
        self.window: list[torch.Tensor] = []
        self.skipped = self.skipped_run = 0
        stop = _StopOnInterrupt(enabled=self.d.world == 1)
        done, saved = self.start, False
        for it, (images, targets) in zip(range(self.start, self.total),
                                         stop.watch(_one_line_errors(loader)), strict=True):
            values, lr, grad_norm = self.step(it, images, targets)
            done = it + 1
            self.window.append(values)
            if done % cfg.log_every == 0 or done == self.total:
                self.log(it, done, lr, grad_norm)
            if bar is not None:
                bar.update(1)
                if self.last:  # the latest logged averages: no device sync per iteration
                    bar.set_postfix({k: f"{v:.3f}" for k, v in self.last.items()}, refresh=False)
            saved = self.d.main and (done % ckpt_every == 0 or done == self.total)
            if saved:
                save_checkpoint(self.ckpt_path, self.snapshot(done))
                self.checkpointed = True
                plot_losses(self.records, self.out / "loss.png")
            if stop.requested:
                break
        stop.restore()
        if bar is not None:
            bar.close()
        if stop.requested and done < self.total:
            if self.d.main and not saved:
                save_checkpoint(self.ckpt_path, self.snapshot(done))
                self.checkpointed = True
            print(f"train: interrupted after iteration {done} of {self.total}; saved "
                  f"{self.ckpt_path}\nresume with: nasfcos train {cfg.model} --out {self.out} "
                  "--resume", file=sys.stderr, flush=True)
            raise KeyboardInterrupt
        return done

    def undo(self) -> None:
        """Put the run folder back as it was before this run (a run that failed before its
        first checkpoint leaves nothing behind)."""
        for name, data in self.before.items():
            if data is None:
                (self.out / name).unlink(missing_ok=True)
            else:
                atomic_write_bytes(self.out / name, data)
        if self.made_out:
            with contextlib.suppress(OSError):
                self.out.rmdir()

    # -- finish ---------------------------------------------------------------------------
    def _save_final(self) -> None:
        cfg, ds = self.cfg, self.ds
        atomic_write_bytes(self.out / "final.pt", _torch_bytes({
            "model": self.model.state_dict(), "num_classes": ds.num_classes,
            "cat_ids": ds.cat_ids, "class_names": ds.class_names, "model_sha256": self.model_sha,
            "model_kwargs": cfg.model_kwargs, "min_size": cfg.min_size,
            "max_size": cfg.max_size, "eval_batch": cfg.eval_batch}))
        if cfg.save_backbone:
            atomic_write_bytes(self.out / "backbone.pt",
                               _torch_bytes(backbone_state_dict(self.model)))
            atomic_write_json(self.out / "backbone.json", {
                "backbone": self.info.backbone, "sha256": sha256_file(self.out / "backbone.pt"),
                "model": Path(cfg.model).name, "model_sha256": self.model_sha, "data": cfg.data,
                "data_manifest": _data_manifest(cfg.data), "iters": self.total,
                "config": asdict(cfg)})

    def _evaluate(self, summary: dict[str, Any]) -> None:
        cfg = self.cfg
        if cfg.val_ann is not None:
            val: dict[str, Any] | None = {"ann": cfg.val_ann, "images": cfg.val_images or cfg.images}
        elif cfg.data is not None and has_split(cfg.data, "val"):
            val = {"data": cfg.data}
        else:
            val = None
        if cfg.eval and val is None:
            warnings.warn("no validation split (give --val-ann with --ann, or a data folder "
                          "with a val split): the final evaluation is skipped", stacklevel=4)
            summary["eval_skipped"] = "no validation split"
        if cfg.eval and val is not None:
            ecfg = EvalConfig(min_size=cfg.min_size, max_size=cfg.max_size,
                              batch_size=cfg.eval_batch)
            self.model.eval()
            metrics = evaluate(module_detections(self.model), split="val", cfg=ecfg,
                               progress=self.progress, model_cat_ids=self.ds.cat_ids, **val)
            self.model.train()
            atomic_write_json(self.out / "eval.json", metrics)
            summary["eval"] = {k: metrics[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}

    def finish(self) -> dict[str, Any]:
        """Final weights, the evaluation on the val split and summary.json (main process)."""
        # cpu_s: CPU time of this process (all threads) in the loop; on a shared machine
        # cpu_s / threads is what the loop costs on idle cores, time_s what it took here
        summary: dict[str, Any] = {
            "iters": self.total, "start_iter": self.start,
            "time_s": round(time.time() - self.t0, 2),
            "cpu_s": round(time.process_time() - self.c0, 2), "threads": torch.get_num_threads(),
            "final": self.last, "skipped_steps": self.skipped,
            "backbone_weights": self.backbone_info, "out": str(self.out), "world": self.d.world}
        if self.d.main:
            self._save_final()
            self._evaluate(summary)
            summary["total_time_s"] = round(time.time() - self.t0, 2)  # loop + final evaluation
            summary["total_cpu_s"] = round(time.process_time() - self.c0, 2)
            atomic_write_json(self.out / "summary.json", summary)
        if self.d.world > 1:
            import torch.distributed as dist

            dist.barrier()
        return summary


def train(cfg: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data``; returns the summary (also ``summary.json``)."""
    if (cfg.epochs is None) == (cfg.iters is None):
        raise FieldError("iters", "give exactly one of epochs and iters")
    trainer = _Trainer(cfg.validate(), progress)
    try:
        trainer.run()
    except BaseException:
        if trainer.d.main and not trainer.checkpointed:
            trainer.undo()
        raise
    return trainer.finish()
