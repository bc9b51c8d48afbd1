"""The metrics stage: pure functions from logits / probabilities and labels to numbers.

    calibration   softmax, ECE / MCE (equal-width bins), NLL, Brier, temperature scaling
    selective     risk-coverage curve, AURC, accuracy at a coverage
    conformal     split conformal prediction sets (LAC, APS): quantile, sets, coverage, size
    evaluate      every metric of a run at once (:func:`reliability`), per-class results and the
                  per-sample table saved next to a run record

Inputs are numpy arrays (or anything ``numpy.asarray`` takes: torch tensors on the CPU): logits
``[M, C]``, probabilities ``[M, C]``, labels ``[M]`` (ints in ``0..C-1``). Everything is computed
in float64. No torch, no files: the run stage calls these on its logits and saves the results.
"""
from ssp.metrics.calibration import (
    brier_score,
    calibration_bins,
    calibration_errors,
    fit_temperature,
    negative_log_likelihood,
    softmax,
)
from ssp.metrics.conformal import (
    CONFORMAL_SCORES,
    conformal_quantile,
    conformal_scores,
    prediction_sets,
)
from ssp.metrics.evaluate import (
    RELIABILITY_VERSION,
    aps_uniforms,
    per_class_results,
    reliability,
    sample_table,
    transferred_reliability,
    uncalibrated_reliability,
)
from ssp.metrics.selective import accuracy_at_coverage, aurc, risk_coverage

__all__ = ["softmax", "calibration_bins", "calibration_errors", "negative_log_likelihood", "brier_score",
           "fit_temperature", "CONFORMAL_SCORES", "conformal_quantile", "conformal_scores", "prediction_sets",
           "risk_coverage", "aurc", "accuracy_at_coverage", "reliability", "per_class_results", "sample_table",
           "transferred_reliability", "uncalibrated_reliability", "aps_uniforms", "RELIABILITY_VERSION"]
