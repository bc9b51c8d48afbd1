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

``best_score_`` is the grid's own accuracy; it equals ``100 * model.score(val)`` after the search
except when logits tie to within floating-point rounding (the grid and ``predict`` round
differently), where a single image can be counted differently.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ssp._utils import ArrayLike, check_is_fitted, check_labels, to_tensor
from ssp.classifiers import _AUTO_CHUNK_ELEMENTS, ROUTINGS, ZeroShotCLIP, cache_kernel

__all__ = ["SearchResult", "validation_search", "make_grid", "DEFAULT_SEARCH"]

# Defaults when grid=None (the ImageNet / OxfordPets configs of Tip-Adapter and the common
# APE config, SPEC A.2 / A.4): method -> (search_scale, search_step).
DEFAULT_SEARCH: dict[str, tuple[tuple[float, ...], tuple[int, ...]]] = {
    "tip": ((7.0, 3.0), (200, 20)),
    "ape": ((7.0, 7.0, 1.0), (200, 20, 20)),
}
_AXES = {"tip": ("beta", "alpha"), "ape": ("beta", "alpha", "gamma")}
_METHOD_ALIASES = {"tip": "tip", "tip_adapter": "tip", "tipadapter": "tip", "ape": "ape"}
_AXIS_ORDER = ("routing", "beta", "alpha", "gamma")

# Elements of the [queries, gamma, classes] cache block evaluated at once.
_BLOCK_ELEMENTS = 1 << 22


@dataclass
class SearchResult:
    """Outcome of :func:`validation_search`.

    Attributes:
        best_params_: the winning values, e.g. ``{"beta": 5.5, "alpha": 1.2}`` (set on the model).
        best_score_: validation top-1 accuracy of the winner, in percent.
        scores_: accuracies in percent, shape ``[len(grid_[a]) for a in param_names_]``
            (a 0-d array when nothing is searched).
        grid_: axis name -> values, in axis order (numeric axes as float64 arrays).
        param_names_: the searched axes, in (routing, beta, alpha, gamma) order.
        best_index_: index of the winner in ``scores_``.
        n_val_: number of validation samples.
        fixed_params_: hyper-parameters not searched, at the model's values during the search.
    """

    best_params_: dict[str, Any]
    best_score_: float
    scores_: np.ndarray
    grid_: dict[str, Any]
    param_names_: tuple[str, ...]
    best_index_: tuple[int, ...]
    n_val_: int
    fixed_params_: dict[str, Any] = field(default_factory=dict)


def _method_of(method: str) -> str:
    key = str(method).lower().replace("-", "_")
    if key not in _METHOD_ALIASES:
        raise ValueError(f"unknown method {method!r}; use 'tip' (Tip-Adapter) or 'ape'")
    return _METHOD_ALIASES[key]


def make_grid(method: str, search_scale: Sequence[float] | None = None,
              search_step: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """The reference search grids (SPEC A.2 / A.4).

    ``β_i = 0.1 + i (s_β − 0.1) / n_β`` and ``α_i = 0.1 + i (s_α − 0.1) / n_α`` for
    ``i = 0 .. n − 1`` and, for APE, ``γ_i = i s_γ / n_γ``: the upper bound ``s`` is never
    reached and γ starts at 0. Values are computed with the reference's float expression.

    Args:
        method: "tip" (Tip-Adapter) or "ape".
        search_scale: ``(s_β, s_α)`` or ``(s_β, s_α, s_γ)``; default :data:`DEFAULT_SEARCH`.
        search_step: ``(n_β, n_α)`` or ``(n_β, n_α, n_γ)``; default :data:`DEFAULT_SEARCH`.

    Returns:
        ``{"beta": [n_β], "alpha": [n_α](, "gamma": [n_γ])}`` float64 arrays.
    """
    method = _method_of(method)
    axes = _AXES[method]
    default_scale, default_step = DEFAULT_SEARCH[method]
    scale = tuple(default_scale if search_scale is None else search_scale)
    step = tuple(default_step if search_step is None else search_step)
    if len(scale) != len(axes) or len(step) != len(axes):
        raise ValueError(
            f"{method} needs {len(axes)} values ({', '.join(axes)}) in search_scale and "
            f"search_step, got {scale!r} and {step!r}"
        )
    grid = {}
    for axis, s, n in zip(axes, scale, step):
        s = float(s)
        if not math.isfinite(s) or s <= 0:
            raise ValueError(f"search_scale for {axis} must be a positive number, got {s}")
        if isinstance(n, bool) or int(n) != n or int(n) < 1:
            raise ValueError(f"search_step for {axis} must be a positive int, got {n!r}")
        i = np.arange(int(n), dtype=np.float64)
        grid[axis] = i * s / int(n) if axis == "gamma" else i * (s - 0.1) / int(n) + 0.1
    return grid


def _model_axes(model: Any) -> tuple[str, ...]:
    return tuple(getattr(model, "_search_axes", ()))


def _normalise_grid(model: Any, grid: Mapping[str, Any] | None) -> dict[str, Any]:
    axes = _model_axes(model)
    if grid is None:
        if isinstance(model, ZeroShotCLIP) or not axes:
            return {}
        return make_grid("ape" if "gamma" in axes else "tip")
    if not isinstance(grid, Mapping):
        raise TypeError(f"grid must be a dict of axis -> values, got {type(grid).__name__}")
    allowed = ("routing",) + axes
    unknown = [k for k in grid if k not in allowed]
    if unknown:
        raise ValueError(
            f"{type(model).__name__} cannot search {unknown}; its grid axes are {allowed}"
        )
    out: dict[str, Any] = {}
    for axis in _AXIS_ORDER:
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
        model: a fitted ``TipAdapter`` / ``APE`` / ``ZeroShotCLIP``, or a trained
            ``TipAdapterF`` / ``APET`` (``ssp.finetuned``). Its fitted state is kept;
            only the searched parameters are changed (``set_params``).
        val_features: ``[M, D]`` validation image features (never test features).
        val_labels: ``[M]`` validation labels.
        grid: axis -> values. Axes: "beta", "alpha" (Tip-Adapter, APE), "gamma" (APE) and
            "routing" (a list of routings, only for models with a projector). Axes left out stay
            at the model's current value. ``None``: :func:`make_grid` with the defaults of
            :data:`DEFAULT_SEARCH`; for ``ZeroShotCLIP`` (no hyper-parameters) ``None`` just
            scores the model (``scores_`` is 0-d), and ``{"routing": [...]}`` picks a routing.

    Returns:
        :class:`SearchResult`.
    """
    check_is_fitted(model, "text_features_")
    axes = _normalise_grid(model, grid)
    dtype, device = model.dtype_, model.device_
    x = to_tensor(val_features, "val_features", ndim=2, device=device)
    n_val = x.shape[0]
    if n_val == 0:
        raise ValueError("val_features is empty")
    n_classes = len(model.classes_)
    y = check_labels(val_labels, n_val, n_classes, name="val_labels", device=device)

    routings = axes.get("routing", [model.routing])
    has_cache = bool(_model_axes(model)) and not isinstance(model, ZeroShotCLIP)
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

    scores = 100.0 * (correct.cpu().numpy().astype(np.float64) / n_val)
    names = tuple(a for a in _AXIS_ORDER if a in axes)
    # axes of `scores`: routing, beta, alpha, gamma; drop the ones that are not searched
    keep = [a in axes for a in _AXIS_ORDER]
    scores = scores.reshape([s for s, k in zip(scores.shape, keep) if k] or [])
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
