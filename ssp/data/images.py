"""A torch Dataset over :class:`~ssp.data.base.Sample` lists."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from PIL import Image

from ssp.data.base import Sample


class ImageLoadError(OSError):
    """An image file is missing or cannot be decoded; the message names the file.

    ``path`` is the file and ``reason`` the decoder's one-line explanation."""

    def __init__(self, message: str, *, path: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason

    def __reduce__(self):  # picklable with its keyword fields (DataLoader workers, torch.distributed)
        return (_rebuild_image_load_error, (str(self), self.path, self.reason))


def _rebuild_image_load_error(message: str, path: str, reason: str) -> "ImageLoadError":
    return ImageLoadError(message, path=path, reason=reason)


def load_image(path: str) -> Image.Image:
    """Open ``path`` as an RGB PIL image (fully decoded, file closed)."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError as err:
        raise ImageLoadError(f"image file not found: {path}", path=str(path),
                             reason="file not found") from err
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__  # one line
        raise ImageLoadError(f"cannot read image {path}: {reason}", path=str(path),
                             reason=reason) from err


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
