"""Metrics of the multi-label and segmentation tasks: mean average precision (mAP) and mean
intersection-over-union (mIoU) from a confusion matrix. Both in percent."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ssp._utils.arrays import ArrayLike

__all__ = ["average_precision", "mean_average_precision", "confusion_matrix", "iou_from_confusion",
           "mean_iou", "ConfusionMatrix"]


def _numpy(x: ArrayLike, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def average_precision(scores: ArrayLike, targets: ArrayLike) -> float:
    """AP (in percent) of one class: ``scores [N]``, ``targets [N]`` in {0, 1} (entries < 0 are
    ignored). Non-interpolated: the mean over the positives of the precision at their rank; tied
    scores form one threshold (as ``sklearn.metrics.average_precision_score``). ``nan`` without
    positives."""
    s = _numpy(scores, "scores").astype(np.float64).ravel()
    y = _numpy(targets, "targets").ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and targets {y.shape} differ in length")
    keep = y >= 0
    s, y = s[keep], (y[keep] > 0).astype(np.float64)
    n_pos = y.sum()
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    # the last index of each group of tied scores is a threshold
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tp_t = tp[last]
    precision = tp_t / (last + 1)
    recall_step = np.diff(np.r_[0.0, tp_t]) / n_pos
    return float((recall_step * precision).sum() * 100)


def mean_average_precision(scores: ArrayLike, targets: ArrayLike) -> tuple[float, np.ndarray]:
    """``scores [N, C]``, ``targets [N, C]`` (1 present, 0 absent, < 0 ignored, e.g. VOC's
    "difficult") -> ``(mAP, per-class AP [C])`` in percent. Classes without positives get
    ``nan`` and are left out of the mean."""
    s, y = _numpy(scores, "scores"), _numpy(targets, "targets")
    if s.ndim != 2 or s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and targets {y.shape} must both be [N, C]")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    ap = np.array([average_precision(s[:, c], y[:, c]) for c in range(s.shape[1])])
    if np.isnan(ap).all():
        raise ValueError("no class has a positive example; mAP is undefined")
    return float(np.nanmean(ap)), ap


def confusion_matrix(pred: ArrayLike, target: ArrayLike, n_classes: int, *, ignore_index: int | None = 255) -> np.ndarray:
    """``[n_classes, n_classes]`` int64 counts, rows = ground truth, columns = prediction;
    pixels whose target is ``ignore_index`` are skipped."""
    p, t = _numpy(pred, "pred").ravel(), _numpy(target, "target").ravel()
    if p.shape != t.shape:
        raise ValueError(f"prediction and target have different sizes ({p.size} vs {t.size} pixels)")
    keep = np.ones(t.shape, dtype=bool) if ignore_index is None else t != ignore_index
    p, t = p[keep].astype(np.int64), t[keep].astype(np.int64)
    for name, v in (("target", t), ("prediction", p)):
        if v.size and (v.min() < 0 or v.max() >= n_classes):
            raise ValueError(f"{name} holds class {int(v.min()) if v.min() < 0 else int(v.max())} outside "
                             f"0..{n_classes - 1} (and it is not ignore_index={ignore_index})")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def iou_from_confusion(conf: np.ndarray) -> np.ndarray:
    """Per-class IoU in percent, ``nan`` for classes absent from both prediction and truth."""
    conf = np.asarray(conf, dtype=np.float64)
    inter = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union * 100, np.nan)


class ConfusionMatrix:
    """Accumulates a segmentation confusion matrix over a dataset, one mask pair at a time."""

    def __init__(self, n_classes: int, *, ignore_index: int | None = 255):
        if n_classes < 1:
            raise ValueError(f"n_classes must be >= 1, got {n_classes}")
        self.n_classes = int(n_classes)
        self.ignore_index = ignore_index
        self.matrix = np.zeros((n_classes, n_classes), dtype=np.int64)

    def update(self, pred: ArrayLike, target: ArrayLike) -> None:
        p, t = _numpy(pred, "pred"), _numpy(target, "target")
        if p.shape != t.shape:
            raise ValueError(f"prediction {p.shape} and target {t.shape} masks differ in size")
        self.matrix += confusion_matrix(p, t, self.n_classes, ignore_index=self.ignore_index)

    def compute(self) -> tuple[float, np.ndarray]:
        iou = iou_from_confusion(self.matrix)
        return (float(np.nanmean(iou)) if not np.isnan(iou).all() else float("nan")), iou


def mean_iou(preds: Sequence[ArrayLike], targets: Sequence[ArrayLike], n_classes: int,
             ignore_index: int | None = 255) -> tuple[float, np.ndarray]:
    """mIoU over a dataset: ``preds``/``targets`` lists of ``[H, W]`` integer masks ->
    ``(miou, per_class_iou [n_classes])`` in percent. Intersections and unions are summed over
    all images (one confusion matrix), target pixels equal to ``ignore_index`` are skipped, and
    the mean is over the classes present in the predictions or the ground truth."""
    if len(preds) != len(targets):
        raise ValueError(f"{len(preds)} predictions but {len(targets)} targets")
    acc = ConfusionMatrix(n_classes, ignore_index=ignore_index)
    for p, t in zip(preds, targets):
        acc.update(p, t)
    return acc.compute()
