"""Validation-only hyper-parameter search for the classifiers of :mod:`ssp.classifiers`.

::

    model = APE(n_channels=500, criterion_weights=(0.6, 0.4)).fit(F, y, text_features=W)
    result = validation_search(model, val_features, val_labels,
                               grid=make_grid("ape", (10, 7, 1), (200, 20, 20)))
    result.best_params_   # {'beta': ..., 'alpha': ..., 'gamma': ...}; already set on `model`
    model.predict(test_features)                                 # test data: touched once

The search sees validation data only; it never takes test features. It evaluates the whole
grid at once: per query chunk and routing, the affinities are computed once, ``exp`` runs once
per β, the γ re-weightings are one batched matmul over classes (the one-hot cache values are a
class-wise segment sum, never a dense ``Y``), and α is handled in closed form: for fixed (β, γ)
every logit is a line in α, so the α values at which the true class wins form an interval whose
ends cost ``O(C)`` per query (see :func:`_count_grid`). Ties go to the first maximum in
(routing, β, α, γ) order, like the reference loops' "first strict improvement".

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
from ssp.methods.base import _AUTO_CHUNK_ELEMENTS
from ssp.methods.cache_models import cache_kernel
from ssp.methods.registry import MethodSpec, get_method, make_grid, spec_for_estimator  # noqa: F401  (make_grid: re-exported)

__all__ = ["SearchResult", "validation_search", "make_grid"]

_AXIS_ORDER = ("routing", "beta", "alpha", "gamma")

# Elements of the [queries, gamma, classes] cache block evaluated at once.
_BLOCK_ELEMENTS = 1 << 22


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


def _model_axes(model: Any) -> tuple[str, ...]:
    return _model_spec(model).search_axes


def _normalise_grid(model: Any, grid: Mapping[str, Any] | None) -> dict[str, Any]:
    axes = _model_axes(model)
    if grid is None:
        return make_grid(_model_spec(model).name) if axes else {}
    if not isinstance(grid, Mapping):
        raise TypeError(f"grid must be a dict of axis -> values, got {type(grid).__name__}")
    allowed = ("routing",) + axes
    unknown = [k for k in grid if k not in allowed]
    if unknown:
        raise ValueError(
            f"{type(model).__name__} cannot search {unknown}; its grid axes are {allowed}"
        )
    out: dict[str, Any] = {}
    for axis in (("routing",) + axes if _has_hook(model) else _AXIS_ORDER):
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
            if axis == "alpha" and (arr < 0).any():
                raise ValueError("grid['alpha'] must be >= 0 (alpha weighs the cache term)")
            out[axis] = arr
    return out


def validation_search(model: Any, val_features: ArrayLike, val_labels: ArrayLike,
                      grid: Mapping[str, Any] | None = None) -> SearchResult:
    """Pick hyper-parameters of a fitted classifier on validation data and set them on it.

    Args:
        model: a fitted estimator of a registered method (:mod:`ssp.registry`): e.g.
            ``TipAdapter`` / ``APE`` / ``ZeroShotCLIP``, or a trained ``TipAdapterF`` /
            ``APET`` (``ssp.finetuned``). Its fitted state is kept; only the searched
            parameters are changed (``set_params``).
        val_features: ``[M, D]`` validation image features (never test features).
        val_labels: ``[M]`` validation labels.
        grid: axis -> values. Axes: the method's ``search_axes`` in the registry ("beta",
            "alpha" for Tip-Adapter; also "gamma" for APE) and "routing" (a list of routings,
            only for models with a projector). Axes left out stay
            at the model's current value. An explicit grid is searched exactly as given; a
            ``UserWarning`` names any numeric axis along which the best accuracy is reached at
            the grid's largest value (or its smallest positive one), since the optimum may lie
            outside. ``None``: the adaptive default search (:func:`_default_search`: a
            wide log-spaced coarse grid, extended while the winner sits on an edge, then
            refined around the winner; validation data only), which assumes no dataset's
            range; the routing stays at the model's value. For ``ZeroShotCLIP`` (no
            hyper-parameters) ``None`` just scores the model (``scores_`` is 0-d), and
            ``{"routing": [...]}`` picks a routing.

    Returns:
        :class:`SearchResult`.
    """
    check_is_fitted(model, "text_features_")
    if _has_hook(model):
        return _hook_search(model, val_features, val_labels, grid)
    if grid is None and _default_axes(model):
        return _default_search(model, val_features, val_labels)
    axes = _normalise_grid(model, grid)
    result = _search_grid(model, val_features, val_labels, axes)
    if grid is not None:
        _warn_on_edges(result)
    return result


def _search_grid(model: Any, val_features: ArrayLike, val_labels: ArrayLike,
                 axes: dict[str, Any]) -> SearchResult:
    """Score every point of the normalised grid ``axes`` and set the winner on ``model``."""
    dtype, device = model.dtype_, model.device_
    x = to_tensor(val_features, "val_features", ndim=2, device=device)
    n_val = x.shape[0]
    if n_val == 0:
        raise ValueError("val_features is empty")
    n_classes = len(model.classes_)
    y = check_labels(val_labels, n_val, n_classes, name="val_labels", device=device)

    routings = axes.get("routing", [model.routing])
    has_cache = bool(_model_axes(model))
    fixed = {k: getattr(model, k) for k in _model_axes(model) if k not in axes}
    if "routing" not in axes:
        fixed["routing"] = model.routing
    betas = axes.get("beta", np.array([model.beta])) if has_cache else None
    alphas = axes.get("alpha", np.array([model.alpha])) if has_cache else None
    gammas = None
    if "gamma" in _model_axes(model):
        gammas = axes.get("gamma", np.array([model.gamma]))

    n_b = len(betas) if has_cache else 1
    n_a = len(alphas) if has_cache else 1
    n_g = len(gammas) if gammas is not None else 1
    correct = torch.zeros(len(routings), n_b, n_a, n_g, dtype=torch.int64, device=device)
    rows = max(1, _BLOCK_ELEMENTS // (n_g * n_classes))
    if has_cache:
        rows = min(rows, max(1, _AUTO_CHUNK_ELEMENTS // max(model.keys_.shape[0], 1)))
        alpha_t = torch.as_tensor(alphas, dtype=dtype, device=device)
    with torch.no_grad():
        for start in range(0, n_val, rows):
            xc, yc = x[start:start + rows], y[start:start + rows]
            for r, routing in enumerate(routings):
                terms = model._search_terms(xc, routing)
                zero_shot, affinity, log_weights = terms[:3]
                key_weights = terms[3] if len(terms) > 3 else None
                if not has_cache:
                    correct[r, 0, 0, 0] += int((zero_shot.argmax(1) == yc).sum())
                    continue
                _count_grid(correct[r], zero_shot, affinity, yc, model.segments_, betas,
                            alpha_t, gammas, log_weights, key_weights)

    scores = correct.cpu().numpy().astype(np.float64) / n_val
    names = tuple(a for a in _AXIS_ORDER if a in axes)
    # axes of `scores`: routing, beta, alpha, gamma; drop the ones that are not searched
    keep = [a in axes for a in _AXIS_ORDER]
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


def _has_hook(model: Any) -> bool:
    """Models that score their own grid: ``model._search_scores(val_features, val_labels, axes,
    routings)`` -> correct counts ``[len(routings), *(len(axes[a]) for a in axes)]`` (int)."""
    return callable(getattr(model, "_search_scores", None))


def _hook_search(model: Any, val_features: ArrayLike, val_labels: ArrayLike,
                 grid: Mapping[str, Any] | None) -> SearchResult:
    """:func:`validation_search` for a model with a ``_search_scores`` hook (GDA, ProKeR, ...).

    ``grid=None`` searches the method's registered default grid (``spec.grid(None)``). The hook
    counts the correct validation predictions for every routing and every point of the numeric
    axes (in ``search_axes`` order, each at least the model's current value; all routings in one
    call, so work they share is done once); ties, edge warnings
    and the :class:`SearchResult` are those of the cache models' search. The edge warning is
    given for the default grid too (it is fixed, not extended)."""
    spec = _model_spec(model)
    axes = _normalise_grid(model, spec.grid(None) if grid is None else grid)
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
        correct = np.asarray(model._search_scores(x, y, numeric, list(routings)), dtype=np.int64)
    expected = (len(routings),) + tuple(len(v) for v in numeric.values())
    if correct.shape != expected:
        raise RuntimeError(f"{type(model).__name__}._search_scores returned shape {correct.shape}, "
                           f"expected {expected}")
    scores = correct.astype(np.float64) / n_val
    names = tuple(a for a in ("routing",) + spec.search_axes if a in axes)
    keep = ["routing" in axes] + [a in axes for a in spec.search_axes]
    scores = scores.reshape([s for s, k in zip(scores.shape, keep) if k] or [])
    result = _pick(model, axes, names, scores, n_val, fixed)
    _warn_on_edges(result, hint=f"or widen '{spec.search_section}.search.<axis>' in the config",
                   stacklevel=4)
    return result


def _count_grid(correct: torch.Tensor, zero_shot: torch.Tensor, affinity: torch.Tensor,
                labels: torch.Tensor, segments: Any, betas: np.ndarray, alphas: torch.Tensor,
                gammas: np.ndarray | None, log_weights: torch.Tensor | None,
                key_weights: torch.Tensor | None = None) -> None:
    """Add, for one query chunk, the number of correct predictions at every (β, α, γ) to
    ``correct`` ``[B, A, G]``.

    zero_shot ``[m, C]``, affinity ``[m, N]`` (keys grouped by class, see ``segments``),
    log_weights ``[N]`` (APE's δ) or None, key_weights ``[N]`` (a per-key factor of the values,
    any sign: APE-T's trained value weights) or None, alphas ``[A]`` (>= 0); the cache values are
    ``Y ⊙ key_weights ⊙ exp(γ log_weights)``. Logits that tie exactly
    (equal to the last bit) may be counted either way; ``predict`` takes the lower class index.

    For fixed (β, γ) the logits are lines in α, ``l_c(α) = z_c + α k_c``, so the α values at
    which the true class ``y`` wins form one interval: ``z_y − z_c + α (k_y − k_c) > 0`` for every
    ``c ≠ y``. The interval's ends are computed for all (query, γ) at once, and each
    grid α is tested against them: ``O(C + A)`` per (query, β, γ) instead of evaluating and
    arg-maxing ``A`` logit vectors (``O(A·C)``, 20x more work on the reference grids).
    """
    weights = None
    if gammas is not None:
        gamma_t = torch.as_tensor(gammas, dtype=affinity.dtype, device=affinity.device)
        lw = log_weights if log_weights is not None else torch.zeros_like(affinity[0])
        weights = torch.exp(gamma_t[:, None] * lw[None, :])              # [G, N]
        if key_weights is not None:
            weights = weights * key_weights[None, :]
    dtype = zero_shot.dtype
    n_rows = zero_shot.shape[0]
    target = labels[:, None]
    rows = torch.arange(n_rows, device=zero_shot.device)
    # In 1/α (α > 0) the conditions "y beats c" become one-sided bounds with fixed factors:
    #   gap_c = z_y - z_c > 0:  1/α > (k_c - k_y) / gap_c
    #   gap_c <= 0:             1/α < (k_y - k_c) / |gap_c|   (never, if k_y <= k_c)
    # so each (β, γ) costs one subtraction and two multiply-reduce passes over the cache
    # block, and no division. The true class gets gap = 1 and contributes 0 / +inf (no bound).
    # Everything is class-major ([C, m, ...]) so the reductions over classes are contiguous.
    gap = (zero_shot.gather(1, target) - zero_shot).scatter_(1, target, 1.0).T.contiguous()
    ahead = gap > 0
    tiny = torch.finfo(dtype).tiny
    inv_gap_ahead = torch.where(ahead, 1.0 / gap, 0.0)[:, :, None]       # [C, m, 1]
    # a zero gap (a zero-shot tie) counts as a tiny deficit
    inv_gap_behind = torch.where(ahead, 0.0, 1.0 / gap.clamp(max=-tiny))[:, :, None]
    no_bound = torch.where(ahead, math.inf, 0.0).to(dtype)[:, :, None]
    zero_shot_wins = ahead.all(dim=0)[:, None]                            # [m, 1]: α = 0
    grid_alpha = alphas.to(dtype)[:, None, None]                          # [A, 1, 1]
    alpha_zero = (alphas == 0)[:, None, None]
    any_alpha_zero = bool(alpha_zero.any())
    for b, beta in enumerate(betas):
        activation = cache_kernel(affinity, float(beta))                  # [m, N]
        if weights is None:
            cache = segments.sum(activation, key_weights).T.contiguous()[:, :, None]  # [C, m, 1]
        else:
            cache = segments.sum_many(activation, weights)                # [C, m, G]
        excess = cache.sub_(cache[labels, rows][None])                    # k_c - k_y
        inv_alpha_low = (excess * inv_gap_ahead).amax(dim=0)             # [m, G]
        inv_alpha_high = torch.addcmul(no_bound, excess, inv_gap_behind).amin(dim=0)
        wins = (grid_alpha * inv_alpha_low < 1.0) & (grid_alpha * inv_alpha_high > 1.0)
        if any_alpha_zero:
            wins = torch.where(alpha_zero, zero_shot_wins[None], wins)
        correct[b] += wins.sum(dim=1)                                     # [A, m, G] -> [A, G]


# ----------------------------------------------------------------------------- default search

# The adaptive default (grid=None). Coarse axes: log-spaced with ratio 10 ** 0.1 (26 % steps)
# for the scales β and α (α also gets 0: zero-shot alone), linear for γ. Published per-dataset
# ranges reach β = 50 and α = 50 (Tip-Adapter's Flowers102 config) and γ = 1.5; these start
# wider, and an axis whose winner sits on its edge is extended until the winner is inside or
# the limit is reached. Then one refinement grid between the winner's neighbours.
_DEFAULT_COARSE: dict[str, tuple[str, float, float, int]] = {
    # axis: (spacing, low, high, points)
    "beta": ("log", 0.1, 100.0, 31),
    "alpha": ("log", 0.01, 100.0, 41),
    "gamma": ("linear", 0.0, 2.0, 11),
}
# How far the default search may push an upper edge.
_DEFAULT_LIMITS: dict[str, float] = {"beta": 1e4, "alpha": 1e4, "gamma": 10.0}
# ... and the smallest positive α it may reach (APE's re-weighted cache term can be orders of
# magnitude larger than Tip-Adapter's, so its best α can lie below 0.01).
_DEFAULT_ALPHA_FLOOR = 1e-4
# Below this β the kernel exp(−β (1 − a)) is nearly linear in the affinity a (CLIP affinities
# lie well inside [0, 1]), and a smaller β only rescales α: a winner at such a lower edge is not
# a sign of a too-narrow grid.
_LINEAR_KERNEL_BETA = 0.2
_REFINE_POINTS = 9


def _default_axes(model: Any) -> tuple[str, ...]:
    """The numeric axes the default search covers ((), e.g. for zero-shot CLIP)."""
    return tuple(a for a in _model_axes(model) if a in _DEFAULT_COARSE)


def _coarse_axis(axis: str) -> np.ndarray:
    spacing, low, high, n = _DEFAULT_COARSE[axis]
    if spacing == "linear":
        return np.linspace(low, high, n)
    values = np.geomspace(low, high, n)
    return np.concatenate([[0.0], values]) if axis == "alpha" else values


def _extend_axis(axis: str, values: np.ndarray, upper: bool = True) -> np.ndarray | None:
    """``values`` continued one span past an edge (a decade on a log axis, the axis' range on a
    linear one), up to :data:`_DEFAULT_LIMITS` (upper) or :data:`_DEFAULT_ALPHA_FLOOR` (lower,
    log axes: between 0, if present, and the smallest positive value); None when already there."""
    log = _DEFAULT_COARSE[axis][0] == "log"
    if not upper:
        positive = values[values > 0]
        ratio = positive[1] / positive[0]
        steps = int(round(math.log(10.0) / math.log(ratio)))
        new = positive[0] * ratio ** -np.arange(steps, 0, -1.0)
        new = new[new >= _DEFAULT_ALPHA_FLOOR * (1 - 1e-9)]
        if axis != "alpha" or new.size == 0:
            return None
        return np.concatenate([values[values <= 0], new, positive])
    limit = _DEFAULT_LIMITS[axis]
    if log:
        positive = values[values > 0]
        ratio = positive[1] / positive[0]
        steps = int(round(math.log(10.0) / math.log(ratio)))
        new = positive[-1] * ratio ** np.arange(1, steps + 1)
    else:
        step = values[1] - values[0]
        new = values[-1] + step * np.arange(1, int(round((values[-1] - values[0]) / step)) + 1)
    new = new[new <= limit * (1 + 1e-9)]
    return None if new.size == 0 else np.concatenate([values, new])


def _alpha_at_floor(result: SearchResult) -> bool:
    """The winner's α is the smallest positive α searched and beats every other α (the other
    axes at the winner's values): the default search then extends α downwards."""
    if "alpha" not in result.param_names_:
        return False
    dim = result.param_names_.index("alpha")
    values = np.asarray(result.grid_["alpha"], dtype=np.float64)
    i = result.best_index_[dim]
    if not (values[i] > 0 and values[i] == values[values > 0].min()):
        return False
    line_index = list(result.best_index_)
    line_index[dim] = slice(None)
    line = np.asarray(result.scores_[tuple(line_index)], dtype=np.float64)
    return bool(line[i] > np.delete(line, i).max())


def _edge_axes(result: SearchResult, strict: bool = False) -> list[tuple[str, str, float]]:
    """``(axis, "upper" | "lower", edge value)`` for each numeric axis (of 3 or more values)
    along which the best accuracy (the other axes at the winner's values) is reached at the
    axis' largest value, or at its smallest where going lower can matter (α, γ > 0: 0 is a true
    bound, no cache term / no re-weighting; β > :data:`_LINEAR_KERNEL_BETA`), and the accuracy
    is not the same everywhere on that line. ``strict``: only when the edge is the winner itself
    and beats every other value of the line."""
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
            if side == "lower" and not values[i] > (_LINEAR_KERNEL_BETA if axis == "beta" else 0.0):
                continue
            if strict:
                hit = result.best_index_[dim] == i and line[i] > np.delete(line, i).max()
            else:
                hit = line[i] == best
            if hit:
                edges.append((axis, side, float(values[i])))
                break
    return edges


def _warn_on_edges(result: SearchResult, hint: str | None = None, stacklevel: int = 3) -> None:
    """Warn when a user-given grid's best accuracy is reached on the edge of a numeric axis
    (saying "tie" when the edge only ties the chosen value, which the first-maximum rule kept;
    ``hint``: what to do instead of the cache models' advice)."""
    for axis, side, edge in _edge_axes(result):
        where = "largest" if side == "upper" else "smallest"
        beyond = "above" if side == "upper" else "below"
        how = ("e.g. a larger search_scale in make_grid" if side == "upper" else
               "make_grid starts beta and alpha at 0.1: pass smaller values explicitly")
        chosen = result.best_params_[axis]
        if chosen == edge:
            what = f"the best validation accuracy along {axis} is reached at the {where} value of the given grid " \
                   f"({axis}={edge:.4g}, chosen)"
        else:
            what = f"the chosen {axis}={chosen:.4g} ties with the {where} value of the given grid ({axis}={edge:.4g}): " \
                   f"the validation accuracy is the same at both (the first maximum is kept)"
        advice = (f"({how}) or pass grid=None for the adaptive default search" if hint is None
                  else hint.replace("<axis>", axis))
        warnings.warn(
            f"validation_search: {what}, so the optimum may lie {beyond} the grid; extend grid[{axis!r}] "
            f"{beyond} {edge:.4g} {advice}",
            UserWarning, stacklevel=stacklevel)


def _refine_axis(axis: str, values: np.ndarray, i: int) -> np.ndarray:
    """Points between the neighbours of ``values[i]`` (which is kept exactly)."""
    lo = values[max(i - 1, 0)]
    hi = values[min(i + 1, len(values) - 1)]
    if _DEFAULT_COARSE[axis][0] == "log" and lo > 0:
        grid = np.geomspace(lo, hi, _REFINE_POINTS)
    else:
        grid = np.linspace(lo, hi, _REFINE_POINTS)
    return np.unique(np.concatenate([grid, [values[i]]]))


def _default_search(model: Any, val_features: ArrayLike, val_labels: ArrayLike) -> SearchResult:
    """The adaptive default of :func:`validation_search` (``grid=None``), validation data only.

    1. Coarse grid: β log-spaced in [0.1, 100] (31 points), α = 0 and log-spaced in
       [0.01, 100] (41), γ (APE) linear in [0, 2] (11).
    2. While the winner of an axis is its largest value and beats the rest of that axis, extend
       the axis by one span (a decade for β, α; [0, 2] -> [0, 4] for γ) up to
       :data:`_DEFAULT_LIMITS`, and search again; likewise α downwards (a decade below its
       smallest positive value, down to :data:`_DEFAULT_ALPHA_FLOOR`) when the smallest
       positive α wins. (γ starts at 0, and below β = 0.1 the kernel is linear in the affinity:
       those lower ends need no extension.)
    3. Refine: 9 points between the winner's neighbours on every axis (log-spaced for β, α).

    The result is the refinement's (its score is >= the coarse winner's: the coarse winner is
    one of its points); ``stages_`` keeps every stage. Unlike the per-dataset published ranges
    (Tip-Adapter's β <= 7 for ImageNet, <= 50 for Flowers102), no range is assumed.
    """
    names = _default_axes(model)
    axes = {a: _coarse_axis(a) for a in names}
    stages: list[dict[str, Any]] = []

    def run(grid: dict[str, np.ndarray]) -> SearchResult:
        result = _search_grid(model, val_features, val_labels, dict(grid))
        stages.append({"grid": {k: v.copy() for k, v in grid.items()},
                       "best_params": dict(result.best_params_), "best_score": result.best_score_})
        return result

    result = run(axes)
    while True:
        extended = False
        for axis, side, _ in _edge_axes(result, strict=True):
            new = _extend_axis(axis, axes[axis]) if side == "upper" else None
            if new is not None:
                axes[axis] = new
                extended = True
        if _alpha_at_floor(result):
            new = _extend_axis("alpha", axes["alpha"], upper=False)
            if new is not None:
                axes["alpha"] = new
                extended = True
        if not extended:
            break
        result = run(axes)
    refined = {a: _refine_axis(a, axes[a], result.best_index_[k]) for k, a in enumerate(result.param_names_)}
    result = run(refined)
    result.stages_ = stages
    return result
