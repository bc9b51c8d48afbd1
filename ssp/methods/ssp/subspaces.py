"""Linear algebra on the class subspaces of :class:`~ssp.methods.ssp.projector.SSPProjector`:
batched LAPACK split over threads, orthogonal complements of padded bases, and the projection of
queries onto the few classes each one picked.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ssp._lazy import torch
from ssp.methods.ssp.parallel import (
    BLOCK_BUDGET_BYTES,
    PER_CLASS_DEVICES,
    class_groups,
    class_ranges,
    lapack_threads,
    split_classes,
)

__all__ = ["batched_lapack", "orthogonal_complements", "grouped_project"]


def batched_lapack(fn: Any, batch: torch.Tensor) -> Any:
    """``fn(batch)`` for a batched decomposition, on CPU split over the batch across
    ``torch.get_num_threads()`` Python threads that each run single-threaded LAPACK.

    Batched LAPACK in torch loops over the batch calling multi-threaded MKL per small matrix,
    which gains little on an idle machine and collapses under load (measured: batched ``eigh``
    of ``[20, 481, 481]`` 150-260 ms per matrix on 1 thread, 3,200-4,600 ms on 2 with the cores
    shared). Independent halves of the batch keep both cores busy without that synchronisation.
    ``fn`` returns a tensor or a tuple of tensors, batched along dim 0.
    """
    threads = min(torch.get_num_threads(), batch.shape[0]) if batch.device.type == "cpu" else 1
    with lapack_threads(batch.device):
        if threads <= 1:
            return fn(batch)
        with ThreadPoolExecutor(threads) as pool:
            parts = list(pool.map(fn, batch.tensor_split(threads)))
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(items) for items in zip(*parts))
    return torch.cat(parts)



def orthogonal_complements(bases: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """Orthonormal complements of padded bases ``[C, r_max, D]`` -> ``[C, D - r_min, D]``.

    Householder QR of ``B_c^T`` (complete mode): columns ``r_c..D-1`` of ``Q`` span the
    complement of the first ``r_c`` columns; zero rows beyond ``r_c`` do not disturb them.
    """
    n_classes, r_max, dim = bases.shape
    width = dim - int(ranks.min())
    itemsize = bases.element_size()
    per_class = 3 * dim * dim * itemsize
    step = int(max(1, min(n_classes, BLOCK_BUDGET_BYTES // per_class)))
    out = torch.zeros(n_classes, width, dim, dtype=bases.dtype, device=bases.device)
    cols = torch.arange(width, device=bases.device)
    for c0 in range(0, n_classes, step):
        c1 = min(n_classes, c0 + step)
        with lapack_threads(bases.device):
            q, _ = torch.linalg.qr(bases[c0:c1].mT, mode="complete")  # [c, D, D]
        r = ranks[c0:c1, None]
        index = (r + cols[None, :]).clamp_max(dim - 1)  # [c, width]
        valid = (cols[None, :] < dim - r).to(bases.dtype)
        comp = torch.gather(q, 2, index[:, None, :].expand(-1, dim, -1)) * valid[:, None, :]
        out[c0:c1] = comp.mT
    return out


def grouped_project(x: torch.Tensor, classes: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """``out[t] = sum_j F_c^T F_c x_t`` with ``c = classes[t, j]``, touching only picked classes.

    ``x`` ``[t, D]``, ``classes`` ``[t, kappa]``, ``factors`` ``[C, w, D]`` -> ``[t, D]``.
    ``4 * pairs * w * D`` flops at most, ``2 kappa / C`` of the scoring cost. On CPU one pair of
    GEMMs per picked class writing its rows contiguously, summed per query by ``kappa`` gathers
    (BLAS runs these faster than padded batches, and CPU scatter-adds are slow); elsewhere pairs
    are grouped by class into padded batched matmuls (:func:`class_groups`: few launches).
    """
    t, kappa = classes.shape
    n_classes, width, dim = factors.shape
    out = torch.zeros(t, dim, dtype=x.dtype, device=x.device)
    flat = classes.reshape(-1)
    if x.device.type in PER_CLASS_DEVICES:  # each class's rows land contiguously: no scatter-add
        order = torch.argsort(flat, stable=True)
        rows = x[order // kappa]  # [P, D], class by class

        def project(ranges: list[tuple[int, int, int]]) -> None:
            for c, start, stop in ranges:
                torch.mm(rows[start:stop] @ factors[c].T, factors[c], out=rows[start:stop])

        split_classes(project, list(class_ranges(flat, n_classes)))
        position = torch.empty_like(order)
        position[order] = torch.arange(order.numel(), device=x.device)
        position = position.view(t, kappa)
        for j in range(kappa):  # kappa [t, D] gathers: no second [t kappa, D] buffer
            out += rows[position[:, j]]
        return out
    for group, pairs, rows, slots, most in class_groups(flat, n_classes, width, dim, x.element_size()):
        queries = pairs // kappa
        padded = torch.zeros(group.numel(), most, dim, dtype=x.dtype, device=x.device)
        padded[rows, slots] = x[queries]
        group_factors = factors[group]  # [g, w, D]
        coef = torch.bmm(padded, group_factors.mT)  # [g, most, w]
        recon = torch.bmm(coef, group_factors)  # [g, most, D]
        out.index_add_(0, queries, recon[rows, slots])
    return out


