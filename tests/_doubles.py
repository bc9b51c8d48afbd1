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


# ------------------------------------------------------------------ scikit-learn's estimator checks
#
# Every estimator's ``fit`` takes its side inputs by name (the text classifier; for the SSP
# projector also the global features). scikit-learn's checks call ``fit(X, y)``, so each estimator
# runs them as a subclass whose ``fit(X, y)`` supplies those inputs from ``(X, y)``: the text
# classifier is the class sums of ``X`` (a class with no sample or a zero sum gets a fixed unit
# vector), the projector's patches are ``X[:, None, :]``.

#: Skip reasons shared by every classifier whose classes are the text classifier's rows.
LABELS_ARE_ROWS = ("labels are row indices 0..C-1 of the text classifier (class c is text row c), "
                   "so string or arbitrary labels cannot be mapped to classes")
CLASSES_ARE_TEXT_ROWS = ("the classes are the text classifier's rows, not the labels seen in y: a support "
                         "set showing one class still predicts among all C classes")
CLASSIFIER_SKIPS = {
    "check_classifiers_classes": LABELS_ARE_ROWS,
    "check_classifiers_train": "decision_function gives one logit per text row, [M, C] for every C "
                               "(scikit-learn expects [M] for two classes)",
    "check_supervised_y_2d": "a column vector y [N, 1] is refused, not ravelled with a warning: an [N, C] "
                             "multi-label array must not pass silently as labels",
}


def side_text(X, y):
    """A ``[C, D]`` text classifier for ``(X, y)``: the class sums of ``X``; when ``(X, y)`` cannot
    give one (malformed input the estimator must reject itself) a fixed unit-row matrix of the
    right width, so the estimator's own validation speaks."""
    try:
        x = np.asarray(X, dtype=np.float64)
        labels = np.asarray(y)
        ok = (x.ndim == 2 and labels.ndim == 1 and len(labels) == len(x) and x.shape[1] > 0
              and len(x) > 0 and labels.dtype.kind in "iuf" and np.isfinite(labels).all()
              and np.isfinite(x).all() and (labels == np.round(labels)).all() and labels.min() >= 0)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        shape = np.shape(X) if hasattr(X, "nnz") else np.asarray(X).shape
        width = shape[1] if len(shape) == 2 and shape[1] > 0 else 1
        return np.eye(2, width) + np.eye(2, width, 1)
    labels = labels.astype(np.int64)
    text = np.zeros((int(labels.max()) + 1, x.shape[1]))
    np.add.at(text, labels, x)
    fallback = np.eye(len(text), x.shape[1], 1) + np.eye(len(text), x.shape[1])
    zero = np.linalg.norm(text, axis=1) == 0
    text[zero] = fallback[zero]
    return text


def sklearn_checked(cls, module: str, *, patches: bool = False) -> type:
    """``Checked<cls>``: ``cls`` whose ``fit(X, y)`` supplies the side inputs from ``(X, y)`` (the
    text classifier :func:`side_text`; with ``patches`` also the projector's ``X[:, None, :]``
    and ``image_features=X``), for scikit-learn's checks. Assign it to a module-level name of
    ``module`` so it pickles. Validation, fitted state and predictions are ``cls``'s own code."""

    def fit(self, X, y=None, **kwargs):
        if patches:
            sparse = hasattr(X, "nnz")  # the estimator must refuse it itself
            local = np.asarray(X)[:, None, :] if not sparse and np.asarray(X).ndim == 2 else X
            return cls.fit(self, local, y, image_features=X, text_features=side_text(X, y), **kwargs)
        return cls.fit(self, X, y, text_features=side_text(X, y), **kwargs)

    members = {"fit": fit, "__module__": module, "__qualname__": f"Checked{cls.__name__}",
               "__doc__": f"{cls.__name__} fitted by scikit-learn's checks (side inputs from (X, y))."}
    if patches:
        members["fit_transform"] = lambda self, X, y=None: self.fit(X, y).transform(X)
    return type(f"Checked{cls.__name__}", (cls,), members)


def structured_projector_data(seed=0, n_classes=12, shots=3, n_patches=10, dim=64, n_queries=200):
    """float32 support set and queries with CLIP-like structure (class means + noise)."""
    rng = np.random.default_rng(seed)
    means = _unit_rows(rng.normal(size=(n_classes, dim)))
    labels = np.repeat(np.arange(n_classes), shots)
    images = _unit_rows(means[labels] + 0.6 * _unit_rows(rng.normal(size=(labels.size, dim))))
    patches = _unit_rows(0.6 * images[:, None] + _unit_rows(rng.normal(size=(labels.size, n_patches, dim))))
    text = _unit_rows(means + 0.4 * _unit_rows(rng.normal(size=(n_classes, dim))))
    queries = _unit_rows(means[rng.integers(0, n_classes, n_queries)] + 0.6 * _unit_rows(rng.normal(size=(n_queries, dim))))
    return [a.astype(np.float32) for a in (patches, images, text, queries)], labels


def _unit_rows(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)
