"""Zero-shot semantic segmentation (ZS3) from dense CLIP features, raw (the baseline) or
projected by an :class:`~ssp.unmix.projector.UnmixProjector`.

Per image: resize the short side (default 448), cut sliding windows (crop 448, stride 224),
encode every window once (``Backbone.encode_images`` -> dense ``[L, D]`` features), score every
patch against every class (``logit_scale * cos``), upsample the ``[C, h, w]`` score map of each
window bilinearly to the window, average over overlaps, upsample to the original image size and
take the arg-max. Background: pixels whose top class probability is below a threshold, or a set
of background prompts that compete with the classes.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ssp._io import atomic_path
from ssp._utils.arrays import check_text_features
from ssp._utils.normalize import l2_normalize

__all__ = ["ZeroShotSegmenter", "BACKGROUND_MODES", "DEFAULT_BACKGROUND_PROMPTS", "voc_palette",
           "save_palette_mask", "save_side_by_side", "window_starts", "backbone_normalization"]

BACKGROUND_MODES = ("threshold", "prompts")
#: Background concepts used with ``background="prompts"`` (filled into the class templates).
DEFAULT_BACKGROUND_PROMPTS = ("sky", "wall", "floor", "ground", "grass", "tree", "road", "building",
                              "water", "ceiling", "mountain", "field")


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Window offsets covering ``size`` pixels with windows of ``crop`` every ``stride``; the
    last window ends at the border."""
    if size <= crop:
        return [0]
    starts = list(range(0, size - crop, stride))
    return starts + [size - crop]


def backbone_normalization(backbone) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the backbone's eval transform."""
    for t in getattr(backbone.preprocess, "transforms", []):
        if hasattr(t, "mean") and hasattr(t, "std"):
            return tuple(float(m) for m in t.mean), tuple(float(s) for s in t.std)
    raise ValueError("could not find the Normalize step in backbone.preprocess")


class ZeroShotSegmenter:
    """Per-pixel class maps from dense features.

    Args:
        backbone: an :class:`ssp.backbone.model.Backbone` (``encode_images`` gives dense features).
        text_features: ``[C, D]`` class text features (raw CLIP; projected here when a
            projector is given).
        projector: a fitted :class:`~ssp.unmix.projector.UnmixProjector`, or None (raw
            CLIP features, the training-free baseline).
        background: ``"threshold"`` (top class probability below ``threshold`` -> background),
            ``"prompts"`` (``background_text_features`` compete with the classes), or ``None``
            (no background class: every pixel gets a class, the VOC20 protocol).
        threshold: probability threshold (0.1, with ``logit_scale`` 50).
        background_text_features: ``[B, D]`` text features of background concepts.
        logit_scale: scale of the cosine logits (50).
        short_side, crop, stride: resize and sliding-window geometry (448, 448, 224).
        batch_size: windows per forward pass.
    """

    def __init__(self, backbone, text_features, *, projector=None, background: str | None = "threshold",
                 threshold: float = 0.1, background_text_features=None, logit_scale: float = 50.0,
                 short_side: int = 448, crop: int = 448, stride: int = 224, batch_size: int = 8):
        if background is not None and background not in BACKGROUND_MODES:
            raise ValueError(f"background must be one of {BACKGROUND_MODES} or None, got {background!r}")
        if background == "prompts" and background_text_features is None:
            raise ValueError("background='prompts' needs background_text_features [B, D]")
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        for name, v in (("short_side", short_side), ("crop", crop), ("stride", stride), ("batch_size", batch_size)):
            if int(v) != v or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if crop > short_side:
            raise ValueError(f"crop ({crop}) must not exceed short_side ({short_side}): windows are square crops "
                             "of the resized image")
        if stride > crop:
            raise ValueError(f"stride ({stride}) larger than crop ({crop}) would leave pixels uncovered")
        self.backbone = backbone
        self.projector = projector
        self.background = background
        self.threshold = float(threshold)
        self.logit_scale = float(logit_scale)
        self.short_side, self.crop, self.stride = int(short_side), int(crop), int(stride)
        self.batch_size = int(batch_size)
        self.device = torch.device(backbone.device)
        text = check_text_features(text_features, dtype=torch.float32)
        self.n_classes = text.shape[0]
        if background == "prompts":
            bg = check_text_features(background_text_features, name="background_text_features", dtype=torch.float32)
            text = torch.cat([text, bg])
        self._text = self._project_text(text)
        self._mean, self._std = backbone_normalization(backbone)

    def _project_text(self, text: torch.Tensor) -> torch.Tensor:
        if self.projector is None:
            return l2_normalize(text).to(self.device)
        return self.projector.transform_text(text.to(self.projector.device_)).to(self.device)

    def _project_patches(self, local: torch.Tensor) -> torch.Tensor:
        if self.projector is None:
            return l2_normalize(local)
        return self.projector.transform_image(local.to(self.projector.device_)).to(self.device)

    def _prepare(self, image) -> torch.Tensor:
        """PIL image -> normalised ``[3, H', W']`` with the short side at ``short_side``."""
        from torchvision.transforms import functional as TF

        w, h = image.size
        scale = self.short_side / min(w, h)
        size = (max(self.crop, round(h * scale)), max(self.crop, round(w * scale)))
        image = TF.resize(image.convert("RGB"), list(size), interpolation=TF.InterpolationMode.BICUBIC,
                          antialias=True)
        return TF.normalize(TF.to_tensor(image), self._mean, self._std)

    def class_logits(self, image) -> torch.Tensor:
        """``[K, H, W]`` logits at the image's original size (K = classes, plus background
        prompts when ``background="prompts"``)."""
        x = self._prepare(image)
        _, hh, ww = x.shape
        boxes = [(y, x0) for y in window_starts(hh, self.crop, self.stride)
                 for x0 in window_starts(ww, self.crop, self.stride)]
        k = self._text.shape[0]
        canvas = torch.zeros(k, hh, ww, device=self.device)
        count = torch.zeros(1, hh, ww, device=self.device)
        for start in range(0, len(boxes), self.batch_size):
            chunk = boxes[start:start + self.batch_size]
            crops = torch.stack([x[:, y:y + self.crop, x0:x0 + self.crop] for y, x0 in chunk])
            _, local = self.backbone.encode_images(crops)
            side = math.isqrt(local.shape[1])
            if side * side != local.shape[1]:
                raise RuntimeError(f"a square window gave {local.shape[1]} dense features, not a square grid")
            feats = self._project_patches(local)
            logits = self.logit_scale * feats @ self._text.T                      # [B, L, K]
            logits = logits.permute(0, 2, 1).reshape(len(chunk), k, side, side)
            logits = F.interpolate(logits, size=(self.crop, self.crop), mode="bilinear", align_corners=False)
            for (y, x0), window in zip(chunk, logits):
                canvas[:, y:y + self.crop, x0:x0 + self.crop] += window
                count[:, y:y + self.crop, x0:x0 + self.crop] += 1
        canvas /= count
        w, h = image.size
        return F.interpolate(canvas[None], size=(h, w), mode="bilinear", align_corners=False)[0]

    def predict(self, image) -> np.ndarray:
        """``[H, W]`` uint8 label map: 0 = background, ``c + 1`` = class ``c`` (with
        ``background=None`` no pixel is 0)."""
        logits = self.class_logits(image)
        if self.background == "prompts":
            label = logits.argmax(0)
            out = torch.where(label < self.n_classes, label + 1, torch.zeros_like(label))
        else:
            probs = torch.softmax(logits[:self.n_classes], dim=0)
            top, label = probs.max(0)
            out = label + 1
            if self.background == "threshold":
                out = torch.where(top < self.threshold, torch.zeros_like(out), out)
        return out.to(torch.uint8).cpu().numpy()


# ---- pictures ----

def voc_palette(n: int = 256) -> np.ndarray:
    """The Pascal VOC colour map ``[n, 3]`` uint8 (class k -> colour; 255 -> white here)."""
    palette = np.zeros((n, 3), dtype=np.uint8)
    for k in range(n):
        c, r, g, b = k, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[k] = (r, g, b)
    if n > 255:
        palette[255] = (255, 255, 255)
    return palette


def save_palette_mask(mask: np.ndarray, path: str | os.PathLike) -> Path:
    """Write ``[H, W]`` uint8 labels as a palette PNG (VOC colours), atomically."""
    from PIL import Image

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be [H, W], got shape {mask.shape}")
    im = Image.fromarray(mask.astype(np.uint8), mode="P")
    im.putpalette(voc_palette().ravel().tolist())
    path = Path(path)
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")
    return path


def save_side_by_side(image, target: np.ndarray | None, pred: np.ndarray, path: str | os.PathLike, *,
                      height: int = 256) -> Path:
    """image | ground truth | prediction (VOC colours, void white) as one PNG, atomically."""
    from PIL import Image

    palette = voc_palette()
    panels = [image.convert("RGB")]
    if target is not None:
        panels.append(Image.fromarray(palette[np.asarray(target, dtype=np.uint8)]))
    panels.append(Image.fromarray(palette[np.asarray(pred, dtype=np.uint8)]))
    scaled = [p.resize((max(1, round(p.width * height / p.height)), height),
                       Image.BICUBIC if i == 0 else Image.NEAREST) for i, p in enumerate(panels)]
    gap = 4
    out = Image.new("RGB", (sum(p.width for p in scaled) + gap * (len(scaled) - 1), height), (255, 255, 255))
    x = 0
    for p in scaled:
        out.paste(p, (x, 0))
        x += p.width + gap
    path = Path(path)
    with atomic_path(path) as tmp:
        out.save(tmp, format="PNG")
    return path
