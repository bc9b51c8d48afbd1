"""Unmix-CLIP math against small independent implementations: MFI, MFI loss, ASL, mAP, mIoU."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from ssp.unmix import (
    asymmetric_loss,
    mean_average_precision,
    mean_iou,
    mfi_drop,
    mfi_loss,
    mfi_matrix,
    mfi_score,
    top_confusers,
)
from ssp.unmix.mfi import (
    cluster_order,
    mfi_summary,
    plot_mfi_heatmap,
    plot_mfi_histogram,
)


def _loop_mfi(t: np.ndarray) -> float:
    c = t.shape[0]
    total = 0.0
    for i in range(c):
        for j in range(c):
            if i != j:
                total += float(t[i] @ t[j]) / (np.linalg.norm(t[i]) * np.linalg.norm(t[j]))
    return total / (c * (c - 1))


def test_mfi_score_matches_a_loop_and_keeps_the_array_kind():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(7, 5)) + 0.5
    assert mfi_score(t) == pytest.approx(_loop_mfi(t), abs=1e-12)
    assert mfi_score(torch.tensor(t, dtype=torch.float32)) == pytest.approx(_loop_mfi(t), abs=1e-6)
    s = mfi_matrix(t)
    assert isinstance(s, np.ndarray) and s.shape == (7, 7)
    np.testing.assert_allclose(np.diag(s), 1.0, atol=1e-12)
    assert isinstance(mfi_matrix(torch.tensor(t)), torch.Tensor)
    # orthonormal classes have MFI 0; identical classes 1
    assert mfi_score(np.eye(4)) == pytest.approx(0.0)
    assert mfi_score(np.ones((3, 4))) == pytest.approx(1.0)
    assert mfi_drop(t, np.eye(7)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 2 classes"):
        mfi_score(np.full((1, 4), 2.0))


def test_top_confusers_are_the_most_similar_other_classes():
    t = np.array([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    rows = top_confusers(t, ["a", "b", "c", "d"], k=2)
    assert rows[0]["class"] == "a" and rows[0]["confusers"][0][0] == "b"
    assert rows[2]["confusers"][0][0] == "b"
    assert all(r["class"] not in [n for n, _ in r["confusers"]] for r in rows)
    summary = mfi_summary(t, projected=np.eye(4))
    assert summary["projected"]["mfi"] == pytest.approx(0.0) and summary["mfi_drop"] == pytest.approx(1.0)


def test_cluster_order_puts_similar_classes_together_and_plots_are_written(tmp_path):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=8), rng.normal(size=8)
    t = np.stack([a, b, a + 0.01, b + 0.01, a - 0.01])
    order = list(cluster_order(t))
    groups = ["a" if i in (0, 2, 4) else "b" for i in order]
    assert groups in (["a"] * 3 + ["b"] * 2, ["b"] * 2 + ["a"] * 3)
    heat = plot_mfi_heatmap(t, tmp_path / "heat.png", ["a", "b", "a2", "b2", "a3"])
    many = plot_mfi_heatmap(rng.normal(size=(60, 8)), tmp_path / "many.png")
    hist = plot_mfi_histogram(t, tmp_path / "hist.png", after=np.eye(5))
    for p in (heat, many, hist):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp"))


def test_mfi_loss_class_form_matches_a_loop():
    rng = np.random.default_rng(2)
    t = rng.normal(size=(6, 4))
    tn = t / np.linalg.norm(t, axis=1, keepdims=True)
    expected = 0.2 * sum((tn[i] @ tn[j]) ** 2 for i in range(6) for j in range(6) if i != j) / 6
    got = mfi_loss(torch.tensor(t), form="class", off_diagonal_weight=0.2)
    assert float(got) == pytest.approx(expected, rel=1e-10)


def test_mfi_loss_barlow_form_matches_a_loop():
    rng = np.random.default_rng(3)
    t = rng.normal(size=(9, 3))
    z = (t - t.mean(0)) / (t.std(0) + 1e-5)
    corr = np.array([[sum(z[n, d] * z[n, e] for n in range(9)) / 9 for e in range(3)] for d in range(3)])
    expected = sum((corr[d, d] - 1) ** 2 for d in range(3)) + 0.2 * sum(
        corr[d, e] ** 2 for d in range(3) for e in range(3) if d != e)
    got = mfi_loss(torch.tensor(t), form="barlow", off_diagonal_weight=0.2)
    assert float(got) == pytest.approx(expected, rel=1e-8)
    with pytest.raises(ValueError, match="unknown MFI loss form"):
        mfi_loss(torch.tensor(t), form="nope")


def test_asymmetric_loss_matches_the_literal_formula():
    rng = np.random.default_rng(4)
    x = rng.normal(scale=3, size=(5, 4))
    y = (rng.random((5, 4)) < 0.4).astype(float)
    gn, gp, m, eps = 4.0, 1.0, 0.05, 1e-8
    expected = 0.0
    for i in range(5):
        for c in range(4):
            p = 1 / (1 + math.exp(-x[i, c]))
            if y[i, c] == 1:
                expected += -((1 - p) ** gp) * math.log(max(p, eps))
            else:
                pm = max(p - m, 0.0)
                expected += -(pm ** gn) * math.log(max(1 - pm, eps))
    got = asymmetric_loss(torch.tensor(x), torch.tensor(y), gamma_neg=gn, gamma_pos=gp, margin=m)
    assert float(got) == pytest.approx(expected, rel=1e-10)


def test_asymmetric_loss_focusing_weights_carry_no_gradient():
    x = torch.tensor([[0.7]], dtype=torch.float64, requires_grad=True)
    asymmetric_loss(x, torch.ones(1, 1, dtype=torch.float64), gamma_pos=1.0).backward()
    p = torch.sigmoid(x.detach())
    # d/dx [-(1-p) log p] with (1-p) constant = -(1-p) * (1-p)
    assert float(x.grad) == pytest.approx(float(-(1 - p) * (1 - p)), rel=1e-10)


def test_asymmetric_loss_ignores_masked_entries():
    x, y = torch.tensor([[2.0, -1.0]]), torch.tensor([[1.0, 0.0]])
    full = asymmetric_loss(x, y)
    only_first = asymmetric_loss(x, y, ignore=torch.tensor([[False, True]]))
    assert float(only_first) == pytest.approx(float(asymmetric_loss(x[:, :1], y[:, :1])))
    assert float(only_first) < float(full)


def test_map_matches_sklearn_with_ties_and_ignored_entries():
    rng = np.random.default_rng(5)
    scores = rng.normal(size=(60, 7))
    scores[:20, 0] = 0.5                               # ties
    scores[:, 1] = np.round(scores[:, 1], 1)           # many ties
    targets = (rng.random((60, 7)) < 0.3).astype(int)
    targets[0, :] = 1
    m, ap = mean_average_precision(scores, targets)
    expected = [average_precision_score(targets[:, c], scores[:, c]) * 100 for c in range(7)]
    np.testing.assert_allclose(ap, expected, rtol=1e-10)
    assert m == pytest.approx(np.mean(expected))
    ignored = targets.copy()
    ignored[:10, 2] = -1
    keep = slice(10, None)
    assert mean_average_precision(scores, ignored)[1][2] == pytest.approx(
        average_precision_score(targets[keep, 2], scores[keep, 2]) * 100)


def test_map_without_ties_is_mean_precision_at_the_positives_ranks():
    scores = np.array([[0.9], [0.8], [0.7], [0.6], [0.5]])
    targets = np.array([[1], [0], [1], [0], [1]])
    # positives at ranks 1, 3, 5: precisions 1, 2/3, 3/5
    assert mean_average_precision(scores, targets)[0] == pytest.approx(100 * (1 + 2 / 3 + 3 / 5) / 3)
    m, ap = mean_average_precision(np.c_[scores, scores], np.c_[targets, np.zeros_like(targets)])
    assert np.isnan(ap[1]) and m == pytest.approx(ap[0])


def _loop_miou(preds, targets, n, ignore):
    inter = np.zeros(n)
    union = np.zeros(n)
    for p, t in zip(preds, targets):
        valid = t != ignore
        for c in range(n):
            inter[c] += np.sum((p == c) & (t == c) & valid)
            union[c] += np.sum(((p == c) | (t == c)) & valid)
    iou = np.array([inter[c] / union[c] * 100 if union[c] > 0 else np.nan for c in range(n)])
    return np.nanmean(iou), iou


def test_mean_iou_matches_a_per_class_loop():
    rng = np.random.default_rng(6)
    preds = [rng.integers(0, 5, size=(13, 17)) for _ in range(4)]
    targets = [rng.integers(0, 5, size=(13, 17)) for _ in range(4)]
    for t in targets:
        t[rng.random(t.shape) < 0.1] = 255
    preds[2][preds[2] == 4] = 0          # class 5 never predicted ...
    for t in targets:
        t[t == 3] = 1                    # ... class 3 never in the ground truth
    miou, per = mean_iou(preds, targets, 6)
    ref_miou, ref = _loop_miou(preds, targets, 6, 255)
    np.testing.assert_allclose(per, ref, rtol=1e-12)
    assert np.isnan(per[5]) and miou == pytest.approx(ref_miou)
    with pytest.raises(ValueError, match="outside"):
        mean_iou([np.full((2, 2), 7)], [np.zeros((2, 2), int)], 6)


def test_a_transposed_head_is_refused_or_read_with_its_layout():
    """A [D, C] head (unit-norm columns) passed as [C, D] used to give the MFI of D 'classes' of
    width C (near 0); every MFI function now refuses it, and reads it with layout='DC'."""
    rng = np.random.default_rng(3)
    w = rng.normal(size=(32, 6)) + 0.4
    w /= np.linalg.norm(w, axis=0)                      # [D, C], unit columns
    expected = _loop_mfi(w.T)
    assert mfi_score(w, layout="DC") == pytest.approx(expected, abs=1e-12)
    np.testing.assert_allclose(mfi_matrix(w, layout="DC"), mfi_matrix(w.T), atol=1e-12)
    assert mfi_summary(w, layout="DC")["n_classes"] == 6
    assert len(top_confusers(w, k=1, layout="DC")) == 6
    for fn in (mfi_score, mfi_matrix, mfi_summary, top_confusers, cluster_order):
        with pytest.raises(ValueError, match=r"shape \(32, 6\) has unit-norm columns .* not 32 classes of width 6"):
            fn(w)
    with pytest.raises(ValueError, match="layout must be one of"):
        mfi_score(w, layout="DxC")
    # unnormalised [C, D] features (raw CLIP text embeddings) are not mistaken for a transposed head
    raw = 7.0 * rng.normal(size=(6, 32))
    assert mfi_score(raw) == pytest.approx(_loop_mfi(raw), abs=1e-12)
    with pytest.raises(ValueError, match="are all zero"):
        mfi_score(np.vstack([raw, np.zeros(32)]))
    # half precision in, float64 similarities out
    assert mfi_score(torch.tensor(w.T, dtype=torch.bfloat16)) == pytest.approx(expected, abs=2e-2)
    assert mfi_score(torch.tensor(w.T, dtype=torch.float16)) == pytest.approx(expected, abs=2e-3)


def test_real_stanford_cars_head_in_its_saved_layout(tip_cache_root):
    path = tip_cache_root / "stanford_cars" / "text_weights.pt"
    if not path.is_file():
        pytest.skip("StanfordCars text classifier not found")
    w = torch.load(path, map_location="cpu", weights_only=True)      # [D, C] = [512, 196], unit columns
    assert tuple(w.shape) == (512, 196)
    assert mfi_score(w, layout="DC") == pytest.approx(mfi_score(w.T), abs=1e-12)
    assert mfi_score(w.T) == pytest.approx(0.6538, abs=5e-5)
    with pytest.raises(ValueError, match=r"\[D, C\] classifier \(512 x 196"):
        mfi_score(w)
