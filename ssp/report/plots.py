"""Reliability plots from the per-sample files of run records (matplotlib, Agg).

* :func:`plot_reliability_diagrams` -- one reliability diagram per method (accuracy against
  confidence in equal-width bins, the gap to the diagonal shaded, ECE in the title);
* :func:`plot_risk_coverage` -- the risk-coverage curve of every method;
* :func:`plot_per_class` -- the per-class accuracy of the best method beside zero-shot, classes
  sorted by the best method's accuracy.

Each takes ``{method: samples}`` (the arrays of :func:`ssp.report.reliability.load_samples`) and
writes one PNG atomically.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import numpy as np

from ssp._io import atomic_path
from ssp.metrics import aurc, calibration_bins, calibration_errors, risk_coverage

Samples = Mapping[str, np.ndarray]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def _correct(s: Samples) -> np.ndarray:
    return s["label"] == s["prediction"]


def plot_reliability_diagrams(samples: Mapping[str, Samples], path: str | Path, *, n_bins: int = 15,
                              title: str = "") -> Path:
    """One reliability diagram per method (panels in rows of four)."""
    plt = _pyplot()
    methods = list(samples)
    cols = min(4, len(methods))
    rows = math.ceil(len(methods) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    width = 1.0 / n_bins
    for ax, method in zip(axes.flat, methods):
        s = samples[method]
        bins = calibration_bins(s["confidence"], _correct(s), n_bins)
        ece, _ = calibration_errors(s["confidence"], _correct(s), n_bins)
        full = bins["count"] > 0
        left = bins["edges"][:-1][full]
        ax.bar(left, bins["accuracy"][full], width=width, align="edge", color="#4878d0", edgecolor="white",
               label="accuracy")
        ax.bar(left, bins["confidence"][full] - bins["accuracy"][full], bottom=bins["accuracy"][full], width=width,
               align="edge", color="#d65f5f", alpha=0.35, edgecolor="#d65f5f", label="gap")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{method}\nECE {100 * ece:.2f}%", fontsize=9)
        ax.set_xlabel("confidence", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(methods):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_risk_coverage(samples: Mapping[str, Samples], path: str | Path, *, title: str = "") -> Path:
    """Risk (error rate of the kept samples) against coverage, one line per method."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, s in samples.items():
        coverage, risk = risk_coverage(s["confidence"], _correct(s))
        ax.plot(coverage, 100 * risk, lw=1.5, label=f"{method} (AURC {100 * aurc(s['confidence'], _correct(s)):.2f}%)",
                linestyle="--" if method.startswith("zero-shot") else "-")
    ax.set_xlabel("coverage (fraction of test samples kept, most confident first)")
    ax.set_ylabel("risk (error %)")
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title or "risk-coverage", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_per_class(best: Samples, zero_shot: Samples | None, path: str | Path, *, best_name: str,
                   title: str = "") -> Path:
    """Per-class accuracy of ``best`` (sorted, descending) with zero-shot's for the same classes."""
    plt = _pyplot()
    acc = np.asarray(best["class_accuracy"], dtype=np.float64)
    order = np.argsort(-np.nan_to_num(acc, nan=-1.0), kind="stable")
    fig, ax = plt.subplots(figsize=(8, 3.6))
    x = np.arange(len(order))
    ax.plot(x, acc[order], lw=1.5, color="#4878d0", label=best_name)
    if zero_shot is not None:
        zs = np.asarray(zero_shot["class_accuracy"], dtype=np.float64)
        ax.scatter(x, zs[order], s=6, color="#ee854a", label="zero-shot", zorder=3)
    ax.set_xlabel("class (sorted by the best method's accuracy)")
    ax.set_ylabel("per-class accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "per-class accuracy", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
