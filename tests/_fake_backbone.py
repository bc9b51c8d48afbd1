"""A tiny deterministic stand-in backbone and a writer of small random JPEG images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from ssp.data import Sample


class RandomScale:
    """Multiply the image by a random factor: view-dependent raw feature norms."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x * (0.2 + 1.8 * torch.rand(()))


class FakeBackbone:
    """Tiny deterministic stand-in for ssp.backbone.model.Backbone (D=8, L=4 patches of 16x16)."""

    n_features = 8
    n_patches = 4

    def __init__(self, tag: str = "fake-a", crop: int = 32) -> None:
        g = torch.Generator().manual_seed(0 if tag == "fake-a" else 1)
        self.patch_proj = torch.randn(3 * 16 * 16, self.n_features, generator=g) / 20
        self.patch_bias = torch.randn(self.n_features, generator=g)
        self.global_proj = torch.randn(self.n_features, self.n_features, generator=g)
        self.device = torch.device("cpu")
        self.identity = {"name": tag, "kind": "fake"}
        self.crop = crop
        self.preprocess = T.Compose([T.Resize(crop), T.CenterCrop(crop), T.ToTensor()])
        self.augment = T.Compose([
            T.RandomResizedCrop(crop, scale=(0.5, 1.0)), T.RandomHorizontalFlip(), T.ToTensor(),
            RandomScale(),
        ])
        self.calls = 0

    def transform_identity(self, train: bool) -> str:
        return f"{'train-rrc' if train else 'eval-center'}{self.crop}"

    def encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        b = images.shape[0]
        if images.shape[-1] != 32:
            images = torch.nn.functional.adaptive_avg_pool2d(images, 32)
        patches = images.unfold(2, 16, 16).unfold(3, 16, 16)           # B,3,2,2,16,16
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(b, 4, -1)  # B,4,768
        local = torch.tanh(patches @ self.patch_proj) + self.patch_bias
        global_ = local.mean(1) @ self.global_proj
        return global_, local


def _write_images(folder: Path, n: int = 6, classes: int = 3, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        label = i % classes
        d = folder / f"class{label}"
        d.mkdir(parents=True, exist_ok=True)
        h, w = int(rng.integers(36, 60)), int(rng.integers(36, 60))
        arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        path = d / f"img{i}.jpg"
        Image.fromarray(arr).save(path, quality=90)
        samples.append(Sample(str(path), label, f"class{label}"))
    return samples
