"""Global and dense image features at a chosen input size, through ssp's feature store.

Multi-label recognition uses larger inputs than the backbone's native size (448 px in the
Unmix-CLIP setup): every image is resized (short side, bicubic), centre-cropped to a square,
normalised with the backbone's statistics and encoded once; the positional embedding is
interpolated by the backbone for non-native sizes.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ssp._utils.normalize import l2_normalize
from ssp.data import ImageDataset, Sample
from ssp.features.store import FeatureStore, sample_digest
from ssp.unmix.segment import backbone_normalization

__all__ = ["dense_features", "dense_transform"]

FORMAT_VERSION = 1


def dense_transform(backbone, image_size: int):
    """PIL -> ``[3, S, S]``: resize short side to S (bicubic), centre crop, normalise."""
    from torchvision import transforms as T

    mean, std = backbone_normalization(backbone)
    return T.Compose([
        T.Lambda(lambda im: im.convert("RGB")),
        T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC, antialias=True),
        T.CenterCrop(image_size),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def dense_features(backbone, paths: Sequence[str], *, image_size: int, dataset: str, split: str,
                   store: FeatureStore | None = None, batch_size: int = 16, recompute: bool = False,
                   progress: bool = True) -> dict[str, torch.Tensor]:
    """``{"global": [N, D], "local": [N, L, D]}`` float32, L2-normalised, cached in ``store``
    (key: backbone identity, input size, dataset, split and a digest of the image files)."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    if not paths:
        raise ValueError(f"{dataset}/{split}: no images to encode")
    if int(image_size) != image_size or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    samples = [Sample(str(p), 0, "image") for p in paths]
    key = {"kind": "unmix-dense", "namespace": f"unmix/{dataset}", "format": FORMAT_VERSION,
           "backbone": backbone.identity, "image_size": int(image_size), "dataset": str(dataset),
           "split": str(split), "samples": sample_digest(samples), "num_samples": len(samples)}
    store = store or FeatureStore()

    def compute() -> dict[str, torch.Tensor]:
        loader = DataLoader(ImageDataset(samples, dense_transform(backbone, int(image_size))),
                            batch_size=batch_size, shuffle=False, num_workers=0)
        g_out, l_out = [], []
        with torch.inference_mode():
            for images, _, _ in tqdm(loader, desc=f"{dataset}/{split} dense features", unit="batch",
                                     disable=None if progress else True):
                g, loc = backbone.encode_images(images)
                g_out.append(l2_normalize(g).cpu())
                l_out.append(l2_normalize(loc).to(torch.float16).cpu())
        return {"global": torch.cat(g_out), "local": torch.cat(l_out)}

    def validate(t: dict[str, torch.Tensor]) -> str | None:
        if set(t) != {"global", "local"} or t["global"].shape[0] != len(samples) or t["local"].shape[0] != len(samples):
            return "tensors do not match the image list"
        return None

    out = store.get_or_compute(key, compute, recompute=recompute, validate=validate)
    return {"global": out["global"].float(), "local": out["local"].float()}
