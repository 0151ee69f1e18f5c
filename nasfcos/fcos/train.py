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

import io
import json
import math
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from nasfcos.errors import CacheError, NasfcosError
from nasfcos.fcos.data import CocoDetection, TransformConfig, collate, resolve_split
from nasfcos.fcos.evaluate import EvalConfig, evaluate, module_detections
from nasfcos.fcos.losses import FcosConfig, fcos_losses
from nasfcos.io import atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file
from nasfcos.modelfile import RawForward, load_model_file
from nasfcos.weights import load_weights_file

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


# The paper's COCO schedule (FCOS 1x): lr 0.01 at batch 16, 90k iterations.
PRESETS: dict[str, dict[str, Any]] = {
    "coco": {"iters": 90_000, "steps": (60_000, 80_000), "warmup_iters": 500,
             "warmup_factor": 1.0 / 3.0, "momentum": 0.9, "weight_decay": 1e-4, "batch": 16,
             "min_size": 800, "max_size": 1333, "hflip": 0.5},
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
    if not hasattr(module, "Detector"):
        raise NasfcosError("the model file has no Detector: compile it with --detector")
    return module.build(num_classes=num_classes, **overrides)


def load_backbone_weights(model: nn.Module, path: str | Path) -> dict[str, int]:
    """Load a backbone state_dict into ``model.backbone`` (prefixes ``module.``,
    ``backbone.``, ``body.`` stripped); returns counts of loaded / missing keys."""
    ckpt = load_weights_file(path)["model"]
    own = model.backbone.state_dict()  # type: ignore[union-attr]
    state: dict[str, torch.Tensor] = {}
    for k, v in ckpt.items():
        for prefix in ("module.", "detector.", "backbone.", "body."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        if k in own and own[k].shape == v.shape:
            state[k] = v
    if not state:
        raise NasfcosError(f"{path}: no tensor matches the model's backbone")
    model.backbone.load_state_dict(state, strict=False)  # type: ignore[union-attr]
    return {"loaded": len(state), "missing": len(own) - len(state)}


def _save(path: Path, obj: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def plot_losses(records: list[dict[str, Any]], path: Path) -> None:
    """Loss terms and total against iteration, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    its = [r["iter"] for r in records]
    for key in ("loss",) + LOSS_KEYS:
        ax.plot(its, [r[key] for r in records], label=key, lw=2 if key == "loss" else 1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def train(cfg: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data``; returns the summary (also ``summary.json``)."""
    if (cfg.epochs is None) == (cfg.iters is None):
        raise NasfcosError("give exactly one of --epochs or --iters")
    d, device = _init_distributed(cfg.device)
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    module = load_model_file(cfg.model)
    ann, img_dir = resolve_split(cfg.data, "train", cfg.ann, cfg.images)
    tcfg = TransformConfig(min_size=cfg.min_size, max_size=cfg.max_size, hflip=cfg.hflip, crop=cfg.crop)
    ds = CocoDetection(ann, img_dir, tcfg, train=True, seed=cfg.seed)
    model = build_detector(module, ds.num_classes, **cfg.model_kwargs)
    backbone_info = load_backbone_weights(model, cfg.backbone_weights) if cfg.backbone_weights else None
    model.to(device)
    if cfg.batch % d.world:
        raise NasfcosError(f"--batch {cfg.batch} is not divisible by {d.world} processes")
    per_rank = cfg.batch // d.world
    per_epoch = (len(ds) // d.world) // per_rank
    total = cfg.iters if cfg.iters is not None else cfg.epochs * per_epoch  # type: ignore[operator]
    if total <= 0:
        raise NasfcosError("nothing to train: the run has 0 iterations")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=base_lr(cfg), momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_multiplier(it, total, cfg))
    if cfg.amp and device.type != "cuda":
        # CPU bf16 autocast gives non-finite GroupNorm gradients on tiny maps: not worth it
        warnings.warn("--amp needs CUDA; training in float32 on this device", stacklevel=2)
        cfg = replace(cfg, amp=False)
    use_scaler = cfg.amp
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    amp_dtype = torch.float16
    model_sha = sha256_file(cfg.model)
    start = 0
    ckpt_path = out / "last.pt"
    if cfg.resume:
        if not ckpt_path.is_file():
            raise CacheError(f"{ckpt_path}: no checkpoint to resume from")
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ckpt.get("model_sha256") != model_sha or ckpt.get("num_classes") != ds.num_classes:
            raise CacheError(f"{ckpt_path}: checkpoint is for a different model file or data set")
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise CacheError(f"{ckpt_path}: checkpoint does not fit this model (other widths?)") from exc
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng"])
        start = int(ckpt["iter"])
        if start >= total:
            raise NasfcosError(f"{ckpt_path}: already at iteration {start} of {total}")
    elif ckpt_path.exists():
        raise NasfcosError(f"{out}: holds a run already (use --resume, or another --out)")
    metrics_path = out / "metrics.jsonl"
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_metrics(metrics_path) if r["iter"] <= start] if cfg.resume else []
        atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
        atomic_write_json(out / "config.json", {**asdict(cfg), "total_iters": total, "world": d.world})

    raw: nn.Module = RawForward(model)
    if d.world > 1:
        raw = nn.parallel.DistributedDataParallel(
            raw, device_ids=[device.index] if device.type == "cuda" else None)
    sampler = RunSampler(len(ds), per_rank, total, start, cfg.seed, d.rank, d.world)
    loader = DataLoader(_EpochAwareDataset(ds), batch_sampler=sampler, collate_fn=collate,
                        num_workers=cfg.workers, pin_memory=device.type == "cuda")
    ckpt_every = cfg.checkpoint_every or max(1, total // 10)
    bar = None
    if progress and d.main:
        from nasfcos.progress import progress_bar

        bar = progress_bar(total, initial=start, desc="train", unit="it")
    model.train()
    t0 = time.time()
    last: dict[str, float] = {}
    window: list[torch.Tensor] = []
    skipped = skipped_run = 0
    for it, (images, targets) in zip(range(start, total), loader, strict=True):
        images = images.to(device, non_blocking=True)
        boxes = [t["boxes"].to(device) for t in targets]
        labels = [t["labels"].to(device) for t in targets]
        with torch.autocast(device.type, dtype=amp_dtype, enabled=cfg.amp):
            cls, reg, ctr = raw(images)
        losses = fcos_losses(cls, reg, ctr, boxes, labels, cfg.fcos)
        loss = losses["cls"] + losses["box"] + losses["ctr"]
        if not torch.isfinite(loss):
            raise NasfcosError(f"loss became {float(loss)} at iteration {it} (lower --lr?)")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        max_norm = cfg.clip_grad if cfg.clip_grad is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if use_scaler or bool(torch.isfinite(grad_norm)):
            scaler.step(optimizer)  # the scaler itself skips steps with inf/nan gradients
            skipped_run = 0
        else:  # non-finite gradients without a scaler (fp32, bf16): skip this step
            skipped += 1
            skipped_run += 1
            if skipped_run > 20:
                raise NasfcosError(f"gradients non-finite for 20 iterations in a row at {it} (lower --lr?)")
        scaler.update()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        done = it + 1
        window.append(torch.stack([loss.detach(), *(losses[k].detach() for k in LOSS_KEYS)]))
        if done % cfg.log_every == 0 or done == total:
            vals = _mean_over_ranks(torch.stack(window).mean(0), d).tolist()
            window = []
            last = dict(zip(("loss",) + LOSS_KEYS, vals, strict=True))
            rec = {"iter": done, "epoch": it // per_epoch, "lr": lr, **last,
                   "grad_norm": float(grad_norm) if bool(torch.isfinite(grad_norm)) else None, "skipped": skipped, "time": round(time.time() - t0, 3)}
            if d.main:
                with open(metrics_path, "a") as fh:
                    fh.write(json.dumps(rec) + "\n")
        if bar is not None:
            bar.update(1)
            if last:  # the latest logged averages: no device sync per iteration
                bar.set_postfix({k: f"{v:.3f}" for k, v in last.items()}, refresh=False)
        if d.main and (done % ckpt_every == 0 or done == total):
            _save(ckpt_path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "rng": torch.get_rng_state(), "iter": done, "total": total,
                "num_classes": ds.num_classes, "cat_ids": ds.cat_ids, "model_sha256": model_sha,
                "model_kwargs": cfg.model_kwargs,
            })
            plot_losses(read_metrics(metrics_path), out / "loss.png")
    if bar is not None:
        bar.close()
    elapsed = time.time() - t0
    summary: dict[str, Any] = {"iters": total, "start_iter": start, "time_s": round(elapsed, 2),
                               "final": last, "skipped_steps": skipped, "backbone_weights": backbone_info,
                               "out": str(out), "world": d.world}
    if d.main:
        meta = {"model": model.state_dict(), "num_classes": ds.num_classes, "cat_ids": ds.cat_ids,
                "class_names": ds.class_names, "model_sha256": model_sha,
                "model_kwargs": cfg.model_kwargs}
        _save(out / "final.pt", meta)
        has_val = cfg.data is not None and (Path(cfg.data) / "val.json").is_file()
        if cfg.eval and has_val:
            ecfg = EvalConfig(min_size=cfg.min_size, max_size=cfg.max_size, batch_size=cfg.eval_batch)
            model.eval()
            metrics = evaluate(module_detections(model), data=cfg.data, split="val", cfg=ecfg,
                               progress=progress, model_cat_ids=ds.cat_ids)
            model.train()
            atomic_write_json(out / "eval.json", metrics)
            summary["eval"] = {k: metrics[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
        atomic_write_json(out / "summary.json", summary)
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()
    return summary
