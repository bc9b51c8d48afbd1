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

**Estimator conventions** (shared with :class:`ssp.methods.ssp.projector.SSPProjector`):

* Constructor parameters are keyword-only and stored as given; ``fit`` validates every one of
  them (``TipAdapter(alpha="abc").fit(...)`` raises) and leaves the model unfitted on failure.
* ``fit(features, labels, *, side inputs)``: the first argument is the features the estimator
  learns from, the second their labels, everything else is passed by name. Here that is
  ``fit(image_features [N, D], labels [N], *, text_features [C, D], patch_features=None)``;
  the projector's is ``fit(patch_features [N, L, D], labels [N], *, image_features,
  text_features)``.
* Dtypes: float16, bfloat16, float32 and float64 features are accepted (half precision, as in
  fp16 feature caches, is computed in float32; float64 stays float64); integers and array-likes
  are converted; complex and sparse inputs are refused.
* Array kinds: numpy in, numpy out; torch in, torch out on the input's device. This holds for
  predictions and for the fitted array attributes, which follow the kind of the support features
  given to ``fit`` (``text_features`` for a zero-shot model fitted without support). The one
  exception is ``classes_``, numpy always as scikit-learn expects. Computations run in torch on
  ``device_`` (the fitted tensors are kept there privately).
* :meth:`score` returns the top-1 accuracy as a fraction in [0, 1] (scikit-learn's convention);
  :func:`ssp.methods.search.validation_search`'s ``best_score_`` is the same fraction (as scikit-learn's
  ``GridSearchCV.best_score_``); percent values say so in their name (``best_accuracy_pct_``), as
  the result tables do.

Hyper-parameters read at prediction time (``alpha``, ``beta``, ``gamma``, ``routing``,
``logit_scale``, ``chunk_size``) may be changed with ``set_params`` without refitting; everything
that depends only on the support set is computed once in ``fit`` (this is what
:func:`ssp.methods.search.validation_search` relies on). Changing a fit-time parameter (``projector``,
``n_channels``, ``criterion_weights``) after ``fit`` raises until ``fit`` is called again.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Mapping, Sequence

import numpy as np

from ssp._checks import ROUTINGS, check_real
from ssp._lazy import torch
from ssp._utils.arrays import ArrayLike, check_labels, check_text_features, to_tensor
from ssp._utils.normalize import l2_normalize
from ssp._utils.warn import warn
from ssp.methods.base import AUTO_CHUNK_ELEMENTS, SEARCH_BLOCK_ELEMENTS, CLIPFeatureClassifier
from ssp._utils.params import Fraction, Integer, Options, Pair, Real, check_param
from ssp.methods.registry import register_method
from ssp.methods.search import SearchAxis

_KL_EPS = 1e-6  # the epsilon of APE's divergence, as in the reference code


def cache_kernel(affinity: torch.Tensor, beta: float | torch.Tensor) -> torch.Tensor:
    """Tip-Adapter's activation ``exp(−β (1 − a))`` of cosine affinities ``a`` (any shape)."""
    return torch.exp(-beta * (1.0 - affinity))


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


# Below this β the kernel exp(−β (1 − a)) is nearly linear in the affinity a (CLIP affinities
# lie well inside [0, 1]), and a smaller β only rescales the term's weight: a winner at such a
# lower edge is not a sign of a too-narrow grid.
LINEAR_KERNEL_BETA = 0.2

# The adaptive default search (validation_search(grid=None)). Coarse axes: log-spaced with ratio
# 10 ** 0.1 (26 % steps) for the scales β and α (α also gets 0: zero-shot alone), linear for γ.
# Published per-dataset ranges reach β = 50 and α = 50 (Tip-Adapter's Flowers102 config) and
# γ = 1.5; these start wider, and an axis whose winner sits on its edge is extended (up to
# `limit`) until the winner is inside. α may also go down to 1e-4: APE's re-weighted cache term
# can be orders of magnitude larger than Tip-Adapter's, so its best α can lie below 0.01.
CACHE_SEARCH_SPACE = {
    "beta": SearchAxis(spacing="log", low=0.1, high=100.0, points=31, limit=1e4,
                       lower_edge_above=LINEAR_KERNEL_BETA),
    "alpha": SearchAxis(spacing="log", low=0.01, high=100.0, points=41, limit=1e4, with_zero=True,
                        floor=1e-4, minimum=0.0),
    "gamma": SearchAxis(spacing="linear", low=0.0, high=2.0, points=11, limit=10.0),
}


class _CacheModel(CLIPFeatureClassifier):
    """Zero-shot term plus a class-wise cache term (Tip-Adapter, APE)."""

    search_space = CACHE_SEARCH_SPACE

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
        """``(zero-shot logits [M, C], cache affinities [M, N], key log-weights [N] or None)`` for
        normalised queries ``x`` under ``routing``: everything the logits need except the
        searched hyper-parameters (alpha, beta, gamma). Models with trained per-key value weights
        (APE-T) append a fourth element, the weights ``[N]`` (any sign)."""
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
        return torch.exp(check_real(self.gamma, "gamma") * log_weights)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        alpha = check_real(self.alpha, "alpha")
        beta = check_real(self.beta, "beta")
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


    def search_counts(self, val_features, val_labels, axes, routings):
        """Correct validation predictions ``[R, B, A(, G)]`` at every (routing, β, α(, γ)) of
        ``axes`` (γ for APE): the whole grid at once. Per query chunk and routing the affinities
        are computed once, ``exp`` runs once per β, the γ re-weightings are one batched matmul
        over classes (the one-hot cache values are a class-wise segment sum, never a dense
        ``Y``), and α is handled in closed form (:func:`_count_grid`)."""
        self._check_fitted()
        betas, alphas, gammas = axes["beta"], axes["alpha"], axes.get("gamma")
        n_classes = len(self.classes_)
        n_g = len(gammas) if gammas is not None else 1
        correct = torch.zeros(len(routings), len(betas), len(alphas), n_g, dtype=torch.int64,
                              device=self.device_)
        rows = max(1, SEARCH_BLOCK_ELEMENTS // (n_g * n_classes))
        rows = min(rows, max(1, AUTO_CHUNK_ELEMENTS // max(self._torch.keys_.shape[0], 1)))
        alpha_t = torch.as_tensor(alphas, dtype=self.dtype_, device=self.device_)
        x = self._queries(val_features)
        for start in range(0, x.shape[0], rows):
            xc, yc = x[start:start + rows], val_labels[start:start + rows]
            for r, routing in enumerate(routings):
                terms = self._terms(xc, routing)
                zero_shot, affinity, log_weights = terms[:3]
                key_weights = terms[3] if len(terms) > 3 else None
                _count_grid(correct[r], zero_shot, affinity, yc, self.segments_, betas,
                            alpha_t, gammas, log_weights, key_weights)
        correct = correct.cpu().numpy()
        return correct if gammas is not None else correct[..., 0]


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



def _tip_adapter_params(cfg: Mapping[str, Any], dim: int) -> dict:
    return dict(cfg["tip_adapter"]["init"])


@register_method("tip-adapter", title="Tip-Adapter", config_section="tip_adapter", search_section="tip_adapter",
                 search_axes=("beta", "alpha"),
                 params=_tip_adapter_params, aliases=("tip", "tipadapter"))
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


    _parameter_constraints = {"alpha": [Real()], "beta": [Real()], "routing": [Options(ROUTINGS)],
                              "logit_scale": [Real()], "chunk_size": [Integer(1), None]}

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

    def _fit(self, image_features, labels, text_features, patch_features=None) -> None:
        self._fit_common(image_features, labels, text_features, patch_features)
        self._torch.keys_ = self._project_keys(self._torch.support_features_)


# APE's channel count: a positive int (an absolute count), a float in (0, 1] (a fraction of D)
# or None (all D channels)
N_CHANNELS = [Integer(1), Fraction("right"), None]


def check_n_channels(n_channels: Any, name: str = "n_channels") -> int | float | None:
    """A channel count as configured (:data:`N_CHANNELS`; a config names its key in ``name``),
    an int for an integer count; anything else is a one-line error."""
    check_param(n_channels, name, N_CHANNELS)
    if n_channels is None or isinstance(n_channels, numbers.Integral):
        return None if n_channels is None else int(n_channels)
    return float(n_channels)


def resolve_n_channels(n_channels: Any, dim: int, name: str = "n_channels") -> int:
    """The number of channels ``Q`` for features of width ``dim``: ``None`` -> D; a float in
    ``(0, 1]`` -> ``round(fraction * D)`` (at least 1); an int -> itself, clamped to D with a
    warning when larger (the only case that warns)."""
    n_channels = check_n_channels(n_channels, name)
    if n_channels is None:
        return int(dim)
    if isinstance(n_channels, float):
        return max(1, min(int(dim), round(n_channels * dim)))
    if n_channels > dim:
        warn(f"{name}={n_channels} exceeds the feature width D={dim}; using all {dim} channels")
        return int(dim)
    return n_channels


def _ape_params(cfg: Mapping[str, Any], dim: int) -> dict:
    ape = cfg["ape"]
    # a fraction of D or an absolute count, as configured: APE resolves it against the D of the
    # features at fit (a clamped count warns there, inside the run's warning record)
    return {**ape["init"], "n_channels": check_n_channels(ape["n_channels"], "ape.n_channels"),
            "criterion_weights": tuple(ape["criterion_weights"])}


@register_method("ape", title="APE", config_section="ape", search_section="ape",
                 search_axes=("beta", "alpha", "gamma"), grid_start=(0.1, 0.1, 0.0), params=_ape_params)
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
        n_channels: ``|Ω|``: an int is an absolute count (clamped to D with a warning when
            larger), a float in ``(0, 1]`` a fraction of D (``round(n_channels * D)``), ``None``
            all D channels. The shipped configs give fractions, so one config serves every
            backbone: e.g. ``0.78125`` is the published 800 channels of RN50's D = 1024 and 400
            of ViT-B's D = 512 (:func:`resolve_n_channels`).
        criterion_weights: ``(w₀, w₁)`` of the criterion.
        projector, routing, logit_scale, chunk_size, device: as in :class:`TipAdapter`.

    Fitted attributes: those of :class:`TipAdapter` plus ``channels_`` [Q] (sorted channel
    indices Ω), ``criterion_`` [D], ``inter_class_similarity_`` [D], ``class_variance_`` [D]
    (float64), ``selected_keys_`` [N, Q] (keys on Ω, re-normalised), ``key_divergence_`` [N]
    (δ in bits).
    """

    _fit_time_params = ("projector", "n_channels", "criterion_weights")
    _parameter_constraints = {**TipAdapter._parameter_constraints, "gamma": [Real()],
                              "n_channels": N_CHANNELS,
                              "criterion_weights": [Pair(Real(), "(w0, w1)")]}

    def __init__(self, *, alpha: float = 1.0, beta: float = 1.0, gamma: float = 0.1,
                 n_channels: int | float | None = None,
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

    def _fit(self, image_features, labels, text_features, patch_features=None) -> None:
        weights = tuple(float(w) for w in self.criterion_weights)
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
        return resolve_n_channels(self.n_channels, dim)

    def _key_log_weights(self) -> torch.Tensor:
        return self._torch.key_divergence_

    def _affinity(self, query: torch.Tensor) -> torch.Tensor:
        return l2_normalize(query[:, self._torch.channels_]) @ self._torch.selected_keys_.T
