"""Validation-only hyper-parameter search for every registered method (:mod:`ssp.methods.registry`).

::

    model = APE(n_channels=500, criterion_weights=(0.6, 0.4)).fit(F, y, text_features=W)
    result = validation_search(model, val_features, val_labels,
                               grid=make_grid("ape", (10, 7, 1), (200, 20, 20)))
    result.best_params_   # {'beta': ..., 'alpha': ..., 'gamma': ...}; already set on `model`
    model.predict(test_features)                                 # test data: touched once

The search sees validation data only; it never takes test features. It knows no method: it asks
the model for the number of correct validation predictions at every grid point
(:meth:`CLIPFeatureClassifier.search_counts <ssp.methods.base.CLIPFeatureClassifier.search_counts>`,
which a method overrides with a fast exact path, e.g. the cache models' closed form in α) and
reads how to treat each axis from the model's ``search_space`` (:class:`SearchAxis`: bounds,
edge rules, the adaptive default search). Ties go to the first maximum in (routing, then the
method's ``search_axes``) order, like the reference loops' "first strict improvement".

Cost (measured, ``benchmarks/stanford_cars_real_features.py``): the full APE grid 200 x 20 x 20 on
817 validation images, N = 16 x 196 keys, C = 196, takes about 7 s of one CPU core; the
reference's loop over 80,000 grid points, each an ``exp`` and a ``[M, N] @ [N, C]`` matmul, about
2 hours.

``best_score_`` is the grid's own accuracy, a fraction in [0, 1] like ``model.score`` (and
scikit-learn's ``GridSearchCV.best_score_``): it equals ``model.score(val)`` after the search
except when logits tie to within floating-point rounding (the grid and ``predict`` round
differently), where a single image can be counted differently.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ssp._checks import ROUTINGS
from ssp._lazy import torch
from ssp._utils.arrays import ArrayLike, check_labels, to_tensor
from ssp._utils.fitted import check_is_fitted
from ssp.methods.registry import MethodSpec, spec_for_estimator

__all__ = ["SearchResult", "SearchAxis", "validation_search"]


@dataclass(frozen=True)
class SearchAxis:
    """How :func:`validation_search` treats one numeric hyper-parameter of a method (declared in
    the estimator class's ``search_space``; an axis not declared gets the defaults).

    Attributes:
        minimum: grid values below it are refused (``None``: any finite value).
        lower_edge_above: a best accuracy at the grid's smallest value suggests the optimum lies
            below the grid only when that value is above this (e.g. 0 for a weight, since 0 is a
            true bound).
        spacing: ``"log"`` | ``"linear"``: the axis of the adaptive default search
            (``grid=None``); ``None``: no adaptive search on this axis. A method with no
            adaptive axis searches its registered default grid (:meth:`MethodSpec.grid`).
        low, high, points: the coarse grid of the adaptive search (both ends included).
        with_zero: the coarse grid also holds 0 (e.g. α = 0: zero-shot alone).
        limit: how far the adaptive search may push the upper edge.
        floor: the smallest positive value the adaptive search may extend the axis down to
            (``None``: never extended downwards).
        sane: ``(low, high)``: values beyond it only add search time (and numerically degenerate
            models); a configured grid reaching past it runs with a warning
            (:func:`ssp.run.config.validate_config`). ``None``: no such range declared.
    """

    minimum: float | None = None
    lower_edge_above: float = 0.0
    spacing: str | None = None
    low: float = 0.0
    high: float = 0.0
    points: int = 0
    with_zero: bool = False
    limit: float = math.inf
    floor: float | None = None
    sane: tuple[float, float] | None = None


@dataclass
class SearchResult:
    """Outcome of :func:`validation_search`.

    Attributes:
        best_params_: the winning values, e.g. ``{"beta": 5.5, "alpha": 1.2}`` (set on the model).
        best_score_: validation top-1 accuracy of the winner, a fraction in [0, 1] (the unit of
            ``model.score``); :attr:`best_accuracy_pct_` is the same in percent, for tables.
        scores_: accuracies as fractions, shape ``[len(grid_[a]) for a in param_names_]``
            (a 0-d array when nothing is searched).
        grid_: axis name -> values, in axis order (numeric axes as float64 arrays).
        param_names_: the searched axes, in (routing, beta, alpha, gamma) order.
        best_index_: index of the winner in ``scores_``.
        n_val_: number of validation samples.
        fixed_params_: hyper-parameters not searched, at the model's values during the search.
        stages_: for the default search (``grid=None``), every grid evaluated, in order:
            ``{"grid": {axis: values}, "best_params": {...}, "best_score": fraction}``; the
            last stage is the one ``scores_`` / ``grid_`` describe. Empty for an explicit grid.
    """

    best_params_: dict[str, Any]
    best_score_: float
    scores_: np.ndarray
    grid_: dict[str, Any]
    param_names_: tuple[str, ...]
    best_index_: tuple[int, ...]
    n_val_: int
    fixed_params_: dict[str, Any] = field(default_factory=dict)
    stages_: list[dict[str, Any]] = field(default_factory=list)

    @property
    def best_accuracy_pct_(self) -> float:
        """``best_score_`` in percent (``100 * best_score_``), the unit of ssp's tables."""
        return 100.0 * self.best_score_


def _model_spec(model: Any) -> MethodSpec:
    spec = spec_for_estimator(model)
    if spec is None:
        raise TypeError(f"{type(model).__name__} is not a registered method; register it with "
                        "ssp.methods.registry.register_method to search its hyper-parameters")
    return spec


def _space(model: Any, spec: MethodSpec) -> dict[str, SearchAxis]:
    """``{axis: SearchAxis}`` for every axis of ``spec.search_axes`` (in that order)."""
    declared = getattr(model, "search_space", None) or {}
    return {a: declared.get(a, SearchAxis()) for a in spec.search_axes}


def _normalise_grid(model: Any, spec: MethodSpec, grid: Mapping[str, Any] | None) -> dict[str, Any]:
    axes = spec.search_axes
    if grid is None:
        grid = spec.grid(None) if axes else {}
    if not isinstance(grid, Mapping):
        raise TypeError(f"grid must be a dict of axis -> values, got {type(grid).__name__}")
    allowed = ("routing",) + axes
    unknown = [k for k in grid if k not in allowed]
    if unknown:
        raise ValueError(
            f"{type(model).__name__} cannot search {unknown}; its grid axes are {allowed}"
        )
    space = _space(model, spec)
    out: dict[str, Any] = {}
    for axis in allowed:
        if axis not in grid:
            continue
        values = grid[axis]
        if axis == "routing":
            routings = [values] if isinstance(values, str) else list(values)
            if not routings:
                raise ValueError("grid['routing'] is empty")
            for r in routings:
                if r not in ROUTINGS:
                    raise ValueError(f"unknown routing {r!r} in grid; use {ROUTINGS}")
            if getattr(model, "projector_", None) is None:
                raise ValueError(
                    "grid has 'routing' but the model has no projector; routing only matters "
                    "with an SSP projector (drop it from the grid)"
                )
            out[axis] = routings
        else:
            arr = np.asarray(values, dtype=np.float64).reshape(-1)
            if arr.size == 0:
                raise ValueError(f"grid[{axis!r}] is empty")
            if not np.isfinite(arr).all():
                raise ValueError(f"grid[{axis!r}] contains NaN or infinite values")
            minimum = space[axis].minimum
            if minimum is not None and (arr < minimum).any():
                raise ValueError(f"grid[{axis!r}] must be >= {minimum:g}, got {arr.min():g}")
            out[axis] = arr
    return out


def validation_search(model: Any, val_features: ArrayLike, val_labels: ArrayLike,
                      grid: Mapping[str, Any] | None = None) -> SearchResult:
    """Pick hyper-parameters of a fitted classifier on validation data and set them on it.

    Args:
        model: a fitted estimator of a registered method (:mod:`ssp.methods.registry`): e.g.
            ``TipAdapter`` / ``APE`` / ``ZeroShotCLIP``, or a trained ``TipAdapterF`` /
            ``APET``. Its fitted state is kept; only the searched parameters are changed
            (``set_params``).
        val_features: ``[M, D]`` validation image features (never test features).
        val_labels: ``[M]`` validation labels.
        grid: axis -> values. Axes: the method's ``search_axes`` in the registry ("beta",
            "alpha" for Tip-Adapter; also "gamma" for APE) and "routing" (a list of routings,
            only for models with a projector). Axes left out stay at the model's current value.
            An explicit grid is searched exactly as given; a ``UserWarning`` names any numeric
            axis along which the best accuracy is reached at the grid's largest value (or its
            smallest one, where :class:`SearchAxis` says that matters), since the optimum may
            lie outside. ``None``: the method's default. For a method whose ``search_space``
            declares an adaptive search (the cache models) that is a wide coarse grid, extended
            while the winner sits on an edge, then refined around the winner (validation data
            only; no dataset's range assumed; the routing stays at the model's value). For the
            others it is the registered default grid (:meth:`MethodSpec.grid`, warned about
            like an explicit one). For ``ZeroShotCLIP`` (no hyper-parameters) ``None`` just
            scores the model (``scores_`` is 0-d), and ``{"routing": [...]}`` picks a routing.

    Returns:
        :class:`SearchResult`.
    """
    check_is_fitted(model, "text_features_")
    spec = _model_spec(model)
    space = _space(model, spec)
    if grid is None and any(a.spacing is not None for a in space.values()):
        return _default_search(model, spec, space, val_features, val_labels)
    axes = _normalise_grid(model, spec, grid)
    result = _search_grid(model, spec, val_features, val_labels, axes)
    _warn_on_edges(result, spec, space)
    return result


def _search_grid(model: Any, spec: MethodSpec, val_features: ArrayLike, val_labels: ArrayLike,
                 axes: dict[str, Any]) -> SearchResult:
    """Score every point of the normalised grid ``axes`` (the model's ``search_counts``) and set
    the winner on ``model``."""
    device = model.device_
    x = to_tensor(val_features, "val_features", ndim=2, device=device)
    n_val = x.shape[0]
    if n_val == 0:
        raise ValueError("val_features is empty")
    y = check_labels(val_labels, n_val, len(model.classes_), name="val_labels", device=device)
    routings = axes.get("routing", [model.routing])
    numeric = {a: axes[a] if a in axes else np.array([float(getattr(model, a))], dtype=np.float64)
               for a in spec.search_axes}
    fixed = {k: getattr(model, k) for k in spec.search_axes if k not in axes}
    if "routing" not in axes:
        fixed["routing"] = model.routing
    with torch.no_grad():
        correct = np.asarray(model.search_counts(x, y, numeric, list(routings)), dtype=np.int64)
    expected = (len(routings),) + tuple(len(v) for v in numeric.values())
    if correct.shape != expected:
        raise RuntimeError(f"{type(model).__name__}.search_counts returned shape {correct.shape}, "
                           f"expected {expected}")
    scores = correct.astype(np.float64) / n_val
    names = tuple(a for a in ("routing",) + spec.search_axes if a in axes)
    # axes of `scores`: routing, then search_axes; drop the ones that are not searched
    keep = ["routing" in axes] + [a in axes for a in spec.search_axes]
    scores = scores.reshape([s for s, k in zip(scores.shape, keep) if k] or [])
    return _pick(model, axes, names, scores, n_val, fixed)


def _pick(model: Any, axes: dict[str, Any], names: tuple[str, ...], scores: np.ndarray, n_val: int,
          fixed: dict[str, Any]) -> SearchResult:
    """The winner of ``scores`` (accuracy fractions, one axis per name; ties: the first maximum in
    axis order), set on ``model``."""
    flat_best = int(np.argmax(scores)) if scores.ndim else 0
    best_index = tuple(int(i) for i in np.unravel_index(flat_best, scores.shape)) if scores.ndim else ()
    best_params: dict[str, Any] = {}
    for name, i in zip(names, best_index):
        value = axes[name][i]
        best_params[name] = value if name == "routing" else float(value)
    if best_params:
        model.set_params(**best_params)
    return SearchResult(
        best_params_=best_params,
        best_score_=float(scores[best_index] if scores.ndim else scores),
        scores_=scores,
        grid_={k: (list(v) if k == "routing" else v.copy()) for k, v in axes.items()},
        param_names_=names,
        best_index_=best_index,
        n_val_=n_val,
        fixed_params_=fixed,
    )


# ----------------------------------------------------------------------------- edges

def _at_floor(result: SearchResult, axis: str) -> bool:
    """The winner's ``axis`` value is the smallest positive value searched and beats every other
    value of that axis (the other axes at the winner's values): the default search then extends
    the axis downwards."""
    if axis not in result.param_names_:
        return False
    dim = result.param_names_.index(axis)
    values = np.asarray(result.grid_[axis], dtype=np.float64)
    i = result.best_index_[dim]
    if not (values[i] > 0 and values[i] == values[values > 0].min()):
        return False
    line_index = list(result.best_index_)
    line_index[dim] = slice(None)
    line = np.asarray(result.scores_[tuple(line_index)], dtype=np.float64)
    return bool(line[i] > np.delete(line, i).max())


def _edge_axes(result: SearchResult, space: Mapping[str, SearchAxis],
               strict: bool = False) -> list[tuple[str, str, float]]:
    """``(axis, "upper" | "lower", edge value)`` for each numeric axis (of 3 or more values)
    along which the best accuracy (the other axes at the winner's values) is reached at the
    axis' largest value, or at its smallest where going lower can matter (above the axis'
    ``lower_edge_above``), and the accuracy is not the same everywhere on that line.
    ``strict``: only when the edge is the winner itself and beats every other value of the line."""
    edges = []
    for dim, axis in enumerate(result.param_names_):
        if axis == "routing":
            continue
        values = np.asarray(result.grid_[axis], dtype=np.float64)
        if values.size < 3:
            continue
        line_index = list(result.best_index_)
        line_index[dim] = slice(None)
        line = np.asarray(result.scores_[tuple(line_index)], dtype=np.float64)
        best = line.max()
        if line.min() == best:
            continue
        hi, lo = int(np.argmax(values)), int(np.argmin(values))
        for side, i in (("upper", hi), ("lower", lo)):
            if side == "lower" and not values[i] > space.get(axis, SearchAxis()).lower_edge_above:
                continue
            if strict:
                hit = result.best_index_[dim] == i and line[i] > np.delete(line, i).max()
            else:
                hit = line[i] == best
            if hit:
                edges.append((axis, side, float(values[i])))
                break
    return edges


def _warn_on_edges(result: SearchResult, spec: MethodSpec, space: Mapping[str, SearchAxis]) -> None:
    """Warn when a grid searched as given has its best accuracy on the edge of a numeric axis
    (saying "tie" when the edge only ties the chosen value, which the first-maximum rule kept).
    The advice names the fix the method offers: ``make_grid``'s scales and the adaptive default
    for a method with both, the config's ``<search_section>.search`` otherwise."""
    adaptive = any(a.spacing is not None for a in space.values())
    linear = spec.grid_builder is None  # make_grid's linear grids, from search_scale / search_step
    for axis, side, edge in _edge_axes(result, space):
        where = "largest" if side == "upper" else "smallest"
        beyond = "above" if side == "upper" else "below"
        chosen = result.best_params_[axis]
        if chosen == edge:
            what = f"the best validation accuracy along {axis} is reached at the {where} value of the given grid " \
                   f"({axis}={edge:.4g}, chosen)"
        else:
            what = f"the chosen {axis}={chosen:.4g} ties with the {where} value of the given grid ({axis}={edge:.4g}): " \
                   f"the validation accuracy is the same at both (the first maximum is kept)"
        if adaptive and linear:
            starts = {a: v for a, v in zip(spec.search_axes, spec.linear_grid_start()) if v > 0}
            how = ("e.g. a larger search_scale in make_grid" if side == "upper" else
                   f"make_grid starts {' and '.join(starts)} at {min(starts.values(), default=0):g}: "
                   "pass smaller values explicitly")
            advice = f"({how}) or pass grid=None for the adaptive default search"
        else:
            advice = f"or widen '{spec.search_section}.search.{axis}' in the config"
        warnings.warn(
            f"validation_search: {what}, so the optimum may lie {beyond} the grid; extend grid[{axis!r}] "
            f"{beyond} {edge:.4g} {advice}",
            UserWarning, stacklevel=3)


# ----------------------------------------------------------------------------- default search

_REFINE_POINTS = 9


def _coarse_axis(axis: SearchAxis) -> np.ndarray:
    if axis.spacing == "linear":
        return np.linspace(axis.low, axis.high, axis.points)
    values = np.geomspace(axis.low, axis.high, axis.points)
    return np.concatenate([[0.0], values]) if axis.with_zero else values


def _extend_axis(axis: SearchAxis, values: np.ndarray, upper: bool = True) -> np.ndarray | None:
    """``values`` continued one span past an edge (a decade on a log axis, the axis' range on a
    linear one), up to ``axis.limit`` (upper) or ``axis.floor`` (lower, log axes: between 0, if
    present, and the smallest positive value); None when already there."""
    log = axis.spacing == "log"
    if not upper:
        if axis.floor is None:
            return None
        positive = values[values > 0]
        ratio = positive[1] / positive[0]
        steps = int(round(math.log(10.0) / math.log(ratio)))
        new = positive[0] * ratio ** -np.arange(steps, 0, -1.0)
        new = new[new >= axis.floor * (1 - 1e-9)]
        if new.size == 0:
            return None
        return np.concatenate([values[values <= 0], new, positive])
    if log:
        positive = values[values > 0]
        ratio = positive[1] / positive[0]
        steps = int(round(math.log(10.0) / math.log(ratio)))
        new = positive[-1] * ratio ** np.arange(1, steps + 1)
    else:
        step = values[1] - values[0]
        new = values[-1] + step * np.arange(1, int(round((values[-1] - values[0]) / step)) + 1)
    new = new[new <= axis.limit * (1 + 1e-9)]
    return None if new.size == 0 else np.concatenate([values, new])


def _refine_axis(axis: SearchAxis, values: np.ndarray, i: int) -> np.ndarray:
    """Points between the neighbours of ``values[i]`` (which is kept exactly)."""
    lo = values[max(i - 1, 0)]
    hi = values[min(i + 1, len(values) - 1)]
    if axis.spacing == "log" and lo > 0:
        grid = np.geomspace(lo, hi, _REFINE_POINTS)
    else:
        grid = np.linspace(lo, hi, _REFINE_POINTS)
    return np.unique(np.concatenate([grid, [values[i]]]))


def _default_search(model: Any, spec: MethodSpec, space: Mapping[str, SearchAxis],
                    val_features: ArrayLike, val_labels: ArrayLike) -> SearchResult:
    """The adaptive default of :func:`validation_search` (``grid=None``), validation data only,
    on the axes whose :class:`SearchAxis` has a ``spacing``.

    1. Coarse grid: each axis from ``low`` to ``high`` (``points``, log- or linearly spaced; 0
       first when ``with_zero``).
    2. While the winner of an axis is its largest value and beats the rest of that axis, extend
       the axis by one span (a decade on a log axis, the axis' range on a linear one) up to its
       ``limit``, and search again; likewise downwards (a decade below the smallest positive
       value, down to ``floor``) on an axis with a ``floor``, when its smallest positive value
       wins outright.
    3. Refine: 9 points between the winner's neighbours on every axis (log-spaced on log axes).

    The result is the refinement's (its score is >= the coarse winner's: the coarse winner is
    one of its points); ``stages_`` keeps every stage. Unlike the per-dataset published ranges
    (Tip-Adapter's β <= 7 for ImageNet, <= 50 for Flowers102), no range is assumed.
    """
    adaptive = {a: v for a, v in space.items() if v.spacing is not None}
    axes = {a: _coarse_axis(v) for a, v in adaptive.items()}
    stages: list[dict[str, Any]] = []

    def run(grid: dict[str, np.ndarray]) -> SearchResult:
        result = _search_grid(model, spec, val_features, val_labels, dict(grid))
        stages.append({"grid": {k: v.copy() for k, v in grid.items()},
                       "best_params": dict(result.best_params_), "best_score": result.best_score_})
        return result

    result = run(axes)
    while True:
        extended = False
        for axis, side, _ in _edge_axes(result, space, strict=True):
            new = _extend_axis(adaptive[axis], axes[axis]) if side == "upper" else None
            if new is not None:
                axes[axis] = new
                extended = True
        for axis, declared in adaptive.items():
            if declared.floor is not None and _at_floor(result, axis):
                new = _extend_axis(declared, axes[axis], upper=False)
                if new is not None:
                    axes[axis] = new
                    extended = True
        if not extended:
            break
        result = run(axes)
    refined = {a: _refine_axis(adaptive[a], axes[a], result.best_index_[k])
               for k, a in enumerate(result.param_names_)}
    result = run(refined)
    result.stages_ = stages
    return result
