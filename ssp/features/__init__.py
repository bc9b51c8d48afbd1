"""The feature stage: what the methods read.

    types       :class:`Features` (one split's image / patch / per-view features and labels)
    extract     :func:`extract_features` (images -> features, sharded under torchrun)
    store       the feature store: safetensors files keyed by everything that changes the numbers
    tip_cache   Tip-Adapter cache folders (``keys_<K>shots.pt``, ``val_f.pt``, ...)
    text        reading a text classifier file (``[C, D]`` or ``[D, C]``)
"""
from ssp.features.extract import extract_features
from ssp.features.store import FeatureStore, cached_features
from ssp.features.text import load_text_features
from ssp.features.tip_cache import TipAdapterCache, load_tip_adapter_cache
from ssp.features.types import Features

__all__ = ["Features", "extract_features", "FeatureStore", "cached_features", "TipAdapterCache",
           "load_tip_adapter_cache", "load_text_features"]
