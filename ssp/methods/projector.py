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
  float64 (:func:`_select_classes`): the selection is exact either way.
"""
from __future__ import annotations

import contextlib
import numbers
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from ssp._checks import SCORE_PRECISIONS, check_int, check_real
from ssp._lazy import torch
from ssp._utils import (
    ArrayLike,
    check_features,
    check_is_fitted,
    check_labels,
    check_text_features,
    l2_normalize,
    like_input,
    resolve_device,
    to_tensor,
)

__all__ = ["SSPProjector"]

# Memory budget (bytes) for the largest temporary block of one step: a class chunk at fit time,
# the [chunk, C] score block and the gathered bases of the language transform.
_BLOCK_BUDGET_BYTES = 512 * 2**20
# Budget for one [chunk, classes, r] coefficient block while scoring the language view: small
# enough to stay cache-friendly and to never hold all C classes' coefficients at once.
_SCORE_BLOCK_BYTES = 64 * 2**20

_VIEWS = ("vision", "language")
# Devices where the projection and the float64 re-scoring run one GEMM pair per picked class
# (elsewhere: padded batched matmuls over groups of classes, few kernel launches).
_PER_CLASS_DEVICES = ("cpu",)
_LANGUAGE_PATHS = ("auto", "basis", "complement")


class SSPProjector(TransformerMixin, BaseEstimator):
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
        natively supported screens on the support features and keeps the fastest (cached per
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
        """
        self._validate_params()
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
            factors = _orthogonal_complements(factors, class_ranks)
        kappa = min(int(self.class_top_k), n_classes)
        precision, low_precision, timings = _choose_scoring(
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
        return self

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
        rank_cap = self.rank if _is_positive_int(self.rank) else None
        rank_bound = min(gram_size, rank_cap) if rank_cap is not None else gram_size

        per_class = itemsize * (max_shots * (2 * n_patches + k) * dim + (max_rows + gram_size) * dim)
        per_class += 8 * (max_rows * dim + gram_size * dim + 3 * gram_size * gram_size)
        in_flight = max(1, torch.get_num_threads()) if device.type == "cpu" else 1  # chunks at once
        classes_per_chunk = int(max(1, min(n_classes, _BLOCK_BUDGET_BYTES // (per_class * in_flight))))

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
            with _lapack_threads(device), ThreadPoolExecutor(threads) as pool:
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
            _, sigma, vh = _batched_lapack(lambda a: torch.linalg.svd(a, full_matrices=False), stacked)
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
        eigval, eigvec = _batched_lapack(torch.linalg.eigh, gram)
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

        inverse, info = _batched_lapack(factor, padded)  # L^{-1}
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
        with _lapack_threads(class_means.device):
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
        if _is_positive_int(self.rank):
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
            budget_rows = _BLOCK_BUDGET_BYTES // max(1, held * n_classes * 4)
            chunk = int(max(1, min(int(self.chunk_size), budget_rows)))
            self._scoring_stats = dict(queries=0, rescored_pairs=0, ties=0)  # diagnostics
            for t0 in range(0, x.shape[0], chunk):
                out[t0 : t0 + chunk] = self._language_chunk(l2_normalize(x[t0 : t0 + chunk]))
            self._rescored_pairs = self._scoring_stats["rescored_pairs"]
        return like_input(out, X)

    def _language_chunk(self, x: torch.Tensor) -> torch.Tensor:
        """Language view of one chunk of unit queries ``[t, D]``.

        Selects each query's ``class_top_k`` classes (:func:`_select_classes`: every class scored
        in blocks of classes, so no ``[t, C, r]`` tensor is held; with a screen, exactly
        re-scored where it matters), then projects onto those classes only
        (:func:`_grouped_project`).
        """
        factors = self._language_factors  # [C, w, D]: bases or complements
        kappa = min(int(self.class_top_k), factors.shape[0])
        complement = self.language_path_ == "complement"
        top, rescored, ties = _select_classes(x, factors, self._low_precision, kappa, complement)
        stats = self.__dict__.setdefault("_scoring_stats", dict(queries=0, rescored_pairs=0, ties=0))
        stats["queries"] += x.shape[0]
        stats["rescored_pairs"] += rescored
        stats["ties"] += ties
        if self._record_top is not None:  # benchmarks compare the selections of both paths
            self._record_top.append(top.cpu())
        summed = _grouped_project(x, top, factors)  # sum_c F_c^T F_c x
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

    # ------------------------------------------------------------------------------ checks
    def _validate_params(self) -> None:
        for name in ("patch_top_k", "class_top_k", "chunk_size"):
            check_int(getattr(self, name), name)
        check_real(self.global_weight, "global_weight", minimum=0.0)
        rank = self.rank
        if not (rank is None or _is_positive_int(rank) or _is_fraction(rank)):
            raise ValueError(
                f"rank must be None (numerical rank), a positive int (cap) or a float in (0, 1) "
                f"(fraction of spectral energy); got {rank!r}"
            )
        if self.score_precision not in SCORE_PRECISIONS:
            raise ValueError(
                f"score_precision must be one of {SCORE_PRECISIONS}, got {self.score_precision!r}"
            )
        tol = self.rank_tol
        if tol is not None and (
            isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not np.isfinite(tol) or tol < 0
        ):
            raise ValueError(f"rank_tol must be None or a finite float >= 0, got {tol!r}")


# ------------------------------------------------------------------ exact low-precision scoring
_BF16_UNIT = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits, round to nearest)
_TF32_UNIT = 2.0**-11  # TF32: 11 significant bits
_F32_UNIT = 2.0**-24
_F64_UNIT = 2.0**-53
# Queries per probe of the auto calibration (support features stand in for queries).
_PROBE_ROWS = {"cuda": 2048, "cpu": 128}
# In-memory calibration results: (device, threads, working dtype, C, w, D, kappa) -> timings.
_CALIBRATION: dict[tuple, dict[str, float]] = {}
_CALIBRATION_ENV = "SSP_SCORE_CALIBRATION"  # "1": also keep them in the user cache dir; a path: there


def _round_tf32(a: torch.Tensor) -> torch.Tensor:
    """float32 values rounded to nearest (ties to even) to TF32's 10 fraction bits, as float32.

    A TF32 tensor-core GEMM on these values rounds nothing on input (whatever its own input
    rounding), and their products are exact in float32 (11 + 11 significant bits)."""
    bits = a.contiguous().view(torch.int32)
    bits = (bits + (0x0FFF + ((bits >> 13) & 1))).bitwise_and_(-8192)  # clear the low 13 bits
    return bits.view(torch.float32)


@dataclass(frozen=True)
class _Screen:
    """A low-precision format for the first scoring pass: how operands are rounded and stored."""

    name: str
    unit: float

    def round(self, a: torch.Tensor) -> torch.Tensor:
        return a.to(torch.bfloat16) if self.name == "bfloat16" else _round_tf32(a.float())

    def native(self, device: torch.device) -> bool:
        """Whether ``device`` runs this format's GEMMs natively (faster than float32)."""
        if self.name == "bfloat16":
            return _fast_bfloat16(device)
        return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


_SCREENS = {
    "bfloat16": _Screen("bfloat16", _BF16_UNIT),
    "tfloat32": _Screen("tfloat32", _TF32_UNIT),
}


def _resolve_score_precision(
    requested: str, device: torch.device, dtype: torch.dtype, measure: Any = None
) -> str:
    """``score_precision`` -> what runs: a screen's name or the working precision's name.

    ``"auto"`` measures (``measure(candidates)`` -> seconds per candidate) among the working
    precision and the screens this device runs natively; emulated screens are never candidates.
    Without a native screen, or for float64 data, it is the working precision without timing.
    """
    working = "float64" if dtype == torch.float64 else "float32"
    if requested == "float32":
        return working
    if requested != "auto":
        return requested
    candidates = [name for name, screen in _SCREENS.items() if screen.native(device)]
    if dtype == torch.float64 or not candidates or measure is None:
        return working
    timings = measure([working, *candidates])
    return min(timings, key=timings.get)


def _fast_bfloat16(device: torch.device) -> bool:
    """Whether bfloat16 GEMMs run natively on ``device`` (CUDA with bfloat16 support, CPUs with
    AMX-BF16 / AVX512-BF16); elsewhere they are emulated and slow."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    return bool(_cpu_flags() & {"amx_bf16", "avx512_bf16"})


def _cpu_flags() -> set[str]:
    """CPU feature flags from ``/proc/cpuinfo`` (empty where it is unavailable)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _device_key(device: torch.device) -> str:
    """A name for the hardware behind ``device`` (calibration cache key)."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return f"cpu:{model or 'unknown'}:{torch.get_num_threads()} threads"


def _calibration_file() -> Any:
    """Where calibrations persist (``None``: memory only). Opt-in via ``SSP_SCORE_CALIBRATION``."""
    import os
    from pathlib import Path

    value = os.environ.get(_CALIBRATION_ENV, "")
    if value in ("", "0"):
        return None
    if value != "1":
        return Path(value)
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "ssp" / "score_precision.json"


def _load_calibration(key: tuple) -> dict[str, float] | None:
    if key in _CALIBRATION:
        return _CALIBRATION[key]
    path = _calibration_file()
    if path is None or not path.is_file():
        return None
    import json

    try:
        stored = json.loads(path.read_text()).get(repr(key))
    except (OSError, ValueError):
        return None
    if isinstance(stored, dict):
        _CALIBRATION[key] = {str(k): float(v) for k, v in stored.items()}
    return _CALIBRATION.get(key)


def _store_calibration(key: tuple, timings: dict[str, float]) -> None:
    _CALIBRATION[key] = dict(timings)
    path = _calibration_file()
    if path is None:
        return
    import json

    from ssp._io import write_text_atomic

    try:
        stored = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        stored = {}
    stored[repr(key)] = timings
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(stored, indent=1, sort_keys=True))
    except OSError:
        pass  # a read-only cache dir: memory only


@contextlib.contextmanager
def _matmul_mode(device: torch.device, tf32: bool = False) -> Iterator[None]:
    """GEMMs accumulate in float32 and float32 GEMMs are true float32 (``tf32=False``) or TF32
    (``tf32=True``) inside; cuBLAS may otherwise reduce split-K partial sums in bfloat16 or run
    float32 GEMMs in TF32, which the error bound of :class:`_LowPrecisionScores` does not cover."""
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    flags = (matmul.allow_bf16_reduced_precision_reduction, matmul.allow_tf32)
    matmul.allow_bf16_reduced_precision_reduction = False
    matmul.allow_tf32 = tf32
    try:
        yield
    finally:
        matmul.allow_bf16_reduced_precision_reduction, matmul.allow_tf32 = flags


def _gamma(n: int, unit: float) -> float:
    """``gamma_n = n u / (1 - n u)``: bound on the relative error of any n-term float sum."""
    return n * unit / (1.0 - n * unit)


_MM_OUT_DTYPE: dict[str, bool] = {}


def _mm_float32_out(device: torch.device) -> bool:
    """Whether ``torch.mm(bf16, bf16, out_dtype=torch.float32)`` works on ``device`` (CUDA in
    recent torch): float32 coefficients, no bfloat16 rounding of the output."""
    if device.type not in _MM_OUT_DTYPE:
        try:
            a = torch.ones(2, 2, dtype=torch.bfloat16, device=device)
            _MM_OUT_DTYPE[device.type] = torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
        except (TypeError, RuntimeError, NotImplementedError):
            _MM_OUT_DTYPE[device.type] = False
    return _MM_OUT_DTYPE[device.type]


@dataclass
class _LowPrecisionScores:
    """Low-precision copy of the class factors and the per-class constants of its error bound.

    ``operand`` is ``F~ = round(F)`` as ``[D, C w]`` contiguous (the GEMM's ``[K, N]`` operand,
    arranged once at fit time) in bfloat16, or for TF32 a ``[D, C w]`` view of the float32
    factors that each block's GEMM rounds on the fly (no second copy); ``native``: the device runs that format's
    GEMMs natively (else float32 GEMMs on the rounded values: same exact products, same float32
    sums, no speed-up); ``out_unit``: rounding unit of the GEMM's output (``2^-8`` where a
    bfloat16 GEMM returns bfloat16, else 0); ``rho`` ``>= ||F~_c - F_c||_2`` (the actual rounding
    of each class's factor), ``norm`` ``>= ||F_c||_2``, ``fro_low`` ``= ||F~_c||_F``, each ``[C]``
    in float64.
    """

    screen: _Screen
    operand: torch.Tensor
    native: bool
    out_unit: float
    rho: torch.Tensor
    norm: torch.Tensor
    fro_low: torch.Tensor

    @classmethod
    def build(cls, factors: torch.Tensor, screen: _Screen) -> "_LowPrecisionScores":
        n_classes, width, dim = factors.shape
        device = factors.device
        stored = screen.name == "bfloat16"  # TF32 rounds each block on the fly: no second copy
        if stored:
            operand = torch.empty(dim, n_classes * width, dtype=torch.bfloat16, device=device)
        else:
            operand = factors.reshape(n_classes * width, dim).T  # a view
        rho, norm, fro_low = (torch.empty(n_classes, dtype=torch.float64, device=device) for _ in range(3))
        per_class = 4 * factors.element_size() * (2 * width * dim + 2 * width * width)
        step = int(max(1, min(n_classes, _BLOCK_BUDGET_BYTES // max(per_class, 1))))  # width 0: no rows
        for c0 in range(0, n_classes, step):
            c1 = min(n_classes, c0 + step)
            block = factors[c0:c1]
            low = screen.round(block)
            if stored:
                operand[:, c0 * width : c1 * width] = low.reshape(-1, dim).T
            low = low.to(block.dtype)
            error = low - block  # exact: the rounding error of a float32 number fits a float32
            rho[c0:c1] = _spectral_norm_bound(error, shift=None)
            valid = (block.abs().amax(dim=2) > 0).to(block.dtype)  # zero padding rows stay out
            norm[c0:c1] = (1.0 + _spectral_norm_bound(block, shift=valid)).sqrt()
            fro_low[c0:c1] = torch.linalg.vector_norm(low.double(), dim=(1, 2))
        native = screen.native(device)
        out_unit = 0.0
        if screen.name == "bfloat16" and native and not _mm_float32_out(device):
            out_unit = _BF16_UNIT
        return cls(screen, operand, native, out_unit, rho, norm, fro_low)

    @classmethod
    def bare(cls, factors: torch.Tensor, screen: _Screen) -> "_LowPrecisionScores":
        """The rounded operand alone, without the bound's constants (to time the GEMM)."""
        n_classes, width, dim = factors.shape
        flat = factors.reshape(n_classes * width, dim)
        operand = screen.round(flat).T.contiguous() if screen.name == "bfloat16" else flat.T
        none = torch.zeros(n_classes, dtype=torch.float64, device=factors.device)
        native = screen.native(factors.device)
        out_unit = _BF16_UNIT if screen.name == "bfloat16" and native and not _mm_float32_out(factors.device) else 0.0
        return cls(screen, operand, native, out_unit, none, none, none)

    def energies(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Screened energies ``[t, C]`` (float32) of unit queries ``x`` ``[t, D]`` and the rounded
        queries ``x~`` ``[t, D]`` (working dtype) they used."""
        x_low = self.screen.round(x)
        n_classes = self.rho.shape[0]
        width = self.operand.shape[1] // max(n_classes, 1)
        if self.native and self.screen.name == "bfloat16" and self.out_unit == 0.0:
            mm = lambda a, b, out: torch.mm(a, b, out_dtype=torch.float32)  # noqa: E731
            energy = _class_energies(x_low, self.operand, width, n_classes, out_dtype=torch.float32, mm=mm)
        elif self.screen.name == "tfloat32":  # the view of the factors, rounded block by block
            mm = lambda a, b, out: torch.matmul(a, _round_tf32(b), out=out)  # noqa: E731
            with _matmul_mode(x.device, tf32=True):
                energy = _class_energies(x_low, self.operand, width, n_classes, out_dtype=torch.float32, mm=mm)
        else:
            compute = None if self.native else torch.float32  # emulated: float32 GEMMs
            with _matmul_mode(x.device):
                energy = _class_energies(x_low, self.operand, width, n_classes,
                                         out_dtype=torch.float32, compute_dtype=compute)
        return energy, x_low.to(x.dtype)

    def energy_bound(
        self, energy: torch.Tensor, x_low_norm: torch.Tensor, x_diff_norm: torch.Tensor
    ) -> torch.Tensor:
        """Bound ``beta`` ``[t, C]`` with ``|energy - E| <= beta``, ``E = ||F_c x||^2`` exactly.

        ``energy`` ``[t, C]`` from the screened GEMM; ``x_low_norm``, ``x_diff_norm`` ``[t]`` are
        ``||x~||`` and ``||x~ - x||``. With ``a = F x`` and ``a~`` the screened coefficients
        (exact products, float32 accumulation over ``D`` terms, output rounded with ``out_unit``):

        ``||a~ - a|| <= delta = rho ||x~|| + ||F|| ||x~ - x|| + gamma_D ||F~||_F ||x~||
        + out_unit ||a~|| / (1 - out_unit)``, so ``| ||a~||^2 - ||a||^2 | <= delta (2 ||a~|| +
        delta)``; the float32 squared norm of ``a~`` adds ``(w + 2) u`` relative. ``rho`` is the
        spectral norm of this class's actual rounding error, ``||x~ - x||`` this query's. Every
        evaluation of the bound itself is rounded up by a relative ``1e-3`` (its own rounding is
        ``<= (D + w + 2) 2^-24``).
        """
        n_classes = self.rho.shape[0]
        width = self.operand.shape[1] // max(n_classes, 1)
        dim = self.operand.shape[0]
        bits = _F32_UNIT * (width + 2)  # rounding of the float32 squared norm of a~
        safety = 1.0 + 1e-3
        e = energy.clamp_min(0)
        a_low = (e / (1.0 - bits)).sqrt()  # >= ||a~||
        x_low_norm = x_low_norm[:, None] * safety
        delta = (
            self.rho.to(e.dtype) * x_low_norm
            + self.norm.to(e.dtype) * (x_diff_norm[:, None] * safety)
            + _gamma(dim, _F32_UNIT) * self.fro_low.to(e.dtype) * x_low_norm
            + self.out_unit / (1.0 - self.out_unit) * a_low
        ) * safety
        return (bits * a_low.square() + delta * (2 * a_low + delta)) * safety


def _spectral_norm_bound(a: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
    """Rigorous upper bounds ``[c]`` (float64) on ``||A_i||_2`` (``shift=None``) or on
    ``||A_i A_i^T - diag(shift_i)||_2`` (``shift`` ``[c, w]``), ``a`` ``[c, w, D]``.

    ``G = fl(A A^T) - diag(shift)`` is within ``gamma_D ||A||_F^2`` of the exact one (spectral
    norm); for symmetric ``G``, ``||G||_2^2 = ||G^2||_2 <= ||G^2||_F`` and ``fl(G G)`` is within
    ``gamma_w ||G||_F^2`` of ``G^2`` in the Frobenius norm.
    """
    n, width, dim = a.shape
    unit = torch.finfo(a.dtype).eps / 2
    fro_sq = torch.linalg.vector_norm(a.double(), dim=(1, 2)).square()
    gram = torch.bmm(a, a.mT)
    if shift is not None:
        gram.diagonal(dim1=1, dim2=2).sub_(shift)
    gram_fro_sq = torch.linalg.vector_norm(gram.double(), dim=(1, 2)).square()
    square = torch.bmm(gram, gram)
    square_fro = torch.linalg.vector_norm(square.double(), dim=(1, 2))
    g_norm = (square_fro + _gamma(width, unit) * gram_fro_sq).sqrt()
    bound = (g_norm + _gamma(dim, unit) * fro_sq) * (1.0 + 1e-6)
    return bound if shift is not None else bound.sqrt()


def _top_classes(scores: torch.Tensor, kappa: int, tol: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``[t, kappa]`` of the ``kappa`` largest scores per row and the rows ``[n]`` where
    the ``kappa``-th score ties (within ``tol``) with a score outside the selection.

    Tied scores are resolved towards the lower class index (``topk`` alone leaves that order
    unspecified): on a tied row, scores within ``tol`` of the ``kappa``-th count as equal to it.
    """
    top = scores.topk(kappa, dim=1)
    if kappa == scores.shape[1]:
        return top.indices, top.indices.new_empty(0)
    kth = top.values[:, -1:]
    tied = ((scores >= kth - tol).sum(1) > kappa).nonzero().flatten()
    indices = top.indices
    if tied.numel():
        rows, level = scores[tied], kth[tied]
        rows = torch.where((rows - level).abs() <= tol, level, rows)
        indices = indices.clone()
        indices[tied] = torch.sort(rows, dim=1, descending=True, stable=True).indices[:, :kappa]
    return indices, tied


def _select_classes(
    x: torch.Tensor,
    factors: torch.Tensor,
    low: "_LowPrecisionScores | None",
    kappa: int,
    complement: bool,
) -> tuple[torch.Tensor, int, int]:
    """Top-``kappa`` classes ``[t, kappa]`` of unit queries ``x`` ``[t, D]``, the number of
    (query, class) pairs re-scored exactly, and the number of queries tied at the boundary.

    A class's score is its energy ``||B_c x||^2`` (basis) or ``-||B_perp x||^2`` (complement:
    the same order as ``||x||^2 - ||B_perp x||^2``). Without a screen (``low=None``) the scores
    are the working precision's. With one: screened energies of every class and a rigorous
    per-class, per-query bound ``beta`` on their error (:meth:`_LowPrecisionScores.energy_bound`);
    only the classes whose interval ``[s - beta, s + beta]`` reaches the ``kappa``-th largest
    lower end can be in the top ``kappa``, and those are re-scored in float64
    (:func:`_pair_energies`). The result is then the top ``kappa`` of the exact scores; scores
    equal to within float64 rounding count as a tie, resolved towards the lower class index
    (as :func:`_top_classes` resolves exact ties of the working-precision scores).
    """
    n_classes, width, dim = factors.shape
    if low is None:
        energy = _class_energies(x, factors.reshape(n_classes * width, dim).T, width, n_classes)
        top, tied = _top_classes(energy.neg_() if complement else energy, kappa)
        return top, 0, int(tied.numel())
    energy, x_round = low.energies(x)
    bound = low.energy_bound(
        energy,
        torch.linalg.vector_norm(x_round, dim=1),
        torch.linalg.vector_norm(x_round - x, dim=1),  # exact difference, rounded norm
    )
    approx = energy.neg_() if complement else energy
    threshold = (approx - bound).topk(kappa, dim=1).values[:, -1:]  # kappa-th lower end
    query, cls = ((approx + bound) >= threshold).nonzero(as_tuple=True)
    del approx, bound, energy
    exact = _pair_energies(x, query, cls, factors)
    exact = exact.neg_() if complement else exact
    scores = torch.full((x.shape[0], n_classes), float("-inf"), dtype=torch.float64, device=x.device)
    scores[query, cls] = exact
    # float64 rounding of an energy <= ||x||^2 (factors with orthonormal rows): (D + w + 2) u
    tol = 2.0 * (dim + width + 2) * _F64_UNIT * float(torch.linalg.vector_norm(x, dim=1).max()) ** 2
    top, tied = _top_classes(scores, kappa, tol=tol)
    return top, int(query.numel()), int(tied.numel())


def _choose_scoring(
    requested: str,
    factors: torch.Tensor,
    probe: torch.Tensor,
    kappa: int,
    complement: bool,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[str, "_LowPrecisionScores | None", dict[str, float]]:
    """What the language view's class selection runs: ``(name, screen or None, timings)``.

    ``"auto"`` times the class selection of ``probe`` (unit support features, standing in for
    queries) with every native candidate, cached per device and problem size; ``timings``
    holds seconds per 1,000 queries (empty when nothing was measured).
    """
    built: dict[str, _LowPrecisionScores] = {}

    def screen_for(name: str) -> "_LowPrecisionScores | None":
        if name not in _SCREENS:
            return None
        if name not in built:
            with _matmul_mode(device):
                built[name] = _LowPrecisionScores.build(factors, _SCREENS[name])
        return built[name]

    n_classes, width, dim = factors.shape
    key = (_device_key(device), str(dtype), n_classes, width, dim, kappa, complement)
    timings: dict[str, float] = {}

    def seconds(fn: Any) -> float:
        best = float("inf")
        for _ in range(2):  # the first run warms up kernels and allocator
            _synchronize(device)
            start = time.perf_counter()
            fn()
            _synchronize(device)
            best = min(best, time.perf_counter() - start)
        return best

    def measure(candidates: list[str]) -> dict[str, float]:
        cached = _load_calibration(key)
        if cached is not None and set(candidates) <= set(cached):
            timings.update(cached)
            return {name: cached[name] for name in candidates}
        rows = _PROBE_ROWS.get(device.type, 256)
        x = probe.repeat((rows + probe.shape[0] - 1) // probe.shape[0], 1)[:rows]
        for name in candidates:
            if name in _SCREENS:
                # a screen costs at least its GEMM: where that alone is no faster than the whole
                # working-precision selection, its bound is not worth building (its time here is
                # that of the GEMM alone, a lower bound)
                gemm = seconds(lambda: _LowPrecisionScores.bare(factors, _SCREENS[name]).energies(x))
                if gemm >= min(timings.values(), default=float("inf")) * rows / 1000.0:
                    timings[name] = 1000.0 * gemm / rows
                    continue
            low = screen_for(name)
            timings[name] = 1000.0 * seconds(lambda: _select_classes(x, factors, low, kappa, complement)) / rows
        _store_calibration(key, timings)
        return dict(timings)

    name = _resolve_score_precision(requested, device, dtype, measure)
    return name, screen_for(name), timings


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -------------------------------------------------------------------------------- helpers
def _is_positive_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= 1


def _is_fraction(value: Any) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, (bool, numbers.Integral))
        and 0.0 < float(value) < 1.0
    )


def _take_rows(patches: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``patches[idx]``; a view when ``idx`` is a contiguous range (class-major input)."""
    start = int(idx[0])
    if bool((idx == torch.arange(start, start + idx.numel(), device=idx.device)).all()):
        return patches[start : start + idx.numel()]
    return patches[idx.to(patches.device)]  # advanced indexing: much faster than index_select on 3-D


@contextlib.contextmanager
def _lapack_threads(device: torch.device) -> Iterator[None]:
    """Run CPU LAPACK decompositions single-threaded.

    Batched eigh/svd/qr loop over small matrices; their multi-threaded BLAS gains little on an
    idle machine and collapses (10-50x slower, measured) when the cores are shared with other
    processes. The previous thread count is restored afterwards.
    """
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _batched_lapack(fn: Any, batch: torch.Tensor) -> Any:
    """``fn(batch)`` for a batched decomposition, on CPU split over the batch across
    ``torch.get_num_threads()`` Python threads that each run single-threaded LAPACK.

    Batched LAPACK in torch loops over the batch calling multi-threaded MKL per small matrix,
    which gains little on an idle machine and collapses under load (measured: batched ``eigh``
    of ``[20, 481, 481]`` 150-260 ms per matrix on 1 thread, 3,200-4,600 ms on 2 with the cores
    shared). Independent halves of the batch keep both cores busy without that synchronisation.
    ``fn`` returns a tensor or a tuple of tensors, batched along dim 0.
    """
    threads = min(torch.get_num_threads(), batch.shape[0]) if batch.device.type == "cpu" else 1
    with _lapack_threads(batch.device):
        if threads <= 1:
            return fn(batch)
        with ThreadPoolExecutor(threads) as pool:
            parts = list(pool.map(fn, batch.tensor_split(threads)))
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(items) for items in zip(*parts))
    return torch.cat(parts)


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


def _orthogonal_complements(bases: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """Orthonormal complements of padded bases ``[C, r_max, D]`` -> ``[C, D - r_min, D]``.

    Householder QR of ``B_c^T`` (complete mode): columns ``r_c..D-1`` of ``Q`` span the
    complement of the first ``r_c`` columns; zero rows beyond ``r_c`` do not disturb them.
    """
    n_classes, r_max, dim = bases.shape
    width = dim - int(ranks.min())
    itemsize = bases.element_size()
    per_class = 3 * dim * dim * itemsize
    step = int(max(1, min(n_classes, _BLOCK_BUDGET_BYTES // per_class)))
    out = torch.zeros(n_classes, width, dim, dtype=bases.dtype, device=bases.device)
    cols = torch.arange(width, device=bases.device)
    for c0 in range(0, n_classes, step):
        c1 = min(n_classes, c0 + step)
        with _lapack_threads(bases.device):
            q, _ = torch.linalg.qr(bases[c0:c1].mT, mode="complete")  # [c, D, D]
        r = ranks[c0:c1, None]
        index = (r + cols[None, :]).clamp_max(dim - 1)  # [c, width]
        valid = (cols[None, :] < dim - r).to(bases.dtype)
        comp = torch.gather(q, 2, index[:, None, :].expand(-1, dim, -1)) * valid[:, None, :]
        out[c0:c1] = comp.mT
    return out


def _class_energies(
    x: torch.Tensor,
    operand: torch.Tensor,
    width: int,
    n_classes: int,
    out_dtype: torch.dtype | None = None,
    compute_dtype: torch.dtype | None = None,
    mm: Any = None,
) -> torch.Tensor:
    """Energy of each query in every one of ``n_classes`` classes: ``[t, D]`` x ``[D, C w]`` -> ``[t, C]``.

    ``energy[i, c] = ||F_c x_i||^2`` from GEMMs over blocks of classes (``_SCORE_BLOCK_BYTES``
    of coefficients at a time, one reused buffer), squared norms taken in ``out_dtype``.
    ``compute_dtype``: run the GEMMs on operands cast to it (float32 for bfloat16 operands on
    hardware without bfloat16 GEMMs: the same exact products and float32 sums). ``mm(a, b, out)``
    replaces ``torch.matmul(a, b, out=out)`` (it may return a new tensor of another dtype).
    """
    if compute_dtype is not None and compute_dtype != x.dtype:
        x = x.to(compute_dtype)
    t, dim = x.shape
    out_dtype = out_dtype or x.dtype
    if width == 0:  # every class spans the whole space: no complement directions, zero energy
        return torch.zeros(t, n_classes, dtype=out_dtype, device=x.device)
    energy = torch.empty(t, n_classes, dtype=out_dtype, device=x.device)
    step = int(max(1, min(n_classes, _SCORE_BLOCK_BYTES // max(1, t * width * x.element_size()))))
    starts = list(range(0, n_classes, step))

    def run(part: list[int]) -> None:
        buffer = torch.empty(t * step * width, dtype=x.dtype, device=x.device)  # reused per block
        for c0 in part:
            c1 = min(n_classes, c0 + step)
            coef = buffer[: t * (c1 - c0) * width].view(t, (c1 - c0) * width)
            block = operand[:, c0 * width : c1 * width].to(x.dtype)
            if mm is None:
                torch.matmul(x, block, out=coef)
            else:
                coef = mm(x, block, coef)
            blocks = coef.view(t, c1 - c0, width).to(out_dtype)
            energy[:, c0:c1] = torch.linalg.vector_norm(blocks, dim=2).square_()

    threads = min(torch.get_num_threads(), len(starts)) if x.device.type in _PER_CLASS_DEVICES else 1
    if threads <= 1:
        run(starts)
    else:  # CPU: independent single-threaded GEMMs per Python thread (no barrier between cores)
        with _lapack_threads(x.device), ThreadPoolExecutor(threads) as pool:
            list(pool.map(run, [starts[i::threads] for i in range(threads)]))
    return energy


def _class_groups(
    pair_class: torch.Tensor, n_classes: int, width: int, dim: int, itemsize: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]]:
    """Group (query, class) pairs by class for padded batched matmuls.

    Classes picked a similar number of times (within a factor 2) share one group, so the padded
    work is at most twice the pairs' own. Yields ``(classes [g], pairs, rows, slots, most)``:
    pair ``pairs[i]`` goes to row ``slots[i]`` of group member ``rows[i]``, ``most`` rows each.
    """
    device = pair_class.device
    n_pairs = pair_class.numel()
    order = torch.argsort(pair_class, stable=True)
    sorted_class = pair_class[order]
    counts = torch.bincount(sorted_class, minlength=n_classes)
    slot = torch.arange(n_pairs, device=device) - (torch.cumsum(counts, 0) - counts)[sorted_class]
    present = counts.nonzero().flatten()
    present_counts, perm = counts[present].sort(descending=True)
    present = present[perm]
    counts_list = present_counts.tolist()
    local = torch.full((n_classes,), -1, dtype=torch.long, device=device)
    i = 0
    while i < len(counts_list):
        most = counts_list[i]
        per_class = (width * dim + most * (width + 2 * dim)) * itemsize
        limit = max(1, _BLOCK_BUDGET_BYTES // per_class)
        j = i + 1
        while j < len(counts_list) and j - i < limit and 2 * counts_list[j] > most:
            j += 1
        group = present[i:j]
        local[group] = torch.arange(j - i, device=device)
        pair_local = local[sorted_class]
        sel = (pair_local >= 0).nonzero().flatten()
        yield group, order[sel], pair_local[sel], slot[sel], most
        local[group] = -1
        i = j


def _class_ranges(pair_class: torch.Tensor, n_classes: int) -> Iterator[tuple[int, int, int]]:
    """``(c, start, stop)`` for every class ``c`` picked by some pair: its pairs are
    ``argsort(pair_class, stable=True)[start:stop]``."""
    start = 0
    for c, n in enumerate(torch.bincount(pair_class, minlength=n_classes).tolist()):
        if n:
            yield c, start, start + n
            start += n


def _split_classes(fn: Any, ranges: list[tuple[int, int, int]]) -> None:
    """``fn(part)`` on contiguous parts of ``ranges`` (``(c, start, stop)``, balanced by pairs)
    across ``torch.get_num_threads()`` Python threads running single-threaded BLAS (CPU).

    Per-class GEMMs are small: one multi-threaded BLAS call each pays a thread wake-up that costs
    more than the GEMM when the cores are shared (measured ~20 ms per call under load); parts
    of the class list in parallel keep the cores busy without it. ``fn`` writes disjoint rows.
    """
    threads = min(torch.get_num_threads(), len(ranges))
    if threads <= 1:
        fn(ranges)
        return
    total = sum(stop - start for _, start, stop in ranges)
    parts: list[list[tuple[int, int, int]]] = [[]]
    done = 0
    for item in ranges:
        if done >= total * len(parts) / threads and len(parts) < threads:
            parts.append([])
        parts[-1].append(item)
        done += item[2] - item[1]
    with _lapack_threads(torch.device("cpu")), ThreadPoolExecutor(len(parts)) as pool:
        list(pool.map(fn, parts))


def _grouped_project(x: torch.Tensor, classes: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """``out[t] = sum_j F_c^T F_c x_t`` with ``c = classes[t, j]``, touching only picked classes.

    ``x`` ``[t, D]``, ``classes`` ``[t, kappa]``, ``factors`` ``[C, w, D]`` -> ``[t, D]``.
    ``4 * pairs * w * D`` flops at most, ``2 kappa / C`` of the scoring cost. On CPU one pair of
    GEMMs per picked class writing its rows contiguously, summed per query by ``kappa`` gathers
    (BLAS runs these faster than padded batches, and CPU scatter-adds are slow); elsewhere pairs
    are grouped by class into padded batched matmuls (:func:`_class_groups`: few launches).
    """
    t, kappa = classes.shape
    n_classes, width, dim = factors.shape
    out = torch.zeros(t, dim, dtype=x.dtype, device=x.device)
    flat = classes.reshape(-1)
    if x.device.type in _PER_CLASS_DEVICES:  # each class's rows land contiguously: no scatter-add
        order = torch.argsort(flat, stable=True)
        rows = x[order // kappa]  # [P, D], class by class

        def project(ranges: list[tuple[int, int, int]]) -> None:
            for c, start, stop in ranges:
                torch.mm(rows[start:stop] @ factors[c].T, factors[c], out=rows[start:stop])

        _split_classes(project, list(_class_ranges(flat, n_classes)))
        position = torch.empty_like(order)
        position[order] = torch.arange(order.numel(), device=x.device)
        position = position.view(t, kappa)
        for j in range(kappa):  # kappa [t, D] gathers: no second [t kappa, D] buffer
            out += rows[position[:, j]]
        return out
    for group, pairs, rows, slots, most in _class_groups(flat, n_classes, width, dim, x.element_size()):
        queries = pairs // kappa
        padded = torch.zeros(group.numel(), most, dim, dtype=x.dtype, device=x.device)
        padded[rows, slots] = x[queries]
        group_factors = factors[group]  # [g, w, D]
        coef = torch.bmm(padded, group_factors.mT)  # [g, most, w]
        recon = torch.bmm(coef, group_factors)  # [g, most, D]
        out.index_add_(0, queries, recon[rows, slots])
    return out


def _pair_energies(
    x: torch.Tensor, query: torch.Tensor, cls: torch.Tensor, factors: torch.Tensor
) -> torch.Tensor:
    """``||F_c x_q||^2`` for each pair ``(query[i], cls[i])`` in float64 -> ``[P]``.

    ``x`` ``[t, D]`` and the float32 (or float64) factors are exact in float64, so the only
    error is float64 rounding (relative ``~ D 2^-53``): the exact scores the selection rests on.
    """
    n_classes, width, dim = factors.shape
    out = torch.empty(query.numel(), dtype=torch.float64, device=x.device)
    x = x.double()
    if x.device.type in _PER_CLASS_DEVICES:  # one GEMM per class (as in _grouped_project)
        order = torch.argsort(cls, stable=True)
        rows = x[query[order]]  # [P, D], class by class
        energy = torch.empty(order.numel(), dtype=torch.float64, device=x.device)

        def score(ranges: list[tuple[int, int, int]]) -> None:
            for c, start, stop in ranges:
                energy[start:stop] = torch.linalg.vector_norm(rows[start:stop] @ factors[c].double().T, dim=1)

        _split_classes(score, list(_class_ranges(cls, n_classes)))
        out[order] = energy.square_()
        return out
    for group, pairs, rows, slots, most in _class_groups(cls, n_classes, width, dim, 8):
        padded = torch.zeros(group.numel(), most, dim, dtype=torch.float64, device=x.device)
        padded[rows, slots] = x[query[pairs]]
        coef = torch.bmm(padded, factors[group].double().mT)  # [g, most, w]
        out[pairs] = torch.linalg.vector_norm(coef[rows, slots], dim=1).square_()
    return out
