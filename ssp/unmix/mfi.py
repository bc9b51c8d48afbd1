"""Mutual feature information (MFI) analysis (Rawlekar et al., Unmix-CLIP, arXiv 2502.02977):
how much each class's text feature overlaps with the other classes'.

For class embeddings ``t_1..t_C`` (any text classifier, raw or projected):
``S = norm(T) norm(T)^T`` and ``MFI = mean_{i != j} S_ij``. The relative drop after a
projection is ``1 - MFI_after / MFI_before``.

Every function takes the classifier as ``[C, D]`` (``layout="CD"``, one row per class) or
``[D, C]`` (``layout="DC"``, one column per class: how Tip-Adapter / APE and most repositories
save it). A ``[D, C]`` classifier passed as ``"CD"`` is recognised by its unit-norm columns and
refused (:func:`ssp._utils.arrays.check_text_features`, the rule every estimator applies): it would
otherwise be read as ``D`` classes of width ``C``. Inputs of any floating dtype (float16,
bfloat16, float32, float64) are accepted; the similarities are computed in float64.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ssp._io import atomic_path
from ssp._utils.arrays import ArrayLike, check_text_features, like_input
from ssp._utils.normalize import l2_normalize

__all__ = ["mfi_matrix", "mfi_score", "mfi_drop", "top_confusers", "mfi_summary",
           "cluster_order", "plot_mfi_heatmap", "plot_mfi_histogram", "MAX_LABELLED_CLASSES"]

#: Heatmaps label their axes with class names up to this many classes.
MAX_LABELLED_CLASSES = 50


def _text(text_features: ArrayLike, layout: str = "CD", name: str = "text_features") -> torch.Tensor:
    t = check_text_features(text_features, name=name, layout=layout)
    if t.shape[0] < 2:
        raise ValueError(f"MFI needs at least 2 classes, got text_features of shape {tuple(t.shape)}")
    return l2_normalize(t.to(torch.float64))


def mfi_matrix(text_features: ArrayLike, *, layout: str = "CD") -> ArrayLike:
    """``[C, D]`` (or ``[D, C]`` with ``layout="DC"``) class features -> ``[C, C]`` cosine
    similarity matrix (numpy in -> numpy out, torch in -> torch out on the input's device; float64)."""
    t = _text(text_features, layout)
    return like_input(t @ t.T, text_features)


def _off_diagonal(sim: torch.Tensor) -> torch.Tensor:
    c = sim.shape[0]
    return sim[~torch.eye(c, dtype=torch.bool, device=sim.device)]


def mfi_score(text_features: ArrayLike, *, layout: str = "CD") -> float:
    """MFI of ``[C, D]`` class features (``[D, C]`` with ``layout="DC"``): the mean
    off-diagonal cosine similarity."""
    t = _text(text_features, layout)
    return float(_off_diagonal(t @ t.T).mean())


def mfi_drop(before: ArrayLike | float, after: ArrayLike | float, *, layout: str = "CD") -> float:
    """Relative MFI drop ``1 - MFI_after / MFI_before`` (features in ``layout``, or MFI values)."""
    b = before if isinstance(before, float) else mfi_score(before, layout=layout)
    a = after if isinstance(after, float) else mfi_score(after, layout=layout)
    if b == 0:
        raise ValueError("MFI before the projection is 0; the relative drop is undefined")
    return 1.0 - a / b


def top_confusers(text_features: ArrayLike, classnames: Sequence[str] | None = None, *, k: int = 3,
                  layout: str = "CD") -> list[dict]:
    """For every class of ``[C, D]`` features (``[D, C]`` with ``layout="DC"``), the ``k`` other
    classes with the most similar features: ``[{"class": name, "confusers": [[name, cosine], ...]}, ...]``."""
    t = _text(text_features, layout)
    c = t.shape[0]
    names = _names(classnames, c)
    sim = (t @ t.T).fill_diagonal_(-np.inf)
    k = max(0, min(int(k), c - 1))
    values, index = sim.topk(k, dim=1)
    return [{"class": names[i], "confusers": [[names[int(j)], round(float(v), 6)]
                                              for v, j in zip(values[i], index[i])]} for i in range(c)]


def _names(classnames: Sequence[str] | None, c: int) -> list[str]:
    if classnames is None:
        return [str(i) for i in range(c)]
    names = [str(n) for n in classnames]
    if len(names) != c:
        raise ValueError(f"{len(names)} class names given for {c} classes")
    return names


def mfi_summary(text_features: ArrayLike, classnames: Sequence[str] | None = None, *,
                projected: ArrayLike | None = None, k: int = 3, layout: str = "CD") -> dict:
    """JSON-able summary: MFI, off-diagonal min / max / std, top confusers; with ``projected``
    (the same classes after a projection, ``[C, D']``) also its MFI and the relative drop.
    ``layout`` is that of ``text_features``."""
    t = _text(text_features, layout)
    off = _off_diagonal(t @ t.T)
    out = {"n_classes": int(t.shape[0]), "dim": int(t.shape[1]), "mfi": float(off.mean()),
           "off_diagonal": {"min": float(off.min()), "max": float(off.max()), "std": float(off.std())},
           "top_confusers": top_confusers(t, classnames, k=k)}
    if projected is not None:
        p = _text(projected, name="projected")
        if p.shape[0] != t.shape[0]:
            raise ValueError(f"projected has {p.shape[0]} classes, text_features {t.shape[0]}")
        off_p = _off_diagonal(p @ p.T)
        out["projected"] = {"mfi": float(off_p.mean()), "dim": int(p.shape[1]),
                            "off_diagonal": {"min": float(off_p.min()), "max": float(off_p.max()),
                                             "std": float(off_p.std())},
                            "top_confusers": top_confusers(p, classnames, k=k)}
        out["mfi_drop"] = mfi_drop(out["mfi"], out["projected"]["mfi"])
    return out


def cluster_order(text_features: ArrayLike, *, layout: str = "CD") -> np.ndarray:
    """Class order of an average-linkage hierarchical clustering on cosine distance
    (``scipy.cluster.hierarchy``), so similar classes sit together in a heatmap."""
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    sim = _text(text_features, layout)
    sim = (sim @ sim.T).cpu().numpy()
    dist = np.clip(1.0 - sim, 0.0, None)
    np.fill_diagonal(dist, 0.0)
    dist = (dist + dist.T) / 2
    return leaves_list(linkage(squareform(dist, checks=False), method="average"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_mfi_heatmap(text_features: ArrayLike, path: str | os.PathLike, classnames: Sequence[str] | None = None,
                     *, title: str | None = None, layout: str = "CD") -> Path:
    """Heatmap PNG of the similarity matrix of ``[C, D]`` features (``[D, C]`` with
    ``layout="DC"``), classes in :func:`cluster_order`; axis labels for at most
    :data:`MAX_LABELLED_CLASSES` classes. Written atomically."""
    plt = _pyplot()
    t = _text(text_features, layout)
    c = t.shape[0]
    names = _names(classnames, c)
    order = cluster_order(t)
    sim = (t @ t.T).cpu().numpy()[np.ix_(order, order)]
    size = 4 + min(c, MAX_LABELLED_CLASSES) * 0.18
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    im = ax.imshow(sim, cmap="viridis", vmin=min(0.0, float(sim.min())), vmax=1.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="cosine similarity")
    if c <= MAX_LABELLED_CLASSES:
        labels = [names[i] for i in order]
        ax.set_xticks(range(c), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(c), labels, fontsize=7)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"{c} classes (clustered order; labels omitted above {MAX_LABELLED_CLASSES})")
    ax.set_title(title or f"class feature similarity, MFI = {mfi_score(t):.3f}")
    fig.tight_layout()
    return _save(fig, path, plt)


def plot_mfi_histogram(before: ArrayLike, path: str | os.PathLike, *, after: ArrayLike | None = None,
                       labels: tuple[str, str] = ("CLIP", "projected"), layout: str = "CD") -> Path:
    """Histogram PNG of the off-diagonal similarities, before (``[C, D]``, or ``[D, C]`` with
    ``layout="DC"``) and after (``[C, D']``) a projection."""
    plt = _pyplot()
    b = _text(before, layout)
    fig, ax = plt.subplots(figsize=(6, 4))
    off_b = _off_diagonal(b @ b.T).cpu().numpy()
    bins = np.linspace(min(-0.2, off_b.min()), 1.0, 61)
    ax.hist(off_b, bins=bins, alpha=0.6, label=f"{labels[0]} (MFI {off_b.mean():.3f})")
    if after is not None:
        a = _text(after, name="after")
        off_a = _off_diagonal(a @ a.T).cpu().numpy()
        bins = np.linspace(min(bins[0], off_a.min()), 1.0, 61)
        ax.hist(off_a, bins=bins, alpha=0.6, label=f"{labels[1]} (MFI {off_a.mean():.3f})")
    ax.set_xlabel("cosine similarity between different classes")
    ax.set_ylabel("class pairs")
    ax.legend()
    fig.tight_layout()
    return _save(fig, path, plt)


def _save(fig, path, plt) -> Path:
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(fig)
    return path
