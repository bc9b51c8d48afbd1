"""Zero-shot segmentation: window geometry, a synthetic backbone whose dense features are known,
background handling, and the picture writers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ssp.unmix.segment import (
    ZeroShotSegmenter,
    save_palette_mask,
    save_side_by_side,
    voc_palette,
    window_starts,
)

TEXT = torch.eye(3, 4)  # class c <-> basis vector c; dimension 3 means "nothing"


class _Normalize:
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


class _Preprocess:
    transforms = [_Normalize()]


class FakeBackbone:
    """Dense features from pixels: each 8x8 patch's feature is the class basis vector given by
    its mean red value (0.0 -> class 0, 0.5 -> class 1, 1.0 -> class 2, blue -> "nothing")."""

    device = "cpu"
    preprocess = _Preprocess()

    def encode_images(self, images):
        b, _, h, w = images.shape
        patches = images.unfold(2, 8, 8).unfold(3, 8, 8).mean((-1, -2))       # [B, 3, h/8, w/8]
        red, blue = patches[:, 0], patches[:, 2]
        feats = torch.zeros(b, h // 8, w // 8, 4)
        cls = (red * 2).round().long().clamp(0, 2)
        feats.scatter_(3, cls[..., None], 1.0)
        feats[blue > 0.5] = torch.tensor([0.0, 0.0, 0.0, 1.0])
        return feats.mean((1, 2)), feats.reshape(b, -1, 4)


def _image():
    a = np.zeros((64, 96, 3), dtype=np.float32)
    a[:, 32:64, 0] = 0.5
    a[:, 64:, 0] = 1.0
    a[:16, :32, 2] = 1.0                                  # a "background" block
    return Image.fromarray((a * 255).round().astype(np.uint8))


def test_window_starts_cover_the_image():
    assert window_starts(100, 100, 50) == [0]
    assert window_starts(300, 128, 64) == [0, 64, 128, 172]
    for size, crop, stride in ((500, 448, 224), (1000, 448, 224), (449, 448, 1)):
        starts = window_starts(size, crop, stride)
        covered = np.zeros(size, bool)
        for s in starts:
            covered[s:s + crop] = True
        assert covered.all() and starts[-1] + crop == size


def test_segmenter_recovers_known_regions_with_sliding_windows():
    seg = ZeroShotSegmenter(FakeBackbone(), TEXT, background="threshold", threshold=0.5,
                            short_side=64, crop=32, stride=16)
    pred = seg.predict(_image())
    assert pred.shape == (64, 96)
    assert (pred[20:, 2:28] == 1).all() and (pred[:, 36:60] == 2).all() and (pred[:, 68:] == 3).all()
    assert (pred[2:10, 2:24] == 0).all()                  # "nothing" -> uniform probabilities -> background
    no_bg = ZeroShotSegmenter(FakeBackbone(), TEXT, background=None, short_side=64, crop=64, stride=32)
    assert (no_bg.predict(_image()) > 0).all()


def test_background_prompts_compete_with_the_classes():
    seg = ZeroShotSegmenter(FakeBackbone(), TEXT, background="prompts",
                            background_text_features=torch.tensor([[0.0, 0.0, 0.0, 1.0]]),
                            short_side=64, crop=64, stride=32)
    pred = seg.predict(_image())
    assert (pred[2:10, 2:24] == 0).all() and (pred[:, 68:] == 3).all()


def test_segmenter_rejects_bad_geometry():
    with pytest.raises(ValueError, match="crop"):
        ZeroShotSegmenter(FakeBackbone(), TEXT, short_side=64, crop=128)
    with pytest.raises(ValueError, match="background_text_features"):
        ZeroShotSegmenter(FakeBackbone(), TEXT, background="prompts")


def test_palette_mask_and_side_by_side(tmp_path):
    mask = np.array([[0, 1], [15, 255]], dtype=np.uint8)
    path = save_palette_mask(mask, tmp_path / "m.png")
    with Image.open(path) as im:
        assert im.mode == "P"
        np.testing.assert_array_equal(np.array(im), mask)
        assert im.getpalette()[3:6] == [128, 0, 0]        # VOC aeroplane colour
    assert tuple(voc_palette()[15]) == (192, 128, 128)    # VOC person colour
    pic = save_side_by_side(Image.new("RGB", (4, 2)), mask, mask, tmp_path / "s.png", height=20)
    with Image.open(pic) as im:
        assert im.size == (40 + 20 + 20 + 2 * 4, 20)     # image 2:1, masks 1:1, 4 px gaps
