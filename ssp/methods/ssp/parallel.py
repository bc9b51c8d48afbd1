"""Per-class work of the SSP projector on shared cores: memory budgets, single-threaded LAPACK,
classes split over Python threads (CPU) or grouped into padded batched matmuls (elsewhere).
"""
from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

from ssp._lazy import torch

__all__ = ["BLOCK_BUDGET_BYTES", "PER_CLASS_DEVICES", "lapack_threads", "class_groups", "class_ranges",
           "split_classes"]

# Memory budget (bytes) for the largest temporary block of one step: a class chunk at fit time,
# the [chunk, C] score block and the gathered bases of the language transform.
BLOCK_BUDGET_BYTES = 512 * 2**20


# Devices where the projection and the float64 re-scoring run one GEMM pair per picked class
# (elsewhere: padded batched matmuls over groups of classes, few kernel launches).
PER_CLASS_DEVICES = ("cpu",)


@contextlib.contextmanager
def lapack_threads(device: torch.device) -> Iterator[None]:
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


def class_groups(
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
        limit = max(1, BLOCK_BUDGET_BYTES // per_class)
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


def class_ranges(pair_class: torch.Tensor, n_classes: int) -> Iterator[tuple[int, int, int]]:
    """``(c, start, stop)`` for every class ``c`` picked by some pair: its pairs are
    ``argsort(pair_class, stable=True)[start:stop]``."""
    start = 0
    for c, n in enumerate(torch.bincount(pair_class, minlength=n_classes).tolist()):
        if n:
            yield c, start, start + n
            start += n


def split_classes(fn: Any, ranges: list[tuple[int, int, int]]) -> None:
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
    with lapack_threads(torch.device("cpu")), ThreadPoolExecutor(len(parts)) as pool:
        list(pool.map(fn, parts))
