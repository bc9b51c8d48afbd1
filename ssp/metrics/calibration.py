"""Calibration of top-1 softmax confidences: ECE / MCE, NLL, Brier, temperature scaling.

* ECE / MCE: ``n_bins`` equal-width bins on the top-1 confidence, bin ``b`` holding confidences in
  ``(b / n_bins, (b + 1) / n_bins]`` (confidence 0 falls in the first bin); ECE is the
  sample-weighted mean of ``|accuracy - mean confidence|`` over the bins, MCE its maximum over the
  non-empty bins (Guo et al., 2017). No kept library computes these for multi-class top-1
  confidences (``sklearn.calibration.calibration_curve`` is binary and drops bin counts).
* NLL: mean ``-log softmax(logits)[y]``, from the logits (``scipy.special.log_softmax``), so a
  confident mistake is not clipped the way ``sklearn.metrics.log_loss`` clips probabilities.
* Brier: the original multi-class Brier score, ``mean_i sum_c (p_ic - [y_i = c])^2`` in [0, 2]
  (``sklearn.metrics.brier_score_loss`` with ``scale_by_half=False``).
* Temperature scaling: one scalar ``T`` minimising the NLL of ``logits / T`` (bounded scalar
  search on ``log T``, ``scipy.optimize.minimize_scalar``).
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from scipy.special import softmax as _softmax

#: Bounds of a fitted temperature (a temperature on a bound is recorded as such by the caller).
TEMPERATURE_BOUNDS = (1e-2, 1e2)
#: Elements of one ``[rows, C]`` float64 temporary (32 MiB): the metrics of a large test split go
#: in row blocks (:func:`row_blocks`), so ImageNet's 50,000 x 1,000 needs no full-size temporaries.
BLOCK_ELEMENTS = 1 << 22


def row_blocks(m: int, c: int, block_elements: int | None = None) -> list[slice]:
    """Slices over ``m`` rows of ``c`` columns, each at most ``block_elements`` elements (default
    :data:`BLOCK_ELEMENTS`; at least one row)."""
    step = max(1, (block_elements or BLOCK_ELEMENTS) // max(c, 1))
    return [slice(i, min(i + step, m)) for i in range(0, m, step)]


def as_logits(logits) -> np.ndarray:
    """``logits`` as a float64 ``[M, C]`` array (C >= 2, finite), or a ValueError saying what is wrong."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"logits must be [M, C] with C >= 2, got shape {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("logits hold NaN or infinite values")
    return z


def as_labels(labels, n: int, n_classes: int) -> np.ndarray:
    """``labels`` as an int64 ``[n]`` array of values in ``0..n_classes-1``, or a ValueError."""
    y = np.asarray(labels)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be {n} integers, got shape {y.shape} and dtype {y.dtype}")
    if n and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels must lie in 0..{n_classes - 1}, got {y.min()}..{y.max()}")
    return y.astype(np.int64)


def softmax(logits) -> np.ndarray:
    """Row-wise softmax ``[M, C]`` (float64)."""
    return _softmax(as_logits(logits), axis=1)


def calibration_bins(confidence, correct, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per-bin ``count``, ``accuracy`` and mean ``confidence`` (``[n_bins]`` each; NaN where a bin
    is empty) of top-1 ``confidence`` ``[M]`` in [0, 1] and ``correct`` ``[M]`` (bool)."""
    conf = np.asarray(confidence, dtype=np.float64)
    hit = np.asarray(correct, dtype=np.float64)
    if conf.shape != hit.shape or conf.ndim != 1:
        raise ValueError(f"confidence and correct must be [M] each, got {conf.shape} and {hit.shape}")
    # bin b = (b/n, (b+1)/n]: ceil(conf * n) - 1, with 0 in bin 0
    index = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(index, weights=hit, minlength=n_bins) / count
        mean_conf = np.bincount(index, weights=conf, minlength=n_bins) / count
    return {"count": count.astype(np.int64), "accuracy": accuracy, "confidence": mean_conf,
            "edges": np.linspace(0.0, 1.0, n_bins + 1)}


def calibration_errors(confidence, correct, n_bins: int = 15) -> tuple[float, float]:
    """``(ECE, MCE)`` as fractions in [0, 1] (see the module docstring)."""
    bins = calibration_bins(confidence, correct, n_bins)
    full = bins["count"] > 0
    if not full.any():
        raise ValueError("no samples")
    gap = np.abs(bins["accuracy"][full] - bins["confidence"][full])
    weights = bins["count"][full] / bins["count"].sum()
    return float(np.sum(weights * gap)), float(gap.max())


def negative_log_likelihood(logits, labels) -> float:
    """Mean ``-log softmax(logits)[y]`` (nats) of logits ``[M, C]`` and labels ``[M]``."""
    z = as_logits(logits)
    y = as_labels(labels, z.shape[0], z.shape[1])
    return float(-np.mean(log_softmax(z, axis=1)[np.arange(len(y)), y]))


def brier_score(probs, labels) -> float:
    """Multi-class Brier score in [0, 2] of probabilities ``[M, C]`` and labels ``[M]``."""
    from sklearn.metrics import brier_score_loss

    p = np.asarray(probs, dtype=np.float64)
    y = as_labels(labels, p.shape[0], p.shape[1])
    return float(brier_score_loss(y, p, labels=np.arange(p.shape[1]), scale_by_half=False))


def fit_temperature(logits, labels, bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The temperature ``T`` in ``bounds`` minimising the NLL of ``logits / T`` on (validation)
    ``logits`` ``[M, C]`` and ``labels`` ``[M]``: a bounded scalar search on ``log T``."""
    z = as_logits(logits)
    y = as_labels(labels, z.shape[0], z.shape[1])
    if not len(y):
        raise ValueError("fitting a temperature needs at least one sample")
    rows = np.arange(len(y))

    def nll(log_t: float) -> float:
        return float(-np.mean(log_softmax(z / np.exp(log_t), axis=1)[rows, y]))

    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    res = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-6})
    # the bounded search never evaluates the bounds themselves: keep one when it is better
    best = min((res.x, lo, hi), key=nll)
    return float(np.exp(best))
