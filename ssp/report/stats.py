"""The statistics every table uses: mean and sample std over seeds, the methods' table order."""
from __future__ import annotations

import math
from typing import Iterable
from ssp.methods.registry import method_names

__all__ = ["mean_std", "method_order"]


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample std; the std of a single seed is undefined (``None``), not 0."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)  # sample std, as papers report
    return mean, math.sqrt(var)


def method_order(methods: Iterable[str]) -> list[str]:
    """``methods`` in the method registry's order (``X [key]`` labels beside ``X``; unknown names last)."""
    order = {m: i for i, m in enumerate(method_names())}
    return sorted(set(methods), key=lambda m: (order.get(m.split(" [")[0], len(order)), m))
