"""The linear probe of the CLIP paper (Radford et al., ICML 2021, Sec. 3.2 and App. A.3).

L2-regularised multinomial logistic regression (scikit-learn's ``LogisticRegression``, L-BFGS)
on the L2-normalised image features; the inverse regularisation strength ``C`` is chosen on
validation data::

    clf = LinearProbe().fit(support_x, support_y, text_features=text)   # text: C and the projector
    validation_search(clf, val_x, val_y)         # fits the C grid (warm-started), keeps the best
    clf.predict(test_x)                          # test data: touched once

The text classifier is not part of the logits; it fixes the classes (``C`` = its rows) and feeds
an SSP projector. With a projector the probe is trained on the routing's cache view of the
support features (``vision`` for "paper" and "vision", ``language`` for "reference").

``validation_search`` fits one model per grid point (``C`` ascending, each fit started from the
previous solution) and keeps every fitted weight matrix, so ``set_params(C=...)`` with a searched
value (which the search does for the winner) switches to it; any other ``C`` needs ``fit``.
Classes without support samples get ``-inf`` logits (never predicted).
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping

import numpy as np

from ssp._checks import ROUTINGS, check_int
from ssp._lazy import torch
from ssp._utils.arrays import ArrayLike, check_labels, like_input
from ssp.methods.base import CLIPFeatureClassifier, check_routing
from ssp._utils.params import Integer, Options, Real
from ssp.methods.search import SearchAxis
from ssp.methods.registry import log_grid_builder, register_method

__all__ = ["LinearProbe"]



def _params(cfg: Mapping[str, Any], dim: int) -> dict:
    section = cfg.get("linear_probe") or {}
    return {k: section[k] for k in ("C", "max_iter", "tol") if k in section}


@register_method("linear-probe", title="Linear probe", config_section="linear_probe",
                 search_section="linear_probe", search_axes=("C",), params=_params, grid_builder=log_grid_builder("C"),
                 aliases=("linearprobe", "linear-probe-clip", "logistic-regression"))
class LinearProbe(CLIPFeatureClassifier):
    """Logistic regression on the image features, ``x Wᵀ + b`` (CLIP paper's linear probe).

    Args:
        C: inverse L2 regularisation strength (scikit-learn's ``C``; searched on validation).
        max_iter, tol: L-BFGS settings of ``LogisticRegression``.
        projector: optional ``SSPProjector`` (fitted, or fitted in ``fit`` from patch_features).
        routing: "paper" | "reference" | "vision": the view the probe reads (see the module).
        device: torch device of the logits; ``None`` = CUDA if available else CPU.

    Fitted attributes: ``coef_`` [C, D], ``intercept_`` [C] (of the current ``C``),
    ``n_iter_`` (L-BFGS iterations of that fit), ``fitted_C_`` (the values with weights), and
    those of every CLIP-feature classifier (``classes_``, ``text_features_``, ``projector_``, ...).
    """

    _fit_time_params = ("projector", "max_iter", "tol")
    new_class_rule = ("zero-shot CLIP: the probe has no text term, so classes without shots are scored by "
                      "s * x t^T with their text (vision-projected query and text with an SSP projector)")

    search_space = {"C": SearchAxis(sane=(1e-3, 1e5))}  # one decade past the default grid on each side
    _parameter_constraints = {"C": [Real(0, closed="neither")], "max_iter": [Integer(1)],
                              "tol": [Real(0, closed="neither")], "routing": [Options(ROUTINGS)]}

    def __init__(self, *, C: float = 1.0, max_iter: int = 1000, tol: float = 1e-4,
                 projector: Any = None, routing: str = "paper",
                 device: str | torch.device | None = None) -> None:
        self.C = C
        self.max_iter = max_iter
        self.tol = tol
        self.projector = projector
        self.routing = routing
        self.device = device

    def fit(self, image_features: ArrayLike, labels: ArrayLike, *, text_features: ArrayLike,
            patch_features: ArrayLike | None = None) -> "LinearProbe":
        """Fit on support features ``[N, D]`` and labels ``[N]``; ``text_features`` ``[C, D]``
        fix the classes (and fit the projector with ``patch_features`` ``[N, L, D]``)."""
        return super().fit(image_features, labels, text_features=text_features,
                           patch_features=patch_features)

    def _fit(self, image_features, labels, text_features, patch_features=None) -> None:
        self._fit_common(image_features, labels, text_features, patch_features)
        # the kind of the fitted arrays (numpy, or torch on the input's device): an empty tensor
        self._like = image_features[:0] if isinstance(image_features, torch.Tensor) else None
        self._weights: dict[tuple[str, float], tuple] = {}
        present = torch.unique(self._torch.support_labels_)
        if present.numel() < 2:
            raise ValueError("LinearProbe needs support samples of at least 2 classes; the support set has "
                             "one class")
        self._fit_path(self._view(), [float(self.C)])
        self._use(self._view(), float(self.C))

    # ---- the fits -------------------------------------------------------------------------

    def _view(self, routing: str | None = None) -> str:
        return self._route(routing)[2]

    def _support_view(self, view: str) -> np.ndarray:
        x = self._views(self._torch.support_features_, {view} - {"plain"})[view]
        return x.detach().cpu().double().numpy()

    def _fit_path(self, view: str, values) -> None:
        """Fit ``C`` = each of ``values`` (ascending, warm-started) on the support set in ``view``."""
        from sklearn.linear_model import LogisticRegression

        todo = sorted({float(c) for c in values} - {c for v, c in self._weights if v == view})
        if not todo:
            return
        x = self._support_view(view)
        y = self._torch.support_labels_.cpu().numpy()
        model = LogisticRegression(C=todo[0], max_iter=check_int(self.max_iter, "max_iter"),
                                   tol=float(self.tol), warm_start=True)
        n_classes = len(self.classes_)
        from ssp._utils.progress import step_bar

        bar = step_bar(len(todo), f"linear probe C path ({view} view)" if view != "plain" else "linear probe C path",
                       "C")
        for c in todo:
            model.set_params(C=c)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*lbfgs failed to converge.*")
                warnings.filterwarnings("ignore", category=FutureWarning)
                warnings.filterwarnings("ignore", message=".*number of unique classes.*")  # 1 shot
                model.fit(x, y)
            coef, intercept = model.coef_, model.intercept_
            if coef.shape[0] == 1:  # two classes: sklearn keeps one row, x·w + b for classes_[1]
                coef = np.concatenate([-coef / 2, coef / 2])
                intercept = np.concatenate([-intercept / 2, intercept / 2])
            full_coef = np.zeros((n_classes, x.shape[1]))
            full_intercept = np.full(n_classes, -np.inf)
            full_coef[model.classes_] = coef
            full_intercept[model.classes_] = intercept
            self._weights[(view, c)] = (
                torch.as_tensor(full_coef, dtype=self.dtype_, device=self.device_),
                torch.as_tensor(full_intercept, dtype=self.dtype_, device=self.device_),
                int(np.max(model.n_iter_)))
            bar.update(1)
        bar.close()

    def _use(self, view: str, c: float) -> None:
        coef, intercept, n_iter = self._weights[(view, c)]
        self._torch.coef_, self._torch.intercept_ = coef, intercept
        self.coef_, self.intercept_ = like_input(coef, self._like), like_input(intercept, self._like)
        self.n_iter_ = n_iter
        self.fitted_C_ = sorted({k[1] for k in self._weights})

    def set_params(self, **params):
        """scikit-learn's ``set_params``; on a fitted probe, a ``C`` (or routing) whose weights
        were fitted (by ``fit`` or ``validation_search``) becomes the one used."""
        super().set_params(**params)
        if hasattr(self, "_weights") and hasattr(self, "classes_"):
            key = (self._view(), float(self.C))
            if key in self._weights:
                self._use(*key)
        return self

    def _check_fitted(self) -> None:
        super()._check_fitted()
        key = (self._view(), float(self.C))
        if key not in self._weights:
            raise ValueError(f"LinearProbe has no weights for C={self.C!r} in the {key[0]} view (fitted: "
                             f"C in {self.fitted_C_}); call fit again, or validation_search with it in the grid")

    # ---- queries --------------------------------------------------------------------------

    def _logits_in(self, x: torch.Tensor, routing: str | None = None, c: float | None = None) -> torch.Tensor:
        view = self._view(routing)
        coef, intercept, _ = self._weights[(view, float(self.C) if c is None else c)]
        return self._views(x, {view} - {"plain"})[view] @ coef.T + intercept

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self._logits_in(x)

    def search_counts(self, val_features: ArrayLike, val_labels: ArrayLike, axes: Mapping[str, Any],
                       routings: str | list[str] | None = None) -> np.ndarray:
        """Correct validation predictions at every ``C`` of ``axes["C"]``: ``[len(C)]`` for one
        routing, ``[len(routings), len(C)]`` for a list (the search hook of
        :func:`ssp.methods.search.validation_search`). Fits every (view, C) not fitted yet."""
        single = routings is None or isinstance(routings, str)
        routings = [self.routing if routings is None else routings] if single else list(routings)
        x = self._queries(val_features)
        y = check_labels(val_labels, x.shape[0], len(self.classes_), name="val_labels", device=self.device_)
        values = [float(c) for c in np.asarray(axes.get("C", [self.C]), dtype=np.float64).ravel()]
        correct = np.zeros((len(routings), len(values)), dtype=np.int64)
        for r, routing in enumerate(routings):
            check_routing(routing)
            self._fit_path(self._view(routing), values)
            for i, c in enumerate(values):
                with torch.no_grad():
                    correct[r, i] = int((self._logits_in(x, routing, c).argmax(dim=1) == y).sum())
        return correct[0] if single else correct
