"""ssp: training-free few-shot image classification with CLIP.

Data flows one way, one package per stage (each imports only the ones above it here)::

    ssp.data       datasets (the 11 CoOp benchmarks, ImageNet, image folders), few-shot sampling
    ssp.backbone   open_clip weights and model -> global [B, D] + patch [B, L, D] features, text classifier
    ssp.features   feature extraction, the feature store, Tip-Adapter cache folders
    ssp.methods    the method registry and estimators: zero-shot, cache models (Tip-Adapter, APE),
                   fine-tuned adapters, the SSP projector, validation search
    ssp.unmix      Unmix-CLIP (beside the methods): MFI analysis, projectors, multi-label
                   recognition, segmentation
    ssp.run        configuration, feature sources, the run loop, run records
    ssp.report     tables, plots, published numbers and comparisons, read from the run records
    ssp.cli        ssp-fewshot, ssp-reproduce, ssp-unmix, ssp-data

Attributes are imported lazily so ``import ssp`` stays cheap (no open_clip import).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "SSPProjector": "ssp.methods.ssp",
    "ZeroShotCLIP": "ssp.methods.zero_shot",
    "TipAdapter": "ssp.methods.cache_models",
    "APE": "ssp.methods.cache_models",
    "TipAdapterF": "ssp.methods.finetuned",
    "APET": "ssp.methods.finetuned",
    "GDA": "ssp.methods.gda",
    "ProKeR": "ssp.methods.proker",
    "LPPlusPlus": "ssp.methods.lp_plus_plus",
    "LinearProbe": "ssp.methods.linear_probe",
    "validation_search": "ssp.methods.search",
    "SearchResult": "ssp.methods.search",
    "make_grid": "ssp.methods.registry",
    "load_tip_adapter_cache": "ssp.features.tip_cache",
    "TipAdapterCache": "ssp.features.tip_cache",
    "load_backbone": "ssp.backbone.model",
    "Backbone": "ssp.backbone.model",
    "get_dataset": "ssp.data",
    "list_datasets": "ssp.data",
    "FeatureStore": "ssp.features.store",
    "load_config": "ssp.run.config",
    "run_method": "ssp.run.pipeline",
    "get_method": "ssp.methods.registry",
    "method_names": "ssp.methods.registry",
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
