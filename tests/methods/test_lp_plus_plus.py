"""LP++: the logits after a fixed number of steps equal a dense float64 implementation of the
initialisation and the update rule; validation selection, training inputs and routing."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _doubles import LinearProjectorDouble, _unit, make_data

from ssp.methods.lp_plus_plus import LPPlusPlus
from ssp.methods.search import validation_search
from ssp.methods.zero_shot import ZeroShotCLIP


def reference_lpp(z, y, cosines, n_classes, *, epochs, alpha_every=10, scale=250.0, momentum=0.9,
                  seed=1, counts=None):
    """Dense float64 LP++: returns (W [C, D], b [C], alpha [C]) after ``epochs`` full-batch steps.

    z: [N, D] unit training inputs, y: [N], cosines: [N, C] text cosines of the inputs,
    counts: support images per class (default: from y)."""
    n, dim = z.shape
    onehot = np.eye(n_classes)[y]
    counts = onehot.sum(0) if counts is None else counts
    means = onehot.T @ z / np.maximum(onehot.sum(0), 1)[:, None]
    w = counts[:, None] * means
    bound = 1 / math.sqrt(dim)
    gen = torch.Generator().manual_seed(seed)
    b = (torch.rand(n_classes, generator=gen, dtype=torch.float64) * 2 - 1).numpy() * bound
    own = (onehot * cosines).sum(0) / np.maximum(onehot.sum(0), 1)
    alpha = np.full(n_classes, scale * own[onehot.sum(0) > 0].mean())
    step_w = 4 * n / np.linalg.eigvalsh(z.T @ z).max()
    step_a = n / (4 * (cosines ** 2).sum(0).max())
    vw = vb = None
    ga = np.zeros(n_classes)
    for t in range(1, epochs + 1):
        logits = z @ w.T + b + alpha * cosines
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        r = (p - onehot) / n
        gw, gb = r.T @ z, r.sum(0)
        ga += (r * cosines).sum(0)
        vw, vb = (gw, gb) if vw is None else (momentum * vw + gw, momentum * vb + gb)
        w, b = w - step_w * vw, b - step_w * vb
        if t % alpha_every == 0:
            alpha = alpha - step_a * ga
    return w, b, alpha


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("epochs,alpha_every", [(0, 10), (7, 3), (25, 10)])
def test_logits_equal_a_dense_float64_implementation(epochs, alpha_every):
    text, support, labels, queries, _ = make_data()
    model = LPPlusPlus(epochs=epochs, alpha_every=alpha_every, seed=4, device="cpu").fit(
        support, labels, text_features=text)
    z, t, q = _unit(support), _unit(text), _unit(queries)
    w, b, alpha = reference_lpp(z, labels, z @ t.T, len(text), epochs=epochs, alpha_every=alpha_every, seed=4)
    expected = q @ w.T + b + alpha * (q @ t.T)
    assert _rel(model.decision_function(queries), expected) < 1e-10
    np.testing.assert_allclose(model.alpha_, alpha, rtol=1e-10)
    assert model.selection_ == "last" and model.best_epoch_ == epochs and len(model.history_) == epochs
    assert model.training_inputs_ == "keys"


def test_logits_equal_the_dense_implementation_on_real_features(tip_cache_root):
    from ssp.features.tip_cache import load_tip_adapter_cache

    cache = load_tip_adapter_cache(tip_cache_root / "stanford_cars", 1)
    support, labels = cache.support_features.double(), cache.support_labels
    text, queries = cache.text_features.double(), cache.val_features[:200].double()
    model = LPPlusPlus(epochs=30, device="cpu").fit(support.float(), labels, text_features=text.float())
    z, t, q = (_unit(a.numpy()) for a in (support, text, queries))
    w, b, alpha = reference_lpp(z, labels.numpy(), z @ t.T, len(t), epochs=30)
    expected = q @ w.T + b + alpha * (q @ t.T)
    assert _rel(model.decision_function(queries.float()).numpy(), expected) < 1e-4


def test_validation_keeps_the_last_best_step_and_never_sees_test_data():
    text, support, labels, queries, query_labels = make_data(seed=2)
    val, val_y = queries[:60], query_labels[:60]
    model = LPPlusPlus(epochs=40, device="cpu").fit(support, labels, text_features=text,
                                                    val_features=val, val_labels=val_y)
    accuracies = [h["val_score"] for h in model.history_]
    assert model.selection_ == "validation"
    best = max(accuracies)
    initial = LPPlusPlus(epochs=0, device="cpu").fit(support, labels, text_features=text).score(val, val_y)
    if best >= initial:
        assert model.best_epoch_ == max(i + 1 for i, a in enumerate(accuracies) if a == best)
    # the kept state is the state of that step: a fresh fit stopped there gives the same logits
    again = LPPlusPlus(epochs=model.best_epoch_, device="cpu").fit(support, labels, text_features=text)
    np.testing.assert_allclose(model.decision_function(queries), again.decision_function(queries), rtol=1e-12)
    assert model.score(val, val_y) == pytest.approx(max(best, initial))
    # nothing left to search: validation_search scores the fitted model
    from ssp.methods.search import validation_search

    result = validation_search(model, val, val_y)
    assert result.best_params_ == {} and result.best_score_ == pytest.approx(model.score(val, val_y))


def test_one_view_equals_the_keys_and_views_are_recorded():
    text, support, labels, queries, _ = make_data(seed=3)
    keys = LPPlusPlus(epochs=12, device="cpu").fit(support, labels, text_features=text)
    one = LPPlusPlus(epochs=12, device="cpu").fit(support, labels, text_features=text,
                                                  view_features=support[None])
    np.testing.assert_allclose(one.decision_function(queries), keys.decision_function(queries), rtol=1e-12)
    rng = np.random.default_rng(0)
    views = support[None] + 0.3 * rng.normal(size=(3, *support.shape))
    many = LPPlusPlus(epochs=12, device="cpu").fit(support, labels, text_features=text, view_features=views)
    assert many.training_inputs_ == "views" and many.n_views_ == 3
    # the dense reference on the 3N stacked views, class weights n_k · (mean of the class's views)
    z = _unit(views.reshape(-1, views.shape[-1]))
    y = np.tile(labels, 3)
    t = _unit(text)
    w, b, alpha = reference_lpp(z, y, z @ t.T, len(text), epochs=12, counts=np.bincount(labels))
    q = _unit(queries)
    assert _rel(many.decision_function(queries), q @ w.T + b + alpha * (q @ t.T)) < 1e-10
    with pytest.raises(ValueError, match=r"view_features must be \[E, N, D\]"):
        LPPlusPlus(device="cpu").fit(support, labels, text_features=text, view_features=views[:, :3])


def test_paper_routing_trains_on_the_projected_views():
    text, support, labels, queries, _ = make_data(seed=4)
    proj = LinearProjectorDouble(seed=2, scale=0.4)
    patches = support[:, None, :].repeat(2, axis=1)
    model = LPPlusPlus(epochs=9, projector=proj, device="cpu").fit(
        support, labels, text_features=text, patch_features=patches)
    a_v, a_l = LinearProjectorDouble.maps(2, text.shape[1], 0.4)
    z_v, z_l = _unit(_unit(support) @ a_v.T), _unit(_unit(support) @ a_l.T)
    t_l = _unit(_unit(_unit(text) @ a_l.T))
    w, b, alpha = reference_lpp(z_v, labels, z_l @ t_l.T, len(text), epochs=9)
    q_v, q_l = _unit(_unit(queries) @ a_v.T), _unit(_unit(queries) @ a_l.T)
    assert _rel(model.decision_function(queries), q_v @ w.T + b + alpha * (q_l @ t_l.T)) < 1e-10
    with pytest.raises(ValueError, match="trained under routing 'paper'"):
        validation_search(model, queries, np.zeros(len(queries), dtype=int), {"routing": ["paper", "vision"]})


def test_clearly_beats_zero_shot_on_real_features(tip_cache_root):
    from ssp.features.tip_cache import load_tip_adapter_cache

    cache = load_tip_adapter_cache(tip_cache_root / "stanford_cars", 4)
    n = cache.val_labels.shape[0]
    perm = np.random.default_rng(0).permutation(n)
    search, held = perm[: n // 2], perm[n // 2:]
    val = (cache.val_features[search], cache.val_labels[search])
    test = (cache.val_features[held], cache.val_labels[held])
    model = LPPlusPlus(epochs=100, device="cpu").fit(
        cache.support_features, cache.support_labels, text_features=cache.text_features,
        val_features=val[0], val_labels=val[1])
    zero_shot = ZeroShotCLIP(device="cpu").fit(text_features=cache.text_features)
    assert model.score(*test) > zero_shot.score(*test) + 0.03


@pytest.mark.parametrize("param,value,match", [("epochs", -1, "epochs"), ("alpha_every", 0, "alpha_every"),
                                                ("momentum", 1.0, "momentum"), ("init_alpha_scale", -2.0, "init_alpha_scale"),
                                                ("seed", 1.5, "seed")])
def test_bad_settings_are_refused_at_fit(param, value, match):
    text, support, labels, _, _ = make_data()
    model = LPPlusPlus(**{param: value})
    with pytest.raises(ValueError, match=match):
        model.fit(support, labels, text_features=text)
    assert not [k for k in vars(model) if k.endswith("_")]


def test_torch_in_torch_out():
    text, support, labels, queries, _ = make_data()
    model = LPPlusPlus(epochs=3, device="cpu").fit(torch.as_tensor(support), torch.as_tensor(labels),
                                                   text_features=torch.as_tensor(text))
    assert isinstance(model.weights_, torch.Tensor) and model.weights_.shape == (len(text), text.shape[1])
    assert isinstance(model.predict(torch.as_tensor(queries)), torch.Tensor)
