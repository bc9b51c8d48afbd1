"""Every reliability metric of a run at once, per-class results, and the per-sample table.

:func:`reliability` takes a method's test and validation logits; the validation split is the only
data fitted on (the temperature, the conformal thresholds), the test split is scored once.
Conventions (also in the run JSON's ``reliability.definitions``):

* probabilities are the softmax of the method's own logits (``raw``) or of ``logits / T`` with the
  temperature ``T`` fitted on validation (``temperature_scaled``);
* ``ece`` / ``mce``: fractions, ``n_bins`` equal-width bins on the top-1 confidence; ``nll`` in nats;
  ``brier``: the multi-class Brier score in [0, 2];
* selective prediction ranks test samples by raw top-1 confidence (temperature scaling keeps
  that order); ``aurc`` is a fraction, ``accuracy_at_coverage`` in percent like ``test_accuracy``;
* conformal sets are built on the raw probabilities, calibrated on validation with the
  finite-sample quantile; ``coverage`` is a fraction, ``mean_set_size`` in classes; APS is
  randomised (Romano et al.) with one uniform per sample from ``numpy.random.default_rng([seed,
  5])``: ``n_val`` draws for the validation samples, then ``n_test`` for the test samples.

:data:`RELIABILITY_VERSION` numbers these definitions; a run record holding another version was
computed under other definitions (the run stage re-runs it rather than mix the two).
"""
from __future__ import annotations

import numpy as np

from ssp.metrics.calibration import (
    TEMPERATURE_BOUNDS,
    as_labels,
    as_logits,
    brier_score,
    calibration_errors,
    fit_temperature,
    negative_log_likelihood,
    row_blocks,
    softmax,
)
from ssp.metrics.conformal import CONFORMAL_SCORES, conformal_quantile, conformal_scores, prediction_sets
from ssp.metrics.selective import accuracy_at_coverage, aurc

COVERAGES = (0.8, 0.5)
#: The version of the definitions below, recorded as ``reliability.version`` (1: deterministic APS).
RELIABILITY_VERSION = 2
_STAGE_APS = 5  # the random stream of the APS uniforms (0-4: support, validation, test-from-val, ...)
DEFINITIONS = {
    "ece": "expected calibration error (fraction), equal-width bins on the top-1 softmax confidence",
    "mce": "maximum calibration error (fraction) over the non-empty bins",
    "nll": "mean negative log-likelihood of the true class (nats)",
    "brier": "multi-class Brier score, mean over samples of sum_c (p_c - [y = c])^2, in [0, 2]",
    "temperature": "one scalar T fitted on the validation split (minimum NLL of logits / T)",
    "aurc": "area under the risk-coverage curve (fraction), samples ranked by top-1 confidence",
    "accuracy_at_coverage": "accuracy (%) of the given fraction of most confident test samples",
    "conformal": "split conformal sets on softmax probabilities, threshold = the ceil((n+1)(1-alpha))-th "
                 "smallest validation score; lac: 1 - p_y, aps: total probability of the classes ranked "
                 "above y plus u * p_y, u uniform on [0, 1) per sample (randomised, Romano et al. 2020)",
}


def _calibration(logits: np.ndarray, labels: np.ndarray, n_bins: int, temperature: float = 1.0) -> dict:
    """ECE / MCE / NLL / Brier of ``logits / temperature``, row block by row block (bounded
    temporaries; the per-row numbers are those of the whole array)."""
    m = len(labels)
    confidence, correct = np.empty(m), np.empty(m, dtype=bool)
    nll = brier = 0.0
    for b in row_blocks(*logits.shape):
        z = logits[b] / temperature
        probs = softmax(z)
        confidence[b], correct[b] = probs.max(axis=1), probs.argmax(axis=1) == labels[b]
        nll += negative_log_likelihood(z, labels[b]) * len(z)
        brier += brier_score(probs, labels[b]) * len(z)
    ece, mce = calibration_errors(confidence, correct, n_bins)
    return {"ece": ece, "mce": mce, "nll": nll / m, "brier": brier / m}


def aps_uniforms(seed: int, n_val: int, n_test: int) -> tuple[np.ndarray, np.ndarray]:
    """The APS randomisation ``(u_val [n_val], u_test [n_test])`` of a run with ``seed``."""
    rng = np.random.default_rng([int(seed), _STAGE_APS])
    return rng.random(int(n_val)), rng.random(int(n_test))


def reliability(test_logits, test_labels, val_logits, val_labels, *, alpha: float = 0.1,
                n_bins: int = 15, seed: int = 0) -> tuple[dict, dict[str, np.ndarray]]:
    """``(metrics, samples)`` of a method's test logits ``[M, C]`` / labels ``[M]`` with its
    validation logits ``[V, C]`` / labels ``[V]`` as the only calibration data; ``seed`` seeds the
    APS randomisation (:func:`aps_uniforms`; the run's seed, so every method of a run shares it).

    ``metrics`` is JSON-ready (see the module docstring); ``samples`` is :func:`sample_table`'s
    per-sample arrays, from which ECE, accuracy and conformal coverage can be recomputed."""
    z = as_logits(test_logits)
    y = as_labels(test_labels, z.shape[0], z.shape[1])
    zv = as_logits(val_logits)
    yv = as_labels(val_labels, zv.shape[0], zv.shape[1])
    if zv.shape[1] != z.shape[1]:
        raise ValueError(f"validation logits have C={zv.shape[1]} classes, test logits C={z.shape[1]}")
    if not len(y) or not len(yv):
        raise ValueError("reliability metrics need non-empty test and validation splits")
    temperature = fit_temperature(zv, yv)
    probs, val_probs = softmax(z), softmax(zv)
    u_val, u_test = aps_uniforms(seed, len(yv), len(y))
    thresholds = {score: conformal_quantile(conformal_scores(val_probs, yv, score, u=u_val), alpha)
                  for score in CONFORMAL_SCORES}
    samples = sample_table(probs, y, thresholds, u=u_test)
    conformal: dict = {"alpha": alpha, "calibration": "validation", "n_calibration": int(len(yv)),
                       "probabilities": "raw",
                       "aps_randomisation": {"seed": int(seed), "rule": f"numpy.random.default_rng([seed, {_STAGE_APS}])"
                                             ".random(n_val), then .random(n_test)"}}
    for score, q in thresholds.items():   # a set holds the true label exactly when its score is <= q
        size = samples[f"{score}_set_size"]
        conformal[score] = {"threshold": q if np.isfinite(q) else None,
                            "coverage": float(np.mean(samples[f"{score}_score"] <= q)),
                            "mean_set_size": float(size.mean()), "empty_sets": float(np.mean(size == 0))}
    metrics = {
        "version": RELIABILITY_VERSION, "n_test": int(len(y)), "n_val": int(len(yv)), "n_bins": int(n_bins),
        "raw": _calibration(z, y, n_bins),
        "temperature": temperature,
        "temperature_on_bound": bool(np.isclose(temperature, TEMPERATURE_BOUNDS, rtol=1e-4).any()),
        "temperature_scaled": _calibration(z, y, n_bins, temperature),
        **_selective(samples),
        "conformal": conformal,
    }
    return metrics, samples


def _selective(samples: dict[str, np.ndarray]) -> dict:
    """AURC and accuracy at coverage of a :func:`sample_table`."""
    confidence, correct = samples["confidence"], samples["prediction"] == samples["label"]
    return {"aurc": aurc(confidence, correct),
            "accuracy_at_coverage": {f"{c:g}": 100.0 * accuracy_at_coverage(confidence, correct, c)
                                     for c in COVERAGES}}


def uncalibrated_reliability(logits, labels, *, n_bins: int = 15) -> tuple[dict, dict[str, np.ndarray]]:
    """``(metrics, samples)`` of ``logits`` ``[M, C]`` with ``labels`` ``[M]`` for a run that has no
    labelled calibration data (the test-time protocol): raw calibration, AURC and accuracy at
    coverage, which need nothing fitted; no temperature and no conformal sets, which do.
    ``samples``: :func:`sample_table` without conformal scores."""
    z = as_logits(logits)
    y = as_labels(labels, z.shape[0], z.shape[1])
    if not len(y):
        raise ValueError("reliability metrics need a non-empty test split")
    samples = sample_table(softmax(z), y, {})
    metrics = {"version": RELIABILITY_VERSION, "n_test": int(len(y)), "n_bins": int(n_bins),
               "raw": _calibration(z, y, n_bins), **_selective(samples),
               "not_computed": "temperature scaling and conformal sets: no labelled calibration data"}
    return metrics, samples


def transferred_reliability(logits, labels, *, temperature: float, n_bins: int = 15) -> dict:
    """Calibration (raw and with a ``temperature`` fitted elsewhere) and selective prediction of
    ``logits`` ``[M, C]`` with ``labels`` ``[M]``, for a split that has no calibration data of its
    own (base-to-new's new classes: the temperature comes from the base classes' validation split).
    No conformal sets: their coverage guarantee needs calibration data of the same classes."""
    metrics, _ = uncalibrated_reliability(logits, labels, n_bins=n_bins)
    metrics.pop("not_computed")
    z = as_logits(logits)
    return {**metrics, "temperature": float(temperature), "temperature_from": "the base classes' validation split",
            "temperature_scaled": _calibration(z, as_labels(labels, *z.shape), n_bins, temperature)}


def sample_table(probs, labels, thresholds: dict[str, float], *, u=None) -> dict[str, np.ndarray]:
    """Per-sample arrays ``[M]`` of probabilities ``[M, C]``: ``label``, ``prediction``,
    ``confidence`` (top-1 probability), and per conformal score its true-label score
    (``<score>_score``: covered when ``<= <score>_threshold``, a 0-d array at full precision) and
    set size (``<score>_set_size``); ``u`` ``[M]``: the test samples' APS randomisation (reproducible
    from its recorded rule, so not saved); and :func:`per_class_results` as ``class_confusion``
    ``[C, C]``, ``class_accuracy`` ``[C]``, ``class_support`` ``[C]``."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    index = np.int16 if p.shape[1] <= np.iinfo(np.int16).max else np.int32
    out = {"label": y.astype(index), "prediction": p.argmax(axis=1).astype(index),
           "confidence": p.max(axis=1)}
    for score, q in thresholds.items():
        out[f"{score}_threshold"] = np.float64(q)
        out[f"{score}_score"] = conformal_scores(p, y, score, u=u)
        out[f"{score}_set_size"] = prediction_sets(p, q, score, u=u).sum(axis=1).astype(index)
    out.update({f"class_{k}": v for k, v in per_class_results(y, out["prediction"], p.shape[1]).items()})
    return out


def per_class_results(labels, predictions, n_classes: int) -> dict[str, np.ndarray]:
    """``confusion`` ``[C, C]`` (rows: true class, columns: predicted; ``sklearn.metrics.
    confusion_matrix``), ``accuracy`` ``[C]`` per true class in percent (NaN for a class with no
    sample) and ``support`` ``[C]`` (samples per class)."""
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(np.asarray(labels), np.asarray(predictions), labels=np.arange(n_classes))
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = 100.0 * np.diag(cm) / support
    return {"confusion": cm.astype(np.int32), "accuracy": accuracy, "support": support.astype(np.int64)}
