"""Feature extraction and the safetensors feature store: extract once, reuse everywhere.

Three layers:

* :class:`FeatureStore` -- a content-addressed folder of ``.safetensors`` files. A *key* (a
  JSON-able dict describing everything that changes the numbers) is hashed into the file
  name and stored again inside the file, so a renamed or stale file is never returned.
  Writes are atomic; a truncated, corrupt or mismatched file is reported and rebuilt.
* :func:`extract_features` -- runs a backbone over a list of samples and returns
  L2-normalised global (and optionally local) features. ``views > 1`` follows Tip-Adapter's
  cache construction (SPEC A.2): ``views`` passes of the random train augmentation, raw
  features averaged over passes, then normalised. Augmentation randomness is seeded per
  (seed, pass, image), so results do not depend on ``num_workers`` or batch size.
* :func:`cached_features` -- the two together, with a key built from the backbone identity,
  the transform, the dataset / split, a digest of the image list, ``views`` and the seed.

Storage: global features float32, local features float16 (unit vectors; half the size),
labels int64. Local features are returned as float32, rounded through float16 on a cache
miss too, so a miss and a later hit return identical tensors.
"""
from __future__ import annotations

import hashlib
import json
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

#: Bumped whenever the meaning or layout of stored features changes; part of every key.
FORMAT_VERSION = 1
_FORMAT_NAME = "ssp-feature-store"
_STALE_TEMP_AGE_S = 3600.0  # temp files older than this are leftovers of a crashed write
_LOCAL_STORAGE_DTYPE = torch.float16

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
        self.hits = 0  # get_or_compute calls served from disk
        self.misses = 0  # get_or_compute calls that computed (and saved) their tensors

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

    With ``seed`` set, each item's transform runs under RNG state seeded from
    (seed, view, index): torch CPU, Python ``random`` and NumPy are seeded and restored
    afterwards, so the augmentation of an image does not depend on worker or batch layout.
    """

    def __init__(self, images: Dataset, num_images: int, views: int, seed: int | None) -> None:
        self.images = images
        self.num_images = num_images
        self.views = views
        self.seed = seed

    def __len__(self) -> int:
        return self.num_images * self.views

    def __getitem__(self, item: int):
        view, index = divmod(item, self.num_images)
        if self.seed is None:
            image, label, _ = self.images[index]
            return image, label, index
        s = _view_seed(self.seed, view, index)
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(s)
                random.seed(s)
                np.random.seed(s % 2**32)
                image, label, _ = self.images[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
        return image, label, index


def _default_num_workers(num_batches: int) -> int:
    workers = min(4, os.cpu_count() or 1, num_batches)
    return 0 if workers <= 1 else workers


def extract_features(
    backbone: Any,
    samples: Sequence[Any],
    *,
    views: int = 1,
    with_local: bool = False,
    batch_size: int | None = None,
    num_workers: int | None = None,
    seed: int = 0,
    progress: bool = True,
    desc: str | None = None,
    local_dtype: torch.dtype = torch.float32,
) -> Tensors:
    """Encode ``samples`` with ``backbone``.

    Args:
        backbone: an :class:`ssp.backbone.Backbone` (or anything with ``embed_dim``,
            ``num_local_features``, ``device``, ``preprocess``, ``augment`` and
            ``encode_images(images [B,3,H,W]) -> (global [B,D], local [B,L,D])``).
        samples: N :class:`ssp.data.Sample` (``path``, ``label``).
        views: 1 -> the eval transform (``backbone.preprocess``); > 1 -> ``views`` passes of
            ``backbone.augment``, raw features averaged over passes, then L2-normalised.
        with_local: also return local features (averaged over views the same way).
        batch_size: images per forward pass; default 256 on CUDA, 64 otherwise.
        num_workers: DataLoader workers; default min(4, CPUs, number of batches), 0 for one batch.
        seed: seeds the augmentation (per view and image; irrelevant when ``views == 1``).
        progress: show a tqdm bar (only on a terminal).
        local_dtype: dtype of the returned local features (float16 halves memory).

    Returns:
        ``{"global": [N, D] float32, "labels": [N] int64}`` plus ``"local": [N, L, D]`` when
        ``with_local``; every global and local feature has unit L2 norm.
    """
    from tqdm.auto import tqdm

    from ssp.data import ImageDataset

    views = check_int(views, "views")
    n = len(samples)
    if n == 0:
        raise ValueError("no samples to extract features from (the sample list is empty)")
    device = torch.device(backbone.device)
    if batch_size is None:
        batch_size = 256 if device.type == "cuda" else 64
    batch_size = check_int(batch_size, "batch_size")
    total = n * views
    if num_workers is None:
        num_workers = _default_num_workers(math.ceil(total / batch_size))
    labels = torch.tensor([int(s.label) for s in samples], dtype=torch.int64)

    augmented = views > 1
    transform = backbone.augment if augmented else backbone.preprocess
    dataset = _ViewDataset(ImageDataset(samples, transform), n, views,
                           seed=int(seed) if augmented else None)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(int(seed)),
    )

    dim, num_local = int(backbone.embed_dim), int(backbone.num_local_features)
    # Averaging needs float32 sums; a single view is normalised batch by batch.
    global_out = torch.zeros(n, dim, dtype=torch.float32)
    local_out = None
    if with_local:
        local_out = torch.zeros(n, num_local, dim,
                                dtype=torch.float32 if augmented else local_dtype)
    seen = torch.zeros(n, dtype=torch.int64)

    bar = tqdm(total=total, desc=desc or "extracting features", unit="img",
               disable=None if progress else True)
    batches = iter(loader)
    try:
        with torch.inference_mode():
            for images, batch_labels, index in batches:
                images = images.to(device, non_blocking=True)
                g, loc = backbone.encode_images(images)
                _check_batch(g, loc if with_local else None, len(index), dim, num_local)
                if not torch.equal(batch_labels.long(), labels[index]):
                    raise RuntimeError("the data loader returned labels that differ from the samples'")
                g = g.detach().float().cpu()
                if augmented:
                    global_out.index_add_(0, index, g)
                else:
                    global_out[index] = l2_normalize(g)
                if local_out is not None:
                    loc = loc.detach().float().cpu()
                    if augmented:
                        local_out.index_add_(0, index, loc)
                    else:
                        local_out[index] = l2_normalize(loc).to(local_dtype)
                seen.index_add_(0, index, torch.ones_like(index))
                bar.update(len(index))
    finally:
        bar.close()
        # Stop the workers now: on an error the traceback keeps the iterator (and its worker
        # processes) alive until it is collected, which stalls the caller for seconds.
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
    if not bool((seen == views).all()):
        raise RuntimeError("internal error: some images were not encoded exactly once per view")

    out = {"labels": labels}
    # Averaging before normalising is the same direction as summing; divide for clarity.
    out["global"] = l2_normalize(global_out / views) if augmented else global_out
    if local_out is not None:
        out["local"] = (l2_normalize(local_out / views).to(local_dtype) if augmented
                        else local_out)
    for name, t in out.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise RuntimeError(f"the backbone produced non-finite {name} features")
    return out


def _check_batch(g: torch.Tensor, loc: torch.Tensor | None, batch: int, dim: int,
                 num_local: int) -> None:
    if tuple(g.shape) != (batch, dim):
        raise RuntimeError(f"backbone.encode_images returned global features of shape "
                           f"{tuple(g.shape)}, expected ({batch}, {dim})")
    if loc is not None and tuple(loc.shape) != (batch, num_local, dim):
        raise RuntimeError(f"backbone.encode_images returned local features of shape "
                           f"{tuple(loc.shape)}, expected ({batch}, {num_local}, {dim})")


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
    with_local: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """The store key of :func:`cached_features` (everything that changes the numbers)."""
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
        "with_local": bool(with_local),
        "seed": int(seed) if augmented else 0,
    }


def cached_features(
    store: FeatureStore,
    backbone: Any,
    samples: Sequence[Any],
    *,
    dataset: str,
    split: str,
    views: int = 1,
    with_local: bool = False,
    seed: int = 0,
    recompute: bool = False,
    **extract_kwargs: Any,
) -> Tensors:
    """:func:`extract_features` through ``store``: computed once, then loaded.

    The key (:func:`feature_key`) covers the backbone identity and precision, the transform
    (eval or train), dataset, split, :func:`sample_digest`, N, ``views``, ``with_local``,
    the seed (only when ``views > 1``) and the format version. A loaded file is checked
    (tensor names, shapes against N / D / L, labels against the samples) and rebuilt with a
    :class:`CacheWarning` if wrong. ``extract_kwargs`` (batch size, workers, progress, desc)
    do not change the numbers and are not part of the key.

    Returns ``{"global": [N, D] float32, "labels": [N] int64}`` plus ``"local": [N, L, D]``
    float32 (stored as float16) when ``with_local``.
    """
    views = check_int(views, "views")
    for bad in ("local_dtype", "views", "with_local", "seed"):
        if bad in extract_kwargs:
            raise TypeError(f"cached_features() got an unexpected keyword argument {bad!r}")
    key = feature_key(backbone, samples, dataset=dataset, split=split, views=views,
                      with_local=with_local, seed=seed)
    labels = torch.tensor([int(s.label) for s in samples], dtype=torch.int64)
    dim, num_local = int(backbone.embed_dim), int(backbone.num_local_features)

    def validate(t: Tensors) -> str | None:
        return _validate_features(t, labels, dim, num_local, with_local)

    def compute() -> Tensors:
        extract_kwargs.setdefault("desc", f"{dataset}/{split} features")
        return extract_features(backbone, samples, views=views, with_local=with_local, seed=seed,
                                local_dtype=_LOCAL_STORAGE_DTYPE, **extract_kwargs)

    out = store.get_or_compute(key, compute, recompute=recompute, validate=validate)
    result = {"global": out["global"].float(), "labels": out["labels"].long()}
    if with_local:
        result["local"] = out["local"].float()
    return result


def _validate_features(t: Tensors, labels: torch.Tensor, dim: int, num_local: int,
                       with_local: bool) -> str | None:
    n = labels.shape[0]
    expected = {"global": ((n, dim), torch.float32), "labels": ((n,), torch.int64)}
    if with_local:
        expected["local"] = ((n, num_local, dim), _LOCAL_STORAGE_DTYPE)
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
