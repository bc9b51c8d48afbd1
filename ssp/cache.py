"""Feature extraction and the safetensors feature store: extract once, reuse everywhere.

Three layers:

* :class:`FeatureStore` -- a content-addressed folder of ``.safetensors`` files. A *key* (a
  JSON-able dict describing everything that changes the numbers) is hashed into the file
  name and stored again inside the file, so a renamed or stale file is never returned.
  Writes are atomic; a truncated, corrupt or mismatched file is reported and rebuilt.
* :func:`extract_features` -- runs a backbone over a list of samples and returns
  L2-normalised global (and optionally local) features. ``views > 1`` follows Tip-Adapter's
  cache construction (Zhang et al., ECCV 2022, Sec. 3.1): ``views`` passes of the random
  train augmentation, raw features averaged over passes, then normalised; each pass's own
  (normalised) global feature is kept too, as training inputs for the fine-tuned adapters.
  Augmentation randomness is seeded per (seed, pass, image), so results do not depend on
  ``num_workers``. Under torchrun the batches are sharded over the processes
  (:mod:`ssp.distributed`) with the same result as one process.
* :func:`cached_features` -- the two together, with a key built from the backbone identity,
  the transform, the dataset / split, a digest of the image list, ``views`` and the seed.
  An unreadable image is a one-line :class:`ssp.data.ImageLoadError` naming the file, or,
  with ``skip_bad_images``, left out: the key is then that of the images actually encoded.

Storage (format version 2): ``global`` [N, D] float32, ``labels`` [N] int64, ``local``
[N, L, D] float16 (unit vectors; half the size) when local features were asked for, and
``views`` [E, N, D] float16 (each augmented pass's L2-normalised global feature) when
E = ``views`` > 1. Local and per-view features are returned as float32, rounded through
float16 on a cache miss too, so a miss and a later hit return identical tensors. Files of
another format version are never read (the version is in the key and the metadata).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset

from ssp._utils import atomic_path, check_int, l2_normalize

__all__ = [
    "FORMAT_VERSION",
    "CacheWarning",
    "FeatureStore",
    "extract_features",
    "sample_digest",
    "cached_features",
    "feature_key",
]

#: Bumped whenever the meaning or layout of stored features changes; part of every key and
#: of every file's metadata, so older files are never read as the new layout.
#: 1: global, labels, local. 2: adds ``views`` (per-view global features) when views > 1.
FORMAT_VERSION = 2
_FORMAT_NAME = "ssp-feature-store"
_STALE_TEMP_AGE_S = 3600.0  # temp files older than this are leftovers of a crashed write
_LOCAL_STORAGE_DTYPE = torch.float16
_VIEW_STORAGE_DTYPE = torch.float16
_log = logging.getLogger("ssp.cache")

Tensors = dict[str, torch.Tensor]


class CacheWarning(UserWarning):
    """A cached file was unusable (truncated, corrupt, written for another key); it is rebuilt."""


# --------------------------------------------------------------------------------------------
# Feature store
# --------------------------------------------------------------------------------------------

def _canonical_json(key: Mapping[str, Any]) -> str:
    if not isinstance(key, Mapping):
        raise TypeError(f"a cache key must be a dict, got {type(key).__name__}")
    try:
        return json.dumps(key, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"cache key is not JSON-serialisable ({exc}); use str/int/float/bool/None, "
            "lists and dicts only"
        ) from exc


_SAFE_PART = re.compile(r"[^A-Za-z0-9._+-]+")


def _namespace_dir(key: Mapping[str, Any]) -> Path:
    """``key["namespace"]`` (may contain ``/``), else ``key["kind"]``, else ``"misc"``."""
    raw = key.get("namespace") or key.get("kind") or "misc"
    parts = [_SAFE_PART.sub("_", p).strip("._") for p in str(raw).split("/")]
    parts = [p for p in parts if p]
    return Path(*parts) if parts else Path("misc")


class FeatureStore:
    """A folder of ``.safetensors`` feature files addressed by JSON keys.

    ``root`` defaults to :meth:`default_root`. File layout:
    ``<root>/<namespace or kind>/<sha256 of the canonical key JSON>.safetensors``; the key
    JSON and the format version are stored in the file's metadata and checked on load.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else self.default_root()
        self.hits = 0  # get_or_compute / cached_features calls served from disk
        self.misses = 0  # get_or_compute / cached_features calls that computed their tensors

    def __repr__(self) -> str:
        return f"FeatureStore(root={str(self.root)!r})"

    @staticmethod
    def default_root() -> Path:
        """``$SSP_CACHE_DIR``, else ``$XDG_CACHE_HOME/ssp``, else ``~/.cache/ssp``."""
        env = os.environ.get("SSP_CACHE_DIR")
        if env:
            return Path(env).expanduser()
        xdg = os.environ.get("XDG_CACHE_HOME")
        if xdg:
            return Path(xdg).expanduser() / "ssp"
        return Path.home() / ".cache" / "ssp"

    def path_for(self, key: Mapping[str, Any]) -> Path:
        """Where the file for ``key`` lives (whether or not it exists)."""
        digest = hashlib.sha256(_canonical_json(key).encode("utf-8")).hexdigest()
        return self.root / _namespace_dir(key) / f"{digest}.safetensors"

    def load(
        self,
        key: Mapping[str, Any],
        *,
        validate: Callable[[Tensors], str | None] | None = None,
    ) -> Tensors | None:
        """The tensors stored for ``key`` (on CPU), or ``None`` when there is no usable file.

        A truncated or corrupt file, a file written for another key or format version, or
        one that ``validate`` rejects (it returns a reason string, or ``None`` when fine)
        gives a :class:`CacheWarning` naming the file and the reason, and ``None``.
        """
        path = self.path_for(key)
        if not path.is_file():
            return None
        wanted = _canonical_json(key)
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                reason = _check_metadata(meta, wanted)
                if reason is None:
                    tensors = {name: f.get_tensor(name) for name in f.keys()}
        except Exception as exc:  # safetensors raises its own error type for bad headers
            reason = f"unreadable ({type(exc).__name__}: {exc})"
        if reason is None and validate is not None:
            reason = validate(tensors)
        if reason is not None:
            warnings.warn(f"ignoring cached features {path}: {reason}; they will be rebuilt",
                          CacheWarning, stacklevel=2)
            return None
        return tensors

    def save(self, key: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> Path:
        """Write ``tensors`` for ``key`` atomically; returns the final path.

        The data go to a temp file in the same folder, are fsync'ed, then renamed over the
        final name, so the final name only ever holds a complete file. On failure the temp
        file is removed and the exception propagates.
        """
        meta = {"format": _FORMAT_NAME, "format_version": str(FORMAT_VERSION),
                "key": _canonical_json(key)}
        if not tensors:
            raise ValueError("nothing to save: tensors is empty")
        data, storages = {}, set()
        for name, t in tensors.items():
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"tensor {name!r} must be a torch.Tensor, got {type(t).__name__}")
            t = t.detach().to("cpu").contiguous()
            ptr = t.untyped_storage().data_ptr()
            if ptr in storages and t.numel():  # safetensors refuses tensors sharing memory
                t = t.clone()
            storages.add(ptr)
            data[str(name)] = t
        path = self.path_for(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(path)
        with atomic_path(path) as tmp:
            save_file(data, str(tmp), metadata=meta)
        return path

    def get_or_compute(
        self,
        key: Mapping[str, Any],
        compute: Callable[[], Mapping[str, torch.Tensor]],
        *,
        recompute: bool = False,
        validate: Callable[[Tensors], str | None] | None = None,
    ) -> Tensors:
        """Load ``key``; on a miss (or ``recompute=True``) call ``compute()``, save, return.

        ``validate`` (optional) checks loaded and freshly computed tensors alike; a freshly
        computed result it rejects raises ``ValueError`` and is not saved.
        """
        if not recompute:
            found = self.load(key, validate=validate)
            if found is not None:
                self.hits += 1
                return found
        self.misses += 1
        tensors = dict(compute())
        if validate is not None:
            reason = validate(tensors)
            if reason is not None:
                raise ValueError(f"computed tensors for {self.path_for(key)} are invalid: {reason}")
        self.save(key, tensors)
        return tensors


def _check_metadata(meta: Mapping[str, str], wanted_key: str) -> str | None:
    if meta.get("format") != _FORMAT_NAME:
        return "not an ssp feature-store file (metadata has no ssp format tag)"
    if meta.get("format_version") != str(FORMAT_VERSION):
        return (f"written by feature-store format version {meta.get('format_version')}, "
                f"this is version {FORMAT_VERSION}")
    if meta.get("key") != wanted_key:
        return "its stored key differs from the requested key (renamed or copied file?)"
    return None


def _remove_stale_temps(path: Path) -> None:
    """Delete leftovers of crashed writes for ``path`` (:func:`ssp._utils.atomic_path` temp
    files older than an hour)."""
    now = time.time()
    for tmp in path.parent.glob(f".{path.stem}.*.tmp"):
        try:
            if now - tmp.stat().st_mtime > _STALE_TEMP_AGE_S:
                tmp.unlink()
        except OSError:
            pass  # another process removed or replaced it


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------

def _view_seed(seed: int, view: int, index: int) -> int:
    """The RNG seed of view ``view`` of image ``index`` (63-bit, well mixed)."""
    entropy = [seed % 2**64, view, index]  # SeedSequence needs non-negative integers
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1)


class _ViewDataset(Dataset):
    """``views`` passes over an ImageDataset, flattened: item ``v * N + i`` is view ``v`` of image ``i``.

    Returns ``(image, label, item, error)``. With ``seed`` set, each item's transform runs
    under RNG state seeded from (seed, view, index): torch CPU, Python ``random`` and NumPy
    are seeded and restored afterwards, so the augmentation of an image does not depend on
    worker or batch layout. An unreadable image gives a placeholder (a black image through
    the same transform) and its one-line reason as ``error`` (``""`` when fine), so the
    caller decides -- instead of a worker traceback.
    """

    def __init__(self, images: Dataset, n_images: int, views: int, seed: int | None) -> None:
        self.images = images
        self.n_images = n_images
        self.views = views
        self.seed = seed

    def __len__(self) -> int:
        return self.n_images * self.views

    def _load(self, index: int):
        from PIL import Image

        from ssp.data import ImageLoadError

        try:
            image, label, _ = self.images[index]
            return image, label, ""
        except ImageLoadError as err:
            transform = getattr(self.images, "transform", None)
            blank = Image.new("RGB", (64, 64))
            if transform is not None:
                image = transform(blank)
            else:
                from torchvision.transforms.functional import to_tensor

                image = to_tensor(blank)
            return image, int(self.images.samples[index].label), err.reason or str(err)

    def __getitem__(self, item: int):
        view, index = divmod(item, self.n_images)
        if self.seed is None:
            image, label, error = self._load(index)
            return image, label, item, error
        s = _view_seed(self.seed, view, index)
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(s)
                random.seed(s)
                np.random.seed(s % 2**32)
                image, label, error = self._load(index)
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
        return image, label, item, error


def _default_num_workers(n_batches: int) -> int:
    workers = min(4, os.cpu_count() or 1, n_batches)
    return 0 if workers <= 1 else workers


def _use_distributed(distributed: bool | None) -> bool:
    from ssp import distributed as dist

    if distributed is None:
        return dist.is_active()
    if distributed and not dist.is_active():
        raise ValueError("distributed=True needs an initialised torch.distributed process group with "
                         "more than one process (e.g. run under torchrun)")
    return bool(distributed)


class _Accumulator:
    """Reduces encoded batches into per-image features, always in batch order, so a sharded
    run (batches gathered from several ranks) gives the same bits as a single process."""

    def __init__(self, n: int, views: int, dim: int, n_patches: int, with_patches: bool,
                 patch_dtype: torch.dtype, view_dtype: torch.dtype) -> None:
        self.n, self.views = n, views
        self.augmented = views > 1
        self.patch_dtype = patch_dtype
        # Averaging needs float32 sums; a single view is normalised batch by batch.
        self.image_features = torch.zeros(n, dim, dtype=torch.float32)
        self.patch_features = None
        if with_patches:
            self.patch_features = torch.zeros(n, n_patches, dim,
                                     dtype=torch.float32 if self.augmented else patch_dtype)
        self.per_view = (torch.zeros(views, n, dim, dtype=view_dtype) if self.augmented else None)
        self.seen = torch.zeros(n, dtype=torch.int64)

    def add(self, items: torch.Tensor, g: torch.Tensor, loc: torch.Tensor | None) -> None:
        view, index = items // self.n, items % self.n
        if self.augmented:
            self.image_features.index_add_(0, index, g)
            self.per_view[view, index] = l2_normalize(g).to(self.per_view.dtype)
        else:
            self.image_features[index] = l2_normalize(g)
        if self.patch_features is not None:
            if self.augmented:
                self.patch_features.index_add_(0, index, loc)
            else:
                self.patch_features[index] = l2_normalize(loc).to(self.patch_dtype)
        self.seen.index_add_(0, index, torch.ones_like(index))

    def result(self, labels: torch.Tensor) -> Tensors:
        if not bool((self.seen == self.views).all()):
            raise RuntimeError("internal error: some images were not encoded exactly once per view")
        out = {"labels": labels}
        # Averaging before normalising is the same direction as summing; divide for clarity.
        out["global"] = l2_normalize(self.image_features / self.views) if self.augmented else self.image_features
        if self.patch_features is not None:
            out["local"] = (l2_normalize(self.patch_features / self.views).to(self.patch_dtype)
                            if self.augmented else self.patch_features)
        if self.per_view is not None:
            out["views"] = self.per_view
        for name, t in out.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise RuntimeError(f"the backbone produced non-finite {name} features")
        return out


def _bad_image_error(path: str, reason: str) -> Exception:
    from ssp.data import ImageLoadError

    return ImageLoadError(
        f"cannot read image {path}: {reason}; replace or delete the file, or pass "
        "skip_bad_images=True to go on without it", path=path, reason=reason)


def _renamed(value: Any, old_value: Any, old: str, new: str, func: str) -> Any:
    """``value``, or the deprecated keyword's ``old_value`` when one was given (with a warning)."""
    if old_value is None:
        return value
    warnings.warn(f"{func}(): '{old}' is deprecated; use '{new}'", DeprecationWarning, stacklevel=3)
    return old_value


def _backbone_shape(backbone) -> tuple[int, int]:
    """(D, L) of a backbone; duck-typed backbones with the deprecated ``embed_dim`` /
    ``num_local_features`` names still work, with a DeprecationWarning."""
    if hasattr(backbone, "n_features") and hasattr(backbone, "n_patches"):
        return int(backbone.n_features), int(backbone.n_patches)
    warnings.warn(f"{type(backbone).__name__}: 'embed_dim' / 'num_local_features' are deprecated backbone "
                  "attribute names; provide 'n_features' / 'n_patches'", DeprecationWarning, stacklevel=3)
    return int(backbone.embed_dim), int(backbone.num_local_features)


def extract_features(
    backbone: Any,
    samples: Sequence[Any],
    *,
    views: int = 1,
    with_patches: bool = False,
    batch_size: int | None = None,
    num_workers: int | None = None,
    seed: int = 0,
    progress: bool = True,
    desc: str | None = None,
    patch_dtype: torch.dtype = torch.float32,
    view_dtype: torch.dtype = torch.float32,
    skip_bad_images: bool = False,
    distributed: bool | None = None,
    with_local: bool | None = None,
    local_dtype: torch.dtype | None = None,
) -> Tensors:
    """Encode ``samples`` with ``backbone``.

    Args:
        backbone: an :class:`ssp.backbone.Backbone` (or anything with ``n_features``,
            ``n_patches``, ``device``, ``preprocess``, ``augment`` and
            ``encode_images(images [B,3,H,W]) -> (global [B,D], local [B,L,D])``).
        samples: N :class:`ssp.data.Sample` (``path``, ``label``).
        views: 1 -> the eval transform (``backbone.preprocess``); E > 1 -> E passes of
            ``backbone.augment``, raw features averaged over passes, then L2-normalised
            (Zhang et al., Tip-Adapter, ECCV 2022, Sec. 3.1: the cache keys).
        with_patches: also return the patch (local) features (averaged over views the same way).
        batch_size: images per forward pass; default 256 on CUDA, 64 otherwise.
        num_workers: DataLoader workers; default min(4, CPUs, number of batches), 0 for one batch.
        seed: seeds the augmentation (per view and image; irrelevant when ``views == 1``).
        progress: show a tqdm bar (only on a terminal, only on rank 0).
        patch_dtype: dtype of the returned patch features (float16 halves memory).
        view_dtype: dtype of the returned per-view features.
        skip_bad_images: an unreadable image raises :class:`ssp.data.ImageLoadError` naming it
            (default); with True, the images that cannot be read are logged and left out, and
            the result (features of the readable images only, encoded as if the list held only
            them) gains ``"kept"``.
        distributed: shard the batches over the ranks of the initialised torch.distributed
            process group and gather the results on every rank (identical to one process's);
            ``None`` (default): when a group of more than one process is initialised. Every
            rank must make the same call.
        with_local, local_dtype: deprecated names of ``with_patches`` and ``patch_dtype``.

    Returns:
        The feature store's tensors (named as in the file; :meth:`ssp.experiment.Features.from_dict`
        gives them the field names): ``{"global": [N, D] float32, "labels": [N] int64}``;
        ``"local": [N, L, D]`` (patch features) when
        ``with_patches``; ``"views": [E, N, D]`` (each augmented pass's global feature,
        L2-normalised, ``view_dtype``) when ``views > 1``; ``"kept": [N'] int64`` (indices
        into ``samples`` of the images encoded, N' rows everywhere) when ``skip_bad_images``.
        Every global, local and per-view feature has unit L2 norm.
    """
    from tqdm.auto import tqdm

    from ssp import distributed as dist
    from ssp.data import ImageDataset

    with_patches = _renamed(with_patches, with_local, "with_local", "with_patches", "extract_features")
    patch_dtype = _renamed(patch_dtype, local_dtype, "local_dtype", "patch_dtype", "extract_features")
    views = check_int(views, "views")
    n = len(samples)
    if n == 0:
        raise ValueError("no samples to extract features from (the sample list is empty)")
    device = torch.device(backbone.device)
    if batch_size is None:
        batch_size = 256 if device.type == "cuda" else 64
    batch_size = check_int(batch_size, "batch_size")
    sharded = _use_distributed(distributed)
    world, rank = (dist.world_size(), dist.rank()) if sharded else (1, 0)
    total = n * views
    # The single-process batches; rank r encodes batches r, r + world, ...
    plan = [list(range(start, min(start + batch_size, total))) for start in range(0, total, batch_size)]
    mine = plan[rank::world]
    if num_workers is None:
        num_workers = _default_num_workers(len(mine))
    labels = torch.tensor([int(s.label) for s in samples], dtype=torch.int64)

    augmented = views > 1
    transform = backbone.augment if augmented else backbone.preprocess
    dataset = _ViewDataset(ImageDataset(samples, transform), n, views,
                           seed=int(seed) if augmented else None)
    loader = DataLoader(
        dataset, batch_sampler=mine, num_workers=num_workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(int(seed)),
    )
    dim, n_patches = _backbone_shape(backbone)
    acc = _Accumulator(n, views, dim, n_patches, with_patches, patch_dtype, view_dtype)
    first_view_batches = math.ceil(n / batch_size)  # after these every image was read once
    bad: dict[int, str] = {}

    bar = tqdm(total=total, desc=desc or "extracting features", unit="img",
               disable=None if (progress and rank == 0) else True)
    batches = iter(loader)
    try:
        with torch.inference_mode():
            for r in range(math.ceil(len(plan) / world)):
                payload = None
                if r * world + rank < len(plan):
                    images, batch_labels, items, errors = next(batches)
                    failed = {int(i): e for i, e in zip(items.tolist(), errors) if e}
                    g = loc = None
                    if not failed and not bad:  # after a bad image, only read (to find them all)
                        if not torch.equal(batch_labels.long(), labels[items % n]):
                            raise RuntimeError("the data loader returned labels that differ from the samples'")
                        g, loc = backbone.encode_images(images.to(device, non_blocking=True))
                        _check_batch(g, loc if with_patches else None, len(items), dim, n_patches)
                        g = g.detach().float().cpu()
                        loc = loc.detach().float().cpu() if with_patches else None
                    payload = (items, g, loc, failed)
                # Every rank gets every batch of this round, in rank (= batch) order.
                for got in (dist.all_gather_object(payload) if sharded else [payload]):
                    if got is None:
                        continue
                    items, g, loc, failed = got
                    for item, reason in failed.items():
                        bad.setdefault(item % n, reason)
                    if not bad:
                        acc.add(items, g, loc)
                    bar.update(len(items))
                if bad and (not skip_bad_images or (r + 1) * world >= first_view_batches):
                    break
    finally:
        bar.close()
        # Stop the workers now: on an error the traceback keeps the iterator (and its worker
        # processes) alive until it is collected, which stalls the caller for seconds.
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
    if bad and not skip_bad_images:
        index = min(bad)
        raise _bad_image_error(str(samples[index].path), bad[index])
    if not bad:
        out = acc.result(labels)
        if skip_bad_images:
            out["kept"] = torch.arange(n, dtype=torch.int64)
        return out
    for index in sorted(bad):
        _log.warning("skipping unreadable image %s: %s", samples[index].path, bad[index])
    kept = [i for i in range(n) if i not in bad]
    if not kept:
        raise _bad_image_error(str(samples[min(bad)].path),
                               f"{bad[min(bad)]} (and every other image of the list is unreadable too)")
    # Encode the readable images as a list of their own: the same numbers as extracting
    # that list directly (the batch layout, hence the rounding, depends on the list).
    out = extract_features(backbone, [samples[i] for i in kept], views=views, with_patches=with_patches,
                           batch_size=batch_size, num_workers=num_workers, seed=seed,
                           progress=progress, desc=desc, patch_dtype=patch_dtype,
                           view_dtype=view_dtype, skip_bad_images=False, distributed=sharded)
    out["kept"] = torch.tensor(kept, dtype=torch.int64)
    return out


def _check_batch(g: torch.Tensor, loc: torch.Tensor | None, batch: int, dim: int,
                 n_patches: int) -> None:
    if tuple(g.shape) != (batch, dim):
        raise RuntimeError(f"backbone.encode_images returned global features of shape "
                           f"{tuple(g.shape)}, expected ({batch}, {dim})")
    if loc is not None and tuple(loc.shape) != (batch, n_patches, dim):
        raise RuntimeError(f"backbone.encode_images returned local features of shape "
                           f"{tuple(loc.shape)}, expected ({batch}, {n_patches}, {dim})")


# --------------------------------------------------------------------------------------------
# Cached extraction
# --------------------------------------------------------------------------------------------

def sample_digest(samples: Sequence[Any]) -> str:
    """SHA-256 over the ordered (relative path, label, file size) of ``samples``.

    Paths are taken relative to the samples' common folder, so moving a dataset keeps its
    cache valid, while reordering, relabelling, adding or replacing an image (size change)
    invalidates it. A missing image raises ``FileNotFoundError`` naming it.
    """
    paths = [os.path.abspath(os.fspath(s.path)) for s in samples]
    try:
        root = os.path.commonpath([os.path.dirname(p) for p in paths]) if paths else ""
    except ValueError:  # e.g. different drives on Windows
        root = ""
    h = hashlib.sha256()
    h.update(f"n={len(paths)}\n".encode())
    for path, s in zip(paths, samples):
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            raise FileNotFoundError(f"image file not found: {path} (sample label {s.label})") from None
        rel = os.path.relpath(path, root) if root else path
        rel = rel.replace(os.sep, "/")
        h.update(json.dumps([rel, int(s.label), size]).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def feature_key(
    backbone: Any,
    samples: Sequence[Any],
    *,
    dataset: str,
    split: str,
    views: int = 1,
    with_patches: bool = False,
    seed: int = 0,
    with_local: bool | None = None,
) -> dict[str, Any]:
    """The store key of :func:`cached_features` (everything that changes the numbers).

    ``samples`` is the list actually encoded: features computed without unreadable images
    (``skip_bad_images``) live under the key of the shorter list, never the full one."""
    with_patches = _renamed(with_patches, with_local, "with_local", "with_patches", "feature_key")
    augmented = views > 1
    return {
        "kind": "features",
        "namespace": f"features/{dataset}",
        "format": FORMAT_VERSION,
        "backbone": backbone.identity,
        "precision": str(getattr(backbone, "precision", "fp32")),
        "transform": backbone.transform_identity(train=augmented),
        "dataset": str(dataset),
        "split": str(split),
        "samples": sample_digest(samples),
        "num_samples": len(samples),
        "views": int(views),
        "with_local": bool(with_patches),  # the key's (file format) name
        "seed": int(seed) if augmented else 0,
    }


def _skipped_key(full_key: Mapping[str, Any]) -> dict[str, Any]:
    """Key of the record listing which images of ``full_key``'s list were readable."""
    return {"kind": "skipped_images", "namespace": full_key["namespace"], "format": FORMAT_VERSION,
            "features": dict(full_key)}


def cached_features(
    store: FeatureStore,
    backbone: Any,
    samples: Sequence[Any],
    *,
    dataset: str,
    split: str,
    views: int = 1,
    with_patches: bool = False,
    seed: int = 0,
    recompute: bool = False,
    skip_bad_images: bool = False,
    distributed: bool | None = None,
    with_local: bool | None = None,
    **extract_kwargs: Any,
) -> Tensors:
    """:func:`extract_features` through ``store``: computed once, then loaded.

    The key (:func:`feature_key`) covers the backbone identity and precision, the transform
    (eval or train), dataset, split, :func:`sample_digest`, N, ``views``, ``with_patches``,
    the seed (only when ``views > 1``) and the format version. A loaded file is checked
    (tensor names, shapes against N / D / L / E, labels against the samples) and rebuilt with a
    :class:`CacheWarning` if wrong. ``extract_kwargs`` (batch size, workers, progress, desc)
    do not change the numbers and are not part of the key.

    ``skip_bad_images=True``: unreadable images are left out (see :func:`extract_features`);
    the features are stored under the key of the readable list, plus a small record (under
    the full list's key) naming which images were readable, so a rerun finds them without
    reading any image. ``distributed`` (default: when a process group of more than one
    process is initialised): rank 0 decides hit or miss, a miss is extracted by all ranks
    together, rank 0 alone writes; every rank returns the same tensors (on a hit the other
    ranks read the file rank 0 found: the cache folder must be shared by the ranks).

    Returns ``{"global": [N, D] float32, "labels": [N] int64}``, plus ``"local": [N, L, D]``
    float32 (stored as float16) when ``with_patches``, ``"views": [E, N, D]`` float32 (each
    augmented pass's L2-normalised global feature, stored as float16) when ``views = E > 1``,
    and ``"kept": [N'] int64`` (indices into ``samples`` of the rows) when ``skip_bad_images``;
    with skipped images every tensor has N' < N rows.
    """
    from ssp import distributed as dist

    with_patches = _renamed(with_patches, with_local, "with_local", "with_patches", "cached_features")
    views = check_int(views, "views")
    for bad in ("patch_dtype", "local_dtype", "view_dtype", "views", "with_patches", "seed"):
        if bad in extract_kwargs:
            raise TypeError(f"cached_features() got an unexpected keyword argument {bad!r}")
    sharded = _use_distributed(distributed)
    main = not sharded or dist.is_main()
    n = len(samples)
    dim, n_patches = _backbone_shape(backbone)

    def key_for(kept: list[int] | None) -> dict[str, Any]:
        subset = samples if kept is None else [samples[i] for i in kept]
        return feature_key(backbone, subset, dataset=dataset, split=split, views=views,
                           with_patches=with_patches, seed=seed)

    def validator(kept: list[int] | None) -> Callable[[Tensors], str | None]:
        subset = samples if kept is None else [samples[i] for i in kept]
        labels = torch.tensor([int(s.label) for s in subset], dtype=torch.int64)
        return lambda t: _validate_features(t, labels, dim, n_patches, with_patches, views)

    full_key = key_for(None)

    def lookup() -> tuple[Tensors | None, list[int] | None]:
        found = store.load(full_key, validate=validator(None))
        if found is not None or not skip_bad_images:
            return found, None
        record = store.load(_skipped_key(full_key), validate=lambda t: _validate_kept(t, n))
        if record is None:
            return None, None
        kept = record["kept"].tolist()
        return store.load(key_for(kept), validate=validator(kept)), kept

    found, kept = (None, None) if recompute or not main else lookup()
    if sharded:  # rank 0 decides, so that every rank takes part in the same extraction
        hit, kept = dist.broadcast_object((found is not None, kept) if main else None)
        if hit and not main:
            found = store.load(key_for(kept), validate=validator(kept))
            if found is None:
                raise RuntimeError(f"rank {dist.rank()} cannot read {store.path_for(key_for(kept))}, "
                                   "which rank 0 read: the feature cache folder must be shared by all ranks")
    if found is not None:
        store.hits += 1
    else:
        store.misses += 1
        extract_kwargs.setdefault("desc", f"{dataset}/{split} features")
        found = extract_features(backbone, samples, views=views, with_patches=with_patches, seed=seed,
                                 patch_dtype=_LOCAL_STORAGE_DTYPE, view_dtype=_VIEW_STORAGE_DTYPE,
                                 skip_bad_images=skip_bad_images, distributed=sharded,
                                 **extract_kwargs)
        kept_t = found.pop("kept", None)
        kept = None if kept_t is None or len(kept_t) == n else kept_t.tolist()
        reason = validator(kept)(found)
        if reason is not None:
            raise ValueError(f"computed features for {store.path_for(key_for(kept))} are invalid: {reason}")
        if main:
            store.save(key_for(kept), found)
            if kept is not None:  # after the features, so a record never points at nothing
                store.save(_skipped_key(full_key), {"kept": kept_t})
    result = {"global": found["global"].float(), "labels": found["labels"].long()}
    if with_patches:
        result["local"] = found["local"].float()
    if views > 1:
        result["views"] = found["views"].float()
    if skip_bad_images:
        result["kept"] = (torch.arange(n, dtype=torch.int64) if kept is None
                          else torch.tensor(kept, dtype=torch.int64))
    return result


def _validate_kept(t: Tensors, n: int) -> str | None:
    kept = t.get("kept")
    if kept is None or kept.dtype != torch.int64 or kept.ndim != 1 or not 0 < len(kept) < n:
        return "not a list of readable images of this sample list"
    if int(kept.min()) < 0 or int(kept.max()) >= n or not bool((kept[1:] > kept[:-1]).all()):
        return "its image indices are out of range or not increasing"
    return None


def _validate_features(t: Tensors, labels: torch.Tensor, dim: int, n_patches: int,
                       with_patches: bool, views: int = 1) -> str | None:
    n = labels.shape[0]
    expected = {"global": ((n, dim), torch.float32), "labels": ((n,), torch.int64)}
    if with_patches:
        expected["local"] = ((n, n_patches, dim), _LOCAL_STORAGE_DTYPE)
    if views > 1:
        expected["views"] = ((views, n, dim), _VIEW_STORAGE_DTYPE)
    missing = sorted(set(expected) - set(t))
    if missing:
        return f"missing tensors {missing} (has {sorted(t)})"
    for name, (shape, dtype) in expected.items():
        if tuple(t[name].shape) != shape or t[name].dtype != dtype:
            return (f"tensor {name!r} is {tuple(t[name].shape)} {t[name].dtype}, expected "
                    f"{shape} {dtype}")
    if not torch.equal(t["labels"], labels):
        return "stored labels differ from the samples' labels"
    if not bool(torch.isfinite(t["global"]).all()):
        return "global features contain NaN or infinite values"
    return None
