"""The linear probe: logits equal scikit-learn's LogisticRegression on the normalised features;
the C search fits a path, picks the first best and keeps the winner's weights."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from _doubles import LinearProjectorDouble, _unit, make_data
from sklearn.linear_model import LogisticRegression

from ssp.methods.linear_probe import LinearProbe
from ssp.methods.search import validation_search


def _sklearn_logits(x, y, queries, c, tol=1e-4, max_iter=1000):
    model = LogisticRegression(C=c, tol=tol, max_iter=max_iter).fit(_unit(x), y)
    return model.decision_function(_unit(queries))


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("c", [0.05, 1.0, 30.0])
def test_logits_equal_sklearn_logistic_regression(c):
    text, support, labels, queries, _ = make_data()
    model = LinearProbe(C=c, device="cpu").fit(support, labels, text_features=text)
    assert _rel(model.decision_function(queries), _sklearn_logits(support, labels, queries, c)) < 1e-10
    assert model.coef_.shape == (len(text), text.shape[1]) and model.fitted_C_ == [c]


def test_logits_equal_sklearn_on_real_features(tip_cache_root):
    from ssp.features.tip_cache import load_tip_adapter_cache

    cache = load_tip_adapter_cache(tip_cache_root / "stanford_cars", 4)
    keep = cache.support_labels < 25  # 25 of the 196 classes: a fast fit
    x, y = cache.support_features[keep].double().numpy(), cache.support_labels[keep].numpy()
    queries = cache.val_features[:300].double().numpy()
    text = cache.text_features[:25].double().numpy()
    model = LinearProbe(C=0.5, device="cpu").fit(x, y, text_features=text)
    assert _rel(model.decision_function(queries), _sklearn_logits(x, y, queries, 0.5)) < 1e-4


def test_search_fits_the_grid_and_keeps_the_first_best():
    text, support, labels, queries, query_labels = make_data(seed=1)
    val, val_y = queries[:80], query_labels[:80]
    grid = {"C": np.array([0.01, 0.3, 10.0])}
    model = LinearProbe(tol=1e-8, device="cpu").fit(support, labels, text_features=text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a winner on the grid's edge
        result = validation_search(model, val, val_y, grid)
    scores = []
    for c in grid["C"]:  # cold fits at each C give the same accuracies as the warm-started path
        pred = _sklearn_logits(support, labels, val, c, tol=1e-8).argmax(1)
        scores.append(np.mean(pred == val_y))
    np.testing.assert_allclose(result.scores_, scores)
    best = int(np.argmax(scores))
    assert result.best_params_ == {"C": grid["C"][best]} and model.C == grid["C"][best]
    expected = _sklearn_logits(support, labels, queries, grid["C"][best], tol=1e-8)
    assert _rel(model.decision_function(queries), expected) < 1e-5
    assert model.fitted_C_ == sorted({1.0, *grid["C"]})
    model.set_params(C=0.5)  # never fitted
    with pytest.raises(ValueError, match=r"no weights for C=0.5"):
        model.predict(queries)
    model.set_params(C=1.0)
    assert model.predict(queries).shape == (len(queries),)


def test_default_grid_and_config_grid():
    from ssp.methods.registry import get_method
    from ssp.run.config import load_config

    spec = get_method("linear-probe")
    np.testing.assert_allclose(spec.grid(None)["C"], np.geomspace(1e-2, 1e4, 13))
    cfg = load_config("stanford_cars")
    np.testing.assert_allclose(spec.grid(cfg)["C"], np.geomspace(0.01, 1e4, 13))
    cfg["linear_probe"]["search"] = {"C": [0.1, 10.0, 3]}
    np.testing.assert_allclose(spec.grid(cfg)["C"], [0.1, 1.0, 10.0])
    for bad in ({"C": [0, 10, 3]}, {"C": [1, 10]}, {"C": [1, 10, 2.5]}, {"beta": [1, 2, 2]}):
        cfg["linear_probe"]["search"] = bad
        with pytest.raises(ValueError, match="linear_probe.search"):
            spec.grid(cfg)


def test_absent_class_is_never_predicted_and_two_classes_work():
    text, support, labels, queries, _ = make_data(n_classes=4, shots=(3, 0, 2, 2))
    model = LinearProbe(device="cpu").fit(support, labels, text_features=text)
    logits = model.decision_function(queries)
    assert np.isneginf(logits[:, 1]).all() and (model.predict(queries) != 1).all()
    text, support, labels, queries, _ = make_data(n_classes=2, shots=(3, 4))
    model = LinearProbe(C=2.0, device="cpu").fit(support, labels, text_features=text)
    sk = LogisticRegression(C=2.0).fit(_unit(support), labels)
    np.testing.assert_array_equal(model.predict(queries), sk.predict(_unit(queries)))
    np.testing.assert_allclose(np.diff(model.decision_function(queries), axis=1)[:, 0],
                               sk.decision_function(_unit(queries)), rtol=1e-10)
    with pytest.raises(ValueError, match="at least 2 classes; the support set has one class"):
        LinearProbe(device="cpu").fit(support[labels == 0], labels[labels == 0], text_features=text)


def test_routing_search_fits_each_view():
    text, support, labels, queries, query_labels = make_data(seed=5)
    proj = LinearProjectorDouble(seed=1, scale=0.5)
    patches = support[:, None, :].repeat(2, axis=1)
    model = LinearProbe(C=3.0, projector=proj, device="cpu").fit(support, labels, text_features=text,
                                                                  patch_features=patches)
    a_v, a_l = LinearProjectorDouble.maps(1, text.shape[1], 0.5)
    vision = _unit(_unit(support) @ a_v.T)
    expected = _sklearn_logits(vision, labels, _unit(_unit(queries) @ a_v.T), 3.0)
    assert _rel(model.decision_function(queries), expected) < 1e-10
    result = validation_search(model, queries[:70], query_labels[:70],
                               {"routing": ["paper", "reference"], "C": [0.3, 3.0]})
    assert result.scores_.shape == (2, 2) and result.param_names_ == ("routing", "C")
    language = _unit(_unit(support) @ a_l.T)
    ref = _sklearn_logits(language, labels, _unit(_unit(queries[:70]) @ a_l.T), 0.3).argmax(1)
    assert result.scores_[1, 0] == pytest.approx(np.mean(ref == query_labels[:70]))
    # the hook answers one routing or a list of them (all at once)
    numeric = {"C": np.array([0.3, 3.0])}
    both = model.search_counts(queries[:70], query_labels[:70], numeric, ["paper", "reference"])
    one = model.search_counts(queries[:70], query_labels[:70], numeric, "reference")
    assert both.shape == (2, 2) and (both[1] == one).all()


def test_torch_in_torch_out_and_bad_settings():
    text, support, labels, queries, _ = make_data()
    model = LinearProbe(device="cpu").fit(torch.as_tensor(support), torch.as_tensor(labels),
                                          text_features=torch.as_tensor(text))
    assert isinstance(model.coef_, torch.Tensor) and isinstance(model.predict(torch.as_tensor(queries)), torch.Tensor)
    for param, value in (("C", 0.0), ("C", "x"), ("tol", -1.0), ("max_iter", 0)):
        with pytest.raises(ValueError, match=param):
            LinearProbe(**{param: value}).fit(support, labels, text_features=text)
