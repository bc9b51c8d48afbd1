"""Split conformal prediction sets (Vovk et al. 2005; Angelopoulos & Bates, 2021).

A non-conformity score ``s(x, y)`` is computed on a calibration split of ``n`` samples; its
finite-sample quantile ``q = the ceil((n + 1)(1 - alpha))``-th smallest score (``inf`` when that
rank exceeds ``n``) gives, for an exchangeable test sample, ``P(y in C(x)) >= 1 - alpha`` with
``C(x) = {c : s(x, c) <= q}``. Scores (on softmax probabilities ``p``):

* ``lac``  -- least ambiguous classifier (Sadinle et al., 2019): ``1 - p_y``;
* ``aps``  -- adaptive prediction sets (Romano et al., 2020): the total probability of the classes
  ranked above ``y`` (by decreasing ``p``, ties by class index) plus ``u * p_y``. With ``u`` drawn
  uniform on [0, 1) per sample (one draw per sample, shared by its classes) this is Romano et al.'s
  randomised score, whose coverage is exact: between ``1 - alpha`` and ``1 - alpha + 1 / (n + 1)``.
  ``u = 1`` (the default when no ``u`` is given) is the deterministic variant: conservative, and
  its sets are empty whenever the top class alone holds more than ``q``, which for confident
  models is a large share of the images the model gets right.
"""
from __future__ import annotations

import math

import numpy as np

from ssp.metrics.calibration import row_blocks

CONFORMAL_SCORES = ("lac", "aps")


def _probs(probs) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be [M, C], got shape {p.shape}")
    return p


def _check_score(score: str) -> str:
    if score not in CONFORMAL_SCORES:
        raise ValueError(f"conformal score must be one of {CONFORMAL_SCORES}, got {score!r}")
    return score


def _uniforms(u, m: int) -> np.ndarray:
    """``[M]`` per-sample APS randomisation (``None``: 1, the deterministic score)."""
    if u is None:
        return np.ones(m)
    u = np.asarray(u, dtype=np.float64)
    if u.shape != (m,):
        raise ValueError(f"APS randomisation u must be [M] = [{m}], got shape {u.shape}")
    if not np.all((u >= 0.0) & (u <= 1.0)):
        raise ValueError("APS randomisation u must lie in [0, 1]")
    return u


def _aps_all(p: np.ndarray, u: np.ndarray) -> np.ndarray:
    """``[M, C]`` APS score of every class: the probability ranked above it plus ``u`` ``[M]`` times its own."""
    order = np.argsort(-p, axis=1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=1)
    cumulative = np.cumsum(ranked, axis=1) - (1.0 - u[:, None]) * ranked
    out = np.empty_like(p)
    np.put_along_axis(out, order, cumulative, axis=1)
    return out


def conformal_scores(probs, labels, score: str = "lac", *, u=None) -> np.ndarray:
    """Score ``[M]`` of each sample's true label (``labels`` ``[M]``); ``u`` ``[M]`` in [0, 1]:
    the APS randomisation (ignored by ``lac``; ``None``: deterministic APS)."""
    p = _probs(probs)
    y = np.asarray(labels, dtype=np.int64)
    rows = np.arange(len(y))
    if _check_score(score) == "lac":
        return 1.0 - p[rows, y]
    u = _uniforms(u, p.shape[0])
    out = np.empty(len(y))
    for b in row_blocks(*p.shape):
        out[b] = _aps_all(p[b], u[b])[rows[: b.stop - b.start], y[b]]
    return out


def conformal_quantile(scores, alpha: float) -> float:
    """The ``ceil((n + 1)(1 - alpha))``-th smallest of ``scores`` ``[n]`` (``inf`` when ``n`` is too
    small for ``alpha``)."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if s.ndim != 1 or not len(s):
        raise ValueError("conformal calibration needs a non-empty [n] score array")
    rank = math.ceil((len(s) + 1) * (1.0 - alpha) - 1e-9)
    return float(s[rank - 1]) if rank <= len(s) else math.inf


def prediction_sets(probs, threshold: float, score: str = "lac", *, u=None) -> np.ndarray:
    """Boolean sets ``[M, C]``: class ``c`` is in sample ``i``'s set when its score ``<= threshold``
    (``u`` ``[M]``: the APS randomisation of the test samples, as in :func:`conformal_scores`)."""
    p = _probs(probs)
    lac = _check_score(score) == "lac"
    u = _uniforms(u, p.shape[0])
    out = np.empty(p.shape, dtype=bool)
    for b in row_blocks(*p.shape):   # bounded temporaries
        out[b] = ((1.0 - p[b]) if lac else _aps_all(p[b], u[b])) <= threshold
    return out
