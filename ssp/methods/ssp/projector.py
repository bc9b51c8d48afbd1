"""SSPProjector: the vision subspace and the per-class language subspaces of SSP (Zhu et al.,
"Selective Vision-Language Subspace Projection for Few-shot CLIP", ACM MM 2024, Sec. 3).

Fit on the support set (patch features, labels, global image features, text classifier):

1. Selection. For support image ``n`` keep the ``k = min(patch_top_k, L)`` local features with
   the largest vision scores ``<z_nj, g_n>`` and, separately, the ``k`` with the largest
   language scores ``<z_nj, w_{y_n}>``.
2. Vision subspace (one, shared): ``m_c`` = mean over class ``c``'s images of the rows
   ``s^V_nj z_nj`` (kept ``j``) and ``lambda g_n``; economy SVD of ``M_V = [m_1..m_C]``; keep
   ``r_V`` right singular vectors ``B_V`` (``[r_V, D]``).
3. Language subspaces (one per class): ``T_c`` = rows ``s^L_nj z_nj`` (``n`` in class ``c``,
   kept ``j``) plus ``lambda w_c``; keep ``r_c`` right singular vectors ``B_c``.
4. Transforms. Vision: ``norm(B_V^T B_V x)``. Language: score every class by ``||B_c x||``, take
   the top ``kappa = min(class_top_k, C)`` classes, ``norm(mean_c B_c^T B_c x)``. Text:
   ``norm(B_c^T B_c w_c)``.

How it scales (never a ``D x D`` projector per class, never a ``C x D x T`` tensor):

* Class subspaces come from a batched ``eigh`` of the small Gram matrices ``T_c T_c^T``
  (``[C, R, R]``, ``R = k * n_c + 1``) when ``R < D`` (``T_c^T T_c`` otherwise), in class chunks
  of bounded memory; right singular vectors are recovered as ``V = T^T U / sigma``. The Gram
  squares the condition number, so it is formed and decomposed in float64 (exact products of
  the float32 data); float64 data, where no wider type exists, gets a batched economy SVD.
* The language view works on query chunks: GEMMs over blocks of classes give each query's
  energy in every class subspace (a ``[chunk, C]`` score matrix; the ``[chunk, classes, r]``
  coefficients exist one cache-sized block at a time), the scores pick the top-``kappa``
  classes, and only those are projected onto, with a few padded batched matmuls over classes
  grouped by how many queries picked them.
* When the subspaces are larger than half the space (``r > D / 2``, e.g. 512-d backbones at 16
  shots), each class is stored by its orthogonal complement ``B_perp`` instead and
  ``||P x||^2 = ||x||^2 - ||B_perp x||^2``, ``P x = x - B_perp^T B_perp x``.
* The class scores may come from a bfloat16 or TF32 screen whose rigorous per-class, per-query
  error bound leaves only the classes near each query's top-``kappa`` boundary to re-score in
  float64 (:func:`select_classes`): the selection is exact either way.
"""
from __future__ import annotations

import numbers
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from ssp._checks import SCORE_PRECISIONS
from ssp._lazy import torch
from ssp._utils.arrays import (ArrayLike, check_features, check_labels, check_text_features, like_input,
                               to_tensor)
from ssp._utils.devices import resolve_device
from ssp._utils.fitted import check_is_fitted
from ssp._utils.normalize import l2_normalize
from ssp._utils.params import Fraction, Integer, Options, Real, ValidatedFit
from ssp.methods.ssp.parallel import BLOCK_BUDGET_BYTES, lapack_threads
from ssp.methods.ssp.scoring import choose_scoring, select_classes
from ssp.methods.ssp.subspaces import batched_lapack, grouped_project, orthogonal_complements

__all__ = ["SSPProjector"]


_VIEWS = ("vision", "language")
_LANGUAGE_PATHS = ("auto", "basis", "complement")


class SSPProjector(ValidatedFit, TransformerMixin, BaseEstimator):
    """Selective vision and language subspace projection (SSP) of CLIP features.

    Parameters
    ----------
    patch_top_k : int, default 30
        Local features kept per support image for each subspace (at most ``L``).
    class_top_k : int, default 10
        Number of class subspaces averaged by the language view (at most ``C``).
    global_weight : float, default 10.0
        Weight ``lambda`` of the global image row (vision) and of the text row (language).
    rank : None, int or float, default None
        Rank of every subspace. ``None``: the numerical rank (singular values above
        ``rank_tol * sigma_max``). An int caps it. A float in (0, 1): the smallest rank whose
        cumulative ``sigma^2`` reaches that fraction of the total, also capped by the numerical
        rank.
    rank_tol : float or None, default None
        Relative tolerance of the numerical rank; ``None`` is numpy's ``matrix_rank`` rule,
        ``max(rows, D) * eps(dtype)``.
    chunk_size : int, default 4096
        Queries per chunk in :meth:`transform` (lowered automatically so the language view's
        ``[chunk, C]`` score block stays within about 256 MB; its ``[chunk, classes, r]``
        coefficients are computed 64 MB at a time).
    score_precision : {"auto", "float32", "bfloat16", "tfloat32"}, default "auto"
        How the language view scores the classes (the ``T C r D`` GEMMs that dominate its cost);
        every mode selects the same classes (docs/method.md, "Scoring precision").
        ``"float32"``: the working precision (float64 for float64 inputs). ``"bfloat16"`` /
        ``"tfloat32"``: a screen in that format (float32 accumulation), a rigorous per-class,
        per-query bound on its error, and float64 re-scoring of the classes the bound cannot
        rule out of the top ``class_top_k``: the exact top classes, ties (equal within float64
        rounding) going to the lower class index. Where the device has no native GEMMs for
        the format it is emulated (exact, not faster). ``"auto"``: fit times float32 and the
        natively supported screens on the support features and keeps the fastest (remembered per
        device and size; never an emulated screen, so float32 without any timing on CPUs
        without bfloat16 instructions). What ran: ``score_precision_used_``.
    device : str, torch.device or None
        ``None``/``"auto"``: CUDA when available, else CPU.

    Attributes
    ----------
    vision_basis_ : ``[r_V, D]`` orthonormal rows spanning the vision subspace.
    vision_rank_ : int
    class_ranks_ : ``[C]`` int64 numpy array, rank ``r_c`` of each language subspace.
    text_features_ : ``[C, D]`` language-projected, L2-normalised text classifier.
    language_path_ : ``"basis"`` or ``"complement"``, how the class subspaces are stored.
    score_precision_used_ : ``"float32"``, ``"float64"``, ``"bfloat16"`` or ``"tfloat32"``, the
        precision of the first scoring pass of the language view (see ``score_precision``).
    score_kernel_ : ``"native"``, or ``"emulated"`` when a screen was requested on hardware
        without its GEMMs (float32 GEMMs on the rounded values: exact, not faster).
    score_timings_ : dict, ms per 1,000 queries of each mode ``"auto"`` timed (empty when
        nothing was measured).
    n_patches_kept_ : int, ``k = min(patch_top_k, L)``.
    n_classes_, n_features_in_ (``D``), device_

    Array attributes are numpy when ``image_features`` was numpy, torch tensors otherwise.
    Computation is float64 when any input is float64, float32 otherwise.
    """

    # Private switch for tests and benchmarks: force the basis or the complement representation.
    _language_path: str = "auto"
    # Private hook for benchmarks: a list that collects the language view's top classes per chunk.
    _record_top: list | None = None

    # ``rank`` has the shape of PCA's ``n_components``: None, a count or a share of the energy
    _parameter_constraints = {
        "patch_top_k": [Integer(1)], "class_top_k": [Integer(1)], "global_weight": [Real(0)],
        "rank": [None, Integer(1), Fraction()], "rank_tol": [None, Real(0)], "chunk_size": [Integer(1)],
        "score_precision": [Options(SCORE_PRECISIONS)],
    }

    def __init__(
        self,
        *,
        patch_top_k: int = 30,
        class_top_k: int = 10,
        global_weight: float = 10.0,
        rank: int | float | None = None,
        rank_tol: float | None = None,
        chunk_size: int = 4096,
        score_precision: str = "auto",
        device: str | torch.device | None = None,
    ) -> None:
        self.patch_top_k = patch_top_k
        self.class_top_k = class_top_k
        self.global_weight = global_weight
        self.rank = rank
        self.rank_tol = rank_tol
        self.chunk_size = chunk_size
        self.score_precision = score_precision
        self.device = device

    # ------------------------------------------------------------------------------------ fit
    def fit(
        self,
        patch_features: ArrayLike,
        labels: ArrayLike,
        *,
        image_features: ArrayLike,
        text_features: ArrayLike,
    ) -> "SSPProjector":
        """Fit both subspaces on the support set.

        Parameters
        ----------
        patch_features : ``[N, L, D]`` local features of the support images.
        labels : ``[N]`` integer classes in ``0..C-1``, any order, any number of shots per class.
        image_features : ``[N, D]`` global features of the same images.
        text_features : ``[C, D]`` text classifier, one row per class.

        A failed fit leaves the projector unfitted (:class:`~ssp._utils.params.ValidatedFit`).
        """
        return self._validated_fit(lambda: self._fit(patch_features, labels, image_features, text_features))

    def _fit(self, patch_features: ArrayLike, labels: ArrayLike, image_features: ArrayLike,
             text_features: ArrayLike) -> None:
        device = resolve_device(self.device)
        image = check_features(image_features, "image_features")
        patches = _raw_tensor(patch_features, "patch_features", ndim=3)
        n_images, n_patches, dim = patches.shape
        if n_images == 0 or n_patches == 0 or dim == 0:
            raise ValueError(f"patch_features must be non-empty [N, L, D], got {tuple(patches.shape)}")
        dtype = _working_dtype(patches, image_features, text_features)
        image = image.to(dtype=dtype, device=device)
        text = check_text_features(text_features, dtype=dtype, device=device)
        if image.shape != (n_images, dim):
            raise ValueError(
                f"image_features has shape {tuple(image.shape)} but patch_features has shape "
                f"{tuple(patches.shape)}: expected [N, D] = [{n_images}, {dim}]"
            )
        if text.shape[1] != dim or text.shape[0] == 0:
            raise ValueError(
                f"text_features has shape {tuple(text.shape)}; expected [C, D] with D = {dim} "
                "(the width of patch_features and image_features)"
            )
        n_classes = text.shape[0]
        y = check_labels(labels, n_images, n_classes, device=device)
        counts = torch.bincount(y, minlength=n_classes)
        empty = (counts == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(
                f"class(es) {empty[:10]}{' ...' if len(empty) > 10 else ''} have no support sample; "
                f"every class 0..{n_classes - 1} of text_features needs at least one labelled image"
            )

        image = l2_normalize(image)
        text = l2_normalize(text)
        k = min(int(self.patch_top_k), n_patches)
        lam = float(self.global_weight)

        class_means, factors, class_ranks = self._fit_language_and_vision_sums(
            patches, y, counts, image, text, k, lam, device, dtype
        )
        vision_basis, vision_rank = self._fit_vision(class_means, dtype)

        # Language-projected text classifier: norm(B_c^T B_c w_c).
        coef = torch.bmm(factors, text[:, :, None])
        text_projected = l2_normalize(torch.bmm(factors.mT, coef)[:, :, 0])

        path = self._choose_language_path(class_ranks, dim)
        if path == "complement":
            factors = orthogonal_complements(factors, class_ranks)
        kappa = min(int(self.class_top_k), n_classes)
        precision, low_precision, timings = choose_scoring(
            self.score_precision, factors, image, kappa, path == "complement", device, dtype
        )

        # Set the fitted state only now that everything succeeded.
        self.device_ = device
        self.n_classes_ = n_classes
        self.n_features_in_ = dim
        self.n_patches_kept_ = k
        self._dtype = dtype
        self._vision_basis = vision_basis
        self._language_factors = factors
        self.language_path_ = path
        self._low_precision = low_precision
        self.score_precision_used_ = precision
        self.score_kernel_ = "emulated" if low_precision is not None and not low_precision.native else "native"
        self.score_timings_ = timings
        self.vision_rank_ = int(vision_rank)
        self.class_ranks_ = class_ranks.cpu().numpy().astype(np.int64)
        self.vision_basis_ = like_input(vision_basis, image_features)
        self.text_features_ = like_input(text_projected, image_features)

    def _fit_language_and_vision_sums(
        self,
        patches: torch.Tensor,
        y: torch.Tensor,
        counts: torch.Tensor,
        image: torch.Tensor,
        text: torch.Tensor,
        k: int,
        lam: float,
        device: torch.device,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One pass over class chunks: vision class means ``[C, D]``, padded class bases
        ``[C, r_max, D]`` (zero rows beyond ``r_c``) and the ranks ``[C]``."""
        n_classes, dim = text.shape
        n_patches = patches.shape[1]
        itemsize = torch.finfo(dtype).bits // 8
        order = torch.argsort(y, stable=True)  # support images grouped by class, order kept
        starts = torch.cumsum(counts, 0) - counts
        counts_list = counts.tolist()
        starts_list = starts.tolist()
        max_shots = max(counts_list)
        max_rows = max_shots * k + 1
        gram_size = min(max_rows, dim)
        rank_cap = self.rank if _is_count(self.rank) else None
        rank_bound = min(gram_size, rank_cap) if rank_cap is not None else gram_size

        per_class = itemsize * (max_shots * (2 * n_patches + k) * dim + (max_rows + gram_size) * dim)
        per_class += 8 * (max_rows * dim + gram_size * dim + 3 * gram_size * gram_size)
        in_flight = max(1, torch.get_num_threads()) if device.type == "cpu" else 1  # chunks at once
        classes_per_chunk = int(max(1, min(n_classes, BLOCK_BUDGET_BYTES // (per_class * in_flight))))

        class_sums = torch.zeros(n_classes, dim, dtype=dtype, device=device)
        factors = torch.zeros(n_classes, rank_bound, dim, dtype=dtype, device=device)
        class_ranks = torch.zeros(n_classes, dtype=torch.long, device=device)
        eps = torch.finfo(dtype).eps

        def fit_chunk(c0: int) -> None:
            c1 = min(n_classes, c0 + classes_per_chunk)
            n_cls = c1 - c0
            first, last = starts_list[c0], starts_list[c1 - 1] + counts_list[c1 - 1]
            idx = order[first:last]
            z = _take_rows(patches, idx).to(device=device, dtype=dtype)  # [n, L, D], not normalised
            inv_norm = 1.0 / torch.linalg.vector_norm(z, dim=2).clamp_min(1e-12)  # [n, L]
            g = image[idx]
            lab = y[idx]

            # Vision: per image sum_j s^V_nj z_nj over the kept j, plus lambda * g_n (z_nj unit:
            # its norm enters the scores and weights, no normalised copy of z is made).
            score_v = torch.bmm(z, g[:, :, None])[:, :, 0] * inv_norm
            # A NaN or infinity anywhere in z_nj (inf / inf after normalising) reaches its score.
            if not bool(torch.isfinite(score_v).all()):
                raise ValueError("patch_features contains NaN or infinite values; clean the features first")
            top_v = score_v.topk(k, dim=1)
            weights = torch.zeros_like(score_v).scatter_(1, top_v.indices, top_v.values) * inv_norm
            image_rows = torch.bmm(weights[:, None, :], z)[:, 0] + lam * g
            # class sums of the rows (class-sorted): a one-hot GEMM (CPU scatter-adds are slow)
            one_hot = (lab[None, :] == torch.arange(c0, c1, device=device)[:, None]).to(dtype)
            class_sums[c0:c1] += one_hot @ image_rows

            # Language: T_c = [lambda w_c; s^L_nj z_nj for n in c, kept j], zero-padded rows.
            score_l = torch.bmm(z, text[lab][:, :, None])[:, :, 0] * inv_norm
            top_l = score_l.topk(k, dim=1)
            kept = torch.gather(z, 1, top_l.indices[:, :, None].expand(-1, -1, dim))
            scale = top_l.values * torch.gather(inv_norm, 1, top_l.indices)
            rows = scale[:, :, None] * kept  # [n, k, D]
            del z, kept, score_v, score_l
            local_class = lab - c0
            slot = torch.arange(idx.numel(), device=device) - (starts[lab] - first)
            shots = max(counts_list[c0:c1])
            n_rows = shots * k + 1
            stacked = torch.zeros(n_cls, n_rows, dim, dtype=dtype, device=device)
            stacked[:, 0] = lam * text[c0:c1]
            stacked[:, 1:].view(n_cls, shots, k, dim)[local_class, slot] = rows
            del rows
            rows_per_class = counts[c0:c1] * k + 1

            basis, ranks = self._class_bases(stacked, rows_per_class, eps)
            factors[c0:c1, : basis.shape[1]] = basis
            class_ranks[c0:c1] = ranks
            del stacked, basis

        # CPU: two Python threads take alternate chunks with single-threaded BLAS/LAPACK (each
        # chunk is many mid-sized ops whose thread wake-ups dominate on shared cores); the
        # chunks are halved so that the memory in flight stays within the budget.
        chunks = list(range(0, n_classes, classes_per_chunk))
        threads = min(torch.get_num_threads(), len(chunks)) if device.type == "cpu" else 1
        if threads <= 1:
            for c0 in chunks:
                fit_chunk(c0)
        else:
            with lapack_threads(device), ThreadPoolExecutor(threads) as pool:
                list(pool.map(fit_chunk, chunks))

        r_max = int(class_ranks.max())
        if r_max < factors.shape[1]:
            factors = factors[:, :r_max].clone()
        class_means = class_sums / (counts * (k + 1)).to(dtype)[:, None]
        return class_means, factors, class_ranks

    def _class_bases(
        self, stacked: torch.Tensor, rows_per_class: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Right singular vectors of a chunk of ``T_c`` (``[c, R, D]``, zero-padded rows).

        Returns the bases ``[c, r, D]`` (rows beyond ``r_c`` are zero) and the ranks ``[c]``.

        float32 data: eigh of the Gram matrix formed in float64 (products of float32 numbers
        are exact there), so singular values are resolved down to ~1e-8 * sigma_max, far below
        the float32 rank tolerance. float64 data: a Gram cannot resolve its own tolerance
        (``sqrt(eps)`` ~ 1e-8 > ``D * eps``), so it gets a batched economy SVD instead.
        """
        n_cls, n_rows, dim = stacked.shape
        dtype = stacked.dtype
        device = stacked.device
        if dtype == torch.float64:
            _, sigma, vh = batched_lapack(lambda a: torch.linalg.svd(a, full_matrices=False), stacked)
            ranks = self._select_ranks(sigma, rows_per_class, dim, eps)
            r = int(ranks.max())
            keep = torch.arange(r, device=device)[None, :] < ranks[:, None]  # [c, r]
            return vh[:, :r] * keep[:, :, None], ranks
        wide = stacked.double()
        small = n_rows < dim  # Gram T T^T [c, R, R], else T^T T [c, D, D]
        gram = torch.bmm(wide, wide.mT) if small else torch.bmm(wide.mT, wide)
        if small and self.rank is None:
            basis = self._full_rank_bases(wide, gram, rows_per_class, eps)
            if basis is not None:
                return basis.to(dtype).contiguous(), rows_per_class.clone()
        eigval, eigvec = batched_lapack(torch.linalg.eigh, gram)
        sigma = eigval.flip(-1).clamp_min(0).sqrt()  # descending singular values
        ranks = self._select_ranks(sigma, rows_per_class, dim, eps)
        r = int(ranks.max())
        keep = torch.arange(r, device=device)[None, :] < ranks[:, None]  # [c, r]
        vectors = eigvec.flip(-1)[:, :, :r] * keep[:, None, :]
        if small:  # right singular vectors V = T^T U / sigma: [c, r, D]
            basis = torch.bmm((vectors / torch.where(keep, sigma[:, :r], 1.0)[:, None, :]).mT, wide)
        else:  # the eigenvectors of T^T T are the right singular vectors
            basis = vectors.mT
        return basis.to(dtype).contiguous(), ranks

    def _full_rank_bases(
        self, wide: torch.Tensor, gram: torch.Tensor, rows_per_class: torch.Tensor, eps: float
    ) -> torch.Tensor | None:
        """Cholesky-QR bases ``[c, R, D]`` (float64) when every ``T_c`` of the chunk provably has
        full row rank under the rank rule; ``None`` otherwise (the caller takes the eigh route).

        At the default rank (the numerical rank) the language view and the text projection use
        only ``B_c^T B_c``, the projector onto ``T_c``'s row space, which any orthonormal basis of
        it gives: ``Q^T = L^{-1} T_c`` with ``T_c T_c^T = L L^T``. A Cholesky factorisation and a
        triangular inverse cost a fraction of ``eigh``. Full rank means ``sigma_min > tol *
        sigma_max``; it is certified with ``sigma_min^2 >= 1 / ||L^{-1}||_F^2`` and ``sigma_max^2
        <= min(||G||_F, ||G||_inf)``. Zero padding rows get a unit diagonal in ``G`` (an identity
        block of ``L``; their rows of ``Q^T`` stay zero).
        """
        n_cls, n_rows, dim = wide.shape
        device = wide.device
        pad = (torch.arange(n_rows, device=device)[None, :] >= rows_per_class[:, None]).to(gram.dtype)
        padded = gram.clone()
        padded.diagonal(dim1=1, dim2=2).add_(pad)
        eye = torch.eye(n_rows, dtype=gram.dtype, device=device)

        def factor(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            chol, info = torch.linalg.cholesky_ex(g)
            return torch.linalg.solve_triangular(chol, eye.expand(g.shape[0], -1, -1), upper=False), info

        inverse, info = batched_lapack(factor, padded)  # L^{-1}
        if bool((info != 0).any()):
            return None
        inv_fro_sq = inverse.square().sum((1, 2)) - pad.sum(1)  # without the identity block
        sigma_max_sq = torch.minimum(
            torch.linalg.matrix_norm(gram), gram.abs().sum(2).amax(1)
        )
        if self.rank_tol is None:
            rel_tol = rows_per_class.clamp_min(dim).to(gram.dtype) * eps
        else:
            rel_tol = torch.full_like(sigma_max_sq, float(self.rank_tol))
        certified = inv_fro_sq * rel_tol.square() * sigma_max_sq * 1.01 < 1.0
        if not bool(certified.all()):
            return None
        return torch.bmm(inverse, wide)

    def _fit_vision(self, class_means: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
        """Economy SVD of ``M_V`` ``[C, D]`` -> orthonormal basis ``[r_V, D]`` and ``r_V``."""
        n_classes, dim = class_means.shape
        with lapack_threads(class_means.device):
            _, sigma, vh = torch.linalg.svd(class_means, full_matrices=False)
        rows = torch.tensor([n_classes], device=class_means.device)
        r = int(self._select_ranks(sigma[None].double(), rows, dim, torch.finfo(dtype).eps)[0])
        return vh[:r].contiguous(), r

    def _select_ranks(
        self, sigma: torch.Tensor, rows: torch.Tensor, dim: int, eps: float
    ) -> torch.Tensor:
        """Rank rule on descending singular values ``sigma`` ``[c, n]`` of ``[rows_c, dim]``
        matrices -> ranks ``[c]``."""
        sigma_max = sigma[:, 0]
        if self.rank_tol is None:
            rel_tol = rows.clamp_min(dim).to(sigma.dtype) * eps
        else:
            rel_tol = torch.full_like(sigma_max, float(self.rank_tol))
        numerical = (sigma > (rel_tol * sigma_max)[:, None]).sum(1)
        if self.rank is None:
            return numerical
        if _is_count(self.rank):
            return numerical.clamp_max(int(self.rank))
        energy = torch.cumsum(sigma**2, dim=1)
        reached = energy >= float(self.rank) * energy[:, -1:]
        by_energy = (~reached).sum(1) + 1
        return torch.minimum(by_energy, numerical)

    def _choose_language_path(self, class_ranks: torch.Tensor, dim: int) -> str:
        """Store bases ``[C, r_max, D]`` or complements ``[C, D - r_min, D]``, whichever is smaller."""
        forced = self._language_path
        if forced not in _LANGUAGE_PATHS:
            raise ValueError(f"_language_path must be one of {_LANGUAGE_PATHS}, got {forced!r}")
        if forced != "auto":
            return forced
        r_max, r_min = int(class_ranks.max()), int(class_ranks.min())
        return "complement" if dim - r_min < r_max else "basis"

    # ------------------------------------------------------------------------------ transform
    def transform(self, X: ArrayLike, view: str = "vision") -> ArrayLike:
        """Project features ``X`` ``[M, D]`` -> ``[M, D]`` L2-normalised, same kind as ``X``.

        ``view="vision"``: ``norm(B_V^T B_V x)``. ``view="language"``: mean projection onto the
        ``class_top_k`` class subspaces that keep most of ``x``'s energy.
        """
        if view not in _VIEWS:
            raise ValueError(f"view must be one of {_VIEWS}, got {view!r}")
        check_is_fitted(self, "vision_basis_")
        x = to_tensor(X, "X", dtype=self._dtype, device=self.device_, ndim=2)
        if x.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {x.shape[1]} features, but SSPProjector is expecting {self.n_features_in_} "
                "features as input (the D it was fitted with)"
            )
        out = torch.empty_like(x)
        if view == "vision":
            chunk = max(1, int(self.chunk_size))
            basis = self._vision_basis
            for t0 in range(0, x.shape[0], chunk):
                xs = l2_normalize(x[t0 : t0 + chunk])
                out[t0 : t0 + chunk] = l2_normalize((xs @ basis.T) @ basis)
        else:
            n_classes = self._language_factors.shape[0]
            # [t, C] blocks held at once (4-byte units): 3 (scores, selection), 10 with a screen
            # (energies, bounds, ends, candidate mask, float64 exact scores)
            held = 3 if self._low_precision is None else 10
            budget_rows = BLOCK_BUDGET_BYTES // max(1, held * n_classes * 4)
            chunk = int(max(1, min(int(self.chunk_size), budget_rows)))
            self._scoring_stats = dict(queries=0, rescored_pairs=0, ties=0)  # diagnostics
            for t0 in range(0, x.shape[0], chunk):
                out[t0 : t0 + chunk] = self._language_chunk(l2_normalize(x[t0 : t0 + chunk]))
            self._rescored_pairs = self._scoring_stats["rescored_pairs"]
        return like_input(out, X)

    def _language_chunk(self, x: torch.Tensor) -> torch.Tensor:
        """Language view of one chunk of unit queries ``[t, D]``.

        Selects each query's ``class_top_k`` classes (:func:`select_classes`: every class scored
        in blocks of classes, so no ``[t, C, r]`` tensor is held; with a screen, exactly
        re-scored where it matters), then projects onto those classes only
        (:func:`grouped_project`).
        """
        factors = self._language_factors  # [C, w, D]: bases or complements
        kappa = min(int(self.class_top_k), factors.shape[0])
        complement = self.language_path_ == "complement"
        top, rescored, ties = select_classes(x, factors, self._low_precision, kappa, complement)
        stats = self.__dict__.setdefault("_scoring_stats", dict(queries=0, rescored_pairs=0, ties=0))
        stats["queries"] += x.shape[0]
        stats["rescored_pairs"] += rescored
        stats["ties"] += ties
        if self._record_top is not None:  # benchmarks compare the selections of both paths
            self._record_top.append(top.cpu())
        summed = grouped_project(x, top, factors)  # sum_c F_c^T F_c x
        return l2_normalize(kappa * x - summed if complement else summed)

    def fit_transform(
        self,
        patch_features: ArrayLike,
        labels: ArrayLike,
        *,
        image_features: ArrayLike,
        text_features: ArrayLike,
        view: str = "vision",
    ) -> ArrayLike:
        """Fit on the support set, then project its global features.

        Takes exactly :meth:`fit`'s arguments plus ``view`` and returns
        ``transform(image_features, view=view)``: the projected support features ``[N, D]``.
        ``patch_features`` ``[N, L, D]`` only shape the subspaces and are not returned projected
        (the projector maps global ``[M, D]`` features).
        """
        if view not in _VIEWS:
            raise ValueError(f"view must be one of {_VIEWS}, got {view!r}")
        self.fit(patch_features, labels, image_features=image_features, text_features=text_features)
        return self.transform(image_features, view=view)


# -------------------------------------------------------------------------------- helpers
def _is_count(rank: Any) -> bool:
    """``rank`` (validated) caps the rank at a count (else None or a share of the energy)."""
    return isinstance(rank, numbers.Integral)


def _take_rows(patches: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``patches[idx]``; a view when ``idx`` is a contiguous range (class-major input)."""
    start = int(idx[0])
    if bool((idx == torch.arange(start, start + idx.numel(), device=idx.device)).all()):
        return patches[start : start + idx.numel()]
    return patches[idx.to(patches.device)]  # advanced indexing: much faster than index_select on 3-D


def _raw_tensor(x: ArrayLike, name: str, *, ndim: int) -> torch.Tensor:
    """A floating tensor view of ``x`` without copying (big inputs are converted chunk-wise)."""
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        t = x.detach()
    elif isinstance(x, np.ndarray) and x.dtype.kind == "f":
        t = torch.as_tensor(x)
    else:  # integers, objects, array-likes, sparse, complex: the shared conversion and its errors
        t = to_tensor(x, name)
        if not t.is_floating_point():
            t = t.to(torch.float32)
    if t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions [N, L, D], got shape {tuple(t.shape)}")
    return t


def _working_dtype(*inputs: Any) -> torch.dtype:
    """float64 when any input is float64, else float32."""
    for x in inputs:
        dt = getattr(x, "dtype", None)
        if dt in (torch.float64, np.float64):
            return torch.float64
    return torch.float32
