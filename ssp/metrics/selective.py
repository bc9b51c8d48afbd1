"""Selective prediction: abstain on the least confident samples.

Samples are ranked by decreasing confidence (ties keep their input order, a stable sort); at
coverage ``k / M`` the ``k`` most confident are kept. The risk at ``k`` is the error rate of those
``k``; AURC is the mean risk over ``k = 1..M`` (Geifman et al., 2019). No kept library computes it.
"""
from __future__ import annotations

import math

import numpy as np


def _ranked_correct(confidence, correct) -> np.ndarray:
    conf = np.asarray(confidence, dtype=np.float64)
    hit = np.asarray(correct, dtype=bool)
    if conf.shape != hit.shape or conf.ndim != 1 or not len(conf):
        raise ValueError(f"confidence and correct must be non-empty [M] each, got {conf.shape} and {hit.shape}")
    return hit[np.argsort(-conf, kind="stable")]


def risk_coverage(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
    """``(coverage [M], risk [M])``: coverage ``k / M`` and the error rate of the ``k`` most
    confident samples, ``k = 1..M``."""
    hit = _ranked_correct(confidence, correct)
    k = np.arange(1, len(hit) + 1)
    return k / len(hit), 1.0 - np.cumsum(hit) / k


def aurc(confidence, correct) -> float:
    """Area under the risk-coverage curve (a fraction in [0, 1]; lower is better)."""
    return float(np.mean(risk_coverage(confidence, correct)[1]))


def accuracy_at_coverage(confidence, correct, coverage: float) -> float:
    """Accuracy (fraction) of the ``ceil(coverage * M)`` most confident samples."""
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    hit = _ranked_correct(confidence, correct)
    k = max(1, math.ceil(coverage * len(hit) - 1e-9))
    return float(hit[:k].mean())
