"""Unmix-CLIP (Rawlekar et al., "Disentangling CLIP Features for Enhanced Localized
Understanding", arXiv 2502.02977) on top of ssp's stages.

    ssp.unmix.mfi        mutual feature information: similarity matrix, MFI score, plots
    ssp.unmix.losses     MFI loss (class / Barlow-Twins forms), Asymmetric Loss
    ssp.unmix.projector  UnmixProjector: h_text / h_img trained on frozen CLIP features
    ssp.unmix.data       VOC / COCO multi-label labels and segmentation pairs
    ssp.unmix.metrics    mAP and mIoU
    ssp.unmix.segment    zero-shot semantic segmentation from dense features
    ssp.unmix.workflow   analyze / train / mlr / segment end to end, one JSON record each
                         (what ``ssp-unmix`` runs; its parser is ssp.cli.unmix)

Attributes are imported lazily (no torch / matplotlib import until used).
"""
from __future__ import annotations

import importlib

_LAZY = {
    "mfi_matrix": "ssp.unmix.mfi",
    "mfi_score": "ssp.unmix.mfi",
    "mfi_drop": "ssp.unmix.mfi",
    "mfi_summary": "ssp.unmix.mfi",
    "top_confusers": "ssp.unmix.mfi",
    "plot_mfi_heatmap": "ssp.unmix.mfi",
    "plot_mfi_histogram": "ssp.unmix.mfi",
    "mfi_loss": "ssp.unmix.losses",
    "asymmetric_loss": "ssp.unmix.losses",
    "UnmixProjector": "ssp.unmix.projector",
    "mean_average_precision": "ssp.unmix.metrics",
    "average_precision": "ssp.unmix.metrics",
    "mean_iou": "ssp.unmix.metrics",
    "ConfusionMatrix": "ssp.unmix.metrics",
    "get_multilabel_dataset": "ssp.unmix.data",
    "get_segmentation_dataset": "ssp.unmix.data",
    "load_voc_multilabel": "ssp.unmix.data",
    "load_voc_segmentation": "ssp.unmix.data",
    "load_coco_multilabel": "ssp.unmix.data",
    "load_coco_segmentation": "ssp.unmix.data",
    "ZeroShotSegmenter": "ssp.unmix.segment",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ssp.unmix' has no attribute {name!r}")


def __dir__():
    return __all__
