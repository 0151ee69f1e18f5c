"""The proxy task's feature cache: frozen-backbone features and FCOS targets on disk.

NAS-FCOS (paper 3.3, 4.1) never fine-tunes the backbone during the search, so its
features are computed once.  :func:`build_cache` splits a COCO-format dataset (a
seeded split of one annotation file into *meta-train* and *meta-val*), resizes each
image to a short side, takes a random square crop (zero-padded when the image is
smaller), runs the frozen backbone and stores::

    CACHE/arrays/{split}_c2.npy .. {split}_c5.npy   float16 [N, C_l, H_l, W_l]
    CACHE/arrays/{split}_labels.npy                 int16   [N, L]  class or -1
    CACHE/arrays/{split}_reg.npy                    float32 [N, L, 4] (l, t, r, b) px
    CACHE/arrays/{split}_ctr.npy                    float32 [N, L]  centerness target
    CACHE/arrays/{split}_source.npy                 int64   [N, 2]  (COCO image id, view)
    CACHE/manifest.json                             written last: settings, sizes, hashes

``split`` is ``train`` (meta-train) or ``val`` (meta-val); ``L`` counts the locations of
p3..p7 (FCOS order, :mod:`nasfcos.fcos.losses`).  Arrays are plain ``.npy`` files, opened
memory-mapped.  While building, ``CACHE/progress.json`` records the finished chunks so
an interrupted build resumes where it stopped; the manifest (with the sha256 of every
array) is written atomically at the very end, so a cache without one is partial.

:func:`open_cache` refuses a partial, corrupt (checksum) or mismatched (settings,
dataset) cache with a one-line :class:`~nasfcos.errors.CacheError`; :func:`build_cache`
resumes a partial build, rebuilds a corrupt one, and refuses to overwrite a cache made
with other settings unless asked to.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from nasfcos.errors import CacheError, FieldError, NasfcosError
from nasfcos.fcos.losses import STRIDES, FcosTargets, compute_targets, default_size_ranges
from nasfcos.io import atomic_write_json, sha256_bytes, sha256_file
from nasfcos.progress import progress_bar

if TYPE_CHECKING:
    from nasfcos.search.proxy import ProxySettings

FORMAT = "nasfcos-feature-cache/1"
SPLITS: tuple[str, ...] = ("train", "val")
LEVELS: tuple[str, ...] = ("c2", "c3", "c4", "c5")
TARGET_ARRAYS: tuple[str, ...] = ("labels", "reg", "ctr", "source")
MANIFEST = "manifest.json"
PROGRESS = "progress.json"
ARRAYS = "arrays"
#: Caches up to this many bytes are read into memory on open (larger: memory-mapped).
IN_MEMORY_BYTES = 1 << 29


# ------------------------------------------------------------------------------------------
# the frozen backbone: the compiler's (compiler/pasted_backbone.py), never a second copy
# ------------------------------------------------------------------------------------------
#: Identity of random backbone weights (the compiler's initialisation under this seed).
RANDOM_INIT_SEED = 0


@dataclass(frozen=True)
class FrozenBackbone:
    """A frozen backbone of :mod:`nasfcos.compiler.backbones` with the detector's image
    normalisation in front, and the identity of its weights (for the cache manifest)."""

    name: str
    module: torch.nn.Module
    mean: Tensor  # [1, 3, 1, 1]
    std: Tensor  # [1, 3, 1, 1]
    weights_id: str  # "sha256:<hex>" of the weights file, or "random:<seed>"

    @torch.no_grad()
    def __call__(self, images: Tensor) -> list[Tensor]:
        """``[N, 3, H, W]`` RGB in [0, 1] -> ``[c2, c3, c4, c5]`` float32 (strides 4..32)."""
        return [f.float() for f in self.module((images - self.mean) / self.std)]


def build_backbone(name: str, weights: str | Path | None = None) -> FrozenBackbone:
    """The compiler's backbone ``name`` in eval mode without gradients: weights from a
    torchvision-format state_dict file (a path, or a name of :mod:`nasfcos.fcos.weights`,
    checked against its sha256), or random from :data:`RANDOM_INIT_SEED` (``None``)."""
    from nasfcos.compiler.backbones import build_backbone as compiler_backbone
    from nasfcos.compiler.backbones import image_normalization
    from nasfcos.fcos.weights import shipped_weights

    if weights is not None:
        weights = shipped_weights(str(weights)) or Path(weights)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        module = compiler_backbone(name, weights)
    weights_id = f"sha256:{sha256_file(weights)}" if weights is not None else f"random:{RANDOM_INIT_SEED}"
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in image_normalization())
    return FrozenBackbone(name, module, mean, std, weights_id)


# ------------------------------------------------------------------------------------------
# geometry helpers
# ------------------------------------------------------------------------------------------
def output_level_sizes(c_sizes: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """(H, W) of p3..p7 from those of c2..c5: p3..p5 take c3..c5's sizes, p6 and p7 halve
    (rounding up, as a stride-2 3x3 convolution with padding 1 does)."""
    p = [c_sizes[1], c_sizes[2], c_sizes[3]]
    for _ in range(2):
        h, w = p[-1]
        p.append(((h + 1) // 2, (w + 1) // 2))
    return tuple(p)


def scaled_size_ranges(scale: float) -> tuple[tuple[float, float], ...]:
    """FCOS's per-level regression ranges (0/64/128/256/512/inf px) times ``scale``
    (small crops need smaller ranges, or every object lands on p3)."""
    return tuple((lo * scale, hi * scale) for lo, hi in default_size_ranges(len(STRIDES)))


def location_strides(level_sizes: tuple[tuple[int, int], ...]) -> Tensor:
    """Stride of every location, float32 ``[L]`` (FCOS order)."""
    return torch.cat([torch.full((h * w,), float(s)) for (h, w), s in zip(level_sizes, STRIDES, strict=True)])


# ------------------------------------------------------------------------------------------
# the opened cache
# ------------------------------------------------------------------------------------------
@dataclass
class CacheSplit:
    """One split of an opened cache: features ``[N, C, H, W]`` per level and targets."""

    name: str
    features: list[np.ndarray]  # float16, memory-mapped or in memory
    labels: np.ndarray  # int16 [N, L]
    reg: np.ndarray  # float32 [N, L, 4]
    ctr: np.ndarray  # float32 [N, L]
    source: np.ndarray  # int64 [N, 2]
    strides: Tensor  # float32 [L]
    level_sizes: tuple[tuple[int, int], ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, index: np.ndarray | list[int], device: torch.device | str = "cpu"
              ) -> tuple[list[Tensor], FcosTargets]:
        """Features (float32 ``[B, C, H, W]`` per level c2..c5) and targets of rows ``index``."""
        idx = np.asarray(index, dtype=np.int64)
        order = np.argsort(idx, kind="stable")  # sorted reads are kinder to memory maps
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        sidx = idx[order]

        def take(a: np.ndarray) -> Tensor:
            return torch.from_numpy(np.ascontiguousarray(a[sidx][inv]))

        feats = [take(f).to(device=device, dtype=torch.float32) for f in self.features]
        targets = FcosTargets(take(self.labels).to(device=device, dtype=torch.int64),
                              take(self.reg).to(device), take(self.ctr).to(device),
                              self.strides.to(device), self.level_sizes)
        return feats, targets


@dataclass
class FeatureCache:
    """An opened, verified feature cache (see the module docstring)."""

    path: Path
    manifest: dict[str, Any]
    train: CacheSplit
    val: CacheSplit

    @property
    def key(self) -> dict[str, Any]:
        """The settings the cache was built with (``ProxySettings.cache_key()``)."""
        return dict(self.manifest["cache_key"])

    @property
    def in_channels(self) -> tuple[int, ...]:
        return tuple(int(c) for c in self.manifest["in_channels"])

    @property
    def num_classes(self) -> int:
        return int(self.manifest["num_classes"])

    @property
    def level_sizes(self) -> tuple[tuple[int, int], ...]:
        return self.train.level_sizes

    def require(self, settings: ProxySettings) -> None:
        """Refuse ``settings`` whose cache fields differ from those the cache was built with."""
        require_key(self.path, settings, self.key)


def array_specs(feature_shapes: Iterable[Iterable[int]], level_sizes: Iterable[tuple[int, int]]
                ) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Per-row shape and dtype of every array of a split (levels c2..c5, then the targets)."""
    n_loc = sum(h * w for h, w in level_sizes)
    specs: dict[str, tuple[tuple[int, ...], Any]] = {
        lvl: (tuple(shape), np.float16) for lvl, shape in zip(LEVELS, feature_shapes, strict=True)}
    specs.update({"labels": ((n_loc,), np.int16), "reg": ((n_loc, 4), np.float32),
                  "ctr": ((n_loc,), np.float32), "source": ((2,), np.int64)})
    return specs


def _cache_file(cache: Path, split: str, name: str) -> Path:
    return cache / ARRAYS / f"{split}_{name}.npy"


def _read_manifest(path: Path) -> dict[str, Any]:
    mpath = path / MANIFEST
    if not mpath.is_file():
        if (path / PROGRESS).is_file():
            raise CacheError(f"{path}: cache is only partly built (build it again to resume)")
        raise CacheError(f"{path}: not a feature cache (no {MANIFEST})")
    try:
        manifest = json.loads(mpath.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CacheError(f"{mpath}: unreadable manifest ({type(exc).__name__}); rebuild the cache") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CacheError(f"{mpath}: not a {FORMAT} manifest; rebuild the cache")
    for field in ("cache_key", "settings", "files", "splits", "in_channels", "num_classes", "level_sizes"):
        if field not in manifest:
            raise CacheError(f"{mpath}: manifest lacks '{field}'; rebuild the cache")
    return manifest


def verify_files(path: Path, manifest: dict[str, Any], *, full: bool = True) -> None:
    """Check every array listed in the manifest: present, same size, same sha256 (``full``)."""
    for rel, info in sorted(manifest["files"].items()):
        fpath = path / rel
        if not fpath.is_file():
            raise CacheError(f"{path}: missing cache file {rel}; rebuild the cache")
        if fpath.stat().st_size != int(info["bytes"]):
            raise CacheError(f"{path}: cache file {rel} has the wrong size (truncated?); rebuild the cache")
        if full and sha256_file(fpath) != info["sha256"]:
            raise CacheError(f"{path}: cache file {rel} fails its checksum (corrupt); rebuild the cache")


def key_difference(want: dict[str, Any], have: dict[str, Any]) -> str | None:
    """First differing field between two cache keys, as ``name: have vs want``."""
    for k in sorted(set(want) | set(have)):
        if json.dumps(want.get(k)) != json.dumps(have.get(k)):
            return f"{k}: cache has {json.dumps(have.get(k))}, wanted {json.dumps(want.get(k))}"
    return None


def require_key(path: Path, settings: ProxySettings, key: dict[str, Any]) -> None:
    """:class:`CacheError` naming the first field where ``settings.cache_key()`` differs from ``key``."""
    diff = key_difference(settings.cache_key(), key)
    if diff is not None:
        raise CacheError(f"{path}: cache was built with other settings ({diff})")


def _open_array(fpath: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(fpath, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CacheError(f"{fpath}: unreadable cache array ({exc}); rebuild the cache") from exc


def machine_verified(path: Path, manifest: dict[str, Any]) -> Path | None:
    """The stamp whose presence says: this machine has verified the cache at ``path`` in its
    present state (manifest content and every array's size, mtime, inode).  It lives in a
    folder of the temp dir that only this user can write (else ``None``: verify fully)."""
    import os
    import stat
    import tempfile

    folder = Path(tempfile.gettempdir()) / f"nasfcos-verified-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        st = folder.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            return None
        state = [str(path.resolve()), json.dumps(manifest, sort_keys=True)]
        for name in sorted(manifest["files"]):
            f = (path / name).stat()
            state.append(f"{name}:{f.st_size}:{f.st_mtime_ns}:{f.st_ino}:{f.st_dev}")
    except OSError:
        return None
    return folder / f"{sha256_bytes(chr(10).join(state).encode())[:40]}.json"


def open_cache(path: str | Path, settings: ProxySettings | None = None, *,
               verify: str = "full", in_memory: bool | None = None) -> FeatureCache:
    """Open and verify a built cache.

    ``settings``: when given, its :meth:`ProxySettings.cache_key` must equal the cache's
    (else :class:`CacheError` naming the first differing field).  ``verify``: ``"full"``
    (sha256 of every array, the default), ``"size"`` (file sizes and array headers
    only, for re-opening a cache already verified in this session), or ``"machine"``: full
    the first time on this machine, then size only while the files are unchanged (a stamp
    per cache state in a private temp folder: :func:`machine_verified`), so eight workers
    of one GPU server hash a 50 GB cache once, not eight times.  ``in_memory``:
    load the arrays into memory (default: when they total at most 512 MiB).
    """
    path = Path(path)
    if not path.is_dir():
        raise CacheError(f"{path}: no such feature cache")
    if verify not in ("full", "size", "machine"):
        raise ValueError(f"verify must be 'full', 'size' or 'machine', not {verify!r}")
    manifest = _read_manifest(path)
    if settings is not None:
        require_key(path, settings, manifest["cache_key"])
    stamp = machine_verified(path, manifest) if verify == "machine" else None
    full = verify == "full" or (stamp is not None and not stamp.exists())
    verify_files(path, manifest, full=full)
    if full and stamp is not None:
        atomic_write_json(stamp, {"cache": str(path.resolve())})
    total = sum(int(i["bytes"]) for i in manifest["files"].values())
    mmap = not (in_memory if in_memory is not None else total <= IN_MEMORY_BYTES)
    level_sizes = tuple((int(h), int(w)) for h, w in manifest["level_sizes"])
    strides = location_strides(level_sizes)
    specs = array_specs(manifest["feature_shapes"], level_sizes)
    splits: dict[str, CacheSplit] = {}
    for split in SPLITS:
        n = int(manifest["splits"][split]["rows"])
        arrays = {name: _open_array(_cache_file(path, split, name), mmap) for name in (*LEVELS, *TARGET_ARRAYS)}
        for name, (row_shape, dtype) in specs.items():
            shape = (n, *row_shape)
            a = arrays[name]
            if tuple(a.shape) != shape or a.dtype != dtype:
                raise CacheError(f"{path}: {split}_{name}.npy has shape {tuple(a.shape)} {a.dtype}, "
                                 f"manifest says {tuple(shape)} {np.dtype(dtype)}; rebuild the cache")
        splits[split] = CacheSplit(split, [arrays[lvl] for lvl in LEVELS], arrays["labels"], arrays["reg"],
                                   arrays["ctr"], arrays["source"], strides, level_sizes)
    return FeatureCache(path, manifest, splits["train"], splits["val"])


# ------------------------------------------------------------------------------------------
# building
# ------------------------------------------------------------------------------------------
def dataset_fingerprint(ann_file: Path, image_dir: Path, file_names: list[str]) -> str:
    """sha256 over the annotation file's content and each image's name and byte size."""
    parts = [sha256_file(ann_file)]
    for name in file_names:
        p = image_dir / name
        parts.append(f"{name}:{p.stat().st_size if p.is_file() else -1}")
    return sha256_bytes("\n".join(parts).encode("utf-8"))


def split_indices(n: int, settings: ProxySettings) -> dict[str, list[int]]:
    """Seeded split of dataset indices ``0..n-1`` into meta-train / meta-val (each sorted).

    meta-val takes ``meta_val_images`` images when set (the paper: 1715), else
    ``round(n * meta_val_fraction)``, always at least 1 and leaving at least 1;
    meta-train takes the rest, capped by ``meta_train_images`` (the paper: 4000).  With both
    counts set and fewer images than their sum, the images are split in their proportion
    (1715:4000 on a set smaller than VOC's 5715), not all but one to meta-val.
    """
    if n < 2:
        raise NasfcosError(f"need at least 2 images to split into meta-train and meta-val, got {n}")
    perm = np.random.default_rng(settings.split_seed).permutation(n)
    want_val, want_train = settings.meta_val_images, settings.meta_train_images
    if want_val is not None and want_train is not None and n < want_val + want_train:
        n_val = int(round(n * want_val / (want_val + want_train)))
    elif want_val is not None:
        n_val = want_val
    else:
        n_val = int(round(n * settings.meta_val_fraction))
    n_val = min(max(1, n_val), n - 1)
    n_train = n - n_val
    if settings.meta_train_images is not None:
        n_train = min(n_train, settings.meta_train_images)
    val = sorted(int(i) for i in perm[:n_val])
    train = sorted(int(i) for i in perm[n_val : n_val + n_train])
    return {"train": train, "val": val}


def _wipe(out: Path) -> None:
    """Remove what a cache build writes (never anything else in ``out``)."""
    shutil.rmtree(out / ARRAYS, ignore_errors=True)
    for name in (MANIFEST, PROGRESS):
        (out / name).unlink(missing_ok=True)


class CacheConflict(CacheError):
    """The folder holds a cache (or the synthetic set of one) built with other settings.
    ``problem`` says how, without advice: each caller names its own way out (here:
    ``overwrite=True``; a command: its flags)."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"{problem}; pass overwrite=True or use another folder")


def _ensure_data(data_dir: str | Path | None, out: Path, settings: ProxySettings, progress: bool,
                 keep: bool = False) -> Path:
    """The data folder to use: ``data_dir``, or the preset's synthetic set written to ``out/synth``
    (``keep``: a built cache stands on the set there, which is then never rewritten)."""
    if data_dir is not None:
        return Path(data_dir)
    if settings.synth_images <= 0:
        raise FieldError("data", "no data folder given and the preset has no synthetic default")
    from nasfcos.fcos.synth import PRESETS as SYNTH_PRESETS
    from nasfcos.fcos.synth import SynthConfig, write_synthetic

    synth = out / "synth"
    cfg = SynthConfig(**{**SYNTH_PRESETS[settings.synth_preset], "images": settings.synth_images,
                         "size": settings.synth_size, "seed": settings.synth_seed})
    try:
        have = json.loads((synth / "manifest.json").read_text("utf-8")).get("config", {})
        same = all(have.get(k) == v for k, v in asdict(cfg).items())
    except (OSError, ValueError, AttributeError):
        same = False
    if not same:
        if keep and synth.exists():
            raise CacheConflict(f"{out}: its cache was built on a synthetic set with other options")
        write_synthetic(synth, cfg, progress=progress)
    return synth


@dataclass
class _Build:
    """What one :func:`build_cache` call builds: planned by :func:`_plan`, then resumed,
    filled and sealed by the stages after it."""

    out: Path
    settings: ProxySettings
    dataset: Any  # nasfcos.fcos.data.CocoDetection
    ann: Path
    images: Path
    backbone: FrozenBackbone
    index: dict[str, list[int]]  # dataset indices per split
    rows: dict[str, list[tuple[int, int]]]  # (dataset index, view) per split
    feature_shapes: list[tuple[int, ...]]  # [C, H, W] of c2..c5
    level_sizes: tuple[tuple[int, int], ...]  # p3..p7
    ranges: tuple[tuple[float, float], ...]
    build_id: dict[str, Any]  # what a partial build must match to be resumed


def _check_folder(out: Path, settings: ProxySettings, overwrite: bool) -> None:
    """Refuse, before any work (the synthetic set included), a path that is not a folder, a
    folder that is not a cache, and a complete cache of other settings (unless ``overwrite``)."""
    if out.exists() and not out.is_dir():
        raise CacheError(f"{out}: exists and is not a folder")
    if out.is_dir():
        known = {MANIFEST, PROGRESS, ARRAYS, "synth"}
        others = [p.name for p in out.iterdir() if p.name not in known and not p.name.startswith(".")]
        if others and not (out / MANIFEST).exists() and not (out / PROGRESS).exists():
            raise CacheError(f"{out}: folder is not empty and is not a feature cache (found {others[0]})")
    if (out / MANIFEST).exists() and not overwrite:
        try:
            old_key = _read_manifest(out)["cache_key"]
        except (CacheError, KeyError, TypeError):
            old_key = None
        diff = key_difference(settings.cache_key(), old_key) if isinstance(old_key, dict) else None
        if diff:
            raise CacheConflict(f"{out}: holds a cache built differently ({diff})")


def _plan(data_dir: str | Path | None, out: Path, settings: ProxySettings, *, progress: bool,
          overwrite: bool, say: Callable[[str], None]) -> _Build:
    """Data, split, backbone and array shapes of the build (no array is touched yet)."""
    from nasfcos.fcos.data import CocoDetection, TransformConfig, resolve_split

    out.mkdir(parents=True, exist_ok=True)
    data = _ensure_data(data_dir, out, settings, progress, keep=(out / MANIFEST).exists() and not overwrite)
    ann, images = resolve_split(data, settings.source_split)
    transform = TransformConfig(min_size=settings.short_side, max_size=settings.max_size,
                                crop=(settings.crop, settings.crop), hflip=0.0, min_box_size=2.0)
    dataset = CocoDetection(ann, images, transform, train=True, seed=settings.crop_seed)
    if dataset.num_classes > np.iinfo(np.int16).max:
        raise NasfcosError(f"{ann}: too many categories ({dataset.num_classes})")
    fingerprint = dataset_fingerprint(ann, images, [dataset.coco.imgs[i]["file_name"] for i in dataset.ids])
    backbone = build_backbone(settings.backbone, settings.backbone_weights)
    if settings.backbone_weights is None and settings.backbone != "tiny":
        say(f"warning: no backbone weights given; {settings.backbone} has random weights "
            "(fine for speed tests, meaningless for a search)")
    index = split_indices(len(dataset), settings)
    rows = {s: [(i, v) for i in index[s] for v in range(settings.crops_per_image)] for s in SPLITS}
    with torch.no_grad():
        c_out = backbone(torch.zeros(1, 3, settings.crop, settings.crop))
    feature_shapes = [tuple(int(d) for d in f.shape[1:]) for f in c_out]
    build_id = {"cache_key": settings.cache_key(), "dataset_sha256": fingerprint, "weights": backbone.weights_id,
                "rows": {s: len(r) for s, r in rows.items()}, "chunk_size": settings.chunk_size}
    return _Build(out, settings, dataset, ann, images, backbone, index, rows, feature_shapes,
                  output_level_sizes([(s[1], s[2]) for s in feature_shapes]),
                  scaled_size_ranges(settings.size_range_scale), build_id)


def _check_complete(b: _Build, *, resume: bool, overwrite: bool, say: Callable[[str], None]
                    ) -> dict[str, int] | None:
    """A folder with a manifest: ``None`` (keep it) if it is this build's and verifies, else
    wiped (0 rows stored per split)."""
    try:
        manifest = _read_manifest(b.out)
        old = {"cache_key": manifest["cache_key"], "dataset_sha256": manifest.get("dataset_sha256"),
               "weights": manifest.get("backbone_weights")}
    except CacheError:
        manifest, old = None, None
    want = {k: b.build_id[k] for k in ("cache_key", "dataset_sha256", "weights")}
    if old is not None and old != want and not overwrite:
        diff = key_difference(want["cache_key"], old["cache_key"]) or (
            "dataset changed" if old["dataset_sha256"] != want["dataset_sha256"] else "backbone weights changed")
        raise CacheConflict(f"{b.out}: holds a cache built differently ({diff})")
    if old == want and resume and manifest is not None:
        try:
            verify_files(b.out, manifest)
            say(f"{b.out}: cache is complete and verified")
            (b.out / PROGRESS).unlink(missing_ok=True)
            return None
        except CacheError as exc:
            say(f"{exc} -> rebuilding")
    _wipe(b.out)
    return {s: 0 for s in SPLITS}


def _check_partial(b: _Build, *, resume: bool, overwrite: bool, say: Callable[[str], None]) -> dict[str, int]:
    """A folder with a progress file: the rows stored per split if it is this build's, else
    wiped (0 rows)."""
    try:
        prog = json.loads((b.out / PROGRESS).read_text("utf-8"))
    except (OSError, ValueError):
        prog = {}
    if not isinstance(prog, dict):
        prog = {}
    if prog.get("build") == b.build_id and resume:
        done = {s: int(prog.get("done", {}).get(s, 0)) for s in SPLITS}
        say(f"{b.out}: resuming ({done['train']}/{len(b.rows['train'])} train, "
            f"{done['val']}/{len(b.rows['val'])} val rows done)")
        return done
    key = b.build_id["cache_key"]
    old_key = prog.get("build", {}).get("cache_key") if isinstance(prog.get("build"), dict) else None
    if isinstance(old_key, dict) and old_key != key and not overwrite:
        diff = key_difference(key, old_key)
        raise CacheConflict(f"{b.out}: holds a partial cache built differently ({diff})")
    if resume:
        say(f"{b.out}: partial cache from another build (data, weights or chunking differ); restarting")
    _wipe(b.out)
    return {s: 0 for s in SPLITS}


def _open_arrays(b: _Build, done: dict[str, int], say: Callable[[str], None]) -> dict[str, dict[str, np.ndarray]]:
    """The arrays of every split, memory-mapped for writing: those of a resumed split as they
    are (each must have its specified shape and dtype, else that split starts over), the
    others created."""
    (b.out / ARRAYS).mkdir(exist_ok=True)
    specs = array_specs(b.feature_shapes, b.level_sizes)
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for split in SPLITS:
        n_rows = len(b.rows[split])
        opened: dict[str, np.ndarray] = {}
        if done[split] > 0:  # resume: every array of the split must be there, as specified
            try:
                for name, (shape, dtype) in specs.items():
                    mm = np.lib.format.open_memmap(_cache_file(b.out, split, name), mode="r+")
                    if tuple(mm.shape) != (n_rows, *shape) or mm.dtype != dtype:
                        raise ValueError(f"{name}: unexpected shape or dtype")
                    opened[name] = mm
            except (OSError, ValueError) as exc:
                say(f"{b.out}: split {split} cannot be resumed ({exc}); restarting it")
                done[split], opened = 0, {}
        if done[split] == 0:
            for name, (shape, dtype) in specs.items():
                opened[name] = np.lib.format.open_memmap(_cache_file(b.out, split, name), mode="w+",
                                                         dtype=dtype, shape=(n_rows, *shape))
        arrays[split] = opened
    return arrays


def _store_chunk(b: _Build, arr: dict[str, np.ndarray], split: str, start: int, stop: int) -> None:
    """Run the backbone on rows ``start:stop`` of ``split`` and store features and targets."""
    from nasfcos.fcos.data import pad_batch

    imgs, boxes, labels, source = [], [], [], []
    for ds_index, view in b.rows[split][start:stop]:
        b.dataset.set_epoch(view)
        image, target = b.dataset[ds_index]
        imgs.append(image)
        boxes.append(target["boxes"])
        labels.append(target["labels"])
        source.append((int(target["image_id"]), view))
    feats = b.backbone(pad_batch(imgs, size=(b.settings.crop, b.settings.crop)))
    for lvl, f in zip(LEVELS, feats, strict=True):
        f16 = f.to(torch.float16).numpy()
        if not np.isfinite(f16).all():
            raise CacheError(f"backbone features overflow float16 at {lvl} (bad backbone weights?)")
        arr[lvl][start:stop] = f16
    t = compute_targets(boxes, labels, b.level_sizes, STRIDES, b.ranges, b.settings.center_sampling_radius)
    arr["labels"][start:stop] = t.labels.numpy().astype(np.int16)
    arr["reg"][start:stop] = t.reg.numpy()
    arr["ctr"][start:stop] = t.ctr.numpy()
    arr["source"][start:stop] = np.asarray(source, np.int64)
    for a in arr.values():
        a.flush()


def _fill(b: _Build, arrays: dict[str, dict[str, np.ndarray]], done: dict[str, int], *, progress: bool,
          on_chunk: Callable[[str, int, int], None] | None) -> None:
    """Store every chunk not done yet, recording each in the progress file as it lands."""

    def save_progress() -> None:
        atomic_write_json(b.out / PROGRESS, {"format": FORMAT, "build": b.build_id, "done": done})

    save_progress()
    bar = progress_bar(sum(len(r) for r in b.rows.values()), desc="feature cache", unit="img", enabled=progress,
                       initial=done["train"] + done["val"])
    try:
        for split in SPLITS:
            n, size = len(b.rows[split]), max(1, b.settings.chunk_size)
            for start, stop in ((i, min(n, i + size)) for i in range(0, n, size)):
                if stop <= done[split]:
                    continue
                _store_chunk(b, arrays[split], split, start, stop)
                done[split] = stop
                save_progress()
                if bar is not None:
                    bar.update(stop - start)
                if on_chunk is not None:
                    on_chunk(split, start, stop)
    finally:
        if bar is not None:
            bar.close()
    for split in SPLITS:
        for a in arrays[split].values():
            a.flush()


def _write_manifest(b: _Build) -> None:
    """Seal the build: the manifest with every array's sha256, written atomically, last."""
    files = {}
    for split in SPLITS:
        for name in (*LEVELS, *TARGET_ARRAYS):
            fpath = _cache_file(b.out, split, name)
            files[f"{ARRAYS}/{fpath.name}"] = {"sha256": sha256_file(fpath), "bytes": fpath.stat().st_size}
    ds, settings = b.dataset, b.settings
    manifest = {
        "format": FORMAT,
        "cache_key": b.build_id["cache_key"],
        "settings": settings.to_dict(),
        "backbone": settings.backbone,
        "backbone_weights": b.backbone.weights_id,
        "dataset": {"annotations": str(b.ann), "images": str(b.images), "num_images": len(ds)},
        "dataset_sha256": b.build_id["dataset_sha256"],
        "num_classes": ds.num_classes,
        "class_names": ds.class_names,
        "in_channels": [int(s[0]) for s in b.feature_shapes],
        "feature_shapes": [list(s) for s in b.feature_shapes],
        "feature_dtype": "float16",
        "level_sizes": [list(s) for s in b.level_sizes],
        "strides": list(STRIDES),
        "size_ranges": [[lo, hi if math.isfinite(hi) else None] for lo, hi in b.ranges],
        "splits": {s: {"images": len(b.index[s]), "rows": len(b.rows[s]),
                       "image_ids": [int(ds.ids[i]) for i in b.index[s]]} for s in SPLITS},
        "files": files,
        "torch_version": torch.__version__,
    }
    atomic_write_json(b.out / MANIFEST, manifest, indent=1)
    (b.out / PROGRESS).unlink(missing_ok=True)


def build_cache(data_dir: str | Path | None, out_dir: str | Path, settings: ProxySettings, *,
                backbone_weights: str | Path | None = None, resume: bool = True,
                overwrite: bool = False, progress: bool = True,
                on_chunk: Callable[[str, int, int], None] | None = None,
                log: Callable[[str], None] | None = None) -> Path:
    """Build (or finish, or check) the feature cache for ``settings`` in ``out_dir``.

    ``data_dir``: a COCO-format data folder (``images/``, ``train.json``, ``val.json``);
    ``None`` uses the preset's synthetic set (written to ``out_dir/synth``).
    An existing complete cache with the same settings, data and weights is verified and
    kept; a corrupt one is rebuilt; a partial one is resumed (``resume=False`` starts
    over).  One built with other settings raises :class:`CacheConflict` unless
    ``overwrite`` (a command adds its own advice to ``CacheConflict.problem``).
    ``on_chunk(split, start, stop)`` is called after every stored chunk (progress hooks,
    tests).  Returns ``out_dir``.

    Stages: :func:`_check_folder` (before any work), :func:`_plan`, :func:`_check_complete` or
    :func:`_check_partial`, :func:`_open_arrays`, :func:`_fill`, :func:`_write_manifest` (last).
    """
    say = log or (lambda msg: None)
    if backbone_weights is not None:
        settings = settings.replace(backbone_weights=str(backbone_weights))
    out = Path(out_dir)
    _check_folder(out, settings, overwrite)
    b = _plan(data_dir, out, settings, progress=progress, overwrite=overwrite, say=say)
    done: dict[str, int] | None = {s: 0 for s in SPLITS}  # rows stored per split; None: complete
    if (out / MANIFEST).exists():
        done = _check_complete(b, resume=resume, overwrite=overwrite, say=say)
    elif (out / PROGRESS).exists():
        done = _check_partial(b, resume=resume, overwrite=overwrite, say=say)
    if done is None:
        return out
    arrays = _open_arrays(b, done, say)
    _fill(b, arrays, done, progress=progress, on_chunk=on_chunk)
    del arrays
    _write_manifest(b)
    say(f"{out}: cache complete ({len(b.rows['train'])} meta-train, {len(b.rows['val'])} meta-val rows)")
    return out
