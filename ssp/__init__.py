"""ssp: training-free few-shot image classification with CLIP.

Data flows one way, one module per stage::

    ssp.data        images, CoOp splits, few-shot sampling        -> Sample lists
    ssp.backbone    open_clip model -> global [B, D] + local [B, L, D] features, text classifier
    ssp.cache       feature extraction and the safetensors feature store
    ssp.tip_cache   reading Tip-Adapter / APE feature-cache folders
    ssp.registry    the method table (names, estimators, config sections, search axes)
    ssp.projector   SSPProjector (vision / language subspaces)
    ssp.classifiers ZeroShotCLIP, TipAdapter, APE (logits)
    ssp.finetuned   TipAdapterF, APET (trained on cached features)
    ssp.search      validation-only hyper-parameter search
    ssp.experiment  the protocol on images: features -> methods -> run records
    ssp.features_source  the protocol on Tip-Adapter / APE feature caches
    ssp.provenance  settings keys, environment and input digests of a run
    ssp.report      per-run JSON, tables and plots
    ssp.published   the published Tip-Adapter / APE numbers (data) and paper presets
    ssp.comparison  ours beside the published numbers: Markdown, CSV, JSON, plots
    ssp.cli         the ``ssp-fewshot`` command
    ssp.suite       the ``ssp-reproduce`` command (resumable suites)
    ssp.unmix       Unmix-CLIP: MFI analysis, projectors, multi-label recognition, segmentation
                    (the ``ssp-unmix`` command)

Attributes are imported lazily so ``import ssp`` stays cheap (no open_clip import).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "SSPProjector": "ssp.projector",
    "ZeroShotCLIP": "ssp.classifiers",
    "TipAdapter": "ssp.classifiers",
    "APE": "ssp.classifiers",
    "TipAdapterF": "ssp.finetuned",
    "APET": "ssp.finetuned",
    "validation_search": "ssp.search",
    "SearchResult": "ssp.search",
    "make_grid": "ssp.search",
    "load_feature_cache": "ssp.tip_cache",
    "FeatureCache": "ssp.tip_cache",
    "load_backbone": "ssp.backbone",
    "Backbone": "ssp.backbone",
    "get_dataset": "ssp.data",
    "list_datasets": "ssp.data",
    "FeatureStore": "ssp.cache",
    "load_config": "ssp.config",
    "run_method": "ssp.experiment",
    "get_method": "ssp.registry",
    "method_names": "ssp.registry",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ssp' has no attribute {name!r}")


def __dir__():
    return __all__
