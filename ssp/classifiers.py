"""Training-free classifiers on CLIP features: zero-shot CLIP, Tip-Adapter, APE.

All three are scikit-learn classifiers working on pre-extracted, L2-normalised features
(every input is re-normalised here, so raw features are fine too)::

    clf = TipAdapter(alpha=1.0, beta=5.5).fit(support_features, support_labels,
                                              text_features=text_features)
    logits = clf.decision_function(query_features)      # [M, C]
    clf.predict(query_features)                          # [M] class indices

Logits (notation of docs/method.md; ``x`` query, ``W`` text classifier [C, D], ``F`` support keys
[N, D], ``Y`` one-hot support labels [N, C]):

* zero-shot:   ``s · x Wᵀ``                                      (``s = logit_scale = 100``)
* Tip-Adapter: ``s · x Wᵀ + α · exp(−β (1 − x Fᵀ)) Y``
* APE:         ``s · x Wᵀ + α · exp(−β (1 − x_Ω F_Ωᵀ)) (Y ⊙ exp(γ δ))`` with the channels ``Ω``
  picked by the closed-form criterion (:func:`ape_channel_criterion`) and the per-key divergence
  ``δ`` (:func:`ape_key_divergence`).

``Y`` is never built: support samples are grouped by label with a stable sort (the input order
is never trusted, and classes may have different shot counts) and the cache term is a
class-wise segment sum, computed in chunks of queries.

**SSP projector.** Pass ``projector=SSPProjector(...)`` (fitted, or fitted here when
``patch_features`` are given to ``fit``). ``routing`` decides which projected features enter
which term (``x^V`` / ``x^L`` = vision- / language-projected query, ``Ŵ`` = language-projected
text, ``F̂`` = vision-projected keys):

=============  =========================  ====================================================
routing        zero-shot term              cache term
=============  =========================  ====================================================
"paper"        ``s · x^L Ŵᵀ``              ``x^V`` against ``F̂`` (the SSP script's pre-search logits)
"reference"    ``s · x Wᵀ`` (unprojected)  ``x^L`` against ``F̂`` (the published SSP script's
                                           final, searched formula; reproduction only)
"vision"       ``s · x Wᵀ`` (unprojected)  ``x^V`` against ``F̂``
=============  =========================  ====================================================

With a projector, APE computes its channel criterion and divergence on the projected pair
``(F̂, Ŵ)`` in every routing. Without a projector ``routing`` is validated but has no effect.

**Estimator conventions** (shared with :class:`ssp.projector.SSPProjector`):

* Constructor parameters are keyword-only and stored as given; ``fit`` validates every one of
  them (``TipAdapter(alpha="abc").fit(...)`` raises) and leaves the model unfitted on failure.
* ``fit(features, labels, *, side inputs)``: the first argument is the features the estimator
  learns from, the second their labels, everything else is passed by name. Here that is
  ``fit(image_features [N, D], labels [N], *, text_features [C, D], patch_features=None)``;
  the projector's is ``fit(patch_features [N, L, D], labels [N], *, image_features,
  text_features)``.
* Array kinds: numpy in, numpy out; torch in, torch out on the input's device. This holds for
  predictions and for the fitted array attributes, which follow the kind of the support features
  given to ``fit`` (``text_features`` for a zero-shot model fitted without support). The one
  exception is ``classes_``, numpy always as scikit-learn expects. Computations run in torch on
  ``device_`` (the fitted tensors are kept there privately).
* :meth:`score` returns the top-1 accuracy as a fraction in [0, 1] (scikit-learn's convention);
  :func:`ssp.search.validation_search`'s ``best_score_`` and the result tables report accuracy in
  percent (100 x the fraction).

Hyper-parameters read at prediction time (``alpha``, ``beta``, ``gamma``, ``routing``,
``logit_scale``, ``chunk_size``) may be changed with ``set_params`` without refitting; everything
that depends only on the support set is computed once in ``fit`` (this is what
:func:`ssp.search.validation_search` relies on). Changing a fit-time parameter (``projector``,
``n_channels``, ``criterion_weights``) after ``fit`` raises until ``fit`` is called again.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, clone

from ssp._checks import ROUTINGS, check_real
from ssp._utils import (
    ArrayLike,
    check_int,
    check_is_fitted,
    check_labels,
    check_text_features,
    l2_normalize,
    like_input,
    resolve_device,
    to_tensor,
    warn,
)

__all__ = [
    "ZeroShotCLIP",
    "TipAdapter",
    "APE",
    "ROUTINGS",
    "ape_channel_criterion",
    "ape_key_divergence",
]

# routing -> (zero-shot query view, zero-shot text, cache query view); used with a projector.
_ROUTES = {
    "paper": ("language", "projected", "vision"),
    "reference": ("plain", "plain", "language"),
    "vision": ("plain", "plain", "vision"),
}
_NO_PROJECTOR_ROUTE = ("plain", "plain", "plain")

# Elements of one [queries x keys] affinity chunk when chunk_size is None (64 MiB in float32).
_AUTO_CHUNK_ELEMENTS = 1 << 24

_KL_EPS = 1e-6  # the epsilon of APE's divergence, as in the reference code


# --------------------------------------------------------------------------------------------
# Building blocks (public where they are worth testing on their own)
# --------------------------------------------------------------------------------------------


def _check_routing(routing: str) -> str:
    if routing not in _ROUTES:
        raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
    return routing


def _check_finite_param(value: Any, name: str) -> float:
    return check_real(value, name)


def cache_kernel(affinity: torch.Tensor, beta: float | torch.Tensor) -> torch.Tensor:
    """Tip-Adapter's activation ``exp(−β (1 − a))`` of cosine affinities ``a`` (any shape)."""
    return torch.exp(-beta * (1.0 - affinity))


class ClassSegments:
    """Support keys grouped by class: class-wise sums of per-key quantities.

    Built from labels already sorted by class (``fit`` sorts them stably). Class ``c`` owns
    the contiguous key range ``offsets[c] : offsets[c] + counts[c]``. Sums are taken over a
    padded ``[.., C, K_max]`` layout: a free ``view`` when every class has the same shot count,
    a gather with zero padding otherwise. This replaces the product with the one-hot value
    matrix ``Y`` ([N, C]) without ever building it.
    """

    def __init__(self, sorted_labels: torch.Tensor, n_classes: int) -> None:
        n_keys = int(sorted_labels.shape[0])
        if n_keys and bool((sorted_labels[1:] < sorted_labels[:-1]).any()):
            raise ValueError("ClassSegments needs labels sorted by class")
        counts = torch.bincount(sorted_labels, minlength=n_classes)
        self.n_classes = n_classes
        self.n_keys = n_keys
        self.counts = counts
        self.k_max = int(counts.max()) if n_keys else 0
        self.equal = bool((counts == self.k_max).all()) and self.k_max > 0
        self.index: torch.Tensor | None = None
        if not self.equal:
            offsets = torch.cumsum(counts, 0) - counts
            slot = torch.arange(self.k_max, device=counts.device)
            index = offsets[:, None] + slot[None, :]
            # padding slots point at an extra zero column appended at position n_keys
            self.index = torch.where(slot[None, :] < counts[:, None], index,
                                     torch.full_like(index, n_keys))

    def pad(self, values: torch.Tensor) -> torch.Tensor:
        """``[..., N]`` -> ``[..., C, K_max]`` (zeros in the padding slots)."""
        lead = values.shape[:-1]
        if self.equal:
            return values.reshape(*lead, self.n_classes, self.k_max)
        extended = torch.cat([values, values.new_zeros(*lead, 1)], dim=-1)
        return extended[..., self.index]

    def sum(self, values: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """``out[m, c] = Σ_{n in class c} values[m, n] · weights[n]``: ``[M, N]`` -> ``[M, C]``."""
        padded = self.pad(values)
        if weights is not None:
            padded = padded * self.pad(weights)
        return padded.sum(dim=-1)

    def sum_many(self, values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``out[c, m, g] = Σ_{n in c} values[m, n] · weights[g, n]``: -> ``[C, M, G]``.

        One batched matmul over classes (``[M, K] @ [K, G]`` per class); the class-major
        result is what the batched matmul produces, so no transpose is paid for.
        """
        padded_values = self.pad(values).transpose(0, 1)                  # [C, M, K]
        padded_weights = self.pad(weights).permute(1, 2, 0)               # [C, K, G]
        return torch.bmm(padded_values, padded_weights)


def _group_by_label(labels: torch.Tensor) -> torch.Tensor:
    """Stable permutation that groups samples by class (order inside a class is kept)."""
    return torch.sort(labels, stable=True).indices


def ape_channel_criterion(
    text_features: ArrayLike,
    support_features: ArrayLike,
    support_labels: ArrayLike,
    weights: Sequence[float] = (0.5, 0.5),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """APE's feature-channel criterion in closed form (Zhu et al., APE, ICCV 2023, prior refinement; ``only_use_txt=False``; docs/method.md).

    Class ``i`` contributes the ``n_i + 1`` vectors ``{w_i} ∪ {its support keys}``. For channel
    ``d`` the inter-class similarity is the mean over all pairs of vectors from different
    classes, ``S_d = Σ_{i≠j} σ_{i,d} σ_{j,d} / Σ_{i≠j} (n_i+1)(n_j+1)`` with class sums
    ``σ_{i,d}``, i.e. ``((Σ_i σ_i)² − Σ_i σ_i²) / ((Σ_i (n_i+1))² − Σ_i (n_i+1)²)`` -- the
    reference's four nested loops, for any (unequal) shot counts. ``V_d`` is the unbiased variance
    of ``W[:, d]`` over classes, and the criterion is ``J = −w₀ S + w₁ V`` (higher is better).

    Args:
        text_features: ``[C, D]`` class text embeddings (used as given; normalise beforehand).
        support_features: ``[N, D]`` support keys, any order.
        support_labels: ``[N]`` class indices in ``0..C-1``.
        weights: ``(w₀, w₁)``.

    Returns:
        ``(S, V, J)``, each ``[D]``, computed in float64.
    """
    text = check_text_features(text_features).to(torch.float64)
    keys = to_tensor(support_features, "support_features", ndim=2, device=text.device)
    keys = keys.to(torch.float64)
    n_classes, dim = text.shape
    if keys.shape[1] != dim:
        raise ValueError(f"support_features have D={keys.shape[1]} but text_features D={dim}")
    labels = check_labels(support_labels, keys.shape[0], n_classes, name="support_labels",
                          device=text.device)
    if n_classes < 2:
        raise ValueError("the APE criterion needs at least 2 classes (inter-class similarity)")
    w0, w1 = (float(w) for w in weights)
    class_sums = text.clone().index_add_(0, labels, keys)             # σ  [C, D]
    set_sizes = (torch.bincount(labels, minlength=n_classes) + 1).to(torch.float64)
    pair_count = set_sizes.sum() ** 2 - (set_sizes ** 2).sum()
    similarity = (class_sums.sum(0) ** 2 - (class_sums ** 2).sum(0)) / pair_count
    variance = text.var(dim=0, unbiased=True)
    return similarity, variance, -w0 * similarity + w1 * variance


def ape_key_divergence(keys: torch.Tensor, text: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """APE's per-key divergence in bits (Zhu et al., APE, ICCV 2023; docs/method.md).

    ``P = softmax_c(F Wᵀ)`` over raw cosines (no temperature, as in the reference code) and
    ``δ_n = Σ_c Y_nc log₂((Y_nc + ε) / (P_nc + ε))``, which for one-hot ``Y`` is exactly
    ``log₂((1 + ε) / (P_{n,y_n} + ε))`` with ``ε = 1e-6``.

    Args:
        keys: ``[N, D]``; text: ``[C, D]``; labels: ``[N]``.

    Returns:
        ``δ`` ``[N]``.
    """
    probs = torch.softmax(keys @ text.T, dim=1)
    p_true = probs.gather(1, labels[:, None])[:, 0]
    return torch.log2((1.0 + _KL_EPS) / (p_true + _KL_EPS))


def _freeze(value: Any) -> Any:
    """Hashable-ish snapshot of a fit-time parameter (identity for estimators)."""
    if isinstance(value, (list, tuple, np.ndarray, torch.Tensor)):
        return tuple(float(v) for v in np.asarray(value, dtype=np.float64).ravel())
    if value is None or isinstance(value, (int, float, str, bool)):
        return value
    return id(value)


def _projector_is_fitted(projector: Any) -> bool:
    return hasattr(projector, "text_features_")


# --------------------------------------------------------------------------------------------
# Shared machinery
# --------------------------------------------------------------------------------------------


class _CLIPFeatureClassifier(ClassifierMixin, BaseEstimator):
    """Common fit / routing / prediction code. Subclasses define ``__init__`` and the terms."""

    _fit_time_params: tuple[str, ...] = ("projector",)
    # hyper-parameters that must be finite real numbers (checked by fit and again by prediction,
    # since set_params may change them after fit)
    _real_params: tuple[str, ...] = ("logit_scale",)
    _needs_support = True

    # ---- fitting ------------------------------------------------------------------------

    def fit(self, image_features: ArrayLike | None = None, labels: ArrayLike | None = None, *,
            text_features: ArrayLike, patch_features: ArrayLike | None = None):
        """Fit on support features ``[N, D]``, labels ``[N]`` and the text classifier ``[C, D]``
        (see the subclass docstrings). A failed fit leaves the model unfitted, never half-fitted."""
        self._reset_fitted()
        try:
            self._validate_params()
            self._torch = SimpleNamespace()
            self._fit(image_features, labels, text_features, patch_features)
            self._publish(image_features if image_features is not None else text_features)
        except BaseException:
            self._reset_fitted()
            raise
        return self

    def _validate_params(self) -> None:
        """Check every constructor parameter; ``fit`` calls it before touching the data."""
        _check_routing(self.routing)
        for name in self._real_params:
            check_real(getattr(self, name), name)
        if hasattr(self, "chunk_size"):
            check_int(self.chunk_size, "chunk_size", allow_none=True)
        resolve_device(self.device)

    def _publish(self, reference: ArrayLike) -> None:
        """Expose the fitted tensors (kept as torch on ``device_`` in ``self._torch`` for the
        computations) as public attributes of ``reference``'s kind: numpy for numpy input,
        torch on the input's device for torch input. A fitted tensor a subclass set directly as a
        public attribute during ``_fit`` is taken over (it replaces the private copy)."""
        for name, value in list(vars(self).items()):
            if name.endswith("_") and not name.startswith("_") and isinstance(value, torch.Tensor):
                setattr(self._torch, name, value)
        for name, value in vars(self._torch).items():
            setattr(self, name, None if value is None else like_input(value, reference))

    def _fit(self, image_features, labels, text_features, patch_features) -> None:
        self._fit_common(image_features, labels, text_features, patch_features)

    def _reset_fitted(self) -> None:
        for name in [k for k in vars(self) if k.endswith("_") and not k.startswith("__")]:
            delattr(self, name)
        self.__dict__.pop("_fit_snapshot", None)
        self.__dict__.pop("_torch", None)

    def _fit_common(self, image_features, labels, text_features, patch_features) -> None:
        device = resolve_device(self.device)
        text = check_text_features(text_features, device=device)
        images = None
        if image_features is not None:
            images = to_tensor(image_features, "image_features", ndim=2, device=device)
        dtype = text.dtype
        if images is not None:
            dtype = torch.promote_types(dtype, images.dtype)
        n_classes, dim = text.shape
        text = l2_normalize(text.to(dtype))

        y = None
        if images is not None:
            if images.shape[1] != dim:
                raise ValueError(
                    f"image_features have D={images.shape[1]} but text_features have D={dim}; "
                    "both must come from the same CLIP backbone"
                )
            images = l2_normalize(images.to(dtype))
            if labels is None:
                raise ValueError("labels are required with image_features")
            y = check_labels(labels, images.shape[0], n_classes, name="labels", device=device)
        elif labels is not None:
            raise ValueError("labels were given without image_features")
        if self._needs_support and images is None:
            raise ValueError(f"{type(self).__name__} needs support image_features and labels")
        if self._needs_support and images.shape[0] == 0:
            raise ValueError("image_features is empty: at least one support sample is needed")

        self.device_ = device
        self.dtype_ = dtype
        self.n_features_in_ = dim
        self.classes_ = np.arange(n_classes)
        self._torch.text_features_ = text
        self.projector_ = self._fit_projector(patch_features, images, y, text, device)
        self._torch.projected_text_features_ = None
        if self.projector_ is not None:
            projected = self.projector_.text_features_
            projected = to_tensor(projected, "projector.text_features_", ndim=2,
                                  device=device, dtype=dtype)
            if tuple(projected.shape) != (n_classes, dim):
                raise ValueError(
                    f"the projector's text_features_ have shape {tuple(projected.shape)}, but this "
                    f"model has C={n_classes} classes and D={dim}; fit the projector on the same "
                    "text_features"
                )
            self._torch.projected_text_features_ = l2_normalize(projected)

        if images is not None:
            order = _group_by_label(y)
            self._torch.support_order_ = order
            self._torch.support_labels_ = y[order]
            self._torch.support_features_ = images[order]
            self._torch.class_counts_ = torch.bincount(self._torch.support_labels_, minlength=n_classes)
            self.segments_ = ClassSegments(self._torch.support_labels_, n_classes)
        self._fit_snapshot = {name: _freeze(getattr(self, name)) for name in self._fit_time_params}

    def _fit_projector(self, patch_features, images, labels, text, device):
        projector = self.projector
        if projector is None:
            if patch_features is not None:
                raise ValueError("patch_features were given but projector is None; pass "
                                 "projector=SSPProjector(...) to use them")
            return None
        if patch_features is not None:
            if images is None:
                raise ValueError("fitting the projector needs image_features and labels too")
            # Only the shape is read here: the projector converts [N, L, D] patches to its device
            # and precision one class chunk at a time (no full float32 / device copy).
            shape = tuple(np.shape(patch_features))
            if len(shape) != 3 or shape[0] != images.shape[0] or shape[2] != images.shape[1]:
                raise ValueError(
                    f"patch_features must be [N, L, D] = [{images.shape[0]}, L, {images.shape[1]}] "
                    f"to match image_features, got {shape}"
                )
            return clone(projector).fit(patch_features, labels, image_features=images,
                                        text_features=text)
        if not _projector_is_fitted(projector):
            raise ValueError(
                "projector is not fitted and no patch_features were given: pass "
                "patch_features=[N, L, D] to fit (the projector is fitted on them), or pass a "
                "projector that is already fitted"
            )
        return projector

    def _check_fitted(self) -> None:
        check_is_fitted(self, "text_features_")
        for name, frozen in self._fit_snapshot.items():
            if _freeze(getattr(self, name)) != frozen:
                raise ValueError(
                    f"{name} changed after fit ({type(self).__name__} computes everything that "
                    f"depends on it in fit); call fit again"
                )

    # ---- queries --------------------------------------------------------------------------

    def _route(self, routing: str | None = None) -> tuple[str, str, str]:
        routing = _check_routing(self.routing if routing is None else routing)
        return _ROUTES[routing] if self.projector_ is not None else _NO_PROJECTOR_ROUTE

    def _queries(self, X: ArrayLike) -> torch.Tensor:
        x = to_tensor(X, "X", ndim=2, device=self.device_)
        if x.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has D={x.shape[1]} features but the model was fitted with D="
                f"{self.n_features_in_}"
            )
        return l2_normalize(x.to(self.dtype_))

    def _views(self, x: torch.Tensor, needed: set[str]) -> dict[str, torch.Tensor]:
        """Plain (normalised) queries and the projected views in ``needed``."""
        views = {"plain": x}
        for view in ("vision", "language"):
            if view in needed:
                out = self.projector_.transform(x, view=view)
                views[view] = l2_normalize(to_tensor(out, f"projector view {view!r}",
                                                     device=self.device_, dtype=self.dtype_))
        return views

    def _zero_shot_logits(self, views: dict[str, torch.Tensor], routing: str | None = None):
        query_view, text_kind, _ = self._route(routing)
        text = self._torch.projected_text_features_ if text_kind == "projected" else self._torch.text_features_
        return float(self.logit_scale) * (views[query_view] @ text.T)

    def _chunk_rows(self, n_keys: int) -> int:
        if self.chunk_size is not None:
            return check_int(self.chunk_size, "chunk_size", allow_none=True)
        return max(1, _AUTO_CHUNK_ELEMENTS // max(n_keys, 1))

    def _terms(self, x: torch.Tensor, routing: str | None = None):
        """``(zero-shot logits [M, C], cache affinities [M, N] or None, key log-weights [N] or
        None)`` for normalised queries ``x`` under ``routing``: everything the logits need
        except the searched hyper-parameters (alpha, beta, gamma). Models with trained per-key
        value weights (APE-T) append a fourth element, the weights ``[N]`` (any sign)."""
        raise NotImplementedError

    def _search_terms(self, X: ArrayLike, routing: str | None = None):
        """:meth:`_terms` for raw queries ``X`` ``[M, D]`` (used by ``ssp.search``)."""
        self._check_fitted()
        return self._terms(self._queries(X), routing)

    # ---- sklearn API ----------------------------------------------------------------------

    def decision_function(self, X: ArrayLike) -> ArrayLike:
        """Logits ``[M, C]`` for queries ``X`` ``[M, D]`` (numpy in, numpy out; torch in, torch
        out, on the input's device)."""
        self._check_fitted()
        logits = self._logits(self._queries(X))
        return like_input(logits, X)

    def predict(self, X: ArrayLike) -> ArrayLike:
        """Predicted class indices ``[M]`` (int64)."""
        self._check_fitted()
        pred = self._logits(self._queries(X)).argmax(dim=1)
        return like_input(pred, X)

    def score(self, X: ArrayLike, y: ArrayLike, sample_weight=None) -> float:
        """Top-1 accuracy on ``X`` ``[M, D]`` with true labels ``y`` ``[M]``, as a **fraction** in
        [0, 1] (scikit-learn's convention, so ``GridSearchCV`` & co. work unchanged). Note that
        ``validation_search(...).best_score_`` and the result tables are in **percent**."""
        from sklearn.metrics import accuracy_score

        pred = self.predict(X)
        pred = pred.cpu().numpy() if isinstance(pred, torch.Tensor) else pred
        truth = check_labels(y, pred.shape[0], None, name="y").cpu().numpy()
        return float(accuracy_score(truth, pred, sample_weight=sample_weight))

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class _CacheModel(_CLIPFeatureClassifier):
    """Zero-shot term plus a class-wise cache term (Tip-Adapter, APE)."""

    def _cache_query(self, views: dict[str, torch.Tensor], routing: str | None) -> torch.Tensor:
        return views[self._route(routing)[2]]

    def _key_log_weights(self) -> torch.Tensor | None:
        return None

    def _project_keys(self, keys: torch.Tensor) -> torch.Tensor:
        """Cache keys: the support features, vision-projected when there is a projector."""
        if self.projector_ is None:
            return keys
        return self._views(keys, {"vision"})["vision"]

    def _affinity(self, query: torch.Tensor) -> torch.Tensor:
        return query @ self._torch.keys_.T

    def _needed_views(self, routing: str | None) -> set[str]:
        zs_view, _, cache_view = self._route(routing)
        return {zs_view, cache_view} - {"plain"}

    def _terms(self, x, routing=None):
        views = self._views(x, self._needed_views(routing))
        zero_shot = self._zero_shot_logits(views, routing)
        affinity = self._affinity(self._cache_query(views, routing))
        return zero_shot, affinity, self._key_log_weights()

    def _value_weights(self) -> torch.Tensor | None:
        """Per-key weights ``[N]`` of the one-hot cache values (``None``: all ones); APE:
        ``exp(γ δ)``."""
        log_weights = self._key_log_weights()
        if log_weights is None:
            return None
        return torch.exp(_check_finite_param(self.gamma, "gamma") * log_weights)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        alpha = _check_finite_param(self.alpha, "alpha")
        beta = _check_finite_param(self.beta, "beta")
        weights = self._value_weights()
        views = self._views(x, self._needed_views(None))
        logits = self._zero_shot_logits(views)
        query = self._cache_query(views, None)
        rows = self._chunk_rows(self._torch.keys_.shape[0])
        for start in range(0, query.shape[0], rows):
            stop = start + rows
            activation = cache_kernel(self._affinity(query[start:stop]), beta)
            cache = self.segments_.sum(activation, weights)
            logits[start:stop] = logits[start:stop] + alpha * cache
        return logits


# --------------------------------------------------------------------------------------------
# The three classifiers
# --------------------------------------------------------------------------------------------


class ZeroShotCLIP(_CLIPFeatureClassifier):
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

    def _terms(self, x, routing=None):
        zs_view = self._route(routing)[0]
        views = self._views(x, {zs_view} - {"plain"})
        return self._zero_shot_logits(views, routing), None, None

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self._terms(x)[0]


class TipAdapter(_CacheModel):
    """Training-free Tip-Adapter (Zhang et al., Tip-Adapter, ECCV 2022): ``s · x Wᵀ + α · exp(−β(1 − x Fᵀ)) Y``.

    Args:
        alpha: residual ratio α (weight of the cache term).
        beta: sharpness β.
        projector, routing: SSP projector and routing (module docstring).
        logit_scale: zero-shot scale s.
        chunk_size: queries per chunk of the ``[M, N]`` affinity matrix; ``None`` picks a chunk
            of about 16M elements.
        device: torch device; ``None`` = CUDA if available else CPU.

    Fitted attributes: ``classes_``, ``text_features_`` [C, D], ``support_features_`` [N, D]
    (normalised, grouped by class), ``support_labels_`` [N] (sorted), ``support_order_`` [N]
    (the permutation applied to the input), ``class_counts_`` [C], ``keys_`` [N, D] (the cache
    keys: ``support_features_``, vision-projected with a projector), ``projector_``,
    ``projected_text_features_``, ``n_features_in_``, ``device_``, ``dtype_``.
    """


    _real_params = ("alpha", "beta", "logit_scale")

    def __init__(self, *, alpha: float = 1.0, beta: float = 1.0, projector: Any = None,
                 routing: str = "paper", logit_scale: float = 100.0,
                 chunk_size: int | None = None, device: str | torch.device | None = None) -> None:
        self.alpha = alpha
        self.beta = beta
        self.projector = projector
        self.routing = routing
        self.logit_scale = logit_scale
        self.chunk_size = chunk_size
        self.device = device

    def fit(self, image_features: ArrayLike, labels: ArrayLike, *, text_features: ArrayLike,
            patch_features: ArrayLike | None = None) -> "TipAdapter":
        """Build the cache from support features ``[N, D]`` and labels ``[N]`` (any order,
        unequal shots allowed) with the text classifier ``[C, D]``; fit a clone of ``projector``
        when ``patch_features`` ``[N, L, D]`` are given."""
        return super().fit(image_features, labels, text_features=text_features,
                           patch_features=patch_features)

    def _fit(self, image_features, labels, text_features, patch_features) -> None:
        self._fit_common(image_features, labels, text_features, patch_features)
        self._torch.keys_ = self._project_keys(self._torch.support_features_)


class APE(_CacheModel):
    """Training-free APE (Zhu et al., APE, ICCV 2023) with the closed-form channel criterion.

    ``s · x Wᵀ + α · exp(−β(1 − x_Ω F_Ωᵀ)) (Y ⊙ exp(γ δ))``: the zero-shot term uses all
    channels; the cache term uses the ``n_channels`` channels ``Ω`` with the highest criterion
    ``−w₀ S + w₁ V`` (:func:`ape_channel_criterion`, on the text and the keys), with queries and
    keys re-normalised on ``Ω``; ``δ`` is the per-key divergence (:func:`ape_key_divergence`,
    computed on ``Ω``). With a projector, criterion and divergence use ``(F̂, Ŵ)``.

    Args:
        alpha, beta: as in Tip-Adapter.
        gamma: strength γ of the divergence re-weighting (γ = 0: plain one-hot values).
        n_channels: ``|Ω|``; ``None`` = all D channels. Values above D are clamped to D with a
            warning (the published configs give e.g. 800 channels for RN50's D = 1024, which
            a D = 512 backbone cannot honour).
        criterion_weights: ``(w₀, w₁)`` of the criterion.
        projector, routing, logit_scale, chunk_size, device: as in :class:`TipAdapter`.

    Fitted attributes: those of :class:`TipAdapter` plus ``channels_`` [Q] (sorted channel
    indices Ω), ``criterion_`` [D], ``inter_class_similarity_`` [D], ``class_variance_`` [D]
    (float64), ``selected_keys_`` [N, Q] (keys on Ω, re-normalised), ``key_divergence_`` [N]
    (δ in bits).
    """

    _fit_time_params = ("projector", "n_channels", "criterion_weights")
    _real_params = ("alpha", "beta", "gamma", "logit_scale")

    def __init__(self, *, alpha: float = 1.0, beta: float = 1.0, gamma: float = 0.1,
                 n_channels: int | None = None,
                 criterion_weights: Sequence[float] = (0.5, 0.5), projector: Any = None,
                 routing: str = "paper", logit_scale: float = 100.0,
                 chunk_size: int | None = None, device: str | torch.device | None = None) -> None:
        self.alpha = alpha
        self.beta = beta
        self.gamma = gamma
        self.n_channels = n_channels
        self.criterion_weights = criterion_weights
        self.projector = projector
        self.routing = routing
        self.logit_scale = logit_scale
        self.chunk_size = chunk_size
        self.device = device

    def fit(self, image_features: ArrayLike, labels: ArrayLike, *, text_features: ArrayLike,
            patch_features: ArrayLike | None = None) -> "APE":
        """As :meth:`TipAdapter.fit`; every class needs at least one support sample."""
        return super().fit(image_features, labels, text_features=text_features,
                           patch_features=patch_features)

    def _validate_params(self) -> None:
        super()._validate_params()
        check_int(self.n_channels, "n_channels", allow_none=True)
        self._criterion_weights()

    def _criterion_weights(self) -> tuple[float, float]:
        weights = self.criterion_weights
        if isinstance(weights, (str, bytes)) or not hasattr(weights, "__len__") or len(weights) != 2:
            raise ValueError(f"criterion_weights must be a pair (w0, w1), got {weights!r}")
        w0, w1 = (check_real(w, "criterion_weights") for w in weights)
        return w0, w1

    def _fit(self, image_features, labels, text_features, patch_features) -> None:
        weights = self._criterion_weights()
        self._fit_common(image_features, labels, text_features, patch_features)
        n_classes, dim = self._torch.text_features_.shape
        missing = torch.nonzero(self._torch.class_counts_ == 0)[:, 0]
        if missing.numel():
            raise ValueError(
                f"APE needs at least one support sample per class; classes "
                f"{missing[:10].tolist()}{' ...' if missing.numel() > 10 else ''} have none "
                f"({missing.numel()} of {n_classes})"
            )
        n_channels = self._resolve_channels(dim)

        keys = self._project_keys(self._torch.support_features_)
        text = (self._torch.projected_text_features_ if self.projector_ is not None
                else self._torch.text_features_)
        similarity, variance, criterion = ape_channel_criterion(
            text, keys, self._torch.support_labels_, weights)
        order = torch.sort(criterion, descending=True, stable=True).indices
        channels = torch.sort(order[:n_channels]).values

        self._torch.keys_ = keys
        self._torch.inter_class_similarity_ = similarity
        self._torch.class_variance_ = variance
        self._torch.criterion_ = criterion
        self._torch.channels_ = channels
        self._torch.selected_keys_ = l2_normalize(keys[:, channels])
        self._torch.key_divergence_ = ape_key_divergence(
            self._torch.selected_keys_, l2_normalize(text[:, channels]), self._torch.support_labels_)

    def _resolve_channels(self, dim: int) -> int:
        if self.n_channels is None:
            return dim
        n_channels = check_int(self.n_channels, "n_channels", allow_none=True)
        if n_channels > dim:
            warn(f"n_channels={n_channels} exceeds the feature width D={dim}; using all {dim} "
                 "channels")
            n_channels = dim
        return n_channels

    def _key_log_weights(self) -> torch.Tensor:
        return self._torch.key_divergence_

    def _affinity(self, query: torch.Tensor) -> torch.Tensor:
        return l2_normalize(query[:, self._torch.channels_]) @ self._torch.selected_keys_.T

