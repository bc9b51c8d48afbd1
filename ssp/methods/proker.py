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
(:func:`ssp.methods.search.validation_search`) builds ``G`` once per β and then either
factorises ``G = V diag(e) Vᵀ`` once and gets every λ from it, ``A(λ) = V diag(λ / (e + λ)) Vᵀ R``
(``search_solver="eigh"``), or solves ``(G + λ I) A = λ R`` by one Cholesky factorisation per λ
(``"cholesky"``). Both are exact in float64 and never form an inverse. A CPU eigendecomposition
is memory-bound and costs about as much as 25 Cholesky factorisations (297 s against 11.9 s at
N = 16,000 on two cores), so ``"auto"`` picks the eigendecomposition only for long λ axes (about
20 points; the default has 11). Query kernels are computed in chunks (``chunk_size``).

**Samples.** One row per support image (e.g. a Tip-Adapter cache's keys, the mean of the
augmented views). The paper's code stacks every augmented view (``N = E · C · K``), which
makes ``G`` ``E²`` times larger (160,000² at ImageNet: out of reach of a 24 GB machine).

**SSP.** With ``projector=SSPProjector(...)`` the support features are vision-projected (the
cache keys of :class:`ssp.methods.cache_models.TipAdapter`), queries enter the kernel in the
routing's cache view and the zero-shot cosines (query and support residual alike) in its
zero-shot view.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from ssp._checks import ROUTINGS, check_real
from ssp._lazy import torch
from ssp._utils.arrays import ArrayLike
from ssp.methods.base import CLIPFeatureClassifier
from ssp.methods.cache_models import LINEAR_KERNEL_BETA
from ssp._utils.params import Integer, Options, Real, check_param
from ssp.methods.registry import log_grid_builder, register_method
from ssp.methods.search import SearchAxis

__all__ = ["ProKeR", "SEARCH_SOLVERS", "search_solver_for"]


# Elements of one [queries, support] kernel chunk in the search (float64: 128 MiB).
_SEARCH_CHUNK_ELEMENTS = 1 << 24

SEARCH_SOLVERS = ("auto", "eigh", "cholesky")

# Time of one N x N float64 eigendecomposition (vectors included) over one Cholesky
# factorisation (N^3 / 3 flops): 25 measured on a 2-core CPU at N = 16,000 (297 s / 11.9 s),
# where LAPACK's tridiagonal reduction is memory-bound; GPU solvers favour Cholesky more.
_EIGH_OVER_CHOLESKY = 25.0


def search_solver_for(solver: str, *, n_samples: int, n_classes: int, n_queries: int, dim: int,
                      n_lams: int) -> str:
    """The search's factorisation per β: ``solver`` itself unless ``"auto"``, which compares flop
    counts. ``"eigh"``: one eigendecomposition (``_EIGH_OVER_CHOLESKY`` Cholesky factorisations),
    ``Vᵀ R``, ``k(x, X) V`` and one ``[M, N] @ [N, C]`` product per λ. ``"cholesky"``: per λ, one
    factorisation, its solve for ``C`` right-hand sides, the query kernels and ``k(x, X) A``."""
    if solver != "auto":
        return solver
    n, c, m = float(n_samples), float(n_classes), float(n_queries)
    factorisation = n ** 3 / 3
    eigh = (_EIGH_OVER_CHOLESKY * factorisation + 2 * n * n * c + 2 * m * n * (n + dim)
            + n_lams * 2 * m * n * c)
    cholesky = n_lams * (factorisation + 2 * n * n * c + 2 * m * n * (dim + c))
    return "cholesky" if cholesky <= eigh else "eigh"


def _proker_params(cfg: Mapping[str, Any], dim: int) -> dict:
    section = cfg["proker"]
    return {**section["init"], "search_solver": section.get("search_solver", "auto")}


def rbf_gram(a: torch.Tensor, b: torch.Tensor, beta: float) -> torch.Tensor:
    """``exp(−β (1 − a bᵀ))`` ``[n, m]`` for unit rows ``a`` ``[n, D]``, ``b`` ``[m, D]`` (in place
    on the product: one ``[n, m]`` buffer)."""
    return (a @ b.T).sub_(1.0).mul_(beta).exp_()


def _ridge_solver(gram: torch.Tensor, lam: float, *, overwrite: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """``R ↦ λ (G + λ I)⁻¹ R = (G / λ + I)⁻¹ R`` for ``R`` ``[N, C]`` (float64), from one Cholesky
    factorisation of ``G + λ I`` ``[N, N]`` (a pivoted LU where that is not numerically positive
    definite: tiny λ). ``overwrite``: ``gram`` may be used as the workspace."""
    system = gram if overwrite else gram.clone()
    del gram
    system.diagonal().add_(lam)
    factor, info = torch.linalg.cholesky_ex(system)
    if int(info) == 0:
        del system
        return lambda residual: lam * torch.cholesky_solve(residual, factor)
    del factor
    lu, pivots = torch.linalg.lu_factor(system)
    del system
    return lambda residual: lam * torch.linalg.lu_solve(lu, pivots, residual)


@register_method("proker", title="ProKeR", config_section="proker", search_section="proker",
                 search_axes=("beta", "lam"), params=_proker_params,
                 grid_builder=log_grid_builder("beta", "lam"))
class ProKeR(CLIPFeatureClassifier):
    """Training-free ProKeR (Bendou et al., CVPR 2025): ``s · (x Tᵀ + k(x, X) A)`` (module docstring).

    Args:
        beta: kernel sharpness β (>= 0).
        lam: ridge weight λ (> 0): the larger, the further from zero-shot CLIP.
        projector, routing: SSP projector and routing (as in :class:`~ssp.methods.cache_models.TipAdapter`).
        logit_scale: scale s of both terms.
        chunk_size: queries per chunk of the ``[M, N]`` query kernel; ``None`` picks about 16M
            elements.
        search_solver: the validation search's factorisation per β: ``"eigh"`` (one
            eigendecomposition, every λ from it), ``"cholesky"`` (one factorisation per λ) or
            ``"auto"`` (the fewer flops, module docstring). Both give the same scores.
        device: torch device; ``None`` = CUDA if available else CPU.

    Fitted attributes: those of :class:`~ssp.methods.cache_models.TipAdapter` (``keys_`` [N, D]:
    the kernel's support points, vision-projected with a projector).
    """

    _parameter_constraints = {"beta": [Real(0)], "lam": [Real(0, closed="neither")],
                              "routing": [Options(ROUTINGS)], "logit_scale": [Real()],
                              "chunk_size": [Integer(1), None], "search_solver": [Options(SEARCH_SOLVERS)]}
    # sane ranges: one decade past the default grid on each side
    search_space = {"beta": SearchAxis(lower_edge_above=LINEAR_KERNEL_BETA, sane=(0.1, 160.0)),
                    "lam": SearchAxis(sane=(1e-4, 1e3))}

    def __init__(self, *, beta: float = 1.0, lam: float = 0.1, projector: Any = None,
                 routing: str = "paper", logit_scale: float = 100.0, chunk_size: int | None = None,
                 search_solver: str = "auto", device: str | torch.device | None = None) -> None:
        self.beta = beta
        self.lam = lam
        self.projector = projector
        self.routing = routing
        self.logit_scale = logit_scale
        self.chunk_size = chunk_size
        self.search_solver = search_solver
        self.device = device

    def fit(self, image_features: ArrayLike, labels: ArrayLike, *, text_features: ArrayLike,
            patch_features: ArrayLike | None = None) -> "ProKeR":
        """Store the support features ``[N, D]`` and labels ``[N]`` (any order, unequal shots
        allowed) with the text classifier ``[C, D]``; fit a clone of ``projector`` when
        ``patch_features`` ``[N, L, D]`` are given."""
        return super().fit(image_features, labels, text_features=text_features,
                           patch_features=patch_features)

    @classmethod
    def _hyper(cls, beta: Any, lam: Any) -> tuple[float, float]:
        """``(β, λ)`` as floats, checked against the constraint table (set_params may change
        them after fit, and the search passes grid values)."""
        table = cls._parameter_constraints
        return (float(check_param(beta, "beta", table["beta"])),
                float(check_param(lam, "lam", table["lam"])))

    def _fit(self, image_features, labels, text_features, patch_features=None) -> None:
        self._fit_common(image_features, labels, text_features, patch_features)
        keys = self._torch.support_features_
        if self.projector_ is not None:
            keys = self._views(keys, {"vision"})["vision"]
        self._torch.keys_ = keys
        self._solution_memo: dict = {}

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
        """``A = (G/λ + I)⁻¹ R = λ (G + λ I)⁻¹ R`` ``[N, C]`` in ``dtype_`` (remembered for the
        latest ``(β, λ, routing)``)."""
        key = (beta, lam, routing)
        if key not in self._solution_memo:
            keys = self._torch.keys_.to(torch.float64)
            solve = _ridge_solver(rbf_gram(keys, keys, beta), lam, overwrite=True)
            solution = solve(self._residual(routing))
            self._solution_memo.clear()  # one entry: the latest (beta, lam, routing); memo, not state
            self._solution_memo[key] = solution.to(self.dtype_)
        return self._solution_memo[key]

    # ---- logits ---------------------------------------------------------------------------

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        beta, lam = self._hyper(self.beta, self.lam)
        scale = check_real(self.logit_scale, "logit_scale")
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

    def search_counts(self, val_features: torch.Tensor, val_labels: torch.Tensor,
                       axes: Mapping[str, np.ndarray], routings: list[str]) -> np.ndarray:
        """Correct validation predictions ``[R, B, L]`` for every routing and every
        ``(axes["beta"], axes["lam"])``.

        Per β, ``G`` is built once and shared by every routing (it depends on the keys alone).
        ``search_solver`` "eigh": ``G = V diag(e) Vᵀ`` in float64 (about ``3 N²`` doubles with the
        workspace), ``Q = Vᵀ R`` and, per chunk of queries, ``k(x, X) V``; then each λ costs one
        ``[m, N] @ [N, C]`` product. "cholesky": per λ one factorisation of ``G + λ I`` (about
        ``3 N²`` doubles with ``G``), ``A`` for each routing and ``k(x, X) A`` per chunk. The best
        point's ``A`` is kept so that the first prediction after the search needs no new
        factorisation."""
        self._check_fitted()
        betas = [float(b) for b in axes["beta"]]
        lams = [float(v) for v in axes["lam"]]
        for beta in betas:
            for lam in lams:
                self._hyper(beta, lam)
        scale = check_real(self.logit_scale, "logit_scale")
        x = self._queries(val_features)
        keys = self._torch.keys_.to(torch.float64)
        per_routing = []
        for routing in routings:  # the routing's zero-shot cosines, kernel queries, residual
            views = self._views(x, self._needed_views(routing))
            per_routing.append((self._cosines(views, routing).to(torch.float64),
                                views[self._route(routing)[2]].to(torch.float64),
                                self._residual(routing)))
        solver = search_solver_for(self.search_solver, n_samples=keys.shape[0],
                                   n_classes=len(self.classes_), n_queries=x.shape[0],
                                   dim=keys.shape[1], n_lams=len(lams))
        rows = max(1, _SEARCH_CHUNK_ELEMENTS // max(keys.shape[0], 1))
        chunks = [slice(start, start + rows) for start in range(0, x.shape[0], rows)]
        correct = np.zeros((len(routings), len(betas), len(lams)), dtype=np.int64)
        best: dict = {}  # routing index -> (count, key, solution)

        def keep_if_best(r: int, b: int, i: int, solution: Callable[[], torch.Tensor]) -> None:
            if correct[r, b, i] > best.get(r, (-1,))[0]:  # first maximum in (beta, lam) order
                best[r] = (int(correct[r, b, i]), (betas[b], lams[i], routings[r]),
                           solution().to(self.dtype_))

        from ssp._utils.progress import step_bar

        bar = step_bar(len(betas) * len(lams), "ProKeR search", "point")
        for b, beta in enumerate(betas):
            gram = rbf_gram(keys, keys, beta)
            if solver == "eigh":
                eigenvalues, vectors = torch.linalg.eigh(gram)
                del gram
                eigenvalues = eigenvalues.clamp_min(0.0)  # G is positive semi-definite
                shrink = [lam / (eigenvalues + lam) for lam in lams]
                for r, (cosines, query, residual) in enumerate(per_routing):
                    projected = vectors.T @ residual                                  # Q [N, C]
                    for rows_ in chunks:
                        basis = rbf_gram(query[rows_], keys, beta) @ vectors         # [m, N]
                        for i, weights in enumerate(shrink):
                            logits = scale * (cosines[rows_] + basis @ (weights[:, None] * projected))
                            correct[r, b, i] += int((logits.argmax(1) == val_labels[rows_]).sum())
                        del basis
                    i = int(np.argmax(correct[r, b]))
                    keep_if_best(r, b, i, lambda: vectors @ (shrink[i][:, None] * projected))
                    del projected
                del vectors
                bar.update(len(lams))
            else:
                for i, lam in enumerate(lams):
                    solve = _ridge_solver(gram, lam, overwrite=False)
                    for r, (cosines, query, residual) in enumerate(per_routing):
                        solution = solve(residual)                                    # A [N, C]
                        for rows_ in chunks:
                            logits = scale * (cosines[rows_] + rbf_gram(query[rows_], keys, beta) @ solution)
                            correct[r, b, i] += int((logits.argmax(1) == val_labels[rows_]).sum())
                        keep_if_best(r, b, i, lambda: solution)
                        del solution
                    del solve
                    bar.update(1)
                del gram
        bar.close()
        if best:  # keep the overall winner's solution (first maximum in routing order)
            top = max(v[0] for v in best.values())
            winner = min(r for r, v in best.items() if v[0] == top)
            self._solution_memo.clear()
            self._solution_memo[best[winner][1]] = best[winner][2]
        return correct
