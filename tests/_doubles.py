"""Test data and doubles shared by the classifier, search and registry tests."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator


def make_data(n_classes=6, dim=10, shots=(3, 1, 4, 2, 3, 2), n_query=150, seed=0,
              dtype=np.float64, noise=1.3, offset=0.8):
    """Toy CLIP-like features: text ``[C, D]``, support ``[N, D]`` in a shuffled order with unequal
    shots, support labels ``[N]``, queries ``[M, D]`` and their labels ``[M]``.

    With ``offset > 0`` support and queries share a class-specific offset that the text lacks,
    so the cache term of Tip-Adapter / APE helps (the search tests need that).
    """
    rng = np.random.default_rng(seed)
    text = rng.normal(size=(n_classes, dim))
    labels = np.concatenate([np.full(k, c) for c, k in enumerate(shots)])
    support = text[labels] + 0.9 * rng.normal(size=(len(labels), dim))
    order = rng.permutation(len(labels))
    query_labels = rng.integers(0, n_classes, size=n_query)
    queries = text[query_labels]
    if offset:
        offsets = offset * rng.normal(size=(n_classes, dim))
        support = support + offsets[labels]
        queries = queries + offsets[query_labels]
    queries = queries + noise * rng.normal(size=(n_query, dim))
    return (text.astype(dtype), support[order].astype(dtype), labels[order],
            queries.astype(dtype), query_labels)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class LinearProjectorDouble(BaseEstimator):
    """Stands in for SSPProjector: fixed, known linear maps (then L2 normalisation).

    vision view: ``norm(x A_Vᵀ)``; language view: ``norm(x A_Lᵀ)``; text_features_:
    ``norm(W A_Lᵀ)``. The maps depend only on ``seed``, ``scale`` and D, so a dense reference
    can rebuild them (:meth:`maps`).
    """

    def __init__(self, seed: int = 0, scale: float = 0.5):
        self.seed = seed
        self.scale = scale

    @staticmethod
    def maps(seed: int, dim: int, scale: float = 0.5):
        rng = np.random.default_rng(1000 + seed)
        a_v = np.eye(dim) + scale * rng.normal(size=(dim, dim))
        a_l = np.eye(dim) + scale * rng.normal(size=(dim, dim))
        return a_v, a_l

    def fit(self, patch_features, labels, *, image_features, text_features):
        text = np.asarray(torch.as_tensor(text_features).cpu(), dtype=np.float64)
        self.patch_shape_ = tuple(patch_features.shape)
        self.n_fit_labels_ = len(labels)
        self.a_v_, self.a_l_ = self.maps(self.seed, text.shape[1], self.scale)
        self.text_features_ = torch.as_tensor(_unit(_unit(text) @ self.a_l_.T))
        return self

    def transform(self, X, view="vision"):
        if view not in ("vision", "language"):
            raise ValueError(view)
        x = torch.as_tensor(X)
        a = self.a_v_ if view == "vision" else self.a_l_
        out = _unit(np.asarray(x.cpu(), dtype=np.float64) @ a.T)
        return torch.as_tensor(out, dtype=x.dtype) if isinstance(X, torch.Tensor) else out
