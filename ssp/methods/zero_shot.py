"""Zero-shot CLIP, the method every other one adds a term to (:class:`ZeroShotCLIP`)."""
from __future__ import annotations

from typing import Any

from ssp._lazy import torch
from ssp._utils.arrays import ArrayLike
from ssp.methods.base import CLIPFeatureClassifier
from ssp.methods.registry import register_method


@register_method("zero-shot", title="Zero-shot CLIP",
                 aliases=("zs", "zeroshot", "zero-shot-clip", "zeroshotclip"))
class ZeroShotCLIP(CLIPFeatureClassifier):
    """Zero-shot CLIP: ``logit_scale · x Wᵀ`` (Radford et al., CLIP, ICML 2021; docs/method.md).

    With a projector and ``routing="paper"`` the logits are ``logit_scale · x^L Ŵᵀ``; routings
    "reference" and "vision" use the unprojected zero-shot term (identical to no projector).

    Args:
        logit_scale: multiplies the cosine similarities (100, as in Tip-Adapter/APE).
        projector: optional ``SSPProjector`` (fitted, or fitted in ``fit`` from patch_features).
        routing: "paper" | "reference" | "vision" (see the module docstring).
        device: torch device; ``None`` = CUDA if available else CPU.

    Fitted attributes: ``classes_``, ``text_features_`` [C, D], ``projector_``,
    ``projected_text_features_`` ([C, D] or None), ``n_features_in_``, ``device_``, ``dtype_``.
    """

    _needs_support = False

    def __init__(self, *, logit_scale: float = 100.0, projector: Any = None,
                 routing: str = "paper", device: str | torch.device | None = None) -> None:
        self.logit_scale = logit_scale
        self.projector = projector
        self.routing = routing
        self.device = device

    def fit(self, image_features: ArrayLike | None = None, labels: ArrayLike | None = None, *,
            text_features: ArrayLike, patch_features: ArrayLike | None = None) -> "ZeroShotCLIP":
        """Store the text classifier ``[C, D]``; fit the projector when ``patch_features``
        ``[N, L, D]`` are given (then ``image_features`` ``[N, D]`` and ``labels`` ``[N]`` are
        required). Support features are otherwise only checked, not used."""
        return super().fit(image_features, labels, text_features=text_features,
                           patch_features=patch_features)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        zs_view = self._route()[0]
        views = self._views(x, {zs_view} - {"plain"})
        return self._zero_shot_logits(views)
