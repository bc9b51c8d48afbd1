"""Feature extraction: images -> L2-normalised global features ``[N, D]`` (and patch features
``[N, L, D]``, per-view features ``[E, N, D]`` of ``E`` augmented views), in batch order, sharded
over the ranks of a torchrun process group when one is active. The feature store
(:mod:`ssp.features.store`) keys and caches what this computes."""
from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ssp import distributed as dist
from ssp._checks import check_int
from ssp._utils.normalize import l2_normalize
from ssp._utils.progress import progress_bar
from ssp.data import ImageDataset, ImageLoadError

#: Storage dtypes of patch features ``[N, L, D]`` and augmented-view features ``[V, N, D]`` in the
#: feature store (global features stay float32).
LOCAL_STORAGE_DTYPE = torch.float16
VIEW_STORAGE_DTYPE = torch.float16

Tensors = dict[str, torch.Tensor]


_log = logging.getLogger("ssp.features")


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


def use_distributed(distributed: bool | None) -> bool:
    """Whether an extraction is sharded over a torchrun process group: ``None`` = when one is active."""
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
    return ImageLoadError(
        f"cannot read image {path}: {reason}; replace or delete the file, or pass "
        "skip_bad_images=True to go on without it", path=path, reason=reason)


def backbone_shape(backbone) -> tuple[int, int]:
    """(D, L) of a backbone (:class:`ssp.backbone.model.Backbone` or a duck-typed stand-in)."""
    return int(backbone.n_features), int(backbone.n_patches)


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
) -> Tensors:
    """Encode ``samples`` with ``backbone``.

    Args:
        backbone: an :class:`ssp.backbone.model.Backbone` (or anything with ``n_features``,
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
        progress: show progress on rank 0 (a bar on a terminal, a line every 10 s in a log).
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

    Returns:
        The feature store's tensors (named as in the file; :meth:`ssp.features.types.Features.from_dict`
        gives them the field names): ``{"global": [N, D] float32, "labels": [N] int64}``;
        ``"local": [N, L, D]`` (patch features) when
        ``with_patches``; ``"views": [E, N, D]`` (each augmented pass's global feature,
        L2-normalised, ``view_dtype``) when ``views > 1``; ``"kept": [N'] int64`` (indices
        into ``samples`` of the images encoded, N' rows everywhere) when ``skip_bad_images``.
        Every global, local and per-view feature has unit L2 norm.
    """

    views = check_int(views, "views")
    n = len(samples)
    if n == 0:
        raise ValueError("no samples to extract features from (the sample list is empty)")
    device = torch.device(backbone.device)
    if batch_size is None:
        batch_size = 256 if device.type == "cuda" else 64
    batch_size = check_int(batch_size, "batch_size")
    sharded = use_distributed(distributed)
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
    dim, n_patches = backbone_shape(backbone)
    acc = _Accumulator(n, views, dim, n_patches, with_patches, patch_dtype, view_dtype)
    first_view_batches = math.ceil(n / batch_size)  # after these every image was read once
    bad: dict[int, str] = {}

    bar = progress_bar(total, desc or "extracting features", "img", enabled=progress and rank == 0)
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
