"""GDA: Gaussian discriminant analysis on CLIP features (Wang et al., "A Hard-to-Beat Baseline
for Training-free CLIP-based Adaptation", ICLR 2024).

A linear classifier from class means and one shared covariance, added to zero-shot CLIP::

    clf = GDA(alpha=1.0).fit(keys, labels, text_features=text, view_features=views)  # views: [E, N, D]
    validation_search(clf, val_x, val_y)      # alpha on the default grid (validation data only)
    clf.predict(test_x)

With support samples ``x_n`` (unit-normalised), ``N`` of them in ``C`` classes, ``D`` channels:

* class means ``μ_k``; ``Z`` = every sample minus its class mean; ``S`` = the unbiased (ddof = 1)
  covariance of ``Z`` (``D x D``);
* precision ``P = D · pinv((N − 1) S + tr(S) I)`` (the paper's shrinkage estimator);
* ``W = P μᵀ`` (``D x C``), ``b_k = log(1/C) − μ_k P μ_kᵀ / 2``;
* logits ``s · x Tᵀ + α (x W + b)`` with ``x`` and the text ``T`` unit-normalised.

**Training samples.** The paper estimates ``μ`` and ``S`` on every augmented view of every
support image (``N = E · C · K``). Pass those views as ``view_features`` ``[E, N, D]`` (what
:class:`ssp.features.types.Features` keeps as ``view_features``); without them the support
features themselves (e.g. a Tip-Adapter cache's keys, the mean of the views) are the samples.
``training_inputs_`` ("views" | "keys") and ``n_samples_`` record which. With a single sample
per class the covariance is zero, the GDA term is the same for every class and the logits are
zero-shot CLIP's: ``fit`` warns.

**SSP.** With ``projector=SSPProjector(...)`` the samples are vision-projected (like the cache
keys of :class:`ssp.methods.cache_models.TipAdapter`) and ``routing`` decides which projected
query enters each term, as for the cache models.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from ssp._checks import ROUTINGS, check_real
from ssp._lazy import torch
from ssp._utils.arrays import ArrayLike, like_input, to_tensor
from ssp._utils.normalize import l2_normalize
from ssp._utils.warn import warn
from ssp.methods.base import CLIPFeatureClassifier
from ssp._utils.params import Options, Real
from ssp.methods.registry import log_grid_builder, register_method
from ssp.methods.search import SearchAxis

__all__ = ["GDA", "ClassMoments", "shared_gaussian", "linear_discriminant"]


# Elements of one [queries, classes] logit block scored at once by the search.
_BLOCK_ELEMENTS = 1 << 24

# New classes (base-to-new protocol), as in the published main_base2new.py: the base samples nearest
# each new class's text embedding, and how many copies of the text embedding join them in its mean.
NEW_CLASS_NEIGHBOURS = 64
NEW_CLASS_TEXT_COPIES = 16


class ClassMoments:
    """Running float64 class sums ``[C, D]``, second moment ``[D, D]`` and counts ``[C]`` of
    labelled samples: what :func:`shared_gaussian` estimates the Gaussians from. Samples are
    added as they are (no normalisation), in blocks: ``moments.add(x [n, D], y [n])``."""

    def __init__(self, sums: torch.Tensor, second_moment: torch.Tensor, counts: torch.Tensor) -> None:
        self.sums, self.second_moment, self.counts = sums, second_moment, counts

    @classmethod
    def zeros(cls, n_classes: int, dim: int, *, device: Any = None) -> "ClassMoments":
        f64 = dict(dtype=torch.float64, device=device)
        return cls(torch.zeros(n_classes, dim, **f64), torch.zeros(dim, dim, **f64),
                   torch.zeros(n_classes, **f64))

    def add(self, samples: torch.Tensor, labels: torch.Tensor) -> "ClassMoments":
        """Add samples ``[n, D]`` of classes ``labels`` ``[n]``; returns self."""
        x = samples.to(torch.float64)
        self.sums.index_add_(0, labels, x)
        self.second_moment.addmm_(x.T, x)
        self.counts += torch.bincount(labels, minlength=self.counts.shape[0]).to(torch.float64)
        return self

    def __add__(self, other: "ClassMoments") -> "ClassMoments":
        return ClassMoments(self.sums + other.sums, self.second_moment + other.second_moment,
                            self.counts + other.counts)


def shared_gaussian(moments: ClassMoments) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """GDA's Gaussians from sample moments: ``(class means μ [C, D], precision P [D, D],
    degenerate)``, float64 (module docstring: ``S`` the unbiased covariance of the samples
    minus their class means, ``P = D · pinv((N − 1) S + tr(S) I)``). ``degenerate``: the
    covariance is zero up to rounding (``P = 0``, no GDA term). Every class needs a sample."""
    counts = moments.counts
    means = moments.sums / counts[:, None]
    n = float(counts.sum())
    dim = means.shape[1]
    # the centred samples have mean 0, so their unbiased covariance is scatter / (n - 1), with
    # scatter = sum x x^T - sum_k n_k mu_k mu_k^T
    scatter = moments.second_moment - (means.T * counts) @ means
    scatter = (scatter + scatter.T) / 2
    covariance = scatter / (n - 1) if n > 1 else torch.zeros_like(scatter)
    trace = float(torch.trace(covariance))
    if not trace > 1e-12 * float(torch.trace(moments.second_moment)) / max(n, 1.0):  # zero up to rounding
        return means, torch.zeros_like(covariance), True
    # (N-1) S + tr(S) I is positive definite: its pseudo-inverse is the inverse, from a
    # Cholesky factor (a general pinv / SVD of a 1024 x 1024 matrix is ~100x slower)
    shrunk = (n - 1) * covariance
    shrunk.diagonal().add_(trace)
    return means, dim * torch.cholesky_inverse(torch.linalg.cholesky(shrunk)), False


def linear_discriminant(means: torch.Tensor, precision: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GDA's linear classifier ``(W = P μᵀ [D, C], b [C])`` with ``b_k = log(1/C) − μ_k P μ_kᵀ / 2``."""
    n_classes = means.shape[0]
    return precision @ means.T, math.log(1.0 / n_classes) - 0.5 * ((means @ precision) * means).sum(1)


def _gda_params(cfg: Mapping[str, Any], dim: int) -> dict:
    return dict(cfg["gda"]["init"])


@register_method("gda", title="GDA", config_section="gda", search_section="gda", search_axes=("alpha",),
                 params=_gda_params, uses_views=True, grid_builder=log_grid_builder("alpha"),
                 aliases=("gaussian-discriminant-analysis",))
class GDA(CLIPFeatureClassifier):
    """Training-free GDA (Wang et al., ICLR 2024): ``s · x Tᵀ + α (x W + b)`` (module docstring).

    Args:
        alpha: weight α of the GDA term (searched on validation).
        projector, routing: SSP projector and routing (as in :class:`~ssp.methods.cache_models.TipAdapter`;
            the GDA term plays the cache term's part).
        logit_scale: zero-shot scale s.
        device: torch device; ``None`` = CUDA if available else CPU.

    Fitted attributes: those of :class:`~ssp.methods.cache_models.TipAdapter` except ``keys_``,
    plus ``class_means_`` [C, D], ``precision_`` [D, D] (``P``), ``weights_`` [D, C] (``W``),
    ``bias_`` [C] (``b``) (float64), ``training_inputs_`` ("views" | "keys"), ``n_views_``
    (E, 0 for keys), ``n_samples_`` (the N of the formulas).
    """

    _parameter_constraints = {"alpha": [Real()], "routing": [Options(ROUTINGS)], "logit_scale": [Real()]}
    search_space = {"alpha": SearchAxis(minimum=0.0, sane=(1e-5, 1e5))}  # one decade past the default grid

    def __init__(self, *, alpha: float = 1.0, projector: Any = None, routing: str = "paper",
                 logit_scale: float = 100.0, device: str | torch.device | None = None) -> None:
        self.alpha = alpha
        self.projector = projector
        self.routing = routing
        self.logit_scale = logit_scale
        self.device = device

    def fit(self, image_features: ArrayLike, labels: ArrayLike, *, text_features: ArrayLike,
            view_features: ArrayLike | None = None, patch_features: ArrayLike | None = None) -> "GDA":
        """Estimate the class means and the shared covariance.

        Args:
            image_features: ``[N, D]`` support features (any order, unequal shots allowed).
            labels: ``[N]`` support labels.
            text_features: ``[C, D]`` text classifier.
            view_features: ``[E, N, D]`` augmented views of the support images, in the order of
                ``image_features``: the paper's samples. ``None``: the support features are.
            patch_features: ``[N, L, D]`` to fit ``projector`` (as in the cache models).

        A failed fit leaves the model unfitted, never half-fitted.
        """
        return super().fit(image_features, labels, text_features=text_features,
                           patch_features=patch_features, view_features=view_features)

    def _fit(self, image_features, labels, text_features, patch_features=None, view_features=None) -> None:
        self._fit_common(image_features, labels, text_features, patch_features)
        self._fit_gaussian(view_features)
        self._transfer_views = view_features  # a reference, read by new_class_logits only

    # ---- fitting ------------------------------------------------------------------------

    def _samples(self, view_features: ArrayLike | None):
        """Yield the ``[N, D]`` float64 sample blocks (one per view; grouped support order)."""
        support = self._torch.support_features_
        if view_features is None:
            blocks = [support]
        else:
            views = to_tensor(view_features, "view_features", ndim=3, device=self.device_)
            if views.shape[0] < 1 or tuple(views.shape[1:]) != tuple(support.shape):
                raise ValueError(
                    f"view_features must be [E, N, D] = [E, {support.shape[0]}, {support.shape[1]}] "
                    f"(E >= 1 augmented views of the support images, in the order of image_features), "
                    f"got {tuple(views.shape)}")
            blocks = (views[e][self._torch.support_order_] for e in range(views.shape[0]))
        for block in blocks:
            block = l2_normalize(block.to(torch.float64))
            if self.projector_ is not None:
                block = l2_normalize(to_tensor(self.projector_.transform(block, view="vision"),
                                               "projector view 'vision'", device=self.device_,
                                               dtype=torch.float64))
            yield block

    def _fit_gaussian(self, view_features: ArrayLike | None) -> None:
        labels = self._torch.support_labels_
        n_classes, dim = len(self.classes_), self.n_features_in_
        self.training_inputs_ = "keys" if view_features is None else "views"
        # one pass over the samples (no [E, N, D] copy): class sums and the second moment
        moments = ClassMoments.zeros(n_classes, dim, device=self.device_)
        n_views = 0
        for block in self._samples(view_features):
            moments.add(block, labels)
            n_views += 1
        if bool((moments.counts == 0).any()):
            missing = torch.nonzero(moments.counts == 0)[:, 0].tolist()
            raise ValueError(f"GDA needs support samples of every class; classes {missing[:10]} have "
                             "none (pass at least one labelled feature per class of text_features)")
        means, precision, degenerate = shared_gaussian(moments)
        n = int(moments.counts.sum())
        if degenerate:
            warn(f"GDA: the within-class covariance is zero (each class's samples are identical, e.g. one "
                 f"sample per class; N = {n}), "
                 "so the GDA term is the same for every class and the logits equal zero-shot CLIP's; "
                 "pass view_features=[E, N, D] (augmented views of the support images) or use more shots")
        self.n_views_ = n_views if view_features is not None else 0
        self.n_samples_ = n
        self._torch.class_means_ = means
        self._torch.precision_ = precision
        self._torch.weights_, self._torch.bias_ = linear_discriminant(means, precision)

    # ---- logits ---------------------------------------------------------------------------

    def _needed_views(self, routing: str | None) -> set[str]:
        zs_view, _, gda_view = self._route(routing)
        return {zs_view, gda_view} - {"plain"}

    def _parts(self, x: torch.Tensor, routing: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s · x Tᵀ, x W + b)``, each ``[M, C]`` in ``dtype_``, for normalised queries ``x``."""
        views = self._views(x, self._needed_views(routing))
        zero_shot = self._zero_shot_logits(views, routing)
        query = views[self._route(routing)[2]]
        gda = (query.to(torch.float64) @ self._torch.weights_ + self._torch.bias_).to(self.dtype_)
        return zero_shot, gda

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        alpha = check_real(self.alpha, "alpha")
        zero_shot, gda = self._parts(x)
        return zero_shot + alpha * gda

    def search_counts(self, val_features: torch.Tensor, val_labels: torch.Tensor,
                       axes: Mapping[str, np.ndarray], routings: list[str]) -> np.ndarray:
        """Correct validation predictions ``[R, A]`` for every routing and ``axes["alpha"]``
        (``ssp.methods.search``).

        The logits are lines in α: the two terms are computed once per routing and each α costs
        one ``[M, C]`` arg-max, with the same expression as :meth:`decision_function`."""
        self._check_fitted()
        alphas = [float(a) for a in axes["alpha"]]
        x = self._queries(val_features)
        correct = np.zeros((len(routings), len(alphas)), dtype=np.int64)
        rows = max(1, _BLOCK_ELEMENTS // max(len(self.classes_), 1))
        for r, routing in enumerate(routings):
            for start in range(0, x.shape[0], rows):
                zero_shot, gda = self._parts(x[start:start + rows], routing)
                truth = val_labels[start:start + rows]
                for i, alpha in enumerate(alphas):
                    correct[r, i] += int(((zero_shot + alpha * gda).argmax(1) == truth).sum())
        return correct

    # ---- classes without shots (base-to-new) --------------------------------------------

    new_class_rule = (
        f"GDA transfer (Wang et al., ICLR 2024, main_base2new.py): a new class's mean is the mean of the "
        f"{NEW_CLASS_NEIGHBOURS} base training samples nearest its text embedding t (cosine) together with "
        f"{NEW_CLASS_TEXT_COPIES} copies of t; its precision D * ((k-1) S_c + tr(S_c) I)^-1 with S_c the covariance "
        f"of those k samples around t, averaged over the new classes; W, b as for base classes, alpha as chosen on "
        f"base validation, plus the zero-shot term; with an SSP projector everything lives in the vision-projected "
        f"space (the vision projector carries over; the per-class language projectors need shots)")

    def new_class_logits(self, X: ArrayLike, text_features: ArrayLike) -> ArrayLike:
        """Logits ``[M, C_new]`` over classes without shots (:attr:`new_class_rule`):
        ``s · x tᵀ + α (x W_new + b_new)`` with ``W_new, b_new`` synthesised from the base
        training samples nearest each new class's text ``[C_new, D]``."""
        self._check_fitted()
        alpha = check_real(self.alpha, "alpha")
        x, text = self._new_class_inputs(X, text_features)
        means, precision, k = self._new_class_gaussians(text.to(torch.float64))
        weights = precision @ means.T
        bias = math.log(1.0 / text.shape[0]) - 0.5 * ((means @ precision) * means).sum(1)
        logits = float(self.logit_scale) * (x @ text.T) + alpha * (x.to(torch.float64) @ weights + bias).to(self.dtype_)
        self.new_class_details_ = {"neighbours": k, "text_copies": NEW_CLASS_TEXT_COPIES,
                                   "samples": self.training_inputs_, "n_samples": self.n_samples_}
        return like_input(logits, X)

    def _new_class_gaussians(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(means [C_new, D], shared precision [D, D], k)`` (float64) for unit text ``[C_new, D]``.

        The nearest samples are found block by block (a running top-k, no [C_new, E N] matrix);
        each class's ``((k-1) S_c + tr(S_c) I)^-1`` comes from a ``k x k`` solve (Woodbury:
        ``(a I + Zᵀ Z)^-1 = (I - Zᵀ (a I + Z Zᵀ)^-1 Z) / a`` with ``Z`` the k samples minus t)."""
        n_new, dim = text.shape
        k = min(NEW_CLASS_NEIGHBOURS, self.n_samples_)
        best_sim = torch.full((n_new, 0), -math.inf, dtype=torch.float64, device=self.device_)
        best_rows = torch.zeros((n_new, 0, dim), dtype=torch.float64, device=self.device_)
        for block in self._samples(getattr(self, "_transfer_views", None)):
            kept = best_sim.shape[1]
            top = torch.cat([best_sim, text @ block.T], dim=1).topk(min(k, kept + block.shape[0]), dim=1)
            from_kept = top.indices < kept
            old = torch.gather(best_rows, 1, top.indices.clamp(max=max(kept - 1, 0))[:, :, None].expand(-1, -1, dim)) \
                if kept else torch.zeros(n_new, top.indices.shape[1], dim, dtype=torch.float64, device=self.device_)
            new = block[(top.indices - kept).clamp(min=0)]
            best_sim, best_rows = top.values, torch.where(from_kept[:, :, None], old, new)
        means = (best_rows.sum(1) + NEW_CLASS_TEXT_COPIES * text) / (k + NEW_CLASS_TEXT_COPIES)
        precision = torch.zeros(dim, dim, dtype=torch.float64, device=self.device_)
        eye_k = torch.eye(k, dtype=torch.float64, device=self.device_)
        for c in range(n_new):
            z = best_rows[c] - text[c]                     # [k, D], centred on the text embedding
            a = float((z * z).sum()) / max(k - 1, 1)        # tr(S_c); (k-1) S_c = zᵀ z
            if a <= 0:
                continue                                    # pinv(0) = 0: no GDA term from this class
            inner = torch.linalg.solve(a * eye_k + z @ z.T, z)   # [k, D]
            inv = -(z.T @ inner)
            inv.diagonal().add_(1.0)
            precision += inv / a
        precision *= dim / n_new
        return means, precision, k
