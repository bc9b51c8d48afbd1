"""ProKeR: proximal kernel ridge regression around zero-shot CLIP (Bendou et al., "ProKeR: A Kernel
Perspective on Few-Shot Adaptation of Large Vision-Language Models", CVPR 2025).

The zero-shot classifier plus the kernel ridge regression of its residual on the support set::

    clf = ProKeR(beta=2.0, lam=0.1).fit(keys, labels, text_features=text)
    validation_search(clf, val_x, val_y)      # beta and lam on the default grid
    clf.predict(test_x)

With support features ``X`` ``[N, D]``, one-hot labels ``Y`` ``[N, C]`` and text ``T`` ``[C, D]``
(all unit-normalised):

* kernel ``k(a, b) = exp(−β (1 − aᵀb))``, ``G = k(X, X)`` ``[N, N]``;
* ``A = (G / λ + I)⁻¹ (Y − X Tᵀ)`` ``[N, C]``: the ridge solution for the residual of the
  zero-shot cosines on the support set;
* logits ``s · (x Tᵀ + k(x, X) A)`` (``s = logit_scale = 100``; the paper's code leaves both
  terms unscaled, which has the same arg-max).

**Cost.** ``fit`` stores the support set; ``A`` is computed for the current ``(β, λ)`` at the
first prediction (a Cholesky factorisation of ``G + λ I`` in float64: ``N³/3`` flops, ``2 N²``
doubles, 4 GB at ImageNet's N = 16,000) and kept until they change. The search
(:func:`ssp.methods.search.validation_search`) factorises ``G = V diag(e) Vᵀ`` once per β and
gets every λ from it: ``A(λ) = V diag(λ / (e + λ)) Vᵀ R``, never one inverse per grid point.
Query kernels are computed in chunks (``chunk_size``).

**Samples.** One row per support image (e.g. a Tip-Adapter cache's keys, the mean of the
augmented views). The paper's code stacks every augmented view (``N = E · C · K``), which
makes ``G`` ``E²`` times larger (160,000² at ImageNet: out of reach of a 24 GB machine).

**SSP.** With ``projector=SSPProjector(...)`` the support features are vision-projected (the
cache keys of :class:`ssp.methods.cache_models.TipAdapter`), queries enter the kernel in the
routing's cache view and the zero-shot cosines (query and support residual alike) in its
zero-shot view.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ssp._lazy import torch
from ssp._utils import ArrayLike
from ssp.methods.base import _check_finite_param, _CLIPFeatureClassifier
from ssp.methods.registry import log_grid_builder, register_method

__all__ = ["ProKeR", "DEFAULT_GRID"]

# beta: octaves 1 .. 16 (exp(-beta (1 - cos)) at CLIP's cosines: from nearly linear to sharp);
# lam: half-decades 1e-3 .. 1e2. Each beta costs one eigendecomposition of G.
DEFAULT_GRID = {"beta": (1.0, 16.0, 5), "lam": (1e-3, 1e2, 11)}

# Elements of one [queries, support] kernel chunk in the search (float64: 128 MiB).
_SEARCH_CHUNK_ELEMENTS = 1 << 24


def _proker_params(cfg: Mapping[str, Any], dim: int) -> dict:
    return dict(cfg["proker"]["init"])


def rbf_gram(a: torch.Tensor, b: torch.Tensor, beta: float) -> torch.Tensor:
    """``exp(−β (1 − a bᵀ))`` ``[n, m]`` for unit rows ``a`` ``[n, D]``, ``b`` ``[m, D]`` (in place
    on the product: one ``[n, m]`` buffer)."""
    return (a @ b.T).sub_(1.0).mul_(beta).exp_()


@register_method("proker", title="ProKeR", config_section="proker", search_section="proker",
                 search_axes=("beta", "lam"), params=_proker_params,
                 grid_builder=log_grid_builder(**DEFAULT_GRID))
class ProKeR(_CLIPFeatureClassifier):
    """Training-free ProKeR (Bendou et al., CVPR 2025): ``s · (x Tᵀ + k(x, X) A)`` (module docstring).

    Args:
        beta: kernel sharpness β (>= 0).
        lam: ridge weight λ (> 0): the larger, the further from zero-shot CLIP.
        projector, routing: SSP projector and routing (as in :class:`~ssp.methods.cache_models.TipAdapter`).
        logit_scale: scale s of both terms.
        chunk_size: queries per chunk of the ``[M, N]`` query kernel; ``None`` picks about 16M
            elements.
        device: torch device; ``None`` = CUDA if available else CPU.

    Fitted attributes: those of :class:`~ssp.methods.cache_models.TipAdapter` (``keys_`` [N, D]:
    the kernel's support points, vision-projected with a projector).
    """

    _real_params = ("beta", "lam", "logit_scale")

    def __init__(self, *, beta: float = 1.0, lam: float = 0.1, projector: Any = None,
                 routing: str = "paper", logit_scale: float = 100.0, chunk_size: int | None = None,
                 device: str | torch.device | None = None) -> None:
        self.beta = beta
        self.lam = lam
        self.projector = projector
        self.routing = routing
        self.logit_scale = logit_scale
        self.chunk_size = chunk_size
        self.device = device

    def fit(self, image_features: ArrayLike, labels: ArrayLike, *, text_features: ArrayLike,
            patch_features: ArrayLike | None = None) -> "ProKeR":
        """Store the support features ``[N, D]`` and labels ``[N]`` (any order, unequal shots
        allowed) with the text classifier ``[C, D]``; fit a clone of ``projector`` when
        ``patch_features`` ``[N, L, D]`` are given."""
        return super().fit(image_features, labels, text_features=text_features,
                           patch_features=patch_features)

    def _validate_params(self) -> None:
        super()._validate_params()
        self._hyper(self.beta, self.lam)

    @staticmethod
    def _hyper(beta: Any, lam: Any) -> tuple[float, float]:
        beta, lam = _check_finite_param(beta, "beta"), _check_finite_param(lam, "lam")
        if beta < 0:
            raise ValueError(f"beta must be >= 0 (kernel exp(-beta (1 - cos))), got {beta!r}")
        if not lam > 0:
            raise ValueError(f"lam must be > 0 (ridge weight), got {lam!r}")
        return beta, lam

    def _fit(self, image_features, labels, text_features, patch_features) -> None:
        self._fit_common(image_features, labels, text_features, patch_features)
        keys = self._torch.support_features_
        if self.projector_ is not None:
            keys = self._views(keys, {"vision"})["vision"]
        self._torch.keys_ = keys
        self._solution_cache: dict = {}

    # ---- the ridge solution -----------------------------------------------------------------

    def _needed_views(self, routing: str | None) -> set[str]:
        zs_view, _, kernel_view = self._route(routing)
        return {zs_view, kernel_view} - {"plain"}

    def _cosines(self, views: dict[str, torch.Tensor], routing: str | None) -> torch.Tensor:
        """Zero-shot cosines ``x Tᵀ`` ``[M, C]`` in the routing's zero-shot view."""
        query_view, text_kind, _ = self._route(routing)
        text = (self._torch.projected_text_features_ if text_kind == "projected"
                else self._torch.text_features_)
        return views[query_view] @ text.T

    def _residual(self, routing: str | None) -> torch.Tensor:
        """``Y − X Tᵀ`` ``[N, C]`` (float64) on the support set, in the routing's zero-shot view."""
        support = self._torch.support_features_
        views = self._views(support, self._needed_views(routing))
        residual = -self._cosines(views, routing).to(torch.float64)
        rows = torch.arange(support.shape[0], device=support.device)
        residual[rows, self._torch.support_labels_] += 1.0
        return residual

    def _solution(self, beta: float, lam: float, routing: str) -> torch.Tensor:
        """``A = (G/λ + I)⁻¹ R = λ (G + λ I)⁻¹ R`` ``[N, C]`` in ``dtype_`` (cached for the
        latest ``(β, λ, routing)``)."""
        key = (beta, lam, routing)
        if key not in self._solution_cache:
            keys = self._torch.keys_.to(torch.float64)
            system = rbf_gram(keys, keys, beta)
            system.diagonal().add_(lam)
            factor, info = torch.linalg.cholesky_ex(system)
            residual = self._residual(routing)
            if int(info) == 0:
                del system
                solution = torch.cholesky_solve(residual, factor)
            else:  # not numerically positive definite (tiny lam): a pivoted solve
                del factor
                solution = torch.linalg.solve(system, residual)
            self._solution_cache.clear()  # one entry: the latest (beta, lam, routing); memo, not state
            self._solution_cache[key] = (lam * solution).to(self.dtype_)
        return self._solution_cache[key]

    # ---- logits ---------------------------------------------------------------------------

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        beta, lam = self._hyper(self.beta, self.lam)
        scale = _check_finite_param(self.logit_scale, "logit_scale")
        routing = self.routing
        solution = self._solution(beta, lam, routing)
        views = self._views(x, self._needed_views(routing))
        logits = self._cosines(views, routing)
        query = views[self._route(routing)[2]]
        rows = self._chunk_rows(self._torch.keys_.shape[0])
        for start in range(0, query.shape[0], rows):
            kernel = rbf_gram(query[start:start + rows], self._torch.keys_, beta)
            logits[start:start + rows] += kernel @ solution
        return scale * logits

    def _search_scores(self, val_features: torch.Tensor, val_labels: torch.Tensor,
                       axes: Mapping[str, np.ndarray], routings: list[str]) -> np.ndarray:
        """Correct validation predictions ``[R, B, L]`` for every routing and every
        ``(axes["beta"], axes["lam"])``.

        Per β: ``G = V diag(e) Vᵀ`` (one float64 eigendecomposition shared by every routing,
        since ``G`` is built from the keys alone; about ``3 N²`` doubles of memory with the
        workspace), ``Q = Vᵀ R`` and, per chunk of queries, ``k(x, X) V``; then each λ costs one
        ``[m, N] @ [N, C]`` product. The best point's ``A`` is kept so that the first prediction
        after the search needs no new factorisation."""
        self._check_fitted()
        betas = [float(b) for b in axes["beta"]]
        lams = [float(v) for v in axes["lam"]]
        for beta in betas:
            for lam in lams:
                self._hyper(beta, lam)
        scale = _check_finite_param(self.logit_scale, "logit_scale")
        x = self._queries(val_features)
        keys = self._torch.keys_.to(torch.float64)
        per_routing = []
        for routing in routings:  # the routing's zero-shot cosines, kernel queries, residual
            views = self._views(x, self._needed_views(routing))
            per_routing.append((self._cosines(views, routing).to(torch.float64),
                                views[self._route(routing)[2]].to(torch.float64),
                                self._residual(routing)))
        rows = max(1, _SEARCH_CHUNK_ELEMENTS // max(keys.shape[0], 1))
        correct = np.zeros((len(routings), len(betas), len(lams)), dtype=np.int64)
        best: dict = {}  # routing index -> (count, key, solution)
        for b, beta in enumerate(betas):
            gram = rbf_gram(keys, keys, beta)
            eigenvalues, vectors = torch.linalg.eigh(gram)
            del gram
            eigenvalues = eigenvalues.clamp_min(0.0)  # G is positive semi-definite
            shrink = [lam / (eigenvalues + lam) for lam in lams]
            for r, (cosines, query, residual) in enumerate(per_routing):
                projected = vectors.T @ residual                                  # Q [N, C]
                for start in range(0, x.shape[0], rows):
                    basis = rbf_gram(query[start:start + rows], keys, beta) @ vectors   # [m, N]
                    truth = val_labels[start:start + rows]
                    for i, weights in enumerate(shrink):
                        logits = scale * (cosines[start:start + rows] + basis @ (weights[:, None] * projected))
                        correct[r, b, i] += int((logits.argmax(1) == truth).sum())
                    del basis
                i = int(np.argmax(correct[r, b]))
                if correct[r, b, i] > best.get(r, (-1,))[0]:  # first maximum in (beta, lam) order
                    solution = (vectors @ (shrink[i][:, None] * projected)).to(self.dtype_)
                    best[r] = (int(correct[r, b, i]), (beta, lams[i], routings[r]), solution)
                del projected
            del vectors
        if best:  # keep the overall winner's solution (first maximum in routing order)
            top = max(v[0] for v in best.values())
            winner = min(r for r, v in best.items() if v[0] == top)
            self._solution_cache.clear()
            self._solution_cache[best[winner][1]] = best[winner][2]
        return correct
