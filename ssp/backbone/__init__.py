"""The backbone stage: an open_clip model that turns images into a global feature ``[B, D]``
and patch features ``[B, L, D]``, and class names into a text classifier ``[C, D]``.

    weights   where the weights come from: open_clip tags, local checkpoints, ``hf-hub:``,
              random initialisation; QuickGELU detection; offline failures
    model     :class:`Backbone` (the wrapped model) and :func:`load_backbone`
"""
from ssp.backbone.model import Backbone, load_backbone, n_patches
from ssp.backbone.weights import backbone_label

__all__ = ["Backbone", "load_backbone", "n_patches", "backbone_label"]
