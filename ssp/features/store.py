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
import os
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ssp._io import atomic_path
from ssp._checks import check_int
from ssp.features.extract import (
    LOCAL_STORAGE_DTYPE,
    VIEW_STORAGE_DTYPE,
    Tensors,
    backbone_shape,
    use_distributed,
    extract_features,
)
from ssp import distributed as dist

#: Bumped whenever the meaning or layout of stored features changes; part of every key and
#: of every file's metadata, so older files are never read as the new layout.
#: 1: global, labels, local. 2: adds ``views`` (per-view global features) when views > 1.
FORMAT_VERSION = 2


_FORMAT_NAME = "ssp-feature-store"


_STALE_TEMP_AGE_S = 3600.0  # temp files older than this are leftovers of a crashed write


_log = logging.getLogger("ssp.features")


class FeatureStoreWarning(UserWarning):
    """A cached file was unusable (truncated, corrupt, written for another key); it is rebuilt."""


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
        """``$SSP_FEATURE_STORE``, else ``$XDG_CACHE_HOME/ssp``, else ``~/.cache/ssp``."""
        env = os.environ.get("SSP_FEATURE_STORE")
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
        gives a :class:`FeatureStoreWarning` naming the file and the reason, and ``None``.
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
                          FeatureStoreWarning, stacklevel=2)
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
    """Delete leftovers of crashed writes for ``path`` (:func:`ssp._io.atomic_path` temp
    files older than an hour)."""
    now = time.time()
    for tmp in path.parent.glob(f".{path.stem}.*.tmp"):
        try:
            if now - tmp.stat().st_mtime > _STALE_TEMP_AGE_S:
                tmp.unlink()
        except OSError:
            pass  # another process removed or replaced it


def sample_digest(samples: Sequence[Any]) -> str:
    """SHA-256 over the ordered (relative path, label, file size) of ``samples``.

    Paths are taken relative to the samples' common folder, so moving a dataset keeps its
    cache valid, while reordering, relabelling, adding or replacing an image (size change)
    invalidates it. A missing image counts with size -1 (its encoding then fails, naming it).
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
            size = -1  # missing: reading it fails later, naming it (or skips it with skip_bad_images)
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
) -> dict[str, Any]:
    """The store key of :func:`cached_features` (everything that changes the numbers).

    ``samples`` is the list actually encoded: features computed without unreadable images
    (``skip_bad_images``) live under the key of the shorter list, never the full one."""
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
    **extract_kwargs: Any,
) -> Tensors:
    """:func:`extract_features` through ``store``: computed once, then loaded.

    The key (:func:`feature_key`) covers the backbone identity and precision, the transform
    (eval or train), dataset, split, :func:`sample_digest`, N, ``views``, ``with_patches``,
    the seed (only when ``views > 1``) and the format version. A loaded file is checked
    (tensor names, shapes against N / D / L / E, labels against the samples) and rebuilt with a
    :class:`FeatureStoreWarning` if wrong. ``extract_kwargs`` (batch size, workers, progress, desc)
    do not change the numbers and are not part of the key.

    ``skip_bad_images=True``: unreadable images are left out (see :func:`extract_features`);
    the features are stored under the key of the readable list, plus a small record (under
    the full list's key) naming which images were readable, so a rerun finds them without
    reading any image. ``distributed`` (default: when a process group of more than one
    process is initialised): rank 0 decides hit or miss, a miss is extracted by all ranks
    together, rank 0 alone writes; every rank returns the same tensors (on a hit the other
    ranks read the file rank 0 found: the feature store folder must be shared by the ranks).

    Returns ``{"global": [N, D] float32, "labels": [N] int64}``, plus ``"local": [N, L, D]``
    float32 (stored as float16) when ``with_patches``, ``"views": [E, N, D]`` float32 (each
    augmented pass's L2-normalised global feature, stored as float16) when ``views = E > 1``,
    and ``"kept": [N'] int64`` (indices into ``samples`` of the rows) when ``skip_bad_images``;
    with skipped images every tensor has N' < N rows.
    """
    views = check_int(views, "views")
    for bad in ("patch_dtype", "view_dtype", "views", "with_patches", "seed"):
        if bad in extract_kwargs:
            raise TypeError(f"cached_features() got an unexpected keyword argument {bad!r}")
    sharded = use_distributed(distributed)
    main = not sharded or dist.is_main()
    n = len(samples)
    dim, n_patches = backbone_shape(backbone)

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
                                   "which rank 0 read: the feature store folder must be shared by all ranks")
    if found is not None:
        store.hits += 1
    else:
        store.misses += 1
        extract_kwargs.setdefault("desc", f"{dataset}/{split} features")
        found = extract_features(backbone, samples, views=views, with_patches=with_patches, seed=seed,
                                 patch_dtype=LOCAL_STORAGE_DTYPE, view_dtype=VIEW_STORAGE_DTYPE,
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
        expected["local"] = ((n, n_patches, dim), LOCAL_STORAGE_DTYPE)
    if views > 1:
        expected["views"] = ((views, n, dim), VIEW_STORAGE_DTYPE)
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
