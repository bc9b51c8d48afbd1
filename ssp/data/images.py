"""A torch Dataset over :class:`~ssp.data.base.Sample` lists."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from PIL import Image

from .base import Sample


class ImageLoadError(OSError):
    """An image file is missing or cannot be decoded; the message names the file."""


def load_image(path: str) -> Image.Image:
    """Open ``path`` as an RGB PIL image (fully decoded, file closed)."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError as err:
        raise ImageLoadError(f"image file not found: {path}") from err
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageLoadError(f"cannot read image {path}: {err}") from err


class ImageDataset(torch.utils.data.Dataset):
    """``samples[i]`` -> ``(image, label, i)``.

    The image is loaded with PIL, converted to RGB and passed through ``transform`` (e.g. open_clip's
    preprocess, giving a ``[3, H, W]`` float tensor); without a transform it becomes a ``[3, H, W]``
    float tensor in [0, 1]. ``i`` lets callers put features back in sample order.
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable[[Image.Image], Any] | None = None):
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        sample = self.samples[index]
        image = load_image(sample.path)
        if self.transform is not None:
            image = self.transform(image)
        else:
            from torchvision.transforms.functional import to_tensor

            image = to_tensor(image)
        return image, sample.label, index
