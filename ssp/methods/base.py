"""What every method shares: :class:`CLIPFeatureClassifier` (fit template, support set grouped by
class, SSP projector routings, array kinds, the default search hook) and :class:`ClassSegments`
(class-wise sums over the support keys)."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Mapping

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone

from ssp._checks import ROUTINGS, check_int
from ssp._lazy import torch
from ssp._utils.arrays import (ArrayLike, check_features, check_labels, check_text_features, like_input,
                               to_tensor)
from ssp._utils.devices import resolve_device
from ssp._utils.fitted import check_is_fitted
from ssp._utils.normalize import l2_normalize
from ssp._utils.params import Options, Real, ValidatedFit, check_param

# routing -> (zero-shot query view, zero-shot text, cache query view); used with a projector.
_ROUTES = {
    "paper": ("language", "projected", "vision"),
    "reference": ("plain", "plain", "language"),
    "vision": ("plain", "plain", "vision"),
}


_NO_PROJECTOR_ROUTE = ("plain", "plain", "plain")


# Elements of one [queries x keys] affinity chunk when chunk_size is None (64 MiB in float32).
AUTO_CHUNK_ELEMENTS = 1 << 24

# Elements of the logit block (e.g. [queries, classes] or [queries, gamma, classes]) one step of
# the validation search evaluates at once.
SEARCH_BLOCK_ELEMENTS = 1 << 22


def check_routing(routing: str) -> str:
    """``routing`` itself when it is one of :data:`ssp._checks.ROUTINGS` (else ``ValueError``)."""
    return check_param(routing, "routing", [Options(ROUTINGS)])


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


def _freeze(value: Any) -> Any:
    """Hashable-ish snapshot of a fit-time parameter (identity for estimators)."""
    if isinstance(value, (list, tuple, np.ndarray, torch.Tensor)):
        return tuple(float(v) for v in np.asarray(value, dtype=np.float64).ravel())
    if value is None or isinstance(value, (int, float, str, bool)):
        return value
    return id(value)


def _projector_is_fitted(projector: Any) -> bool:
    return hasattr(projector, "text_features_")


class CLIPFeatureClassifier(ValidatedFit, ClassifierMixin, BaseEstimator):
    """The base class of every method: a scikit-learn classifier on CLIP features.

    It holds what all methods share: ``fit`` (the template of :class:`ssp._utils.params.ValidatedFit`:
    reset the fitted state, validate the parameters, fit; a failed fit leaves the model
    unfitted), the support set grouped by class, the SSP projector and its routings, array
    kinds in and out, ``predict`` / ``score``. A method defines ``__init__`` (keyword-only
    parameters, stored as given), ``_parameter_constraints`` (the allowed values of each
    parameter but ``projector`` and ``device``, which ``fit`` checks), ``_fit(image_features,
    labels, text_features, **inputs)`` (which calls :meth:`_fit_common` first; ``inputs`` are
    the extra keyword inputs of its ``fit``) and ``_logits(x) -> [M, C]`` for normalised queries
    ``x``, and is registered with :func:`ssp.methods.registry.register_method`.

    **Search hooks** (read by :func:`ssp.methods.search.validation_search`, which knows no
    method):

    * :meth:`search_counts` ``(val_features [M, D], val_labels [M], axes, routings)`` -> int
      ``[R, *len(axes[a])]``: correct validation predictions at every grid point. The default
      evaluates each point with ``set_params``; override it where a cheaper exact path exists
      (Tip-Adapter / APE: closed form in α; GDA: two terms once per routing; ProKeR: one
      factorisation per β). Counts must equal those of ``predict`` at each point (up to exact
      logit ties), so the search's winner is the model's best.
    * ``search_space``: ``{axis: SearchAxis}`` (:class:`ssp.methods.search.SearchAxis`): the
      smallest allowed value, when a winner on the grid's lower edge is worth a warning, and,
      for an adaptive default search (``grid=None``), each axis' coarse grid and how far it
      may be extended. Without adaptive axes ``grid=None`` searches the registered default grid.
    """

    #: ``{axis: SearchAxis}`` for :func:`ssp.methods.search.validation_search` (``{}``: defaults).
    search_space: Mapping[str, Any] = {}

    _fit_time_params: tuple[str, ...] = ("projector",)
    _parameter_constraints = {"logit_scale": [Real()], "routing": [Options(ROUTINGS)]}
    _needs_support = True

    # ---- fitting ------------------------------------------------------------------------

    def fit(self, image_features: ArrayLike | None = None, labels: ArrayLike | None = None, *,
            text_features: ArrayLike, **inputs: Any):
        """Fit on support features ``[N, D]``, labels ``[N]`` and the text classifier ``[C, D]``
        (``inputs``: the method's other fit inputs, e.g. ``patch_features``; see the subclass
        docstrings). A failed fit leaves the model unfitted, never half-fitted."""

        def fit() -> None:
            self._torch = SimpleNamespace()
            self._fit(image_features, labels, text_features, **inputs)
            self._publish(image_features if image_features is not None else text_features)

        return self._validated_fit(fit)

    def _check_params(self) -> None:
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

    def _fit(self, image_features, labels, text_features, patch_features=None) -> None:
        self._fit_common(image_features, labels, text_features, patch_features)

    def _reset_fitted(self) -> None:
        super()._reset_fitted()
        self.__dict__.pop("_fit_snapshot", None)
        self.__dict__.pop("_torch", None)

    def _fit_common(self, image_features, labels, text_features, patch_features) -> None:
        device = resolve_device(self.device)
        images = None
        if image_features is not None:
            images = check_features(image_features, "image_features", device=device)
        text = check_text_features(text_features, device=device)
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
                raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None "
                                 "(labels [N] are required with image_features)")
            y = check_labels(labels, images.shape[0], n_classes, name="labels", device=device)
        elif labels is not None:
            raise ValueError("labels were given without image_features")
        if self._needs_support and images is None:
            raise ValueError(f"{type(self).__name__} needs support image_features and labels")

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

    def _validation_pair(self, val_features, val_labels):
        """``(x [M, D] as the model's queries, y [M])`` of a validation pair given at fit, or None."""
        if val_features is None and val_labels is None:
            return None
        if val_features is None or val_labels is None:
            raise ValueError("pass both val_features and val_labels (or neither)")
        x = self._queries(val_features)
        if x.shape[0] == 0:
            raise ValueError("val_features is empty")
        return x, check_labels(val_labels, x.shape[0], len(self.classes_), name="val_labels",
                               device=self.device_)

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
        routing = check_routing(self.routing if routing is None else routing)
        return _ROUTES[routing] if self.projector_ is not None else _NO_PROJECTOR_ROUTE

    def _queries(self, X: ArrayLike) -> torch.Tensor:
        x = to_tensor(X, "X", ndim=2, device=self.device_)
        if x.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {x.shape[1]} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input (the D it was fitted with)"
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
        return max(1, AUTO_CHUNK_ELEMENTS // max(n_keys, 1))

    # ---- search hook ------------------------------------------------------------------------

    def search_counts(self, val_features: torch.Tensor, val_labels: torch.Tensor,
                      axes: Mapping[str, np.ndarray], routings: list[str]) -> np.ndarray:
        """The number of correct validation predictions at every grid point: int
        ``[len(routings), *(len(axes[a]) for a in axes)]``.

        ``axes`` holds every axis of the method's ``search_axes`` in that order (float64 values;
        an axis not searched holds the model's current value). This default evaluates each point
        with ``set_params`` and the model's own logits (query chunks of
        :data:`SEARCH_BLOCK_ELEMENTS` logits), then restores the parameters; a method overrides
        it with a faster exact path (see the class docstring)."""
        self._check_fitted()
        x = self._queries(val_features)
        names = list(axes)
        shape = (len(routings),) + tuple(len(axes[a]) for a in names)
        correct = np.zeros(shape, dtype=np.int64)
        rows = max(1, SEARCH_BLOCK_ELEMENTS // max(len(self.classes_), 1))
        saved = {k: getattr(self, k) for k in names + ["routing"]}
        try:
            for r, routing in enumerate(routings):
                if (routing != saved["routing"] and "routing" in self._fit_time_params
                        and self.projector_ is not None):
                    raise ValueError(f"{type(self).__name__} was trained under routing {saved['routing']!r}; "
                                     f"fit again with routing={routing!r} to use that routing")
                for index in np.ndindex(*shape[1:]):
                    self.__dict__.update({a: float(axes[a][i]) for a, i in zip(names, index)},
                                         routing=routing)
                    for start in range(0, x.shape[0], rows):
                        pred = self._logits(x[start:start + rows]).argmax(1)
                        correct[(r,) + index] += int((pred == val_labels[start:start + rows]).sum())
        finally:
            self.__dict__.update(saved)
        return correct

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
        """Top-1 accuracy on ``X`` ``[M, D]`` with true labels ``y`` ``[M]`` in ``0..C-1``, as a
        **fraction** in [0, 1] (scikit-learn's convention, so ``GridSearchCV`` & co. work
        unchanged). A label outside the fitted classes raises. ``SearchResult.best_score_`` and
        the fine-tuned models' ``history_`` use the same fraction; percent values say so in their
        name (``SearchResult.best_accuracy_pct_``) or live in the result tables."""
        from sklearn.metrics import accuracy_score

        self._check_fitted()
        pred = self.predict(X)
        pred = pred.cpu().numpy() if isinstance(pred, torch.Tensor) else pred
        truth = check_labels(y, pred.shape[0], len(self.classes_), name="y",
                             classes_from="the fitted text classifier").cpu().numpy()
        return float(accuracy_score(truth, pred, sample_weight=sample_weight))

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # ---- classes without shots (the base-to-new protocol) --------------------------------

    #: What the model does for classes it has no shots of, recorded in base-to-new run JSONs. A
    #: method whose paper defines a transfer overrides it and :meth:`new_class_logits`.
    new_class_rule = ("zero-shot: the method's zero-shot term over the new classes' text, s * x t^T; with an "
                      "SSP projector the vision projector (built from the base support patches) carries over: "
                      "queries and new-class text both vision-projected; the per-class language projectors "
                      "need shots and are not used")

    def new_class_logits(self, X: ArrayLike, text_features: ArrayLike) -> ArrayLike:
        """Logits ``[M, C_new]`` of queries ``X`` ``[M, D]`` over classes this model has no
        shots of, given their text classifier ``[C_new, D]`` (:attr:`new_class_rule`)."""
        self._check_fitted()
        x, text = self._new_class_inputs(X, text_features)
        scale = float(getattr(self, "logit_scale", 100.0))
        return like_input(scale * (x @ text.T), X)

    def _new_class_inputs(self, X: ArrayLike, text_features: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised queries ``[M, D]`` and new-class text ``[C_new, D]``, both vision-projected
        when the model has a projector."""
        x = self._queries(X)
        text = check_text_features(text_features, device=self.device_)
        if text.shape[1] != self.n_features_in_:
            raise ValueError(f"new-class text_features have D={text.shape[1]}, the model was fitted with "
                             f"D={self.n_features_in_}")
        text = l2_normalize(text.to(self.dtype_))
        if self.projector_ is not None:
            x, text = (l2_normalize(to_tensor(self.projector_.transform(z, view="vision"), "projector view 'vision'",
                                              device=self.device_, dtype=self.dtype_)) for z in (x, text))
        return x, text
