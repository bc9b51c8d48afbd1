"""ZeroShotCLIP / TipAdapter / APE on synthetic features, checked against dense float64 formulas."""
from __future__ import annotations

import itertools
import sys
import warnings

import numpy as np
import pytest
import torch
from _doubles import LinearProjectorDouble, _unit
from _doubles import make_data as _make_data
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from ssp._checks import ROUTINGS
from ssp.methods.base import ClassSegments
from ssp.methods.cache_models import (
    APE,
    TipAdapter,
    ape_channel_criterion,
    ape_key_divergence,
)
from ssp.methods.zero_shot import ZeroShotCLIP

# ----------------------------------------------------------------------------- test data


def make_data(n_classes=5, dim=12, shots=(3, 1, 4, 2, 3), n_query=40, seed=0, dtype=np.float64):
    """Text [C, D], support [N, D] in a shuffled order with unequal shots, queries [M, D]."""
    return _make_data(n_classes, dim, shots, n_query, seed, dtype, noise=1.2, offset=0.0)


# ----------------------------------------------------------------------------- dense references


def loop_criterion(text, support, labels, weights):
    """APE's criterion with the reference's four nested loops (float64, any shot counts)."""
    n_classes, dim = text.shape
    groups = [np.vstack([text[c]] + [support[labels == c]]) for c in range(n_classes)]
    total = np.zeros(dim)
    count = 0
    for i, j in itertools.product(range(n_classes), repeat=2):
        if i == j:
            continue
        for m in range(groups[i].shape[0]):
            for n in range(groups[j].shape[0]):
                total += groups[i][m] * groups[j][n]
                count += 1
    sim = total / count
    var = text.var(axis=0, ddof=1)
    return sim, var, -weights[0] * sim + weights[1] * var


def dense_logits(method, text, support, labels, queries, *, alpha=1.0, beta=1.0, gamma=0.0,
                 n_channels=None, weights=(0.5, 0.5), projector_seed=None, routing="paper",
                 logit_scale=100.0):
    """Float64 reference with a dense one-hot value matrix and literal formulas."""
    w, x = _unit(text), _unit(queries)
    f = None if support is None else _unit(support)
    n_classes, dim = w.shape
    x_zs, w_zs, x_cache, keys = x, w, x, f
    text_crit = w
    if projector_seed is not None:
        a_v, a_l = LinearProjectorDouble.maps(projector_seed, dim)
        w_hat, keys = _unit(w @ a_l.T), _unit(f @ a_v.T)
        x_v, x_l = _unit(x @ a_v.T), _unit(x @ a_l.T)
        text_crit = w_hat
        if routing == "paper":
            x_zs, w_zs, x_cache = x_l, w_hat, x_v
        elif routing == "reference":
            x_cache = x_l
        else:
            x_cache = x_v
    logits = logit_scale * x_zs @ w_zs.T
    if method == "zero-shot":
        return logits
    y_onehot = np.eye(n_classes)[labels]
    values = y_onehot
    if method == "ape":
        crit = loop_criterion(text_crit, keys, labels, weights)[2]
        q = dim if n_channels is None else min(n_channels, dim)
        chans = np.sort(np.argsort(-crit, kind="stable")[:q])
        keys_o = _unit(keys[:, chans])
        w_o = _unit(text_crit[:, chans])
        z = keys_o @ w_o.T
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        div = np.sum(y_onehot * np.log2((y_onehot + 1e-6) / (p + 1e-6)), axis=1)
        values = y_onehot * np.exp(gamma * div)[:, None]
        affinity = _unit(x_cache[:, chans]) @ keys_o.T
    else:
        affinity = x_cache @ keys.T
    return logits + alpha * np.exp(-beta * (1 - affinity)) @ values


# ----------------------------------------------------------------------------- building blocks


@pytest.mark.parametrize("shots", [(3, 3, 3, 3), (1, 4, 2, 3)])
def test_closed_form_criterion_equals_four_nested_loops(shots):
    text, support, labels, _, _ = make_data(n_classes=4, dim=6, shots=shots, seed=1)
    s, v, j = ape_channel_criterion(text, support, labels, weights=(0.6, 0.4))
    s_ref, v_ref, j_ref = loop_criterion(text, support, labels, (0.6, 0.4))
    np.testing.assert_allclose(s.numpy(), s_ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(v.numpy(), v_ref, rtol=1e-12)
    np.testing.assert_allclose(j.numpy(), j_ref, rtol=1e-12, atol=1e-14)
    assert s.dtype == torch.float64


def test_criterion_is_order_free_and_needs_two_classes():
    text, support, labels, _, _ = make_data(seed=2)
    perm = np.random.default_rng(0).permutation(len(labels))
    a = ape_channel_criterion(text, support, labels)[2]
    b = ape_channel_criterion(text, support[perm], labels[perm])[2]
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="at least 2 classes"):
        ape_channel_criterion(text[:1], support[labels == 0], labels[labels == 0])


def test_key_divergence_matches_the_reference_sum():
    text, support, labels, _, _ = make_data(seed=3)
    w, f = torch.as_tensor(_unit(text)), torch.as_tensor(_unit(support))
    y = torch.as_tensor(labels)
    onehot = torch.nn.functional.one_hot(y, text.shape[0]).double()
    p = torch.softmax(f @ w.T, dim=1)
    expected = (onehot * torch.log2((onehot + 1e-6) / (p + 1e-6))).sum(1)
    torch.testing.assert_close(ape_key_divergence(f, w, y), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("counts", [(2, 2, 2), (3, 1, 2), (0, 2, 1)])
def test_class_segments_equal_one_hot_products(counts):
    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    seg = ClassSegments(labels, len(counts))
    gen = torch.Generator().manual_seed(0)
    values = torch.rand(5, len(labels), generator=gen, dtype=torch.float64)
    weights = torch.rand(4, len(labels), generator=gen, dtype=torch.float64)
    onehot = torch.nn.functional.one_hot(labels, len(counts)).double()
    torch.testing.assert_close(seg.sum(values), values @ onehot)
    torch.testing.assert_close(seg.sum(values, weights[0]), (values * weights[0]) @ onehot)
    many = seg.sum_many(values, weights)                                   # [C, M, G]
    expected = torch.einsum("mn,gn,nc->cmg", values, weights, onehot)
    torch.testing.assert_close(many, expected)
    with pytest.raises(ValueError, match="sorted"):
        ClassSegments(labels.flip(0), len(counts))


# ----------------------------------------------------------------------------- logits


def test_zero_shot_logits_and_fit_without_support():
    text, _, _, queries, qy = make_data()
    model = ZeroShotCLIP(logit_scale=50.0).fit(text_features=text)
    np.testing.assert_allclose(model.decision_function(queries),
                               dense_logits("zero-shot", text, None, None, queries, logit_scale=50.0),
                               rtol=1e-12)
    np.testing.assert_array_equal(model.classes_, np.arange(text.shape[0]))
    assert model.score(queries, qy) == pytest.approx(np.mean(model.predict(queries) == qy))


@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (2.5, 7.0), (0.3, 0.1)])
def test_tip_adapter_matches_dense_formula_with_unequal_shuffled_shots(alpha, beta):
    text, support, labels, queries, _ = make_data()
    model = TipAdapter(alpha=alpha, beta=beta).fit(support, labels, text_features=text)
    expected = dense_logits("tip-adapter", text, support, labels, queries, alpha=alpha, beta=beta)
    np.testing.assert_allclose(model.decision_function(queries), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(model.predict(queries), expected.argmax(1))


@pytest.mark.parametrize("n_channels,gamma", [(None, 0.5), (7, 0.0), (5, 1.3)])
def test_ape_matches_dense_formula(n_channels, gamma):
    text, support, labels, queries, _ = make_data(seed=4)
    model = APE(alpha=1.7, beta=3.0, gamma=gamma, n_channels=n_channels,
                criterion_weights=(0.6, 0.4)).fit(support, labels, text_features=text)
    expected = dense_logits("ape", text, support, labels, queries, alpha=1.7, beta=3.0,
                            gamma=gamma, n_channels=n_channels, weights=(0.6, 0.4))
    np.testing.assert_allclose(model.decision_function(queries), expected, rtol=1e-11, atol=1e-11)
    assert model.channels_.shape[0] == (n_channels or text.shape[1])


def test_tip_adapter_at_alpha_zero_is_zero_shot():
    text, support, labels, queries, _ = make_data()
    tip = TipAdapter(alpha=0.0, beta=5.0).fit(support, labels, text_features=text)
    zs = ZeroShotCLIP().fit(text_features=text)
    np.testing.assert_array_equal(tip.decision_function(queries), zs.decision_function(queries))


def test_ape_with_all_channels_and_gamma_zero_is_tip_adapter():
    text, support, labels, queries, _ = make_data(seed=5)
    ape = APE(alpha=2.0, beta=4.0, gamma=0.0).fit(support, labels, text_features=text)
    tip = TipAdapter(alpha=2.0, beta=4.0).fit(support, labels, text_features=text)
    np.testing.assert_allclose(ape.decision_function(queries), tip.decision_function(queries),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls", [TipAdapter, APE])
def test_support_order_does_not_matter(cls):
    text, support, labels, queries, _ = make_data(seed=6)
    perm = np.random.default_rng(1).permutation(len(labels))
    kwargs = dict(alpha=1.5, beta=3.0)
    if cls is APE:
        kwargs.update(gamma=0.7, n_channels=8)
    a = cls(**kwargs).fit(support, labels, text_features=text)
    b = cls(**kwargs).fit(support[perm], labels[perm], text_features=text)
    np.testing.assert_allclose(a.decision_function(queries), b.decision_function(queries),
                               rtol=1e-12, atol=1e-12)
    assert bool((a.support_labels_[1:] >= a.support_labels_[:-1]).all())
    np.testing.assert_allclose(a.support_features_[0], _unit(support[a.support_order_[0]]))


def test_class_grouped_but_unsorted_cache_order():
    """Like the real StanfordCars cache (13,13,..,2,2,..): blocks in arbitrary class order."""
    text, support, labels, queries, _ = make_data(n_classes=4, shots=(3, 3, 3, 3), seed=7)
    block_order = [2, 0, 3, 1]
    idx = np.concatenate([np.flatnonzero(labels == c) for c in block_order])
    model = APE(alpha=1.0, beta=2.0, gamma=0.4, n_channels=9).fit(
        support[idx], labels[idx], text_features=text)
    expected = dense_logits("ape", text, support, labels, queries, alpha=1.0, beta=2.0,
                            gamma=0.4, n_channels=9)
    np.testing.assert_allclose(model.decision_function(queries), expected, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("cls", [ZeroShotCLIP, TipAdapter, APE])
def test_numpy_and_torch_round_trip(cls):
    text, support, labels, queries, _ = make_data()
    fit_args = () if cls is ZeroShotCLIP else (support, labels)
    m_np = cls().fit(*fit_args, text_features=text)
    fit_args_t = tuple(torch.as_tensor(a) for a in fit_args)
    m_t = cls().fit(*fit_args_t, text_features=torch.as_tensor(text))
    out_np = m_np.decision_function(queries)
    out_t = m_t.decision_function(torch.as_tensor(queries))
    assert isinstance(out_np, np.ndarray) and isinstance(out_t, torch.Tensor)
    assert out_np.dtype == np.float64 and out_t.dtype == torch.float64
    np.testing.assert_array_equal(out_np, out_t.numpy())
    pred_t = m_t.predict(torch.as_tensor(queries))
    assert isinstance(pred_t, torch.Tensor) and pred_t.dtype == torch.int64
    np.testing.assert_array_equal(m_np.predict(queries), pred_t.numpy())


@pytest.mark.parametrize("cls", [TipAdapter, APE])
def test_float32_agrees_with_float64(cls):
    text, support, labels, queries, _ = make_data(seed=8)
    kwargs = dict(alpha=1.2, beta=3.0) | ({"gamma": 0.5, "n_channels": 10} if cls is APE else {})
    m64 = cls(**kwargs).fit(support, labels, text_features=text)
    m32 = cls(**kwargs).fit(support.astype(np.float32), labels,
                            text_features=text.astype(np.float32))
    out32 = m32.decision_function(queries.astype(np.float32))
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32, m64.decision_function(queries), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("cls", [TipAdapter, APE])
def test_chunk_size_does_not_change_logits(cls):
    text, support, labels, queries, _ = make_data(seed=9)
    full = cls(chunk_size=None).fit(support, labels, text_features=text).decision_function(queries)
    for chunk in (1, 7, 1000):
        out = cls(chunk_size=chunk).fit(support, labels, text_features=text)
        # equal up to the BLAS blocking of the affinity matmul (last-bit differences)
        np.testing.assert_allclose(out.decision_function(queries), full, rtol=1e-14, atol=1e-13)


def test_changing_search_params_needs_no_refit():
    text, support, labels, queries, _ = make_data(seed=10)
    model = APE(alpha=1.0, beta=1.0, gamma=0.0).fit(support, labels, text_features=text)
    model.set_params(alpha=2.0, beta=5.0, gamma=0.8)
    fresh = APE(alpha=2.0, beta=5.0, gamma=0.8).fit(support, labels, text_features=text)
    np.testing.assert_array_equal(model.decision_function(queries),
                                  fresh.decision_function(queries))


def test_clone_and_params():
    model = APE(alpha=2.0, n_channels=10, criterion_weights=(0.6, 0.4), routing="vision")
    copy = clone(model)
    assert copy.get_params() == model.get_params()
    assert set(TipAdapter().get_params()) == {"alpha", "beta", "projector", "routing",
                                              "logit_scale", "chunk_size", "device"}


def test_n_channels_above_width_is_clamped_with_a_warning():
    text, support, labels, queries, _ = make_data()
    with pytest.warns(UserWarning, match="exceeds the feature width") as caught:
        big = APE(n_channels=500).fit(support, labels, text_features=text)
    # attributed to this line, not to a line inside the library
    assert [w.filename for w in caught] == [__file__]
    assert caught[0].lineno == sys._getframe().f_lineno - 3
    assert big.channels_.shape[0] == text.shape[1]
    full = APE().fit(support, labels, text_features=text)
    np.testing.assert_array_equal(big.decision_function(queries), full.decision_function(queries))


# ----------------------------------------------------------------------------- projector routing


@pytest.mark.parametrize("routing", ROUTINGS)
@pytest.mark.parametrize("method", ["zero-shot", "tip-adapter", "ape"])
def test_routings_match_dense_formulas(method, routing):
    text, support, labels, queries, _ = make_data(seed=11)
    patches = np.zeros((len(labels), 3, text.shape[1]))
    kwargs = dict(projector=LinearProjectorDouble(seed=3), routing=routing)
    params = dict(alpha=1.4, beta=2.5, gamma=0.6, n_channels=9, weights=(0.6, 0.4))
    if method == "zero-shot":
        model = ZeroShotCLIP(**kwargs).fit(support, labels, text_features=text,
                                           patch_features=patches)
    elif method == "tip-adapter":
        model = TipAdapter(alpha=1.4, beta=2.5, **kwargs).fit(
            support, labels, text_features=text, patch_features=patches)
    else:
        model = APE(alpha=1.4, beta=2.5, gamma=0.6, n_channels=9, criterion_weights=(0.6, 0.4),
                    **kwargs).fit(support, labels, text_features=text, patch_features=patches)
    expected = dense_logits(method, text, support, labels, queries, projector_seed=3,
                            routing=routing, **params)
    np.testing.assert_allclose(model.decision_function(queries), expected, rtol=1e-11, atol=1e-11)


def test_routing_can_change_after_fit_and_differs():
    text, support, labels, queries, _ = make_data(seed=12)
    patches = np.zeros((len(labels), 2, text.shape[1]))
    model = TipAdapter(projector=LinearProjectorDouble()).fit(
        support, labels, text_features=text, patch_features=patches)
    outs = {}
    for routing in ROUTINGS:
        model.set_params(routing=routing)
        outs[routing] = model.decision_function(queries)
    assert not np.allclose(outs["paper"], outs["reference"])
    assert not np.allclose(outs["reference"], outs["vision"])


def test_projector_is_cloned_when_patch_features_are_given():
    text, support, labels, _, _ = make_data()
    patches = np.zeros((len(labels), 4, text.shape[1]))
    projector = LinearProjectorDouble(seed=1)
    model = TipAdapter(projector=projector).fit(support, labels, text_features=text,
                                                patch_features=patches)
    assert model.projector_ is not projector and not hasattr(projector, "text_features_")
    assert model.projector_.patch_shape_ == patches.shape and model.projector_.seed == 1
    # a fitted projector without patch features is used as it is
    fitted = LinearProjectorDouble(seed=1).fit(patches, labels, image_features=support,
                                               text_features=text)
    model2 = TipAdapter(projector=fitted).fit(support, labels, text_features=text)
    assert model2.projector_ is fitted


def test_without_projector_routing_has_no_effect():
    text, support, labels, queries, _ = make_data()
    outs = [TipAdapter(routing=r).fit(support, labels, text_features=text).decision_function(queries)
            for r in ROUTINGS]
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])


def test_with_the_real_ssp_projector():
    import ssp.methods.ssp.projector as projector_module
    text, support, labels, queries, qy = make_data(n_classes=4, dim=16, shots=(3, 2, 3, 2),
                                                   seed=13)
    rng = np.random.default_rng(0)
    patches = support[:, None, :] + 0.5 * rng.normal(size=(len(labels), 6, text.shape[1]))
    proj = projector_module.SSPProjector(patch_top_k=4, class_top_k=2, rank=3, device="cpu")
    for routing in ROUTINGS:
        model = APE(alpha=1.0, beta=2.0, gamma=0.3, n_channels=12, projector=proj,
                    routing=routing, device="cpu").fit(
            support, labels, text_features=text, patch_features=patches)
        fitted = model.projector_
        assert fitted is not proj and hasattr(fitted, "text_features_")
        x = _unit(queries)
        x_v = _unit(np.asarray(fitted.transform(x, view="vision")))
        x_l = _unit(np.asarray(fitted.transform(x, view="language")))
        keys = _unit(np.asarray(fitted.transform(_unit(support), view="vision")))
        w_hat = _unit(np.asarray(fitted.text_features_))
        np.testing.assert_allclose(model.keys_[np.argsort(model.support_order_)], keys,
                                   rtol=1e-10, atol=1e-10)
        zs_q, zs_w = (x_l, w_hat) if routing == "paper" else (x, _unit(text))
        cache_q = x_l if routing == "reference" else x_v
        # channels and divergence rebuilt from (keys, w_hat) with the literal loops, input order
        crit = loop_criterion(w_hat, keys, labels, (0.5, 0.5))[2]
        chans = np.sort(np.argsort(-crit, kind="stable")[:12])
        np.testing.assert_array_equal(model.channels_, chans)
        keys_o, w_o = _unit(keys[:, chans]), _unit(w_hat[:, chans])
        p = np.exp(keys_o @ w_o.T) / np.exp(keys_o @ w_o.T).sum(1, keepdims=True)
        onehot = np.eye(4)[labels]
        divergence = np.sum(onehot * np.log2((onehot + 1e-6) / (p + 1e-6)), axis=1)
        aff = _unit(cache_q[:, chans]) @ keys_o.T
        values = onehot * np.exp(0.3 * divergence)[:, None]
        expected = 100 * zs_q @ zs_w.T + np.exp(-2.0 * (1 - aff)) @ values
        np.testing.assert_allclose(model.decision_function(queries), expected, rtol=1e-9,
                                   atol=1e-9)
        assert model.score(queries, qy) == np.mean(expected.argmax(1) == qy)


# ----------------------------------------------------------------------------- errors


def test_errors_are_clear():
    text, support, labels, queries, _ = make_data()
    with pytest.raises(NotFittedError):
        TipAdapter().predict(queries)
    with pytest.raises(ValueError, match="labels has 3 entries"):
        TipAdapter().fit(support, labels[:3], text_features=text)
    with pytest.raises(ValueError, match="image_features have D=11"):
        TipAdapter().fit(support[:, :11], labels, text_features=text)
    with pytest.raises(ValueError, match="contains class 5"):
        TipAdapter().fit(support, np.where(labels == 0, 5, labels), text_features=text)
    bad = support.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        APE().fit(bad, labels, text_features=text)
    model = TipAdapter().fit(support, labels, text_features=text)
    with pytest.raises(ValueError, match="X has 11 features, but TipAdapter is expecting 12"):
        model.predict(queries[:, :11])
    with pytest.raises(ValueError, match="NaN"):
        model.predict(np.full_like(queries, np.nan))
    with pytest.raises(ValueError, match="routing must be one of"):
        TipAdapter(routing="fancy").fit(support, labels, text_features=text)
    model.set_params(routing="fancy")
    with pytest.raises(ValueError, match="routing must be one of"):
        model.predict(queries)
    with pytest.raises(ValueError, match="needs support image_features"):
        TipAdapter().fit(None, None, text_features=text)


def test_ape_needs_every_class_and_refit_after_fit_time_changes():
    text, support, labels, queries, _ = make_data()
    keep = labels != 2
    with pytest.raises(ValueError, match=r"classes \[2\] have none"):
        APE().fit(support[keep], labels[keep], text_features=text)
    # Tip-Adapter allows it: the empty class just has no cache term
    TipAdapter().fit(support[keep], labels[keep], text_features=text).predict(queries)
    model = APE(n_channels=8).fit(support, labels, text_features=text)
    model.set_params(n_channels=4)
    with pytest.raises(ValueError, match="n_channels changed after fit"):
        model.predict(queries)
    with pytest.raises(ValueError, match="n_channels must be a positive integer"):
        APE(n_channels=0).fit(support, labels, text_features=text)
    with pytest.raises(ValueError, match="criterion_weights must be"):
        APE(criterion_weights=(1.0,)).fit(support, labels, text_features=text)


def test_failed_refit_leaves_the_model_unfitted():
    text, support, labels, queries, _ = make_data()
    model = APE().fit(support, labels, text_features=text)
    keep = labels != 1
    with pytest.raises(ValueError, match="have none"):
        model.fit(support[keep], labels[keep], text_features=text)
    with pytest.raises(NotFittedError):
        model.predict(queries)
    assert not [k for k in vars(model) if k.endswith("_")]


def test_projector_errors():
    text, support, labels, _, _ = make_data()
    patches = np.zeros((len(labels), 3, text.shape[1]))
    with pytest.raises(ValueError, match="projector is not fitted"):
        TipAdapter(projector=LinearProjectorDouble()).fit(support, labels, text_features=text)
    with pytest.raises(ValueError, match="projector is None"):
        TipAdapter().fit(support, labels, text_features=text, patch_features=patches)
    with pytest.raises(ValueError, match="patch_features must be"):
        TipAdapter(projector=LinearProjectorDouble()).fit(
            support, labels, text_features=text, patch_features=patches[:-1])
    with pytest.raises(ValueError, match="needs image_features"):
        ZeroShotCLIP(projector=LinearProjectorDouble()).fit(text_features=text,
                                                            patch_features=patches)


# ------------------------------------------------------------------ APE's channel count relative to D


def test_n_channels_is_a_count_or_a_fraction_of_d():
    from ssp.methods.cache_models import resolve_n_channels

    assert resolve_n_channels(None, 512) == 512
    assert resolve_n_channels(0.5, 512) == 256 and resolve_n_channels(1.0, 512) == 512
    assert resolve_n_channels(0.78125, 1024) == 800 and resolve_n_channels(0.78125, 512) == 400
    assert resolve_n_channels(0.0001, 512) == 1  # never zero channels
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_n_channels(300, 512) == 300 and resolve_n_channels(np.int64(512), 512) == 512
    with pytest.warns(UserWarning, match="n_channels=600 exceeds the feature width D=512; using all 512"):
        assert resolve_n_channels(600, 512) == 512
    for bad in (0.0, 1.5, -0.5, True, "0.5", 0, float("nan")):
        with pytest.raises(ValueError, match="n_channels must be a positive integer, a float in \\(0, 1\\] or None"):
            resolve_n_channels(bad, 512)


def test_ape_takes_a_fraction_of_d_and_matches_the_same_count():
    text, support, labels, queries, _ = make_data()  # D = 12
    half = APE(n_channels=0.5, alpha=2.0, beta=3.0).fit(support, labels, text_features=text)
    five = APE(n_channels=6, alpha=2.0, beta=3.0).fit(support, labels, text_features=text)
    assert half.channels_.shape == (6,) and half.get_params()["n_channels"] == 0.5
    np.testing.assert_array_equal(half.channels_, five.channels_)
    np.testing.assert_allclose(half.decision_function(queries), five.decision_function(queries))


def test_shipped_channel_counts_are_fractions_of_d_and_fit_every_backbone_without_a_clamp():
    """Every shipped config gives APE's and APE-T's channel counts as fractions of D: the
    published count of RN50 (D = 1024) exactly, the same share of a ViT-B's 512 channels, and no
    clamp warning on either backbone."""
    from importlib import resources

    import yaml

    from ssp.methods.registry import get_method
    from ssp.run.config import load_config

    files = sorted((resources.files("ssp") / "configs").iterdir(), key=lambda f: f.name)
    seen = 0
    for f in (f for f in files if f.name.endswith(".yaml")):
        cfg = yaml.safe_load(f.read_text())
        for section in ("ape", "ape_t"):
            if "n_channels" in cfg.get(section, {}):
                value = cfg[section]["n_channels"]
                assert isinstance(value, float) and 0 < value <= 1, (f.name, section, value)
                assert value * 1024 == round(value * 1024), (f.name, section, value)  # a published count
                seen += 1
    assert seen >= 20
    cfg = load_config("stanford_cars")
    for method, section in (("ape", "ape"), ("ape-t", "ape_t")):
        spec = get_method(method)
        for dim in (512, 1024):
            text, support, labels, *_ = make_data(n_classes=3, dim=dim, shots=(2, 2, 2), n_query=2)
            model = spec.build(cfg, n_features=dim, device="cpu", **({"epochs": 0} if spec.fine_tuned else {}))
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                model.fit(support, labels, text_features=text)
            assert len(model.channels_) == round(cfg[section]["n_channels"] * dim)


@pytest.mark.parametrize("method", ["zero-shot", "tip-adapter", "ape", "proker", "linear-probe"])
def test_new_classes_without_a_transfer_get_the_zero_shot_term_through_the_vision_projector(method):
    """Base-to-new: classes without shots are scored by s x t^T; with a projector the vision
    projector carries over (query and text vision-projected), the language projectors do not."""
    from ssp.methods.registry import get_method
    from ssp.run.config import load_config

    gen = np.random.default_rng(0)
    n_base, dim = 4, 12
    text = _unit(gen.normal(size=(n_base + 3, dim)))
    y = np.repeat(np.arange(n_base), 3)
    x = _unit(text[y] + 0.4 * gen.normal(size=(len(y), dim)))
    patches = np.repeat(x[:, None, :], 2, axis=1)
    queries = _unit(gen.normal(size=(9, dim)))
    spec = get_method(method)
    cfg = load_config("dtd")
    for projector in (None, LinearProjectorDouble(seed=3)):
        model = spec.build(cfg, n_features=dim, projector=projector, device="cpu")
        model.fit(x, y, text_features=text[:n_base], patch_features=None if projector is None else patches)
        got = model.new_class_logits(queries, text[n_base:])
        q, t = queries, text[n_base:]
        if projector is not None:
            a_v, _ = LinearProjectorDouble.maps(3, dim)
            q, t = _unit(_unit(q) @ a_v.T), _unit(_unit(t) @ a_v.T)
        np.testing.assert_allclose(got, 100 * _unit(q) @ _unit(t).T, rtol=1e-6, atol=1e-5)
        assert "zero-shot" in model.new_class_rule
